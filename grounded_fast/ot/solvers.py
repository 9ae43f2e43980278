"""Drop-in for POT's top-level ``ot.solve`` (POT 0.9.7, ``ot/solvers/_linear.py``).

The entropic cases POT solves by Sinkhorn run on this package's kernels, with POT's defaults
(``max_iter`` 1000, ``tol`` 1e-9), stop tests, warnings and formulas:

* balanced, ``reg > 0``, ``reg_type`` 'KL' or 'entropy': POT's ``sinkhorn_log`` (same iterates
  from log u = 0, so the plan, ``potentials`` (log u, log v), ``value`` (<P, M> + reg KL(P | a b^T)
  or + reg sum P log P, POT's epsilons included) and ``value_linear`` agree with POT's);
* KL-unbalanced (``unbalanced`` not None, ``unbalanced_type`` 'KL'), ``reg > 0``, ``reg_type``
  'KL', no custom ``c``: POT's ``sinkhorn_knopp_unbalanced`` (:mod:`grounded_fast.ot.unbalanced`);
  ``potentials_init`` is its warm start (log u, log v); value = POT's total cost.

Every other case (exact OT, ``reg`` None or 0, L2 / TV / tuple regularisers, unbalanced entropy
or a custom ``c``, inputs that are not numpy arrays or torch tensors, ``grad`` values POT does not
name) goes to POT's own ``ot.solve``, imported then (without POT: ImportError, ``pip install pot``).

Returns an :class:`~grounded_fast.ot.utils.OTResult` with POT's attributes; as POT's for these
cases, ``status`` and ``log`` are None. Gradients (torch inputs) as POT's: balanced ``grad``
'autodiff' (POT's default: iterations unrolled, the reference solver), 'envelope' (value only:
dV/dM = P, dV/da, dV/db = reg (log u - mean), reg (log v - mean)), 'detach', 'last_step' (one
differentiable iteration after the converged ones); KL-unbalanced ignores ``grad`` and unrolls
when an input requires a gradient, as POT does.

Deliberate differences: ``reg < 0`` (or NaN / inf) raises ValueError in the cases above (POT runs
Sinkhorn with it). Extra keyword: ``backend=`` picks the kernel for the cases solved here.
"""
from __future__ import annotations

import importlib
import numbers

import numpy as np
import torch

from ..ops import BALANCED, entropic_ot
from . import unbalanced as _unbalanced
from ._common import check_reg, prepare, print_verbose, warn_not_converged
from .utils import OTResult
from ._pot import delegating as _delegating

__all__ = ["solve"]
__getattr__, __dir__ = _delegating(__name__)  # other POT names: the installed POT's (see _pot)

_VALID_METHODS = ["sinkhorn", "sinkhorn_log", "mm", "lbfgsb"]  # POT's lst_valid_methods_solve
_GRADS = ("autodiff", "envelope", "detach", "last_step")


def _pot():
    try:
        return importlib.import_module("ot")
    except ImportError as e:
        raise ImportError("grounded_fast.ot.solve hands this case (not an entropic Sinkhorn case) to POT's "
                          "ot.solve, and POT is not installed: pip install pot") from e


def _arrays(M, a, b) -> bool:
    """M (n, m), a (n,) / None, b (m,) / None, all numpy or all torch."""
    xs = [x for x in (M, a, b) if x is not None]
    if not (all(isinstance(x, np.ndarray) for x in xs) or all(isinstance(x, torch.Tensor) for x in xs)):
        return False
    return M.ndim == 2 and all(x is None or x.ndim == 1 for x in (a, b))


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) or (isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim == 0)


def _penalty_pair(reg_m) -> bool:
    """What POT's get_parameter_pair reads as one or two numbers."""
    if isinstance(reg_m, numbers.Real):
        return True
    try:
        return len(reg_m) in (1, 2) and all(_is_number(x) for x in reg_m)
    except TypeError:
        return False


def _case(M, a, b, reg, c, reg_type, unbalanced, unbalanced_type, grad):
    """'balanced', 'unbalanced' (the cases solved here) or None (POT's)."""
    if reg is None or not _is_number(reg) or float(reg) == 0 or grad not in _GRADS or not _arrays(M, a, b):
        return None
    if not isinstance(reg_type, str):
        return None
    if unbalanced is None:
        return "balanced" if reg_type.lower() in ("kl", "entropy") else None
    if (isinstance(unbalanced_type, str) and reg_type.lower() == "kl" and unbalanced_type.lower() == "kl"
            and c is None and _penalty_pair(unbalanced)):
        return "unbalanced"
    return None


def _needs_grad(*xs) -> bool:
    return torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in xs)


