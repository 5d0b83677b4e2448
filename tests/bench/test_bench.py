"""`kdg bench`: the CI smoke test (`kdg bench --quick`: every registry
algorithm on this session's backend, and the PyTorch reference in the torch
session) and the arithmetic of its report.

These tests check the output's structure and the numbers' sanity (present,
positive, finite), never timings: they say nothing about speed.
"""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from kdg.bench import measure, suite, tables
from kdg.bench.tables import BEGIN, END

BACKEND = keras.backend.backend()


# -- the smoke test ------------------------------------------------------------------------

def test_quick_bench_covers_every_registry_algorithm(tmp_path):
    """`kdg bench --quick` on this session's backend (and, in the torch
    session, the PyTorch reference) times every algorithm of the registry:
    DomainBed's MLP, the cheapest model to compile. Compiling all of them
    takes minutes on JAX and TensorFlow, so there (where every algorithm's
    step is checked by its reference tests anyway) the bench times ERM, GGA
    and MTL (an algorithm with its own network) only; the torch session,
    the cheapest to compile, times them all."""
    from kdg.algorithms import ALGORITHMS

    runners = [BACKEND] + (["reference"] if BACKEND == "torch" else [])
    REGISTRY = ([n for n in ALGORITHMS if suite.runs_on(n, "mlp")] if BACKEND == "torch"
                else ["erm", "gga", "mtl"])
    assert "mixstyle" not in REGISTRY and len(REGISTRY) == len(ALGORITHMS) - 1 or BACKEND != "torch"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    args = ["--quick", "--model", "mlp", "--json", str(tmp_path / "results.json"),
            "--results", str(tmp_path / "RESULTS.md")]
    if BACKEND != "torch":
        for name in REGISTRY:
            args += ["--algorithm", name]
    for runner in runners:
        args += ["--backend", runner]
    proc = subprocess.run(
        [sys.executable, "-c", "from kdg.bench.cli import bench; bench()", *args],
        env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())

    assert tables.problems(results, runners=runners) == []
    (entry,) = results["scenarios"]
    assert entry["config"]["algorithms"] == list(REGISTRY)
    assert set(entry["runs"]) == set(runners)
    names = set(REGISTRY) | {"gga_eval"}
    for runner, run in entry["runs"].items():
        assert set(run["algorithms"]) == names, runner
        assert run["params"] == 65 * 256 + 2 * 257 * 256 + 257 * 3  # DomainBed's MLP, 3 classes
        for name, record in run["algorithms"].items():
            if record.get("no_reference"):
                assert runner == "reference", name
                continue
            for key in ("median_s", "q1_s", "q3_s", "min_s", "max_s", "first_step_s"):
                assert math.isfinite(record[key]) and record[key] > 0, (runner, name, key)
            assert record["min_s"] <= record["median_s"] <= record["max_s"]
            assert len(record["times_s"]) == record["n"]
            assert record["finite"], (runner, name)
        assert run["algorithms"]["gga"]["trials"] == entry["config"]["gga_trials"]
        costs = tables.gga_costs(run)
        assert math.isfinite(costs["per_trial_s"]) and costs["eval_s"] > 0

    text = (tmp_path / "RESULTS.md").read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    for heading in ("## CPU", "## GPU", "Time per step", "Ratio to ERM", "Compile time",
                    "Peak memory", "GGA inside its window"):
        assert heading in text
    for name in REGISTRY:  # a row per algorithm, under its label
        assert f"| {suite.label(name)} |" in text, name
    assert "| ERM |" in proc.stdout  # the tables are printed too


# -- the report's arithmetic, on made-up numbers ------------------------------------------

def _record(median, compile_s=1.0, peak=100.0, **extra):
    times = [median * 0.9, median, median * 1.1]
    return dict(measure.summarize(times), first_step_s=median + compile_s, compile_s=compile_s,
                base_rss_mb=1000.0, peak_rss_mb=1000.0 + peak, peak_over_base_mb=peak,
                loss_first=2.0, loss_last=1.9, finite=True, **extra)


