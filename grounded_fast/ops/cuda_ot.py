"""Host side of the 'cuda' backend of ``grounded_fast::entropic_ot`` (needs grounded_fast._C_cuda).

Regimes, as for the Triton backend: ``small`` — the persistent CUDA kernel, one block per problem
with the cost tile -C/eps in shared memory for all iterations (``ot_small_cuda``), when the tile and
the O(n + m) vectors fit the device's opt-in shared memory per block; ``stream`` — one kernel per
pass over C in device memory (``ot_row_lse_cuda``, ``ot_col_lse_cuda``) driven by the
reference's ``solve_potentials``; ``fused`` (opt-in, m <= 8192, float32 / half C)
— both half-iterations in one read of C (``ot_fused_pass_cuda``,
csrc/ot/cuda/sinkhorn_fused.cu), same driver. The plan and objective come from the Triton
backend's fused ``finalize_triton`` (one pass over C; the torch ``finalize``, about twenty kernels
over (B, n, m) tensors, took a third of a streamed solve and is the fallback without Triton).

``CudaFeaturePasses``: the passes of ``entropic_ot_features`` with the cost recomputed from the
features in every pass (``ot_feat_*_cuda``, csrc/ot/cuda/sinkhorn_features.cu); the envelope
gradients' products P y, P^T x are the chunked torch computation of the reference (cuBLAS
products on chunks of rows; run once per backward, not per iteration).
"""
from __future__ import annotations

import math

import torch

from ..reference.entropic_ot import (finalize, history_length, nonempty_problems, plan_marginals, solve_potentials,
                                     verdict)
from ..reference.ot_features import TorchFeaturePasses, compute_dtype, kernel_norms

REGIMES = ("small", "stream", "fused")
FUSED_MAX_M = 8192  # keep in step with gf_ot_fused_max_m
FUSED_MIN_ROWS = 64  # rows per block at least: every block writes m column partials that the merge reads
# where the ``ot_*_cuda`` ops live: the tests run these host functions on the CUDA sources built for
# the CPU (tests/cuda_sim), whose ops are ``torch.ops.grounded_fast_sim.*``
OPS_NAMESPACE = "grounded_fast"


def _ops():
    return getattr(torch.ops, OPS_NAMESPACE)


def small_smem_bytes(n: int, m: int, dtype: torch.dtype) -> int:
    """Shared memory of the persistent kernel (keep in step with gf_ot_small_smem_bytes)."""
    return (n * m + 6 * n + 7 * m) * (8 if dtype == torch.float64 else 4)


def choose_regime(C: torch.Tensor) -> str:
    _, n, m = C.shape
    props = torch.cuda.get_device_properties(C.device)
    limit = getattr(props, "shared_memory_per_block_optin", 99 * 1024)
    return "small" if small_smem_bytes(n, m, C.dtype) <= limit else "stream"


def entropic_ot_cuda(C, a, b, mass, log_u0, log_v0, problem: int, reg: float, reg_m_a: float, reg_m_b: float,
                     kl_ref: bool, max_iter: int, tol: float, check_every: int, domain: int = 0, history: int = -1,
                     floor: float = 0.0, regime: str | None = None):
    """Same contract as ``torch.ops.grounded_fast.entropic_ot``, on CUDA tensors."""
    ops = _ops()
    regime = regime or choose_regime(C)
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    if regime == "small":
        hist_len = history_length(max_iter, check_every, history)
        fa = 1.0 if math.isinf(reg_m_a) else reg_m_a / (reg_m_a + reg)
        fb = 1.0 if math.isinf(reg_m_b) else reg_m_b / (reg_m_b + reg)
        lu, lv, w, n_iter, status, hist = ops.ot_small_cuda(C, a, b, mass, log_u0, log_v0, problem, reg, fa, fb,
                                                            kl_ref, max_iter, tol, check_every, hist_len, floor)
    else:
        inv_eps = 1.0 / reg
        fused = fused_pass(C, reg) if regime == "fused" else None
        lu, lv, w, n_iter, status, hist = solve_potentials(
            lambda lv_: ops.ot_row_lse_cuda(C, lv_, inv_eps), lambda lu_: ops.ot_col_lse_cuda(C, lu_, inv_eps),
            a, b, mass, log_u0, log_v0, problem, reg, reg_m_a, reg_m_b, kl_ref, max_iter, tol, check_every, history,
            row_then_col=fused, floor=floor)
    nonempty = nonempty_problems(a, b, mass, problem)
    plan, value, value_linear = _finalize()(C, a, b, lu, lv, w, problem, reg, reg_m_a, reg_m_b, kl_ref, nonempty)
    status = verdict(problem, status, lu, lv, w, a, b, mass, tol, nonempty, *plan_marginals(plan))
    return plan, lu, lv, w, value, value_linear, n_iter, status, hist


