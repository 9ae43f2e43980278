"""The batched entropic OT op ``grounded_fast::entropic_ot`` (balanced, unbalanced KL, partial).

Two registered ops share one schema: ``grounded_fast::entropic_ot`` (C++/OpenMP, schema in
csrc/bindings.cpp) and ``grounded_fast::entropic_ot_torch`` (the pure-PyTorch reference, any
device). Both get the same fake implementation and the same autograd formula.

Gradients (``grad='envelope'``, the default). The loop runs without autograd; only ``value``, the
regularised objective V at the returned plan P, is differentiable, through the envelope theorem:
    dV/dC = P
    balanced:   dV/da = reg * (log_u - mean(log_u)),  dV/db likewise (centred dual potentials);
    partial:    dV/da = reg * log_u (<= 0: minus the multiplier of P1 <= a), dV/db = reg * log_v;
    unbalanced: V = <P,C> + reg KL(P|ref) + rho_a KL(P1|a) + rho_b KL(P^T1|b) (generalised KL,
                ref = a b^T or 1), dV/da = reg (|b| - r/a) [ref = ab^T only] + rho_a (1 - r/a).
Zero-weight (masked) entries get zero gradient. The plan, potentials and ``value_linear`` are
returned as non-differentiable outputs. ``grad='autodiff'`` instead unrolls the reference solver
under autograd (exact gradient of every output, as POT's default, at O(iterations) memory).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .._backend import choose_backend
from .cuda_ot import small_smem_bytes
from .ot_verdict import failure_reasons, floor_unit, report
from ..reference.entropic_ot import (BALANCED, HISTORY_CAP, PARTIAL, UNBALANCED, entropic_ot_reference,
                                     history_length, nonempty_problems, plan_marginals)

_CPU_OP = "grounded_fast::entropic_ot"
_TORCH_OP = "grounded_fast::entropic_ot_torch"
_TRITON_OP = "grounded_fast::entropic_ot_triton"
_CUDA_OP = "grounded_fast::entropic_ot_cuda"
GRAD_MODES = ("envelope", "autodiff", "detach")
_Outputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]  # the ops' nine outputs


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


@torch.library.custom_op(_TORCH_OP, mutates_args=())
def _entropic_ot_torch(C: Tensor, a: Tensor, b: Tensor, mass: Tensor, log_u0: Tensor, log_v0: Tensor,
                       problem: int, reg: float, reg_m_a: float, reg_m_b: float, kl_ref: bool,
                       max_iter: int, tol: float, check_every: int, domain: int = 0, history: int = -1,
                       floor: float = 0.0) -> _Outputs:
    with torch.no_grad():
        out = entropic_ot_reference(C, a, b, mass, log_u0, log_v0, problem, reg, reg_m_a, reg_m_b,
                                    kl_ref, max_iter, tol, check_every, domain, history, floor)
    return tuple(t.clone() for t in out)


@torch.library.custom_op(_TRITON_OP, mutates_args=())
def _entropic_ot_triton(C: Tensor, a: Tensor, b: Tensor, mass: Tensor, log_u0: Tensor, log_v0: Tensor,
                        problem: int, reg: float, reg_m_a: float, reg_m_b: float, kl_ref: bool,
                        max_iter: int, tol: float, check_every: int, domain: int = 0, history: int = -1,
                        floor: float = 0.0) -> _Outputs:
    """Triton kernels (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1); see
    csrc/ot/triton/entropic_ot.py for the small (persistent) and streaming regimes."""
    from ..triton_kernels.ot.entropic_ot import entropic_ot_triton
    with torch.no_grad():
        out = entropic_ot_triton(C, a, b, mass, log_u0, log_v0, problem, reg, reg_m_a, reg_m_b, kl_ref,
                                 max_iter, tol, check_every, domain, history, floor)
    return tuple(t.clone() for t in out)


@torch.library.custom_op(_CUDA_OP, mutates_args=())
def _entropic_ot_cuda(C: Tensor, a: Tensor, b: Tensor, mass: Tensor, log_u0: Tensor, log_v0: Tensor,
                      problem: int, reg: float, reg_m_a: float, reg_m_b: float, kl_ref: bool,
                      max_iter: int, tol: float, check_every: int, domain: int = 0, history: int = -1,
                      floor: float = 0.0) -> _Outputs:
    """CUDA kernels of grounded_fast._C_cuda (see grounded_fast/ops/cuda_ot.py)."""
    from .cuda_ot import entropic_ot_cuda
    with torch.no_grad():
        out = entropic_ot_cuda(C, a, b, mass, log_u0, log_v0, problem, reg, reg_m_a, reg_m_b, kl_ref,
                               max_iter, tol, check_every, domain, history, floor)
    return tuple(t.clone() for t in out)


def _fake(C, a, b, mass, log_u0, log_v0, problem, reg, reg_m_a, reg_m_b, kl_ref, max_iter, tol,
          check_every, domain=0, history=-1, floor=0.0):
    B, n, m = C.shape
    hist = history_length(max_iter, check_every, history)
    long = dict(dtype=torch.long)  # float outputs in the weights' (compute) dtype: C may be half (Triton)
    return (a.new_empty(B, n, m), a.new_empty(B, n), a.new_empty(B, m), a.new_empty(B), a.new_empty(B),
            a.new_empty(B), a.new_empty(B, **long), a.new_empty(B, **long), a.new_empty(B, hist))


def _setup_context(ctx, inputs, output):
    C, a, b, mass, _, _, problem, reg, reg_m_a, reg_m_b, kl_ref = inputs[:11]
    plan, log_u, log_v = output[:3]
    ctx.save_for_backward(plan, log_u, log_v, a, b)
    ctx.opts = (problem, reg, reg_m_a, reg_m_b, kl_ref)
    ctx.cost_dtype = C.dtype
    ctx.mark_non_differentiable(*(output[i] for i in (0, 1, 2, 3, 5, 6, 7, 8)))


def _centred(x: Tensor, mask: Tensor) -> Tensor:
    x = torch.where(mask, x, torch.zeros_like(x))
    mean = x.sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp_min(1)
    return torch.where(mask, x - mean, torch.zeros_like(x))


def marginal_grads(problem: int, reg: float, reg_m_a: float, reg_m_b: float, kl_ref: bool, log_u: Tensor,
                   log_v: Tensor, a: Tensor, b: Tensor, sums, need_a: bool, need_b: bool):
    """Envelope gradients (dV/da (B,n), dV/db (B,m)) of the module docstring, None where not needed.
    ``sums()`` returns the plan's marginals (P 1 (B,n), P^T 1 (B,m)); called for unbalanced only."""
    if not (need_a or need_b):
        return None, None
    ma, mb = a > 0, b > 0
    if problem == BALANCED:
        ga, gb = reg * _centred(log_u, ma), reg * _centred(log_v, mb)
    elif problem == PARTIAL:
        ga = torch.where(ma, reg * log_u, torch.zeros_like(log_u))
        gb = torch.where(mb, reg * log_v, torch.zeros_like(log_v))
    else:
        if (need_a and math.isinf(reg_m_a)) or (need_b and math.isinf(reg_m_b)):
            raise NotImplementedError("unbalanced OT: gradient w.r.t. a marginal with reg_m = inf "
                                      "is not implemented; use the balanced solver")
        r, c = sums()
        ra = torch.where(ma, r / torch.where(ma, a, 1), 0)
        cb = torch.where(mb, c / torch.where(mb, b, 1), 0)
        ga = reg_m_a * (1 - ra) if not math.isinf(reg_m_a) else torch.zeros_like(a)
        gb = reg_m_b * (1 - cb) if not math.isinf(reg_m_b) else torch.zeros_like(b)
        if kl_ref:
            ga = ga + reg * (b.sum(1, keepdim=True) - ra)
            gb = gb + reg * (a.sum(1, keepdim=True) - cb)
    return (ga if need_a else None), (gb if need_b else None)


