"""Helpers shared by the Triton kernels of every op family (imported as
``grounded_fast.triton_kernels.common``): ``fast_math`` (approximate exp2 / log2, split dots) and
``device_scalars``."""

import torch


def device_scalars(device, *values: float) -> torch.Tensor:
    """The float scalars of a kernel as a (k,) float64 tensor on ``device``, loaded in the kernel.

    Triton passes a Python float argument as float32; a float64 solve needs 1/eps, the unbalanced
    exponents and the tolerance to full precision, so they travel through memory instead."""
    return torch.tensor(values, dtype=torch.float64, device=device)