def _balanced(M, a, b, reg, reg_type, max_iter, tol, verbose, grad, backend):
    """POT's balanced entropic branch (sinkhorn_log) on the kernel."""
    reg = check_reg(reg)
    conv, a, b, M = prepare([] if a is None else a, [] if b is None else b, M)
    max_iter = 1000 if max_iter is None else int(max_iter)
    tol = 1e-9 if tol is None else float(tol)
    if grad == "last_step":
        if max_iter == 0:
            raise ValueError("The maximum number of iterations must be greater than 0 when using grad=last_step.")
        max_iter -= 1
    mode = {"autodiff": "autodiff" if _needs_grad(M, a, b) else "detach", "envelope": "envelope"}.get(grad, "detach")
    sol = entropic_ot(M, a, b, reg=reg, problem=BALANCED, max_iter=max_iter, tol=tol, check_every=10, warn=False,
                      grad=mode, history=bool(verbose), backend=backend)
    if verbose:
        print_verbose(sol.err_history, 10)
    warn_not_converged(sol, True)
    plan, lu, lv = sol.plan, sol.log_u, sol.log_v
    # POT detaches M, a, b for every grad but 'autodiff'
    Md, ad, bd = (M, a, b) if grad == "autodiff" else (M.detach(), a.detach(), b.detach())
    if grad == "last_step":  # one more iteration on the inputs that carry the gradient (POT's: both
        # halves from the converged potentials)
        lu, lv = (torch.log(a) - torch.logsumexp(-M / reg + lv[None, :], 1),
                  torch.log(b) - torch.logsumexp(-M / reg + lu[:, None], 0))
        plan = torch.exp(-M / reg + lu[:, None] + lv[None, :])
    value_linear = (Md * plan).sum()
    if reg_type.lower() == "entropy":
        value = value_linear + reg * (plan * torch.log(plan + 1e-16)).sum()
    else:
        if (ad == 0).any() or (bd == 0).any():  # POT's guard (a no-op when min(a) = 0, as in POT)
            ad, bd = ad + 1e-15 * ad.min(), bd + 1e-15 * bd.min()
            print("Warning: a or b has 0 mass, adding small mass to avoid NaN in KL divergence.")
        q = ad[:, None] * bd[None, :] + 1e-15
        value = value_linear + reg * (plan * torch.log(plan / q + 1e-16)).sum()
    if mode == "envelope":  # POT's value at the plan, with the envelope gradient of the objective
        value = value.detach() + (sol.value - sol.value.detach())
    out = conv.out
    return OTResult(potentials=(out(lu), out(lv)), value=out(value), value_linear=out(value_linear),
                    plan=out(plan))


def _unbalanced_kl(M, a, b, reg, unbalanced, max_iter, tol, verbose, potentials_init, backend):
    """POT's KL-unbalanced entropic branch (sinkhorn_knopp_unbalanced, reference a b^T)."""
    mode = "autodiff" if _needs_grad(M, a, b) else "envelope"
    pb = _unbalanced._Problem(
        [] if a is None else a, [] if b is None else b, M, reg, unbalanced, "sinkhorn", "kl", None, potentials_init,
        1000 if max_iter is None else max_iter, 1e-9 if tol is None else tol, verbose, False,
        {"backend": backend, "grad": mode})
    lg = pb.log()  # POT's logu, logv, in the user's array type
    value_linear, value = pb.costs()
    out = pb.conv.out
    return OTResult(potentials=(lg["logu"], lg["logv"]), value=out(value), value_linear=out(value_linear),
                    plan=out(pb.plan()))


def solve(M, a=None, b=None, reg=None, c=None, reg_type="KL", unbalanced=None, unbalanced_type="KL", method=None,
          n_threads=1, max_iter=None, plan_init=None, potentials_init=None, tol=None, verbose=False,
          grad="autodiff", backend=None):
    """Like POT's ``ot.solve``: OT between a (n,) and b (m,) (uniform if None) for cost M (n, m).

    Entropic balanced and KL-unbalanced cases run here (see the module docstring), the others in
    POT. Returns an :class:`OTResult` (value, value_linear, plan (n, m), potentials ((n,), (m,)),
    marginals, ...).
    """
    if method is not None and method not in _VALID_METHODS:
        raise ValueError("Unknown method={} for solve, must be in {}".format(method, _VALID_METHODS))
    case = _case(M, a, b, reg, c, reg_type, unbalanced, unbalanced_type, grad)
    if case == "balanced":  # POT ignores method, c, plan_init and potentials_init here
        return _balanced(M, a, b, reg, reg_type, max_iter, tol, verbose, grad, backend)
    if case == "unbalanced":
        return _unbalanced_kl(M, a, b, reg, unbalanced, max_iter, tol, verbose, potentials_init, backend)
    return _pot().solve(M, a=a, b=b, reg=reg, c=c, reg_type=reg_type, unbalanced=unbalanced,
                        unbalanced_type=unbalanced_type, method=method, n_threads=n_threads, max_iter=max_iter,
                        plan_init=plan_init, potentials_init=potentials_init, tol=tol, verbose=verbose, grad=grad)
