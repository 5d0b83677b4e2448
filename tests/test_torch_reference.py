"""Checks of kdg/bench/torch_reference.py against closed-form NumPy references.

The model for the closed-form checks is softmax regression, logits = x W + b,
with W stored Keras-style as (features, classes) in NumPy and (classes,
features) in PyTorch. Everything runs in float64 so that comparisons are tight.
"""

import itertools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from kdg.bench import torch_reference as ref  # noqa: E402

D, B, NF, K = 3, 8, 5, 5


# --------------------------------------------------------------------------
# NumPy references
# --------------------------------------------------------------------------


def np_loss_grad(W, b, x, y):
    """Mean cross-entropy of softmax(x W + b) and its gradients (closed form)."""
    z = x @ W + b
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    n = len(x)
    loss = -np.mean(np.log(p[np.arange(n), y]))
    dz = p.copy()
    dz[np.arange(n), y] -= 1.0
    dz /= n
    return loss, x.T @ dz, dz.sum(axis=0)


class NpAdam:
    """torch.optim.Adam written out (L2 weight decay added to the gradient)."""

    def __init__(self, lr, wd=0.0, b1=0.9, b2=0.999, eps=1e-8):
        self.lr, self.wd, self.b1, self.b2, self.eps = lr, wd, b1, b2, eps
        self.t = 0
        self.m = self.v = None

    def step(self, params, grads):
        if self.m is None:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
        self.t += 1
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            g = g + self.wd * p
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
            self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * g * g
            mhat = self.m[i] / (1 - self.b1 ** self.t)
            vhat = self.v[i] / (1 - self.b2 ** self.t)
            out.append(p - self.lr * mhat / (np.sqrt(vhat) + self.eps))
        return out


def np_cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def domain_grads_np(W, b, xs, ys):
    return [np_loss_grad(W, b, xs[d], ys[d])[1:] for d in range(len(xs))]


def concat_grad_np(W, b, xs, ys):
    return np_loss_grad(W, b, np.concatenate(xs), np.concatenate(ys))


def np_chunks(n, parts):
    """Index ranges of torch.chunk(parts) on n rows: size ceil(n/parts)."""
    size = -(-n // parts)
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def np_corgrad(grads, n_parts, alpha, tol):
    """CorGrad on softmax regression in NumPy. grads[d] = (dW (F, K), db (K,)).
    The output axis is the LAST axis of W (Keras layout) and axis 0 of b."""
    Dn = len(grads)
    made = considered = 0
    rem = tot = 0.0
    update = []
    for k in range(2):
        G = [np.moveaxis(grads[d][k], -1, 0).copy() for d in range(Dn)]  # output axis first
        H = [g.copy() for g in G]
        for lo, hi in np_chunks(G[0].shape[0], n_parts):
            for i in range(Dn):
                for p in range(Dn):
                    if p == i:
                        continue
                    a, bb = H[i][lo:hi], H[p][lo:hi]
                    dot = np.sum(a * bb)
                    considered += 1
                    if dot < -tol * np.linalg.norm(a) * np.linalg.norm(bb):
                        new = a - dot / np.sum(bb * bb) * bb
                        if np.linalg.norm(new) <= tol * np.linalg.norm(a):
                            new = np.zeros_like(new)
                        H[i][lo:hi] = new
                        made += 1
        rem += sum(np.sum((G[d] - H[d]) ** 2) for d in range(Dn))
        tot += sum(np.sum(G[d] ** 2) for d in range(Dn))
        n = np.array([np.linalg.norm(h) for h in H])
        out = np.abs(n - n.mean()) > n.std() * (1 + tol)
        if out.any() and not out.all():
            m = np.mean([H[d] for d in range(Dn) if not out[d]], axis=0)
            H = [alpha * H[d] + (1 - alpha) * m if out[d] else H[d] for d in range(Dn)]
        update.append(np.moveaxis(np.sum(H, axis=0), 0, -1))
    return update, math.sqrt(rem / tot), made / considered


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


def make_problem(seed=0, d=D):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(NF, K)) * 0.5
    b = rng.normal(size=(K,)) * 0.1
    xs = rng.normal(size=(d, B, NF)) + rng.normal(size=(d, 1, NF))  # a shift per domain
    ys = rng.integers(0, K, size=(d, B))
    return W, b, xs, ys


