"""The driver of the streaming backends of ``entropic_ot``: the Sinkhorn iterations written once
over two log-sum-exp passes, and the plan and objective from the potentials.

``solve_potentials`` is iterate for iterate the algorithm of the native kernels (derivation in
csrc/ot/cpu/sinkhorn_cpu.cpp); a backend supplies the passes over C (``row_lse``, ``col_lse``, or
both fused in ``row_then_col``): materialised ``torch.logsumexp`` (the 'torch' backend, the
float64 oracle), Triton or CUDA kernels streaming C, or the cost rebuilt from features
(``entropic_ot_features``). ``finalize`` forms the plan, ``value`` and ``value_linear`` (the
Triton backend's one-pass twin is csrc/ot/triton/finalize.py).
"""
from __future__ import annotations

import math

import torch

from .spec import BALANCED, PARTIAL, UNBALANCED, SolveSpec


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, x, -math.inf)  # a scalar: one kernel, not a filled tensor and a select


def nonempty_problems(a, b, mass, problem: int):
    """(B,) bool: problems with a positive weight on both sides (and positive mass for partial)."""
    nonempty = (a > 0).any(1) & (b > 0).any(1)
    return nonempty & (mass > 0) if problem == PARTIAL else nonempty


def solve_potentials(row_lse, col_lse, a, b, mass, log_u0, log_v0, spec: SolveSpec, row_then_col=None):
    """The iterations of every backend that streams the cost: ``row_lse(lv)`` (B,n) =
    LSE_j(lv_j - C_ij/reg), ``col_lse(lu)`` (B,m) = LSE_i(lu_i - C_ij/reg). Returns (log_u, log_v,
    log_scale, n_iter, status, err_history) for a (B,n), b (B,m), mass (B,), log_u0 (B,n),
    log_v0 (B,m). Stop tests as in csrc/ot/cpu/sinkhorn_cpu.cpp, with the rounding floor
    ``spec.floor`` x rounding_scale x stop_shape (``floor``: the relative rounding unit, 0 = none;
    see ``check``).
    ``row_then_col(lv, lu, la, active, scale, cap)`` (optional): both half-iterations in one pass over
    C, returning (lu', col_lse(lu')) with, per problem b and row i,
        lu'_i = la_i = -inf ? -inf : (active_b ? min(la_i - scale rl_i, cap ? lu_i : +inf) : lu_i),
    rl = row_lse(lv). Every kind's row update has that form: balanced la = log a, scale 1;
    unbalanced la = (1 - fa) sa + fa log a (``fused_row_target``), scale fa; partial la = log a - w,
    scale 1, cap, with lu - p as lu. The iterates are the same (balanced: bit for bit; the others up
    to the rounding of the regrouped sums).
    """
    problem, max_iter, tol, check_every, floor = spec.problem, spec.max_iter, spec.tol, spec.check_every, spec.floor
    B, n = a.shape
    dt = a.dtype
    device = a.device
    ma, mb = a > 0, b > 0
    la = _masked(torch.log(a.clamp_min(torch.finfo(dt).tiny)), ma)
    lb = _masked(torch.log(b.clamp_min(torch.finfo(dt).tiny)), mb)
    hist_len = spec.hist_len
    hist = torch.full((B, hist_len), -1.0, dtype=dt, device=device)
    n_iter = torch.zeros(B, dtype=torch.long, device=device)
    status = torch.ones(B, dtype=torch.long, device=device)
    w = torch.zeros(B, dtype=dt, device=device)
    nonempty = nonempty_problems(a, b, mass, problem)
    active = nonempty.clone()
    status = torch.where(nonempty, status, torch.zeros_like(status))

    def keep(new, old):  # freeze finished problems
        shape = (B,) + (1,) * (new.dim() - 1)
        return torch.where(active.view(shape), new, old)

    k = 0
    prev = torch.full((B,), math.inf, dtype=dt, device=device)
    shape = stop_shape(problem, ma, mb, b)

    def check(err, done):
        """Record the stop quantity of the active problems (the last history slot keeps the latest
        once the buffer is full), retire those with ``done`` or at the rounding floor (err <= floor x
        rounding_scale x stop_shape, and no smaller than at the previous check); True when no problem
        is left."""
        nonlocal k, status, active, prev
        if hist_len > 0:
            slot = min(k, hist_len - 1)
            hist[:, slot] = torch.where(active, err.detach(), hist[:, slot])
        k += 1
        if floor > 0:
            at_floor = (err <= floor * rounding_scale(lu, lv, w, la, lb, ma, mb) * shape) & (err >= prev)
            done = done | at_floor
        done = active & done
        prev = torch.where(active, err.detach(), prev)
        status = torch.where(done, torch.zeros_like(status), status)
        active = active & ~done
        return not bool(active.any())

    lu = _masked(log_u0.clone(), ma)
    lv = _masked(log_v0.clone(), mb)
    if problem == BALANCED:
        pending = False
        cl = col_lse(lu) if row_then_col is not None else None
        for it in range(max_iter):
            if row_then_col is None:
                cl = col_lse(lu)
            if pending:
                err = torch.linalg.vector_norm(torch.where(mb, torch.exp(cl + lv), 0) - b, dim=1)
                if check(err, err < tol):
                    break
            n_iter = torch.where(active, n_iter + 1, n_iter)
            lv = keep(_masked(lb - cl, mb), lv)
            if row_then_col is None:
                lu = keep(_masked(la - row_lse(lv), ma), lu)
            else:  # cl is already the next iteration's column LSE
                lu, cl = row_then_col(lv, lu, la, active, 1.0, False)
            pending = check_every > 0 and it % check_every == 0
        else:
            if pending:
                cl = col_lse(lu) if row_then_col is None else cl
                err = torch.linalg.vector_norm(torch.where(mb, torch.exp(cl + lv), 0) - b, dim=1)
                check(err, err < tol)
    elif problem == UNBALANCED:
        fa, fb = spec.fa, spec.fb
        sa = la if spec.kl_ref else torch.zeros_like(la)
        sb = lb if spec.kl_ref else torch.zeros_like(lb)
        lu = _masked(lu + sa, ma)
        lv = _masked(lv + sb, mb)

        def rel(x, px, s, msk):
            # POT's max|u - u'| / max(|u|, |u'|, 1) for u = exp(x - s), u' = exp(px - s), shifted by
            # S = max(0, max log u, max log u') so that the denominator is exactly 1 and u cannot overflow
            lu_, lp = torch.where(msk, x - s, -math.inf), torch.where(msk, px - s, -math.inf)
            S = torch.maximum(torch.maximum(lu_.amax(1), lp.amax(1)), torch.zeros_like(lu_[:, 0]))[:, None]
            return torch.where(msk, torch.exp(lu_ - S) - torch.exp(lp - S), 0).abs().amax(1)

        la_f = fused_row_target(la, sa, fa, ma) if row_then_col is not None else None
        for it in range(max_iter):
            pu, pv = lu, lv
            if row_then_col is None:
                lu = keep(_masked((1 - fa) * sa + fa * (la - row_lse(lv)), ma), lu)
                cl = col_lse(lu)
            else:  # lu' = (1 - fa) sa + fa la - fa rl
                lu, cl = row_then_col(lv, lu, la_f, active, fa, False)
            lv = keep(_masked((1 - fb) * sb + fb * (lb - cl), mb), lv)
            n_iter = torch.where(active, n_iter + 1, n_iter)
            if check_every > 0 and it % check_every == 0:
                err = 0.5 * (rel(lu, pu, sa, ma) + rel(lv, pv, sb, mb))
                if check(err, err < tol):
                    break
    elif problem == PARTIAL:
        lu = _masked(torch.zeros_like(la), ma)
        lv = _masked(torch.zeros_like(lb), mb)
        w = torch.log(mass) - torch.logsumexp(_masked(row_lse(lv), ma), dim=1)
        p = torch.zeros_like(lu)
        s = torch.zeros_like(lv)
        t = torch.zeros_like(w)
        lmass = torch.log(mass)

        for it in range(max_iter):
            pu, pv, pw = lu, lv, w
            lu1 = torch.where(ma, lu - p, lu)
            if row_then_col is None:
                p_new = torch.where(ma, torch.clamp(la - (lu1 + w[:, None] + row_lse(lv)), max=0), p)
                lu1 = _masked(lu1 + p_new, ma)
                cl = col_lse(lu1)
            else:  # lu1 + min(la - (lu1 + w + rl), 0) = min(la - w - rl, lu1); retired problems: kept below
                law = la - torch.where(active, w, 0.0)[:, None]  # an empty problem's w may be NaN
                new, cl = row_then_col(lv, lu1, law, active, 1.0, True)
                p_new = torch.where(ma, new - lu1, p)
                lu1 = new
            lv1 = torch.where(mb, lv - s, lv)
            lc = lv1 + w[:, None] + cl
            s_new = torch.where(mb, torch.clamp(lb - lc, max=0), s)
            lv1 = _masked(lv1 + s_new, mb)
            total = torch.logsumexp(_masked(lc + s_new, mb), dim=1) - t
            w1 = w - t
            t_new = lmass - total
            w1 = w1 + t_new
            lu, lv, w = keep(lu1, lu), keep(lv1, lv), keep(w1, w)
            p, s, t = keep(p_new, p), keep(s_new, s), keep(t_new, t)
            n_iter = torch.where(active, n_iter + 1, n_iter)
            if check_every > 0 and it % check_every == 0:
                err = log_plan_change(lu - pu, lv - pv, w - pw, ma, mb)
                if check(err, err <= tol):
                    break
    else:
        raise ValueError(f"unknown problem kind {problem}")
    return lu, lv, w, n_iter, status, hist


