"""The published numbers as data, the figures, and report() end to end."""

import csv
import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from report_sweeps import write_run

from kdg.report import (PUBLISHED, RESNET18_CORGRAD, RESNET50_GGA, MissingRunsError,
                        ResultsWarning, load_runs, report, select)
from kdg.report.plots import plot_diagnostics, plot_run_accuracy, write_plots
from kdg.report.published import backbone_of, canonical_algorithm, canonical_dataset, tables_for

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    data = Path(path).read_bytes()
    return data.startswith(PNG_SIGNATURE) and len(data) > len(PNG_SIGNATURE)


# --------------------------------------------------------------------- published

def test_published_numbers_match_the_spec():
    assert RESNET50_GGA.get("GGA", "TerraInc") == 48.5
    assert RESNET50_GGA.get("gga_l", "terra_incognita") == 49.8
    assert RESNET50_GGA.get("Fish", "Avg") == 63.9
    assert RESNET18_CORGRAD.get("CorGrad", "DomainNet") == 37.3
    assert RESNET18_CORGRAD.get("PCGrad", "OfficeHome") == 58.3
    assert RESNET50_GGA.get("CorGrad", "PACS") is None


@pytest.mark.parametrize("table", PUBLISHED, ids=lambda t: t.key)
def test_published_averages_are_consistent(table):
    # a copying slip would show: each printed Avg is the mean of its row, to rounding
    for algorithm, row in table.results.items():
        mean = sum(row[d] for d in table.datasets) / len(table.datasets)
        assert abs(mean - row["Avg"]) <= 0.1, algorithm


def test_name_and_backbone_matching():
    assert canonical_dataset("TerraInc") == canonical_dataset("terra_incognita") == "TerraIncognita"
    assert canonical_algorithm("GGA_L") == canonical_algorithm("ggal") == "GGA-L"
    assert canonical_algorithm("MyAlgo") == "MyAlgo"
    assert backbone_of({"resnet18": True}) == "resnet18"
    assert backbone_of({"resnet18": False}) == "resnet50"
    assert backbone_of({"backbone": "ResNet50V2"}) == "resnet50"
    assert backbone_of({}) is None
    assert tables_for(["resnet18", "resnet18"]) == (RESNET18_CORGRAD,)
    assert tables_for(["resnet18", None]) == PUBLISHED
    assert tables_for(iter(["resnet50"])) == (RESNET50_GGA,)


# ------------------------------------------------------------------------- plots

@pytest.fixture
def iid(toy2_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultsWarning)
        return select(load_runs(toy2_dir), "training_domain")


def test_write_plots_makes_valid_pngs(iid, tmp_path):
    paths = write_plots(iid, tmp_path / "plots")
    names = sorted(p.name for p in paths)
    assert names == sorted([
        "accuracy_Toy2_ERM_env0.png", "accuracy_Toy2_ERM_env1.png",
        "accuracy_Toy2_Fish_env0.png", "accuracy_Toy2_Fish_env1.png",
        "accuracy_Toy2_CorGrad_env0.png", "diagnostics_Toy2.png"])
    assert all(_is_png(p) for p in paths)


def test_single_run_plot(iid, tmp_path):
    path = plot_run_accuracy(iid.runs[0], tmp_path / "one.png")
    assert _is_png(path)


def test_absent_diagnostics_are_skipped(toy3_dir, tmp_path):
    # Toy3 records log no diagnostic at all: no figure is written
    runs = load_runs(toy3_dir)
    assert plot_diagnostics({"ERM": runs}, tmp_path / "d.png") is None
    assert not (tmp_path / "d.png").exists()
    paths = write_plots(select(runs, "training_domain"), tmp_path / "p")
    assert [p.name for p in paths] == ["accuracy_Toy3_ERM_env0.png"]


@pytest.mark.parametrize("algorithm, key", [("SANDMask", "mask_fraction"),
                                            ("Fishr", "fishr_penalty"),
                                            ("DANN", "disc_acc")])
def test_each_methods_own_diagnostic_is_drawn(tmp_path, algorithm, key):
    # a run that logs only this method's diagnostic (as kdg train writes it)
    # gets a diagnostics figure: the key has a panel
    write_run(tmp_path / "sweep", "Toy3", (algorithm, (0,), 0, 0),
              [(100, .50, .51, .80, .60, .80, .60), (200, .60, .61, .90, .70, .90, .80)],
              diagnostics=lambda step: {key: 0.5 + step / 1000})
    runs = load_runs(tmp_path / "sweep")
    assert plot_diagnostics({algorithm: runs}, tmp_path / "d.png") is not None
    assert _is_png(tmp_path / "d.png")


# -------------------------------------------------------------------- report()

@pytest.mark.parametrize("fmt", ["markdown", "latex", "csv", "text", "rich"])
def test_report_every_format(toy2_dir, fmt):
    with pytest.warns(ResultsWarning, match="truncated"):
        text = report([toy2_dir], selection="training_domain", fmt=fmt)
    assert "66.0" in text
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        assert {r["kind"] for r in rows} == {"dataset", "averages"}   # Toy2: nothing published
    else:
        assert "INCOMPLETE" in text and "unfinished" in text


def test_report_with_plots(toy2_dir, tmp_path):
    with pytest.warns(ResultsWarning):
        text = report(toy2_dir, fmt="markdown", plots_dir=tmp_path / "figs")
    assert "### Plots" in text and "diagnostics_Toy2.png" in text
    assert _is_png(tmp_path / "figs" / "diagnostics_Toy2.png")
    with pytest.warns(ResultsWarning):
        csv_text = report(toy2_dir, fmt="csv", plots_dir=tmp_path / "figs")
    assert ".png" not in csv_text                      # csv stays pure CSV


def test_report_errors(toy2_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no usable run"):
        report(tmp_path / "empty")
    with pytest.warns(ResultsWarning), pytest.raises(MissingRunsError, match="none found"):
        report(toy2_dir, selection="leave_one_domain_out")


def test_kdg_report_needs_no_keras():
    """Importing kdg.report (under a bare kdg package) pulls in no Keras or backend."""
    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys, types\n"
        "pkg = types.ModuleType('kdg'); pkg.__path__ = [%r]; sys.modules['kdg'] = pkg\n"
        "import kdg.report, kdg.report.plots\n"
        "bad = [m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n" % str(root / "kdg"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)
