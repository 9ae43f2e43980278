"""The host side of the CUDA backend that runs without a GPU: the fused regime's block count and its
input errors (raised before any kernel or device query)."""
import math

import pytest
import torch

from grounded_fast.ops import BALANCED, PARTIAL, SolveSpec
from grounded_fast.ops.entropic_ot import backend_cuda as cuda_ot


def test_fused_blocks_make_one_wave_of_at_least_64_rows():
    assert cuda_ot.fused_blocks(16, 4096, 4096, sms=132) == 16   # 2 an SM: 256 blocks <= 264
    assert cuda_ot.fused_blocks(17, 4096, 4096, sms=132) == 15   # not 16 x 17 = 272: a second wave
    assert cuda_ot.fused_blocks(16, 4096, 8192, sms=132) == 8    # 32 columns a thread: 1 an SM
    assert cuda_ot.fused_blocks(1, 4096, 4096, sms=132) == 64    # 64 rows each, not 264 blocks
    assert cuda_ot.fused_blocks(500, 100, 64, sms=132) == 1
    assert cuda_ot.fused_blocks(16, 4096, 4096, sms=132, per_sm=4) == 33  # the sweep's choice


def _args(problem, dtype=torch.float32, m=5):
    B, n = 2, 3
    C = torch.rand(B, n, m, dtype=dtype)
    a, b = torch.full((B, n), 1 / n, dtype=dtype), torch.full((B, m), 1 / m, dtype=dtype)
    return (C, a, b, torch.full((B,), 0.5, dtype=dtype), torch.zeros(B, n, dtype=dtype), torch.zeros(B, m, dtype=dtype),
            SolveSpec(problem, 0.1, math.inf, math.inf, True, 10, 1e-6, 2))


@pytest.mark.parametrize("problem,dtype,m,match", [
    (PARTIAL, torch.float64, 5, "float32 or half-precision"),
    (BALANCED, torch.float64, 5, "float32 or half-precision"),
    (BALANCED, torch.float32, 8193, "at most 8192 columns"),
])
def test_fused_regime_input_errors(problem, dtype, m, match):
    with pytest.raises(ValueError, match=match):
        cuda_ot.solve(*_args(problem, dtype, m), regime="fused")


def test_unknown_regime():
    with pytest.raises(ValueError, match="regime must be one of"):
        cuda_ot.solve(*_args(BALANCED), regime="fast")
