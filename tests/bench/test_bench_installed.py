"""`kdg bench` from an installed kdg: a wheel built from this checkout,
installed into a fresh virtual environment and run from outside the
repository, times the plain PyTorch reference and a Keras backend
(everything the benchmark needs ships in the package).

To stay offline and fast, the fresh environment takes kdg's dependencies
(Keras, TensorFlow, PyTorch, ...) from this test's environment through a
path file: a plain directory entry, so that this environment's own
(editable) kdg is not loaded there; only the wheel's kdg is."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import pytest

REPO = Path(__file__).resolve().parents[2]


def run(args, **kwargs):
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


@pytest.mark.skipif(keras.backend.backend() != "torch",
                    reason="runs its runners in their own processes: once per test run, "
                           "in the torch session")
def test_kdg_bench_quick_runs_from_an_installed_wheel(tmp_path):
    pytest.importorskip("setuptools")  # builds the wheel offline (no build isolation)
    pytest.importorskip("torch")
    source = tmp_path / "source"  # a copy: building writes build/ and egg-info beside it
    shutil.copytree(REPO / "kdg", source / "kdg",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run(pip + ["wheel", "--no-deps", "--no-build-isolation", "--no-index",
               "-w", str(tmp_path / "wheel"), str(source)])
    (wheel,) = (tmp_path / "wheel").glob("kdg-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    run(pip + ["--python", str(python), "install", "--no-deps", "--no-index", str(wheel)])
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
                    ).stdout.strip())
    deps = [p for p in sys.path if p.endswith("-packages") and Path(p).is_dir()]
    (site / "_kdg_test_dependencies.pth").write_text("\n".join(deps) + "\n")

    elsewhere = tmp_path / "elsewhere"  # no benchmarks/ folder anywhere near
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    where = run([str(python), "-c", "import kdg; print(kdg.__file__)"],
                env=env, cwd=elsewhere).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the wheel's copy, not the checkout

    proc = run([str(venv / "bin" / "kdg"), "bench", "--quick", "--backend", "reference",
                "--backend", "tensorflow", "--algorithm", "erm", "--json", "results.json"],
               env=env, cwd=elsewhere)
    results = json.loads((elsewhere / "results.json").read_text())
    (entry,) = results["scenarios"]
    assert set(entry["runs"]) == {"reference", "tensorflow"}
    for runner, record in entry["runs"].items():
        erm = record["algorithms"]["erm"]
        assert erm["finite"] and math.isfinite(erm["median_s"]) and erm["median_s"] > 0, runner
    assert "| ERM |" in proc.stdout
