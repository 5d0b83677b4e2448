"""Downloads against a local HTTP server: resume, checksums, errors, extraction, layout."""

import hashlib
import io
import json
import socket
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from kdg import data
from kdg.data import downloads as dl

PACS = data.get_info("PACS")
PACS_CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
BODY = bytes(range(256)) * 5000  # 1.28 MB: more than one 1 MiB chunk


def png_bytes(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def pacs_zip() -> bytes:
    """PACS as DomainBed's archive holds it: ``kfold/<domain>/<class>/<image>``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for d, domain in enumerate(PACS.domains):
            for c, cls in enumerate(PACS_CLASSES):
                archive.writestr(f"kfold/{domain}/{cls}/{d}{c}.png", png_bytes(10 * c + d))
    return buffer.getvalue()


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def test_fetch_downloads_and_verifies(file_server, tmp_path):
    file_server.files["/f.bin"] = BODY
    seen = []
    path = dl.fetch(file_server.url("/f.bin"), tmp_path / "sub" / "f.bin", sha256=sha(BODY),
                    progress=lambda name, done, total: seen.append((name, done, total)))
    assert path.read_bytes() == BODY
    assert seen[-1] == ("f.bin", len(BODY), len(BODY)) and len(seen) > 1
    assert not (tmp_path / "sub" / "f.bin.part").exists()
    dl.fetch(file_server.url("/f.bin"), path, sha256=sha(BODY))  # present: no request
    assert len(file_server.requests) == 1


def test_cut_transfer_is_resumed_on_the_next_call(file_server, tmp_path):
    file_server.files["/f.bin"] = BODY
    file_server.cut["/f.bin"] = 1
    dest = tmp_path / "f.bin"
    with pytest.raises(data.DownloadError, match="run the download again to resume"):
        dl.fetch(file_server.url("/f.bin"), dest, sha256=sha(BODY), retries=0)
    part = tmp_path / "f.bin.part"
    assert part.stat().st_size == len(BODY) // 2 and not dest.exists()
    dl.fetch(file_server.url("/f.bin"), dest, sha256=sha(BODY), retries=0)
    assert dest.read_bytes() == BODY and not part.exists()
    assert file_server.requests[-1] == ("/f.bin", f"bytes={len(BODY) // 2}-")


def test_retries_resume_within_one_call(file_server, tmp_path):
    file_server.files["/f.bin"] = BODY
    file_server.cut["/f.bin"] = 2
    dest = dl.fetch(file_server.url("/f.bin"), tmp_path / "f.bin", sha256=sha(BODY),
                    retries=2, retry_wait=0)
    assert dest.read_bytes() == BODY
    ranges = [r for _, r in file_server.requests]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and len(ranges) == 3


def test_server_ignoring_range_restarts_the_file(file_server, tmp_path):
    file_server.files["/f.bin"] = BODY
    file_server.ignore_range.add("/f.bin")
    (tmp_path / "f.bin.part").write_bytes(b"stale partial content")
    dest = dl.fetch(file_server.url("/f.bin"), tmp_path / "f.bin", sha256=sha(BODY))
    assert dest.read_bytes() == BODY


def test_checksum_mismatch_deletes_the_file(file_server, tmp_path):
    file_server.files["/f.bin"] = BODY
    with pytest.raises(data.ChecksumError, match="expected 0000"):
        dl.fetch(file_server.url("/f.bin"), tmp_path / "f.bin", sha256="0" * 64, dataset="X")
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()


@pytest.mark.parametrize("code", [404, 410])
def test_gone_source_names_dataset_url_and_what_to_do(file_server, tmp_path, code):
    file_server.status["/gone.zip"] = code
    url = file_server.url("/gone.zip")
    with pytest.raises(data.DownloadError) as error:
        dl.fetch(url, tmp_path / "PACS.zip", dataset="PACS", homepage="https://example.org/pacs")
    message = str(error.value)
    assert "PACS" in message and url in message and f"HTTP {code}" in message
    assert "by hand" in message and str(tmp_path / "PACS.zip") in message
    assert "https://example.org/pacs" in message
    assert len(file_server.requests) == 1  # not retried


def test_connection_refused(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/VLCS.tar.gz"
    with pytest.raises(data.DownloadError, match="cannot connect") as error:
        dl.fetch(url, tmp_path / "VLCS.tar.gz", dataset="VLCS", retry_wait=0)
    assert "VLCS" in str(error.value) and url in str(error.value)


def test_download_extracts_into_domainbed_layout(file_server, tmp_path, monkeypatch):
    body = pacs_zip()
    file_server.files["/PACS.zip"] = body
    spec = dl.SOURCES["PACS"]
    monkeypatch.setitem(dl.SOURCES, "PACS", dl.DownloadSpec(
        "PACS", (dl.Resource(file_server.url("/PACS.zip"), "PACS.zip", sha(body)),),
        spec.target, spec.homepage, spec.arrange))
    path = data.download("PACS", tmp_path)
    assert path == tmp_path / "PACS"
    assert sorted(p.name for p in path.iterdir()) == list(PACS.domains)
    assert not (tmp_path / "PACS.zip").exists() and not (tmp_path / "kfold").exists()
    ds = data.load("PACS", tmp_path, image_size=8)
    assert ds.sizes == (7, 7, 7, 7) and ds.classes == PACS_CLASSES
    assert data.check_layout("PACS", tmp_path).ok
    data.download("PACS", tmp_path)  # complete: nothing fetched again
    assert len(file_server.requests) == 1


def test_incomplete_target_is_not_overwritten(tmp_path):
    (tmp_path / "PACS" / "photo").mkdir(parents=True)
    with pytest.raises(data.DatasetLayoutError, match="incomplete"):
        data.download("PACS", tmp_path)


def test_terra_incognita_is_arranged_by_location_and_category(file_server, tmp_path,
                                                               monkeypatch):
    images = io.BytesIO()
    with tarfile.open(fileobj=images, mode="w:gz") as tar:
        for name in ("a.jpg", "b.jpg", "c.jpg"):
            content = png_bytes(len(name))
            info = tarfile.TarInfo(f"eccv_18_all_images_sm/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    annotations = {
        "categories": [{"id": 1, "name": "bobcat"}, {"id": 2, "name": "car"}],
        "images": [{"id": "a", "file_name": "a.jpg", "location": 38},
                   {"id": "b", "file_name": "b.jpg", "location": "100"},
                   {"id": "c", "file_name": "c.jpg", "location": 7}],
        "annotations": [{"image_id": "a", "category_id": 1}, {"image_id": "b", "category_id": 1},
                        {"image_id": "b", "category_id": 2}, {"image_id": "c", "category_id": 1}],
    }
    labels = io.BytesIO()
    with zipfile.ZipFile(labels, "w") as archive:
        archive.writestr("caltech_images_20210113.json", json.dumps(annotations))
    file_server.files["/images.tar.gz"] = images.getvalue()
    file_server.files["/labels.zip"] = labels.getvalue()
    spec = dl.SOURCES["TerraIncognita"]
    monkeypatch.setitem(dl.SOURCES, "TerraIncognita", dl.DownloadSpec(
        "TerraIncognita",
        (dl.Resource(file_server.url("/images.tar.gz"), "terra_images.tar.gz"),
         dl.Resource(file_server.url("/labels.zip"), "labels.zip")),
        spec.target, spec.homepage, spec.arrange))
    folder = data.download("TerraIncognita", tmp_path)
    assert folder == tmp_path / "terra_incognita"
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.jpg"))
    assert files == ["location_100/bobcat/b.jpg", "location_38/bobcat/a.jpg"]


def test_nothing_to_download_for_offline_datasets(tmp_path):
    with pytest.raises(ValueError, match="nothing to download"):
        data.download("RotatedDigits", tmp_path)


def test_mnist_sources_are_the_four_original_files_with_their_md5():
    resources = dl.SOURCES["MNIST"].resources
    assert [r.path for r in resources] == [
        "MNIST/train-images-idx3-ubyte.gz", "MNIST/train-labels-idx1-ubyte.gz",
        "MNIST/t10k-images-idx3-ubyte.gz", "MNIST/t10k-labels-idx1-ubyte.gz"]
    assert all(r.url.endswith(r.path.split("/")[1]) and len(r.md5) == 32 for r in resources)