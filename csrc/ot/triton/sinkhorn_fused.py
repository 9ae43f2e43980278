"""Triton 'fused' regime for large balanced problems: one pass over C from device memory per iteration.

The streaming regime (sinkhorn_stream.py) reads C twice an iteration, once for the row LSE and
once for the column LSE, so at best it runs at two reads of C per iteration. Here both half-
iterations share one read: a program owns a range of rows of one problem and, block of BR rows
by block,
  1. streams the block's rows (from device memory) through the online row LSE with the current
     lv, and sets lu_i = log a_i - LSE_j(lv_j - C_ij/eps) (kept as it was for retired problems);
  2. streams the same rows again -- BR x m entries just read, still in L2 -- to add them to the
     program's partial column LSE of lu_i - C_ij/eps, a running (max, sum) per column kept in a
     (B, programs, m) scratch (also L2-resident);
then torch merges the programs' partials into the column LSE of the new lu, which the next
iteration's lv = log b - col LSE needs. Device-memory traffic is one read of C plus the scratch,
against two reads; the second read of each block and the scratch updates go to L2.

The iterates are the reference's (the driver is grounded_fast.reference.entropic_ot.
solve_potentials with its ``row_then_col`` hook); only the summation order of the column LSE
differs. Balanced problems only; opt-in (``regime='fused'``) until it is measured on a GPU.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ...reference.entropic_ot import BALANCED, solve_potentials
from . import device_scalars
from .sinkhorn_stream import _online, _row_block_lse, streaming_passes

# rows per block (BR x m entries must stay in L2 between the two sweeps), columns per step, warps
CONFIG = (8, 512, 8)
CONFIG_F64 = (8, 256, 8)


@triton.jit
def _row_then_col(C_ptr, lv_ptr, la_ptr, lu_ptr, act_ptr, pmx_ptr, psm_ptr, n, m, rows_per_prog, n_prog,
                  inv_eps_ptr, DT: tl.constexpr, BR: tl.constexpr, BT: tl.constexpr):
    b = tl.program_id(0)
    p = tl.program_id(1)
    inv_eps = tl.load(inv_eps_ptr).to(DT)
    active = tl.load(act_ptr + b) != 0
    base = C_ptr + b.to(tl.int64) * n * m
    part = (b * n_prog + p).to(tl.int64) * m
    r_begin = p * rows_per_prog
    r_end = tl.minimum(r_begin + rows_per_prog, n)
    for r0 in range(r_begin, r_end, BR):
        rows = r0 + tl.arange(0, BR)
        rin = rows < r_end
        # 1. row LSE of lv_j - C_ij/eps, then the new lu of these rows
        rl = _row_block_lse(base, lv_ptr + b * m, rows, rin, m, inv_eps, DT, BR, BT)
        la = tl.load(la_ptr + b * n + rows, mask=rin, other=float("-inf")).to(DT)
        old = tl.load(lu_ptr + b * n + rows, mask=rin, other=float("-inf")).to(DT)
        lu = tl.where(la == float("-inf"), float("-inf"), tl.where(active, la - rl, old))
        tl.store(lu_ptr + b * n + rows, lu, mask=rin)
        # 2. these rows' share of the column LSE of lu_i - C_ij/eps, merged into the running partial
        for j0 in range(0, m, BT):
            cols = j0 + tl.arange(0, BT)
            cin = cols < m
            inb = rin[:, None] & cin[None, :]
            seen = cin & (cols * 0 + r0 > r_begin)  # the first block starts the partial
            c = tl.load(base + rows[:, None] * m + cols[None, :], mask=inb, other=0.0).to(DT)
            pm = tl.load(pmx_ptr + part + cols, mask=seen, other=float("-inf"))
            ps = tl.load(psm_ptr + part + cols, mask=seen, other=0.0)
            pm, ps = _online(pm, ps, tl.where(inb, lu[:, None] - c * inv_eps, float("-inf")), 0)
            tl.store(pmx_ptr + part + cols, pm, mask=cin)
            tl.store(psm_ptr + part + cols, ps, mask=cin)


def programs_per_problem(B: int, n: int, BR: int, device: torch.device) -> int:
    """Programs sharing one problem's rows: about 4 per SM over the batch, at least one block each."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2
    return int(max(1, min(triton.cdiv(4 * sms, B), triton.cdiv(n, BR))))


def fused_pass(C, reg: float, programs: int | None = None):
    """``row_then_col(lv, lu, la, active) -> (lu', col_lse(lu'))`` over C (B, n, m) for the driver."""
    B, n, m = C.shape
    dt = torch.float64 if C.dtype == torch.float64 else torch.float32
    DT = tl.float64 if dt == torch.float64 else tl.float32
    BR, BT, warps = CONFIG_F64 if dt == torch.float64 else CONFIG
    P = programs or programs_per_problem(B, n, BR, C.device)
    rows_per_prog = triton.cdiv(triton.cdiv(n, P), BR) * BR
    P = triton.cdiv(n, rows_per_prog)
    inv_eps = device_scalars(C.device, 1.0 / reg)
    pmx = torch.empty(B, P, m, dtype=dt, device=C.device)
    psm = torch.empty(B, P, m, dtype=dt, device=C.device)

    def row_then_col(lv, lu, la, active):
        lu = lu.to(dt).contiguous().clone()
        _row_then_col[(B, P)](C, lv.to(dt).contiguous(), la.to(dt).contiguous(), lu, active.to(torch.int32).contiguous(), pmx, psm, n, m,
                              rows_per_prog, P, inv_eps, DT=DT, BR=BR, BT=BT, num_warps=warps)
        top = pmx.amax(1)
        safe = torch.where(top == -math.inf, 0.0, top)
        total = (psm * torch.exp(pmx - safe[:, None, :])).sum(1)
        return lu, torch.where(total > 0, safe + torch.log(total), -math.inf)

    return row_then_col


def sinkhorn_fused(C, a, b, mass, log_u0, log_v0, problem: int, reg: float, reg_m_a: float, reg_m_b: float,
                   kl_ref: bool, max_iter: int, tol: float, check_every: int, history: int = -1,
                   programs: int | None = None):
    """Same inputs and outputs as sinkhorn_stream.sinkhorn_stream, balanced problems only.
    ``programs``: programs per problem (default: about 4 per SM over the batch)."""
    if problem != BALANCED:
        raise ValueError("the 'fused' regime solves balanced problems only; use regime='stream'")
    C = C.contiguous()
    row_lse, col_lse, plan_change = streaming_passes(C, reg)
    return solve_potentials(row_lse, col_lse, plan_change, a, b, mass, log_u0, log_v0, problem, reg, reg_m_a,
                            reg_m_b, kl_ref, max_iter, tol, check_every, history,
                            row_then_col=fused_pass(C, reg, programs))
