"""``grounded-fast analyse`` / `grounded_fast.analysis.pairs_table`: a table of model pairs ->
matrices, per-population summaries, tests and a report; hand-computed values, the permutation
test's calibration, directional metrics, population mappings, every error path, the CLI and a
store's ``pairwise.csv`` export analysed as it is."""
import csv
import doctest
import itertools
import math
import re

import numpy as np
import pytest
from scipy import stats as sps

from grounded_fast.analysis import pairs_table
from grounded_fast.analysis.pairs_table import (INDEPENDENCE_CAVEAT, PairsTableError, analyse_pairs,
                                                assign_populations, load_pairs, load_population_csv,
                                                population_permutation_test)
from grounded_fast.analysis.stats import mantel, matrix_correlation
from grounded_fast.cli import main
from grounded_fast.experiments.store import ResultStore

A, B = ["a1", "a2", "a3"], ["b1", "b2", "b3"]


def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _hand_value(x, y):
    """The small table: within A 1, 2, 3; within B 4, 5, 6; between a_i, b_j: 10 + i + j."""
    within = {("a1", "a2"): 1, ("a1", "a3"): 2, ("a2", "a3"): 3, ("b1", "b2"): 4, ("b1", "b3"): 5, ("b2", "b3"): 6}
    return within.get((x, y), 10 + int(x[1]) + int(y[1]))


@pytest.fixture
def small(tmp_path):
    """6 models in 2 populations, one order per pair, no diagonal; 'dist' as above, 'neg' = -dist**2."""
    rows = [[x, y, _hand_value(x, y), -_hand_value(x, y) ** 2] for x, y in itertools.combinations(A + B, 2)]
    return _write(tmp_path / "pairs.csv", ["model_1", "model_2", "dist", "neg"], rows)


def test_hand_computed_summaries_and_tests(small):
    res = analyse_pairs(load_pairs(small), regex=r"^(\w)\d", permutations=9999, bootstrap=500, seed=3)
    assert res.models == A + B and res.populations == list("aaabbb") and res.sizes == {"a": 3, "b": 3}
    m = res.metrics["dist"]
    assert m.handling == "symmetric"
    assert [(b.populations, b.n_pairs, b.mean) for b in m.blocks] == [
        (("a", "a"), 3, 2.0), (("a", "b"), 9, 14.0), (("b", "b"), 3, 5.0)]
    assert np.isnan(np.diag(m.matrix)).all() and m.matrix[0, 4] == m.matrix[4, 0] == 13
    within, between = [1, 2, 3, 4, 5, 6], [10 + i + j for i in (1, 2, 3) for j in (1, 2, 3)]
    assert (m.n_within, m.n_between) == (6, 9)
    # 6! = 720 <= 9999: every ordering enumerated; only the 3!3!2 = 72 keeping the partition are as extreme
    p = m.permutation
    assert p.exact and p.permutations == 720 and p.seed is None
    assert p.difference == pytest.approx(3.5 - 14.0) and p.pvalue == pytest.approx(72 / 720)
    values = np.array([_hand_value(x, y) for x, y in itertools.combinations(A + B, 2)], float)
    same = np.array([x[0] == y[0] for x, y in itertools.combinations(A + B, 2)], float)
    assert p.r == pytest.approx(np.corrcoef(values, same)[0, 1])
    mw = sps.mannwhitneyu(within, between)
    assert (m.mann_whitney.statistic, m.mann_whitney.effect_size) == (0.0, 0.0)
    assert m.mann_whitney.pvalue == pytest.approx(mw.pvalue)
    kw = sps.kruskal([1, 2, 3], between, [4, 5, 6])
    assert m.kruskal.statistic == pytest.approx(kw.statistic) and m.kruskal.pvalue == pytest.approx(kw.pvalue)
    for b in m.blocks:
        assert b.ci_low <= b.mean <= b.ci_high
    # between metrics: -dist**2 is a monotone decreasing function of dist: rho = -1, r close to it
    (c,) = res.comparisons
    assert c.metrics == ("dist", "neg") and not c.ordered
    assert c.rsa.statistic == pytest.approx(-1.0)
    assert c.mantel.statistic == pytest.approx(np.corrcoef(values, -values ** 2)[0, 1])
    assert c.mantel.exact and c.mantel.pvalue == pytest.approx(mantel(np.nan_to_num(m.matrix),
                                                                      np.nan_to_num(res.metrics["neg"].matrix),
                                                                      permutations="exact").pvalue)


