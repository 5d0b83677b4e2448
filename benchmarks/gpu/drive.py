"""The GPU run's parts, inside one time budget (run by benchmarks/gpu/run.sh).

    python benchmarks/gpu/drive.py --out OUT [--small] [--budget 450]

1. check: one step of every algorithm on the GPU against the same step on
   the CPU, on JAX and PyTorch (`check_steps.py`, one process per backend).
2. bench: `kdg bench`'s workers (`kdg.bench.suite.run_suite`) for ResNet-50
   at 224x224, D=3 x B=32, on the PyTorch reference, PyTorch and JAX, one
   process per (runner, group of algorithms): the groups in order of what the
   issue's targets need (ERM, Fish, CorGrad, GGA-L first, then the others), so
   that a time limit cuts the least needed ones, and a runner that fails or
   runs out of time loses one group only.
3. gga: GGA inside its window with more trials, beside ERM and one GGA
   evaluation in the same process: trials per second and the cost of a trial.

Every part must end by its share of the budget (`ENDS`), and what one
leaves unused goes to the next; a subprocess that overruns is killed and recorded
as such. The files under OUT are rewritten after every step, so that
whatever stops the run keeps what was measured before:

    check_steps.json, bench.json, gga.json (raw), SUMMARY.md (the tables).

`--small` is the CPU dry run: the small CNN at 28x28, D=3 x B=8, a few
steps and algorithms, CPU against CPU, no GPU required.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from kdg.bench import suite, tables  # noqa: E402

#: when each part must end, as a share of the budget (what a part leaves
#: unused goes to the next); the gga part takes what is left
ENDS = {"check": 0.2, "bench": 0.7}
#: the bench's groups, in order: what the issue's targets compare first
CORE = ("erm", "fish", "corgrad", "ggal")
RUNNERS = ("reference", "torch", "jax")
#: --small's algorithms (bench, check): the core, one of the others, GGA
SMALL = ("erm", "fish", "corgrad", "ggal", "mixup", "gga")
SMALL_CHECK = ("erm", "corgrad", "gga", "mixstyle")
#: seconds kept free at the end for the summary
RESERVE = 10


class Clock:
    def __init__(self, budget):
        self.start = time.perf_counter()
        self.budget = budget

    def elapsed(self):
        return time.perf_counter() - self.start

    def left(self):
        return self.budget - RESERVE - self.elapsed()


def log(message):
    print(f"[drive {time.strftime('%H:%M:%S')}] {message}", flush=True)


def write_json(path, data):
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


# -- part 1 ---------------------------------------------------------------------------

def part_check(args, clock, out, summary):
    results = {}
    devices = "cpu,cpu" if args.small else "gpu,cpu"
    end = ENDS["check"] * args.budget
    for backend in ("torch", "jax"):  # PyTorch first: eager, seconds
        seconds = end - clock.elapsed()
        if backend == "torch":
            seconds *= 0.4
        if seconds < 5:
            results[backend] = {"error": "no time left"}
            continue
        path = Path(args.scratch) / f"check_{backend}.json"
        cmd = [sys.executable, str(HERE / "check_steps.py"), "--devices", devices,
               "--out", str(path), "--deadline", str(max(seconds - 15, 1))]
        for name in args.check_algorithms or ():
            cmd += ["--algorithm", name]
        log(f"check on {backend}: {devices}, {seconds:.0f} s at most")
        status = run(cmd, dict(os.environ, KERAS_BACKEND=backend), seconds)
        result = json.loads(path.read_text()) if path.exists() else {}
        if status:
            result["status"] = status
        results[backend] = result
        write_json(out / "check_steps.json", results)
        summary.add("check", backend, check_markdown(backend, result))
    return results


def check_markdown(backend, result):
    sys.path.insert(0, str(HERE))
    import check_steps

    try:
        text = check_steps.markdown(result) if result.get("algorithms") else \
            f"### One step on two devices: {backend}\n\nno result\n"
    except Exception as error:  # a table that cannot render must not lose the JSON
        text = (f"### One step on two devices: {backend}\n\n(table failed: "
                f"{type(error).__name__}: {error}; see check_steps.json)\n")
    if result.get("status"):
        text += f"\n{backend}: {result['status']}\n"
    return text


def run(cmd, env, seconds):
    """Run cmd with its output passed through; '' or what went wrong."""
    try:
        proc = subprocess.run(cmd, env=env, timeout=seconds)
    except subprocess.TimeoutExpired:
        return f"stopped after {seconds:.0f} s (time guard)"
    return "" if proc.returncode == 0 else f"exit status {proc.returncode}"


# -- parts 2 and 3 ----------------------------------------------------------------------

def scenario(args, algorithms, **extra):
    if args.small:
        config = suite.scenario("mnist_cnn", domains=3, batch=4, algorithms=algorithms,
                                repeats=2, warmup=1, gga_repeats=2, **extra)
    else:
        config = suite.scenario("resnet50", image_size=224, domains=3, batch=32,
                                algorithms=algorithms, repeats=args.repeats, warmup=2,
                                gga_repeats=3, **extra)
    # every process pays its backend's start-up in its first build; one
    # extra ERM compile per process (JAX: most of a minute) is not affordable
    config.update(framework_warmup=False, structure=False)
    return config


def merged(groups):
    """One scenario from several (runner, group) runs of the same model:
    each runner's algorithms together (the first record of one wins)."""
    config, runs, notes = None, {}, []
    for group_config, runner, record in groups:
        if config is None:
            config = dict(group_config, algorithms=[], labels={})
        for name in group_config["algorithms"]:
            if name not in config["algorithms"]:
                config["algorithms"].append(name)
        config["labels"].update(group_config["labels"])
        if "error" in record:
            notes.append(f"{runner}, {', '.join(group_config['algorithms'])}: "
                         f"{record['error'].splitlines()[0]}")
            runs.setdefault(runner, None)
            continue
        if runs.get(runner) is None:
            runs[runner] = dict(record, algorithms=dict(record["algorithms"]))
        else:
            for name, alg in record["algorithms"].items():
                runs[runner]["algorithms"].setdefault(name, alg)
    runs = {r: (v if v is not None else {"runner": r, "error": "every group failed"})
            for r, v in runs.items()}
    return {"config": config, "runs": runs}, notes


