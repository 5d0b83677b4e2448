"""Same initial weights and data give the same weights after several steps on
JAX, TensorFlow and PyTorch, for every algorithm (the algorithms' noise comes
from kdg.rng, which every backend computes identically)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BACKEND

from cross_backend_run import ALGORITHMS, run

BACKENDS = ("jax", "tensorflow", "torch")
SCRIPT = Path(__file__).with_name("cross_backend_run.py")


@pytest.fixture(scope="module")
def other_backends():
    procs = {}
    for backend in BACKENDS:
        if backend == BACKEND:
            continue
        env = dict(os.environ, KERAS_BACKEND=backend)
        procs[backend] = subprocess.Popen(
            [sys.executable, str(SCRIPT), *ALGORITHMS], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    results = {}
    for backend, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{backend} run failed:\n{err[-3000:]}"
        results[backend] = json.loads(out.strip().splitlines()[-1])
    return results


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_same_weights_on_every_backend(other_backends, name):
    here = run(name)
    for backend, results in other_backends.items():
        there = results[name]
        for a, b in zip(here["weights"], there["weights"]):
            np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-5,
                                       err_msg=f"{BACKEND} vs {backend}, {name}")
        for key, value in here["logs"].items():
            np.testing.assert_allclose(value, there["logs"][key], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{BACKEND} vs {backend}, {name}, {key}")
    if name in ("gga", "gga_fish"):
        # the search accepted points, so the comparison covers the acceptance
        assert here["logs"]["gga_accepted"] > 0
