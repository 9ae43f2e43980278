"""grounded_fast.analysis.stats against scipy, and the Mantel test against a naive loop."""
import itertools

import numpy as np
import pytest
import scipy.stats as sps
import torch

from grounded_fast.analysis.stats import (kruskal_wallis, mann_whitney, mantel, matrix_correlation,
                                          rsa)


def sym(rng, M, noise=None, base=None):
    """Random symmetric M x M matrix (optionally base + noise), zero diagonal."""
    X = rng.normal(size=(M, M)) if base is None else base + noise * rng.normal(size=(M, M))
    X = (X + X.T) / 2
    np.fill_diagonal(X, 0.0)
    return X


def upper(m):
    M = m.shape[0]
    return np.array([m[i, j] for i in range(M) for j in range(i + 1, M)])


# ----------------------------------------------------------------------------- group tests
def test_kruskal_matches_scipy(rng):
    groups = [rng.normal(size=7), rng.normal(0.5, size=9), np.round(rng.normal(size=5), 1)]
    res = kruskal_wallis(*groups)
    ref = sps.kruskal(*groups)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.pvalue == pytest.approx(ref.pvalue, rel=1e-12)


def test_kruskal_accepts_tensors_and_lists():
    a, b = [0.1, 0.2, 0.3], torch.tensor([0.5, 0.6, 0.7], dtype=torch.float32)
    res = kruskal_wallis(a, b)
    ref = sps.kruskal(a, b.double().numpy())
    assert res.pvalue == pytest.approx(ref.pvalue, rel=1e-12)


@pytest.mark.parametrize("groups,match", [
    (([1.0, 2.0],), "at least 2 groups"),
    (([1.0, 2.0], []), "group 1 is empty"),
    (([1.0, np.nan], [1.0]), "group 0 contains NaN"),
    (([1.0, 2.0], [[1.0]]), "group 1 must be 1-d"),
    (([1.0, 1.0], [1.0]), "identical"),
    (([1.0], ["a"]), "group 1 must be numeric"),
])
def test_kruskal_errors(groups, match):
    with pytest.raises(ValueError, match=match):
        kruskal_wallis(*groups)


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_mann_whitney_matches_scipy(rng, alternative):
    x, y = rng.normal(0.3, size=12), np.round(rng.normal(size=17), 1)
    res = mann_whitney(x, y, alternative=alternative)
    ref = sps.mannwhitneyu(x, y, alternative=alternative)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.pvalue == pytest.approx(ref.pvalue, rel=1e-12)
    assert res.effect_size == pytest.approx(ref.statistic / (12 * 17), rel=1e-12)


def test_mann_whitney_effect_size_extremes():
    assert mann_whitney([5, 6, 7], [1, 2]).effect_size == 1.0
    assert mann_whitney([1, 2], [5, 6, 7]).effect_size == 0.0


def test_mann_whitney_errors():
    with pytest.raises(ValueError, match="alternative"):
        mann_whitney([1, 2], [3, 4], alternative="bigger")
    with pytest.raises(ValueError, match="y is empty"):
        mann_whitney([1, 2], [])
    with pytest.raises(ValueError, match="x contains NaN"):
        mann_whitney([1, np.inf], [3])


# ----------------------------------------------------------------------------- matrices
@pytest.mark.parametrize("method,ref", [("pearson", sps.pearsonr), ("spearman", sps.spearmanr)])
def test_matrix_correlation_matches_scipy(rng, method, ref):
    A = sym(rng, 9)
    B = sym(rng, 9, noise=1.0, base=A)
    res = matrix_correlation(A, B, method=method)
    expected = ref(upper(A), upper(B))
    assert res.n_pairs == 36
    assert res.statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert res.pvalue == pytest.approx(expected.pvalue, rel=1e-10)


def test_matrix_correlation_ignores_diagonal(rng):
    A, B = sym(rng, 6), sym(rng, 6)
    A2 = A + np.diag(rng.normal(size=6) * 100)
    assert matrix_correlation(A2, B).statistic == pytest.approx(matrix_correlation(A, B).statistic, rel=1e-13)