def _run(medians, device="cpu", **extra):
    algorithms = {}
    for name, median in medians.items():
        more = {"trials": 4} if name == "gga" else {}
        algorithms[name] = _record(median, **more)
    return dict(runner="x", device=device, device_name="CPU", versions={"keras": "3"},
                memory_measured=True, params=1000, param_mb=4.0, algorithms=algorithms,
                **extra)


def _results(model="mnist_cnn"):
    config = suite.scenario(model, quick=True, algorithms=["erm", "fish", "corgrad", "ggal", "gga"])
    kdg = {"erm": 0.100, "fish": 0.110, "corgrad": 0.130, "ggal": 0.105, "gga_eval": 0.080,
           "gga": 0.100 + 0.080 + 4 * 0.084}
    ref = {"erm": 0.100, "fish": 0.120, "corgrad": 0.500, "ggal": 0.300, "gga_eval": 0.150,
           "gga": 1.0}
    return {"command": "kdg bench --quick", "started": "today", "wall_s": 60.0,
            "machine": measure.machine(), "load_before": 0.1, "load_after": 0.2,
            "scenarios": [{"config": config,
                           "runs": {"jax": _run(kdg), "reference": _run(ref)}}]}


def test_gga_costs():
    costs = tables.gga_costs(_run({"erm": 0.1, "gga_eval": 0.08, "gga": 0.1 + 0.08 + 4 * 0.084}))
    assert costs["per_trial_s"] == pytest.approx(0.084)
    assert costs["trial_over_eval"] == pytest.approx(1.05)
    assert costs["step_over_t_evals"] == pytest.approx((0.18 + 0.336) / 0.32)
    fixed = 0.18
    assert costs["projected_ratio"] == pytest.approx((fixed + 250 * 0.084) / (250 * 0.08))
    assert tables.gga_costs(_run({"erm": 0.1})) is None


def test_targets_verdicts():
    rows = {(t, w): (v, ok) for t, w, v, ok in tables.targets(_results()["scenarios"][0])}
    assert rows[("Fish step <= 1.15x ERM's", "jax")] == ("1.10x", True)
    assert rows[("CorGrad step <= 1.2x ERM's", "jax")][1] is False  # 1.30x
    assert rows[("GGA-L step <= 1.2x ERM's", "jax")][1] is True
    assert rows[("GGA-L: kdg's ratio to ERM <= the reference's", "jax")] == ("1.05x vs 3.00x",
                                                                              True)
    assert rows[("GGA: cost per trial <= 1.1x one evaluation", "jax")] == ("1.05x", True)
    assert rows[("GGA-L: fastest backend <= 1.0x (faster) the reference", "jax")][1] is True
    assert not any("compile" in t for t, _ in rows)  # only for the ResNets


def test_compile_target_on_resnets():
    results = _results("resnet18")
    runs = results["scenarios"][0]["runs"]
    runs["jax"]["algorithms"]["corgrad"]["compile_s"] = 2.5
    rows = {(t, w): (v, ok) for t, w, v, ok in tables.targets(results["scenarios"][0])}
    measured, met = rows[("CorGrad compile <= 2.0x ERM's (resnet18)", "jax")]
    assert met is False
    # gga_eval, the per-domain passes alone, is shown as the floor
    assert measured == "2.5 s vs 1.0 s = 2.50x (the per-domain passes alone: 1.0 s = 1.00x)"


def test_one_evaluation_can_be_timed_without_gga():
    config = suite.scenario("resnet18", algorithms=["erm", "gga_eval", "corgrad"])
    assert config["algorithms"] == ["erm", "gga_eval", "corgrad"]
    entry = {"config": config, "runs": {"jax": _run({"erm": 0.1, "gga_eval": 0.2,
                                                     "corgrad": 0.25})}}
    results = dict(_results(), scenarios=[entry])
    assert tables.problems(results, algorithms=config["algorithms"]) == []
    assert "| one GGA evaluation | 200 [190–210] |" in tables.markdown(results)


