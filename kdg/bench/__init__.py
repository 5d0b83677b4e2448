"""`kdg bench`: what each algorithm's training step costs on each backend.

For every algorithm of kdg's registry (`kdg.algorithms.ALGORITHMS`; GGA
inside its annealing window), on JAX, TensorFlow and PyTorch, and for a
plain PyTorch implementation of each algorithm written the way DomainBed or
the authors' code writes it (`kdg.bench.torch_reference`; "no reference"
where it has none): compile time, the median step time with its spread,
ratios to ERM and to the reference, and peak memory.

- `kdg.bench.suite`: the parent process; runs every (scenario, runner) in
  its own subprocess, one at a time (`run_suite`, `scenario`); the bench's
  settings of the algorithms that need any (`SETTINGS`, by registry name);
- `kdg.bench.run`: the worker for one Keras backend;
- `kdg.bench.reference`: the worker for the PyTorch reference;
- `kdg.bench.torch_reference`: the PyTorch reference itself (plain PyTorch,
  no Keras; also an independent implementation the tests check kdg against);
- `kdg.bench.measure`: timing, memory and machine helpers;
- `kdg.bench.tables`: markdown tables, the targets, `problems` (the smoke
  test's check);
- `kdg.bench.cli`: the `kdg bench` command.

Importing this package imports no Keras backend (`scenario` reads the
registry, which imports Keras; the parent never computes with it).

    from kdg.bench import run_suite, scenario, markdown
    results = run_suite([scenario("mnist_cnn", quick=True)])
    print(markdown(results))
"""

from kdg.bench.suite import (DEFAULT_RUNNERS, MODELS, RUNNERS, SETTINGS, default_algorithms,
                             run_suite, scenario)
from kdg.bench.tables import markdown, problems, write_results

__all__ = [
    "DEFAULT_RUNNERS",
    "MODELS",
    "RUNNERS",
    "SETTINGS",
    "default_algorithms",
    "markdown",
    "problems",
    "run_suite",
    "scenario",
    "write_results",
]