def bench_groups(args, names):
    """[(runner, algorithms)] in the order they run: the core algorithms on
    every runner, then the others; JAX in chunks of `--jax-chunk`."""
    core = [n for n in CORE if n in names]
    rest = [n for n in names if n not in core]
    out = []
    for group in (core, rest):
        for runner in args.runners:
            size = args.jax_chunk if runner == "jax" else len(group)
            out += [(runner, group[i:i + size]) for i in range(0, len(group), size or 1)]
    return out


def part_bench(args, clock, out, summary, name, groups, end, header, erm=None, **extra):
    """Run (runner, algorithms) groups until `end` (seconds from the start);
    write the merged results after each. `erm`: {runner: ERM's record} to
    show beside the runs (GGA's costs are counted from ERM's step)."""
    done = []
    results = header()
    for runner, algorithms in groups:
        seconds = min(end - clock.elapsed(), clock.left())
        if seconds < args.min_group_s:
            log(f"{name}: {runner} {', '.join(algorithms)} skipped: {seconds:.0f} s left")
            results.setdefault("skipped", []).append(f"{runner}: {', '.join(algorithms)}")
            continue
        config = scenario(args, algorithms, **extra)
        log(f"{name}: {runner} {', '.join(algorithms)}, {seconds:.0f} s at most")
        record = suite.run_suite([config], [runner], timeout=int(seconds),
                                 command=f"benchmarks/gpu/drive.py ({name})", log=log)
        entry = record["scenarios"][0]
        done.append((entry["config"], runner, entry["runs"][runner]))
        results["machine"] = record["machine"]
        results["groups"] = [{"runner": r, "algorithms": c["algorithms"],
                              **({"error": v["error"]} if "error" in v else {})}
                             for c, r, v in done]
        scenario_entry, notes = merged(done)
        for runner, run in scenario_entry["runs"].items():
            if erm and erm.get(runner) and "error" not in run and "erm" not in run["algorithms"]:
                run["algorithms"]["erm"] = dict(erm[runner], from_bench=True)
                scenario_entry["config"]["labels"].setdefault("erm", "ERM")
        results["scenarios"] = [scenario_entry]
        results["notes"] = notes
        results["wall_s"] = sum(v.get("wall_s", 0) for _, _, v in done)
        write_json(out / f"{name}.json", results)
        summary.add(name, "", render(name, results))
    return results


def erm_records(bench):
    """{runner: ERM's record} of the bench's results (None: none)."""
    if not bench or not bench.get("scenarios"):
        return None
    runs = bench["scenarios"][0]["runs"]
    return {r: run["algorithms"]["erm"] for r, run in runs.items()
            if "error" not in run and "erm" in run.get("algorithms", {})}