def test_rsa_is_spearman_of_upper_triangles(rng):
    D1 = np.abs(sym(rng, 8))
    D2 = np.abs(sym(rng, 8, noise=0.5, base=D1))
    res = rsa(torch.from_numpy(D1), D2)
    expected = sps.spearmanr(upper(D1), upper(D2))
    assert res.method == "spearman"
    assert res.statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert res.pvalue == pytest.approx(expected.pvalue, rel=1e-10)


def naive_mantel_exact(A, B, method, alternative):
    """Independent oracle: loop over all M! permutations with scipy."""
    corr = sps.pearsonr if method == "pearson" else sps.spearmanr
    x = upper(A)
    r_obs = corr(x, upper(B)).statistic
    hits = total = 0
    for p in itertools.permutations(range(A.shape[0])):
        p = list(p)
        r = corr(x, upper(B[np.ix_(p, p)])).statistic
        if alternative == "two-sided":
            hits += abs(r) >= abs(r_obs) - 1e-10
        elif alternative == "greater":
            hits += r >= r_obs - 1e-10
        else:
            hits += r <= r_obs + 1e-10
        total += 1
    return r_obs, hits / total


@pytest.mark.parametrize("method", ["pearson", "spearman"])
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_mantel_exact_matches_naive_enumeration(rng, method, alternative):
    A = sym(rng, 5)
    B = sym(rng, 5, noise=1.0, base=A)
    B[0, 1] = B[1, 0] = B[2, 3]  # a tie in B's ranks
    res = mantel(A, B, method=method, permutations="exact", alternative=alternative)
    r_obs, p = naive_mantel_exact(A, B, method, alternative)
    assert res.exact and res.permutations == 120
    assert res.statistic == pytest.approx(r_obs, rel=1e-12)
    assert res.pvalue == pytest.approx(p, abs=1e-15)
    assert 1 / 120 <= res.pvalue <= 1


def test_mantel_switches_to_exact_when_permutations_exceed_m_factorial(rng):
    A, B = sym(rng, 4), sym(rng, 4)
    res = mantel(A, B, permutations=9999, seed=0)
    assert res.exact and res.permutations == 24
    assert res.pvalue == mantel(A, B, permutations="exact").pvalue


def test_mantel_detects_relation_and_independence():
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(20, 3))
    A = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    related = mantel(A, A + sym(rng, 20) * 0.2, permutations=999, seed=0)
    assert related.pvalue < 0.01
    assert related.pvalue == pytest.approx(1 / 1000)  # no permutation beats r ~ 0.9
    pts2 = rng.normal(size=(20, 3))
    B = np.linalg.norm(pts2[:, None] - pts2[None], axis=-1)
    independent = mantel(A, B, permutations=999, seed=0)
    assert independent.pvalue > 0.05


def test_mantel_one_sided_directions():
    rng = np.random.default_rng(2)
    A = sym(rng, 15)
    assert mantel(A, A, alternative="greater", permutations=499, seed=0).pvalue < 0.01
    assert mantel(A, A, alternative="less", permutations=499, seed=0).pvalue > 0.99
    assert mantel(A, -A, alternative="less", permutations=499, seed=0).pvalue < 0.01


def test_mantel_random_p_value_matches_independent_count():
    """Random permutations drawn as mantel draws them, counted with scipy in a loop."""
    rng = np.random.default_rng(3)
    A = sym(rng, 7)
    B = sym(rng, 7, noise=2.0, base=A)
    res = mantel(A, B, method="spearman", permutations=300, seed=11)
    gen = np.random.default_rng(11)
    perms = gen.permuted(np.tile(np.arange(7), (300, 1)), axis=1)
    r_obs = sps.spearmanr(upper(A), upper(B)).statistic
    hits = sum(abs(sps.spearmanr(upper(A), upper(B[np.ix_(p, p)])).statistic) >= abs(r_obs) - 1e-10
               for p in perms)
    assert res.pvalue == pytest.approx((hits + 1) / 301, abs=1e-15)


