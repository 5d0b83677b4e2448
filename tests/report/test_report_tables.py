"""Tables and their renderings, on the hand-made Toy2 sweep.

Cells by hand (see test_report_selection.py for the per-trial choices):

training-domain validation      env0               env1              Avg
  ERM      [.62,.70] / [.45,.51]   66.0 ± 2.8         48.0 ± 2.1        (66.0+48.0)/2 = 57.0
  Fish     [.64,.70] / [.52]       67.0 ± 2.1         52.0 ± 0.0 (1/2)‡ (67.0+52.0)/2 = 59.5†
  CorGrad  [.72]     / none        72.0 ± 0.0 (1/2)   X                 X
  best:                            CorGrad            Fish              Fish

oracle                          env0               env1              Avg
  ERM      [.61,.66] / [.41,.52]   63.5 ± 1.8         46.5 ± 3.9        (63.5+46.5)/2 = 55.0
  Fish     [.58,.64] / [.47]       61.0 ± 2.1         47.0 ± 0.0 (1/2)‡ (61.0+47.0)/2 = 54.0†
  CorGrad  [.72]                   72.0 ± 0.0 (1/2)   X                 X
  best:                            CorGrad            Fish              ERM

Averages table (training-domain), per trial the mean over test domains, then over trials:
  ERM:     trial 0 (.62+.45)/2 = .535, trial 1 (.70+.51)/2 = .605 -> 57.0 ± 2.5 (.035/√2)
  Fish:    trial 0 (.64+.52)/2 = .58,  trial 1 .70 (env1 missing) -> 64.0 ± 4.2† ‡ (.06/√2)
  CorGrad: trial 0 .72 -> 72.0 ± 0.0 (1/2)†
"""

import csv
import io
import re
import warnings

import pytest

from kdg.report import (ResultsWarning, averages_table, dataset_table, load_runs, render,
                        report, select)
from kdg.report.tables import Cell, Row, Table, mark_best, to_latex, to_markdown, to_text


@pytest.fixture
def iid(toy2_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultsWarning)
        return select(load_runs(toy2_dir), "training_domain")


