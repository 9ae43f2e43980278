"""Accuracy-matched populations: known answers, an independent brute-force oracle, ties, errors."""
import numpy as np
import pytest
import scipy.stats as sps

from grounded_fast.analysis.populations import Candidate, MatchedPopulations, match_populations


def pairs(prefix, accs):
    return [(f"{prefix}{i}", a) for i, a in enumerate(accs)]


def test_exact_matches_and_outlier_never_chosen():
    cands = {
        "text": pairs("t", [0.60, 0.62, 0.64, 0.66]),
        "grounded": pairs("g", [0.62, 0.60, 0.99, 0.64, 0.66]),
    }
    res = match_populations(cands, pivot="text")
    assert isinstance(res, MatchedPopulations)
    assert res.populations == {"text": ["t0", "t1", "t2", "t3"], "grounded": ["g1", "g0", "g3", "g4"]}
    assert res.accuracies["grounded"] == [0.60, 0.62, 0.64, 0.66]
    assert res.costs == [0.0] * 4
    assert res.stopped_because == "candidates_exhausted"
    assert res.size == 4
    # identical accuracy lists: H = 0, p = 1 at every size from min_size on
    assert [(t.size, t.statistic, t.pvalue) for t in res.trace] == [(2, 0.0, 1.0), (3, 0.0, 1.0), (4, 0.0, 1.0)]


def test_stops_before_first_failing_size_hand_computed():
    # Tuples cost 0, 0, 0 (all accuracies 0.5: KW undefined -> p = 1), then (0.5, 0.9).
    # At size 4: ranks of seven tied 0.5s = 4, the 0.9 = 8; R = 16, 20; H_raw = 1/3,
    # tie correction 1 - (7^3 - 7)/(8^3 - 8) = 1/3, so H = 1, p = chi2.sf(1, 1) = 0.3173 < 0.5.
    cands = {"a": pairs("a", [0.5] * 6), "b": pairs("b", [0.9, 0.5, 0.9, 0.5, 0.9, 0.5])}
    res = match_populations(cands, pivot="a")
    assert res.stopped_because == "p_below_threshold"
    assert res.populations == {"a": ["a0", "a1", "a2"], "b": ["b1", "b3", "b5"]}
    assert [t.size for t in res.trace] == [2, 3, 4]
    assert res.trace[:2] == [(2, 0.0, 1.0), (3, 0.0, 1.0)]
    assert res.trace[-1].statistic == pytest.approx(1.0, rel=1e-12)
    assert res.trace[-1].pvalue == pytest.approx(sps.chi2.sf(1.0, 1), rel=1e-12)


def test_threshold_moves_stopping_size():
    cands = {"a": pairs("a", [0.5] * 6), "b": pairs("b", [0.9, 0.5, 0.9, 0.5, 0.9, 0.5])}
    res = match_populations(cands, pivot="a", p_threshold=0.3)  # size 4 passes (p = 0.317)
    p5 = sps.kruskal([0.5] * 5, [0.5, 0.5, 0.5, 0.9, 0.9]).pvalue
    assert p5 < 0.3
    assert res.size == 4 and res.stopped_because == "p_below_threshold"
    assert res.trace[-1].size == 5 and res.trace[-1].pvalue == pytest.approx(p5, rel=1e-12)
    assert res.accuracies["b"] == [0.5, 0.5, 0.5, 0.9]


def test_threshold_is_strict():
    cands = {"a": pairs("a", [0.5] * 6), "b": pairs("b", [0.9, 0.5, 0.9, 0.5, 0.9, 0.5])}
    p4 = sps.kruskal([0.5] * 4, [0.5, 0.5, 0.5, 0.9]).pvalue
    assert match_populations(cands, pivot="a", p_threshold=p4).size >= 4  # p == threshold passes
    assert match_populations(cands, pivot="a", p_threshold=p4 + 1e-9).size == 3


