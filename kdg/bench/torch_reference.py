"""Plain PyTorch reference implementations of ERM, Fish, CorGrad, GGA and GGA-L,
and, as benchmark runners for `kdg bench`, of the other algorithms of kdg's
registry written as DomainBed's ``algorithms.py`` writes them (SAM, GSAM and
SAGM as the GGA repository does, PCGrad as its authors' code). ``ALGORITHMS``
is keyed by kdg's registry names.
MTL, SagNet, ARM and MixStyle, which bring their own networks or layers, are
in the last block (how each takes its network is written there).

This file is the "reference way" that kdg's benchmark measures itself against,
and a second, independent implementation that kdg's results can be checked
against. The update rules are the ones in ``docs/ALGORITHMS.md``. The
code is written the way the authors' reference code is written, on purpose
*without* optimisation: eager PyTorch, one backward pass per domain, Python
loops over parameters ("layers"), chunks and domain pairs, ``.item()`` inside
the loops. Do not speed it up: its speed is the baseline.

Interface
---------
>>> net = mnist_cnn(input_shape=(28, 28, 2), num_classes=2)   # or mlp(...)
>>> algo = make_algorithm("CorGrad", net, {"lr": 1e-3, "n_parts": 10})
>>> stats = algo.update(x, y)   # x: (D, B, C, H, W) or (D, B, F); y: (D, B) int
>>> stats["loss"], stats["modification_ratio"]

``x`` is channels-first (PyTorch layout). ``x`` and ``y`` may be NumPy arrays or
tensors; ``x`` is cast to the network's dtype and device, ``y`` to int64.
After ``update`` returns, each trainable parameter's ``.grad`` holds the
gradient the optimizer was given (ERM, CorGrad, GGA-L; also the base step of
GGA); for Fish it is the last inner step's gradient on the inner copy.

Networks are ``Classifier(featurizer, classifier)`` modules; GGA perturbs all
trainable parameters except those of ``network.classifier``.

Names accepted by ``make_algorithm``: the keys of ``ALGORITHMS`` in any
spelling of kdg's registry names ("GGA-L", "GGA_L", "AND-mask"). Hyper-parameters and their defaults are in
``COMMON_DEFAULTS`` and each class's ``defaults``; unknown keys raise.

Random numbers: GGA-L's xi, GGA's U(-rho, rho), Fish's shuffled order and
PCGrad's orders (``torch.randperm``, one per domain) come
from a ``torch.Generator`` on the parameters' device seeded with
``hparams["seed"]``, drawn parameter by parameter in ``parameters()`` order with
the parameter's shape and dtype (so a test can reproduce them).

CorGrad's rounding guards (``tie_tol``, default 1e-5, see ``corgrad_surgery``)
make it follow exact arithmetic where the literal comparisons meet ties. For
timing "the reference way" pass ``tie_tol=0.0``: that is the reference's loop
exactly (the guards add ~10% to a CorGrad step on CPU with MNIST_CNN).

Not implemented (options of the spec that no benchmark here needs): CorGrad's
log-decay alpha schedule, conv/dense-only layering and the random-order PCGrad
variant; GGA's Metropolis acceptance; GGA-L's "concatenated gradient = mean of
the g_d" shortcut (the reference's separate pass is what is done).

Matching weights with a Keras model
-----------------------------------
``set_weights_from_numpy(module, arrays)`` copies arrays into
``module.parameters()`` in order, in PyTorch layout: a Linear weight is
(out, in), a Conv2d weight is (out, in, kh, kw), biases and GroupNorm
gamma/beta are (C,). ``keras_to_torch_layout`` converts one Keras array
(Dense kernel (in, out), Conv2D kernel (kh, kw, in, out)).
``mnist_cnn`` registers its layers in forward order, so its parameter order is
conv1.w, conv1.b, gn1.gamma, gn1.beta, conv2.w, conv2.b, gn2.gamma, gn2.beta,
conv3.w, conv3.b, gn3.gamma, gn3.beta, conv4.w, conv4.b, gn4.gamma, gn4.beta,
classifier.w, classifier.b (the order of a Keras Sequential of the same layers).
Three things differ from Keras defaults and must be matched on the Keras side:
GroupNorm epsilon is 1e-5 here (Keras: 1e-3); Adam epsilon is 1e-8 here
(Keras: 1e-7); and the stride-2 conv pads 1 pixel on every side here, whereas
Keras ``padding="same"`` with stride 2 on 28x28 pads 0 before and 1 after (use
ZeroPadding2D(1) + a "valid" conv to match).
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "Classifier",
    "MNISTCNN",
    "mnist_cnn",
    "mlp",
    "set_weights_from_numpy",
    "get_weights_numpy",
    "keras_to_torch_layout",
    "per_domain_grads",
    "corgrad_surgery",
    "make_algorithm",
    "ALGORITHMS",
    "ERM",
    "Fish",
    "CorGrad",
    "GGAL",
    "GGA",
    "SAM",
    "GSAM",
    "SAGM",
    "ANDMask",
    "SANDMask",
    "MMD",
    "CORAL",
    "RSC",
    "VREx",
    "GroupDRO",
    "IRM",
    "Mixup",
    "MLDG",
    "IGA",
    "Fishr",
    "DANN",
    "CDANN",
]


# --------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------


class Classifier(nn.Module):
    """featurizer followed by a linear classifier head (DomainBed's layout)."""

    def __init__(self, featurizer: nn.Module, classifier: nn.Module):
        super().__init__()
        self.featurizer = featurizer
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(self.featurizer(x))


class MNISTCNN(nn.Module):
    """DomainBed's MNIST_CNN featurizer (128 features). Input (N, C, 28, 28)."""

    n_outputs = 128

    def __init__(self, in_channels: int, gn_eps: float = 1e-5):
        super().__init__()
        # Registered in forward order (DomainBed registers conv1..4 then bn0..3;
        # the computation is the same, only the parameter order differs).
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, padding=1)
        self.gn1 = nn.GroupNorm(8, 64, eps=gn_eps)
        self.conv2 = nn.Conv2d(64, 128, 3, stride=2, padding=1)
        self.gn2 = nn.GroupNorm(8, 128, eps=gn_eps)
        self.conv3 = nn.Conv2d(128, 128, 3, 1, padding=1)
        self.gn3 = nn.GroupNorm(8, 128, eps=gn_eps)
        self.conv4 = nn.Conv2d(128, 128, 3, 1, padding=1)
        self.gn4 = nn.GroupNorm(8, 128, eps=gn_eps)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x):
        x = self.gn1(F.relu(self.conv1(x)))
        x = self.gn2(F.relu(self.conv2(x)))
        x = self.gn3(F.relu(self.conv3(x)))
        x = self.gn4(F.relu(self.conv4(x)))
        x = self.avgpool(x)
        return x.view(len(x), -1)


def mnist_cnn(input_shape=(28, 28, 1), num_classes: int = 10, gn_eps: float = 1e-5) -> Classifier:
    """MNIST_CNN + Linear(128, num_classes). ``input_shape`` is (H, W, C) as in
    Keras; the returned module takes channels-first input (N, C, H, W)."""
    channels = int(input_shape[-1])
    feat = MNISTCNN(channels, gn_eps=gn_eps)
    return Classifier(feat, nn.Linear(MNISTCNN.n_outputs, num_classes))


