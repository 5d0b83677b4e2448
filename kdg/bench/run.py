"""The benchmark's worker for one Keras backend.

    KERAS_BACKEND=jax python -m kdg.bench.run CONFIG.json OUT.json

Keras fixes its backend when it is imported, so `kdg bench` runs this once
per backend, each in its own process, and collects the JSON it writes. For
each algorithm of the scenario (CONFIG, see `kdg.bench.suite.scenario`) it
builds a fresh model with `kdg.models.build`, then times
`model.train_on_batch` on one fixed synthetic batch (how `kdg train` steps):

- the first step (tracing and compiling included) and `compile_s`, the
  first step less the median step (with `compiles` > 1: the median over
  that many builds of the model);
- `warmup` more steps, then `repeats` timed steps, interleaved with the other
  algorithms' (`kdg.bench.measure.time_algorithms`): the median and spread;
- the process's peak resident memory during two steps after the warm-up,
  over what it was before the model was built.

Every algorithm is the registry's class (`kdg.algorithms.ALGORITHMS`) built
with the bench's settings (`kdg.bench.suite.hparams`), else its defaults;
"gga" is GGA(base=ERM) inside its annealing window (every step searches,
`gga_trials` trials). "gga_eval" times what one trial evaluates (the
per-domain gradients, their minimum cosine and the loss, `OneEvaluation`),
alone, compiled the same way: the unit of GGA's cost. For GGA the worker
also counts the while-loops and convolutions in the traced training step for
`gga_trials` and for one trial (JAX: the jaxpr; TensorFlow: the graph):
equal convolution counts mean the search is one compiled loop, not
`gga_trials` unrolled copies.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from kdg.algorithms import ALGORITHMS as REGISTRY  # noqa: E402
from kdg.algorithms import ERM  # noqa: E402
from kdg.algorithms.base import Algorithm  # noqa: E402
from kdg import layout  # noqa: E402
from kdg.bench import measure, suite  # noqa: E402
from kdg.ops import cosine_stats  # noqa: E402

class OneEvaluation(Algorithm):
    """One evaluation of GGA's search, as a training step that changes
    nothing: the per-domain gradients (D passes), their minimum pairwise
    cosine and the loss, as each of GGA's trials computes them."""

    name = "gga_eval"
    needs_domain_pairs = True

    def step(self, ctx, x, y):
        losses, stacked, y_pred, _ = ctx.domain_grads(x, y)
        cos_min = cosine_stats(stacked)[0]
        return {"loss": ops.mean(losses), "grad_cos_min": cos_min}, y_pred


def make_algorithm(name, config):
    """The algorithm `name` as the bench times it."""
    if name == OneEvaluation.name:
        return OneEvaluation()
    return REGISTRY[name](**suite.hparams(name, config))


