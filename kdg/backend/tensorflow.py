"""TensorFlow backend: `tf.GradientTape`, stateful steps inside `tf.function`."""

import tensorflow as tf
from keras import ops


def value_and_grad(fn, differentiable=False):
    # An enclosing tape records the gradient's computation too, so the
    # gradients are differentiable either way (`differentiable` changes nothing).
    def wrapped(params, *args):
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss, aux = fn(params, *args)
        grads = tape.gradient(
            loss, params, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        return (loss, aux), grads

    return wrapped


def scan(fn, carry, xs):
    """`fn(carry, x) -> (carry, y)` over the leading axis of `xs`: (final
    carry, stacked ys).

    `fn` is traced once, to a graph function that the step calls once per
    element. TensorFlow builds its graph op by op in Python, so tracing the
    per-domain passes once saves D - 1 traces of the network's forward and
    backward. The calls are inlined when the graph is optimized, so the step
    runs as the unrolled passes did (a `tf.while_loop` instead ran them one
    after the other, without overlap)."""
    carry = tf.nest.map_structure(tf.convert_to_tensor, carry)  # values, not variables
    elements = [tf.nest.map_structure(lambda t: t[i], xs)
                for i in range(tf.nest.flatten(xs)[0].shape[0])]
    one = tf.function(fn, autograph=False).get_concrete_function(carry, elements[0])
    dtypes = [t.dtype for t in tf.nest.flatten(carry)]
    ys = []
    for x in elements:
        new, y = one(carry, x)
        carry = tf.nest.pack_sequence_as(  # the dtypes the function was traced for
            carry, [tf.cast(t, d) for t, d in zip(tf.nest.flatten(new), dtypes)])
        ys.append(y)
    return carry, tf.nest.map_structure(lambda *t: tf.stack(t), *ys)


def stateful_cond(pred, true_fn, false_fn, variables):
    # tf.cond runs side effects (variable assignments) of the taken branch.
    return ops.cond(pred, true_fn, false_fn)


class TrainStep:
    def train_step(self, data):
        return self._dg_train_step(data)
