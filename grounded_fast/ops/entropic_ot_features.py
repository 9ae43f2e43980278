"""Entropic OT between point clouds with the cost recomputed from features on the fly:
``grounded_fast::entropic_ot_features``, and the heuristic choosing it over a materialised cost.

Same solver, outputs and stop tests as :func:`grounded_fast.ops.entropic_ot` applied to
``cost_matrix(x, y, cost)`` (cost 'sqeuclidean' = |x - y|^2 without a 1/2, or 'cosine'), but on the
'triton' and 'cuda' backends no pass of the iteration stores C: each tile is rebuilt from x and y in
registers (csrc/ot/triton/sinkhorn_features.py, csrc/ot/cuda/sinkhorn_features.cu); the 'torch'
backend (any device; the oracle) holds one chunk of rows of C at a time
(grounded_fast/reference/ot_features.py). The (B, n, m) plan is formed only when
``return_plan=True``.

Gradients (``grad='envelope'``, the default): the loop runs without autograd and ``value`` is
differentiable by the envelope theorem, dV/dC = P, so
    dV/dx_i = sum_j P_ij dC_ij/dx_i:  sqeuclidean 2 (r_i x_i - (P y)_i), r = P 1;
                                      cosine J_normalize(x_i)^T (-(P yh)_i), yh = y / |y|;
    dV/dy_j likewise with P^T; dV/da, dV/db as ``entropic_ot`` (centred potentials for balanced).
The products P y, P^T x are one more streaming pass (a Triton kernel; chunked torch on the 'torch'
and 'cuda' backends), never holding B n m entries. ``grad='autodiff'`` materialises C and unrolls
the reference (exact gradients, O(iterations) memory); ``grad='detach'`` records nothing.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .._backend import choose_backend, cuda_extension_available, triton_available
from ..reference.entropic_ot import BALANCED, HISTORY_CAP, PARTIAL, UNBALANCED, history_length, nonempty_problems
from ..reference.ot_features import (FEATURE_COSTS, TorchFeaturePasses, compute_dtype, cost_code,
                                     cost_from_features, feature_grads, feature_marginals, safe_scale,
                                     solve_features)
from .entropic_ot import (GRAD_MODES, OTSolution, _check_tensor, _raise_first, _raises, check_weights, entropic_ot,
                          marginal_grads, problem_scalars, warm_start)
from .ot_verdict import failure_reasons, floor_unit, report

_OP = "grounded_fast::entropic_ot_features"
_PRODUCTS_OP = "grounded_fast::ot_features_products"
FEATURE_BACKENDS = ("torch", "triton", "cuda")


def _passes(x: Tensor, y: Tensor, cost: int, reg: float, backend: str):
    if backend == "triton":
        from ..triton_kernels.ot.sinkhorn_features import TritonFeaturePasses
        return TritonFeaturePasses(x, y, cost, reg)
    if backend == "cuda":
        from .cuda_ot import CudaFeaturePasses
        return CudaFeaturePasses(x, y, cost, reg)
    if backend != "torch":
        raise ValueError(f"backend must be one of {FEATURE_BACKENDS}, got {backend!r}")
    return TorchFeaturePasses(x, y, cost, reg, compute_dtype(x.dtype))


@torch.library.custom_op(_OP, mutates_args=())
def _entropic_ot_features(x: Tensor, y: Tensor, a: Tensor, b: Tensor, mass: Tensor, log_u0: Tensor, log_v0: Tensor,
                          cost: int, problem: int, reg: float, reg_m_a: float, reg_m_b: float, kl_ref: bool,
                          max_iter: int, tol: float, check_every: int, history: int, backend: str,
                          floor: float = 0.0) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """x (B,n,d), y (B,m,d); a, log_u0 (B,n), b, log_v0 (B,m), mass (B,) in the compute dtype.
    -> (log_u (B,n), log_v (B,m), log_scale (B,), value (B,), value_linear (B,), n_iter (B,),
    status (B,), err_history (B,H))."""
    with torch.no_grad():
        out = solve_features(_passes(x, y, cost, reg, backend), a, b, mass, log_u0, log_v0, problem, reg, reg_m_a,
                             reg_m_b, kl_ref, max_iter, tol, check_every, history, floor)
    return tuple(t.clone() for t in out)


@_entropic_ot_features.register_fake
def _fake(x, y, a, b, mass, log_u0, log_v0, cost, problem, reg, reg_m_a, reg_m_b, kl_ref, max_iter, tol, check_every,
          history, backend, floor=0.0):
    B, n, _ = x.shape
    m = y.shape[1]
    hist = history_length(max_iter, check_every, history)
    f = dict(dtype=compute_dtype(x.dtype))
    long = dict(dtype=torch.long)
    return (x.new_empty(B, n, **f), x.new_empty(B, m, **f), x.new_empty(B, **f), x.new_empty(B, **f),
            x.new_empty(B, **f), x.new_empty(B, **long), x.new_empty(B, **long), x.new_empty(B, hist, **f))


@torch.library.custom_op(_PRODUCTS_OP, mutates_args=())
def _plan_products(x: Tensor, y: Tensor, log_u: Tensor, log_v: Tensor, log_scale: Tensor, cost: int, reg: float,
                   backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(P @ Yf (B,n,d), P 1 (B,n), P^T @ Xf (B,m,d), P^T 1 (B,m)), P_ij = exp(log_u_i + log_v_j +
    log_scale - C_ij/reg), Xf, Yf the features (normalised for cosine): the envelope gradients."""
    with torch.no_grad():
        return tuple(t.clone() for t in _passes(x, y, cost, reg, backend).products(log_u, log_v, log_scale))


