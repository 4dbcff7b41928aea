"""Model registry, export and loading.

* ``register_model(name, model_cls, ...)`` names an architecture (a model class plus default config).
* ``list_models()`` / ``create_model(name, pretrained=None, **overrides)`` build them.
* ``export_model(model, folder)`` writes ``config.json`` + ``model.safetensors`` + the model's
  assets (tokenizer, scaler statistics, charset...); ``load_pretrained(folder_or_name)`` reads it
  back. Named weights shipped inside the package live under ``zoo/pretrained/<name>/``.
* Every model class also has Hugging Face's ``model.save_pretrained(folder)`` and
  ``ModelClass.from_pretrained(folder_or_name)`` (:class:`PretrainedMixin`), the same two calls.

A zoo model class has a ``family`` string, a ``config_class`` dataclass, a ``config`` instance,
``from_config(dict)``, and optionally ``save_assets(folder)`` / ``load_assets(folder)`` and a set
``runtime_fields`` of config keys that may differ from a checkpoint (dropout, backend, ...).
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import fnmatch
import functools
import importlib
import json
import numbers
import os
import re
import shutil
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from torch import nn

FORMAT = "zoo-export"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
DEFAULT_RUNTIME_FIELDS = frozenset({"dropout", "attn_dropout", "attn_backend", "max_seq_len", "drop_path"})


@dataclass
class ModelSpec:
    """A named architecture: model class, default config, and optional shipped weights."""

    name: str
    model_cls: type
    config: dict[str, Any]
    description: str = ""
    pretrained: Optional[str] = None  # folder name under zoo/pretrained
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def family(self) -> str:
        return self.model_cls.family


_MODELS: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    model_cls: type,
    description: str = "",
    pretrained: Optional[str] = None,
    **config: Any,
) -> ModelSpec:
    """Register ``name`` -> ``model_cls`` with default ``config`` kwargs."""
    if name in _MODELS:
        raise ValueError(f"model name {name!r} is already registered")
    spec = ModelSpec(name, model_cls, dict(config), description, pretrained)
    _MODELS[name] = spec
    return spec


def _ensure_registered() -> None:
    importlib.import_module("zoo.models")


def get_spec(name: str) -> ModelSpec:
    _ensure_registered()
    if name not in _MODELS:
        close = _similar_names(name, list(_MODELS))
        hint = f" Similar: {close[:8]}." if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} See zoo.list_models() for all names.")
    return _MODELS[name]


def _similar_names(name: str, names: list[str], either: bool = False) -> list[str]:
    """``names`` close to ``name``: misspellings (lm-diff-tinyy) first, then names that share its last part
    (str-tiny: str-diff-tiny, ...); with ``either``, the names that share its last part only when none is a
    misspelling."""
    import difflib

    close = difflib.get_close_matches(name, names, n=5, cutoff=0.75)
    if either and close:
        return close
    return close + [m for m in (fnmatch.filter(names, f"*{name.split('-')[-1]}*") if "-" in name else [])
                    if m not in close]


def list_models(
    pattern: Union[str, Sequence[str], None] = "*", family: Optional[str] = None, pretrained: bool = False,
    exclude: Union[str, Sequence[str], None] = (),
) -> list[str]:
    """Registered model names matching a glob ``pattern`` or any of a list of them (as timm's
    ``list_models(filter)``; ``''``, ``[]`` or ``None``: every one, as timm), and none of ``exclude`` (timm's
    ``exclude_filters``); of ``family`` only, with shipped weights only (``pretrained=True``)."""
    _ensure_registered()

    def globs(value: Union[str, Sequence[str], None], name: str) -> list[str]:
        items = [] if value is None else [value] if isinstance(value, str) else list(value)
        bad = [p for p in items if not isinstance(p, str)]
        if bad:
            raise TypeError(f"list_models {name} takes glob strings or a list of them, got {bad[0]!r}")
        return items

    include, leave_out = globs(pattern, "pattern"), globs(exclude, "exclude")
    families = sorted({s.family for s in _MODELS.values()})
    if family is not None and family not in families:
        raise ValueError(f"list_models: unknown family {family!r}; families: {families}")
    include = [p for p in include if p] or ["*"]  # no filter ('' or []: timm's default) lists every model, as timm
    return sorted(
        n
        for n, s in _MODELS.items()
        if any(fnmatch.fnmatch(n, p) for p in include)
        and not any(fnmatch.fnmatch(n, p) for p in leave_out)
        and (family is None or s.family == family)
        and (not pretrained or (s.pretrained is not None and (PRETRAINED_DIR / s.pretrained).is_dir()))
    )


def _config_dict(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    if cfg is None or not dataclasses.is_dataclass(cfg):
        raise TypeError(f"{type(model).__name__} has no dataclass `config`; it is not a zoo model")
    return dataclasses.asdict(cfg)


def _config_defaults(config_cls: type) -> dict[str, Any]:
    """Default value of every field of a config dataclass that has one."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _import_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    if not module.startswith("zoo."):
        raise ValueError(f"refusing to import model class {path!r}: exported zoo models name a class under zoo.")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"model class {path!r} named in {CONFIG_FILE} does not exist in this zoo version") from exc
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and callable(getattr(cls, "from_config", None))):
        raise ValueError(f"{path!r} named as model_class in {CONFIG_FILE} is not a zoo model class; the export is "
                         "damaged: re-export the model")
    return cls


