"""Losses and modules built on the public OT API."""
from .ot_losses import PartialOTLoss, SinkhornLoss

__all__ = ["SinkhornLoss", "PartialOTLoss"]
