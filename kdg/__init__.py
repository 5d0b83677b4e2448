"""kdg: gradient-based domain generalization for Keras 3."""

__version__ = "0.1.0"
