"""Published test-domain accuracies kdg is held against (data only).

Copied from the two tables at the end of ``spec/ALGORITHMS.md`` (accuracy in %,
training-domain validation, mean over test domains, averaged over trials):

* ResNet-50: the GGA repository's updated table (ERM, GGA, GGA-L, Fish);
* ResNet-18: the CorGrad paper, Table 1 (ERM, Fish, PCGrad, CorGrad).

``Avg`` is the published average over the five datasets, as printed (it can
differ in the last digit from the mean of the rounded per-dataset numbers).
Dataset names use DomainBed's spelling (the spec writes "TerraInc" for
``TerraIncognita``); :func:`canonical_dataset` and :func:`canonical_algorithm`
map the names runs use onto these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

DATASETS = ("PACS", "VLCS", "OfficeHome", "TerraIncognita", "DomainNet")


@dataclass(frozen=True)
class PublishedTable:
    """One published results table: algorithm -> dataset (or "Avg") -> accuracy %."""

    key: str
    title: str
    backbone: str           # "resnet50" / "resnet18"
    selection: str          # model selection the numbers were obtained with
    results: Mapping[str, Mapping[str, float]]

    @property
    def datasets(self) -> tuple[str, ...]:
        return DATASETS

    @property
    def label(self) -> str:
        """Short column label: "ResNet-50" / "ResNet-18"."""
        return {"resnet50": "ResNet-50", "resnet18": "ResNet-18"}.get(self.backbone, self.key)

    def get(self, algorithm: str, dataset: str) -> float | None:
        """Published accuracy, names matched loosely; None if not published."""
        algo = canonical_algorithm(algorithm)
        ds = "Avg" if dataset == "Avg" else canonical_dataset(dataset)
        return self.results.get(algo, {}).get(ds)


def _row(pacs, vlcs, office_home, terra, domain_net, avg) -> dict[str, float]:
    return dict(zip(DATASETS + ("Avg",), (pacs, vlcs, office_home, terra, domain_net, avg)))


RESNET50_GGA = PublishedTable(
    key="resnet50_gga",
    title="ResNet-50 (GGA repository)",
    backbone="resnet50",
    selection="training_domain",
    results={
        #              PACS  VLCS  OfficeHome TerraInc DomainNet Avg
        "ERM":   _row(85.5, 77.3, 66.5, 46.1, 43.8, 63.9),
        "GGA":   _row(86.4, 78.7, 67.0, 48.5, 44.5, 65.0),
        "GGA-L": _row(86.5, 78.4, 66.5, 49.8, 44.5, 65.1),
        "Fish":  _row(85.5, 77.8, 68.6, 45.1, 42.7, 63.9),
    },
)

RESNET18_CORGRAD = PublishedTable(
    key="resnet18_corgrad",
    title="ResNet-18 (CorGrad paper, Table 1)",
    backbone="resnet18",
    selection="training_domain",
    results={
        #                PACS  VLCS  OfficeHome TerraInc DomainNet Avg
        "ERM":     _row(79.8, 75.8, 60.6, 38.8, 35.3, 58.1),
        "Fish":    _row(81.7, 76.9, 62.2, 40.3, 35.5, 59.3),
        "PCGrad":  _row(81.3, 75.0, 58.3, 41.3, 36.4, 58.5),
        "CorGrad": _row(82.1, 76.6, 61.2, 44.9, 37.3, 60.4),
    },
)

PUBLISHED: tuple[PublishedTable, ...] = (RESNET50_GGA, RESNET18_CORGRAD)


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


_DATASET_ALIASES = {
    "pacs": "PACS", "vlcs": "VLCS", "officehome": "OfficeHome",
    "terraincognita": "TerraIncognita", "terrainc": "TerraIncognita",
    "domainnet": "DomainNet",
}
_ALGORITHM_ALIASES = {
    "erm": "ERM", "gga": "GGA", "ggal": "GGA-L", "ggalight": "GGA-L",
    "fish": "Fish", "pcgrad": "PCGrad", "corgrad": "CorGrad",
}


def canonical_dataset(name: str) -> str:
    """The published spelling of a dataset name ("terra_incognita" -> "TerraIncognita");
    unknown names come back unchanged."""
    return _DATASET_ALIASES.get(_squash(name), name)


def canonical_algorithm(name: str) -> str:
    """The published spelling of an algorithm name ("gga_l" -> "GGA-L");
    unknown names come back unchanged."""
    return _ALGORITHM_ALIASES.get(_squash(name), name)


def backbone_of(hparams: Mapping[str, Any]) -> str | None:
    """"resnet50" / "resnet18" from a run's hparams, or None if they do not say.

    Understands DomainBed's boolean ``resnet18`` and a string under
    ``backbone``, ``arch``, ``architecture``, ``model`` or ``network``."""
    for key in ("backbone", "arch", "architecture", "model", "network"):
        value = hparams.get(key)
        if isinstance(value, str):
            squashed = _squash(value)
            if "resnet50" in squashed:
                return "resnet50"
            if "resnet18" in squashed:
                return "resnet18"
    if "resnet18" in hparams:
        return "resnet18" if hparams["resnet18"] else "resnet50"
    return None


def tables_for(backbones: Iterable[str | None]) -> tuple[PublishedTable, ...]:
    """The published tables to compare with: those of the backbone(s) the
    runs used, or all of them when the runs do not say (or mix backbones)."""
    backbones = list(backbones)
    known = {b for b in backbones if b is not None}
    if len(known) == 1 and None not in backbones:
        chosen = tuple(t for t in PUBLISHED if t.backbone in known)
        if chosen:
            return chosen
    return PUBLISHED
