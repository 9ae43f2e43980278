"""Triton kernel of ``attention_pair_sums``: all-pairs distances between attention rows.

For row r (a target position of an item) and models i, j with attention x_i, x_j over the valid
sources, a = x / sum(x) (the same math as csrc/analysis/cpu/attention_distance_cpu.cpp):
    l2 ||a_i - a_j||_2,  tv 1/2 ||a_i - a_j||_1,  hellinger sqrt(1/2 ||sqrt a_i - sqrt a_j||^2),
    jsd  1/2 (sum a_i log a_i + sum a_j log a_j) - sum m log m,  m = (a_i + a_j) / 2,
summed as sum_r w_r d. ``_row_stats`` first takes every (model, row)'s mass s on the valid sources
(and for JSD nh = sum a log2 a = sum(x log2 x) / s - log2 s) once, as a scale that normalises the
row without a normalised copy. The pair kernels then take (model-pair tile, slice of rows) programs:
  _pairs_linear  tv and jsd with non-negative weights: one term per (row, source) and pair, so the
                 weight goes into the scales (w |a - b| = |w a - w b|; for JSD
                 sum_c m' log2 m' = w sum_c m log2 m + w log2 w with m' = w m, sum_c m = 1) and one
                 loop runs over every (row, source block) of the slice -- pipelined across rows --
                 into a (BI x BI x BS) accumulator reduced once; the launcher adds the entropies
                 and sum_r w_r log2 w_r in float64.
  _pairs         l2 and hellinger (a square root per row), and tv / jsd with a negative weight:
                 row by row, each row's (BI x BI x BS) terms reduced over sources.
Every metric is symmetric, so only the tiles on and above the diagonal run (for 40 models in tiles
of 16: 6 of 9); torch mirrors the off-diagonal ones. Logs are base 2 (one hardware lg2 per pair and
entry on a GPU, see fast_math.py), JSD = ln 2 x its base-2 value, the 1/2 of the mixture is folded
into the scales, and one side of every mixture carries TINY (m >= TINY: no test for log 0 per pair
and entry). Partial (M x M) sums per row slice are added in float64 by torch.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ...ops.analysis.checks import ATTENTION_METRICS
from ..common.fast_math import LAUNCH, TINY, log2, xlog2x

LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _row_stats(x_ptr, smask_ptr, w_ptr, scale_ptr, nh_ptr, bad_ptr, R, S, HAS_MASK: tl.constexpr,
               FOLD_W: tl.constexpr, HALF: tl.constexpr, XLOGX: tl.constexpr, BR: tl.constexpr,
               BS: tl.constexpr):
    """One program per (model, block of BR rows): per counted row (w != 0) the scale c / s that
    normalises it (s = its mass on the valid sources; c = 1/2 with HALF (JSD), times w with FOLD_W),
    with XLOGX nh = sum a log2 a = (sum x log2 x) / s - log2 s, and the number of counted rows that
    are negative, non-finite or without mass (added to *bad_ptr). Rows not counted get scale 0."""
    i = tl.program_id(0)
    rr = tl.program_id(1) * BR + tl.arange(0, BR)
    w = tl.load(w_ptr + rr, mask=rr < R, other=0.0)
    counted = w != 0
    si = tl.arange(0, BS)
    base = x_ptr + (i.to(tl.int64) * R + rr) * S
    s = tl.zeros((BR, BS), tl.float32)  # summed over the BS lanes once, after the loop
    t = tl.zeros((BR, BS), tl.float32)
    bad = tl.zeros((BR, BS), tl.int32)
    for c0 in range(0, S, BS):
        msk = counted[:, None] & ((c0 + si) < S)[None, :]
        if HAS_MASK:  # R * S < 2^31 (checked by the launcher)
            msk = msk & (tl.load(smask_ptr + rr[:, None] * S + (c0 + si)[None, :], mask=msk, other=0) != 0)
        x = tl.load(base[:, None] + (c0 + si)[None, :], mask=msk, other=0.0).to(tl.float32)
        bad += (msk & ((x < 0) | (x != x) | (x == float("inf")))).to(tl.int32)
        s += x
        if XLOGX:
            t += xlog2x(x)
    s_row = tl.sum(s, axis=1)
    ok = counted & (s_row > 0) & (s_row < float("inf"))
    flagged = counted & ((tl.sum(bad, axis=1) > 0) | ~ok)
    s1 = tl.where(ok, s_row, 1.0)
    c = w if FOLD_W else tl.full((BR,), 1.0, tl.float32)
    if HALF:
        c = 0.5 * c
    tl.store(scale_ptr + i * R + rr, tl.where(ok, c / s1, 0.0), mask=rr < R)
    if XLOGX:
        tl.store(nh_ptr + i * R + rr, tl.where(ok, tl.sum(t, axis=1) / s1 - log2(s1), 0.0), mask=rr < R)
    tl.atomic_add(bad_ptr, tl.sum(flagged.to(tl.int32), axis=0))


@triton.jit
def _pair_tile(M, n_tiles, BI: tl.constexpr):
    """The program's tile (ti, tj) of model pairs: its models ii and jj and which of them exist."""
    tile = tl.program_id(0)
    ti = tile // n_tiles
    tj = tile % n_tiles
    ii = ti * BI + tl.arange(0, BI)
    jj = tj * BI + tl.arange(0, BI)
    return ti, tj, ii, jj, ii < M, jj < M


