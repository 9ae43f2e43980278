"""The model zoo registry: ``available()``, ``build(name, preset, **overrides)``, ``load(dir)``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Type

import torch

from .._atomic import Written
from .config import ModelConfig, read_saved, save_model


@dataclass(frozen=True)
class Entry:
    config_cls: Type[ModelConfig]
    model_cls: Callable[[ModelConfig], torch.nn.Module]


_REGISTRY: Dict[str, Entry] = {}


def register(name: str, config_cls: Type[ModelConfig], model_cls) -> None:
    _REGISTRY[name] = Entry(config_cls, model_cls)


def available() -> List[str]:
    """Names of the registered models."""
    return sorted(_REGISTRY)


def _entry(name: str) -> Entry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {available()}")
    return _REGISTRY[name]


def build(name: str, preset: str = "tiny", **overrides) -> torch.nn.Module:
    """A fresh model: ``name`` from :func:`available`, ``preset`` ('tiny', 'paper', ...), config overrides."""
    entry = _entry(name)
    return entry.model_cls(entry.config_cls.from_preset(preset, **overrides))


def save(model: torch.nn.Module, directory: str) -> Dict[str, Written]:
    """Save a registered model (config + weights) to ``directory``, each file atomically; returns
    {file name: its path, sha256 and size}."""
    name = next((n for n, e in _REGISTRY.items() if isinstance(model, e.model_cls)), None)
    if name is None:
        raise TypeError(f"{type(model).__name__} is not a registered model")
    return save_model(model, directory, name)


def load(directory: str, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild a model saved by :func:`save` (same config, same weights)."""
    name, cfg, state = read_saved(directory)
    entry = _entry(name)
    model = entry.model_cls(entry.config_cls.from_dict(cfg))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{directory}: weights do not match the saved {name} config: {exc}") from None
    return model.to(map_location)
