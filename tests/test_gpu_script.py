"""benchmarks/gpu/: the prepared GPU run's comparison of one step on two
devices (check_steps.py) and its merging of the bench's groups (drive.py).

On this CPU machine the check compares the CPU with itself: a copy given
the same variables must agree exactly, and a copy whose first weight is
moved by 1e-3 must be reported as differing by about that much (what a GPU
that computed a step differently would look like)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

GPU = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu"
sys.path.insert(0, str(GPU))

import check_steps  # noqa: E402
import drive  # noqa: E402


def check(tmp_path, perturb):
    out = tmp_path / f"check_{perturb}.json"
    status = check_steps.main(["--devices", "cpu,cpu", "--model", "mlp", "--image-size", "4",
                               "--domains", "2", "--batch", "3", "--algorithm", "erm",
                               "--perturb", str(perturb), "--out", str(out),
                               "--markdown", str(tmp_path / "check.md")])
    return status, json.loads(out.read_text())["algorithms"]["erm"]


def test_same_variables_on_both_devices_agree(tmp_path):
    status, record = check(tmp_path, 0.0)
    assert status == 0 and record["ok"]
    assert record["max_abs_diff"] == 0.0
    assert record["variables"] >= 4 and record["loss"][0] == record["loss"][1]


def test_a_different_weight_is_caught(tmp_path):
    status, record = check(tmp_path, 1e-3)
    assert status == 1 and not record["ok"]
    # the moved weight is still about 1e-3 off after one step of SGD
    assert 5e-4 < record["max_abs_diff"] < 2e-3
    assert record["worst_variable"] == 0
    assert "FAIL" in (tmp_path / "check.md").read_text()


def test_bench_groups_merge_into_one_table():
    core = {"algorithms": ["erm", "fish"], "labels": {"erm": "ERM", "fish": "Fish"}, "model": "m"}
    rest = {"algorithms": ["mixup"], "labels": {"mixup": "Mixup"}, "model": "m"}
    record = lambda group, *names: {"runner": "jax", "device": "gpu",  # noqa: E731
                                    "algorithms": {n: {"group": group} for n in names}}
    entry, notes = drive.merged([
        (core, "jax", record(1, "erm", "fish")),
        (core, "torch", record(1, "erm", "fish")),
        (rest, "jax", {"runner": "jax", "error": "timed out after 60 s"}),
        (rest, "torch", record(2, "mixup", "erm")),  # a second ERM: the first one stays
    ])
    assert entry["config"]["algorithms"] == ["erm", "fish", "mixup"]
    assert set(entry["config"]["labels"]) == {"erm", "fish", "mixup"}
    assert list(entry["runs"]["jax"]["algorithms"]) == ["erm", "fish"]
    assert list(entry["runs"]["torch"]["algorithms"]) == ["erm", "fish", "mixup"]
    assert entry["runs"]["torch"]["algorithms"]["erm"]["group"] == 1
    assert notes == ["jax, mixup: timed out after 60 s"]
    only_failed, notes = drive.merged([(rest, "jax", {"runner": "jax", "error": "exit 1"})])
    assert "error" in only_failed["runs"]["jax"] and len(notes) == 1


@pytest.mark.parametrize("small", [True, False])
def test_groups_put_the_core_first_and_cut_jax_into_chunks(small):
    args = drive.argparse.Namespace(runners=["reference", "jax"], jax_chunk=2)
    names = ["erm", "fish", "corgrad", "ggal", "mixup", "sam", "vrex"][: 5 if small else 7]
    groups = drive.bench_groups(args, names)
    assert groups[:3] == [("reference", ["erm", "fish", "corgrad", "ggal"]),
                          ("jax", ["erm", "fish"]), ("jax", ["corgrad", "ggal"])]
    rest = names[4:]
    assert groups[3] == ("reference", rest)
    assert [a for r, g in groups[4:] for a in g] == rest and all(len(g) <= 2 for _, g in groups[4:])
