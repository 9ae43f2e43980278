"""The Triton backend of ``grounded_fast::entropic_ot``: regime choice, then the plan and objective.

Regimes: ``small`` — the persistent kernel, one launch for the whole batch and all iterations,
the cost tile on-chip (sinkhorn_small.py), used when a problem's padded tile holds at most
``sinkhorn_small.MAX_TILE`` entries (e.g. 64 x 197 -> 64 x 256); ``stream`` — one launch per
half-iteration streaming C through online log-sum-exp passes (sinkhorn_stream.py), any size;
``fused`` (opt-in, not yet measured on a GPU) — both half-iterations in one pass
over C from device memory (sinkhorn_fused.py).
The plan, ``value`` and ``value_linear`` are formed from the potentials in one more pass over C
(finalize.py, the fused twin of the reference's ``finalize``).
"""
from __future__ import annotations

from ...reference.entropic_ot import nonempty_problems, plan_marginals, verdict
from .finalize import finalize_triton
from .sinkhorn_fused import sinkhorn_fused
from .sinkhorn_small import fits, sinkhorn_small
from .sinkhorn_stream import sinkhorn_stream

REGIMES = ("small", "stream", "fused")


def choose_regime(n: int, m: int) -> str:
    return "small" if fits(n, m) else "stream"


def entropic_ot_triton(C, a, b, mass, log_u0, log_v0, problem: int, reg: float, reg_m_a: float, reg_m_b: float,
                       kl_ref: bool, max_iter: int, tol: float, check_every: int, domain: int = 0,
                       history: int = -1, floor: float = 0.0, regime: str | None = None):
    """Same contract as ``torch.ops.grounded_fast.entropic_ot`` (``domain`` is ignored: the Triton
    kernels iterate in the log domain). ``regime``: None (automatic: 'small' or 'stream'), 'small',
    'stream' or 'fused'. C may be bfloat16 / float16 with float32 a, b: the kernels read it as it is
    and accumulate in float32."""
    B, n, m = C.shape
    regime = regime or choose_regime(n, m)
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    solve = {"small": sinkhorn_small, "stream": sinkhorn_stream, "fused": sinkhorn_fused}[regime]
    lu, lv, w, n_iter, status, hist = solve(C, a, b, mass, log_u0, log_v0, problem, reg, reg_m_a, reg_m_b,
                                            kl_ref, max_iter, tol, check_every, history, floor)
    nonempty = nonempty_problems(a, b, mass, problem)
    plan, value, value_linear = finalize_triton(C, a, b, lu, lv, w, problem, reg, reg_m_a, reg_m_b, kl_ref, nonempty)
    status = verdict(problem, status, lu, lv, w, a, b, mass, tol, nonempty, *plan_marginals(plan))
    return plan, lu, lv, w, value, value_linear, n_iter, status, hist