def fused_blocks(B: int, n: int, m: int, sms: int, per_sm: int | None = None) -> int:
    """Blocks sharing one problem's rows in the fused pass: one wave of ``per_sm`` blocks an SM over
    the batch (default: 2 where a row fits 16 registers a thread, m <= 4096, else 1), rounded down,
    and at least FUSED_MIN_ROWS rows each."""
    per_sm = per_sm or (2 if m <= 4096 else 1)
    return int(max(1, min(per_sm * sms // B, -(-n // FUSED_MIN_ROWS))))


def fused_pass(C: torch.Tensor, reg: float, blocks: int | None = None):
    """``row_then_col(lv, lu, la, active, scale=1, cap=False) -> (lu', col_lse(lu'))`` of the
    reference's driver on the CUDA fused kernel, for C (B, n, m) float32 / float16 / bfloat16 with
    m <= FUSED_MAX_M. C's rows are padded to 16 bytes once here where m needs it (the kernel reads
    16-byte vectors)."""
    B, n, m = C.shape
    if C.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"the CUDA 'fused' regime takes float32 or half-precision costs, got {C.dtype}; "
                         "use regime='stream'")
    if m > FUSED_MAX_M:
        raise ValueError(f"the CUDA 'fused' regime holds rows of at most {FUSED_MAX_M} columns, got {m}; "
                         "use regime='stream'")
    align = 16 // C.element_size()
    ldc = -(-m // align) * align
    Cp = torch.nn.functional.pad(C, (0, ldc - m)) if ldc != m else C.contiguous()
    if Cp.data_ptr() % 16:
        Cp = Cp.clone()
    sms = torch.cuda.get_device_properties(C.device).multi_processor_count
    P = blocks or fused_blocks(B, n, m, sms)
    inv_eps = 1.0 / reg

    def row_then_col(lv, lu, la, active, scale=1.0, cap=False):
        return _ops().ot_fused_pass_cuda(Cp, m, lv, lu, la, active, inv_eps, P, float(scale), bool(cap))
    return row_then_col


def _finalize():
    from .._backend import triton_available
    if triton_available():
        from ..triton_kernels.ot.finalize import finalize_triton
        return finalize_triton
    return finalize


def feature_splits(B: int, n: int, m: int, device: torch.device) -> int:
    """Ranges of the streamed axis per LSE pass: about 4 blocks per SM (a block owns 64 rows)."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    blocks = B * -(-n // 64)
    return int(max(1, min(-(-4 * sms // blocks), -(-m // 256), 65535)))


class CudaFeaturePasses:
    """The passes of grounded_fast.reference.ot_features on the CUDA kernels (module docstring).
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


def entropic_ot_features_cuda(x, y, a, b, mass, log_u0, log_v0, cost: int, problem: int, reg: float, reg_m_a: float,
                              reg_m_b: float, kl_ref: bool, max_iter: int, tol: float, check_every: int,
                              history: int = -1, floor: float = 0.0):
    """Solve on the CUDA feature passes; arguments and outputs as
    grounded_fast.reference.ot_features.solve_features (x (B,n,d), y (B,m,d) CUDA tensors)."""
    from ..reference.ot_features import solve_features
    return solve_features(CudaFeaturePasses(x, y, cost, reg), a, b, mass, log_u0, log_v0, problem, reg, reg_m_a,
                          reg_m_b, kl_ref, max_iter, tol, check_every, history, floor)
