"""The device a study computes on: ``--device auto|cpu|cuda|cuda:N``.

``resolve_device(spec)`` turns the spec into a ``torch.device`` (``auto``: CUDA when available),
``autocast(device)`` is the mixed precision of the training forward passes (bf16 on CUDA where the
GPU supports it, nothing on the CPU), ``describe(device)`` the words a unit's payload records and
``synchronize(device)`` waits for the device's queued work (for wall-clock timings on a GPU).
The device is passed explicitly from ``runner.run_study`` to a study's ``prepare``, ``run_unit``
and steps; nothing here is global state.
"""
from __future__ import annotations

import contextlib
import re
from typing import Union

import torch

DEVICE_SPECS = "auto, cpu, cuda or cuda:N"
_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")

DeviceSpec = Union[str, torch.device]


def resolve_device(spec: DeviceSpec) -> torch.device:
    """``'auto'`` -> ``cuda`` when CUDA is available, else ``cpu``; ``'cpu'``; ``'cuda'`` (the
    current GPU; the local pool may give each worker its own); ``'cuda:N'``. A ``torch.device`` of
    type cpu or cuda is checked the same way. ValueError (one line) for junk, ``cuda`` without
    CUDA and ``cuda:N`` beyond the visible GPUs."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    m = _SPEC.match(spec.strip().lower()) if isinstance(spec, str) else None
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise ValueError(f"device must be {DEVICE_SPECS}, got {spec!r}")
    kind, index = m.group(1), m.group(2)
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise ValueError(f"device {spec!r}: CUDA is not available ({why}); use --device cpu or auto")
    if index is None:
        return torch.device("cuda")
    n = torch.cuda.device_count()
    if int(index) >= n:
        raise ValueError(f"device {spec!r}: out of range, {n} GPU{'s' * (n != 1)} visible (cuda:0 .. cuda:{n - 1})")
    return torch.device("cuda", int(index))


def is_cuda(device: DeviceSpec) -> bool:
    """Whether ``device`` (a torch.device or a resolved spec string) is a CUDA device."""
    return torch.device(device).type == "cuda"


def autocast(device: torch.device):
    """The context of a training forward pass: ``torch.autocast('cuda', dtype=torch.bfloat16)`` on a
    CUDA device that supports bf16, else a no-op (the CPU computes in float32, bit for bit as
    without it). The OT losses and analysis ops accumulate in float32 / float64 whatever their
    inputs; the GroundedBERT OT loss runs outside autocast on float32 features."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def describe(device: torch.device) -> str:
    """``'cpu'``, or ``'cuda:0 (NVIDIA H100 80GB HBM3)'``: the device and its GPU's name (the index
    is the one this process sees; a pool worker with its own GPU sees it as cuda:0)."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    index = torch.cuda.current_device() if device.index is None else device.index
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on a CUDA ``device`` (a no-op on the CPU): timings read around GPU
    work need it, since kernels run asynchronously."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
