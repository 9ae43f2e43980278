"""The studies, one module each, found through the registry (``available()``, ``get(name)``,
``register(study)``; see :mod:`.registry` for what a :class:`Study` holds). A new study is one
module building a ``Study`` and a ``register`` call (here, or in the user's code)."""
from .registry import Step, Study, Unit, available, get, presets, register
from . import flava_ablation, groundedbert, grounding

register(grounding.STUDY)
register(flava_ablation.STUDY)
register(groundedbert.STUDY)

__all__ = ["Study", "Unit", "Step", "available", "get", "presets", "register"]