@triton.jit
def _tile_rows(x_ptr, smask_ptr, scale_ptr, ii, jj, li, lj, r, c0, R, S, HAS_MASK: tl.constexpr, BS: tl.constexpr):
    """The (BI, BS) blocks a = x_i scale_i and b = x_j scale_j of row r at sources c0 + [0, BS);
    zero off the valid sources, for padding models and rows not counted (scale 0: never read, they
    may hold anything)."""
    si = tl.arange(0, BS)
    cin = (c0 + si) < S
    if HAS_MASK:
        cin = cin & (tl.load(smask_ptr + r * S + c0 + si, mask=cin, other=0) != 0)
    sc_i = tl.load(scale_ptr + ii * R + r, mask=li, other=0.0)
    sc_j = tl.load(scale_ptr + jj * R + r, mask=lj, other=0.0)
    a = tl.load(x_ptr + (ii.to(tl.int64) * R + r)[:, None] * S + (c0 + si)[None, :],
                mask=(sc_i != 0)[:, None] & cin[None, :], other=0.0).to(tl.float32) * sc_i[:, None]
    b = tl.load(x_ptr + (jj.to(tl.int64) * R + r)[:, None] * S + (c0 + si)[None, :],
                mask=(sc_j != 0)[:, None] & cin[None, :], other=0.0).to(tl.float32) * sc_j[:, None]
    return a, b


@triton.jit
def _pair_terms(a, b, METRIC: tl.constexpr):
    """(BI, BI, BS) terms of every pair of rows of a and b: (a - b)^2, |a - b|, (sqrt a - sqrt b)^2,
    or for JSD (half rows: _row_stats HALF, so that the mixture is a plain sum) m log2 m with
    m = a + TINY + b (see _pairs_linear)."""
    if METRIC == 0:
        diff = a[:, None, :] - b[None, :, :]
        return diff * diff
    elif METRIC == 1:
        return tl.abs(a[:, None, :] - b[None, :, :])
    elif METRIC == 2:
        diff = tl.sqrt(a)[:, None, :] - tl.sqrt(b)[None, :, :]
        return diff * diff
    else:
        m = (a + TINY)[:, None, :] + b[None, :, :]
        return m * log2(m)


