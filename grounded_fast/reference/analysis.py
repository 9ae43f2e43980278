"""Float64 pure-PyTorch oracles for the analysis ops (any device; memory O(M N V)).

``pairwise_agreement_reference`` and ``attention_pair_sums_reference`` compute exactly what the
native ops ``grounded_fast::pairwise_agreement`` and ``grounded_fast::attention_pair_sums``
return for one chunk: sums over the counted positions, not yet averaged.
"""
from __future__ import annotations

import torch
from torch import Tensor

# metric ids shared with csrc/analysis/cpu/attention_distance_cpu.cpp
from ..ops.analysis.checks import ATTENTION_METRICS


def pairwise_agreement_reference(logits: Tensor, mask: Tensor, jsd: bool = False
                                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Chunk sums of argmax agreement, KL, entropy and (optionally) JSD between M models.

    logits (M, N, V) any float dtype; mask (N,) bool (True = counted position).
    Returns (agree (M, M) int64 counts, kl (M, M) float64 sum of KL(p_i || p_j) in nats,
    entropy (M,) float64 sum of H(p_i), jsd (M, M) float64 sum of JSD(p_i, p_j) (zeros unless
    ``jsd``), count () int64 number of counted positions), all over the counted positions.
    """
    z = logits.detach().double()[:, mask.bool()]              # (M, n, V)
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    top = z.argmax(dim=-1)                                      # (M, n), first maximum
    agree = (top[:, None, :] == top[None, :, :]).sum(-1)
    cross = torch.einsum("inv,jnv->ij", p, logp)                # sum_n sum_v p_i log p_j
    ent = -cross.diagonal().clone()
    kl = cross.diagonal()[:, None] - cross
    M = z.shape[0]
    js = torch.zeros(M, M, dtype=torch.float64, device=z.device)
    if jsd:
        for i in range(M):
            for j in range(i + 1, M):
                mid = 0.5 * (p[i] + p[j])
                val = 0.5 * (torch.xlogy(p[i], p[i] / mid).nan_to_num(0.0).sum()
                             + torch.xlogy(p[j], p[j] / mid).nan_to_num(0.0).sum())
                js[i, j] = js[j, i] = val
    count = torch.tensor(z.shape[1], dtype=torch.long)
    return agree.long(), kl, ent, js, count


def normalise_attention_rows(attn: Tensor, source_mask: Tensor | None) -> Tensor:
    """attn (M, R, S) -> float64 rows restricted to the valid sources and renormalised to sum 1."""
    a = attn.detach().double()
    if source_mask is not None:
        a = a * source_mask.bool().to(a.device)
    return a / a.sum(-1, keepdim=True)


def attention_pair_sums_reference(attn: Tensor, row_weight: Tensor, metric: str,
                                  source_mask: Tensor | None = None) -> Tensor:
    """Weighted sums over rows of a distance between every two models' attention distributions.

    attn (M, R, S): for each model, R attention rows (target positions of all items) over S
    sources; source_mask (R, S) bool or None; row_weight (R,) float (0 = row not counted).
    Rows are restricted to the valid sources and renormalised. metric: 'l2' (Euclidean), 'tv'
    (total variation, half the L1 distance), 'hellinger' (sqrt(0.5 sum (sqrt a - sqrt b)^2)) or
    'jsd' (Jensen-Shannon divergence, nats). Returns (M, M) float64: sum_r w_r d(a_ir, a_jr).
    """
    if metric not in ATTENTION_METRICS:
        raise ValueError(f"metric must be one of {sorted(ATTENTION_METRICS)}, got {metric!r}")
    a = normalise_attention_rows(attn, source_mask)
    w = row_weight.double().to(a.device)
    keep = w != 0
    a, w = a[:, keep], w[keep]
    M = a.shape[0]
    out = torch.zeros(M, M, dtype=torch.float64, device=a.device)
    for i in range(M):
        for j in range(i + 1, M):
            x, y = a[i], a[j]
            if metric == "l2":
                d = (x - y).pow(2).sum(-1).sqrt()
            elif metric == "tv":
                d = 0.5 * (x - y).abs().sum(-1)
            elif metric == "hellinger":
                d = (0.5 * (x.sqrt() - y.sqrt()).pow(2).sum(-1)).sqrt()
            else:
                mid = 0.5 * (x + y)
                d = 0.5 * (torch.xlogy(x, x / mid).nan_to_num(0.0).sum(-1)
                           + torch.xlogy(y, y / mid).nan_to_num(0.0).sum(-1))
            out[i, j] = out[j, i] = (w * d).sum()
    return out

