"""Test sessions, one per Keras backend: `nox` runs all three.

Each session installs kdg with every backend (the cross-backend test runs
the other two in subprocesses) and PyTorch pinned to the local CPU build
(constraints-test.txt), then runs pytest with KERAS_BACKEND set.
"""

import nox

nox.options.sessions = ["tests-jax", "tests-tensorflow", "tests-torch"]
nox.options.reuse_existing_virtualenvs = True

BACKENDS = ("jax", "tensorflow", "torch")


def _tests(session, backend):
    session.install("-c", "constraints-test.txt", "-e", ".[all,test]")
    session.run(
        "pytest", "-n", "2", "-p", "no:cacheprovider", *session.posargs,
        env={"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


for _backend in BACKENDS:
    nox.session(name=f"tests-{_backend}")(
        lambda session, backend=_backend: _tests(session, backend)
    )