def torch_net(W, b, hidden=()):
    net = ref.mlp(NF, K, hidden=hidden).double()
    if not hidden:
        ref.set_weights_from_numpy(net, [W.T, b])
    return net


def wb(net):
    Wt, bt = ref.get_weights_numpy(net)
    return Wt.T, bt


# --------------------------------------------------------------------------
# Networks and weights
# --------------------------------------------------------------------------


def test_weights_roundtrip_and_layout():
    net = ref.mlp(NF, K, hidden=(7,))
    arrays = [np.random.default_rng(1).normal(size=p.shape) for p in net.parameters()]
    ref.set_weights_from_numpy(net, arrays)
    for a, g in zip(arrays, ref.get_weights_numpy(net)):
        np.testing.assert_allclose(g, a, rtol=1e-6)
    with pytest.raises(ValueError):
        ref.set_weights_from_numpy(net, [a.T for a in arrays])
    assert ref.keras_to_torch_layout(np.zeros((3, 3, 4, 8))).shape == (8, 4, 3, 3)
    assert ref.keras_to_torch_layout(np.zeros((4, 8))).shape == (8, 4)


def test_mnist_cnn_shapes_and_order():
    net = ref.mnist_cnn(input_shape=(28, 28, 2), num_classes=3)
    shapes = [tuple(p.shape) for p in net.parameters()]
    assert shapes[:4] == [(64, 2, 3, 3), (64,), (64,), (64,)]
    assert shapes[4:6] == [(128, 64, 3, 3), (128,)]
    assert shapes[-2:] == [(3, 128), (3,)]
    n = 2 * 64 * 9 + 64 + 64 * 128 * 9 + 128 + 2 * (128 * 128 * 9 + 128) + 2 * 64 + 3 * 2 * 128 + 128 * 3 + 3
    assert sum(p.numel() for p in net.parameters()) == n
    assert net(torch.zeros(4, 2, 28, 28)).shape == (4, 3)


@pytest.mark.parametrize("name", ["ERM", "Fish", "CorGrad", "GGAL", "GGA"])
def test_every_algorithm_runs_on_mnist_cnn(name):
    torch.manual_seed(0)
    net = ref.mnist_cnn(input_shape=(28, 28, 1), num_classes=2)
    hp = {"lr": 1e-3}
    if name == "GGA":
        hp.update(start_step=0, end_step=0, trials=2, rho=1e-3)
    algo = ref.make_algorithm(name, net, hp)
    # 12x12 instead of 28x28 to keep the test fast (the pooling is adaptive).
    x = np.random.default_rng(0).normal(size=(2, 3, 1, 12, 12)).astype(np.float32)
    y = np.array([[0, 1, 0], [1, 1, 0]])
    before = [p.detach().clone() for p in net.parameters()]
    out = algo.update(x, y)
    assert all(math.isfinite(v) for v in out.values())
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters()))


def test_unknown_hparam_raises():
    with pytest.raises(ValueError):
        ref.make_algorithm("ERM", ref.mlp(NF, K), {"meta_lr": 0.5})
    with pytest.raises(ValueError):
        ref.make_algorithm("nope", ref.mlp(NF, K))


# --------------------------------------------------------------------------
# ERM
# --------------------------------------------------------------------------


