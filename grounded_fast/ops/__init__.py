"""Custom ops: registration, fake tensors, autograd and backend choice (one module per op)."""
from .entropic_ot import BALANCED, PARTIAL, UNBALANCED, OTSolution, entropic_ot
from .entropic_ot_features import choose_cost_source, entropic_ot_features, feature_dim_limit

__all__ = ["entropic_ot", "entropic_ot_features", "choose_cost_source", "feature_dim_limit", "OTSolution",
           "BALANCED", "UNBALANCED", "PARTIAL"]
