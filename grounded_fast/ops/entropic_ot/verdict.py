"""What a solve of ``entropic_ot`` / ``entropic_ot_features`` may claim, and the warnings that say
what failed.

Rounding. Every quantity an iteration rounds is a log-domain value of magnitude at most
L = ``rounding_scale`` (1 + the largest |potential| + the largest |log weight|), so the plan's
entries are known to a relative ~eps L. The kernels stop a problem whose stop quantity is at most
``FLOOR_UNIT`` eps L x (its size factor) and no smaller than at the previous check (the rounding
floor, see csrc/ot/cpu/sinkhorn_cpu.cpp), so a tolerance below what rounding resolves stops where
the iterates stop changing.

Verdict. Every backend checks its returned plan before it reports (``verdict``, below;
the CPU kernel's twin is Solver::verdict_fails): a problem whose plan
is not finite, misses the constraint its last update enforces exactly, or reports convergence while
missing the others beyond its tolerance, gets status 2. ``failure_reasons`` turns those statuses
into words for the warning.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
from torch import Tensor

from .driver import rounding_scale
from .spec import BALANCED, PARTIAL, SolveSpec

# The feasibility verdict (every backend applies it to its returned plan; the CPU kernel's twin is
# Solver::verdict_fails in csrc/ot/cpu/sinkhorn_cpu.cpp, with the same constants). Each kind's last update
# enforces one constraint exactly (balanced: rows P 1 = a; partial: the mass sum P = m); the stop
# test bounds the others (balanced ||P^T 1 - b||_2 < tol; partial: rows <= a, columns <= b to about
# the log plan's change). In relative errors
#     balanced  e_exact = ||P 1 - a||_1 / |a|_1,  e_rest = ||P^T 1 - b||_1 / |b|_1
#     partial   e_exact = |sum P - m| / m,        e_rest = (||(P 1 - a)_+||_1 + ||(P^T 1 - b)_+||_1) / m
# a nonempty problem becomes a numerical failure (status 2) if its plan is not finite, if e_exact
# exceeds tau = min(VERDICT_UNIT eps L, MAX_ROUNDING) (L = rounding_scale), or if it reports
# convergence with e_rest above max(tau, the bound its tol implies: balanced 2 sqrt(m) tol / |b|_1,
# partial 2 tol). Converged plans measured in the property tests (tests/test_ot_feasibility.py) have
# e <= 4 eps L; MAX_ROUNDING caps the claim where the dtype cannot resolve the plan. Unbalanced
# problems have no hard constraint: only finiteness is checked.
VERDICT_UNIT = 32.0
MAX_ROUNDING = 1e-2

def feasibility(problem: int, lu, lv, w, a, b, mass, tol: float, r, c, total):
    """(e_exact, e_rest, tau, slack, L), each (B,): the verdict's errors, its rounding tolerance, the
    tolerance of e_rest (max(tau, the bound tol implies)) and rounding_scale, for the potentials
    lu (B,n), lv (B,m), w (B,) and the plan's marginals r (B,n), c (B,m), total (B,)."""
    ma, mb = a > 0, b > 0
    la = torch.where(ma, torch.log(torch.where(ma, a, 1)), 0)
    lb = torch.where(mb, torch.log(torch.where(mb, b, 1)), 0)
    L = rounding_scale(lu, lv, w, la, lb, ma, mb)
    tau = (VERDICT_UNIT * torch.finfo(a.dtype).eps * L).clamp_max(MAX_ROUNDING)
    if problem == BALANCED:
        sa, sb = a.sum(1), b.sum(1)
        e_exact = (r - a).abs().sum(1) / sa
        e_rest = (c - b).abs().sum(1) / sb
        slack = torch.maximum(tau, 2 * math.sqrt(b.shape[1]) * tol / sb)  # ||.||_1 <= sqrt(m) ||.||_2
    elif problem == PARTIAL:
        e_exact = (total - mass).abs() / mass
        e_rest = ((r - a).clamp_min(0).sum(1) + (c - b).clamp_min(0).sum(1)) / mass
        slack = tau.clamp_min(2 * tol)
    else:
        e_exact = e_rest = torch.zeros_like(tau)
        slack = tau
    return e_exact, e_rest, tau, slack, L


def verdict_failures(feas, status, nonempty, c, total):
    """(not_finite, exact_missed, rest_missed), (B,) bools: why the verdict fails each problem, from
    ``feasibility``'s output ``feas`` and the plan's column sums c (B,m) and total (B,) (problems the
    kernel already failed, status 2, are left out)."""
    e_exact, e_rest, tau, slack, _ = feas
    live = nonempty & (status != 2)
    finite = torch.isfinite(total) & torch.isfinite(c.sum(1))  # P >= 0: a NaN or inf entry shows in the sums
    not_finite = live & ~finite
    exact_missed = live & finite & (e_exact > tau)
    rest_missed = live & finite & ~exact_missed & (status == 0) & (e_rest > slack)
    return not_finite, exact_missed, rest_missed


def verdict(spec: SolveSpec, status, lu, lv, w, a, b, mass, nonempty, r, c, total):
    """The status (B,) int64 after the feasibility verdict (above): 2 where it fails. No host read.
    lu (B,n), lv (B,m), w (B,) the potentials; r (B,n), c (B,m), total (B,) the plan's marginals."""
    fails = verdict_failures(feasibility(spec.problem, lu, lv, w, a, b, mass, spec.tol, r, c, total), status,
                             nonempty, c, total)
    return torch.where(fails[0] | fails[1] | fails[2], torch.full_like(status, 2), status)


FLOOR_UNIT = 1.0  # the stop floor in units of eps x rounding_scale x the stop quantity's size


def floor_unit(dtype: torch.dtype) -> float:
    """The relative rounding unit handed to the kernels as ``floor`` (compute dtype ``dtype``)."""
    return FLOOR_UNIT * torch.finfo(dtype).eps


def failure_reasons(spec: SolveSpec, status: Tensor, lu: Tensor, lv: Tensor, w: Tensor, a: Tensor, b: Tensor, mass,
                    nonempty: Tensor, marginals: Callable[[], tuple[Tensor, Tensor, Tensor]]) -> list[str]:
    """One line per reason for the problems with status 2 (B,): the feasibility verdict's findings on
    the returned plan (``marginals()`` gives its P 1 (B,n), P^T 1 (B,m), sum P (B,)), and otherwise
    iterates that stopped being finite. a (B,n), b (B,m), mass (B,) in the compute dtype."""
    failed = status == 2
    r, c, total = marginals()
    problem = spec.problem
    feas = feasibility(problem, lu, lv, w, a, b, mass, spec.tol, r, c, total)
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