def rounding_scale(lu, lv, w, la, lb, ma, mb):
    """(B,) L = 1 + max|lu| + max|lv| + |w| + max|log a| + max|log b| over the supports (masks
    ma (B,n), mb (B,m)): the magnitude of the log-domain quantities an iteration rounds, so that
    eps L bounds the relative rounding of the plan's entries."""
    def mx(x, msk):
        return torch.where(msk, x.abs(), 0).amax(1)
    return 1 + mx(lu, ma) + mx(lv, mb) + w.abs() + mx(la, ma) + mx(lb, mb)


def stop_shape(problem: int, ma, mb, b):
    """(B,) the size factor of each kind's stop quantity at the rounding floor: partial OT's
    ||d log P||_F sums sqrt(n' m') entries, balanced ||P^T 1 - b||_2 scales with ||b||_2, the
    unbalanced relative change is 1."""
    if problem == PARTIAL:
        return torch.sqrt(ma.sum(1).to(b.dtype) * mb.sum(1).to(b.dtype))
    if problem == BALANCED:
        return torch.linalg.vector_norm(torch.where(mb, b, 0), dim=1)
    return torch.ones_like(b[:, 0])


def plan_marginals(plan):
    """(P 1 (B,n), P^T 1 (B,m), sum P (B,)) of a plan (B,n,m)."""
    r = plan.detach().sum(2)
    return r, plan.detach().sum(1), r.sum(1)