def check_positive_ints(config: Any, names: Sequence[str]) -> None:
    """Every field of ``config`` in ``names`` must be an int >= 1 (not a bool or a float): else a ``ValueError``
    naming the field, before a size of 0 or 3.0 fails later as a division by zero or a type error."""
    for name in names:
        check_positive_int(name, getattr(config, name))


def check_positive_int(name: str, value: Any, any_integral: bool = False) -> None:
    """``value`` must be an int >= 1 (not a bool or a float): else a ``ValueError`` naming ``name``. With
    ``any_integral`` (a call's argument, never saved) numpy / torch integers pass too."""
    kinds = numbers.Integral if any_integral else int
    if not isinstance(value, kinds) or isinstance(value, bool) or value < 1:
        # a numpy / torch integer reads as a whole number in the message: name its type
        numpy_like = isinstance(value, numbers.Integral) and not isinstance(value, kinds)
        kind = (f" of type {type(value).__module__}.{type(value).__name__}; pass a Python int (int(x)), which the "
                "exported config.json can hold") if numpy_like else ""
        raise ValueError(f"{name} must be a positive integer, got {value!r}{kind}")


def config_from(config_class: type, config: Any, owner: str) -> Any:
    """``config`` (a ``config_class`` instance or a dict of its fields) as a ``config_class``; an unknown
    field (a misspelt ``create_model`` keyword, a stale export) is a ``ValueError`` naming it and the known ones."""
    if isinstance(config, config_class):
        check_field_types(config_class, {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}, owner)
        return config
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(config) - names)
    if unknown:
        raise ValueError(f"unknown {owner} config field(s) {unknown}; known: {sorted(names)}")
    check_field_types(config_class, config, owner)
    return config_class(**config)


@functools.lru_cache(maxsize=None)
def _scalar_kinds(config_class: type) -> dict[str, tuple[type, bool]]:
    """``field -> (bool | int | float, None allowed)`` for the config fields annotated with one of those scalar types
    (``Optional`` included); fields that also take a string, a list or a mapping are left to the config's own checks."""
    out: dict[str, tuple[type, bool]] = {}
    try:
        hints = typing.get_type_hints(config_class)
    except Exception:  # noqa: BLE001 -- a user's config class with annotations that do not resolve: not checked
        return out
    for name, hint in hints.items():
        args = typing.get_args(hint) if typing.get_origin(hint) is Union else (hint,)
        kinds = [a for a in args if a is not type(None)]
        if len(kinds) == 1 and kinds[0] in (bool, int, float):
            out[name] = (kinds[0], len(kinds) < len(args))
    return out