def test_mantel_seeded_reproducible(rng):
    A = sym(rng, 12)
    B = sym(rng, 12, noise=3.0, base=A)
    r1 = mantel(A, B, permutations=2000, seed=42)
    r2 = mantel(torch.from_numpy(A), B, permutations=2000, seed=42)
    assert r1 == r2
    assert r1.permutations == 2000 and not r1.exact
    assert mantel(A, B, permutations=2000, seed=43).pvalue != r1.pvalue


def test_mantel_default_is_reproducible_and_result_carries_the_seed(rng):
    A = sym(rng, 12)
    B = sym(rng, 12, noise=3.0, base=A)
    first = mantel(A, B, permutations=500)
    assert first == mantel(A, B, permutations=500)  # a fixed default seed, not fresh entropy
    assert first.seed == 0 and first == mantel(A, B, permutations=500, seed=0)
    assert mantel(A, B, permutations=500, seed=7).seed == 7
    fresh = mantel(A, B, permutations=500, seed=None)  # entropy drawn, and recorded to rerun
    assert isinstance(fresh.seed, int) and mantel(A, B, permutations=500, seed=fresh.seed) == fresh
    assert mantel(A, B, permutations=500, seed=np.random.default_rng(1)).seed is None
    assert mantel(A[:5, :5], B[:5, :5]).seed is None  # every permutation enumerated: no seed


@pytest.mark.parametrize("fn", [kruskal_wallis, mann_whitney])
def test_group_tests_warn_that_model_pairs_are_not_independent(fn):
    doc = " ".join(fn.__doc__.split())
    assert "not independent" in doc and "`mantel`" in doc and "sharing a model" in doc


def test_mantel_batches_do_not_change_result(rng, monkeypatch):
    import grounded_fast.analysis.stats as st
    A = sym(rng, 6)
    B = sym(rng, 6, noise=1.0, base=A)
    full = mantel(A, B, permutations="exact")
    monkeypatch.setattr(st, "_BATCH_ELEMENTS", 7 * 15)  # batches of 7 permutations
    assert mantel(A, B, permutations="exact") == full


@pytest.mark.parametrize("fn", [matrix_correlation, rsa, mantel])
def test_matrix_input_errors(rng, fn):
    A = sym(rng, 5)
    with pytest.raises(ValueError, match="must be a square"):
        fn(A[:, :4], A)
    with pytest.raises(ValueError, match="same shape"):
        fn(A, sym(rng, 6))
    bad = A.copy()
    bad[0, 1] += 1.0
    with pytest.raises(ValueError, match=r"(B|D2) is not symmetric"):
        fn(A, bad)
    with pytest.raises(ValueError, match=r"(A|D1) is not symmetric"):
        fn(bad, A)
    with pytest.raises(ValueError, match="M >= 3"):
        fn(A[:2, :2], A[:2, :2])
    nan = A.copy()
    nan[1, 2] = nan[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        fn(A, nan)
    with pytest.raises(ValueError, match="constant"):
        fn(A, np.ones((5, 5)))


def test_mantel_argument_errors(rng):
    A, B = sym(rng, 5), sym(rng, 5)
    for bad in (0, -3, 2.5, True, "all"):
        with pytest.raises(ValueError, match="permutations"):
            mantel(A, B, permutations=bad)
    with pytest.raises(ValueError, match="method"):
        mantel(A, B, method="kendall")
    with pytest.raises(ValueError, match="alternative"):
        mantel(A, B, alternative="both")
    with pytest.raises(ValueError, match="M <= 10"):
        mantel(sym(rng, 11), sym(rng, 11), permutations="exact")


def test_symmetry_tolerates_float32_rounding(rng):
    A = sym(rng, 6)
    A32 = torch.from_numpy(A).float()
    A32[0, 1] += 3e-7  # a float32 rounding-level asymmetry is accepted
    assert A32[0, 1] != A32[1, 0]
    assert np.isfinite(matrix_correlation(A32, A).statistic)
