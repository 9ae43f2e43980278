"""Drop-in for ``ot.unbalanced``: entropic OT with KL marginal penalties (POT 0.9.7).

``sinkhorn_unbalanced``, ``sinkhorn_unbalanced2`` and the per-method functions
``sinkhorn_knopp_unbalanced``, ``sinkhorn_stabilized_unbalanced``,
``sinkhorn_unbalanced_translation_invariant`` take POT's arguments and return POT's values and
``log`` keys ('err', 'logu', 'logv', and for one histogram 'cost', 'total_cost' with POT's
formulas: KL without mass terms). Every ``method`` runs the op's log-domain kernel, whose fixed
point is the minimiser of
    <P, M> + reg KL(P | c) + reg_m1 KL(P 1 | a) + reg_m2 KL(P^T 1 | b),
so plans agree with POT's wherever POT's are finite.

Arguments as POT's:
* ``b`` of shape (m, k): k target histograms, solved as one batch (C expanded to (k, n, m)); the
  k linear costs <P_i, M> are returned (both functions), the log holds 'err', 'logu' (n, k),
  'logv' (m, k). As in POT the reference is then the all-ones matrix whatever ``reg_type`` (a
  warning says so when ``reg_type='kl'`` or ``c`` is given; POT warns only in
  ``sinkhorn_unbalanced2``).
* ``reg_m``: a number, or 1 or 2 entries (tuple, list, numpy array, torch tensor), each >= 0 or
  inf (a balanced side). 0 drops that marginal's penalty (POT: u = 1).
* ``c``: the reference measure, folded into the cost, exp(-C/reg) c = exp(-(C - reg log c)/reg).
  Where c = 0 the plan is exactly 0: the folded cost there is a finite sentinel far above every
  other (``_FORBIDDEN``), whose exponential underflows. A row or column of c that is all zero
  gives a zero row or column (the minimiser; POT stops at iteration 0 on 0/0 and returns
  u K v with u = v = 1). ``reg_type='entropy'`` overwrites c by ones, as in POT (with POT's
  warning when a c was given).
* ``method``: 'sinkhorn', 'sinkhorn_stabilized' (``tau`` accepted; the kernel absorbs its scalings
  itself), 'sinkhorn_reg_scaling' (POT's warning, then 'sinkhorn'), 'sinkhorn_translation_invariant'.

Deliberate differences from POT:
* 'err' holds the criterion of POT's ``sinkhorn_knopp_unbalanced`` (relative change of u and v)
  for every method: each iteration ('sinkhorn', 'sinkhorn_reg_scaling',
  'sinkhorn_translation_invariant') or every 10th ('sinkhorn_stabilized', POT's cadence).
* 'sinkhorn_translation_invariant' with reg_m1 != reg_m2: POT 0.9.7's iteration stops at a point
  that is not the minimiser (its objective is higher than the other methods' plan, and scaling its
  plan lowers it); this returns the minimiser, as POT's other methods do. reg_m = 0 is rejected
  for this method, as POT's divides by it.
* With several histograms each problem stops on its own criterion (POT: on the largest), and
  ``warmstart`` may be (n,) / (m,) or (n, k) / (m, k) (POT's fails on a broadcast).
* Gradients are envelope gradients of the objective (``grad='autodiff'``: unrolled, as POT);
  extra keywords ``backend=``, ``grad=``; unknown keywords raise TypeError (POT ignores them).
"""
from __future__ import annotations

import math
import warnings

import torch

from ..ops import UNBALANCED, entropic_ot
from ._common import check_reg, err_list, op_reg_m, prepare, print_verbose, reg_m_pair, solve
from ._convert import Converter
from ._pot import delegating as _delegating

__all__ = ["sinkhorn_unbalanced", "sinkhorn_unbalanced2", "sinkhorn_knopp_unbalanced",
           "sinkhorn_stabilized_unbalanced", "sinkhorn_unbalanced_translation_invariant"]
__getattr__, __dir__ = _delegating(__name__)  # other POT names: the installed POT's (see _pot)

