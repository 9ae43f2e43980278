"""The op ``grounded_fast::entropic_ot``: one schema, one fake, one autograd formula.

The caller chooses the backend (``backend``: 'cpu' the C++/OpenMP kernel, 'cuda' the CUDA
kernels, 'triton' the Triton kernels, 'torch' the float64-capable reference, any device; see
``backend_*.py``); every backend takes the problems and a :class:`SolveSpec` and returns the nine
outputs. The spec is flattened to scalars only here, at the op boundary.

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

import importlib
import math

import torch
from torch import Tensor

from ...reference.entropic_ot import entropic_ot_reference
from .spec import BALANCED, PARTIAL, SolveSpec

OP = "grounded_fast::entropic_ot"
BACKENDS = ("cpu", "cuda", "triton", "torch")
_SOLVERS = {"torch": entropic_ot_reference}  # backend -> solve, filled on first use
_Outputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]  # the op's nine outputs


def backend_solver(backend: str):
    """The ``solve(C, a, b, mass, log_u0, log_v0, spec) -> nine outputs`` of ``backend`` (imported
    on first use: the GPU backends need their extension or triton)."""
    solver = _SOLVERS.get(backend)
    if solver is None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        solver = _SOLVERS[backend] = importlib.import_module(f".backend_{backend}", __package__).solve
    return solver


@torch.library.custom_op(OP, mutates_args=())
def entropic_ot_op(C: Tensor, a: Tensor, b: Tensor, mass: Tensor, log_u0: Tensor, log_v0: Tensor,
                   problem: int, reg: float, reg_m_a: float, reg_m_b: float, kl_ref: bool, max_iter: int, tol: float,
                   check_every: int, domain: int, history: int, floor: float, backend: str) -> _Outputs:
    """C (B,n,m); a, log_u0 (B,n); b, log_v0 (B,m); mass (B,); the scalars of :class:`SolveSpec` in
    field order; ``backend``. Returns (plan (B,n,m), log_u (B,n), log_v (B,m), log_scale (B,),
    value (B,), value_linear (B,), n_iter (B,) int64, status (B,) int64, err_history (B,H))."""
    spec = SolveSpec(problem, reg, reg_m_a, reg_m_b, kl_ref, max_iter, tol, check_every, domain, history, floor)
    with torch.no_grad():
        out = backend_solver(backend)(C, a, b, mass, log_u0, log_v0, spec)
    if backend == "cpu":  # the C++ kernel returns new tensors
        return out
    return tuple(t.clone() for t in out)  # the others' outputs may alias each other or an input


@entropic_ot_op.register_fake
def _fake(C, a, b, mass, log_u0, log_v0, problem, reg, reg_m_a, reg_m_b, kl_ref, max_iter, tol, check_every, domain,
          history, floor, backend):
    B, n, m = C.shape
    hist = SolveSpec(problem, reg, reg_m_a, reg_m_b, kl_ref, max_iter, tol, check_every, domain, history,
                     floor).hist_len
    long = dict(dtype=torch.long)  # float outputs in the weights' (compute) dtype: C may be half (Triton)
    return (a.new_empty(B, n, m), a.new_empty(B, n), a.new_empty(B, m), a.new_empty(B), a.new_empty(B),
            a.new_empty(B), a.new_empty(B, **long), a.new_empty(B, **long), a.new_empty(B, hist))


def _setup_context(ctx, inputs, output):
    C, a, b = inputs[:3]
    plan, log_u, log_v = output[:3]
    ctx.save_for_backward(plan, log_u, log_v, a, b)
    ctx.spec = SolveSpec(*inputs[6:17])
    ctx.cost_dtype = C.dtype
    ctx.mark_non_differentiable(*(output[i] for i in (0, 1, 2, 3, 5, 6, 7, 8)))


def _centred(x: Tensor, mask: Tensor) -> Tensor:
    x = torch.where(mask, x, torch.zeros_like(x))
    mean = x.sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp_min(1)
    return torch.where(mask, x - mean, torch.zeros_like(x))


def marginal_grads(spec: SolveSpec, log_u: Tensor, log_v: Tensor, a: Tensor, b: Tensor, sums, need_a: bool,
                   need_b: bool):
    """Envelope gradients (dV/da (B,n), dV/db (B,m)) of the module docstring, None where not needed.
    ``sums()`` returns the plan's marginals (P 1 (B,n), P^T 1 (B,m)); called for unbalanced only."""
    if not (need_a or need_b):
        return None, None
    problem, reg, reg_m_a, reg_m_b = spec.problem, spec.reg, spec.reg_m_a, spec.reg_m_b
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
        if spec.kl_ref:
            ga = ga + reg * (b.sum(1, keepdim=True) - ra)
            gb = gb + reg * (a.sum(1, keepdim=True) - cb)
    return (ga if need_a else None), (gb if need_b else None)


def _backward(ctx, *grads):
    g = grads[4]
    plan, log_u, log_v, a, b = ctx.saved_tensors
    grad_C = grad_a = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_C = (g[:, None, None] * plan).to(ctx.cost_dtype)
    ga, gb = marginal_grads(ctx.spec, log_u, log_v, a, b, lambda: (plan.sum(2), plan.sum(1)),
                            ctx.needs_input_grad[1], ctx.needs_input_grad[2])
    if ga is not None:
        grad_a = g[:, None] * ga
    if gb is not None:
        grad_b = g[:, None] * gb
    return (grad_C, grad_a, grad_b) + (None,) * 15


entropic_ot_op.register_autograd(_backward, setup_context=_setup_context)
