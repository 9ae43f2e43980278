import os

import numpy as np
import pytest
import torch

# Without a GPU, Triton kernels run in Triton's interpreter. The variable must be set before triton
# is first imported (its settings are read then) and before any @triton.jit kernel is defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import grounded_fast  # noqa: F401  (registers the ops)

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=2e-4, atol=1e-6)}


def assert_close(actual, expected, rtol, atol, name="tensor"):
    """allclose that reports NaN/inf counts, the worst error and the first bad indices."""
    actual = torch.as_tensor(actual).detach().double().cpu()
    expected = torch.as_tensor(expected).detach().double().cpu()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    nan_a, nan_e = (~torch.isfinite(actual)).sum().item(), (~torch.isfinite(expected)).sum().item()
    assert nan_a == 0 and nan_e == 0, f"{name}: non-finite values (actual {nan_a}, expected {nan_e})"
    err = (actual - expected).abs()
    bad = err > atol + rtol * expected.abs()
    if bad.any():
        idx = torch.nonzero(bad)[:5].tolist()
        raise AssertionError(f"{name}: {bad.sum().item()} of {bad.numel()} mismatched; max abs err "
                             f"{err.max().item():.3e}; first bad indices {idx}: actual "
                             f"{[actual[tuple(i)].item() for i in idx]} expected {[expected[tuple(i)].item() for i in idx]}")


def make_problem(B, n, m, dtype=torch.float64, seed=0, scale=1.0, uniform=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, 2, generator=g, dtype=torch.float64)
    y = torch.randn(B, m, 2, generator=g, dtype=torch.float64) + 0.5
    C = torch.cdist(x, y) ** 2
    C = scale * C / C.amax(dim=(1, 2), keepdim=True)
    if uniform:
        a = torch.full((B, n), 1.0 / n, dtype=torch.float64)
        b = torch.full((B, m), 1.0 / m, dtype=torch.float64)
    else:
        a = torch.rand(B, n, generator=g, dtype=torch.float64) + 0.1
        b = torch.rand(B, m, generator=g, dtype=torch.float64) + 0.1
        a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    return C.to(dtype), a.to(dtype), b.to(dtype)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
