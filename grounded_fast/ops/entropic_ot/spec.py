"""The solve specification of the entropic OT ops: everything but the tensors, checked in one place.

:class:`SolveSpec` is built from the public functions' arguments (its constructor is the one check
of every field), handed whole to the driver and the backends, and flattened to scalars only at the
custom-op boundary (``op_args``; ``SolveSpec(*args)`` rebuilds it there, through the same check, so
a direct call of the op is checked too: a torch schema takes no Python objects). Derived quantities (the unbalanced exponents ``fa``, ``fb`` and the history
length) are properties here and computed nowhere else.
"""
from __future__ import annotations

import dataclasses
import math

import torch

BALANCED, UNBALANCED, PARTIAL = 0, 1, 2
PROBLEMS = (BALANCED, UNBALANCED, PARTIAL)
DOMAINS = {"auto": 0, "log": 1}  # 0: stabilised scaling-domain iterations where safe (CPU kernel); 1: log only
# err_history holds at most this many checks by default (the last slot keeps the latest check), so
# that its memory does not grow with max_iter
HISTORY_CAP = 10_000


def check_reg(reg) -> float:
    """``reg`` as a float; ValueError unless it is a finite number > 0."""
    if not isinstance(reg, (int, float)) or isinstance(reg, bool) or not math.isfinite(reg) or reg <= 0:
        raise ValueError(f"reg must be a finite number > 0, got {reg!r}")
    return float(reg)


def default_tol(dtype: torch.dtype) -> float:
    """The default stop tolerance for a solve in ``dtype``: 1e-9 in float64; 1e-6 in lower precision,
    where 1e-9 is below rounding noise."""
    return 1e-9 if dtype == torch.float64 else 1e-6


def mass_rtol(dtype: torch.dtype) -> float:
    """How far (relative) partial OT's mass m may exceed min(|a|_1, |b|_1) in ``dtype``: sums of the
    same weights in another order or library differ by rounding (it is capped at the minimum)."""
    return 1e-12 if dtype == torch.float64 else 1e-6


def history_length(max_iter: int, check_every: int, history: int) -> int:
    """Length of err_history: one slot per check (``max_iter // check_every + 1``), at most
    ``history`` of them when ``history >= 0`` (0: none)."""
    checks = max_iter // check_every + 1 if check_every > 0 else 0
    return checks if history < 0 else min(history, checks)


def _exponent(reg_m: float, reg: float) -> float:
    return 1.0 if math.isinf(reg_m) else reg_m / (reg_m + reg)


@dataclasses.dataclass(frozen=True)
class SolveSpec:
    """One entropic OT solve, all problems of the batch alike.

    problem: BALANCED, UNBALANCED or PARTIAL; reg > 0 the entropic regularisation; reg_m_a,
    reg_m_b the unbalanced KL penalties (> 0, inf = hard marginal; inf for the other kinds);
    kl_ref: the unbalanced reference a b^T (else 1); max_iter >= 1; tol the stop tolerance (any
    float: <= 0 never stops early); check_every >= 0 (0: exactly max_iter iterations, no checks);
    domain 0 'auto' / 1 'log' (CPU kernel only); history the cap on err_history's length (-1 every
    check, 0 none); floor >= 0 the relative rounding floor of the stop test (0 = none).
    """

    problem: int
    reg: float
    reg_m_a: float = math.inf
    reg_m_b: float = math.inf
    kl_ref: bool = True
    max_iter: int = 1000
    tol: float = 1e-9
    check_every: int = 10
    domain: int = 0
    history: int = HISTORY_CAP
    floor: float = 0.0

    def __post_init__(self):
        if self.problem not in PROBLEMS:
            raise ValueError(f"unknown problem kind {self.problem!r}")
        object.__setattr__(self, "reg", check_reg(self.reg))  # the one check of reg
        if self.problem == UNBALANCED:
            if not (self.reg_m_a > 0 and self.reg_m_b > 0):  # NaN fails too
                raise ValueError(f"reg_m must be > 0 (inf for a hard marginal), got {(self.reg_m_a, self.reg_m_b)}")
        elif not (math.isinf(self.reg_m_a) and math.isinf(self.reg_m_b)):
            raise ValueError("reg_m applies to unbalanced problems only (inf for the others)")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.check_every < 0:
            raise ValueError(f"check_every must be >= 0, got {self.check_every}")
        if self.domain not in DOMAINS.values():
            raise ValueError(f"domain must be 0 (auto) or 1 (log), got {self.domain!r}")
        if not (self.floor >= 0):
            raise ValueError(f"floor must be >= 0, got {self.floor}")

    @property
    def fa(self) -> float:
        """Row exponent of the unbalanced update, reg_m_a / (reg_m_a + reg) (1: hard marginal)."""
        return _exponent(self.reg_m_a, self.reg)

    @property
    def fb(self) -> float:
        """Column exponent, reg_m_b / (reg_m_b + reg)."""
        return _exponent(self.reg_m_b, self.reg)

    @property
    def hist_len(self) -> int:
        """Length H of err_history (B, H)."""
        return history_length(self.max_iter, self.check_every, self.history)

    def op_args(self) -> tuple:
        """The fields as the custom ops' scalar arguments, in field order (``SolveSpec(*args)`` is
        the inverse)."""
        return (self.problem, self.reg, self.reg_m_a, self.reg_m_b, self.kl_ref, self.max_iter, self.tol,
                self.check_every, self.domain, self.history, self.floor)

    def replace(self, **changes) -> "SolveSpec":
        return dataclasses.replace(self, **changes)
