"""Published test-domain accuracies kdg is held against (data only).

Copied from the tables at the end of ``spec/ALGORITHMS.md`` (accuracy in %,
training-domain validation, mean over test domains, averaged over trials),
one table per paper table:

* ResNet-50: the GGA repository's updated table (ERM, GGA, GGA-L, Fish);
* ResNet-18: the CorGrad paper, Table 1 (ERM, Fish, PCGrad, CorGrad);
* ResNet-50, GGA combined with other algorithms (:data:`GGA_COMBINED`): each
  algorithm without GGA and the change GGA brings when it wraps it.

Rows are keyed by the algorithm's published spelling (its `title` in
kdg's registry, for the algorithms kdg has; rows of algorithms kdg lacks
stay). A name is looked up through the registry's normalisation
(:func:`kdg.algorithm_names.normalize`: "gga_l", "ggal" and "GGA-L" find the
row "GGA-L"). ``Avg`` is the published average, as printed (it can differ in
the last digit from the mean of the rounded per-dataset numbers). Dataset
names use DomainBed's spelling (the spec writes "TerraInc" for
``TerraIncognita``); :func:`canonical_dataset` and :func:`canonical_algorithm`
map the names runs use onto these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from kdg.algorithm_names import normalize as normalize_algorithm

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
        ds = "Avg" if dataset == "Avg" else canonical_dataset(dataset)
        return _row_of(self.results, algorithm).get(ds)


def _row_of(rows: Mapping[str, Mapping], algorithm: str) -> Mapping:
    """The row of `algorithm` (any spelling the registry's normalisation
    accepts), or an empty one."""
    key = normalize_algorithm(algorithm)
    return next((row for title, row in rows.items() if normalize_algorithm(title) == key), {})


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

COMBINED_DATASETS = ("PACS", "VLCS", "OfficeHome", "TerraIncognita")


@dataclass(frozen=True)
class CombinedTable:
    """A published table of GGA wrapping other algorithms: per algorithm, its
    accuracy without GGA and the change GGA brings (percentage points), per
    dataset and "Avg" (the mean over `datasets`; DomainNet was not run)."""

    key: str
    title: str
    backbone: str
    selection: str
    without: Mapping[str, Mapping[str, float]]
    change: Mapping[str, Mapping[str, float]]
    datasets: tuple[str, ...] = COMBINED_DATASETS

    def _cell(self, rows, algorithm: str, dataset: str) -> float | None:
        ds = "Avg" if dataset == "Avg" else canonical_dataset(dataset)
        return _row_of(rows, algorithm).get(ds)

    def get_without(self, algorithm: str, dataset: str) -> float | None:
        """The published accuracy of `algorithm` alone; None if not published."""
        return self._cell(self.without, algorithm, dataset)

    def get_change(self, algorithm: str, dataset: str) -> float | None:
        """The published change GGA brings to `algorithm`; None if not published."""
        return self._cell(self.change, algorithm, dataset)

    def get_with_gga(self, algorithm: str, dataset: str) -> float | None:
        """Without GGA plus the change, rounded as published (one decimal)."""
        base, delta = self.get_without(algorithm, dataset), self.get_change(algorithm, dataset)
        return None if base is None or delta is None else round(base + delta, 1)

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(self.without)


def _pair(row: str) -> tuple[dict[str, float], dict[str, float]]:
    """("85.2 / 77.9 / 60.4 / 44.0 -> 66.9 | +1.4 / +0.6 / +0.5 / +4.0 -> +1.6") as
    the spec prints a row: (without GGA, change with GGA), each per dataset and Avg."""
    keys = COMBINED_DATASETS + ("Avg",)
    halves = [re.findall(r"[-+]?\d+\.\d", half) for half in row.split("|")]
    return tuple(dict(zip(keys, map(float, half), strict=True)) for half in halves)


_COMBINED_ROWS = {
    # algorithm: PACS / VLCS / OfficeHome / TerraInc -> Avg | the change with GGA
    "MixStyle": "85.2 / 77.9 / 60.4 / 44.0 -> 66.9 | +1.4 / +0.6 / +0.5 / +4.0 -> +1.6",
    "GroupDRO": "84.4 / 76.7 / 66.0 / 43.2 -> 67.6 | +1.6 / +0.6 / -0.4 / +5.2 -> +1.7",
    "MMD":      "84.7 / 77.5 / 66.3 / 42.2 -> 67.7 | +0.8 / +0.6 / +0.4 / +5.1 -> +1.7",
    "AND-mask": "84.4 / 78.1 / 65.6 / 44.6 -> 68.2 | +0.1 / +0.3 / +1.2 / -0.4 -> +0.3",
    "ARM":      "85.1 / 77.6 / 64.8 / 45.5 -> 68.3 | +0.1 / +0.4 / +1.2 / +2.4 -> +1.0",
    "IRM":      "83.5 / 78.5 / 64.3 / 47.6 -> 68.5 | -1.5 / -0.9 / -2.1 / -3.9 -> -2.1",
    "MTL":      "84.6 / 77.2 / 66.4 / 45.6 -> 68.5 | +1.8 / +0.9 / -0.3 / +0.8 -> +0.8",
    "VREx":     "84.9 / 78.3 / 66.4 / 46.4 -> 69.0 | +0.6 / -0.2 / +1.5 / -0.7 -> +0.3",
    "MLDG":     "84.9 / 77.2 / 66.8 / 47.7 -> 69.2 | +1.2 / +1.3 / -0.2 / +0.2 -> +0.6",
    "Mixup":    "84.6 / 77.4 / 68.1 / 47.9 -> 69.5 | +1.0 / +0.4 / +0.1 / +0.5 -> +0.5",
    "SagNet":   "86.3 / 77.8 / 68.1 / 48.6 -> 70.2 | -1.0 / +0.9 / +0.3 / +0.7 -> +0.4",
    "CORAL":    "86.2 / 78.8 / 68.7 / 47.6 -> 70.3 | +0.7 / -0.4 / +0.2 / +0.3 -> +0.2",
    "RSC":      "85.2 / 77.1 / 65.5 / 46.6 -> 68.6 | +0.1 / +0.2 / 0.0 / +0.2 -> +0.1",
    "Fish":     "85.5 / 77.8 / 68.6 / 45.1 -> 69.3 | +0.1 / +0.9 / -0.6 / +1.8 -> +0.6",
    "SAM":      "85.8 / 79.4 / 69.6 / 43.3 -> 69.5 | +0.2 / +0.1 / -1.0 / +2.9 -> +0.6",
    "GSAM":     "85.9 / 79.1 / 69.3 / 47.0 -> 70.3 | +0.6 / 0.0 / -0.7 / -1.0 -> -0.3",
    "SAGM":     "86.6 / 80.0 / 70.1 / 48.8 -> 71.4 | +0.2 / 0.0 / -0.6 / -0.1 -> -0.1",
}

GGA_COMBINED = CombinedTable(
    key="resnet50_gga_combined",
    title="ResNet-50, GGA combined with other algorithms (GGA repository)",
    backbone="resnet50",
    selection="training_domain",
    without={name: _pair(row)[0] for name, row in _COMBINED_ROWS.items()},
    change={name: _pair(row)[1] for name, row in _COMBINED_ROWS.items()},
)


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


_DATASET_ALIASES = {
    "pacs": "PACS", "vlcs": "VLCS", "officehome": "OfficeHome",
    "terraincognita": "TerraIncognita", "terrainc": "TerraIncognita",
    "domainnet": "DomainNet",
}


def canonical_dataset(name: str) -> str:
    """The published spelling of a dataset name ("terra_incognita" -> "TerraIncognita");
    unknown names come back unchanged."""
    return _DATASET_ALIASES.get(_squash(name), name)


def canonical_algorithm(name: str) -> str:
    """The published spelling of an algorithm name ("gga_l" -> "GGA-L"), the
    row title of a published table it normalises to; unknown names come back
    unchanged."""
    key = normalize_algorithm(name)
    for rows in [t.results for t in PUBLISHED] + [GGA_COMBINED.without]:
        for title in rows:
            if normalize_algorithm(title) == key:
                return title
    return name


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


# -- DomainBed's MNIST tables (per environment, mean and standard error) -------
MNIST_DATASETS = ("ColoredMNIST", "RotatedMNIST")
MNIST_ENVIRONMENTS = {
    "ColoredMNIST": ("+90%", "+80%", "-90%"),
    "RotatedMNIST": ("0", "15", "30", "45", "60", "75"),
}


@dataclass(frozen=True)
class PublishedEnvironmentTable:
    """One of DomainBed's MNIST tables: test-domain accuracy % per test
    environment and their average, each ``(mean, standard error over 3 trials)``.

    Source: DomainBed's ``domainbed/results/2020_10_06_7df6f06/results.tex``
    (``spec/ALGORITHMS.md``, "DomainBed's MNIST tables"): MNIST_CNN, 20
    hyperparameter samples x 3 trials, 5001 steps. DomainBed publishes no
    oracle table for RotatedMNIST.
    """

    dataset: str
    selection: str          # "training_domain" or "oracle"
    results: Mapping[str, tuple[tuple[float, float], ...]]   # environments..., then Avg

    @property
    def environments(self) -> tuple[str, ...]:
        return MNIST_ENVIRONMENTS[self.dataset] + ("Avg",)

    def get(self, algorithm: str, environment: str) -> tuple[float, float] | None:
        """``(mean, standard error)`` of ``algorithm`` on a test environment
        (or "Avg"), names matched loosely; None if not published."""
        row = self.results.get(canonical_algorithm(algorithm))
        if row is None or environment not in self.environments:
            return None
        return row[self.environments.index(environment)]


def _mnist(dataset: str, selection: str, rows: dict) -> PublishedEnvironmentTable:
    return PublishedEnvironmentTable(dataset, selection, rows)


DOMAINBED_MNIST = (
    _mnist("ColoredMNIST", "training_domain", {
        "ERM": ((71.7, 0.1), (72.9, 0.2), (10.0, 0.1), (51.5, 0.1)),
        "IRM": ((72.5, 0.1), (73.3, 0.5), (10.2, 0.3), (52.0, 0.1)),
        "GroupDRO": ((73.1, 0.3), (73.2, 0.2), (10.0, 0.2), (52.1, 0.0)),
        "Mixup": ((72.7, 0.4), (73.4, 0.1), (10.1, 0.1), (52.1, 0.2)),
        "MLDG": ((71.5, 0.2), (73.1, 0.2), (9.8, 0.1), (51.5, 0.1)),
        "CORAL": ((71.6, 0.3), (73.1, 0.1), (9.9, 0.1), (51.5, 0.1)),
        "MMD": ((71.4, 0.3), (73.1, 0.2), (9.9, 0.3), (51.5, 0.2)),
        "DANN": ((71.4, 0.9), (73.1, 0.1), (10.0, 0.0), (51.5, 0.3)),
        "CDANN": ((72.0, 0.2), (73.0, 0.2), (10.2, 0.1), (51.7, 0.1)),
        "MTL": ((70.9, 0.2), (72.8, 0.3), (10.5, 0.1), (51.4, 0.1)),
        "SagNet": ((71.8, 0.2), (73.0, 0.2), (10.3, 0.0), (51.7, 0.0)),
        "ARM": ((82.0, 0.5), (76.5, 0.3), (10.2, 0.0), (56.2, 0.2)),
        "VREx": ((72.4, 0.3), (72.9, 0.4), (10.2, 0.0), (51.8, 0.1)),
        "RSC": ((71.9, 0.3), (73.1, 0.2), (10.0, 0.2), (51.7, 0.2)),
    }),
    _mnist("ColoredMNIST", "oracle", {
        "ERM": ((71.8, 0.4), (72.9, 0.1), (28.7, 0.5), (57.8, 0.2)),
        "IRM": ((72.0, 0.1), (72.5, 0.3), (58.5, 3.3), (67.7, 1.2)),
        "GroupDRO": ((73.5, 0.3), (73.0, 0.3), (36.8, 2.8), (61.1, 0.9)),
        "Mixup": ((72.5, 0.2), (73.9, 0.4), (28.6, 0.2), (58.4, 0.2)),
        "MLDG": ((71.9, 0.3), (73.5, 0.2), (29.1, 0.9), (58.2, 0.4)),
        "CORAL": ((71.1, 0.2), (73.4, 0.2), (31.1, 1.6), (58.6, 0.5)),
        "MMD": ((69.0, 2.3), (70.4, 1.6), (50.6, 0.2), (63.3, 1.3)),
        "DANN": ((72.4, 0.5), (73.9, 0.5), (24.9, 2.7), (57.0, 1.0)),
        "CDANN": ((71.8, 0.5), (72.9, 0.1), (33.8, 6.4), (59.5, 2.0)),
        "MTL": ((71.2, 0.2), (73.5, 0.2), (28.0, 0.6), (57.6, 0.3)),
        "SagNet": ((72.1, 0.3), (73.2, 0.3), (29.4, 0.5), (58.2, 0.3)),
        "ARM": ((84.9, 0.9), (76.8, 0.6), (27.9, 2.1), (63.2, 0.7)),
        "VREx": ((72.8, 0.3), (73.0, 0.3), (55.2, 4.0), (67.0, 1.3)),
        "RSC": ((72.0, 0.1), (73.2, 0.1), (30.2, 1.6), (58.5, 0.5)),
    }),
    _mnist("RotatedMNIST", "training_domain", {
        "ERM": ((95.9, 0.1), (98.9, 0.0), (98.8, 0.0), (98.9, 0.0), (98.9, 0.0), (96.4, 0.0), (98.0, 0.0)),
        "IRM": ((95.5, 0.1), (98.8, 0.2), (98.7, 0.1), (98.6, 0.1), (98.7, 0.0), (95.9, 0.2), (97.7, 0.1)),
        "GroupDRO": ((95.6, 0.1), (98.9, 0.1), (98.9, 0.1), (99.0, 0.0), (98.9, 0.0), (96.5, 0.2), (98.0, 0.0)),
        "Mixup": ((95.8, 0.3), (98.9, 0.0), (98.9, 0.0), (98.9, 0.0), (98.8, 0.1), (96.5, 0.3), (98.0, 0.1)),
        "MLDG": ((95.8, 0.1), (98.9, 0.1), (99.0, 0.0), (98.9, 0.1), (99.0, 0.0), (95.8, 0.3), (97.9, 0.0)),
        "CORAL": ((95.8, 0.3), (98.8, 0.0), (98.9, 0.0), (99.0, 0.0), (98.9, 0.1), (96.4, 0.2), (98.0, 0.1)),
        "MMD": ((95.6, 0.1), (98.9, 0.1), (99.0, 0.0), (99.0, 0.0), (98.9, 0.0), (96.0, 0.2), (97.9, 0.0)),
        "DANN": ((95.0, 0.5), (98.9, 0.1), (99.0, 0.0), (99.0, 0.1), (98.9, 0.0), (96.3, 0.2), (97.8, 0.1)),
        "CDANN": ((95.7, 0.2), (98.8, 0.0), (98.9, 0.1), (98.9, 0.1), (98.9, 0.1), (96.1, 0.3), (97.9, 0.1)),
        "MTL": ((95.6, 0.1), (99.0, 0.1), (99.0, 0.0), (98.9, 0.1), (99.0, 0.1), (95.8, 0.2), (97.9, 0.0)),
        "SagNet": ((95.9, 0.3), (98.9, 0.1), (99.0, 0.1), (99.1, 0.0), (99.0, 0.1), (96.3, 0.1), (98.0, 0.0)),
        "ARM": ((96.7, 0.2), (99.1, 0.0), (99.0, 0.0), (99.0, 0.1), (99.1, 0.1), (96.5, 0.4), (98.2, 0.1)),
        "VREx": ((95.9, 0.2), (99.0, 0.1), (98.9, 0.1), (98.9, 0.1), (98.7, 0.1), (96.2, 0.2), (97.9, 0.1)),
        "RSC": ((94.8, 0.5), (98.7, 0.1), (98.8, 0.1), (98.8, 0.0), (98.9, 0.1), (95.9, 0.2), (97.6, 0.1)),
    }),
)


def domainbed_mnist(dataset: str, selection: str) -> PublishedEnvironmentTable | None:
    """DomainBed's published MNIST table of ``dataset`` under ``selection``, or None."""
    return next((t for t in DOMAINBED_MNIST
                 if t.dataset == dataset and t.selection == selection), None)
