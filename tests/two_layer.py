"""The small network most algorithm tests share, and the conversions their
plain-PyTorch references need: tanh features (5 -> 6) and a linear
classifier (6 -> 4 classes). Nothing here computes a rule."""

import keras
import numpy as np
import torch

import kdg
from kdg import rng as kdg_rng

LR = 0.1


def numpy(values):
    return [keras.ops.convert_to_numpy(v) for v in values]


def tt(a):
    """float64 torch tensor of `a`."""
    return torch.tensor(np.asarray(a, dtype=np.float64))


def initial(seed=0):
    """Initial [W1, b1, W2, b2] of the two-layer network."""
    rng = np.random.default_rng(seed)
    shapes = [(5, 6), (6,), (6, 4), (4,)]
    return [rng.normal(scale=0.5, size=s).astype("float32") for s in shapes]


def two_layer(algorithm, params=None, lr=LR, seed=0, num_domains=3, optimizer=None):
    """tanh features (6) and a linear classifier (4 classes), SGD; the
    algorithm built (its own variables exist) before any step."""
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(6, activation="tanh", name="features")(inputs)
    outputs = keras.layers.Dense(4, name="head")(hidden)
    model = kdg.DGModel(inputs, outputs, algorithm=algorithm, seed=seed,
                        num_domains=num_domains)
    model.set_weights(params or initial())
    model.compile(optimizer=optimizer or keras.optimizers.SGD(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model._dg_build_algorithm()
    return model


def step_keys(model, steps):
    """The keys the model's next `steps` steps draw (from a copy of its seed
    generator's state)."""
    copy = keras.random.SeedGenerator(0)
    copy.state.assign(keras.ops.convert_to_numpy(model.dg_seed_generator.state))
    return [kdg_rng.key_from_seed_generator(copy) for _ in range(steps)]
