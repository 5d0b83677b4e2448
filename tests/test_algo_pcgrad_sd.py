"""PCGrad and SD against references written in the test from their rules
(docs/ALGORITHMS.md): PCGrad's projection in NumPy on softmax regression's
closed-form gradients, with kdg's counter-based random orders reproduced
(test_rng); SD in plain PyTorch (float64, torch.autograd). PCGrad's relation
to CorGrad, GGA wrapping each, their hyperparameters, and `kdg report`'s
published PCGrad row."""

import ast
import inspect
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import init_params, make_data, softmax_regression, train_steps, weights
from test_rng import fold_in, uniform

import kdg
import reference as ref
from kdg.algorithms import GGA, SD, CorGrad, PCGrad
from kdg.algorithms.base import HparamError

TOL = dict(rtol=1e-5, atol=1e-6)
SEED = 5


def key_of_step(step, seed=SEED):
    """The model's key at training step `step`: [seed, step] as uint32."""
    return np.array([seed, step], np.uint32)


# -- PCGrad --------------------------------------------------------------------------


def pcgrad_update(per_domain, orders, reduction="sum"):
    """The rule, on flattened whole-model gradients: domain i meets the
    others in orders[i] (entries equal to i skipped) and is projected off
    each one's ORIGINAL gradient it conflicts with; the sum (or mean) of the
    projected gradients. Returns (update as [W, b], pairs projected)."""
    g = [np.concatenate([p.ravel() for p in grads]).astype(np.float64) for grads in per_domain]
    projected, made = [], 0
    for i in range(len(g)):
        h = g[i].copy()
        for j in orders[i]:
            if j != i and h @ g[j] < 0:
                h -= (h @ g[j]) / (g[j] @ g[j]) * g[j]
                made += 1
        projected.append(h)
    total = np.sum(projected, axis=0)
    if reduction == "mean":
        total /= len(g)
    shapes = [p.shape for p in per_domain[0]]
    w_size = int(np.prod(shapes[0]))
    return [total[:w_size].reshape(shapes[0]), total[w_size:].reshape(shapes[1])], made


def orders_of_step(step, num):
    return [np.argsort(uniform(num, fold_in(key_of_step(step), i), 0)) for i in range(num)]


