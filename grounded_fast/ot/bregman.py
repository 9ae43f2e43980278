"""Drop-in for ``ot.bregman``: entropic OT by Sinkhorn iterations, in the log domain.

Same names, arguments, defaults, return values and ``log`` keys as POT 0.9.7. Deliberate
differences: every ``method`` runs the log-domain kernel (``'sinkhorn'`` reports exp-domain
scalings ``u, v`` in the gauge of POT's ``sinkhorn_knopp``, so it matches where POT's does not
underflow, and stays finite where POT's returns NaN); gradients are envelope gradients by default
(``grad='autodiff'`` keyword: unrolled, like POT); ``backend=`` picks the kernel.
"""
from __future__ import annotations

import math

import torch

from ..ops import BALANCED, entropic_ot
from ._common import check_reg, envelope_loss, err_list, prepare, print_verbose, solve, warn_not_converged
from ._pot import delegating as _delegating

__all__ = ["sinkhorn", "sinkhorn2", "sinkhorn_log", "sinkhorn_knopp"]
__getattr__, __dir__ = _delegating(__name__)  # other POT names: the installed POT's (see _pot)

_METHODS = ("sinkhorn", "sinkhorn_log", "sinkhorn_stabilized", "sinkhorn_epsilon_scaling")


def _sinkhorn_core(a, b, M, reg, method, numItermax, stopThr, verbose, log, warn, warmstart, kw):
    if method.lower() not in _METHODS:
        raise ValueError("Unknown method '%s'." % method)
    reg = check_reg(reg)
    conv, a, b, M = prepare(a, b, M)
    n, m = M.shape
    knopp = method.lower() == "sinkhorn"
    if warmstart is not None:
        lu0, lv0 = conv.to_torch(warmstart[0]).to(M.dtype), conv.to_torch(warmstart[1]).to(M.dtype)
    else:
        # sinkhorn_knopp starts from u = 1/n; sinkhorn_log from log u = 0 (same plan, other gauge).
        lu0 = torch.full((n,), -math.log(n) if knopp else 0.0, dtype=M.dtype, device=M.device)
        lv0 = torch.zeros(m, dtype=M.dtype, device=M.device)
    opts = dict(problem=BALANCED, max_iter=int(numItermax), tol=float(stopThr), check_every=10,
                warn=False, backend=kw.pop("backend", None), grad=kw.pop("grad", "envelope"),
                history=bool(log or verbose))
    if kw:
        raise TypeError(f"unexpected keyword arguments {sorted(kw)}")
    if b.dim() == 2:  # several target histograms: a batch sharing M, returns the losses
        k = b.shape[1]
        bt = b.T.contiguous()
        if lu0.dim() == 1:
            lu0, lv0 = lu0.expand(k, n), lv0.expand(k, m)
        else:
            lu0, lv0 = lu0.T, lv0.T
        sol = entropic_ot(M.expand(k, n, m).contiguous(), a.expand(k, n).contiguous(), bt, reg=reg,
                          log_u0=lu0.contiguous(), log_v0=lv0.contiguous(), **opts)
        warn_not_converged(sol, warn)
        res = envelope_loss(sol)
        if log:
            lg = {"log_u": conv.out(sol.log_u.T), "log_v": conv.out(sol.log_v.T)}
            lg["u"], lg["v"] = conv.out(torch.exp(sol.log_u.T)), conv.out(torch.exp(sol.log_v.T))
            return conv.out(res), lg
        return conv.out(res)
    sol = solve(a, b, M, reg, log_u0=lu0, log_v0=lv0, **opts)
    if verbose:
        print_verbose(sol.err_history[0], 10)
    warn_not_converged(sol, warn)
    plan = sol.plan[0]
    if not log:
        return conv.out(plan), None, sol, conv
    lg = {"err": err_list(conv, sol.err_history[0]), "niter": int(sol.n_iter[0]) - 1}
    lu, lv = sol.log_u[0], sol.log_v[0]
    if not knopp:
        lg["log_u"], lg["log_v"] = conv.out(lu), conv.out(lv)
    lg["u"], lg["v"] = conv.out(torch.exp(lu)), conv.out(torch.exp(lv))
    return conv.out(plan), lg, sol, conv


def sinkhorn(a, b, M, reg, method="sinkhorn", numItermax=1000, stopThr=1e-9, verbose=False, log=False,
             warn=True, warmstart=None, **kwargs):
    """Entropic OT plan (n, m) between histograms a (n,) and b (m,) for cost M (n, m), like
    ``ot.sinkhorn``; with b of shape (m, k) returns the k losses. ``log=True`` adds the log dict."""
    out = _sinkhorn_core(a, b, M, reg, method, numItermax, stopThr, verbose, log, warn, warmstart, kwargs)
    if not isinstance(out, tuple) or len(out) == 2:
        return out
    plan, lg, _, _ = out
    return (plan, lg) if log else plan


def sinkhorn2(a, b, M, reg, method="sinkhorn", numItermax=1000, stopThr=1e-9, verbose=False, log=False,
              warn=False, warmstart=None, **kwargs):
    """Entropic OT loss <P, M> (the linear cost at the entropic plan), like ``ot.sinkhorn2``.
    Its gradient is the envelope gradient of the regularised objective (see grounded_fast.ops)."""
    out = _sinkhorn_core(a, b, M, reg, method, numItermax, stopThr, verbose, log, warn, warmstart, kwargs)
    if not isinstance(out, tuple) or len(out) == 2:
        return out
    _, lg, sol, conv = out
    loss = envelope_loss(sol)[0]
    loss = loss if conv.torch_in else conv.out(loss)
    return (loss, lg) if log else loss


def sinkhorn_log(a, b, M, reg, numItermax=1000, stopThr=1e-9, verbose=False, log=False, warn=True,
                 warmstart=None, **kwargs):
    """Log-domain Sinkhorn, like ``ot.bregman.sinkhorn_log``."""
    return sinkhorn(a, b, M, reg, "sinkhorn_log", numItermax, stopThr, verbose, log, warn, warmstart, **kwargs)


def sinkhorn_knopp(a, b, M, reg, numItermax=1000, stopThr=1e-9, verbose=False, log=False, warn=True,
                   warmstart=None, **kwargs):
    """Like ``ot.bregman.sinkhorn_knopp`` (computed in the log domain: no underflow)."""
    return sinkhorn(a, b, M, reg, "sinkhorn", numItermax, stopThr, verbose, log, warn, warmstart, **kwargs)
