"""All-pairs distances between M models' cross-attention patterns, streamed over items.

Input: attention weights ``(M, N, T, S)`` (M models, N items, T target positions, S source
positions) or ``(M, N, H, T, S)`` with a head axis that is averaged. Each row (item n, target t)
of each model is a distribution over the valid sources (``source_mask``; rows are restricted to
them and renormalised). Metrics:

- ``jsd``, ``tv``, ``hellinger``, ``l2``: the distance between two models' rows (Jensen-Shannon
  in nats, total variation, Hellinger, Euclidean), averaged over the counted rows
  (``target_mask``) of all items;
- ``segment_l2`` ("Grounded and Well-rounded"): per model, the attention mass on each source
  segment (``segments``: e.g. caption / paraphrase / translation parts of a multimodal memory)
  summed over counted targets and items and normalised to shares; then the Euclidean distance
  between two models' share vectors. Segment ids are the columns of the shares: 0 .. K-1 with
  K = ``num_segments`` when given, else below the number of sources S; a negative id marks a
  source that belongs to no segment.

Every metric checks the counted rows the same way: an attention row that is negative, non-finite
or has no mass on the valid sources is a ValueError naming the model and the row.

The per-row metrics run in the fused kernel csrc/analysis/cpu/attention_distance_cpu.cpp.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..ops.analysis import attention_pair_sums, check_attention_rows
from .agreement import _as_tensor
from ..ops.analysis.checks import ATTENTION_METRICS

METRICS = ("segment_l2",) + tuple(ATTENTION_METRICS)


def _bool_mask(x, name: str, shape: tuple, device) -> Tensor:
    x = _as_tensor(x, name)
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    if x.dtype != torch.bool:
        if x.is_floating_point() or not ((x == 0) | (x == 1)).all():
            raise ValueError(f"{name} must be boolean (or integer 0/1)")
        x = x != 0
    return x.to(device)


def _prepare(attn, target_mask, source_mask, segments, num_models: Optional[int],
             num_segments: Optional[int] = None):
    attn = _as_tensor(attn, "attn")
    if not attn.is_floating_point():
        raise TypeError(f"attn must be a floating-point tensor, got {attn.dtype}")
    if attn.dim() == 5:
        attn = attn.mean(dim=2)
    elif attn.dim() != 4:
        raise ValueError("attn must be (M, N, T, S) or (M, N, H, T, S) with a head axis, got shape "
                         f"{tuple(attn.shape)}")
    M, N, T, S = attn.shape
    if num_models is not None and M != num_models:
        raise ValueError(f"attn has {M} models on its first axis, expected num_models={num_models}")
    tmask = (torch.ones(N, T, dtype=torch.bool, device=attn.device) if target_mask is None
             else _bool_mask(target_mask, "target_mask", (N, T), attn.device))
    smask = None if source_mask is None else _bool_mask(source_mask, "source_mask", (N, S), attn.device)
    seg = None
    if segments is not None:
        seg = _as_tensor(segments, "segments")
        if seg.is_floating_point() or seg.dtype == torch.bool:
            raise TypeError(f"segments must hold integer segment ids, got {seg.dtype}")
        if seg.dim() == 1 and seg.shape[0] == S:
            seg = seg.expand(N, S)
        if tuple(seg.shape) != (N, S):
            raise ValueError(f"segments must have shape (S,) = ({S},) or (N, S) = {(N, S)}, got {tuple(seg.shape)}")
        seg = seg.to(attn.device, torch.long)
        _check_segment_ids(seg, S, num_segments)
    return attn, tmask, smask, seg


def _check_segment_ids(seg: Tensor, S: int, num_segments: Optional[int]) -> None:
    """Segment ids must index the columns of the shares: below num_segments, else below S."""
    if not seg.numel():
        return
    top = int(seg.max())
    limit = S if num_segments is None else num_segments
    if top < limit:
        return
    if num_segments is None:
        raise ValueError(f"segments holds the id {top}, but without num_segments the ids must be below the "
                         f"number of sources S = {S} (0, 1, ...: they are the columns of segment_shares()); "
                         "relabel them, or pass num_segments=K for K segments")
    raise ValueError(f"segments holds the id {top}, but num_segments = {num_segments} allows ids "
                     f"0 .. {num_segments - 1} (negative ids mark sources outside every segment)")


class AttentionDistance:
    """Streaming all-pairs attention distance between ``num_models`` models.

    ``metric``: one of ``METRICS``. ``update(attn, target_mask, source_mask, segments)`` adds a
    chunk of items; ``compute()`` returns the (M, M) float64 distance matrix (zero diagonal).
    For ``segment_l2``, ``segments`` is required and ``segment_shares()`` returns the (M, K)
    shares, one column per segment id. ``num_segments`` K fixes the number of segments (ids
    0 .. K-1); without it K is the largest id seen + 1, and ids must be below the number of
    sources S. Negative ids are ignored; a larger id is a ValueError.
    """

    def __init__(self, num_models: int, metric: str = "jsd", backend: Optional[str] = None,
                 num_segments: Optional[int] = None):
        if not isinstance(num_models, int) or num_models < 1:
            raise ValueError(f"num_models must be a positive int, got {num_models!r}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if num_segments is not None and (isinstance(num_segments, bool) or not isinstance(num_segments, int)
                                         or num_segments < 1):
            raise ValueError(f"num_segments must be a positive int or None, got {num_segments!r}")
        self.num_models, self.metric, self.backend = num_models, metric, backend
        self.num_segments = num_segments
        self.reset()

    def reset(self) -> None:
        M = self.num_models
        self._sums = torch.zeros(M, M, dtype=torch.float64)
        self._mass = torch.zeros(M, self.num_segments or 0, dtype=torch.float64)
        self._rows = 0

    def update(self, attn, target_mask=None, source_mask=None, segments=None) -> None:
        """attn (M, N, T, S) or (M, N, H, T, S); target_mask (N, T); source_mask (N, S);
        segments (S,) or (N, S) integer ids (``segment_l2`` only)."""
        attn, tmask, smask, seg = _prepare(attn, target_mask, source_mask, segments, self.num_models,
                                           self.num_segments)
        M, N, T, S = attn.shape
        if self.metric == "segment_l2" and seg is None:
            raise ValueError("metric='segment_l2' needs segments (source segment ids)")
        R = N * T
        rows = attn.reshape(M, R, S)
        row_mask = None if smask is None else smask[:, None, :].expand(N, T, S).reshape(R, S)
        weight = tmask.reshape(R).to(torch.float64)
        try:
            if self.metric == "segment_l2":  # the rows' check of the per-row metrics' reference backend
                check_attention_rows(rows, row_mask, weight)
            else:
                sums = attention_pair_sums(rows, row_mask, weight, self.metric, self.backend).cpu()
        except ValueError as exc:
            raise ValueError(f"{exc} (row r = item * T + target position, T = {T})") from None
        if self.metric == "segment_l2":
            self._add_segment_mass(attn, tmask, smask, seg)
        else:
            if not torch.isfinite(sums).all():
                raise ValueError("attention rows with no mass on the valid sources (or non-finite values)")
            self._sums += sums
        self._rows += int(tmask.sum())

    def _add_segment_mass(self, attn, tmask, smask, seg) -> None:
        M, N, T, S = attn.shape
        # rows already checked; what masked sources and uncounted rows hold (even NaN) is dropped
        keep_entry = tmask[:, :, None] if smask is None else tmask[:, :, None] & smask[:, None, :]
        a = torch.where(keep_entry[None], attn.double(), torch.zeros((), dtype=torch.float64, device=attn.device))
        norm = a.sum(-1)                                                 # row mass on valid sources
        inv = 1.0 / torch.where(norm > 0, norm, torch.ones_like(norm))  # uncounted rows: all zeros
        per_source = torch.einsum("mnts,mnt->mns", a, inv)              # (M, N, S)
        keep = seg >= 0
        K = int(seg[keep].max()) + 1 if bool(keep.any()) else 0
        if K > self._mass.shape[1]:
            self._mass = torch.cat([self._mass, self._mass.new_zeros(M, K - self._mass.shape[1])], 1)
        idx = torch.where(keep, seg, torch.zeros_like(seg)).reshape(1, -1).expand(M, -1)
        contrib = torch.where(keep, per_source, torch.zeros_like(per_source)).reshape(M, -1)
        mass = torch.zeros(M, self._mass.shape[1], dtype=torch.float64, device=a.device)
        self._mass += mass.scatter_add_(1, idx, contrib).cpu()

    def segment_shares(self) -> Tensor:
        """(M, K) float64: each model's share of attention per source segment (rows sum to 1)."""
        if self.metric != "segment_l2":
            raise RuntimeError("segment_shares() is only kept for metric='segment_l2'")
        self._check_rows()
        return self._mass / self._mass.sum(1, keepdim=True)

    def _check_rows(self) -> None:
        if self._rows == 0:
            raise RuntimeError("AttentionDistance.compute(): no target row has been counted yet")

    def compute(self) -> Tensor:
        """(M, M) float64 distance matrix, zero on the diagonal."""
        self._check_rows()
        if self.metric == "segment_l2":
            shares = self.segment_shares()
            return (shares[:, None, :] - shares[None, :, :]).pow(2).sum(-1).sqrt()
        return self._sums / self._rows


def attention_distance(attn, metric: str = "jsd", target_mask=None, source_mask=None, segments=None,
                       backend: Optional[str] = None, num_segments: Optional[int] = None) -> Tensor:
    """All-pairs distance between M models' attention patterns.

    attn (M, N, T, S) or (M, N, H, T, S) (heads averaged); target_mask (N, T) and source_mask
    (N, S) bool (True = real position); segments (S,) or (N, S) integer source-segment ids for
    ``metric='segment_l2'`` (0 .. num_segments-1, or below S without num_segments; negative =
    no segment). Counted rows must be non-negative and finite with mass on the valid sources
    (ValueError otherwise, for every metric). Returns an (M, M) float64 tensor (zero diagonal).
    For N too large for memory, feed chunks of items to :class:`AttentionDistance`.
    """
    a = _as_tensor(attn, "attn")
    if a.dim() not in (4, 5):
        raise ValueError(f"attn must be (M, N, T, S) or (M, N, H, T, S), got shape {tuple(a.shape)}")
    acc = AttentionDistance(int(a.shape[0]), metric, backend, num_segments)
    acc.update(a, target_mask, source_mask, segments)
    return acc.compute()