def test_separated_groups_stop_at_two():
    # (0.55, 0.60) costs 0.05 and goes first; then (0.54, 0.61). Size 2 ranks 1,2 | 3,4:
    # H = 12/20 * (3^2/2 + 7^2/2) - 15 = 2.4, p = 0.121 -> keep one tuple.
    cands = {"p": pairs("p", [0.50, 0.51, 0.52, 0.53, 0.54, 0.55]),
             "g": pairs("g", [0.60, 0.61, 0.62, 0.63, 0.64, 0.65])}
    res = match_populations(cands, pivot="p")
    assert res.populations == {"p": ["p5"], "g": ["g0"]}
    assert res.costs == [pytest.approx(0.05)]
    assert len(res.trace) == 1
    assert res.trace[0].size == 2
    assert res.trace[0].statistic == pytest.approx(2.4, rel=1e-12)
    assert res.trace[0].pvalue == pytest.approx(sps.chi2.sf(2.4, 1), rel=1e-12)


def test_ties_are_deterministic():
    # Both pivot candidates tie (cost 0.1 to g0 and to g1) -> lowest pivot index, lowest g index.
    res = match_populations({"p": pairs("p", [0.5, 0.5]), "g": pairs("g", [0.6, 0.4])}, pivot="p")
    assert res.populations == {"p": ["p0", "p1"], "g": ["g0", "g1"]}
    # 0.3 - 0.1 = 0.19999999999999998 < 0.5 - 0.3 = 0.2 in floats: still a tie -> lowest index
    res = match_populations({"p": [("x", 0.3)], "g": [("hi", 0.5), ("lo", 0.1)]}, pivot="p")
    assert res.populations["g"] == ["hi"]
    # group order of the mapping does not matter for the result
    a = match_populations({"g": pairs("g", [0.6, 0.4]), "p": pairs("p", [0.5, 0.5])}, pivot="p")
    assert a.populations == {"g": ["g0", "g1"], "p": ["p0", "p1"]}


def test_three_groups_cost_is_sum_over_groups():
    cands = {
        "pivot": pairs("p", [0.70, 0.80]),
        "b": pairs("b", [0.81, 0.69, 0.30]),
        "c": pairs("c", [0.75, 0.805, 0.10]),
    }
    res = match_populations(cands, pivot="pivot", max_size=1)
    # p0: |0.69-0.70| + |0.75-0.70| = 0.06; p1: |0.81-0.80| + |0.805-0.80| = 0.015 -> p1 first
    assert res.populations == {"pivot": ["p1"], "b": ["b0"], "c": ["c1"]}
    assert res.costs == [pytest.approx(0.015)]
    assert res.stopped_because == "max_size" and res.trace == []


def naive_match(cands, pivot, p_threshold=0.5, min_size=2, max_size=None):
    """Independent oracle: plain Python loops, scipy.stats.kruskal directly."""
    groups = list(cands)
    others = [g for g in groups if g != pivot]
    used = {g: set() for g in groups}
    chosen = {g: [] for g in groups}
    trace = []
    while max_size is None or len(chosen[pivot]) < max_size:
        if any(len(used[g]) == len(cands[g]) for g in groups):
            return chosen, trace, "candidates_exhausted"
        best = None
        for i, (_, pa) in enumerate(cands[pivot]):
            if i in used[pivot]:
                continue
            cost, pick = 0.0, {}
            for g in others:
                free = [j for j in range(len(cands[g])) if j not in used[g]]
                j = min(free, key=lambda j: (round(abs(cands[g][j][1] - pa), 9), j))
                pick[g] = j
                cost += abs(cands[g][j][1] - pa)
            if best is None or round(cost, 9) < round(best[0], 9):
                best = (cost, i, pick)
        _, i, pick = best
        chosen[pivot].append(i)
        used[pivot].add(i)
        for g in others:
            chosen[g].append(pick[g])
            used[g].add(pick[g])
        k = len(chosen[pivot])
        if k >= min_size:
            lists = [[cands[g][j][1] for j in chosen[g]] for g in groups]
            flat = sum(lists, [])
            p = 1.0 if len(set(flat)) == 1 else sps.kruskal(*lists).pvalue
            trace.append((k, p))
            if p < p_threshold:
                return {g: c[:-1] for g, c in chosen.items()}, trace, "p_below_threshold"
    return chosen, trace, "max_size"


