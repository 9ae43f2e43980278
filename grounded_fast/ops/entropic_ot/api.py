"""The public function of the entropic OT op: :func:`entropic_ot` (input handling, backend choice,
the warning of the feasibility verdict) and its result, :class:`OTSolution`."""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ..._backend import choose_backend
from ...reference.entropic_ot import entropic_ot_reference
from .backend_cuda import small_smem_bytes
from .driver import nonempty_problems, plan_marginals
from .inputs import (cast_back, check_problems, coerce_mass, kernel_mass, one_problem, solve_spec,
                     warm_start)
from .op import entropic_ot_op
from .spec import BALANCED, PARTIAL
from .verdict import failure_reasons, report

GRAD_MODES = ("envelope", "autodiff", "detach")


class OTSolution(NamedTuple):
    """Result of :func:`entropic_ot` (and :func:`entropic_ot_features`, whose ``plan`` is None unless
    ``return_plan=True``); plan = exp(log_u_i + log_v_j + log_scale - C_ij / reg)."""

    plan: Optional[Tensor]  # (B, n, m)
    log_u: Tensor         # (B, n)  -inf where a == 0
    log_v: Tensor         # (B, m)  -inf where b == 0
    log_scale: Tensor     # (B,)    partial: global log-scale; 0 otherwise
    value: Tensor         # (B,)    regularised objective (differentiable, envelope)
    value_linear: Tensor  # (B,)    <P, C>
    n_iter: Tensor        # (B,)    int64: iterations performed
    status: Tensor        # (B,)    int64: 0 converged, 1 iteration limit, 2 numerical failure
    err_history: Tensor   # (B, H)  stop criterion at each check (-1 after the stop)


