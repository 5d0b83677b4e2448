"""The entry point :func:`load` and the dataset object :class:`DGDataset` it returns."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kdg.data.augment import ImagePolicy
from kdg.data.errors import CorruptImageError, DatasetLayoutError, DatasetNotFoundError
from kdg.data.pipeline import ArraySource, Batches, EncodedSource, Source
from kdg.data.pipeline import eval_batches as _eval_batches
from kdg.data.pipeline import train_batches as _train_batches
from kdg.data.registry import DatasetInfo, get_info
from kdg.data.splits import PARTS, Split, split_indices

ROOT_VARIABLE = "KDG_DATA_ROOT"
"""Environment variable read when no data root is given."""

FULL_DECODE_LIMIT = 20_000
""":meth:`DGDataset.check_images` decodes every image of up to this many
(2,000 JPEGs of 64 to 227 pixels: 0.9 to 2.1 s on 2 CPU cores); above, only
its cheap checks."""

DomainRef = int | str


class DGDataset:
    """A multi-domain dataset with DomainBed's splits and input pipelines.

    Attributes:
        name: dataset name.
        domains: full domain names, in order.
        short_domains: short domain names (for recipes), same order.
        classes: class names; labels index this tuple.
        num_classes: ``len(classes)``.
        input_shape: ``(H, W, C)`` of the model input.
        holdout_fraction: fraction of each domain held out as its *out* split.
        trial_seed: seeds the in/out splits (DomainBed's ``trial_seed``).
        augment: whether training batches are augmented.
        sources: one :class:`~kdg.data.pipeline.Source` per domain.
        policy: preprocessing of natural images (``None`` for the in-memory
            MNIST/digits arrays, which are only scaled to [0, 1]).
        check_command: the ``kdg data check`` command of an image folder
            dataset (``None`` for the others).
    """

    check_command: str | None = None

    def __init__(self, name: str, domains: Sequence[str], short_domains: Sequence[str],
                 classes: Sequence[str], input_shape: tuple[int, int, int],
                 sources: Sequence[Source], *, policy: ImagePolicy | None = None,
                 holdout_fraction: float = 0.2, trial_seed: int = 0):
        if not len(domains) == len(short_domains) == len(sources):
            raise ValueError("domains, short_domains and sources must have the same length")
        self.name = name
        self.domains = tuple(domains)
        self.short_domains = tuple(short_domains)
        self.classes = tuple(classes)
        self.num_classes = len(self.classes)
        self.input_shape = tuple(input_shape)
        self.sources = tuple(sources)
        self.policy = policy
        self.holdout_fraction = holdout_fraction
        self.trial_seed = trial_seed
        self._splits = [
            split_indices(source.size, holdout_fraction, trial_seed, i)
            for i, source in enumerate(self.sources)
        ]

    @property
    def augment(self) -> bool:
        return self.policy is not None and self.policy.augment

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of examples of each domain."""
        return tuple(source.size for source in self.sources)

    def domain_index(self, domain: DomainRef) -> int:
        """Position of a domain given by index, full name or short name (any case)."""
        if isinstance(domain, (int, np.integer)):
            if not 0 <= domain < len(self.domains):
                raise IndexError(f"{self.name} has {len(self.domains)} domains, no index {domain}")
            return int(domain)
        wanted = str(domain).lower()
        for names in (self.domains, self.short_domains):
            lowered = [n.lower() for n in names]
            if wanted in lowered:
                return lowered.index(wanted)
        raise KeyError(
            f"{self.name} has no domain {domain!r}; domains: "
            + ", ".join(f"{d} ({s})" for d, s in zip(self.domains, self.short_domains))
        )

    def split(self, domain: DomainRef, part: str = "in") -> Split:
        """The ``"in"``, ``"out"`` or ``"all"`` part of a domain."""
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        i = self.domain_index(domain)
        if part == "all":
            indices = np.arange(self.sources[i].size)
        else:
            indices = self._splits[i][PARTS.index(part)]
        return Split(self.domains[i], i, part, indices)

    def splits(self, domain: DomainRef) -> tuple[Split, Split]:
        """``(in, out)`` splits of a domain."""
        return self.split(domain, "in"), self.split(domain, "out")

    def train_domains(self, test_domains: Sequence[DomainRef]) -> tuple[int, ...]:
        """Indices of the domains left when ``test_domains`` are held out."""
        held_out = {self.domain_index(d) for d in test_domains}
        return tuple(i for i in range(len(self.domains)) if i not in held_out)

    def train_batches(self, domains: Sequence[DomainRef | Split], batch_size: int = 32, *,
                      seed: int = 0) -> Batches:
        """Infinite training batches over the *in* splits of ``domains``.

        Yields kdg's training batches (:mod:`kdg.layout`): ``x`` of shape
        ``(D*B, *input_shape)`` float32 and ``y`` of shape ``(D*B,)`` int32,
        example b of domain d at index ``b*D + d``, D = ``len(domains)``
        (the batches' ``num_domains``). An item of ``domains``
        may also be a :class:`Split`, used as is. Augmented when
        ``self.augment``. The same ``seed`` gives the same stream.
        """
        splits = [d if isinstance(d, Split) else self.split(d, "in") for d in domains]
        streams = [(self.sources[s.domain_index], s) for s in splits]
        batches = _train_batches(streams, batch_size, policy=self.policy, seed=seed)
        batches.check = self.check_command
        return batches

    def eval_batches(self, split: Split | DomainRef, batch_size: int = 64) -> Batches:
        """Finite, never augmented ``(B, *input_shape)`` batches of a split
        (a domain given instead of a split means the whole domain)."""
        if not isinstance(split, Split):
            split = self.split(split, "all")
        batches = _eval_batches(self.sources[split.domain_index], split, batch_size,
                                policy=self.policy)
        batches.check = self.check_command
        return batches

    def check_images(self, domains: Sequence[DomainRef] | None = None) -> None:
        """Raise :class:`~kdg.data.CorruptImageError` naming every image file
        of ``domains`` (default: all) that the pipeline cannot decode.

        Every file gets the cheap checks of :func:`kdg.data.folder.image_problem`
        (empty, not an image, cut short); up to :data:`FULL_DECODE_LIMIT`
        images are also decoded in full. A bad file that only a full decode
        finds in a larger dataset stops training or evaluation when it is met,
        with the same message. Datasets held in memory have nothing to check.
        """
        chosen = range(len(self.domains)) if domains is None else map(self.domain_index, domains)
        chosen = sorted(set(chosen))
        decode = sum(self.sources[i].size for i in chosen) <= FULL_DECODE_LIMIT
        bad = [item for i in chosen
               for item in self.sources[i].find_corrupt(np.arange(self.sources[i].size), decode)]
        if bad:
            raise CorruptImageError(bad, check=self.check_command)

    def __repr__(self) -> str:
        domains = ", ".join(f"{d}={n}" for d, n in zip(self.short_domains, self.sizes))
        return (f"DGDataset({self.name!r}, domains=[{domains}], "
                f"num_classes={self.num_classes}, input_shape={self.input_shape})")


def expected_layout(info: DatasetInfo) -> str:
    """Where a dataset is expected under the data root, for error messages."""
    if info.kind == "mnist":
        from kdg.data.mnist import MNIST_FILES, MNIST_FOLDER

        return f"ROOT/{MNIST_FOLDER}/ holding {', '.join(MNIST_FILES)}"
    if info.kind == "tfds":
        return "a tensorflow-datasets data_dir ROOT holding domainnet/<domain>"
    return f"ROOT/{info.folder}/<domain>/<class>/<image>"


def resolve_root(info: DatasetInfo, root: str | os.PathLike | None) -> Path:
    """``root``, else ``$KDG_DATA_ROOT``; a :class:`DatasetNotFoundError` if neither is set."""
    root = root if root is not None else os.environ.get(ROOT_VARIABLE)
    if not root:
        raise DatasetNotFoundError(
            info.name, f"no data root given (pass root=DIR or set {ROOT_VARIABLE})",
            expected=expected_layout(info),
        )
    return Path(root).expanduser()


def load(name: str, root: str | os.PathLike | None = None, *,
         path: str | os.PathLike | None = None,
         holdout_fraction: float = 0.2, trial_seed: int = 0,
         image_size: int | None = None, augment: bool = True,
         data_seed: int = 0, downsample: bool = False,
         download: bool = False) -> DGDataset:
    """Load a domain-generalization dataset.

    Args:
        name: ``PACS``, ``VLCS``, ``OfficeHome``, ``TerraIncognita``,
            ``DomainNet``, ``DomainNetTFDS``, ``RotatedMNIST``,
            ``ColoredMNIST``, ``RotatedDigits``, ``ColoredDigits`` or
            ``custom`` (any case; folder names such as ``office_home`` work too).
        root: data root holding ``<Folder>/<domain>/<class>/<image>``
            (default: ``$KDG_DATA_ROOT``). Not needed by the digits datasets.
        path: the dataset folder of a ``custom`` dataset (relative paths are
            taken under ``root`` when it is given).
        holdout_fraction: held-out (*out*) fraction of every domain.
        trial_seed: seeds the in/out splits.
        image_size: side of the model input. Image datasets: default 224.
            Digits datasets: size of the generated images, default 16.
            Not accepted by the MNIST datasets (28, fixed).
        augment: augment the training batches of image datasets (the
            MNIST/digits datasets are never augmented, as in DomainBed).
        data_seed: seeds the construction of the MNIST/digits environments.
        downsample: ColoredMNIST only: IRM's 14 x 14 instead of DomainBed's 28 x 28.
        download: DomainNetTFDS only: let tensorflow-datasets download and
            prepare missing domains.

    Raises:
        DatasetNotFoundError: the data root or the dataset is missing.
        DatasetLayoutError: the folder exists but has the wrong classes.
    """
    info = get_info(name)
    if path is not None and info.kind != "custom":
        raise ValueError(f"path= is for custom datasets; {info.name} lives under root")
    if downsample and info.name != "ColoredMNIST":
        raise ValueError("downsample= applies to ColoredMNIST only")
    if download and info.kind != "tfds":
        raise ValueError(
            f"download= applies to DomainNetTFDS; use kdg.data.download({info.name!r}, root)"
        )
    common = dict(holdout_fraction=holdout_fraction, trial_seed=trial_seed)

    if info.kind == "digits":
        return _load_digits(info, image_size or 16, data_seed, common)
    if info.kind == "mnist":
        if image_size is not None:
            raise ValueError(f"{info.name} images are 28 x 28; image_size cannot be set")
        return _load_mnist(info, resolve_root(info, root), data_seed, downsample, common)
    policy = ImagePolicy(image_size=image_size or 224, augment=augment)
    if info.kind == "tfds":
        from kdg.data.tfds import load_domainnet_tfds

        sources, classes = load_domainnet_tfds(resolve_root(info, root), info.domains,
                                               download=download)
        return DGDataset(info.name, info.domains, info.short_domains, classes,
                         (policy.image_size,) * 2 + (3,), sources, policy=policy, **common)
    return _load_folder(info, root, path, policy, common)


def _load_digits(info: DatasetInfo, image_size: int, data_seed: int, common: dict) -> DGDataset:
    from kdg.data.digits import colored_digits, rotated_digits

    build = rotated_digits if info.name == "RotatedDigits" else colored_digits
    return _from_arrays(info, build(image_size, data_seed), common)


def _load_mnist(info: DatasetInfo, root: Path, data_seed: int, downsample: bool,
                common: dict) -> DGDataset:
    from kdg.data.mnist import MNIST_FILES, check_mnist_files

    folder = check_mnist_files(root, info.name)
    files = tuple((os.fspath(folder / name), (folder / name).stat().st_mtime_ns)
                  for name in MNIST_FILES)
    return _from_arrays(info, _mnist_environments(files, info.name, data_seed, downsample), common)


@functools.lru_cache(maxsize=2)
def _mnist_environments(files: tuple, name: str, data_seed: int, downsample: bool) -> list:
    """The environments built from the checked files (kept for the next load in
    this process: RotatedMNIST's 58,000 rotations take seconds)."""
    from kdg.data.mnist import colored_environments, load_mnist, rotated_environments
    from kdg.data.registry import COLOR_FLIP_PROBABILITIES, ROTATIONS

    images, labels = load_mnist(Path(files[0][0]).parents[1], name)
    if name == "RotatedMNIST":
        environments = rotated_environments(images, labels, ROTATIONS, data_seed)
    else:
        environments = colored_environments(images, labels, COLOR_FLIP_PROBABILITIES,
                                            data_seed, downsample=downsample)
    for arrays in environments:
        for array in arrays:
            array.setflags(write=False)
    return environments


def _from_arrays(info: DatasetInfo, environments: list[tuple[np.ndarray, np.ndarray]],
                 common: dict) -> DGDataset:
    classes = ("5-9", "0-4") if info.num_classes == 2 else tuple(str(d) for d in range(10))
    sources = [ArraySource(images, labels) for images, labels in environments]
    return DGDataset(info.name, info.domains, info.short_domains, classes,
                     environments[0][0].shape[1:], sources, **common)


def _load_folder(info: DatasetInfo, root: str | os.PathLike | None,
                 path: str | os.PathLike | None, policy: ImagePolicy, common: dict) -> DGDataset:
    from kdg.data.folder import FileSource, scan_layout

    if info.kind == "custom":
        if path is None:
            raise ValueError("a custom dataset needs path=<folder with one sub-folder per domain>")
        folder = Path(path).expanduser()
        if root is not None and not folder.is_absolute():
            folder = Path(root) / folder
        if not folder.is_dir():
            raise DatasetNotFoundError("custom", f"{folder} is not a directory",
                                       expected=f"{folder}/<domain>/<class>/<image>",
                                       downloadable=False)
        layout = scan_layout(folder)
        domains = short = layout.domains
        if not domains:
            raise DatasetNotFoundError("custom", f"{folder} has no domain folders",
                                       expected=f"{folder}/<domain>/<class>/<image>",
                                       downloadable=False)
    else:
        folder = resolve_root(info, root) / info.folder
        missing = [d for d in info.domains if not (folder / d).is_dir()]
        if missing:
            raise DatasetNotFoundError(
                info.name, f"{folder / missing[0]} does not exist"
                + (f" (nor {len(missing) - 1} other domain folder(s))" if len(missing) > 1 else ""),
                folder=info.folder,
            )
        layout = scan_layout(folder, info.domains)
        domains, short = info.domains, info.short_domains
    check = (f"kdg data check {folder.absolute()}" if info.kind == "custom"
             else f"kdg data check {info.name} --root {folder.parent.absolute()}")
    if layout.empty:
        shown = "\n".join(f"  {os.path.abspath(path)}" for path in layout.empty[:20])
        more = f"\n  ... and {len(layout.empty) - 20} more" if len(layout.empty) > 20 else ""
        raise DatasetLayoutError(
            f"{len(layout.empty)} class folder(s) hold no image (.jpg .jpeg .png .bmp .gif "
            f".webp):\n{shown}{more}\nPut the class's images in it, or delete the folder "
            f"(a class folder absent from a domain is fine; an empty one is not). "
            f"{check} lists every problem."
        )
    if info.kind != "custom":
        if len(layout.classes) != info.num_classes:
            raise DatasetLayoutError(
                f"{info.name} in {folder} has {len(layout.classes)} class folders, expected "
                f"{info.num_classes}. Run: {check}"
            )
    empty = [d for d in domains if not any(layout.files[d].values())]
    if empty:
        raise DatasetLayoutError(
            f"{info.name}: domain folder(s) {', '.join(empty)} in {folder} hold no images "
            f"(.jpg .jpeg .png .bmp .gif .webp)."
        )
    sources: list[EncodedSource] = [FileSource.from_layout(layout, d) for d in domains]
    name = info.name if info.kind != "custom" else folder.name
    dataset = DGDataset(name, domains, short, layout.classes,
                        (policy.image_size,) * 2 + (3,), sources, policy=policy, **common)
    dataset.check_command = check
    return dataset