@_plan_products.register_fake
def _fake_products(x, y, log_u, log_v, log_scale, cost, reg, backend):
    f = dict(dtype=compute_dtype(x.dtype))
    return (x.new_empty(x.shape, **f), x.new_empty(x.shape[:2], **f), y.new_empty(y.shape, **f),
            y.new_empty(y.shape[:2], **f))


def _setup_context(ctx, inputs, output):
    x, y, a, b, mass = inputs[:5]
    cost, problem, reg, reg_m_a, reg_m_b, kl_ref = inputs[7:13]
    ctx.save_for_backward(x, y, a, b, mass, *output[:3])
    ctx.opts = (cost, problem, reg, reg_m_a, reg_m_b, kl_ref, inputs[17])
    ctx.mark_non_differentiable(*(output[i] for i in (0, 1, 2, 4, 5, 6, 7)))


def _backward(ctx, *grads):
    g = grads[3]
    x, y, a, b, mass, lu, lv, w = ctx.saved_tensors
    cost, problem, reg, reg_m_a, reg_m_b, kl_ref, backend = ctx.opts
    need_x, need_y, need_a, need_b = ctx.needs_input_grad[:4]
    nonempty = nonempty_problems(a, b, mass, problem)
    g = torch.where(nonempty, g, torch.zeros_like(g))
    cache = []

    def products():
        if not cache:
            cache.append(torch.ops.grounded_fast.ot_features_products(x, y, lu, lv, safe_scale(w, nonempty), cost,
                                                                      reg, backend))
        return cache[0]

    grad_x = grad_y = None
    if need_x or need_y:
        dx, dy = feature_grads(x, y, cost, *products())
        grad_x = (g[:, None, None] * dx).to(x.dtype) if need_x else None
        grad_y = (g[:, None, None] * dy).to(y.dtype) if need_y else None
    ga, gb = marginal_grads(problem, reg, reg_m_a, reg_m_b, kl_ref, lu, lv, a, b,
                            lambda: (products()[1], products()[3]), need_a, need_b)
    grad_a = None if ga is None else g[:, None] * ga
    grad_b = None if gb is None else g[:, None] * gb
    return (grad_x, grad_y, grad_a, grad_b) + (None,) * 15