def build_model(config, algorithm):
    import kdg.models

    keras.utils.set_random_seed(int(config["seed"]))
    size, channels = int(config["image_size"]), int(config["channels"])
    model = kdg.models.build(
        config["model"], int(config["num_classes"]), (size, size, channels),
        pretrained=False, algorithm=algorithm, freeze_bn=True, seed=int(config["seed"]),
        **suite.model_options(algorithm.name),
    )
    model.num_domains = int(config["domains"])
    jit = config.get("jit_compile", "auto")
    model.compile(
        optimizer=keras.optimizers.Adam(float(config["lr"]), epsilon=1e-8),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return model


# -- is GGA's search one loop? -------------------------------------------------------

COUNTED = {
    # JAX primitives / TensorFlow op types that mark a loop or a convolution
    "while": "loops", "scan": "loops", "While": "loops", "StatelessWhile": "loops",
    "conv_general_dilated": "convolutions", "Conv2D": "convolutions",
    "Conv2DBackpropInput": "convolutions", "Conv2DBackpropFilter": "convolutions",
}


def jaxpr_counts(jaxpr, counts=None):
    """Loops, convolutions and equations of a jaxpr. A nested jaxpr (a jit, a
    cond's branches, a loop's body) is counted in place of the equation that
    calls it."""
    if counts is None:
        counts = {"loops": 0, "convolutions": 0, "equations": 0}
    for eqn in jaxpr.eqns:
        kind = COUNTED.get(eqn.primitive.name)
        if kind:
            counts[kind] += 1
        nested = False
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    nested = True
                    jaxpr_counts(inner, counts)
        if not nested:
            counts["equations"] += 1
    return counts


def traced_counts(model, x, y):
    """Loops and convolutions in the model's traced training step (and, on
    JAX, its equations); None on PyTorch, which has no traced step."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        # the state Keras' JAX trainer passes to train_step, from public lists
        state = tuple([v.value for v in variables] for variables in (
            model.trainable_variables, model.non_trainable_variables,
            model.optimizer.variables, model.metrics_variables))
        return jaxpr_counts(jax.make_jaxpr(model.train_step)(state, (x, y)).jaxpr)
    if backend == "tensorflow":
        import tensorflow as tf

        specs = (tf.TensorSpec(x.shape, tf.float32), tf.TensorSpec(y.shape, tf.int32))
        concrete = tf.function(model.train_step).get_concrete_function(specs)
        graph = concrete.graph.as_graph_def()
        nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
        counts = {"loops": 0, "convolutions": 0}
        for node in nodes:
            kind = COUNTED.get(node.op)
            if kind:
                counts[kind] += 1
        return counts
    return None


def loop_structure(model, x, y):
    """Loops and convolutions in the traced step, with the configured trials
    and with one trial (JAX and TensorFlow; None on PyTorch, which runs the
    search as a Python loop of eager steps by design)."""
    algorithm = model.algorithm
    trials = algorithm.trials
    try:
        many = traced_counts(model, x, y)
        if many is None:
            return None
        algorithm.trials = 1
        one = traced_counts(model, x, y)
    finally:
        algorithm.trials = trials
    return {
        "trials": trials,
        "loops": many["loops"],
        "convolutions": many["convolutions"],
        "convolutions_with_one_trial": one["convolutions"],
        "one_compiled_loop": many["loops"] >= 1 and many["convolutions"] == one["convolutions"],
    }


# -- the run -----------------------------------------------------------------------------

def versions():
    backend = keras.backend.backend()
    out = {"keras": keras.__version__, "numpy": np.__version__}
    if backend == "jax":
        import jax
        import jaxlib

        out.update(jax=jax.__version__, jaxlib=jaxlib.__version__)
    elif backend == "tensorflow":
        import tensorflow as tf

        out["tensorflow"] = tf.__version__
    elif backend == "torch":
        import torch

        out["torch"] = torch.__version__
    return out


def device():
    """("cpu" or "gpu", a description) of where this backend computes."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        dev = jax.devices()[0]
        kind = "gpu" if dev.platform in ("gpu", "cuda", "rocm") else dev.platform
        return kind, getattr(dev, "device_kind", str(dev))
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return ("gpu", gpus[0].name) if gpus else ("cpu", "CPU")
    import torch

    if torch.cuda.is_available():
        return "gpu", torch.cuda.get_device_name(0)
    return "cpu", f"CPU, {torch.get_num_threads()} threads"


def run(config):
    x, y = measure.make_batch(int(config["domains"]), int(config["batch"]),
                              int(config["image_size"]), int(config["channels"]),
                              int(config["num_classes"]), int(config["seed"]))
    x, y = layout.interleave_domains((x, y))  # the training batch the model takes
    names = suite.timed(config["algorithms"])
    kind, description = device()
    result = {
        "runner": config.get("runner", keras.backend.backend()),
        "backend": keras.backend.backend(),
        "jit_compile": config.get("jit_compile", "auto"),
        "device": kind,
        "device_name": description,
        "versions": versions(),
        "memory_measured": measure.memory_supported(),
        "load_before": os.getloadavg()[0],
    }
    if config.get("framework_warmup", True):
        # The backend's one-time start-up (thread pools, kernels, the compiler)
        # is not any algorithm's cost: pay it on a model that is thrown away.
        model = build_model(config, ERM())
        for _ in range(2):
            model.train_on_batch(x, y)
        del model
        keras.backend.clear_session()
    models = {}

    def prepare(name):
        model = models[name] = build_model(config, make_algorithm(name, config))
        return lambda: float(model.train_on_batch(x, y, return_dict=True)["loss"])

    result["algorithms"] = measure.time_algorithms(names, prepare, config,
                                                   backend=keras.backend.backend())
    any_model = next(iter(models.values()))
    result["params"] = sum(int(np.prod(v.shape)) for v in any_model.trainable_variables)
    result["param_mb"] = result["params"] * 4 / 2 ** 20
    for name, model in models.items():  # trained by the algorithm's own optimizers
        own = [v for v in model.algorithm.variables if v.trainable]
        if own and name in result["algorithms"]:
            result["algorithms"][name]["own_params"] = sum(int(np.prod(v.shape)) for v in own)
    if "gga" in models:
        model = models["gga"]
        record = result["algorithms"]["gga"]
        record["trials"] = int(config["gga_trials"])
        if config.get("structure", True):
            record["structure"] = loop_structure(model, x, y)
    result["load_after"] = os.getloadavg()[0]
    return result


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        raise SystemExit("usage: python -m kdg.bench.run CONFIG.json OUT.json")
    with open(argv[0]) as f:
        config = json.load(f)
    result = run(config)
    with open(argv[1], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