def test_diagonal_and_both_orders_of_a_symmetric_metric_are_accepted(tmp_path, small):
    """The same table with a diagonal and each pair in both orders (equal values, one within float32
    rounding) analyses exactly like the one-order table without a diagonal."""
    rows = [[x, x, 0.0, 0.0] for x in A + B]
    for x, y in itertools.permutations(A + B, 2):
        v = _hand_value(*sorted((x, y)))
        rows.append([x, y, v * (1 + 1e-8 if x > y else 1), -v ** 2])
    full = load_pairs(_write(tmp_path / "full.csv", ["model_1", "model_2", "dist", "neg"], rows))
    assert full.directional == {"dist": "symmetric", "neg": "symmetric"} and np.diag(full.values["dist"]).sum() == 0
    kw = dict(regex=r"^(\w)", permutations=200, bootstrap=100, seed=1)
    one, both = analyse_pairs(load_pairs(small), **kw), analyse_pairs(full, **kw)
    for name in ("dist", "neg"):
        assert [b.n_pairs for b in both.metrics[name].blocks] == [b.n_pairs for b in one.metrics[name].blocks]
        assert [v for b in both.metrics[name].blocks for v in (b.mean, b.ci_low, b.ci_high)] == pytest.approx(
            [v for b in one.metrics[name].blocks for v in (b.mean, b.ci_low, b.ci_high)], rel=1e-7)
        assert both.metrics[name].permutation.pvalue == one.metrics[name].permutation.pvalue


def test_bootstrap_ci_resamples_models_as_a_loop_does(small):
    """The vectorised bootstrap against a plain loop over the same draws (models resampled within each
    population; a within block's pairs of one model with itself left out)."""
    reps, conf, seed = 300, 0.9, 7
    res = analyse_pairs(load_pairs(small), regex=r"^(\w)", permutations=10, bootstrap=reps, confidence=conf,
                        seed=seed)
    m = np.nan_to_num(res.metrics["dist"].matrix)
    rng = np.random.default_rng(seed)
    ia, ib = np.arange(3), np.arange(3, 6)
    expected = {}
    for key, (xa, xb) in {("a", "a"): (ia, ia), ("a", "b"): (ia, ib), ("b", "b"): (ib, ib)}.items():
        da = xa[rng.integers(0, 3, (reps, 3))]
        db = da if key[0] == key[1] else xb[rng.integers(0, 3, (reps, 3))]
        means = []
        for r in range(reps):
            if key[0] == key[1]:
                vals = [m[da[r, s], da[r, t]] for s in range(3) for t in range(s + 1, 3) if da[r, s] != da[r, t]]
            else:
                vals = [m[x, y] for x in da[r] for y in db[r]]
            if vals:
                means.append(np.mean(vals))
        expected[key] = tuple(np.quantile(means, [0.05, 0.95]))
    for b in res.metrics["dist"].blocks:
        assert (b.ci_low, b.ci_high) == pytest.approx(expected[b.populations])
    again = analyse_pairs(load_pairs(small), regex=r"^(\w)", permutations=10, bootstrap=reps, confidence=conf,
                          seed=seed)
    assert [b.ci_low for b in again.metrics["dist"].blocks] == [b.ci_low for b in res.metrics["dist"].blocks]


