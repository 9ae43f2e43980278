"""Triton kernels for entropic OT with the cost recomputed from features on the fly (never stored).

The passes are those of sinkhorn_stream.py (online log-sum-exp over tiles, one launch per pass,
driven by grounded_fast.ops.entropic_ot.driver.solve_potentials), except that a tile of C is not
read from device memory but rebuilt in registers from a tile of x rows and one of y rows:

    D = X_tile @ Y_tile^T   (tl.dot over d in chunks of BK, fp32 accumulation; fp64 for fp64)
    sqeuclidean  C_ij = max(s_i + t_j - 2 D_ij, 0),   s_i = |x_i|^2, t_j = |y_j|^2
    cosine       C_ij = 1 - D_ij s_i t_j,            s_i = 1 / max(|x_i|, 1e-12), t_j likewise

(s, t precomputed in O((n + m) d); the formulas are grounded_fast.ot.costs.cost_matrix's). A pass
moves B (n + m) d feature elements (plus the re-reads of the streamed side, from L2) instead of
B n m cost entries and does 2 d multiply-adds per entry more; see
grounded_fast.ops.entropic_ot_features.choose_cost_source for when that pays. float32 features
use 3xTF32 tensor-core products (``input_precision='tf32x3'``: plain TF32's 10-bit mantissa would
make |x|^2 + |y|^2 - 2 x.y meaningless); bfloat16 / float16 features are multiplied as they are with
float32 accumulation; float64 in IEEE float64. The gradient products (plan tile, formed in float32
registers, times features) use 3xTF32 whatever the features' dtype (float64: IEEE).

Both costs are symmetric in (x, y), so the column pass is the row pass with the clouds swapped:
one kernel per pass, for rows. ``splits`` cuts the streamed axis into independent ranges so
that a pass over one problem with few row blocks (e.g. B = 1, n = 8192: 128 blocks of 64) still
fills the GPU; the partial (max, sum) pairs are merged by one torch logsumexp.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ...ops.costs import COSINE
from ...ops.entropic_ot_features.driver import compute_dtype, kernel_norms
from ..common.fast_math import LAUNCH
from ..common import device_scalars
from .sinkhorn_stream import _online

BLOCK_ROWS = 64   # rows owned by one program
BLOCK_TILE = 64   # entries of the streamed axis per step
MAX_BLOCK_K = 64  # feature chunk of one tl.dot (d <= MAX_BLOCK_K: the row tile is loaded once)


def _dot_precision(dtype: torch.dtype) -> str:
    return {torch.float32: "tf32x3", torch.float64: "ieee"}.get(dtype, "tf32")


def block_k(d: int) -> int:
    """Feature chunk: d padded to a power of two, at least 16 (tl.dot's minimum), at most MAX_BLOCK_K."""
    return max(16, min(MAX_BLOCK_K, triton.next_power_of_2(d)))


@triton.jit
def _load_rows(ptr, rows, rin, k0, d, BK: tl.constexpr, UPCAST: tl.constexpr):
    """(len(rows), BK) tile of a row-major (rows, d) array, columns k0..k0+BK, zero outside;
    UPCAST: as float32 (only bfloat16 under the interpreter, whose tl.dot misreads bfloat16)."""
    ks = k0 + tl.arange(0, BK)
    tile = tl.load(ptr + rows[:, None] * d + ks[None, :], mask=rin[:, None] & (ks < d)[None, :], other=0.0)
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _cost_tile(x_ptr, y_ptr, rows, cols, rin, cin, d, xt, s, t, ONE_K: tl.constexpr, COSINE_: tl.constexpr,
               DT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, BR: tl.constexpr, BT: tl.constexpr,
               BK: tl.constexpr):
    """(BR, BT) tile of C from the features (module docstring). ``xt``: the (BR, BK) row tile when
    ONE_K (d <= BK, loaded once per program by the caller); otherwise d is walked in chunks."""
    if ONE_K:
        acc = tl.dot(xt, tl.trans(_load_rows(y_ptr, cols, cin, 0, d, BK, UPCAST)), input_precision=PREC, out_dtype=DT)
    else:
        acc = tl.zeros((BR, BT), DT)
        for k0 in range(0, d, BK):
            acc = tl.dot(_load_rows(x_ptr, rows, rin, k0, d, BK, UPCAST),
                         tl.trans(_load_rows(y_ptr, cols, cin, k0, d, BK, UPCAST)), acc, input_precision=PREC,
                         out_dtype=DT)
    if COSINE_:
        return 1.0 - acc * s[:, None] * t[None, :]
    return tl.maximum(s[:, None] + t[None, :] - 2.0 * acc, 0.0)


# Row log-sum-exp pass over the column range of split `pid(2)`:
#   mx_i = max_j z_ij,  sm_i = sum_j exp(z_ij - mx_i),   z_ij = v_j - C_ij / eps
# with the online update m' = max(m, max_j z), s' = s e^(m - m') + sum_j e^(z - m') per tile
# (sinkhorn_stream._online); LSE_i = log-sum-exp over splits of mx + log sm (host).
# Row pass: (x, y, v) = (x, y, lv); column pass: (y, x, lu).
@triton.jit
def _feat_lse(x_ptr, y_ptr, s_ptr, t_ptr, v_ptr, mx_ptr, sm_ptr, n, m, d, inv_eps_ptr, per_split, n_split,
              ONE_K: tl.constexpr, COSINE_: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
              BR: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    pid_b = tl.program_id(0)
    inv_eps = tl.load(inv_eps_ptr).to(DT)
    rows = tl.program_id(1) * BR + tl.arange(0, BR)
    sp = tl.program_id(2)
    rin = rows < n
    xb = x_ptr + pid_b.to(tl.int64) * n * d
    yb = y_ptr + pid_b.to(tl.int64) * m * d
    s = tl.load(s_ptr + pid_b * n + rows, mask=rin, other=0.0).to(DT)
    if ONE_K:
        xt = _load_rows(xb, rows, rin, 0, d, BK, UPCAST)
    else:
        xt = 0.0
    mx = tl.full((BR,), float("-inf"), DT)
    sm = tl.zeros((BR,), DT)
    j_lo = sp * per_split
    j_hi = tl.minimum(j_lo + per_split, m)
    for j0 in range(j_lo, j_hi, BT):
        cols = j0 + tl.arange(0, BT)
        cin = cols < j_hi
        t = tl.load(t_ptr + pid_b * m + cols, mask=cin, other=0.0).to(DT)
        v = tl.load(v_ptr + pid_b * m + cols, mask=cin, other=float("-inf")).to(DT)
        c = _cost_tile(xb, yb, rows, cols, rin, cin, d, xt, s, t, ONE_K, COSINE_, DT, PREC, UPCAST, BR, BT, BK)
        z = tl.where(rin[:, None] & cin[None, :], v[None, :] - c * inv_eps, float("-inf"))
        mx, sm = _online(mx, sm, z, 1)
    off = (pid_b * n_split + sp) * n + rows
    tl.store(mx_ptr + off, mx, mask=rin)
    tl.store(sm_ptr + off, sm, mask=rin)


# The objective's row sums, with log P_ij = lu_i + lv_j + w - C_ij/eps and P = exp(log P):
#   r_i = sum_j P_ij,   pc_i = sum_j P_ij C_ij,   plp_i = sum_j P_ij log P_ij   (0 log 0 = 0)
# value_linear = sum_i pc_i and the entropy term sum_i plp_i (reference.ot_features.finalize_features).
@triton.jit
def _feat_row_stats(x_ptr, y_ptr, s_ptr, t_ptr, lu_ptr, lv_ptr, w_ptr, r_ptr, pc_ptr, plp_ptr, n, m, d, inv_eps_ptr,
                    ONE_K: tl.constexpr, COSINE_: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr,
                    UPCAST: tl.constexpr, BR: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    pid_b = tl.program_id(0)
    inv_eps = tl.load(inv_eps_ptr).to(DT)
    rows = tl.program_id(1) * BR + tl.arange(0, BR)
    rin = rows < n
    xb = x_ptr + pid_b.to(tl.int64) * n * d
    yb = y_ptr + pid_b.to(tl.int64) * m * d
    s = tl.load(s_ptr + pid_b * n + rows, mask=rin, other=0.0).to(DT)
    lu = tl.load(lu_ptr + pid_b * n + rows, mask=rin, other=float("-inf")).to(DT)
    w = tl.load(w_ptr + pid_b).to(DT)
    if ONE_K:
        xt = _load_rows(xb, rows, rin, 0, d, BK, UPCAST)
    else:
        xt = 0.0
    r = tl.zeros((BR,), DT)
    pc = tl.zeros((BR,), DT)
    plp = tl.zeros((BR,), DT)
    for j0 in range(0, m, BT):
        cols = j0 + tl.arange(0, BT)
        cin = cols < m
        inb = rin[:, None] & cin[None, :]
        t = tl.load(t_ptr + pid_b * m + cols, mask=cin, other=0.0).to(DT)
        lv = tl.load(lv_ptr + pid_b * m + cols, mask=cin, other=float("-inf")).to(DT)
        c = _cost_tile(xb, yb, rows, cols, rin, cin, d, xt, s, t, ONE_K, COSINE_, DT, PREC, UPCAST, BR, BT, BK)
        lp = -c * inv_eps + lu[:, None] + lv[None, :] + w
        p = tl.where(inb, tl.exp(lp), 0.0)
        r += tl.sum(p, axis=1)
        pc += tl.sum(p * c, axis=1)
        plp += tl.sum(tl.where(p > 0, p * lp, 0.0), axis=1)
    tl.store(r_ptr + pid_b * n + rows, r, mask=rin)
    tl.store(pc_ptr + pid_b * n + rows, pc, mask=rin)
    tl.store(plp_ptr + pid_b * n + rows, plp, mask=rin)


# Envelope-gradient products, per (row block, feature chunk):
#   out_i[k] = sum_j P_ij t'_j y_j[k],  r_i = sum_j P_ij   (written by feature chunk 0)
# with t'_j = 1 (sqeuclidean: P @ y) or t_j = 1/|y_j| (cosine: P @ normalize(y)): a second tl.dot of
# the (BR, BT) plan tile, formed in registers, with the (BT, BDO) tile of y. P^T @ x and P^T 1 are
# the same kernel with (x, lu) and (y, lv) exchanged.
@triton.jit
def _feat_products(x_ptr, y_ptr, s_ptr, t_ptr, lu_ptr, lv_ptr, w_ptr, out_ptr, r_ptr, n, m, d, inv_eps_ptr,
                   ONE_K: tl.constexpr, COSINE_: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr,
                   UPCAST: tl.constexpr, BR: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BDO: tl.constexpr,
                   PREC_P: tl.constexpr):
    pid_b = tl.program_id(0)
    inv_eps = tl.load(inv_eps_ptr).to(DT)
    rows = tl.program_id(1) * BR + tl.arange(0, BR)
    pid_k = tl.program_id(2)
    rin = rows < n
    ko = pid_k * BDO + tl.arange(0, BDO)
    kin = ko < d
    xb = x_ptr + pid_b.to(tl.int64) * n * d
    yb = y_ptr + pid_b.to(tl.int64) * m * d
    s = tl.load(s_ptr + pid_b * n + rows, mask=rin, other=0.0).to(DT)
    lu = tl.load(lu_ptr + pid_b * n + rows, mask=rin, other=float("-inf")).to(DT)
    w = tl.load(w_ptr + pid_b).to(DT)
    if ONE_K:
        xt = _load_rows(xb, rows, rin, 0, d, BK, UPCAST)
    else:
        xt = 0.0
    acc = tl.zeros((BR, BDO), DT)
    r = tl.zeros((BR,), DT)
    for j0 in range(0, m, BT):
        cols = j0 + tl.arange(0, BT)
        cin = cols < m
        inb = rin[:, None] & cin[None, :]
        t = tl.load(t_ptr + pid_b * m + cols, mask=cin, other=0.0).to(DT)
        lv = tl.load(lv_ptr + pid_b * m + cols, mask=cin, other=float("-inf")).to(DT)
        c = _cost_tile(xb, yb, rows, cols, rin, cin, d, xt, s, t, ONE_K, COSINE_, DT, PREC, UPCAST, BR, BT, BK)
        p = tl.where(inb, tl.exp(-c * inv_eps + lu[:, None] + lv[None, :] + w), 0.0)
        r += tl.sum(p, axis=1)
        if COSINE_:
            p = p * t[None, :]
        yo = tl.load(yb + cols[:, None] * d + ko[None, :], mask=cin[:, None] & kin[None, :], other=0.0).to(DT)
        acc = tl.dot(p, yo, acc, input_precision=PREC_P, out_dtype=DT)
    tl.store(out_ptr + pid_b.to(tl.int64) * n * d + rows[:, None] * d + ko[None, :], acc,
             mask=rin[:, None] & kin[None, :])
    if pid_k == 0:
        tl.store(r_ptr + pid_b * n + rows, r, mask=rin)


def default_splits(B: int, n: int, m: int, device: torch.device) -> int:
    """Splits of the streamed axis so that a pass has about 4 programs per SM (1 off the GPU)."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    programs = B * triton.cdiv(n, BLOCK_ROWS)
    return int(max(1, min(triton.cdiv(4 * sms, programs), triton.cdiv(m, 4 * BLOCK_TILE))))


class TritonFeaturePasses:
    """The passes of grounded_fast/ops/entropic_ot_features/driver.py (module doc there) as Triton kernels.

    x (B,n,d), y (B,m,d) float32 / float64 / bfloat16 / float16 (read as they are); cost: 0
    sqeuclidean, 1 cosine; potentials in float32 (float64 for float64 features). ``splits``:
    None (``default_splits``) or the number of ranges of the streamed axis in the LSE passes.
    """

    def __init__(self, x, y, cost: int, reg: float, splits: int | None = None):
        self.x, self.y = x.contiguous(), y.contiguous()
        self.B, self.n, self.d = x.shape
        self.m = y.shape[1]
        self.dt = compute_dtype(x.dtype)
        self.DT = tl.float64 if self.dt == torch.float64 else tl.float32
        self.s, self.t = kernel_norms(self.x, cost, self.dt), kernel_norms(self.y, cost, self.dt)
        self.cost, self.inv_eps = cost, device_scalars(x.device, 1.0 / reg)
        self.BK = block_k(self.d)
        upcast = x.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET", "0") == "1"
        self.kw = dict(ONE_K=self.d <= self.BK, COSINE_=cost == COSINE, DT=self.DT,
                       PREC=_dot_precision(torch.float32 if upcast else x.dtype), UPCAST=upcast, BR=BLOCK_ROWS,
                       BT=BLOCK_TILE, BK=self.BK)
        self.splits = splits

    def _side(self, rows: bool):
        """(row features, column features, their norms, n_rows, n_cols)."""
        if rows:
            return self.x, self.y, self.s, self.t, self.n, self.m
        return self.y, self.x, self.t, self.s, self.m, self.n

    def _vec(self, v):
        return v.to(self.dt).contiguous()

    def lse(self, rows: bool, vec):
        X, Y, s, t, nr, nc = self._side(rows)
        splits = self.splits or default_splits(self.B, nr, nc, X.device)
        per = triton.cdiv(triton.cdiv(nc, splits), BLOCK_TILE) * BLOCK_TILE
        splits = triton.cdiv(nc, per)
        mx = torch.empty(self.B, splits, nr, dtype=self.dt, device=X.device)
        sm = torch.empty_like(mx)
        _feat_lse[(self.B, triton.cdiv(nr, BLOCK_ROWS), splits)](
            X, Y, s, t, self._vec(vec), mx, sm, nr, nc, self.d, self.inv_eps, per, splits, **self.kw, **LAUNCH)
        part = torch.where(sm > 0, mx + torch.log(sm), float("-inf"))
        return part[:, 0] if splits == 1 else torch.logsumexp(part, dim=1)

    def row_stats(self, lu, lv, w):
        r = torch.empty(self.B, self.n, dtype=self.dt, device=self.x.device)
        pc, plp = torch.empty_like(r), torch.empty_like(r)
        _feat_row_stats[(self.B, triton.cdiv(self.n, BLOCK_ROWS))](
            self.x, self.y, self.s, self.t, self._vec(lu), self._vec(lv), self._vec(w), r, pc, plp, self.n, self.m,
            self.d, self.inv_eps, **self.kw, **LAUNCH)
        return r, pc, plp

    def _product(self, rows: bool, lr, lc, w):
        X, Y, s, t, nr, nc = self._side(rows)
        out = torch.empty(self.B, nr, self.d, dtype=self.dt, device=X.device)
        r = torch.empty(self.B, nr, dtype=self.dt, device=X.device)
        bdo = max(16, min(64, triton.next_power_of_2(self.d)))
        _feat_products[(self.B, triton.cdiv(nr, BLOCK_ROWS), triton.cdiv(self.d, bdo))](
            X, Y, s, t, self._vec(lr), self._vec(lc), self._vec(w), out, r, nr, nc, self.d, self.inv_eps,
            BDO=bdo, PREC_P=_dot_precision(self.dt), **self.kw, **LAUNCH)
        return out, r

    def products(self, lu, lv, w):
        PY, r = self._product(True, lu, lv, w)
        PtX, c = self._product(False, lv, lu, w)
        return PY, r, PtX, c
