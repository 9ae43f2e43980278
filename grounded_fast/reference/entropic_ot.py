"""The float64 oracle of ``grounded_fast::entropic_ot``: the driver's iterations on a materialised
``(B, n, m)`` kernel with ``torch.logsumexp``.

Iterate for iterate the same algorithm as the native kernels (see csrc/ot/cpu/sinkhorn_cpu.cpp for
the derivation; the iterations are grounded_fast/ops/entropic_ot/driver.py). It runs on any device
and dtype, is differentiable by unrolling (autograd records every iteration: ``grad='autodiff'``),
is the 'torch' backend of the op, and is what the kernels are tested against.
"""
from __future__ import annotations

import torch

from ..ops.entropic_ot.driver import finalize, nonempty_problems, plan_marginals, solve_potentials
from ..ops.entropic_ot.spec import SolveSpec
from ..ops.entropic_ot.verdict import verdict


def entropic_ot_reference(C, a, b, mass, log_u0, log_v0, spec: SolveSpec):
    """The nine outputs of ``grounded_fast::entropic_ot`` (``spec.domain`` is ignored: one way to
    iterate here).

    Shapes: C (B,n,m), a (B,n), b (B,m), mass (B,), log_u0 (B,n), log_v0 (B,m).
    Returns (plan (B,n,m), log_u (B,n), log_v (B,m), log_scale (B,), value (B,),
    value_linear (B,), n_iter (B,) int64, status (B,) int64, err_history (B, H)).
    """
    K = -C / spec.reg

    def row_lse(lv):  # (B,n): LSE_j(lv_j - C_ij/eps)
        return torch.logsumexp(K + lv[:, None, :], dim=2)

    def col_lse(lu):  # (B,m)
        return torch.logsumexp(K + lu[:, :, None], dim=1)

    lu, lv, w, n_iter, status, hist = solve_potentials(row_lse, col_lse, a, b, mass, log_u0, log_v0, spec)
    nonempty = nonempty_problems(a, b, mass, spec.problem)
    plan, value, value_linear = finalize(C, a, b, lu, lv, w, spec, nonempty)
    status = verdict(spec, status, lu, lv, w, a, b, mass, nonempty, *plan_marginals(plan))
    return plan, lu, lv, w, value, value_linear, n_iter, status, hist
