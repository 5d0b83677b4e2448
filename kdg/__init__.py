"""kdg: gradient-based domain generalization for Keras 3.

    import kdg
    model = kdg.DGModel(inputs, outputs, algorithm=kdg.algorithms.Fish())
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(batches)  # x: (D, B, ...), y: (D, B)
"""

from kdg import algorithms
from kdg.model import DGModel, FunctionalDGModel, WrappedDGModel, wrap

__version__ = "0.1.0"

__all__ = ["DGModel", "FunctionalDGModel", "WrappedDGModel", "algorithms", "wrap"]
