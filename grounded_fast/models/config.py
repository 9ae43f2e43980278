"""Model configs: dataclasses with presets, validated (de)serialisation, save / load of models.

Every model config is a dataclass deriving from :class:`ModelConfig`; ``presets`` maps a preset
name ('tiny': trains in CPU minutes; 'paper': the original sizes) to field overrides. Every
construction checks every field (types, finiteness, ranges); ``from_dict`` also rejects unknown
keys. Errors name the key, the bad value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import typing
from typing import Any, ClassVar, Dict

import torch

from .._atomic import Written, write_atomic

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"


def _show(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def _numeric_string(value: Any) -> bool:
    try:
        return isinstance(value, str) and math.isfinite(float(value))
    except ValueError:
        return False


def _check_type(cls_name: str, key: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the type hint ``hint`` of field ``cls_name.key`` and normalised
    (ints of float fields -> float, sequences -> the hinted tuple / list; elements of sequences and
    dicts are checked too; floats must be finite). TypeError / ValueError naming the field otherwise."""
    def fail(what: str, exc=TypeError):
        raise exc(f"{cls_name}.{key} = {_show(value)}: {what}")

    if hint is Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return value
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is float or hint is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
                (hint is int and not isinstance(value, numbers.Integral)):
            yaml_hint = " (YAML reads 1e-3 as a string: write 1.0e-3)" if _numeric_string(value) else ""
            fail(("must be an integer" if hint is int else "must be a number") + yaml_hint)
        if hint is int:
            return int(value)
        if not math.isfinite(value):
            fail("must be a finite number", ValueError)
        return float(value)
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            fail("must be a mapping")
        kh, vh = args or (Any, Any)
        return {_check_type(cls_name, f"{key}[{k!r}]", k, kh): _check_type(cls_name, f"{key}[{k!r}]", v, vh)
                for k, v in value.items()}
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            fail("must be a list")
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            fail(f"must have {len(args)} elements")
        hints = [args[0] if args[-1] is Ellipsis else args[i] for i in range(len(value))] if args else \
            [Any] * len(value)
        items = [_check_type(cls_name, f"{key}[{i}]", v, h) for i, (v, h) in enumerate(zip(value, hints))]
        return tuple(items) if origin is tuple else items
    if isinstance(hint, type) and issubclass(hint, ModelConfig):
        return _nested_config(cls_name, key, value, hint)
    if isinstance(hint, type) and not isinstance(value, hint):
        fail(f"must be {'a string' if hint is str else hint.__name__}")
    return value


def _nested_config(cls_name: str, key: str, value: Any, hint: type) -> "ModelConfig":
    """A section of a config (e.g. a study's ``data``): a mapping -> ``hint.from_dict``, checked in
    full; its errors name the section as ``Outer.key.field``."""
    try:
        if isinstance(value, hint):
            value.check()
            return value
        if not isinstance(value, dict):
            raise TypeError(f"{cls_name}.{key} = {_show(value)}: must be a mapping (a [{key}] table)")
        return hint.from_dict(value)
    except (TypeError, ValueError) as exc:
        msg = str(exc)
        for inner, outer in ((f"{hint.__name__}.", f"{cls_name}.{key}."),
                             (f"unknown {hint.__name__} key", f"unknown {cls_name}.{key} key")):
            if msg.startswith(inner):
                msg = outer + msg[len(inner):]
        raise type(exc)(msg) from None


