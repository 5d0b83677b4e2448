"""Check a dataset folder before training on it: :func:`check_layout`, :func:`format_report`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kdg.data.dataset import resolve_root
from kdg.data.folder import IMAGE_EXTENSIONS, find_corrupt_images, scan_layout
from kdg.data.registry import get_info


@dataclass
class LayoutReport:
    """What :func:`check_layout` found.

    Attributes:
        dataset: dataset name (the folder name for a custom dataset).
        path: the dataset folder.
        domains: domain folders found (sorted).
        classes: sorted union of the class folders of all domains.
        counts: ``counts[domain][class]`` = number of loadable image files.
        missing_domains: expected domains without a folder.
        unexpected_domains: folders that are not expected domains (ignored by the loader).
        missing_classes: per domain, the classes of the dataset it has no
            folder of (fine: classes are the union of all domains' folders).
        empty_folders: class folders that hold no image (refused by the loader).
        expected_num_classes: the registered number of classes (``None``: custom).
        corrupt: ``(path, reason)`` of the image files that the pipeline cannot
            decode (:func:`kdg.data.folder.image_problem`).
        ignored: files that are not images in a loadable format.
        decoded: whether every image was decoded (otherwise only the cheap
            checks ran: empty, not an image, cut short).
    """

    dataset: str
    path: Path
    domains: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    missing_domains: tuple[str, ...] = ()
    unexpected_domains: tuple[str, ...] = ()
    missing_classes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    empty_folders: list[str] = field(default_factory=list)
    expected_num_classes: int | None = None
    corrupt: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    decoded: bool = False

    @property
    def total(self) -> int:
        return sum(sum(per_class.values()) for per_class in self.counts.values())

    @property
    def problems(self) -> list[str]:
        """One line per problem that would make loading fail or mislead training."""
        problems = []
        if not self.path.is_dir():
            problems.append(f"{self.path} does not exist")
        if self.missing_domains:
            problems.append(f"missing domain folder(s): {', '.join(self.missing_domains)}")
        if self.empty_folders:
            problems.append(f"{len(self.empty_folders)} class folder(s) hold no image "
                            "(put the class's images in them, or delete them)")
        for domain, per_class in self.counts.items():
            if not sum(per_class.values()):
                problems.append(f"{domain}: no image at all")
        if self.expected_num_classes is not None and self.classes and (
            len(self.classes) != self.expected_num_classes
        ):
            problems.append(
                f"{len(self.classes)} classes found, {self.expected_num_classes} expected"
            )
        if self.corrupt:
            problems.append(f"{len(self.corrupt)} image file(s) do not decode "
                            "(delete or replace them)")
        return problems

    @property
    def ok(self) -> bool:
        return not self.problems


def check_layout(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None, *,
                 path: str | os.PathLike | None = None, decode: bool = True,
                 workers: int = 8) -> LayoutReport:
    """Check a dataset folder in the layout ``ROOT/<Folder>/<domain>/<class>/<image>``.

    Args:
        name_or_path: a registered folder dataset (PACS, VLCS, OfficeHome,
            TerraIncognita, DomainNet), looked up under ``root``; ``"custom"``
            with ``path``, as in a recipe; or the path of a custom dataset
            folder. A custom dataset's path is relative to ``root`` when
            given, else to the working directory.
        root: the data root (default ``$KDG_DATA_ROOT``).
        path: the folder of a ``"custom"`` dataset (the one holding the
            domain folders).
        decode: decode every image to find corrupt files (slower); without
            it, only the cheap checks of :func:`kdg.data.folder.image_problem`.
        workers: threads used to decode.
    """
    info = None
    try:
        info = get_info(os.fspath(name_or_path))
    except KeyError:
        pass
    if info is not None and info.kind == "custom":
        if path is None:
            raise ValueError("a custom dataset needs its folder: --path DIR (path=DIR), the "
                             "folder that holds one sub-folder per domain")
        info, name_or_path = None, path
    elif path is not None:
        raise ValueError(f"--path (path=) is for a custom dataset; {name_or_path} is found "
                         "under --root (root=)")
    if info is not None and info.kind != "folder":
        raise ValueError(
            f"check_layout checks image folders; {info.name} is not one "
            "(pass a folder dataset's name or a custom dataset's path)"
        )
    if info is not None:
        path = resolve_root(info, root) / info.folder
        dataset, expected = info.name, info.domains
    else:
        path = Path(name_or_path).expanduser()
        if root is not None and not path.is_absolute():
            path = Path(root) / path
        dataset, expected = path.name, None
    report = LayoutReport(dataset, path, expected_num_classes=info.num_classes if info else None)
    if not path.is_dir():
        report.missing_domains = tuple(expected or ())
        return report

    layout = scan_layout(path, expected)
    found = tuple(sorted(entry.name for entry in path.iterdir()
                         if entry.is_dir() and not entry.name.startswith(".")))
    report.domains = layout.domains
    report.classes = layout.classes
    report.counts = {
        domain: {cls: len(layout.files[domain].get(cls, [])) for cls in layout.classes}
        for domain in layout.domains
    }
    if expected is not None:
        report.missing_domains = tuple(d for d in expected if d not in found)
        report.unexpected_domains = tuple(d for d in found if d not in expected)
    report.missing_classes = {
        domain: missing
        for domain, per_class in layout.files.items()
        if (missing := tuple(cls for cls in layout.classes if cls not in per_class))
    }
    report.empty_folders = layout.empty
    report.ignored = layout.ignored
    paths = [p for per_class in layout.files.values() for files in per_class.values()
             for p in files]
    report.corrupt = find_corrupt_images(paths, workers, decode=decode)
    report.decoded = decode
    return report


def format_report(report: LayoutReport, *, max_listed: int | None = 10) -> str:
    """A printable summary: counts per domain and class, then the problems
    (``max_listed`` files of each kind; ``None``: all)."""
    lines = [f"{report.dataset}: {report.path}"]
    if report.counts:
        width = max(len(c) for c in report.classes) if report.classes else 5
        header = " " * width + "".join(f"{d[:12]:>13}" for d in report.domains)
        lines += ["", header]
        for cls in report.classes:
            lines.append(f"{cls:<{width}}" + "".join(
                f"{report.counts[d][cls]:>13}" for d in report.domains))
        lines.append(f"{'total':<{width}}" + "".join(
            f"{sum(report.counts[d].values()):>13}" for d in report.domains))
        lines += ["", f"{len(report.domains)} domains, {len(report.classes)} classes, "
                  f"{report.total} images"
                  + ("" if report.decoded else
                     " (not decoded: only empty, non-image and cut-short files looked for)")]
    for domain, classes in report.missing_classes.items():
        lines.append(f"note: {domain}: no image for class(es) {', '.join(classes)} (no folder; "
                     "fine, labels index the classes of all domains)")
    if report.unexpected_domains:
        lines.append(f"note: folders ignored (not domains of {report.dataset}): "
                     + ", ".join(report.unexpected_domains))
    if report.ignored:
        lines.append(f"note: {len(report.ignored)} file(s) ignored, not "
                     f"{' '.join(IMAGE_EXTENSIONS)}:")
        lines += _listed(report.ignored, max_listed)
    problems = report.problems
    lines.append("OK" if not problems else f"{len(problems)} problem(s):")
    for problem in problems:
        lines.append(f"- {problem}")
        if problem.startswith(f"{len(report.empty_folders)} class folder(s)"):
            lines += _listed(report.empty_folders, max_listed)
        elif problem.startswith(f"{len(report.corrupt)} image file(s)"):
            lines += _listed([f"{path}: {reason}" for path, reason in report.corrupt], max_listed)
    return "\n".join(lines)


def _listed(items: list[str], max_listed: int | None) -> list[str]:
    lines = [f"  {item}" for item in items[:max_listed]]
    if max_listed is not None and len(items) > max_listed:
        lines.append(f"  ... and {len(items) - max_listed} more")
    return lines
