"""Data and callables of the analysis benchmarks (test_analysis_cpu.py, analysis_memprobe.py).

Every function here is deterministic (fixed seeds). Sizes come from ``AGREE`` and ``ATTN`` below;
with ``ANALYSIS_BENCH_QUICK=1`` in the environment both are much smaller (a smoke test of the
whole pipeline in seconds, not a measurement).

Case A (agreement): M models' float32 logits over V tokens at N positions, streamed through
  ``grounded_fast.analysis.PairwiseAgreement`` in chunks of ``chunk`` positions. Generating all
  M x N x V logits (98 GB at full size) would dominate the run, so a pool of ``pool`` distinct
  chunks is generated once and cycled; the kernel has no cache across chunks to benefit from it
  (each chunk, 244 MB at full size, is far larger than the caches). Models are related: logits =
  BASE_SCALE * shared base + per-model noise (scales spread over [0.5, 1.5]), so argmax
  agreement and KL vary between pairs; ~10% of positions are masked out.
Case B (attention): M models' attention (M, N items, T targets, S sources), float32 softmax rows
  of BASE_SCALE * shared base + per-model noise over all S sources; each item has a source
  padding mask (valid length in [S/2, S]) and a target mask (valid length in [T/2, T]). The
  metric restricts rows to the valid sources and renormalises them; padded sources become exact
  zeros there (0 log 0 = 0 matters).

Baselines: the straightforward per-pair implementations a user would write
  (``baseline_agreement``: PyTorch float32, Python loop over the M(M-1) ordered pairs;
  ``baseline_attention``: NumPy float64, Python loop over the M(M-1)/2 pairs).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import combinations, permutations

import numpy as np
import torch
from torch import Tensor

import grounded_fast as gf

QUICK = os.environ.get("ANALYSIS_BENCH_QUICK") == "1"
BASE_SCALE = 3.0
MASKED_FRACTION = 0.1


@dataclass(frozen=True)
class AgreementSize:
    M: int
    N: int               # positions streamed per pass (a multiple of chunk)
    V: int
    chunk: int           # positions per update() call
    pool: int            # distinct chunks generated, cycled over the N positions


@dataclass(frozen=True)
class AttentionSize:
    M: int
    N: int               # items
    T: int               # target positions per item
    S: int               # source positions


AGREE = AgreementSize(8, 400, 2048, 50, 2) if QUICK else AgreementSize(40, 20_000, 30_522, 50, 4)
ATTN = AttentionSize(8, 40, 10, 72) if QUICK else AttentionSize(40, 500, 40, 72)


def _model_scales(M: int) -> Tensor:
    """Per-model noise scales in [0.5, 1.5]: pairs differ in how related they are."""
    return torch.linspace(0.5, 1.5, M)


def _related(g: torch.Generator, M: int, shape: tuple) -> Tensor:
    """(M, *shape) float32: BASE_SCALE * a shared base + per-model scaled noise."""
    x = torch.randn(M, *shape, generator=g)
    x.mul_(_model_scales(M).view(M, *([1] * len(shape))))
    x.add_(torch.randn(*shape, generator=g), alpha=BASE_SCALE)
    return x


# ============================================================================ case A: agreement
@dataclass
class LogitStream:
    """A pool of distinct logit chunks, cycled to stream ``N`` positions."""

    chunks: list       # (M, chunk, V) float32 tensors
    masks: list        # (chunk,) bool tensors, True = counted
    N: int

    def __iter__(self):
        for c in range(self.N // self.chunks[0].shape[1]):
            yield self.chunks[c % len(self.chunks)], self.masks[c % len(self.masks)]

    @property
    def counted(self) -> int:
        """Counted positions in one pass over the stream."""
        return sum(int(m.sum()) for _, m in self)

    @property
    def logits_bytes(self) -> int:
        """Bytes of logits in one pass (all positions, masked ones included)."""
        z = self.chunks[0]
        return self.N * z.shape[0] * z.shape[2] * z.element_size()


def logit_chunk(size: AgreementSize, seed: int) -> tuple[Tensor, Tensor]:
    """One (M, chunk, V) float32 chunk of related models' logits and its (chunk,) mask."""
    g = torch.Generator().manual_seed(seed)
    z = _related(g, size.M, (size.chunk, size.V))
    mask = torch.rand(size.chunk, generator=g) >= MASKED_FRACTION
    return z, mask