def mlp(in_features: int, num_classes: int, hidden: Sequence[int] = (32,)) -> Classifier:
    """Tiny MLP: [Linear, ReLU] per hidden width, then a Linear classifier.
    ``hidden=()`` gives softmax regression (featurizer = identity)."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    feat = nn.Sequential(*layers) if layers else nn.Identity()
    return Classifier(feat, nn.Linear(width, num_classes))


def set_weights_from_numpy(module: nn.Module, arrays) -> None:
    """Copy ``arrays`` into ``module.parameters()`` in order (PyTorch layout:
    Linear (out, in), Conv2d (out, in, kh, kw)). Shapes must match exactly."""
    params = list(module.parameters())
    arrays = list(arrays)
    if len(arrays) != len(params):
        raise ValueError(f"expected {len(params)} arrays, got {len(arrays)}")
    with torch.no_grad():
        for i, (p, a) in enumerate(zip(params, arrays)):
            a = np.asarray(a)
            if tuple(a.shape) != tuple(p.shape):
                raise ValueError(f"parameter {i}: shape {tuple(a.shape)} != {tuple(p.shape)}")
            p.copy_(torch.as_tensor(a, dtype=p.dtype, device=p.device))


def get_weights_numpy(module: nn.Module) -> list:
    """The parameters of ``module`` as NumPy arrays, in ``parameters()`` order."""
    return [p.detach().cpu().numpy().copy() for p in module.parameters()]


def keras_to_torch_layout(array):
    """Keras Dense kernel (in, out) -> (out, in); Conv2D kernel (kh, kw, in, out)
    -> (out, in, kh, kw); anything else unchanged."""
    a = np.asarray(array)
    if a.ndim == 2:
        return a.T.copy()
    if a.ndim == 4:
        return a.transpose(3, 2, 0, 1).copy()
    return a.copy()


# --------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------


def per_domain_grads(network, params, xs, ys):
    """One forward + one backward per domain. Returns (grads, losses) with
    grads[d][k] the gradient of domain d's mean CE w.r.t. params[k]."""
    grads, losses = [], []
    for x_d, y_d in zip(xs, ys):
        loss_d = F.cross_entropy(network(x_d), y_d)
        g = torch.autograd.grad(loss_d, params)
        grads.append([gi.detach() for gi in g])
        losses.append(loss_d.item())
    return grads, losses


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def pairwise_cosines(flat_grads):
    """cos(g_i, g_j) for i < j, as Python floats, in itertools.combinations order."""
    out = []
    for i, j in itertools.combinations(range(len(flat_grads)), 2):
        out.append(F.cosine_similarity(flat_grads[i], flat_grads[j], dim=0).item())
    return out


COMMON_DEFAULTS = {
    "lr": 5e-5,
    "weight_decay": 0.0,  # L2 added to the gradient (torch.optim.Adam's weight_decay)
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_eps": 1e-8,
    "seed": 0,  # seeds this algorithm's own noise generator (GGA, GGA-L, Fish shuffle)
}


