"""grounded_fast: fast batched optimal-transport kernels for multimodal grounding research.

Subpackages: ``ot`` (POT-compatible drop-in API), ``nn`` (losses), ``analysis`` (pairwise
agreement / attention distances between models, population statistics, concreteness), ``ops``
(the custom ops), ``reference`` (pure-PyTorch oracles), ``data`` (loaders, demo corpus, feature cache),
``models`` (the model zoo; imported on demand: ``import grounded_fast.models``).
"""
from . import _backend  # noqa: F401  (loads the native extension, registers ops)
from . import analysis, nn, ops, ot, reference

__version__ = "0.1.0"
__all__ = ["analysis", "nn", "ops", "ot", "reference", "__version__"]