@dataclasses.dataclass
class ModelConfig:
    """Base of the model and study configs (dataclass fields are the hyper-parameters).

    Every construction checks every field: its type (:func:`_check_type`: elements of sequences
    too, numbers finite), then the ranges of :meth:`validate`. An error is one line naming
    ``Class.key``, the bad value and what is allowed.
    """

    presets: ClassVar[Dict[str, Dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Check (and normalise) every field, then :meth:`validate`; raises TypeError / ValueError.
        Called on construction; call it again after changing a field."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _check_type(type(self).__name__, f.name, getattr(self, f.name),
                                                         hints[f.name]))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field for impossible values (overridden per config)."""

    def check_runnable(self) -> None:
        """Raise ValueError naming the field for what a run cannot do that construction allows (e.g.
        ask more of built-in data than it holds, where a preset expects data from a path); the
        runner calls it before anything is written (overridden per config)."""

    # helpers of validate(): each raises ValueError "Class.key = value: <what is allowed>"
    def require(self, key: str, ok: bool, allowed: str) -> None:
        """ValueError naming ``key``, its value and ``allowed`` unless ``ok``."""
        if not ok:
            raise ValueError(f"{type(self).__name__}.{key} = {_show(getattr(self, key))}: {allowed}")

    def _each(self, key: str):
        """(the key's values: its elements for a sequence, else the value alone; 'every value ' or '')."""
        v = getattr(self, key)
        many = isinstance(v, (tuple, list))
        return (v if many else (v,)), ("every value " if many else "")

    def require_at_least(self, low: float, *keys: str) -> None:
        """Every key's value (every element of a sequence) >= ``low``."""
        for key in keys:
            values, every = self._each(key)
            self.require(key, all(x >= low for x in values), f"{every}must be >= {low}")

    def require_seed(self, *keys: str) -> None:
        """Every key's value (every element of a sequence) is a seed every generator accepts."""
        for key in keys:
            values, every = self._each(key)
            self.require(key, all(0 <= x < 2 ** 32 for x in values), f"{every}must be in [0, 2**32)")

    def require_one_of(self, key: str, choices) -> None:
        """The key's value (every element of a sequence) is one of ``choices``."""
        values, every = self._each(key)
        self.require(key, all(x in choices for x in values), f"{every}must be one of {list(choices)}")

    def require_distinct(self, *keys: str, label=lambda x: x) -> None:
        """Each sequence key: non-empty, without repeats (compared by ``label(value)``)."""
        for key in keys:
            v = [label(x) for x in getattr(self, key)]
            self.require(key, len(v) > 0, "must not be empty")
            self.require(key, len(set(v)) == len(v),
                         f"must not repeat a value (repeated: {sorted({x for x in v if v.count(x) > 1})})")

    @classmethod
    def from_preset(cls, preset: str = "tiny", **overrides):
        if preset not in cls.presets:
            raise ValueError(f"unknown preset {preset!r} for {cls.__name__}; available: {sorted(cls.presets)}")
        return cls.from_dict({**cls.presets[preset], **overrides})

    @classmethod
    def from_dict(cls, values: Dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(values) - names))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; known: {sorted(names)}")
        return cls(**values)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def save_model(model: torch.nn.Module, directory: str, name: str) -> Dict[str, Written]:
    """Write ``config.json`` (model name + config) and ``model.pt`` (state dict, from CPU tensors:
    loadable on any machine), each atomically; returns {file name: its path, sha256 and size}."""
    meta = {"model": name, "config": model.config.to_dict()}
    return {CONFIG_FILE: write_atomic(os.path.join(directory, CONFIG_FILE), json.dumps(meta, indent=1).encode()),
            WEIGHTS_FILE: write_atomic(os.path.join(directory, WEIGHTS_FILE),
                                       lambda f: torch.save(cpu_state(model), f))}


def cpu_state(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """``module.state_dict()`` with its tensors on the CPU (the same object when they already are,
    so a CPU model's file is byte for byte what ``torch.save(module.state_dict())`` writes)."""
    state = module.state_dict()
    if all(t.device.type == "cpu" for t in state.values()):
        return state
    out = type(state)((k, t.detach().cpu()) for k, t in state.items())
    if hasattr(state, "_metadata"):
        out._metadata = state._metadata
    return out


def read_saved(directory: str) -> tuple[str, Dict[str, Any], Dict[str, torch.Tensor]]:
    """(model name, config dict, state dict) of a directory written by :func:`save_model`."""
    cfg_path = os.path.join(directory, CONFIG_FILE)
    try:
        with open(cfg_path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{cfg_path}: no saved model here") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{cfg_path}: corrupted config ({exc})") from None
    wpath = os.path.join(directory, WEIGHTS_FILE)
    try:
        state = torch.load(wpath, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{wpath}: weights missing") from None
    except Exception as exc:
        raise ValueError(f"{wpath}: corrupted weights ({type(exc).__name__}: {exc})") from None
    return meta["model"], meta["config"], state
