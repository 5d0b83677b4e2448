"""Setting up: the README's install lines, what the default install needs,
and documentation that lives inside the repository."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import BACKEND
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib", reason="reads pyproject.toml with Python >= 3.11")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import noxfile  # noqa: E402  (the sessions .ci/run runs)

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
OPTIONAL_BACKENDS = {"torch", "jax", "jaxlib", "ray"}


def extra_requirements(extras):
    """Names of the packages `pip install .[extras]` asks for, kdg[...] expanded."""
    names, todo = set(), list(extras)
    for requirement in PYPROJECT["dependencies"]:
        names.add(Requirement(requirement).name.lower())
    while todo:
        for requirement in map(Requirement, PYPROJECT["optional-dependencies"][todo.pop()]):
            if requirement.name == "kdg":
                todo += list(requirement.extras)
            else:
                names.add(requirement.name.lower())
    return names


def pip_install_target(command):
    """(extras, constraints files) of a `pip install ... -e .[extras]` command."""
    assert command[:2] == ["pip", "install"], command
    target = command[command.index("-e") + 1]
    match = re.fullmatch(r"\.(?:\[([\w,]+)\])?", target)
    assert match, f"not an install of this checkout: {target}"
    constraints = [command[i + 1] for i, arg in enumerate(command) if arg == "-c"]
    return (match.group(1).split(",") if match.group(1) else []), constraints


# -- the install lines ----------------------------------------------------------------

def test_quickstart_is_two_commands_whose_install_needs_no_optional_backend():
    install, train = noxfile.readme_commands("Quickstart")
    extras, constraints = pip_install_target(install)
    assert constraints == []  # a newcomer's line carries nothing to remember
    assert not extra_requirements(extras) & OPTIONAL_BACKENDS
    assert "tensorflow" in extra_requirements(extras)  # the backend the quickstart runs on
    assert train == ["kdg", "train", "recipes/quickstart.yaml"]
    assert (REPO / train[-1]).is_file()


def test_the_cpu_line_is_the_test_sessions_and_pins_a_cpu_torch():
    commands = noxfile.readme_commands("Install")
    assert ["pip", "install", *noxfile.cpu_install()] in commands
    extras, constraints = pip_install_target(["pip", "install", *noxfile.cpu_install()])
    assert "torch" in extra_requirements(extras)
    pins = [Requirement(line.split("#")[0]) for c in constraints
            for line in (REPO / c).read_text().splitlines() if line.split("#")[0].strip()]
    torch = [pin for pin in pins if pin.name == "torch"]
    assert len(torch) == 1 and str(torch[0].specifier).endswith("+cpu"), torch
    pinned = str(torch[0].specifier).lstrip("=")
    wanted = [Requirement(r) for r in PYPROJECT["optional-dependencies"]["torch"]]
    assert all(r.specifier.contains(pinned) for r in wanted)
    # every other line installs this checkout too, and only the CPU line carries -c
    for command in commands:
        extras, constraints = pip_install_target(command)
        assert bool(constraints) == (command == ["pip", "install", *noxfile.cpu_install()])


def test_default_sessions_run_the_quickstart_and_every_backend():
    assert noxfile.nox.options.sessions == ["quickstart", "tests", "tests-notf"]
    assert noxfile.split_backends([]) == (("jax", "tensorflow", "torch"), [])
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^python3 -m nox\s*$", ci, re.M)  # the default sessions, no -s


@pytest.mark.parametrize("posargs, backends, rest", [
    (["torch"], ("torch",), []),
    (["jax", "torch", "-k", "fish"], ("jax", "torch"), ["-k", "fish"]),
    (["-k", "torch"], ("jax", "tensorflow", "torch"), ["-k", "torch"]),  # only leading ones
    (["tests/test_cli.py", "jax"], ("jax", "tensorflow", "torch"), ["tests/test_cli.py", "jax"]),
])
def test_the_tests_session_takes_backends_before_pytest_arguments(posargs, backends, rest):
    assert noxfile.split_backends(posargs) == (backends, rest)


def test_the_quickstart_session_tells_cuda_wheels():
    assert noxfile.cuda_wheels({"tensorflow": "2.21.0", "torch": "2.13.0+cpu",
                                "numpy": "2.3.0"}) == []
    assert noxfile.cuda_wheels({"torch": "2.14.1", "nvidia-cublas": "13.1.1.3",
                                "nvidia-nccl-cu13": "2.30.7"}) == ["nvidia-cublas",
                                                                   "nvidia-nccl-cu13"]
    assert noxfile.cuda_wheels({"torch": "2.13.0+cu126"}) == ["torch 2.13.0+cu126"]


# -- without the optional backends ------------------------------------------------------

BLOCKER = """
import importlib.abc, sys
class _Absent(importlib.abc.MetaPathFinder):
    # as if these packages were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, _Absent())
