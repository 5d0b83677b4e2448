"""Datasets and input pipelines for domain generalization (DomainBed protocol).

Start with :func:`load`::

    from kdg import data

    ds = data.load("RotatedDigits")                # offline, small
    train = [d for d in range(len(ds.domains)) if d != 0]
    batches = ds.train_batches(train, batch_size=32, seed=0)
    x, y = next(iter(batches))                     # (D*B, H, W, C), (D*B,): kdg.layout
    test = ds.eval_batches(ds.split(0, "in"))      # finite, not augmented

Your own data: :func:`domain_batches` makes the same stream from D datasets
(or ``(x, y)`` array pairs), :func:`interleave_domains` one batch from D
per-domain minibatches, :func:`split_domains` takes one apart.

Modules: :mod:`~kdg.data.registry` (dataset descriptions),
:mod:`~kdg.data.dataset` (:func:`load`, :class:`DGDataset`),
:mod:`~kdg.data.splits`, :mod:`~kdg.data.pipeline`, :mod:`~kdg.data.augment`,
:mod:`~kdg.data.folder`, :mod:`~kdg.data.mnist`, :mod:`~kdg.data.digits`,
:mod:`~kdg.data.tfds`, :mod:`~kdg.data.downloads`, :mod:`~kdg.data.check`.
"""

from kdg.data.augment import ImagePolicy
from kdg.data.check import LayoutReport, check_layout, format_report
from kdg.data.dataset import ROOT_VARIABLE, DGDataset, load, resolve_root
from kdg.data.downloads import SOURCES, download, fetch
from kdg.data.errors import (
    ChecksumError,
    CorruptImageError,
    DataError,
    DatasetLayoutError,
    DatasetNotFoundError,
    DownloadError,
)
from kdg.data.mnist import check_mnist_files
from kdg.data.pipeline import Batches, domain_batches
from kdg.data.registry import DATASETS, DatasetInfo, dataset_names, get_info
from kdg.data.splits import Split, seed_hash, split_indices
from kdg.layout import interleave_domains, split_domains

__all__ = [
    "DATASETS",
    "ROOT_VARIABLE",
    "SOURCES",
    "Batches",
    "ChecksumError",
    "CorruptImageError",
    "DGDataset",
    "DataError",
    "DatasetInfo",
    "DatasetLayoutError",
    "DatasetNotFoundError",
    "DownloadError",
    "ImagePolicy",
    "LayoutReport",
    "Split",
    "check_layout",
    "check_mnist_files",
    "dataset_names",
    "domain_batches",
    "download",
    "fetch",
    "format_report",
    "get_info",
    "interleave_domains",
    "load",
    "resolve_root",
    "seed_hash",
    "split_domains",
    "split_indices",
]
