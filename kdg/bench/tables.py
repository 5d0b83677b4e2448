"""Tables of `kdg bench` results, and the checks against the targets.

`markdown(results)` renders what `kdg.bench.suite.run_suite` returns;
`write_results(path, results)` puts it into a file (benchmarks/RESULTS.md)
between two marker lines, keeping whatever is written around them (the
analysis), so that a new run replaces only the numbers.
`problems(results)` lists what is missing or not a positive finite number:
the smoke test's assertion.
"""

from __future__ import annotations

import math
from pathlib import Path

from kdg.bench.suite import SETTINGS, label, timed

BEGIN = "<!-- kdg bench: generated, begin -->"
END = "<!-- kdg bench: generated, end -->"
#: a cell of an algorithm the PyTorch reference does not implement
NO_REFERENCE = "no reference"
REFERENCE_TARGET = 1.3
TRIAL_TARGET = 1.1
COMPILE_TARGET = 2.0
PROJECTED_TRIALS = 250
KDG_RUNNERS = ("jax", "tensorflow", "tensorflow-xla", "torch")


# -- numbers ---------------------------------------------------------------------------

def _ok(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


def _ms(seconds):
    if not _ok(seconds):
        return "–"
    ms = seconds * 1000
    return f"{ms:.3g}" if ms < 1000 else f"{ms:,.0f}"


def _x(ratio, digits=2):
    return f"{ratio:.{digits}f}x" if _ok(ratio) else "–"


def _s(seconds):
    return f"{seconds:.1f}" if _ok(seconds) else "–"


def _mb(value):
    return f"{value:.0f}" if _ok(value) else "–"


def _mark(passed):
    return "–" if passed is None else ("yes" if passed else "**no**")


def _alg(run, name):
    """`name`'s timing record in a runner's record; None when there is none
    (a failed runner, or no reference for it)."""
    if not run or "error" in run:
        return None
    record = run.get("algorithms", {}).get(name)
    return None if record is None or record.get("no_reference") else record


def _missing_reference(run, name):
    return bool(run and run.get("algorithms", {}).get(name, {}).get("no_reference"))


def labels(entry):
    """{name: row label} of a scenario: those its configuration carries."""
    saved = entry["config"].get("labels", {})
    return {n: saved.get(n) or label(n, {}) for n in _names(entry)}


def step(run, name):
    record = _alg(run, name)
    return record["median_s"] if record else None


def ratio(a, b):
    return a / b if _ok(a) and _ok(b) and b > 0 else None


def gga_costs(run):
    """GGA inside its window, from a runner's record: the step, one
    evaluation, the cost per trial in the search loop (the step less the
    base ERM step and the search's first evaluation, over the trials), and
    the ratios the target is about."""
    gga, one, erm = _alg(run, "gga"), _alg(run, "gga_eval"), _alg(run, "erm")
    if not (gga and one and erm):
        return None
    trials = gga["trials"]
    step_s, eval_s, erm_s = gga["median_s"], one["median_s"], erm["median_s"]
    per_trial = (step_s - erm_s - eval_s) / trials
    fixed = step_s - trials * per_trial
    return {
        "trials": trials,
        "step_s": step_s,
        "eval_s": eval_s,
        "per_trial_s": per_trial,
        "step_over_t_evals": step_s / (trials * eval_s),
        "trial_over_eval": per_trial / eval_s,
        "projected_ratio": (fixed + PROJECTED_TRIALS * per_trial) / (PROJECTED_TRIALS * eval_s),
        "structure": gga.get("structure"),
    }


# -- checks -------------------------------------------------------------------------------

def problems(results, algorithms=None, runners=None):
    """Everything missing or not positive and finite, as messages; [] when
    every scenario has every algorithm (default: those it was configured
    with) on every runner with usable numbers. An algorithm the PyTorch
    reference does not implement is recorded as such, not a problem."""
    out = []
    scenarios = results.get("scenarios") or []
    if not scenarios:
        return ["no scenarios"]
    for entry in scenarios:
        model = entry["config"]["model"]
        runs = entry["runs"]
        for runner in runners or list(runs):
            run = runs.get(runner)
            if run is None:
                out.append(f"{model}: runner {runner} missing")
                continue
            if "error" in run:
                out.append(f"{model}: runner {runner} failed: {run['error'][-300:]}")
                continue
            for name in timed(algorithms or entry["config"]["algorithms"]):
                record = run["algorithms"].get(name)
                if record is None:
                    out.append(f"{model}/{runner}: {name} missing")
                    continue
                if record.get("no_reference") and runner == "reference":
                    continue
                for key in ("median_s", "q1_s", "q3_s", "min_s", "max_s", "first_step_s"):
                    if not (_ok(record.get(key)) and record[key] > 0):
                        out.append(f"{model}/{runner}/{name}: {key}={record.get(key)!r}")
                if not (_ok(record.get("compile_s")) and record["compile_s"] >= 0):
                    out.append(f"{model}/{runner}/{name}: compile_s={record.get('compile_s')!r}")
                if run.get("memory_measured") and not (
                        _ok(record.get("peak_rss_mb")) and record["peak_rss_mb"] > 0):
                    out.append(f"{model}/{runner}/{name}: peak_rss_mb missing")
                if not record.get("finite", False):
                    out.append(f"{model}/{runner}/{name}: the loss is not finite")
    return out


def _device_memory(runs, ok, names, labelled):
    """The accelerator's peak memory table (`kdg.memory`), for the runners
    that trained on one; nothing when none did."""
    on_device = [r for r in ok if any(_ok(rec.get("device_peak_mb"))
                                      for rec in runs[r].get("algorithms", {}).values())]
    if not on_device:
        return []
    rows = []
    for name in names:
        row = [labelled[name]]
        for r in on_device:
            rec, erm = _alg(runs[r], name), _alg(runs[r], "erm")
            if not rec or not _ok(rec.get("device_peak_mb")):
                row.append("–")
                continue
            cell = _mb(rec["device_peak_mb"]) + ("" if rec.get("device_peak_reset") else "*")
            if name != "erm" and erm and _ok(erm.get("device_peak_mb")):
                cell += f" ({_x(ratio(rec['device_peak_mb'], erm['device_peak_mb']))})"
            row.append(cell)
        rows.append(row)
    return ["\n**Peak accelerator memory during the timed steps, MB** (what the framework "
            "allocated on the device: torch.cuda.max_memory_allocated, JAX's "
            "peak_bytes_in_use, TensorFlow's get_memory_info peak; in brackets: the ratio to "
            "ERM's; *: the framework cannot reset its peak (JAX), so the figure is the "
            "process's peak up to the end of that algorithm's steps: compare ERM's with a run of "
            "one algorithm, --algorithm)\n", _table(["algorithm"] + on_device, rows)]


def targets(entry):
    """[(target, where, value, passed)] for one scenario (passed None: no
    verdict, reported only)."""
    runs = entry["runs"]
    model = entry["config"]["model"]
    kdg = [r for r in KDG_RUNNERS if r in runs and "error" not in runs[r]]
    ref = runs.get("reference") if "error" not in runs.get("reference", {"error": 1}) else None
    names, labelled = _names(entry), labels(entry)
    algorithms = [n for n in names if n in entry["config"]["algorithms"]]
    rows = []
    for name in algorithms:
        limit = SETTINGS.get(name, {}).get("erm_target")
        for runner in kdg if limit else ():
            value = ratio(step(runs[runner], name), step(runs[runner], "erm"))
            if value is not None:
                rows.append((f"{labelled[name]} step <= {limit}x ERM's", runner, _x(value),
                             value <= limit))
    if ref:
        for name in algorithms:
            if name == "erm":
                continue
            ref_ratio = ratio(step(ref, name), step(ref, "erm"))
            for runner in kdg:
                value = ratio(step(runs[runner], name), step(runs[runner], "erm"))
                if value is not None and ref_ratio is not None:
                    rows.append((f"{labelled[name]}: kdg's ratio to ERM <= the reference's",
                                 runner, f"{_x(value)} vs {_x(ref_ratio)}",
                                 value <= ref_ratio))
        for name in algorithms:
            times = {r: step(runs[r], name) for r in kdg if _ok(step(runs[r], name))}
            if not times or not _ok(step(ref, name)):
                continue
            best = min(times, key=times.get)
            value = times[best] / step(ref, name)
            limit = 1.0 if name == "ggal" else REFERENCE_TARGET
            rows.append((f"{labelled[name]}: fastest backend <= "
                         f"{'1.0x (faster)' if name == 'ggal' else f'{limit}x'} the reference",
                         best, _x(value), value < limit if name == "ggal" else value <= limit))
    for runner in kdg:
        costs = gga_costs(runs[runner])
        if costs:
            rows.append((f"GGA: cost per trial <= {TRIAL_TARGET}x one evaluation", runner,
                         _x(costs["trial_over_eval"]), costs["trial_over_eval"] <= TRIAL_TARGET))
            structure = costs["structure"]
            if structure:
                rows.append(("GGA: the search is one compiled loop", runner,
                             f"{structure['loops']} loop(s), {structure['convolutions']} convs "
                             f"at T={structure['trials']}, "
                             f"{structure['convolutions_with_one_trial']} at T=1",
                             structure["one_compiled_loop"]))
    if model.startswith("resnet"):
        for runner in kdg:
            erm, cor = _alg(runs[runner], "erm"), _alg(runs[runner], "corgrad")
            if erm and cor:
                value = ratio(cor["compile_s"], erm["compile_s"])
                passed = None if runner == "torch" else (value is not None
                                                         and value <= COMPILE_TARGET)
                measured = (f"{_s(cor['compile_s'])} s vs {_s(erm['compile_s'])} s = "
                             f"{_x(value)}")
                floor = _alg(runs[runner], "gga_eval")
                if floor:  # the D per-domain passes alone, no surgery, no optimizer
                    measured += (f" (the per-domain passes alone: {_s(floor['compile_s'])} s"
                                 f" = {_x(ratio(floor['compile_s'], erm['compile_s']))})")
                rows.append((f"CorGrad compile <= {COMPILE_TARGET}x ERM's ({model})", runner,
                             measured, passed))
    return rows


# -- markdown --------------------------------------------------------------------------------

def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _names(entry):
    return timed(entry["config"]["algorithms"])


def _blank(run, name):
    """The cell of an algorithm a runner has no time for."""
    return NO_REFERENCE if _missing_reference(run, name) else "–"


def _runners(entry):
    return [r for r in entry["runs"]]


def _versions(results):
    merged = {}
    for entry in results["scenarios"]:
        for run in entry["runs"].values():
            merged.update(run.get("versions", {}))
    return ", ".join(f"{k} {v}" for k, v in sorted(merged.items()))


def scenario_markdown(entry):
    config, runs = entry["config"], entry["runs"]
    names, runners, labelled = _names(entry), _runners(entry), labels(entry)
    ok = [r for r in runners if "error" not in runs[r]]
    size = config["image_size"]
    params = next((runs[r].get("params") for r in ok if runs[r].get("params")), None)
    out = [f"### {config['model']}, {size}x{size}x{config['channels']}, "
           f"D={config['domains']} domains x B={config['batch']}"
           + (f" ({params:,} trainable parameters)" if params else "")]
    out.append(f"\nRepeats: {config['repeats']} timed steps after {config['warmup']} warm-up "
               f"steps (GGA: {config['gga_repeats']} after {config['gga_warmup']}, "
               f"T={config['gga_trials']} trials per step)."
               + (f" Compile times: the median of {config['compiles']} builds of each model."
                  if config.get("compiles", 1) > 1 else ""))
    for r in runners:
        if "error" in runs[r]:
            out.append(f"\n**{r} failed:**\n\n```\n{runs[r]['error'][-1500:]}\n```")

    out.append("\n**Time per step, ms: median [interquartile range]**\n")
    rows = []
    for name in names:
        row = [labelled[name]]
        for r in ok:
            rec = _alg(runs[r], name)
            row.append(f"{_ms(rec['median_s'])} [{_ms(rec['q1_s'])}–{_ms(rec['q3_s'])}]"
                       if rec else _blank(runs[r], name))
        rows.append(row)
    out.append(_table(["algorithm"] + ok, rows))

    out.append("\n**Ratio to ERM on the same runner** (the reference's own ratio in its "
               "column)\n")
    rows = [[labelled[n]] + [_x(ratio(step(runs[r], n), step(runs[r], "erm")))
                             if _alg(runs[r], n) else _blank(runs[r], n) for r in ok]
            for n in names if n != "erm"]
    out.append(_table(["algorithm"] + ok, rows))

    if "reference" in ok:
        kdg = [r for r in ok if r != "reference"]
        out.append("\n**kdg's step / the PyTorch reference's step, same algorithm** "
                   "(below 1: kdg is faster)\n")
        rows = [[labelled[n]] + [_x(ratio(step(runs[r], n), step(runs["reference"], n)))
                                 if _alg(runs["reference"], n) else _blank(runs["reference"], n)
                                 for r in kdg] for n in names]
        out.append(_table(["algorithm"] + kdg, rows))

    out.append("\n**Compile time, s** (first step less a steady step; PyTorch is eager: "
               "first-call overhead; over several builds: the median [range]) **and its "
               "ratio to ERM's**\n")
    rows = []
    for name in names:
        row = [labelled[name]]
        for r in ok:
            rec, erm = _alg(runs[r], name), _alg(runs[r], "erm")
            if not (rec and erm):
                row.append("–")
                continue
            spread = rec.get("compiles_s") or []
            cell = _s(rec["compile_s"])
            if len(spread) > 1:
                cell += f" [{_s(min(spread))}–{_s(max(spread))}]"
            row.append(f"{cell} ({_x(ratio(rec['compile_s'], erm['compile_s']), 1)})")
        rows.append(row)
    out.append(_table(["algorithm"] + ok, rows))

    param_mb = next((runs[r].get("param_mb") for r in ok if runs[r].get("param_mb")), None)
    out.append("\n**Peak memory during the timed steps, MB over the process before the model "
               "was built** (resident set size; in brackets: the excess over ERM's, in copies "
               f"of the model's weights, {param_mb:.1f} MB)\n" if param_mb else
               "\n**Peak memory, MB over the process before the model was built**\n")
    rows = []
    for name in names:
        row = [labelled[name]]
        for r in ok:
            rec, erm = _alg(runs[r], name), _alg(runs[r], "erm")
            if not rec or not _ok(rec.get("peak_over_base_mb")):
                row.append("–")
                continue
            cell = _mb(rec["peak_over_base_mb"])
            if name != "erm" and erm and _ok(erm.get("peak_over_base_mb")) and param_mb:
                extra = (rec["peak_over_base_mb"] - erm["peak_over_base_mb"]) / param_mb
                cell += f" ({extra:+.1f})"
            row.append(cell)
        rows.append(row)
    out.append(_table(["algorithm"] + ok, rows))
    out.extend(_device_memory(runs, ok, names, labelled))

    gga_rows = []
    for r in ok:
        costs = gga_costs(runs[r])
        if not costs:
            continue
        structure = costs["structure"]
        loop = "–"
        if structure:
            loop = (f"{structure['loops']} loop; {structure['convolutions']} convs "
                    f"(T=1: {structure['convolutions_with_one_trial']})")
        gga_rows.append([r, costs["trials"], _ms(costs["step_s"]), _ms(costs["eval_s"]),
                         _ms(costs["per_trial_s"]), _x(costs["step_over_t_evals"]),
                         _x(costs["trial_over_eval"]), _x(costs["projected_ratio"]), loop])
    if gga_rows:
        out.append("\n**GGA inside its window.** One evaluation = the per-domain gradients, "
                   "their minimum cosine and the loss, timed alone; per trial = (GGA step - "
                   "ERM step - one evaluation) / T; T=250 projects the step at the "
                   "reference's trial count.\n")
        out.append(_table(["runner", "T", "step ms", "one evaluation ms", "per trial ms",
                           "step / (T x evaluation)", "per trial / evaluation",
                           f"at T={PROJECTED_TRIALS}", "traced step"], gga_rows))

    rows = [[t, w, v, _mark(p)] for t, w, v, p in targets(entry)]
    if rows:
        out.append("\n**Targets**\n")
        out.append(_table(["target", "runner", "measured", "met"], rows))
    return "\n".join(out)


def markdown(results):
    """The results as markdown: the machine, the versions, the command, then
    per device (CPU, GPU) each scenario's tables and targets."""
    m = results["machine"]
    parts = results.get("parts") or [results]
    head = ["Produced by " + "; then ".join(
        f"`{part['command']}` on {part['started']} ({part.get('wall_s', 0) / 60:.1f} min)"
        for part in parts) + ".", ""]
    head += [
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, {m['os']}, "
        f"Python {m['python']}.",
        f"- Load average (1 min) before / after"
        f"{' (the highest of the runs)' if len(parts) > 1 else ''}: "
        f"{results.get('load_before', 0):.2f} / "
        f"{results.get('load_after', 0):.2f}.",
        f"- Versions: {_versions(results)}.",
    ]
    if results.get("threads"):
        head.append(f"- Every runner restricted to {results['threads']} core(s).")
    if results.get("parallel"):
        head.append("- **The runners ran side by side** (a smoke test): the times are not "
                    "benchmarks.")
    devices = {}
    for entry in results["scenarios"]:
        for runner, run in entry["runs"].items():
            if "error" not in run:
                devices.setdefault(run.get("device", "cpu"), set()).add(
                    f"{runner}: {run.get('device_name', '?')}")
    for kind in sorted(devices):
        head.append(f"- {kind.upper()} runners: " + "; ".join(sorted(devices[kind])) + ".")
    body = []
    for kind, title in (("cpu", "CPU"), ("gpu", "GPU")):
        body.append(f"\n## {title}\n")
        entries = [e for e in results["scenarios"]
                   if any(run.get("device", "cpu") == kind for run in e["runs"].values()
                          if "error" not in run)]
        if not entries:
            body.append(f"No {title} was available to this run: nothing was measured on one."
                        if kind == "gpu" else "Nothing was measured on a CPU.")
            continue
        for entry in entries:
            body.append(scenario_markdown(entry) + "\n")
    return "\n".join(head + body).rstrip() + "\n"


def merge(runs):
    """One results object from several `kdg bench` runs on the same machine
    (e.g. the small CNN on every runner, then ResNet-18 on some): their
    scenarios one after the other, each run's command kept."""
    runs = list(runs)
    if not runs:
        raise ValueError("nothing to merge")
    first = runs[0]
    for other in runs[1:]:
        if other["machine"] != first["machine"]:
            raise ValueError("kdg bench results from different machines cannot share a "
                             f"table: {first['machine']} vs {other['machine']}.")
    if len(runs) == 1:
        return first
    parts = [p for run in runs for p in (run.get("parts") or [run])]
    return dict(
        first,
        parts=[{k: p.get(k) for k in ("command", "started", "wall_s")} for p in parts],
        scenarios=[entry for run in runs for entry in run["scenarios"]],
        load_before=max(run.get("load_before", 0) for run in runs),
        load_after=max(run.get("load_after", 0) for run in runs),
        parallel=any(run.get("parallel") for run in runs),
        quick=any(run.get("quick") for run in runs),
        threads=first.get("threads") if len({r.get("threads") for r in runs}) == 1 else None,
    )


def write_results(path, results, title="# kdg benchmark results"):
    """Write the results' markdown into `path` between the marker lines,
    keeping the text around them; a new file gets a title."""
    path = Path(path)
    block = f"{BEGIN}\n{markdown(results)}{END}\n"
    if path.exists():
        text = path.read_text()
        if BEGIN in text and END in text:
            before = text[: text.index(BEGIN)]
            after = text[text.index(END) + len(END):].lstrip("\n")
            path.write_text(before + block + ("\n" + after if after else ""))
            return path
        path.write_text(text.rstrip() + "\n\n" + block)
        return path
    path.write_text(f"{title}\n\n{block}")
    return path


__all__ = ["gga_costs", "labels", "markdown", "merge", "problems", "targets", "write_results"]
