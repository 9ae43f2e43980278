"""The ops ``grounded_fast::entropic_ot_features`` (the solve) and ``::ot_features_products`` (the
plan products of its envelope gradients): one schema each with an explicit ``backend`` argument
('torch', 'triton', 'cuda': backend_*.py), one fake each, one autograd formula.

Same solver, outputs and stop tests as :func:`grounded_fast.ops.entropic_ot` applied to
``cost_matrix(x, y, cost)`` (cost 'sqeuclidean' = |x - y|^2 without a 1/2, or 'cosine'), but on the
'triton' and 'cuda' backends no pass of the iteration stores C: each tile is rebuilt from x and y in
registers (csrc/ot/triton/sinkhorn_features.py, csrc/ot/cuda/sinkhorn_features.cu); the 'torch'
backend (any device; the oracle) holds one chunk of rows of C at a time. The (B, n, m) plan is formed only when
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

import importlib

import torch
from torch import Tensor

from ..entropic_ot.op import marginal_grads
from ..entropic_ot.spec import SolveSpec
from .driver import compute_dtype, feature_grads, nonempty_problems, safe_scale

OP = "grounded_fast::entropic_ot_features"
PRODUCTS_OP = "grounded_fast::ot_features_products"
FEATURE_BACKENDS = ("torch", "triton", "cuda")


def backend_module(backend: str):
    """The module of ``backend`` (``passes(x, y, cost, reg)`` and ``solve``), imported on first use."""
    if backend not in FEATURE_BACKENDS:
        raise ValueError(f"backend must be one of {FEATURE_BACKENDS}, got {backend!r}")
    return importlib.import_module(f".backend_{backend}", __package__)


@torch.library.custom_op(OP, mutates_args=())
def entropic_ot_features_op(x: Tensor, y: Tensor, a: Tensor, b: Tensor, mass: Tensor, log_u0: Tensor, log_v0: Tensor,
                            cost: int, problem: int, reg: float, reg_m_a: float, reg_m_b: float, kl_ref: bool,
                            max_iter: int, tol: float, check_every: int, domain: int, history: int, floor: float,
                            backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """x (B,n,d), y (B,m,d); a, log_u0 (B,n), b, log_v0 (B,m), mass (B,) in the compute dtype; the
    cost code; the scalars of :class:`SolveSpec` in field order; ``backend``.
    -> (log_u (B,n), log_v (B,m), log_scale (B,), value (B,), value_linear (B,), n_iter (B,),
    status (B,), err_history (B,H))."""
    spec = SolveSpec(problem, reg, reg_m_a, reg_m_b, kl_ref, max_iter, tol, check_every, domain, history, floor)
    with torch.no_grad():
        out = backend_module(backend).solve(x, y, a, b, mass, log_u0, log_v0, cost, spec)
    return tuple(t.clone() for t in out)


@entropic_ot_features_op.register_fake
def _fake(x, y, a, b, mass, log_u0, log_v0, cost, problem, reg, reg_m_a, reg_m_b, kl_ref, max_iter, tol, check_every,
          domain, history, floor, backend):
    B, n, _ = x.shape
    m = y.shape[1]
    hist = SolveSpec(problem, reg, reg_m_a, reg_m_b, kl_ref, max_iter, tol, check_every, domain, history,
                     floor).hist_len
    f = dict(dtype=compute_dtype(x.dtype))
    long = dict(dtype=torch.long)
    return (x.new_empty(B, n, **f), x.new_empty(B, m, **f), x.new_empty(B, **f), x.new_empty(B, **f),
            x.new_empty(B, **f), x.new_empty(B, **long), x.new_empty(B, **long), x.new_empty(B, hist, **f))


@torch.library.custom_op(PRODUCTS_OP, mutates_args=())
def plan_products_op(x: Tensor, y: Tensor, log_u: Tensor, log_v: Tensor, log_scale: Tensor, cost: int, reg: float,
                     backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(P @ Yf (B,n,d), P 1 (B,n), P^T @ Xf (B,m,d), P^T 1 (B,m)), P_ij = exp(log_u_i + log_v_j +
    log_scale - C_ij/reg), Xf, Yf the features (normalised for cosine): the envelope gradients."""
    with torch.no_grad():
        passes = backend_module(backend).passes(x, y, cost, reg)
        return tuple(t.clone() for t in passes.products(log_u, log_v, log_scale))


@plan_products_op.register_fake
def _fake_products(x, y, log_u, log_v, log_scale, cost, reg, backend):
    f = dict(dtype=compute_dtype(x.dtype))
    return (x.new_empty(x.shape, **f), x.new_empty(x.shape[:2], **f), y.new_empty(y.shape, **f),
            y.new_empty(y.shape[:2], **f))


def _setup_context(ctx, inputs, output):
    x, y, a, b, mass = inputs[:5]
    ctx.save_for_backward(x, y, a, b, mass, *output[:3])
    ctx.cost, ctx.spec, ctx.backend = inputs[7], SolveSpec(*inputs[8:19]), inputs[19]
    ctx.mark_non_differentiable(*(output[i] for i in (0, 1, 2, 4, 5, 6, 7)))


def _backward(ctx, *grads):
    g = grads[3]
    x, y, a, b, mass, lu, lv, w = ctx.saved_tensors
    cost, spec = ctx.cost, ctx.spec
    need_x, need_y, need_a, need_b = ctx.needs_input_grad[:4]
    nonempty = nonempty_problems(a, b, mass, spec.problem)
    g = torch.where(nonempty, g, torch.zeros_like(g))
    cache = []

    def products():
        if not cache:
            cache.append(plan_products_op(x, y, lu, lv, safe_scale(w, nonempty), cost, spec.reg, ctx.backend))
        return cache[0]

    grad_x = grad_y = None
    if need_x or need_y:
        dx, dy = feature_grads(x, y, cost, *products())
        grad_x = (g[:, None, None] * dx).to(x.dtype) if need_x else None
        grad_y = (g[:, None, None] * dy).to(y.dtype) if need_y else None
    ga, gb = marginal_grads(spec, lu, lv, a, b, lambda: (products()[1], products()[3]), need_a, need_b)
    grad_a = None if ga is None else g[:, None] * ga
    grad_b = None if gb is None else g[:, None] * gb
    return (grad_x, grad_y, grad_a, grad_b) + (None,) * 16


entropic_ot_features_op.register_autograd(_backward, setup_context=_setup_context)