_entropic_ot_features.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------- heuristic
# Effective multiply-add throughput of the products that rebuild C, in FLOP per byte of the
# memory path's own rate of reading C, by (backend, feature dtype): with the per-entry log-sum-exp
# work of both paths folded in, recomputing costs 2 d / I byte-equivalents per entry against e_C.
# Measured (bench/gpu_ot.py case 3, H100 80GB HBM3, torch 2.11, Triton 3.6, one 8192 x 8192
# problem, d = 64, float32, 50 iterations; bench/results/gpu-ot-h100.md):
#   Triton  features 47.9 ms, C from memory 19.7 ms: 2 * 64 / (4 * 47.9 / 19.7) -> I = 13
#   CUDA    features 63.4 ms, C from memory 36.7 ms: 2 * 64 / (4 * 63.4 / 36.7) -> I = 18
# The other dtypes are not measured yet: the peak-based estimates they were derived with
# (Triton bf16/fp16 160, fp64 8; CUDA fp64 6, with fp32 at 40 and 12) scaled by the measured
# fp32 ratio of the same backend (Triton 13/40, CUDA 18/12); the CUDA kernels multiply half
# features as float32, so their rate is fp32's.
SUSTAINED_INTENSITY = {
    ("triton", torch.bfloat16): 52.0, ("triton", torch.float16): 52.0, ("triton", torch.float32): 13.0,
    ("triton", torch.float64): 2.6,
    ("cuda", torch.bfloat16): 18.0, ("cuda", torch.float16): 18.0, ("cuda", torch.float32): 18.0,
    ("cuda", torch.float64): 9.0,
}
ON_CHIP_ENTRIES = 1 << 15  # padded n x m of the persistent kernels' on-chip tile (sinkhorn_small.MAX_TILE)
MEMORY_FRACTION = 0.5      # of the free device memory the materialised path may take


def feature_dim_limit(n: int, m: int, dtype: torch.dtype = torch.float32, backend: str = "triton") -> float:
    """Largest feature dimension d for which rebuilding C from features beats reading it.

    Per entry and half-iteration, reading C costs e_C bytes (4: a materialised cost is float32, or
    8 for float64); recomputing costs 2 d FLOPs of products plus the features' e_f d (1/n + 1/m)
    bytes. At a sustained intensity I (FLOP per byte, ``SUSTAINED_INTENSITY``) recomputing wins when
        2 d / I + e_f d (1/n + 1/m) < e_C,   i.e.   d < e_C / (2 / I + e_f (1/n + 1/m)).
    The exp / max work per entry is the same for both sources and cancels.
    """
    e_c = 8 if dtype == torch.float64 else 4
    e_f = torch.finfo(dtype).bits // 8
    intensity = SUSTAINED_INTENSITY.get((backend, dtype))
    if intensity is None:
        return 0.0
    return e_c / (2.0 / intensity + e_f * (1.0 / n + 1.0 / m))


def _pow2(k: int) -> int:
    return 1 << max(0, int(k) - 1).bit_length()


