"""The one normalising function for algorithm names, without Keras.

Every place that takes an algorithm's name (a recipe, `kdg.algorithms.get`,
a sweep file, `--only algorithm=...`, a report's published rows) goes through
:func:`normalize`, so that "GGA-L", "gga_l", "gga-l", "GGA L" and "ggal" all
name the same algorithm: its registry key, the class's `name`
(`kdg.algorithms.ALGORITHMS`). An algorithm's `title` (its published
spelling) normalises to its `name`. This module imports nothing of Keras, so
that `kdg report` and `kdg sweep --status` can use it without a backend.
"""

from __future__ import annotations

import re


def normalize(name: object) -> str:
    """The registry key of an algorithm name in any spelling: lower case,
    letters and digits only ("GGA-L" -> "ggal", "CorGrad" -> "corgrad")."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())