def logit_stream(size: AgreementSize = AGREE, seed: int = 0) -> LogitStream:
    if size.N % size.chunk:
        raise ValueError(f"N={size.N} must be a multiple of chunk={size.chunk}")
    pairs = [logit_chunk(size, seed + k) for k in range(size.pool)]
    return LogitStream([z for z, _ in pairs], [m for _, m in pairs], size.N)


def ours_agreement(chunks, M: int) -> dict:
    """``PairwiseAgreement(M)`` over an iterable of (logits, mask) chunks; returns compute()."""
    acc = gf.analysis.PairwiseAgreement(M)
    for z, mask in chunks:
        acc.update(z, mask)
    return acc.compute()


def baseline_agreement(logits: Tensor, mask: Tensor) -> dict:
    """Straightforward per-pair PyTorch (float32, as the input): log_softmax, exp and argmax once
    per chunk, then a Python loop over the ordered pairs (i, j) computing
    sum (p_i * (log p_i - log p_j)) and the number of equal argmaxes. Same output layout as
    ``PairwiseAgreement.compute()`` (means over the counted positions of this chunk)."""
    z = logits[:, mask]
    M, n = z.shape[:2]
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    top = z.argmax(dim=-1)
    agree = torch.eye(M, dtype=torch.float64) * n
    kl = torch.zeros(M, M, dtype=torch.float64)
    ent = torch.tensor([-(p[i] * logp[i]).sum().item() for i in range(M)], dtype=torch.float64)
    for i, j in permutations(range(M), 2):
        kl[i, j] = (p[i] * (logp[i] - logp[j])).sum().item()
        agree[i, j] = (top[i] == top[j]).sum().item()
    return {"agreement": agree / n, "kl": kl / n, "entropy": ent / n, "count": n}


# ============================================================================ case B: attention
@dataclass
class AttentionData:
    attn: Tensor          # (M, N, T, S) float32, rows sum to 1 over all S sources
    target_mask: Tensor   # (N, T) bool
    source_mask: Tensor   # (N, S) bool

    @property
    def counted_rows(self) -> int:
        return int(self.target_mask.sum())

    @property
    def pair_entries(self) -> int:
        """Pairs (i < j) x counted rows x sources: the entries one evaluation of the metric visits."""
        M, S = self.attn.shape[0], self.attn.shape[3]
        return M * (M - 1) // 2 * self.counted_rows * S


def _prefix_mask(g: torch.Generator, n: int, length: int) -> Tensor:
    """(n, length) bool: True on a prefix of each row, of length uniform in [length/2, length]."""
    valid = torch.randint(length // 2, length + 1, (n, 1), generator=g)
    return torch.arange(length)[None, :] < valid


def attention_data(size: AttentionSize = ATTN, seed: int = 1) -> AttentionData:
    g = torch.Generator().manual_seed(seed)
    attn = torch.softmax(_related(g, size.M, (size.N, size.T, size.S)), dim=-1)
    return AttentionData(attn, _prefix_mask(g, size.N, size.T), _prefix_mask(g, size.N, size.S))


def ours_attention(d: AttentionData) -> Tensor:
    return gf.analysis.attention_distance(d.attn, "jsd", d.target_mask, d.source_mask)


def _kl_rows(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """sum_s x log(x / m) per row, with 0 log 0 = 0 (x > 0 implies m > 0)."""
    ratio = np.divide(x, m, out=np.ones_like(x), where=x > 0)
    return (x * np.log(ratio)).sum(-1)


def baseline_attention(d: AttentionData) -> np.ndarray:
    """Straightforward per-pair NumPy (float64): keep the counted rows, zero the padded sources and
    renormalise (once per model), then a Python loop over the pairs i < j, each vectorised over
    rows: JSD = (KL(x || m) + KL(y || m)) / 2 with m = (x + y) / 2, averaged over the rows.
    Returns the (M, M) matrix."""
    counted = d.target_mask.numpy()
    rows = d.attn.numpy()[:, counted].astype(np.float64)                    # (M, R, S)
    valid = np.broadcast_to(d.source_mask.numpy()[:, None, :], counted.shape + (rows.shape[2],))[counted]
    rows *= valid
    rows /= rows.sum(-1, keepdims=True)
    M = rows.shape[0]
    out = np.zeros((M, M))
    for i, j in combinations(range(M), 2):
        x, y = rows[i], rows[j]
        m = 0.5 * (x + y)
        out[i, j] = out[j, i] = (0.5 * (_kl_rows(x, m) + _kl_rows(y, m))).mean()
    return out
