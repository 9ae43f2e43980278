"""The 'cpu' backend of ``grounded_fast::entropic_ot``: the C++/OpenMP kernel (csrc/ot/cpu/, the
derivation of the iterations and of the stabilised scaling domain in sinkhorn_cpu.cpp), registered
as the kernel op ``grounded_fast::ot_solve_cpu`` by csrc/bindings.cpp."""
from __future__ import annotations

import torch

from .spec import SolveSpec


def solve(C, a, b, mass, log_u0, log_v0, spec: SolveSpec):
    """C (B,n,m) float32 / float64 on the CPU; a, log_u0 (B,n); b, log_v0 (B,m); mass (B,) in C's
    dtype. Returns the op's nine outputs (grounded_fast/ops/entropic_ot/op.py)."""
    return torch.ops.grounded_fast.ot_solve_cpu.default(
        C, a, b, mass, log_u0, log_v0, spec.problem, spec.reg, spec.reg_m_a, spec.reg_m_b, spec.fa, spec.fb,
        spec.kl_ref, spec.max_iter, spec.tol, spec.check_every, spec.domain, spec.hist_len, spec.floor)
