"""DomainBed's `misc.seed_hash`, the one derivation of a seed from a tuple:
the data splits (`kdg.data.splits`), the pipelines' streams and a sweep's
hyperparameter draws and training seeds (`kdg.sweep`) all use it. No Keras."""

from __future__ import annotations

import hashlib


def seed_hash(*args: object) -> int:
    """An integer in ``[0, 2**31)`` derived from ``args`` (DomainBed's ``misc.seed_hash``)."""
    digest = hashlib.md5(str(args).encode("utf-8")).hexdigest()
    return int(digest, 16) % (2**31)
