"""Adam and AdamW with PyTorch's epsilon, for reproducing the papers.

PyTorch's Adam divides the bias-corrected first moment by
``sqrt(v_hat) + eps`` with ``v_hat = v / (1 - beta_2**t)`` (epsilon after the
bias correction, default 1e-8). Keras' Adam folds the bias correction into the
learning rate and adds its epsilon (default 1e-7) to ``sqrt(v)``, the raw
second moment: with the same settings the two updates differ, most in the
first steps (about 30x in the effective epsilon at step 1 with the defaults).
The papers' numbers (DomainBed, Fish, CorGrad, GGA) come from PyTorch's Adam.

`TorchAdam` and `TorchAdamW` are `keras.optimizers.Adam` / `AdamW` with
PyTorch's update: the same variables (so checkpoints and `model.save` keep
their layout), the same keyword arguments, PyTorch's defaults. As with every
Keras optimizer, `weight_decay` is decoupled (``theta -= lr * wd * theta``
before the step, which is exactly PyTorch's AdamW); PyTorch's Adam
`weight_decay` (L2 added to the gradient) is `kdg.DGModel(l2_weight_decay=...)`.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kdg")
class TorchAdam(keras.optimizers.Adam):
    """Adam with PyTorch's update (``torch.optim.Adam``):

        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        theta -= lr / (1 - beta_1**t) * m / (sqrt(v / (1 - beta_2**t)) + epsilon)

    with ``amsgrad`` taking the running maximum of ``v``, as PyTorch does.
    Arguments as `keras.optimizers.Adam`; `epsilon` defaults to PyTorch's 1e-8.
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        amsgrad=False,
        name="torch_adam",
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            amsgrad=amsgrad,
            name=name,
            **kwargs,
        )

    def build(self, var_list):
        """The moment variables of Keras' Adam (same names, same order: the
        optimizer's variables, checkpoints and saved files are laid out as
        Keras' Adam's), made with the public `add_optimizer_variables` and
        kept per model variable, as `update_step` finds them."""
        if self.built:
            return
        super(keras.optimizers.Adam, self).build(var_list)  # Optimizer's: iterations...
        names = ["momentum", "velocity"] + (["velocity_hat"] if self.amsgrad else [])
        slots = self.add_optimizer_variables(var_list, names)
        self.kdg_slots = {}
        for variable, moments in zip(var_list, zip(*slots)):
            self.kdg_slots[id(variable)] = moments
            if keras.backend.backend() == "tensorflow":
                # TensorFlow's optimizer hands `update_step` the tf.Variable
                # behind each Keras variable (its `value`, a fixed object there)
                self.kdg_slots[id(variable.value)] = moments

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        correction_1 = 1 - ops.power(ops.cast(self.beta_1, dtype), step)
        correction_2 = 1 - ops.power(ops.cast(self.beta_2, dtype), step)
        m, v, *v_max = self.kdg_slots[id(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(
            v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2)
        )
        if self.amsgrad:
            self.assign(v_max[0], ops.maximum(v_max[0], v))
            v = v_max[0]
        denominator = ops.add(
            ops.divide(ops.sqrt(v), ops.sqrt(correction_2)), self.epsilon
        )
        self.assign_sub(
            variable,
            ops.divide(ops.multiply(m, ops.divide(lr, correction_1)), denominator),
        )


@keras.saving.register_keras_serializable(package="kdg")
class TorchAdamW(TorchAdam):
    """AdamW with PyTorch's update (``torch.optim.AdamW``): ``theta -= lr *
    weight_decay * theta``, then `TorchAdam`'s step. Arguments as
    `keras.optimizers.AdamW`; `epsilon` defaults to PyTorch's 1e-8 and
    `weight_decay` to Keras' 0.004 (PyTorch's is 0.01)."""

    def __init__(self, learning_rate=0.001, weight_decay=0.004, name="torch_adamw",
                 **kwargs):
        super().__init__(
            learning_rate=learning_rate, weight_decay=weight_decay, name=name, **kwargs
        )


def get(name, convention="keras", **kwargs):
    """The optimizer a recipe names ("adam", "adamw" or "sgd"), built with
    `kwargs`: PyTorch's Adam/AdamW (`TorchAdam`/`TorchAdamW`) for `convention`
    "torch", Keras' own for "keras". SGD is Keras' in both: for a constant
    learning rate its momentum takes the same steps as PyTorch's."""
    if convention not in ("torch", "keras"):
        raise ValueError(f"convention must be 'torch' or 'keras'; got {convention!r}.")
    classes = {
        "torch": {"adam": TorchAdam, "adamw": TorchAdamW},
        "keras": {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW},
    }[convention]
    classes["sgd"] = keras.optimizers.SGD
    if name not in classes:
        raise ValueError(f"unknown optimizer {name!r}; expected one of adam, adamw, sgd.")
    return classes[name](**kwargs)