@triton.jit
def _pairs_linear(x_ptr, smask_ptr, scale_ptr, out_ptr, M, R, S, per_prog, n_tiles, NB,
                  METRIC: tl.constexpr, HAS_MASK: tl.constexpr, BI: tl.constexpr, BS: tl.constexpr):
    """TV and JSD, whose weighted sums over rows are sums over (row, source) of one term per pair:
    the row weight is folded into the rows' scales (``_row_stats`` FOLD_W), so that one loop runs
    over every (row, source block) of the program's slice -- pipelined across rows, with a single
    reduction at the end -- and accumulates
        tv   sum |w a_i - w b_j| = w sum |a_i - b_j|                     (w >= 0)
        jsd  sum m log2 m,  m = w (a_i + a_j) / 2 + TINY,
    where sum_c m log2 m = w sum_c m~ log2 m~ + w log2 w for the unweighted mixture m~ (it sums
    to 1); the launcher adds the w log2 w and the entropies. TINY keeps lg2 away from 0 (-inf, and
    0 x -inf = NaN) without a compare and select per pair and entry; each term moves by about
    TINY (log2 m + 1.44), below 1e-27."""
    ti, tj, ii, jj, li, lj = _pair_tile(M, n_tiles, BI)
    if ti > tj:  # the mirror image of tile (tj, ti): every metric is symmetric
        return
    part = tl.program_id(1)
    d3 = tl.zeros((BI, BI, BS), tl.float32)
    r0 = part * per_prog
    steps = (tl.minimum(r0 + per_prog, R) - r0) * NB
    for k in range(0, steps):
        r = r0 + k // NB
        a, b = _tile_rows(x_ptr, smask_ptr, scale_ptr, ii, jj, li, lj, r, (k % NB) * BS, R, S, HAS_MASK, BS)
        d3 += _pair_terms(a, b, METRIC)
    tl.store(out_ptr + part * M * M + ii[:, None] * M + jj[None, :], tl.sum(d3, axis=2),
             mask=li[:, None] & lj[None, :])


@triton.jit
def _pairs(x_ptr, smask_ptr, w_ptr, scale_ptr, nh_ptr, out_ptr, M, R, S, per_prog, n_tiles,
           METRIC: tl.constexpr, HAS_MASK: tl.constexpr, BI: tl.constexpr, BS: tl.constexpr):
    """Every metric, row by row (l2 and hellinger take a square root per row; tv and jsd come here
    only with negative row weights): sum_r w_r d_r."""
    ti, tj, ii, jj, li, lj = _pair_tile(M, n_tiles, BI)
    if ti > tj:  # the mirror image of tile (tj, ti): every metric is symmetric
        return
    part = tl.program_id(1)
    acc = tl.zeros((BI, BI), tl.float32)
    r0 = part * per_prog
    for r in range(r0, tl.minimum(r0 + per_prog, R)):
        w = tl.load(w_ptr + r)
        if w != 0:
            # the terms are summed over sources in a (BI, BI, BS) accumulator and reduced once per row: a
            # reduction over BS inside the loop cost a warp-shuffle tree per pair and step (BS spread over
            # 16 lanes), more than the term itself (docs/PERFORMANCE.md)
            d3 = tl.zeros((BI, BI, BS), tl.float32)
            for c0 in range(0, S, BS):
                a, b = _tile_rows(x_ptr, smask_ptr, scale_ptr, ii, jj, li, lj, r, c0, R, S, HAS_MASK, BS)
                d3 += _pair_terms(a, b, METRIC)
            d = tl.sum(d3, axis=2)
            if METRIC == 0:
                d = tl.sqrt(d)
            elif METRIC == 1:
                d = 0.5 * d
            elif METRIC == 2:
                d = tl.sqrt(0.5 * d)
            else:
                nh_i = tl.load(nh_ptr + ii * R + r, mask=li, other=0.0)  # sum a log2 a
                nh_j = tl.load(nh_ptr + jj * R + r, mask=lj, other=0.0)
                d = LN2 * tl.maximum(0.5 * (nh_i[:, None] + nh_j[None, :]) - d, 0.0)
            acc += w * d
    tl.store(out_ptr + part * M * M + ii[:, None] * M + jj[None, :], acc, mask=li[:, None] & lj[None, :])


# models per side of a pair tile, warps, programs per multiprocessor (the tiles on and above the
# diagonal times the row slices); ``python bench/gpu_sweep.py attention`` sweeps them
CONFIG = {"BI": 16, "num_warps": 4, "programs_per_sm": 4}


