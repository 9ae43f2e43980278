"""OT losses as modules: features (or a cost) in, one loss per batch element out.

Padding: ``x_mask`` (B, n) / ``y_mask`` (B, m) booleans (True = real token / patch) zero the
weights of padded positions; by default weights are uniform over the real positions. Gradients are
envelope gradients of the regularised objective (see grounded_fast.ops.entropic_ot).

Cost source (``cost_source``): with features x, y and a 'sqeuclidean' / 'cosine' cost, 'auto' asks
``grounded_fast.ops.choose_cost_source`` whether to materialise C (``cost_matrix`` then
``entropic_ot``: always on CPU, and on the GPU for small problems or large d) or to recompute it
from the features in every pass (``entropic_ot_features``: large problems with small d on the
GPU); 'memory' / 'features' force one. Both give the same loss and gradients up to rounding.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..ops import BALANCED, PARTIAL, UNBALANCED, choose_cost_source, entropic_ot, entropic_ot_features
from ..ops.costs import METRICS, cost_matrix

COST_SOURCES = ("auto", "memory", "features")


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
                 tol: float = 1e-6, reduction: str = "none", backend: Optional[str] = None,
                 cost_source: str = "auto"):
        super().__init__()
        if cost is not None and cost not in METRICS:
            raise ValueError(f"cost must be one of {METRICS} or None, got {cost!r}")
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        if not reg > 0:
            raise ValueError(f"reg must be > 0, got {reg}")
        if cost_source not in COST_SOURCES:
            raise ValueError(f"cost_source must be one of {COST_SOURCES}, got {cost_source!r}")
        if cost_source == "features" and cost not in ("sqeuclidean", "cosine"):
            raise ValueError(f"cost_source='features' needs cost 'sqeuclidean' or 'cosine', got {cost!r}")
        self.reg, self.cost, self.max_iter, self.tol = float(reg), cost, int(max_iter), float(tol)
        self.reduction, self.backend, self.cost_source = reduction, backend, cost_source

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

    def uses_features(self, x: Tensor, y: Tensor) -> bool:
        """Whether features x (B,n,d), y (B,m,d) take the on-the-fly cost (``cost_source``)."""
        if self.cost_source != "auto":
            return self.cost_source == "features"
        B, n, d = x.shape
        return choose_cost_source(n, y.shape[1], d, x.dtype, batch=B, cost=self.cost, device=x.device,
                                  backend=self.backend) == "features"

    def _solve(self, x, y, C, a, b, x_mask, y_mask, mass_fraction=None, return_plan=False, **kw):
        """(value (B,), plan (B,n,m) or None); ``mass_fraction``: partial OT's share of min(|a|, |b|)."""
        features = C is None and x is not None and y is not None and self.cost is not None and self.uses_features(x, y)
        if features:
            B, n, _ = x.shape
            m = y.shape[1]
            like = x if x.dtype in (torch.float32, torch.float64) else x.new_empty((), dtype=torch.float32)
        else:
            C = self._cost(x, y, C)
            B, n, m = C.shape
            like = C
        a = _weights(x_mask, a, (B, n), like)
        b = _weights(y_mask, b, (B, m), like)
        if mass_fraction is not None:
            kw["mass"] = mass_fraction * torch.minimum(a.sum(1), b.sum(1)).detach()
        opts = dict(reg=self.reg, problem=self.problem, max_iter=self.max_iter, tol=self.tol, backend=self.backend,
                    history=False, **kw)
        if features:
            sol = entropic_ot_features(x, y, a, b, cost=self.cost, return_plan=return_plan, **opts)
        else:
            sol = entropic_ot(C, a, b, **opts)
        return sol.value, sol.plan


class SinkhornLoss(_OTLoss):
    """Balanced (or, with ``reg_m``, unbalanced KL) entropic OT loss.

    forward(x (B,n,d), y (B,m,d), a=None, b=None, x_mask=None, y_mask=None, C=None) -> (B,)
    (or a scalar with reduction 'mean'/'sum'): the regularised objective <P,C> + reg sum P log P
    (unbalanced: + KL marginal penalties). ``cost_source``: module docstring.
    """

    def __init__(self, reg: float = 0.05, cost: Optional[str] = "sqeuclidean", reg_m: Optional[float] = None,
                 **kw):
        super().__init__(reg, cost, **kw)
        if reg_m is not None and not (isinstance(reg_m, (int, float)) and not isinstance(reg_m, bool) and reg_m > 0):
            raise ValueError(f"reg_m must be a number > 0 (inf for a hard marginal) or None, got {reg_m!r}")
        self.reg_m = reg_m
        if reg_m is not None:
            self.problem = UNBALANCED

    def forward(self, x=None, y=None, a=None, b=None, x_mask=None, y_mask=None, C=None):
        kw = {}
        if self.reg_m is not None:
            kw = dict(reg_m=(self.reg_m, self.reg_m), check_every=1)
        return self._reduce(self._solve(x, y, C, a, b, x_mask, y_mask, **kw)[0])


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
        value, plan = self._solve(x, y, C, a, b, x_mask, y_mask, mass_fraction=self.mass, return_plan=return_plan)
        loss = self._reduce(value)
        return (loss, plan) if return_plan else loss
