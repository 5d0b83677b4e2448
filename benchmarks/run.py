"""Run kdg's benchmark without the `kdg` command line (for use outside CI).

    python benchmarks/run.py                 # what benchmarks/RESULTS.md holds
    python benchmarks/run.py --quick         # the smoke test
    python benchmarks/run.py --model resnet18 --backend jax --repeats 5

Takes the options of `kdg bench` (see `python benchmarks/run.py --help`).
With no options it produces benchmarks/RESULTS.md: the small CNN (DomainBed's
MNIST_CNN on 28x28 images) and ResNet-18 at 32x32, D=3 domains x B=32, on
JAX, TensorFlow and PyTorch and the plain PyTorch reference, writing the
tables into RESULTS.md (the text around them is kept) and the raw numbers
into benchmarks/results.json.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # a checkout works without installing kdg

from kdg.bench.cli import bench  # noqa: E402

FULL = ["--model", "mnist_cnn", "--model", "resnet18",
        "--results", str(HERE / "RESULTS.md"), "--json", str(HERE / "results.json")]

if __name__ == "__main__":
    args = sys.argv[1:] or FULL
    command = " ".join(["python benchmarks/run.py"] + sys.argv[1:])
    if not sys.argv[1:]:
        command += "  (= " + " ".join(a.replace(str(HERE.parent) + "/", "") for a in FULL) + ")"
    bench.main(args=args, prog_name="python benchmarks/run.py", obj={"command": command})