_METHODS = ("sinkhorn", "sinkhorn_stabilized", "sinkhorn_reg_scaling", "sinkhorn_translation_invariant")
_IGNORED_KWARGS = ("tau",)  # POT's stabilisation threshold: the kernel absorbs on its own
_FORBIDDEN = 1e30           # folded cost where c = 0, in units of reg (capped below the dtype's max)


def _safe_log(x):  # log x where x > 0 (0 elsewhere), with finite gradients
    return torch.log(torch.where(x > 0, x, torch.ones_like(x)))


def _fold_reference(M: torch.Tensor, c: torch.Tensor, reg: float):
    """Fold a reference measure c (n, m) >= 0 into the cost: M - reg log c where c > 0, a sentinel
    cost where c = 0 (its plan entry underflows to 0). Returns (cost (n, m), rows (n,), cols (m,)),
    rows / cols False where c's row / column is all zero (solved as zero weights)."""
    pos = c > 0
    big = min(_FORBIDDEN * reg, torch.finfo(M.dtype).max * 1e-3)
    cost = torch.where(pos, M - reg * _safe_log(c), torch.full_like(M, big))
    return cost, pos.any(1), pos.any(0)


def _kl(p, q):  # POT's nx.kl_div(p, q): sum p log(p / q + 1e-16), with 0 log(0 / 0) = 0 (POT: NaN)
    return (p * torch.log(p / q + 1e-16)).nan_to_num(0.0).sum()


def _log_pot(x, dtype):
    """POT's log(u + 1e-300) from log u, without overflow (-inf -> log(1e-300); float32: -inf)."""
    return torch.logaddexp(x, torch.log(torch.tensor(1e-300, dtype=dtype, device=x.device)))