def test_pcgrad_mean_one_step_matches_numpy(params):
    """reduction="mean", three domains (two pairs conflict): one SGD step and
    the logged diagnostics against the rule."""
    x, y = make_data(seed=4)
    model = softmax_regression(PCGrad(reduction="mean"), params, seed=SEED)
    logs = train_steps(model, x, y, 1)
    results = ref.domain_grads(params, x, y)
    per_domain = [g for _, g in results]
    update, made = pcgrad_update(per_domain, orders_of_step(0, 3), "mean")
    assert made > 0
    for got, want in zip(weights(model), ref.sgd(params, update, 0.1)):
        np.testing.assert_allclose(got, want, **TOL)
    cos = ref.cosines(per_domain)
    np.testing.assert_allclose(logs["grad_cos_min"], cos.min(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(logs["grad_cos_mean"], cos.mean(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(logs["modification_frequency"], made / 6, rtol=1e-6)
    np.testing.assert_allclose(logs["loss"], np.mean([loss for loss, _ in results]), rtol=1e-5)


def test_pcgrad_follows_the_random_orders_and_is_corgrad_at_model_granularity():
    """Four domains, where the order matters, Adam: the first step and the
    weights after three against the rule with kdg's draws (the ascending
    order ends elsewhere). And, as docs/ALGORITHMS.md says, PCGrad() takes
    the steps of CorGrad(granularity="model", projection="pcgrad",
    smoothing=False) from the same seed."""
    x, y = make_data(num_domains=4, seed=0)
    params = init_params()
    models = {name: softmax_regression(algorithm, params, keras.optimizers.Adam(0.05), seed=SEED)
              for name, algorithm in (("pcgrad", PCGrad()), ("corgrad", CorGrad(
                  granularity="model", projection="pcgrad", smoothing=False)))}
    adam, plain_adam = ref.Adam(0.05), ref.Adam(0.05)
    current = plain = params
    logs, made = {}, []
    for step in range(3):
        for name, model in models.items():
            logs[name] = train_steps(model, x, y, 1)
        update, count = pcgrad_update([g for _, g in ref.domain_grads(current, x, y)],
                                      orders_of_step(step, 4))
        current = adam.step(current, update)
        made.append(count)
        if step == 0:  # one step from the fixed weights
            for got, want in zip(weights(models["pcgrad"]), current):
                np.testing.assert_allclose(got, want, **TOL)
        plain_update, _ = pcgrad_update([g for _, g in ref.domain_grads(plain, x, y)],
                                        [range(4)] * 4)
        plain = plain_adam.step(plain, plain_update)
    assert min(made) > 0
    np.testing.assert_allclose(logs["pcgrad"]["modification_frequency"], made[-1] / 12, rtol=1e-6)
    for got, want in zip(weights(models["pcgrad"]), current):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(plain, current)) > 1e-3
    for a, b in zip(weights(models["pcgrad"]), weights(models["corgrad"])):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for key in ("loss", "grad_cos_min", "modification_frequency", "modification_ratio"):
        np.testing.assert_allclose(logs["pcgrad"][key], logs["corgrad"][key], rtol=1e-6,
                                   err_msg=key)


# -- SD ------------------------------------------------------------------------------


def sd_objective(params, x, y, sd_reg):
    """DomainBed's SD on the concatenated batch: mean CE + sd_reg * mean of
    the squared logits over all entries. Returns (objective, nll, penalty)."""
    w, b = (torch.tensor(np.asarray(p, np.float64), requires_grad=True) for p in params)
    logits = torch.tensor(x.reshape(-1, x.shape[-1]), dtype=torch.float64) @ w + b
    nll = F.cross_entropy(logits, torch.tensor(y.reshape(-1)).long())
    penalty = (logits ** 2).mean()
    return nll + sd_reg * penalty, nll, penalty, (w, b)


def sd_step(params, x, y, sd_reg, lr):
    objective, nll, penalty, leaves = sd_objective(params, x, y, sd_reg)
    grads = torch.autograd.grad(objective, leaves)
    new = [p - lr * g.numpy() for p, g in zip(params, grads)]
    return new, tuple(float(t.detach()) for t in (objective, nll, penalty))


def test_sd_one_step_and_three_steps_match_pytorch(data, params):
    x, y = data
    model = softmax_regression(SD(sd_reg=0.5), params)
    logs = train_steps(model, x, y, 1)
    expected, (objective, nll, penalty) = sd_step(params, x, y, 0.5, 0.1)
    for got, want in zip(weights(model), expected):
        np.testing.assert_allclose(got, want, **TOL)
    for key, want in (("loss", objective), ("nll", nll), ("penalty", penalty)):
        np.testing.assert_allclose(logs[key], want, rtol=1e-5, err_msg=key)
    train_steps(model, x, y, 2)
    for _ in range(2):
        expected, _ = sd_step(expected, x, y, 0.5, 0.1)
    for got, want in zip(weights(model), expected):
        np.testing.assert_allclose(got, want, **TOL)
    # the penalty matters: ERM from the same weights ends elsewhere
    erm = params
    for _ in range(3):
        erm, _ = ref.erm_step(erm, x, y, 0.1)
    assert max(np.abs(a - b).max() for a, b in zip(erm, expected)) > 1e-3


# -- GGA around each, hyperparameters, the report -------------------------------------


@pytest.mark.parametrize("make", [PCGrad, lambda: SD(sd_reg=0.5)], ids=["pcgrad", "sd"])
def test_gga_wrapping_each(data, params, make):
    """Window [1, 1]: step 0 is exactly the base's step; step 1 is the
    search (a model with lr 0 shows where it ends), then the base's step
    from there."""
    x, y = data
    window = dict(start_step=1, end_step=1, trials=8, rho=0.05, perturb="all")
    plain = softmax_regression(make(), params, seed=SEED)
    gga = softmax_regression(GGA(base=make(), **window), params, seed=SEED)
    train_steps(plain, x, y, 1)
    logs = train_steps(gga, x, y, 1)
    for a, b in zip(weights(gga), weights(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert logs["gga_accepted"] == 0
    searched = softmax_regression(GGA(base=make(), **window), params,
                                  keras.optimizers.SGD(0.0), seed=SEED)
    train_steps(searched, x, y, 1)  # lr 0: nothing changes
    searched.set_weights(gga.get_weights())
    logs = train_steps(searched, x, y, 1)  # the search from where gga is, with its key
    assert logs["gga_accepted"] > 0 and logs["gga_cos_after"] > logs["gga_cos_before"]
    plain.set_weights(searched.get_weights())  # theta_best
    train_steps(plain, x, y, 1)
    train_steps(gga, x, y, 1)
    for a, b in zip(weights(gga), weights(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_hparams_configs_and_search_spaces():
    with pytest.raises(HparamError, match="SD sd_reg must be"):
        SD(sd_reg=-0.1)
    with pytest.raises(HparamError, match="PCGrad reduction must be one of 'sum', 'mean'"):
        PCGrad(reduction="avg")
    assert SD().get_config() == {"sd_reg": 0.1}
    assert PCGrad().get_config() == {"reduction": "sum", "tie_tolerance": 1e-5}
    for algorithm in (SD(sd_reg=1e-3), PCGrad(reduction="mean")):
        assert type(algorithm).from_config(algorithm.get_config()) == algorithm
    assert kdg.algorithms.get("PC-Grad") == PCGrad() and kdg.algorithms.get("sd") == SD()
    assert PCGrad.search_space == {} and SD.search_space == {"sd_reg": {"log_uniform": [-5, -1]}}
    docs = (Path(__file__).parents[1] / "docs" / "ALGORITHMS.md").read_text()
    for cls in (PCGrad, SD):  # each documented with its signature and defaults
        heading = re.search(rf"^## {cls.title}: `({cls.__name__}\(.*\))`$", docs, re.M)
        call = ast.parse(heading.group(1), mode="eval").body
        assert {k.arg: ast.literal_eval(k.value) for k in call.keywords} == {
            p.name: p.default for p in inspect.signature(cls).parameters.values()}


def test_report_compares_pcgrad_runs_with_the_published_resnet18_row(tmp_path):
    """Runs that `kdg train` names "pcgrad" meet the CorGrad paper's PCGrad
    row: (.80 + .70 + .90 + .60) / 4 = 75.0 against 81.3 on PACS."""
    from report.report_sweeps import write_run
    from kdg.report import report

    for t, acc in enumerate([.80, .70, .90, .60]):
        row = [0] + [.5] * 8
        row[1 + 2 * t] = acc
        write_run(tmp_path, "PACS", ("pcgrad", (t,), 0, 0), [tuple(row)],
                  hparams={"backbone": "resnet18"})
    comparison = report(tmp_path, fmt="markdown").split("### kdg vs published")[1]
    assert "| pcgrad | PACS | 75.0 ± 0.0 | 81.3 | -6.3 |" in comparison.splitlines()


@pytest.mark.skipif(keras.backend.backend() != "torch",
                    reason="plain PyTorch: runs once, in the torch session")
def test_bench_reference_pcgrad_hands_the_optimizer_the_projected_sum(params):
    """kdg bench's PyTorch PCGrad (kdg.bench.torch_reference) against the
    rule: its orders are torch.randperm draws of its generator (seed 0),
    one per domain."""
    from kdg.bench import torch_reference as bench

    x, y = make_data(seed=4)
    net = bench.mlp(5, 4, hidden=())
    bench.set_weights_from_numpy(net, [params[0].T, params[1]])
    stats = bench.make_algorithm("PCGrad", net, {"lr": 1e-3}).update(x, y)
    generator = torch.Generator()
    generator.manual_seed(0)
    orders = [torch.randperm(3, generator=generator).tolist() for _ in range(3)]
    update, made = pcgrad_update([g for _, g in ref.domain_grads(params, x, y)], orders)
    assert made > 0 and stats["modification_frequency"] == made / 6
    weight, bias = net.parameters()
    np.testing.assert_allclose(weight.grad.numpy(), update[0].T, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bias.grad.numpy(), update[1], rtol=1e-4, atol=1e-6)
