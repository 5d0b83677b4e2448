"""The algorithms, one file each, written once with `keras.ops`.

Each algorithm's module docstring states the update rule it implements
(`help(kdg.algorithms.fish)`); `docs/ALGORITHMS.md` in the source repository
has them all, with their hyperparameters and defaults, where the papers and
the authors' code differ, DomainBed's protocol and the published numbers.
"""

from kdg.algorithm_names import normalize as normalize_name
from kdg.algorithms.andmask import ANDMask
from kdg.algorithms.arm import ARM
from kdg.algorithms.base import Algorithm, StepContext
from kdg.algorithms.coral import CORAL
from kdg.algorithms.corgrad import CorGrad
from kdg.algorithms.dann import CDANN, DANN
from kdg.algorithms.erm import ERM
from kdg.algorithms.fish import Fish
from kdg.algorithms.fishr import Fishr
from kdg.algorithms.gga import GGA
from kdg.algorithms.ggal import GGAL
from kdg.algorithms.groupdro import GroupDRO
from kdg.algorithms.iga import IGA
from kdg.algorithms.gsam import GSAM
from kdg.algorithms.irm import IRM
from kdg.algorithms.mixup import Mixup
from kdg.algorithms.mldg import MLDG
from kdg.algorithms.mixstyle import MixStyle
from kdg.algorithms.mmd import MMD
from kdg.algorithms.mtl import MTL
from kdg.algorithms.pcgrad import PCGrad
from kdg.algorithms.rsc import RSC
from kdg.algorithms.sagm import SAGM
from kdg.algorithms.sagnet import SagNet
from kdg.algorithms.sam import SAM
from kdg.algorithms.sandmask import SANDMask
from kdg.algorithms.sd import SD
from kdg.algorithms.selfreg import SelfReg
from kdg.algorithms.vrex import VREx

#: The registry: each algorithm's class under its `name`, where its title,
#: hyperparameters (`hparams`) and search space (`search_space`) are found.
ALGORITHMS = {cls.name: cls for cls in (
    ERM,
    Fish,
    CorGrad,
    GGA,
    GGAL,
    SAM,
    GSAM,
    SAGM,
    ANDMask,
    SANDMask,
    MMD,
    CORAL,
    RSC,
    VREx,
    GroupDRO,
    IRM,
    Mixup,
    MLDG,
    MixStyle,
    MTL,
    SagNet,
    ARM,
    IGA,
    PCGrad,
    SD,
    SelfReg,
    Fishr,
    DANN,
    CDANN,
)}


def lookup(name):
    """The class of algorithm `name`, in any spelling `normalize_name` accepts
    ("GGA-L", "gga_l", "ggal"); a ValueError naming the known ones otherwise."""
    key = normalize_name(name)
    if key not in ALGORITHMS:
        raise ValueError(f"Unknown algorithm {name!r}; known: {', '.join(sorted(ALGORITHMS))}.")
    return ALGORITHMS[key]


def serialize(algorithm):
    """{"name": ..., "config": {...}}: JSON-friendly, GGA's base nested."""
    return {"name": algorithm.name, "config": algorithm.get_config()}


def deserialize(config):
    return lookup(config["name"]).from_config(dict(config.get("config", {})))


def get(identifier):
    """An Algorithm from an instance, a name ("fish"), or a serialized dict."""
    if identifier is None:
        return ERM()
    if isinstance(identifier, Algorithm):
        return identifier
    if isinstance(identifier, str):
        return deserialize({"name": identifier})
    if isinstance(identifier, dict):
        return deserialize(identifier)
    raise TypeError(
        f"Expected an algorithm, its name or its config; got {identifier!r}."
    )


__all__ = [
    "ALGORITHMS",
    "ANDMask",
    "ARM",
    "Algorithm",
    "CDANN",
    "CORAL",
    "CorGrad",
    "DANN",
    "ERM",
    "Fish",
    "Fishr",
    "GGA",
    "GGAL",
    "GSAM",
    "GroupDRO",
    "IGA",
    "IRM",
    "MLDG",
    "MMD",
    "MTL",
    "MixStyle",
    "Mixup",
    "PCGrad",
    "RSC",
    "SAGM",
    "SagNet",
    "SAM",
    "SANDMask",
    "SD",
    "SelfReg",
    "VREx",
    "StepContext",
    "VREx",
    "deserialize",
    "get",
    "lookup",
    "normalize_name",
    "serialize",
]
