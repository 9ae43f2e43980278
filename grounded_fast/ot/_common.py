"""Shared plumbing of the POT-compatible functions: argument handling, logs, warnings."""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import torch

from ..ops import OTSolution, entropic_ot
from ..ops.entropic_ot.spec import check_reg as spec_check_reg, mass_rtol
from ._convert import Converter


def prepare(a, b, M):
    """POT's conventions: lists accepted, empty a/b mean uniform weights. Returns
    (conv, a (n,), b (n,) or (m, k), M (n, m)) as torch tensors."""
    conv = Converter(a, b, M)
    M = conv.to_torch(M)
    if not isinstance(M, torch.Tensor) or M.dim() != 2:
        raise ValueError(f"M must be a 2-d cost matrix, got shape {tuple(getattr(M, 'shape', ()))}")
    n, m = M.shape
    if M.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        M = M.double()
    a = conv.to_torch(a) if a is not None and len(a) else None
    b = conv.to_torch(b) if b is not None and len(b) else None
    a = torch.full((n,), 1.0 / n, dtype=M.dtype, device=M.device) if a is None else a.to(M.dtype)
    b = torch.full((m,), 1.0 / m, dtype=M.dtype, device=M.device) if b is None else b.to(M.dtype)
    if a.dim() != 1 or a.shape[0] != n:
        raise ValueError(f"a must have shape ({n},) to match M {tuple(M.shape)}, got {tuple(a.shape)}")
    if b.dim() not in (1, 2) or b.shape[0] != m:
        raise ValueError(f"b must have shape ({m},) or ({m}, k) to match M {tuple(M.shape)}, got {tuple(b.shape)}")
    for name, w in (("a", a), ("b", b)):  # one problem: an all-zero histogram is no problem at all
        if bool((w.sum(0) == 0).any()):
            raise ValueError(f"{name} (the {'source' if name == 'a' else 'target'} weights) sums to 0")
    return conv, a, b, M


def transported_mass(m, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Partial OT's transported mass as a (B,) tensor in a's dtype and device, for a (B, n), b (B, m).

    ``m``: None (min(|a|_1, |b|_1)), a number, or B numbers (list, array, tensor). Checked finite,
    >= 0 and <= min(|a|_1, |b|_1) up to the op's relative rounding tolerance (torch's and numpy's sums
    of the same weights differ by an ulp), then clipped to that cap. Gradients with respect to m are
    not provided: a tensor m that requires grad raises."""
    cap = torch.minimum(a.sum(-1), b.sum(-1))
    if m is None:
        return cap
    if isinstance(m, torch.Tensor) and m.requires_grad:
        raise NotImplementedError("gradients with respect to m (the transported mass) are not supported")
    if isinstance(m, bool) or not isinstance(m, (numbers.Real, np.generic, torch.Tensor, np.ndarray, list, tuple)):
        raise TypeError(f"m must be a number or have shape ({cap.shape[0]},), got {type(m).__name__}")
    mass = m if isinstance(m, torch.Tensor) else torch.as_tensor(np.asarray(m, dtype=np.float64))
    mass = mass.to(device=a.device, dtype=a.dtype)
    if mass.dim() > 1 or (mass.dim() == 1 and mass.shape[0] != cap.shape[0]):
        raise ValueError(f"m must be a number or have shape ({cap.shape[0]},), got shape {tuple(mass.shape)}")
    mass = mass.expand(cap.shape)
    if not bool(torch.isfinite(mass).all()):
        raise ValueError(f"m (the transported mass) must be finite, got {m!r}")
    if bool((mass < 0).any()):
        raise ValueError("Problem infeasible. Parameter m should be greater than 0.")
    if bool((mass > cap * (1 + mass_rtol(a.dtype))).any()):
        raise ValueError("Problem infeasible. Parameter m should lower or equal than min(|a|_1, |b|_1).")
    return torch.minimum(mass, cap)


def err_list(conv: Converter, hist: torch.Tensor) -> list:
    """POT's log['err']: the stop criterion at each check, as floats (numpy) or 0-d tensors."""
    h = hist[hist >= 0]
    return [v for v in h] if conv.torch_in else [float(v) for v in h.cpu()]


