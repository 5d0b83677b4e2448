"""kdg: gradient-based domain generalization for Keras 3.

    import kdg
    model = kdg.DGModel(inputs, outputs, algorithm=kdg.algorithms.Fish())
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(batches)  # x: (D*B, ...), y: (D*B,); kdg.layout, kdg.data.domain_batches

Submodules load on first use, so that `kdg report` and `kdg --help` do not
start a Keras backend. When Keras is already imported, the model classes
are imported (and registered for `keras.models.load_model`) right away;
otherwise `from kdg import DGModel` (or any use of kdg.DGModel) does it.
"""

import importlib
import sys

__version__ = "0.1.0"

_MODEL = ("DGModel", "FunctionalDGModel", "WrappedDGModel", "wrap")
_SUBMODULES = ("algorithms", "data", "layout", "models", "optimizers", "recipes", "report", "training",
               "sweep", "bench")

__all__ = list(_MODEL) + ["algorithms"]


def __getattr__(name):
    if name in _MODEL:
        return getattr(importlib.import_module("kdg.dg_model"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"kdg.{name}")
    raise AttributeError(f"module 'kdg' has no attribute {name!r}")


if "keras" in sys.modules:
    importlib.import_module("kdg.dg_model")
