"""Helpers shared by the OT speed comparisons of bench/: the CPU benchmark suite and
bench/compare_peers.py.

* :func:`pinned_threads`: both sides run with the same thread count: torch's intra-op threads and
  every BLAS / OpenMP pool loaded in the process (numpy's and scipy's OpenBLAS, torch's and POT's
  OpenMP), through threadpoolctl (a dependency of scikit-learn). Unpinned, POT's BLAS threads
  oversubscribe a busy machine's cores and its times swing several-fold.
* :func:`time_repeats`: a callable timed several times; :class:`Timing` keeps every sample and the
  thread counts in force while they ran, and prints as median (min-max).
* :func:`fmt_ratio`: speed ratios, below 1 too ('0.42x').
"""
from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from dataclasses import dataclass, field

import torch


def default_threads() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _check_threads(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    return n


@contextlib.contextmanager
def pinned_threads(n: int):
    """Run the block with torch's intra-op threads and every BLAS / OpenMP thread pool loaded so far
    set to ``n`` (restored afterwards). Import the libraries to be timed before entering: a pool
    loaded inside the block keeps its default. Without threadpoolctl only torch is pinned (warned)."""
    _check_threads(n)
    try:
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(limits=n)
    except ImportError:
        warnings.warn("threadpoolctl is not installed: BLAS / OpenMP threads are not pinned "
                      "(pip install threadpoolctl)", stacklevel=3)
        limits = contextlib.nullcontext()
    old = torch.get_num_threads()
    with limits:
        torch.set_num_threads(n)
        try:
            yield n
        finally:
            torch.set_num_threads(old)


def thread_state() -> dict:
    """{'torch': intra-op threads, '<pool kind> <library file>': threads, ...} for every BLAS /
    OpenMP pool threadpoolctl finds in this process."""
    out = {"torch": torch.get_num_threads()}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return out
    for pool in threadpool_info():
        out[f"{pool['internal_api']} {os.path.basename(pool['filepath'])}"] = pool["num_threads"]
    return out


def fmt_threads(state: dict) -> str:
    """'torch 2, openblas 2, openmp 2' (each kind once when its pools agree)."""
    kinds: dict = {}
    for key, n in state.items():
        kinds.setdefault(key.split(" ")[0], set()).add(n)
    return ", ".join(f"{k} {'/'.join(map(str, sorted(v)))}" for k, v in kinds.items())


@dataclass
class Timing:
    """Seconds of each timed repeat, times ``scale`` (a subset of a batch timed, scaled to all of
    it); ``threads``: :func:`thread_state` when the repeats ran."""

    samples: list
    threads: dict = field(default_factory=dict)
    scale: float = 1.0

    @property
    def median(self) -> float:
        s = sorted(self.samples)
        k = len(s) // 2
        return self.scale * (s[k] if len(s) % 2 else (s[k - 1] + s[k]) / 2)

    @property
    def min(self) -> float:
        return self.scale * min(self.samples)

    @property
    def max(self) -> float:
        return self.scale * max(self.samples)

    def __str__(self) -> str:
        return fmt_spread(self.median, self.min, self.max)


def time_repeats(fn, repeat: int = 5, warmup: int = 1, scale: float = 1.0) -> Timing:
    """``fn()`` run ``warmup`` times untimed, then ``repeat`` times timed."""
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be a positive integer, got {repeat!r}")
    for _ in range(warmup):
        fn()
    threads = thread_state()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return Timing(samples, threads, scale)


_UNITS = ((1.0, "s"), (1e-3, "ms"), (1e-6, "us"))


def _unit(s: float):
    return next(((f, u) for f, u in _UNITS if s >= f), _UNITS[-1])


def _num(x: float) -> str:
    """Three significant digits, never an exponent ('0.415', '41.5', '415', '4150')."""
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def fmt_seconds(s: float) -> str:
    f, u = _unit(s)
    return f"{_num(s / f)} {u}"


def fmt_spread(median: float, lo: float, hi: float) -> str:
    """'2.1 ms (2.02-2.31)': the median, then min-max in the median's unit."""
    f, u = _unit(median)
    return f"{_num(median / f)} {u} ({_num(lo / f)}-{_num(hi / f)})"


def fmt_ratio(r: float) -> str:
    """A speed ratio: '0.42x' below 1, '3.14x', '42.1x', '420x'."""
    if not math.isfinite(r):
        return f"{r}x"
    if r < 1:
        return f"{r:.2g}x"
    if r < 10:
        return f"{r:.2f}x"
    if r < 100:
        return f"{r:.1f}x"
    return f"{r:.0f}x"

