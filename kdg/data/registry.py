"""Descriptions of the datasets kdg knows, keyed by name.

Domain and class orders are DomainBed's: sorted folder names for the image
datasets, DomainBed's ``ENVIRONMENTS`` lists for the MNIST-based ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["folder", "tfds", "mnist", "digits", "custom"]

ROTATIONS = (0, 15, 30, 45, 60, 75)
"""Rotation angles (degrees, counter-clockwise) of RotatedMNIST's environments."""

COLOR_FLIP_PROBABILITIES = (0.1, 0.2, 0.9)
"""Probability that the colour disagrees with the label, per ColoredMNIST environment."""

_COLORED_DOMAINS = ("+90%", "+80%", "-90%")  # DomainBed's ColoredMNIST.ENVIRONMENTS
_COLORED_SHORT = ("p90", "p80", "m90")  # YAML-safe: "+90" would parse as a number
_ROTATED_DOMAINS = tuple(str(a) for a in ROTATIONS)  # RotatedMNIST.ENVIRONMENTS
_ROTATED_SHORT = tuple(f"R{a}" for a in ROTATIONS)


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of one dataset.

    Attributes:
        name: canonical name, as accepted by :func:`kdg.data.load`.
        kind: how it is stored: ``folder`` (DomainBed image folders),
            ``tfds`` (tensorflow-datasets), ``mnist`` (built from mnist.npz),
            ``digits`` (built from scikit-learn's bundled digits, offline) or
            ``custom`` (any folder in the DomainBed layout).
        domains: full domain names, in DomainBed's order.
        short_domains: short names usable in recipes, same order.
        num_classes: number of classes (``None`` when discovered: custom).
        folder: sub-folder of the data root that holds the dataset.
        downloadable: whether ``kdg data download`` can fetch it.
    """

    name: str
    kind: Kind
    domains: tuple[str, ...] = ()
    short_domains: tuple[str, ...] = ()
    num_classes: int | None = None
    folder: str | None = None
    downloadable: bool = False

    def __post_init__(self) -> None:
        if len(self.domains) != len(self.short_domains):
            raise ValueError(f"{self.name}: one short name per domain is needed")


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "PACS", "folder",
            ("art_painting", "cartoon", "photo", "sketch"), ("A", "C", "P", "S"),
            7, folder="PACS", downloadable=True,
        ),
        DatasetInfo(
            "VLCS", "folder",
            ("Caltech101", "LabelMe", "SUN09", "VOC2007"), ("C", "L", "S", "V"),
            5, folder="VLCS", downloadable=True,
        ),
        DatasetInfo(
            "OfficeHome", "folder",
            ("Art", "Clipart", "Product", "Real World"), ("A", "C", "P", "R"),
            65, folder="office_home", downloadable=True,
        ),
        DatasetInfo(
            "TerraIncognita", "folder",
            ("location_100", "location_38", "location_43", "location_46"),
            ("L100", "L38", "L43", "L46"),
            10, folder="terra_incognita", downloadable=True,
        ),
        DatasetInfo(
            "DomainNet", "folder",
            ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"),
            ("C", "I", "P", "Q", "R", "S"),
            345, folder="domain_net", downloadable=True,
        ),
        DatasetInfo(
            "DomainNetTFDS", "tfds",
            ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"),
            ("C", "I", "P", "Q", "R", "S"),
            345, downloadable=True,
        ),
        DatasetInfo(
            "RotatedMNIST", "mnist", _ROTATED_DOMAINS, _ROTATED_SHORT, 10,
            folder="MNIST", downloadable=True,
        ),
        DatasetInfo(
            "ColoredMNIST", "mnist", _COLORED_DOMAINS, _COLORED_SHORT, 2,
            folder="MNIST", downloadable=True,
        ),
        DatasetInfo("RotatedDigits", "digits", _ROTATED_DOMAINS, _ROTATED_SHORT, 10),
        DatasetInfo("ColoredDigits", "digits", _COLORED_DOMAINS, _COLORED_SHORT, 2),
        DatasetInfo("custom", "custom"),
    )
}


def get_info(name: str) -> DatasetInfo:
    """Look a dataset up by its name or its folder name, ignoring case.

    ``"officehome"``, ``"office_home"`` and ``"OfficeHome"`` all give OfficeHome.
    """
    wanted = name.lower()
    for info in DATASETS.values():
        if wanted == info.name.lower() or (
            info.kind == "folder" and wanted == info.folder.lower()
        ):
            return info
    raise KeyError(
        f"Unknown dataset {name!r}; known: {', '.join(DATASETS)} "
        "(use 'custom' with path=... for your own folder)."
    )


def dataset_names() -> tuple[str, ...]:
    """The names :func:`kdg.data.load` accepts."""
    return tuple(DATASETS)