def _backward(ctx, *grads):
    g = grads[4]
    plan, log_u, log_v, a, b = ctx.saved_tensors
    problem, reg, reg_m_a, reg_m_b, kl_ref = ctx.opts
    grad_C = grad_a = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_C = (g[:, None, None] * plan).to(ctx.cost_dtype)
    ga, gb = marginal_grads(problem, reg, reg_m_a, reg_m_b, kl_ref, log_u, log_v, a, b,
                            lambda: (plan.sum(2), plan.sum(1)), ctx.needs_input_grad[1], ctx.needs_input_grad[2])
    if ga is not None:
        grad_a = g[:, None] * ga
    if gb is not None:
        grad_b = g[:, None] * gb
    return (grad_C, grad_a, grad_b) + (None,) * 14


torch.library.register_fake(_CPU_OP)(_fake)
_entropic_ot_torch.register_fake(_fake)
_entropic_ot_triton.register_fake(_fake)
_entropic_ot_cuda.register_fake(_fake)
for _name in (_CPU_OP, _TORCH_OP, _TRITON_OP, _CUDA_OP):
    torch.library.register_autograd(_name, _backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- validation
def _check_tensor(name: str, t, dims: tuple[int, ...]) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in dims:
        raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dimensions, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    return t


def validate(C: Tensor, a: Tensor, b: Tensor, reg: float, mass=None) -> None:
    """Raise ValueError/TypeError naming the offending argument. C (B,n,m), a (B,n), b (B,m)."""
    _check_tensor("C", C, (3,))
    _check_tensor("a", a, (2,))
    _check_tensor("b", b, (2,))
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
    if not isinstance(reg, (int, float)) or isinstance(reg, bool) or not math.isfinite(reg) or reg <= 0:
        raise ValueError(f"reg must be a finite number > 0, got {reg!r}")
    if torch.compiler.is_compiling():
        return  # value checks are data-dependent: under torch.compile only shapes/dtypes are checked
    with torch.no_grad():
        # A NaN or inf anywhere makes the sum non-finite; the elementwise test (a temporary of
        # C's size) only runs to rule out a false alarm from overflow of the sum itself.
        def bad_cost():
            if not torch.isfinite(C).all():
                raise ValueError("C (the cost) contains NaN or inf")
        _raise_first([(torch.isfinite(C.sum()), bad_cost)] + _weight_checks(a, b, mass, C.dtype))


def _raise_first(checks) -> None:
    """checks: [(ok (0-dim bool tensor), fail ())]: calls ``fail`` of the first check not ok, in order
    (it raises, or returns on a false alarm and the next one is tried). All flags are read in one
    device-to-host copy: on a GPU each read is a synchronisation."""
    if not checks:
        return
    oks = torch.stack([ok for ok, _ in checks]).tolist()
    for ok, (_, fail) in zip(oks, checks):
        if not ok:
            fail()


def _raises(msg: str):
    """A ``fail`` for _raise_first: raises ValueError(msg)."""
    def fail():
        raise ValueError(msg)
    return fail


def _weight_checks(a: Tensor, b: Tensor, mass, dtype: torch.dtype) -> list:
    """The value checks of check_weights, as _raise_first's (ok, fail) pairs."""
    checks = []
    for name, t in (("a", a), ("b", b)):  # NaN >= 0 is False, but NaN is reported first
        checks += [(torch.isfinite(t).all(), _raises(f"{name} contains NaN or inf")),
                   ((t >= 0).all(), _raises(f"{name} has negative weights"))]
    if mass is not None:
        bad_mass = _raises("m (transported mass) must be finite and >= 0")
        checks += [(torch.isfinite(mass).all(), bad_mass), ((mass >= 0).all(), bad_mass)]
        cap = torch.minimum(a.sum(1), b.sum(1))
        tol = mass_rtol(dtype)

        def too_much():
            raise ValueError(f"m must be <= min(|a|_1, |b|_1) = {cap.min().item():.6g} for every problem, "
                             f"got {mass.max().item():.6g}")
        checks.append(((mass <= cap * (1 + tol)).all(), too_much))
    return checks


def mass_rtol(dtype: torch.dtype) -> float:
    """How far (relative) partial OT's mass m may exceed min(|a|_1, |b|_1) in ``dtype``: sums of the
    same weights in another order or library differ by rounding (it is capped at the minimum)."""
    return 1e-12 if dtype == torch.float64 else 1e-6


def check_weights(a: Tensor, b: Tensor, mass, dtype: torch.dtype) -> None:
    """Value checks of the weights a (B,n), b (B,m) and the partial mass (B,) or None (``dtype``:
    the problem's dtype, for the tolerance of mass <= min(|a|, |b|)); errors name the argument."""
    if torch.compiler.is_compiling():
        return
    with torch.no_grad():
        _raise_first(_weight_checks(a, b, mass, dtype))


def problem_scalars(problem: int, a: Tensor, b: Tensor, mass: Optional[Tensor], reg_m) -> tuple:
    """(mass (B,), rho_a, rho_b) handed to the kernels: partial OT's mass capped at min(|a|, |b|)
    (default: the cap), zeros for the other problems; the KL penalties ``reg_m`` of unbalanced
    problems (checked > 0), inf for the others. a (B,n), b (B,m) in the compute dtype."""
    if problem == PARTIAL:
        cap = torch.minimum(a.sum(1), b.sum(1))
        mass = cap if mass is None else torch.minimum(mass.to(a.dtype), cap)
    else:
        mass = torch.zeros(a.shape[0], dtype=a.dtype, device=a.device)
    if problem != UNBALANCED:
        return mass, math.inf, math.inf
    rho_a, rho_b = (float(reg_m[0]), float(reg_m[1]))
    if not (rho_a > 0 and rho_b > 0):  # NaN fails too
        raise ValueError(f"reg_m must be > 0 (inf for a hard marginal), got {reg_m}")
    return mass, rho_a, rho_b


# --------------------------------------------------------------------------------- public
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
    ot_verdict), so a tol below what the dtype resolves stops where the iterates stop changing.
    Every backend checks the returned plan's feasibility (``reference.entropic_ot.verdict``): a
    problem reported converged has its marginals met (balanced) or its mass m with rows <= a and
    columns <= b (partial) to its tolerance or rounding; one that is not, or whose plan is not
    finite, gets status 2, and a RuntimeWarning says what failed (``ot_verdict``).
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
    Returns an :class:`OTSolution`; see the module docstring for gradients.
    """
    if isinstance(C, Tensor) and C.dim() not in (2, 3):
        raise ValueError(f"C must be (B, n, m) or (n, m), got shape {tuple(C.shape)}")
    if isinstance(C, Tensor) and C.dim() == 2:  # one problem: solve it as a batch of one
        for name, t in (("a", a), ("b", b)):
            if isinstance(t, Tensor) and t.dim() != 1:
                raise ValueError(f"C is a single (n, m) problem, so {name} must be 1-d; got shape "
                                 f"{tuple(t.shape)} (or pass C as (B, n, m))")
        batch1 = lambda t: t[None] if isinstance(t, Tensor) and t.dim() >= 1 else t  # noqa: E731
        sol = entropic_ot(C[None], batch1(a), batch1(b), reg=reg, problem=problem,
                          mass=mass if not isinstance(mass, Tensor) else mass.reshape(1), reg_m=reg_m,
                          kl_ref=kl_ref, max_iter=max_iter, tol=tol, check_every=check_every,
                          log_u0=batch1(log_u0), log_v0=batch1(log_v0), backend=backend, grad=grad, warn=warn,
                          domain=domain, history=history, validate_inputs=validate_inputs,
                          stop_at_floor=stop_at_floor)
        return OTSolution(*(t[0] for t in sol))
    if domain not in ("auto", "log"):
        raise ValueError(f"domain must be 'auto' or 'log', got {domain!r}")
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
    if problem not in (BALANCED, UNBALANCED, PARTIAL):
        raise ValueError(f"unknown problem kind {problem!r}")
    if problem == PARTIAL and mass is not None:
        if not isinstance(mass, Tensor):
            if not isinstance(mass, (int, float)) or isinstance(mass, bool):
                raise TypeError(f"mass must be a number or a (B,) tensor, got {type(mass).__name__}")
            mass = torch.tensor(float(mass), dtype=C.dtype, device=C.device)
        if mass.dim() == 0:
            mass = mass.expand(C.shape[0])
        if tuple(mass.shape) != (C.shape[0],):
            raise ValueError(f"mass must be a scalar or have shape ({C.shape[0]},), got {tuple(mass.shape)}")
    if validate_inputs:
        validate(C, a, b, reg, mass if problem == PARTIAL else None)
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    B, n, m = C.shape
    orig_dtype = C.dtype
    if tol is None:
        tol = 1e-9 if orig_dtype == torch.float64 else 1e-6
    which = None if grad == "autodiff" else choose_backend(C.device, backend, gpu=_gpu_preference(C))
    if orig_dtype in (torch.float16, torch.bfloat16):
        # float32 potentials and weights; the Triton kernels read a half-precision C as it is (half
        # the bytes per pass), the other backends get a float32 copy
        a, b = a.float(), b.float()
        if which != "triton":
            C = C.float()
    mass, rho_a, rho_b = problem_scalars(problem, a, b, mass, reg_m)
    lu0 = warm_start("log_u0", log_u0, a, problem)
    lv0 = warm_start("log_v0", log_v0, b, problem)
    args = (C, a, b, mass.detach(), lu0.detach(), lv0.detach(), int(problem), float(reg), rho_a, rho_b,
            bool(kl_ref), int(max_iter), float(tol), int(check_every), 0 if domain == "auto" else 1,
            HISTORY_CAP if history else 0, floor_unit(a.dtype) if stop_at_floor else 0.0)
    if grad == "autodiff":
        out = entropic_ot_reference(*args)
    else:
        op = {"cpu": torch.ops.grounded_fast.entropic_ot, "triton": torch.ops.grounded_fast.entropic_ot_triton,
              "cuda": torch.ops.grounded_fast.entropic_ot_cuda}.get(which, torch.ops.grounded_fast.entropic_ot_torch)
        if grad == "detach":
            with torch.no_grad():
                out = op(*args)
        else:
            out = op(*args)
    sol = OTSolution(*out)
    if not torch.compiler.is_compiling():  # (the status already holds the verdict: every backend applies it)
        report(sol.status, lambda: failure_reasons(problem, sol.status, sol.log_u, sol.log_v, sol.log_scale, a, b,
                                                   mass, float(tol), nonempty_problems(a, b, mass, problem),
                                                   lambda: plan_marginals(sol.plan.to(a.dtype))),
               float(reg), warn and check_every > 0)  # check_every=0: exactly max_iter
    if orig_dtype != sol.plan.dtype:
        sol = sol._replace(plan=sol.plan.to(orig_dtype), value=sol.value.to(orig_dtype),
                           value_linear=sol.value_linear.to(orig_dtype))
    return sol


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


def _gpu_preference(C: Tensor) -> tuple[str, str]:
    """The automatic GPU backend by regime, as measured on an H100 (bench/results/gpu-ot-h100.md):
    problems whose cost tile fits the CUDA persistent kernel's shared memory go to CUDA (B=128
    partial 64 x 197: 10.6 against Triton's 16.7 us per iteration), streamed ones to Triton
    (B=16 x 4096^2: 57 against 73 ms; one 8192^2: 20 against 37 ms, 50 iterations). The shared
    memory bound is the smallest opt-in limit of the supported GPUs (99 KiB), not a device query,
    so the choice stays traceable by torch.compile."""
    if C.is_cuda and small_smem_bytes(C.shape[1], C.shape[2], C.dtype) > 99 * 1024:
        return ("triton", "cuda")
    return ("cuda", "triton")


