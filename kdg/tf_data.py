"""TensorFlow for kdg's input pipelines (`tf.data`) and TensorBoard logs.

kdg's modules that need TensorFlow for data or logs get it from here
(``from kdg.tf_data import tf``), never by ``import tensorflow``: the first
use of ``tf`` imports TensorFlow through :func:`tensorflow`, which

- when the Keras backend is not TensorFlow (JAX, PyTorch), hides the GPUs
  from TensorFlow before its first op, as Keras' multi-backend guides do:
  TensorFlow is only feeding data there, and by default it reserves nearly
  all of a GPU's memory when it first initialises it, starving the process
  that trains the model;
- when TensorFlow is not installed, raises :class:`TensorFlowMissing`, one
  message naming the extra to install. kdg's engine (``kdg.DGModel``, the
  algorithms, ``kdg bench``, training from in-memory arrays) does not need
  TensorFlow on JAX and PyTorch.

Under the TensorFlow backend, TensorFlow keeps its GPUs: it trains there.
"""

from __future__ import annotations

import functools
import types
import warnings

INSTALL = 'pip install "kdg[tensorflow]"'
"""The line that installs what the TensorFlow features need."""


class TensorFlowMissing(ImportError):
    """A feature that needs TensorFlow was used where it is not installed."""


@functools.cache
def tensorflow():
    """The ``tensorflow`` module, its GPUs hidden unless it is the Keras backend."""
    try:
        import tensorflow as tf
    except ModuleNotFoundError as error:
        if error.name != "tensorflow":
            raise
        raise TensorFlowMissing(
            "this needs TensorFlow, which is not installed: kdg's input pipelines "
            "(kdg.data's datasets, domain_batches, kdg train, kdg eval) are tf.data, and "
            f"kdg train writes TensorBoard logs. Install it with: {INSTALL}. (Without it, "
            "kdg.DGModel, every algorithm and kdg bench work on JAX and PyTorch: train "
            "with model.fit on NumPy arrays laid out by kdg.layout.interleave_domains.)"
        ) from None
    import keras

    if keras.backend.backend() != "tensorflow":
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # TensorFlow ran an op before kdg: its devices are fixed
            warnings.warn(
                "TensorFlow was initialised before kdg's input pipeline, so kdg could not "
                "hide the GPUs from it: it may reserve most of the GPU memory that the "
                f"{keras.backend.backend()} backend needs. Call "
                "tf.config.set_visible_devices([], 'GPU') before any TensorFlow op.",
                stacklevel=2,
            )
    return tf


class _TensorFlowOnUse(types.ModuleType):
    """``tensorflow``, imported through :func:`tensorflow` on first attribute use."""

    def __getattr__(self, name):
        return getattr(tensorflow(), name)


tf = _TensorFlowOnUse("tensorflow")
