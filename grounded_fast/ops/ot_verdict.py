"""What a solve of ``entropic_ot`` / ``entropic_ot_features`` may claim: the rounding floor handed to
the kernels, the feasibility verdict on the returned plan, and the warnings.

Rounding. Every quantity an iteration rounds is a log-domain value of magnitude at most
L = ``rounding_scale`` (1 + the largest |potential| + the largest |log weight|), so the plan's
entries are known to a relative ~eps L. The kernels stop a problem whose stop quantity is at most
``FLOOR_UNIT`` eps L x (its size factor) and no smaller than at the previous check (the rounding
floor, see csrc/ot/cpu/sinkhorn_cpu.cpp), so a tolerance below what rounding resolves stops where
the iterates stop changing.

Verdict. Each kind's last update enforces one constraint exactly (balanced: the rows P 1 = a;
partial: the mass sum P = m); the stop test bounds the others (balanced: ||P^T 1 - b||_2 < tol;
partial: rows <= a, columns <= b, to about the log-plan change). With relative errors
    balanced  e_exact = ||P 1 - a||_1 / |a|_1,       e_rest = ||P^T 1 - b||_1 / |b|_1
    partial   e_exact = |sum P - m| / m,             e_rest = (||(P 1 - a)_+||_1 + ||(P^T 1 - b)_+||_1) / m
a problem is a numerical failure (status 2) if its plan is not finite, if e_exact exceeds
tau = min(VERDICT_UNIT eps L, MAX_ROUNDING) whatever its status, or if it reports convergence with
e_rest above max(tau, the bound its tolerance implies). tau was measured against converged plans
(property tests, tests/test_ot_feasibility.py): e <= 4 eps L; MAX_ROUNDING caps the claim where
the dtype cannot resolve the plan (e.g. float32 at C / reg of 1e5 and more).
Unbalanced problems have no hard constraint: only finiteness is checked.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Optional

import torch
from torch import Tensor

from ..reference.entropic_ot import BALANCED, PARTIAL, rounding_scale

FLOOR_UNIT = 1.0      # the stop floor in units of eps x rounding_scale x the stop quantity's size
VERDICT_UNIT = 32.0   # feasibility slack in units of eps x rounding_scale
MAX_ROUNDING = 1e-2   # a plan is never called feasible with more relative error than this

NUMERICAL = 2


def floor_unit(dtype: torch.dtype) -> float:
    """The relative rounding unit handed to the kernels as ``floor`` (compute dtype ``dtype``)."""
    return FLOOR_UNIT * torch.finfo(dtype).eps


def _logs(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, torch.log(torch.where(mask, x, 1)), 0)


def verdict(problem: int, status: Tensor, lu: Tensor, lv: Tensor, w: Tensor, a: Tensor, b: Tensor,
            mass: Optional[Tensor], tol: float, nonempty: Tensor,
            marginals: Callable[[], tuple[Tensor, Tensor, Tensor, Tensor]]) -> tuple[Tensor, list[str]]:
    """The status (B,) after the feasibility verdict of the module docstring, and the reasons of the
    problems it turned into numerical failures (one line per reason).

    status (B,) int64 from the kernel; lu (B,n), lv (B,m), w (B,) the returned potentials; a (B,n),
    b (B,m), mass (B,) (partial) in the compute dtype; nonempty (B,) bool; ``marginals()`` returns
    (P 1 (B,n), P^T 1 (B,m), sum P (B,), finite (B,) bool) of the returned plan.
    """
    r, c, total, finite = marginals()
    dt = a.dtype
    ma, mb = a > 0, b > 0
    L = rounding_scale(lu, lv, w, _logs(a, ma), _logs(b, mb), ma, mb)
    tau = (VERDICT_UNIT * torch.finfo(dt).eps * L).clamp_max(MAX_ROUNDING)
    if problem == BALANCED:
        sa, sb = a.sum(1), b.sum(1)
        e_exact = (r - a).abs().sum(1) / sa
        e_rest = (c - b).abs().sum(1) / sb
        implied = 2 * math.sqrt(b.shape[1]) * tol / sb  # ||.||_1 <= sqrt(m) ||.||_2
        what = "row sums a"
    elif problem == PARTIAL:
        e_exact = (total - mass).abs() / mass
        e_rest = ((r - a).clamp_min(0).sum(1) + (c - b).clamp_min(0).sum(1)) / mass
        implied = torch.full_like(tau, 2 * tol)
        what = "transported mass m"
    else:
        e_exact = e_rest = torch.zeros_like(tau)
        implied = tau
        what = ""
    kernel_failed = status == NUMERICAL
    bad_value = nonempty & ~finite & ~kernel_failed
    bad_exact = nonempty & finite & (e_exact > tau)
    bad_rest = nonempty & finite & ~bad_exact & (status == 0) & (e_rest > torch.maximum(tau, implied))
    flags = torch.stack([kernel_failed.any(), bad_value.any(), bad_exact.any(), bad_rest.any()]).tolist()
    if not any(flags):  # (one host read above)
        return status, []
    reasons = []
    dtype = str(dt).replace("torch.", "")

    def idx(mask):
        return torch.nonzero(mask).flatten().tolist()[:8]

    if flags[0]:
        reasons.append(f"problems {idx(kernel_failed)}: the iterates stopped being finite and the last finite "
                       "one was returned")
    if flags[1]:
        reasons.append(f"problems {idx(bad_value)}: the plan is not finite")
    if flags[2]:
        worst = float(e_exact[bad_exact].max())
        reasons.append(f"problems {idx(bad_exact)}: the plan misses the {what} by up to {worst:.3g} (relative), "
                       f"more than {dtype} rounding explains ({float(tau[bad_exact].max()):.3g}; the log-domain "
                       f"potentials reach {float(L[bad_exact].max()):.3g})")
    if flags[3]:
        worst = float(e_rest[bad_rest].max())
        reasons.append(f"problems {idx(bad_rest)}: the iterates stopped changing (to {dtype} rounding) with the "
                       f"plan still violating the marginals by {worst:.3g} (relative)")
    status = torch.where(bad_value | bad_exact | bad_rest, torch.full_like(status, NUMERICAL), status)
    return status, reasons


def dense_marginals(plan: Tensor, dt: torch.dtype) -> Callable[[], tuple[Tensor, Tensor, Tensor, Tensor]]:
    """``verdict``'s ``marginals`` for a materialised plan (B,n,m), summed in the compute dtype."""
    def marginals():
        P = plan.detach().to(dt)
        r, c = P.sum(2), P.sum(1)
        total = r.sum(1)
        return r, c, total, torch.isfinite(total) & torch.isfinite(r).all(1) & torch.isfinite(c).all(1)
    return marginals


def report(status: Tensor, reasons: list[str], reg: float, warn: bool) -> None:
    """Warn about numerical failures (RuntimeWarning, always: ``reasons`` from ``verdict``) and,
    with ``warn``, about problems that hit max_iter (status (B,) int64)."""
    if reasons:
        warnings.warn("entropic_ot: numerical failure in " + "; ".join(reasons) +
                      f". reg = {reg:.3g} is too small for this cost scale and dtype: increase reg, "
                      "rescale the cost or use float64", RuntimeWarning, stacklevel=3)
    if warn and bool((status == 1).any()):
        bad = torch.nonzero(status == 1).flatten().tolist()[:8]
        warnings.warn(f"entropic_ot: problems {bad} did not converge within max_iter; increase "
                      "max_iter or reg", RuntimeWarning, stacklevel=3)