class Algorithm:
    defaults: dict = {}

    def __init__(self, network: nn.Module, hparams: dict | None = None):
        hparams = dict(hparams or {})
        known = {**COMMON_DEFAULTS, **self.defaults}
        unknown = set(hparams) - set(known)
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown hparams {sorted(unknown)}")
        self.hparams = {**known, **hparams}
        self.network = network
        self.params = [p for p in network.parameters() if p.requires_grad]
        self.optimizer = self.new_optimizer(self.params)
        self.step = 0  # number of update() calls so far (0-based index of the next step)
        self._generator = None

    # ---- helpers ----
    def new_optimizer(self, params):
        h = self.hparams
        return torch.optim.Adam(
            params,
            lr=h["lr"],
            betas=(h["adam_beta1"], h["adam_beta2"]),
            eps=h["adam_eps"],
            weight_decay=h["weight_decay"],
        )

    @property
    def device(self):
        return self.params[0].device

    @property
    def generator(self):
        if self._generator is None:
            self._generator = torch.Generator(device=self.device)
            self._generator.manual_seed(int(self.hparams["seed"]))
        return self._generator

    def _to_tensors(self, x, y):
        p = self.params[0]
        x = torch.as_tensor(x, device=p.device)
        if torch.is_floating_point(x):
            x = x.to(p.dtype)
        y = torch.as_tensor(y, device=p.device).long()
        if x.shape[:2] != y.shape[:2] or y.dim() != 2:
            raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)}: expected (D, B, ...) and (D, B)")
        return x, y

    def erm_step(self, x, y):
        """Mean CE over the concatenation of all domains' minibatches; one Adam step."""
        all_x = torch.cat(list(x))
        all_y = torch.cat(list(y))
        loss = F.cross_entropy(self.network(all_x), all_y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    # ---- API ----
    def update(self, x, y) -> dict:
        x, y = self._to_tensors(x, y)
        self.network.train()
        out = self._update(x, y)
        self.step += 1
        return {k: float(v) for k, v in out.items()}

    def _update(self, x, y):
        raise NotImplementedError


# --------------------------------------------------------------------------
# ERM
# --------------------------------------------------------------------------


class ERM(Algorithm):
    defaults: dict = {}

    def _update(self, x, y):
        return self.erm_step(x, y)


# --------------------------------------------------------------------------
# Fish (DomainBed's version, with a persistent inner network and inner Adam)
# --------------------------------------------------------------------------


class Fish(Algorithm):
    defaults = {
        "meta_lr": 0.5,
        "meta_lr_per_domain": False,  # WILDS code: theta += (meta_lr / D) * (theta_inner - theta)
        "shuffle_domains": False,  # WILDS code: random domain order each step
        "warmup_steps": 0,  # ERM steps (outer Adam) before Fish starts
    }

    def __init__(self, network, hparams=None):
        super().__init__(network, hparams)
        # Persistent inner copy and inner optimizer: built once, the inner Adam's
        # state (moments, step count) carries over between outer steps.
        self.network_inner = copy.deepcopy(network)
        self.params_inner = [p for p in self.network_inner.parameters() if p.requires_grad]
        self.optimizer_inner = self.new_optimizer(self.params_inner)

    def _update(self, x, y):
        if self.step < self.hparams["warmup_steps"]:
            return self.erm_step(x, y)
        self.network_inner.load_state_dict(self.network.state_dict())
        self.network_inner.train()

        num_domains = len(x)
        if self.hparams["shuffle_domains"]:
            order = torch.randperm(num_domains, generator=self.generator, device=self.device).tolist()
        else:
            order = list(range(num_domains))

        losses = []
        for d in order:
            loss = F.cross_entropy(self.network_inner(x[d]), y[d])
            self.optimizer_inner.zero_grad()
            loss.backward()
            self.optimizer_inner.step()
            losses.append(loss.item())

        meta_lr = self.hparams["meta_lr"]
        if self.hparams["meta_lr_per_domain"]:
            meta_lr = meta_lr / num_domains
        outer = self.network.state_dict()  # detached tensors sharing storage
        inner = self.network_inner.state_dict()
        with torch.no_grad():
            for name, t in outer.items():
                if torch.is_floating_point(t):
                    t.add_(meta_lr * (inner[name] - t))
        # "loss": mean of the inner losses (each at its own inner point);
        # DomainBed reports the last one, given as "last_loss".
        return {"loss": sum(losses) / len(losses), "last_loss": losses[-1]}


# --------------------------------------------------------------------------
# CorGrad
# --------------------------------------------------------------------------

# Rounding guards (tie_tol). The literal rules (a.b < 0; |n_i - mu| > sigma)
# meet exact-arithmetic ties that rounding then decides, differently in every
# implementation and on every device, sometimes with a large effect:
#  1. after domain i is projected against p, p's later test against i has
#     a.b = 0 exactly (i's chunk is now orthogonal to p's): a coin flip;
#  2. a chunk projected against as many independent directions as it has
#     elements (a 1-element chunk, e.g. a 2-class bias with n_parts >= 2, after
#     one projection) is 0 in exact arithmetic but a rounding residual in
#     floating point; projecting a later domain against that residual removes
#     the component of its chunk along a random direction (for a scalar: all
#     of it), where exact arithmetic projects nothing;
#  3. with two domains |n_i - mu| = sigma exactly (never an outlier in exact
#     arithmetic; about 1 in 4 float32 cases says "outlier").
# With tie_tol > 0: a conflict needs a.b < -tie_tol |a| |b|; a projection that
# leaves |a| <= tie_tol |a before| sets the chunk to exact zero; an outlier needs
# |n_i - mu| > sigma (1 + tie_tol). Each guard changes the result by at most
# about tie_tol relative, and only acts where exact arithmetic has a tie.
# tie_tol = 0 gives the reference's literal comparisons. The guards are only
# evaluated after the literal test passes, so the loop costs what the literal
# one does for non-conflicting pairs.
DEFAULT_TIE_TOL = 1e-5


def corgrad_surgery(domain_grads, n_parts=10, alpha=0.6, smoothing=True, granularity="layer",
                    tie_tol=DEFAULT_TIE_TOL):
    """CorGrad's gradient surgery.

    domain_grads[d][k]: gradient of domain d for parameter k (PyTorch layout, so
    dim 0 is the output axis). Returns (update, stats): update[k] is the sum
    over domains of the corrected gradients; stats has modification_ratio,
    modification_frequency, projections_made, projections_considered,
    outliers (number of (layer, domain) pairs smoothed).

    granularity: "layer" (each parameter is a layer, chunked along dim 0 with
    torch.chunk(n_parts)); "model" (all parameters flattened into one vector,
    then chunked); "element" (each scalar is its own chunk; smoothing per layer).
    Use n_parts=1 for layering without slicing. tie_tol: see the comment above.
    """
    num_domains = len(domain_grads)
    num_params = len(domain_grads[0])
    shapes = [g.shape for g in domain_grads[0]]
    if granularity == "model":
        layers = [[flat(domain_grads[d])] for d in range(num_domains)]
    elif granularity in ("layer", "element"):
        layers = [list(g) for g in domain_grads]
    else:
        raise ValueError(f"granularity must be layer, model or element, not {granularity!r}")

    removed_sq = 0.0
    total_sq = 0.0
    made = 0
    considered = 0
    outliers = 0
    update = []
    for k in range(len(layers[0])):
        G = [layers[d][k] for d in range(num_domains)]
        H = [g.clone() for g in G]
        if granularity == "element":
            views = [h.view(-1) for h in H]
            parts = views[0].numel()
        else:
            views = [h.view(1) if h.dim() == 0 else h for h in H]
            parts = n_parts
        # torch.chunk returns views: the in-place projections below write into H.
        chunks = [torch.chunk(v, parts, dim=0) for v in views]
        for c in range(len(chunks[0])):
            for i in range(num_domains):
                for p in range(num_domains):
                    if p == i:
                        continue
                    a = chunks[i][c]
                    b = chunks[p][c]  # current value: already projected if p < i
                    dot = torch.sum(a * b)
                    considered += 1
                    if dot < 0:
                        if tie_tol > 0:
                            norm_a = torch.linalg.vector_norm(a)
                            if dot >= -tie_tol * norm_a * torch.linalg.vector_norm(b):
                                continue  # orthogonal up to rounding (guard 1)
                        a.sub_(dot / torch.sum(b * b) * b)
                        made += 1
                        if tie_tol > 0 and torch.linalg.vector_norm(a) <= tie_tol * norm_a:
                            a.zero_()  # removed entirely up to rounding (guard 2)

        for d in range(num_domains):
            removed_sq += torch.sum((G[d] - H[d]) ** 2).item()
            total_sq += torch.sum(G[d] ** 2).item()

        if smoothing:
            norms = [torch.linalg.vector_norm(h).item() for h in H]
            mu = sum(norms) / num_domains
            sigma = math.sqrt(sum((n - mu) ** 2 for n in norms) / num_domains)
            is_out = [abs(n - mu) > sigma * (1.0 + tie_tol) for n in norms]  # guard 3
            keep = [H[d] for d in range(num_domains) if not is_out[d]]
            if any(is_out) and keep:
                m = torch.stack(keep).mean(dim=0)
                for d in range(num_domains):
                    if is_out[d]:
                        H[d] = alpha * H[d] + (1.0 - alpha) * m
                        outliers += 1

        total = H[0].clone()
        for d in range(1, num_domains):
            total += H[d]
        update.append(total)

    if granularity == "model":
        vec = update[0]
        update, start = [], 0
        for s in shapes:
            n = int(math.prod(s))
            update.append(vec[start:start + n].view(s))
            start += n
    assert len(update) == num_params
    stats = {
        "modification_ratio": math.sqrt(removed_sq) / math.sqrt(total_sq) if total_sq > 0 else 0.0,
        "modification_frequency": made / considered if considered else 0.0,
        "projections_made": made,
        "projections_considered": considered,
        "outliers": outliers,
    }
    return update, stats


class CorGrad(Algorithm):
    defaults = {
        "n_parts": 10,
        "alpha": 0.6,
        "smoothing": True,
        "granularity": "layer",  # layer | model | element
        "tie_tol": DEFAULT_TIE_TOL,  # rounding guards, see corgrad_surgery; 0 = literal
    }

    def _update(self, x, y):
        h = self.hparams
        grads, losses = per_domain_grads(self.network, self.params, x, y)
        update, stats = corgrad_surgery(
            grads,
            n_parts=h["n_parts"],
            alpha=h["alpha"],
            smoothing=h["smoothing"],
            granularity=h["granularity"],
            tie_tol=h["tie_tol"],
        )
        self.optimizer.zero_grad()
        for p, g in zip(self.params, update):
            p.grad = g
        self.optimizer.step()
        return {"loss": sum(losses) / len(losses), **stats}


class PCGrad(Algorithm):
    """PCGrad as the authors' and the popular PyTorch port's code write it:
    one backward pass per domain, the whole model's gradients flattened, a
    Python loop over the domains in a random order (``torch.randperm``) per
    domain, projecting off each conflicting ORIGINAL gradient; the update is
    the sum (``reduction="mean"``: the mean) of the projected gradients."""

    defaults = {"reduction": "sum"}

    def _update(self, x, y):
        grads, losses = per_domain_grads(self.network, self.params, x, y)
        flat_grads = [flat(g) for g in grads]
        projected, made = [], 0
        for i, g_i in enumerate(flat_grads):
            g_i = g_i.clone()
            order = torch.randperm(len(flat_grads), generator=self.generator,
                                   device=self.device).tolist()
            for j in order:
                if j == i:
                    continue
                g_j = flat_grads[j]
                dot = torch.dot(g_i, g_j)
                if dot.item() < 0:
                    g_i -= dot * g_j / (g_j.norm() ** 2)
                    made += 1
            projected.append(g_i)
        merged = torch.stack(projected).sum(dim=0)
        if self.hparams["reduction"] == "mean":
            merged /= len(projected)
        self.optimizer.zero_grad()
        start = 0
        for p in self.params:
            p.grad = merged[start:start + p.numel()].view_as(p).clone()
            start += p.numel()
        self.optimizer.step()
        cosines = pairwise_cosines(flat_grads)
        pairs = len(flat_grads) * (len(flat_grads) - 1)
        return {"loss": sum(losses) / len(losses), "modification_frequency": made / pairs,
                "grad_cos_min": min(cosines), "grad_cos_mean": sum(cosines) / len(cosines)}


# --------------------------------------------------------------------------
# GGA-L
# --------------------------------------------------------------------------


class GGAL(Algorithm):
    defaults = {
        "gamma": 1e-3,
        "noise": "normal",  # "normal": xi ~ N(0,1) (reference code); "uniform": U(0,1) (paper)
    }

    def _update(self, x, y):
        h = self.hparams
        grads, _ = per_domain_grads(self.network, self.params, x, y)
        cosines = pairwise_cosines([flat(g) for g in grads])
        s_mean = sum(cosines) / len(cosines) if cosines else 1.0

        all_x = torch.cat(list(x))
        all_y = torch.cat(list(y))
        loss = F.cross_entropy(self.network(all_x), all_y)
        self.optimizer.zero_grad()
        loss.backward()

        scale = h["gamma"] * (1.0 - s_mean)
        for p in self.params:
            if h["noise"] == "normal":
                xi = torch.randn(p.shape, generator=self.generator, dtype=p.dtype, device=p.device)
            elif h["noise"] == "uniform":
                xi = torch.rand(p.shape, generator=self.generator, dtype=p.dtype, device=p.device)
            else:
                raise ValueError(f"noise must be normal or uniform, not {h['noise']!r}")
            p.grad.add_(scale * xi)
        self.optimizer.step()
        return {"loss": loss.item(), "cos_mean": s_mean, "noise_scale": scale}


# --------------------------------------------------------------------------
# GGA (a wrapper around any base algorithm)
# --------------------------------------------------------------------------


class GGA:
    defaults = {
        "base": "ERM",
        "start_step": 100,  # window [start_step, end_step], both inclusive, 0-based step index
        "end_step": 200,
        "trials": 250,
        "rho": 1e-6,  # reference argparse default; 1e-5 for PACS/OfficeHome/TerraInc/DomainNet
        "tol": 0.1,
        "perturb_classifier": False,  # reference: the classifier head is not perturbed
    }

    def __init__(self, network: nn.Module, hparams: dict | None = None):
        hparams = dict(hparams or {})
        own = {k: hparams.pop(k, v) for k, v in self.defaults.items()}
        self.base = make_algorithm(own["base"], network, hparams)
        self.hparams = {**self.base.hparams, **own}
        self.network = network
        self.params = self.base.params
        if own["perturb_classifier"]:
            self.perturbed = list(self.params)
        else:
            if not hasattr(network, "classifier"):
                raise ValueError("GGA needs network.classifier (or perturb_classifier=True)")
            head = {id(p) for p in network.classifier.parameters()}
            self.perturbed = [p for p in self.params if id(p) not in head]
        self.step = 0
        self._generator = None

    @property
    def generator(self):
        if self._generator is None:
            self._generator = torch.Generator(device=self.params[0].device)
            self._generator.manual_seed(int(self.hparams["seed"]))
        return self._generator

    def _measure(self, x, y):
        """min pairwise cosine of the per-domain gradients, and the loss on the
        concatenated batch (a separate forward pass)."""
        grads, _ = per_domain_grads(self.network, self.params, x, y)
        cosines = pairwise_cosines([flat(g) for g in grads])
        s = min(cosines) if cosines else 1.0
        with torch.no_grad():
            loss = F.cross_entropy(self.network(torch.cat(list(x))), torch.cat(list(y))).item()
        return s, loss

    def _anneal(self, x, y):
        h = self.hparams
        rho = h["rho"]
        s_best, loss_best = self._measure(x, y)
        s_start = s_best
        theta0 = [p.detach().clone() for p in self.perturbed]
        theta_best = [t.clone() for t in theta0]
        accepted = 0
        for _ in range(int(h["trials"])):
            with torch.no_grad():
                for p in self.perturbed:
                    u = torch.rand(p.shape, generator=self.generator, dtype=p.dtype, device=p.device)
                    p.add_(u * (2.0 * rho) - rho)  # U(-rho, rho)
            s, loss = self._measure(x, y)
            if loss - loss_best < h["tol"] and s > s_best:
                s_best, loss_best = s, loss
                theta_best = [p.detach().clone() for p in self.perturbed]
                accepted += 1
                with torch.no_grad():  # restart the search from theta0
                    for p, t in zip(self.perturbed, theta0):
                        p.copy_(t)
            # on rejection nothing is undone: the walk continues from here
        with torch.no_grad():
            for p, t in zip(self.perturbed, theta_best):
                p.copy_(t)
        return {
            "annealing": 1.0,
            "accepted": accepted,
            "cos_min_start": s_start,
            "cos_min_best": s_best,
            "loss_best": loss_best,
        }

    def update(self, x, y) -> dict:
        x, y = self.base._to_tensors(x, y)
        self.network.train()
        stats = {"annealing": 0.0}
        if self.hparams["start_step"] <= self.step <= self.hparams["end_step"]:
            stats = self._anneal(x, y)
        out = self.base.update(x, y)
        self.step += 1
        return {**{k: float(v) for k, v in stats.items()}, **out}


# --------------------------------------------------------------------------
# The baselines of GGA's combination table, as DomainBed's algorithms.py (and,
# for SAM, GSAM and SAGM, the GGA repository) writes them: benchmark runners,
# each DomainBed's `update` on minibatches x[d], y[d], kept as short and as
# plain as there. Hyperparameter names are kdg's (kdg.algorithms), defaults
# DomainBed's.
# --------------------------------------------------------------------------


def _cat(x, y):
    return torch.cat(list(x)), torch.cat(list(y))


class _OneLoss(Algorithm):
    """One optimizer step on the gradient of ``self.objective(x, y)``."""

    def _update(self, x, y):
        loss, stats = self.objective(x, y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), **stats}


