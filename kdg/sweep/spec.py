"""The sweep file: a base recipe and what varies.

```yaml
base: ../recipes/quickstart.yaml    # a recipe file (relative to this file), or a recipe inline
output_dir: runs/digits_sweep       # default: runs/<sweep file name>
datasets: [ColoredDigits]           # default: the base recipe's dataset
algorithms: [erm, fish]             # names or algorithm sections; default: the base's
test_domains: null                  # default: each domain in turn; or [0, 2], [[0, 1]], [art_painting]
leave_one_out: false                # also every pair [t, j]: needed by leave-one-domain-out selection
n_hparams: 20                       # hyperparameter samples; sample 0 = the defaults
n_trials: 3                         # trial t: training.trial_seed = t (the data split)
seed: 0                             # the sweep's seed: hyperparameter draws and training seeds
overrides: {training.steps: 5000}   # dotted keys set on the base recipe, as `kdg train --set`
overrides_when:                     # dotted keys set on the jobs of one dataset and/or algorithm
  - when: {dataset: VLCS}           #   (dataset, algorithm or both; `gga` is GGA whatever
    set: {training.lr: 1.0e-5}      #    its base, `gga+X` GGA wrapping X); applied in order,
  - when: {dataset: VLCS, algorithm: gga}   #   after `overrides`, before the sampled
    set: {algorithm.rho: 1.0e-6}    #    hyperparameters
search_space:                       # merged over the defaults (kdg.sweep.space); null removes
  common: {weight_decay: null}
  fish: {meta_lr: {choice: [0.1, 0.5]}}
default_space: true                 # false: only what search_space names is sampled
backend: null                       # default: the base recipe's, else $KERAS_BACKEND
```

A dataset entry is a name or a dataset section (`{name: PACS, root: ~/data}`);
a dataset other than the base's keeps the base's `root`, `holdout_fraction`
and `augment` only. A relative `output_dir` or `dataset.root` is taken from
the working directory (as `kdg train` does) and written into the jobs'
recipes as an absolute path, so that Ray workers find them too. An algorithm entry is a name or an algorithm section
(`{name: gga, base: {name: fish}}`); the base recipe's algorithm section is
used as it is (with the entry's keys on top) when the names match, so its
hyperparameters are the defaults of sample 0.

:func:`load_sweep` reads and checks the file; every problem is reported in
one :class:`SweepError` that names the field, what was given and what is
allowed, as :mod:`kdg.recipes` does.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kdg import recipes
from kdg.algorithm_names import normalize as normalize_name
from kdg.sweep import space as space_lib

BACKENDS = recipes.BACKENDS  # the one list, kdg.recipes'


class SweepError(ValueError):
    """A sweep that cannot run, with every reason in the message."""


class ConditionalOverrides(BaseModel):
    """One `overrides_when` entry: dotted keys set on the jobs that match."""

    model_config = ConfigDict(extra="forbid")

    when: dict[Literal["dataset", "algorithm"], str] = Field(min_length=1)
    set: dict[str, Any] = Field(min_length=1)

    def matches(self, dataset: str, algorithm: Mapping) -> bool:
        """Whether a job of `dataset` (its registry name) and `algorithm` (the
        recipe's algorithm section) gets these overrides. `when.algorithm`
        names the section's algorithm (`gga`: GGA whatever its base), or
        `gga+X`: GGA wrapping X."""
        from kdg import data

        wanted = self.when.get("dataset")
        if wanted is not None and data.get_info(wanted).name != dataset:
            return False
        wanted = self.when.get("algorithm")
        if wanted is None:
            return True
        outer, _, inner = str(wanted).partition("+")
        if normalize_name(outer) != normalize_name(algorithm["name"]):
            return False
        base = algorithm.get("base") or {}
        base = base.get("name", "erm") if isinstance(base, Mapping) else base
        return not inner or normalize_name(inner) == normalize_name(base)


class SweepSpec(BaseModel):
    """The sweep file's schema (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    base: str | dict = Field(description="a recipe file, or a recipe inline")
    output_dir: str | None = None
    datasets: list[str | dict] | None = Field(None, min_length=1)
    algorithms: list[str | dict] | None = Field(None, min_length=1)
    test_domains: list[int | str | list[int | str]] | None = Field(None, min_length=1)
    leave_one_out: bool = False
    n_hparams: int = Field(20, ge=1)
    n_trials: int = Field(3, ge=1)
    seed: int = 0
    overrides: dict[str, Any] = Field(default_factory=dict)
    overrides_when: list[ConditionalOverrides] = Field(default_factory=list)
    search_space: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    default_space: bool = True
    backend: Literal[BACKENDS] | None = None


@dataclass
class Sweep:
    """A checked sweep: its spec, the base recipe (overrides applied, as a
    dict) and where its jobs go."""

    spec: SweepSpec
    base: dict
    output_dir: Path
    backend: str
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.path.stem if self.path is not None else self.output_dir.name


def default_backend() -> str:
    """What `kdg train` would use with no --backend: $KERAS_BACKEND, else
    Keras' configured default."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    import keras

    return keras.backend.backend()


def _read_base(spec: SweepSpec, where: Path, problems: list[str]) -> dict:
    if isinstance(spec.base, dict):
        return copy.deepcopy(spec.base)
    candidates = [Path(spec.base).expanduser()]
    if not candidates[0].is_absolute():
        candidates = [where / candidates[0], Path.cwd() / candidates[0]]
    for path in candidates:
        if path.is_file():
            try:
                return recipes.read_yaml(path)
            except recipes.RecipeError as error:
                problems.append(f"base: {error}")
                return {}
    tried = " or ".join(str(p) for p in dict.fromkeys(candidates))
    problems.append(f"base: recipe {spec.base!r} does not exist (looked for {tried}).")
    return {}


def _dotted(key) -> bool:
    return all(part.isidentifier() for part in str(key).split("."))


def _check_names(spec: SweepSpec, base: dict, problems: list[str]) -> None:
    from kdg import data
    from kdg.algorithms import ALGORITHMS

    for i, entry in enumerate(spec.datasets or []):
        name = entry.get("name") if isinstance(entry, dict) else entry
        if name is None:
            problems.append(f"datasets.{i}: a dataset section needs a name.")
            continue
        try:
            data.get_info(str(name))
        except KeyError:
            names = data.dataset_names()
            problems.append(f"datasets.{i}: unknown dataset {name!r}; known: {', '.join(names)}."
                            f"{recipes.suggest(name, names)}")
    if spec.datasets is None and not isinstance(base.get("dataset"), dict):
        problems.append("datasets: the base recipe has no dataset section; name the datasets here.")
    known = sorted(ALGORITHMS)
    for i, entry in enumerate(spec.algorithms or []):
        name = entry.get("name") if isinstance(entry, dict) else entry
        if name is None or normalize_name(name) not in ALGORITHMS:
            problems.append(f"algorithms.{i}: unknown algorithm {name!r}; known: "
                            f"{', '.join(known)}.{recipes.suggest(normalize_name(name), known)}")
    for i, rule in enumerate(spec.overrides_when):
        name = rule.when.get("dataset")
        if name is not None:
            try:
                data.get_info(name)
            except KeyError:
                names = data.dataset_names()
                problems.append(f"overrides_when.{i}.when.dataset: unknown dataset {name!r}; known: "
                                f"{', '.join(names)}.{recipes.suggest(name, names)}")
        name = rule.when.get("algorithm")
        if name is not None and not all(normalize_name(part) in ALGORITHMS
                                        for part in str(name).split("+")):
            problems.append(f"overrides_when.{i}.when.algorithm: unknown algorithm {name!r}; "
                            f"known: {', '.join(known)}.{recipes.suggest(normalize_name(name), known)}")
        problems += [f"overrides_when.{i}.set.{key}: not a dotted key like training.lr."
                     for key in rule.set if not _dotted(key)]
    for key, section in spec.search_space.items():
        if key != space_lib.COMMON and normalize_name(key) not in ALGORITHMS:
            problems.append(f"search_space.{key}: not an algorithm; use {space_lib.COMMON!r} or "
                            f"one of {', '.join(known)}.{recipes.suggest(key, known + [space_lib.COMMON])}")
            continue
        for name, dist in (section or {}).items():
            if dist is None:
                continue
            try:
                space_lib.parse_distribution(name, dist)
            except space_lib.SpaceError as error:
                problems.append(f"search_space.{key}.{error}")


def load_sweep(source: str | os.PathLike | Mapping[str, Any], backend: str | None = None,
               output_dir: str | os.PathLike | None = None) -> Sweep:
    """Read and check a sweep file (or a sweep given as a dict, whose relative
    `base` is looked up from the working directory).

    `backend` (e.g. from --backend) wins over the file's and the base
    recipe's. Relative output directories are taken from the working
    directory. Raises SweepError naming every problem."""
    path = None
    if isinstance(source, Mapping):
        raw = copy.deepcopy(dict(source))
        where = Path.cwd()
    else:
        path = Path(source)
        raw = recipes.read_yaml(path, "sweep file", "a 'base' recipe", SweepError)
        where = path.resolve().parent
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as error:
        raise SweepError("invalid sweep:\n  - " + "\n  - ".join(
            recipes.format_validation_error(error, SweepSpec, "sweep",
                                            " (the recipe the jobs start from)"))) from None

    problems: list[str] = []
    base = _read_base(spec, where, problems)
    for key, value in spec.overrides.items():
        if not _dotted(key):
            problems.append(f"overrides.{key}: not a dotted key like training.steps.")
        else:
            recipes.set_dotted(base, str(key).split("."), value)
    if backend is not None and backend not in BACKENDS:
        problems.append(f"backend: {backend!r} is not one of {', '.join(BACKENDS)}.")
    chosen = backend or spec.backend or base.get("backend")
    if chosen is not None and chosen not in BACKENDS:
        problems.append(f"base.backend: {chosen!r} is not one of {', '.join(BACKENDS)}.")
    if not problems:
        _check_names(spec, base, problems)
    if problems:
        raise SweepError("invalid sweep:\n  - " + "\n  - ".join(problems))

    if output_dir is None:
        if spec.output_dir is not None:
            output_dir = spec.output_dir
        elif path is not None:
            output_dir = Path("runs") / path.stem
        else:
            raise SweepError("invalid sweep:\n  - output_dir: required for a sweep given as a dict.")
    return Sweep(spec=spec, base=base, output_dir=Path(output_dir).expanduser().resolve(),
                 backend=chosen or default_backend(), path=path)
