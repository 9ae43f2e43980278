"""Host side of the 'cuda' backend of ``grounded_fast::entropic_ot`` (needs grounded_fast._C_cuda).

Regimes, as for the Triton backend: ``small`` — the persistent CUDA kernel, one block per problem
with the cost tile -C/eps in shared memory for all iterations (``ot_small_cuda``), when the tile and
the O(n + m) vectors fit the device's opt-in shared memory per block; ``stream`` — one kernel per
pass over C in device memory (``ot_row_lse_cuda``, ``ot_col_lse_cuda``, ``ot_plan_change_cuda``)
driven by the reference's ``solve_potentials``. The plan and objective come from ``finalize``.
"""
from __future__ import annotations

import math

import torch

from ..reference.entropic_ot import finalize, nonempty_problems, solve_potentials

REGIMES = ("small", "stream")


def small_smem_bytes(n: int, m: int, dtype: torch.dtype) -> int:
    """Shared memory of the persistent kernel (keep in step with gf_ot_small_smem_bytes)."""
    return (n * m + 5 * n + 6 * m) * (8 if dtype == torch.float64 else 4)


def choose_regime(C: torch.Tensor) -> str:
    _, n, m = C.shape
    props = torch.cuda.get_device_properties(C.device)
    limit = getattr(props, "shared_memory_per_block_optin", 99 * 1024)
    return "small" if small_smem_bytes(n, m, C.dtype) <= limit else "stream"


def entropic_ot_cuda(C, a, b, mass, log_u0, log_v0, problem: int, reg: float, reg_m_a: float, reg_m_b: float,
                     kl_ref: bool, max_iter: int, tol: float, check_every: int, domain: int = 0, history: int = -1,
                     regime: str | None = None):
    """Same contract as ``torch.ops.grounded_fast.entropic_ot``, on CUDA tensors."""
    ops = torch.ops.grounded_fast
    regime = regime or choose_regime(C)
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    if regime == "small":
        checks = max_iter // check_every + 1 if check_every > 0 else 0
        hist_len = checks if history < 0 else min(history, checks)
        fa = 1.0 if math.isinf(reg_m_a) else reg_m_a / (reg_m_a + reg)
        fb = 1.0 if math.isinf(reg_m_b) else reg_m_b / (reg_m_b + reg)
        lu, lv, w, n_iter, status, hist = ops.ot_small_cuda(C, a, b, mass, log_u0, log_v0, problem, reg, fa, fb,
                                                            kl_ref, max_iter, tol, check_every, hist_len)
    else:
        inv_eps = 1.0 / reg
        lu, lv, w, n_iter, status, hist = solve_potentials(
            lambda lv_: ops.ot_row_lse_cuda(C, lv_, inv_eps), lambda lu_: ops.ot_col_lse_cuda(C, lu_, inv_eps),
            lambda pu, pv, pw, lu_, lv_, w_: ops.ot_plan_change_cuda(C, pu, pv, pw, lu_, lv_, w_, inv_eps).sqrt(),
            a, b, mass, log_u0, log_v0, problem, reg, reg_m_a, reg_m_b, kl_ref, max_iter, tol, check_every, history)
    plan, value, value_linear = finalize(C, a, b, lu, lv, w, problem, reg, reg_m_a, reg_m_b, kl_ref,
                                         nonempty_problems(a, b, mass, problem))
    return plan, lu, lv, w, value, value_linear, n_iter, status, hist
