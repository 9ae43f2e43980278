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
    """Chunk sums of agreement, KL, entropy and JSD between M models (validated inputs expected).

    logits (M, N, V) float; mask (N,) bool. Returns (agree (M, M) int64 counts of positions where
    the argmaxes agree, kl (M, M) float64 sum of KL(p_i || p_j), entropy (M,) float64 sum of
    H(p_i), jsd (M, M) float64 (zeros unless ``jsd``), count () int64), over the positions where
    ``mask`` is True.
    """
    # Triton first: its tensor-core cross term made it 1.7x (float32) / 1.1x (bfloat16) faster than the
    # CUDA kernels on an H100 (bench/results/gpu-h100.md)
    which = choose_backend(logits.device, backend, gpu=("triton", "cuda"))
    if which == "triton":
        from ..triton_kernels.analysis.pairwise_agreement import pairwise_agreement_triton
        return pairwise_agreement_triton(logits.detach(), mask, jsd)
    if which in ("cpu", "cuda"):  # the same op; the dispatcher picks the kernel by device
        try:
            return torch.ops.grounded_fast.pairwise_agreement(logits.detach(), mask, jsd)
        except RuntimeError as exc:  # the kernel's check of the logits, as the error it is
            if "contain NaN or inf" in str(exc):
                raise ValueError(str(exc).splitlines()[0]) from None
            raise
    if not bool(torch.isfinite(logits[:, mask]).all()):
        raise ValueError("pairwise_agreement: the logits contain NaN or inf")
    return torch.ops.grounded_fast.pairwise_agreement_torch(logits.detach(), mask, jsd)


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
