"""PyTorch backend: `torch.autograd.grad` (torch.func gives zero gradients
through Keras layers), eager stateful steps."""

import torch
from keras import ops
from keras import tree

from kdg.backend.unrolled import scan  # noqa: F401 (eager: a Python loop)


def value_and_grad(fn, differentiable=False):
    def wrapped(params, *args):
        # Differentiable: tensors already in an enclosing graph stay in it, and
        # the gradients' own graph is kept (create_graph).
        leaves = [
            p if differentiable and p.requires_grad else p.detach().requires_grad_(True)
            for p in params
        ]
        with torch.enable_grad():
            loss, aux = fn(leaves, *args)
            grads = torch.autograd.grad(
                loss, leaves, allow_unused=True, create_graph=differentiable
            )
        grads = [
            torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads)
        ]
        if differentiable:
            return (loss, aux), grads
        aux = tree.map_structure(
            lambda t: t.detach() if isinstance(t, torch.Tensor) else t, aux
        )
        return (loss.detach(), aux), grads

    return wrapped


def stateful_cond(pred, true_fn, false_fn, variables):
    return ops.cond(pred, true_fn, false_fn)


class TrainStep:
    def train_step(self, data):
        return self._dg_train_step(data)
