"""Triton 'fused' regime for large problems: one pass over C from device memory per iteration.

The streaming regime (sinkhorn_stream.py) reads C twice an iteration, once for the row LSE and
once for the column LSE, so at best it runs at two reads of C per iteration. Here both half-
iterations share one read. A program owns a range of rows of one problem and keeps, for every
column, a running (max, sum) of the column LSE of lu_i - C_ij/eps over the rows it has done. Two
kernels, by the width m:

``_resident_rows`` (next_pow2(m) <= RESIDENT_MAX_M, e.g. m = 4096): a block of BR whole rows is
loaded once into registers; its row LSE rl_i = LSE_j(lv_j - C_ij/eps) with the current lv gives
the new lu_i = la_i - scale rl_i (balanced: la = log a, scale 1; unbalanced and partial: see
``solve_potentials``; partial also caps it at the old lu_i; kept as it was for retired problems),
and the same registers then update the column partials, which also stay in registers until the
program ends. Device-memory traffic: one read of C, plus (B, programs, m) partials written once per
iteration.

``_row_then_col`` (wider problems): the rows do not fit in registers, so each block of BR rows is
streamed twice, the second time from L2 (BR x m entries just read), and the column partials live
in a (B, programs, m) scratch that every block reads and writes (also L2 traffic).

``_merge_columns`` then merges the programs' partials into the column LSE of the new lu, which the
next iteration's lv = log b - col LSE needs.

The iterates are the reference's (the driver is grounded_fast.ops.entropic_ot.driver.
solve_potentials with its ``row_then_col`` hook); only the summation order of the column LSE
differs. Every problem kind; opt-in (``regime='fused'``) until it is measured on a GPU.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ...ops.entropic_ot.driver import solve_potentials
from ...ops.entropic_ot.spec import SolveSpec
from ..common.fast_math import LAUNCH, exp2
from ..common import device_scalars
from .sinkhorn_stream import _online, _row_block_lse, streaming_passes

# _row_then_col: rows per block (BR x m entries must stay in L2 between the two sweeps), columns per
# step, warps
CONFIG = (8, 512, 8)
CONFIG_F64 = (8, 256, 8)
# _resident_rows: the widest padded row kept in registers (by the bytes of the compute type), the
# entries of C per block (BR = RESIDENT_TILE // BM rows, at least one), the entries of the block per
# thread (hence the warps, 1 to 16) and programs per SM (over the batch). At B=16 x 4096^2 float32:
# BR 2, 8 warps, 128 registers, no spills, 2 programs an SM (Triton 3.6, sm_90; its loads are not
# software-pipelined: 16-byte ld.global, no cp.async, so a second program per SM hides the latency).
RESIDENT_MAX_M = {4: 8192, 8: 4096}
RESIDENT_TILE = 8192
RESIDENT_PER_THREAD = {4: 32, 8: 16}
RESIDENT_PER_SM = 2
MERGE_BT = 128  # columns per merge program (B x m / 128 programs)
LOG2E, LN2 = 1.0 / math.log(2.0), math.log(2.0)
MIN_ROWS_PER_PROGRAM = 64


@triton.jit
def _new_lu(la_ptr, lu_ptr, out_ptr, rows, rin, rl, active, scalars_ptr, DT: tl.constexpr, SCALED: tl.constexpr,
            CAP: tl.constexpr):
    """lu_i = la_i - scale rl_i (scale = scalars[1] with SCALED, else 1; with CAP at most the old lu_i)
    for an active problem (kept as it was for a retired one; -inf where la_i = -inf), stored in out
    and returned. The scale is loaded here, not once per program: held across the row loop it cost
    the resident kernel 35 registers (Triton 3.6, sm_90: 163 instead of 128)."""
    la = tl.load(la_ptr + rows, mask=rin, other=float("-inf")).to(DT)
    old = tl.load(lu_ptr + rows, mask=rin, other=float("-inf")).to(DT)
    if SCALED:
        new = la - tl.load(scalars_ptr + 1).to(DT) * rl
    else:
        new = la - rl
    if CAP:
        new = tl.minimum(new, old)
    lu = tl.where(la == float("-inf"), float("-inf"), tl.where(active, new, old))
    tl.store(out_ptr + rows, lu, mask=rin)
    return lu


@triton.jit
def _exp2(x, DT: tl.constexpr):
    """2^x: one ex2.approx.ftz in float32 on a GPU (fast_math.exp2; a result under 2^-126, a term
    far below what the float32 sums resolve, flushes to 0), tl.exp2 in float64."""
    if DT == tl.float64:
        return tl.exp2(x)
    else:
        return exp2(x)


@triton.jit
def _col_block_online2(pm, ps, x, DT: tl.constexpr):
    """_online along axis 0 in base 2: x and the running max pm in log2 units, ps = sum 2^(x - pm)."""
    new = tl.maximum(pm, tl.max(x, axis=0))
    safe = tl.where(new == float("-inf"), 0.0, new)
    return new, ps * _exp2(pm - safe, DT) + tl.sum(_exp2(x - safe[None, :], DT), axis=0)


# Base 2 in the resident kernel. With s_ij = C_ij log2(e)/eps (one multiply an entry, the constant
# folded into the scale) and the potentials times log2(e), LSE_j(lv_j - C_ij/eps) =
# ln(2) (M + log2 sum_j 2^(lv_j log2(e) - s_ij - M)): every exponential is one 2^x, the hardware's
# own instruction (tl.exp is a multiply by log2(e) plus a guarded ex2: 4 instructions more each).
# The column partials (pm, ps) are kept in log2 units and pm is stored in nats: ps = sum 2^(x - pm)
# = sum e^(x ln 2 - pm ln 2) is the same in both. The constants come from the float64 scalars
# (a float literal is float32 in Triton: the float64 solve would lose 8 digits to it).
@triton.jit
def _resident_rows(C_ptr, lv_ptr, la_ptr, lu_ptr, out_ptr, act_ptr, pmx_ptr, psm_ptr, n, m, rows_per_prog, n_prog,
                   scalars_ptr, DT: tl.constexpr, BR: tl.constexpr, BM: tl.constexpr, SCALED: tl.constexpr,
                   CAP: tl.constexpr):
    b = tl.program_id(0)
    p = tl.program_id(1)
    k2 = tl.load(scalars_ptr + 2).to(DT)      # log2(e) / eps
    ln2 = tl.load(scalars_ptr + 3).to(DT)
    log2e = tl.load(scalars_ptr + 4).to(DT)
    active = tl.load(act_ptr + b) != 0
    base = C_ptr + b.to(tl.int64) * n * m
    cols = tl.arange(0, BM)
    cin = cols < m
    lv2 = tl.load(lv_ptr + b * m + cols, mask=cin, other=float("-inf")).to(DT) * log2e
    pm = tl.full((BM,), float("-inf"), DT)  # the program's column partials, in registers throughout
    ps = tl.zeros((BM,), DT)
    r_begin = p * rows_per_prog
    r_end = tl.minimum(r_begin + rows_per_prog, n)
    for r0 in range(r_begin, r_end, BR):
        rows = r0 + tl.arange(0, BR)
        rin = rows < r_end
        # entries outside the problem read +inf: lv2 - s and lu2 - s are -inf there with no select
        # (lv2 and lu2 are never +inf)
        s = tl.load(base + rows[:, None] * m + cols[None, :], mask=rin[:, None] & cin[None, :],
                    other=float("inf")).to(DT) * k2
        # 1. the whole rows' LSE of lv_j - C_ij/eps (no online rescaling), then their new lu
        x = lv2[None, :] - s
        mx = tl.max(x, axis=1)
        safe = tl.where(mx == float("-inf"), 0.0, mx)
        total = tl.sum(_exp2(x - safe[:, None], DT), axis=1)
        rl = tl.where(total > 0, (safe + tl.log2(total)) * ln2, float("-inf"))
        lu = _new_lu(la_ptr + b * n, lu_ptr + b * n, out_ptr + b * n, rows, rin, rl, active, scalars_ptr, DT,
                     SCALED, CAP)
        # 2. the same registers: these rows' share of the column LSE of lu_i - C_ij/eps, with one
        # 2^x an entry where BR <= 2: for a value x (BR 1) or the pair's (max, 1 + 2^(min - max))
        # (BR 2) against the running (pm, ps), d = x - pm and e = 2^-|d|; d > 0: (pm, ps) <- (x, ps
        # e + sum), else ps += sum e
        x = (lu * log2e)[:, None] - s
        if BR <= 2:
            if BR == 1:
                hi = tl.sum(x, axis=0)  # the row itself
                add = tl.full((BM,), 1.0, DT)
            else:
                hi = tl.max(x, axis=0)
                add = 1.0 + _exp2(tl.min(x, axis=0) - hi, DT)  # NaN where hi = -inf: not live, unused
            d = hi - pm
            e = _exp2(-tl.abs(d), DT)
            live = hi != float("-inf")
            ps = tl.where(live, tl.where(d > 0, ps * e + add, ps + add * e), ps)
            pm = tl.where(live, tl.maximum(pm, hi), pm)
        else:
            pm, ps = _col_block_online2(pm, ps, x, DT)
    part = (b * n_prog + p).to(tl.int64) * m
    tl.store(pmx_ptr + part + cols, pm * ln2, mask=cin)
    tl.store(psm_ptr + part + cols, ps, mask=cin)


@triton.jit
def _row_then_col(C_ptr, lv_ptr, la_ptr, lu_ptr, out_ptr, act_ptr, pmx_ptr, psm_ptr, n, m, rows_per_prog, n_prog,
                  scalars_ptr, DT: tl.constexpr, BR: tl.constexpr, BT: tl.constexpr, SCALED: tl.constexpr,
                  CAP: tl.constexpr):
    b = tl.program_id(0)
    p = tl.program_id(1)
    inv_eps = tl.load(scalars_ptr).to(DT)
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
        lu = _new_lu(la_ptr + b * n, lu_ptr + b * n, out_ptr + b * n, rows, rin, rl, active, scalars_ptr, DT,
                     SCALED, CAP)
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


@triton.jit
def _merge_columns(pmx_ptr, psm_ptr, out_ptr, m, n_prog, DT: tl.constexpr, BT: tl.constexpr):
    """out[b, j] = LSE over the programs p of (pmx[b, p, j] + log psm[b, p, j])."""
    b = tl.program_id(0)
    cols = tl.program_id(1) * BT + tl.arange(0, BT)
    cin = cols < m
    mx = tl.full((BT,), float("-inf"), DT)
    s = tl.zeros((BT,), DT)
    for p in range(n_prog):
        part = (b * n_prog + p).to(tl.int64) * m
        pm = tl.load(pmx_ptr + part + cols, mask=cin, other=float("-inf"))
        ps = tl.load(psm_ptr + part + cols, mask=cin, other=0.0)
        new = tl.maximum(mx, pm)
        safe = tl.where(new == float("-inf"), 0.0, new)
        s = s * tl.exp(mx - safe) + ps * tl.exp(pm - safe)
        mx = new
    safe = tl.where(mx == float("-inf"), 0.0, mx)
    tl.store(out_ptr + b * m + cols, tl.where(s > 0, safe + tl.log(s), float("-inf")), mask=cin)


def programs_per_problem(B: int, n: int, BR: int, device: torch.device, per_sm: int = 4,
                         sms: int | None = None) -> int:
    """Programs sharing one problem's rows: at most ``per_sm`` per SM over the batch (rounded down,
    so that they run in one wave where ``per_sm`` programs fit on an SM: B=16 on 132 SMs at 2 per
    SM gives 16 a problem, 256 programs; 17 would make 272, and a second wave of 8), at least one
    each, and at least MIN_ROWS_PER_PROGRAM rows (and one block) each: every program writes m
    partials, which the merge reads, so a single problem on 132 SMs must not have 264 of them."""
    if sms is None:
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2
    return int(max(1, min(per_sm * sms // B, triton.cdiv(n, max(BR, MIN_ROWS_PER_PROGRAM)))))


def resident_layout(n: int, m: int, dtype: torch.dtype) -> tuple[int, int, int] | None:
    """(BR, BM, warps) of ``_resident_rows`` for (n, m) problems computed in ``dtype`` (float32 or
    float64), or None where a padded row exceeds RESIDENT_MAX_M."""
    size = torch.empty((), dtype=dtype).element_size()
    BM = triton.next_power_of_2(m)
    if BM > RESIDENT_MAX_M[size]:
        return None
    BR = max(1, min(RESIDENT_TILE // BM, triton.next_power_of_2(n)))
    warps = max(1, min(16, BR * BM // (32 * RESIDENT_PER_THREAD[size])))
    return BR, BM, warps


def fused_pass(C, reg: float, programs: int | None = None, resident: bool | None = None):
    """``row_then_col(lv, lu, la, active, scale=1, cap=False) -> (lu', col_lse(lu'))`` over C (B, n, m)
    for the driver (grounded_fast.ops.entropic_ot.driver.solve_potentials defines it).
    ``resident``: None (automatic, rows in registers where ``resident_layout`` allows), True or False."""
    B, n, m = C.shape
    dt = torch.float64 if C.dtype == torch.float64 else torch.float32
    DT = tl.float64 if dt == torch.float64 else tl.float32
    layout = resident_layout(n, m, dt) if resident is not False else None
    if resident and layout is None:
        raise ValueError(f"rows of {m} columns do not fit in registers (RESIDENT_MAX_M = {RESIDENT_MAX_M})")
    if layout is not None:
        BR, BM, warps = layout
        kernel, meta = _resident_rows, dict(BM=BM)
        P = programs or programs_per_problem(B, n, BR, C.device, RESIDENT_PER_SM)
    else:
        BR, BT, warps = CONFIG_F64 if dt == torch.float64 else CONFIG
        kernel, meta = _row_then_col, dict(BT=BT)
        P = programs or programs_per_problem(B, n, BR, C.device)
    rows_per_prog = triton.cdiv(triton.cdiv(n, P), BR) * BR
    P = triton.cdiv(n, rows_per_prog)
    scalars = {}  # scale -> device_scalars(1/eps, scale): a float64 solve needs both to full precision
    pmx = torch.empty(B, P, m, dtype=dt, device=C.device)
    psm = torch.empty(B, P, m, dtype=dt, device=C.device)

    def row_then_col(lv, lu, la, active, scale=1.0, cap=False):
        if scale not in scalars:  # one per solve: a copy to the device each iteration would stall the host
            # 1/eps, the row update's scale, and the resident kernel's base-2 constants
            scalars[scale] = device_scalars(C.device, 1.0 / reg, scale, LOG2E / reg, LN2, LOG2E)
        new = torch.empty(B, n, dtype=dt, device=C.device)
        kernel[(B, P)](C, lv.to(dt).contiguous(), la.to(dt).contiguous(), lu.to(dt).contiguous(), new,
                       active.contiguous(), pmx, psm, n, m, rows_per_prog, P, scalars[scale], DT=DT, BR=BR,
                       SCALED=scale != 1.0, CAP=bool(cap), num_warps=warps, **meta, **LAUNCH)
        col = torch.empty(B, m, dtype=dt, device=C.device)
        _merge_columns[(B, triton.cdiv(m, MERGE_BT))](pmx, psm, col, m, P, DT=DT, BT=MERGE_BT, **LAUNCH)
        return new, col

    return row_then_col


def sinkhorn_fused(C, a, b, mass, log_u0, log_v0, spec: SolveSpec, programs: int | None = None,
                   resident: bool | None = None):
    """Same inputs and outputs as sinkhorn_stream.sinkhorn_stream (every problem kind).
    ``programs``: programs per problem (default: about RESIDENT_PER_SM, or 4, per SM over the batch);
    ``resident``: see ``fused_pass``."""
    C = C.contiguous()
    row_lse, col_lse = streaming_passes(C, spec.reg)
    return solve_potentials(row_lse, col_lse, a, b, mass, log_u0, log_v0, spec,
                            row_then_col=fused_pass(C, spec.reg, programs, resident))
