"""Bad image files, empty class folders and empty splits: one rule in
`kdg train`, `kdg eval` and `kdg data check`.

A bad image is one the pipeline's decoder cannot decode. `kdg train` (its
recipe validation) and `kdg eval` refuse it before anything is written or
evaluated, naming its full path and the fix; `kdg data check` lists the same
files. A file that only a full decode finds, in a dataset too large to decode
at validation, stops training or evaluation with the same message when it is
met. The commands run in this process through click's CliRunner, on the
session's backend.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from kdg import recipes
from kdg.cli import main as kdg
from kdg.data import dataset as dataset_module

RECIPE = """
dataset: {{name: custom, path: {path}, test_domains: [b], image_size: 8, augment: false,
          holdout_fraction: {holdout}}}
model: {{backbone: small_cnn, pretrained: false}}
algorithm: {{name: erm}}
training: {{steps: 2, batch_size: 2, eval_every: 2, eval_batch_size: 32}}
output_dir: {out}
"""


def image_bytes(fmt: str, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """Domains a and b, classes cat and dog, 6 images each (JPEG and PNG)."""
    base = tmp_path_factory.mktemp("clean") / "toy"
    for d, domain in enumerate("ab"):
        for c, cls in enumerate(("cat", "dog")):
            for i in range(6):
                fmt, suffix = ("PNG", "png") if i % 2 else ("JPEG", "jpg")
                path = base / domain / cls / f"{i}.{suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(image_bytes(fmt, seed=100 * d + 10 * c + i))
    return base


@pytest.fixture
def folder(clean, tmp_path) -> Path:
    return Path(shutil.copytree(clean, tmp_path / "toy"))


def recipe(tmp_path: Path, folder: Path, holdout: float = 0.2, out: str = "run") -> Path:
    path = tmp_path / f"{out}.yaml"
    path.write_text(RECIPE.format(path=folder, holdout=holdout, out=tmp_path / out))
    return path


def invoke(*args: str):
    return CliRunner().invoke(kdg, list(args))


def assert_refused(result, *expected: str) -> None:
    """Exit code non-zero, one message (no traceback) with every `expected` text."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output, result.output
    for text in expected:
        assert text in result.output, (text, result.output)


