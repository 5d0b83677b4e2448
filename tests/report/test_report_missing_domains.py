"""A run whose records lack a domain's accuracy (an empty split: a domain too
small for its out split, or holdout_fraction 0) keeps every domain column;
the missing values are said, never dropped silently.

The records are written by hand as kdg writes them: a split that is empty
has no env{i}_{in,out}_acc key, and `args["domains"]` names every domain.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from click.testing import CliRunner

from kdg.cli import main as kdg
from kdg.report import report
from kdg.report.loading import count_envs

DOMAINS = ["a", "b", "c"]


def record(test_env: int, step: int, accs: dict[str, float]) -> dict:
    """One kdg record: `accs` maps "in0", "out2", ... to accuracies."""
    out = {"step": step, "epoch": step / 10, "loss": 0.5}
    for name, value in accs.items():
        part, env = name[:-1], name[-1]
        out[f"env{env}_{part}_acc"] = value
        out[f"env{env}_{part}_loss"] = 1 - value
    out["args"] = {"dataset": "Toy", "algorithm": "erm", "test_envs": [test_env],
                   "hparams_seed": 0, "trial_seed": 0, "seed": 0, "domains": DOMAINS}
    out["hparams"] = {"lr": 1e-3}
    return out


# domain b (env 1) has no out split: no env1_out_acc anywhere
NO_OUT_FOR_B = {
    0: [record(0, 10, dict(in0=.50, out0=.52, in1=.60, in2=.70, out2=.71)),
        record(0, 20, dict(in0=.58, out0=.56, in1=.62, in2=.75, out2=.74))],
    1: [record(1, 10, dict(in0=.80, out0=.70, in1=.30, in2=.70, out2=.80)),  # val .75
        record(1, 20, dict(in0=.85, out0=.80, in1=.45, in2=.75, out2=.90)),  # val .85: chosen
        record(1, 30, dict(in0=.81, out0=.78, in1=.40, in2=.70, out2=.82))],  # val .80
    2: [record(2, 10, dict(in0=.60, out0=.61, in1=.62, in2=.66, out2=.64))],
}


def write(root: Path, runs: dict[int, list[dict]]) -> Path:
    for test_env, records in runs.items():
        run = root / f"te{test_env}"
        run.mkdir(parents=True)
        (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (run / "done").write_text("")
    return root


def cells(text: str) -> dict[str, str]:
    """column -> mean of the ERM row of the Toy table in a CSV report."""
    rows = [r for r in csv.DictReader(io.StringIO(text))
            if r["kind"] == "dataset" and r["algorithm"] == "erm"]
    return {r["column"]: r["mean"] for r in rows}


def test_domains_are_counted_from_args_not_from_the_first_missing_key():
    assert count_envs(NO_OUT_FOR_B[0][0]) == 3
    without_args = {k: v for k, v in NO_OUT_FOR_B[0][0].items() if k != "args"}
    assert count_envs(without_args) == 3  # env2's keys, after the gap at env1_out_acc
    assert count_envs({"step": 0}) == 0
    only_a = record(0, 10, dict(in0=.5, out0=.5))  # args name three domains
    assert count_envs(only_a) == 3


def test_training_domain_selection_keeps_every_column_and_says_what_is_missing(tmp_path):
    root = write(tmp_path / "runs", NO_OUT_FOR_B)
    # test env 1 is scored on env0_out and env2_out; test envs 0 and 2 need env1_out
    assert cells(report(root, "training_domain", fmt="csv")) == {
        "a": "", "b": "45.0000", "c": "", "Avg": ""}
    text = report(root, "training_domain", fmt="text")
    assert "no result for a, c" in text
    assert "Toy: 3 run(s) have no env1_out_acc in their results" in text
    assert "holdout_fraction 0, or a domain with too few examples" in text

    result = CliRunner().invoke(kdg, ["report", str(root), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert cells(result.output) == {"a": "", "b": "45.0000", "c": "", "Avg": ""}


def test_oracle_selection_keeps_every_column(tmp_path):
    root = write(tmp_path / "runs", NO_OUT_FOR_B)
    # the oracle reads the test domain's own out split: b has none
    assert cells(report(root, "oracle", fmt="csv")) == {
        "a": "58.0000", "b": "", "c": "66.0000", "Avg": ""}


def test_holdout_fraction_zero_keeps_every_column(tmp_path):
    runs = {t: [record(t, 10, {f"in{i}": .5 + i / 10 for i in range(3)})] for t in range(3)}
    root = write(tmp_path / "runs", runs)
    assert cells(report(root, "training_domain", fmt="csv")) == {
        "a": "", "b": "", "c": "", "Avg": ""}
    text = report(root, "training_domain", fmt="text")
    assert "no env0_out_acc, env1_out_acc, env2_out_acc" in text


def test_selection_only_runs_lack_nothing_and_select_as_full_runs(tmp_path):
    """`eval_splits: selection` leaves out the in split of the training
    domains: its runs select what full runs select, with no note of missing
    accuracies; a full run lacking those keys still gets the note."""
    full = {t: [record(t, 10, {f"{p}{i}": .4 + t / 10 + i / 20 + (p == "out") / 50
                               for i in range(3) for p in ("in", "out")}),
                record(t, 20, {f"{p}{i}": .5 + t / 10 - i / 30 + (p == "in") / 40
                               for i in range(3) for p in ("in", "out")})]
            for t in range(3)}
    lean = {t: [dict(r) for r in records] for t, records in full.items()}
    for t, records in lean.items():
        for r in records:
            r["args"] = dict(r["args"], eval_splits="selection")
            for i in range(3):
                if i != t:
                    del r[f"env{i}_in_acc"], r[f"env{i}_in_loss"]
    for method in ("training_domain", "oracle"):
        expected = cells(report(write(tmp_path / f"full_{method}", full), method, fmt="csv"))
        assert all(expected.values())
        root = write(tmp_path / f"lean_{method}", lean)
        assert cells(report(root, method, fmt="csv")) == expected
        assert "have no" not in report(root, method, fmt="text")
    unmarked = {t: [dict(r, args={k: v for k, v in r["args"].items() if k != "eval_splits"})
                    for r in records] for t, records in lean.items()}
    text = report(write(tmp_path / "unmarked", unmarked), fmt="text")
    assert "Toy: 1 run(s) have no env1_in_acc, env2_in_acc in their results" in text
