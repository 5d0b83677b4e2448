"""One training step of every registered algorithm on two devices, from the
same weights and batch: the largest difference of the variables after it.

    KERAS_BACKEND=jax python benchmarks/gpu/check_steps.py --devices gpu,cpu --out check.json

For each algorithm of `kdg.algorithms.ALGORITHMS` (GGA inside its annealing
window, as `kdg bench` times it) the model (DomainBed's MNIST CNN, small
images, D domains x B, fixed seed) is built on the first device, and its
variables (the algorithm's own included) are copied into the same model built
on the second device; each takes `--steps` steps of SGD on the same batch, and
the largest absolute difference of any variable afterwards must be at most
`--tol`. SGD, not Adam: Adam's first step is lr * sign(gradient), which hides
a wrong gradient and magnifies a harmless rounding near zero. Matrix products
and convolutions run in full float32 (no TF32) unless `--precision default`.

Each algorithm's record is written to `--out` as soon as it is done (a run
stopped by a time limit keeps what it finished); an algorithm that fails is
recorded with its error and the others go on. `--deadline` (seconds) skips
the algorithms that would start after it. `--perturb EPS` adds EPS to one
weight of the second copy: the check must then fail (the test of the check).
Exit status 0 when every algorithm that ran agrees, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kdg import layout  # noqa: E402
from kdg.algorithms import ALGORITHMS  # noqa: E402
from kdg.bench import measure, suite  # noqa: E402

#: checked first, so that a time limit cuts the least important ones
FIRST = ("erm", "fish", "corgrad", "ggal", "gga")
#: algorithms whose network draws from Keras' random ops (MixStyle's layer):
#: on PyTorch those draw from a generator of the device, and the CPU's and
#: CUDA's give different numbers for one seed; their difference is reported,
#: not judged (kdg's own draws, `kdg.rng`, are the same on every device)
KERAS_RANDOM = ("mixstyle",)


def set_precision(precision):
    """Full float32 matrix products and convolutions on the GPU (no TF32)."""
    if precision != "highest":
        return
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")
    elif backend == "torch":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def build(name, image_size, seed, trials, domains, backbone="mnist_cnn"):
    """Algorithm `name` on DomainBed's MNIST CNN (MixStyle, whose layers go
    after a ResNet's stages, on a small convolutional net with one MixStyle
    layer), compiled with SGD, its variables (the algorithm's too) built."""
    import kdg
    import kdg.layers
    import kdg.models

    config = {"gga_trials": trials}
    algorithm = ALGORITHMS[name](**suite.hparams(name, config))
    keras.utils.set_random_seed(seed)
    if name == "mixstyle":
        inputs = keras.Input((image_size, image_size, 1))
        h = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
        h = kdg.layers.MixStyle(p=1.0, alpha=0.3, seed=seed, name="mixstyle1")(h)
        h = keras.layers.ReLU()(h)
        h = keras.layers.Conv2D(8, 3, padding="same", name="conv2")(h)
        features = keras.layers.GlobalAveragePooling2D()(h)
        outputs = keras.layers.Dense(10, name="classifier")(features)
        model = kdg.DGModel(inputs, outputs, algorithm=algorithm, seed=seed)
    else:
        model = kdg.models.build(backbone, 10, (image_size, image_size, 1),
                                 pretrained=False, algorithm=algorithm, seed=seed,
                                 **suite.model_options(name))
    model.num_domains = domains
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.make_train_function()  # builds the optimizer and the algorithm's own variables
    return model


def state(model):
    """Every variable a step reads or changes, in a fixed order."""
    return list(model.trainable_variables) + list(model.non_trainable_variables)


def placement(variable):
    """Where a variable's value lives (to show that the devices differ)."""
    value = variable.value
    if hasattr(value, "devices"):  # JAX
        return ",".join(sorted(str(d) for d in value.devices()))
    return str(getattr(value, "device", "?"))


def run_on(device, name, args, x, y, values=None):
    """(values after the steps, losses, placement, values before) on `device`."""
    with keras.device(device):
        model = build(name, args.image_size, args.seed, args.trials, args.domains, args.model)
        variables = state(model)
        if values is not None:
            if len(values) != len(variables):
                raise RuntimeError(f"{len(values)} values for {len(variables)} variables")
            for variable, value in zip(variables, values):
                variable.assign(value)
        before = [np.array(keras.ops.convert_to_numpy(v.value)) for v in variables]
        losses = [float(model.train_on_batch(x, y, return_dict=True)["loss"])
                  for _ in range(args.steps)]
        after = [np.array(keras.ops.convert_to_numpy(v.value)) for v in variables]
        where = placement(model.trainable_variables[0])
    return after, losses, where, before


def check(name, args, x, y):
    first, second = args.devices
    after_a, loss_a, where_a, start = run_on(first, name, args, x, y)
    start = [v.copy() for v in start]
    if args.perturb:
        start[0].flat[0] += args.perturb  # the first kernel's first weight
    after_b, loss_b, where_b, _ = run_on(second, name, args, x, y, values=start)
    diffs = [float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
             for a, b in zip(after_a, after_b)]
    worst = int(np.argmax(diffs)) if diffs else 0
    max_diff = max(diffs) if diffs else 0.0
    finite = all(np.isfinite(v).all() for v in after_a + after_b)
    kinds = {d.split(":")[0] for d in args.devices}
    judged = not (keras.backend.backend() == "torch" and len(kinds) > 1 and name in KERAS_RANDOM)
    return {
        "judged": judged,
        "max_abs_diff": max_diff,
        "worst_variable": worst,
        "variables": len(diffs),
        "max_abs_value": max(float(np.max(np.abs(a))) if a.size else 0.0 for a in after_a),
        "loss": [loss_a[-1], loss_b[-1]],  # the last step's
        "placed": [where_a, where_b],
        "finite": bool(finite),
        "ok": bool(finite and (max_diff <= args.tol or not judged)),
    }


def markdown(result):
    """The result as a markdown table."""
    a, b = result["devices"]
    lines = [f"### One step on {a} vs {b}: {result['backend']}",
             "",
             f"{result['model']}, D={result['domains']} x B={result['batch']}, SGD lr 0.1, "
             f"{result['steps']} step(s), precision {result['precision']}, "
             f"tolerance {result['tol']:g} (max |difference| of every variable)",
             "",
             "| algorithm | max abs diff | loss (" + a + ") | loss (" + b + ") | ok | s |",
             "|---|---|---|---|---|---|"]
    for name, record in result["algorithms"].items():
        if "error" in record:
            lines.append(f"| {name} | error: {record['error'].splitlines()[-1][:120]} "
                         f"| | | FAIL | {record.get('seconds', 0):.1f} |")
        elif record.get("skipped"):
            lines.append(f"| {name} | not run: {record['skipped']} | | | - | |")
        else:
            lines.append(f"| {name} | {record['max_abs_diff']:.2e} | {record['loss'][0]:.6f} "
                         f"| {record['loss'][1]:.6f} | {verdict(record)} "
                         f"| {record['seconds']:.1f} |")
    placed = {tuple(r["placed"]) for r in result["algorithms"].values() if "placed" in r}
    lines += ["", f"variables placed on: {'; '.join(' vs '.join(p) for p in sorted(placed))}", ""]
    return "\n".join(lines)


def verdict(record):
    if not record.get("judged", True):
        return "not judged (PyTorch draws Keras' random numbers per device type)"
    return "yes" if record["ok"] else "FAIL"


def write(path, result):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="gpu,cpu",
                        help="two Keras device names, e.g. gpu,cpu or cpu,cpu")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument("--markdown", help="append the table to this file")
    parser.add_argument("--algorithm", action="append", dest="algorithms",
                        help="registry name (repeatable; default: every algorithm)")
    parser.add_argument("--model", choices=("mnist_cnn", "mlp"), default="mnist_cnn",
                        help="the network (mlp: the fastest to compile, for tests)")
    parser.add_argument("--image-size", type=int, default=14)
    parser.add_argument("--domains", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--trials", type=int, default=4, help="GGA's trials per step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--precision", choices=("highest", "default"), default="highest")
    parser.add_argument("--perturb", type=float, default=0.0)
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds after which no further algorithm is started")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    args.devices = [d.strip() for d in args.devices.split(",")]
    if len(args.devices) != 2:
        parser.error("--devices takes two device names, e.g. gpu,cpu")
    set_precision(args.precision)
    names = args.algorithms or list(ALGORITHMS)
    unknown = [n for n in names if n not in ALGORITHMS]
    if unknown:
        parser.error(f"unknown algorithm(s) {', '.join(unknown)}; known: {', '.join(ALGORITHMS)}")
    names = [n for n in FIRST if n in names] + [n for n in names if n not in FIRST]
    x, y = measure.make_batch(args.domains, args.batch, args.image_size, 1, 10, args.seed)
    x, y = layout.interleave_domains((x, y))
    result = {"backend": keras.backend.backend(), "devices": args.devices,
              "model": f"{args.model} {args.image_size}x{args.image_size}",
              "domains": args.domains, "batch": args.batch, "steps": args.steps,
              "precision": args.precision, "tol": args.tol, "perturb": args.perturb,
              "algorithms": {}}
    for name in names:
        if args.deadline is not None and time.perf_counter() - start > args.deadline:
            result["algorithms"][name] = {"skipped": f"time ({args.deadline:.0f} s) used up"}
            continue
        began = time.perf_counter()
        try:
            record = check(name, args, x, y)
        except Exception as error:  # one algorithm's failure must not stop the others
            record = {"error": f"{type(error).__name__}: {error}\n{traceback.format_exc()[-2000:]}",
                      "ok": False}
        record["seconds"] = time.perf_counter() - began
        result["algorithms"][name] = record
        status = ("ok" if record["ok"] else "FAIL") + (
            f" {record['max_abs_diff']:.2e}" if "max_abs_diff" in record else
            f" {record.get('error', '').splitlines()[0][:200]}")
        print(f"check {result['backend']} {name}: {status} ({record['seconds']:.1f} s)", flush=True)
        keras.backend.clear_session()
        write(args.out, result)
    result["seconds"] = time.perf_counter() - start
    write(args.out, result)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(markdown(result) + "\n")
    ran = [r for r in result["algorithms"].values() if not r.get("skipped")]
    return 0 if ran and all(r["ok"] for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
