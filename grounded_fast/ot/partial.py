"""Drop-in for ``ot.partial.entropic_partial_wasserstein`` and ``..._logscale`` (entropic partial OT,
transported mass ``m``).

Same fixed point and iterates as POT's Dykstra / Bregman projections (Benamou et al. 2015), with
O(n + m) state and in the log domain: finite at small ``reg`` where POT's ``method='sinkhorn'``
returns NaN. Both ``method`` values run the same stable kernel and stop as POT's log-domain solver
does: on the change of the log plan, ``log['err']`` = ||log P - log P_prev||_F every 10 iterations
(also for ``method='sinkhorn'``, whose POT counterpart measures ||P - P_prev||_F: that change
reads 0 once the plan's small entries underflow, long before the plan is feasible). POT's default
``stopThr=1e-100`` asks for a change no float can resolve: a problem also stops at the rounding
floor of its change (``log['stopped_at_floor']`` says whether it did), where POT's solver finds its plan
unchanged bit for bit. A plan returned without a warning is feasible: rows <= a, columns <= b,
total mass m (see grounded_fast.ops.entropic_ot.verdict); one that is not comes with a UserWarning (iteration
limit; POT's solver says nothing) or a RuntimeWarning (numerical failure, naming what failed).

Deliberate differences from POT: zero weights give exact zero rows / columns (POT: NaN); ``reg``
must be > 0; ``m`` may exceed min(|a|_1, |b|_1) by rounding (relative 1e-6 in float32, 1e-12 in
float64, as the op). Gradients (torch inputs): ``log['partial_w_dist']`` = <P, M> carries the
envelope gradient of the regularised objective (dM = P, da, db = the dual potentials);
``grad='autodiff'`` unrolls the iterations instead (POT's gradient of <P, M>, O(iterations) memory).
Extension POT does not have: a batch of problems, M (B, n, m) with a (B, n), b (B, m) (uniform if
empty) and m a number or (B,); zero weights pad.
"""
from __future__ import annotations

import warnings

import torch

from ..ops import PARTIAL, entropic_ot
from ._common import check_reg, envelope_loss, err_list, print_verbose, transported_mass
from ._convert import Converter
from ._pot import delegating as _delegating

__all__ = ["entropic_partial_wasserstein", "entropic_partial_wasserstein_logscale"]
__getattr__, __dir__ = _delegating(__name__)  # other POT names: the installed POT's (see _pot)

_CHECK_EVERY = 10  # POT's cadence


def _weights(conv: Converter, w, shape: tuple, M: torch.Tensor, name: str) -> torch.Tensor:
    """The user's weights as a tensor of ``shape`` in M's dtype (uniform when None or empty)."""
    if w is None or (hasattr(w, "__len__") and len(w) == 0):
        return torch.full(shape, 1.0 / shape[-1], dtype=M.dtype, device=M.device)
    t = conv.to_torch(w).to(device=M.device, dtype=M.dtype)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} to match M {tuple(M.shape)}, got {tuple(t.shape)}")
    return t


def entropic_partial_wasserstein(a, b, M, reg, m=None, method="sinkhorn", numItermax=1000, stopThr=1e-100,
                                 verbose=False, log=False, **kwargs):
    """Entropic partial OT plan transporting mass ``m`` (default min(|a|_1, |b|_1)) between a (n,) and
    b (m,) under cost M (n, m), like POT's; or a batch: M (B, n, m), a (B, n), b (B, m), m a number or
    (B,), plans (B, n, m). ``log=True`` adds {'err', 'partial_w_dist', 'stopped_at_floor'} (batched:
    'err' a list per problem, 'partial_w_dist' (B,), 'stopped_at_floor' a list of bools). Keywords
    ``backend=``, ``grad=``."""
    if not isinstance(method, str) or method.lower() not in ("sinkhorn", "sinkhorn_log"):
        raise ValueError("Unknown method '%s'." % method)
    reg = check_reg(reg)
    opts = dict(backend=kwargs.pop("backend", None), grad=kwargs.pop("grad", "envelope"))
    if kwargs:
        raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
    conv = Converter(a, b, M)
    M = conv.to_torch(M)
    if not isinstance(M, torch.Tensor) or M.dim() not in (2, 3):
        raise ValueError(f"M must be an (n, m) cost matrix or a batch (B, n, m), got shape "
                         f"{tuple(getattr(M, 'shape', ()))}")
    if M.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        M = M.double()
    batched = M.dim() == 3
    a = _weights(conv, a, tuple(M.shape[:-1]), M, "a")
    b = _weights(conv, b, tuple(M.shape[:-2]) + (M.shape[-1],), M, "b")
    if not batched:
        for name, w in (("a", a), ("b", b)):
            if bool((w.sum() == 0).all()):
                raise ValueError(f"{name} (the {'source' if name == 'a' else 'target'} weights) sums to 0")
    Mb, ab, bb = (M, a, b) if batched else (M[None], a[None], b[None])
    mass = transported_mass(m, ab, bb)
    sol = entropic_ot(Mb, ab, bb, reg=reg, problem=PARTIAL, mass=mass, max_iter=int(numItermax),
                      tol=float(stopThr), check_every=_CHECK_EVERY, warn=False, history=bool(log or verbose),
                      **opts)
    if verbose:
        for h in sol.err_history:
            print_verbose(h, _CHECK_EVERY)
    if bool((sol.status == 1).any()):  # (numerical failures warn in the op, saying what failed)
        bad = torch.nonzero(sol.status == 1).flatten().tolist()[:8]
        warnings.warn(f"Partial Sinkhorn did not converge within numItermax = {numItermax}"
                      + (f" (problems {bad})" if batched else "") + ": the plan may violate a, b or m; increase "
                      "numItermax or reg", UserWarning, stacklevel=2)
    plan = sol.plan if batched else sol.plan[0]
    if not log:
        return conv.out(plan)
    dist = envelope_loss(sol)
    errs = [err_list(conv, h) for h in sol.err_history]
    floor = [bool(len(e) and float(e[-1]) > float(stopThr)) and int(s) == 0 for e, s in zip(errs, sol.status)]
    if batched:
        lg = {"err": errs, "partial_w_dist": conv.out(dist), "stopped_at_floor": floor}
    else:
        lg = {"err": errs[0], "partial_w_dist": conv.out(dist[0]), "stopped_at_floor": floor[0]}
    return conv.out(plan), lg


def entropic_partial_wasserstein_logscale(a, b, M, reg, m=None, numItermax=1000, stopThr=1e-100,
                                          verbose=False, log=False, **kwargs):
    """POT's log-domain variant: :func:`entropic_partial_wasserstein` with ``method='sinkhorn_log'``
    (the same solver here; same arguments, shapes and log)."""
    return entropic_partial_wasserstein(a, b, M, reg, m, "sinkhorn_log", numItermax, stopThr, verbose, log, **kwargs)
