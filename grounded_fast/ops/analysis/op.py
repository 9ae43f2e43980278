"""The analysis ops ``grounded_fast::pairwise_agreement`` and ``grounded_fast::attention_pair_sums``:
one schema each with an explicit ``backend`` argument, one fake each.

Backends: 'cpu' and 'cuda' — the native kernel ops ``*_kernel`` (csrc/analysis/cpu/ and
csrc/analysis/cuda/; one schema, the dispatcher picks the kernel by the tensors' device); 'triton'
— csrc/analysis/triton/ (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``); 'torch' —
the float64 reference (grounded_fast/reference/analysis.py, any device). The outputs are
statistics of model outputs, not training signals: the ops have no autograd formula (inputs are
used detached). Every backend raises ValueError for bad data (checks.py; the native kernels raise
it themselves).

The public, chunk-streaming API is :mod:`grounded_fast.analysis`; these functions return the sums
for one chunk.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..._backend import choose_backend
from ...reference.analysis import attention_pair_sums_reference, pairwise_agreement_reference
from .checks import ATTENTION_METRICS, check_attention_rows, check_logits, one_pass_resolves

AGREEMENT_OP = "grounded_fast::pairwise_agreement"
ATTENTION_OP = "grounded_fast::attention_pair_sums"
BACKENDS = ("cpu", "cuda", "triton", "torch")
_Sums = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


@torch.library.custom_op(AGREEMENT_OP, mutates_args=())
def pairwise_agreement_op(logits: Tensor, mask: Tensor, jsd: bool, backend: str, one_pass: bool = True) -> _Sums:
    """logits (M,N,V), mask (N,) bool (validated: ``check_logits``). ``one_pass`` (Triton): whether
    its one-pass kernel may run (``one_pass_resolves``). Returns the sums of
    ``pairwise_agreement_sums``."""
    _check_backend(backend)
    if backend == "triton":
        from ...triton_kernels.analysis.pairwise_agreement import pairwise_agreement_triton
        out = pairwise_agreement_triton(logits, mask, jsd, one_pass=None if one_pass else False)
    elif backend == "torch":
        with torch.no_grad():
            out = tuple(t.to(logits.device) for t in pairwise_agreement_reference(logits, mask, jsd))
    else:
        return torch.ops.grounded_fast.pairwise_agreement_kernel(logits, mask, jsd)
    return tuple(t.clone() for t in out)


@pairwise_agreement_op.register_fake
def _agreement_fake(logits, mask, jsd, backend, one_pass=True):
    M = logits.shape[0]
    f64, i64 = dict(dtype=torch.float64), dict(dtype=torch.long)
    return (logits.new_empty(M, M, **i64), logits.new_empty(M, M, **f64), logits.new_empty(M, **f64),
            logits.new_empty(M, M, **f64), logits.new_empty((), **i64))


@torch.library.custom_op(ATTENTION_OP, mutates_args=())
def attention_pair_sums_op(attn: Tensor, source_mask: Tensor, row_weight: Tensor, metric: int, backend: str) -> Tensor:
    """attn (M,R,S), source_mask (R,S) bool or empty (all sources), row_weight (R,) float64,
    metric a code of ``ATTENTION_METRICS``. Returns (M,M) float64."""
    _check_backend(backend)
    if backend == "triton":
        from ...triton_kernels.analysis.attention_distance import attention_pair_sums_triton
        return attention_pair_sums_triton(attn, source_mask, row_weight, metric).clone()
    if backend == "torch":
        name = {v: k for k, v in ATTENTION_METRICS.items()}[metric]
        mask = source_mask if source_mask.numel() else None
        check_attention_rows(attn, mask, row_weight)
        if mask is not None:  # the kernels ignore what masked sources hold (even NaN): so does the reference
            attn = torch.where(mask, attn, torch.zeros((), dtype=attn.dtype, device=attn.device))
        with torch.no_grad():
            return attention_pair_sums_reference(attn, row_weight, name, mask).to(attn.device).clone()
    return torch.ops.grounded_fast.attention_pair_sums_kernel(attn, source_mask, row_weight, metric)


@attention_pair_sums_op.register_fake
def _attention_fake(attn, source_mask, row_weight, metric, backend):
    M = attn.shape[0]
    return attn.new_empty(M, M, dtype=torch.float64)


def pairwise_agreement_sums(logits: Tensor, mask: Tensor, jsd: bool = False, backend: str | None = None
                            ) -> _Sums:
    """Chunk sums of agreement, KL, entropy and JSD between M models (shapes validated by the caller).

    logits (M, N, V) float; mask (N,) bool. The counted logits must be finite with
    |logit| <= ``MAX_ABS_LOGIT`` (1e20); otherwise a ValueError names the model and the position,
    on every backend. Returns (agree (M, M) int64 counts of positions where the argmaxes agree,
    kl (M, M) float64 sum of KL(p_i || p_j), entropy (M,) float64 sum of H(p_i), jsd (M, M)
    float64 (zeros unless ``jsd``), count () int64), over the positions where ``mask`` is True.
    """
    top = check_logits(logits, mask)
    # Triton first on a GPU: its tensor-core cross term beat the CUDA kernels (docs/PERFORMANCE.md)
    which = choose_backend(logits.device, backend, gpu=("triton", "cuda"))
    one_pass = which != "triton" or one_pass_resolves(logits, mask, top)
    return pairwise_agreement_op(logits.detach(), mask, jsd, which, one_pass)


def attention_pair_sums(attn: Tensor, source_mask: Tensor | None, row_weight: Tensor, metric: str,
                        backend: str | None = None) -> Tensor:
    """sum_r row_weight_r d(attn[i, r], attn[j, r]) for every pair of models (validated inputs).

    attn (M, R, S) float; source_mask (R, S) bool or None; row_weight (R,) float64; metric in
    ``ATTENTION_METRICS``. Rows are restricted to the valid sources and renormalised; a counted
    row that is negative, non-finite or without mass on the valid sources is a ValueError on
    every backend. Returns (M, M) float64 with a zero diagonal.
    """
    mask = source_mask if source_mask is not None else attn.new_empty(0, dtype=torch.bool)
    which = choose_backend(attn.device, backend, gpu=("cuda", "triton"))
    return attention_pair_sums_op(attn.detach(), mask, row_weight, ATTENTION_METRICS[metric], which)