@pytest.mark.parametrize("seed", range(12))
def test_matches_brute_force_oracle(seed):
    # odd seeds: overlapping groups (mostly exhausted); even: shifted groups (KW stops mid-way)
    rng = np.random.default_rng(seed)
    lo = (0.55, 0.60, 0.50) if seed % 2 else (0.50, 0.60, 0.55)
    hi = (0.75, 0.80, 0.80) if seed % 2 else (0.70, 0.80, 0.85)
    cands = {name: pairs(name[0], np.round(rng.uniform(l, h, size=rng.integers(5, 20)), 2))
             for name, l, h in zip(("text", "grounded", "flava"), lo, hi)}
    p_threshold = [0.5, 0.2, 0.05, 0.8][seed % 4]
    res = match_populations(cands, pivot="grounded", p_threshold=p_threshold)
    chosen, trace, why = naive_match(cands, "grounded", p_threshold=p_threshold)
    assert res.stopped_because == why
    assert res.populations == {g: [cands[g][j][0] for j in chosen[g]] for g in cands}
    assert [t.size for t in res.trace] == [k for k, _ in trace]
    assert [t.pvalue for t in res.trace] == pytest.approx([p for _, p in trace], rel=1e-12)
    assert all(t.pvalue >= p_threshold for t in res.trace[:-1])


def test_accepts_candidates_and_mappings():
    cands = {
        "grounded": [Candidate("g-s0-e10", 0.61, setup="grounded", seed=0, noise=0.0, epoch=10),
                     Candidate("g-s1-e10", 0.65, setup="grounded", seed=1, noise=0.0, epoch=10)],
        "text": {"t-s0": 0.655, "t-s1": 0.605},
    }
    res = match_populations(cands, pivot="grounded")
    assert res.populations == {"grounded": ["g-s0-e10", "g-s1-e10"], "text": ["t-s1", "t-s0"]}
    assert res.pivot == "grounded"


def test_exhausted_when_other_group_is_smaller_and_min_size():
    cands = {"p": pairs("p", [0.5, 0.6, 0.7, 0.8]), "g": pairs("g", [0.61, 0.69])}
    res = match_populations(cands, pivot="p", min_size=3)
    assert res.stopped_because == "candidates_exhausted"
    assert res.populations == {"p": ["p1", "p2"], "g": ["g0", "g1"]}
    assert res.trace == []  # size 2 < min_size: never tested


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(candidates={"a": [("x", 0.5)]}, pivot="a"), ValueError, "at least 2 groups"),
    (dict(pivot="zz"), ValueError, "pivot 'zz' is not a group"),
    (dict(candidates={"a": [("x", 0.5), ("x", 0.6)], "b": [("y", 0.5)]}), ValueError, "duplicate candidate id 'x'"),
    (dict(candidates={"a": [("x", float("nan"))], "b": [("y", 0.5)]}), ValueError, "'x': accuracy is nan"),
    (dict(candidates={"a": [("x", "high")], "b": [("y", 0.5)]}), ValueError, "not a number"),
    (dict(candidates={"a": [0.5], "b": [("y", 0.5)]}), ValueError, "candidate 0: expected"),
    (dict(candidates={"a": [], "b": [("y", 0.5)]}), ValueError, "group 'a' has no candidates"),
    (dict(min_size=1), ValueError, "min_size"),
    (dict(max_size=0), ValueError, "max_size"),
    (dict(p_threshold=0.0), ValueError, "p_threshold"),
    (dict(candidates=[("a", 0.5)]), TypeError, "mapping"),
])
def test_errors(kwargs, exc, match):
    args = dict(candidates={"a": [("x", 0.5)], "b": [("y", 0.5)]}, pivot="a")
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        match_populations(**args)
