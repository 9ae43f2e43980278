"""Triton kernels of ``pairwise_agreement``: all-pairs argmax agreement, KL, entropy and JSD.

Math (the same as csrc/analysis/cpu/pairwise_agreement_cpu.cpp): for model i at position n with
logits z, l = z - LSE(z), p = exp(l);
    KL(p_i || p_j) = Y_ii - Y_ij,   Y_ij = sum_n w_n sum_v p_i(n, v) l_j(n, v),   H_i = -sum p_i l_i,
    JSD(p_i, p_j)  = H((p_i + p_j) / 2) - (H_i + H_j) / 2,
with w_n = 1 at counted positions and 0 elsewhere.

Kernels:
  _row_stats   one program per (model, position): online max / first argmax / log-sum-exp over
               V blocks (one read of the logits); with ENT a second pass for the per-position
               entropy (only JSD needs it: the summed entropy is -Y_ii, from _cross); flags
               non-finite logits at counted positions.
  _cross       Y as a matrix product whose contraction index is (position, vocabulary entry):
               each program takes a slice of positions and, per V block, forms the (BM x BV) tiles
               P = w exp(Z - lse) and L = Z - lse of all models on the fly from the logits (never
               stored) and accumulates P L^T with tl.dot on the tensor cores in 3xTF32 (each
               operand split into a TF32 head and a TF32 tail, three products: about fp32 accuracy,
               which KL, a difference of such sums, needs; plain TF32 would give ~1e-3 nats).
               Up to 128 models are one (BM x BM) tile; beyond, programs also take a (64 x 64)
               (i, j) tile of models (TILED). Partial sums per program are added in float64 by torch.
  _stats_cross the one-pass form of _row_stats + _cross (one read of the logits instead of two;
               the default up to 128 models, see ``ONE_PASS``). Per position it keeps, per model,
               the online max m and the first argmax, and the unnormalised products
               A_ij = sum_v 2^((z_i - c_i) log2 e - r_i) (z_j - c_j), r_i = (m_i - c_i) log2 e,
               rescaled by 2^(r_old - r_new) when a row's max grows (as flash attention rescales its
               output), so that at the end, with s_i = sum_v 2^(...) the row's sum,
                   Y_ij(n) = A_ij / s_i - (lse_j - c_j),   lse_j - c_j = r_j ln 2 + log s_j,
               since sum_v p_i (z_j - lse_j) = sum_v p_i (z_j - c_j) - (lse_j - c_j). c_j is the
               row's first logit: any per-row constant works, and one inside the row's range keeps
               the operand, and lse_j - c_j, as small as the logits' spread, not their offset
               (logits near 1e4 then lose nothing to fp32 rounding of lse). The exponent is one FMA
               of z - c (which the products need anyway) and the reference r, whose rounding is
               shared by every entry of the row and by lse, so it cancels.
               The V loop's common path is lean (bench/sass_cost.py counts it): one max per entry,
               one row reduction per block, the exponential (ex2.approx.ftz), the 3xTF32 split
               of P and Z - c (fast_math.dot_3xtf32) and the products. The argmax, the new
               reference and the rescaling run only in a block where some row's max grew (one
               branch for the program); the row sums come from the tensor cores (SUM_COL: a padding
               row of ones); non-finite logits are found per position, not per entry (NaN or inf
               in row i makes s_i NaN; -inf, NaN or inf in row j makes column j of A NaN).
               H_i(n) = -Y_ii(n) is the per-position entropy JSD needs. Up to 128 models (all rows'
               statistics in one program); beyond, the launcher takes the two-pass kernels.
               bfloat16 logits (BF16_Z): c = 0, so that Z itself, exact in bfloat16, is the second
               operand, and P goes in as three bfloat16 pieces (fp32's 24 significand bits): three
               bf16 products instead of tf32x3's three tf32 ones at half the rate. Without the
               shift the products carry the logits' offset (bfloat16 logits resolve 2^-8 of it).
  _jsd         one program per (pair tile, position slice): (BI x BJ x BV) mixtures, one log per
               pair and vocabulary entry (base 2, the hardware lg2 on a GPU: fast_math.py).
The argmax agreement counts are an (M, M, N) comparison of the argmaxes, done by torch.

Loads: a row (i, n) starts at element (i N + n) V, rarely 16-byte aligned (V = 30522 is 2 mod 4), and
Triton then loads it entry by entry (4-byte cp.async for float32, unpipelined 2-byte loads for
bfloat16, in the Triton 3.6 sm_90 PTX). _row_stats, _cross and _stats_cross start each row's V loop
at the row start rounded down to VEC entries (``shift`` entries early, masked), peel the first and
last blocks, and hint the aligned base (``tl.multiple_of``), so that the unmasked interior blocks
load 16 bytes at a time (16-byte cp.async, pipelined for bfloat16 too). ``_vector_width`` checks
the alignment that the hint promises.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common.fast_math import LAUNCH, bf16_dot, dot_3xtf32, exp2, xlog2x


@triton.jit
def _rows_base(z_ptr, row_off, shift, ALIGN: tl.constexpr):
    """Pointers to the (int64) element offsets row_off - shift, hinted ALIGN-byte aligned when
    ALIGN > 0 (the launcher checked it: see _vector_width); entry v of a row is at base + shift + v."""
    base = z_ptr + (row_off - shift)
    if ALIGN > 0:
        base = tl.multiple_of(base, ALIGN)
    return base


@triton.jit
def _stats_step(base, k0, shift, total, mx, s, top, nonfinite, V, MASKED: tl.constexpr, BV: tl.constexpr):
    """One V block of _row_stats' online max / sum / first argmax (k: offsets from the aligned base)."""
    k = k0 + tl.arange(0, BV)
    if MASKED:
        inb = (k >= shift) & (k < total)
        x = tl.load(base + k, mask=inb, other=0.0).to(tl.float32)
    else:  # the peeled loop's interior: every entry is in the row; no mask, so vector loads
        inb = tl.full((BV,), 1, tl.int1)
        x = tl.load(base + k).to(tl.float32)
    nonfinite += tl.sum(((x != x) | (tl.abs(x) == float("inf"))) & inb, axis=0).to(tl.int32)
    x = tl.where(inb & (x == x), x, float("-inf"))
    bm = tl.max(x, axis=0)
    barg = tl.min(tl.where(x == bm, k - shift, V), axis=0)  # first index of the block maximum
    top = tl.where(bm > mx, barg, top)
    new = tl.maximum(mx, bm)
    ref = tl.where(new == float("-inf"), 0.0, new)  # a head block that holds only the shift
    s = s * tl.exp(mx - ref) + tl.sum(tl.exp(x - ref), axis=0)
    return new, s, top, nonfinite


