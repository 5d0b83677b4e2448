"""Dataset descriptions and DomainBed's in/out splits."""

import hashlib

import numpy as np
import pytest

from kdg import data
from kdg.data.splits import split_indices


def test_registry_describes_domainbed_datasets():
    expected = {
        "PACS": ("PACS", ("art_painting", "cartoon", "photo", "sketch"), ("A", "C", "P", "S"), 7),
        "VLCS": ("VLCS", ("Caltech101", "LabelMe", "SUN09", "VOC2007"), ("C", "L", "S", "V"), 5),
        "OfficeHome": ("office_home", ("Art", "Clipart", "Product", "Real World"),
                       ("A", "C", "P", "R"), 65),
        "TerraIncognita": ("terra_incognita",
                           ("location_100", "location_38", "location_43", "location_46"),
                           ("L100", "L38", "L43", "L46"), 10),
        "DomainNet": ("domain_net",
                      ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"),
                      ("C", "I", "P", "Q", "R", "S"), 345),
    }
    for name, (folder, domains, short, num_classes) in expected.items():
        info = data.get_info(name)
        assert (info.folder, info.domains, info.short_domains, info.num_classes) == (
            folder, domains, short, num_classes)
        assert list(info.domains) == sorted(info.domains)  # DomainBed's order
    assert data.get_info("RotatedMNIST").domains == ("0", "15", "30", "45", "60", "75")
    assert data.get_info("ColoredMNIST").domains == ("+90%", "+80%", "-90%")
    others = {"DomainNetTFDS", "RotatedDigits", "ColoredDigits", "custom"}
    assert set(data.dataset_names()) >= others


def test_lookup_ignores_case_and_accepts_folder_names():
    assert data.get_info("office_home").name == "OfficeHome"
    assert data.get_info("pacs").name == "PACS"
    with pytest.raises(KeyError, match="Unknown dataset"):
        data.get_info("MNIST-M")


def test_seed_hash_is_domainbeds():
    expected = int(hashlib.md5(b"(0, 2)").hexdigest(), 16) % 2**31
    assert data.seed_hash(0, 2) == expected


def test_splits_are_disjoint_complete_reproducible_and_seeded():
    n = 103
    inside, outside = split_indices(n, 0.2, trial_seed=0, domain_index=1)
    assert len(outside) == int(n * 0.2) and len(inside) == n - int(n * 0.2)
    assert not set(inside) & set(outside)
    assert sorted(np.concatenate([inside, outside])) == list(range(n))
    again_in, again_out = split_indices(n, 0.2, trial_seed=0, domain_index=1)
    assert np.array_equal(inside, again_in) and np.array_equal(outside, again_out)
    assert set(split_indices(n, 0.2, 1, 1)[1]) != set(outside)  # another trial seed
    assert set(split_indices(n, 0.2, 0, 2)[1]) != set(outside)  # another domain


def test_split_matches_domainbed_split_dataset():
    # misc.split_dataset: keys shuffled by RandomState(seed_hash(trial, env)); first n are "out"
    keys = list(range(50))
    np.random.RandomState(data.seed_hash(3, 0)).shuffle(keys)
    inside, outside = split_indices(50, 0.2, 3, 0)
    assert outside.tolist() == keys[:10] and inside.tolist() == keys[10:]


def test_holdout_fraction_is_checked():
    with pytest.raises(ValueError, match="holdout_fraction"):
        split_indices(10, 1.0, 0, 0)
