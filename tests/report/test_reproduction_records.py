"""benchmarks/REPRODUCTION.md's numbers are its committed runs' numbers.

The records of every finished reproduction run are kept in
``benchmarks/reproduction/records`` (each run folder's recipe.yaml,
results.jsonl and done). The table under "## The runs' records" must list
exactly those runs, with the test-domain accuracy that each selection picks,
computed here from the records as DomainBed's rules say (not by kdg.report),
and ``kdg report`` on that folder (what the page tells readers to run) must
agree. The records must also be the reduced protocol the page describes, and
the README's ColoredMNIST summary must give the records' numbers.
"""

import re
from pathlib import Path

import pytest
import yaml

from kdg import run_folder
from kdg.algorithms import lookup
from kdg.report.loading import load_runs
from kdg.report.selection import select

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "benchmarks" / "REPRODUCTION.md"
RUNS = ROOT / "benchmarks" / "reproduction" / "records"
HEADING = "## The runs' records"


def documented() -> dict[str, tuple]:
    """run folder -> (algorithm, dataset, test env, training-domain, oracle), from the page."""
    section = PAGE.read_text(encoding="utf-8").split(HEADING, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\|\s*`([^`]+)`\s*\|", line)
        if match:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[match.group(1)] = (cells[1], cells[2], cells[3], float(cells[4]), float(cells[5]))
    return rows


def folders() -> list[Path]:
    return sorted(p for p in RUNS.iterdir() if p.is_dir())


def records(folder: Path) -> list[dict]:
    read = run_folder.read_results(folder)
    assert not read.bad_lines, read.bad_lines
    return read.records


def by_the_rules(recs: list[dict]) -> tuple[str, str, str, float, float]:
    """DomainBed's two selections of one run, from its records: training-domain
    validation takes the first record with the highest mean accuracy on the
    training domains' out splits, oracle the last record; both report the
    test domain's in split."""
    args = recs[0]["args"]
    (test,) = args["test_envs"]
    train = [i for i in range(len(args["domains"])) if i != test]
    val = [sum(r[f"env{i}_out_acc"] for i in train) / len(train) for r in recs]
    best = recs[val.index(max(val))]
    pct = lambda r: round(100 * r[f"env{test}_in_acc"], 1)
    return (args["algorithm"], args["dataset"], args["domains"][test], pct(best), pct(recs[-1]))


def computed() -> dict[str, tuple]:
    """run folder -> by_the_rules(its records), for every committed run."""
    return {p.name: by_the_rules(records(p)) for p in folders()}


def test_the_page_lists_every_committed_run_with_its_numbers():
    assert folders(), f"no run folder in {RUNS}"
    assert documented() == computed()


@pytest.mark.parametrize("method, column", [("training_domain", 3), ("oracle", 4)])
def test_kdg_report_on_the_folder_gives_the_same_numbers(method, column):
    runs = load_runs([RUNS])
    assert sorted(r.path.name for r in runs) == [p.name for p in folders()]
    selection, rows = select(runs, method), documented()
    for run in runs:
        (choice,) = selection.group(run.dataset, run.algorithm, run.test_envs[0]).trials
        assert round(100 * choice.test_acc, 1) == rows[run.path.name][column]


@pytest.mark.parametrize("folder", folders(), ids=lambda p: p.name)
def test_each_run_is_the_reduced_protocol_the_page_describes(folder):
    recipe = yaml.safe_load((folder / run_folder.RECIPE).read_text(encoding="utf-8"))
    recs = records(folder)
    assert run_folder.is_done(folder)
    assert recipe["backend"] == "tensorflow"
    assert recipe["dataset"]["root"] is not None
    training = recipe["training"]
    assert (training["steps"], training["eval_every"]) == (5000, 500)
    assert (training["hparams_seed"], training["trial_seed"], training["seed"]) == (0, 0, 0)
    assert [r["step"] for r in recs] == list(range(500, 5001, 500))
    # DomainBed's default hyperparameters for its MNIST datasets
    assert (training["lr"], training["batch_size"], training["weight_decay"]) == (1e-3, 64, 0.0)
    assert (training["optimizer"], training["adam_convention"]) == ("adam", "torch")
    assert recipe["model"]["backbone"] == "mnist_cnn"
    assert recipe["algorithm"] == {"name": recs[0]["args"]["algorithm"]}  # its defaults


def readme_rows() -> dict[str, list[float]]:
    """README's ColoredMNIST summary: row label -> [+90%, +80%, -90%, Avg]."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("| ColoredMNIST | +90% | +80% | -90% | Avg |", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in table.strip().splitlines()[1:]:
        label, *cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[label] = cells
    return rows


def test_the_readme_summary_gives_the_records_numbers():
    """Each algorithm with records on all three ColoredMNIST environments has
    its two rows in the README's summary, each environment's number as the
    records give it and their mean (of the rounded numbers, as printed)."""
    envs = ["+90%", "+80%", "-90%"]
    by_algorithm: dict[str, dict[str, tuple]] = {}
    for algorithm, dataset, env, train, oracle in computed().values():
        if dataset == "ColoredMNIST":
            by_algorithm.setdefault(algorithm, {})[env] = (train, oracle)
    complete = {a: e for a, e in by_algorithm.items() if sorted(e) == sorted(envs)}
    assert complete, "no algorithm has records on all three ColoredMNIST environments"
    rows = readme_rows()
    for algorithm, numbers in complete.items():
        title = lookup(algorithm).title
        for column, selection in enumerate(["training-domain validation", "oracle"]):
            label = f"kdg {title}, {selection}"
            assert label in rows, f"README's ColoredMNIST table has no row {label!r}"
            expected = [numbers[e][column] for e in envs]
            expected.append(round(sum(expected) / 3, 1))
            assert [float(c) for c in rows[label]] == expected, label
