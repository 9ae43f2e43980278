"""Uncertainty and paired tests for the study reports (all distributions from ``scipy.stats``).

  * `pack_correct` / `unpack_correct` -- per-item correctness (BLiMP pairs, dev items) as a
    compact '0'/'1' string for a unit's JSON payload, and back;
  * `wilson_interval` -- CI of a proportion (k of n items);
  * `bootstrap_mean_ci` -- percentile bootstrap CI of a mean over items;
  * `t_interval` -- mean and Student-t CI over seeds;
  * `mcnemar_exact` -- exact McNemar test of two classifiers scored on the same items.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence, Tuple

import numpy as np

__all__ = ["pack_correct", "unpack_correct", "wilson_interval", "bootstrap_mean_ci", "t_interval",
           "McNemarResult", "mcnemar_exact"]


def pack_correct(correct: Any) -> str:
    """(n,) booleans (tensor, array or list) -> a string of n '0' / '1' characters."""
    if hasattr(correct, "detach"):
        correct = correct.detach().cpu().numpy()
    return "".join("1" if c else "0" for c in np.asarray(correct, dtype=bool).reshape(-1))


def unpack_correct(bits: str, what: str = "correctness") -> np.ndarray:
    """A string of '0' / '1' (see `pack_correct`) -> (n,) bool array; ValueError naming ``what``."""
    if not isinstance(bits, str) or set(bits) - {"0", "1"}:
        raise ValueError(f"{what}: expected a string of '0' and '1', got {str(bits)[:40]!r}")
    return np.frombuffer(bits.encode("ascii"), dtype=np.uint8) == ord("1")


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Tuple[float, float]:
    """Wilson score interval of the proportion ``successes / n``; (nan, nan) when n == 0."""
    from scipy import stats
    if n <= 0:
        return math.nan, math.nan
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def bootstrap_mean_ci(values: Sequence[float], confidence: float = 0.95, resamples: int = 2000,
                      seed: int = 0) -> Tuple[float, float]:
    """Percentile bootstrap CI of the mean of (n,) values (resampling the items with replacement,
    ``seed`` fixed); (nan, nan) for fewer than 2 values."""
    from scipy import stats
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size < 2:
        return math.nan, math.nan
    if np.all(x == x[0]):  # every resample has the same mean
        return float(x[0]), float(x[0])
    res = stats.bootstrap((x,), np.mean, n_resamples=resamples, confidence_level=confidence,
                          method="percentile", batch=max(1, 2_000_000 // x.size),
                          random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Tuple[float, float, float]:
    """(mean, low, high): the Student-t CI of the mean of (n,) values, e.g. one per seed; low and
    high are nan for fewer than 2 values."""
    from scipy import stats
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test: ``only_a`` items right for A only, ``only_b`` right for B only, ``n``
    items, two-sided ``pvalue`` (binomial test of only_a among the discordant items at 1/2; 1
    when there are none)."""
    only_a: int
    only_b: int
    n: int
    pvalue: float


def mcnemar_exact(correct_a: Any, correct_b: Any) -> McNemarResult:
    """Exact McNemar test of two models' (n,) per-item correctness on the same items (paired)."""
    from scipy import stats
    a = np.asarray(correct_a, dtype=bool).reshape(-1)
    b = np.asarray(correct_b, dtype=bool).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"mcnemar_exact: the two models were scored on {a.size} and {b.size} items; "
                         "a paired test needs the same items")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if only_a + only_b == 0 else float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return McNemarResult(only_a, only_b, int(a.size), p)