def log_plan_change(du, dv, dw, ma, mb):
    """||log P' - log P||_F over the support (B,), where log P'_ij - log P_ij = du_i + dv_j + dw:
    du (B,n), dv (B,m), dw (B,) (anything off the support masks ma (B,n), mb (B,m)). Computed in
    O(n + m) from the centred changes (no cancellation when du and dv shift in opposite directions):
        sum_ij (du_i + dv_j + dw)^2 = m' sum_i (du_i - du_bar)^2 + n' sum_j (dv_j - dv_bar)^2
                                      + n' m' (du_bar + dv_bar + dw)^2
    with n' = |supp a|, m' = |supp b| and the means du_bar, dv_bar over the supports."""
    du = torch.where(ma, du, 0)
    dv = torch.where(mb, dv, 0)
    nn, mm = ma.sum(1).to(du.dtype), mb.sum(1).to(du.dtype)
    ubar = du.sum(1) / nn.clamp_min(1)
    vbar = dv.sum(1) / mm.clamp_min(1)
    su = torch.where(ma, du - ubar[:, None], 0).square().sum(1)
    sv = torch.where(mb, dv - vbar[:, None], 0).square().sum(1)
    return torch.sqrt(mm * su + nn * sv + nn * mm * (ubar + vbar + dw).square())


