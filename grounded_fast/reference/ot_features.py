"""The oracle of ``grounded_fast::entropic_ot_features``: the driver on the chunked PyTorch passes
(grounded_fast/ops/entropic_ot_features/backend_torch.py), in float64 when the features are
float64. The cost is that of ``grounded_fast.ops.costs.cost_from_features``."""
from __future__ import annotations

from ..ops.entropic_ot_features.backend_torch import solve as entropic_ot_features_reference

__all__ = ["entropic_ot_features_reference"]
