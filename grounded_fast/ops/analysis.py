"""The analysis ops: ``grounded_fast::pairwise_agreement`` and ``grounded_fast::attention_pair_sums``.

Each has a C++/OpenMP kernel (csrc/analysis/cpu/, schema in csrc/bindings.cpp), a Triton kernel
(csrc/analysis/triton/: CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``) and a ``*_torch``
twin wrapping the float64 reference (any device). Both get fake implementations so they trace
under ``torch.compile``. The outputs are statistics of model outputs, not training signals: the
ops are not differentiable (inputs are used detached).

The public, chunk-streaming API is :mod:`grounded_fast.analysis`; these functions return the sums
for one chunk.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .._backend import choose_backend
from ..reference.analysis import (ATTENTION_METRICS, attention_pair_sums_reference,
                                  pairwise_agreement_reference)

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

_AGREE_OP = "grounded_fast::pairwise_agreement"
_AGREE_TORCH_OP = "grounded_fast::pairwise_agreement_torch"
_ATTN_OP = "grounded_fast::attention_pair_sums"
_ATTN_TORCH_OP = "grounded_fast::attention_pair_sums_torch"


@torch.library.custom_op(_AGREE_TORCH_OP, mutates_args=())
def _pairwise_agreement_torch(logits: Tensor, mask: Tensor, jsd: bool = False
                              ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    with torch.no_grad():
        out = pairwise_agreement_reference(logits, mask, jsd)
    return tuple(t.to(logits.device).clone() for t in out)


def _agreement_fake(logits, mask, jsd=False):
    M = logits.shape[0]
    f64, i64 = dict(dtype=torch.float64), dict(dtype=torch.long)
    return (logits.new_empty(M, M, **i64), logits.new_empty(M, M, **f64), logits.new_empty(M, **f64),
            logits.new_empty(M, M, **f64), logits.new_empty((), **i64))


@torch.library.custom_op(_ATTN_TORCH_OP, mutates_args=())
def _attention_pair_sums_torch(attn: Tensor, source_mask: Tensor, row_weight: Tensor, metric: int) -> Tensor:
    name = {v: k for k, v in ATTENTION_METRICS.items()}[metric]
    with torch.no_grad():
        out = attention_pair_sums_reference(attn, row_weight, name,
                                            source_mask if source_mask.numel() else None)
    return out.to(attn.device).clone()


def _attention_fake(attn, source_mask, row_weight, metric):
    M = attn.shape[0]
    return attn.new_empty(M, M, dtype=torch.float64)


for _name in (_AGREE_OP, _AGREE_TORCH_OP):
    torch.library.register_fake(_name)(_agreement_fake)
for _name in (_ATTN_OP, _ATTN_TORCH_OP):
    torch.library.register_fake(_name)(_attention_fake)


def pairwise_agreement_sums(logits: Tensor, mask: Tensor, jsd: bool = False, backend: str | None = None
                            ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Chunk sums of agreement, KL, entropy and JSD between M models (shapes validated by the caller).

    logits (M, N, V) float; mask (N,) bool. The counted logits must be finite with
    |logit| <= ``MAX_ABS_LOGIT`` (1e20); otherwise a ValueError names the model and the position,
    on every backend. Returns (agree (M, M) int64 counts of positions where the argmaxes agree,
    kl (M, M) float64 sum of KL(p_i || p_j), entropy (M,) float64 sum of H(p_i), jsd (M, M)
    float64 (zeros unless ``jsd``), count () int64), over the positions where ``mask`` is True.
    """
    top = check_logits(logits, mask)
    # Triton first: its tensor-core cross term made it 1.7x (float32) / 1.1x (bfloat16) faster than the
    # CUDA kernels on an H100 (bench/results/gpu-h100.md)
    which = choose_backend(logits.device, backend, gpu=("triton", "cuda"))
    if which == "triton":
        from ..triton_kernels.analysis.pairwise_agreement import pairwise_agreement_triton
        one_pass = None if _one_pass_resolves(logits, mask, top) else False
        return pairwise_agreement_triton(logits.detach(), mask, jsd, one_pass=one_pass)
    if which in ("cpu", "cuda"):  # the same op; the dispatcher picks the kernel by device
        try:
            return torch.ops.grounded_fast.pairwise_agreement(logits.detach(), mask, jsd)
        except RuntimeError as exc:  # the kernel's check of the logits, as the error it is
            if "contain NaN or inf" in str(exc):
                raise ValueError(str(exc).splitlines()[0]) from None
            raise
    return torch.ops.grounded_fast.pairwise_agreement_torch(logits.detach(), mask, jsd)


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


def _one_pass_resolves(logits: Tensor, mask: Tensor, top: Tensor | None) -> bool:
    """Whether the Triton one-pass kernel keeps its float32 accuracy on these logits (see
    ``ONE_PASS_MAX_SPREAD``); top (M, n): the rows' maxima at the counted positions."""
    if top is None or not top.numel():
        return True
    top = top.double()
    shift = 0.0 if logits.dtype == torch.bfloat16 else logits.detach()[:, mask.to(logits.device), 0].double()
    spread = float((top - shift).max())
    return spread <= max(ONE_PASS_MAX_SPREAD, float(top.abs().max()))


def attention_pair_sums(attn: Tensor, source_mask: Tensor | None, row_weight: Tensor, metric: str,
                        backend: str | None = None) -> Tensor:
    """sum_r row_weight_r d(attn[i, r], attn[j, r]) for every pair of models (validated inputs).

    attn (M, R, S) float; source_mask (R, S) bool or None; row_weight (R,) float64; metric in
    ``ATTENTION_METRICS``. Rows are restricted to the valid sources and renormalised.
    Returns (M, M) float64 with a zero diagonal.
    """
    mask = source_mask if source_mask is not None else attn.new_empty(0, dtype=torch.bool)
    which = choose_backend(attn.device, backend, gpu=("cuda", "triton"))
    if which == "triton":
        from ..triton_kernels.analysis.attention_distance import attention_pair_sums_triton
        return attention_pair_sums_triton(attn.detach(), mask, row_weight, ATTENTION_METRICS[metric])
    if which in ("cpu", "cuda"):
        try:
            return torch.ops.grounded_fast.attention_pair_sums(attn.detach(), mask, row_weight,
                                                               ATTENTION_METRICS[metric])
        except RuntimeError as exc:
            if "no mass on the valid sources" in str(exc):
                raise ValueError(str(exc).splitlines()[0]) from None
            raise
    check_attention_rows(attn, source_mask, row_weight)
    if mask.numel():  # the kernels ignore what masked sources hold (even NaN): so does the reference
        attn = torch.where(mask, attn, torch.zeros((), dtype=attn.dtype, device=attn.device))
    return torch.ops.grounded_fast.attention_pair_sums_torch(attn.detach(), mask, row_weight,
                                                             ATTENTION_METRICS[metric])


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