class _AbstractMMD(_OneLoss):
    """DomainBed's AbstractMMD: CE per domain + mmd_gamma * mean pairwise
    discrepancy of the featurizer's outputs."""

    defaults = {"mmd_gamma": 1.0}
    gaussian = True

    @staticmethod
    def my_cdist(x1, x2):
        x1_norm = x1.pow(2).sum(dim=-1, keepdim=True)
        x2_norm = x2.pow(2).sum(dim=-1, keepdim=True)
        res = torch.addmm(x2_norm.transpose(-2, -1), x1, x2.transpose(-2, -1), alpha=-2)
        return res.add_(x1_norm).clamp_min_(1e-30)

    def gaussian_kernel(self, x, y, gamma=(0.001, 0.01, 0.1, 1, 10, 100, 1000)):
        dist = self.my_cdist(x, y)
        kernel = torch.zeros_like(dist)
        for g in gamma:
            kernel.add_(torch.exp(dist.mul(-g)))
        return kernel

    def mmd(self, x, y):
        if self.gaussian:
            return (self.gaussian_kernel(x, x).mean() + self.gaussian_kernel(y, y).mean()
                    - 2 * self.gaussian_kernel(x, y).mean())
        mean_x, mean_y = x.mean(0, keepdim=True), y.mean(0, keepdim=True)
        cent_x, cent_y = x - mean_x, y - mean_y
        cova_x = (cent_x.t() @ cent_x) / (len(x) - 1)
        cova_y = (cent_y.t() @ cent_y) / (len(y) - 1)
        return (mean_x - mean_y).pow(2).mean() + (cova_x - cova_y).pow(2).mean()

    def _update(self, x, y):
        nmb = len(x)
        features = [self.network.featurizer(xi) for xi in x]
        classifs = [self.network.classifier(fi) for fi in features]
        objective, penalty = 0, torch.zeros((), device=self.device)
        for i in range(nmb):
            objective += F.cross_entropy(classifs[i], y[i])
            for j in range(i + 1, nmb):
                penalty += self.mmd(features[i], features[j])
        objective /= nmb
        if nmb > 1:
            penalty /= nmb * (nmb - 1) / 2
        self.optimizer.zero_grad()
        (objective + self.hparams["mmd_gamma"] * penalty).backward()
        self.optimizer.step()
        return {"loss": objective.item(), "penalty": penalty.item()}


class MMD(_AbstractMMD):
    gaussian = True


class CORAL(_AbstractMMD):
    gaussian = False


class GroupDRO(_OneLoss):
    defaults = {"eta": 1e-2}

    def objective(self, x, y):
        if not hasattr(self, "q"):
            self.q = torch.ones(len(x), device=self.device)
        losses = torch.zeros(len(x), device=self.device)
        for m in range(len(x)):
            losses[m] = F.cross_entropy(self.network(x[m]), y[m])
            self.q[m] *= (self.hparams["eta"] * losses[m].data).exp()
        self.q /= self.q.sum()
        return torch.dot(losses, self.q), {}


class _Penalized(_OneLoss):
    """IRM and VREx: nll + w * penalty, w = 1 before anneal_steps; Adam reset at it."""

    def objective(self, x, y):
        h = self.hparams
        weight = h["penalty_weight"] if self.step >= h["anneal_steps"] else 1.0
        all_x, _ = _cat(x, y)
        all_logits = self.network(all_x)
        nll, penalty = self.nll_and_penalty(all_logits.split([len(xi) for xi in x]), y)
        if self.step == h["anneal_steps"]:  # DomainBed's "Reset Adam"
            self.optimizer = self.new_optimizer(self.params)
        return nll + weight * penalty, {"nll": nll.item(), "penalty": penalty.item()}