def check_field_types(config_class: type, values: Any, owner: str) -> None:
    """A ``ValueError`` naming a bool / int / float field of ``config_class`` given a value of another type: the
    string ``'false'`` for a bool is true (a ``revin`` / ``fda`` switch left on), and a string for a float fails deep
    in torch (``'<' not supported between instances of 'str' and 'int'``). Numpy numbers pass here
    (the config's own checks refuse a numpy integer size, which config.json cannot hold, as a numpy bool is refused
    here); an int is a float."""
    for name, (kind, optional) in _scalar_kinds(config_class).items():
        if name not in values or (optional and values[name] is None):
            continue
        value = values[name]
        if kind is bool:
            # numpy's bool (np.False_ from an array) is refused as numpy integers are: config.json cannot hold it
            ok, want = isinstance(value, bool), "true or false (a Python bool: bool(x) for a numpy one)"
        else:
            ok = isinstance(value, numbers.Integral if kind is int else numbers.Real) and not isinstance(value, bool)
            want = "an integer" if kind is int else "a number"
        if not ok:
            # YAML 1.1 (PyYAML) reads 1e-3, without a dot, as a string
            hint = (f" (a YAML reader took it for a string: write {value.strip().lower().replace('e', '.0e', 1)})"
                    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+[eE][+-]?\d+", value.strip()) else "")
            raise ValueError(f"{owner} config field {name} must be {want}{' or None' if optional else ''}, got "
                             f"{value!r}{hint}")


def create_model(
    name: str, pretrained: Optional[Union[str, Path, bool]] = None, adapter: bool = True, **overrides: Any
) -> nn.Module:
    """Build the registered architecture ``name`` with ``overrides``; load weights from ``pretrained``.

    ``pretrained`` is an exported folder (or a registered name with shipped weights; ``True``: the weights
    shipped under ``name``, as in timm); its config
    must match the built architecture except for runtime fields (dropout, backend, ...), else a
    ``ValueError`` lists the differing fields. Fields the training data fixes (the model class's
    ``data_fields``: a recognizer's charset and maximum length, a tokenizer's vocabulary size) come
    from the checkpoint unless passed in ``overrides`` (as timm takes ``num_classes`` from the
    pretrained config). A ``pretrained`` folder that also holds an adapter (``adapter.safetensors``, written by
    an adapted run) gets it applied, as :func:`load_pretrained` does; ``adapter=False`` returns the plain base.

    As timm's ``create_model``, the model is returned in train mode (:func:`load_pretrained` returns it in eval mode,
    as transformers' ``from_pretrained``). Unlike timm, which drops the classifier weights of a checkpoint whose
    ``num_classes`` differs, a data field passed with another value than the checkpoint's is refused (the output
    layer's rows mean the checkpoint's tokens or characters). timm's own keywords (``checkpoint_path``,
    ``drop_rate``, ``drop_path_rate``, ``num_classes``) are named with the zoo's way.
    """
    spec = get_spec(name)
    _refuse_timm_keywords(spec, overrides)
    config = {**spec.config, **overrides}
    meta = folder = None
    if isinstance(pretrained, bool):  # timm's pretrained=True: the weights shipped under this name
        pretrained = _shipped_folder(spec) if pretrained else None
    if pretrained is not None:
        folder = resolve_pretrained(pretrained)
        meta = read_export_config(folder)
        # (from a checkpoint of the same class only: another class fails in check_compatible below)
        same_class = meta["model_class"] == _class_path(spec.model_cls)
        if same_class:
            refuse_unknown_fields(spec.model_cls, meta, folder)
        data_fields = getattr(spec.model_cls, "data_fields", ()) if same_class else ()
        config.update({k: v for k, v in meta["config"].items() if k in data_fields and k not in overrides})
    try:
        model = spec.model_cls.from_config(config)
    except (TypeError, ValueError) as exc:
        # an override that differs from the checkpoint can fail the build itself (attn_type diff with the gda
        # checkpoint's attn_args: an unexpected keyword): name the mismatch, as check_compatible does after a build
        if meta is None or meta["model_class"] != _class_path(spec.model_cls):
            raise
        runtime = getattr(spec.model_cls, "runtime_fields", DEFAULT_RUNTIME_FIELDS)
        passed, diffs = _config_differences(meta["config"], overrides, runtime)
        if not passed:
            raise
        raise ValueError(f"checkpoint {folder} does not match the configured architecture ({diffs}), which does not "
                         f"build with the checkpoint's other fields ({exc}); drop the overrides {passed} or use a "
                         "checkpoint trained with them") from exc
    model.registered_name = name  # save_pretrained's default arch
    if meta is not None:
        check_compatible(model, meta, folder, overrides=set(overrides), arch=name)
        _load_weights(model, folder)
        _load_assets(model, folder, meta)
        if adapter:
            _load_adapter_if_any(model, folder)
    return model


# timm's create_model keywords, and the zoo's way to do what they do
_TIMM_CREATE_HINTS = {
    "checkpoint_path": "pass pretrained=<an exported folder or a run's .ckpt>",
    "num_classes": "zoo models have no classifier to resize: the output is the data's (an LM's vocab_size, a "
                   "recognizer's charset), taken from a pretrained checkpoint",
}
_TIMM_FIELD_NAMES = {"drop_rate": "dropout", "drop_path_rate": "drop_path"}  # timm's name -> the zoo config field


def _refuse_timm_keywords(spec: ModelSpec, overrides: dict[str, Any]) -> None:
    """A ``ValueError`` naming the zoo's way for a timm ``create_model`` keyword that is no config field of ``spec``'s
    class (the plain unknown-field error would list the known fields only)."""
    config_class = getattr(spec.model_cls, "config_class", None)
    fields = {f.name for f in dataclasses.fields(config_class)} if dataclasses.is_dataclass(config_class) else set()
    timm = sorted(k for k in overrides if k in {**_TIMM_CREATE_HINTS, **_TIMM_FIELD_NAMES} and k not in fields)
    if timm:
        cls = spec.model_cls.__name__
        ours = {k: f"the field is {v}" if v in fields else f"{cls} has no {v}" for k, v in _TIMM_FIELD_NAMES.items()}
        hints = [f"{k}: {_TIMM_CREATE_HINTS.get(k) or ours[k]}" for k in timm]
        raise ValueError(f"create_model({spec.name!r}) got timm keyword(s) {timm}, which {cls} does not take: "
                         + "; ".join(hints))


def _load_adapter_if_any(model: nn.Module, folder: Path) -> None:
    """Apply the adapter an adapted export keeps beside its base weights (``adapter.safetensors``), if any."""
    from zoo.nn.adapters import ADAPTER_FILE, load_adapter

    if (folder / ADAPTER_FILE).is_file():
        load_adapter(model, folder)


def resolve_pretrained(name_or_path: Union[str, Path]) -> Path:
    """An exported folder for a path, for the name of a model with shipped weights, or for a run's Lightning ``.ckpt``
    (the model its task holds, exported once per process to a temporary folder, as ``python -m zoo export`` would:
    ``pretrained=<run>.ckpt`` fine-tunes from a checkpoint as from its export)."""
    if isinstance(name_or_path, str) and not name_or_path.strip():
        # Path("") is the working directory
        raise ValueError(f"got an empty name or path ({name_or_path!r}): give an exported model folder, a run's "
                         f".ckpt or a model name with shipped weights ({list_models(pretrained=True)})")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        return _checkpoint_export(path)
    _ensure_registered()
    spec = _MODELS.get(str(name_or_path))
    if spec is not None:
        return _shipped_folder(spec)
    raise FileNotFoundError(_not_found_message(str(name_or_path), path))


# a Hugging Face Hub repo id (timm's "hf-hub:" / "hf_hub:" prefix or an "hf://" address allowed)
_HUB_ID = re.compile(r"(?:hf[-_]hub:|hf://)?([A-Za-z0-9][\w.-]*/[\w.-]+)")


def _not_found_message(name: str, path: Path) -> str:
    """Why ``name`` loads nothing: the close shipped or registered names, the folder looked for, and how a Hugging
    Face Hub model is loaded (downloaded and converted by hand: the zoo reads local files only)."""
    shipped = list_models(pretrained=True)
    text = (f"{name!r} is neither an exported model folder, a run's checkpoint file nor a model name with shipped "
            f"weights ({shipped}); export one with zoo.export_model or `python -m zoo export`.")
    # a close spelling, else the names that share its last part
    close = _similar_names(name, list(_MODELS), either=True)[:5]
    if any(n in shipped for n in close):
        text += f" Similar shipped names: {[n for n in close if n in shipped]}."
    if any(n not in shipped for n in close):
        text += (f" Similar names registered without shipped weights: {[n for n in close if n not in shipped]} "
                 "(zoo.create_model(name) builds one untrained).")
    if "/" in name or os.sep in name or name.startswith(("~", ".")):
        text += f" There is no file or folder {path.absolute()}."
    hub = _HUB_ID.fullmatch(name)
    if hub and not name.startswith((".", "/", "~")):
        text += (f" If it is a Hugging Face Hub repo id: it is not found locally, and the zoo never downloads (it "
                 f"works offline, HF_HUB_OFFLINE or not); download it (huggingface_hub.snapshot_download("
                 f"{hub.group(1)!r}, local_dir=DIR)), convert it (`python -m zoo convert DIR OUT`: Llama, Mistral, "
                 "Qwen2, BERT, RoBERTa) and load the local folder OUT.")
    return text


_CHECKPOINT_EXPORTS: dict[tuple[str, int, int], Path] = {}


def _checkpoint_export(path: Path) -> Path:
    """The export of the model in the Lightning checkpoint ``path``, written once per process (per file version) to
    a temporary folder removed at exit."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    folder = _CHECKPOINT_EXPORTS.get(key)
    if folder is None or not folder.is_dir():
        task = load_checkpoint_task(path)  # names a file that is no zoo checkpoint
        tmp = Path(tempfile.mkdtemp(prefix="zoo-ckpt-"))
        atexit.register(shutil.rmtree, tmp, True)
        folder = _CHECKPOINT_EXPORTS[key] = task.export(tmp / "export")
    return folder


def _shipped_folder(spec: ModelSpec) -> Path:
    """The folder of the weights shipped under ``spec``'s name."""
    if spec.pretrained is None or not (PRETRAINED_DIR / spec.pretrained).is_dir():
        raise ValueError(
            f"model {spec.name!r} has no shipped weights; names with weights: {list_models(pretrained=True)}"
        )
    return PRETRAINED_DIR / spec.pretrained


def read_export_config(folder: Union[str, Path]) -> dict[str, Any]:
    """Parse and validate ``folder/config.json``."""
    folder = Path(folder)
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        hint = ""
        if (folder / "export" / CONFIG_FILE).is_file():
            hint = f"; it looks like a run folder: its export is {folder / 'export'}"
        raise FileNotFoundError(f"{cfg_path} not found: {folder} is not an exported zoo model folder{hint}")
    try:
        meta = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{cfg_path} is not valid JSON ({exc}); the export is corrupt") from exc
    if isinstance(meta, dict) and meta.get("format") != FORMAT and "model_type" in meta:
        raise ValueError(
            f"{cfg_path} is not a zoo export: {folder} holds a Hugging Face transformers model (model_type="
            f"{meta['model_type']!r}); convert it with `python -m zoo convert {folder} OUT` (zoo.convert.convert_hf: "
            "Llama, Mistral, Qwen2, BERT, RoBERTa) and load OUT"
        )
    if (not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("model_class"), str)
            or not isinstance(meta.get("config"), dict)):
        raise ValueError(
            f"{cfg_path} is not a zoo export (needs format={FORMAT!r}, a model_class name and a config object); "
            "Hugging Face folders are imported through zoo.convert, a damaged export is re-exported"
        )
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{cfg_path} has format_version {meta['format_version']}; upgrade zoo to read it")
    return meta


