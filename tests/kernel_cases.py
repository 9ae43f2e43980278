"""Inputs and checks shared by a kernel's tests on a GPU (tests/test_*_gpu.py) and under cuda_sim
on the CPU (tests/test_cuda_sim.py), so that both run the same case."""
import math

import pytest
import torch

from conftest import assert_close


def attention_inputs(M, R, S, dtype):
    """Attention (M, R, S) in ``dtype``, a source mask (R, S) with source 0 always valid, and row
    weights (R,) float64 with row 0 not counted."""
    g = torch.Generator().manual_seed(R + S)
    a = torch.softmax(2 * torch.randn(M, R, S, generator=g), -1).to(dtype)
    smask = torch.rand(R, S, generator=g) > 0.3
    smask[:, 0] = True
    w = torch.rand(R, generator=g, dtype=torch.float64)
    w[0] = 0.0
    return a, smask, w


def check_fused_pass(fused_pass, scale, cap):
    """One ``ot_fused_pass_cuda`` call against its definition: lu' = la - scale LSE_j(lv_j - C_ij/eps)
    (with ``cap``, at most lu) for active problems, lu exactly for a retired one, -inf rows of zero
    weight, and the column LSE of lu' merged over 3 blocks; a padded C (ldc 72 for m 70) whose
    padding holds garbage. ``fused_pass`` takes and returns CPU tensors (it moves them)."""
    g = torch.Generator().manual_seed(3)
    B, n, m, ldc, reg = 3, 23, 70, 72, 0.05
    C = torch.rand(B, n, m, generator=g)
    Cp = torch.cat([C, torch.full((B, n, ldc - m), -1e30)], 2)  # would dominate every LSE if read
    lv = torch.randn(B, m, generator=g)
    lv[:, -3:] = -math.inf
    la = torch.log(torch.rand(B, n, generator=g))
    la[1, :4] = -math.inf
    lu = torch.randn(B, n, generator=g) - (2.5 if cap else 0.0)  # about la - LSE: the cap binds on some rows
    active = torch.tensor([True, True, False])
    new, col = fused_pass(Cp, m, lv, lu, la, active, 1.0 / reg, 3, scale, cap)
    c = C.double() / reg
    ref = la.double() - scale * torch.logsumexp(lv.double()[:, None, :] - c, 2)
    if cap:
        ref = torch.minimum(ref, lu.double())
        assert (ref[:2] == lu[:2].double()).any() and (ref[:2] < lu[:2].double()).any()  # both branches taken
    ref = torch.where(active[:, None], ref, lu.double())
    assert torch.equal(new[2], lu[2]), "a retired problem's lu changed"
    assert torch.isneginf(new[1, :4]).all() and torch.isfinite(new[1, 4:]).all()
    fin = torch.isfinite(ref)
    assert_close(new.double()[fin], ref[fin], rtol=1e-5, atol=1e-4, name="lu")
    assert_close(col.double(), torch.logsumexp(ref[:, :, None] - c, 1), rtol=1e-5, atol=1e-4, name="column LSE")
    with pytest.raises(RuntimeError, match="multiple of 4"):
        fused_pass(Cp[:, :, :71].contiguous(), m, lv, lu, la, active, 1.0 / reg, 3, 1.0, False)
