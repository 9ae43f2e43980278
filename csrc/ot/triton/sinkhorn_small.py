"""Triton persistent kernel for small entropic OT problems: the whole solve in one launch.

One program per problem of the batch. Its cost tile K = -C / eps (BN x BM, padded to powers of
two, -inf outside the problem) is loaded once and stays on-chip (registers) for *all* iterations;
the potentials (lu, lv, w) and Dykstra corrections live on-chip too; the stop test runs inside the
kernel. The iterations are those of csrc/ot/cpu/sinkhorn_cpu.cpp and grounded_fast/reference in
the log domain:

  balanced    lv = log b - LSE_i(lu_i + K_ij);  lu = log a - LSE_j(lv_j + K_ij)
              stop: ||P^T 1 - b||_2 < tol, from the next iteration's column LSE (no extra pass);
  unbalanced  lu = (1 - fa) s_a + fa (log a - LSE_j(lv_j + K_ij)), then lv alike
              stop: POT's mean relative change of the scalings, max|u - u'| / max(|u|, |u'|, 1);
  partial     Dykstra projections on {P1 <= a}, {P^T 1 <= b}, {sum P = m} with vector / scalar
              corrections p, s, t (log domain); stop: ||log P - log P_prev||_F <= tol, O(n + m)
              from the potentials' changes.
Every kind also stops at the rounding floor of its stop quantity (see the kernel).

The launcher returns (log_u, log_v, log_scale, n_iter, status, err_history); the plan and
objective are formed from them afterwards (grounded_fast.ops.entropic_ot.driver.finalize, or its Triton twin finalize.py).
Accumulation is float32 (float64 for float64 costs).
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from ...ops.entropic_ot.spec import SolveSpec
from ..common.fast_math import LAUNCH
from ..common import device_scalars

# entries of the cost tile held on-chip by one program (BN x BM after padding to powers of two)
MAX_TILE = 1 << 15
# warps per program for tiles of 8192 entries or more (4 below). Spills per thread at partial OT's
# 64 x 256 tile (Triton 3.6, sm_90, rows padded as below): 4 warps 1144 B, 8 warps 128 B (255
# registers: a whole multiprocessor's register file), 16 warps 152 B, 32 warps 48 B (balanced: 880,
# 0, 0, 8 B). At MAX_TILE (128 x 256) partial spills 1160 / 680 / 256 B at 8 / 16 / 32 warps.
# ``python bench/gpu_sweep.py small`` times the choices at both sizes, and the streaming regime.
WARPS_LARGE_TILE = 8
# C's rows are padded to a multiple of this many entries (see the load in _sinkhorn_small)
ROW_ALIGN = 16


@triton.jit
def _lse_rows(K, lv):
    """(BN,) LSE_j(K_ij + lv_j); -inf for rows with no finite entry."""
    x = K + lv[None, :]
    mx = tl.max(x, axis=1)
    mx = tl.where(mx == float("-inf"), 0.0, mx)
    return mx + tl.log(tl.sum(tl.exp(x - mx[:, None]), axis=1))


@triton.jit
def _lse_cols(K, lu):
    """(BM,) LSE_i(K_ij + lu_i)."""
    x = K + lu[:, None]
    mx = tl.max(x, axis=0)
    mx = tl.where(mx == float("-inf"), 0.0, mx)
    return mx + tl.log(tl.sum(tl.exp(x - mx[None, :]), axis=0))


@triton.jit
def _lse_vec(x):
    mx = tl.max(x, axis=0)
    mx = tl.where(mx == float("-inf"), 0.0, mx)
    return mx + tl.log(tl.sum(tl.exp(x - mx), axis=0))


@triton.jit
def _rel_change(x, px, s, msk):
    """POT's unbalanced stop quantity for one scaling vector, max|u - u'| / max(|u|, |u'|, 1) with
    u = exp(x - s), u' = exp(px - s), from the logs shifted by S = max(0, max log u, max log u')
    (the denominator is then exactly 1, and u cannot overflow)."""
    lu = tl.where(msk, x - s, float("-inf"))
    lp = tl.where(msk, px - s, float("-inf"))
    S = tl.maximum(tl.maximum(tl.max(lu, axis=0), tl.max(lp, axis=0)), 0.0)
    return tl.max(tl.where(msk, tl.abs(tl.exp(lu - S) - tl.exp(lp - S)), 0.0), axis=0)


@triton.jit
def _log_plan_change(du, dv, dw, ma, mb):
    """||log P' - log P||_F with log P'_ij - log P_ij = du_i + dv_j + dw over the support, from the
    centred changes (grounded_fast.reference.entropic_ot.log_plan_change)."""
    nn = tl.sum(ma.to(du.dtype), axis=0)
    mm = tl.sum(mb.to(du.dtype), axis=0)
    du = tl.where(ma, du, 0.0)
    dv = tl.where(mb, dv, 0.0)
    ubar = tl.sum(du, axis=0) / tl.maximum(nn, 1.0)
    vbar = tl.sum(dv, axis=0) / tl.maximum(mm, 1.0)
    eu = tl.where(ma, du - ubar, 0.0)
    ev = tl.where(mb, dv - vbar, 0.0)
    c = ubar + vbar + dw
    return tl.sqrt(mm * tl.sum(eu * eu, axis=0) + nn * tl.sum(ev * ev, axis=0) + nn * mm * c * c)


@triton.jit
def _absmax(x, msk):
    """max |x| over the entries where msk (0 if none)."""
    return tl.max(tl.where(msk, tl.abs(x), 0.0), axis=0)


@triton.jit
def _record(hist_ptr, pid, hist_len, k, err):
    """Store err at check k (the last slot keeps the latest check once the history is full)."""
    if hist_len > 0:
        tl.store(hist_ptr + pid * hist_len + tl.minimum(k, hist_len - 1), err)


@triton.jit
def _sinkhorn_small(C_ptr, a_ptr, b_ptr, mass_ptr, lu0_ptr, lv0_ptr,
                    lu_ptr, lv_ptr, w_ptr, niter_ptr, status_ptr, hist_ptr,
                    n, m, ldc, scal_ptr, max_iter, check_every, hist_len,
                    PROBLEM: tl.constexpr, KL_REF: tl.constexpr, DT: tl.constexpr,
                    BN: tl.constexpr, BM: tl.constexpr):
    pid = tl.program_id(0)
    ri = tl.arange(0, BN)
    cj = tl.arange(0, BM)
    rin, cin = ri < n, cj < m
    a = tl.load(a_ptr + pid * n + ri, mask=rin, other=0.0).to(DT)
    b = tl.load(b_ptr + pid * m + cj, mask=cin, other=0.0).to(DT)
    ma, mb = a > 0, b > 0
    neg = float("-inf")
    la = tl.where(ma, tl.log(tl.where(ma, a, 1.0)), neg)
    lb = tl.where(mb, tl.log(tl.where(mb, b, 1.0)), neg)
    # rows ldc apart, ldc a multiple of 16 (the launcher pads C) and the load masked by ldc, not m: so
    # Triton sees aligned rows and gives the tile 4 contiguous columns a thread and warps over rows
    # too. Without it (m = 197) each thread held one column of all BN rows, every (BN,) vector took
    # BN registers a thread, and partial OT's 64 x 256 tile spilled 720 B a thread (120 B with it).
    C = tl.load(C_ptr + pid.to(tl.int64) * n * ldc + ri[:, None] * ldc + cj[None, :],
                mask=rin[:, None] & (cj < ldc)[None, :], other=0.0).to(DT)
    inv_eps = tl.load(scal_ptr).to(DT)
    fa = tl.load(scal_ptr + 1).to(DT)
    fb = tl.load(scal_ptr + 2).to(DT)
    tol = tl.load(scal_ptr + 3).to(DT)
    unit = tl.load(scal_ptr + 4).to(DT)  # the rounding floor's unit (0: no floor stop)
    K = tl.where(rin[:, None] & cin[None, :], -C * inv_eps, neg)
    lu = tl.where(ma, tl.load(lu0_ptr + pid * n + ri, mask=rin, other=0.0).to(DT), neg)
    lv = tl.where(mb, tl.load(lv0_ptr + pid * m + cj, mask=cin, other=0.0).to(DT), neg)
    w = tl.zeros((), DT)
    nonempty = (tl.sum(ma.to(tl.int32), axis=0) > 0) & (tl.sum(mb.to(tl.int32), axis=0) > 0)
    mass = tl.load(mass_ptr + pid).to(DT)
    if PROBLEM == 2:
        nonempty = nonempty & (mass > 0)
    it = 0
    k = 0
    status = tl.where(nonempty, 1, 0)
    go = nonempty
    # the rounding floor of the stop quantity: unit x (1 + max|lu| + max|lv| + |w| + max|log a| +
    # max|log b|) x (partial sqrt(n' m'), balanced ||b||_2, unbalanced 1); a check at or below it and
    # no smaller than the previous check stops (solve_potentials' check in
    # grounded_fast/reference/entropic_ot.py)
    base = 1.0 + _absmax(la, ma) + _absmax(lb, mb)
    if PROBLEM == 0:
        shape = tl.sqrt(tl.sum(tl.where(mb, b * b, 0.0), axis=0))
    elif PROBLEM == 2:
        shape = tl.sqrt(tl.sum(ma.to(DT), axis=0) * tl.sum(mb.to(DT), axis=0))
    else:
        shape = tl.full((), 1.0, DT)
    prev = tl.full((), float("inf"), DT)
    if PROBLEM == 0:  # balanced
        pending = False
        while go:
            cl = _lse_cols(K, lu)
            if pending:
                diff = tl.where(mb, tl.exp(cl + lv), 0.0) - b
                err = tl.sqrt(tl.sum(diff * diff, axis=0))
                _record(hist_ptr, pid, hist_len, k, err)
                k += 1
                floor = unit * (base + _absmax(lu, ma) + _absmax(lv, mb)) * shape
                if (err < tol) | ((err <= floor) & (err >= prev)):
                    status = 0
                    go = False
                prev = err
            if go:
                lv = tl.where(mb, lb - cl, neg)
                lu = tl.where(ma, la - _lse_rows(K, lv), neg)
                pending = (check_every > 0) & (it % tl.maximum(check_every, 1) == 0)
                it += 1
                if it >= max_iter:
                    go = False
                    if pending:
                        diff = tl.where(mb, tl.exp(_lse_cols(K, lu) + lv), 0.0) - b
                        err = tl.sqrt(tl.sum(diff * diff, axis=0))
                        _record(hist_ptr, pid, hist_len, k, err)
                        k += 1
                        floor = unit * (base + _absmax(lu, ma) + _absmax(lv, mb)) * shape
                        if (err < tol) | ((err <= floor) & (err >= prev)):
                            status = 0
    elif PROBLEM == 1:  # unbalanced (KL)
        if KL_REF:
            sa = la
            sb = lb
        else:
            sa = tl.zeros((BN,), DT)
            sb = tl.zeros((BM,), DT)
        lu = tl.where(ma, lu + sa, neg)
        lv = tl.where(mb, lv + sb, neg)
        while go:
            pu = lu
            pv = lv
            lu = tl.where(ma, (1 - fa) * sa + fa * (la - _lse_rows(K, lv)), neg)
            lv = tl.where(mb, (1 - fb) * sb + fb * (lb - _lse_cols(K, lu)), neg)
            if (check_every > 0) & (it % tl.maximum(check_every, 1) == 0):
                err = 0.5 * (_rel_change(lu, pu, sa, ma) + _rel_change(lv, pv, sb, mb))
                _record(hist_ptr, pid, hist_len, k, err)
                k += 1
                floor = unit * (base + _absmax(lu, ma) + _absmax(lv, mb)) * shape
                if (err < tol) | ((err <= floor) & (err >= prev)):
                    status = 0
                    go = False
                prev = err
            it += 1
            if it >= max_iter:
                go = False
    else:  # partial
        lu = tl.where(ma, 0.0, neg).to(DT)
        lv = tl.where(mb, 0.0, neg).to(DT)
        lmass = tl.log(mass)
        w = lmass - _lse_vec(tl.where(ma, _lse_rows(K, lv), neg))
        p = tl.zeros((BN,), DT)
        s = tl.zeros((BM,), DT)
        t = tl.zeros((), DT)
        # a counted loop with a guard, not `while go`: Triton 3.6's layout pass
        # (remove-layout-conversions) crashes on this body inside an scf.while
        for _ in range(0, max_iter):
            if go:
                pu = lu
                pv = lv
                pw = w
                lu1 = tl.where(ma, lu - p, lu)
                p = tl.where(ma, tl.minimum(la - (lu1 + w + _lse_rows(K, lv)), 0.0), p)
                lu = tl.where(ma, lu1 + p, neg)
                lv1 = tl.where(mb, lv - s, lv)
                lc = lv1 + w + _lse_cols(K, lu)
                s = tl.where(mb, tl.minimum(lb - lc, 0.0), s)
                lv = tl.where(mb, lv1 + s, neg)
                total = _lse_vec(tl.where(mb, lc + s, neg)) - t
                w = w - t
                t = lmass - total
                w = w + t
                if (check_every > 0) & (it % tl.maximum(check_every, 1) == 0):
                    err = _log_plan_change(lu - pu, lv - pv, w - pw, ma, mb)
                    _record(hist_ptr, pid, hist_len, k, err)
                    k += 1
                    floor = unit * (base + _absmax(lu, ma) + _absmax(lv, mb) + tl.abs(w)) * shape
                    if (err <= tol) | ((err <= floor) & (err >= prev)):
                        status = 0
                        go = False
                    prev = err
                it += 1
    tl.store(lu_ptr + pid * n + ri, lu, mask=rin)
    tl.store(lv_ptr + pid * m + cj, lv, mask=cin)
    tl.store(w_ptr + pid, w)
    tl.store(niter_ptr + pid, it)
    tl.store(status_ptr + pid, status)


def fits(n: int, m: int) -> bool:
    """Whether one problem's padded cost tile fits the persistent kernel."""
    return triton.next_power_of_2(n) * triton.next_power_of_2(m) <= MAX_TILE


