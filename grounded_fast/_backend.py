"""Loading the native extensions and choosing a backend, before autograd records anything.

Backends: ``cpu`` (C++/OpenMP kernels), ``cuda`` and ``triton`` (GPU kernels, when built),
``torch`` (the pure-PyTorch reference, any device). Choice: the explicit ``backend=`` argument,
else the environment variable ``GROUNDED_FAST_BACKEND``, else automatic. An explicit request that
cannot be met raises; an automatic choice that has to fall back warns once.
"""
from __future__ import annotations

import os
import warnings

import torch

BACKENDS = ("cpu", "cuda", "triton", "torch")
_CPU_ERROR: Exception | None = None
_WARNED: set[str] = set()

try:
    from . import _C  # noqa: F401  (registers torch.ops.grounded_fast.* CPU kernels)
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    _CPU_ERROR = exc


_CUDA_ERROR: Exception | None = None
try:  # built only with CUDA (setup.py); registers the CUDA kernels of the same ops
    from . import _C_cuda  # noqa: F401
except ImportError as exc:
    _CUDA_ERROR = exc


def cpu_extension_available() -> bool:
    return _CPU_ERROR is None


def cuda_extension_available() -> bool:
    return _CUDA_ERROR is None


def _warn_once(key: str, msg: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def triton_available() -> bool:
    """True if ``triton`` imports (its kernels run on CUDA tensors, or interpreted on the CPU)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def backend_usable(backend: str, device: torch.device) -> bool:
    """Whether ``backend`` runs ops on ``device``'s tensors in this build and environment."""
    if backend == "torch":
        return True
    if backend == "cpu":
        return device.type == "cpu" and cpu_extension_available()
    if backend == "cuda":
        return device.type == "cuda" and cuda_extension_available()
    if backend == "triton":
        return triton_available() and (device.type == "cuda" or (device.type == "cpu" and triton_interpreting()))
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def choose_backend(device: torch.device, backend: str | None = None, gpu: tuple[str, ...] = ()) -> str:
    """Return the backend that will run an op on ``device``.

    ``backend``: None (environment, then automatic) or one of ``BACKENDS``. ``gpu``: the GPU
    backends the op implements ('cuda', 'triton'), in order of preference for automatic choice.
    Triton kernels also run on CPU tensors under ``TRITON_INTERPRET=1`` when asked for explicitly.
    """
    explicit = backend is not None
    if backend is None:
        backend = os.environ.get("GROUNDED_FAST_BACKEND") or None
        explicit = backend is not None
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend is None:
        backend = "cpu" if device.type == "cpu" else next((b for b in gpu if backend_usable(b, device)), "cuda")
    if backend == "torch":
        return backend
    if backend == "cpu":
        if backend_usable("cpu", device):
            return "cpu"
        if explicit and device.type != "cpu":
            raise ValueError(f"backend='cpu' cannot run on a {device.type} tensor")
        if explicit:
            raise RuntimeError(
                "backend='cpu' requested but the grounded_fast C++ extension failed to import "
                f"({_CPU_ERROR}). Reinstall with `pip install --no-build-isolation -e .`."
            )
    if backend == "triton" and "triton" in gpu:
        if backend_usable("triton", device):
            return "triton"
        if explicit:
            reason = ("triton is not installed" if not triton_available() else
                      f"Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), got {device.type}")
            raise RuntimeError(f"backend='triton' requested but {reason}")
    elif backend == "cuda" and "cuda" in gpu and backend_usable("cuda", device):
        return "cuda"
    elif backend == "cuda" and "cuda" in gpu and cuda_extension_available() and explicit:
        raise RuntimeError(f"backend='cuda' requested but the CUDA kernels need CUDA tensors, got {device.type}")
    elif backend in ("cuda", "triton") and explicit:
        raise RuntimeError(
            f"backend={backend!r} requested but no {backend} kernel for this op is available in "
            "this build; use backend='torch' for the reference."
        )
    _warn_once(f"{device.type}:{backend}",
               f"grounded_fast: no native kernel for {device.type} tensors here; "
               "falling back to the pure-PyTorch reference (slower).")
    return "torch"