def attention_pair_sums_triton(attn: torch.Tensor, source_mask: torch.Tensor, row_weight: torch.Tensor,
                               metric: int) -> torch.Tensor:
    """Triton twin of ``torch.ops.grounded_fast.attention_pair_sums`` (same inputs and outputs).

    attn (M, R, S) float (accumulated in float32); source_mask (R, S) bool or empty; row_weight
    (R,) float64; metric id of ``ATTENTION_METRICS``. Returns (M, M) float64, zero diagonal.
    """
    if metric not in ATTENTION_METRICS.values():
        raise ValueError(f"metric must be one of {sorted(ATTENTION_METRICS.values())}, got {metric}")
    M, R, S = attn.shape
    dev = attn.device
    if M < 2 or R == 0:
        return torch.zeros(M, M, dtype=torch.float64, device=dev)
    if R * S >= 2 ** 31:
        raise ValueError(f"attention_pair_sums_triton: R * S = {R * S} rows x sources per call must stay "
                         "below 2^31; stream fewer items per update")
    x = attn.contiguous()
    has_mask = source_mask.numel() > 0
    sm = source_mask.contiguous().to(torch.int8) if has_mask else torch.zeros(1, dtype=torch.int8, device=dev)
    w64 = row_weight.to(dev, torch.float64)
    w = w64.to(torch.float32).contiguous()
    jsd = metric == ATTENTION_METRICS["jsd"]
    # tv and jsd sum one term per (row, source) and pair: with non-negative weights the weight goes
    # into the rows' scales and one pipelined loop covers the whole slice (_pairs_linear)
    linear = metric in (ATTENTION_METRICS["tv"], ATTENTION_METRICS["jsd"]) and bool((w64 >= 0).all())
    scale = torch.empty(M, R, dtype=torch.float32, device=dev)
    nh = torch.empty(M, R, dtype=torch.float32, device=dev) if jsd else scale
    bad = torch.zeros(1, dtype=torch.int32, device=dev)
    BR = 16
    BS_STATS = min(128, max(16, triton.next_power_of_2(S)))
    _row_stats[(M, triton.cdiv(R, BR))](x, sm, w, scale, nh, bad, R, S, HAS_MASK=has_mask, FOLD_W=linear,
                                        HALF=jsd, XLOGX=jsd, BR=BR, BS=BS_STATS, **LAUNCH)
    if int(bad.item()):
        raise ValueError("attention_distance: an attention row is negative, non-finite or has no mass "
                         "on the valid sources")
    BI = CONFIG["BI"]
    tiles = triton.cdiv(M, BI)
    target = (CONFIG["programs_per_sm"] * torch.cuda.get_device_properties(dev).multi_processor_count
              if dev.type == "cuda" else 4)
    per = max(1, triton.cdiv(R, max(1, target // (tiles * (tiles + 1) // 2))))  # tiles that run
    progs = triton.cdiv(R, per)
    part = torch.zeros(progs, M, M, dtype=torch.float32, device=dev)
    # the block of sources with the least padding (S = 72: 16, 80 entries, not 32's 96)
    BS = min((32, 16), key=lambda bs: (triton.cdiv(S, bs) * bs, -bs)) if S > 16 else triton.next_power_of_2(S)
    if linear:
        _pairs_linear[(tiles * tiles, progs)](x, sm, scale, part, M, R, S, per, tiles, triton.cdiv(S, BS),
                                              METRIC=metric, HAS_MASK=has_mask, BI=BI, BS=BS,
                                              num_warps=CONFIG["num_warps"], **LAUNCH)
    else:
        _pairs[(tiles * tiles, progs)](x, sm, w, scale, nh, part, M, R, S, per, tiles, METRIC=metric,
                                       HAS_MASK=has_mask, BI=BI, BS=BS, num_warps=CONFIG["num_warps"], **LAUNCH)
    out = part.double().sum(0)  # tiles below the diagonal stayed zero
    tile_of = torch.arange(M, device=dev) // BI
    out = torch.where(tile_of[:, None] == tile_of[None, :], out, out + out.T)
    if linear and jsd:
        # sum_r w_r JSD_r = ln 2 (sum_r w_r (nh_i + nh_j) / 2 - sum_{r,c} m log2 m + sum_r w_r log2 w_r)
        h = (nh.double() * w64).sum(1)
        wl = torch.where(w64 > 0, w64 * torch.log2(torch.where(w64 > 0, w64, 1.0)), 0.0).sum()
        out = (math.log(2.0) * (0.5 * (h[:, None] + h[None, :]) - out + wl)).clamp_(min=0.0)
    elif linear:
        out = 0.5 * out
    out.fill_diagonal_(0.0)
    return out