def test_erm_matches_numpy_adam():
    W, b, xs, ys = make_problem()
    net = torch_net(W, b)
    algo = ref.make_algorithm("ERM", net, {"lr": 0.05, "weight_decay": 0.01})
    adam = NpAdam(0.05, wd=0.01)
    for _ in range(3):
        loss, gW, gb = concat_grad_np(W, b, xs, ys)
        out = algo.update(xs, ys)
        assert out["loss"] == pytest.approx(loss, rel=1e-12)
        W, b = adam.step([W, b], [gW, gb])
    Wt, bt = wb(net)
    np.testing.assert_allclose(Wt, W, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bt, b, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------
# Fish
# --------------------------------------------------------------------------


def np_fish(W, b, xs, ys, steps, lr, meta_lr, wd=0.0, per_domain=False):
    inner_adam = NpAdam(lr, wd=wd)  # persistent across outer steps
    for _ in range(steps):
        Wi, bi = W.copy(), b.copy()
        for d in range(len(xs)):
            _, gW, gb = np_loss_grad(Wi, bi, xs[d], ys[d])
            Wi, bi = inner_adam.step([Wi, bi], [gW, gb])
        eta = meta_lr / len(xs) if per_domain else meta_lr
        W, b = W + eta * (Wi - W), b + eta * (bi - b)
    return W, b


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("per_domain", [False, True])
def test_fish_matches_numpy(steps, per_domain):
    W, b, xs, ys = make_problem(1)
    net = torch_net(W, b)
    hp = {"lr": 0.05, "meta_lr": 0.5, "weight_decay": 1e-3, "meta_lr_per_domain": per_domain}
    algo = ref.make_algorithm("Fish", net, hp)
    for _ in range(steps):
        algo.update(xs, ys)
    We, be = np_fish(W, b, xs, ys, steps, 0.05, 0.5, wd=1e-3, per_domain=per_domain)
    Wt, bt = wb(net)
    np.testing.assert_allclose(Wt, We, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bt, be, rtol=1e-10, atol=1e-12)


def test_fish_inner_adam_state_persists():
    # With a fresh inner Adam each step the result would differ (the first Adam
    # step is ~ lr * sign(g)); this guards the persistence the spec requires.
    W, b, xs, ys = make_problem(2)
    net = torch_net(W, b)
    algo = ref.make_algorithm("Fish", net, {"lr": 0.05})
    for _ in range(3):
        algo.update(xs, ys)
    assert algo.optimizer_inner.state[algo.params_inner[0]]["step"] == 3 * D


def test_fish_warmup_is_erm():
    W, b, xs, ys = make_problem(3)
    net = torch_net(W, b)
    algo = ref.make_algorithm("Fish", net, {"lr": 0.05, "warmup_steps": 1})
    algo.update(xs, ys)
    _, gW, gb = concat_grad_np(W, b, xs, ys)
    W1, b1 = NpAdam(0.05).step([W, b], [gW, gb])
    np.testing.assert_allclose(wb(net)[0], W1, rtol=1e-10)
    algo.update(xs, ys)
    We, be = np_fish(W1, b1, xs, ys, 1, 0.05, 0.5)
    np.testing.assert_allclose(wb(net)[0], We, rtol=1e-10)
    np.testing.assert_allclose(wb(net)[1], be, rtol=1e-10)


# --------------------------------------------------------------------------
# CorGrad
# --------------------------------------------------------------------------


def T(a):
    return torch.tensor(a, dtype=torch.float64)


def test_corgrad_two_domains_sequential_projection():
    # Layer of 2 rows, n_parts=2: row 0 conflicts, row 1 does not.
    g1 = T([[1.0, 0.0], [1.0, 1.0]])
    g2 = T([[-1.0, 1.0], [1.0, 0.0]])
    update, st = ref.corgrad_surgery([[g1], [g2]], n_parts=2, alpha=0.6)
    # i=0: a=[1,0], b=[-1,1], dot=-1 -> a = [1,0] + 0.5*[-1,1] = [0.5,0.5]
    # i=1: a=[-1,1], b=[0.5,0.5] (already projected), dot=0 -> unchanged
    # With two domains smoothing never triggers (|n_i - mu| == sigma).
    np.testing.assert_allclose(update[0].numpy(), [[-0.5, 1.5], [2.0, 1.0]], atol=1e-15)
    assert st["projections_made"] == 1 and st["projections_considered"] == 4
    assert st["modification_frequency"] == pytest.approx(0.25)
    assert st["modification_ratio"] == pytest.approx(math.sqrt(0.5 / 6.0))
    assert st["outliers"] == 0


def test_corgrad_three_domains_hand_computed():
    g = [T([1.0, 0.0]), T([-1.0, 1.0]), T([0.0, -1.0])]
    # i=0: [1,0] -p1-> [.5,.5] -p2-> [.5,0]
    # i=1: [-1,1] -p0 (=[.5,0])-> [0,1] -p2-> [0,0]
    # i=2: [0,-1] vs [.5,0]: dot 0; vs [0,0]: dot 0 -> unchanged
    update, st = ref.corgrad_surgery([[x] for x in g], n_parts=1, smoothing=False)
    np.testing.assert_allclose(update[0].numpy(), [0.5, -1.0], atol=1e-15)
    assert (st["projections_made"], st["projections_considered"]) == (4, 6)
    removed = 0.25 + 2.0  # |[1,0]-[.5,0]|^2 + |[-1,1]-[0,0]|^2
    assert st["modification_ratio"] == pytest.approx(math.sqrt(removed / 4.0))
    # With smoothing: norms [.5, 0, 1], mu=.5, sigma=sqrt(1/6): domains 2 and 3
    # are outliers, m = H_1 = [.5, 0]; H_2 -> .4*[.5,0] = [.2,0];
    # H_3 -> .6*[0,-1] + .4*[.5,0] = [.2,-.6]; sum = [.9,-.6].
    update, st = ref.corgrad_surgery([[x] for x in g], n_parts=1, alpha=0.6)
    np.testing.assert_allclose(update[0].numpy(), [0.9, -0.6], atol=1e-15)
    assert st["outliers"] == 2


def test_corgrad_smoothing_single_outlier_and_chunking():
    g = [T([1.0, 0.0]), T([0.0, 1.0]), T([10.0, 0.0])]  # no conflicts
    # norms [1,1,10]: mu 4, sigma sqrt(18)=4.24; only the third is an outlier.
    update, st = ref.corgrad_surgery([[x] for x in g], n_parts=10, alpha=0.6)
    np.testing.assert_allclose(update[0].numpy(), [7.2, 1.2], atol=1e-14)  # [1,1] + .6*[10,0] + .4*[.5,.5]
    assert st["projections_made"] == 0 and st["outliers"] == 1
    # torch.chunk semantics: 5 rows, n_parts=2 -> rows [0:3], [3:5]; 1-D of 2 -> 2 chunks.
    a = torch.ones(5, 2, dtype=torch.float64)
    c = a.clone()
    c[3:] = -1.0
    up, st = ref.corgrad_surgery([[a], [c]], n_parts=2, smoothing=False)
    # chunk [3:5]: domain 1's rows become 0; domain 2 then sees 0 (no conflict)
    assert (st["projections_made"], st["projections_considered"]) == (1, 4)
    np.testing.assert_allclose(up[0].numpy(), [[2, 2]] * 3 + [[-1, -1]] * 2)
    _, st = ref.corgrad_surgery([[T([1.0, 2.0])], [T([1.0, 2.0])]], n_parts=10)
    assert st["projections_considered"] == 4


def test_corgrad_granularities():
    g1, g2 = [T([1.0, 1.0]), T([1.0])], [T([-1.0, 0.0]), T([1.0])]
    # model: one vector [1,1,1] vs [-1,0,1]: dot 0 -> nothing projected
    _, st = ref.corgrad_surgery([g1, g2], granularity="model", n_parts=1, smoothing=False)
    assert st["projections_made"] == 0
    # layer (n_parts=1): first layer [1,1].[-1,0] = -1 -> [0,1]; then
    # [-1,0].[0,1] = 0: one projection
    up, st = ref.corgrad_surgery([g1, g2], granularity="layer", n_parts=1, smoothing=False)
    assert st["projections_made"] == 1
    np.testing.assert_allclose(up[0].numpy(), [-1.0, 1.0])
    # element: element 0 conflicts: 1 vs -1 -> domain 1's becomes 0, then domain
    # 2's sees 0 (no conflict)
    up, st = ref.corgrad_surgery([g1, g2], granularity="element", smoothing=False)
    assert st["projections_made"] == 1 and st["projections_considered"] == 6
    np.testing.assert_allclose(up[0].numpy(), [-1.0, 1.0])
    up, _ = ref.corgrad_surgery([g1, g2], granularity="model", n_parts=3, smoothing=False)
    assert [tuple(u.shape) for u in up] == [(2,), (1,)]


def test_corgrad_rounding_guards():
    # Scalar chunks, 3 domains, float32. Exact arithmetic: [.403, .838, -.719]:
    # domain 1 vs 3 conflicts -> 0; domain 2 vs 3 conflicts -> 0; domain 3 then
    # sees two zeros and stays: the sum is -.719. Literally, domain 1's
    # "zero" is a rounding residual and domain 3 is projected against it
    # (wiping it out), in about 1 case in 8 of random scalars.
    v = [0.40334683656692505, 0.8380263447761536, -0.7192575931549072]
    g = [[torch.tensor([x], dtype=torch.float32)] for x in v]
    up, st = ref.corgrad_surgery(g, n_parts=1, smoothing=False)
    assert up[0].item() == pytest.approx(v[2], rel=1e-6)
    assert st["projections_made"] == 2
    rng = np.random.default_rng(0)
    for _ in range(200):
        vals = rng.normal(size=3).astype(np.float32)
        up, _ = ref.corgrad_surgery([[torch.tensor([x])] for x in vals], n_parts=1, smoothing=False)
        h = list(vals.astype(np.float64))  # exact-arithmetic scalar rule
        for i in range(3):
            for p in range(3):
                if p != i and h[i] * h[p] < 0:
                    h[i] = 0.0
        assert up[0].item() == pytest.approx(sum(h), abs=1e-6)
    # Two domains: never an outlier (|n_i - mu| == sigma in exact arithmetic).
    for _ in range(200):
        a, c = rng.normal(size=(2, 7)).astype(np.float32)
        _, st = ref.corgrad_surgery([[torch.tensor(a)], [torch.tensor(c)]], n_parts=3)
        assert st["outliers"] == 0


@pytest.mark.parametrize("n_parts", [1, 2, 3, 5])
def test_corgrad_update_matches_numpy(n_parts):
    # n_parts=3 and 5 give 1-element bias chunks (K=5): the rounding guards matter.
    W, b, xs, ys = make_problem(4)
    net = torch_net(W, b)
    tol = 1e-5
    hp = {"lr": 0.05, "n_parts": n_parts, "alpha": 0.6, "weight_decay": 1e-3}
    algo = ref.make_algorithm("CorGrad", net, hp)
    adam = NpAdam(0.05, wd=1e-3)
    for _ in range(3):
        upd, ratio, freq = np_corgrad(domain_grads_np(W, b, xs, ys), n_parts, 0.6, tol)
        out = algo.update(xs, ys)
        np.testing.assert_allclose(net.classifier.weight.grad.numpy().T, upd[0], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(net.classifier.bias.grad.numpy(), upd[1], rtol=1e-10, atol=1e-13)
        assert out["modification_ratio"] == pytest.approx(ratio, rel=1e-9)
        assert out["modification_frequency"] == pytest.approx(freq)
        W, b = adam.step([W, b], upd)
    np.testing.assert_allclose(wb(net)[0], W, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(wb(net)[1], b, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------
# GGA-L
# --------------------------------------------------------------------------


def test_ggal_gamma_zero_equals_erm():
    W, b, xs, ys = make_problem(5)
    net_a, net_b = torch_net(W, b), torch_net(W, b)
    a = ref.make_algorithm("GGAL", net_a, {"lr": 0.05, "gamma": 0.0})
    e = ref.make_algorithm("ERM", net_b, {"lr": 0.05})
    for _ in range(3):
        a.update(xs, ys)
        e.update(xs, ys)
    for p, q in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("noise", ["normal", "uniform"])
def test_ggal_noise_scale(noise):
    W, b, xs, ys = make_problem(6)
    net = torch_net(W, b)
    gamma, seed = 0.5, 123
    algo = ref.make_algorithm("GGA-L", net, {"lr": 0.05, "gamma": gamma, "noise": noise, "seed": seed})
    gen = torch.Generator().manual_seed(seed)
    draw = torch.randn if noise == "normal" else torch.rand
    adam = NpAdam(0.05)
    for _ in range(2):
        flats = [np.concatenate([gW.T.ravel(), gb]) for gW, gb in domain_grads_np(W, b, xs, ys)]
        s_mean = np.mean([np_cos(flats[i], flats[j]) for i, j in itertools.combinations(range(D), 2)])
        _, gW, gb = concat_grad_np(W, b, xs, ys)
        xiW = draw((K, NF), generator=gen, dtype=torch.float64).numpy().T
        xib = draw((K,), generator=gen, dtype=torch.float64).numpy()
        scale = gamma * (1 - s_mean)
        gW, gb = gW + scale * xiW, gb + scale * xib
        out = algo.update(xs, ys)
        assert out["cos_mean"] == pytest.approx(s_mean, rel=1e-12)
        assert out["noise_scale"] == pytest.approx(scale, rel=1e-12)
        np.testing.assert_allclose(net.classifier.weight.grad.numpy().T, gW, rtol=1e-11, atol=1e-13)
        np.testing.assert_allclose(net.classifier.bias.grad.numpy(), gb, rtol=1e-11, atol=1e-13)
        W, b = adam.step([W, b], [gW, gb])
    np.testing.assert_allclose(wb(net)[0], W, rtol=1e-10, atol=1e-12)
    if noise == "uniform":
        assert np.all(xiW >= 0)


# --------------------------------------------------------------------------
# GGA
# --------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["ERM", "Fish"])
def test_gga_without_trials_equals_base(base):
    W, b, xs, ys = make_problem(7)
    net_a, net_b = torch_net(W, b), torch_net(W, b)
    g = ref.make_algorithm("GGA", net_a, {"base": base, "lr": 0.05, "trials": 0, "start_step": 0, "end_step": 5})
    e = ref.make_algorithm(base, net_b, {"lr": 0.05})
    for _ in range(3):
        out = g.update(xs, ys)
        assert out["annealing"] == 1.0 and out["accepted"] == 0
        e.update(xs, ys)
    for p, q in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-14, atol=1e-15)


def test_gga_window_is_inclusive():
    W, b, xs, ys = make_problem(8)
    g = ref.make_algorithm("GGA", torch_net(W, b), {"trials": 1, "start_step": 1, "end_step": 2, "rho": 1e-4})
    flags = [g.update(xs, ys)["annealing"] for _ in range(4)]
    assert flags == [0.0, 1.0, 1.0, 0.0]


def np_min_cos_and_loss(W, b, xs, ys):
    flats = [np.concatenate([gW.T.ravel(), gb]) for gW, gb in domain_grads_np(W, b, xs, ys)]
    s = min(np_cos(flats[i], flats[j]) for i, j in itertools.combinations(range(len(xs)), 2))
    return s, concat_grad_np(W, b, xs, ys)[0]


def test_gga_annealing_matches_numpy():
    # Softmax regression has only the head, so perturb_classifier=True here.
    W, b, xs, ys = make_problem(9)
    net = torch_net(W, b)
    rho, trials, tol, seed = 0.1, 25, 0.1, 7
    hp = {"lr": 0.05, "rho": rho, "trials": trials, "tol": tol, "seed": seed,
          "start_step": 0, "end_step": 0, "perturb_classifier": True}
    algo = ref.make_algorithm("GGA", net, hp)
    out = algo.update(xs, ys)

    gen = torch.Generator().manual_seed(seed)

    def u(shape):
        return (torch.rand(shape, generator=gen, dtype=torch.float64) * (2 * rho) - rho).numpy()

    s_best, l_best = np_min_cos_and_loss(W, b, xs, ys)
    W0, b0 = W.copy(), b.copy()
    Wbest, bbest = W0, b0
    Wc, bc = W0.copy(), b0.copy()
    accepted = 0
    for _ in range(trials):
        Wc = Wc + u((K, NF)).T
        bc = bc + u((K,))
        s, l = np_min_cos_and_loss(Wc, bc, xs, ys)
        if l - l_best < tol and s > s_best:
            s_best, l_best, Wbest, bbest = s, l, Wc.copy(), bc.copy()
            Wc, bc = W0.copy(), b0.copy()
            accepted += 1
    assert accepted > 0, "choose a problem where the search accepts something"
    assert out["accepted"] == accepted
    assert out["cos_min_best"] == pytest.approx(s_best, rel=1e-10)
    _, gW, gb = concat_grad_np(Wbest, bbest, xs, ys)
    We, be = NpAdam(0.05).step([Wbest, bbest], [gW, gb])
    np.testing.assert_allclose(wb(net)[0], We, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(wb(net)[1], be, rtol=1e-10, atol=1e-12)


def test_gga_does_not_perturb_the_head():
    W, b, xs, ys = make_problem(10)
    torch.manual_seed(0)
    net = torch_net(W, b, hidden=(6,))
    before = [p.detach().clone() for p in net.parameters()]
    algo = ref.make_algorithm("GGA", net, {"lr": 0.0, "rho": 0.3, "trials": 10, "start_step": 0, "end_step": 0})
    out = algo.update(xs, ys)  # lr=0: the base step changes nothing
    assert out["accepted"] > 0
    after = list(net.parameters())
    assert torch.equal(before[-1], after[-1]) and torch.equal(before[-2], after[-2])
    assert not torch.equal(before[0], after[0])
    assert out["cos_min_best"] > out["cos_min_start"]
