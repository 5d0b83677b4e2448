"""Recipes: one YAML file that describes a DomainBed-style training run.

```yaml
dataset:   {name: OfficeHome, root: ~/data, test_domains: [Art], holdout_fraction: 0.2}
model:     {backbone: resnet50, pretrained: true, freeze_bn: true, dropout: 0.0}
algorithm: {name: gga, base: {name: erm}, rho: 1.0e-5}
training:  {steps: 5000, batch_size: 32, lr: 5.0e-5, eval_every: 300, seed: 0}
backend: jax
output_dir: runs/gga_officehome
```

`load_recipe(path, overrides)` reads the file and applies `--set key=value`
overrides (`read_recipe`), then validates (`resolve`) everything it can without touching a Keras backend:
unknown keys and wrong types (pydantic), algorithm names and
hyperparameters, backbones. `check_dataset(recipe)` then validates the
dataset, its root and the test domains. Every problem is reported in one
`RecipeError` whose message names the field, what was given, what is allowed
and, for typos, the closest match.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kdg.algorithm_names import normalize as normalize_name

#: The Keras backends kdg runs on: the one list (the CLI, sweeps and bench read it).
BACKENDS = ("jax", "tensorflow", "torch")


class RecipeError(ValueError):
    """A recipe that cannot run, with every reason in the message."""


#: The first line of every invalid recipe's message; a problem per line follows.
INVALID = "invalid recipe:\n  - "


def invalid(problems) -> RecipeError:
    """The RecipeError of a recipe with `problems` (a string or a list), one a line."""
    problems = [problems] if isinstance(problems, str) else list(problems)
    return RecipeError(INVALID + "\n  - ".join(problems))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(_Section):
    name: str = Field(description="a built-in dataset, or 'custom' with a path")
    root: str | None = Field(None, description="data root (default: $KDG_DATA_ROOT)")
    path: str | None = Field(None, description="folder of a custom dataset")
    test_domains: list[int | str] = Field(default_factory=lambda: [0])
    holdout_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    image_size: int | None = Field(None, gt=0)
    augment: bool = True


class ModelConfig(_Section):
    backbone: str = "resnet50"
    pretrained: bool = True
    freeze_bn: bool = True
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    mixstyle_layers: list[int] = Field(
        default_factory=list,
        description="ResNets: ResNet stages (1-4) followed by a kdg.layers.MixStyle "
        "(algorithm mixstyle: [1, 2, 3])",
    )
    arm_context: bool = Field(
        False, description="a kdg.layers.ARMContext (ARM's context network) at the input "
        "(algorithm arm)")


class AlgorithmConfig(BaseModel):
    """`name` plus the algorithm's hyperparameters (checked against its
    constructor); GGA's `base` is another AlgorithmConfig."""

    model_config = ConfigDict(extra="allow")
    name: str


class TrainingConfig(_Section):
    steps: int = Field(5000, gt=0)
    batch_size: int = Field(32, gt=0, description="examples per domain and step")
    optimizer: Literal["adam", "sgd", "adamw"] = "adam"
    adam_convention: Literal["keras", "torch"] = Field(
        "keras",
        description="Adam/AdamW's epsilon: torch = PyTorch's (1e-8, after the bias "
        "correction; the papers' numbers), keras = Keras' (1e-7, on the raw second moment)",
    )
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    weight_decay_mode: Literal["l2", "decoupled"] = Field(
        "l2", description="l2: added to the gradient (PyTorch's Adam); decoupled: Keras/AdamW"
    )
    eval_every: int = Field(300, gt=0)
    checkpoint_every: int | None = Field(None, gt=0, description="default: eval_every")
    eval_batch_size: int = Field(128, gt=0)
    eval_splits: Literal["all", "selection"] = Field(
        "all",
        description="all: both splits of every domain (DomainBed); selection: only what "
        "model selection and the tables read, the out split of every domain and the in "
        "split of the test domains (about half the evaluation's cost on MNIST)",
    )
    devices: int | list[str] | None = Field(
        None, description="data-parallel devices (JAX): a count or names like gpu:0"
    )
    seed: int = 0
    trial_seed: int = 0
    hparams_seed: int = 0


class Recipe(_Section):
    dataset: DatasetConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = Field(default_factory=lambda: AlgorithmConfig(name="erm"))
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    backend: Literal[BACKENDS] | None = None
    output_dir: str | None = None

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


