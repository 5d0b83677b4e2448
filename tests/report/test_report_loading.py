"""Reading results.jsonl files back into runs."""

import json
import math

import pytest

from report_sweeps import TOY2, make_record, write_run
from kdg.report import KNOWN_DOMAIN_NAMES, ResultsWarning, domain_names, load_runs
from kdg.report.loading import read_run


def test_truncated_last_line_is_dropped_with_a_warning(toy2_dir):
    with pytest.warns(ResultsWarning, match="truncated"):
        runs = load_runs(toy2_dir)
    assert len(runs) == len(TOY2) == 16
    (killed,) = [r for r in runs if not r.done]
    assert (killed.algorithm, killed.test_envs, killed.trial_seed, killed.hparams_seed) == \
        ("Fish", (1,), 1, 0)
    assert killed.truncated and killed.bad_lines == [3]
    assert killed.steps == [0, 100]          # the two complete lines survive
    assert all(r.done and not r.bad_lines for r in runs if r is not killed)


def test_null_and_nan_values_read_as_nan(toy2_dir):
    with pytest.warns(ResultsWarning):
        runs = load_runs(toy2_dir)
    erm = next(r for r in runs if r.algorithm == "ERM" and r.steps == [0, 100, 200])
    steps, cos_min = erm.series("grad_cos_min")     # null at step 0
    assert steps == [0, 100, 200] and math.isnan(cos_min[0]) and cos_min[1] == pytest.approx(-0.2)
    _, cos_mean = erm.series("grad_cos_mean")       # NaN at step 200
    assert math.isnan(cos_mean[2])
    _, absent = erm.series("gga_cos_before")        # never logged
    assert all(math.isnan(v) for v in absent)


def test_corrupt_middle_line_is_skipped_and_named(tmp_path):
    run_dir = write_run(tmp_path, "Toy2", ("ERM", (0,), 0, 0), [(0, .5, .5, .5, .5)])
    good = (run_dir / "results.jsonl").read_text()
    (run_dir / "results.jsonl").write_text("{oops\n" + good)
    with pytest.warns(ResultsWarning, match="line 1 is not valid JSON"):
        run = read_run(run_dir / "results.jsonl")
    assert run.steps == [0] and run.bad_lines == [1] and not run.truncated


def test_recursive_search_over_several_directories(toy2_dir, toy3_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.warns(ResultsWarning):
        runs = load_runs([toy2_dir, toy3_dir, tmp_path / "empty", toy2_dir])  # toy2 twice
    assert len(runs) == 16 + 6                          # no duplicates
    assert {r.dataset for r in runs} == {"Toy2", "Toy3"}
    assert [str(r.path) for r in runs] == sorted(str(r.path) for r in runs)


def test_missing_directory_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_runs(tmp_path / "nope")


def test_domain_names_precedence(tmp_path):
    record = make_record("PACS", "ERM", [0], 0, 0, (0, .5, .5, .5, .5, .5, .5, .5, .5))
    record["args"]["env_names"] = ["art", "cartoon", "photo", "sketch"]
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "results.jsonl").write_text(json.dumps(record) + "\n")
    (run := read_run(run_dir / "results.jsonl"))
    assert domain_names("PACS", 4, [run], {"PACS": list("wxyz")}) == list("wxyz")
    assert domain_names("PACS", 4, [run]) == ["art", "cartoon", "photo", "sketch"]
    assert domain_names("PACS", 4) == list(KNOWN_DOMAIN_NAMES["PACS"]) == ["A", "C", "P", "S"]
    assert domain_names("PACS", 4, [run], {"PACS": ["too", "few"]}) == ["art", "cartoon",
                                                                       "photo", "sketch"]
    assert domain_names("Toy2", 2) == ["env0", "env1"]


def test_run_without_identity_is_skipped(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "results.jsonl").write_text(json.dumps({"step": 0, "args": {"dataset": "X"}}) + "\n")
    with pytest.warns(ResultsWarning, match="args lack"):
        assert load_runs(tmp_path) == []