class IRM(_Penalized):
    defaults = {"penalty_weight": 1e2, "anneal_steps": 500}

    @staticmethod
    def _irm_penalty(logits, y):
        scale = torch.tensor(1.0, device=logits.device).requires_grad_()
        loss_1 = F.cross_entropy(logits[::2] * scale, y[::2])
        loss_2 = F.cross_entropy(logits[1::2] * scale, y[1::2])
        grad_1 = torch.autograd.grad(loss_1, [scale], create_graph=True)[0]
        grad_2 = torch.autograd.grad(loss_2, [scale], create_graph=True)[0]
        return torch.sum(grad_1 * grad_2)

    def nll_and_penalty(self, logits, y):
        nll = sum(F.cross_entropy(z, yi) for z, yi in zip(logits, y)) / len(y)
        penalty = sum(self._irm_penalty(z, yi) for z, yi in zip(logits, y)) / len(y)
        return nll, penalty


class VREx(_Penalized):
    defaults = {"penalty_weight": 1e1, "anneal_steps": 500}

    def nll_and_penalty(self, logits, y):
        losses = torch.stack([F.cross_entropy(z, yi) for z, yi in zip(logits, y)])
        mean = losses.mean()
        return mean, ((losses - mean) ** 2).mean()


class IGA(Algorithm):
    """DomainBed's IGA: per-domain gradients with create_graph, the mean
    gradient by its own backward pass, the variance penalty's gradient by a
    second backward through the per-domain gradients."""

    defaults = {"penalty_weight": 1000.0}  # DomainBed's "penalty"

    def _update(self, x, y):
        total_loss = 0
        grads = []
        for xi, yi in zip(x, y):
            env_loss = F.cross_entropy(self.network(xi), yi)
            total_loss += env_loss
            grads.append(torch.autograd.grad(env_loss, self.params, create_graph=True))
        mean_loss = total_loss / len(x)
        mean_grad = torch.autograd.grad(mean_loss, self.params, retain_graph=True)
        penalty_value = 0
        for grad in grads:
            for g, mean_g in zip(grad, mean_grad):
                penalty_value += (g - mean_g).pow(2).sum()
        objective = mean_loss + self.hparams["penalty_weight"] * penalty_value
        self.optimizer.zero_grad()
        objective.backward()
        self.optimizer.step()
        return {"loss": mean_loss.item(), "penalty": penalty_value.item()}


class SD(_OneLoss):
    """DomainBed's SD: CE on the concatenated batch + sd_reg * mean(logits^2)."""

    defaults = {"sd_reg": 0.1}

    def objective(self, x, y):
        all_x, all_y = _cat(x, y)
        all_p = self.network(all_x)
        loss = F.cross_entropy(all_p, all_y)
        penalty = (all_p ** 2).mean()
        return loss + self.hparams["sd_reg"] * penalty, {"nll": loss.item(),
                                                         "penalty": penalty.item()}


class Fishr(Algorithm):
    """DomainBed's Fishr: per-domain centered variance of the classifier's
    per-example gradients, a per-domain moving average of it (with the
    1/(1 - ema) correction), penalty = mean over domains of the mean squared
    distance to the domains' mean variance; weight 0 before anneal_steps and
    penalty_weight from it, Adam reset at it (unless it is 0). DomainBed gets
    the per-example gradients from BackPACK's BatchGrad; here they are one
    backward pass per example through the classifier (create_graph=True, so
    the penalty is differentiable), the cost kdg's closed form avoids."""

    defaults = {"penalty_weight": 1000.0, "anneal_steps": 1500, "ema": 0.95}

    def _update(self, x, y):
        h = self.hparams
        num = len(x)
        all_x, all_y = _cat(x, y)
        all_z = self.network.featurizer(all_x)
        all_logits = self.network.classifier(all_z)
        head = list(self.network.classifier.parameters())
        losses = F.cross_entropy(all_logits, all_y, reduction="none")
        grads = torch.stack([
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(
                losses[n], head, retain_graph=True, create_graph=True)])
            for n in range(len(all_y))])
        if not hasattr(self, "ema_data"):
            self.ema_data = [None] * num
        variances, idx = [], 0
        for d in range(num):
            env = grads[idx:idx + len(x[d])]
            idx += len(x[d])
            var = (env - env.mean(dim=0, keepdim=True)).pow(2).mean(dim=0)
            previous = torch.zeros_like(var) if self.ema_data[d] is None else self.ema_data[d]
            ema_data = h["ema"] * previous + (1 - h["ema"]) * var
            self.ema_data[d] = ema_data.clone().detach()
            variances.append(ema_data / (1 - h["ema"]))
        mean_var = torch.stack(variances).mean(dim=0)
        penalty = sum((v - mean_var).pow(2).mean() for v in variances) / num
        nll = F.cross_entropy(all_logits, all_y)
        weight = 0.0
        if self.step >= h["anneal_steps"]:
            weight = h["penalty_weight"]
            if self.step == h["anneal_steps"] != 0:  # DomainBed's "Reset Adam"
                self.optimizer = self.new_optimizer(self.params)
        objective = nll + weight * penalty
        self.optimizer.zero_grad()
        objective.backward()
        self.optimizer.step()
        return {"loss": objective.item(), "nll": nll.item(), "fishr_penalty": penalty.item()}


class Mixup(_OneLoss):
    defaults = {"alpha": 0.2}

    def objective(self, x, y):
        perm = torch.randperm(len(x), generator=self.generator, device=self.device).tolist()
        rng = getattr(self, "rng", None) or np.random.default_rng(int(self.hparams["seed"]))
        self.rng = rng
        objective = 0
        for i, j in zip(perm, perm[1:] + perm[:1]):  # DomainBed's random_pairs_of_minibatches
            lam = float(rng.beta(self.hparams["alpha"], self.hparams["alpha"]))
            predictions = self.network(lam * x[i] + (1 - lam) * x[j])
            objective += lam * F.cross_entropy(predictions, y[i])
            objective += (1 - lam) * F.cross_entropy(predictions, y[j])
        return objective / len(x), {}


class MLDG(Algorithm):
    """DomainBed's first-order MLDG: a deep copy and a fresh Adam per pair."""

    defaults = {"beta": 1.0, "n_meta_test": 2}

    def _update(self, x, y):
        num_mb = len(x)
        perm = torch.randperm(num_mb, generator=self.generator, device=self.device).tolist()
        n = self.hparams["n_meta_test"]
        meta_train, meta_test = perm[: num_mb - n], perm[-n:]
        objective = 0.0
        self.optimizer.zero_grad()
        for p in self.network.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for i, j in zip(meta_train, itertools.cycle(meta_test)):
            inner_net = copy.deepcopy(self.network)
            inner_opt = self.new_optimizer([p for p in inner_net.parameters() if p.requires_grad])
            inner_obj = F.cross_entropy(inner_net(x[i]), y[i])
            inner_opt.zero_grad()
            inner_obj.backward()
            inner_opt.step()
            for p_tgt, p_src in zip(self.network.parameters(), inner_net.parameters()):
                if p_src.grad is not None:
                    p_tgt.grad.data.add_(p_src.grad.data / num_mb)
            objective += inner_obj.item()
            loss_inner_j = F.cross_entropy(inner_net(x[j]), y[j])
            grad_inner_j = torch.autograd.grad(loss_inner_j, list(inner_net.parameters()),
                                               allow_unused=True)
            objective += self.hparams["beta"] * loss_inner_j.item()
            for p, g_j in zip(self.network.parameters(), grad_inner_j):
                if g_j is not None:
                    p.grad.data.add_(self.hparams["beta"] * g_j.data / num_mb)
        self.optimizer.step()
        return {"loss": objective / num_mb}


class RSC(_OneLoss):
    defaults = {"rsc_f_drop_factor": 1 / 3, "rsc_b_drop_factor": 1 / 3}

    def objective(self, x, y):
        drop_f = (1 - self.hparams["rsc_f_drop_factor"]) * 100
        drop_b = (1 - self.hparams["rsc_b_drop_factor"]) * 100
        all_x, all_y = _cat(x, y)
        all_f = self.network.featurizer(all_x)
        all_p = self.network.classifier(all_f)
        all_o = F.one_hot(all_y, all_p.shape[1])
        all_g = torch.autograd.grad((all_p * all_o).sum(), all_f)[0]
        percentiles = torch.tensor(np.percentile(all_g.detach().cpu(), drop_f, axis=1),
                                   dtype=all_g.dtype, device=all_g.device)
        mask_f = all_g.lt(percentiles.unsqueeze(1).repeat(1, all_g.size(1))).float()
        all_p_muted = self.network.classifier(all_f * mask_f)
        all_s, all_s_muted = F.softmax(all_p, dim=1), F.softmax(all_p_muted, dim=1)
        changes = (all_s * all_o).sum(1) - (all_s_muted * all_o).sum(1)
        percentile = np.percentile(changes.detach().cpu(), drop_b)
        mask_b = changes.lt(percentile).float().view(-1, 1)
        mask = torch.logical_or(mask_f, mask_b).float()
        return F.cross_entropy(self.network.classifier(all_f * mask), all_y), {}


