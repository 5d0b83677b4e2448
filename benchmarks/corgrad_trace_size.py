"""How CorGrad's traced surgery grows with the model and with `n_parts`.

The issue's compile target says the surgery must not grow in Python-level
work with the number of variables and chunks. This counts the JAX
equations of the traced surgery (no compilation) on ResNet-18 and ResNet-50
for several `n_parts`, next to the equations of ERM's whole training step.

    KERAS_BACKEND=jax python benchmarks/corgrad_trace_size.py
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from kdg.algorithms import CorGrad  # noqa: E402
from kdg.bench.run import build_model, jaxpr_counts, make_algorithm, traced_counts  # noqa: E402
from kdg.bench.suite import scenario  # noqa: E402


def main():
    print("model     variables  ERM step  n_parts  layouts  chunks  surgery equations")
    for name in ("resnet18", "resnet50"):
        config = scenario(name)
        model = build_model(config, make_algorithm("erm", config))
        variables = model.trainable_variables
        model.make_train_function()
        model.optimizer.build(variables)
        size, channels = int(config["image_size"]), int(config["channels"])
        x = np.zeros((3, 32, size, size, channels), "float32")
        erm = traced_counts(model, x, np.zeros((3, 32), "int32"))["equations"]
        stacked = [jax.ShapeDtypeStruct((3,) + tuple(v.shape), "float32") for v in variables]
        for n_parts in (1, 10, 100):
            corgrad = CorGrad(n_parts=n_parts)
            pieces, gram_chunks, vector_chunks = corgrad._layout(variables)
            jaxpr = jax.make_jaxpr(lambda s: corgrad.surgery(s, variables)[:2])(stacked)
            surgery = jaxpr_counts(jaxpr.jaxpr)["equations"]
            print(f"{name:9s} {len(variables):9d} {erm:9d} {n_parts:8d} {len(pieces):8d} "
                  f"{gram_chunks + vector_chunks:7d} {surgery:18d}")


if __name__ == "__main__":
    main()