def test_within_block_of_two_models_has_no_ci(tmp_path):
    models = ["a1", "a2", "b1", "b2", "b3"]
    rows = [[x, y, i + 1.0] for i, (x, y) in enumerate(itertools.combinations(models, 2))]
    res = analyse_pairs(load_pairs(_write(tmp_path / "p.csv", ["model_1", "model_2", "d"], rows)),
                        regex=r"^(\w)", permutations=50, bootstrap=100)
    blocks = {b.populations: b for b in res.metrics["d"].blocks}
    assert blocks[("a", "a")].n_pairs == 1 and math.isnan(blocks[("a", "a")].ci_low)
    assert not math.isnan(blocks[("b", "b")].ci_low)


def _model_effect_table(rng, M, effect):
    """(M, M) symmetric values u_i + u_j + noise (a strong per-model effect: pairs sharing a model are
    correlated), plus ``effect`` on pairs within the first half."""
    u = rng.normal(size=M) * 2.0
    v = u[:, None] + u[None, :] + rng.normal(size=(M, M))
    v = (v + v.T) / 2
    half = np.arange(M) < M // 2
    return v + effect * (half[:, None] & half[None, :])


def test_permutation_test_finds_a_clear_population_effect():
    rng = np.random.default_rng(0)
    labels = ["A"] * 6 + ["B"] * 6
    v = rng.normal(size=(12, 12))
    v = (v + v.T) / 2 + 3.0 * (np.equal.outer(labels, labels))
    res = population_permutation_test(v, labels, permutations=999, seed=1)
    assert res.pvalue <= 0.01 and res.difference > 2 and not res.exact and res.seed == 1


def test_permutation_p_is_uniform_without_a_population_effect_even_with_model_effects():
    """Null tables (model effects, no population effect): the label-shuffling p-value is uniform-ish,
    while Kruskal-Wallis across the blocks (the independence it assumes does not hold: a block's pairs
    share its models) rejects far too often."""
    rng = np.random.default_rng(2024)
    labels = ["A"] * 5 + ["B"] * 5
    perm_p, kw_p = [], []
    iu = np.triu_indices(5, k=1)
    for k in range(200):
        v = _model_effect_table(rng, 10, 0.0)
        perm_p.append(population_permutation_test(v, labels, permutations=199, seed=k).pvalue)
        kw_p.append(sps.kruskal(v[:5, :5][iu], v[:5, 5:].ravel(), v[5:, 5:][iu]).pvalue)
    perm_p, kw_p = np.array(perm_p), np.array(kw_p)
    assert 0.01 <= (perm_p <= 0.05).mean() <= 0.10
    assert 0.10 <= (perm_p <= 0.2).mean() <= 0.30
    assert 0.4 <= perm_p.mean() <= 0.6
    assert (kw_p <= 0.05).mean() > 0.2  # the caveat in the report, measured


def test_ordered_mantel_matches_naive_enumeration():
    rng = np.random.default_rng(5)
    M = 5
    X, Y = rng.normal(size=(M, M)), rng.normal(size=(M, M))
    Y += 0.8 * X
    off = ~np.eye(M, dtype=bool)
    r_obs = np.corrcoef(X[off], Y[off])[0, 1]
    count = sum(abs(np.corrcoef(X[off], Y[np.ix_(p, p)][off])[0, 1]) >= abs(r_obs) - 1e-10
                for p in map(list, itertools.permutations(range(M))))
    res = mantel(X, Y, permutations="exact", ordered=True)
    assert res.statistic == pytest.approx(r_obs) and res.pvalue == pytest.approx(count / math.factorial(M))
    assert matrix_correlation(X, Y, ordered=True).n_pairs == M * (M - 1)
    with pytest.raises(ValueError, match="not symmetric"):
        mantel(X, Y)


def _kl_rows(models, seed=0):
    """Both orders of every pair, KL(a||b) != KL(b||a); 'agree' symmetric and given in one order only."""
    rng = np.random.default_rng(seed)
    rows = []
    for x, y in itertools.permutations(models, 2):
        base = 0.2 if x[0] == y[0] else 0.6
        rows.append([x, y, base + rng.uniform(0, 0.1) + (0.05 if x[0] == "a" else 0.0),
                     (0.9 if x[0] == y[0] else 0.5) if x < y else ""])
    return rows


