"""`kdg report` on a sweep of GGA's combination table: kdg's X, GGA+X and
GGA's change beside the published ones (kdg.report.published.GGA_COMBINED),
with the missing cells named. Real results.jsonl files, one record each, so
that every number below is worked out by hand."""

from __future__ import annotations

from report_sweeps import write_run

from kdg.report import compose, report
from kdg.report.loading import load_runs

# test-domain accuracy of each run = env{t}_in_acc of its test domain t
CORAL_PACS = (.80, .84, .96, .76)        # mean 84.0
GGA_CORAL_PACS = (.82, .86, .96, .80)    # mean 86.0: GGA's change +2.0
CORAL_VLCS = (.96, .64, .72, .76)        # mean 77.0; GGA+CORAL not run on VLCS
ERM_PACS = (.70, .70, .70, .70)          # a GGA around ERM stays "gga"


def write(root, dataset, algorithm, accuracies, hparams):
    for t, accuracy in enumerate(accuracies):
        row = [100]
        for i in range(4):
            row += [accuracy, 0.9] if i == t else [0.5, 0.9]
        write_run(root, dataset, (algorithm, (t,), 0, 0), [tuple(row)], hparams=hparams)


def test_report_prints_kdgs_gga_changes_beside_the_published_ones(tmp_path):
    write(tmp_path / "coral", "PACS", "coral", CORAL_PACS, {"lr": 3e-5})
    write(tmp_path / "coral", "VLCS", "coral", CORAL_VLCS, {"lr": 1e-5})
    write(tmp_path / "gga_coral", "PACS", "gga", GGA_CORAL_PACS,
          {"lr": 3e-5, "rho": 1e-5, "base": {"name": "coral", "mmd_gamma": 1.0}})
    write(tmp_path / "gga_erm", "PACS", "gga", ERM_PACS, {"lr": 3e-5, "base": {"name": "erm"}})

    assert {r.algorithm for r in load_runs([tmp_path])} == {"coral", "gga+coral", "gga"}
    text = report(tmp_path, fmt="text")
    table = text[text.index("GGA combined with other algorithms"):]
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in table.splitlines()
            if line.startswith("CORAL")}
    # kdg X, published X, kdg GGA+X, published GGA+X (86.2 + 0.7), kdg Δ, published Δ
    assert rows[("CORAL", "PACS")] == ["84.0", "86.2", "86.0", "86.9", "+2.0", "+0.7"]
    assert rows[("CORAL", "VLCS")] == ["77.0", "78.8", "X", "78.4", "X", "-0.4"]
    assert rows[("CORAL", "OfficeHome")] == ["X", "68.7", "X", "68.9", "X", "+0.2"]
    assert rows[("CORAL", "TerraIncognita")] == ["X", "47.6", "X", "47.9", "X", "+0.3"]
    assert rows[("CORAL", "Avg")] == ["X", "70.3", "X", "70.5", "X", "+0.2"]
    assert set(rows) == {("CORAL", d) for d in ("PACS", "VLCS", "OfficeHome", "TerraIncognita",
                                                "Avg")}
    assert ("missing: GGA+CORAL on VLCS, CORAL on OfficeHome, GGA+CORAL on OfficeHome, "
            "CORAL on TerraIncognita, GGA+CORAL on TerraIncognita") in " ".join(table.split())
    assert "(INCOMPLETE)" in table.splitlines()[0]


def test_no_combination_table_without_an_algorithm_of_it(tmp_path):
    write(tmp_path, "PACS", "gga", ERM_PACS, {"lr": 3e-5, "base": {"name": "erm"}})
    assert "GGA combined" not in report(tmp_path, fmt="text")


def write_envs(root, dataset, algorithm, accuracies, hparams, envs):
    """One run per test domain t of `accuracies` (a dict t -> accuracy)."""
    for t, accuracy in accuracies.items():
        row = [100]
        for i in range(envs):
            row += [accuracy, 0.9] if i == t else [0.5, 0.9]
        write_run(root, dataset, (algorithm, (t,), 0, 0), [tuple(row)], hparams=hparams)