@triton.jit
def _row_stats(z_ptr, w_ptr, lse_ptr, top_ptr, ent_ptr, bad_ptr, N, V, BV: tl.constexpr, ENT: tl.constexpr,
               VEC: tl.constexpr, ALIGN: tl.constexpr):
    row = tl.program_id(0)            # row = i * N + n
    n = row % N
    tl.store(bad_ptr + row, 0)
    if tl.load(w_ptr + n) != 0:       # padded positions may hold anything, even NaN
        off = row.to(tl.int64) * V
        shift = (off % VEC).to(tl.int32)
        base = _rows_base(z_ptr, off, shift, ALIGN)
        total = V + shift
        end = (total // BV) * BV
        mx = tl.full((), float("-inf"), tl.float32)
        s = tl.zeros((), tl.float32)
        top = tl.zeros((), tl.int32)
        nonfinite = tl.zeros((), tl.int32)
        mx, s, top, nonfinite = _stats_step(base, 0, shift, total, mx, s, top, nonfinite, V, True, BV)
        for k0 in range(BV, end, BV):
            mx, s, top, nonfinite = _stats_step(base, k0, shift, total, mx, s, top, nonfinite, V, False, BV)
        if (end >= BV) & (end < total):
            mx, s, top, nonfinite = _stats_step(base, end, shift, total, mx, s, top, nonfinite, V, True, BV)
        lse = mx + tl.log(s)
        if ENT:
            h = tl.zeros((), tl.float32)
            for k0 in range(0, total, BV):
                k = k0 + tl.arange(0, BV)
                inb = (k >= shift) & (k < total)
                l = tl.load(base + k, mask=inb, other=0.0).to(tl.float32) - lse
                h += tl.sum(tl.where(inb, tl.exp(l) * l, 0.0), axis=0)
            tl.store(ent_ptr + row, -h)
        tl.store(lse_ptr + row, lse)
        tl.store(top_ptr + row, top)
        tl.store(bad_ptr + row, nonfinite)


@triton.jit
def _block_mask(live, k, shift, total, MASKED: tl.constexpr, BV: tl.constexpr):
    """(BM, BV) mask of a block of rows: the live rows, and with MASKED the entries in [shift, total)."""
    if MASKED:
        return live[:, None] & ((k >= shift) & (k < total))[None, :]
    else:  # constant along V, so that the loads vectorise
        return tl.broadcast_to(live[:, None], (live.shape[0], BV))


@triton.jit
def _cross_step(base, base_j, k0, shift, total, live, live_j, lse, lse_j, acc,
                MASKED: tl.constexpr, BV: tl.constexpr, TILED: tl.constexpr):
    k = k0 + tl.arange(0, BV)
    inb = _block_mask(live, k, shift, total, MASKED, BV)
    z = tl.load(base[:, None] + k[None, :], mask=inb, other=0.0).to(tl.float32)
    l = tl.where(inb, z - lse[:, None], 0.0)
    p = tl.where(inb, tl.exp(l), 0.0)
    if TILED:
        inb_j = _block_mask(live_j, k, shift, total, MASKED, BV)
        zj = tl.load(base_j[:, None] + k[None, :], mask=inb_j, other=0.0).to(tl.float32)
        l = tl.where(inb_j, zj - lse_j[:, None], 0.0)
    return acc + tl.dot(p, tl.trans(l), input_precision="tf32x3")


@triton.jit
def _cross(z_ptr, w_ptr, lse_ptr, out_ptr, M, N, V, per_prog, n_tiles,
           BM: tl.constexpr, BV: tl.constexpr, TILED: tl.constexpr, VEC: tl.constexpr, ALIGN: tl.constexpr):
    pid = tl.program_id(0)
    tile = tl.program_id(1)  # (i, j) tile of models; TILED only beyond 128 models (else one tile, i = j)
    mi = (tile // n_tiles) * BM + tl.arange(0, BM)
    mj = (tile % n_tiles) * BM + tl.arange(0, BM)
    live_i, live_j = mi < M, mj < M
    acc = tl.zeros((BM, BM), tl.float32)
    n0 = pid * per_prog
    for n in range(n0, tl.minimum(n0 + per_prog, N)):
        if tl.load(w_ptr + n) != 0:  # padded positions may hold anything, even NaN
            shift = ((n % VEC) * (V % VEC)) % VEC  # the same for every model (N V % VEC == 0)
            total = V + shift
            end = (total // BV) * BV
            lse = tl.load(lse_ptr + mi * N + n, mask=live_i, other=0.0)
            base = _rows_base(z_ptr, (mi.to(tl.int64) * N + n) * V, shift, ALIGN)
            if TILED:
                lse_j = tl.load(lse_ptr + mj * N + n, mask=live_j, other=0.0)
                base_j = _rows_base(z_ptr, (mj.to(tl.int64) * N + n) * V, shift, ALIGN)
            else:
                lse_j = lse
                base_j = base
            acc = _cross_step(base, base_j, 0, shift, total, live_i, live_j, lse, lse_j, acc, True, BV, TILED)
            for k0 in range(BV, end, BV):
                acc = _cross_step(base, base_j, k0, shift, total, live_i, live_j, lse, lse_j, acc, False, BV, TILED)
            if (end >= BV) & (end < total):
                acc = _cross_step(base, base_j, end, shift, total, live_i, live_j, lse, lse_j, acc, True, BV, TILED)
    ar = tl.arange(0, BM)
    tl.store(out_ptr + (pid * n_tiles * n_tiles + tile) * BM * BM + ar[:, None] * BM + ar[None, :], acc)


LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _online_step(base, k0, shift, total, live, c, mx, rl, top, s, acc, V,
                 MASKED: tl.constexpr, BV: tl.constexpr, BF16_Z: tl.constexpr, SUM_COL: tl.constexpr):
    """One V block of _stats_cross. Per entry: one maximum, p = 2^((z - c) log2 e - rl) (into the
    (BM, BV) sums unless SUM_COL), and the products. Only in a block where some row's maximum grows (every block at
    first, rarely later: a row's maximum grows in about ln(V / BV) of its blocks) the rows' first
    argmax, the reference rl = (mx - c) log2 e and the rescaling of the sums and products by
    2^(rl_old - rl): one branch for the whole program. With SUM_COL (float32 logits, M < BM) the
    tile's last row is a padding row whose operand z - c is all ones (its masked loads read 0 and
    its c is -1), so that the products' last column is each row's sum of p: the tensor cores add it
    up, instead of one FADD per entry into ``s``."""
    k = k0 + tl.arange(0, BV)
    inb = _block_mask(live, k, shift, total, MASKED, BV)
    zr = tl.load(base[:, None] + k[None, :], mask=inb, other=0.0)
    z = zr.to(tl.float32)
    l = z - c[:, None]  # masked entries: 0 - c, finite, and p = 0 there
    zm = tl.where(inb, z, float("-inf")) if MASKED else z
    bm = tl.max(zm, axis=1)  # NaN is passed over here (and makes the row's sum NaN below)
    grow = bm > mx
    if tl.max(grow.to(tl.int32), axis=0) > 0:
        barg = tl.min(tl.where(zm == bm[:, None], (k - shift)[None, :], V), axis=1)  # first index of the max
        top = tl.where(grow, barg, top)
        mx = tl.maximum(mx, bm)
        rl_new = tl.where(mx == float("-inf"), 0.0, mx - c) * LOG2E
        alpha = exp2(rl - rl_new)  # 0 at the first block (rl = -inf, s = acc = 0)
        rl = rl_new
        if not SUM_COL:
            s = s * alpha[:, None]
        acc = acc * alpha[:, None]
    p = exp2(l * LOG2E - rl[:, None])
    if MASKED:
        p = tl.where(inb, p, 0.0)
    if not SUM_COL:
        s += p
    if BF16_Z:
        # P in three bfloat16 pieces (8 + 8 + 8 significand bits, fp32's 24) times the exact
        # bfloat16 logits (c = 0): three bf16 products, half the tensor-core time of 3xTF32
        zt = tl.trans(zr.to(tl.bfloat16))
        p1 = p.to(tl.bfloat16)
        r1 = p - p1.to(tl.float32)
        p2 = r1.to(tl.bfloat16)
        p3 = (r1 - p2.to(tl.float32)).to(tl.bfloat16)
        acc += bf16_dot(p3, zt) + bf16_dot(p2, zt) + bf16_dot(p1, zt)
    else:
        acc = dot_3xtf32(p, tl.trans(l), acc)
    return mx, rl, top, s, acc


@triton.jit
def _stats_cross(z_ptr, w_ptr, lse_ptr, top_ptr, ent_ptr, bad_ptr, out_ptr, M, N, V, per_prog,
                 BM: tl.constexpr, BV: tl.constexpr, BF16_Z: tl.constexpr, VEC: tl.constexpr,
                 ALIGN: tl.constexpr, SUM_COL: tl.constexpr):
    pid = tl.program_id(0)
    mi = tl.arange(0, BM)
    live = mi < M
    pair = live[:, None] & live[None, :]
    eye = mi[:, None] == mi[None, :]
    tot = tl.zeros((BM, BM), tl.float32)
    n0 = pid * per_prog
    for n in range(n0, tl.minimum(n0 + per_prog, N)):
        if tl.load(w_ptr + n) != 0:  # padded positions may hold anything, even NaN
            rows = (mi.to(tl.int64) * N + n) * V
            if BF16_Z:  # products about 0: the raw bfloat16 logits are the exact operand
                c = tl.zeros((BM,), tl.float32)
            else:
                c = tl.load(z_ptr + rows, mask=live, other=0.0).to(tl.float32)
                c = tl.where((c == c) & (tl.abs(c) != float("inf")), c, 0.0)  # a non-finite row is flagged below
                if SUM_COL:
                    c = tl.where(mi == BM - 1, -1.0, c)
            shift = ((n % VEC) * (V % VEC)) % VEC  # the same for every model (N V % VEC == 0)
            total = V + shift
            end = (total // BV) * BV
            base = _rows_base(z_ptr, rows, shift, ALIGN)
            mx = tl.full((BM,), float("-inf"), tl.float32)
            rl = tl.full((BM,), float("-inf"), tl.float32)
            top = tl.zeros((BM,), tl.int32)
            s = tl.zeros((BM, 1 if SUM_COL else BV), tl.float32)
            acc = tl.zeros((BM, BM), tl.float32)
            mx, rl, top, s, acc = _online_step(base, 0, shift, total, live, c, mx, rl, top, s, acc, V,
                                               True, BV, BF16_Z, SUM_COL)
            for k0 in range(BV, end, BV):
                mx, rl, top, s, acc = _online_step(base, k0, shift, total, live, c, mx, rl, top, s, acc, V,
                                                   False, BV, BF16_Z, SUM_COL)
            if (end >= BV) & (end < total):
                mx, rl, top, s, acc = _online_step(base, end, shift, total, live, c, mx, rl, top, s, acc, V,
                                                   True, BV, BF16_Z, SUM_COL)
            srow = tl.sum(tl.where(mi[None, :] == BM - 1, acc, 0.0), axis=1) if SUM_COL else tl.sum(s, axis=1)
            s1 = tl.where(srow > 0, srow, 1.0)
            # lse - c = rl ln 2 + log s; rl = (mx - c) log2 e rounded, so as d + its rounding's
            # share (exact by the FMA), not rl ln 2 (an error of rl's size x 2^-24, ~1e-6 nats)
            d = tl.where(mx == float("-inf"), 0.0, mx - c)
            rel = d - tl.fma(d, LOG2E, -rl) * LN2 + tl.log(s1)
            y = tl.where(pair, acc / s1[:, None] - rel[None, :], 0.0)
            # Non-finite logits, without a test per entry: NaN or +inf in row i makes its sum NaN
            # (2^NaN, or 2^(inf - inf)); -inf, NaN or +inf in row j makes the products' column j
            # NaN (the TF32 tail inf - inf, or 0 x inf) in every row whose own sum is finite.
            fin = srow < float("inf")
            nonfinite = ((tl.abs(acc) < float("inf")) == 0) & (fin & live)[:, None]
            bad = (~fin | (tl.max(nonfinite.to(tl.int32), axis=0) > 0)) & live
            tot += y
            off = mi * N + n
            tl.store(lse_ptr + off, c + rel, mask=live)
            tl.store(top_ptr + off, top, mask=live)
            tl.store(ent_ptr + off, -tl.sum(tl.where(eye, y, 0.0), axis=1), mask=live)
            tl.store(bad_ptr + off, bad.to(tl.int32), mask=live)
    tl.store(out_ptr + pid * BM * BM + mi[:, None] * BM + mi[None, :], tot)


@triton.jit
def _jsd(z_ptr, w_ptr, lse_ptr, ent_ptr, out_ptr, M, N, V, per_prog, n_tiles,
         BI: tl.constexpr, BV: tl.constexpr):
    tile = tl.program_id(0)
    part = tl.program_id(1)
    ti = tile // n_tiles
    tj = tile % n_tiles
    ii = ti * BI + tl.arange(0, BI)
    jj = tj * BI + tl.arange(0, BI)
    vi = tl.arange(0, BV)
    li, lj = ii < M, jj < M
    acc = tl.zeros((BI, BI), tl.float32)
    n0 = part * per_prog
    for n in range(n0, tl.minimum(n0 + per_prog, N)):
        counted = tl.load(w_ptr + n) != 0
        lse_i = tl.load(lse_ptr + ii * N + n, mask=li, other=0.0)
        lse_j = tl.load(lse_ptr + jj * N + n, mask=lj, other=0.0)
        h_i = tl.load(ent_ptr + ii * N + n, mask=li, other=0.0)
        h_j = tl.load(ent_ptr + jj * N + n, mask=lj, other=0.0)
        rows_i = z_ptr + (ii.to(tl.int64) * N + n) * V
        rows_j = z_ptr + (jj.to(tl.int64) * N + n) * V
        s = tl.zeros((BI, BI), tl.float32)
        for v0 in range(0, V, BV):
            vin = (v0 + vi) < V
            mi_ = li[:, None] & vin[None, :]
            mj_ = lj[:, None] & vin[None, :]
            pi = tl.where(mi_, tl.exp(tl.load(rows_i[:, None] + (v0 + vi)[None, :], mask=mi_, other=0.0)
                                      .to(tl.float32) - lse_i[:, None]), 0.0)
            pj = tl.where(mj_, tl.exp(tl.load(rows_j[:, None] + (v0 + vi)[None, :], mask=mj_, other=0.0)
                                      .to(tl.float32) - lse_j[:, None]), 0.0)
            s += tl.sum(xlog2x(0.5 * (pi[:, None, :] + pj[None, :, :])), axis=2)  # 0 log 0 = 0
        d = -0.6931471805599453 * s - 0.5 * (h_i[:, None] + h_j[None, :])
        acc += tl.where(counted, tl.minimum(tl.maximum(d, 0.0), 0.6931471805599453), 0.0)
    base = out_ptr + part * M * M
    tl.store(base + ii[:, None] * M + jj[None, :], acc, mask=li[:, None] & lj[None, :])


# (BV, num_warps, num_stages) of _stats_cross by BM: per BM the configuration with the fewest
# hot-loop instructions per logit entry among those that compile without register spills (sm_90
# SASS, Triton 3.6 and 3.9: ``python bench/sass_cost.py``, bench/results/sass-cost-analysis.md; at
# BM 128 every choice spills a little). One warpgroup (4 warps) issues fewer lane-instructions per
# entry than two at BM 64 (two warpgroups split the products and exchange rows through shared
# memory; docs/PERFORMANCE.md, "SASS instruction counts and registers"). Not yet timed on a GPU: ``python bench/gpu_sweep.py agree`` sweeps it against the two passes.
ONE_PASS_CONFIG = {16: (64, 4, 3), 32: (32, 4, 3), 64: (32, 4, 3), 128: (32, 8, 3)}
PROGRAMS_PER_SM = 4  # programs of _cross / _stats_cross per multiprocessor (each takes a slice of positions)
# The one-pass kernel is the default (up to 128 models): it reads the logits once instead of twice,
# and its V loop issues fewer lane-instructions per entry than _row_stats + _cross together
# (bench/sass_cost.py; docs/PERFORMANCE.md, "SASS instruction counts and registers"), with the same
# tensor-core products.
# That is a static count, not a timing: bench/gpu_analysis.py times both ("triton" and
# "triton_two_pass") and the GPU suite's sweep compares them.
ONE_PASS = True


VECTOR_LOADS = True  # aligned, peeled V loops with 16-byte loads where the layout allows (_vector_width)


def _vector_width(z: torch.Tensor, N: int, V: int, shared_shift: bool) -> tuple[int, int]:
    """(VEC, ALIGN) of the kernels: entries per aligned vector load of the logits' rows and its bytes
    (ALIGN 0: no alignment hint). Row (i, n) starts at element (i N + n) V, rarely on a 16-byte
    boundary (V = 30522 is 2 mod 4), so the kernels start each row's V loop at the start rounded down
    to a multiple of VEC ("shift" entries before it) and peel the first and last blocks, leaving an
    unmasked interior that the compiler can load 16 bytes at a time. That needs the tensor aligned
    to VEC entries and, where one program takes every model's row of a position with one shift
    (``shared_shift``: _cross, _stats_cross), N V a multiple of VEC."""
    es = z.element_size()
    vec = 16 // es if VECTOR_LOADS else 1
    while vec > 1 and (z.data_ptr() % (vec * es) or (shared_shift and (N * V) % vec)):
        vec //= 2
    return (vec, vec * es) if vec > 1 else (1, 0)


def _slices(N: int, target: int) -> tuple[int, int]:
    """(positions per program, number of programs) splitting N positions into ~target slices."""
    per = max(1, triton.cdiv(N, max(1, target)))
    return per, triton.cdiv(N, per)


def pairwise_agreement_triton(logits: torch.Tensor, mask: torch.Tensor, jsd: bool = False,
                              one_pass: bool | None = None):
    """Triton twin of ``torch.ops.grounded_fast.pairwise_agreement`` (same inputs and outputs).

    logits (M, N, V) float32/16/bfloat16/64 (accumulated in float32); mask (N,) bool.
    ``one_pass`` reads the logits once (``_stats_cross``) instead of twice (``_row_stats`` then
    ``_cross``); None takes ``ONE_PASS``.
    Returns (agree (M, M) int64, kl (M, M) f64, entropy (M,) f64, jsd (M, M) f64, count () int64).
    """
    one_pass = ONE_PASS if one_pass is None else bool(one_pass)
    M, N, V = logits.shape
    dev = logits.device
    f64 = dict(dtype=torch.float64, device=dev)
    count = mask.sum()
    if M == 0 or N == 0 or int(count) == 0:
        return (torch.zeros(M, M, dtype=torch.long, device=dev), torch.zeros(M, M, **f64),
                torch.zeros(M, **f64), torch.zeros(M, M, **f64), count.long())
    z = logits.contiguous()
    w = mask.to(torch.float32).contiguous()
    lse = torch.zeros(M, N, dtype=torch.float32, device=dev)  # stays 0 at padded positions
    top = torch.zeros(M, N, dtype=torch.int32, device=dev)
    ent = torch.zeros(M, N, dtype=torch.float32, device=dev)
    bad = torch.zeros(M, N, dtype=torch.int32, device=dev)
    # one (BM x BM) tile of models up to 128 of them; beyond, (64 x 64) tiles of (i, j) pairs
    tiled = M > 128
    BM = 64 if tiled else max(16, triton.next_power_of_2(M))
    tiles = triton.cdiv(M, BM)
    one_pass = one_pass and not tiled  # the one-pass kernel needs every model's statistics in one program
    target = PROGRAMS_PER_SM * torch.cuda.get_device_properties(dev).multi_processor_count if dev.type == "cuda" else 4
    per, progs = _slices(N, max(1, target // (tiles * tiles)))
    part = torch.empty(progs, tiles * tiles, BM, BM, dtype=torch.float32, device=dev)
    # BV 64 was the fastest for 40 models on an H100 (BM 64; docs/PERFORMANCE.md); BM 128 halves it to
    # stay within shared memory
    bv = min(64 if BM <= 64 else 32, max(16, triton.next_power_of_2(V)))
    vec, align = _vector_width(z, N, V, shared_shift=True)
    if one_pass:
        obv, warps, stages = ONE_PASS_CONFIG[BM]
        _stats_cross[(progs,)](z, w, lse, top, ent, bad, part, M, N, V, per, BM=BM,
                               BV=min(obv, max(16, triton.next_power_of_2(V))), BF16_Z=z.dtype == torch.bfloat16,
                               VEC=vec, ALIGN=align, SUM_COL=M < BM and z.dtype != torch.bfloat16,
                               num_warps=warps, num_stages=stages, **LAUNCH)
    else:
        rvec, ralign = _vector_width(z, N, V, shared_shift=False)
        _row_stats[(M * N,)](z, w, lse, top, ent, bad, N, V, BV=min(1024, triton.next_power_of_2(V)), ENT=jsd,
                             VEC=rvec, ALIGN=ralign, **LAUNCH)
    flagged = torch.nonzero(bad)
    if flagged.numel():
        i, n = flagged[0].tolist()
        raise ValueError(f"pairwise_agreement: the logits of model {i} at position {n} contain NaN or inf")
    if not one_pass:
        # the tiled kernel holds a second (BM x BV) operand: BV 32 and 8 warps compile without spills
        # (Triton 3.6, sm_90; BV 64 and 4 warps spill 2 KB)
        _cross[(progs, tiles * tiles)](z, w, lse, part, M, N, V, per, tiles, BM=BM, BV=min(bv, 32) if tiled else bv,
                                       TILED=tiled, VEC=vec, ALIGN=align, num_warps=8 if tiled else 4, **LAUNCH)
    Y = part.double().sum(0).view(tiles, tiles, BM, BM).transpose(1, 2).reshape(tiles * BM, tiles * BM)[:M, :M]
    kl = Y.diagonal()[:, None] - Y
    kl.fill_diagonal_(0.0)
    counted = mask.bool()
    entropy = -Y.diagonal().clone()  # Y_ii = -sum_n w_n H_i(n)
    t = top[:, counted]
    agree = (t[:, None, :] == t[None, :, :]).sum(-1).long()
    js = torch.zeros(M, M, **f64)
    if jsd and M > 1:
        BI = 16
        tiles = triton.cdiv(M, BI)
        jper, jprogs = _slices(N, 4)
        jpart = torch.zeros(jprogs, M, M, dtype=torch.float32, device=dev)
        _jsd[(tiles * tiles, jprogs)](z, w, lse, ent, jpart, M, N, V, jper, tiles, BI=BI,
                                      BV=min(32, max(16, triton.next_power_of_2(V))), **LAUNCH)
        js = jpart.double().sum(0)
        js.fill_diagonal_(0.0)
    return agree, kl, entropy, js, count.long()