# -- reading and overriding ------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """'training.lr=3e-5' -> (['training', 'lr'], 3e-05); values are YAML."""
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: expected KEY=VALUE, e.g. --set training.lr=3e-5")
    key, value = text.split("=", 1)
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key.strip()):
        raise RecipeError(f"--set {text!r}: {key!r} is not a dotted key like training.lr")
    parsed = yaml.safe_load(value) if value.strip() else None
    # YAML 1.1 reads "3e-5" as a string; numbers are what people mean.
    if isinstance(parsed, str):
        try:
            parsed = float(parsed) if re.fullmatch(r"[-+]?[\d.]+e[-+]?\d+", parsed, re.I) else parsed
        except ValueError:
            pass
    return key.strip().split("."), parsed


# What a run's identity leaves out: where it is written, and which splits it
# evaluates (each record says which). A run folder resumes, and a sweep keeps
# its job directories, whatever their values.
NOT_IDENTITY = (("output_dir",), ("training", "eval_splits"))


def without(config: dict, paths) -> dict:
    """A deep copy of ``config`` without the dotted ``paths`` (tuples of keys)."""
    config = copy.deepcopy(config)
    for path in paths:
        node = config
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return config


def set_dotted(config: dict, keys: list[str], value: Any) -> None:
    """config[k1][k2]...[kn] = value, making the sections that are missing."""
    node = config
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    for text in overrides:
        set_dotted(config, *parse_override(text))
    return config


def fix_yaml_floats(node):
    """YAML 1.1 reads 5e-5 (no dot) as a string: make such strings floats."""
    if isinstance(node, dict):
        return {k: fix_yaml_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [fix_yaml_floats(v) for v in node]
    if isinstance(node, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)e[-+]?\d+", node, re.I):
        return float(node)
    return node


def read_yaml(path: str | Path, kind: str = "recipe", needs: str = "a 'dataset' section",
              error_type: type[Exception] = None) -> dict:
    """A YAML mapping from a file (a recipe, or what `kind` names), with
    one clear error (`error_type`, RecipeError by default) when it is not."""
    error_type = error_type or RecipeError
    path = Path(path)
    if not path.is_file():
        raise error_type(f"{kind} {str(path)!r} does not exist")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise error_type(f"{kind} {str(path)!r} is not valid YAML: {error}") from None
    if not isinstance(config, dict):
        raise error_type(f"{kind} {str(path)!r} must be a mapping with {needs}")
    return fix_yaml_floats(config)


# -- validation --------------------------------------------------------------------


def suggest(value, allowed) -> str:
    """' Did you mean ...?' for the closest of `allowed`, or ''."""
    match = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.5)
    return f" Did you mean {match[0]!r}?" if match else ""


def _section_fields(root: type[BaseModel], loc: tuple) -> list[str]:
    model = root
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def format_validation_error(error: ValidationError, root: type[BaseModel] = None,
                            label: str = "recipe", missing: str = "") -> list[str]:
    """One line per problem of a pydantic error on the `root` model (the
    recipe by default), naming the field, what was given and what is allowed.
    `label` names the file's top level; `missing` is added to 'required'."""
    root = root or Recipe
    problems = []
    for item in error.errors():
        loc = tuple(str(p) for p in item["loc"])
        where = ".".join(loc) or label
        given = item.get("input")
        if item["type"] == "extra_forbidden":
            allowed = _section_fields(root, loc)
            problems.append(
                f"{where}: unknown key. Allowed here: {', '.join(allowed)}.{suggest(loc[-1], allowed)}"
            )
        elif item["type"] == "missing":
            problems.append(f"{where}: required, missing{missing}.")
        elif item["type"] == "literal_error":
            allowed = item.get("ctx", {}).get("expected", "")
            options = re.findall(r"'([^']+)'", allowed)
            problems.append(f"{where}: {given!r} is not allowed; expected {allowed}.{suggest(given, options)}")
        else:
            problems.append(f"{where}: {item['msg'].lower()}; given {given!r}.")
    # pydantic reports each member of a union; keep one line per field
    return list(dict.fromkeys(problems))


def algorithm_parameters(name: str) -> list[str]:
    """The hyperparameters algorithm `name` declares (its `hparams`)."""
    from kdg.algorithms import ALGORITHMS

    return list(ALGORITHMS[name].hparams)


