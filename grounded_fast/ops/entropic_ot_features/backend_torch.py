"""The 'torch' backend of ``entropic_ot_features``: the passes of driver.py in PyTorch, any device,
holding one chunk of rows (or columns) of the cost at a time. Also the envelope products of the
'cuda' backend and the plan of ``return_plan=True``."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..costs import COSINE
from ..entropic_ot.spec import SolveSpec
from .driver import compute_dtype, solve_features

# Entries of one (rows x columns) cost chunk held by the torch passes.
CHUNK_ELEMENTS = 1 << 24


class TorchFeaturePasses:
    """The four passes (module doc) in PyTorch, any device, chunked so that at most about
    ``chunk_elements`` cost entries exist at once. The cost chunks are computed with the same
    operations as ``cost_matrix``. x (B,n,d), y (B,m,d) of any float dtype; ``dt``: compute dtype."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, cost: int, reg: float, dt: torch.dtype,
                 chunk_elements: int | None = None):
        self.cost, self.reg, self.dt = cost, float(reg), dt
        X, Y = x.to(dt), y.to(dt)
        if cost == COSINE:
            X, Y = F.normalize(X, dim=-1), F.normalize(Y, dim=-1)
            self.xn = self.yn = None
        else:
            self.xn, self.yn = (X * X).sum(-1), (Y * Y).sum(-1)
        self.X, self.Y = X, Y
        self.B, self.n, self.d = X.shape
        self.m = Y.shape[1]
        self.chunk_elements = int(chunk_elements or CHUNK_ELEMENTS)

    def _rows_per_chunk(self, width: int) -> int:
        return max(1, self.chunk_elements // max(1, self.B * width))

    def cost_block(self, i0: int, i1: int, j0: int, j1: int) -> torch.Tensor:
        """(B, i1 - i0, j1 - j0) block of C, as cost_matrix computes it."""
        xs, ys = self.X[:, i0:i1], self.Y[:, j0:j1]
        if self.cost == COSINE:
            return 1.0 - xs @ ys.transpose(-1, -2)
        x2, y2 = self.xn[:, i0:i1, None], self.yn[:, None, j0:j1]
        return (x2 + y2 - 2.0 * (xs @ ys.transpose(-1, -2))).clamp_min(0.0)

    def _row_chunks(self):
        step = self._rows_per_chunk(self.m)
        for i0 in range(0, self.n, step):
            i1 = min(self.n, i0 + step)
            yield i0, i1, self.cost_block(i0, i1, 0, self.m)

    def lse(self, rows: bool, vec: torch.Tensor) -> torch.Tensor:
        vec = vec.to(self.dt)
        if rows:
            out = torch.empty(self.B, self.n, dtype=self.dt, device=self.X.device)
            for i0, i1, C in self._row_chunks():
                out[:, i0:i1] = torch.logsumexp(-C / self.reg + vec[:, None, :], dim=2)
            return out
        out = torch.empty(self.B, self.m, dtype=self.dt, device=self.X.device)
        step = self._rows_per_chunk(self.n)
        for j0 in range(0, self.m, step):
            j1 = min(self.m, j0 + step)
            C = self.cost_block(0, self.n, j0, j1)
            out[:, j0:j1] = torch.logsumexp(-C / self.reg + vec[:, :, None], dim=1)
        return out

    def _log_plan(self, C, i0, i1, lu, lv, w):
        return -C / self.reg + lu[:, i0:i1, None] + lv[:, None, :] + w[:, None, None]

    def row_stats(self, lu, lv, w):
        r = torch.empty(self.B, self.n, dtype=self.dt, device=self.X.device)
        pc, plp = torch.empty_like(r), torch.empty_like(r)
        for i0, i1, C in self._row_chunks():
            P = torch.exp(self._log_plan(C, i0, i1, lu, lv, w))
            r[:, i0:i1] = P.sum(2)
            pc[:, i0:i1] = (P * C).sum(2)
            plp[:, i0:i1] = torch.where(P > 0, P * torch.log(torch.where(P > 0, P, 1)), 0).sum(2)
        return r, pc, plp

    def products(self, lu, lv, w):
        PY = torch.empty(self.B, self.n, self.d, dtype=self.dt, device=self.X.device)
        r = torch.empty(self.B, self.n, dtype=self.dt, device=self.X.device)
        PtX = torch.zeros(self.B, self.m, self.d, dtype=self.dt, device=self.X.device)
        c = torch.zeros(self.B, self.m, dtype=self.dt, device=self.X.device)
        for i0, i1, C in self._row_chunks():
            P = torch.exp(self._log_plan(C, i0, i1, lu, lv, w))
            PY[:, i0:i1] = P @ self.Y
            r[:, i0:i1] = P.sum(2)
            PtX += P.transpose(1, 2) @ self.X[:, i0:i1]
            c += P.sum(1)
        return PY, r, PtX, c

    def plan(self, lu, lv, w) -> torch.Tensor:
        """The (B, n, m) plan (materialised: only when asked for)."""
        out = torch.empty(self.B, self.n, self.m, dtype=self.dt, device=self.X.device)
        for i0, i1, C in self._row_chunks():
            out[:, i0:i1] = torch.exp(self._log_plan(C, i0, i1, lu, lv, w))
        return out



def passes(x, y, cost: int, reg: float, chunk_elements: int | None = None) -> TorchFeaturePasses:
    """The chunked passes over x (B,n,d), y (B,m,d) in the compute dtype of the features."""
    return TorchFeaturePasses(x, y, cost, reg, compute_dtype(x.dtype), chunk_elements)


def solve(x, y, a, b, mass, log_u0, log_v0, cost: int, spec: SolveSpec, chunk_elements: int | None = None):
    """Arguments and outputs as ``driver.solve_features``, on the chunked torch passes."""
    return solve_features(passes(x, y, cost, spec.reg, chunk_elements), a, b, mass, log_u0, log_v0, spec)
