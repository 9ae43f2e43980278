"""The 'triton' backend of ``entropic_ot_features``: the driver on the Triton passes
(csrc/ot/triton/sinkhorn_features.py, imported as ``grounded_fast.triton_kernels.ot``), which
rebuild each cost tile from the features in registers; CUDA tensors, or CPU tensors under
TRITON_INTERPRET=1."""
from __future__ import annotations

from ..entropic_ot.spec import SolveSpec
from .driver import solve_features


def passes(x, y, cost: int, reg: float, splits: int | None = None):
    """The streaming passes over x (B,n,d), y (B,m,d) (``splits``: of the streamed axis, None = auto)."""
    from ...triton_kernels.ot.sinkhorn_features import TritonFeaturePasses
    return TritonFeaturePasses(x, y, cost, reg, splits)


def solve(x, y, a, b, mass, log_u0, log_v0, cost: int, spec: SolveSpec, splits: int | None = None):
    """x (B,n,d), y (B,m,d); a, log_u0 (B,n), b, log_v0 (B,m), mass (B,) in the compute dtype.
    Returns (log_u, log_v, log_scale, value, value_linear, n_iter, status, err_history) as
    ``driver.solve_features``."""
    return solve_features(passes(x, y, cost, spec.reg, splits), a, b, mass, log_u0, log_v0, spec)