def _not_a_parameter(key: str, name: str, where: str) -> str:
    """The message for `key`, not a hyperparameter of algorithm `name`: the
    closest of its own, or how to switch from the algorithm that has it."""
    from kdg.algorithms import ALGORITHMS

    allowed = algorithm_parameters(name)
    its = f"its parameters: {', '.join(allowed)}." if allowed else f"{name} takes no parameters."
    owners = [other for other in sorted(ALGORITHMS) if key in ALGORITHMS[other].hparams]
    if not owners:
        return f"{where}.{key}: not a parameter of {name}; {its}{suggest(key, allowed)}"
    return (
        f"{where}.{key}: {key} is a parameter of {' and '.join(owners)}, not of {name}: to "
        f"switch algorithm, replace the whole section: --set '{where}={{name: {name}}}' "
        f"(in a recipe file, remove {key}); {its}"
    )


def _check_algorithm(config: dict, where: str, problems: list[str],
                     total_steps: int | None = None) -> None:
    """Append to `problems` every problem of an `algorithm` section (and of
    GGA's `base`): unknown names and parameters, and values outside what
    the algorithm declares (`Algorithm.hparams`), each named by its path."""
    from kdg.algorithms import ALGORITHMS
    from kdg.algorithms.base import HparamError

    name = normalize_name(config.get("name", ""))
    if name not in ALGORITHMS:
        problems.append(
            f"{where}.name: unknown algorithm {config.get('name')!r}; known: "
            f"{', '.join(sorted(ALGORITHMS))}.{suggest(name, ALGORITHMS)}"
        )
        return
    cls = ALGORITHMS[name]
    found = len(problems)
    for key, value in config.items():
        if key == "name":
            continue
        if key not in cls.hparams:
            problems.append(_not_a_parameter(key, name, where))
        elif key == "base":
            if not isinstance(value, dict):
                value = {"name": value}
            _check_algorithm(value, f"{where}.base", problems, total_steps)
    for _, key, reason in cls.hparam_problems({k: v for k, v in config.items() if k != "name"}):
        problems.append(f"{where}.{key}: {reason}{suggest(config[key], cls.hparams[key].choices)}")
    if len(problems) == found:
        try:
            build_algorithm(config, total_steps)
        except HparamError as error:
            field = f"{where}.{error.hparam}"
            if error.hparam == "total_steps" and "total_steps" not in config:
                field = "training.steps (CorGrad's total_steps with alpha_schedule log_decay)"
            problems.append(f"{field}: {error.reason}")
        except (TypeError, ValueError) as error:
            problems.append(f"{where}: {error}")


def build_algorithm(config: dict, total_steps: int | None = None):
    """A kdg Algorithm from a recipe's `algorithm` section."""
    from kdg.algorithms import ALGORITHMS

    config = dict(config)
    name = normalize_name(config.pop("name"))
    if "base" in config:
        base = config["base"] if isinstance(config["base"], dict) else {"name": config["base"]}
        config["base"] = build_algorithm(base, total_steps)
    if name == "corgrad" and config.get("alpha_schedule") == "log_decay":
        config.setdefault("total_steps", total_steps)
    return ALGORITHMS[name](**config)


def _check_backbone(backbone: str, problems: list[str]) -> None:
    from kdg.models.backbones import BACKBONES, is_preset, unknown_backbone

    if backbone in BACKBONES or is_preset(backbone):
        return  # a built-in, a keras-hub preset name or handle, a local preset
    problems.append(f"model.backbone: {unknown_backbone(backbone)}")


def _check_mixstyle(model: ModelConfig, problems: list[str]) -> None:
    from kdg.models.backbones import OPTIONS

    takes = [name for name, options in OPTIONS.items() if "mixstyle_layers" in options]
    if model.mixstyle_layers and model.backbone.strip().lower() not in takes:
        problems.append(
            f"model.mixstyle_layers: only the {' and '.join(takes)} backbones take MixStyle "
            f"layers; backbone is {model.backbone!r}. Use one of them, or remove "
            "mixstyle_layers.")
    elif model.mixstyle_layers and (
            sorted(set(model.mixstyle_layers)) != sorted(model.mixstyle_layers)
            or not set(model.mixstyle_layers) <= {1, 2, 3, 4}):
        problems.append(
            f"model.mixstyle_layers: distinct ResNet stages among 1..4 (the MixStyle code "
            f"uses [1, 2, 3]); given {model.mixstyle_layers}.")