class _Problem:
    """Arguments after POT's conventions, the op's solution and what the results need."""

    def __init__(self, a, b, M, reg, reg_m, method, reg_type, c, warmstart, numItermax, stopThr, verbose, log, kw):
        method = method.lower()
        if method not in _METHODS:
            raise ValueError("Unknown method '%s'." % method)
        if not isinstance(reg_type, str) or reg_type.lower() not in ("kl", "entropy"):
            raise ValueError(f"reg_type must be 'kl' or 'entropy', got {reg_type!r}")
        self.method, self.reg_type = method, reg_type.lower()
        self.reg = reg = check_reg(reg)
        self.r1, self.r2 = reg_m_pair(reg_m)
        if method == "sinkhorn_translation_invariant" and 0.0 in (self.r1, self.r2):
            raise ValueError("reg_m must be > 0 for method='sinkhorn_translation_invariant' (POT's divides by it)")
        backend, grad = kw.pop("backend", None), kw.pop("grad", "envelope")
        for k in _IGNORED_KWARGS:
            kw.pop(k, None)
        if kw:
            raise TypeError(f"unexpected keyword arguments {sorted(kw)}")
        if method == "sinkhorn_reg_scaling":
            warnings.warn("Method not implemented yet. Using classic Sinkhorn-Knopp", stacklevel=3)
        if c is not None:
            Converter(a, b, M, c)  # raises on numpy / torch mixes
        conv, a, b, M = prepare(a, b, M)
        self.conv, self.a, self.b, self.M = conv, a, b, M
        self.multi = b.dim() == 2
        n, m = M.shape
        if c is not None and (self.multi or self.reg_type == "entropy"):
            warnings.warn("If reg_type = entropy, then the matrix c is overwritten by the one matrix."
                          if not self.multi else "c is ignored with several histograms (as in POT)", stacklevel=3)
            c = None
        if self.multi and self.reg_type == "kl":
            warnings.warn("Reg_type not implemented yet. Use entropy.", stacklevel=3)
        self.c = None
        cost, a_s, b_s, kl_ref = M, a, b, self.reg_type == "kl" and not self.multi
        if c is not None:
            c = conv.to_torch(c)
            if M.dtype not in (torch.float32, torch.float64):
                raise TypeError(f"c (the reference measure) needs float32 or float64 inputs, got {M.dtype}")
            c = c.to(M.dtype)
            if tuple(c.shape) != (n, m):
                raise ValueError(f"c must have the shape of M {(n, m)}, got {tuple(c.shape)}")
            if not bool(torch.isfinite(c).all()) or bool((c < 0).any()):
                raise ValueError("c (the reference measure) must be finite and >= 0")
            cost, rows, cols = _fold_reference(M, c, reg)
            a_s, b_s = torch.where(rows, a, 0), torch.where(cols, b, 0)
            self.c, kl_ref = c, False
        self.kl_ref = kl_ref
        # every method iterates the same kernel; the stabilised one tests every 10th iteration, as POT
        self.every = 10 if method == "sinkhorn_stabilized" else 1
        opts = dict(problem=UNBALANCED, reg_m=(op_reg_m(self.r1, reg), op_reg_m(self.r2, reg)), kl_ref=kl_ref,
                    max_iter=int(numItermax), tol=float(stopThr), check_every=self.every, warn=False,
                    backend=backend, grad=grad, history=bool(log or verbose))
        lu0 = lv0 = None
        if warmstart is not None:
            lu0 = conv.to_torch(warmstart[0]).to(M.dtype)
            lv0 = conv.to_torch(warmstart[1]).to(M.dtype)
        if self.multi:
            k = b.shape[1]
            lu0 = None if lu0 is None else (lu0.expand(k, n) if lu0.dim() == 1 else lu0.T)
            lv0 = None if lv0 is None else (lv0.expand(k, m) if lv0.dim() == 1 else lv0.T)
            self.sol = entropic_ot(cost.expand(k, n, m).contiguous(), a_s.expand(k, n).contiguous(),
                                   b_s.T.contiguous(), reg=reg, log_u0=None if lu0 is None else lu0.contiguous(),
                                   log_v0=None if lv0 is None else lv0.contiguous(), **opts)
            self.hist = _merged_history(self.sol.err_history)
        else:
            self.sol = solve(a_s, b_s, cost, reg, log_u0=lu0, log_v0=lv0, **opts)
            self.hist = self.sol.err_history[0]
        if verbose:
            print_verbose(self.hist, self.every)
        if method == "sinkhorn_stabilized" and bool((self.sol.status == 1).any()):
            warnings.warn("Stabilized Unbalanced Sinkhorn did not converge." + "Try a larger entropy `reg` or a "
                          "lower mass `reg_m`." + "Or a larger absorption threshold `tau`.", stacklevel=3)

    def plan(self):
        return self.sol.plan if self.multi else self.sol.plan[0]

    def linear_cost(self):
        """<P, M> ((k,) or a 0-d tensor), carrying the envelope gradient of the objective
        (with ``grad='autodiff'``, the unrolled gradient of <P, M>, as POT)."""
        P = self.plan()
        if P.requires_grad:
            return (P * self.M).sum((-2, -1))
        with torch.no_grad():
            cost = (P * self.M).sum((-2, -1))
        value = self.sol.value if self.multi else self.sol.value[0]
        return cost + (value - value.detach())

    def log(self) -> dict:
        conv, sol = self.conv, self.sol
        stabilized = self.method == "sinkhorn_stabilized"
        lu, lv = (sol.log_u.T, sol.log_v.T) if self.multi else (sol.log_u[0], sol.log_v[0])
        if self.kl_ref:  # the op's potentials include log a, log b (its kernel has no c = a b^T)
            lu = torch.where(self.a > 0, lu - _safe_log(self.a), -math.inf)
            lv = torch.where(self.b > 0, lv - _safe_log(self.b), -math.inf)
        if not stabilized:  # POT's log(u + 1e-300); the stabilised solver reports log u itself
            lu, lv = _log_pot(lu, lu.dtype), _log_pot(lv, lv.dtype)
        lg = {"err": err_list(conv, self.hist), "logu": conv.out(lu), "logv": conv.out(lv)}
        if self.multi:
            return lg
        cost, tot = self.costs()
        lg["cost"], lg["total_cost"] = conv.out(cost), conv.out(tot)
        return lg

    def costs(self):
        """POT's log['cost'] and log['total_cost'] (KL without mass terms), differentiable like
        ``linear_cost``."""
        P, a, b, reg = self.plan(), self.a, self.b, self.reg
        with torch.enable_grad() if P.requires_grad else torch.no_grad():
            cost = (P * self.M).sum()
            ref = self.c if self.c is not None else (a[:, None] * b[None, :] if self.reg_type == "kl"
                                                     else torch.ones_like(P))
            tot = cost + reg * _kl(P, ref)
            if not math.isinf(self.r1):
                tot = tot + self.r1 * _kl(P.sum(1), a)
            if not math.isinf(self.r2):
                tot = tot + self.r2 * _kl(P.sum(0), b)
        if not P.requires_grad:
            carrier = self.sol.value[0] - self.sol.value[0].detach()
            cost, tot = cost + carrier, tot + carrier
        return cost, tot


