"""What every algorithm shares: the `Algorithm` interface and the `StepContext`,
the algorithms' view of the model during one training step.

An algorithm is a small object holding its hyperparameters. Its `step(ctx, x,
y)` is called once per training batch, with `x` of shape (D, B, ...) and `y`
of shape (D, B), and is written in stateful style: it reads the variables'
values through `ctx`, computes gradients with `ctx`'s stateless gradient
functions, and changes the model through `ctx.apply` (an optimizer step) or
`ctx.assign`. It returns `(logs, y_pred)`: a dict of scalar diagnostics that
includes "loss", and the predictions on the D*B examples for the compiled
metrics.
"""

import math
import numbers

import keras
import numpy as np
from keras import ops
from keras import tree

from kdg import backend


def domain(x, d):
    """Domain d's minibatch of a (D, B, ...) structure."""
    return tree.map_structure(lambda t: t[d], x)


def flatten_domains(x):
    """(D, B, ...) -> (D*B, ...) for every tensor of a structure."""
    return tree.map_structure(
        lambda t: ops.reshape(t, (-1,) + tuple(ops.shape(t)[2:])), x
    )


# -- hyperparameters: each algorithm declares its own ----------------------------


class HparamError(ValueError):
    """A hyperparameter value an algorithm does not allow; `hparam` names the
    parameter and `reason` says what is allowed and what was given."""

    def __init__(self, algorithm, hparam, reason):
        super().__init__(f"{algorithm} {hparam} {reason}")
        self.hparam, self.reason = hparam, reason


class HparamTypeError(HparamError, TypeError):
    """A hyperparameter value of the wrong type."""


class Hparam:
    """One hyperparameter's type and allowed values; made by `number`,
    `integer`, `flag`, `choice` and `other`."""

    def __init__(self, kind, low=None, high=None, low_open=False, high_open=False,
                 choices=(), optional=False, text=None, check=None):
        self.kind, self.low, self.high = kind, low, high
        self.low_open, self.high_open = low_open, high_open
        self.choices, self.optional, self.text = tuple(choices), optional, text
        self.check = check

    def describe(self):
        """What is allowed, e.g. "a number in (0, 1]"."""
        if self.text:
            return self.text
        if self.kind == "flag":
            return "true or false"
        if self.kind == "choice":
            return "one of " + ", ".join(map(repr, self.choices))
        what = "an integer" if self.kind == "integer" else "a number"
        if self.low is not None and self.high is not None:
            what += (f" in {'(' if self.low_open else '['}{self.low:g}, "
                     f"{self.high:g}{')' if self.high_open else ']'}")
        elif self.low is not None:
            what += f" {'>' if self.low_open else '>='} {self.low:g}"
        elif self.kind == "number":
            what = "a finite number"
        return what + (" or None" if self.optional else "")

    def problem(self, value):
        """None if `value` is allowed, else (HparamTypeError or HparamError,
        "must be ...; given ...")."""
        reason = f"must be {self.describe()}; given {value!r}."
        if value is None and self.optional:
            return None
        if self.kind == "other":
            return None if self.check is None or self.check(value) else (HparamError, reason)
        if self.kind == "choice":
            return None if isinstance(value, str) and value in self.choices else (HparamError, reason)
        if self.kind == "flag":
            return None if isinstance(value, (bool, np.bool_)) else (HparamTypeError, reason)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            return HparamTypeError, reason
        if self.kind == "integer" and not float(value).is_integer():
            return HparamTypeError, reason
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return None if low_ok and high_ok and math.isfinite(value) else (HparamError, reason)


def number(low=None, high=None, low_open=False, high_open=False):
    """A finite real number, in [low, high] (an end left out: unbounded;
    `low_open`/`high_open`: that end excluded)."""
    return Hparam("number", low, high, low_open, high_open)


def integer(low=None, high=None, optional=False):
    """An integer in [low, high]; `optional`: None is allowed too."""
    return Hparam("integer", low, high, optional=optional)


