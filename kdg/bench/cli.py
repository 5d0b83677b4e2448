"""`kdg bench`: the click command (registered by `kdg.cli`).

It imports no Keras backend itself: every backend runs in its own
subprocess (see `kdg.bench.suite`).
"""

from __future__ import annotations

import json
import shlex
import sys

import click

from kdg.bench import suite, tables


def _command():
    """The command line that is running, for the results' header."""
    obj = click.get_current_context().obj
    if isinstance(obj, dict) and obj.get("command"):
        return obj["command"]
    args = sys.argv[1:]
    if "bench" in args:
        args = args[args.index("bench") + 1:]
    return " ".join(["kdg bench"] + [shlex.quote(a) for a in args])


def _write(results, json_path, results_path):
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=1)
    if results_path:
        tables.write_results(results_path, results)
    click.echo(tables.markdown(results))


@click.command(name="bench")
@click.option("--quick", is_flag=True,
              help="CI smoke test: tiny images and batches, few repeats, every algorithm on "
                   "every runner, the runners side by side on one core each; the numbers "
                   "are not benchmarks.")
@click.option("--model", "models", multiple=True, type=click.Choice(list(suite.MODELS)),
              help="Network(s) to time (repeatable; default mnist_cnn).")
@click.option("--backend", "runners", multiple=True, type=click.Choice(list(suite.RUNNERS)),
              help="Runner(s): a Keras backend, tensorflow-xla, or the PyTorch 'reference' "
                   "(repeatable; default jax, tensorflow, torch, reference).")
@click.option("--algorithm", "algorithms", multiple=True,
              help="Algorithm(s) to time, by registry name (repeatable; default every "
                   "algorithm of kdg.algorithms.ALGORITHMS). gga_eval, one GGA evaluation "
                   "(the D per-domain passes alone), comes with gga and can be chosen alone.")
@click.option("--domains", type=int, default=3, show_default=True, help="D, training domains.")
@click.option("--batch", type=int, default=32, show_default=True, help="B, examples per domain.")
@click.option("--image-size", type=int, default=None,
              help="Image side (default: 28 for mnist_cnn, 32 for the ResNets).")
@click.option("--repeats", type=int, default=10, show_default=True,
              help="Timed steps per algorithm, after the warm-up.")
@click.option("--warmup", type=int, default=2, show_default=True,
              help="Untimed steps after the first (compiling) one.")
@click.option("--trials", type=int, default=8, show_default=True,
              help="GGA's trials per step inside its window.")
@click.option("--gga-repeats", type=int, default=3, show_default=True,
              help="Timed GGA steps.")
@click.option("--compiles", type=int, default=1, show_default=True,
              help="Build each algorithm's model this many times and report the median "
                   "compile time (compile times vary from one build to the next).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the raw results as JSON here.")
@click.option("--results", "results_path", type=click.Path(dir_okay=False), default=None,
              help="Write the markdown tables into this file (e.g. benchmarks/RESULTS.md), "
                   "keeping the text outside the generated block.")
@click.option("--from-json", "from_json", multiple=True,
              type=click.Path(exists=True, dir_okay=False),
              help="Run nothing: render the results that earlier runs saved with --json "
                   "(repeatable: their scenarios are put one after the other).")
@click.option("--threads", type=int, default=None,
              help="Run every runner on this many cores (default: all; --quick: 1).")
@click.option("--timeout", type=int, default=3600, show_default=True,
              help="Seconds allowed to each runner's process.")
def bench(quick, models, runners, algorithms, domains, batch, image_size, repeats, warmup,
          trials, gga_repeats, compiles, json_path, results_path, from_json, threads, timeout):
    """Time every algorithm's training step on every backend and against a
    plain PyTorch implementation written the way the reference code is.

    \b
    For each algorithm of kdg's registry (GGA inside its annealing window;
    a new algorithm is timed with its defaults): compile time, the median step time and its spread,
    the ratio to ERM on the same backend and to the reference, and peak
    memory. Each backend runs in its own process, one after the other.

    \b
    Examples:
      kdg bench                                  # small CNN, 28x28, D=3, B=32
      kdg bench --model resnet18 --backend jax   # ResNet-18 at 32x32
      kdg bench --quick                          # the CI smoke test
      kdg bench --model mnist_cnn --model resnet18 --results benchmarks/RESULTS.md
      kdg bench --from-json cnn.json --from-json resnet.json --results benchmarks/RESULTS.md
    """
    if from_json:
        try:
            runs = []
            for path in from_json:
                with open(path) as f:
                    runs.append(json.load(f))
            results = tables.merge(runs)
        except (ValueError, KeyError) as error:
            raise click.UsageError(f"cannot render {', '.join(from_json)}: {error}") from None
        _write(results, json_path, results_path)
        return
    try:
        scenarios = [
            suite.scenario(model, image_size=image_size, domains=domains, batch=batch,
                           algorithms=algorithms or None, repeats=repeats,
                           warmup=warmup, gga_trials=trials, gga_repeats=gga_repeats,
                           compiles=compiles, quick=quick)
            for model in (models or ("mnist_cnn",))
        ]
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    log = lambda message: click.echo(message, err=True)  # noqa: E731
    command = _command()
    if quick and threads is None:
        threads = 1  # a smoke test: robust to a busy CI machine, fast to start
    results = suite.run_suite(scenarios, runners or suite.DEFAULT_RUNNERS, threads=threads,
                              parallel=quick, timeout=timeout, command=command, log=log)
    results["quick"] = quick
    _write(results, json_path, results_path)
    failed = suite.failures(results)
    if failed:
        for model, runner, _ in failed:
            click.echo(f"error: {model} on {runner} failed (see its section above)", err=True)
        sys.exit(1)
