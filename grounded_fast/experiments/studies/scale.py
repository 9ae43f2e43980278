"""What the reports' scale tables need from a run: the size of a saved model, the data source."""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Tuple


def saved_model(store, run_id: Optional[str] = None) -> Optional[Tuple[Dict[str, Any], int]]:
    """(config dict, parameter count) of the first recorded checkpoint (of ``run_id``, or of any
    run) that loads, or None when there is none yet."""
    import grounded_fast.models as gm
    from ...models.config import read_saved
    for row in store.checkpoints(run_id):
        directory = os.path.dirname(row["path"])
        try:
            _, cfg, _ = read_saved(directory)
            model = gm.load(directory)
        except (OSError, ValueError, KeyError):
            continue
        return cfg, sum(p.numel() for p in model.parameters())
    return None


def data_source(cfg: Mapping[str, Any], default: str, key: str = "data") -> str:
    """The run's data as the scale table prints it: ``default`` (the built-in demo data) unless the
    config's data section ``key`` names another kind."""
    data = cfg.get(key)
    if isinstance(data, Mapping) and data.get("kind") not in (None, "", "demo"):
        return f"{data['kind']} from `{data.get('path', '')}`"
    return default


def encoder(cfg: Mapping[str, Any], key: str, default: str) -> str:
    """The encoder the config's ``data`` section names under ``key`` (e.g. 'text_encoder'), or
    ``default`` (the shipped one)."""
    data = cfg.get("data")
    name = data.get(key) if isinstance(data, Mapping) else None
    return f"`{name}`" if name else default


def count(n: Any) -> str:
    """12345 -> '12,345' (an int), anything else as text."""
    return f"{n:,}" if isinstance(n, int) and not isinstance(n, bool) else str(n)