def entropic_ot(C: Tensor, a: Tensor, b: Tensor, *, reg: float, problem: int = BALANCED,
                mass=None, reg_m: tuple[float, float] = (math.inf, math.inf),
                kl_ref: bool = True, max_iter: int = 1000, tol: Optional[float] = None, check_every: int = 10,
                log_u0: Optional[Tensor] = None, log_v0: Optional[Tensor] = None,
                backend: Optional[str] = None, grad: str = "envelope", warn: bool = True,
                domain: str = "auto", history: bool = True, validate_inputs: bool = True,
                stop_at_floor: bool = True) -> OTSolution:
    """Solve a batch of entropic OT problems on given costs.

    C (B,n,m) cost; a (B,n), b (B,m) nonnegative weights (zeros = padding); reg > 0. A single
    problem C (n,m), a (n,), b (m,) gives unbatched outputs.
    problem: BALANCED, UNBALANCED (``reg_m`` = (rho_a, rho_b), ``kl_ref``: reference a b^T, else 1)
    or PARTIAL (``mass``: transported mass, a number or a (B,) tensor, default min(|a|,|b|)).
    ``check_every`` = 0 runs exactly ``max_iter`` iterations (benchmarks); otherwise the stop test
    (see csrc/ot/cpu/sinkhorn_cpu.cpp) runs every ``check_every`` iterations against ``tol``
    (default 1e-9 in float64, 1e-6 in lower precision, where 1e-9 is below rounding noise):
    balanced ||P^T 1 - b||_2 < tol, unbalanced POT's relative change of the scalings < tol,
    partial the change of the log plan ||log P - log P_prev||_F <= tol. With ``stop_at_floor``
    a problem also stops once its stop quantity reaches the rounding floor (grounded_fast.ops.
    entropic_ot.verdict), so a tol below what the dtype resolves stops where the iterates stop changing.
    Every backend checks the returned plan's feasibility (``verdict.verdict``): a
    problem reported converged has its marginals met (balanced) or its mass m with rows <= a and
    columns <= b (partial) to its tolerance or rounding; one that is not, or whose plan is not
    finite, gets status 2, and a RuntimeWarning says what failed (``verdict.failure_reasons``).
    ``log_u0``, ``log_v0`` (B,n), (B,m): warm start (balanced / unbalanced; finite where the
    weights are positive).
    ``domain``: 'auto' (CPU kernel: stabilised scaling-domain iterations on an absorbed kernel,
    switching to log-domain iterations where they would underflow) or 'log' (log-sum-exp passes
    only); both
    compute the same iterates up to rounding. ``history=False`` skips ``err_history`` (an empty
    (B, 0) tensor); otherwise it holds one value per check, max_iter / check_every + 1, at most
    HISTORY_CAP of them (the last slot then holds the last check), -1 after the stop.
    float16 / bfloat16 inputs are solved in float32 (plan and objective returned in the input dtype);
    the Triton kernels read such a C as it is, half the bytes per pass, the other backends a copy.
    Returns an :class:`OTSolution`; see grounded_fast/ops/entropic_ot/op.py for gradients.
    """
    if not isinstance(C, Tensor):
        raise TypeError(f"C must be a torch.Tensor, got {type(C).__name__}")
    if C.dim() not in (2, 3):
        raise ValueError(f"C must be (B, n, m) or (n, m), got shape {tuple(C.shape)}")
    if C.dim() == 2:  # one problem: solve it as a batch of one
        for name, t in (("a", a), ("b", b)):
            if isinstance(t, Tensor) and t.dim() != 1:
                raise ValueError(f"C is a single (n, m) problem, so {name} must be 1-d; got shape "
                                 f"{tuple(t.shape)} (or pass C as (B, n, m))")
        sol = entropic_ot(C[None], one_problem(a), one_problem(b), reg=reg, problem=problem,
                          mass=mass if not isinstance(mass, Tensor) else mass.reshape(1), reg_m=reg_m,
                          kl_ref=kl_ref, max_iter=max_iter, tol=tol, check_every=check_every,
                          log_u0=one_problem(log_u0), log_v0=one_problem(log_v0), backend=backend, grad=grad,
                          warn=warn, domain=domain, history=history, validate_inputs=validate_inputs,
                          stop_at_floor=stop_at_floor)
        return OTSolution(*(t[0] for t in sol))
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
    orig_dtype = C.dtype
    dt = torch.float32 if orig_dtype in (torch.float16, torch.bfloat16) else orig_dtype
    if problem == PARTIAL:
        mass = coerce_mass(mass, C.shape[0], C.dtype, C.device)
    if validate_inputs:
        check_problems(C, a, b, mass if problem == PARTIAL else None)
    spec = solve_spec(problem, reg, reg_m, kl_ref, max_iter, tol, check_every, domain, history, stop_at_floor, dt)
    which = None if grad == "autodiff" else choose_backend(C.device, backend, gpu=_gpu_preference(C))
    if orig_dtype != dt:
        # float32 potentials and weights; the Triton kernels read a half-precision C as it is (half
        # the bytes per pass), the other backends get a float32 copy
        a, b = a.float(), b.float()
        if which != "triton":
            C = C.float()
    mass = kernel_mass(problem, a, b, mass)
    lu0 = warm_start("log_u0", log_u0, a, problem)
    lv0 = warm_start("log_v0", log_v0, b, problem)
    tensors = (C, a, b, mass.detach(), lu0.detach(), lv0.detach())
    if grad == "autodiff":
        out = entropic_ot_reference(*tensors, spec)
    elif grad == "detach":
        with torch.no_grad():
            out = entropic_ot_op(*tensors, *spec.op_args(), which)
    else:
        out = entropic_ot_op(*tensors, *spec.op_args(), which)
    sol = OTSolution(*out)
    if not torch.compiler.is_compiling():  # (the status already holds the verdict: every backend applies it)
        report(sol.status, lambda: failure_reasons(spec, sol.status, sol.log_u, sol.log_v, sol.log_scale, a, b, mass,
                                                   nonempty_problems(a, b, mass, problem),
                                                   lambda: plan_marginals(sol.plan.to(a.dtype))),
               spec.reg, warn and check_every > 0)  # check_every=0: exactly max_iter
    return cast_back(sol, orig_dtype)


def _gpu_preference(C: Tensor) -> tuple[str, str]:
    """The automatic GPU backend by regime: problems whose cost tile fits the CUDA persistent
    kernel's shared memory go to CUDA, streamed ones to Triton (each was faster in its regime on an
    H100: docs/PERFORMANCE.md, "Backend choice by regime"). The shared
    memory bound is the smallest opt-in limit of the supported GPUs (99 KiB), not a device query,
    so the choice stays traceable by torch.compile."""
    if C.is_cuda and small_smem_bytes(C.shape[1], C.shape[2], C.dtype) > 99 * 1024:
        return ("triton", "cuda")
    return ("cuda", "triton")


