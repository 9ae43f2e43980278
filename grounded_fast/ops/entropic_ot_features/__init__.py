"""The op family ``grounded_fast::entropic_ot_features``: entropic OT between point clouds with the
cost recomputed from the features in every pass (never stored on the GPU backends).

Modules as in ``entropic_ot`` (whose spec, input handling and verdict it shares): ``op`` (the two
ops: one schema each, explicit ``backend``, one fake, one autograd), ``api``
(:func:`entropic_ot_features`), ``driver`` (the solve over streaming passes, the envelope
gradients), ``cost_source`` (materialise or recompute: :func:`choose_cost_source`) and one module
per backend (``backend_torch``, ``backend_triton``, ``backend_cuda``).
"""
from .api import entropic_ot_features
from .cost_source import choose_cost_source, feature_dim_limit
from .driver import FEATURE_COSTS
from .op import FEATURE_BACKENDS

__all__ = ["entropic_ot_features", "choose_cost_source", "feature_dim_limit", "FEATURE_COSTS", "FEATURE_BACKENDS"]