def flag():
    """True or False."""
    return Hparam("flag")


def choice(*options):
    """One of the strings `options`."""
    return Hparam("choice", choices=options)


def other(text, check=None):
    """Anything `check(value)` accepts (everything without it: the
    constructor checks it); `text` says what is allowed."""
    return Hparam("other", text=text, check=check)


def domain_count(model, given, who):
    """The number of training domains an algorithm sizes its state by
    (GroupDRO's weights, MTL's embeddings): its own argument `given` or the
    model's `num_domains`; one must be known, and both, when given, agree."""
    num = given if given is not None else model.num_domains
    if num is None:
        raise ValueError(f"{who} keeps state per training domain, and the number of training "
                         f"domains is not known: set the model's num_domains (or "
                         f"{who}(num_domains=D)).")
    if model.num_domains is not None and int(num) != int(model.num_domains):
        raise ValueError(f"{who}(num_domains={num}) does not match the model's "
                         f"num_domains={model.num_domains}; leave it out to use the model's.")
    return int(num)


class Algorithm:
    """Base class. Subclasses set `name`, `title` and `hparams` (and
    `search_space`), define `step` and `get_config`, and call
    `check_hparams(locals())` first in `__init__`."""

    #: The registry key: lower-case letters and digits (`kdg.algorithms.normalize_name`).
    name = None
    #: The published spelling ("GGA-L"): the row of the papers' tables.
    title = None
    #: DomainBed's search space of the algorithm's own hyperparameters, in the
    #: sweep file's notation (`kdg.sweep.space`), keyed by constructor argument;
    #: the common ranges (lr, batch size, ...) are kdg.sweep.space's.
    search_space = {}
    #: True when the algorithm compares domains pairwise (needs D >= 2).
    needs_domain_pairs = False
    #: Each constructor argument's type and allowed values, name -> Hparam.
    hparams = {}

    @classmethod
    def hparam_problems(cls, values):
        """[(error class, name, reason)] for each of `values` (name -> value)
        that its declaration does not allow; names not declared are skipped."""
        found = []
        for name, value in values.items():
            problem = cls.hparams[name].problem(value) if name in cls.hparams else None
            if problem:
                found.append((problem[0], name, problem[1]))
        return found

    def check_hparams(self, values):
        """Raise the first problem of `values` (the constructor's `locals()`)."""
        for error, name, reason in self.hparam_problems(values):
            raise error(type(self).__name__, name, reason)

    def invalid(self, hparam, value, allowed=None):
        """An HparamError for a check the declarations cannot express:
        `hparam` must be `allowed` (default: its declaration); given `value`."""
        allowed = allowed or self.hparams[hparam].describe()
        return HparamError(type(self).__name__, hparam, f"must be {allowed}; given {value!r}.")

    def build(self, model):
        """Create the algorithm's own state (called once the model is built)."""

    @property
    def variables(self):
        """Keras variables owned by the algorithm (saved with the model)."""
        return []

    def step(self, ctx, x, y):
        raise NotImplementedError

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()