def print_verbose(hist: torch.Tensor, every: int, header_every: int = 200) -> None:
    """POT's verbose table of the stop criterion (checked every ``every`` iterations)."""
    h = hist[hist >= 0].tolist()
    for k, e in enumerate(h):
        it = k * every
        if it % header_every == 0:
            print("{:5s}|{:12s}".format("It.", "Err") + "\n" + "-" * 19)
        print("{:5d}|{:8e}|".format(it, e))


NOT_CONVERGED = ("Sinkhorn did not converge. You might want to increase the number of iterations "
                 "`numItermax` or the regularization parameter `reg`.")  # POT's words


def warn_not_converged(sol: OTSolution, warn: bool) -> None:
    if warn and (sol.status == 1).any():
        warnings.warn(NOT_CONVERGED, UserWarning, stacklevel=3)


def envelope_loss(sol: OTSolution) -> torch.Tensor:
    """The linear cost <P, M> as POT reports it, carrying the envelope gradient of the
    regularised objective (dL/dM = P, dL/da, dL/db = dual potentials)."""
    if sol.plan.requires_grad:  # grad='autodiff': value_linear is differentiable by unrolling, as POT's
        return sol.value_linear
    return sol.value_linear + (sol.value - sol.value.detach())


def solve(a, b, M, reg, **kw) -> OTSolution:
    """One problem (n,), (m,), (n, m) through the batched op."""
    for k in ("log_u0", "log_v0"):
        if kw.get(k) is not None and kw[k].dim() == 1:
            kw[k] = kw[k][None]
    return entropic_ot(M[None], a[None], b[None], reg=float(reg), **kw)


def check_reg(reg) -> float:
    """POT's ``reg`` (a number or a one-element tensor) as a float, checked as the op checks it."""
    return spec_check_reg(float(reg) if isinstance(reg, torch.Tensor) else reg)


_ZERO_REG_M = 2.0 ** -100   # reg_m = 0 is handed to the op as this times reg: fi = reg_m / (reg_m + reg) ~ 1e-30


def reg_m_pair(reg_m, name: str = "reg_m") -> tuple[float, float]:
    """POT's marginal relaxation: a number (both sides) or 1 or 2 entries (tuple, list, numpy
    array, torch tensor). Returns (reg_m1, reg_m2), each >= 0 or inf."""
    if isinstance(reg_m, torch.Tensor):
        if reg_m.requires_grad:
            raise NotImplementedError(f"gradients with respect to {name} are not supported; pass a number")
        if reg_m.dim() > 1:
            raise ValueError(f"{name} must be a number or have 1 or 2 entries, got shape {tuple(reg_m.shape)}")
        vals = reg_m.detach().cpu().reshape(-1).tolist()
    elif isinstance(reg_m, np.ndarray):
        if reg_m.ndim > 1:
            raise ValueError(f"{name} must be a number or have 1 or 2 entries, got shape {reg_m.shape}")
        vals = reg_m.reshape(-1).tolist()
    elif isinstance(reg_m, (tuple, list)):
        vals = list(reg_m)
    else:
        vals = [reg_m]
    if len(vals) not in (1, 2):
        raise ValueError(f"{name} must be a number or have 1 or 2 entries, got {len(vals)}")
    out = []
    for v in vals:
        if isinstance(v, torch.Tensor) and v.dim() == 0:
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, (numbers.Real, np.generic)):
            raise TypeError(f"{name} entries must be numbers, got {type(v).__name__}")
        v = float(v)
        if math.isnan(v) or v < 0:
            raise ValueError(f"{name} must be >= 0 (or inf), got {reg_m!r}")
        out.append(v)
    return (out[0], out[-1])


def op_reg_m(r: float, reg: float) -> float:
    """The op's penalty for POT's reg_m: the op needs > 0, and a penalty 2^-100 reg iterates as 0
    (fi = 0 in every digit, POT's u = 1)."""
    return r if r > 0 else _ZERO_REG_M * reg