def choose_cost_source(n: int, m: int, d: int, dtype: torch.dtype = torch.float32, *, batch: int = 1,
                       cost: str = "sqeuclidean", device="cuda", backend: Optional[str] = None,
                       free_bytes: Optional[int] = None) -> str:
    """'memory' (materialise C, then ``entropic_ot``) or 'features' (``entropic_ot_features``) for
    ``batch`` problems of n x m points with d features of ``dtype``.

    * cost not in ('sqeuclidean', 'cosine'), or a CPU device: 'memory' -- the C++ kernels on a
      materialised C (measured on the 2-core CI machine, float32, reg 0.05, 100 iterations:
      1024 x 1024, d = 64: 0.79 s materialise + C++ against 3.9 s for the chunked torch
      recompute; 2048 x 2048, d = 16: 0.05 s against 19.9 s);
    * a GPU backend without kernels for features ('torch', 'cpu'): 'memory' unless C does not fit;
    * C (plus the plan and the autograd temporaries of cost_matrix, 3 B n m e_C bytes) would take
      more than ``MEMORY_FRACTION`` of ``free_bytes`` (default: the device's free memory):
      'features', whatever d;
    * padded n x m within the persistent kernels' on-chip tile (``ON_CHIP_ENTRIES``): 'memory'
      (C is read once for all iterations);
    * otherwise 'features' iff d <= ``feature_dim_limit(n, m, dtype, backend)`` (bytes per
      iteration against the products' FLOPs, calibrated on an H100; e.g. Triton, n = m = 8192:
      d <= 25 for float32, d <= 102 for bfloat16; the CUDA kernels' FMA products: d <= 35).
    ``backend``: that of the solve (None: Triton if installed, else the CUDA extension).
    """
    device = torch.device(device)
    if cost not in FEATURE_COSTS or device.type == "cpu":
        return "memory"
    if backend in (None, "triton") and triton_available():
        backend = "triton"
    elif backend in (None, "cuda") and cuda_extension_available():
        backend = "cuda"
    e_c = 8 if dtype == torch.float64 else 4
    needed = 3 * batch * n * m * e_c
    if free_bytes is None and device.type == "cuda" and torch.cuda.is_available():
        free_bytes = torch.cuda.mem_get_info(device)[0]
    if free_bytes is not None and needed > MEMORY_FRACTION * free_bytes:
        return "features"
    if backend not in ("triton", "cuda"):
        return "memory"
    if _pow2(n) * _pow2(m) <= ON_CHIP_ENTRIES:
        return "memory"
    return "features" if d <= feature_dim_limit(n, m, dtype, backend) else "memory"


# --------------------------------------------------------------------------------- public
def _validate(x: Tensor, y: Tensor, a: Tensor, b: Tensor, reg) -> None:
    _check_tensor("x", x, (3,))
    _check_tensor("y", y, (3,))
    B, n, d = x.shape
    if y.shape[0] != B:
        raise ValueError(f"y has batch size {y.shape[0]} but x has {B}")
    if y.shape[2] != d:
        raise ValueError(f"y must have the feature dimension d of x: x is {tuple(x.shape)} (d = {d}), y is "
                         f"{tuple(y.shape)} (d = {y.shape[2]})")
    if B == 0:
        raise ValueError("empty batch: x has batch size 0")
    if n == 0 or y.shape[1] == 0:
        raise ValueError(f"x and y must have at least one point each, got {tuple(x.shape)} and {tuple(y.shape)}")
    if d == 0:
        raise ValueError("x and y must have at least one feature (d >= 1)")
    if y.dtype != x.dtype:
        raise TypeError(f"y has dtype {y.dtype} but x has {x.dtype}")
    _check_tensor("a", a, (2,))
    _check_tensor("b", b, (2,))
    m = y.shape[1]
    if tuple(a.shape) != (B, n):
        raise ValueError(f"a must have shape {(B, n)} to match x {tuple(x.shape)}, got {tuple(a.shape)}")
    if tuple(b.shape) != (B, m):
        raise ValueError(f"b must have shape {(B, m)} to match y {tuple(y.shape)}, got {tuple(b.shape)}")
    for name, t in (("y", y), ("a", a), ("b", b)):
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if not isinstance(reg, (int, float)) or isinstance(reg, bool) or not math.isfinite(reg) or reg <= 0:
        raise ValueError(f"reg must be a finite number > 0, got {reg!r}")
    if not torch.compiler.is_compiling():
        with torch.no_grad():
            _raise_first([(torch.isfinite(t).all(), _raises(f"{name} (the features) contains NaN or inf"))
                          for name, t in (("x", x), ("y", y))])


