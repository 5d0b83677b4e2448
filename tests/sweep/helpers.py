"""Shared pieces of the kdg.sweep tests: a tiny base recipe, sweep files,
running `kdg sweep` in a subprocess on the session's backend."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import yaml

BACKEND = keras.backend.backend()

# ColoredDigits: 3 domains of ~600 16x16 images, 2 classes; a few steps each.
BASE = {
    "dataset": {"name": "ColoredDigits", "test_domains": [0]},
    "model": {"backbone": "small_cnn", "pretrained": False, "dropout": 0.0},
    "algorithm": {"name": "erm"},
    "training": {"steps": 6, "batch_size": 8, "eval_every": 3, "lr": 1.0e-3,
                 "eval_batch_size": 512},
}


def write_sweep(directory: Path, name: str = "sweep.yaml", **fields) -> Path:
    """A sweep file with an inline base recipe (or fields['base'])."""
    directory.mkdir(parents=True, exist_ok=True)
    content = {"base": BASE, "output_dir": str(directory / "out"), **fields}
    path = directory / name
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def env() -> dict:
    return dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")


def sweep_command(*args) -> list[str]:
    return [sys.executable, "-c", "from kdg.sweep.cli import sweep; sweep()", *map(str, args)]


def run_sweep_cli(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_command(*args), env=env(), text=True, capture_output=True,
                          timeout=timeout)