def refuse_unknown_fields(cls: type, meta: dict[str, Any], folder: Union[str, Path]) -> None:
    """A ``ValueError`` when an export's config holds fields ``cls``'s config class lacks: written by a newer zoo (or
    edited), it would be refused as a misspelt keyword (load_pretrained) or built without them (create_model)."""
    import zoo

    config_class = getattr(cls, "config_class", None)
    if config_class is None or not dataclasses.is_dataclass(config_class):
        return
    unknown = sorted(set(meta["config"]) - {f.name for f in dataclasses.fields(config_class)})
    if unknown:
        raise ValueError(
            f"{Path(folder) / CONFIG_FILE} has config field(s) {unknown} this zoo ({zoo.__version__}) does not know "
            f"for a {cls.__name__}: the export was written by zoo {meta.get('zoo_version', '(unknown version)')}; if "
            "that is a newer one, upgrade zoo to load it; if the file was edited, remove the fields"
        )


def export_arch_config(arch: str, config: dict[str, Any]) -> dict[str, Any]:
    """The architecture fields of an export's ``config`` that ``arch``'s config class takes (runtime
    fields such as dropout left out), to rebuild the checkpoint's shape under a registered name."""
    spec = get_spec(arch)
    fields = {f.name for f in dataclasses.fields(spec.model_cls.config_class)}
    runtime = getattr(spec.model_cls, "runtime_fields", ())
    return {k: v for k, v in config.items() if k in fields and k not in runtime}