def test_directional_metric_is_detected_and_symmetrised_by_the_mean(tmp_path):
    path = _write(tmp_path / "kl.csv", ["model_1", "model_2", "kl", "agree"], _kl_rows(A + B))
    table = load_pairs(path)
    assert table.directional == {"kl": "detected", "agree": "symmetric"}
    raw = table.values["kl"]
    res = analyse_pairs(table, regex=r"^(\w)", permutations=99, bootstrap=0)
    m = res.metrics["kl"]
    assert m.handling == "mean of both directions"
    assert m.matrix[0, 4] == pytest.approx((raw[0, 4] + raw[4, 0]) / 2) and m.matrix[4, 0] == m.matrix[0, 4]
    assert [b.n_pairs for b in m.blocks] == [3, 9, 3] and math.isnan(m.blocks[0].ci_low)  # bootstrap=0
    assert res.comparisons[0].ordered is False
    assert load_pairs(path, asymmetric=["kl"]).directional["kl"] == "declared"


def test_directional_metric_as_ordered_pairs(tmp_path):
    table = load_pairs(_write(tmp_path / "kl.csv", ["model_1", "model_2", "kl", "agree"], _kl_rows(A + B)))
    raw = table.values["kl"]
    res = analyse_pairs(table, regex=r"^(\w)", permutations=99, bootstrap=50, directional="ordered")
    m = res.metrics["kl"]
    assert m.handling == "ordered pairs"
    blocks = {b.populations: b for b in m.blocks}
    assert list(blocks) == [("a", "a"), ("a", "b"), ("b", "a"), ("b", "b")]
    assert blocks[("a", "b")].n_pairs == 9 and blocks[("a", "b")].mean == pytest.approx(raw[:3, 3:].mean())
    assert blocks[("b", "a")].mean == pytest.approx(raw[3:, :3].mean())
    assert blocks[("a", "a")].n_pairs == 6
    assert (m.n_within, m.n_between) == (12, 18)
    assert res.metrics["agree"].handling == "symmetric" and res.comparisons[0].ordered
    off = ~np.eye(6, dtype=bool)
    assert m.permutation.difference == pytest.approx(
        raw[off & np.equal.outer(res.populations, res.populations)].mean()
        - raw[off & ~np.equal.outer(res.populations, res.populations)].mean())


def test_regex_and_csv_mappings(tmp_path, small):
    table = load_pairs(small)
    by_regex = analyse_pairs(table, regex=r"^(\w)", permutations=10, bootstrap=0)
    pops = _write(tmp_path / "pops.csv", ["model", "population", "note"],
                  [[m, "first" if m[0] == "a" else "second", "x"] for m in A + B] + [["unused", "third", ""]])
    assert load_population_csv(pops)["a2"] == "first"
    by_csv = analyse_pairs(table, str(pops), permutations=10, bootstrap=0)
    assert by_csv.sizes == {"first": 3, "second": 3} and by_csv.models == by_regex.models
    by_dict = analyse_pairs(table, {m: m[0].upper() for m in A + B}, permutations=10, bootstrap=0)
    assert by_dict.populations == list("AAABBB")
    assert by_csv.metrics["dist"].permutation.pvalue == by_regex.metrics["dist"].permutation.pvalue
    # models are grouped by population whatever their order in the table
    assert assign_populations(["b1", "a1", "b2", "a2"], regex=r"(\w)\d") == ["b", "a", "b", "a"]