def sinkhorn_small(C, a, b, mass, log_u0, log_v0, spec: SolveSpec):
    """Solve a batch of small problems, one persistent program each.

    C (B, n, m) float32/float64, or bfloat16/float16 with float32 weights; a (B, n), b (B, m),
    mass (B,), log_u0 (B, n), log_v0 (B, m) in the compute dtype. Returns (log_u (B, n), log_v (B, m), log_scale (B,), n_iter (B,) int64,
    status (B,) int64, err_history (B, H)) with the conventions of grounded_fast::entropic_ot, for
    the solve ``spec`` (grounded_fast.ops.entropic_ot.spec.SolveSpec).
    """
    B, n, m = C.shape
    if not fits(n, m):
        raise ValueError(f"sinkhorn_small: a {n} x {m} problem does not fit the on-chip tile ({MAX_TILE} entries)")
    dev, dt = C.device, a.dtype  # C may be half precision, read as it is and upcast on-chip
    hist_len = spec.hist_len
    lu = torch.empty(B, n, dtype=dt, device=dev)
    lv = torch.empty(B, m, dtype=dt, device=dev)
    w = torch.empty(B, dtype=dt, device=dev)
    n_iter = torch.empty(B, dtype=torch.int32, device=dev)
    status = torch.empty(B, dtype=torch.int32, device=dev)
    hist = torch.full((B, max(hist_len, 1)), -1.0, dtype=dt, device=dev)
    BN, BM = triton.next_power_of_2(n), triton.next_power_of_2(m)
    scalars = device_scalars(dev, 1.0 / spec.reg, spec.fa, spec.fb, spec.tol, spec.floor)
    ldc = triton.cdiv(m, ROW_ALIGN) * ROW_ALIGN
    C = torch.nn.functional.pad(C, (0, ldc - m)) if ldc != m else C.contiguous()
    _sinkhorn_small[(B,)](
        C, a.contiguous(), b.contiguous(), mass.contiguous(), log_u0.contiguous(),
        log_v0.contiguous(), lu, lv, w, n_iter, status, hist, n, m, ldc, scalars, spec.max_iter, spec.check_every,
        hist_len, PROBLEM=spec.problem, KL_REF=bool(spec.kl_ref),
        DT=tl.float64 if dt == torch.float64 else tl.float32, BN=BN, BM=BM,
        num_warps=WARPS_LARGE_TILE if BN * BM >= 8192 else 4, **LAUNCH)
    return lu, lv, w, n_iter.long(), status.long(), hist[:, :hist_len]