def check_compatible(model: nn.Module, meta: dict[str, Any], folder: Union[str, Path], overrides: set[str], arch: str) -> None:
    """Raise ``ValueError`` naming every architecture field where ``model`` (built by :func:`create_model`
    as ``arch`` with ``overrides``) and the export differ, and whether each value was passed by the
    caller or is the registered architecture's."""
    ours_cls = _class_path(type(model))
    if meta["model_class"] != ours_cls:
        raise ValueError(
            f"checkpoint {folder} holds a {meta['model_class']} but the config builds a {ours_cls}; "
            "pick the matching architecture or another checkpoint"
        )
    runtime = getattr(model, "runtime_fields", DEFAULT_RUNTIME_FIELDS)
    ours = _config_dict(model)
    # a field the checkpoint lacks (an export older than the field) has the value load_pretrained
    # builds for it: the config class's default
    saved = {**_config_defaults(type(model.config)), **meta["config"]}
    differing, diffs = _config_differences(saved, ours, runtime)
    if not differing:
        return
    passed = [k for k in differing if k in overrides]
    registered = [k for k in differing if k not in overrides]
    hints = []
    if passed:
        hints.append(f"drop the overrides {passed} or use a checkpoint trained with them")
    if registered:
        hints.append(
            f"{registered} are the registered {arch!r} values: the checkpoint is another architecture; "
            "create the matching name or read it with zoo.load_pretrained"
        )
    raise ValueError(f"checkpoint {folder} does not match the configured architecture ({diffs}); {'; '.join(hints)}")


def _config_differences(saved: dict[str, Any], ours: dict[str, Any], runtime: Any) -> tuple[list[str], str]:
    """The architecture fields of ``ours`` that ``saved`` (a checkpoint's config) sets otherwise (runtime fields and
    fields ``saved`` lacks aside), and their ``"field: checkpoint=... config=..."`` description."""
    keys = [k for k, v in ours.items() if k not in runtime and k in saved and not _same_setting(saved[k], v)]
    return keys, "; ".join(f"{k}: checkpoint={saved[k]!r} config={ours[k]!r}" for k in keys)


def _same_setting(saved: Any, ours: Any) -> bool:
    """Whether a checkpoint's config value and ours build the same model: equal, or ``None`` and an empty mapping
    (``attn_args: {}`` and no ``attn_args`` give the attention layers the same keywords)."""
    empty = (None, {})
    return _equal_values(saved, ours) or (saved in empty and ours in empty)


def _equal_values(a: Any, b: Any) -> bool:
    """``a == b`` where a list and a tuple of equal items are equal, at any depth: YAML and JSON have no tuples, so a
    value given as ``(4, 8)`` in Python is ``[4, 8]`` in a config or an export."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal_values(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal_values(a[k], b[k]) for k in a)
    return a == b


def _load_weights(model: nn.Module, folder: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the export in {folder} has no weights")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}; the file is corrupt or truncated, re-export it") from exc
    try:
        load_state_dict_checked(model, state, str(path))
    except ValueError as exc:
        # the model was built from config.json: weights that do not fit it mean the two files disagree
        raise ValueError(
            f"{exc}. The model was built from {folder / CONFIG_FILE}: it and {WEIGHTS_FILE} come from different "
            "models, or one of them was edited; copy both from one export or re-export the model"
        ) from exc


def load_state_dict_checked(model: nn.Module, state: dict, source: str) -> None:
    """``load_state_dict`` that names every missing, unexpected or mis-shaped tensor.

    Tensors tied to another (e.g. ``lm_head.weight`` to the embedding) may be absent.
    """
    own = model.state_dict()
    tied = _tied_names(model)
    missing = [k for k in own if k not in state and k not in tied]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = tensor_problems(("missing tensors", missing), ("unexpected tensors", unexpected), ("shape mismatches", shapes))
    if problems:
        raise ValueError(f"weights in {source} do not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)


def tensor_problems(*groups: tuple[str, list[str]]) -> list[str]:
    """``"<label> [names...]"`` for each non-empty group (first 8 names), for weight-loading errors."""
    return [f"{label} {names[:8]}{' ...' if len(names) > 8 else ''}" for label, names in groups if names]


def _tied_names(model: nn.Module) -> set[str]:
    """State-dict names whose tensor is shared with an earlier name (saved once)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, t in model.state_dict(keep_vars=True).items():
        key = id(t)
        if key in seen:
            tied.add(name)
        else:
            seen[key] = name
    return tied


def _load_assets(model: nn.Module, folder: Path, meta: dict[str, Any]) -> None:
    # the asset files the export wrote (an older export did not list them): a lost one is an error, not a
    # model silently loaded without its tokenizer or scaler statistics
    assets = meta.get("assets") if isinstance(meta.get("assets"), list) else []
    missing = [a for a in assets if isinstance(a, str) and not (folder / a).exists()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks the asset files {missing} its {CONFIG_FILE} lists (missing: the export is incomplete); "
            "copy the whole folder or re-export the model"
        )
    if hasattr(model, "load_assets"):
        model.load_assets(folder)


_LOCAL_ONLY = "the zoo reads local files only, never the Hub: drop it"
# transformers' from_pretrained keywords, and the zoo's way to do what they do
_HF_LOADING_HINTS = {
    "torch_dtype": "the model loads in float32: call .to(torch.bfloat16) (or another dtype) on it",
    "dtype": "the model loads in float32: call .to(torch.bfloat16) (or another dtype) on it",
    "device_map": "pass map_location='cuda' (or call .to(device)) for the device",
    "device": "pass map_location='cuda' (or call .to(device)) for the device",
    **dict.fromkeys(("local_files_only", "revision", "cache_dir", "token", "force_download", "trust_remote_code",
                     "use_safetensors"), _LOCAL_ONLY),
}


