"""Finding and loading keras-hub presets, offline first.

A preset is a folder made by keras-hub's ``backbone.save_to_preset(folder)``
(``config.json``, ``model.weights.h5``, ``metadata.json``), or the name of one
of keras-hub's built-in presets (``"resnet_50_imagenet"``), which keras-hub
downloads from Kaggle the first time and keeps in kagglehub's cache.

Where kdg looks for a preset called NAME, in this order:

1. ``preset_dir`` when given: the preset itself (it holds ``config.json``) or
   a folder holding ``NAME/``;
2. NAME itself, when it is a path to a folder;
3. ``$KDG_PRESETS/NAME`` for each folder in ``KDG_PRESETS`` (several folders
   are separated by ``os.pathsep``, ``:`` on Linux);
4. kagglehub's cache (``$KAGGLEHUB_CACHE``, default ``~/.cache/kagglehub``),
   for keras-hub's built-in presets downloaded before;
5. the hub (Kaggle, or Hugging Face for ``hf://`` handles), through
   keras-hub's own ``from_preset``, unless ``KDG_OFFLINE=1``.

With ``KDG_OFFLINE=1`` (or ``true``/``yes``/``on``) kdg never touches the
network: when steps 1-4 find nothing it raises `PresetNotFoundError` at
once instead of waiting for a download to fail. Any failure of step 5 (no
network, a typo in a handle, a gated model) is also reported as one
`PresetNotFoundError` naming the preset, every place looked at, and how to
fix it; the hub's own error is chained to it.

Making a preset for a machine without network, once, where there is one::

    import keras_hub
    keras_hub.models.Backbone.from_preset("resnet_50_imagenet").save_to_preset(
        "/data/presets/resnet_50_imagenet")

then ``export KDG_PRESETS=/data/presets`` where training runs.
"""

from __future__ import annotations

import os

OFFLINE_ENV = "KDG_OFFLINE"
PRESETS_ENV = "KDG_PRESETS"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"


class PresetNotFoundError(FileNotFoundError):
    """A keras-hub preset could be found neither locally nor on the hub."""


def is_offline() -> bool:
    """True when ``KDG_OFFLINE`` asks kdg not to touch the network."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def search_dirs() -> list[str]:
    """The folders named by ``KDG_PRESETS``, in order."""
    value = os.environ.get(PRESETS_ENV, "")
    return [os.path.expanduser(d) for d in value.split(os.pathsep) if d.strip()]


def is_preset_dir(path) -> bool:
    return os.path.isfile(os.path.join(str(path), CONFIG_FILE))


def hub_presets() -> dict:
    """keras-hub's built-in backbone presets (name -> metadata)."""
    try:
        import keras_hub
    except ImportError:  # keras-hub comes with the extra `tensorflow`
        return {}
    return dict(keras_hub.models.Backbone.presets)


def has_scheme(name: str) -> bool:
    """``kaggle://...``, ``hf://...`` and other handles keras-hub downloads."""
    return "://" in name


def looks_like_path(name: str) -> bool:
    """A file-system path rather than a preset name or handle."""
    if has_scheme(name):
        return False
    return (os.sep in name or "/" in name or name.startswith((".", "~"))
            or os.path.isdir(os.path.expanduser(name)))


def _kagglehub_cached(name: str):
    """The kagglehub cache folder of built-in preset ``name`` when a complete
    download of it is there (its config and weights marked complete), else
    None; with the folder kdg would have looked in."""
    handle = hub_presets().get(name, {}).get("kaggle_handle")
    if not handle or not handle.startswith("kaggle://"):
        return None, None
    try:
        from kagglehub.cache import Cache, get_cached_path
        from kagglehub.handle import parse_model_handle

        parsed = parse_model_handle(handle[len("kaggle://"):])
        folder = get_cached_path(parsed)
        cache = Cache()
        complete = all(cache.load_from_cache(parsed, f) for f in (CONFIG_FILE, WEIGHTS_FILE))
    except Exception:  # kagglehub missing or its layout changed: not cached
        return None, None
    return (folder if complete and is_preset_dir(folder) else None), folder


