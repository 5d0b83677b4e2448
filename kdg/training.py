"""One training run from a recipe: DomainBed's protocol, resumable.

The output directory receives, in this order of safety:

- `recipe.yaml`: the resolved recipe (written once the recipe validates);
- `results.jsonl`: one JSON line per evaluation (step, epoch, training loss
  and diagnostics averaged over the interval, `env{i}_in_acc`/`_out_acc`/
  `_in_loss`/`_out_loss` for every domain (with `eval_splits: selection`, no
  `in` split of the training domains), step time, memory, `args`,
  `hparams`), as DomainBed writes it;
- `tensorboard/`: the same numbers as TensorBoard scalars;
- `checkpoint.npz`: every variable (model, optimizer, the algorithm's own
  state, seeds) and the step, replaced atomically;
- `model.keras`: the final model; `done`: the final record, written last;
- `run.lock`: held (`fcntl.flock`) by the one process that runs it.

A run that is killed, even with SIGKILL, continues from its last checkpoint
when started again with the same command, and ends with the same results as
a run that was never interrupted: the state is restored exactly and the
training stream, a pure function of the seed, is skipped to the step.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from kdg import memory, recipes
from kdg import run_folder as folder
from kdg.run_folder import CHECKPOINT, RunError



def state_variables(model):
    """Every variable a resumed run needs, in a fixed order."""
    return (
        list(model.variables)
        + list(model.optimizer.variables)
        + list(model.algorithm.variables)
    )


def save_checkpoint(model, path: Path, step: int, extra: dict | None = None) -> None:
    """Every state variable, the step and `extra` (JSON) in one file,
    replaced atomically."""
    from keras import ops

    arrays = {f"v{i}": ops.convert_to_numpy(v) for i, v in enumerate(state_variables(model))}
    with folder.replacing(path, ".npz") as tmp:  # the previous checkpoint stays if it fails
        np.savez(tmp, step=np.int64(step), extra=np.array(json.dumps(extra or {})), **arrays)


def load_checkpoint(model, path: Path) -> tuple[int, dict]:
    """Restore the variables; returns the step and the saved `extra`."""
    variables = state_variables(model)
    try:
        with np.load(path) as stored:
            count = len(stored.files) - 2
            if count != len(variables):
                raise RunError(
                    f"{path} holds {count} variables, the model has {len(variables)}: it "
                    "belongs to another model. Delete it to start over."
                )
            values = [stored[f"v{i}"] for i in range(count)]
            step, extra = int(stored["step"]), json.loads(str(stored["extra"]))
    except RunError:
        raise
    except Exception as error:  # a zip cut short: BadZipFile, EOFError, ValueError, ...
        raise RunError(
            f"{path} cannot be read ({type(error).__name__}: {error}): it is cut short or "
            "damaged (a full disk, a copy that did not finish?). Nothing was changed. To "
            f"recover, put back an intact copy of it, or delete it (rm {path}) to train this "
            "run again from step 0 (its results.jsonl is then rewritten)."
        ) from None
    for v, value in zip(variables, values):
        v.assign(value)
    return step, extra


def build_model(recipe: recipes.Recipe, dataset, num_domains: int | None = None):
    """The recipe's compiled model, its algorithm built; `num_domains`, the
    number of training domains, is set first (GroupDRO's state needs it)."""
    import keras

    from kdg import models, optimizers

    training = recipe.training
    decoupled = training.weight_decay_mode == "decoupled"
    if training.devices not in (None, 1):
        from kdg import distribution

        distribution.configure(training.devices)  # before any variable exists
    keras.utils.set_random_seed(training.seed)
    model = models.build(
        recipe.model.backbone,
        num_classes=dataset.num_classes,
        input_shape=dataset.input_shape,
        pretrained=recipe.model.pretrained,
        dropout=recipe.model.dropout,
        algorithm=recipes.build_algorithm(recipe.algorithm.model_dump(), training.steps),
        freeze_bn=recipe.model.freeze_bn,
        l2_weight_decay=0.0 if decoupled else training.weight_decay,
        seed=training.seed,
        **({"mixstyle_layers": recipe.model.mixstyle_layers}
           if recipe.model.mixstyle_layers else {}),
        **({"arm_context": True} if recipe.model.arm_context else {}),
    )
    kwargs = {"learning_rate": training.lr}
    if decoupled and training.weight_decay:
        kwargs["weight_decay"] = training.weight_decay
    elif training.optimizer == "adamw":  # not AdamW's own default (0.004) besides
        kwargs["weight_decay"] = 0.0
    model.compile(
        optimizer=optimizers.get(training.optimizer, training.adam_convention, **kwargs),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    model.optimizer.build(model.trainable_variables)
    # the training domains' count sizes per-domain state (GroupDRO's q, MTL's embeddings)
    if num_domains is None:
        test_envs = {dataset.domain_index(d) for d in recipe.dataset.test_domains}
        num_domains = len(dataset.domains) - len(test_envs)
    model.num_domains = num_domains
    try:
        model._dg_build_algorithm()
    except ValueError as error:  # the algorithm cannot train this model (GGA's perturb, say)
        raise recipes.invalid(f"algorithm: {error}") from None
    return model


def hparams(recipe: recipes.Recipe, algorithm) -> dict:
    """The hyperparameters a run's records carry: the training ones and every
    one of the algorithm's, its defaults included (as DomainBed's records
    hold every hyperparameter; GGA's base as ``{"name", "config"}``), so
    that a record says what was run whatever a later kdg's defaults are."""
    return {
        "lr": recipe.training.lr,
        "batch_size": recipe.training.batch_size,
        "weight_decay": recipe.training.weight_decay,
        "dropout": recipe.model.dropout,
        **algorithm.get_config(),
    }


def evaluate(model, dataset, batch_size: int, skip_in=()) -> dict:
    """Accuracy and loss on both splits of every domain; not on the *in*
    split of the domains in ``skip_in`` (``eval_splits: selection``)."""
    record = {}
    for i in range(len(dataset.domains)):
        for part in ("in", "out"):
            split = dataset.split(i, part)
            if len(split) == 0 or (part == "in" and i in skip_in):
                continue
            batches = dataset.eval_batches(split, batch_size=batch_size)
            with batches.naming_bad_images():
                result = model.evaluate(batches.dataset, verbose=0, return_dict=True)
            record[f"env{i}_{part}_acc"] = float(result["accuracy"])
            record[f"env{i}_{part}_loss"] = float(result["loss"])
    return record


class _Progress:
    """A one-line progress bar with the loss and the diagnostics."""

    def __init__(self, total: int, start: int, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
        from rich.progress import TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[logs]}"),
            console=console, transient=False, disable=console is None,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, logs="")

    def update(self, step: int, logs: dict) -> None:
        text = " ".join(f"{k}={v:.4g}" for k, v in logs.items() if k != "accuracy")
        self.progress.update(self.task, completed=step, logs=text)


def _differences(old, new, where: str = "") -> list[str]:
    """'key: old -> new' for every dotted key whose value differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in dict.fromkeys([*old, *new]):
            out += _differences(old.get(key), new.get(key), f"{where}.{key}" if where else key)
        return out
    return [] if old == new else [f"{where}: {old!r} in the run, {new!r} now"]


def _check_folder(out: Path, recipe: recipes.Recipe) -> bool:
    """True when `out` holds the finished run of this recipe; a RunError when
    it holds a run (finished or not) of another recipe. Writes nothing."""
    saved = out / folder.RECIPE
    finished = (out / folder.DONE).exists()
    if saved.exists():
        try:
            previous = recipes.validate(recipes.read_yaml(saved)).to_dict()
        except recipes.RecipeError as error:
            raise RunError(f"{saved} (the recipe of the run in {out}) is not a valid recipe: "
                           f"{error}\nChoose another output_dir (--set output_dir=DIR), or "
                           f"delete {out} to start over.") from None
        # a moved folder, or other splits evaluated, is the same run
        changed = _differences(recipes.without(previous, recipes.NOT_IDENTITY),
                               recipes.without(recipe.to_dict(), recipes.NOT_IDENTITY))
        if changed:
            raise RunError(
                f"{out} holds {'a finished' if finished else 'an unfinished'} run of a "
                f"different recipe ({'; '.join(changed[:6])}"
                f"{'; ...' if len(changed) > 6 else ''}). To start a new run, choose another "
                f"output_dir (--set output_dir=DIR), or delete {out}; to "
                f"{'keep it' if finished else 'resume it'}, use the recipe in {saved}."
            )
    return finished


def use_backend(backend: str | None) -> str:
    """Make `backend` (default: $KERAS_BACKEND, else Keras' default) the Keras
    backend of this process and return the one running: set before Keras is
    first imported; a RunError when Keras already runs another, or when the
    backend is not installed (with the line that installs it)."""
    if backend is None:
        backend = os.environ.get("KERAS_BACKEND")
    if backend is not None and backend not in recipes.BACKENDS:
        raise RunError(f"backend: {backend!r} is not a Keras backend kdg supports; expected "
                       f"one of {', '.join(recipes.BACKENDS)}.")
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        if backend and backend != current:
            raise RunError(f"Keras is already running on {current}; cannot switch to {backend} "
                           "in this process. Run kdg in a new process.")
        return current
    if backend:
        os.environ["KERAS_BACKEND"] = backend
    try:
        import keras
    except ModuleNotFoundError as error:
        # JAX and PyTorch are extras: the default install has TensorFlow only.
        missing = {"jax": "jax", "jaxlib": "jax", "torch": "torch"}.get(error.name)
        if missing is None:
            raise
        install = f"pip install -e \".[{missing}]\""
        if missing == "torch":
            install += (" (on a CPU-only machine: pip install -c constraints-cpu.txt -e "
                        "\".[torch]\", without CUDA wheels)")
        raise RunError(f"the {missing} backend is not installed. Install it with {install}, or "
                       "choose an installed backend with --backend or KERAS_BACKEND.") from None
    return keras.backend.backend()


def run(recipe, overrides=(), backend: str | None = None, console=None, quiet: bool = False,
        dataset=None) -> dict | None:
    """The one entry from a recipe to a finished run (`kdg train` and each
    sweep job call it): train, or resume, the run and return its final
    record, or None when it had already finished.

    `recipe`: a recipe file, a recipe dict, or a validated `Recipe` (taken
    as resolved: its backend is the caller's); `overrides`: `--set` texts
    (KEY=VALUE); `backend`: the Keras backend (default: the recipe's, else
    $KERAS_BACKEND), chosen before Keras is imported. The recipe is read and
    overridden once, its dataset scanned once (`dataset`: one the caller has
    already checked), and everything the recipe and the dataset decide is
    checked before anything is written; the folder is then locked for this
    process alone. `console` (rich) shows the resolved recipe and, unless
    `quiet`, the progress. Raises RecipeError, RunError or DataError."""
    if isinstance(recipe, recipes.Recipe):
        resolved = recipe if not overrides else recipes.resolve(
            recipes.apply_overrides(recipe.to_dict(), list(overrides)), backend)
    else:
        config = (recipes.read_recipe(recipe, overrides) if isinstance(recipe, (str, Path))
                  else recipes.apply_overrides(dict(recipe), list(overrides)))
        running = use_backend(backend or config.get("backend"))
        resolved = recipes.resolve(config, running)
    if dataset is None:
        dataset = recipes.check_dataset(resolved)
    test_envs = sorted({dataset.domain_index(d) for d in resolved.dataset.test_domains})
    recipes.check_run(resolved, dataset.domains, test_envs)
    if console is not None:
        from rich.syntax import Syntax

        console.print(Syntax(recipes.dump(resolved), "yaml", theme="ansi_dark"))
    return _run_checked(resolved, dataset, test_envs, None if quiet else console)


def _run_checked(recipe: recipes.Recipe, dataset, test_envs, console) -> dict | None:
    out = Path(recipe.output_dir)
    say = console.print if console is not None else (lambda *a, **k: None)
    folder.check_output_dir(out)
    if _check_folder(out, recipe):
        say(f"[green]{out} is finished[/]: nothing to do (delete {out} to train again).")
        return None
    # built before anything is written: an algorithm that cannot train this
    # model (GGA with nothing to perturb) is refused like a wrong recipe
    model = build_model(recipe, dataset, len(dataset.domains) - len(test_envs))
    with folder.writing(out):
        out.mkdir(parents=True, exist_ok=True)
    with folder.lock(out):
        if _check_folder(out, recipe):  # finished by another process meanwhile
            say(f"[green]{out} is finished[/]: nothing to do (delete {out} to train again).")
            return None
        return _run_locked(recipe, dataset, model, test_envs, out, say, console)


def _run_locked(recipe, dataset, model, test_envs, out: Path, say, console) -> dict:
    saved = out / folder.RECIPE
    if not saved.exists():
        with folder.writing(saved):
            folder.atomic_write(saved, recipes.dump(recipe).encode())

    import keras

    from kdg.tf_data import tf  # TensorBoard

    training = recipe.training
    train_envs = [i for i in range(len(dataset.domains)) if i not in test_envs]

    start, extra = 0, {}
    if (out / CHECKPOINT).exists():
        start, extra = load_checkpoint(model, out / CHECKPOINT)
        say(f"resuming {out} from step {start}")
    resume = (f": it continues from step {start}, its last checkpoint" if start else
              ": it starts again from step 0")
    results_path = out / folder.RESULTS
    # the records up to the checkpoint; bad lines are dropped (run_folder's policy)
    kept = [r for r in folder.read_results(results_path).records if r["step"] <= start]
    with folder.writing(results_path, resume):
        folder.atomic_write(results_path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    args = {
        "dataset": dataset.name,
        "algorithm": recipe.algorithm.name.lower(),
        "test_envs": test_envs,
        "hparams_seed": training.hparams_seed,
        "trial_seed": training.trial_seed,
        "seed": training.seed,
        "output_dir": str(out),
        "backbone": recipe.model.backbone,
        "domains": list(dataset.domains),
        "backend": recipe.backend,
        "eval_splits": training.eval_splits,
    }
    params = hparams(recipe, model.algorithm)
    checkpoint_every = training.checkpoint_every or training.eval_every
    # the in split of a training domain is read by no selection method nor table
    skip_in = train_envs if training.eval_splits == "selection" else ()
    min_size = min(len(dataset.split(i, "in")) for i in train_envs)
    steps_per_epoch = max(min_size / training.batch_size, 1e-9)
    writer = tf.summary.create_file_writer(str(out / "tensorboard"))

    batches = dataset.train_batches(train_envs, batch_size=training.batch_size, seed=training.seed)
    model.num_domains = batches.num_domains
    stream = batches.iterate(skip=start)
    progress = _Progress(training.steps, start, console)
    # the training logs since the last evaluation, kept in the checkpoint so
    # that a resumed run averages the same steps
    interval_logs: dict[str, list[float]] = extra.get("interval_logs", {})
    interval_time = extra.get("interval_time", 0.0)
    interval_steps = extra.get("interval_steps", 0)
    record = kept[-1] if kept else None
    with progress.progress:
        for step in range(start + 1, training.steps + 1):
            began = time.perf_counter()
            x, y = next(stream)
            model.reset_metrics()  # the logs are this step's, not a running mean
            logs = model.train_on_batch(x, y, return_dict=True)
            interval_time += time.perf_counter() - began
            interval_steps += 1
            for key, value in logs.items():
                interval_logs.setdefault(key, []).append(float(value))
            progress.update(step, logs)
            if step % training.eval_every and step % checkpoint_every and step != training.steps:
                continue
            if step % training.eval_every == 0 or step == training.steps:
                step_time = interval_time / max(interval_steps, 1)
                record = {"step": step, "epoch": step / steps_per_epoch}
                for key, values in interval_logs.items():
                    finite = [v for v in values if not math.isnan(v)]
                    record[key] = (sum(finite) / len(finite)) if finite else None
                record.update(evaluate(model, dataset, training.eval_batch_size, skip_in))
                mem_gb, mem_device = memory.peak(keras.backend.backend())
                record.update(step_time=step_time, mem_gb=mem_gb, mem_device=mem_device,
                              args=args, hparams=params)
                with folder.writing(results_path, resume):
                    folder.append_line(results_path, json.dumps(record))
                with writer.as_default(step=step):
                    for key, value in record.items():
                        if isinstance(value, (int, float)) and key != "step":
                            tf.summary.scalar(key, value)
                writer.flush()
                test_acc = [record.get(f"env{i}_in_acc") for i in test_envs]
                say(f"step {step}: loss {record.get('loss') or float('nan'):.4f}, test-domain "
                    f"accuracy {', '.join(f'{a:.3f}' for a in test_acc)}")
                interval_logs, interval_steps, interval_time = {}, 0, 0.0
            with folder.writing(out / CHECKPOINT, resume):
                save_checkpoint(model, out / CHECKPOINT, step, {
                    "interval_logs": interval_logs, "interval_time": interval_time,
                    "interval_steps": interval_steps,
                })
            resume = f": it continues from step {step}, its last checkpoint"

    with folder.writing(out / folder.MODEL, resume), \
            folder.replacing(out / folder.MODEL, ".keras") as tmp:
        model.save(tmp)
    with folder.writing(out / folder.DONE, resume):
        folder.atomic_write(out / folder.DONE, (json.dumps(record) + "\n").encode())
    say(f"[green]done[/]: {out}")
    return record
