"""All-pairs agreement and divergence between M models' predictions, streamed over positions.

The "Grounded and Well-rounded" comparison: M models (e.g. 40 per population) are teacher-forced
on the same targets; for every two models, how often their argmax predictions agree and how far
apart their predictive distributions are. The fused kernel reads each chunk of logits once,
computes every model's softmax once (never all probabilities of a chunk at once) and turns the
M^2 pairwise sums into a matrix product; see csrc/analysis/cpu/pairwise_agreement_cpu.cpp.

    acc = PairwiseAgreement(num_models=40)
    for logits, mask in chunks:          # logits (M, N, V), mask (N,) True = counted position
        acc.update(logits, mask)
    res = acc.compute()                   # agreement, kl, entropy, count (and jsd if requested)

The logits at counted positions must be finite with |logit| <= 1e20
(``grounded_fast.ops.analysis.MAX_ABS_LOGIT``): beyond, float32 intermediate terms overflow, so a
ValueError names the model and the position (on every backend). Mask vocabulary entries with a
moderate fill such as -1e9, not -inf or finfo.min.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..ops.analysis import pairwise_agreement_sums


def _as_tensor(x, name: str) -> Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    return x


def _flatten_chunk(logits, mask, num_models: Optional[int]) -> tuple[Tensor, Tensor]:
    """logits (M, N, V) or (M, B, T, V); mask (N,) / (B, T) / None -> ((M, N', V), (N',) bool)."""
    logits = _as_tensor(logits, "logits")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {logits.dtype}")
    positions = tuple(logits.shape[1:-1])  # the shape a mask must have: (N,) or (B, T)
    if logits.dim() == 4:
        M, B, T, V = logits.shape
        logits = logits.reshape(M, B * T, V)
    elif logits.dim() != 3:
        raise ValueError(f"logits must be (M, N, V) or (M, B, T, V), got shape {tuple(logits.shape)}")
    M, N, V = logits.shape
    if num_models is not None and M != num_models:
        raise ValueError(f"logits has {M} models on its first axis, expected num_models={num_models}")
    if V == 0 and N > 0:
        raise ValueError("logits has an empty vocabulary axis")
    if mask is None:
        mask = torch.ones(N, dtype=torch.bool, device=logits.device)
    else:
        mask = _as_tensor(mask, "mask")
        if tuple(mask.shape) != positions:  # a (T, B) mask of (M, B, T, V) logits has the right size
            layout = "(N,) for (M, N, V) logits" if len(positions) == 1 else "(B, T) for (M, B, T, V) logits"
            raise ValueError(f"mask must have shape {positions} ({layout}), got shape {tuple(mask.shape)}")
        if mask.dtype != torch.bool:
            if not ((mask == 0) | (mask == 1)).all():
                raise ValueError("mask must be boolean (or 0/1)")
            mask = mask != 0
        mask = mask.reshape(N).to(logits.device)
    return logits, mask


class PairwiseAgreement:
    """Streaming accumulator of all-pairs agreement, KL, entropy and (optionally) JSD.

    ``num_models`` M; ``jsd=True`` also accumulates the Jensen-Shannon divergence (one log per
    pair and vocabulary entry: markedly slower for large M and V). ``backend``: None (automatic),
    'cpu' (C++ kernel) or 'torch' (float64 reference). Sums are kept in float64 on the CPU.
    Counted logits must be finite with |logit| <= 1e20 (ValueError naming model and position).
    """

    def __init__(self, num_models: int, jsd: bool = False, backend: Optional[str] = None):
        if not isinstance(num_models, int) or num_models < 1:
            raise ValueError(f"num_models must be a positive int, got {num_models!r}")
        self.num_models, self.jsd, self.backend = num_models, bool(jsd), backend
        self.reset()

    def reset(self) -> None:
        M = self.num_models
        self._agree = torch.zeros(M, M, dtype=torch.long)
        self._kl = torch.zeros(M, M, dtype=torch.float64)
        self._js = torch.zeros(M, M, dtype=torch.float64)
        self._ent = torch.zeros(M, dtype=torch.float64)
        self._count = 0

    def update(self, logits, mask=None) -> None:
        """Add a chunk: logits (M, N, V) or (M, B, T, V) float; mask of the positions' shape, (N,)
        or (B, T), True/1 = counted. Position n of (M, B, T, V) logits in errors is b * T + t."""
        T = logits.shape[2] if getattr(logits, "ndim", 0) == 4 else None
        logits, mask = _flatten_chunk(logits, mask, self.num_models)
        if logits.shape[1] == 0:
            return
        try:
            agree, kl, ent, js, count = pairwise_agreement_sums(logits, mask, self.jsd, self.backend)
        except ValueError as exc:
            if T is None:
                raise
            raise ValueError(f"{exc} (position n = batch index * T + t, T = {T})") from None
        self._agree += agree.cpu()
        self._kl += kl.cpu()
        self._ent += ent.cpu()
        self._js += js.cpu()
        self._count += int(count)

    @property
    def count(self) -> int:
        return self._count

    def compute(self) -> dict:
        """Means over the counted positions.

        Returns a dict: ``agreement`` (M, M) float64 rate in [0, 1] of equal argmax predictions
        (1 on the diagonal), ``kl`` (M, M) mean KL(p_i || p_j) in nats (row i = the reference
        model p_i), ``entropy`` (M,) mean predictive entropy, ``count`` (int) positions counted,
        and ``jsd`` (M, M) mean Jensen-Shannon divergence (nats, <= ln 2) when requested.
        """
        if self._count == 0:
            raise RuntimeError("PairwiseAgreement.compute(): no position has been counted yet")
        n = float(self._count)
        out = {"agreement": self._agree.double() / n, "kl": self._kl / n, "entropy": self._ent / n,
               "count": self._count}
        if self.jsd:
            out["jsd"] = self._js / n
        return out


def pairwise_agreement(logits, mask=None, jsd: bool = False, backend: Optional[str] = None) -> dict:
    """One-shot :class:`PairwiseAgreement`: logits (M, N, V) or (M, B, T, V), mask of the
    positions' shape ((N,) or (B, T)) or None. Counted logits: finite, |logit| <= 1e20."""
    logits_t, _ = _flatten_chunk(logits, mask, None)
    acc = PairwiseAgreement(int(logits_t.shape[0]), jsd=jsd, backend=backend)
    acc.update(logits, mask)
    return acc.compute()
