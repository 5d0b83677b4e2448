"""Convolutions in the layout of XLA:CPU's fast kernel, wherever they sit.

XLA:CPU runs a convolution with its multi-threaded Eigen kernel only when the
operands are laid out NHWC / HWIO (``b01f_01io->b01f``). Its
``ConvCanonicalization`` pass brings other convolutions into that layout with
transposes, but only in the entry computation: inside a ``while`` loop's body
(GGA's search, one ``fori_loop`` over the trials) a weight-gradient
convolution (``f01b_i01o->01bf``) stays as it is and is emitted as a naive
loop nest, some 30-70x slower (jax-ml/jax#12868;
``benchmarks/xla_cpu_loop_conv.py`` reproduces it).

`canonical_convolutions(fn)` traces ``fn`` to a jaxpr and evaluates it with
every ``conv_general_dilated`` rewritten as transposes around a convolution in
the canonical layout: the same arithmetic on the same elements, in a form the
fast kernel takes anywhere in the program. Calls (``jit``, custom derivative
rules) are inlined so that the convolutions inside them are rewritten too;
the result is meant to be evaluated, not differentiated again. Other
higher-order primitives (loops, conditionals) are evaluated unchanged.
"""

import jax
from jax import lax
from jax.extend import core
from jax.extend.core import primitives

_CALLS = {
    primitives.jit_p: "jaxpr",
    primitives.closed_call_p: "call_jaxpr",
    primitives.custom_jvp_call_p: "call_jaxpr",
    primitives.custom_vjp_call_p: "call_jaxpr",
}


def for_platform(grad_fn, platform: str):
    """`grad_fn` with its convolutions rewritten (:func:`canonical_convolutions`)
    on the CPU, where XLA:CPU needs it; unchanged on any other platform (GPU,
    TPU: their convolution libraries choose their own layouts)."""
    return canonical_convolutions(grad_fn) if platform == "cpu" else grad_fn


def canonical_convolutions(fn):
    """``fn`` with its convolutions (and its calls') in NHWC / HWIO layout."""

    def wrapped(*args):
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        out = _evaluate(closed.jaxpr, closed.consts, jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(out_shape), out)

    return wrapped


def _evaluate(jaxpr, consts, args):
    env = {}

    def read(v):
        return v.val if isinstance(v, core.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        sub = eqn.params.get(_CALLS.get(eqn.primitive, ""))
        if eqn.primitive is primitives.conv_general_dilated_p:
            outvals = [_canonical_conv(*invals, **eqn.params)]
        elif sub is not None and len(sub.jaxpr.invars) == len(invals):
            outvals = _evaluate(sub.jaxpr, sub.consts, invals)
        else:
            # Older JAX returns (subfuns, params), newer JAX the params alone.
            bound = eqn.primitive.get_bind_params(eqn.params)
            subfuns, params = bound if isinstance(bound, tuple) else ((), bound)
            with eqn.ctx.manager:
                outvals = eqn.primitive.bind(*subfuns, *invals, **params)
            if not eqn.primitive.multiple_results:
                outvals = [outvals]
        for v, value in zip(eqn.outvars, outvals):
            if not isinstance(v, core.DropVar):
                env[v] = value
    return [read(v) for v in jaxpr.outvars]


def _canonical_conv(lhs, rhs, *, dimension_numbers, **params):
    """One convolution as transpose -> NHWC/HWIO convolution -> transpose.

    A spec lists array axes in the logical order (batch or output feature,
    feature or input feature, spatial...); the canonical arrays put them at
    (0, n-1, 1..n-2) for the input and output, (n-1, n-2, 0..n-3) for the
    kernel.
    """
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    n = len(lhs_spec)
    spatial = tuple(range(1, n - 1))
    canonical = lax.ConvDimensionNumbers(
        lhs_spec=(0, n - 1) + spatial,
        rhs_spec=(n - 1, n - 2) + tuple(range(n - 2)),
        out_spec=(0, n - 1) + spatial,
    )
    if tuple(dimension_numbers) == tuple(canonical):
        return primitives.conv_general_dilated_p.bind(
            lhs, rhs, dimension_numbers=dimension_numbers, **params
        )
    lhs = lax.transpose(lhs, (lhs_spec[0],) + tuple(lhs_spec[2:]) + (lhs_spec[1],))
    rhs = lax.transpose(rhs, tuple(rhs_spec[2:]) + (rhs_spec[1], rhs_spec[0]))
    out = primitives.conv_general_dilated_p.bind(
        lhs, rhs, dimension_numbers=canonical, **params
    )
    # Logical output axis k sits at canonical position (0, n-1, 1..n-2)[k]
    # and must go back to array axis out_spec[k].
    position = (0, n - 1) + spatial
    back = [0] * n
    for k, axis in enumerate(out_spec):
        back[axis] = position[k]
    return lax.transpose(out, tuple(back))