def fused_row_target(la, sa, fa: float, ma):
    """Unbalanced row update as ``row_then_col``'s la (B, n): (1 - fa) sa + fa la on the support,
    -inf off it (where the sum may be NaN: 0 x -inf)."""
    return torch.where(ma, (1 - fa) * sa + fa * la, -math.inf)


def finalize(C, a, b, lu, lv, w, spec: SolveSpec, nonempty):
    """Plan (B,n,m), regularised objective (B,) and <P, C> (B,) from the potentials lu (B,n),
    lv (B,m), w (B,) of the problems C (B,n,m), a (B,n), b (B,m); nonempty (B,) bool."""
    problem, reg = spec.problem, spec.reg
    K = -C / reg
    ma, mb = a > 0, b > 0
    logP = K + lu[:, :, None] + lv[:, None, :] + w[:, None, None]
    plan = torch.where(ma[:, :, None] & mb[:, None, :], torch.exp(logP), torch.zeros_like(logP))
    plan = torch.where(nonempty[:, None, None], plan, torch.zeros_like(plan))
    value_linear = (plan * C).sum((1, 2))
    xlogx = torch.where(plan > 0, plan * torch.log(torch.where(plan > 0, plan, 1)), 0).sum((1, 2))
    if problem == UNBALANCED:
        ref = a[:, :, None] * b[:, None, :] if spec.kl_ref else torch.ones_like(plan)
        lref = torch.where(ref > 0, torch.log(torch.where(ref > 0, ref, 1)), 0)
        value = unbalanced_value(value_linear, xlogx, (plan * lref).sum((1, 2)), ref.sum((1, 2)), plan.sum(2),
                                 plan.sum(1), a, b, reg, spec.reg_m_a, spec.reg_m_b)
    else:
        value = value_linear + reg * xlogx
    value = torch.where(nonempty, value, torch.zeros_like(value))
    return plan, value, value_linear


def unbalanced_value(value_linear, xlogx, plref, ref_sum, r, c, a, b, reg: float, reg_m_a: float, reg_m_b: float):
    """The unbalanced objective (B,) from its pieces: <P,C> + reg KL(P | ref) + reg_m_a KL(P 1 | a)
    + reg_m_b KL(P^T 1 | b), with xlogx = sum P log P, plref = sum P log ref, ref_sum = sum ref
    (all (B,)), r = P 1 (B,n), c = P^T 1 (B,m); an infinite reg_m drops its term."""
    value = value_linear + reg * (xlogx - plref - r.sum(1) + ref_sum)
    if not math.isinf(reg_m_a):
        value = value + reg_m_a * _gen_kl(r, a)
    if not math.isinf(reg_m_b):
        value = value + reg_m_b * _gen_kl(c, b)
    return value


def _gen_kl(x, y):
    """sum_i x_i log(x_i / y_i) - x_i + y_i per batch row (0 log 0 = 0)."""
    safe = torch.where(x > 0, x, 1)
    return (torch.where(x > 0, x * torch.log(safe / torch.where(y > 0, y, 1)), 0) - x + y).sum(1)
