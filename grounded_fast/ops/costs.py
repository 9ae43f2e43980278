"""The costs between point clouds, materialised: the one home of the formulas that the kernels
rebuilding the cost from features (``entropic_ot_features``) must match."""
from __future__ import annotations

import torch
import torch.nn.functional as F

SQEUCLIDEAN, COSINE = 0, 1


def cost_from_features(x: torch.Tensor, y: torch.Tensor, cost: int, dt: torch.dtype | None = None) -> torch.Tensor:
    """The materialised (B, n, m) cost between x (B,n,d) and y (B,m,d) in ``dt``, differentiable:
    ``cost`` 0 sqeuclidean max(|x_i|^2 + |y_j|^2 - 2 x_i.y_j, 0), 1 cosine 1 - xh_i.yh_j
    (xh = x / max(|x|, 1e-12): zero vectors count as orthogonal). The formula of every
    materialised cost (``grounded_fast.ot.costs.cost_matrix`` adds 'euclidean' on top). ``dt``:
    None computes in the inputs' dtypes; also (n,d), (m,d) -> (n,m)."""
    X, Y = (x, y) if dt is None else (x.to(dt), y.to(dt))
    if cost == COSINE:
        return 1.0 - F.normalize(X, dim=-1) @ F.normalize(Y, dim=-1).transpose(-1, -2)
    x2 = (X * X).sum(-1, keepdim=True)
    y2 = (Y * Y).sum(-1, keepdim=True).transpose(-1, -2)
    return (x2 + y2 - 2.0 * (X @ Y.transpose(-1, -2))).clamp_min(0.0)

