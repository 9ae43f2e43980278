"""SinkhornLoss / PartialOTLoss: features in, per-batch loss out, padding masks."""
import pytest
import torch

from grounded_fast.nn import PartialOTLoss, SinkhornLoss
from grounded_fast.ot import cost_matrix

from conftest import assert_close


def test_partial_loss_padding_equals_cropped():
    torch.manual_seed(0)
    x, y = torch.randn(2, 8, 16, dtype=torch.float64), torch.randn(2, 12, 16, dtype=torch.float64)
    xm = torch.ones(2, 8, dtype=torch.bool)
    xm[1, 5:] = False
    ym = torch.ones(2, 12, dtype=torch.bool)
    ym[1, 9:] = False
    loss = PartialOTLoss(reg=0.05, mass=0.5)
    full = loss(x, y, x_mask=xm, y_mask=ym)
    cropped = loss(x[1:, :5], y[1:, :9])
    assert full.shape == (2,)
    assert_close(full[1], cropped[0], rtol=1e-9, atol=1e-12)


def test_losses_backprop_to_features():
    x = torch.randn(3, 6, 8, requires_grad=True)
    y = torch.randn(3, 7, 8, requires_grad=True)
    for loss in (SinkhornLoss(reg=0.1), SinkhornLoss(reg=0.1, reg_m=1.0), PartialOTLoss(reg=0.1, mass=0.3)):
        out = loss(x, y)
        assert out.shape == (3,) and torch.isfinite(out).all()
        out.sum().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        x.grad = y.grad = None


def test_cost_given_and_reductions():
    x, y = torch.randn(2, 4, 3), torch.randn(2, 5, 3)
    C = cost_matrix(x, y, "sqeuclidean")
    l1 = SinkhornLoss(reg=0.2, reduction="mean")(x, y)
    l2 = SinkhornLoss(reg=0.2, cost=None, reduction="mean")(C=C)
    assert l1.dim() == 0 and torch.allclose(l1, l2)
    loss, plan = PartialOTLoss(reg=0.2, mass=0.5)(C=C, return_plan=True)
    assert plan.shape == (2, 4, 5) and torch.allclose(plan.sum((1, 2)), torch.full((2,), 0.5), atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="mass"):
        PartialOTLoss(mass=1.5)
    with pytest.raises(ValueError, match="cost"):
        SinkhornLoss(cost="l7")
    with pytest.raises(ValueError, match="pass features"):
        SinkhornLoss()(torch.randn(1, 2, 3))