def _md_rows(markdown: str) -> dict[str, list[str]]:
    """First markdown table of a text: {first column: other columns}."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("|") and not line.startswith("|:") and not line.startswith("|-"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.setdefault(cells[0], cells[1:])
        elif rows and not line.startswith("|"):
            break
    return rows


def test_dataset_table_cells(iid):
    table = dataset_table(iid, "Toy2")
    assert table.columns == ["env0", "env1", "Avg"]
    assert [r.keys[0] for r in table.rows] == ["ERM", "Fish", "CorGrad"]
    erm = table.cell("ERM", "env0")
    assert (round(erm.mean, 6), round(erm.stderr, 4)) == (66.0, 2.8284)
    assert table.cell("ERM", "Avg").mean == pytest.approx(57.0)
    assert table.cell("Fish", "env1").flags == ["few_trials", "unfinished"]
    assert table.cell("Fish", "Avg").mean == pytest.approx(59.5)
    assert table.cell("CorGrad", "env1").mean is None
    assert table.cell("CorGrad", "Avg").mean is None          # DomainBed's X rule
    assert table.incomplete


def test_markdown_table(iid):
    text = to_markdown(dataset_table(iid, "Toy2"))
    assert text.startswith("### Toy2, model selection: training-domain validation set (INCOMPLETE)")
    rows = _md_rows(text)
    assert rows["Algorithm"] == ["env0", "env1", "Avg"]
    assert rows["ERM"] == ["66.0 ± 2.8", "48.0 ± 2.1", "57.0"]
    assert rows["Fish"] == ["67.0 ± 2.1", "**52.0 ± 0.0** (1/2)‡", "**59.5**†"]
    assert rows["CorGrad"] == ["**72.0 ± 0.0** (1/2)", "X", "X"]
    assert "- CorGrad: no result for env1 (Avg not computed)" in text
    assert "- Fish, env1: 1 unfinished run(s) left out" in text


def test_text_table_stars_the_best(iid):
    text = to_text(dataset_table(iid, "Toy2"))
    lines = {line.split()[0]: line for line in text.splitlines() if line[:1].isalpha()}
    assert re.search(r"66\.0 ± 2\.8\s+48\.0 ± 2\.1\s+57\.0$", lines["ERM"])
    assert lines["Fish"].endswith("52.0 ± 0.0* (1/2)‡  59.5*†")
    assert "72.0 ± 0.0* (1/2)" in lines["CorGrad"]
    assert "*: best in its column" in text


def test_oracle_table_best_and_average(toy2_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultsWarning)
        table = dataset_table(select(load_runs(toy2_dir), "oracle"), "Toy2")
    rows = _md_rows(to_markdown(table))
    assert rows["ERM"] == ["63.5 ± 1.8", "46.5 ± 3.9", "**55.0**"]
    assert rows["Fish"] == ["61.0 ± 2.1", "**47.0 ± 0.0** (1/2)‡", "54.0†"]
    assert rows["CorGrad"] == ["**72.0 ± 0.0** (1/2)", "X", "X"]


def test_averages_table(iid):
    table = averages_table(iid)
    rows = _md_rows(to_markdown(table))
    assert rows["Algorithm"] == ["Toy2", "Avg"]
    assert rows["ERM"] == ["57.0 ± 2.5", "57.0"]
    assert rows["Fish"] == ["64.0 ± 4.2†‡", "64.0†"]
    assert rows["CorGrad"] == ["**72.0 ± 0.0** (1/2)†", "**72.0**†"]


def test_average_is_x_when_a_dataset_is_missing(iid, toy3_dir, toy2_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultsWarning)
        both = select(load_runs([toy2_dir, toy3_dir]), "training_domain")
    rows = _md_rows(to_markdown(averages_table(both)))
    # ERM has Toy3 (test env 0 only: .60) -> Avg (57.0 + 60.0)/2 = 58.5, marked
    assert rows["ERM"] == ["57.0 ± 2.5", "**60.0 ± 0.0** (1/2)†", "**58.5**†"]
    assert rows["Fish"][1:] == ["X", "X"]


def test_csv_parses(iid):
    text = render([dataset_table(iid, "Toy2"), averages_table(iid)], "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 3 * 3 + 3 * 2
    by_key = {(r["kind"], r["algorithm"], r["column"]): r for r in rows}
    erm = by_key[("dataset", "ERM", "env0")]
    assert (float(erm["mean"]), float(erm["stderr"]), erm["n_trials"]) == (66.0, 2.8284, "2")
    assert erm["dataset"] == "Toy2" and erm["selection"] == "training_domain"
    fish = by_key[("dataset", "Fish", "env1")]
    assert fish["flags"] == "few_trials;unfinished" and fish["best"] == "1"
    assert by_key[("dataset", "CorGrad", "Avg")]["mean"] == ""
    assert by_key[("averages", "ERM", "Toy2")]["dataset"] == "Toy2"


def test_latex_parses(iid):
    text = to_latex(dataset_table(iid, "Toy2"))
    assert text.count("\\begin{tabular}{lccc}") == 1 and text.count("\\end{tabular}") == 1
    for env in ("center", "flushleft"):
        assert text.count(f"\\begin{{{env}}}") == text.count(f"\\end{{{env}}}")
    assert text.count("{") == text.count("}")
    body = text.split("\\midrule\n")[1].split("\\bottomrule")[0].strip().splitlines()
    assert len(body) == 3
    for line in body:  # 4 columns: 3 unescaped '&', ends with \\
        assert len(re.findall(r"(?<!\\)&", line)) == 3 and line.endswith("\\\\")
    assert body[2] == "CorGrad & \\textbf{72.0 $\\pm$ 0.0} (1/2) & X & X \\\\"
    assert "52.0 $\\pm$ 0.0} (1/2)$^\\ddagger$" in body[1]


def test_latex_escapes_labels():
    table = Table("a_b & 100%", "dataset", ["Algorithm"], ["+90%"],
                  [Row(("GGA_L",), [Cell(50.0, 1.0)])])
    text = to_latex(table)
    assert "a\\_b \\& 100\\%" in text and "+90\\%" in text and "GGA\\_L" in text


def test_best_marks_every_tie_at_display_precision():
    table = Table("t", "dataset", ["Algorithm"], ["a", "b"], [
        Row(("x",), [Cell(70.04, 1.0), Cell(None)]),
        Row(("y",), [Cell(69.96, 1.0), Cell(10.0)]),     # 70.0 == 70.0 once rounded
        Row(("z",), [Cell(69.0, 1.0), Cell(9.0)]),
    ])
    mark_best(table)
    assert [r.cells[0].best for r in table.rows] == [True, True, False]
    assert [r.cells[1].best for r in table.rows] == [False, True, False]


def test_rich_rendering(iid):
    pytest.importorskip("rich")
    text = render([dataset_table(iid, "Toy2")], "rich")
    assert "66.0 ± 2.8" in text and "Toy2" in text


def test_render_rejects_unknown_format(iid):
    with pytest.raises(ValueError, match="unknown format"):
        render([dataset_table(iid, "Toy2")], "html")


# ------------------------------------------------------------------ published numbers

def _write_pacs(root, algorithm, test_accs, hparams):
    """One run per test env, 1 trial, 1 hparams, 1 evaluation: test env t's
    in-accuracy is test_accs[t], everything else .5."""
    from report_sweeps import write_run
    for t, acc in enumerate(test_accs):
        row = [0] + [.5] * 8
        row[1 + 2 * t] = acc
        write_run(root, "PACS", (algorithm, (t,), 0, 0), [tuple(row)], hparams=hparams)


def test_published_comparison_resnet50(tmp_path):
    # ERM: (.80 + .70 + .90 + .60)/4 = .75 -> 75.0; vs ResNet-50 ERM PACS 85.5 -> -10.5
    # GGA_L (= GGA-L): (.90 + .80 + .85 + .85)/4 = .85 -> 85.0; vs 86.5 -> -1.5
    _write_pacs(tmp_path, "ERM", [.80, .70, .90, .60], {"backbone": "resnet50"})
    _write_pacs(tmp_path, "GGA_L", [.90, .80, .85, .85], {"backbone": "resnet50"})
    text = report(tmp_path, fmt="markdown")
    pacs = _md_rows(text.split("### PACS")[1])
    assert pacs["Algorithm"] == ["A", "C", "P", "S", "Avg"]
    # ERM is best only on P (90.0 > 85.0)
    assert pacs["ERM"] == ["80.0 ± 0.0", "70.0 ± 0.0", "**90.0 ± 0.0**", "60.0 ± 0.0", "75.0"]
    comparison = text.split("### kdg vs published")[1]
    lines = [line for line in comparison.splitlines() if line.startswith("| ")]
    assert lines[0] == "| Algorithm | Dataset | kdg | ResNet-50 published | Δ ResNet-50 |"
    assert lines[1:] == [
        "| ERM | PACS | 75.0 ± 0.0 | 85.5 | -10.5 |",
        "| ERM | Avg (PACS) | 75.0 | 85.5 | -10.5 |",
        "| GGA_L | PACS | 85.0 ± 0.0 | 86.5 | -1.5 |",
        "| GGA_L | Avg (PACS) | 85.0 | 86.5 | -1.5 |",
    ]
    assert "ResNet-18" not in comparison


def test_published_comparison_both_backbones_when_unknown(tmp_path):
    # no backbone in hparams: both tables; Fish (.8, .8, .8, .8) -> 80.0
    #   vs ResNet-50 Fish PACS 85.5 -> -5.5, vs ResNet-18 Fish PACS 81.7 -> -1.7
    _write_pacs(tmp_path, "Fish", [.8, .8, .8, .8], {})
    text = report(tmp_path, fmt="text")
    line = next(li for li in text.split("kdg vs published")[1].splitlines()
                if li.startswith("Fish") and "PACS" in li and "Avg" not in li)
    assert line.split() == ["Fish", "PACS", "80.0", "±", "0.0", "85.5", "-5.5", "81.7", "-1.7"]
