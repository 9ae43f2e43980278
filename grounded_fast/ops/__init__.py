"""The custom ops, one package per op family, each registered in one pattern (one schema with an
explicit ``backend`` argument, one fake, one autograd; native kernels as kernel ops dispatched by
device): ``entropic_ot``, ``entropic_ot_features``, ``analysis``; ``costs`` holds the cost formulas."""
from .entropic_ot import BALANCED, PARTIAL, UNBALANCED, OTSolution, SolveSpec, entropic_ot
from .entropic_ot_features import choose_cost_source, entropic_ot_features, feature_dim_limit

__all__ = ["entropic_ot", "entropic_ot_features", "choose_cost_source", "feature_dim_limit", "OTSolution",
           "SolveSpec", "BALANCED", "UNBALANCED", "PARTIAL"]
