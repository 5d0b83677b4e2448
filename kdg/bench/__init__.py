"""`kdg bench`: what each algorithm's training step costs on each backend.

For ERM, Fish, CorGrad, GGA-L and GGA inside its annealing window, on JAX,
TensorFlow and PyTorch, and for a plain PyTorch implementation of each
algorithm written the way the reference code is
(`kdg.bench.torch_reference`): compile time, the median step time with its spread,
ratios to ERM and to the reference, and peak memory.

- `kdg.bench.suite`: the parent process; runs every (scenario, runner) in
  its own subprocess, one at a time (`run_suite`, `scenario`);
- `kdg.bench.run`: the worker for one Keras backend;
- `kdg.bench.reference`: the worker for the PyTorch reference;
- `kdg.bench.torch_reference`: the PyTorch reference itself (plain PyTorch,
  no Keras; also an independent implementation the tests check kdg against);
- `kdg.bench.measure`: timing, memory and machine helpers;
- `kdg.bench.tables`: markdown tables, the targets, `problems` (the smoke
  test's check);
- `kdg.bench.cli`: the `kdg bench` command.

Importing this package imports no Keras backend.

    from kdg.bench import run_suite, scenario, markdown
    results = run_suite([scenario("mnist_cnn", quick=True)])
    print(markdown(results))
"""

from kdg.bench.tables import markdown, problems, write_results
from kdg.bench.suite import ALGORITHMS, DEFAULT_RUNNERS, MODELS, RUNNERS, run_suite, scenario

__all__ = [
    "ALGORITHMS",
    "DEFAULT_RUNNERS",
    "MODELS",
    "RUNNERS",
    "markdown",
    "problems",
    "run_suite",
    "scenario",
    "write_results",
]
