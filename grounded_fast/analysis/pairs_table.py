"""Analysis of a table of model pairs that a researcher already has (``grounded-fast analyse``).

Input: a CSV with one row per model pair and one column per metric (wide form, e.g.
``model_1, model_2, kl_div, agreement``), or the long form our studies export
(``grounded-fast export DIR`` writes ``pairwise.csv``: ``analysis, model_a, model_b, value``, one
row per pair and analysis; the other columns are ignored). A missing diagonal is fine, and each
pair may come in one order or in both; the same ordered pair twice is an error naming both lines.

Populations: a regex with one capture group over model names (``r"^(\\w+)-seed"``), a CSV of
``model, population``, or a dict. For a store export without a mapping, the population is the
run id's first ``-``-separated field (`STORE_POPULATION_REGEX`: ``P`` of ``P-noise0.1-seed2@3``,
the grounding study's ``<setup>-noise<n>-seed<s>@<epoch>`` model ids).

Directional (asymmetric) metrics such as KL(a ‖ b): a metric is directional when it is named in
``asymmetric``, or, with ``asymmetric=None`` (the default), when every pair is given in both orders
and some pair's two values differ. Two values of one pair of a symmetric metric that differ
(beyond a relative 1e-6) are a conflict: an error naming both lines. ``directional`` chooses how a
directional metric is analysed: ``"mean"`` (default) symmetrises it as the mean of both directions
(for KL: half the Jeffreys divergence), after which it is analysed like a symmetric one;
``"ordered"`` keeps both directions: summaries per ordered population pair (KL(P ‖ C) apart from
KL(C ‖ P)), tests over the M(M-1) ordered pairs and Mantel tests over ordered pairs
(`stats.mantel(..., ordered=True)`). A symmetric metric compared with a directional one in
"ordered" mode counts each of its pairs twice.

Per metric (`MetricAnalysis`): per-population within and between summaries (n pairs, mean, a
bootstrap CI that resamples models, since pairs sharing a model are not independent),
Kruskal–Wallis across those blocks and Mann–Whitney within vs between (both assume independent
values: `INDEPENDENCE_CAVEAT`), and the valid test: a permutation test of mean(within) −
mean(between) that shuffles population labels across models (`stats.mantel` against the
same-population indicator matrix, which is exactly that test; all labelings are enumerated when
M! <= permutations). Between metrics (`MetricComparison`): Mantel (Pearson) and RSA (Spearman)
with Mantel p-values.

Example::

    >>> import csv, os, tempfile
    >>> from grounded_fast.analysis.pairs_table import load_pairs, analyse_pairs
    >>> d = tempfile.mkdtemp(); path = os.path.join(d, "pairs.csv")
    >>> models = ["A-1", "A-2", "A-3", "B-1", "B-2", "B-3"]
    >>> with open(path, "w", newline="") as f:
    ...     w = csv.writer(f); _ = w.writerow(["model_1", "model_2", "agreement"])
    ...     for i, a in enumerate(models):
    ...         for b in models[i + 1:]:
    ...             _ = w.writerow([a, b, 0.9 if a[0] == b[0] else 0.6])
    >>> result = analyse_pairs(load_pairs(path), regex=r"^(\\w)-", permutations=999)
    >>> m = result.metrics["agreement"]
    >>> [(b.populations, b.n_pairs, round(b.mean, 2)) for b in m.blocks]
    [(('A', 'A'), 3, 0.9), (('A', 'B'), 9, 0.6), (('B', 'B'), 3, 0.9)]
    >>> round(m.permutation.difference, 2), m.permutation.exact, m.permutation.pvalue
    (0.3, True, 0.1)
"""
from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .stats import (KruskalResult, MannWhitneyResult, MantelResult, kruskal_wallis, mann_whitney, mantel,
                    pair_mask)

__all__ = ["PairsTableError", "PairsTable", "BlockSummary", "PermutationTest", "MetricAnalysis",
           "MetricComparison", "PairsAnalysis", "load_pairs", "load_population_csv", "assign_populations",
           "population_permutation_test", "analyse_pairs", "INDEPENDENCE_CAVEAT", "STORE_POPULATION_REGEX",
           "DIRECTIONAL_MODES"]

