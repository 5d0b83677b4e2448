"""Fixtures for the kdg.report tests: the hand-made sweeps of report_sweeps.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for "import report_sweeps"

from report_sweeps import write_toy2, write_toy3  # noqa: E402


@pytest.fixture
def toy2_dir(tmp_path) -> Path:
    return write_toy2(tmp_path / "sweep_toy2")


@pytest.fixture
def toy3_dir(tmp_path) -> Path:
    return write_toy3(tmp_path / "sweep_toy3")
