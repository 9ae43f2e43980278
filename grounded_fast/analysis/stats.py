"""Significance tests and matrix correlations used by the "Grounded and Well-rounded" analyses.

Thin, validated wrappers around scipy where scipy computes the same thing (Kruskal–Wallis,
Mann–Whitney U, Pearson/Spearman), plus a vectorised Mantel permutation test for two pairwise
(M x M) matrices. Inputs may be numpy arrays, torch tensors or sequences; all math is float64.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
from scipy import stats as _sps

__all__ = [
    "KruskalResult", "MannWhitneyResult", "CorrelationResult", "MantelResult",
    "kruskal_wallis", "mann_whitney", "matrix_correlation", "mantel", "rsa",
]

_METHODS = ("pearson", "spearman")
_ALTERNATIVES = ("two-sided", "greater", "less")
# Relative tolerance of the symmetry check (matrices computed in float32 are symmetric only to
# rounding), and of the "as extreme as observed" comparison in the Mantel test (a permutation
# that reproduces the observed pairing, summed in another order, must still count).
SYMMETRY_RTOL = 1e-6
_PERM_EPS = 1e-10
# Most permuted index entries (permutations x pairs) materialised at once by `mantel`.
_BATCH_ELEMENTS = 1 << 21
# `permutations="exact"` is refused above this M (11! = 39,916,800 permutations).
MAX_EXACT_M = 10
# `mantel`'s default seed: the same call gives the same p-value on every run.
DEFAULT_SEED = 0


@dataclass(frozen=True)
class KruskalResult:
    """Kruskal–Wallis H test: ``statistic`` is H (tie-corrected), ``pvalue`` its chi² p-value."""
    statistic: float
    pvalue: float


@dataclass(frozen=True)
class MannWhitneyResult:
    """Mann–Whitney U test of x against y.

    ``statistic`` is U of the first sample (scipy's convention), ``pvalue`` for the requested
    alternative, ``effect_size`` = U / (n1 * n2): the probability that a random x exceeds a
    random y (ties counting one half); 0.5 means no effect.
    """
    statistic: float
    pvalue: float
    effect_size: float


@dataclass(frozen=True)
class CorrelationResult:
    """Correlation of two matrices' upper triangles: ``statistic`` (r or rho), its ``pvalue``
    (scipy's, which assumes independent pairs), ``n_pairs`` = M(M-1)/2 and ``method``."""
    statistic: float
    pvalue: float
    n_pairs: int
    method: str


@dataclass(frozen=True)
class MantelResult:
    """Mantel test: ``statistic`` (r or rho of the upper triangles, as `matrix_correlation`),
    permutation ``pvalue``, the number of ``permutations`` used (M! when ``exact``), ``method``,
    ``alternative`` and the ``seed`` of the random permutations (the int passed, None when a
    numpy Generator was passed or every permutation was enumerated)."""
    statistic: float
    pvalue: float
    permutations: int
    exact: bool
    method: str
    alternative: str
    seed: Optional[int] = None


# ----------------------------------------------------------------------------- input helpers
def _as_float64(x: Any, name: str) -> np.ndarray:
    """numpy array / torch tensor / sequence -> float64 numpy array (a tensor is detached)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().double().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numeric (array, tensor or sequence of numbers): {e}") from None
    return arr


def _sample(x: Any, name: str) -> np.ndarray:
    arr = _as_float64(x, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf ({int((~np.isfinite(arr)).sum())} values)")
    return arr


def _square(x: Any, name: str, symmetric: bool = True) -> np.ndarray:
    arr = _as_float64(x, name)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{name} must be a square (M, M) matrix, got shape {arr.shape}")
    if arr.shape[0] < 3:
        raise ValueError(f"{name} is {arr.shape[0]}x{arr.shape[0]}; need M >= 3 (at least 3 pairs)")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf ({int((~np.isfinite(arr)).sum())} values)")
    if not symmetric:
        return arr
    asym = float(np.abs(arr - arr.T).max())
    scale = max(1.0, float(np.abs(arr).max()))
    if asym > SYMMETRY_RTOL * scale:
        raise ValueError(f"{name} is not symmetric (max |{name} - {name}.T| = {asym:.3g})")
    return arr


def _matrix_pair(A: Any, B: Any, names=("A", "B"), symmetric: bool = True) -> tuple:
    a, b = _square(A, names[0], symmetric), _square(B, names[1], symmetric)
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape, got {a.shape} and {b.shape}")
    return a, b


def _upper(m: np.ndarray) -> np.ndarray:
    """Upper-triangle entries (i < j) in row-major order, shape (M(M-1)/2,)."""
    return m[np.triu_indices(m.shape[0], k=1)]


def pair_mask(M: int, ordered: bool) -> np.ndarray:
    """(M, M) bool: the pairs compared, i < j, or every i != j when ``ordered``."""
    return ~np.eye(M, dtype=bool) if ordered else np.triu(np.ones((M, M), dtype=bool), k=1)


def _pair_indices(M: int, ordered: bool) -> tuple:
    """Row and column indices of the pairs compared (:func:`pair_mask`), in row-major order:
    M(M-1)/2 or M(M-1) pairs."""
    return np.nonzero(pair_mask(M, ordered))


def _check_not_constant(v: np.ndarray, name: str) -> None:
    if np.all(v == v[0]):
        raise ValueError(f"the upper triangle of {name} is constant; its correlation is undefined")


def _check_choice(value: str, allowed: tuple, name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


# ----------------------------------------------------------------------------- group tests
def kruskal_wallis(*groups: Any) -> KruskalResult:
    """Kruskal–Wallis H test that the groups come from one distribution (``scipy.stats.kruskal``).

    groups: two or more non-empty 1-d samples (arrays, tensors or sequences) of finite values.
    Raises ValueError for fewer than two groups, an empty / non-finite / non-1-d group, or when
    every value is identical (H is 0/0: undefined).
    The p-value assumes independent values. Values of model pairs (e.g. the agreement of every
    two models) are not independent: pairs sharing a model are correlated, and the p-value comes
    out too small. For those, use the permutation test `mantel`, against an (M, M) matrix that
    codes the groups (e.g. 1 where models i and j are in the same population, else 0).
    """
    if len(groups) < 2:
        raise ValueError(f"kruskal_wallis needs at least 2 groups, got {len(groups)}")
    samples = [_sample(g, f"group {i}") for i, g in enumerate(groups)]
    pooled = np.concatenate(samples)
    if np.all(pooled == pooled[0]):
        raise ValueError("kruskal_wallis: all values are identical, so H is undefined")
    res = _sps.kruskal(*samples)
    return KruskalResult(float(res.statistic), float(res.pvalue))


def mann_whitney(x: Any, y: Any, alternative: str = "two-sided") -> MannWhitneyResult:
    """Mann–Whitney U test of x against y (``scipy.stats.mannwhitneyu``, its default method).

    x: (n1,), y: (n2,) non-empty finite samples. alternative: "two-sided", "greater" (x tends to
    be larger) or "less". Returns U of x, the p-value and the effect size U / (n1 * n2).
    The p-value assumes independent values. Values of model pairs (e.g. the KL of every two
    models) are not independent: pairs sharing a model are correlated, and the p-value comes out
    too small. For those, use the permutation test `mantel`, against an (M, M) matrix that codes
    the two groups of pairs.
    """
    _check_choice(alternative, _ALTERNATIVES, "alternative")
    xs, ys = _sample(x, "x"), _sample(y, "y")
    res = _sps.mannwhitneyu(xs, ys, alternative=alternative)
    u = float(res.statistic)
    return MannWhitneyResult(u, float(res.pvalue), u / (xs.size * ys.size))


# ----------------------------------------------------------------------------- matrices
def matrix_correlation(A: Any, B: Any, method: str = "pearson", ordered: bool = False) -> CorrelationResult:
    """Correlation of the upper triangles (i < j, diagonal excluded) of two M x M matrices.

    A, B: symmetric (M, M), M >= 3, finite — e.g. agreement vs attention distance between M
    models. method: "pearson" (``scipy.stats.pearsonr``) or "spearman" (``spearmanr``).
    ``ordered=True`` compares every off-diagonal entry (i != j, M(M-1) ordered pairs) instead,
    and A, B need not be symmetric: for directional measures such as KL(i ‖ j).
    The p-value treats the pairs as independent, which they are not (each model appears
    in M-1 pairs); use `mantel` for a valid test.
    """
    _check_choice(method, _METHODS, "method")
    a, b = _matrix_pair(A, B, symmetric=not ordered)
    iu = _pair_indices(a.shape[0], ordered)
    x, y = a[iu], b[iu]
    _check_not_constant(x, "A")
    _check_not_constant(y, "B")
    res = _sps.pearsonr(x, y) if method == "pearson" else _sps.spearmanr(x, y)
    # index, not .statistic: spearmanr's result gained .statistic only in scipy 1.10
    return CorrelationResult(float(res[0]), float(res[1]), int(x.size), method)


def rsa(D1: Any, D2: Any) -> CorrelationResult:
    """Representational similarity analysis: Spearman rho between the upper triangles of two
    (M, M) distance (or similarity) matrices.

    Returns `CorrelationResult` (statistic = rho). Its p-value assumes independent pairs, which
    does not hold for pairwise matrices; for a valid p-value use
    ``mantel(D1, D2, method="spearman")``.
    """
    a, b = _matrix_pair(D1, D2, names=("D1", "D2"))
    x, y = _upper(a), _upper(b)
    _check_not_constant(x, "D1")
    _check_not_constant(y, "D2")
    res = _sps.spearmanr(x, y)
    return CorrelationResult(float(res[0]), float(res[1]), int(x.size), "spearman")


def _standardised_matrix(m: np.ndarray, spearman: bool, ordered: bool = False) -> np.ndarray:
    """Symmetric matrix whose upper triangle is the (ranked, if spearman) upper triangle of m,
    centred and scaled to unit norm; so r = <x_std, y_std> for two such triangles. ``ordered``:
    every off-diagonal entry standardised likewise, not symmetrised."""
    iu = _pair_indices(m.shape[0], ordered)
    v = m[iu]
    if spearman:
        v = _sps.rankdata(v)  # average ranks for ties, as spearmanr
    v = v - v.mean()
    v = v / np.linalg.norm(v)
    out = np.zeros_like(m)
    out[iu] = v
    return out if ordered else out + out.T


def _permutation_batches(M: int, permutations: Union[int, str], rng: np.random.Generator, batch: int):
    """Yield (b, M) int arrays of permutations: all M! when permutations == "exact", else
    `permutations` random ones."""
    if permutations == "exact":
        it = itertools.permutations(range(M))
        while True:
            chunk = np.array(list(itertools.islice(it, batch)), dtype=np.intp)
            if chunk.size == 0:
                return
            yield chunk
    else:
        left = permutations
        while left > 0:
            b = min(batch, left)
            yield rng.permuted(np.tile(np.arange(M), (b, 1)), axis=1)
            left -= b


def mantel(A: Any, B: Any, method: str = "pearson", permutations: Union[int, str] = 9999,
           alternative: str = "two-sided", seed: Any = DEFAULT_SEED, ordered: bool = False) -> MantelResult:
    """Mantel permutation test of the correlation between two symmetric (M, M) matrices.

    ``ordered=True``: the matrices may be asymmetric (directional measures such as KL(i ‖ j)),
    and the correlation runs over all M(M-1) ordered pairs i != j (`matrix_correlation` with
    ``ordered=True``); the permutations are the same (rows and columns of B together).

    The statistic is `matrix_correlation(A, B, method)` over the upper triangles. The null
    distribution permutes the rows and columns of B simultaneously (B[p][:, p]) and recomputes
    the correlation. With random permutations (``permutations`` an int) the p-value is
    ``(#{r_perm as extreme as r_obs} + 1) / (permutations + 1)``, "as extreme" meaning
    |r_perm| >= |r_obs| (two-sided), r_perm >= r_obs (greater) or r_perm <= r_obs (less), with a
    1e-10 tolerance for rounding. With ``permutations="exact"``, or whenever M! <= permutations,
    all M! permutations are enumerated (identity included) and p = #{as extreme} / M!;
    "exact" is limited to M <= 10.

    Vectorised: both triangles are ranked (spearman) and standardised once, after which each
    permuted correlation is a dot product of gathered entries, computed for batches of
    permutations at a time (bounded memory). seed: an int (default ``DEFAULT_SEED`` = 0, so that
    a call is reproducible), a numpy Generator, or None for fresh OS entropy; the int that ran
    is drawn for None and recorded in the result's ``seed``. Returns `MantelResult`.
    """
    _check_choice(method, _METHODS, "method")
    _check_choice(alternative, _ALTERNATIVES, "alternative")
    a, b = _matrix_pair(A, B, symmetric=not ordered)
    M = a.shape[0]
    if isinstance(permutations, str):
        if permutations != "exact":
            raise ValueError(f"permutations must be a positive int or 'exact', got {permutations!r}")
        if M > MAX_EXACT_M:
            raise ValueError(f"permutations='exact' needs M <= {MAX_EXACT_M} ({M}! is too many); "
                             "pass a number of random permutations")
    elif isinstance(permutations, (bool, np.bool_)) or not isinstance(permutations, (int, np.integer)) \
            or permutations < 1:
        raise ValueError(f"permutations must be a positive int or 'exact', got {permutations!r}")
    else:
        permutations = int(permutations)
        if M <= MAX_EXACT_M and math.factorial(M) <= permutations:
            permutations = "exact"

    observed = matrix_correlation(a, b, method, ordered).statistic
    spearman = method == "spearman"
    xs, ys = _standardised_matrix(a, spearman, ordered), _standardised_matrix(b, spearman, ordered)
    iu, ju = _pair_indices(M, ordered)
    x = xs[iu, ju]
    r_obs = float(x @ ys[iu, ju])  # same arithmetic as the permuted values below

    if seed is None:  # fresh entropy, but drawn here so that the result can say which seed ran
        seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
    recorded = int(seed) if isinstance(seed, (int, np.integer)) else None
    rng = np.random.default_rng(seed)
    batch = max(1, _BATCH_ELEMENTS // iu.size)
    count = total = 0
    for P in _permutation_batches(M, permutations, rng, batch):
        r = ys[P[:, iu], P[:, ju]] @ x  # (b,) correlations of permuted B with A
        if alternative == "two-sided":
            count += int(np.count_nonzero(np.abs(r) >= abs(r_obs) - _PERM_EPS))
        elif alternative == "greater":
            count += int(np.count_nonzero(r >= r_obs - _PERM_EPS))
        else:
            count += int(np.count_nonzero(r <= r_obs + _PERM_EPS))
        total += P.shape[0]

    exact = permutations == "exact"
    pvalue = count / total if exact else (count + 1) / (total + 1)
    return MantelResult(float(observed), float(pvalue), int(total), exact, method, alternative,
                        None if exact else recorded)