def find_local(name: str, preset_dir=None):
    """Look for preset ``name`` without the network.

    Returns ``(path or None, looked)`` where ``looked`` lists, in words,
    every place looked at (for the error message)."""
    looked = []
    if preset_dir is not None:
        preset_dir = os.path.expanduser(str(preset_dir))
        if is_preset_dir(preset_dir):
            return preset_dir, looked
        candidate = os.path.join(preset_dir, name)
        if is_preset_dir(candidate):
            return candidate, looked
        looked.append(f"preset_dir: no {CONFIG_FILE} in {preset_dir} nor in {candidate}")
        # an explicit preset_dir is where the user wants it from: stop here
        return None, looked
    if looks_like_path(name):
        path = os.path.expanduser(name)
        if is_preset_dir(path):
            return path, looked
        if os.path.isdir(path):
            looked.append(f"the folder {path}: it has no {CONFIG_FILE} (not a keras-hub preset)")
        else:
            looked.append(f"the folder {path}: it does not exist")
        return None, looked
    dirs = search_dirs()
    if not dirs:
        looked.append(f"{PRESETS_ENV}: not set")
    for d in dirs:
        candidate = os.path.join(d, name)
        if is_preset_dir(candidate):
            return candidate, looked
        looked.append(f"{PRESETS_ENV}: {candidate} (no {CONFIG_FILE})")
    cached, cache_folder = _kagglehub_cached(name)
    if cached:
        return cached, looked
    if cache_folder:
        looked.append(f"kagglehub cache: {cache_folder} (no complete download)")
    return None, looked


def _fix_text(name: str, what: str) -> str:
    save_name = name if not has_scheme(name) else "my_preset"
    return (
        "To fix it, either:\n"
        f"  - on a machine with network, download it once and save it as a local preset:\n"
        f"        import keras_hub\n"
        f"        keras_hub.models.Backbone.from_preset({name!r}).save_to_preset(\n"
        f"            '/path/to/presets/{save_name}')\n"
        f"    then copy /path/to/presets here and set {PRESETS_ENV}=/path/to/presets\n"
        f"    (or pass preset_dir='/path/to/presets/{save_name}');\n"
        f"  - or, if the network is only slow or flaky, retry with {OFFLINE_ENV} unset;\n"
        f"  - or train {what} from random weights: pretrained=False "
        "(`pretrained: false` in a recipe)."
    )


def not_found(name: str, looked, what: str, hub_error: BaseException | None = None,
              skipped_hub: bool = False) -> PresetNotFoundError:
    lines = [f"Could not load the keras-hub preset {name!r} ({what})."]
    lines.append("Looked in:")
    lines += [f"  - {place}" for place in looked]
    if skipped_hub:
        lines.append(f"  - the hub: skipped, {OFFLINE_ENV}={os.environ.get(OFFLINE_ENV)}")
    elif hub_error is not None:
        message = str(hub_error).strip().splitlines()
        first = message[0][:300] if message else ""
        lines.append(f"  - the hub: failed with {type(hub_error).__name__}: {first}")
    lines.append(_fix_text(name, what))
    return PresetNotFoundError("\n".join(lines))


def load(preset: str, *, cls=None, preset_dir=None, load_weights=True, what=None, **kwargs):
    """Load a keras-hub backbone from ``preset`` (a built-in preset name,
    a hub handle or a local folder), looking locally first (see the module's
    docstring). ``cls`` is the keras-hub class to load with (default
    ``keras_hub.models.Backbone``); ``kwargs`` go to ``cls.from_preset``."""
    import keras_hub

    cls = cls or keras_hub.models.Backbone
    what = what or "a keras-hub backbone"
    name = preset
    path, looked = find_local(name, preset_dir)
    if path is not None:
        # A local preset that fails to load (corrupt, wrong class) raises
        # keras-hub's own error, which names the folder.
        return cls.from_preset(path, load_weights=load_weights, **kwargs)
    if preset_dir is not None or looks_like_path(name):
        raise not_found(name, looked, what)
    if is_offline():
        raise not_found(name, looked, what, skipped_hub=True)
    try:
        return cls.from_preset(name, load_weights=load_weights, **kwargs)
    except Exception as error:  # network, authentication, unknown handle...
        raise not_found(name, looked, what, hub_error=error) from error
