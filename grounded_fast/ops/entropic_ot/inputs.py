"""Input handling shared by ``entropic_ot`` and ``entropic_ot_features``: checks whose errors name
the argument, the partial mass, the solve specification from the public arguments, the warm start,
unbatched input and the cast back to the input dtype. Value checks read the data (one
device-to-host copy for all of them) and are skipped under ``torch.compile``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .spec import (DOMAINS, HISTORY_CAP, PARTIAL, PROBLEMS, UNBALANCED, SolveSpec, default_tol,
                   mass_rtol)
from .verdict import floor_unit


def check_tensor(name: str, t, dims: tuple[int, ...]) -> Tensor:
    """``t`` if it is a floating-point tensor with one of ``dims`` dimensions; else TypeError /
    ValueError naming ``name``."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in dims:
        raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dimensions, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    return t


def check_problems(C: Tensor, a: Tensor, b: Tensor, mass=None) -> None:
    """Raise ValueError/TypeError naming the offending argument: C (B,n,m) costs, a (B,n), b (B,m)
    weights, mass (B,) partial OT's transported mass or None."""
    check_tensor("C", C, (3,))
    check_tensor("a", a, (2,))
    check_tensor("b", b, (2,))
    B, n, m = C.shape
    if B == 0:
        raise ValueError("empty batch: C has batch size 0")
    if n == 0 or m == 0:
        raise ValueError(f"C must have at least one row and one column, got shape {tuple(C.shape)}")
    if tuple(a.shape) != (B, n):
        raise ValueError(f"a must have shape {(B, n)} to match C {tuple(C.shape)}, got {tuple(a.shape)}")
    if tuple(b.shape) != (B, m):
        raise ValueError(f"b must have shape {(B, m)} to match C {tuple(C.shape)}, got {tuple(b.shape)}")
    for name, t in (("a", a), ("b", b)):
        if t.device != C.device:
            raise ValueError(f"{name} is on {t.device} but C is on {C.device}")
        if t.dtype != C.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but C has {C.dtype}")
    if torch.compiler.is_compiling():
        return  # value checks are data-dependent: under torch.compile only shapes/dtypes are checked
    with torch.no_grad():
        # A NaN or inf anywhere makes the sum non-finite; the elementwise test (a temporary of
        # C's size) only runs to rule out a false alarm from overflow of the sum itself.
        def bad_cost():
            if not torch.isfinite(C).all():
                raise ValueError("C (the cost) contains NaN or inf")
        raise_first([(torch.isfinite(C.sum()), bad_cost)] + weight_checks(a, b, mass, C.dtype))


def raise_first(checks) -> None:
    """checks: [(ok (0-dim bool tensor), fail ())]: calls ``fail`` of the first check not ok, in order
    (it raises, or returns on a false alarm and the next one is tried). All flags are read in one
    device-to-host copy: on a GPU each read is a synchronisation."""
    if not checks:
        return
    oks = torch.stack([ok for ok, _ in checks]).tolist()
    for ok, (_, fail) in zip(oks, checks):
        if not ok:
            fail()


def raises(msg: str):
    """A ``fail`` for raise_first: raises ValueError(msg)."""
    def fail():
        raise ValueError(msg)
    return fail


def weight_checks(a: Tensor, b: Tensor, mass, dtype: torch.dtype) -> list:
    """The value checks of check_weights, as raise_first's (ok, fail) pairs."""
    checks = []
    for name, t in (("a", a), ("b", b)):  # NaN >= 0 is False, but NaN is reported first
        checks += [(torch.isfinite(t).all(), raises(f"{name} contains NaN or inf")),
                   ((t >= 0).all(), raises(f"{name} has negative weights"))]
    if mass is not None:
        bad_mass = raises("m (transported mass) must be finite and >= 0")
        checks += [(torch.isfinite(mass).all(), bad_mass), ((mass >= 0).all(), bad_mass)]
        cap = torch.minimum(a.sum(1), b.sum(1))
        tol = mass_rtol(dtype)

        def too_much():
            raise ValueError(f"m must be <= min(|a|_1, |b|_1) = {cap.min().item():.6g} for every problem, "
                             f"got {mass.max().item():.6g}")
        checks.append(((mass <= cap * (1 + tol)).all(), too_much))
    return checks


