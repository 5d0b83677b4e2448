"""`kdg report` beside DomainBed's published MNIST tables: per test
environment and average, the difference, and whether it is inside
DomainBed's standard error plus kdg's own (a sweep folder written here)."""

import math

from report_sweeps import write_run

from kdg.report import compose
from kdg.report.loading import load_runs
from kdg.report.selection import get_method, select
from kdg.report.tables import mnist_comparisons, results_tables

# ERM on ColoredMNIST, one hparams sample, trials 0 and 1: test env -> (in acc per trial)
TEST_ACC = {0: (0.716, 0.718), 1: (0.750, 0.750), 2: (0.100, 0.104)}


def write_sweep(root):
    for env, accs in TEST_ACC.items():
        for trial, acc in enumerate(accs):
            row = [100]
            for i in range(3):
                row += [acc, 0.9] if i == env else [0.8, 0.8]
            write_run(root, "ColoredMNIST", ("ERM", (env,), trial, 0), [tuple(row)])
    return root


def test_coloredmnist_beside_domainbed(tmp_path):
    root = write_sweep(tmp_path / "sweep")
    tables = results_tables(select(load_runs([root]), get_method("training_domain")))
    (table,) = mnist_comparisons(tables)
    rows = {row.keys: row.cells for row in table.rows}
    assert list(rows) == [("ERM", e) for e in ("+90%", "+80%", "-90%", "Avg")]

    def check(environment, kdg_mean, kdg_se, published, published_se, inside):
        kdg, pub, delta, verdict = rows[("ERM", environment)]
        assert math.isclose(kdg.mean, kdg_mean, abs_tol=1e-9)
        assert math.isclose(kdg.stderr, kdg_se, abs_tol=1e-9)
        assert (pub.mean, pub.stderr) == (published, published_se)
        assert math.isclose(delta.mean, kdg_mean - published, abs_tol=1e-9)
        assert verdict.value_text() == inside

    # DomainBed's stderr: population std / sqrt(n); ERM, training-domain validation
    check("+90%", 71.7, 0.1 / math.sqrt(2), 71.7, 0.1, "yes")
    check("+80%", 75.0, 0.0, 72.9, 0.2, "no")             # +2.1 > 0.2 + 0
    check("-90%", 10.2, 0.2 / math.sqrt(2), 10.0, 0.1, "yes")  # 0.2 <= 0.1 + 0.141
    # Avg: per trial the mean over the 3 test environments (52.2, 52.4), then over trials
    check("Avg", 52.3, 0.1 / math.sqrt(2), 51.5, 0.1, "no")


def test_report_prints_both_selections_and_nothing_for_other_datasets(tmp_path):
    root = write_sweep(tmp_path / "sweep")
    text = compose.report(root, "training_domain", fmt="markdown")
    assert "ColoredMNIST: kdg vs DomainBed" in text and "| ERM | -90% |" in text
    oracle = compose.report(root, "oracle", fmt="markdown")
    assert "ColoredMNIST: kdg vs DomainBed (test-domain accuracy %, selection: oracle)" in oracle
    assert "| 28.7 ± 0.5 |" in oracle   # DomainBed's ERM oracle on -90%
    write_run(tmp_path / "other", "Toy2", ("ERM", (0,), 0, 0), [(100, .5, .5, .6, .6)])
    assert "kdg vs DomainBed" not in compose.report(tmp_path / "other", "training_domain")


def test_an_average_over_fewer_environments_is_not_compared(tmp_path):
    # only test environment +90% has run: its row is compared, the average
    # (over one environment against DomainBed's three) is shown but not compared
    row = [100, 0.716, 0.9, 0.8, 0.8, 0.8, 0.8]
    write_run(tmp_path, "ColoredMNIST", ("ERM", (0,), 0, 0), [tuple(row)])
    tables = results_tables(select(load_runs([tmp_path]), get_method("training_domain")))
    (table,) = mnist_comparisons(tables)
    rows = {row.keys[1]: row.cells for row in table.rows}
    kdg, _, delta, verdict = rows["+90%"]
    assert math.isclose(delta.mean, 71.6 - 71.7, abs_tol=1e-9) and verdict.value_text() == "yes"
    kdg, _, delta, verdict = rows["Avg"]
    assert math.isclose(kdg.mean, 71.6, abs_tol=1e-9) and kdg.partial
    assert delta.mean is None and verdict.value_text() == "—"


def test_an_average_with_a_missing_trial_is_still_compared(tmp_path):
    # every environment has run, +80% in one trial of two: the average
    # covers DomainBed's three environments and is compared (flagged)
    for env, accs in TEST_ACC.items():
        for trial, acc in enumerate(accs[:1] if env == 1 else accs):
            row = [100]
            for i in range(3):
                row += [acc, 0.9] if i == env else [0.8, 0.8]
            write_run(tmp_path, "ColoredMNIST", ("ERM", (env,), trial, 0), [tuple(row)])
    tables = results_tables(select(load_runs([tmp_path]), get_method("training_domain")))
    (table,) = mnist_comparisons(tables)
    kdg, _, delta, verdict = {row.keys[1]: row.cells for row in table.rows}["Avg"]
    assert kdg.flags and delta.mean is not None and verdict.value_text() in ("yes", "no")
