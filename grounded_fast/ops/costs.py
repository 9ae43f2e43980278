"""The costs between point clouds, materialised: the one home of the formulas (``cost_matrix``,
what ``grounded_fast.nn`` and ``grounded_fast.ot`` build costs with, and ``cost_from_features``,
which the kernels rebuilding the cost from features in ``entropic_ot_features`` must match)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

SQEUCLIDEAN, COSINE = 0, 1


def cost_from_features(x: torch.Tensor, y: torch.Tensor, cost: int, dt: torch.dtype | None = None) -> torch.Tensor:
    """The materialised (B, n, m) cost between x (B,n,d) and y (B,m,d) in ``dt``, differentiable:
    ``cost`` 0 sqeuclidean max(|x_i|^2 + |y_j|^2 - 2 x_i.y_j, 0), 1 cosine 1 - xh_i.yh_j
    (xh = x / max(|x|, 1e-12): zero vectors count as orthogonal). The formula of every
    materialised cost (``cost_matrix`` below adds 'euclidean' on top). ``dt``:
    None computes in the inputs' dtypes; also (n,d), (m,d) -> (n,m)."""
    X, Y = (x, y) if dt is None else (x.to(dt), y.to(dt))
    if cost == COSINE:
        return 1.0 - F.normalize(X, dim=-1) @ F.normalize(Y, dim=-1).transpose(-1, -2)
    x2 = (X * X).sum(-1, keepdim=True)
    y2 = (Y * Y).sum(-1, keepdim=True).transpose(-1, -2)
    return (x2 + y2 - 2.0 * (X @ Y.transpose(-1, -2))).clamp_min(0.0)


METRICS = ("sqeuclidean", "euclidean", "cosine")


def cost_matrix(x: torch.Tensor, y: torch.Tensor, metric: str = "sqeuclidean") -> torch.Tensor:
    """Pairwise costs between features x (B, n, d) [or (n, d)] and y (B, m, d) [or (m, d)].

    sqeuclidean: |x_i - y_j|^2 (clamped at 0); euclidean: its square root; cosine: 1 - cos(x_i, y_j)
    (zero vectors count as orthogonal). Returns (B, n, m) [or (n, m)]; differentiable.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if x.dim() != y.dim() or x.dim() not in (2, 3) or x.shape[-1] != y.shape[-1]:
        raise ValueError(f"x and y must be (B, n, d) and (B, m, d) (or 2-d), got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() == 3 and x.shape[0] != y.shape[0]:
        raise ValueError(f"batch sizes differ: {x.shape[0]} and {y.shape[0]}")
    d = cost_from_features(x, y, COSINE if metric == "cosine" else SQEUCLIDEAN)
    return d.sqrt() if metric == "euclidean" else d
