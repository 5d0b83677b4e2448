"""The benchmark's worker for the plain PyTorch reference.

    python -m kdg.bench.reference CONFIG.json OUT.json

Times `kdg.bench.torch_reference` (each algorithm written the way the
authors' code is: eager, one backward per domain, Python loops) on the same
network shape, the same synthetic batch and the same machine as the kdg
workers (`kdg.bench.run`), and writes the same JSON record per algorithm.

`torch_reference.py` ships inside the package, so that `kdg bench` runs from
an installed kdg. It has DomainBed's MNIST_CNN; the ResNets are built here, torchvision's layout, with BatchNorm frozen as
DomainBed's `freeze_bn` does (and as `kdg.models.build` does by default).

Each algorithm gets the bench's settings (`kdg.bench.suite.hparams`;
CorGrad runs with `tie_tol=0.0`, the reference's literal loop). "gga_eval"
times `GGA._measure`, what the reference evaluates once per trial. An
algorithm of kdg's registry that the reference does not implement is
recorded as `{"no_reference": True}` (the tables say "no reference").
"""

from __future__ import annotations

import importlib
import json
import os
import sys

from kdg.bench import measure, suite

def load_reference():
    """`kdg.bench.torch_reference`, imported when a worker needs it (it
    imports PyTorch, which the benchmark's parent never does)."""
    return importlib.import_module("kdg.bench.torch_reference")


# -- ResNets (torchvision's layout; keras-hub's ResNetBackbone is the same network) ----

def _resnet(depth):
    import torch.nn as nn

    class Basic(nn.Module):
        expansion = 1

        def __init__(self, cin, width, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.down = None
            if stride != 1 or cin != width:
                self.down = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False),
                                          nn.BatchNorm2d(width))

        def forward(self, x):
            out = self.bn2(self.conv2(nn.functional.relu(self.bn1(self.conv1(x)))))
            return nn.functional.relu(out + (x if self.down is None else self.down(x)))

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin, width, stride):
            super().__init__()
            out = width * 4
            self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(out)
            self.down = None
            if stride != 1 or cin != out:
                self.down = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False),
                                          nn.BatchNorm2d(out))

        def forward(self, x):
            relu = nn.functional.relu
            h = relu(self.bn1(self.conv1(x)))
            h = relu(self.bn2(self.conv2(h)))
            h = self.bn3(self.conv3(h))
            return relu(h + (x if self.down is None else self.down(x)))

    block, blocks = {18: (Basic, (2, 2, 2, 2)), 50: (Bottleneck, (3, 4, 6, 3))}[depth]

    class ResNet(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                nn.MaxPool2d(3, 2, 1))
            layers, cin = [], 64
            for i, (width, count) in enumerate(zip((64, 128, 256, 512), blocks)):
                for j in range(count):
                    layers.append(block(cin, width, 2 if (i > 0 and j == 0) else 1))
                    cin = width * block.expansion
            self.layers = nn.Sequential(*layers)
            self.n_outputs = cin

        def forward(self, x):
            return self.layers(self.stem(x)).mean(dim=(2, 3))

        def train(self, mode=True):
            # DomainBed's freeze_bn: BatchNorm stays in inference mode.
            super().train(mode)
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
            return self

    return ResNet


def build_network(config, ref):
    import torch
    import torch.nn as nn

    torch.manual_seed(int(config["seed"]))
    size, channels = int(config["image_size"]), int(config["channels"])
    classes = int(config["num_classes"])
    model = config["model"]
    if model == "mnist_cnn":
        return ref.mnist_cnn(input_shape=(size, size, channels), num_classes=classes)
    if model == "mlp":  # DomainBed's MLP (width 256, depth 3), as kdg.models.build's
        return ref.mlp(size * size * channels, classes, hidden=(256, 256, 256))
    if model in ("resnet18", "resnet50"):
        features = _resnet(int(model[len("resnet"):]))(channels)
        return ref.Classifier(features, nn.Linear(features.n_outputs, classes))
    raise ValueError(f"The PyTorch reference has no network for {model!r}; "
                     "it has mnist_cnn, mlp, resnet18 and resnet50.")


def make_algorithm(name, config, network, ref):
    """The reference's `name` ("gga_eval": its GGA, whose `_measure` is timed)."""
    name = "gga" if name == "gga_eval" else name
    return ref.make_algorithm(name, network, suite.hparams(name, config, reference=True))


def has_reference(name, ref):
    """Whether the PyTorch reference implements `name` (a registry name)."""
    return ("gga" if name == "gga_eval" else name) in ref.ALGORITHMS


def prepare(name, config, x, y, ref):
    """Build `name` around a fresh network; its step, returning the loss."""
    import torch

    network = build_network(config, ref)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    network.to(device)
    algo = make_algorithm(name, config, network, ref)
    xt = torch.as_tensor(x, device=device)
    if config["model"] == "mlp":
        xt = xt.reshape(xt.shape[0], xt.shape[1], -1)  # (D, B, features)
    yt = torch.as_tensor(y, device=device).long()
    if name == "gga_eval":
        network.train()
        return network, lambda: float(algo._measure(xt, yt)[1])
    return network, lambda: float(algo.update(xt, yt)["loss"])


def run(config):
    import numpy as np
    import torch

    ref = load_reference()
    x, y = measure.make_batch(int(config["domains"]), int(config["batch"]),
                              int(config["image_size"]), int(config["channels"]),
                              int(config["num_classes"]), int(config["seed"]))
    x = np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3))  # channels first
    names = suite.timed(config["algorithms"])
    gpu = torch.cuda.is_available()
    result = {
        "runner": "reference",
        "backend": "torch (plain)",
        "device": "gpu" if gpu else "cpu",
        "device_name": (torch.cuda.get_device_name(0) if gpu
                        else f"CPU, {torch.get_num_threads()} threads"),
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
        "memory_measured": measure.memory_supported(),
        "load_before": os.getloadavg()[0],
    }
    if config.get("framework_warmup", True):
        # PyTorch's one-time start-up is not any algorithm's cost.
        _, step = prepare("erm", config, x, y, ref)
        step(), step()
    networks = {}

    def make_step(name):
        networks[name], step = prepare(name, config, x, y, ref)
        return step

    missing = [n for n in names if not has_reference(n, ref)]
    present = [n for n in names if n not in missing]
    result["algorithms"] = measure.time_algorithms(present, make_step, config,
                                                     backend="torch") if present else {}
    result["algorithms"].update({n: {"algorithm": n, "no_reference": True} for n in missing})
    if "gga" in result["algorithms"]:
        result["algorithms"]["gga"]["trials"] = int(config["gga_trials"])
    network = next(iter(networks.values())) if networks else build_network(config, ref)
    result["params"] = sum(p.numel() for p in network.parameters() if p.requires_grad)
    result["param_mb"] = result["params"] * 4 / 2 ** 20
    result["load_after"] = os.getloadavg()[0]
    return result


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        raise SystemExit("usage: python -m kdg.bench.reference CONFIG.json OUT.json")
    with open(argv[0]) as f:
        config = json.load(f)
    result = run(config)
    with open(argv[1], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
