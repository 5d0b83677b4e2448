"""Search spaces and their seeded sampling.

A search space maps a hyperparameter NAME to a distribution. In a sweep file
a distribution is written as one of::

    lr:         {log_uniform: [-5, -3.5]}            # 10 ** U(-5, -3.5)
    batch_size: {log_uniform: [3, 5.5], base: 2, int: true}   # int(2 ** U(3, 5.5))
    alpha:      {uniform: [0.5, 1.0]}                # U(0.5, 1.0)
    dropout:    {choice: [0.0, 0.1, 0.5]}            # one of the values, equally likely
    meta_lr:    0.1                                  # a fixed value (any non-mapping)
    rho:        null                                 # remove a default hyperparameter

`int: true` truncates towards zero (`int(...)`, as DomainBed does). A choice
may be among mappings: the chosen mapping's keys are set together (GGA's
`window` sets `start_step` and `end_step`).

Where a sampled value goes in the recipe (:func:`target`): `lr`,
`batch_size`, `weight_decay` (and any other `training` field) go to
`training`, `dropout` to `model`, a dotted name (`dataset.image_size`,
`algorithm.base.meta_lr`) to that path, any other name to `algorithm`.

Sampling (:func:`sample`) is seeded per hyperparameter, as DomainBed's
`seed_hash`: the value of NAME in hyperparameter sample h is drawn from
`RandomState(seed_hash(sweep_seed, h, algorithm, dataset, NAME))`, so the
same sweep always gives the same values, and adding or removing a
hyperparameter leaves the values of the others unchanged. Sample 0 draws
nothing: it is the base recipe's values (the defaults). Unlike DomainBed,
whose draws also depend on the trial seed, sample h has the same values in
every trial: the trials repeat the same settings on other data splits and
seeds, which is what "the best setting per trial" compares.

The default spaces are the common protocol's ranges (:data:`DEFAULT_SPACE`,
`docs/ALGORITHMS.md`) and each algorithm's own, the `search_space` of its
class in the registry (`kdg.algorithms.ALGORITHMS`), in the notation above
(GGA's `window` is a choice of (start_step, end_step) pairs).

GGA's window is in steps: with a base recipe of very few steps a window that
starts after the last step means no annealing at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from kdg.seeds import seed_hash  # noqa: F401  (also this module's, for its users)

COMMON = "common"

# Top-level recipe sections a plain (undotted) name can belong to.
_MODEL_NAMES = ("dropout",)


class SpaceError(ValueError):
    """A search space that cannot be sampled, with the reason."""


@dataclass(frozen=True)
class Distribution:
    """One hyperparameter's distribution; `kind` is `choice`, `uniform`,
    `log_uniform` or `fixed`."""

    kind: str
    values: tuple = ()          # choice: the options; fixed: (value,)
    low: float = 0.0            # uniform: bounds; log_uniform: exponents
    high: float = 0.0
    base: float = 10.0
    integer: bool = False

    def sample(self, rng: np.random.RandomState) -> Any:
        if self.kind == "fixed":
            return _plain(self.values[0])
        if self.kind == "choice":
            return _plain(self.values[rng.randint(len(self.values))])
        u = rng.uniform(self.low, self.high)
        value = float(self.base ** u) if self.kind == "log_uniform" else float(u)
        return int(value) if self.integer else value

    def describe(self) -> str:
        if self.kind == "fixed":
            return repr(self.values[0])
        if self.kind == "choice":
            return "choice {" + ", ".join(map(repr, self.values)) + "}"
        text = (f"{self.base:g} ** U({self.low:g}, {self.high:g})" if self.kind == "log_uniform"
                else f"U({self.low:g}, {self.high:g})")
        return f"int({text})" if self.integer else text


def _plain(value: Any) -> Any:
    """Python scalars (not NumPy's) so that recipes dump to clean YAML."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def parse_distribution(name: str, spec: Any) -> Distribution:
    """A Distribution from its sweep-file form (see the module docstring)."""
    if not isinstance(spec, Mapping):
        return Distribution("fixed", (spec,))
    spec = dict(spec)
    kinds = [k for k in ("choice", "uniform", "log_uniform") if k in spec]
    if len(kinds) != 1:
        raise SpaceError(
            f"{name}: give exactly one of choice, uniform, log_uniform (got "
            f"{', '.join(map(str, spec)) or 'an empty mapping'}); e.g. "
            "{log_uniform: [-5, -3.5]} for 10 ** U(-5, -3.5), {uniform: [0.5, 1]}, "
            "{choice: [0.05, 0.1, 0.5]}, or a plain value to fix it.")
    kind = kinds[0]
    args = spec.pop(kind)
    given = set(spec)
    integer = spec.pop("int", False)
    base = spec.pop("base", 10.0)
    if spec:
        raise SpaceError(f"{name}: unknown key(s) {', '.join(map(str, spec))}; "
                         f"{kind} takes {'nothing else' if kind == 'choice' else 'int and base'}.")
    if not isinstance(integer, bool):
        raise SpaceError(f"{name}: int must be true or false; given {integer!r}.")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise SpaceError(f"{name}: choice needs a non-empty list of values; given {args!r}.")
        if given & {"int", "base"}:
            raise SpaceError(f"{name}: choice takes no int or base.")
        return Distribution("choice", tuple(args))
    if (not isinstance(args, list) or len(args) != 2
            or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)):
        raise SpaceError(f"{name}: {kind} needs [low, high], two numbers; given {args!r}.")
    low, high = float(args[0]), float(args[1])
    if not (math.isfinite(low) and math.isfinite(high)) or high < low:
        raise SpaceError(f"{name}: {kind} needs finite low <= high; given [{low:g}, {high:g}].")
    if kind == "log_uniform" and not (isinstance(base, (int, float)) and base > 0 and base != 1):
        raise SpaceError(f"{name}: base must be a positive number other than 1; given {base!r}.")
    if kind == "uniform" and "base" in given:
        raise SpaceError(f"{name}: uniform takes no base (did you mean log_uniform?).")
    return Distribution(kind, (), low, high, float(base), integer)


