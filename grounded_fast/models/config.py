"""Model configs: dataclasses with presets, validated (de)serialisation, save / load of models.

Every model config is a dataclass deriving from :class:`ModelConfig`; ``presets`` maps a preset
name ('tiny': trains in CPU minutes; 'paper': the original sizes) to field overrides.
``from_dict`` rejects unknown keys and wrong types with an error naming the key.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from typing import Any, ClassVar, Dict

import torch

from .._atomic import Written, write_atomic

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"


def _check_type(cls_name: str, key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin is typing.Union:
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return value
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise TypeError(f"{cls_name}.{key} must be a dict, got {type(value).__name__}")
        return dict(value)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{cls_name}.{key} must be a sequence, got {type(value).__name__}")
        return tuple(value) if origin is tuple else list(value)
    if isinstance(hint, type) and not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise TypeError(f"{cls_name}.{key} must be {getattr(hint, '__name__', hint)}, got {type(value).__name__} "
                        f"({value!r})")
    return value


@dataclasses.dataclass
class ModelConfig:
    """Base of the model configs (dataclass fields are the hyper-parameters)."""

    presets: ClassVar[Dict[str, Dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field for impossible values (overridden per model)."""

    @classmethod
    def from_preset(cls, preset: str = "tiny", **overrides):
        if preset not in cls.presets:
            raise ValueError(f"unknown preset {preset!r} for {cls.__name__}; available: {sorted(cls.presets)}")
        return cls.from_dict({**cls.presets[preset], **overrides})

    @classmethod
    def from_dict(cls, values: Dict[str, Any]):
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; known: {sorted(names)}")
        checked = {k: _check_type(cls.__name__, k, v, hints[k]) for k, v in values.items()}
        return cls(**checked)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def save_model(model: torch.nn.Module, directory: str, name: str) -> Dict[str, Written]:
    """Write ``config.json`` (model name + config) and ``model.pt`` (state dict), each atomically;
    returns {file name: its path, sha256 and size}."""
    meta = {"model": name, "config": model.config.to_dict()}
    return {CONFIG_FILE: write_atomic(os.path.join(directory, CONFIG_FILE), json.dumps(meta, indent=1).encode()),
            WEIGHTS_FILE: write_atomic(os.path.join(directory, WEIGHTS_FILE),
                                       lambda f: torch.save(model.state_dict(), f))}


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
