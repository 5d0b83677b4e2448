"""Fish's inner optimizer: its state carried across steps (DomainBed's code,
the default) or a fresh one every step (`reset_inner_optimizer=True`, the
authors' WILDS code with `reload_inner_optim: False`), checked against the
authors' loop written with torch.optim."""

import keras
import numpy as np
import pytest
import torch
from conftest import domain_batch, init_params, make_data, softmax_regression, weights

from kdg.algorithms import GGA, Fish
from kdg.optimizers import TorchAdam

LR, META_LR, STEPS = 0.05, 0.5, 4


def authors_fish(params, x, y, steps, reload_inner_optim,
                 make=lambda ps: torch.optim.Adam(ps, lr=LR)):
    """The WILDS code's train_fish loop on logits = x W + b: per step a deep
    copy of the model, a new torch.optim.Adam on it that loads the previous
    one's state if reload_inner_optim, one inner step per domain in order,
    then theta += meta_lr * (theta_inner - theta)."""
    model = [torch.tensor(p, dtype=torch.float64) for p in params]
    opt_inner_pre = None
    for _ in range(steps):
        inner = [p.clone().requires_grad_(True) for p in model]
        opt_inner = make(inner)
        if opt_inner_pre is not None and reload_inner_optim:
            opt_inner.load_state_dict(opt_inner_pre)
        for d in range(x.shape[0]):
            opt_inner.zero_grad()
            logits = torch.tensor(x[d], dtype=torch.float64) @ inner[0] + inner[1]
            torch.nn.functional.cross_entropy(logits, torch.tensor(y[d]).long()).backward()
            opt_inner.step()
        opt_inner_pre = opt_inner.state_dict()
        model = [p + META_LR * (q.detach() - p) for p, q in zip(model, inner)]
    return [p.numpy() for p in model]


@pytest.mark.parametrize("reset", [True, False])
@pytest.mark.parametrize("own_inner_optimizer", [True, False])
def test_fish_inner_optimizer_state_as_the_authors_code(reset, own_inner_optimizer):
    x, y = make_data()
    params = init_params()
    if own_inner_optimizer:  # the compiled optimizer is then unused
        fish = Fish(meta_lr=META_LR, inner_optimizer=TorchAdam(LR),
                    reset_inner_optimizer=reset)
        model = softmax_regression(fish, params, keras.optimizers.SGD(123.0), num_domains=3)
    else:
        fish = Fish(meta_lr=META_LR, reset_inner_optimizer=reset)
        model = softmax_regression(fish, params, TorchAdam(LR), num_domains=3)
    model.fit((domain_batch(x, y) for _ in range(STEPS)), steps_per_epoch=STEPS, epochs=1, verbose=0)
    want = authors_fish(params, x, y, STEPS, reload_inner_optim=not reset)
    other = authors_fish(params, x, y, STEPS, reload_inner_optim=reset)
    got = weights(model)
    for g, w, o, p in zip(got, want, other, params):
        np.testing.assert_allclose(g - p, w - p, rtol=1e-4, atol=1e-6)
        # the two variants part far beyond the tolerance: the test can tell them apart
        assert np.max(np.abs(w - o)) > 100 * (1e-6 + 1e-4 * np.max(np.abs(w - p)))
    inner = fish.inner_optimizer or model.optimizer
    # after a reset the state is one step's (D inner steps), else all steps'
    assert int(keras.ops.convert_to_numpy(inner.iterations)) == (
        x.shape[0] if reset else STEPS * x.shape[0])
    assert float(keras.ops.convert_to_numpy(inner.learning_rate)) == pytest.approx(LR)


def test_reset_under_gga_and_warmup_and_save(tmp_path):
    """The option survives the config round trip and runs inside GGA's and
    the warm-up's conditional branches."""
    x, y = make_data()
    fish = Fish(meta_lr=META_LR, inner_optimizer=TorchAdam(LR), warmup_steps=1,
                reset_inner_optimizer=True)
    model = softmax_regression(GGA(base=fish, start_step=1, end_step=2, trials=2,
                                   perturb="all"), init_params(), TorchAdam(LR),
                               num_domains=3)
    model.fit((domain_batch(x, y) for _ in range(3)), steps_per_epoch=3, epochs=1, verbose=0)
    assert int(keras.ops.convert_to_numpy(fish.inner_optimizer.iterations)) == x.shape[0]
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.algorithm.base.reset_inner_optimizer is True
    assert loaded.algorithm.get_config() == model.algorithm.get_config()


def test_a_fresh_inner_optimizer_is_a_new_one_not_zeros():
    """Adagrad's fresh state is its initial accumulator (0.1 here), not zero:
    the reset gives a new optimizer's state, as the authors' code does by
    making a new torch.optim.Adagrad every step."""
    x, y = make_data()
    params = init_params()
    fish = Fish(meta_lr=META_LR, reset_inner_optimizer=True,
                inner_optimizer=keras.optimizers.Adagrad(LR, initial_accumulator_value=0.1,
                                                         epsilon=1e-10))
    model = softmax_regression(fish, params, keras.optimizers.SGD(123.0), num_domains=3)
    model.fit((domain_batch(x, y) for _ in range(STEPS)), steps_per_epoch=STEPS, epochs=1, verbose=0)
    adagrad = lambda ps: torch.optim.Adagrad(ps, lr=LR, initial_accumulator_value=0.1,  # noqa: E731
                                             eps=0.0)
    want = authors_fish(params, x, y, STEPS, reload_inner_optim=False, make=adagrad)
    zeros = authors_fish(params, x, y, STEPS, reload_inner_optim=False,
                         make=lambda ps: torch.optim.Adagrad(ps, lr=LR, eps=1e-10))
    for g, w, z, p in zip(weights(model), want, zeros, params):
        np.testing.assert_allclose(g - p, w - p, rtol=1e-4, atol=1e-6)
        assert np.max(np.abs(w - z)) > 100 * (1e-6 + 1e-4 * np.max(np.abs(w - p)))
