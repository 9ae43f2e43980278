"""What the analysis ops accept: the attention metrics by code, the bound on |logit|, and the checks
every backend's input passes first (their errors name the model and the position or row)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

ATTENTION_METRICS = {"l2": 0, "tv": 1, "hellinger": 2, "jsd": 3}

# The largest |logit| the agreement ops accept (counted positions). Beyond it, float32 intermediate
# terms (differences of logits, scaled by log2 e and summed over the vocabulary) overflow or round
# away the entropy, each backend differently (3e38 gave KL NaN, entropy inf and JSD 0 on the C++
# kernel). A fill such as -1e9 for masked vocabulary entries is well inside.
MAX_ABS_LOGIT = 1e20
# The Triton one-pass kernel takes each row's products about the row's first logit (0 for
# bfloat16), so its float32 rounding grows with the distance from that logit to the row's maximum
# (a first logit of -1e6 below the others cost 0.2 nats of entropy); the two-pass kernels' grows
# with the maximum itself. The one-pass form runs while that distance stays below this, or below
# the largest |maximum| (where the two-pass form would do no better).
ONE_PASS_MAX_SPREAD = 1e3

def check_logits(logits: Tensor, mask: Tensor) -> Tensor | None:
    """Refuse counted logits that are NaN, infinite or beyond ``MAX_ABS_LOGIT`` in magnitude.

    logits (M, N, V) float; mask (N,) bool. One min/max reduction over the vocabulary; raises a
    ValueError naming the first such model i and position n. Returns the rows' maxima at the
    counted positions, (M, n) in the logits' dtype (None when there is nothing to count).
    """
    if logits.shape[2] == 0 or not logits.shape[1]:
        return None
    lo, hi = torch.aminmax(logits.detach(), dim=-1)                   # (M, N)
    mask = mask.to(logits.device)
    bad = ~((lo >= -MAX_ABS_LOGIT) & (hi <= MAX_ABS_LOGIT)) & mask    # NaN fails both comparisons
    if bool(bad.any()):
        i, n = bad.nonzero()[0].tolist()
        row = logits[i, n].detach()
        if not bool(torch.isfinite(row).all()):
            raise ValueError(f"pairwise_agreement: the logits of model {i} at position {n} contain NaN or inf")
        raise ValueError(f"pairwise_agreement: the logits of model {i} at position {n} reach "
                         f"{float(row.abs().max()):.3g} in magnitude, beyond MAX_ABS_LOGIT = {MAX_ABS_LOGIT:g} "
                         "(float32 terms overflow); mask vocabulary entries with a fill such as -1e9, "
                         "not finfo.min")
    return hi[:, mask]


def one_pass_resolves(logits: Tensor, mask: Tensor, top: Tensor | None) -> bool:
    """Whether the Triton one-pass kernel keeps its float32 accuracy on these logits (see
    ``ONE_PASS_MAX_SPREAD``); top (M, n): the rows' maxima at the counted positions."""
    if top is None or not top.numel():
        return True
    top = top.double()
    shift = 0.0 if logits.dtype == torch.bfloat16 else logits.detach()[:, mask.to(logits.device), 0].double()
    spread = float((top - shift).max())
    return spread <= max(ONE_PASS_MAX_SPREAD, float(top.abs().max()))


def check_attention_rows(attn: Tensor, source_mask: Tensor | None, row_weight: Tensor) -> None:
    """Raise the kernels' ValueError for the first counted attention row that is negative,
    non-finite or has no mass on the valid sources.

    attn (M, R, S) float; source_mask (R, S) bool or None (what masked sources hold is ignored);
    row_weight (R,) (rows of weight 0 are not counted, so not checked). The message names the
    model i and the row r, as the C++ kernel's does.
    """
    counted = (row_weight != 0).to(attn.device)
    rows = attn.detach()[:, counted]
    if source_mask is not None and source_mask.numel():
        rows = torch.where(source_mask.to(attn.device)[counted], rows, torch.zeros((), dtype=rows.dtype,
                                                                                    device=rows.device))
    mass = rows.sum(-1, dtype=torch.float64)
    bad = ~((rows >= 0) & (rows <= torch.finfo(rows.dtype).max)).all(-1) | ~((mass > 0) & (mass < math.inf))
    if bool(bad.any()):
        r, i = bad.t().nonzero()[0].tolist()  # the first row, then its first model
        r = int(counted.nonzero()[r])
        raise ValueError(f"attention_distance: the attention of model {i} in row {r} is negative, "
                         "non-finite or has no mass on the valid sources")