class StepContext:
    """The model as the algorithms see it during one training step.

    Gradient functions take explicit parameter values (`params`, the
    trainable variables' values) and model state (`state`, the values of
    `model.non_trainable_variables`); by default the variables' current values.
    They never assign: the algorithm decides what to keep.

    Features and classifier (`kdg.split`: DomainBed's ``featurizer`` and
    ``classifier``): `features(x, params, state)` gives (features, new
    state) and `classify(features, params)` the model's output from them;
    `forward(x, params, state)` is the whole model and `compiled_loss(y,
    y_pred, params)` the compiled loss. An algorithm's own objective written
    with them is differentiated by `value_and_grad(fn)`, over the model's
    `params` or over any list of tensors (the features, its own weights).
    Inputs here are ordinary (N, ...) batches (`flatten_domains(x)` or
    `domain(x, d)` of the step's x).

    An algorithm's own state: networks (Keras layers it builds in
    `build(model)`), their optimizers and other variables (moving averages,
    domain weights) are listed by its `variables` property. They are then
    part of the model's non-trainable state: carried by JAX's stateless step,
    saved by `model.save` and the run's checkpoint, and restored. In `step`
    the algorithm reads them (`v.value`), differentiates its objective with
    `value_and_grad` over their values (`layer.stateless_call`), and updates
    them with its own optimizer (`optimizer.apply(grads, variables)`) or
    `assign`. `kdg bench` counts their trainable parameters (`own_params`).
    """

    def __init__(self, model, key):
        self.model = model
        self.optimizer = model.optimizer
        self.trainable_variables = list(model.trainable_variables)
        self.key = key
        self.step_count = ops.convert_to_tensor(model.dg_step.value)
        self.batch_dependent = model._dg_batch_dependent()
        self._metrics_values = [v.value for v in model.metrics_variables]
        own = model._dg_model_state_variables()
        self._state_refs = model.non_trainable_variables
        own_ids = {id(v) for v in own}
        self._own_state_index = [
            i for i, v in enumerate(self._state_refs) if id(v) in own_ids
        ]

    # -- reading ----------------------------------------------------------
    def params(self):
        return [v.value for v in self.trainable_variables]

    def state(self):
        return [v.value for v in self._state_refs]

    def model_variables(self):
        """Trainable variables and the model's own floating-point state
        (BatchNorm moving statistics), without seeds, counters and the
        algorithm's own variables."""
        own = [self._state_refs[i] for i in self._own_state_index]
        return self.trainable_variables + [
            v for v in own if "float" in keras.backend.standardize_dtype(v.dtype)
        ]

    # -- stateless computations --------------------------------------------
    def _loss(self, params, state, x, y):
        model = self.model
        y_pred, state, losses = model.stateless_call(
            params, state, x, training=True, return_losses=True
        )
        if losses:
            model._losses_override.clear()
            model._losses_override = losses
        loss, _ = model.stateless_compute_loss(
            params, state, self._metrics_values, x=x, y=y, y_pred=y_pred
        )
        if losses:
            model._losses_override.clear()
        return loss, (y_pred, state)

    def loss(self, x, y, params=None, state=None):
        """Loss on one batch (forward only): (loss, y_pred, new_state)."""
        params = self.params() if params is None else params
        state = self.state() if state is None else state
        loss, (y_pred, state) = self._loss(params, state, x, y)
        return loss, y_pred, state

    def loss_and_grads(self, x, y, params=None, state=None):
        """Loss and gradients on one batch: (loss, grads, y_pred, new_state)."""
        params = self.params() if params is None else params
        state = self.state() if state is None else state
        (loss, (y_pred, state)), grads = backend.value_and_grad(self._loss)(
            params, state, x, y
        )
        return loss, list(grads), y_pred, state

    def domain_grads(self, x, y, params=None, state=None):
        """One pass per domain, in order, the model state threaded through.

        Returns (losses (D,), stacked grads [(D, *shape) per variable],
        predictions (D*B, ...), new state). The loop over domains is the
        backend's `scan`: TensorFlow traces the network's forward and
        backward once, not D times.
        """
        params = self.params() if params is None else params
        state = self.state() if state is None else state

        def one_domain(state, xy):
            loss, g, y_pred, state = self.loss_and_grads(xy[0], xy[1], params, state)
            return state, (loss, g, y_pred)

        state, (losses, grads, preds) = backend.scan(one_domain, state, (x, y))
        return losses, list(grads), flatten_domains(preds), state

    # -- the network as featurizer and classifier (kdg.split) ----------------
    def _part(self, which):
        """A part of the model's split and where its variables sit in
        `params()` and `state()` (by identity, once per step)."""
        parts = self.__dict__.setdefault("_parts", {})
        if which not in parts:
            layer = getattr(self.model.dg_split, which)
            params = {id(v): i for i, v in enumerate(self.trainable_variables)}
            state = {id(v): i for i, v in enumerate(self._state_refs)}
            parts[which] = (
                layer,
                [params[id(v)] for v in layer.trainable_variables],
                [state[id(v)] for v in layer.non_trainable_variables],
            )
        return parts[which]

    def _call_part(self, which, inputs, params, state, training):
        params = self.params() if params is None else params
        state = self.state() if state is None else state
        layer, p_index, s_index = self._part(which)
        out, new = layer.stateless_call(
            [params[i] for i in p_index], [state[i] for i in s_index], inputs,
            training=training,
        )
        state = list(state)
        for i, value in zip(s_index, new):
            state[i] = value
        return out, state

    def features(self, x, params=None, state=None, training=True):
        """The featurizer's output on a batch (N, ...): (features, new_state).
        `params`/`state` as for `loss`; keep the new state with `set_state`."""
        return self._call_part("featurizer", x, params, state, training)

    def classify(self, features, params=None, state=None, training=True):
        """The classifier part on features: the model's output (logits).
        `classify(features(x)[0])` is the model's output on x. The classifier's
        own state, if it has any, is read, not updated."""
        return self._call_part("classifier", features, params, state, training)[0]

    def forward(self, x, params=None, state=None, training=True):
        """The whole model on a batch (N, ...): (y_pred, new_state)."""
        params = self.params() if params is None else params
        state = self.state() if state is None else state
        return self.model.stateless_call(params, state, x, training=training)

    def compiled_loss(self, y, y_pred, params=None, state=None):
        """The compiled loss (e.g. the mean cross-entropy) of predictions on a
        batch, with the model's regularization losses at `params`."""
        params = self.params() if params is None else params
        state = self.state() if state is None else state
        return self.model.stateless_compute_loss(
            params, state, self._metrics_values, y=y, y_pred=y_pred
        )[0]

    @staticmethod
    def value_and_grad(fn, differentiable=False):
        """For `fn(params, *args) -> (loss, aux)`, a list `params` of tensors
        (e.g. `ctx.params()`, or any tensors: features, an algorithm's own
        weights), the function `(params, *args) -> ((loss, aux), grads)`
        (`kdg.backend.value_and_grad`, grads a list). `fn` must be stateless:
        it uses `features`, `classify`, `forward`, `compiled_loss` with
        explicit values. `differentiable=True`: the returned values can be
        differentiated again by an enclosing `value_and_grad` (a penalty on
        gradients, as IGA's); it costs the memory of the gradients' graph."""
        grad_fn = backend.value_and_grad(fn, differentiable=differentiable)

        def wrapped(params, *args):
            (value, aux), grads = grad_fn(params, *args)
            return (value, aux), list(grads)

        return wrapped

    # -- changing the model ------------------------------------------------
    def set_state(self, state):
        """Keep the model's own new state (BatchNorm statistics, dropout seeds)."""
        for i in self._own_state_index:
            self._state_refs[i].assign(state[i])

    def assign(self, variables, values):
        for v, value in zip(variables, values):
            v.assign(value)

    def apply(self, grads, optimizer=None):
        """One optimizer step on the trainable variables. The model's
        `l2_weight_decay` is added to the gradient first, as PyTorch's Adam
        does with its `weight_decay`."""
        optimizer = optimizer or self.optimizer
        wd = self.model.l2_weight_decay
        if wd:
            grads = [g + wd * v.value for g, v in zip(grads, self.trainable_variables)]
        optimizer.apply(grads, self.trainable_variables)

    def cond(self, pred, true_fn, false_fn, optimizers=()):
        """`ops.cond` for branches that change the model."""
        variables = (
            self.trainable_variables
            + self._state_refs
            + list(self.optimizer.variables)
            + [v for opt in optimizers for v in opt.variables]
        )
        return backend.stateful_cond(pred, true_fn, false_fn, variables)