def load_pretrained(
    name_or_path: Union[str, Path], map_location: str = "cpu", adapter: bool = True, **overrides: Any
) -> nn.Module:
    """Load an exported model (folder, or registered name with shipped weights), in eval mode.

    A Lightning ``.ckpt`` written by ``python -m zoo fit`` loads too: the model its task holds, exported
    to a temporary folder and read back, so it equals ``python -m zoo export CKPT OUT`` then loading OUT.

    A folder that also holds ``adapter.safetensors`` (written by an adapted run, see
    ``zoo.nn.adapters``) gets its adapter applied; ``adapter=False`` returns the plain base.
    ``overrides`` may change runtime fields only (dropout, attention backend, ...).

    The model is float32 whatever dtype the weights were saved in (a ``bf16-true`` run exports bfloat16 ones), as
    timm and transformers 4 load; ``.to(torch.bfloat16)`` serves it in bfloat16.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return _load_checkpoint_model(path, map_location, adapter, overrides)
    folder = resolve_pretrained(name_or_path)
    meta = read_export_config(folder)
    cls = _import_class(meta["model_class"])
    refuse_unknown_fields(cls, meta, folder)
    runtime = getattr(cls, "runtime_fields", DEFAULT_RUNTIME_FIELDS)
    bad = sorted(set(overrides) - set(runtime))
    if bad:
        hints = [_HF_LOADING_HINTS[k] for k in bad if k in _HF_LOADING_HINTS]
        raise ValueError(f"load_pretrained can only override runtime fields {sorted(runtime)}, not {bad}"
                         + "".join(f"; {h}" for h in dict.fromkeys(hints)))
    model = cls.from_config({**meta["config"], **overrides})
    _load_weights(model, folder)
    _load_assets(model, folder, meta)
    if adapter:
        _load_adapter_if_any(model, folder)
    model.pretrained_meta = meta
    return model.to(map_location).eval()


def read_checkpoint(path: Union[str, Path]) -> dict[str, Any]:
    """The Lightning checkpoint ``path`` as ``torch.load`` returns it, its tensors memory-mapped (a zip file, as
    ``torch.save`` writes: a tensor's bytes are read when it is used, so the optimizer state a model load never
    touches is never read); torch's older (non-zip) format, which cannot be mapped, is read whole. A path that is no
    checkpoint (a folder, a missing file, an export's own file, a file torch cannot read) is named."""
    import torch

    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a checkpoint file: give the .ckpt that fit wrote "
                                "(an exported folder loads as it is with zoo.load_pretrained)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    if path.name in (CONFIG_FILE, WEIGHTS_FILE):
        raise ValueError(f"{path} is one file of an exported model: give its folder, {path.parent}")
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError:  # torch's older (non-zip) format cannot be memory-mapped
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 -- any unpickling failure means a bad file
        raise ValueError(f"cannot read {path} ({exc}); is it a Lightning checkpoint?") from exc
    return ckpt


def checkpoint_task_class_of(ckpt: Any, path: Path) -> str:
    """The ``zoo_task_class`` of ``ckpt``, the checkpoint :func:`read_checkpoint` read from ``path``."""
    cls_path = ckpt.get("zoo_task_class") if isinstance(ckpt, dict) else None
    if not isinstance(cls_path, str) or not cls_path:
        raise ValueError(f"{path} was not written by a zoo task (no zoo_task_class entry)")
    return cls_path


def checkpoint_task_class(path: Union[str, Path]) -> str:
    """The task class (``module.Class``) that wrote the Lightning checkpoint ``path`` (its ``zoo_task_class``)."""
    path = Path(path).expanduser()
    return checkpoint_task_class_of(read_checkpoint(path), path)


def _lightning_loader() -> Optional[tuple[Any, Any]]:
    """Lightning's checkpoint migration and its state loader (internals of ``load_from_checkpoint``, 2.0 to 2.6 at
    least), or None in a release without them (the public call is used then)."""
    try:
        from lightning.pytorch.core.saving import _load_state
        from lightning.pytorch.utilities.migration.utils import _pl_migrate_checkpoint
    except ImportError:
        return None
    return _pl_migrate_checkpoint, _load_state


def load_checkpoint_task(path: Union[str, Path], map_location: str = "cpu", *, checkpoint: Optional[dict] = None,
                         keep_dtypes: bool = False) -> Any:
    """The zoo task (LightningModule) of a checkpoint ``python -m zoo fit`` wrote, whatever its domain.

    The file is read once (``checkpoint``: what :func:`read_checkpoint` returned for it, not read again), memory-mapped:
    Lightning's ``load_from_checkpoint`` read all of it into memory, the optimizer state (twice the weights under
    AdamW) included, after the peeks at its task class. ``keep_dtypes``: the weights keep the dtypes the checkpoint
    holds (a ``bf16-true`` run's bfloat16) where the task builds float32, as the fit's own export and Hugging Face's
    ``save_pretrained`` keep a model's dtype (``zoo.load_pretrained`` loads float32 from either)."""
    from zoo.tasks.base import ZooTask

    path = Path(path).expanduser()
    ckpt = read_checkpoint(path) if checkpoint is None else checkpoint
    cls_path = checkpoint_task_class_of(ckpt, path)
    module, _, name = cls_path.rpartition(".")
    try:  # a zoo task or the user's subclass of one (python -m zoo export took those before load_pretrained did)
        cls = getattr(importlib.import_module(module), name, None) if module else None
    except ImportError:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, ZooTask)):
        raise ValueError(f"{path} names {cls_path!r} as its task, which is no importable zoo task class "
                         "(a zoo.tasks class or a subclass of one)")
    internals = _lightning_loader()
    if internals is None:  # reads the file again, whole
        task = cls.load_from_checkpoint(path, map_location="cpu")
    else:
        # what Lightning's load_from_checkpoint does with the dictionary it reads (its public call takes only a path
        # and reads the file whole, unmapped); no hyperparameters are overridden here
        migrate, load_state = internals
        ckpt = migrate(ckpt, checkpoint_path=path)
        ckpt.setdefault(cls.CHECKPOINT_HYPER_PARAMS_KEY, {})
        task = load_state(cls, ckpt)
    if keep_dtypes:
        saved = ckpt.get("state_dict")
        for key, t in [*task.named_parameters(), *task.named_buffers()]:
            dtype = getattr(saved.get(key), "dtype", None)
            if dtype is not None and dtype.is_floating_point and t.is_floating_point() and t.dtype != dtype:
                t.data = t.data.to(dtype)
    return task.to(map_location)