class ANDMask(Algorithm):
    """DomainBed's ANDMask: per-domain gradients, masked mean."""

    defaults = {"tau": 1.0}

    def mask_grads(self, gradients):
        for param, grads in zip(self.params, gradients):
            grads = torch.stack(grads, dim=0)
            mask = (torch.mean(torch.sign(grads), dim=0).abs() >= self.hparams["tau"]).float()
            mask_t = mask.sum() / mask.numel()
            param.grad = mask * grads.mean(dim=0)
            param.grad *= 1.0 / (1e-10 + mask_t)

    def _update(self, x, y):
        grads, losses = per_domain_grads(self.network, self.params, x, y)
        self.optimizer.zero_grad()
        self.mask_grads(list(zip(*grads)))
        self.optimizer.step()
        return {"loss": sum(losses) / len(losses)}


class SANDMask(ANDMask):
    defaults = {"tau": 1.0, "k": 10.0}

    def mask_grads(self, gradients):
        for param, grads in zip(self.params, gradients):
            grads = torch.stack(grads, dim=0)
            avg_grad = torch.mean(grads, dim=0)
            grads_var = grads.var(dim=0)
            grads_var[torch.isnan(grads_var)] = 1e-17
            lam = grads_var.pow(-1)
            mask = torch.tanh(self.hparams["k"] * lam
                              * (torch.abs(torch.sign(grads).mean(dim=0)) - self.hparams["tau"]))
            mask = torch.max(mask, torch.zeros_like(mask))
            mask[torch.isnan(mask)] = 1e-17
            mask_t = mask.sum() / mask.numel()
            param.grad = mask * avg_grad
            param.grad *= 1.0 / (1e-10 + mask_t)


class SAM(Algorithm):
    """The GGA repository's SAM on ERM's loss: two passes, e = rho g / |g|."""

    defaults = {"rho": 0.05}

    def grad_norm(self):
        return torch.norm(torch.stack([p.grad.norm(p=2) for p in self.params]), p=2)

    def ascent(self, grad_norm):
        return [p.grad * (self.hparams["rho"] / (grad_norm + 1e-12)) for p in self.params]

    def second_grad(self, all_x, all_y, e_w):
        with torch.no_grad():
            for p, e in zip(self.params, e_w):
                p.add_(e)
        self.optimizer.zero_grad()
        loss = F.cross_entropy(self.network(all_x), all_y)
        loss.backward()
        with torch.no_grad():
            for p, e in zip(self.params, e_w):
                p.sub_(e)
        return loss

    def _update(self, x, y):
        all_x, all_y = _cat(x, y)
        self.optimizer.zero_grad()
        loss = F.cross_entropy(self.network(all_x), all_y)
        loss.backward()
        old_g = [p.grad.clone() for p in self.params]
        loss_p = self.second_grad(all_x, all_y, self.ascent(self.grad_norm()))
        self.combine(old_g)
        self.optimizer.step()
        return {"loss": self.reported(loss, loss_p).item(),
                "sharpness": (loss_p - loss).item()}

    def combine(self, old_g):
        """SAM: the optimizer takes g' as it is."""

    def reported(self, loss, loss_p):
        return loss_p


class GSAM(SAM):
    defaults = {"rho": 0.05, "alpha": 0.001}

    def combine(self, old_g):
        new_g = [p.grad for p in self.params]
        inner = sum((g * gp).sum() for g, gp in zip(old_g, new_g))
        old_norm = torch.norm(torch.stack([g.norm(p=2) for g in old_g]), p=2)
        new_norm = torch.norm(torch.stack([g.norm(p=2) for g in new_g]), p=2)
        cosine = inner / (new_norm * old_norm + 1e-12)
        for p, g in zip(self.params, old_g):
            vertical = g - cosine * old_norm * p.grad / (new_norm + 1e-12)
            p.grad.add_(vertical, alpha=-self.hparams["alpha"])

    def reported(self, loss, loss_p):
        return loss


class SAGM(GSAM):
    def ascent(self, grad_norm):
        scale = self.hparams["rho"] / (grad_norm + 1e-12) - self.hparams["alpha"]
        return [p.grad * scale for p in self.params]

    def combine(self, old_g):
        for p, g in zip(self.params, old_g):
            p.grad.add_(g / 2 - p.grad / 2)


class SelfReg(Algorithm):
    """DomainBed's SelfReg: the projection ``cdpl`` built after the optimizer
    (so never trained, DomainBed's quirk; ``train_projection`` trains it),
    examples sorted by class, partners shuffled inside each class element by
    element, ``.item()`` for the scale."""

    defaults = {"feature_weight": 0.3, "alpha": 0.5, "train_projection": False}

    def __init__(self, network, hparams=None):
        super().__init__(network, hparams)
        dim = network.classifier.in_features
        hidden = dim if dim == 2048 else dim * 2
        p = self.params[0]
        self.cdpl = nn.Sequential(
            nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, dim), nn.BatchNorm1d(dim),
        ).to(device=p.device, dtype=p.dtype)
        if self.hparams["train_projection"]:
            self.optimizer.add_param_group({"params": list(self.cdpl.parameters())})
        self.rng = np.random.default_rng(int(self.hparams["seed"]))

    def _update(self, x, y):
        all_x, all_y = _cat(x, y)
        alpha = self.hparams["alpha"]
        lam = float(self.rng.beta(alpha, alpha))
        batch_size = all_y.size()[0]
        with torch.no_grad():  # cluster and order the examples into same-class groups
            sorted_y, indices = torch.sort(all_y)
            sorted_x = torch.zeros_like(all_x)
            for idx, order in enumerate(indices):
                sorted_x[idx] = all_x[order]
            intervals, ex = [], 0
            for idx, val in enumerate(sorted_y):
                if ex == val:
                    continue
                intervals.append(idx)
                ex = val
            intervals.append(batch_size)
            all_x, all_y = sorted_x, sorted_y
        self.cdpl.train()
        feat = self.network.featurizer(all_x)
        proj = self.cdpl(feat)
        output = self.network.classifier(feat)
        output_2, feat_2 = torch.zeros_like(output), torch.zeros_like(proj)
        output_3, feat_3 = torch.zeros_like(output), torch.zeros_like(proj)
        ex = 0
        for end in intervals:
            shuffle_1 = torch.randperm(end - ex, generator=self.generator, device=self.device) + ex
            shuffle_2 = torch.randperm(end - ex, generator=self.generator, device=self.device) + ex
            for idx in range(end - ex):
                output_2[idx + ex] = output[shuffle_1[idx]]
                feat_2[idx + ex] = proj[shuffle_1[idx]]
                output_3[idx + ex] = output[shuffle_2[idx]]
                feat_3[idx + ex] = proj[shuffle_2[idx]]
            ex = end
        output_3 = lam * output_2 + (1 - lam) * output_3
        feat_3 = lam * feat_2 + (1 - lam) * feat_3
        w = self.hparams["feature_weight"]
        l_ind_logit, l_hdl_logit = F.mse_loss(output, output_2), F.mse_loss(output, output_3)
        l_ind_feat, l_hdl_feat = w * F.mse_loss(feat, feat_2), w * F.mse_loss(feat, feat_3)
        cl_loss = F.cross_entropy(output, all_y)
        c_scale = min(cl_loss.item(), 1.0)
        loss = cl_loss + c_scale * (lam * (l_ind_logit + l_ind_feat)
                                    + (1 - lam) * (l_hdl_logit + l_hdl_feat))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "nll": cl_loss.item(), "selfreg_scale": c_scale}


# --------------------------------------------------------------------------
# DANN and CDANN (DomainBed's AbstractDANN)
# --------------------------------------------------------------------------


