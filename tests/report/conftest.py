"""Fixtures for the kdg.report tests: the hand-made sweeps of report_sweeps.py."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for "import report_sweeps"

# kdg/__init__.py imports Keras; kdg.report itself needs none. Where Keras (or
# its backend) cannot be imported, load kdg.report under a bare "kdg" package.
try:
    import kdg.report  # noqa: F401
except ImportError:
    for name in [m for m in sys.modules if m == "kdg" or m.startswith("kdg.")]:
        del sys.modules[name]
    _pkg = types.ModuleType("kdg")
    _pkg.__path__ = [str(Path(__file__).resolve().parents[2] / "kdg")]
    sys.modules["kdg"] = _pkg
    importlib.import_module("kdg.report")

from report_sweeps import write_toy2, write_toy3  # noqa: E402


@pytest.fixture
def toy2_dir(tmp_path) -> Path:
    return write_toy2(tmp_path / "sweep_toy2")


@pytest.fixture
def toy3_dir(tmp_path) -> Path:
    return write_toy3(tmp_path / "sweep_toy3")
