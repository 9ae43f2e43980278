"""Drop-in for ``ot.partial.entropic_partial_wasserstein`` (entropic partial OT, mass ``m``).

Same fixed point and iterates as POT's Dykstra/Bregman projections (Benamou et al. 2015), with
O(n + m) state and in the log domain: finite at small ``reg`` where POT's ``method='sinkhorn'``
returns NaN. Both ``method`` values run the same stable kernel. Zero weights give exact zero
rows / columns (POT returns NaN there).
"""
from __future__ import annotations

import torch

from ..ops import PARTIAL
from ._common import check_reg, err_list, prepare, print_verbose, solve
from ._pot import delegating as _delegating

__all__ = ["entropic_partial_wasserstein", "entropic_partial_wasserstein_logscale"]
__getattr__, __dir__ = _delegating(__name__)  # other POT names: the installed POT's (see _pot)


def entropic_partial_wasserstein(a, b, M, reg, m=None, method="sinkhorn", numItermax=1000, stopThr=1e-100,
                                 verbose=False, log=False, **kwargs):
    """Entropic partial OT plan (n, m) transporting mass ``m`` (default min(|a|, |b|)) between
    a (n,) and b (m,) under cost M (n, m). ``log=True`` adds {'err', 'partial_w_dist'}."""
    if method.lower() not in ("sinkhorn", "sinkhorn_log"):
        raise ValueError("Unknown method '%s'." % method)
    reg = check_reg(reg)
    conv, a, b, M = prepare(a, b, M)
    if b.dim() != 1:
        raise ValueError("b must be 1-d for partial OT")
    cap = torch.minimum(a.sum(), b.sum())
    if m is None:
        mass = cap
    else:
        mass = torch.as_tensor(float(m) if not isinstance(m, torch.Tensor) else m, dtype=M.dtype, device=M.device)
        if mass < 0:
            raise ValueError("Problem infeasible. Parameter m should be greater than 0.")
        if mass > cap:
            raise ValueError("Problem infeasible. Parameter m should lower or equal than min(|a|_1, |b|_1).")
    opts = dict(backend=kwargs.pop("backend", None), grad=kwargs.pop("grad", "envelope"))
    if kwargs:
        raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
    sol = solve(a, b, M, reg, problem=PARTIAL, mass=mass.reshape(1), max_iter=int(numItermax),
                tol=float(stopThr), check_every=10, warn=False, history=bool(log or verbose), **opts)
    if verbose:
        print_verbose(sol.err_history[0], 10)
    plan = sol.plan[0]
    if not log:
        return conv.out(plan)
    lg = {"err": err_list(conv, sol.err_history[0]), "partial_w_dist": conv.out(sol.value_linear[0])}
    return conv.out(plan), lg


def entropic_partial_wasserstein_logscale(a, b, M, reg, m=None, numItermax=1000, stopThr=1e-100,
                                          verbose=False, log=False, **kwargs):
    """Same as :func:`entropic_partial_wasserstein` (POT's log-domain variant)."""
    return entropic_partial_wasserstein(a, b, M, reg, m, "sinkhorn_log", numItermax, stopThr, verbose, log, **kwargs)
