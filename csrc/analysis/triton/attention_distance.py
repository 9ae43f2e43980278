"""Triton kernel of ``attention_pair_sums``: all-pairs distances between attention rows.

For row r (a target position of an item) and models i, j with attention x_i, x_j over the valid
sources, a = x / sum(x) (the same math as csrc/analysis/cpu/attention_distance_cpu.cpp):
    l2 ||a_i - a_j||_2,  tv 1/2 ||a_i - a_j||_1,  hellinger sqrt(1/2 ||sqrt a_i - sqrt a_j||^2),
    jsd  1/2 (sum a_i log a_i + sum a_j log a_j) - sum m log m,  m = (a_i + a_j) / 2,
summed as sum_r w_r d. One program per (model-pair tile, slice of rows): for each row it first
takes every model's row mass s and sum x log x over S blocks (so that
sum a log a = sum(x log x) / s - log s without a normalised copy), then accumulates the
(BI x BJ x BS) pair terms. Every metric is symmetric, so only the tiles on and above the diagonal
run (for 40 models in tiles of 16: 6 of 9); torch mirrors the off-diagonal ones. Logs are base 2
(one hardware lg2 per pair and entry on a GPU, see fast_math.py), JSD = ln 2 x its base-2 value,
and the 1/2 of the mixture is folded into the rows (m = a_i / 2 + a_j / 2). Partial (M x M) sums
per row slice are added in float64 by torch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...reference.analysis import ATTENTION_METRICS
from .fast_math import log2, xlog2x

LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _row_mass(base, live, S, smask_row, HAS_MASK: tl.constexpr, BI: tl.constexpr, BS: tl.constexpr,
              XLOGX: tl.constexpr):
    """Per model in the tile: (sum x, sum x log2 x (JSD only: XLOGX, else 0), number of invalid
    entries) of its row."""
    si = tl.arange(0, BS)
    s = tl.zeros((BI, BS), tl.float32)  # summed over the BS lanes once, after the loop
    t = tl.zeros((BI, BS), tl.float32)
    bad = tl.zeros((BI, BS), tl.int32)
    for c0 in range(0, S, BS):
        cin = (c0 + si) < S
        if HAS_MASK:
            cin = cin & (tl.load(smask_row + c0 + si, mask=cin, other=0) != 0)
        msk = live[:, None] & cin[None, :]
        x = tl.load(base[:, None] + (c0 + si)[None, :], mask=msk, other=0.0).to(tl.float32)
        bad += (msk & ((x < 0) | (x != x) | (x == float("inf")))).to(tl.int32)
        s += x
        if XLOGX:
            t += xlog2x(x)
    return tl.sum(s, axis=1), tl.sum(t, axis=1), tl.sum(bad, axis=1)


@triton.jit
def _pairs(x_ptr, smask_ptr, w_ptr, out_ptr, bad_ptr, M, R, S, per_prog, n_tiles,
           METRIC: tl.constexpr, HAS_MASK: tl.constexpr, BI: tl.constexpr, BS: tl.constexpr):
    tile = tl.program_id(0)
    part = tl.program_id(1)
    ti = tile // n_tiles
    tj = tile % n_tiles
    if ti > tj:  # the mirror image of tile (tj, ti): every metric is symmetric
        return
    ii = ti * BI + tl.arange(0, BI)
    jj = tj * BI + tl.arange(0, BI)
    li, lj = ii < M, jj < M
    si = tl.arange(0, BS)
    acc = tl.zeros((BI, BI), tl.float32)
    nbad = tl.zeros((), tl.int32)
    r0 = part * per_prog
    for r in range(r0, tl.minimum(r0 + per_prog, R)):
        w = tl.load(w_ptr + r)
        if w != 0:
            bi = x_ptr + (ii.to(tl.int64) * R + r) * S
            bj = x_ptr + (jj.to(tl.int64) * R + r) * S
            srow = smask_ptr + r * S  # R * S < 2^31 (checked by the launcher)
            s_i, t_i, bad_i = _row_mass(bi, li, S, srow, HAS_MASK, BI, BS, METRIC == 3)
            s_j, t_j, bad_j = _row_mass(bj, lj, S, srow, HAS_MASK, BI, BS, METRIC == 3)
            nbad += tl.sum(tl.where(li, (bad_i > 0) | (s_i <= 0), 0).to(tl.int32), axis=0)
            nbad += tl.sum(tl.where(lj, (bad_j > 0) | (s_j <= 0), 0).to(tl.int32), axis=0)
            inv_i = 1.0 / tl.where(s_i > 0, s_i, 1.0)
            inv_j = 1.0 / tl.where(s_j > 0, s_j, 1.0)
            # JSD takes half rows, so that the mixture is a plain sum
            sc_i = 0.5 * inv_i if METRIC == 3 else inv_i
            sc_j = 0.5 * inv_j if METRIC == 3 else inv_j
            # the terms are summed over sources in a (BI, BI, BS) accumulator and reduced once per row: a
            # reduction over BS inside the loop cost 4 warp shuffles per pair and step (BS spread over
            # 16 lanes), more than the term itself
            d3 = tl.zeros((BI, BI, BS), tl.float32)
            for c0 in range(0, S, BS):
                cin = (c0 + si) < S
                if HAS_MASK:
                    cin = cin & (tl.load(srow + c0 + si, mask=cin, other=0) != 0)
                a = tl.load(bi[:, None] + (c0 + si)[None, :], mask=li[:, None] & cin[None, :],
                            other=0.0).to(tl.float32) * sc_i[:, None]
                b = tl.load(bj[:, None] + (c0 + si)[None, :], mask=lj[:, None] & cin[None, :],
                            other=0.0).to(tl.float32) * sc_j[:, None]
                if METRIC == 0:
                    diff = a[:, None, :] - b[None, :, :]
                    d3 += diff * diff
                elif METRIC == 1:
                    d3 += tl.abs(a[:, None, :] - b[None, :, :])
                elif METRIC == 2:
                    diff = tl.sqrt(a)[:, None, :] - tl.sqrt(b)[None, :, :]
                    d3 += diff * diff
                else:
                    d3 += xlog2x(a[:, None, :] + b[None, :, :])
            d = tl.sum(d3, axis=2)
            if METRIC == 0:
                d = tl.sqrt(d)
            elif METRIC == 1:
                d = 0.5 * d
            elif METRIC == 2:
                d = tl.sqrt(0.5 * d)
            else:
                nh_i = t_i * inv_i - log2(tl.where(s_i > 0, s_i, 1.0))  # sum a log2 a
                nh_j = t_j * inv_j - log2(tl.where(s_j > 0, s_j, 1.0))
                d = LN2 * tl.maximum(0.5 * (nh_i[:, None] + nh_j[None, :]) - d, 0.0)
            acc += w * d
    tl.store(out_ptr + part * M * M + ii[:, None] * M + jj[None, :], acc, mask=li[:, None] & lj[None, :])
    tl.atomic_add(bad_ptr, nbad)


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
    w = row_weight.to(torch.float32).contiguous()
    BI = CONFIG["BI"]
    tiles = triton.cdiv(M, BI)
    target = (CONFIG["programs_per_sm"] * torch.cuda.get_device_properties(dev).multi_processor_count
              if dev.type == "cuda" else 4)
    per = max(1, triton.cdiv(R, max(1, target // (tiles * (tiles + 1) // 2))))  # tiles that run
    progs = triton.cdiv(R, per)
    part = torch.zeros(progs, M, M, dtype=torch.float32, device=dev)
    bad = torch.zeros(1, dtype=torch.int32, device=dev)
    # the block of sources with the least padding (S = 72: 16, 80 entries, not 32's 96)
    BS = min((32, 16), key=lambda bs: (triton.cdiv(S, bs) * bs, -bs)) if S > 16 else triton.next_power_of_2(S)
    _pairs[(tiles * tiles, progs)](x, sm, w, part, bad, M, R, S, per, tiles, METRIC=metric,
                                   HAS_MASK=has_mask, BI=BI, BS=BS, num_warps=CONFIG["num_warps"])
    if int(bad.item()):
        raise ValueError("attention_distance: an attention row is negative, non-finite or has no mass "
                         "on the valid sources")
    out = part.double().sum(0)  # tiles below the diagonal stayed zero
    tile_of = torch.arange(M, device=dev) // BI
    out = torch.where(tile_of[:, None] == tile_of[None, :], out, out + out.T)
    out.fill_diagonal_(0.0)
    return out
