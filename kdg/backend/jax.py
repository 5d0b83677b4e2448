"""JAX backend: `jax.value_and_grad`, and a stateless `train_step`.

On a CPU the gradients' convolutions are put in the layout of XLA:CPU's fast
kernel (`kdg.backend.jax_conv`), so that they run as fast inside GGA's
compiled search loop as outside it.

Keras' JAX trainer passes the training state explicitly and purges the
variables' values during `fit`. kdg's step is written in stateful style, so it
runs inside a `keras.StatelessScope` that maps every variable to its value in
the state, and the new state is read back from the scope.
"""

import jax
import keras
from keras import ops

from kdg.backend import unrolled
from kdg.backend.jax_conv import for_platform


def value_and_grad(fn):
    return for_platform(jax.value_and_grad(fn, has_aux=True), jax.default_backend())


def _scoped(fn, variables):
    def run():
        mapping = [(v, v.value) for v in variables]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            out = fn()
        return out, [scope.get_current_value(v) for v in variables]

    return run


def stateful_cond(pred, true_fn, false_fn, variables):
    out, values = ops.cond(
        pred, _scoped(true_fn, variables), _scoped(false_fn, variables)
    )
    for v, value in zip(variables, values):
        v.assign(value)
    return out


class TrainStep:
    def train_step(self, state, data):
        groups = (
            self.trainable_variables,
            self.non_trainable_variables,
            self.optimizer.variables,
            self.metrics_variables,
        )
        mapping = [
            (ref, value)
            for refs, values in zip(groups, state)
            for ref, value in zip(refs, values)
        ]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            logs = self._dg_train_step(data)
        new_state = tuple(
            [scope.get_current_value(ref) for ref in refs] for refs in groups
        )
        return logs, new_state


def scan(fn, carry, xs):
    """`fn(carry, x) -> (carry, y)` over the leading axis of `xs`: (final
    carry, stacked ys), unrolled into the traced program.

    A `lax.scan` compiles the per-domain passes once instead of D times
    (ResNet-18: CorGrad's compile 3.5x -> 2.3-2.9x ERM's), but on a CPU the
    step ran some 6% slower: XLA:CPU overlaps the unrolled passes on its
    threads. Steps outnumber compiles, so the passes stay unrolled."""
    return unrolled.scan(fn, carry, xs)