def _merged_history(hist: torch.Tensor) -> torch.Tensor:
    """(B, H) per-problem criteria -> (H,): the largest of the problems still running at each check."""
    return torch.where(hist >= 0, hist, -1.0).amax(0)


def sinkhorn_unbalanced(a, b, M, reg, reg_m, method="sinkhorn", reg_type="kl", c=None, warmstart=None,
                        numItermax=1000, stopThr=1e-6, verbose=False, log=False, **kwargs):
    """Unbalanced entropic OT plan (n, m) between a (n,) and b (m,) for cost M (n, m), KL marginal
    penalties ``reg_m`` and reference ``c`` (default a b^T; 'entropy': ones). With b (m, k): the k
    linear costs (k,). ``log=True`` adds POT's log dict."""
    pb = _Problem(a, b, M, reg, reg_m, method, reg_type, c, warmstart, numItermax, stopThr, verbose, log, kwargs)
    out = pb.conv.out(pb.linear_cost() if pb.multi else pb.plan())
    return (out, pb.log()) if log else out


def sinkhorn_unbalanced2(a, b, M, reg, reg_m, method="sinkhorn", reg_type="kl", c=None, warmstart=None,
                         returnCost="linear", numItermax=1000, stopThr=1e-6, verbose=False, log=False, **kwargs):
    """Unbalanced OT loss: ``returnCost='linear'`` <P, M> or ``'total'`` (POT's total cost), a
    0-d value, or (k,) linear costs for b of shape (m, k). Envelope gradient of the objective."""
    if returnCost not in ("linear", "total"):
        raise ValueError("Unknown returnCost = {}".format(returnCost))
    pb = _Problem(a, b, M, reg, reg_m, method, reg_type, c, warmstart, numItermax, stopThr, verbose, log, kwargs)
    loss = pb.linear_cost() if pb.multi else pb.costs()[0 if returnCost == "linear" else 1]
    loss = pb.conv.out(loss)
    return (loss, pb.log()) if log else loss


def sinkhorn_knopp_unbalanced(a, b, M, reg, reg_m, reg_type="kl", c=None, warmstart=None, numItermax=1000,
                              stopThr=1e-6, verbose=False, log=False, **kwargs):
    """POT's generalised Sinkhorn-Knopp: :func:`sinkhorn_unbalanced` with method='sinkhorn'."""
    return sinkhorn_unbalanced(a, b, M, reg, reg_m, "sinkhorn", reg_type, c, warmstart, numItermax, stopThr,
                               verbose, log, **kwargs)


def sinkhorn_stabilized_unbalanced(a, b, M, reg, reg_m, reg_type="kl", c=None, warmstart=None, tau=1e5,
                                   numItermax=1000, stopThr=1e-6, verbose=False, log=False, **kwargs):
    """POT's stabilised variant: :func:`sinkhorn_unbalanced` with method='sinkhorn_stabilized'."""
    return sinkhorn_unbalanced(a, b, M, reg, reg_m, "sinkhorn_stabilized", reg_type, c, warmstart, numItermax,
                               stopThr, verbose, log, tau=tau, **kwargs)


def sinkhorn_unbalanced_translation_invariant(a, b, M, reg, reg_m, reg_type="kl", c=None, warmstart=None,
                                              numItermax=1000, stopThr=1e-6, verbose=False, log=False, **kwargs):
    """POT's translation-invariant Sinkhorn (same minimiser): method='sinkhorn_translation_invariant'."""
    return sinkhorn_unbalanced(a, b, M, reg, reg_m, "sinkhorn_translation_invariant", reg_type, c, warmstart,
                               numItermax, stopThr, verbose, log, **kwargs)