def test_markdown_tables():
    text = tables.markdown(_results())
    assert "kdg bench --quick" in text and "## CPU" in text
    assert "No GPU was available to this run" in text
    assert "| Fish | 1.10x | 1.20x |" in text          # ratio to ERM, kdg and reference
    assert "| CorGrad | 0.26x |" in text               # kdg / reference
    assert "| ERM | 100 [95–105] | 100 [95–105] |" in text
    assert "(+0.0)" in text                            # memory over ERM, in weight copies


def test_compile_over_several_builds_is_the_median_with_its_range():
    results = _results("resnet18")
    results["scenarios"][0]["config"]["compiles"] = 3
    jax_run = results["scenarios"][0]["runs"]["jax"]["algorithms"]
    jax_run["erm"].update(compile_s=2.0, compiles_s=[2.0, 1.5, 2.9])
    jax_run["corgrad"].update(compile_s=3.8, compiles_s=[4.1, 3.8, 3.0])
    text = tables.markdown(results)
    assert "the median of 3 builds of each model" in text
    assert "| CorGrad | 3.8 [3.0–4.1] (1.9x) |" in text
    rows = {(t, w): (v, ok) for t, w, v, ok in tables.targets(results["scenarios"][0])}
    assert rows[("CorGrad compile <= 2.0x ERM's (resnet18)", "jax")][1] is True


def test_time_algorithms_times_first_steps_of_fresh_builds_after_the_timed_steps():
    events = []

    def prepare(name):
        build = sum(1 for e in events if e == ("build", name))
        events.append(("build", name))

        def step():
            events.append(("step", name, build))
            return 1.0
        return step

    config = suite.scenario("mnist_cnn", algorithms=["erm", "corgrad"], repeats=4, warmup=1,
                            compiles=3)
    records = measure.time_algorithms(["erm", "corgrad"], prepare, config, memory_steps=1)
    for name, record in records.items():
        assert events.count(("build", name)) == 3
        # build 0: first step, 1 warm-up, 1 memory step, 4 timed; later builds: one step
        assert events.count(("step", name, 0)) == 7
        assert events.count(("step", name, 1)) == events.count(("step", name, 2)) == 1
        assert record["n"] == 4 and len(record["first_steps_s"]) == 3
        assert record["first_step_s"] == pytest.approx(np.median(record["first_steps_s"]))
        expected = [max(f - record["median_s"], 0.0) for f in record["first_steps_s"]]
        assert record["compiles_s"] == pytest.approx(expected)
        assert record["compile_s"] == pytest.approx(np.median(expected))
    # the extra builds come after every timed step of every algorithm
    last_timed = max(i for i, e in enumerate(events) if e[0] == "step" and e[2] == 0)
    first_extra = events.index(("build", "erm"), 1)
    assert first_extra > last_timed
    with pytest.raises(ValueError, match="compiles"):
        suite.scenario(compiles=0)


def test_gpu_section_when_a_runner_used_one():
    results = _results()
    results["scenarios"][0]["runs"]["jax"]["device"] = "gpu"
    text = tables.markdown(results)
    gpu = text[text.index("## GPU"):]
    assert "No GPU" not in gpu and "### mnist_cnn" in gpu


def test_problems_flags_what_is_missing_or_not_finite():
    results = _results()
    assert tables.problems(results, runners=["jax", "reference"]) == []
    assert tables.problems(results, runners=["jax", "torch"]) == ["mnist_cnn: runner torch missing"]
    results["scenarios"][0]["runs"]["jax"]["algorithms"]["fish"]["median_s"] = float("nan")
    del results["scenarios"][0]["runs"]["reference"]["algorithms"]["gga"]
    found = tables.problems(results)
    assert "mnist_cnn/jax/fish: median_s=nan" in found
    assert "mnist_cnn/reference: gga missing" in found
    results["scenarios"][0]["runs"]["jax"] = {"runner": "jax", "error": "exit 1: boom"}
    assert any("failed" in p for p in tables.problems(results))
    assert tables.problems({"scenarios": []}) == ["no scenarios"]


