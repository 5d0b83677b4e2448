"""In/out splits of each domain, exactly as DomainBed draws them.

DomainBed (``train.py``) splits environment ``env_i`` with
``misc.split_dataset(env, int(len(env) * holdout_fraction),
misc.seed_hash(trial_seed, env_i))``: the keys ``0..n-1`` are shuffled with
``np.random.RandomState(seed)``; the first ``int(n * holdout_fraction)`` are
the *out* split (validation), the rest the *in* split (training). The same
code here gives the same indices for the same file order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdg.seeds import seed_hash  # noqa: F401  (also this module's, for its users)

PARTS = ("in", "out", "all")


def split_indices(n: int, holdout_fraction: float, trial_seed: int,
                  domain_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(in_indices, out_indices)`` of a domain with ``n`` examples.

    Disjoint, together ``0..n-1``, and the same for the same arguments.
    """
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    keys = np.arange(n)
    np.random.RandomState(seed_hash(trial_seed, domain_index)).shuffle(keys)
    n_out = int(n * holdout_fraction)
    return keys[n_out:], keys[:n_out]


@dataclass(frozen=True, eq=False)
class Split:
    """One part of one domain.

    Attributes:
        domain: full domain name.
        domain_index: position of the domain in the dataset's domain list.
        part: ``"in"`` (training part), ``"out"`` (held out: validation) or
            ``"all"`` (the whole domain).
        indices: positions of the examples inside the domain.
    """

    domain: str
    domain_index: int
    part: str
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"Split({self.domain!r}, part={self.part!r}, size={len(self)})"
