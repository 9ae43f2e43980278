"""Pure-PyTorch float64-capable implementations: the oracle for the kernels and their fallback."""
from .entropic_ot import entropic_ot_reference

__all__ = ["entropic_ot_reference"]