def validate(config: dict) -> Recipe:
    """A Recipe from a plain dict, or a RecipeError naming every problem."""
    try:
        recipe = Recipe.model_validate(config)
    except ValidationError as error:
        raise invalid(format_validation_error(error)) from None
    problems: list[str] = []
    _check_algorithm(recipe.algorithm.model_dump(), "algorithm", problems, recipe.training.steps)
    _check_backbone(recipe.model.backbone, problems)
    _check_mixstyle(recipe.model, problems)
    if problems:
        raise invalid(problems)
    return recipe


def read_recipe(path: str | Path, overrides: list[str] = ()) -> dict:
    """A recipe file as a dict, `--set` overrides applied, `output_dir`
    defaulting to runs/<the file's name>; not validated yet."""
    config = apply_overrides(read_yaml(path), list(overrides))
    if not config.get("output_dir"):
        config["output_dir"] = str(Path("runs") / Path(path).stem)
    return config


def resolve(config: dict, backend: str | None = None) -> Recipe:
    """The validated Recipe of a recipe dict, on `backend` when given."""
    if backend is not None:
        config = {**config, "backend": backend}
    return validate(config)


def load_recipe(path: str | Path, overrides: list[str] = (), backend: str | None = None) -> Recipe:
    """read_recipe, then resolve: a recipe file to a validated Recipe."""
    return resolve(read_recipe(path, overrides), backend)


def check_dataset(recipe: Recipe):
    """Load the dataset, check the test domains, the size of every domain's
    splits and its image files (``DGDataset.check_images``); returns the
    DGDataset. Raises RecipeError."""
    from kdg import data

    cfg = recipe.dataset
    try:
        info = data.get_info(cfg.name)
    except (KeyError, ValueError):
        names = list(data.dataset_names())
        raise invalid(
            f"dataset.name: unknown dataset {cfg.name!r}; known: "
            f"{', '.join(names)}, or 'custom' with dataset.path.{suggest(cfg.name, names)}"
        ) from None
    options = dict(holdout_fraction=cfg.holdout_fraction, trial_seed=recipe.training.trial_seed)
    if cfg.image_size is not None:
        options["image_size"] = cfg.image_size
    if info.kind not in ("mnist", "digits"):
        options["augment"] = cfg.augment
    if info.kind == "mnist":
        # DomainBed builds RotatedMNIST/ColoredMNIST anew in every run (its
        # shuffle and coin flips seeded by the run): each trial gets its own.
        options["data_seed"] = recipe.training.trial_seed
    try:
        dataset = data.load(cfg.name, cfg.root, path=cfg.path, **options)
    except data.DataError as error:
        raise invalid(f"dataset: {error}") from None
    except (TypeError, ValueError) as error:
        raise invalid(f"dataset: {error}") from None
    problems = []
    for domain in cfg.test_domains:
        try:
            dataset.domain_index(domain)
        except (KeyError, ValueError, IndexError):
            allowed = list(dataset.domains) + list(dataset.short_domains)
            problems.append(
                f"dataset.test_domains: {domain!r} is not a domain of {dataset.name}; "
                f"domains: {', '.join(dataset.domains)} (or their index, or short names "
                f"{', '.join(dataset.short_domains)}).{suggest(domain, allowed)}"
            )
    if not problems and len(set(map(dataset.domain_index, cfg.test_domains))) >= len(dataset.domains):
        problems.append("dataset.test_domains: every domain is a test domain; none is left to train on.")
    problems += _split_problems(dataset)
    if problems:
        raise invalid(problems)
    try:
        dataset.check_images()
    except data.DataError as error:
        raise invalid(f"dataset: {error}") from None
    return dataset