INDEPENDENCE_CAVEAT = (
    "Kruskal–Wallis and Mann–Whitney treat every pair as an independent value, which pairs sharing a "
    "model are not: their p-values come out too small. The permutation test (population labels "
    "shuffled across models) and the Mantel tests are the valid ones.")
# The run ids of our stores: '<setup>-noise<n>-seed<s>', '@<epoch>' appended for a checkpoint.
STORE_POPULATION_REGEX = r"^([^-@]+)"
DIRECTIONAL_MODES = ("mean", "ordered")
# Two values of one pair of a symmetric metric agree within this relative tolerance (float32 rounding).
CONFLICT_RTOL = 1e-6
_WIDE_MODEL_COLUMNS = (("model_1", "model_2"), ("model_a", "model_b"))
_LONG_COLUMNS = ("analysis", "model_a", "model_b", "value")
# Most gathered entries (replicates x models x models) held at once by the bootstrap.
_BOOTSTRAP_ELEMENTS = 1 << 22


class PairsTableError(ValueError):
    """A pairs table, a population mapping or an option that cannot be analysed (one line: the
    file, line and column, and what to do)."""


@dataclass(frozen=True)
class PairsTable:
    """A loaded pairs table.

    models: the M model names in order of first appearance; values: metric -> (M, M) float64
    matrix, ``values[m][i, j]`` the row (models[i], models[j]), NaN where no row gave it (the
    diagonal, usually, and the other order of a pair given once); directional: metric -> whether
    it is analysed as directional, and why (``"symmetric"``, ``"declared"`` or ``"detected"``);
    lines: metric -> {(i, j): the file line that gave it}; source: the file; form: ``"wide"`` or
    ``"long"`` (a store export).
    """
    source: str
    form: str
    models: List[str]
    values: Dict[str, np.ndarray]
    directional: Dict[str, str]
    lines: Dict[str, Dict[Tuple[int, int], int]] = field(repr=False, default_factory=dict)

    @property
    def metrics(self) -> List[str]:
        return list(self.values)


@dataclass(frozen=True)
class BlockSummary:
    """Values of the pairs between two populations (``populations[0] == populations[1]``: within
    one). ``n_pairs`` values (ordered pairs in "ordered" mode), their ``mean`` and a percentile
    bootstrap CI (``ci_low``, ``ci_high``; NaN when it cannot vary: a within block of 2 models)."""
    populations: Tuple[str, str]
    n_pairs: int
    mean: float
    ci_low: float
    ci_high: float

    @property
    def within(self) -> bool:
        return self.populations[0] == self.populations[1]


@dataclass(frozen=True)
class PermutationTest:
    """Within- vs between-population permutation test: ``difference`` = mean(within) −
    mean(between) over the pairs; ``r`` its Pearson correlation with the same-population indicator
    (a monotone function of the difference); two-sided ``pvalue`` from shuffling population labels
    across models; ``permutations`` (all M! orderings when ``exact``) and ``seed`` (None when exact)."""
    difference: float
    r: float
    pvalue: float
    permutations: int
    exact: bool
    seed: Optional[int]


@dataclass(frozen=True)
class MetricAnalysis:
    """Everything about one metric: ``handling`` (``"symmetric"``, ``"mean of both directions"`` or
    ``"ordered pairs"``), the analysed (M, M) ``matrix`` (NaN diagonal), the per-population
    ``blocks``, ``kruskal`` across the blocks (None with fewer than 2 blocks holding values or all
    values equal), ``mann_whitney`` within (x) vs between (y), the pooled ``n_within`` /
    ``n_between`` and the ``permutation`` test."""
    name: str
    handling: str
    matrix: np.ndarray
    blocks: List[BlockSummary]
    kruskal: Optional[KruskalResult]
    mann_whitney: MannWhitneyResult
    n_within: int
    n_between: int
    permutation: PermutationTest


@dataclass(frozen=True)
class MetricComparison:
    """Two metrics' matrices compared: Mantel (Pearson r, permutation p) and RSA (Spearman rho, its
    Mantel p); ``ordered``: over ordered pairs (a directional metric in "ordered" mode)."""
    metrics: Tuple[str, str]
    mantel: MantelResult
    rsa: MantelResult
    ordered: bool


