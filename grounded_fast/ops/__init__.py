"""Custom ops: registration, fake tensors, autograd and backend choice (one module per op)."""
from .entropic_ot import BALANCED, PARTIAL, UNBALANCED, OTSolution, entropic_ot

__all__ = ["entropic_ot", "OTSolution", "BALANCED", "UNBALANCED", "PARTIAL"]