def _error(tmp_path, capsys, argv):
    assert main(["analyse", *map(str, argv), "--to", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("grounded-fast analyse: ")
    assert not (tmp_path / "out").exists()
    return err


def test_error_paths_are_one_line_exit_2(tmp_path, capsys, small):
    cols = ["model_1", "model_2", "d"]
    pairs = [[x, y, 1.0 + i] for i, (x, y) in enumerate(itertools.combinations(A + B, 2))]
    reg = ["--populations-regex", r"^(\w)"]
    # missing column
    bad = _write(tmp_path / "nocol.csv", ["model_1", "other", "d"], pairs)
    assert "no column 'model_2'" in _error(tmp_path, capsys, [bad, *reg])
    assert "no column 'nope'" in _error(tmp_path, capsys, [small, *reg, "--metrics", "nope"])
    # non-numeric value: file, line, column
    rows = [r[:] for r in pairs]
    rows[3][2] = "n/a"
    err = _error(tmp_path, capsys, [_write(tmp_path / "text.csv", cols, rows), *reg])
    assert re.search(r"text\.csv: line 5, column 'd': 'n/a' is not a number", err)
    rows[3][2] = "inf"
    assert "not a finite number" in _error(tmp_path, capsys, [_write(tmp_path / "inf.csv", cols, rows), *reg])
    # duplicate ordered pair, conflicting orders of a symmetric metric, a missing pair
    dup = _write(tmp_path / "dup.csv", cols, pairs + [["a1", "a2", 1.0]])
    assert "lines 2 and 17 both give d of (a1, a2)" in _error(tmp_path, capsys, [dup, *reg])
    conflict = _write(tmp_path / "conf.csv", cols, pairs + [["a2", "a1", 9.0]])
    err = _error(tmp_path, capsys, [conflict, *reg])
    assert "lines 2 and 17 give conflicting d values for (a1, a2)" in err and "both orders" in err
    err = _error(tmp_path, capsys, [conflict, *reg, "--asymmetric", "d"])
    assert "d is directional but" in err
    assert "no d value for the pair (a1, a2)" in _error(tmp_path, capsys,
                                                         [_write(tmp_path / "gap.csv", cols, pairs[1:]), *reg])
    # KL in both orders, declared symmetric by naming another metric asymmetric: a conflict with a hint
    kl = _write(tmp_path / "kl.csv", ["model_1", "model_2", "kl", "agree"], _kl_rows(A + B))
    assert "--asymmetric kl" in _error(tmp_path, capsys, [kl, *reg, "--asymmetric", "agree"])
    # populations: none given, regex without a group or not matching, CSV without a model or a column,
    # a population of one model, a single population
    assert "no populations given" in _error(tmp_path, capsys, [small])
    assert "has no capture group" in _error(tmp_path, capsys, [small, "--populations-regex", r"^\w"])
    err = _error(tmp_path, capsys, [small, "--populations-regex", r"^(a)"])
    assert "model 'b1'" in err and "has no population" in err
    partial = _write(tmp_path / "pops.csv", ["model", "population"], [[m, m[0]] for m in A + B[:2]])
    assert "model 'b3'" in _error(tmp_path, capsys, [small, "--populations", partial])
    nocol = _write(tmp_path / "pops2.csv", ["model", "group"], [[m, m[0]] for m in A + B])
    assert "no column 'population'" in _error(tmp_path, capsys, [small, "--populations", nocol])
    twice = _write(tmp_path / "pops3.csv", ["model", "population"], [[m, m[0]] for m in A + B] + [["a1", "b"]])
    assert "lines 2 and 8 give a1 two populations" in _error(tmp_path, capsys, [small, "--populations", twice])
    one = _write(tmp_path / "pops4.csv", ["model", "population"], [[m, "b" if m == "a1" else "x" + m[0]]
                                                                   for m in A + B])
    assert "population 'b' has 1 model (a1)" in _error(tmp_path, capsys, [small, "--populations", one])
    same = _write(tmp_path / "pops5.csv", ["model", "population"], [[m, "x"] for m in A + B])
    assert "at least 2 populations" in _error(tmp_path, capsys, [small, "--populations", same])
    # an unreadable file
    assert "No such file" in _error(tmp_path, capsys, [tmp_path / "absent.csv", *reg])


def test_single_population_and_constant_metric_errors(tmp_path, small):
    with pytest.raises(PairsTableError, match="every model of .* is in population 'x'"):
        analyse_pairs(load_pairs(small), {m: "x" for m in A + B})
    rows = [[x, y, 1.0] for x, y in itertools.combinations(A + B, 2)]
    with pytest.raises(PairsTableError, match="every pair has the same value"):
        analyse_pairs(load_pairs(_write(tmp_path / "c.csv", ["model_1", "model_2", "d"], rows)), regex=r"^(\w)")
    with pytest.raises(PairsTableError, match="directional must be one of"):
        analyse_pairs(load_pairs(small), regex=r"^(\w)", directional="max")


def test_cli_end_to_end_writes_the_report(tmp_path, capsys):
    path = _write(tmp_path / "kl.csv", ["model_1", "model_2", "kl", "agree"], _kl_rows(A + B))
    out = tmp_path / "report"
    assert main(["analyse", str(path), "--populations-regex", r"^(\w)", "--permutations", "500",
                 "--bootstrap", "100", "--seed", "4", "--to", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "6 models, populations {'a': 3, 'b': 3}" in printed and "kl (mean of both directions)" in printed
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert INDEPENDENCE_CAVEAT in md and "500 random, seed 4" in md
    assert "| a/b | 9 |" in md and "kl vs agree" in md and "mean of both directions" in md
    assert (out / "figures" / "heatmap_kl.png").stat().st_size > 1000
    assert "<img" in html and "Between metrics" in html
    # default output directory beside the CSV
    assert main(["analyse", str(path), "--populations-regex", r"^(\w)", "--permutations", "20",
                 "--bootstrap", "0", "--directional", "ordered"]) == 0
    assert "ordered pairs" in (tmp_path / "kl-analysis" / "report.md").read_text()


def test_store_export_round_trip(tmp_path, capsys):
    """A store's pairwise rows (run ids '<setup>-noise<n>-seed<s>@<epoch>', every ordered pair, KL
    directional, agreement symmetric) exported by `grounded-fast export` and analysed as they are."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    models = [f"{s}-noise0-seed{k}@2" for s in ("P", "C") for k in range(3)]
    rng = np.random.default_rng(1)
    kl = rng.uniform(0.1, 0.2, (6, 6)) + 0.5 * np.not_equal.outer([m[0] for m in models], [m[0] for m in models])
    agree = 1 - (kl + kl.T) / 2
    rows = [{"analysis": name, "model_a": models[i], "model_b": models[j], "value": float(mat[i, j])}
            for name, mat in (("agreement", agree), ("kl", kl)) for i in range(6) for j in range(6) if i != j]
    with ResultStore(run_dir / "results.sqlite") as store:
        store.begin_study("grounding", {"setups": ["P", "C"]})
        store.complete_unit("analysis", "analysis", {}, pairwise=rows)
    assert main(["export", str(run_dir)]) == 0
    exported = run_dir / "export" / "pairwise.csv"
    table = load_pairs(exported)
    assert table.form == "long" and table.models == models
    assert table.directional == {"agreement": "symmetric", "kl": "detected"}
    np.testing.assert_array_equal(table.values["kl"][~np.eye(6, dtype=bool)], kl[~np.eye(6, dtype=bool)])
    res = analyse_pairs(table, permutations=200, bootstrap=50)
    assert res.sizes == {"C": 3, "P": 3} and res.population_source.startswith("run ids")
    assert res.metrics["agreement"].permutation.difference > 0 > res.metrics["kl"].permutation.difference
    capsys.readouterr()
    assert main(["analyse", str(exported), "--metrics", "kl", "--permutations", "100", "--bootstrap", "20"]) == 0
    assert "populations {'C': 3, 'P': 3}" in capsys.readouterr().out
    md = (run_dir / "export" / "pairwise-analysis" / "report.md").read_text()
    assert "a store export" in md and "## kl (mean of both directions)" in md and "agreement" not in md


def test_module_docstring_example_runs():
    assert doctest.testmod(pairs_table).failed == 0
