"""The backend seam: the only place where kdg knows which Keras backend runs.

Each backend module (``jax.py``, ``tensorflow.py``, ``torch.py``, laid out like
``keras/src/backend/<name>/``) provides four things:

- ``value_and_grad(fn)``: for ``fn(params, *args) -> (loss, aux)``, a function
  ``(params, *args) -> ((loss, aux), grads)`` where ``params`` is a list of
  tensors and ``grads`` the matching list of gradients. ``fn`` must be a
  stateless function of ``params`` (``model.stateless_call`` inside).
  ``value_and_grad(fn, differentiable=True)``: gradients (and loss and aux)
  that an enclosing ``value_and_grad`` can differentiate again, a gradient of
  a function of gradients (JAX: ``jax.value_and_grad`` composes; TensorFlow:
  the enclosing ``GradientTape`` records the inner one; PyTorch:
  ``torch.autograd.grad(create_graph=True)``). Its only users are IGA and the
  gradient penalty of DANN/CDANN's discriminator; IRM's penalty has a closed
  form instead. Without it the gradients are meant to be used, not
  differentiated (PyTorch detaches them; JAX's CPU rewrite of convolutions,
  ``jax_conv.py``, is applied only then).
- ``scan(fn, carry, xs)``: ``fn(carry, x) -> (carry, y)`` over the leading
  axis of ``xs``, returning the last carry and the stacked ``y``s (the
  per-domain passes). TensorFlow traces ``fn`` once; JAX unrolls it into the
  compiled step and PyTorch loops eagerly, both with ``unrolled.py``.
- ``stateful_cond(pred, true_fn, false_fn, variables)``: ``ops.cond`` for
  branches that assign to Keras variables (an optimizer step, say).
- ``TrainStep``: a mixin whose ``train_step`` has the signature that backend's
  Keras trainer calls, and which runs the model's stateful-style
  ``_dg_train_step(data)`` (inside a ``keras.StatelessScope`` on JAX).

Everything else in kdg is written once with ``keras.ops``.
"""

import keras

_name = keras.backend.backend()

if _name == "jax":
    from kdg.backend.jax import TrainStep, scan, stateful_cond, value_and_grad
elif _name == "tensorflow":
    from kdg.backend.tensorflow import TrainStep, scan, stateful_cond, value_and_grad
elif _name == "torch":
    from kdg.backend.torch import TrainStep, scan, stateful_cond, value_and_grad
else:  # pragma: no cover - Keras itself only ships these three for training
    raise ImportError(
        f"kdg supports the jax, tensorflow and torch Keras backends; "
        f"KERAS_BACKEND={_name!r}. Set KERAS_BACKEND to one of those."
    )

__all__ = ["TrainStep", "scan", "stateful_cond", "value_and_grad", "name"]
name = _name
