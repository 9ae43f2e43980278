"""POT's ``ot.dist`` for one pair of point clouds, on ``cost_matrix`` (grounded_fast/ops/costs.py,
re-exported here as ``grounded_fast.ot.cost_matrix``)."""
from __future__ import annotations

import numpy as np
import torch

from ..ops.costs import METRICS, cost_matrix
from ._convert import Converter
from ._pot import pot_original

__all__ = ["cost_matrix", "dist", "METRICS"]

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