@dataclass(frozen=True)
class PairsAnalysis:
    """Result of `analyse_pairs`: the table's ``models`` reordered by population (``populations``
    aligned), ``sizes`` per population, one `MetricAnalysis` per metric, the `MetricComparison` of
    every two metrics, and the settings that ran (``directional``, ``permutations``,
    ``bootstrap``, ``confidence``, ``seed``)."""
    source: str
    form: str
    models: List[str]
    populations: List[str]
    sizes: Dict[str, int]
    metrics: Dict[str, MetricAnalysis]
    comparisons: List[MetricComparison]
    directional: str
    permutations: int
    bootstrap: int
    confidence: float
    seed: int
    population_source: str
    caveat: str = INDEPENDENCE_CAVEAT


# ----------------------------------------------------------------------------- loading
def _read_csv(path: str) -> Tuple[List[str], List[Tuple[int, List[str]]]]:
    """Header and (line number, cells) of each non-empty row."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise PairsTableError(f"{path}: the file is empty (expected a header row)")
            rows = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]
    except UnicodeDecodeError:
        raise PairsTableError(f"{path}: not UTF-8 text (expected a CSV file)") from None
    except csv.Error as e:
        raise PairsTableError(f"{path}: not a readable CSV file ({e})") from None
    return [h.strip() for h in header], rows


def _column(path: str, header: List[str], name: str, hint: str) -> int:
    if name not in header:
        raise PairsTableError(f"{path}: no column {name!r} (columns: {', '.join(header)}); {hint}")
    return header.index(name)


def _number(path: str, line: int, column: str, text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise PairsTableError(f"{path}: line {line}, column {column!r}: {text.strip()!r} is not a number") from None
    if not math.isfinite(v):
        raise PairsTableError(f"{path}: line {line}, column {column!r}: {text.strip()!r} is not a finite number")
    return v


def load_pairs(path: Union[str, os.PathLike], metrics: Optional[Sequence[str]] = None,
               model_columns: Optional[Sequence[str]] = None,
               asymmetric: Optional[Sequence[str]] = None) -> PairsTable:
    """Read a pairs table (CSV) into one (M, M) matrix per metric.

    path: the CSV. Its form is recognised from the header: ``analysis, model_a, model_b, value``
    (a store export, long: one metric per ``analysis`` value) or wide (``model_columns``, default
    ``model_1, model_2`` or else ``model_a, model_b``, and one column per metric; an empty cell:
    that metric is not given for that row, e.g. a symmetric one beside a directional one given in
    both orders). metrics: the
    metrics to keep (default all: every other column / every analysis). asymmetric: the
    directional metrics (None: detected, see the module docstring).
    Raises `PairsTableError` (one line naming the file, line and column) for a missing column, a
    non-numeric value, a duplicated ordered pair, conflicting values of a symmetric metric, a pair
    missing in the table (or a direction missing for a directional metric), fewer than 3 models;
    OSError when the file cannot be read.
    """
    path = os.fspath(path)
    header, rows = _read_csv(path)
    long_form = model_columns is None and all(c in header for c in _LONG_COLUMNS)
    # (metric, model_a, model_b, value, line)
    entries: List[Tuple[str, str, str, float, int]] = []
    if long_form:
        ia, ib, ic, iv = (header.index(c) for c in ("model_a", "model_b", "analysis", "value"))
        for line, r in rows:
            r = r + [""] * (len(header) - len(r))
            name = r[ic].strip()
            if metrics is not None and name not in metrics:
                continue
            if not name:
                raise PairsTableError(f"{path}: line {line}, column 'analysis' is empty")
            entries.append((name, r[ia].strip(), r[ib].strip(), _number(path, line, "value", r[iv]), line))
        names = list(dict.fromkeys(e[0] for e in entries))
        if metrics is not None:
            absent = [m for m in metrics if m not in names]
            if absent:
                raise PairsTableError(f"{path}: no rows of analysis {absent[0]!r} (analyses: "
                                      f"{', '.join(sorted({r[ic].strip() for _, r in rows}))})")
            names = list(metrics)
    else:
        if model_columns is None:
            model_columns = next((c for c in _WIDE_MODEL_COLUMNS if c[0] in header and c[1] in header),
                                 _WIDE_MODEL_COLUMNS[0])
        if len(model_columns) != 2:
            raise PairsTableError(f"model_columns must name 2 columns, got {list(model_columns)}")
        hint = "name the two model columns with --model-columns A,B (model_columns=)"
        ia, ib = (_column(path, header, c, hint) for c in model_columns)
        names = [h for h in header if h not in model_columns] if metrics is None else list(metrics)
        if not names:
            raise PairsTableError(f"{path}: no metric column beside {', '.join(model_columns)}")
        cols = [_column(path, header, m, "choose metric columns with --metrics (metrics=)") for m in names]
        for line, r in rows:
            r = r + [""] * (len(header) - len(r))
            for m, c in zip(names, cols):
                if not r[c].strip():
                    continue  # this metric not given for this row (e.g. a symmetric one in one order only)
                entries.append((m, r[ia].strip(), r[ib].strip(), _number(path, line, m, r[c]), line))
    if asymmetric is not None:
        unknown = [m for m in asymmetric if m not in names]
        if unknown:
            raise PairsTableError(f"{path}: asymmetric metric {unknown[0]!r} is not in the table "
                                  f"(metrics: {', '.join(names)})")
    for m, a, b, _, line in entries:
        if not a or not b:
            raise PairsTableError(f"{path}: line {line}: empty model name")
    models = list(dict.fromkeys(x for e in entries for x in e[1:3]))
    if len(models) < 3:
        raise PairsTableError(f"{path}: {len(models)} models; the analysis needs at least 3 "
                              "(at least 2 populations of 2 models)")
    index = {m: i for i, m in enumerate(models)}
    M = len(models)
    values = {m: np.full((M, M), np.nan) for m in names}
    lines: Dict[str, Dict[Tuple[int, int], int]] = {m: {} for m in names}
    for m, a, b, v, line in entries:
        i, j = index[a], index[b]
        if (i, j) in lines[m]:
            raise PairsTableError(f"{path}: lines {lines[m][(i, j)]} and {line} both give {m} of ({a}, {b}); "
                                  "keep one row per pair")
        values[m][i, j] = v
        lines[m][(i, j)] = line
    directional = {m: _directionality(path, m, values[m], lines[m], models, asymmetric) for m in names}
    return PairsTable(path, "long" if long_form else "wide", models, values, directional, lines)


def _directionality(path: str, metric: str, v: np.ndarray, lines: Dict[Tuple[int, int], int],
                    models: List[str], asymmetric: Optional[Sequence[str]]) -> str:
    """'symmetric', 'declared' or 'detected' (see the module docstring); raises for a missing pair,
    a missing direction of a directional metric, or conflicting values of a symmetric one."""
    given = np.isfinite(v)
    np.fill_diagonal(given, True)
    missing = ~(given | given.T)
    if missing.any():
        i, j = (int(k) for k in np.argwhere(missing)[0])
        raise PairsTableError(f"{path}: no {metric} value for the pair ({models[i]}, {models[j]}) "
                              f"({int(missing.sum()) // 2} pairs missing); every two models need a row")
    both = given & given.T
    with np.errstate(invalid="ignore"):
        scale = np.maximum(1.0, np.maximum(np.abs(v), np.abs(v.T)))
        differ = both & (np.abs(v - v.T) > CONFLICT_RTOL * scale)
    np.fill_diagonal(differ, False)
    declared = asymmetric is not None and metric in asymmetric
    complete = bool(both.all())
    if declared or (asymmetric is None and complete and differ.any()):
        if not complete:
            i, j = (int(k) for k in np.argwhere(given.T & ~given)[0])  # (j, i) given, (i, j) not
            raise PairsTableError(f"{path}: {metric} is directional but ({models[i]}, {models[j]}) has no row "
                                  f"(line {lines[(j, i)]} gives the other order); give both orders of every pair")
        return "declared" if declared else "detected"
    if differ.any():
        i, j = (int(k) for k in np.argwhere(np.triu(differ))[0])
        hint = (f"declare it with --asymmetric {metric} (asymmetric=) and give both orders of every pair"
                if asymmetric is not None else "a directional metric needs both orders of every pair")
        raise PairsTableError(f"{path}: lines {lines[(i, j)]} and {lines[(j, i)]} give conflicting {metric} values "
                              f"for ({models[i]}, {models[j]}): {v[i, j]!r} and {v[j, i]!r}; if {metric} is "
                              f"directional, {hint}")
    return "symmetric"


# ----------------------------------------------------------------------------- populations
def load_population_csv(path: Union[str, os.PathLike]) -> Dict[str, str]:
    """A ``model, population`` CSV (header row; other columns ignored) -> {model: population}.
    Raises `PairsTableError` for a missing column, an empty population or a model listed twice
    with different populations."""
    path = os.fspath(path)
    header, rows = _read_csv(path)
    hint = "the population file needs the columns model, population"
    im, ip = _column(path, header, "model", hint), _column(path, header, "population", hint)
    out: Dict[str, str] = {}
    first: Dict[str, int] = {}
    for line, r in rows:
        r = r + [""] * (len(header) - len(r))
        model, pop = r[im].strip(), r[ip].strip()
        if not model or not pop:
            raise PairsTableError(f"{path}: line {line}: empty {'model' if not model else 'population'}")
        if model in out and out[model] != pop:
            raise PairsTableError(f"{path}: lines {first[model]} and {line} give {model} two populations "
                                  f"({out[model]!r} and {pop!r})")
        out[model], first[model] = pop, first.get(model, line)
    return out


def assign_populations(models: Sequence[str], regex: Optional[str] = None,
                       mapping: Optional[Mapping[str, str]] = None, where: str = "the table") -> List[str]:
    """One population per model, from ``regex`` (its first capture group, `re.search`) or
    ``mapping`` (model -> population); exactly one of them. Raises `PairsTableError` naming a model
    without population, and a population of fewer than 2 models or fewer than 2 populations."""
    if (regex is None) == (mapping is None):
        raise PairsTableError("give the populations either as a regex or as a mapping (CSV of model, population)")
    if regex is not None:
        try:
            pattern = re.compile(regex)
        except re.error as e:
            raise PairsTableError(f"population regex {regex!r} is not a valid regular expression ({e})") from None
        if pattern.groups < 1:
            raise PairsTableError(f"population regex {regex!r} has no capture group: put the population part "
                                  "in parentheses, e.g. '^([A-Za-z]+)-'")
        pops = []
        for m in models:
            hit = pattern.search(m)
            if hit is None or not hit.group(1):
                raise PairsTableError(f"model {m!r} of {where} has no population: the regex {regex!r} does not "
                                      "match it (or its group is empty)")
            pops.append(hit.group(1))
    else:
        absent = [m for m in models if m not in mapping]
        if absent:
            raise PairsTableError(f"model {absent[0]!r} of {where} has no population in the mapping "
                                  f"({len(absent)} models missing); add a row '{absent[0]},<population>'")
        pops = [str(mapping[m]) for m in models]
    sizes: Dict[str, List[str]] = {}
    for m, p in zip(models, pops):
        sizes.setdefault(p, []).append(m)
    if len(sizes) < 2:
        raise PairsTableError(f"every model of {where} is in population {pops[0]!r}; the analysis compares "
                              "at least 2 populations")
    small = [(p, ms) for p, ms in sizes.items() if len(ms) < 2]
    if small:
        p, ms = small[0]
        raise PairsTableError(f"population {p!r} has 1 model ({ms[0]}); every population needs at least 2 "
                              "(within-population pairs)")
    return pops


# ----------------------------------------------------------------------------- statistics
def population_permutation_test(matrix: np.ndarray, populations: Sequence[str], permutations: int = 9999,
                                seed: int = 0, ordered: bool = False) -> PermutationTest:
    """Permutation test of mean(within-population) − mean(between-population) pair values.

    matrix: (M, M) values (symmetric unless ``ordered``; the diagonal is ignored); populations: (M,)
    labels. The null distribution shuffles the labels across models (pairs sharing a model stay
    together), via `stats.mantel` against the same-population indicator matrix: with fixed
    population sizes its Pearson r is a monotone function of the difference, so the two-sided
    Mantel p-value is this test's. All orderings are enumerated when M! <= permutations.
    """
    m = np.array(matrix, dtype=np.float64)
    np.fill_diagonal(m, 0.0)
    labels = np.asarray(populations)
    same = (labels[:, None] == labels[None, :]).astype(np.float64)
    mask = pair_mask(m.shape[0], ordered)
    within, between = m[mask & (same == 1)], m[mask & (same == 0)]
    res = mantel(m, same, method="pearson", permutations=permutations, seed=seed, ordered=ordered)
    return PermutationTest(float(within.mean() - between.mean()), res.statistic, res.pvalue, res.permutations,
                           res.exact, res.seed)


def _block_values(m: np.ndarray, ia: np.ndarray, ib: np.ndarray, ordered: bool) -> np.ndarray:
    sub = m[np.ix_(ia, ib)]
    if ia is ib:
        return sub[pair_mask(ia.size, ordered)]
    return sub.ravel()


def _bootstrap_ci(m: np.ndarray, ia: np.ndarray, ib: np.ndarray, ordered: bool, reps: int, confidence: float,
                  rng: np.random.Generator) -> Tuple[float, float]:
    """Percentile CI of a block mean, resampling models (with replacement) within each population;
    a within block's resampled pairs of one model with itself are left out."""
    within = ia is ib
    if reps == 0 or (within and ia.size < 3):
        return math.nan, math.nan
    n_a, n_b = ia.size, ib.size
    chunk = max(1, _BOOTSTRAP_ELEMENTS // (n_a * n_b))
    means = []
    for start in range(0, reps, chunk):
        b = min(chunk, reps - start)
        da = ia[rng.integers(0, n_a, (b, n_a))]
        db = da if within else ib[rng.integers(0, n_b, (b, n_b))]
        vals = m[da[:, :, None], db[:, None, :]]  # (b, n_a, n_b)
        if within:
            keep = pair_mask(n_a, ordered)[None] & (da[:, :, None] != db[:, None, :])
            total, count = np.where(keep, vals, 0.0).sum((1, 2)), keep.sum((1, 2))
            ok = count > 0
            means.append(total[ok] / count[ok])
        else:
            means.append(vals.mean((1, 2)))
    means = np.concatenate(means)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _analyse_metric(name: str, raw: np.ndarray, how: str, directional: str, pops: List[str], order: List[str],
                    permutations: int, bootstrap: int, confidence: float, seed: int) -> MetricAnalysis:
    ordered = how != "symmetric" and directional == "ordered"
    if how == "symmetric":
        both = np.isfinite(raw) & np.isfinite(raw.T)  # both orders given: equal within CONFLICT_RTOL
        m = np.where(both, (raw + raw.T) / 2, np.where(np.isfinite(raw), raw, raw.T))
        handling = "symmetric"
    elif ordered:
        m, handling = raw.copy(), "ordered pairs"
    else:
        m, handling = (raw + raw.T) / 2, "mean of both directions"
    np.fill_diagonal(m, np.nan)
    filled = np.where(np.isnan(m), 0.0, m)
    labels = np.asarray(pops)
    index = {p: np.flatnonzero(labels == p) for p in order}
    rng = np.random.default_rng(seed)
    blocks, groups = [], []
    for a in order:
        for b in order:
            if (not ordered and order.index(b) < order.index(a)):
                continue
            ia = index[a]
            ib = ia if a == b else index[b]
            vals = _block_values(filled, ia, ib, ordered)
            lo, hi = _bootstrap_ci(filled, ia, ib, ordered, bootstrap, confidence, rng)
            blocks.append(BlockSummary((a, b), int(vals.size), float(vals.mean()), lo, hi))
            groups.append(vals)
    mask = pair_mask(len(pops), ordered)
    same = labels[:, None] == labels[None, :]
    within, between = filled[mask & same], filled[mask & ~same]
    pooled = np.concatenate(groups)
    if np.all(pooled == pooled[0]):
        raise PairsTableError(f"{name}: every pair has the same value ({float(pooled[0])!r}); nothing to compare")
    kruskal = kruskal_wallis(*groups) if len(groups) >= 2 else None
    mw = mann_whitney(within, between)
    perm = population_permutation_test(filled, pops, permutations, seed, ordered)
    return MetricAnalysis(name, handling, m, blocks, kruskal, mw, int(within.size), int(between.size), perm)


def analyse_pairs(table: PairsTable, populations: Optional[Union[Mapping[str, str], str, os.PathLike]] = None, *,
                  regex: Optional[str] = None, directional: str = "mean", permutations: int = 9999,
                  bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0) -> PairsAnalysis:
    """Analyse a `PairsTable` by population (see the module docstring).

    populations: a {model: population} mapping or the path of a ``model, population`` CSV; or
    ``regex`` (one capture group); neither: a store export uses `STORE_POPULATION_REGEX`, a wide
    table is an error. directional: ``"mean"`` or ``"ordered"`` (directional metrics only).
    permutations: random label shufflings of the permutation and Mantel tests (all orderings when
    M! <= permutations); bootstrap: replicates of the block CIs (0: none); confidence: their
    level; seed: of the permutations and the bootstrap. Returns `PairsAnalysis`, models ordered by
    population (populations sorted by name) and within one in table order.
    Raises `PairsTableError` for a bad mapping or option.
    """
    if directional not in DIRECTIONAL_MODES:
        raise PairsTableError(f"directional must be one of {DIRECTIONAL_MODES}, got {directional!r}")
    if isinstance(permutations, bool) or not isinstance(permutations, int) or permutations < 1:
        raise PairsTableError(f"permutations must be a positive integer, got {permutations!r}")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise PairsTableError(f"bootstrap must be an integer >= 0, got {bootstrap!r}")
    if not 0.0 < confidence < 1.0:
        raise PairsTableError(f"confidence must be in (0, 1), got {confidence!r}")
    where = table.source
    if populations is not None and regex is not None:
        raise PairsTableError("give the populations either as a regex or as a mapping, not both")
    if isinstance(populations, (str, os.PathLike)):
        source = f"file {os.fspath(populations)}"
        pops = assign_populations(table.models, mapping=load_population_csv(populations), where=where)
    elif populations is not None:
        source = "mapping"
        pops = assign_populations(table.models, mapping=populations, where=where)
    elif regex is not None:
        source = f"regex {regex}"
        pops = assign_populations(table.models, regex=regex, where=where)
    elif table.form == "long":
        source = f"run ids (regex {STORE_POPULATION_REGEX})"
        pops = assign_populations(table.models, regex=STORE_POPULATION_REGEX, where=where)
    else:
        raise PairsTableError(f"{where}: no populations given: pass --populations-regex REGEX (one capture group "
                              "over model names) or --populations FILE (CSV of model, population)")
    order = sorted(set(pops))
    perm = sorted(range(len(pops)), key=lambda i: order.index(pops[i]))
    models = [table.models[i] for i in perm]
    pops = [pops[i] for i in perm]
    metrics = {name: _analyse_metric(name, table.values[name][np.ix_(perm, perm)], table.directional[name],
                                     directional, pops, order, permutations, bootstrap, confidence, seed)
               for name in table.metrics}
    comparisons = []
    names = list(metrics)
    for x, a in enumerate(names):
        for b in names[x + 1:]:
            ma, mb = metrics[a], metrics[b]
            ordered = "ordered pairs" in (ma.handling, mb.handling)
            A, B = (np.nan_to_num(v.matrix, nan=0.0) for v in (ma, mb))
            comparisons.append(MetricComparison(
                (a, b), mantel(A, B, "pearson", permutations, seed=seed, ordered=ordered),
                mantel(A, B, "spearman", permutations, seed=seed, ordered=ordered), ordered))
    return PairsAnalysis(table.source, table.form, models, pops, {p: pops.count(p) for p in order}, metrics,
                         comparisons, directional, permutations, bootstrap, confidence, seed, source)
