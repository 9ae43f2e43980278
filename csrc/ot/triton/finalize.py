"""Triton twin of ``grounded_fast.ops.entropic_ot.driver.finalize``: plan and objective in one pass.

From the potentials, P_ij = exp(lu_i + lv_j + w - C_ij / eps) on the live entries (a_i > 0,
b_j > 0) of the nonempty problems, 0 elsewhere. One launch streams C once and writes P once
(the torch version makes about ten passes over (B, n, m) tensors, more than the iterations of a
short solve cost). Each program owns a block of rows of one problem and also reduces, per row,
    <P, C>_i = sum_j P_ij C_ij,   (P log P)_i = sum_j P_ij log P_ij,   r_i = sum_j P_ij;
the objective follows in torch from those (B, n) sums (and, for the unbalanced problem, the
column sums c = P^T 1 and sum P log(a b^T) = sum_i r_i log a_i + sum_j c_j log b_j).
Accumulation is float32 (float64 for float64 weights).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...ops.entropic_ot.driver import unbalanced_value
from ...ops.entropic_ot.spec import UNBALANCED, SolveSpec
from ..common.fast_math import LAUNCH
from ..common import device_scalars

CONFIG = (16, 256, 8)      # rows per program, columns per step, warps (the row pass's, sinkhorn_stream.py)
CONFIG_F64 = (16, 128, 4)


@triton.jit
def _finalize(C_ptr, a_ptr, b_ptr, lu_ptr, lv_ptr, w_ptr, ne_ptr, plan_ptr, lin_ptr, xlx_ptr, r_ptr, n, m,
              inv_eps_ptr, DT: tl.constexpr, BR: tl.constexpr, BT: tl.constexpr):
    pid_b = tl.program_id(0)
    inv_eps = tl.load(inv_eps_ptr).to(DT)
    rows = tl.program_id(1) * BR + tl.arange(0, BR)
    rin = rows < n
    live_r = rin & (tl.load(a_ptr + pid_b * n + rows, mask=rin, other=0.0) > 0)
    lu = tl.load(lu_ptr + pid_b * n + rows, mask=live_r, other=0.0).to(DT)
    w = tl.load(w_ptr + pid_b).to(DT)
    live_r = live_r & (tl.load(ne_ptr + pid_b) != 0)
    base = pid_b.to(tl.int64) * n * m
    lin = tl.zeros((BR,), DT)
    xlx = tl.zeros((BR,), DT)
    r = tl.zeros((BR,), DT)
    for j0 in range(0, m, BT):
        cols = j0 + tl.arange(0, BT)
        cin = cols < m
        live_c = cin & (tl.load(b_ptr + pid_b * m + cols, mask=cin, other=0.0) > 0)
        lv = tl.load(lv_ptr + pid_b * m + cols, mask=live_c, other=0.0).to(DT)
        inb = rin[:, None] & cin[None, :]
        live = live_r[:, None] & live_c[None, :]
        c = tl.load(C_ptr + base + rows[:, None] * m + cols[None, :], mask=inb, other=0.0).to(DT)
        logp = lu[:, None] + lv[None, :] + w - c * inv_eps
        p = tl.where(live, tl.exp(logp), 0.0)
        tl.store(plan_ptr + base + rows[:, None] * m + cols[None, :], p.to(plan_ptr.dtype.element_ty), mask=inb)
        lin += tl.sum(p * c, axis=1)
        xlx += tl.sum(tl.where(p > 0, p * logp, 0.0), axis=1)
        r += tl.sum(p, axis=1)
    out = pid_b * n + rows
    tl.store(lin_ptr + out, lin, mask=rin)
    tl.store(xlx_ptr + out, xlx, mask=rin)
    tl.store(r_ptr + out, r, mask=rin)


def finalize_triton(C, a, b, lu, lv, w, spec: SolveSpec, nonempty):
    """Same inputs and outputs as ``grounded_fast.ops.entropic_ot.driver.finalize``: plan (B,n,m) of a's dtype,
    value (B,), value_linear (B,). C (B,n,m) may be float32/64, bfloat16 or float16 (read as it is)."""
    B, n, m = C.shape
    reg = spec.reg
    dt = a.dtype
    C = C.contiguous()
    plan = torch.empty(B, n, m, dtype=dt, device=C.device)
    lin, xlx, r = (torch.empty(B, n, dtype=dt, device=C.device) for _ in range(3))
    DT = tl.float64 if dt == torch.float64 else tl.float32
    BR, BT, warps = CONFIG_F64 if dt == torch.float64 else CONFIG
    _finalize[(B, triton.cdiv(n, BR))](
        C, a.contiguous(), b.contiguous(), lu.to(dt).contiguous(), lv.to(dt).contiguous(), w.to(dt).contiguous(),
        nonempty.to(torch.int32).contiguous(), plan, lin, xlx, r, n, m, device_scalars(C.device, 1.0 / reg), DT=DT,
        BR=BR, BT=BT, num_warps=warps, **LAUNCH)
    value_linear, xlogx = lin.sum(1), xlx.sum(1)
    if spec.problem == UNBALANCED:
        c = plan.sum(1)
        if spec.kl_ref:
            log_or_0 = lambda x: torch.where(x > 0, torch.log(torch.where(x > 0, x, 1)), 0)  # noqa: E731
            plref = (r * log_or_0(a)).sum(1) + (c * log_or_0(b)).sum(1)
            ref_sum = a.sum(1) * b.sum(1)
        else:
            plref = torch.zeros_like(value_linear)
            ref_sum = torch.full_like(value_linear, float(n * m))
        value = unbalanced_value(value_linear, xlogx, plref, ref_sum, r, c, a, b, reg, spec.reg_m_a, spec.reg_m_b)
    else:
        value = value_linear + reg * xlogx
    value = torch.where(nonempty, value, torch.zeros_like(value))
    return plan, value, value_linear