def header():
    return {"kdg_bench": 1, "command": "benchmarks/gpu/run.sh", "parallel": False,
            "threads": None, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_before": os.getloadavg()[0], "load_after": os.getloadavg()[0]}


def render(name, results):
    title = {"bench": "## Part 2: kdg bench", "gga": "## Part 3: GGA inside its window"}[name]
    lines = [title, ""]
    try:
        lines.append(tables.markdown(results))
    except Exception as error:  # a table that cannot render must not lose the JSON
        lines.append(f"(tables failed to render: {type(error).__name__}: {error}; see {name}.json)")
    if name == "gga":
        lines += ["", "| runner | trials | GGA step ms | trials/s | one evaluation ms | "
                  "per trial / evaluation |", "|---|---|---|---|---|---|"]
        for runner, run in results["scenarios"][0]["runs"].items():
            costs = tables.gga_costs(run) if "error" not in run else None
            if costs:
                lines.append(f"| {runner} | {costs['trials']} | {costs['step_s'] * 1e3:.1f} | "
                             f"{costs['trials'] / costs['step_s']:.1f} | "
                             f"{costs['eval_s'] * 1e3:.1f} | {costs['trial_over_eval']:.2f}x |")
            else:
                lines.append(f"| {runner} | failed or incomplete | | | | |")
    for note in results.get("notes", []):
        lines.append(f"- failed: {note}")
    for skipped in results.get("skipped", []):
        lines.append(f"- not run (time): {skipped}")
    return "\n".join(lines) + "\n"


class Summary:
    """SUMMARY.md, rewritten whenever a part adds to it."""

    def __init__(self, path, head):
        self.path, self.head, self.sections = path, head, {}
        self.write()

    def add(self, part, key, text):
        self.sections[(part, key)] = text
        self.write()

    def write(self):
        order = {"check": 0, "bench": 1, "gga": 2}
        body = [self.sections[k] for k in sorted(self.sections, key=lambda k: (order[k[0]], k[1]))]
        tmp = Path(f"{self.path}.tmp")
        tmp.write_text(self.head + "\n" + "\n".join(body))
        os.replace(tmp, self.path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--small", action="store_true", help="the CPU dry run")
    parser.add_argument("--budget", type=float, default=450,
                        help="seconds for all the parts together")
    parser.add_argument("--parts", default="check,bench,gga")
    parser.add_argument("--runners", default=",".join(RUNNERS))
    parser.add_argument("--algorithms", default=None,
                        help="comma-separated registry names for the bench (default: all)")
    parser.add_argument("--check-algorithms", default=None,
                        help="comma-separated registry names for the check (default: all)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per algorithm")
    parser.add_argument("--gga-trials", type=int, default=16)
    parser.add_argument("--jax-chunk", type=int, default=2,
                        help="algorithms per JAX process (a timeout loses one process)")
    parser.add_argument("--min-group-s", type=float, default=30,
                        help="a group is not started with less time than this left")
    args = parser.parse_args(argv)
    # This process imports Keras (through kdg's registry) but computes
    # nothing; a machine without TensorFlow needs a backend named first.
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args.scratch = tempfile.mkdtemp(prefix="kdg-gpu-")
    clock = Clock(args.budget)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.runners = [r for r in args.runners.split(",") if r]
    args.check_algorithms = args.check_algorithms.split(",") if args.check_algorithms else None
    parts = set(args.parts.split(","))
    model = "mnist_cnn" if args.small else "resnet50"
    if args.algorithms:
        names = args.algorithms.split(",")
    elif args.small:
        names = list(SMALL)
    else:
        names = list(suite.default_algorithms(model))
    if args.small and args.check_algorithms is None:
        args.check_algorithms = list(SMALL_CHECK)
    if args.small and args.gga_trials == parser.get_default("gga_trials"):
        args.gga_trials = 4
    head = (f"# kdg on {'the CPU (dry run, --small)' if args.small else 'a GPU'}\n\n"
            f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; budget {args.budget:.0f} s; "
            f"see log.txt for the environment and every step.\n")
    summary = Summary(out / "SUMMARY.md", head)
    bench = None
    bench_names = [n for n in names if n != "gga" or "gga" not in parts]
    for part in ("check", "bench", "gga"):
        began = clock.elapsed()
        try:
            if part not in parts:
                continue
            if part == "check":
                part_check(args, clock, out, summary)
            elif part == "bench":
                bench = part_bench(args, clock, out, summary, "bench",
                                   bench_groups(args, bench_names),
                                   ENDS["bench"] * args.budget, header)
            else:
                # GGA and one evaluation; ERM's step (for the cost of a trial)
                # is the bench's, not compiled again
                erm = erm_records(bench) or {}
                groups = [(r, ["gga"] if r in erm else ["erm", "gga"]) for r in args.runners]
                part_bench(args, clock, out, summary, "gga", groups, args.budget - RESERVE,
                           header, erm=erm, gga_trials=args.gga_trials)
        except Exception as error:  # one part's failure must not lose the others
            import traceback

            traceback.print_exc()
            summary.add(part, "error", f"## {part} failed\n\n{type(error).__name__}: {error}\n")
        log(f"part {part}: {clock.elapsed() - began:.0f} s; {clock.elapsed():.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