def test_write_results_keeps_the_text_around_the_numbers(tmp_path):
    path = tmp_path / "RESULTS.md"
    tables.write_results(path, _results())
    first = path.read_text()
    assert first.startswith("# kdg benchmark results") and BEGIN in first
    path.write_text(first.replace(BEGIN, "Intro by hand.\n\n" + BEGIN) + "\n## Analysis\n\nKept.\n")
    results = _results()
    results["command"] = "kdg bench --again"
    tables.write_results(path, results)
    second = path.read_text()
    assert "Intro by hand." in second and "## Analysis\n\nKept." in second
    assert "kdg bench --again" in second and "kdg bench --quick`" not in second
    assert second.count(BEGIN) == 1


def test_from_json_renders_merged_runs_without_running(tmp_path):
    from click.testing import CliRunner

    from kdg.bench.cli import bench

    cnn, resnet = _results(), _results("resnet18")
    resnet["command"], resnet["started"] = "kdg bench --model resnet18", "later"
    (tmp_path / "cnn.json").write_text(json.dumps(cnn))
    (tmp_path / "resnet.json").write_text(json.dumps(resnet))
    out = tmp_path / "RESULTS.md"
    result = CliRunner().invoke(bench, ["--from-json", str(tmp_path / "cnn.json"),
                                        "--from-json", str(tmp_path / "resnet.json"),
                                        "--results", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "`kdg bench --quick` on today (1.0 min); then `kdg bench --model resnet18` on later" \
        in text
    cpu = text[text.index("## CPU"):text.index("## GPU")]
    assert cpu.index("### mnist_cnn") < cpu.index("### resnet18")
    assert "CorGrad compile <= 2.0x ERM's (resnet18)" in text  # resnet18's targets kept

    other = dict(resnet, machine=dict(resnet["machine"], cores=999))
    (tmp_path / "other.json").write_text(json.dumps(other))
    result = CliRunner().invoke(bench, ["--from-json", str(tmp_path / "cnn.json"),
                                        "--from-json", str(tmp_path / "other.json")])
    assert result.exit_code == 2 and "different machines" in result.output


# -- the pieces ------------------------------------------------------------------------------

def test_scenarios():
    config = suite.scenario("resnet18", batch=16, image_size=48)
    assert (config["image_size"], config["channels"], config["batch"]) == (48, 3, 16)
    assert suite.scenario("mnist_cnn", quick=True)["batch"] == 4
    with pytest.raises(ValueError, match="models"):
        suite.scenario("vgg")
    with pytest.raises(ValueError, match="Unknown algorithm"):
        suite.scenario(algorithms=["erm", "no_such_algorithm"])
    with pytest.raises(ValueError, match="2 domains"):
        suite.scenario(domains=1)
    with pytest.raises(ValueError, match="Unknown runner"):
        suite.run_suite([suite.scenario()], runners=["mxnet"])


def test_measure_helpers():
    x, y = measure.make_batch(3, 4, 8, 2, 5, seed=1)
    assert x.shape == (3, 4, 8, 8, 2) and x.dtype == np.float32
    assert y.shape == (3, 4) and y.dtype == np.int32 and y.max() < 5
    np.testing.assert_array_equal(x, measure.make_batch(3, 4, 8, 2, 5, seed=1)[0])
    stats = measure.summarize([3.0, 1.0, 2.0, 4.0])
    assert (stats["median_s"], stats["min_s"], stats["max_s"]) == (2.5, 1.0, 4.0)
    assert stats["q1_s"] <= stats["median_s"] <= stats["q3_s"]
    if measure.memory_supported():
        base = measure.reset_peak()
        block = np.ones(50 * 2 ** 20 // 8)  # 50 MB, touched
        assert measure.peak_mb() >= base + 40
        del block
    assert measure.machine()["cores"] >= 1


def test_reference_networks_have_kdg_shapes():
    torch = pytest.importorskip("torch")  # noqa: F841
    from kdg.bench import reference

    ref = reference.load_reference()
    assert hasattr(ref, "make_algorithm")
    counts = {}
    for model, channels in (("mnist_cnn", 1), ("resnet18", 3), ("resnet50", 3)):
        config = dict(suite.scenario(model), channels=channels, num_classes=7)
        net = reference.build_network(config, ref)
        counts[model] = sum(p.numel() for p in net.featurizer.parameters())
    # MNIST_CNN; torchvision's ResNet-18 / ResNet-50 without fc (kdg.models.backbones)
    assert counts == {"mnist_cnn": 370_560, "resnet18": 11_176_512, "resnet50": 23_508_032}


@pytest.mark.skipif(BACKEND == "torch", reason="PyTorch runs eagerly: no traced step")
def test_gga_search_is_one_loop_in_the_traced_step():
    from kdg.algorithms import GGA
    from kdg.bench import run

    inputs = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(3, name="head")(h)
    import kdg

    model = kdg.DGModel(inputs, outputs, algorithm=GGA(start_step=0, trials=5), seed=0,
                        num_domains=2)
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = kdg.layout.interleave_domains(measure.make_batch(2, 4, 6, 1, 3))
    model.train_on_batch(x, y)
    structure = run.loop_structure(model, x, y)
    assert structure["one_compiled_loop"], structure
    assert structure["loops"] >= 1 and structure["convolutions"] > 0
    assert model.algorithm.trials == 5  # restored after tracing with one trial


def test_algorithms_come_from_the_registry_with_the_bench_settings():
    from kdg.algorithms import ALGORITHMS as REGISTRY

    config = suite.scenario("mnist_cnn", quick=True)
    # a new algorithm is benched by default; MixStyle needs a ResNet's stages
    assert config["algorithms"] == [n for n in REGISTRY if n != "mixstyle"]
    assert "mixstyle" in suite.scenario("resnet18", quick=True)["algorithms"]
    with pytest.raises(ValueError, match="mixstyle cannot train the bench's mnist_cnn"):
        suite.scenario("mnist_cnn", algorithms=["mixstyle"])
    assert config["labels"]["gga"] == "GGA (in window)"  # suite.SETTINGS
    assert config["labels"]["andmask"] == REGISTRY["andmask"].title  # the class's title
    assert suite.timed(["erm", "gga"]) == ["erm", "gga_eval", "gga"]
    window = suite.hparams("gga", config)
    assert window["start_step"] == 0 and window["end_step"] >= 10 ** 6
    assert window["trials"] == config["gga_trials"]
    assert suite.hparams("corgrad", config, reference=True) == {"tie_tol": 0.0,
                                                                "lr": config["lr"]}
    assert suite.hparams("mixup", config) == {}
    assert suite.scenario(algorithms=["GGA-L", "AND-mask"])["algorithms"] == ["ggal", "andmask"]


def test_an_algorithm_without_a_reference_is_reported_as_such():
    results = _results()
    entry = results["scenarios"][0]
    entry["config"]["algorithms"].append("newalg")
    entry["config"]["labels"]["newalg"] = "NewAlg"
    entry["runs"]["jax"]["algorithms"]["newalg"] = _record(0.12)
    entry["runs"]["reference"]["algorithms"]["newalg"] = {"algorithm": "newalg",
                                                         "no_reference": True}
    assert tables.problems(results, runners=["jax", "reference"]) == []
    text = tables.markdown(results)
    assert "| NewAlg | 1.20x | no reference |" in text  # ratio to ERM, beside the reference's
    assert "| NewAlg | no reference |" in text  # kdg / reference
    del entry["runs"]["jax"]["algorithms"]["newalg"]
    assert tables.problems(results) == ["mnist_cnn/jax: newalg missing"]  # kdg must time it