def _space(raw: Mapping[str, Any]) -> dict[str, Distribution]:
    return {name: parse_distribution(name, spec) for name, spec in raw.items()}


#: The common protocol's ranges; each algorithm's own are its class's `search_space`.
DEFAULT_SPACE: dict[str, dict[str, Distribution]] = {
    COMMON: _space({
        "lr": {"log_uniform": [-5, -3.5]},
        "batch_size": {"log_uniform": [3, 5.5], "base": 2, "int": True},
        "weight_decay": {"log_uniform": [-6, -2]},
        "dropout": {"choice": [0.0, 0.1, 0.5]},
    }),
}


def algorithm_space(algorithm: str) -> dict[str, Distribution]:
    """The default search space of `algorithm`'s own hyperparameters: its
    class's `search_space` (nothing for a name the registry lacks)."""
    from kdg.algorithms import ALGORITHMS

    cls = ALGORITHMS.get(algorithm)
    return _space(cls.search_space) if cls is not None else {}


def space_for(algorithm: str, overrides: Mapping[str, Mapping[str, Any] | None] | None = None,
              defaults: bool = True) -> dict[str, Distribution]:
    """The search space of one algorithm: the defaults (common, then the
    algorithm's), then the sweep file's `common`, then its section for the
    algorithm; a null entry removes a hyperparameter."""
    space: dict[str, Distribution] = {}
    layers: list[Mapping[str, Any]] = []
    if defaults:
        layers += [DEFAULT_SPACE[COMMON], algorithm_space(algorithm)]
    overrides = overrides or {}
    layers += [overrides.get(COMMON) or {}, overrides.get(algorithm) or {}]
    for layer in layers:
        for name, spec in layer.items():
            if spec is None:
                space.pop(name, None)
            else:
                space[name] = spec if isinstance(spec, Distribution) else parse_distribution(name, spec)
    return space


def sample(space: Mapping[str, Distribution], sweep_seed: int, hparams_seed: int,
           algorithm: str, dataset: str) -> dict[str, Any]:
    """Hyperparameter sample `hparams_seed` of `space`, name -> value. Sample 0
    is empty (the base recipe's values); otherwise each value comes from its
    own generator, seeded by (sweep_seed, hparams_seed, algorithm, dataset, name)."""
    if hparams_seed == 0:
        return {}
    return {name: dist.sample(np.random.RandomState(
                seed_hash(sweep_seed, hparams_seed, algorithm, dataset, name)))
            for name, dist in sorted(space.items())}


def target(name: str, training_fields: tuple[str, ...]) -> list[str]:
    """The recipe path a hyperparameter NAME sets (its parent section when
    the sampled value is a mapping of several keys)."""
    if "." in name:
        return name.split(".")
    if name in _MODEL_NAMES:
        return ["model", name]
    if name in training_fields:
        return ["training", name]
    return ["algorithm", name]


def apply(config: dict, values: Mapping[str, Any], training_fields: tuple[str, ...]) -> dict:
    """Set the sampled values in a recipe dict (in place, returned)."""
    for name, value in sorted(values.items()):
        path = target(name, training_fields)
        if isinstance(value, Mapping):
            # a mapping sets several keys of the section (GGA's window)
            section = path[:-1]
            items = value.items()
        else:
            section, items = path[:-1], [(path[-1], value)]
        node = config
        for key in section:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        for key, item in items:
            node[key] = _plain(item)
    return config
