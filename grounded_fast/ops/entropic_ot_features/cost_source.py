"""Whether to rebuild the cost from features (``entropic_ot_features``) or materialise it
(``entropic_ot``): :func:`choose_cost_source` and the model behind it, :func:`feature_dim_limit`."""
from __future__ import annotations

from typing import Optional

import torch

from ..._backend import cuda_extension_available, triton_available
from .driver import FEATURE_COSTS

# Effective multiply-add throughput of the products that rebuild C, in FLOP per byte of the
# memory path's own rate of reading C, by (backend, feature dtype): with the per-entry log-sum-exp
# work of both paths folded in, recomputing costs 2 d / I byte-equivalents per entry against e_C.
# Calibrated from bench/gpu_ot.py case 3 on an H100 (one 8192 x 8192 problem, d = 64, float32):
# with t_feat and t_mem the times of the features route and of C from memory,
# I = 2 d / (4 t_feat / t_mem) (the timings and their provenance: docs/PERFORMANCE.md, "Feature-cost
# solver"). The other dtypes are not measured yet: the peak-based estimates they were derived with
# (Triton bf16/fp16 160, fp64 8; CUDA fp64 6, with fp32 at 40 and 12) scaled by the measured
# fp32 ratio of the same backend (Triton 13/40, CUDA 18/12); the CUDA kernels multiply half
# features as float32, so their rate is fp32's.
SUSTAINED_INTENSITY = {
    ("triton", torch.bfloat16): 52.0, ("triton", torch.float16): 52.0, ("triton", torch.float32): 13.0,
    ("triton", torch.float64): 2.6,
    ("cuda", torch.bfloat16): 18.0, ("cuda", torch.float16): 18.0, ("cuda", torch.float32): 18.0,
    ("cuda", torch.float64): 9.0,
}
ON_CHIP_ENTRIES = 1 << 15  # padded n x m of the persistent kernels' on-chip tile (sinkhorn_small.MAX_TILE)
MEMORY_FRACTION = 0.5      # of the free device memory the materialised path may take


def feature_dim_limit(n: int, m: int, dtype: torch.dtype = torch.float32, backend: str = "triton") -> float:
    """Largest feature dimension d for which rebuilding C from features beats reading it.

    Per entry and half-iteration, reading C costs e_C bytes (4: a materialised cost is float32, or
    8 for float64); recomputing costs 2 d FLOPs of products plus the features' e_f d (1/n + 1/m)
    bytes. At a sustained intensity I (FLOP per byte, ``SUSTAINED_INTENSITY``) recomputing wins when
        2 d / I + e_f d (1/n + 1/m) < e_C,   i.e.   d < e_C / (2 / I + e_f (1/n + 1/m)).
    The exp / max work per entry is the same for both sources and cancels.
    """
    e_c = 8 if dtype == torch.float64 else 4
    e_f = torch.finfo(dtype).bits // 8
    intensity = SUSTAINED_INTENSITY.get((backend, dtype))
    if intensity is None:
        return 0.0
    return e_c / (2.0 / intensity + e_f * (1.0 / n + 1.0 / m))


def _pow2(k: int) -> int:
    return 1 << max(0, int(k) - 1).bit_length()


def choose_cost_source(n: int, m: int, d: int, dtype: torch.dtype = torch.float32, *, batch: int = 1,
                       cost: str = "sqeuclidean", device="cuda", backend: Optional[str] = None,
                       free_bytes: Optional[int] = None) -> str:
    """'memory' (materialise C, then ``entropic_ot``) or 'features' (``entropic_ot_features``) for
    ``batch`` problems of n x m points with d features of ``dtype``.

    * cost not in ('sqeuclidean', 'cosine'), or a CPU device: 'memory' -- the C++ kernels on a
      materialised C (measured faster than the chunked torch recompute on the 2-core CI
      machine: docs/PERFORMANCE.md, "Feature-cost solver");
    * a GPU backend without kernels for features ('torch', 'cpu'): 'memory' unless C does not fit;
    * C (plus the plan and the autograd temporaries of cost_matrix, 3 B n m e_C bytes) would take
      more than ``MEMORY_FRACTION`` of ``free_bytes`` (default: the device's free memory):
      'features', whatever d;
    * padded n x m within the persistent kernels' on-chip tile (``ON_CHIP_ENTRIES``): 'memory'
      (C is read once for all iterations);
    * otherwise 'features' iff d <= ``feature_dim_limit(n, m, dtype, backend)`` (bytes per
      iteration against the products' FLOPs, calibrated on an H100; e.g. Triton, n = m = 8192:
      d <= 25 for float32, d <= 102 for bfloat16; the CUDA kernels' FMA products: d <= 35).
    ``backend``: that of the solve (None: Triton if installed, else the CUDA extension).
    """
    device = torch.device(device)
    if cost not in FEATURE_COSTS or device.type == "cpu":
        return "memory"
    if backend in (None, "triton") and triton_available():
        backend = "triton"
    elif backend in (None, "cuda") and cuda_extension_available():
        backend = "cuda"
    e_c = 8 if dtype == torch.float64 else 4
    needed = 3 * batch * n * m * e_c
    if free_bytes is None and device.type == "cuda" and torch.cuda.is_available():
        free_bytes = torch.cuda.mem_get_info(device)[0]
    if free_bytes is not None and needed > MEMORY_FRACTION * free_bytes:
        return "features"
    if backend not in ("triton", "cuda"):
        return "memory"
    if _pow2(n) * _pow2(m) <= ON_CHIP_ENTRIES:
        return "memory"
    return "features" if d <= feature_dim_limit(n, m, dtype, backend) else "memory"


