"""Independent NumPy references, written from docs/ALGORITHMS.md.

The model is softmax regression, logits = x @ W + b, whose cross-entropy
gradients are known in closed form. Nothing here imports kdg.
"""

import math

import numpy as np


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def loss_and_grads(params, x, y):
    """Mean cross-entropy on (x (B, F), y (B,)) and its gradients [dW, db]."""
    w, b = params
    p = softmax(x @ w + b)
    n = x.shape[0]
    loss = -np.mean(np.log(p[np.arange(n), y]))
    d = p.copy()
    d[np.arange(n), y] -= 1.0
    d /= n
    return loss, [x.T @ d, d.sum(axis=0)]


def domain_grads(params, x, y):
    return [loss_and_grads(params, x[d], y[d]) for d in range(x.shape[0])]


def flat(grads):
    return np.concatenate([g.ravel() for g in grads])


def cosines(per_domain_grads):
    """Pairwise cosines i < j of flattened gradients."""
    v = [flat(g) for g in per_domain_grads]
    out = []
    for i in range(len(v)):
        for j in range(i + 1, len(v)):
            out.append(v[i] @ v[j] / (np.linalg.norm(v[i]) * np.linalg.norm(v[j])))
    return np.array(out)


def sgd(params, grads, lr, l2=0.0):
    return [p - lr * (g + l2 * p) for p, g in zip(params, grads)]


class Adam:
    """Keras' Adam (epsilon outside the square root, bias correction in the
    step size)."""

    def __init__(self, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        self.lr, self.b1, self.b2, self.eps = lr, beta_1, beta_2, epsilon
        self.m = self.v = None
        self.t = 0

    def step(self, params, grads):
        if self.m is None:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
        self.t += 1
        alpha = self.lr * math.sqrt(1 - self.b2**self.t) / (1 - self.b1**self.t)
        out = []
        for k, (p, g) in enumerate(zip(params, grads)):
            self.m[k] = self.b1 * self.m[k] + (1 - self.b1) * g
            self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g * g
            out.append(p - alpha * self.m[k] / (np.sqrt(self.v[k]) + self.eps))
        return out


def erm_step(params, x, y, lr, l2=0.0):
    flat_x = x.reshape(-1, x.shape[-1])
    loss, grads = loss_and_grads(params, flat_x, y.reshape(-1))
    return sgd(params, grads, lr, l2), loss


def fish_step(params, x, y, inner_step, meta_lr):
    """DomainBed's Fish: inner steps on each domain in order, then the meta
    update theta + meta_lr * (theta_inner - theta)."""
    inner = [p.copy() for p in params]
    for d in range(x.shape[0]):
        _, g = loss_and_grads(inner, x[d], y[d])
        inner = inner_step(inner, g)
    return [p + meta_lr * (q - p) for p, q in zip(params, inner)]


def corgrad_update(per_domain, n_parts=10, alpha=0.6, smoothing=True,
                   granularity="layer", tie=1e-5, projection="sequential", orders=None):
    """The summed CorGrad update from per-domain gradients [[dW, db] per d].

    Written as the reference code loops: per layer, per chunk of the output
    (last) axis, per domain i, per other domain p ascending, projecting in
    place; then per-layer one-sigma smoothing; then the sum over domains.
    A conflict is a dot product below -tie |a| |b| with a and b that earlier
    projections did not cancel (|a|, |b| > tie times their norm before), an outlier a norm more
    than sigma (1 + tie) from the mean: after a projection a.b is exactly 0,
    and with two domains |n_i - mu| is exactly sigma, so that the literal
    comparisons would be decided by rounding.
    `orders[i]`, when given, is the order in which domain i meets the others
    (pcgrad's random order; entries equal to i are skipped).
    Returns (update, projections made, projections considered, ratio).
    """
    num = len(per_domain)
    n_vars = len(per_domain[0])
    if granularity == "model":
        shapes = [g.shape for g in per_domain[0]]
        per_domain = [[flat(g)[:, None].T] for g in per_domain]  # one (1, N) "layer"
        n_parts = 1
    h = [[g.astype(np.float64).copy() for g in grads] for grads in per_domain]
    made = considered = 0
    for v in range(len(h[0])):
        rows = h[0][v].shape[-1]
        if granularity == "element":
            size = 1
            chunks = [np.unravel_index(k, h[0][v].shape) for k in range(h[0][v].size)]
        else:
            size = math.ceil(rows / n_parts)
            chunks = [(Ellipsis, slice(s, s + size)) for s in range(0, rows, size)]
        for ch in chunks:
            for i in range(num):
                for p in (range(num) if orders is None else orders[i]):
                    if p == i:
                        continue
                    a = h[i][v][ch]
                    # pcgrad: against the other's original gradient
                    source = per_domain if projection == "pcgrad" else h
                    b = np.asarray(source[p][v], np.float64)[ch]
                    dot = np.sum(a * b)
                    considered += 1
                    b_orig = np.asarray(per_domain[p][v], np.float64)[ch]
                    a_orig = np.asarray(per_domain[i][v], np.float64)[ch]
                    cancelled = (np.sum(b * b) <= tie**2 * np.sum(b_orig * b_orig)
                                 or np.sum(a * a) <= tie**2 * np.sum(a_orig * a_orig))
                    if not cancelled and dot < -tie * np.sqrt(np.sum(a * a) * np.sum(b * b)):
                        made += 1
                        h[i][v][ch] = a - dot / np.sum(b * b) * b
    removed = sum(np.sum((np.asarray(per_domain[i][v], np.float64) - h[i][v]) ** 2)
                  for i in range(num) for v in range(len(h[0])))
    total = sum(np.sum(np.asarray(per_domain[i][v], np.float64) ** 2)
                for i in range(num) for v in range(len(h[0])))
    if smoothing:
        for v in range(len(h[0])):
            norms = np.array([np.linalg.norm(h[i][v]) for i in range(num)])
            mu, sigma = norms.mean(), norms.std()
            outlier = np.abs(norms - mu) > sigma * (1 + tie)
            kept = [h[i][v] for i in range(num) if not outlier[i]]
            m = np.mean(kept, axis=0)
            for i in range(num):
                if outlier[i]:
                    h[i][v] = alpha * h[i][v] + (1 - alpha) * m
    update = [sum(h[i][v] for i in range(num)) for v in range(len(h[0]))]
    if granularity == "model":
        vec, update, start = update[0].ravel(), [], 0
        for s in shapes:
            update.append(vec[start : start + math.prod(s)].reshape(s))
            start += math.prod(s)
    return update, made, considered, math.sqrt(removed / total)