def damage_inside(path: Path) -> None:
    """Flip bytes in the middle of a PNG: its first and last bytes stay right,
    so only decoding finds it."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    path.write_bytes(bytes(data))


BAD_FILES = {
    # name: (file under the dataset folder, how it is made, the reason given)
    "zero-byte": ("a/cat/empty.jpg", lambda path: path.write_bytes(b""), "empty file (0 bytes)"),
    "truncated jpeg": ("a/dog/cut.jpg", lambda path: path.write_bytes(image_bytes("JPEG")[:300]),
                       "cannot be decoded"),
    "truncated png": ("b/cat/cut.png", lambda path: path.write_bytes(image_bytes("PNG")[:-30]),
                      "cannot be decoded"),
    "text named .jpg": ("b/dog/page.jpg",
                        lambda path: path.write_text("<html>404 Not Found</html>\n"),
                        "not an image: starts with b'<html>40'"),
    "damaged inside": ("a/cat/1.png", damage_inside, "cannot be decoded (Invalid PNG data"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_train_refuses_a_bad_image_before_writing_and_data_check_lists_it(kind, folder,
                                                                          tmp_path, monkeypatch):
    relative, make, reason = BAD_FILES[kind]
    bad = folder / relative
    make(bad)
    result = invoke("train", str(recipe(tmp_path, folder)), "--quiet")
    assert_refused(result, f"{bad.absolute()}: {reason}", "1 image file(s) cannot be decoded",
                   "Delete or replace", f"kdg data check {folder.absolute()}")
    assert not (tmp_path / "run").exists()
    if kind != "damaged inside":  # the cheap checks find it in a dataset of any size
        monkeypatch.setattr(dataset_module, "FULL_DECODE_LIMIT", 10)
        assert_refused(invoke("train", str(recipe(tmp_path, folder)), "--quiet"),
                       f"{bad.absolute()}: {reason}")
        assert not (tmp_path / "run").exists()

    checked = invoke("data", "check", str(folder))
    assert checked.exit_code == 1 and "Traceback" not in checked.output
    listed = [line.split(": ")[0].strip() for line in checked.output.splitlines()
              if line.startswith("  /")]
    assert listed == [str(bad)], checked.output


def test_a_png_named_jpg_decodes_and_is_accepted(folder, tmp_path):
    (folder / "a" / "cat" / "0.jpg").write_bytes(image_bytes("PNG"))
    dataset = recipes.check_dataset(recipes.load_recipe(recipe(tmp_path, folder)))
    assert dataset.sizes == (12, 12)
    assert invoke("data", "check", str(folder)).exit_code == 0


def test_every_bad_file_is_named_with_a_count(folder, tmp_path):
    bad = [folder / "a" / "cat" / f"empty{i:02d}.jpg" for i in range(23)]
    for path in bad:
        path.write_bytes(b"")
    result = invoke("train", str(recipe(tmp_path, folder)))
    assert_refused(result, "23 image file(s) cannot be decoded", "... and 3 more",
                   *(str(path) for path in bad[:20]))
    assert str(bad[20]) not in result.output
    assert not (tmp_path / "run").exists()
    checked = invoke("data", "check", str(folder))  # lists them all
    assert checked.exit_code == 1 and all(str(path) in checked.output for path in bad)


def test_every_image_is_decoded_up_to_the_limit(folder, tmp_path, monkeypatch):
    damage_inside(folder / "a" / "cat" / "1.png")
    dataset = recipes.load_recipe(recipe(tmp_path, folder))
    monkeypatch.setattr(dataset_module, "FULL_DECODE_LIMIT", 24)  # the dataset's size
    with pytest.raises(recipes.RecipeError, match="1.png: cannot be decoded"):
        recipes.check_dataset(dataset)
    monkeypatch.setattr(dataset_module, "FULL_DECODE_LIMIT", 23)  # cheap checks only
    assert recipes.check_dataset(dataset).sizes == (12, 12)


def test_a_bad_image_met_during_training_is_named(folder, tmp_path, monkeypatch):
    # a dataset above the full-decode limit gets the cheap checks only; a file
    # damaged inside passes them and is found when training reads it
    monkeypatch.setattr(dataset_module, "FULL_DECODE_LIMIT", 10)
    dataset = recipes.check_dataset(recipes.load_recipe(recipe(tmp_path, folder)))
    training_files = dataset.sources[0].paths[dataset.split("a", "in").indices]
    bad = Path(next(path for path in sorted(training_files) if path.endswith(".png")))
    damage_inside(bad)
    # a batch of 10 holds every image of a's in split: step 1 meets the bad file
    result = invoke("train", str(recipe(tmp_path, folder)), "--quiet",
                    "--set", "training.batch_size=10")
    assert_refused(result, f"{bad}: cannot be decoded", "Delete or replace",
                   f"kdg data check {folder.absolute()}")
    assert (tmp_path / "run" / "results.jsonl").read_text() == ""  # met at step 1, not at eval

    # the test domain b is only evaluated: the first evaluation meets its bad file
    shutil.rmtree(tmp_path / "run")
    bad.write_bytes(image_bytes("PNG"))
    in_test_domain = folder / "b" / "dog" / "3.png"
    damage_inside(in_test_domain)
    result = invoke("train", str(recipe(tmp_path, folder)), "--quiet")
    assert_refused(result, f"{in_test_domain}: cannot be decoded", "Delete or replace")
    assert (tmp_path / "run" / "checkpoint.npz").exists() is False  # stopped at step 2's eval


def test_eval_refuses_a_bad_image_and_names_one_met_while_evaluating(folder, tmp_path,
                                                                     monkeypatch):
    trained = invoke("train", str(recipe(tmp_path, folder)), "--quiet")
    assert trained.exit_code == 0, trained.output
    run = tmp_path / "run"
    bad = folder / "b" / "dog" / "3.png"
    damage_inside(bad)
    evaluate = ("eval", str(run), "--dataset", "custom", "--path", str(folder),
                "--image-size", "8")
    assert_refused(invoke(*evaluate), str(bad), "cannot be decoded", "Delete or replace",
                   f"kdg data check {folder.absolute()}")
    assert invoke(*evaluate, "--domain", "a").exit_code == 0  # the other domain is fine

    monkeypatch.setattr(dataset_module, "FULL_DECODE_LIMIT", 10)  # cheap checks only
    result = invoke(*evaluate)
    assert_refused(result, str(bad), "cannot be decoded", "Delete or replace",
                   f"kdg data check {folder.absolute()}")
    assert "│ a" not in result.output  # refused, no table printed


def test_empty_class_folder_is_refused_by_train_and_data_check(folder, tmp_path):
    empty = folder / "a" / "bird"
    empty.mkdir()
    (empty / "notes.txt").write_text("no image here")
    result = invoke("train", str(recipe(tmp_path, folder)), "--quiet")
    assert_refused(result, "class folder(s) hold no image", str(empty.absolute()),
                   "Put the class's images in it, or delete the folder")
    assert not (tmp_path / "run").exists()
    checked = invoke("data", "check", str(folder))
    assert checked.exit_code == 1
    assert "1 class folder(s) hold no image" in checked.output and str(empty) in checked.output


def test_a_class_folder_absent_from_one_domain_is_fine(folder, tmp_path):
    extra = folder / "a" / "bird" / "0.jpg"
    extra.parent.mkdir()
    extra.write_bytes(image_bytes("JPEG"))
    dataset = recipes.check_dataset(recipes.load_recipe(recipe(tmp_path, folder)))
    assert dataset.classes == ("bird", "cat", "dog")
    checked = invoke("data", "check", str(folder))
    assert checked.exit_code == 0, checked.output
    assert "note: b: no image for class(es) bird" in checked.output


def test_a_domain_too_small_for_its_out_split_is_refused(folder, tmp_path):
    small = folder / "c" / "cat" / "0.jpg"
    small.parent.mkdir(parents=True)
    small.write_bytes(image_bytes("JPEG"))
    result = invoke("train", str(recipe(tmp_path, folder)), "--quiet")
    assert_refused(result, "dataset.holdout_fraction: domain 'c' has 1 example(s)",
                   "int(1 x 0.2) = 0", "Add examples to 'c' (at least 5 with holdout_fraction 0.2)",
                   "set dataset.holdout_fraction: 0")
    assert "domain 'a'" not in result.output and "domain 'b'" not in result.output
    assert not (tmp_path / "run").exists()

    # four images: raising holdout_fraction to 0.25 is a fix too, and it works
    for i in range(1, 4):
        (small.parent / f"{i}.jpg").write_bytes(image_bytes("JPEG", seed=i))
    result = invoke("train", str(recipe(tmp_path, folder)), "--quiet")
    assert_refused(result, "has 4 example(s)", "raise dataset.holdout_fraction to 0.25")
    fixed = recipes.load_recipe(recipe(tmp_path, folder, holdout=0.25))
    assert len(recipes.check_dataset(fixed).split("c", "out")) == 1

    # holdout_fraction 0 asks for no validation split at all: allowed
    dataset = recipes.check_dataset(recipes.load_recipe(recipe(tmp_path, folder, holdout=0)))
    assert [len(dataset.split(i, "out")) for i in range(3)] == [0, 0, 0]
