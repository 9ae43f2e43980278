"""Drop-in for ``ot.unbalanced.sinkhorn_unbalanced`` / ``sinkhorn_unbalanced2`` (KL penalties).

Same iterates as POT's ``sinkhorn_knopp_unbalanced`` computed in the log domain (every ``method``
runs it). ``reg_type`` 'kl' (reference a b^T) or 'entropy' (reference 1); a custom reference
matrix ``c`` is not supported. ``log`` keys: 'err', 'logu', 'logv', 'cost', 'total_cost' (POT's
formulas, KL without mass terms).
"""
from __future__ import annotations

import math

import torch

from ..ops import UNBALANCED
from ._common import check_reg, err_list, prepare, print_verbose, solve
from ._pot import delegating as _delegating

__all__ = ["sinkhorn_unbalanced", "sinkhorn_unbalanced2"]
__getattr__, __dir__ = _delegating(__name__)  # other POT names: the installed POT's (see _pot)

_METHODS = ("sinkhorn", "sinkhorn_stabilized", "sinkhorn_reg_scaling", "sinkhorn_translation_invariant")


def _pair(reg_m):
    if isinstance(reg_m, (tuple, list)):
        r1, r2 = reg_m
    elif hasattr(reg_m, "__len__") and len(reg_m) == 2:
        r1, r2 = reg_m[0], reg_m[1]
    else:
        r1 = r2 = reg_m
    r1, r2 = float(r1), float(r2)
    if not (r1 > 0 and r2 > 0):
        raise ValueError(f"reg_m must be > 0, got {reg_m!r}")
    return r1, r2


def _kl(p, q):  # POT's nx.kl_div(p, q): sum p log(p / q + 1e-16)
    return (p * torch.log(p / q + 1e-16)).nan_to_num(0.0).sum()


def _solve(a, b, M, reg, reg_m, reg_type, c, warmstart, numItermax, stopThr, verbose, method, kw, log=True):
    if method.lower() not in _METHODS:
        raise ValueError("Unknown method '%s'." % method)
    if reg_type.lower() not in ("kl", "entropy"):
        raise ValueError(f"reg_type must be 'kl' or 'entropy', got {reg_type!r}")
    if c is not None:
        raise NotImplementedError("a custom reference measure c is not supported; use reg_type='kl' or 'entropy'")
    reg = check_reg(reg)
    r1, r2 = _pair(reg_m)
    conv, a, b, M = prepare(a, b, M)
    if b.dim() != 1:
        raise ValueError("b must be 1-d for unbalanced OT")
    lu0 = lv0 = None
    if warmstart is not None:
        lu0 = conv.to_torch(warmstart[0]).to(M.dtype)[None]
        lv0 = conv.to_torch(warmstart[1]).to(M.dtype)[None]
    sol = solve(a, b, M, reg, problem=UNBALANCED, reg_m=(r1, r2), kl_ref=reg_type.lower() == "kl",
                max_iter=int(numItermax), tol=float(stopThr), check_every=1, log_u0=lu0, log_v0=lv0,
                warn=False, backend=kw.pop("backend", None), grad=kw.pop("grad", "envelope"),
                history=bool(log or verbose))
    if kw:
        raise TypeError(f"unexpected keyword arguments {sorted(kw)}")
    if verbose:
        print_verbose(sol.err_history[0], 1)
    return conv, a, b, M, reg, r1, r2, sol


def pot_scalings(sol, a, b, reg_type):
    """POT's log['logu'], log['logv'] (n,), (m,) from the op's solution of one problem."""
    kl = reg_type.lower() == "kl"
    sa = torch.log(a) if kl else torch.zeros_like(a)
    sb = torch.log(b) if kl else torch.zeros_like(b)
    logu = torch.log(torch.exp(sol.log_u[0] - sa).nan_to_num(0.0) + 1e-300)
    logv = torch.log(torch.exp(sol.log_v[0] - sb).nan_to_num(0.0) + 1e-300)
    return logu, logv


def pot_costs(plan, M, a, b, reg, r1, r2, reg_type):
    """POT's log['cost'] <P, M> and log['total_cost'] for plan (n, m) (differentiable)."""
    kl = reg_type.lower() == "kl"
    ref = a[:, None] * b[None, :] if kl else torch.ones_like(plan)
    cost = (plan * M).sum()
    total = cost + reg * _kl(plan, ref)
    if not math.isinf(r1):
        total = total + r1 * _kl(plan.sum(1), a)
    if not math.isinf(r2):
        total = total + r2 * _kl(plan.sum(0), b)
    return cost, total


def _log(conv, a, b, M, reg, r1, r2, reg_type, sol):
    logu, logv = pot_scalings(sol, a, b, reg_type)
    with torch.no_grad():
        cost, total = pot_costs(sol.plan[0], M, a, b, reg, r1, r2, reg_type)
    return {"err": err_list(conv, sol.err_history[0]), "logu": conv.out(logu), "logv": conv.out(logv),
            "cost": conv.out(cost), "total_cost": conv.out(total)}


def sinkhorn_unbalanced(a, b, M, reg, reg_m, method="sinkhorn", reg_type="kl", c=None, warmstart=None,
                        numItermax=1000, stopThr=1e-6, verbose=False, log=False, **kwargs):
    """Unbalanced entropic OT plan (n, m) with KL marginal penalties ``reg_m`` (scalar or pair)."""
    conv, a, b, M, reg, r1, r2, sol = _solve(a, b, M, reg, reg_m, reg_type, c, warmstart, numItermax, stopThr,
                                             verbose, method, kwargs, log)
    plan = conv.out(sol.plan[0])
    return (plan, _log(conv, a, b, M, reg, r1, r2, reg_type, sol)) if log else plan


def sinkhorn_unbalanced2(a, b, M, reg, reg_m, method="sinkhorn", reg_type="kl", c=None, warmstart=None,
                         returnCost="linear", numItermax=1000, stopThr=1e-6, verbose=False, log=False, **kwargs):
    """Unbalanced OT loss: ``returnCost='linear'`` <P, M> (envelope gradient of the objective) or
    ``'total'`` (POT's total cost)."""
    if returnCost not in ("linear", "total"):
        raise ValueError(f"returnCost must be 'linear' or 'total', got {returnCost!r}")
    conv, a, b, M, reg, r1, r2, sol = _solve(a, b, M, reg, reg_m, reg_type, c, warmstart, numItermax, stopThr,
                                             verbose, method, kwargs, log)
    lg = _log(conv, a, b, M, reg, r1, r2, reg_type, sol)
    if returnCost == "linear":
        loss = sol.value_linear[0] + (sol.value[0] - sol.value[0].detach())
    else:
        loss = lg["total_cost"] if not conv.torch_in else lg["total_cost"] + (sol.value[0] - sol.value[0].detach())
    loss = conv.out(loss)
    return (loss, lg) if log else loss
