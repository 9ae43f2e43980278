"""Accuracy-matched populations of checkpoints ("Grounded and Well-rounded", methodology).

To compare setups (e.g. grounded vs text-only models) without accuracy as a confound, each setup
contributes a population of checkpoints (seeds x noise levels x selected epochs) and the
populations are matched on accuracy: tuples of one checkpoint per setup are matched greedily to
a pivot setup, and the tuple list grows until the setups' accuracy distributions become
distinguishable by a Kruskal–Wallis test. See `match_populations`.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Dict, Hashable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from .stats import kruskal_wallis

__all__ = ["Candidate", "TraceEntry", "MatchedPopulations", "match_populations"]

# Accuracy differences (and tuple costs) within this distance count as ties, so that
# hand-written accuracies such as 0.62 - 0.60 vs 0.64 - 0.62 tie despite float rounding.
TIE_TOL = 1e-12


@dataclass(frozen=True)
class Candidate:
    """One checkpoint: a unique ``id`` within its setup, its ``accuracy`` and optional metadata
    (``setup``, ``seed``, ``noise``, ``epoch``). Plain ``(id, accuracy)`` pairs work as well."""
    id: Hashable
    accuracy: float
    setup: Optional[str] = None
    seed: Optional[int] = None
    noise: Optional[float] = None
    epoch: Optional[int] = None


class TraceEntry(NamedTuple):
    """One Kruskal–Wallis test of the matched accuracy lists at a population ``size``."""
    size: int
    statistic: float
    pvalue: float


@dataclass(frozen=True)
class MatchedPopulations:
    """Result of `match_populations`.

    populations: group -> candidate ids; element k of every group belongs to the k-th matched
        tuple (k = 0 is the best-matched tuple).
    accuracies: group -> the accuracies of those candidates, aligned likewise.
    costs: the k-th tuple's total absolute accuracy difference to its pivot candidate.
    trace: every Kruskal–Wallis test run, as (size, H, p), including the failing one.
    stopped_because: "p_below_threshold", "candidates_exhausted" or "max_size".
    """
    pivot: str
    populations: Dict[str, List[Hashable]]
    accuracies: Dict[str, List[float]]
    costs: List[float]
    trace: List[TraceEntry] = field(default_factory=list)
    stopped_because: str = "candidates_exhausted"

    @property
    def size(self) -> int:
        """Number of matched tuples (candidates per group)."""
        return len(self.costs)


CandidateLike = Union[Candidate, Tuple[Hashable, float]]


def _parse_group(group: str, items: Any) -> Tuple[List[Hashable], np.ndarray]:
    """Candidates of one group -> (ids, float64 accuracies)."""
    if isinstance(items, Mapping):  # {id: accuracy}
        items = list(items.items())
    ids: List[Hashable] = []
    accs: List[float] = []
    for i, c in enumerate(items):
        if isinstance(c, Candidate):
            cid, acc = c.id, c.accuracy
        else:
            try:
                cid, acc = c
            except (TypeError, ValueError):
                raise ValueError(f"group {group!r}, candidate {i}: expected a Candidate or an "
                                 f"(id, accuracy) pair, got {c!r}") from None
        try:
            acc = float(acc)
        except (TypeError, ValueError):
            raise ValueError(f"group {group!r}, candidate {cid!r}: accuracy {acc!r} is not a number") from None
        if not math.isfinite(acc):
            raise ValueError(f"group {group!r}, candidate {cid!r}: accuracy is {acc}")
        ids.append(cid)
        accs.append(acc)
    if not ids:
        raise ValueError(f"group {group!r} has no candidates")
    seen = set()
    for cid in ids:
        if cid in seen:
            raise ValueError(f"group {group!r}: duplicate candidate id {cid!r}")
        seen.add(cid)
    return ids, np.asarray(accs, dtype=np.float64)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _first_min(d: np.ndarray, axis: int) -> np.ndarray:
    """Index of the first entry within TIE_TOL of the minimum along axis."""
    return np.argmax(d <= d.min(axis=axis, keepdims=True) + TIE_TOL, axis=axis)


def _kruskal_or_identical(groups: List[List[float]]) -> Tuple[float, float]:
    pooled = [v for g in groups for v in g]
    if all(v == pooled[0] for v in pooled):
        return 0.0, 1.0  # identical distributions: H is 0/0; treated as no difference
    res = kruskal_wallis(*groups)
    return res.statistic, res.pvalue


def match_populations(candidates: Mapping[str, Sequence[CandidateLike]], pivot: str,
                      max_size: Optional[int] = None, p_threshold: float = 0.5,
                      min_size: int = 2) -> MatchedPopulations:
    """Accuracy-matched populations: greedy tuple matching to a pivot group with a
    Kruskal–Wallis stopping rule.

    candidates: group (setup) name -> its candidates (checkpoints of that setup: seeds x noise
        levels x selected epochs), each a `Candidate`, an ``(id, accuracy)`` pair, or the group
        given as a mapping ``{id: accuracy}``. At least 2 groups; ids unique within a group;
        accuracies any finite numbers.
    pivot: the group the others are matched to.
    max_size: stop after this many tuples (None: no limit).
    p_threshold: stop before the first size whose Kruskal–Wallis p-value is below this.
    min_size: the first size that is tested (>= 2, so that every group has 2 values).

    Procedure. Repeat: for every unused pivot candidate (in input order), take in every other
    group the unused candidate with the closest accuracy (ties -> lowest input index); the
    tuple's cost is the sum of the absolute accuracy differences to the pivot candidate. Commit
    the tuple with the smallest cost (ties -> lowest pivot index) and mark its candidates used.
    Once the list holds k >= min_size tuples, run Kruskal–Wallis over the groups' accuracy lists
    and record (k, H, p) in the trace; if p < p_threshold, stop and return the first k - 1 tuples
    ("stop before the first size whose p drops below the threshold"). Also stop when a group
    has no unused candidate left ("candidates_exhausted") or at max_size ("max_size"); then all
    tuples are kept. Ties are decided within 1e-12. If every accuracy is identical, H is
    undefined (0/0); the distributions are identical, so this is recorded as H = 0, p = 1.

    Returns `MatchedPopulations` (populations, accuracies, costs, trace, stopped_because).
    """
    if not isinstance(candidates, Mapping):
        raise TypeError(f"candidates must be a mapping group -> candidates, got {type(candidates).__name__}")
    if len(candidates) < 2:
        raise ValueError(f"match_populations needs at least 2 groups, got {len(candidates)}")
    if pivot not in candidates:
        raise ValueError(f"pivot {pivot!r} is not a group; groups are {list(candidates)}")
    if not _is_int(min_size) or min_size < 2:
        raise ValueError(f"min_size must be an int >= 2, got {min_size!r}")
    if max_size is not None and (not _is_int(max_size) or max_size < 1):
        raise ValueError(f"max_size must be None or an int >= 1, got {max_size!r}")
    if isinstance(p_threshold, bool) or not isinstance(p_threshold, numbers.Real) \
            or not 0.0 < p_threshold <= 1.0:
        raise ValueError(f"p_threshold must be in (0, 1], got {p_threshold!r}")

    groups = list(candidates)
    parsed = {g: _parse_group(g, candidates[g]) for g in groups}
    others = [g for g in groups if g != pivot]
    used = {g: np.zeros(len(parsed[g][0]), dtype=bool) for g in groups}

    chosen: Dict[str, List[int]] = {g: [] for g in groups}
    costs: List[float] = []
    trace: List[TraceEntry] = []
    stopped = "candidates_exhausted"
    while True:
        if max_size is not None and len(costs) >= max_size:
            stopped = "max_size"
            break
        if any(used[g].all() for g in groups):
            stopped = "candidates_exhausted"
            break
        p_idx = np.flatnonzero(~used[pivot])
        p_acc = parsed[pivot][1][p_idx]
        total = np.zeros(p_idx.size)
        picks = {}
        for g in others:
            g_idx = np.flatnonzero(~used[g])
            d = np.abs(p_acc[:, None] - parsed[g][1][g_idx][None, :])  # (pivot, group) unused
            j = _first_min(d, axis=1)
            picks[g] = g_idx[j]
            total += d[np.arange(p_idx.size), j]
        best = int(_first_min(total, axis=0))
        chosen[pivot].append(int(p_idx[best]))
        used[pivot][p_idx[best]] = True
        for g in others:
            chosen[g].append(int(picks[g][best]))
            used[g][picks[g][best]] = True
        costs.append(float(total[best]))

        k = len(costs)
        if k >= min_size:
            h, p = _kruskal_or_identical([[float(parsed[g][1][i]) for i in chosen[g]] for g in groups])
            trace.append(TraceEntry(k, h, p))
            if p < p_threshold:
                for g in groups:
                    chosen[g].pop()
                costs.pop()
                stopped = "p_below_threshold"
                break

    return MatchedPopulations(
        pivot=pivot,
        populations={g: [parsed[g][0][i] for i in chosen[g]] for g in groups},
        accuracies={g: [float(parsed[g][1][i]) for i in chosen[g]] for g in groups},
        costs=costs,
        trace=trace,
        stopped_because=stopped,
    )
