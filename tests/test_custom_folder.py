"""recipes/custom_folder.yaml and `kdg data check custom` on a real image folder.

The folder is the layout the recipe's comments draw (paintings, photos,
sketches; cat, dog), with small PNG files written here and decoded by kdg.
"""

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from kdg import recipes
from kdg.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "custom_folder.yaml"
DOMAINS = ("paintings", "photos", "sketches")
CLASSES = ("cat", "dog")


def make_folder(folder: Path, per_class: int = 3, seed: int = 0) -> Path:
    """folder/<domain>/<class>/<i>.png: 8x8 RGB noise, one mean colour per class."""
    rng = np.random.default_rng(seed)
    for domain in DOMAINS:
        for label, cls in enumerate(CLASSES):
            (folder / domain / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 96, (8, 8, 3)) + 128 * label
                Image.fromarray(pixels.astype(np.uint8)).save(folder / domain / cls / f"{i}.png")
    return folder


def invoke(*args, home=None):
    """`kdg ARGS` in this process; `~` is `home` when given."""
    env = {"HOME": str(home)} if home is not None else {}
    return CliRunner().invoke(main, list(args), env=env)


# -- the example recipe ---------------------------------------------------------------

def test_example_recipe_validates_on_a_custom_folder(tmp_path):
    folder = make_folder(tmp_path / "my_dataset")
    recipe = recipes.load_recipe(RECIPE, [f"dataset.path={folder}"])
    assert recipe.dataset.name == "custom"
    dataset = recipes.check_dataset(recipe)
    assert dataset.domains == DOMAINS
    assert dataset.classes == CLASSES
    assert dataset.name == "my_dataset"
    assert dataset.domain_index(recipe.dataset.test_domains[0]) == DOMAINS.index("sketches")
    assert sum(len(dataset.split(i, "all")) for i in range(3)) == 3 * 2 * 3


def test_example_recipe_without_its_folder_names_dataset_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(recipes.RecipeError) as caught:
        recipes.check_dataset(recipes.load_recipe(RECIPE, [f"dataset.path={missing}"]))
    assert "dataset" in str(caught.value) and str(missing) in str(caught.value)


def test_relative_paths_are_taken_from_the_working_directory(tmp_path, monkeypatch):
    # What the README and the recipe's comments say: the working directory,
    # not the recipe's folder; under dataset.root when that is set.
    make_folder(tmp_path / "data" / "my_dataset")
    monkeypatch.chdir(tmp_path)
    here = recipes.load_recipe(RECIPE, ["dataset.path=data/my_dataset"])
    assert recipes.check_dataset(here).domains == DOMAINS
    under_root = recipes.load_recipe(RECIPE, ["dataset.root=data", "dataset.path=my_dataset"])
    assert recipes.check_dataset(under_root).domains == DOMAINS
    monkeypatch.chdir(tmp_path / "data")  # the same relative path no longer resolves
    with pytest.raises(recipes.RecipeError, match="data/my_dataset"):
        recipes.check_dataset(recipes.load_recipe(RECIPE, ["dataset.path=data/my_dataset"]))


def test_example_recipe_trains_a_few_steps(tmp_path):
    folder = make_folder(tmp_path / "my_dataset")
    out = tmp_path / "run"
    result = invoke(
        "train", str(RECIPE), "--quiet",
        "--set", f"dataset.path={folder}", "--set", f"output_dir={out}",
        "--set", "model.backbone=small_cnn", "--set", "model.pretrained=false",
        "--set", "dataset.image_size=8", "--set", "dataset.holdout_fraction=0.34",
        "--set", "training.steps=2", "--set", "training.eval_every=2",
        "--set", "training.batch_size=2",
    )
    assert result.exit_code == 0, result.output[-3000:]
    assert (out / "done").is_file()
    record = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 2
    assert record["args"]["test_envs"] == [2]
    for i in range(3):
        assert 0 <= record[f"env{i}_in_acc"] <= 1 and 0 <= record[f"env{i}_out_acc"] <= 1


# -- kdg data check ---------------------------------------------------------------------

def help_examples(*command):
    """The `kdg data ...` example lines of `kdg COMMAND --help`."""
    result = invoke(*command, "--help")
    assert result.exit_code == 0
    return [line.strip() for line in result.output.splitlines()
            if re.match(r"\s*kdg data \w", line)]


def test_every_data_check_example_in_the_help_works(tmp_path):
    # `~` is tmp_path: the examples run as printed, on real folders.
    make_folder(tmp_path / "data" / "my_dataset")
    pacs = tmp_path / "data" / "PACS"
    for domain in ("art_painting", "cartoon", "photo", "sketch"):
        for c in range(7):
            (pacs / domain / f"class{c}").mkdir(parents=True)
            Image.fromarray(np.full((4, 4, 3), 30 * c, np.uint8)).save(
                pacs / domain / f"class{c}" / "0.png")
    examples = set(help_examples("data")) | set(help_examples("data", "check"))
    checks = sorted(e for e in examples if e.startswith("kdg data check "))
    assert "kdg data check custom --path ~/data/my_dataset" in checks
    assert len(checks) >= 2
    for example in checks:
        result = invoke(*shlex.split(example)[1:], home=tmp_path)
        assert result.exit_code == 0, (example, result.output)
        assert result.output.rstrip().endswith("OK"), (example, result.output)
    # `kdg data download` needs the network: it is not run here.
    assert all(e.startswith(("kdg data check ", "kdg data download ")) for e in examples)


def test_data_check_custom_counts_the_folder(tmp_path):
    folder = make_folder(tmp_path / "my_dataset", per_class=2)
    result = invoke("data", "check", "custom", "--path", str(folder))
    assert result.exit_code == 0, result.output
    assert "3 domains, 2 classes, 12 images" in result.output
    relative = invoke("data", "check", "custom", "--root", str(tmp_path), "--path", "my_dataset")
    assert relative.exit_code == 0 and "12 images" in relative.output


@pytest.mark.parametrize("args, message", [
    (["custom"], "--path DIR"),
    (["PACS", "--path", "somewhere"], "--path (path=) is for a custom dataset"),
])
def test_data_check_path_misuse_is_one_clear_message(tmp_path, args, message):
    result = invoke("data", "check", *args, "--root", str(tmp_path))
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output and result.exception.__class__ is SystemExit
    assert list(tmp_path.iterdir()) == []