def _load_checkpoint_model(path: Path, map_location: str, adapter: bool, overrides: dict[str, Any]) -> nn.Module:
    task = load_checkpoint_task(path)
    with tempfile.TemporaryDirectory(prefix="zoo-ckpt-") as tmp:
        folder = task.export(Path(tmp) / "export")
        return load_pretrained(folder, map_location=map_location, adapter=adapter, **overrides)


_STAGING = ".export-"  # the prefix of export_model's staging folder inside the export folder


def refuse_occupied(folder: Path, hint: str, what: str = "") -> None:
    """``FileExistsError`` when ``folder`` exists as a file or a non-empty folder: nothing is overwritten.
    ``hint`` says what to do instead; ``what`` names the folder's role at the start of the message."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"{what + ' ' if what else ''}{folder} exists and is not empty; {hint}")


def export_model(
    model: nn.Module,
    folder: Union[str, Path],
    *,
    arch: Optional[str] = None,
    extra: Optional[dict[str, Any]] = None,
    overwrite: bool = False,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and assets to ``folder``.

    Refuses a non-empty ``folder`` unless ``overwrite=True`` (nothing is silently replaced). With
    ``overwrite=True`` over an earlier zoo export, the files that export wrote (weights, config, the
    asset files its ``config.json`` lists under ``"assets"``, an adapter from
    :func:`zoo.nn.adapters.save_adapter`) are removed first, so no stale tokenizer or adapter is
    loaded with the new model; files the zoo did not write stay. An export from an older zoo that
    did not list its assets is refused when other files would be left beside the new one.
    Everything is written to a staging folder inside ``folder`` first (renamed in: no write beside it, which a
    mounted volume or a read-only parent would refuse), so a failing ``save_assets`` leaves the old export as it was.
    """
    import zoo

    while isinstance(getattr(model, "_orig_mod", None), nn.Module):
        # torch.compile's wrapper: export the model it compiled (its class name and un-prefixed tensor names), as
        # Lightning and Hugging Face unwrap it; the wrapper's own class is no zoo model load_pretrained could build
        model = model._orig_mod
    if getattr(model, "adapter_config", None):
        # an adapted model: the unchanged base as a plain export plus the adapter files (what
        # load_pretrained reads back); the model itself is left as it is
        from zoo.nn.adapters import remove_adapters, save_adapter

        if any(getattr(m, "merged", False) for m in model.modules()):
            raise ValueError("the adapters are merged into the base weights; call zoo.nn.adapters.unmerge_adapters(model) "
                             "before exporting (the export keeps the base and the adapter apart)")
        base = remove_adapters(copy.deepcopy(model))
        out = export_model(base, folder, arch=arch, extra={**(extra or {}), "adapter": model.adapter_config["method"]},
                           overwrite=overwrite)
        save_adapter(model, out, overwrite=overwrite)
        return out
    folder = Path(folder).expanduser()  # "~/m" as load_pretrained / from_pretrained read it back
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file, not a folder; an export is a folder (config.json, weights, "
                              "assets): name a folder")
    if folder.is_dir():  # a killed export's staging folder (its cleanup never ran) is ours, not the user's
        for stale in folder.glob(f"{_STAGING}*"):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
    if not overwrite:
        refuse_occupied(folder, "choose a new folder or pass overwrite=True")
    refuse_hf_model_folder(folder)
    tied = _tied_names(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in tied}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # staged inside the folder: renames that never cross a filesystem (a mounted volume) or need its parent writable
        staging = tempfile.TemporaryDirectory(dir=folder, prefix=_STAGING)
    except PermissionError as exc:
        raise PermissionError(f"cannot write the export into {folder} ({exc.strerror}: {exc.filename}); choose a "
                              "folder you may write to") from exc
    with staging as tmp:
        stage = Path(tmp)
        if hasattr(model, "save_assets"):
            model.save_assets(stage)
        assets = sorted(p.name for p in stage.iterdir())
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "zoo_version": zoo.__version__,
            "family": getattr(model, "family", None),
            "model_class": _class_path(type(model)),
            "arch": arch,
            "config": _config_dict(model),
            "extra": extra or {},
            "assets": assets,  # what an overwrite removes again (see _remove_previous_export)
        }
        save_safetensors(state, stage / WEIGHTS_FILE, metadata={"format": "pt"})
        (stage / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        written = [WEIGHTS_FILE, CONFIG_FILE, *assets]
        _remove_previous_export(folder, {*written, stage.name})
        for name in written:
            os.replace(stage / name, folder / name)
    return folder


def save_safetensors(state: dict[str, Any], path: Union[str, Path], metadata: Optional[dict[str, str]] = None) -> None:
    """``safetensors.torch.save_file``, leaving the file readable as any file the process writes (mode ``0o666``
    less the umask): recent safetensors releases create it ``0o600``, so only its owner could load an export its
    ``config.json`` beside it lets everyone read."""
    from safetensors.torch import save_file

    save_file(state, str(path), metadata=metadata)
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    """The process umask: read from /proc where Linux has it (setting it, the only portable way to read it, would
    hand any file another thread creates meanwhile mode 0o666)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class PretrainedMixin:
    """Hugging Face's ``save_pretrained`` / ``from_pretrained`` on a zoo model class: the same folder as
    :func:`export_model` / :func:`load_pretrained` write and read; and its ``num_parameters()``, ``device`` and
    ``dtype`` helpers, as a transformers model has them."""

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameters counted as transformers counts them: each shared tensor once (a tied head is the embedding),
        with ``only_trainable`` those that require grad, with ``exclude_embeddings`` without the ``nn.Embedding``
        weights."""
        embedding = (m.weight for m in self.modules() if isinstance(m, nn.Embedding))
        embeddings = {id(w) for w in embedding} if exclude_embeddings else set()
        return sum(p.numel() for p in self.parameters()
                   if id(p) not in embeddings and (p.requires_grad or not only_trainable))

    @property
    def device(self) -> Any:
        """The ``torch.device`` of the first parameter (transformers' ``model.device``: ``inputs.to(model.device)``)."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> Any:
        """The ``torch.dtype`` of the first floating-point parameter (transformers' ``model.dtype``)."""
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    def save_pretrained(self, folder: Union[str, Path], *, overwrite: bool = False, arch: Optional[str] = None,
                        extra: Optional[dict[str, Any]] = None) -> Path:
        """:func:`export_model` to ``folder`` (a non-empty one only with ``overwrite=True``). The registered name
        is ``arch``, else the one the model was built (``create_model``) or loaded under. The notes of an export
        it was loaded from (metrics, provenance) are not copied: the weights may have changed since; ``extra``
        writes new ones."""
        meta = getattr(self, "pretrained_meta", None) or {}
        arch = arch or getattr(self, "registered_name", None) or meta.get("arch")
        return export_model(self, folder, arch=arch, extra=extra, overwrite=overwrite)

    @classmethod
    def from_pretrained(cls, name_or_path: Union[str, Path], **kwargs: Any) -> nn.Module:
        """:func:`load_pretrained` (same arguments), refusing a folder or checkpoint that holds another kind of
        model."""
        model = folder = None
        if Path(name_or_path).expanduser().is_file():  # a checkpoint: its model class shows once it is loaded
            model = load_pretrained(name_or_path, **kwargs)
            held = _class_path(type(model))
        else:
            folder = resolve_pretrained(name_or_path)
            held = read_export_config(folder)["model_class"]
        if held != _class_path(cls) and not issubclass(_import_class(held), cls):
            raise TypeError(f"{name_or_path} holds a {held}, not a {cls.__name__}; zoo.load_pretrained({str(name_or_path)!r}) "
                            "loads it as what it is")
        return model if model is not None else load_pretrained(folder, **kwargs)


def refuse_hf_model_folder(folder: Union[str, Path]) -> None:
    """A ``FileExistsError`` for a Hugging Face model folder (a ``config.json`` with ``model_type`` that is no zoo
    export): an overwriting export replaces its same-named files (config.json, weights, tokenizer.json) and leaves
    that model unloadable; ``overwrite`` replaces earlier zoo exports only."""
    try:
        meta = json.loads((Path(folder) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return
    if isinstance(meta, dict) and meta.get("format") != FORMAT and "model_type" in meta:
        raise FileExistsError(
            f"{folder} holds a Hugging Face model (config.json model_type={meta['model_type']!r}), not an earlier zoo "
            "export; overwrite replaces earlier exports only: name a new folder"
        )


def _remove_previous_export(folder: Path, new_names: set[str]) -> None:
    """Delete the files an earlier zoo export wrote into ``folder`` (nothing else)."""
    try:
        meta = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return  # not a zoo export: only files of the same names get replaced
    from zoo.nn.adapters import ADAPTER_CONFIG_FILE, ADAPTER_FILE

    ours = {CONFIG_FILE, WEIGHTS_FILE, ADAPTER_FILE, ADAPTER_CONFIG_FILE}
    assets = meta.get("assets")
    if assets is None:
        left = sorted(p.name for p in folder.iterdir() if p.name not in ours | new_names)
        if left:
            raise FileExistsError(
                f"{folder} holds an export from an older zoo that did not record its asset files; {left} would "
                "stay beside the new export (a stale tokenizer or metadata file would be loaded with it): "
                "remove them or choose a new folder"
            )
    else:
        # Plain names only: a hand-edited list must not reach outside the folder.
        ours |= {a for a in assets if isinstance(a, str) and a not in ("", ".", "..") and Path(a).name == a}
    for name in sorted(ours):
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
