"""Drop-in for ``ot.batch.solve_batch``: B independent balanced entropic problems at once.

Differences from POT, deliberate: each problem stops on its own marginal error (POT stops the whole
batch on the largest); 'proximal' (unregularised) is not provided; the kernel never materialises
B x n x m temporaries. ``grad``: 'envelope' (default; gradient of ``value`` only), 'detach',
'autodiff' (unrolled reference) or 'last_step' (converged potentials, then one differentiable
iteration, as POT).
"""
from __future__ import annotations

import torch

from ..ops import BALANCED, entropic_ot
from ..reference.entropic_ot import entropic_ot_reference
from ._convert import Converter
from ._pot import delegating as _delegating
from .utils import OTResult

__all__ = ["solve_batch", "OTResult"]
__getattr__, __dir__ = _delegating(__name__)  # other POT names: the installed POT's (see _pot)


def solve_batch(M, reg=None, a=None, b=None, max_iter=1000, tol=1e-5, method="auto", inner_iter=1,
                inner_reg=1e-3, reg_type="entropy", grad="envelope", backend=None):
    """Solve B entropic OT problems. M (B, n, m); a (B, n), b (B, m) (uniform if None).

    Returns an :class:`OTResult` with value (B,) (``<P,M> + reg * sum P log P`` for
    ``reg_type='entropy'``, ``+ reg * KL(P | a b^T)`` for 'kl'), value_linear (B,), plan (B, n, m),
    potentials (log_u (B, n), log_v (B, m)) and log {'n_iter'}.
    """
    if method not in ("auto", "sinkhorn", "log_sinkhorn", "proximal"):
        raise ValueError(f"Unknown method: {method}.")
    if grad not in ("envelope", "detach", "autodiff", "last_step"):
        raise ValueError(f"Unknown grad: {grad}.")
    if reg_type not in ("entropy", "kl"):
        raise ValueError(f"Unknown reg_type: {reg_type}.")
    if method == "proximal" or reg is None or reg == 0:
        raise NotImplementedError("unregularised (proximal) batch OT is not provided; pass reg > 0")
    if reg < 0:
        raise ValueError("Sinkhorn methods require a strictly positive reg parameter.")
    conv = Converter(M, a, b)
    M = conv.to_torch(M)
    if M.dim() != 3:
        raise ValueError(f"M must be (B, n, m), got shape {tuple(M.shape)}")
    B, n, m = M.shape
    a = torch.full((B, n), 1.0 / n, dtype=M.dtype, device=M.device) if a is None else conv.to_torch(a)
    b = torch.full((B, m), 1.0 / m, dtype=M.dtype, device=M.device) if b is None else conv.to_torch(b)
    mode = {"last_step": "detach"}.get(grad, grad)
    sol = entropic_ot(M, a, b, reg=float(reg), problem=BALANCED, max_iter=int(max_iter), tol=float(tol),
                      check_every=10, warn=False, grad=mode, backend=backend, history=False)
    plan, lu, lv = sol.plan, sol.log_u, sol.log_v
    if grad == "last_step":
        out = entropic_ot_reference(M, a, b, torch.zeros(B, dtype=M.dtype, device=M.device), lu, lv, BALANCED,
                                    float(reg), float("inf"), float("inf"), True, 1, -1.0, 0)
        plan, lu, lv = out[0], out[1], out[2]
    if grad in ("envelope", "detach"):
        value_linear = sol.value_linear if grad == "detach" else sol.value_linear.detach()
        value = sol.value
    else:
        value_linear = (plan * M).sum((1, 2))
        value = value_linear + reg * torch.where(plan > 0, plan * torch.log(torch.where(plan > 0, plan, 1)), 0).sum((1, 2))
    if reg_type == "kl":
        # KL(P | ab^T) = sum P log P - <r, log a> - <c, log b> for the marginals r, c of P.
        with torch.no_grad() if grad in ("envelope", "detach") else torch.enable_grad():
            la = torch.where(a > 0, torch.log(torch.where(a > 0, a, 1)), 0)
            lb = torch.where(b > 0, torch.log(torch.where(b > 0, b, 1)), 0)
            shift = (plan.sum(2) * la).sum(1) + (plan.sum(1) * lb).sum(1)
        value = value - reg * shift
    return OTResult(value=conv.out(value), value_linear=conv.out(value_linear), plan=conv.out(plan),
                    potentials=(conv.out(lu), conv.out(lv)), log={"n_iter": conv.out(sol.n_iter)},
                    status=conv.out(sol.status))
