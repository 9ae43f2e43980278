"""Drop-in for ``ot.batch.solve_batch``: B independent entropic OT problems at once (POT 0.9.7).

Same arguments, defaults and results as POT's: an :class:`OTResult` with ``plan`` (B, n, m),
``value`` and ``value_linear`` (B,), ``potentials`` (log-scalings (u, v) with
plan = exp(u_i + v_j - M_ij / reg); exp-domain scalings for ``method='sinkhorn'``), ``log``
{'n_iter': POT's loop counter}. ``value`` is <P, M> + reg sum P log P ('entropy') or
<P, M> + reg sum P log(P / a b^T) ('kl'). Gradients (``grad``), as POT's:
* 'envelope' (default): the loop runs without autograd; ``value_linear`` and ``value`` carry
  dM = P (POT's), ``value`` also the envelope gradients in a and b (dual potentials; POT's has
  none for 'entropy');
* 'autodiff': the iterations are unrolled under autograd (every output, every input);
* 'last_step': the loop runs detached from M (unrolled for a and b when they need gradients, as
  POT's, which never detaches them), then one differentiable iteration from its potentials; as in
  POT the plan's factor exp(-M / reg) stays detached (M acts through the last u, v only), so this
  M-gradient is POT's approximation, not the exact one ('autodiff', 'envelope');
* 'detach': no gradients.

Extension (POT's solve_batch has neither): ``reg_m`` (a number or a pair, as in
``ot.unbalanced``) solves unbalanced problems with KL marginal penalties, ``m`` (a number or one
per problem, (B,)) partial problems transporting mass m, with the op's UNBALANCED / PARTIAL
kernels. Their ``value``: unbalanced <P, M> + reg Omega(P) + reg_m1 KL(P 1 | a) + reg_m2
KL(P^T 1 | b) with generalised KL(x | y) = sum x log(x / y) - x + y and Omega = sum P log P - sum P
('entropy', POT's definition) or KL(P | a b^T) ('kl'); partial <P, M> + reg sum P log P ('entropy')
or <P, M> + reg sum P log(P / a b^T) ('kl', solved as the cost M - reg log(a_i b_j)). ``tol`` applies to each
kind's stop test (balanced: marginal error, unbalanced: relative change of the scalings, partial:
plan change). Zero weights are padding (exact zero rows / columns), also for the balanced problems.

Deliberate differences from POT: each problem stops on its own error (POT stops the batch on the
largest); 'proximal' (unregularised) is not provided; ``grad='last_step'`` is not available for
partial problems (its iteration state is not the potentials); the kernel never materialises
B x n x m temporaries. Extra: ``backend=``, ``OTResult.status`` per problem (0 converged,
1 iteration limit, 2 numerical failure).
"""
from __future__ import annotations

import math

import torch

from ..ops import BALANCED, PARTIAL, UNBALANCED, entropic_ot
from ..ops.entropic_ot import SolveSpec
from ..ops.entropic_ot.driver import unbalanced_value
from ._common import check_reg, op_reg_m, reg_m_pair, transported_mass
from ._convert import Converter
from ._pot import delegating as _delegating
from .utils import OTResult

__all__ = ["solve_batch", "OTResult"]
__getattr__, __dir__ = _delegating(__name__)  # other POT names: the installed POT's (see _pot)

_METHODS = ["auto", "proximal", "log_sinkhorn", "sinkhorn"]
_REG_TYPES = ["kl", "entropy"]
_GRADS = ["detach", "autodiff", "last_step", "envelope"]


def _log0(x: torch.Tensor) -> torch.Tensor:
    """log x where x > 0, 0 elsewhere (no inf, no NaN gradient)."""
    pos = x > 0
    return torch.where(pos, torch.log(torch.where(pos, x, torch.ones_like(x))), torch.zeros_like(x))


def _masked_log(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, _log0(x), -math.inf)


