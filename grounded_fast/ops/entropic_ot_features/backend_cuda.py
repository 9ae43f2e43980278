"""The 'cuda' backend of ``entropic_ot_features``: the passes with the cost recomputed from the
features in every pass (``ot_feat_*_cuda``, csrc/ot/cuda/sinkhorn_features.cu, kernel ops of
grounded_fast._C_cuda); the envelope gradients' products P y, P^T x are the chunked torch
computation of backend_torch.py (cuBLAS products on chunks of rows; run once per backward, not per
iteration)."""
from __future__ import annotations

import torch

from ..entropic_ot.backend_cuda import _ops
from ..entropic_ot.spec import SolveSpec
from .backend_torch import TorchFeaturePasses
from .driver import compute_dtype, kernel_norms, solve_features


def feature_splits(B: int, n: int, m: int, device: torch.device) -> int:
    """Ranges of the streamed axis per LSE pass: about 4 blocks per SM (a block owns 64 rows)."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    blocks = B * -(-n // 64)
    return int(max(1, min(-(-4 * sms // blocks), -(-m // 256), 65535)))


class CudaFeaturePasses:
    """The passes of driver.py on the CUDA kernels (this module's docstring).
    x (B,n,d), y (B,m,d) CUDA tensors, float32 / float64 / bfloat16 / float16; cost 0 / 1."""

    def __init__(self, x, y, cost: int, reg: float):
        self.x, self.y = x.contiguous(), y.contiguous()
        self.B, self.n, self.d = x.shape
        self.m = y.shape[1]
        self.dt = compute_dtype(x.dtype)
        self.s, self.t = kernel_norms(self.x, cost, self.dt), kernel_norms(self.y, cost, self.dt)
        self.cost, self.reg, self.inv_eps = cost, float(reg), 1.0 / reg
        self._torch = None

    def lse(self, rows: bool, vec):
        X, Y, s, t, nr, nc = ((self.x, self.y, self.s, self.t, self.n, self.m) if rows
                              else (self.y, self.x, self.t, self.s, self.m, self.n))
        return _ops().ot_feat_lse_cuda(X, Y, s, t, vec, self.inv_eps, self.cost,
                                       feature_splits(self.B, nr, nc, X.device))

    def row_stats(self, lu, lv, w):
        return _ops().ot_feat_row_stats_cuda(self.x, self.y, self.s, self.t, lu, lv, w, self.inv_eps, self.cost)

    def products(self, lu, lv, w):
        if self._torch is None:
            self._torch = TorchFeaturePasses(self.x, self.y, self.cost, self.reg, self.dt)
        return self._torch.products(lu, lv, w)


def passes(x, y, cost: int, reg: float):
    """The streaming passes over CUDA tensors x (B,n,d), y (B,m,d)."""
    return CudaFeaturePasses(x, y, cost, reg)


def solve(x, y, a, b, mass, log_u0, log_v0, cost: int, spec: SolveSpec):
    """Solve on the CUDA feature passes; arguments and outputs as ``driver.solve_features``
    (x (B,n,d), y (B,m,d) CUDA tensors)."""
    return solve_features(CudaFeaturePasses(x, y, cost, spec.reg), a, b, mass, log_u0, log_v0, spec)
