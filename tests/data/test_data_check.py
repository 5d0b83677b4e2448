"""check_layout: missing domains and classes, corrupt images, counts, formatting."""

import pytest

from kdg import data


def test_clean_folder_is_ok(clean_folder):
    report = data.check_layout(clean_folder)
    assert report.ok, report.problems
    assert report.domains == ("alpha", "beta", "gamma")
    assert report.counts["alpha"] == {"cat": 4, "dog": 4, "zebra": 4}
    assert report.total == 36
    assert "OK" in data.format_report(report)


def test_broken_folder_problems_are_found(broken_folder):
    report = data.check_layout(broken_folder)
    assert not report.ok
    assert report.missing_classes == {"beta": ("zebra",)}
    assert report.counts["beta"]["zebra"] == 0
    assert report.counts["alpha"]["cat"] == 6
    corrupt = sorted(path.rsplit("/", 1)[-1] for path, _ in report.corrupt)
    assert corrupt == ["garbage.jpg", "truncated.png"]
    assert [p.rsplit("/", 1)[-1] for p in report.ignored] == ["notes.txt"]
    text = data.format_report(report)
    assert "beta: no image for class(es) zebra" in text
    assert "garbage.jpg" in text and "truncated.png" in text and "notes.txt" in text


def test_without_decoding_the_cheap_checks_still_run(broken_folder):
    report = data.check_layout(broken_folder, decode=False)
    corrupt = sorted(path.rsplit("/", 1)[-1] for path, _ in report.corrupt)
    assert corrupt == ["garbage.jpg", "truncated.png"] and not report.decoded
    assert "not decoded" in data.format_report(report)


def test_registered_dataset_missing_domain(tmp_path, tools):
    tools.make_folder(tmp_path / "PACS", ("art_painting", "cartoon", "photo", "extra"),
                      ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person"), 1)
    report = data.check_layout("PACS", tmp_path)
    assert report.missing_domains == ("sketch",)
    assert report.unexpected_domains == ("extra",)
    assert report.domains == ("art_painting", "cartoon", "photo")
    assert "missing domain folder(s): sketch" in data.format_report(report)


def test_missing_dataset_folder(tmp_path):
    report = data.check_layout("VLCS", tmp_path)
    assert not report.ok and report.missing_domains == data.get_info("VLCS").domains


def test_non_folder_dataset_is_refused():
    with pytest.raises(ValueError, match="image folders"):
        data.check_layout("RotatedDigits")
