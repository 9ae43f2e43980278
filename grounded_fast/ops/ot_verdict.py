"""What a solve of ``entropic_ot`` / ``entropic_ot_features`` may claim, and the warnings that say
what failed.

Rounding. Every quantity an iteration rounds is a log-domain value of magnitude at most
L = ``rounding_scale`` (1 + the largest |potential| + the largest |log weight|), so the plan's
entries are known to a relative ~eps L. The kernels stop a problem whose stop quantity is at most
``FLOOR_UNIT`` eps L x (its size factor) and no smaller than at the previous check (the rounding
floor, see csrc/ot/cpu/sinkhorn_cpu.cpp), so a tolerance below what rounding resolves stops where
the iterates stop changing.

Verdict. Every backend checks its returned plan before it reports (grounded_fast.reference.
entropic_ot.verdict, defined there; the CPU kernel's twin is Solver::verdict_fails): a problem whose plan
is not finite, misses the constraint its last update enforces exactly, or reports convergence while
missing the others beyond its tolerance, gets status 2. ``failure_reasons`` turns those statuses
into words for the warning.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import Tensor

from ..reference.entropic_ot import BALANCED, PARTIAL, feasibility, verdict_failures

FLOOR_UNIT = 1.0  # the stop floor in units of eps x rounding_scale x the stop quantity's size


def floor_unit(dtype: torch.dtype) -> float:
    """The relative rounding unit handed to the kernels as ``floor`` (compute dtype ``dtype``)."""
    return FLOOR_UNIT * torch.finfo(dtype).eps


def failure_reasons(problem: int, status: Tensor, lu: Tensor, lv: Tensor, w: Tensor, a: Tensor, b: Tensor, mass,
                    tol: float, nonempty: Tensor,
                    marginals: Callable[[], tuple[Tensor, Tensor, Tensor]]) -> list[str]:
    """One line per reason for the problems with status 2 (B,): the feasibility verdict's findings on
    the returned plan (``marginals()`` gives its P 1 (B,n), P^T 1 (B,m), sum P (B,)), and otherwise
    iterates that stopped being finite. a (B,n), b (B,m), mass (B,) in the compute dtype."""
    failed = status == 2
    r, c, total = marginals()
    feas = feasibility(problem, lu, lv, w, a, b, mass, tol, r, c, total)
    e_exact, e_rest, tau, _, L = feas
    # the verdict as if the kernel had not applied it: which of the failed problems it explains
    as_run = torch.where(failed, torch.zeros_like(status), status)
    not_finite, exact, rest = (f & failed for f in verdict_failures(feas, as_run, nonempty, c, total))
    kernel = failed & ~(not_finite | exact | rest)
    flags = torch.stack([kernel.any(), not_finite.any(), exact.any(), rest.any()]).tolist()  # one host read
    dtype = str(a.dtype).replace("torch.", "")
    what = {BALANCED: "row sums a", PARTIAL: "transported mass m"}.get(problem, "")

    def idx(mask):
        return torch.nonzero(mask).flatten().tolist()[:8]

    reasons = []
    if flags[0]:
        reasons.append(f"problems {idx(kernel)}: the iterates stopped being finite and the last finite one was "
                       "returned")
    if flags[1]:
        reasons.append(f"problems {idx(not_finite)}: the plan is not finite")
    if flags[2]:
        reasons.append(f"problems {idx(exact)}: the plan misses the {what} by up to {float(e_exact[exact].max()):.3g} "
                       f"(relative), more than {dtype} rounding explains ({float(tau[exact].max()):.3g}; the "
                       f"log-domain potentials reach {float(L[exact].max()):.3g})")
    if flags[3]:
        reasons.append(f"problems {idx(rest)}: the iterates stopped changing (to {dtype} rounding) with the plan "
                       f"still violating the marginals by {float(e_rest[rest].max()):.3g} (relative)")
    return reasons


def report(status: Tensor, reasons: Callable[[], list[str]], reg: float, warn: bool) -> None:
    """Warn about numerical failures (status 2: RuntimeWarning, always, with ``reasons()``) and, with
    ``warn``, about problems that hit max_iter (status 1). status (B,) int64."""
    failed, unconverged = torch.stack([(status == 2).any(), (status == 1).any()]).tolist()  # one host read
    if failed:
        warnings.warn("entropic_ot: numerical failure in " + "; ".join(reasons()) +
                      f". reg = {reg:.3g} is too small for this cost scale and dtype: increase reg, "
                      "rescale the cost or use float64", RuntimeWarning, stacklevel=3)
    if warn and unconverged:
        bad = torch.nonzero(status == 1).flatten().tolist()[:8]
        warnings.warn(f"entropic_ot: problems {bad} did not converge within max_iter; increase "
                      "max_iter or reg", RuntimeWarning, stacklevel=3)
