"""Folder datasets: discovery, order, labels, and the errors for a missing dataset."""

import numpy as np
import pytest

from kdg import data
from kdg.data.folder import scan_layout


def test_custom_folder_domains_and_classes_are_sorted(clean_folder):
    ds = data.load("custom", path=clean_folder, image_size=32)
    assert ds.name == "toy"
    assert ds.domains == ("alpha", "beta", "gamma") == ds.short_domains
    assert ds.classes == ("cat", "dog", "zebra") and ds.num_classes == 3
    assert ds.input_shape == (32, 32, 3)
    assert ds.sizes == (12, 12, 12)


def test_labels_follow_class_folders(clean_folder):
    ds = data.load("custom", path=clean_folder)
    source = ds.sources[ds.domain_index("beta")]
    for path, label in zip(source.paths, source.labels):
        assert path.split("/")[-2] == ds.classes[label]
        assert "/beta/" in path
    assert list(source.paths) == sorted(source.paths)  # ImageFolder order


def test_relative_custom_path_is_taken_under_root(clean_folder):
    ds = data.load("custom", root=clean_folder.parent, path="toy")
    assert ds.domains == ("alpha", "beta", "gamma")


def test_domain_lookup_by_index_name_and_short_name(pacs_root):
    ds = data.load("PACS", pacs_root)
    assert ds.domains == ("art_painting", "cartoon", "photo", "sketch")
    assert ds.domain_index("S") == ds.domain_index("sketch") == ds.domain_index(3) == 3
    assert ds.domain_index("p") == 2
    assert ds.train_domains(["A"]) == (1, 2, 3)
    with pytest.raises(KeyError, match="no domain"):
        ds.domain_index("quickdraw")


def test_class_missing_in_one_domain_keeps_labels_consistent(broken_folder):
    ds = data.load("custom", path=broken_folder)
    assert ds.classes == ("cat", "dog", "zebra")
    beta = ds.sources[ds.domain_index("beta")]
    assert set(beta.labels) == {0, 1}  # no zebra, and dog is still 1
    gamma = ds.sources[ds.domain_index("gamma")]
    assert not any(p.endswith(".txt") for p in gamma.paths)


def test_missing_root_names_layout_and_download_command(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ROOT_VARIABLE, raising=False)
    with pytest.raises(data.DatasetNotFoundError) as no_root:
        data.load("PACS")
    assert "no data root" in str(no_root.value)
    with pytest.raises(data.DatasetNotFoundError) as missing:
        data.load("PACS", tmp_path)
    message = str(missing.value)
    assert "ROOT/PACS/<domain>/<class>/<image>" in message
    assert "kdg data download PACS --root" in message
    assert str(tmp_path / "PACS" / "art_painting") in message


def test_root_from_environment(pacs_root, monkeypatch):
    monkeypatch.setenv(data.ROOT_VARIABLE, str(pacs_root))
    assert data.load("pacs").num_classes == 7


def test_wrong_number_of_classes_is_a_layout_error(tmp_path, tools):
    tools.make_folder(tmp_path / "VLCS", ("Caltech101", "LabelMe", "SUN09", "VOC2007"),
                      ("bird", "car"), 1)
    with pytest.raises(data.DatasetLayoutError, match="2 class folders, expected 5"):
        data.load("VLCS", tmp_path)


def test_missing_custom_folder(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="is not a directory"):
        data.load("custom", path=tmp_path / "nope")
    with pytest.raises(ValueError, match="path="):
        data.load("custom")


def test_scan_layout_reports_ignored_files(broken_folder):
    layout = scan_layout(broken_folder)
    assert [p.rsplit("/", 1)[-1] for p in layout.ignored] == ["notes.txt"]
    assert "zebra" not in layout.files["beta"]
    assert len(layout.files["alpha"]["cat"]) == 6  # 4 good + garbage.jpg + truncated.png
