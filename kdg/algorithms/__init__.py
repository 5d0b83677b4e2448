"""The algorithms, one file each, written once with `keras.ops`.

Each algorithm's module docstring states the update rule it implements
(`help(kdg.algorithms.fish)`); `docs/ALGORITHMS.md` in the source repository
has them all, with their hyperparameters and defaults, where the papers and
the authors' code differ, DomainBed's protocol and the published numbers.
"""

from kdg.algorithms.base import Algorithm, StepContext
from kdg.algorithms.coral import CORAL
from kdg.algorithms.corgrad import CorGrad
from kdg.algorithms.erm import ERM
from kdg.algorithms.fish import Fish
from kdg.algorithms.gga import GGA
from kdg.algorithms.ggal import GGAL
from kdg.algorithms.mixstyle import MixStyle
from kdg.algorithms.mmd import MMD
from kdg.algorithms.rsc import RSC

ALGORITHMS = {cls.name: cls for cls in (ERM, Fish, CorGrad, GGA, GGAL, CORAL, MMD, RSC, MixStyle)}


def serialize(algorithm):
    """{"name": ..., "config": {...}}: JSON-friendly, GGA's base nested."""
    return {"name": algorithm.name, "config": algorithm.get_config()}


def deserialize(config):
    name = config["name"]
    if name not in ALGORITHMS:
        raise ValueError(
            f"Unknown algorithm {name!r}; known: {', '.join(sorted(ALGORITHMS))}."
        )
    return ALGORITHMS[name].from_config(dict(config.get("config", {})))


def get(identifier):
    """An Algorithm from an instance, a name ("fish"), or a serialized dict."""
    if identifier is None:
        return ERM()
    if isinstance(identifier, Algorithm):
        return identifier
    if isinstance(identifier, str):
        return deserialize({"name": identifier.lower().replace("-", "")})
    if isinstance(identifier, dict):
        return deserialize(identifier)
    raise TypeError(
        f"Expected an algorithm, its name or its config; got {identifier!r}."
    )


__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "CORAL",
    "CorGrad",
    "ERM",
    "Fish",
    "GGA",
    "GGAL",
    "MMD",
    "MixStyle",
    "RSC",
    "StepContext",
    "deserialize",
    "get",
    "serialize",
]