from kdg.cli import main
main({args!r})
"""


def kdg_without(blocked, args, backend=None):
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    if backend:
        env["KERAS_BACKEND"] = backend
    code = BLOCKER.format(blocked=set(blocked), args=list(args))
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, text=True,
                          capture_output=True, timeout=600)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the default install is TensorFlow only: "
                    "run once, in the tensorflow session")
def test_the_quickstart_trains_without_torch_jax_or_ray(tmp_path):
    out = tmp_path / "run"
    result = kdg_without(OPTIONAL_BACKENDS, [
        "train", "recipes/quickstart.yaml", "--quiet", "--set", f"output_dir={out}",
        "--set", "training.steps=2", "--set", "training.eval_every=2",
        "--set", "training.batch_size=4"], backend="tensorflow")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "done").is_file()


@pytest.mark.parametrize("missing, how, hint", [
    ("jax", ["--backend", "jax"], 'pip install -e ".[jax]"'),
    ("torch", ["--backend", "torch"], 'pip install -c constraints-cpu.txt -e ".[torch]"'),
    ("jax", [], 'pip install -e ".[jax]"'),  # from KERAS_BACKEND
])
def test_a_backend_that_is_not_installed_is_one_message(tmp_path, missing, how, hint):
    out = tmp_path / "run"
    result = kdg_without({missing, "jaxlib"} if missing == "jax" else {missing}, [
        "train", "recipes/quickstart.yaml", *how, "--set", f"output_dir={out}"],
        backend=None if how else missing)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"the {missing} backend is not installed" in result.stderr
    assert hint in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


# -- documentation inside the repository --------------------------------------------------

SKIP = {".git", ".nox", "runs", "__pycache__", "build", "dist"}
TEXT = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ""}


def repository_files():
    for path in REPO.rglob("*"):
        parts = path.relative_to(REPO).parts
        if path.is_file() and not SKIP & set(parts) \
                and not any(part.endswith(".egg-info") for part in parts) and path.suffix in TEXT:
            yield path


def test_nothing_links_outside_the_repository():
    outside = re.compile(r"\.\./shared|shared/spec")
    found = [f"{path.relative_to(REPO)}:{number}"
             for path in repository_files() if path != Path(__file__).resolve()
             for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
             if outside.search(line)]
    assert found == []


@pytest.mark.parametrize("document", ["README.md", "docs/ALGORITHMS.md",
                                      "benchmarks/RESULTS.md"])
def test_relative_links_resolve_to_files_in_the_repository(document):
    path = REPO / document
    targets = re.findall(r"\]\(([^)\s]+)\)", path.read_text())
    relative = [t for t in targets if not re.match(r"[a-z]+:|#", t)]
    for target in relative:
        resolved = (path.parent / target.split("#")[0]).resolve()
        assert resolved.is_relative_to(REPO) and resolved.exists(), (document, target)
    if document == "README.md":
        assert "docs/ALGORITHMS.md" in relative


def test_algorithms_doc_has_every_algorithm_with_kdg_s_defaults():
    # the documented signatures are the constructors' (names and defaults)
    import ast
    import inspect

    from kdg import algorithms

    text = (REPO / "docs" / "ALGORITHMS.md").read_text()
    for name, cls in [("ERM", algorithms.ERM), ("Fish", algorithms.Fish),
                      ("CorGrad", algorithms.CorGrad), ("GGA", algorithms.GGA),
                      ("GGAL", algorithms.GGAL)]:
        heading = re.search(rf"^## .*`({name}\(.*\))`$", text, re.M)
        assert heading, name
        call = ast.parse(heading.group(1), mode="eval").body
        documented = {k.arg: ast.unparse(k.value) if k.arg == "base" else
                      ast.literal_eval(k.value) for k in call.keywords}
        defaults = {p.name: p.default for p in inspect.signature(cls).parameters.values()}
        if "base" in defaults:
            assert defaults.pop("base") is None and documented.pop("base") == "ERM()"
        assert documented == defaults, name
    assert textwrap.dedent("""
        | | PACS | VLCS | OfficeHome | TerraInc | DomainNet | Avg |
        |---|---|---|---|---|---|---|
        | ERM | 85.5 | 77.3 | 66.5 | 46.1 | 43.8 | 63.9 |""") in text
