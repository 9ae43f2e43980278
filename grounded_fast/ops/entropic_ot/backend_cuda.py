"""The 'cuda' backend of ``grounded_fast::entropic_ot``: host code of the CUDA kernels
(csrc/ot/cuda/, kernel ops registered by grounded_fast._C_cuda).

Regimes, as for the Triton backend: ``small`` — the persistent CUDA kernel, one block per problem
with the cost tile -C/eps in shared memory for all iterations (``ot_small_cuda``), when the tile and
the O(n + m) vectors fit the device's opt-in shared memory per block; ``stream`` — one kernel per
pass over C in device memory (``ot_row_lse_cuda``, ``ot_col_lse_cuda``) driven by ``driver.solve_potentials``; ``fused`` (opt-in, m <= 8192, float32 / half C)
— both half-iterations in one read of C (``ot_fused_pass_cuda``,
csrc/ot/cuda/sinkhorn_fused.cu), same driver. The plan and objective come from the Triton
backend's fused ``finalize_triton`` (one pass over C; the torch ``finalize``, about twenty kernels
over (B, n, m) tensors, took a third of a streamed solve and is the fallback without Triton).
"""
from __future__ import annotations

import torch

from .driver import finalize, nonempty_problems, plan_marginals, solve_potentials
from .spec import SolveSpec
from .verdict import verdict

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


def solve(C, a, b, mass, log_u0, log_v0, spec: SolveSpec, regime: str | None = None):
    """The op's nine outputs (grounded_fast/ops/entropic_ot/op.py) for CUDA tensors C (B,n,m),
    a, log_u0 (B,n), b, log_v0 (B,m), mass (B,). ``regime``: None (automatic: 'small' where the
    tile fits the shared memory, else 'stream'), 'small', 'stream' or 'fused'."""
    ops = _ops()
    regime = regime or choose_regime(C)
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    if regime == "small":
        lu, lv, w, n_iter, status, hist = ops.ot_small_cuda(C, a, b, mass, log_u0, log_v0, spec.problem, spec.reg,
                                                            spec.fa, spec.fb, spec.kl_ref, spec.max_iter, spec.tol,
                                                            spec.check_every, spec.hist_len, spec.floor)
    else:
        inv_eps = 1.0 / spec.reg
        fused = fused_pass(C, spec.reg) if regime == "fused" else None
        lu, lv, w, n_iter, status, hist = solve_potentials(
            lambda lv_: ops.ot_row_lse_cuda(C, lv_, inv_eps), lambda lu_: ops.ot_col_lse_cuda(C, lu_, inv_eps),
            a, b, mass, log_u0, log_v0, spec, row_then_col=fused)
    nonempty = nonempty_problems(a, b, mass, spec.problem)
    plan, value, value_linear = _finalize()(C, a, b, lu, lv, w, spec, nonempty)
    status = verdict(spec, status, lu, lv, w, a, b, mass, nonempty, *plan_marginals(plan))
    return plan, lu, lv, w, value, value_linear, n_iter, status, hist


def fused_blocks(B: int, n: int, m: int, sms: int, per_sm: int | None = None) -> int:
    """Blocks sharing one problem's rows in the fused pass: one wave of ``per_sm`` blocks an SM over
    the batch (default: 2 where a row fits 16 registers a thread, m <= 4096, else 1), rounded down,
    and at least FUSED_MIN_ROWS rows each."""
    per_sm = per_sm or (2 if m <= 4096 else 1)
    return int(max(1, min(per_sm * sms // B, -(-n // FUSED_MIN_ROWS))))


def fused_pass(C: torch.Tensor, reg: float, blocks: int | None = None):
    """``row_then_col(lv, lu, la, active, scale=1, cap=False) -> (lu', col_lse(lu'))`` of the
    driver's ``solve_potentials`` on the CUDA fused kernel, for C (B, n, m) float32 / float16 / bfloat16 with
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
    from ..._backend import triton_available
    if triton_available():
        from ...triton_kernels.ot.finalize import finalize_triton
        return finalize_triton
    return finalize