def check_weights(a: Tensor, b: Tensor, mass, dtype: torch.dtype) -> None:
    """Value checks of the weights a (B,n), b (B,m) and the partial mass (B,) or None (``dtype``:
    the problem's dtype, for the tolerance of mass <= min(|a|, |b|)); errors name the argument."""
    if torch.compiler.is_compiling():
        return
    with torch.no_grad():
        raise_first(weight_checks(a, b, mass, dtype))


def coerce_mass(mass, batch: int, dtype: torch.dtype, device) -> Optional[Tensor]:
    """Partial OT's mass argument as a (batch,) tensor of ``dtype`` (None stays None): a number, a
    0-d tensor (broadcast) or a (batch,) tensor; TypeError / ValueError otherwise."""
    if mass is None:
        return None
    if not isinstance(mass, Tensor):
        if not isinstance(mass, (int, float)) or isinstance(mass, bool):
            raise TypeError(f"mass must be a number or a (B,) tensor, got {type(mass).__name__}")
        mass = torch.tensor(float(mass), dtype=dtype, device=device)
    mass = mass.to(dtype)
    if mass.dim() == 0:
        mass = mass.expand(batch)
    if tuple(mass.shape) != (batch,):
        raise ValueError(f"mass must be a scalar or have shape ({batch},), got {tuple(mass.shape)}")
    return mass


def kernel_mass(problem: int, a: Tensor, b: Tensor, mass: Optional[Tensor]) -> Tensor:
    """The (B,) mass handed to the kernels: partial OT's ``mass`` capped at min(|a|, |b|) (default:
    the cap), zeros for the other problems. a (B,n), b (B,m) in the compute dtype."""
    if problem != PARTIAL:
        return torch.zeros(a.shape[0], dtype=a.dtype, device=a.device)
    cap = torch.minimum(a.sum(1), b.sum(1))
    return cap if mass is None else torch.minimum(mass.to(a.dtype), cap)


def solve_spec(problem: int, reg, reg_m, kl_ref: bool, max_iter: int, tol: Optional[float], check_every: int,
               domain: str, history: bool, stop_at_floor: bool, dtype: torch.dtype) -> SolveSpec:
    """The :class:`SolveSpec` of the public functions' arguments (``dtype``: the compute dtype, for
    the default tolerance and the rounding floor); errors name the argument."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be 'auto' or 'log', got {domain!r}")
    if problem not in PROBLEMS:
        raise ValueError(f"unknown problem kind {problem!r}")
    rho_a, rho_b = (float(reg_m[0]), float(reg_m[1])) if problem == UNBALANCED else (math.inf, math.inf)
    return SolveSpec(int(problem), reg, rho_a, rho_b, bool(kl_ref), int(max_iter),
                     float(default_tol(dtype) if tol is None else tol), int(check_every), DOMAINS[domain],
                     HISTORY_CAP if history else 0, floor_unit(dtype) if stop_at_floor else 0.0)


def one_problem(t):
    """``t`` with a batch axis of one in front (non-tensors and 0-d tensors as they are)."""
    return t[None] if isinstance(t, Tensor) and t.dim() >= 1 else t


def cast_back(sol, dtype: torch.dtype):
    """An :class:`OTSolution` solved in a wider compute dtype with its plan and objectives in the
    input ``dtype`` (the potentials stay in the compute dtype)."""
    if dtype == sol.value.dtype:
        return sol
    return sol._replace(plan=None if sol.plan is None else sol.plan.to(dtype), value=sol.value.to(dtype),
                        value_linear=sol.value_linear.to(dtype))


def warm_start(name: str, t: Optional[Tensor], w: Tensor, problem: int) -> Tensor:
    """The initial log-scalings (B,n) / (B,m) for weights ``w`` of that shape: zeros when ``t`` is None;
    otherwise ``t`` checked (shape, finite wherever the weight is positive) and cast to w's dtype.
    Partial OT always starts from POT's initial plan, so it takes no warm start."""
    if t is None:
        return torch.zeros_like(w)
    if problem == PARTIAL:
        raise ValueError(f"{name}: partial OT takes no warm start (it starts from POT's initial plan)")
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(w.shape):
        raise ValueError(f"{name} must have shape {tuple(w.shape)}, got {tuple(t.shape)}")
    t = t.to(w.dtype)
    if not torch.compiler.is_compiling() and not bool((torch.isfinite(t) | (w == 0)).all()):
        raise ValueError(f"{name} (the warm start) contains NaN or inf where the weights are positive")
    return t

