"""Triton kernels for large entropic OT problems: log-sum-exp passes streaming over tiles of C.

A half-iteration is one launch over the batch: each program owns a block of rows (row pass) or
columns (column pass) of one problem and streams the other axis in tiles of C read from device
memory (float32, float64, bfloat16 or float16; accumulation float32, float64 for float64), with an
online log-sum-exp
    m' = max(m, max_j x_j),  s' = s e^(m - m') + sum_j e^(x_j - m'),   LSE = m + log s,
x_ij = lv_j - C_ij / eps (row pass) or lu_i - C_ij / eps (column pass). The O(n + m) updates
between passes and the stop tests are those of the reference driver
(grounded_fast.reference.entropic_ot.solve_potentials), so the iterates are the reference's.
Regime choice (see grounded_fast/ops/entropic_ot.py): problems whose padded tile fits on-chip
go to the persistent kernel (sinkhorn_small.py), larger ones stream here.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...ops.entropic_ot.driver import solve_potentials
from ...ops.entropic_ot.spec import SolveSpec
from ..common.fast_math import LAUNCH
from ..common import device_scalars

# (rows or columns owned by one program, entries of the streamed axis per step, warps) per pass, for
# 32-bit and 16-bit C: the tiles with the highest fraction of the copy bandwidth per pass in the
# H100 sweep (docs/PERFORMANCE.md, "Triton stream tiles"; bench/results/gpu-sweep-stream-h100.md).
# float64 keeps the smaller tiles (register pressure).
CONFIG = {"row": (16, 256, 8), "col": (64, 128, 4)}
CONFIG_F64 = {"row": (32, 128, 4), "col": (32, 128, 4)}


@triton.jit
def _online(mx, s, x, axis: tl.constexpr):
    """One step of the online log-sum-exp along ``axis`` of the tile x."""
    new = tl.maximum(mx, tl.max(x, axis=axis))
    safe = tl.where(new == float("-inf"), 0.0, new)
    if axis == 1:
        s = s * tl.exp(mx - safe) + tl.sum(tl.exp(x - safe[:, None]), axis=1)
    else:
        s = s * tl.exp(mx - safe) + tl.sum(tl.exp(x - safe[None, :]), axis=0)
    return new, s


@triton.jit
def _row_block_lse(base, lv_ptr, rows, rin, m, inv_eps, DT: tl.constexpr, BR: tl.constexpr, BT: tl.constexpr):
    """(BR,) LSE_j(lv_j - C_ij/eps) over the rows ``rows`` of one problem's C (at ``base``)."""
    mx = tl.full((BR,), float("-inf"), DT)
    s = tl.zeros((BR,), DT)
    for j0 in range(0, m, BT):
        cols = j0 + tl.arange(0, BT)
        cin = cols < m
        lv = tl.load(lv_ptr + cols, mask=cin, other=float("-inf")).to(DT)
        c = tl.load(base + rows[:, None] * m + cols[None, :], mask=rin[:, None] & cin[None, :], other=0.0).to(DT)
        x = tl.where(rin[:, None] & cin[None, :], lv[None, :] - c * inv_eps, float("-inf"))
        mx, s = _online(mx, s, x, 1)
    return tl.where(s > 0, tl.where(mx == float("-inf"), 0.0, mx) + tl.log(s), float("-inf"))


@triton.jit
def _row_lse(C_ptr, lv_ptr, out_ptr, n, m, inv_eps_ptr, DT: tl.constexpr, BR: tl.constexpr, BT: tl.constexpr):
    pid_b = tl.program_id(0)
    inv_eps = tl.load(inv_eps_ptr).to(DT)
    rows = tl.program_id(1) * BR + tl.arange(0, BR)
    rin = rows < n
    base = C_ptr + pid_b.to(tl.int64) * n * m
    lse = _row_block_lse(base, lv_ptr + pid_b * m, rows, rin, m, inv_eps, DT, BR, BT)
    tl.store(out_ptr + pid_b * n + rows, lse, mask=rin)


@triton.jit
def _col_lse(C_ptr, lu_ptr, out_ptr, n, m, inv_eps_ptr, DT: tl.constexpr, BR: tl.constexpr, BT: tl.constexpr):
    pid_b = tl.program_id(0)
    inv_eps = tl.load(inv_eps_ptr).to(DT)
    cols = tl.program_id(1) * BR + tl.arange(0, BR)
    cin = cols < m
    base = C_ptr + pid_b.to(tl.int64) * n * m
    mx = tl.full((BR,), float("-inf"), DT)
    s = tl.zeros((BR,), DT)
    for i0 in range(0, n, BT):
        rows = i0 + tl.arange(0, BT)
        rin = rows < n
        lu = tl.load(lu_ptr + pid_b * n + rows, mask=rin, other=float("-inf")).to(DT)
        c = tl.load(base + rows[:, None] * m + cols[None, :], mask=rin[:, None] & cin[None, :], other=0.0).to(DT)
        x = tl.where(rin[:, None] & cin[None, :], lu[:, None] - c * inv_eps, float("-inf"))
        mx, s = _online(mx, s, x, 0)
    lse = tl.where(s > 0, tl.where(mx == float("-inf"), 0.0, mx) + tl.log(s), float("-inf"))
    tl.store(out_ptr + pid_b * m + cols, lse, mask=cin)


def streaming_passes(C, reg: float):
    """(row_lse, col_lse) callables over C (B, n, m) for the driver (grounded_fast.ops.entropic_ot.driver)."""
    B, n, m = C.shape
    C = C.contiguous()
    dt = torch.float64 if C.dtype == torch.float64 else torch.float32
    DT = tl.float64 if dt == torch.float64 else tl.float32
    inv_eps = device_scalars(C.device, 1.0 / reg)
    (RB, RT, RW), (CB, CT, CW) = (CONFIG_F64 if dt == torch.float64 else CONFIG).values()

    def row_lse(lv):
        out = torch.empty(B, n, dtype=dt, device=C.device)
        _row_lse[(B, triton.cdiv(n, RB))](C, lv.to(dt).contiguous(), out, n, m, inv_eps, DT=DT, BR=RB, BT=RT,
                                          num_warps=RW, **LAUNCH)
        return out

    def col_lse(lu):
        out = torch.empty(B, m, dtype=dt, device=C.device)
        _col_lse[(B, triton.cdiv(m, CB))](C, lu.to(dt).contiguous(), out, n, m, inv_eps, DT=DT, BR=CB, BT=CT,
                                          num_warps=CW, **LAUNCH)
        return out

    return row_lse, col_lse


def sinkhorn_stream(C, a, b, mass, log_u0, log_v0, spec: SolveSpec):
    """Same inputs and outputs as sinkhorn_small.sinkhorn_small, for problems of any size."""
    row_lse, col_lse = streaming_passes(C, spec.reg)
    return solve_potentials(row_lse, col_lse, a, b, mass, log_u0, log_v0, spec)
