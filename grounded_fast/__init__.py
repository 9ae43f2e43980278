"""grounded_fast: fast batched optimal-transport kernels for multimodal grounding research.

Subpackages: ``ot`` (POT-compatible drop-in API), ``nn`` (losses), ``analysis`` (pairwise
agreement / attention distances between models, population statistics, concreteness), ``ops``
(the custom ops), ``reference`` (pure-PyTorch oracles), ``data`` (loaders, demo corpus, feature cache),
``models`` (the model zoo; imported on demand: ``import grounded_fast.models``).

``patch_pot()`` makes the installed POT itself run these kernels (``import ot; ot.sinkhorn(...)``),
``unpatch_pot()`` restores it; ``accelerated_pot_names()`` lists the POT functions replaced.
"""
from . import _backend  # noqa: F401  (loads the native extension, registers ops)
from . import analysis, nn, ops, ot, reference
from .ot._pot import accelerated_pot_names, patch_pot, unpatch_pot

__version__ = "0.1.0"
__all__ = ["analysis", "nn", "ops", "ot", "reference", "patch_pot", "unpatch_pot", "accelerated_pot_names",
           "__version__"]
