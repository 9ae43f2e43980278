"""Cost builders: POT's ``ot.dist`` for one pair of point clouds and batched ``cost_matrix``."""
from __future__ import annotations

import numpy as np
import torch

from ..ops.costs import COSINE, SQEUCLIDEAN, cost_from_features
from ._convert import Converter
from ._pot import pot_original

__all__ = ["cost_matrix", "dist", "METRICS"]

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


def dist(x1, x2=None, metric="sqeuclidean", p=2, w=None, backend="auto", nx=None, use_tensor=False):
    """Like ``ot.dist``: pairwise costs x1 (n, d), x2 (m, d) (default x1) -> (n, m); numpy in ->
    numpy out, torch in -> torch out. 'sqeuclidean', 'euclidean' and 'cosine' on numpy / torch
    input are computed here (``p``, ``w``, ``use_tensor`` do not apply to them, as in POT); any
    other metric, ``backend`` or ``nx``, or another array type, is passed to POT's own ``ot.dist``."""
    arrays = (x1,) if x2 is None else (x1, x2)
    if metric not in METRICS or backend != "auto" or nx is not None or \
            not all(isinstance(x, (np.ndarray, torch.Tensor, list, tuple)) for x in arrays):
        pot_dist = pot_original("ot", "dist")
        return pot_dist(x1, x2, metric=metric, p=p, w=w, backend=backend, nx=nx, use_tensor=use_tensor)
    conv = Converter(x1, x2)
    x1 = conv.to_torch(x1)
    x2 = x1 if x2 is None else conv.to_torch(x2)
    return conv.out(cost_matrix(x1, x2, metric))
