"""The 'triton' backend of ``grounded_fast::entropic_ot``: host code of the Triton kernels
(csrc/ot/triton/, imported as ``grounded_fast.triton_kernels.ot``): regime choice, then the plan
and objective.

Regimes: ``small`` — the persistent kernel, one launch for the whole batch and all iterations,
the cost tile on-chip (sinkhorn_small.py), used when a problem's padded tile holds at most
``sinkhorn_small.MAX_TILE`` entries (e.g. 64 x 197 -> 64 x 256); ``stream`` — one launch per
half-iteration streaming C through online log-sum-exp passes (sinkhorn_stream.py), any size;
``fused`` (opt-in, not yet measured on a GPU) — both half-iterations in one pass
over C from device memory (sinkhorn_fused.py).
The plan, ``value`` and ``value_linear`` are formed from the potentials in one more pass over C
(finalize.py, the fused twin of ``driver.finalize``).
"""
from __future__ import annotations

from ...triton_kernels.ot.finalize import finalize_triton
from ...triton_kernels.ot.sinkhorn_fused import sinkhorn_fused
from ...triton_kernels.ot.sinkhorn_small import fits, sinkhorn_small
from ...triton_kernels.ot.sinkhorn_stream import sinkhorn_stream
from .driver import nonempty_problems, plan_marginals
from .spec import SolveSpec
from .verdict import verdict

REGIMES = ("small", "stream", "fused")


def choose_regime(n: int, m: int) -> str:
    return "small" if fits(n, m) else "stream"


def solve(C, a, b, mass, log_u0, log_v0, spec: SolveSpec, regime: str | None = None):
    """The op's nine outputs (grounded_fast/ops/entropic_ot/op.py) for C (B,n,m), a, log_u0 (B,n),
    b, log_v0 (B,m), mass (B,) (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1; the
    spec's ``domain`` is ignored: the Triton kernels iterate in the log domain). ``regime``: None
    (automatic: 'small' or 'stream'), 'small', 'stream' or 'fused'. C may be bfloat16 / float16
    with float32 a, b: the kernels read it as it is and accumulate in float32."""
    B, n, m = C.shape
    regime = regime or choose_regime(n, m)
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    run = {"small": sinkhorn_small, "stream": sinkhorn_stream, "fused": sinkhorn_fused}[regime]
    lu, lv, w, n_iter, status, hist = run(C, a, b, mass, log_u0, log_v0, spec)
    nonempty = nonempty_problems(a, b, mass, spec.problem)
    plan, value, value_linear = finalize_triton(C, a, b, lu, lv, w, spec, nonempty)
    status = verdict(spec, status, lu, lv, w, a, b, mass, nonempty, *plan_marginals(plan))
    return plan, lu, lv, w, value, value_linear, n_iter, status, hist
