"""What Fishr's closed form saves: the penalty's cost (forward and backward,
in plain PyTorch, eager, on one core) computed from per-example backward
passes (DomainBed's way, BackPACK's per-example gradients, as
`kdg.bench.torch_reference.Fishr` does it) against kdg's closed form
(`kdg/algorithms/fishr.py`: outer(features, softmax error), the variance
as two matrix products), for classifier heads of the sizes kdg's backbones
have. Both compute the same penalty (checked here) and its gradient with
respect to the features and the head.

    nice python benchmarks/fishr_closed_form.py [--repeats 10]
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

HEADS = {  # name: (features F, classes K)
    "mnist_cnn (F=128, K=10)": (128, 10),
    "resnet18 / OfficeHome (F=512, K=65)": (512, 65),
    "resnet50 / OfficeHome (F=2048, K=65)": (2048, 65),
}


def per_example(f, w, b, y, num):
    """DomainBed's per-example gradients, one backward pass per example."""
    losses = F.cross_entropy(f @ w.T + b, y, reduction="none")
    grads = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        losses[n], [w, b], retain_graph=True, create_graph=True)]) for n in range(len(y))])
    grads = grads.reshape(num, -1, grads.shape[-1])
    return (grads - grads.mean(1, keepdim=True)).pow(2).mean(1)  # (D, P)


def closed_form(f, w, b, y, num):
    """kdg's: e = softmax - onehot, var(W) = (f^2)^T (e^2) / B - (f^T e / B)^2."""
    z = f @ w.T + b
    e = (z.softmax(-1) - F.one_hot(y, z.shape[-1]).to(z.dtype)).reshape(num, -1, z.shape[-1])
    f = f.reshape(num, -1, f.shape[-1])
    batch = f.shape[1]
    mean_w = torch.einsum("dbf,dbk->dkf", f, e) / batch
    var_w = torch.einsum("dbf,dbk->dkf", f.pow(2), e.pow(2)) / batch - mean_w.pow(2)
    var_b = (e - e.mean(1, keepdim=True)).pow(2).mean(1)
    return torch.cat([var_w.reshape(num, -1), var_b], dim=1)


def penalty(variances):
    return (variances - variances.mean(0, keepdim=True)).pow(2).mean()


def timed(fn, args, repeats):
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        fn(*args).backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--domains", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    num, batch = args.domains, args.batch
    print(f"D={num} x B={batch}, 1 thread, median of {args.repeats}, ms (forward + backward)")
    print("| head | per-example backward passes | closed form | ratio |")
    print("|---|---|---|---|")
    for name, (feat, classes) in HEADS.items():
        f = torch.randn(num * batch, feat, requires_grad=True)
        w = (0.05 * torch.randn(classes, feat)).requires_grad_()
        b = torch.zeros(classes, requires_grad=True)
        y = torch.randint(0, classes, (num * batch,))
        slow = lambda *a: penalty(per_example(*a, num))
        fast = lambda *a: penalty(closed_form(*a, num))
        torch.testing.assert_close(fast(f, w, b, y), slow(f, w, b, y), rtol=1e-3, atol=1e-9)
        t_slow = timed(slow, (f, w, b, y), args.repeats)
        t_fast = timed(fast, (f, w, b, y), args.repeats)
        print(f"| {name} | {1e3 * t_slow:,.1f} | {1e3 * t_fast:,.1f} | {t_slow / t_fast:,.0f}x |")


if __name__ == "__main__":
    main()
