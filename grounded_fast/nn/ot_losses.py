"""OT losses as modules: features (or a cost) in, one loss per batch element out.

Padding: ``x_mask`` (B, n) / ``y_mask`` (B, m) booleans (True = real token / patch) zero the
weights of padded positions; by default weights are uniform over the real positions. Gradients are
envelope gradients of the regularised objective (see grounded_fast.ops.entropic_ot).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..ops import BALANCED, PARTIAL, UNBALANCED, entropic_ot
from ..ot.costs import METRICS, cost_matrix


def _weights(mask: Optional[Tensor], w: Optional[Tensor], shape, like: Tensor) -> Tensor:
    if w is not None:
        w = w.to(like.dtype)
        return w if mask is None else w * mask.to(like.dtype)
    if mask is None:
        return torch.full(shape, 1.0 / shape[1], dtype=like.dtype, device=like.device)
    mk = mask.to(like.dtype)
    return mk / mk.sum(1, keepdim=True).clamp_min(1.0)


class _OTLoss(nn.Module):
    problem = BALANCED

    def __init__(self, reg: float = 0.05, cost: Optional[str] = "sqeuclidean", max_iter: int = 1000,
                 tol: float = 1e-6, reduction: str = "none", backend: Optional[str] = None):
        super().__init__()
        if cost is not None and cost not in METRICS:
            raise ValueError(f"cost must be one of {METRICS} or None, got {cost!r}")
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        if not reg > 0:
            raise ValueError(f"reg must be > 0, got {reg}")
        self.reg, self.cost, self.max_iter, self.tol = float(reg), cost, int(max_iter), float(tol)
        self.reduction, self.backend = reduction, backend

    def _cost(self, x, y, C):
        if C is not None:
            return C
        if x is None or y is None:
            raise ValueError("pass features x and y, or a cost C")
        if self.cost is None:
            raise ValueError("this loss was built with cost=None: pass C")
        return cost_matrix(x, y, self.cost)

    def _reduce(self, v: Tensor) -> Tensor:
        return v if self.reduction == "none" else (v.mean() if self.reduction == "mean" else v.sum())

    def _solve(self, x, y, C, a, b, x_mask, y_mask, **kw):
        C = self._cost(x, y, C)
        B, n, m = C.shape
        a = _weights(x_mask, a, (B, n), C)
        b = _weights(y_mask, b, (B, m), C)
        return entropic_ot(C, a, b, reg=self.reg, problem=self.problem, max_iter=self.max_iter, tol=self.tol,
                           backend=self.backend, history=False, **kw)


class SinkhornLoss(_OTLoss):
    """Balanced (or, with ``reg_m``, unbalanced KL) entropic OT loss.

    forward(x (B,n,d), y (B,m,d), a=None, b=None, x_mask=None, y_mask=None, C=None) -> (B,)
    (or a scalar with reduction 'mean'/'sum'): the regularised objective <P,C> + reg sum P log P
    (unbalanced: + KL marginal penalties).
    """

    def __init__(self, reg: float = 0.05, cost: Optional[str] = "sqeuclidean", reg_m: Optional[float] = None,
                 **kw):
        super().__init__(reg, cost, **kw)
        self.reg_m = reg_m
        if reg_m is not None:
            self.problem = UNBALANCED

    def forward(self, x=None, y=None, a=None, b=None, x_mask=None, y_mask=None, C=None):
        kw = {}
        if self.reg_m is not None:
            kw = dict(reg_m=(self.reg_m, self.reg_m), check_every=1)
        return self._reduce(self._solve(x, y, C, a, b, x_mask, y_mask, **kw).value)


class PartialOTLoss(_OTLoss):
    """Entropic partial OT loss transporting a fraction ``mass`` of min(|a|, |b|) (GroundedBERT's
    token <-> patch alignment).

    forward(x (B,n,d), y (B,m,d), a=None, b=None, x_mask=None, y_mask=None, C=None,
    return_plan=False) -> (B,) loss [and the (B,n,m) plan, detached].
    """

    problem = PARTIAL

    def __init__(self, reg: float = 0.05, mass: float = 0.5, cost: Optional[str] = "cosine", **kw):
        super().__init__(reg, cost, **kw)
        if not (0 < mass <= 1) or not math.isfinite(mass):
            raise ValueError(f"mass is a fraction of min(|a|, |b|) in (0, 1], got {mass}")
        self.mass = float(mass)

    def forward(self, x=None, y=None, a=None, b=None, x_mask=None, y_mask=None, C=None, return_plan=False):
        C = self._cost(x, y, C)
        B, n, m = C.shape
        aw = _weights(x_mask, a, (B, n), C)
        bw = _weights(y_mask, b, (B, m), C)
        mass = self.mass * torch.minimum(aw.sum(1), bw.sum(1)).detach()
        sol = entropic_ot(C, aw, bw, reg=self.reg, problem=PARTIAL, mass=mass, max_iter=self.max_iter,
                          tol=self.tol, backend=self.backend, history=False)
        loss = self._reduce(sol.value)
        return (loss, sol.plan) if return_plan else loss