def test_gga_changes_on_any_dataset_over_the_test_domains_both_have(tmp_path):
    # ColoredDigits: 3 domains, not a dataset of GGA's table. ERM ran on all
    # three test domains, GGA (wrapping ERM) on two; CORAL and GGA+CORAL on all.
    write_envs(tmp_path, "ColoredDigits", "erm", {0: .60, 1: .70, 2: .90}, {"lr": 1e-3}, 3)
    write_envs(tmp_path / "gga_erm", "ColoredDigits", "gga", {0: .66, 1: .72},
               {"lr": 1e-3, "base": {"name": "erm"}}, 3)
    write_envs(tmp_path, "ColoredDigits", "coral", {0: .50, 1: .60, 2: .70}, {"lr": 1e-3}, 3)
    write_envs(tmp_path / "gga_coral", "ColoredDigits", "gga", {0: .52, 1: .58, 2: .79},
               {"lr": 1e-3, "base": {"name": "coral"}}, 3)
    write_envs(tmp_path, "ColoredDigits", "mmd", {0: .50}, {"lr": 1e-3}, 3)  # no GGA+MMD

    text = report(tmp_path, fmt="text")
    table = text[text.index("GGA's change per algorithm"):]
    rows = {line.split()[0]: line.split()[2:] for line in table.splitlines()
            if line.split()[1:2] == ["ColoredDigits"]}
    # ERM: test domains 0 and 1 only (65.0 vs 69.0), flagged; CORAL: all three
    # (60.0 vs 63.0), unflagged; MMD has no GGA+MMD: no row
    assert rows == {"erm": ["65.0†", "69.0†", "+4.0†"], "coral": ["60.0", "63.0", "+3.0"]}
    assert "(INCOMPLETE)" in table.splitlines()[0]  # ERM's row is flagged
    assert "erm on ColoredDigits: test domain(s) env0, env1 only" in table
    assert "coral on ColoredDigits" not in table
    assert "GGA combined with other algorithms" not in text  # no dataset of GGA's table
    # On a dataset of GGA's table the pairs the published comparison prints
    # (CORAL) are left to it; ERM and GGA-L, not in the published table, and
    # every pair without the published tables, stay here.
    write_envs(tmp_path / "pacs", "PACS", "coral", {0: .8}, {"lr": 3e-5}, 4)
    write_envs(tmp_path / "pacs_gga", "PACS", "gga", {0: .8},
               {"lr": 3e-5, "base": {"name": "coral"}}, 4)
    write_envs(tmp_path / "pacs_erm", "PACS", "erm", {0: .7}, {"lr": 3e-5}, 4)
    write_envs(tmp_path / "pacs_gga_erm", "PACS", "gga", {0: .75},
               {"lr": 3e-5, "base": {"name": "erm"}}, 4)
    write_envs(tmp_path / "pacs_ggal", "PACS", "ggal", {0: .6}, {"lr": 3e-5}, 4)
    write_envs(tmp_path / "pacs_gga_ggal", "PACS", "gga", {0: .5},
               {"lr": 3e-5, "base": {"name": "ggal"}}, 4)

    def changes(published):
        text = compose.report(tmp_path, fmt="text", published=published)
        start = text.index("GGA's change per algorithm")
        end = text.find("\n\n", start)
        return text, {tuple(line.split()[:2]): line.split()[2:]
                      for line in text[start:end if end > 0 else None].splitlines()
                      if line.split()[1:2] in (["PACS"], ["ColoredDigits"])}

    text, rows = changes(published=True)
    assert "GGA combined" in text
    assert set(rows) == {("erm", "ColoredDigits"), ("coral", "ColoredDigits"),
                         ("erm", "PACS"), ("ggal", "PACS")}
    assert rows[("erm", "PACS")] == ["70.0†", "75.0†", "+5.0†"]
    assert rows[("ggal", "PACS")] == ["60.0†", "50.0†", "-10.0†"]
    _, rows = changes(published=False)
    assert rows[("coral", "PACS")] == ["80.0†", "80.0†", "+0.0†"]
