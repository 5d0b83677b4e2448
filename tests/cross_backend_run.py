"""Train each algorithm a few steps from fixed weights and data; print the
final weights as JSON. Run by test_cross_backend.py under each backend."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kdg  # noqa: E402
from kdg.algorithms import GGA, GGAL, CorGrad, ERM, Fish  # noqa: E402

ALGORITHMS = {
    "erm": lambda: ERM(),
    "fish": lambda: Fish(meta_lr=0.5),
    "corgrad": lambda: CorGrad(n_parts=3, alpha=0.6),
    "ggal": lambda: GGAL(gamma=0.05),
    "gga": lambda: GGA(start_step=1, end_step=3, trials=8, rho=0.01),
    "gga_fish": lambda: GGA(base=Fish(shuffle_domains=True), start_step=0, end_step=3, trials=4,
                            rho=0.01),
}


def run(name, steps=4):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3, 8, 5)) + rng.normal(scale=2, size=(3, 1, 5))).astype("float32")
    y = rng.integers(0, 4, size=(3, 8)).astype("int32")
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(6, activation="tanh", name="features")(inputs)
    outputs = keras.layers.Dense(4, name="head")(hidden)
    model = kdg.DGModel(inputs, outputs, algorithm=ALGORITHMS[name](), seed=3, num_domains=3)
    for layer in ("features", "head"):
        model.get_layer(layer).set_weights(
            [rng.normal(scale=0.5, size=w.shape).astype("float32")
             for w in model.get_layer(layer).get_weights()])
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    logs = {}
    for _ in range(steps):
        logs = model.train_on_batch(*kdg.layout.interleave_domains((x, y)), return_dict=True)
    return {"weights": [np.asarray(w).tolist() for w in model.get_weights()],
            "logs": {k: float(v) for k, v in logs.items()}}


if __name__ == "__main__":
    print(json.dumps({name: run(name) for name in sys.argv[1:]}))