class _MLP(nn.Module):
    """DomainBed's networks.MLP: Linear, dropout, ReLU; (depth - 2) hidden
    Linear, dropout, ReLU; Linear."""

    def __init__(self, n_inputs, n_outputs, width, depth, dropout):
        super().__init__()
        self.input = nn.Linear(n_inputs, width)
        self.dropout = nn.Dropout(dropout)
        self.hiddens = nn.ModuleList([nn.Linear(width, width) for _ in range(depth - 2)])
        self.output = nn.Linear(width, n_outputs)

    def forward(self, x):
        x = F.relu(self.dropout(self.input(x)))
        for hidden in self.hiddens:
            x = F.relu(self.dropout(hidden(x)))
        return self.output(x)


class DANN(Algorithm):
    """DomainBed's AbstractDANN: a discriminator MLP on the features with its
    own Adam, the generator's Adam over the network, alternating steps; the
    input-gradient penalty computed every step, as DomainBed does (also at
    grad_penalty 0). ``lr_d``/``lr_g`` None: ``lr``; ``weight_decay_g``
    None: ``weight_decay`` (as kdg's DANN). The discriminator (one output
    per domain) is built at the first update."""

    defaults = {"lambda_": 1.0, "d_steps_per_g_step": 1, "grad_penalty": 0.0, "beta1": 0.5,
                "mlp_width": 256, "mlp_depth": 3, "mlp_dropout": 0.0, "lr_d": None,
                "lr_g": None, "weight_decay_d": 0.0, "weight_decay_g": None}
    conditional = class_balance = False

    def new_optimizer(self, params):  # the generator's Adam
        h = self.hparams
        wd = h["weight_decay"] if h["weight_decay_g"] is None else h["weight_decay_g"]
        return torch.optim.Adam(params, lr=h["lr_g"] or h["lr"], weight_decay=wd,
                                betas=(h["beta1"], 0.9), eps=h["adam_eps"])

    def _build(self, num_domains):
        h, head = self.hparams, self.network.classifier
        self.update_count = 0
        self.discriminator = _MLP(head.in_features, num_domains, h["mlp_width"],
                                  h["mlp_depth"], h["mlp_dropout"]).to(self.device)
        self.class_embeddings = nn.Embedding(head.out_features, head.in_features).to(self.device)
        self.disc_opt = torch.optim.Adam(
            list(self.discriminator.parameters()) + list(self.class_embeddings.parameters()),
            lr=h["lr_d"] or h["lr"], weight_decay=h["weight_decay_d"],
            betas=(h["beta1"], 0.9), eps=h["adam_eps"])

    def _update(self, x, y):
        if not hasattr(self, "discriminator"):
            self._build(len(x))
        h = self.hparams
        self.update_count += 1
        all_x, all_y = _cat(x, y)
        all_z = self.network.featurizer(all_x)
        if self.conditional:
            disc_input = all_z + self.class_embeddings(all_y)
        else:
            disc_input = all_z
        disc_out = self.discriminator(disc_input)
        disc_labels = torch.cat([
            torch.full((xd.shape[0],), i, dtype=torch.int64, device=self.device)
            for i, xd in enumerate(x)
        ])
        if self.class_balance:
            y_counts = F.one_hot(all_y).sum(dim=0)
            weights = 1.0 / (y_counts[all_y] * y_counts.shape[0]).float()
            disc_loss = F.cross_entropy(disc_out, disc_labels, reduction="none")
            disc_loss = (weights * disc_loss).sum()
        else:
            disc_loss = F.cross_entropy(disc_out, disc_labels)
        input_grad = torch.autograd.grad(
            F.cross_entropy(disc_out, disc_labels, reduction="sum"),
            [disc_input], create_graph=True)[0]
        grad_penalty = (input_grad ** 2).sum(dim=1).mean(dim=0)
        disc_loss += h["grad_penalty"] * grad_penalty
        d_steps_per_g = h["d_steps_per_g_step"]
        if self.update_count % (1 + d_steps_per_g) < d_steps_per_g:
            self.disc_opt.zero_grad()
            disc_loss.backward()
            self.disc_opt.step()
            return {"loss": disc_loss.item(), "disc_loss": disc_loss.item()}
        all_preds = self.network.classifier(all_z)
        classifier_loss = F.cross_entropy(all_preds, all_y)
        gen_loss = classifier_loss + (h["lambda_"] * -disc_loss)
        self.disc_opt.zero_grad()
        self.optimizer.zero_grad()
        gen_loss.backward()
        self.optimizer.step()
        return {"loss": gen_loss.item(), "gen_loss": gen_loss.item()}


class CDANN(DANN):
    """DomainBed's CDANN: class embeddings added to the discriminator's
    input, class-balanced discriminator loss."""

    conditional = class_balance = True


# --------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------

ALGORITHMS = {
    "erm": ERM,
    "fish": Fish,
    "corgrad": CorGrad,
    "ggal": GGAL,
    "gga-l": GGAL,
    "gga_l": GGAL,
    "gga": GGA,
    "sam": SAM,
    "gsam": GSAM,
    "sagm": SAGM,
    "andmask": ANDMask,
    "sandmask": SANDMask,
    "mmd": MMD,
    "coral": CORAL,
    "rsc": RSC,
    "vrex": VREx,
    "groupdro": GroupDRO,
    "irm": IRM,
    "mixup": Mixup,
    "mldg": MLDG,
    "iga": IGA,
    "pcgrad": PCGrad,
    "sd": SD,
    "selfreg": SelfReg,
    "fishr": Fishr,
    "dann": DANN,
    "cdann": CDANN,
}


def make_algorithm(name: str, network: nn.Module, hparams: dict | None = None):
    """Build an algorithm around ``network`` (trained in place). ``name`` in any
    spelling of kdg's registry names ("GGA-L", "gga_l", "ANDMask", "and-mask")."""
    key = name.lower()
    if key not in ALGORITHMS:
        key = "".join(c for c in key if c.isalnum())
    try:
        cls = ALGORITHMS[key]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; one of {', '.join(ALGORITHMS)}") from None
    return cls(network, hparams)


# --------------------------------------------------------------------------
# MTL, SagNet, ARM and MixStyle: the algorithms of GGA's combination table
# that bring their own networks or layers, as DomainBed's algorithms.py (and,
# for MixStyle, the MixStyle authors' code the GGA repository runs) writes
# them. Each takes the bench's Classifier(featurizer, classifier):
#
# - MTL widens ``network.classifier`` to read [features, embedding] (DomainBed's
#   Classifier of 2F inputs: W = [W1; W2]), in place;
# - SagNet adds its style network (a fresh Linear like the classifier);
# - ARM's ``network`` takes C + 1 channels (the images and the context; for an
#   MLP, one that flattens images itself); it builds DomainBed's ContextNet for
#   the C channels of its first batch, after its optimizer (never trained);
# - MixStyle's ``network`` carries ``MixStyleLayer`` modules
#   (``kdg.bench.reference.build_network`` puts one after ResNet stages
#   1, 2 and 3, as the authors' ``resnet*_mixstyle_L234_p0d5_a0d1``).
#
# Random numbers (MTL's noise, SagNet's alpha and permutation) come from the
# algorithm's generator through one method each (``normal_``, ``draw``), and
# MixStyleLayer's from the global RNGs as the authors' (its ``draw``): a test
# substitutes kdg's draws there to compare the weights.
# --------------------------------------------------------------------------


