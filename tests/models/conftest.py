import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    """No test here touches the network: kdg.models is offline
    (KDG_OFFLINE=1), no KDG_PRESETS is inherited, and kagglehub's cache is an
    empty folder (a real cache must not satisfy the 'missing preset' tests)."""
    monkeypatch.setenv("KDG_OFFLINE", "1")
    monkeypatch.delenv("KDG_PRESETS", raising=False)
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path_factory.mktemp("kagglehub")))