def _row_lse(M: torch.Tensor, reg: float, chunk: int = 1 << 22) -> torch.Tensor:
    """LSE_j(-M_ij / reg) (B, n), over blocks of about ``chunk`` entries (bounded temporaries)."""
    B, n, m = M.shape
    if n * m <= chunk:
        step = chunk // (n * m)
        return torch.cat([torch.logsumexp(M[i:i + step] / -reg, 2) for i in range(0, B, step)])
    rows = max(1, chunk // m)
    return torch.stack([torch.cat([torch.logsumexp(M[i, r:r + rows] / -reg, 1) for r in range(0, n, rows)])
                        for i in range(B)])


def _last_step(C, a, b, lu, lv, spec: SolveSpec):
    """POT's last step: one differentiable iteration from the potentials lu (B,n), lv (B,m) (u from
    v, then v) of the problems C (B,n,m), a (B,n), b (B,m). Returns (plan, u, v) with
    plan = exp(u_i + v_j - C_ij / reg)."""
    problem, fa, fb = spec.problem, spec.fa, spec.fb
    K = -C / spec.reg
    ma, mb = a > 0, b > 0
    la, lb = _masked_log(a), _masked_log(b)
    if problem == BALANCED:
        u = la - torch.logsumexp(K + lv[:, None, :], 2)
        v = lb - torch.logsumexp(K + u[:, :, None], 1)
    else:
        sa, sb = (la, lb) if spec.kl_ref else (torch.zeros_like(la), torch.zeros_like(lb))
        u = torch.where(ma, (1 - fa) * sa + fa * (la - torch.logsumexp(K + lv[:, None, :], 2)), -math.inf)
        v = torch.where(mb, (1 - fb) * sb + fb * (lb - torch.logsumexp(K + u[:, :, None], 1)), -math.inf)
    # POT's plan keeps exp(-M / reg) detached: M reaches it through u and v only
    plan = torch.where(ma[:, :, None] & mb[:, None, :], torch.exp(K.detach() + u[:, :, None] + v[:, None, :]), 0.0)
    return plan, u, v


def _op_values(sol, a, b, reg, problem, kl, nm):
    """The documented (value, value_linear) (B,) from the op's outputs (detached; no (B, n, m)
    temporary): the op's value is <P, C> + reg sum P log P (balanced, partial) or the unbalanced
    objective with generalised KL(P | ref), ref = a b^T or 1."""
    value, lin = sol.value.detach(), sol.value_linear.detach()
    if kl and problem != UNBALANCED:
        with torch.no_grad():  # reg <P, log a_i + log b_j>
            shift = reg * ((sol.plan.sum(2) * _log0(a)).sum(1) + (sol.plan.sum(1) * _log0(b)).sum(1))
        if problem == BALANCED:
            value = value - shift
        else:  # partial OT solved the cost M - reg log(a_i b_j): its <P, C> is <P, M> - shift
            lin = lin + shift
    if problem == UNBALANCED and not kl:  # KL(P | 1) = sum P log P - sum P + n m; Omega drops the n m
        value = value - reg * nm
    return value, lin


class _LinearCost(torch.autograd.Function):
    """<P, M> per problem, given (B,), with the gradient dM = P for a fixed plan P (B, n, m)."""

    @staticmethod
    def forward(ctx, M, P, value):
        ctx.save_for_backward(P)
        return value.clone()

    @staticmethod
    def backward(ctx, g):
        (P,) = ctx.saved_tensors
        return g[:, None, None] * P, None, None


def _objective(P, M, a, b, reg, problem, kl, r1, r2):
    """The documented ``value`` (B,) at plan P (B, n, m); differentiable in P, M, a, b."""
    xlogx = torch.where(P > 0, P * _log0(P), 0.0).sum((1, 2))
    lin = (P * M).sum((1, 2))
    plref = (P * (_log0(a)[:, :, None] + _log0(b)[:, None, :])).sum((1, 2)) if kl else torch.zeros_like(lin)
    if problem != UNBALANCED:
        return lin + reg * (xlogx - plref)
    ref_sum = a.sum(1) * b.sum(1) if kl else torch.zeros_like(lin)
    return unbalanced_value(lin, xlogx, plref, ref_sum, P.sum(2), P.sum(1), a, b, reg, r1, r2)


def solve_batch(M, reg=None, a=None, b=None, max_iter=1000, tol=1e-5, method="auto", inner_iter=1,
                inner_reg=1e-3, reg_type="entropy", grad="envelope", reg_m=None, m=None, backend=None):
    """Solve B entropic OT problems: M (B, n, m); a (B, n), b (B, m) (uniform if None).
    ``reg_m`` (unbalanced) or ``m`` (partial, a number or (B,)): the extension of the module
    docstring. Returns an :class:`OTResult`: plan (B, n, m), value (B,), value_linear (B,),
    potentials ((B, n), (B, m)), log {'n_iter'}."""
    if method not in _METHODS:
        raise ValueError(f"Unknown method: {method}. Must be one of {_METHODS}.")
    if reg_type not in _REG_TYPES:
        raise ValueError(f"Unknown reg_type: {reg_type}. Must be one of {_REG_TYPES}.")
    if grad not in _GRADS:
        raise ValueError(f"Unknown grad: {grad}. Must be one of {_GRADS}.")
    if method in ("sinkhorn", "log_sinkhorn") and (reg is None or reg <= 0):
        raise ValueError("Sinkhorn methods require a strictly positive reg parameter. "
                         "Please provide a valid reg value.")
    if method == "proximal" or reg is None or reg == 0:
        raise NotImplementedError("unregularised (proximal) batch OT is not provided; pass reg > 0")
    reg = check_reg(reg)
    if reg_m is not None and m is not None:
        raise ValueError("pass reg_m (unbalanced OT) or m (partial OT), not both")
    problem = UNBALANCED if reg_m is not None else PARTIAL if m is not None else BALANCED
    if problem == PARTIAL and grad == "last_step":
        raise NotImplementedError("grad='last_step' is not available for partial OT (m=...); use 'envelope' "
                                  "or 'autodiff'")
    conv = Converter(M, a, b)
    M = conv.to_torch(M)
    if not isinstance(M, torch.Tensor) or M.dim() != 3:
        raise ValueError(f"M must be (B, n, m), got shape {tuple(getattr(M, 'shape', ()))}")
    if not M.is_floating_point():
        M = M.double()
    B, n, mm = M.shape
    a = torch.full((B, n), 1.0 / n, dtype=M.dtype, device=M.device) if a is None else conv.to_torch(a)
    b = torch.full((B, mm), 1.0 / mm, dtype=M.dtype, device=M.device) if b is None else conv.to_torch(b)
    kl = reg_type == "kl"
    r1 = r2 = math.inf
    opts = dict(reg=reg, problem=problem, max_iter=int(max_iter), tol=float(tol), check_every=10, warn=False,
                backend=backend, history=False)
    if problem == UNBALANCED:
        r1, r2 = reg_m_pair(reg_m)
        opts.update(reg_m=(op_reg_m(r1, reg), op_reg_m(r2, reg)), kl_ref=kl)
    cost = M
    if problem == PARTIAL:
        opts["mass"] = transported_mass(m, a.expand(B, n), b.expand(B, mm))
        if kl:  # KL(P | a b^T) = sum P log P - <P, log a_i + log b_j>: a cost shift
            cost = M - reg * (_log0(a)[:, :, None] + _log0(b)[:, None, :])
    if problem == BALANCED and a.shape == (B, n):
        with torch.no_grad():  # start from POT's first u (v = 0): the same iterates, the same gauge
            opts["log_u0"] = torch.where(a > 0, _log0(a) - _row_lse(M, reg), 0.0)

    if grad == "last_step":
        unroll_ab = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
        sol = entropic_ot(cost.detach(), a, b, grad="autodiff" if unroll_ab else "detach", **opts)
        spec = SolveSpec(problem, reg, *opts.get("reg_m", (math.inf, math.inf)), kl_ref=kl)
        plan, lu, lv = _last_step(cost, a, b, sol.log_u, sol.log_v, spec)
    else:
        sol = entropic_ot(cost, a, b, grad=grad, **opts)
        plan, lu, lv = sol.plan, sol.log_u + sol.log_scale[:, None], sol.log_v
        if problem == PARTIAL and kl:  # potentials of M: the folded cost's plus log a, log b
            lu, lv = lu + _log0(a), lv + _log0(b)

    if grad in ("autodiff", "last_step"):
        value_linear = (plan * M).sum((1, 2))
        value = _objective(plan, M, a, b, reg, problem, kl, r1, r2)
    else:
        value, value_linear = _op_values(sol, a, b, reg, problem, kl, n * mm)
        if grad == "envelope":
            if M.requires_grad and torch.is_grad_enabled():
                value_linear = _LinearCost.apply(M, plan, value_linear)  # dM = P, as POT's
            carrier = sol.value  # the op's envelope gradient
            if problem == BALANCED and kl:  # at P 1 = a, P^T 1 = b: value = op value - reg (a log a + b log b)
                carrier = carrier - reg * ((a * _log0(a)).sum(1) + (b * _log0(b)).sum(1))
            value = value.detach() + (carrier - carrier.detach())
    potentials = (torch.exp(lu), torch.exp(lv)) if method == "sinkhorn" else (lu, lv)
    return OTResult(value=conv.out(value), value_linear=conv.out(value_linear), plan=conv.out(plan),
                    potentials=tuple(conv.out(p) for p in potentials),
                    log={"n_iter": int(sol.n_iter.max()) - 1}, status=conv.out(sol.status))