def _split_problems(dataset) -> list[str]:
    """Every domain needs an example in its in split and, unless
    holdout_fraction is 0 (no validation splits asked for), in its out split:
    model selection reads every domain's out-split accuracy."""
    fraction = dataset.holdout_fraction
    problems = []
    for i, domain in enumerate(dataset.domains):
        size = dataset.sizes[i]
        if len(dataset.split(i, "in")) == 0:
            problems.append(f"dataset: domain {domain!r} has no example to train or test on "
                            f"({size} in all). Add examples to it.")
        elif fraction > 0 and len(dataset.split(i, "out")) == 0:
            needed = math.ceil(1 / fraction)
            while int(needed * fraction) < 1:
                needed += 1
            raise_to = ""
            if size > 1:
                lowest = math.ceil(1000 / size) / 1000
                while int(size * lowest) < 1:
                    lowest += 0.001
                raise_to = f", raise dataset.holdout_fraction to {lowest:g}"
            problems.append(
                f"dataset.holdout_fraction: domain {domain!r} has {size} example(s), so its "
                f"out (validation) split of int({size} x {fraction:g}) = 0 examples is empty "
                f"and model selection could not score it. Add examples to {domain!r} (at least "
                f"{needed} with holdout_fraction {fraction:g}){raise_to}, or set "
                "dataset.holdout_fraction: 0 to train without validation splits."
            )
    return problems


def _algorithm_classes(config: dict):
    """The classes of an algorithm section and of its `base`, outermost first."""
    from kdg.algorithms import ALGORITHMS

    while isinstance(config, dict):
        name = normalize_name(config.get("name", ""))
        if name in ALGORITHMS:
            yield ALGORITHMS[name]
        config = config.get("base")
        if isinstance(config, str):
            config = {"name": config}


def _backend_of(recipe: Recipe) -> str | None:
    """The backend the run will use: the recipe's, else the running Keras', else $KERAS_BACKEND."""
    import os
    import sys

    if recipe.backend:
        return recipe.backend
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    return os.environ.get("KERAS_BACKEND") or None


def check_run(recipe: Recipe, domains, test_envs, count_devices: bool = True) -> None:
    """What the recipe and its dataset's domains decide before a run starts
    (no Keras model is built, nothing is written): the algorithms that
    compare pairs of domains (CorGrad, GGA, GGA-L, and GGA's base) need two
    training domains; several devices (`training.devices`) need JAX and a
    `training.batch_size` they divide.
    `domains` are the dataset's domain names, `test_envs` the test domains'
    indices. Raises RecipeError naming the field and the fix."""
    import sys

    problems = []
    test_envs = set(test_envs)
    training = [d for i, d in enumerate(domains) if i not in test_envs]
    algorithm = recipe.algorithm.model_dump()
    if len(training) < 2:
        for cls in _algorithm_classes(algorithm):
            if cls.needs_domain_pairs:
                problems.append(
                    f"algorithm: {cls.__name__} compares the gradients of pairs of training "
                    f"domains and needs at least 2; dataset.test_domains "
                    f"{list(recipe.dataset.test_domains)} leaves {len(training)} "
                    f"({', '.join(training) or 'none'}). Use fewer test domains, or an "
                    "algorithm that trains on one domain (erm, fish).")
                break
    devices = recipe.training.devices
    several = devices not in (None, 1) and not (isinstance(devices, list) and len(devices) == 1)
    backend = _backend_of(recipe)
    if several and backend is not None and backend != "jax":
        problems.append(
            f"training.devices: {devices!r} trains on several devices, which needs the JAX "
            f"backend (Keras' distribution API is implemented for JAX only); this run uses "
            f"{backend}. Set backend: jax (or --backend jax), or remove training.devices to "
            "train on one device.")
    count = len(devices) if isinstance(devices, list) else devices
    if several and isinstance(count, int) and count > 1 and recipe.training.batch_size % count:
        batch_size = recipe.training.batch_size
        problems.append(
            f"training.batch_size: {batch_size} examples per domain do not divide among "
            f"training.devices={devices!r} ({count} devices); each device trains on an equal "
            f"share of every domain's examples. Set training.batch_size to a multiple of "
            f"{count} (e.g. {-(-batch_size // count) * count}), or train on a number of "
            f"devices that divides {batch_size}.")
    if (several and backend == "jax" and count_devices and "keras" in sys.modules
            and sys.modules["keras"].backend.backend() == "jax"):
        # only the process that trains counts its devices (a sweep's own
        # process may run another backend, and its jobs run elsewhere)
        from kdg import distribution  # imports Keras: only where it runs already

        try:
            distribution.check_devices(devices)
        except ValueError as error:
            problems.append(f"training.devices: {error}")
    if problems:
        raise invalid(problems)


def dump(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