class MTL(Algorithm):
    """DomainBed's MTL: per domain, the embedding's moving average is kept
    and then overwritten with N(0, 1) noise (``.normal_()``); the loss is
    the SUM over domains; one Adam on featurizer and (widened) classifier."""

    defaults = {"mtl_ema": 0.99}

    def __init__(self, network, hparams=None):
        head = network.classifier
        network.classifier = nn.Linear(2 * head.in_features, head.out_features).to(head.weight)
        super().__init__(network, hparams)
        self.embeddings = None  # DomainBed's buffer (num_domains, F), zeros at the first update

    def normal_(self, embedding, env):
        """DomainBed's ``embedding.normal_()``, from this algorithm's generator."""
        return embedding.normal_(generator=self.generator)

    def update_embeddings_(self, features, env=None):
        return_embedding = features.mean(0)
        if env is not None:
            ema = self.hparams["mtl_ema"]
            return_embedding = ema * return_embedding + (1 - ema) * self.embeddings[env]
            self.embeddings[env] = return_embedding.clone().detach()
        return return_embedding.view(1, -1).repeat(len(features), 1)

    def predict(self, x, env=None):
        features = self.network.featurizer(x)
        embedding = self.normal_(self.update_embeddings_(features, env), env)
        return self.network.classifier(torch.cat((features, embedding), 1))

    def _update(self, x, y):
        if self.embeddings is None:
            width = self.network.classifier.in_features // 2
            self.embeddings = torch.zeros(len(x), width, device=self.device, dtype=self.params[0].dtype)
        loss = 0
        for env in range(len(x)):
            loss += F.cross_entropy(self.predict(x[env], env), y[env])
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}


class SagNet(Algorithm):
    """DomainBed's SagNet: featurizer f, content network c (the classifier)
    and a style network s, three Adams; content, style and adversary steps
    on the concatenated batch."""

    defaults = {"sag_w_adv": 0.1}

    def __init__(self, network, hparams=None):
        super().__init__(network, hparams)
        head = network.classifier
        self.network_f, self.network_c = network.featurizer, network.classifier
        self.network_s = nn.Linear(head.in_features, head.out_features).to(head.weight)
        self.optimizer_f = self.new_optimizer(list(self.network_f.parameters()))
        self.optimizer_c = self.new_optimizer(list(self.network_c.parameters()))
        self.optimizer_s = self.new_optimizer(list(self.network_s.parameters()))

    def forward_c(self, x):
        # learning content network on randomized style
        return self.network_c(self.randomize(self.network_f(x), "style"))

    def forward_s(self, x):
        # learning style network on randomized content
        return self.network_s(self.randomize(self.network_f(x), "content"))

    def draw(self, n, like):
        """DomainBed's ``torch.rand(n, 1)`` and ``torch.randperm(n)``, from
        this algorithm's generator."""
        alpha = torch.rand(n, 1, generator=self.generator, device=like.device, dtype=like.dtype)
        return alpha, torch.randperm(n, generator=self.generator, device=like.device)

    def randomize(self, x, what="style", eps=1e-5):
        sizes = x.size()
        alpha, idx_swap = self.draw(sizes[0], x)
        if len(sizes) == 4:
            x = x.view(sizes[0], sizes[1], -1)
            alpha = alpha.unsqueeze(-1)
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True)
        x = (x - mean) / (var + eps).sqrt()
        if what == "style":
            mean = alpha * mean + (1 - alpha) * mean[idx_swap]
            var = alpha * var + (1 - alpha) * var[idx_swap]
        else:
            x = x[idx_swap].detach()
        x = x * (var + eps).sqrt() + mean
        return x.view(*sizes)

    def _update(self, x, y):
        all_x, all_y = _cat(x, y)
        # learn content
        self.optimizer_f.zero_grad()
        self.optimizer_c.zero_grad()
        loss_c = F.cross_entropy(self.forward_c(all_x), all_y)
        loss_c.backward()
        self.optimizer_f.step()
        self.optimizer_c.step()
        # learn style
        self.optimizer_s.zero_grad()
        loss_s = F.cross_entropy(self.forward_s(all_x), all_y)
        loss_s.backward()
        self.optimizer_s.step()
        # learn adversary
        self.optimizer_f.zero_grad()
        loss_adv = -F.log_softmax(self.forward_s(all_x), dim=1).mean(1).mean()
        loss_adv = loss_adv * self.hparams["sag_w_adv"]
        loss_adv.backward()
        self.optimizer_f.step()
        return {"loss": loss_c.item(), "loss_c": loss_c.item(), "loss_s": loss_s.item(),
                "loss_adv": loss_adv.item()}


class ContextNet(nn.Module):
    """DomainBed's ContextNet: images (N, C, H, W) -> one-channel maps (N, 1, H, W).
    DomainBed's widths are fixed (64 channels, 5x5); ``hidden`` and
    ``kernel_size`` are kdg.layers.ARMContext's, for small tests."""

    def __init__(self, in_channels: int, hidden: int = 64, kernel_size: int = 5):
        super().__init__()
        padding = (kernel_size - 1) // 2  # keep the same dimensions
        self.context_net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size, padding=padding),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, kernel_size, padding=padding),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, 1, kernel_size, padding=padding),
        )

    def forward(self, x):
        return self.context_net(x)


class ARM(Algorithm):
    """DomainBed's ARM (ARM-CML): ERM's step on ``predict``, which appends
    to every image the mean context map of its support set (the per-domain
    batch: DomainBed's ``support_size`` is its ``batch_size``). One pass of
    the context network over the whole batch (its BatchNorm sees all D*B
    images), one of the network."""

    def __init__(self, network, hparams=None):
        super().__init__(network, hparams)
        self.context_net = None  # built at the first update, after the optimizer (never trained)
        self.support_size = None

    def predict(self, x):
        batch_size, c, h, w = x.shape
        if batch_size % self.support_size == 0:
            meta_batch_size = batch_size // self.support_size
            support_size = self.support_size
        else:
            meta_batch_size, support_size = 1, batch_size
        context = self.context_net(x)
        context = context.reshape((meta_batch_size, support_size, 1, h, w))
        context = context.mean(dim=1)
        context = torch.repeat_interleave(context, repeats=support_size, dim=0)
        x = torch.cat([x, context], dim=1)
        return self.network(x)

    def _update(self, x, y):
        if self.context_net is None:
            self.context_net = ContextNet(x.shape[2]).to(self.params[0])
        self.context_net.train()
        self.support_size = x.shape[1]
        all_x, all_y = _cat(x, y)
        loss = F.cross_entropy(self.predict(all_x), all_y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}


class MixStyleLayer(nn.Module):
    """The MixStyle authors' layer (``mix='random'``): in training, with
    probability p per batch, each example's channel statistics are mixed
    with a random other example's, weights ~ Beta(alpha, alpha)."""

    def __init__(self, p=0.5, alpha=0.1, eps=1e-6):
        super().__init__()
        self.p, self.alpha, self.eps = p, alpha, eps
        self.beta = torch.distributions.Beta(alpha, alpha)

    def draw(self, batch_size):
        """(mix, lmda (B, 1, 1, 1), perm), from the global RNGs as the authors'."""
        if random.random() > self.p:
            return False, None, None
        return True, self.beta.sample((batch_size, 1, 1, 1)), torch.randperm(batch_size)

    def forward(self, x):
        if not self.training:
            return x
        mix, lmda, perm = self.draw(x.size(0))
        if not mix:
            return x
        mu = x.mean(dim=[2, 3], keepdim=True)
        var = x.var(dim=[2, 3], keepdim=True)
        sig = (var + self.eps).sqrt()
        mu, sig = mu.detach(), sig.detach()
        x_normed = (x - mu) / sig
        lmda = lmda.to(x.device)
        mu2, sig2 = mu[perm], sig[perm]
        mu_mix = mu * lmda + mu2 * (1 - lmda)
        sig_mix = sig * lmda + sig2 * (1 - lmda)
        return x_normed * sig_mix + mu_mix


class MixStyle(ERM):
    """ERM on a network with MixStyleLayer modules (the GGA repository's
    ``Mixstyle`` algorithm: ERM's update on the concatenated batch)."""

    def __init__(self, network, hparams=None):
        if not any(isinstance(m, MixStyleLayer) for m in network.modules()):
            raise ValueError("MixStyle trains a network with MixStyleLayer modules and this one has "
                             "none; kdg.bench.reference.build_network(config, ref, "
                             "{'mixstyle_layers': (1, 2, 3)}) builds a ResNet with them.")
        super().__init__(network, hparams)


__all__ += ["MTL", "SagNet", "ContextNet", "ARM", "MixStyleLayer", "MixStyle"]
ALGORITHMS.update({"mtl": MTL, "sagnet": SagNet, "arm": ARM, "mixstyle": MixStyle})
