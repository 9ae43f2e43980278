"""The public function :func:`entropic_ot_features`: entropic OT between point clouds, the cost
recomputed from the features in every pass (input handling, backend choice, warnings)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..._backend import choose_backend
from ..costs import cost_from_features
from ..entropic_ot.api import GRAD_MODES, OTSolution, entropic_ot
from ..entropic_ot.inputs import (cast_back, check_tensor, check_weights, coerce_mass, kernel_mass, one_problem,
                                  raise_first, raises, solve_spec, warm_start)
from ..entropic_ot.spec import BALANCED, PARTIAL
from ..entropic_ot.verdict import failure_reasons, report
from .backend_torch import TorchFeaturePasses
from .driver import compute_dtype, cost_code, feature_marginals, nonempty_problems, safe_scale
from .op import FEATURE_BACKENDS, backend_module, entropic_ot_features_op


def _check_features(x: Tensor, y: Tensor, a: Tensor, b: Tensor) -> None:
    """Raise ValueError/TypeError naming the offending argument: x (B,n,d), y (B,m,d), a (B,n), b (B,m)."""
    check_tensor("x", x, (3,))
    check_tensor("y", y, (3,))
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
    check_tensor("a", a, (2,))
    check_tensor("b", b, (2,))
    m = y.shape[1]
    if tuple(a.shape) != (B, n):
        raise ValueError(f"a must have shape {(B, n)} to match x {tuple(x.shape)}, got {tuple(a.shape)}")
    if tuple(b.shape) != (B, m):
        raise ValueError(f"b must have shape {(B, m)} to match y {tuple(y.shape)}, got {tuple(b.shape)}")
    for name, t in (("y", y), ("a", a), ("b", b)):
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if not torch.compiler.is_compiling():
        with torch.no_grad():
            raise_first([(torch.isfinite(t).all(), raises(f"{name} (the features) contains NaN or inf"))
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
    ``grounded_fast.ops.costs.cost_matrix``. Every other argument as :func:`entropic_ot`, whose
    results on ``cost_matrix(x, y, cost)`` these are (up to rounding).
    ``backend``: 'triton' or 'cuda' (GPU kernels, C never stored; Triton also on CPU tensors under
    TRITON_INTERPRET=1), 'torch' (chunked PyTorch, any device), 'cpu' (materialises C and runs
    the C++ kernel), or None: on CPU tensors 'cpu' (see ``choose_cost_source``), on CUDA tensors
    Triton if installed, else the CUDA extension, else 'torch' with a warning.
    ``return_plan``: also form the (B,n,m) plan (materialised; detached). Otherwise
    ``OTSolution.plan`` is None.
    Returns an :class:`OTSolution` (B-leading fields; unbatched for unbatched input); ``value`` is
    differentiable w.r.t. x, y, a, b (grounded_fast/ops/entropic_ot_features/op.py).
    """
    if isinstance(x, Tensor) and x.dim() == 2:  # one problem: solve it as a batch of one
        for name, t in (("y", y), ("a", a), ("b", b)):
            want = 2 if name == "y" else 1
            if isinstance(t, Tensor) and t.dim() != want:
                raise ValueError(f"x is a single (n, d) problem, so {name} must be {want}-d; got shape "
                                 f"{tuple(t.shape)} (or pass x as (B, n, d))")
        sol = entropic_ot_features(
            one_problem(x), one_problem(y), one_problem(a), one_problem(b), reg=reg, cost=cost, problem=problem,
            mass=mass if not isinstance(mass, Tensor) else mass.reshape(1), reg_m=reg_m, kl_ref=kl_ref,
            max_iter=max_iter, tol=tol, check_every=check_every, log_u0=one_problem(log_u0),
            log_v0=one_problem(log_v0), backend=backend, grad=grad, warn=warn, return_plan=return_plan,
            history=history, validate_inputs=validate_inputs, stop_at_floor=stop_at_floor)
        return OTSolution(*(None if t is None else t[0] for t in sol))
    if isinstance(x, Tensor) and x.dim() != 3:
        raise ValueError(f"x must be (B, n, d) or (n, d), got shape {tuple(x.shape)}")
    code = cost_code(cost)
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
    if backend is not None and backend not in FEATURE_BACKENDS + ("cpu",):
        raise ValueError(f"backend must be one of {FEATURE_BACKENDS + ('cpu',)} or None, got {backend!r}")
    if validate_inputs:
        _check_features(x, y, a, b)
    orig_dtype = x.dtype
    dt = compute_dtype(orig_dtype)
    spec = solve_spec(problem, reg, reg_m, kl_ref, max_iter, tol, check_every, "auto", history, stop_at_floor, dt)
    B = x.shape[0]
    a, b = a.to(dt), b.to(dt)
    if problem == PARTIAL:
        mass = coerce_mass(mass, B, dt, x.device)
    if validate_inputs:
        check_weights(a, b, mass if problem == PARTIAL else None, dt)
    mass = kernel_mass(problem, a, b, mass)
    lu0 = warm_start("log_u0", log_u0, a, problem)
    lv0 = warm_start("log_v0", log_v0, b, problem)

    which = "memory" if grad == "autodiff" else choose_backend(x.device, backend, gpu=("triton", "cuda"))
    if which in ("memory", "cpu"):  # materialise C: the C++ kernel, or the unrolled reference
        C = cost_from_features(x, y, code, dt)
        sol = entropic_ot(C, a, b, reg=reg, problem=problem, mass=mass if problem == PARTIAL else None,
                          reg_m=(spec.reg_m_a, spec.reg_m_b), kl_ref=kl_ref, max_iter=max_iter, tol=spec.tol,
                          check_every=check_every, log_u0=log_u0 if log_u0 is None else lu0,
                          log_v0=log_v0 if log_v0 is None else lv0, backend="cpu" if which == "cpu" else None,
                          grad=grad, warn=warn, history=history, validate_inputs=False, stop_at_floor=stop_at_floor)
        sol = sol._replace(plan=sol.plan if return_plan else None)
    else:
        args = (x, y, a, b, mass.detach(), lu0.detach(), lv0.detach(), code, *spec.op_args(), which)
        if grad == "detach":
            with torch.no_grad():
                out = entropic_ot_features_op(*args)
        else:
            out = entropic_ot_features_op(*args)
        lu, lv, w = out[:3]
        plan = None
        if return_plan:
            with torch.no_grad():
                nonempty = nonempty_problems(a, b, mass, problem)
                P = TorchFeaturePasses(x, y, code, spec.reg, dt).plan(lu, lv, safe_scale(w, nonempty))
                keep = (a > 0)[:, :, None] & (b > 0)[:, None, :] & nonempty[:, None, None]
                plan = torch.where(keep, P, torch.zeros_like(P))
        sol = OTSolution(plan, *out)
        if not torch.compiler.is_compiling():  # (the status already holds the verdict: solve_features applies it)
            report(sol.status, lambda: failure_reasons(spec, sol.status, lu, lv, w, a, b, mass,
                                                       nonempty_problems(a, b, mass, problem),
                                                       lambda: feature_marginals(
                                                           backend_module(which).passes(x, y, code, spec.reg),
                                                           a, b, mass, problem, lu, lv, w)),
                   spec.reg, warn and check_every > 0)
    return cast_back(sol, orig_dtype)
