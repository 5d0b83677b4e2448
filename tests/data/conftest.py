"""Fixtures for the kdg.data tests: tiny image folders on disk and a local HTTP server.

Everything is offline: images are made with NumPy and PIL, and downloads are
served by ``http.server`` on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DOMAINS = ("gamma", "alpha", "beta")  # written in this order; loaded sorted
CLASSES = ("zebra", "cat", "dog")
IMAGES_PER_CLASS = 4


def write_image(path: Path, rng: np.random.Generator, size: tuple[int, int] | None = None,
                color: tuple[int, int, int] | None = None) -> None:
    """Write a small RGB image (random noise, or one ``color``) as PNG or JPEG by suffix."""
    height, width = size or (int(rng.integers(20, 40)), int(rng.integers(20, 40)))
    if color is None:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    else:
        pixels = np.broadcast_to(np.array(color, np.uint8), (height, width, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(pixels)).save(path)


def make_folder(base: Path, domains=DOMAINS, classes=CLASSES, per_class=IMAGES_PER_CLASS,
                seed: int = 0) -> Path:
    """A dataset folder ``base/<domain>/<class>/<i>.(png|jpg)``, PNG and JPEG alternating."""
    rng = np.random.default_rng(seed)
    for domain in domains:
        for cls in classes:
            for i in range(per_class):
                write_image(base / domain / cls / f"{i:02d}.{'png' if i % 2 else 'jpg'}", rng)
    return base


@pytest.fixture(scope="session")
def clean_folder(tmp_path_factory) -> Path:
    """3 domains x 3 classes x 4 images, nothing wrong."""
    return make_folder(tmp_path_factory.mktemp("clean") / "toy")


@pytest.fixture(scope="session")
def broken_folder(tmp_path_factory) -> Path:
    """Like ``clean_folder`` but: ``beta`` has no ``zebra`` folder; ``alpha/cat`` has a
    garbage ``.jpg`` and a truncated ``.png``; ``gamma/dog`` has a ``notes.txt``."""
    base = make_folder(tmp_path_factory.mktemp("broken") / "broken")
    for path in sorted((base / "beta" / "zebra").iterdir()):
        path.unlink()
    (base / "beta" / "zebra").rmdir()
    (base / "alpha" / "cat" / "garbage.jpg").write_bytes(b"this is not a JPEG file" * 10)
    buffer = io.BytesIO()
    Image.fromarray(np.full((30, 30, 3), 99, np.uint8)).save(buffer, format="PNG")
    (base / "alpha" / "cat" / "truncated.png").write_bytes(buffer.getvalue()[:60])
    (base / "gamma" / "dog" / "notes.txt").write_text("not an image")
    return base


@pytest.fixture(scope="session")
def pacs_root(tmp_path_factory) -> Path:
    """A data root with a (tiny) PACS in DomainBed's layout: 4 domains x 7 classes x 2 images."""
    root = tmp_path_factory.mktemp("root")
    make_folder(root / "PACS", ("art_painting", "cartoon", "photo", "sketch"),
                ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person"), 2)
    return root


class FileServer:
    """A local HTTP server of in-memory files that honours ``Range`` requests.

    ``files[path] = bytes`` are served at ``url(path)``; ``cut[path] = n``
    makes the next ``n`` requests of ``path`` stop half way through the body
    (headers announce the full length); paths in ``ignore_range`` are always
    sent whole with status 200; ``status[path] = code`` answers with an error.
    ``requests`` records ``(path, Range header)``.
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.ignore_range: set[str] = set()
        self.status: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path
                byte_range = self.headers.get("Range")
                server.requests.append((path, byte_range))
                if path in server.status:
                    self.send_error(server.status[path])
                    return
                if path not in server.files:
                    self.send_error(404)
                    return
                body = server.files[path]
                start = 0
                if byte_range and path not in server.ignore_range:
                    start = int(byte_range.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if server.cut.get(path, 0) > 0:
                    server.cut[path] -= 1
                    payload = payload[: len(payload) // 2]
                    self.close_connection = True
                self.wfile.write(payload)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def file_server():
    server = FileServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def tools():
    """The helpers above, for tests that build their own folders."""
    return type("Tools", (), {"make_folder": staticmethod(make_folder),
                              "write_image": staticmethod(write_image)})