def entropic_ot_features(x: Tensor, y: Tensor, a: Tensor, b: Tensor, *, reg: float, cost: str = "sqeuclidean",
                         problem: int = BALANCED, mass=None, reg_m: tuple[float, float] = (math.inf, math.inf),
                         kl_ref: bool = True, max_iter: int = 1000, tol: Optional[float] = None,
                         check_every: int = 10, log_u0: Optional[Tensor] = None, log_v0: Optional[Tensor] = None,
                         backend: Optional[str] = None, grad: str = "envelope", warn: bool = True,
                         return_plan: bool = False, history: bool = True,
                         validate_inputs: bool = True, stop_at_floor: bool = True) -> OTSolution:
    """Entropic OT between point clouds, the cost recomputed from the features in every pass.

    x (B,n,d), y (B,m,d) features (float32 / float64 / bfloat16 / float16; accumulation float32,
    float64 for float64), a (B,n), b (B,m) nonnegative weights (zeros = padding); or one problem
    x (n,d), y (m,d), a (n,), b (m,). ``cost``: 'sqeuclidean' or 'cosine', defined as
    ``grounded_fast.ot.costs.cost_matrix``. Every other argument as :func:`entropic_ot`, whose
    results on ``cost_matrix(x, y, cost)`` these are (up to rounding).
    ``backend``: 'triton' or 'cuda' (GPU kernels, C never stored; Triton also on CPU tensors under
    TRITON_INTERPRET=1), 'torch' (chunked PyTorch, any device), 'cpu' (materialises C and runs
    the C++ kernel), or None: on CPU tensors 'cpu' (see ``choose_cost_source``), on CUDA tensors
    Triton if installed, else the CUDA extension, else 'torch' with a warning.
    ``return_plan``: also form the (B,n,m) plan (materialised; detached). Otherwise
    ``OTSolution.plan`` is None.
    Returns an :class:`OTSolution` (B-leading fields; unbatched for unbatched input); ``value`` is
    differentiable w.r.t. x, y, a, b (module docstring).
    """
    if isinstance(x, Tensor) and x.dim() == 2:  # one problem: solve it as a batch of one
        for name, t in (("y", y), ("a", a), ("b", b)):
            want = 2 if name == "y" else 1
            if isinstance(t, Tensor) and t.dim() != want:
                raise ValueError(f"x is a single (n, d) problem, so {name} must be {want}-d; got shape "
                                 f"{tuple(t.shape)} (or pass x as (B, n, d))")
        batch1 = lambda t: t[None] if isinstance(t, Tensor) and t.dim() >= 1 else t  # noqa: E731
        sol = entropic_ot_features(
            batch1(x), batch1(y), batch1(a), batch1(b), reg=reg, cost=cost, problem=problem,
            mass=mass if not isinstance(mass, Tensor) else mass.reshape(1), reg_m=reg_m, kl_ref=kl_ref,
            max_iter=max_iter, tol=tol, check_every=check_every, log_u0=batch1(log_u0), log_v0=batch1(log_v0),
            backend=backend, grad=grad, warn=warn, return_plan=return_plan, history=history,
            validate_inputs=validate_inputs, stop_at_floor=stop_at_floor)
        return OTSolution(*(None if t is None else t[0] for t in sol))
    if isinstance(x, Tensor) and x.dim() != 3:
        raise ValueError(f"x must be (B, n, d) or (n, d), got shape {tuple(x.shape)}")
    code = cost_code(cost)
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
    if problem not in (BALANCED, UNBALANCED, PARTIAL):
        raise ValueError(f"unknown problem kind {problem!r}")
    if backend is not None and backend not in FEATURE_BACKENDS + ("cpu",):
        raise ValueError(f"backend must be one of {FEATURE_BACKENDS + ('cpu',)} or None, got {backend!r}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if validate_inputs:
        _validate(x, y, a, b, reg)
    B, n, _ = x.shape
    orig_dtype = x.dtype
    dt = compute_dtype(orig_dtype)
    if tol is None:
        tol = 1e-9 if dt == torch.float64 else 1e-6
    a, b = a.to(dt), b.to(dt)
    if problem == PARTIAL and mass is not None:
        if not isinstance(mass, Tensor):
            if not isinstance(mass, (int, float)) or isinstance(mass, bool):
                raise TypeError(f"mass must be a number or a (B,) tensor, got {type(mass).__name__}")
            mass = torch.tensor(float(mass), dtype=dt, device=x.device)
        mass = mass.to(dt)
        if mass.dim() == 0:
            mass = mass.expand(B)
        if tuple(mass.shape) != (B,):
            raise ValueError(f"mass must be a scalar or have shape ({B},), got {tuple(mass.shape)}")
    if validate_inputs:
        check_weights(a, b, mass if problem == PARTIAL else None, dt)
    mass, rho_a, rho_b = problem_scalars(problem, a, b, mass, reg_m)
    lu0 = warm_start("log_u0", log_u0, a, problem)
    lv0 = warm_start("log_v0", log_v0, b, problem)

    which = "memory" if grad == "autodiff" else choose_backend(x.device, backend, gpu=("triton", "cuda"))
    if which in ("memory", "cpu"):  # materialise C: the C++ kernel, or the unrolled reference
        C = cost_from_features(x, y, code, dt)
        sol = entropic_ot(C, a, b, reg=reg, problem=problem, mass=mass if problem == PARTIAL else None,
                          reg_m=(rho_a, rho_b), kl_ref=kl_ref, max_iter=max_iter, tol=tol, check_every=check_every,
                          log_u0=log_u0 if log_u0 is None else lu0, log_v0=log_v0 if log_v0 is None else lv0,
                          backend="cpu" if which == "cpu" else None, grad=grad, warn=warn,
                          history=history, validate_inputs=False, stop_at_floor=stop_at_floor)
        sol = sol._replace(plan=sol.plan if return_plan else None)
    else:
        args = (x, y, a, b, mass.detach(), lu0.detach(), lv0.detach(), code, int(problem), float(reg), rho_a, rho_b,
                bool(kl_ref), int(max_iter), float(tol), int(check_every), HISTORY_CAP if history else 0, which,
                floor_unit(dt) if stop_at_floor else 0.0)
        if grad == "detach":
            with torch.no_grad():
                out = torch.ops.grounded_fast.entropic_ot_features(*args)
        else:
            out = torch.ops.grounded_fast.entropic_ot_features(*args)
        lu, lv, w = out[:3]
        plan = None
        if return_plan:
            with torch.no_grad():
                nonempty = nonempty_problems(a, b, mass, problem)
                P = TorchFeaturePasses(x, y, code, reg, dt).plan(lu, lv, safe_scale(w, nonempty))
                keep = (a > 0)[:, :, None] & (b > 0)[:, None, :] & nonempty[:, None, None]
                plan = torch.where(keep, P, torch.zeros_like(P))
        sol = OTSolution(plan, *out)
        if not torch.compiler.is_compiling():  # (the status already holds the verdict: solve_features applies it)
            report(sol.status, lambda: failure_reasons(problem, sol.status, lu, lv, w, a, b, mass, float(tol),
                                                       nonempty_problems(a, b, mass, problem),
                                                       lambda: feature_marginals(_passes(x, y, code, float(reg), which),
                                                                                 a, b, mass, problem, lu, lv, w)),
                   float(reg), warn and check_every > 0)
    if orig_dtype != sol.value.dtype:
        sol = sol._replace(plan=None if sol.plan is None else sol.plan.to(orig_dtype),
                           value=sol.value.to(orig_dtype), value_linear=sol.value_linear.to(orig_dtype))
    return sol


__all__ = ["entropic_ot_features", "choose_cost_source", "feature_dim_limit", "FEATURE_COSTS", "FEATURE_BACKENDS"]
