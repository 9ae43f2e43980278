"""Concreteness norms: the shipped copy, malformed files, word selection, silhouette."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import silhouette_score

from grounded_fast.analysis.concreteness import (DEFAULT_NORMS_PATH, ConcretenessNorms,
                                                 concreteness_silhouette, load_concreteness_norms,
                                                 select_concreteness_words)

ORIGINAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "concreteness" / \
    "Concreteness_ratings_Brysbaert_et_al_BRM.txt"
HEADER = "Word\tBigram\tConc.M\tConc.SD\n"


@pytest.fixture(scope="module")
def norms():
    return load_concreteness_norms()


def write(tmp_path, text, name="norms.txt"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_copy_is_the_original():
    assert DEFAULT_NORMS_PATH.is_file()
    if not ORIGINAL.is_file():
        pytest.skip("original norms file not present")
    with gzip.open(DEFAULT_NORMS_PATH, "rb") as f:
        assert f.read() == ORIGINAL.read_bytes()


def test_loads_shipped_file(norms):
    assert len(norms) == len(norms.words) == 39954
    assert norms.concreteness.dtype == np.float64 and norms.concreteness.shape == (39954,)
    assert norms.bigram.dtype == bool and int(norms.bigram.sum()) == 2896
    d = norms.as_dict()
    assert d["apple"] == 5.0 and d["justice"] == 1.45 and d["essentialness"] == 1.04
    assert norms.bigram[norms.words.index("baking soda")]
    assert norms.concreteness.min() >= 1.0 and norms.concreteness.max() <= 5.0


def test_values_agree_with_original_file(norms):
    if not ORIGINAL.is_file():
        pytest.skip("original norms file not present")
    rows = [line.split("\t") for line in ORIGINAL.read_text().splitlines()[1:]]
    for word, bigram, conc in (r[:3] for r in rows[::997]):  # a spread of rows, checked independently
        i = norms.words.index(word)
        assert norms.concreteness[i] == float(conc)
        assert norms.bigram[i] == (bigram == "1")
    plain = load_concreteness_norms(ORIGINAL)  # the plain-text path reads the same
    assert plain.words == norms.words
    np.testing.assert_array_equal(plain.concreteness, norms.concreteness)


def test_gz_and_plain_and_no_bigram_column(tmp_path):
    text = "Conc.M\tWord\n1.5\tidea\n4.9\tice cream\n\n"
    plain = load_concreteness_norms(write(tmp_path, text))
    gz = tmp_path / "n.tsv.gz"
    with gzip.open(gz, "wt") as f:
        f.write(text)
    zipped = load_concreteness_norms(str(gz))
    for n in (plain, zipped):
        assert isinstance(n, ConcretenessNorms)
        assert n.words == ["idea", "ice cream"]
        assert n.concreteness.tolist() == [1.5, 4.9]
        assert n.bigram.tolist() == [False, True]  # no Bigram column: spaces mark bigrams


@pytest.mark.parametrize("text,match", [
    ("Word\tBigram\tConc.SD\nidea\t0\t1.0\n", r"norms\.txt: header has no 'Conc\.M' column"),
    ("Words\tConc.M\nidea\t1.0\n", r"norms\.txt: header has no 'Word' column"),
    (HEADER + "idea\t0\t1.5\t0.5\nwhale\t0\t4.9\n", r"norms\.txt, line 3: expected 4 .*got 3"),
    (HEADER + "idea\t0\t1.5\t0.5\n\nwhale\t0\tlots\t0.1\n", r"norms\.txt, line 4: Conc\.M 'lots' is not a number"),
    (HEADER + "idea\t0\tnan\t0.5\n", r"norms\.txt, line 2: Conc\.M is 'nan'"),
    (HEADER + "idea\tyes\t1.5\t0.5\n", r"norms\.txt, line 2: Bigram 'yes'"),
    (HEADER + "\t0\t1.5\t0.5\n", r"norms\.txt, line 2: empty Word"),
])
def test_malformed_files(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        load_concreteness_norms(write(tmp_path, text))


def toy_norms():
    words = ["idea", "truth", "essence", "hope", "cat", "apple", "banana", "bed sheet", "pear", "t-shirt",
             "notion", "zebra", "whale", "spirit"]
    conc = [1.5, 1.2, 1.2, 1.9, 4.9, 5.0, 5.0, 5.0, 4.9, 4.8, 1.3, 4.95, 4.7, 1.8]
    bigram = [w == "bed sheet" for w in words]
    return ConcretenessNorms(words, np.array(conc), np.array(bigram))


def test_selection_without_tokenizer():
    abstract, concrete = select_concreteness_words(toy_norms(), n_per_class=3)
    # "cat" is too short, "bed sheet" a bigram, "t-shirt" not alphabetic; ties ordered by word
    assert abstract == ["essence", "truth", "notion"]
    assert concrete == ["apple", "banana", "zebra"]


class VocabTokenizer:
    """Toy HF-like tokenizer: vocabulary words are one piece, others split; 'unknownword' -> [UNK]."""
    unk_token = "[UNK]"

    def __init__(self, vocab):
        self.vocab = set(vocab)

    def tokenize(self, word):
        if word == "essence":
            return ["[UNK]"]
        return [word] if word in self.vocab else [word[:2], "##" + word[2:]]


def test_selection_with_tokenizer_and_callable():
    vocab = {"idea", "truth", "essence", "hope", "banana", "pear", "whale", "spirit", "zebra"}
    n = toy_norms()
    abstract, concrete = select_concreteness_words(n, VocabTokenizer(vocab), n_per_class=3)
    assert abstract == ["truth", "idea", "spirit"]  # essence is [UNK], notion split
    assert concrete == ["banana", "zebra", "pear"]  # apple split
    # a plain callable word -> pieces works too (no unk check)
    same = select_concreteness_words(n, VocabTokenizer(vocab).tokenize, n_per_class=3)
    assert same[0] == ["essence", "truth", "idea"]
    # single_piece=False ignores the tokenizer
    assert select_concreteness_words(n, VocabTokenizer(vocab), n_per_class=3, single_piece=False) == \
        select_concreteness_words(n, n_per_class=3)


def test_selection_options_and_disjoint_classes():
    n = toy_norms()
    _, concrete = select_concreteness_words(n, n_per_class=2, min_letters=3, exclude_bigrams=False)
    assert concrete == ["apple", "banana"]  # "bed sheet" (5.0) now eligible but sorts after
    _, concrete = select_concreteness_words(n, n_per_class=4, min_letters=3, exclude_bigrams=False)
    assert concrete == ["apple", "banana", "bed sheet", "zebra"]
    # 11 eligible words -> 5 + 5, disjoint
    a, c = select_concreteness_words(n, n_per_class=5)
    assert len(set(a) | set(c)) == 10


def test_selection_too_few_words():
    with pytest.raises(ValueError, match="only 11 eligible words, need 2 \\* n_per_class = 12"):
        select_concreteness_words(toy_norms(), n_per_class=6)
    with pytest.raises(ValueError, match="n_per_class"):
        select_concreteness_words(toy_norms(), n_per_class=0)


def test_selection_on_shipped_norms(norms):
    abstract, concrete = select_concreteness_words(norms, n_per_class=1000)
    d = norms.as_dict()
    assert len(abstract) == len(concrete) == 1000 and not set(abstract) & set(concrete)
    assert all(w.isalpha() and len(w) >= 4 for w in abstract + concrete)
    assert [d[w] for w in abstract] == sorted(d[w] for w in abstract)
    assert max(d[w] for w in abstract) <= min(d[w] for w in concrete)
    assert d[concrete[0]] == 5.0 and d[abstract[0]] == min(d.values())


def two_clusters(rng, n0, n1, d=8, sep=10.0):
    X = np.concatenate([rng.normal(size=(n0, d)), rng.normal(size=(n1, d)) + sep])
    return X, np.array([0] * n0 + [1] * n1)


def test_silhouette_equals_sklearn_on_balanced_input(rng):
    X, y = two_clusters(rng, 20, 20, sep=0.5)
    for metric in ("cosine", "euclidean"):
        assert concreteness_silhouette(X, y, metric=metric) == pytest.approx(
            silhouette_score(X, y, metric=metric), rel=1e-12)
    # torch input and string labels
    labels = np.where(y == 0, "abstract", "concrete")
    assert concreteness_silhouette(torch.from_numpy(X).float(), labels, metric="euclidean") == pytest.approx(
        silhouette_score(X.astype(np.float32).astype(np.float64), y, metric="euclidean"), rel=1e-6)


def test_silhouette_subsampling_is_seeded(rng):
    X, y = two_clusters(rng, 10, 40, sep=0.3)
    s0 = concreteness_silhouette(X, y, metric="euclidean", seed=0)
    assert s0 == concreteness_silhouette(X, y, metric="euclidean", seed=0)
    # independent reconstruction of the documented subsampling
    keep = np.random.default_rng(0).choice(np.arange(10, 50), size=10, replace=False)
    idx = np.concatenate([np.arange(10), np.sort(keep)])
    assert s0 == pytest.approx(silhouette_score(X[idx], y[idx], metric="euclidean"), rel=1e-12)
    others = {concreteness_silhouette(X, y, metric="euclidean", seed=s) for s in range(1, 6)}
    assert len(others | {s0}) > 1
    assert concreteness_silhouette(X, y, metric="euclidean", balance=False) == pytest.approx(
        silhouette_score(X, y, metric="euclidean"), rel=1e-12)


def test_silhouette_well_separated_near_one(rng):
    X, y = two_clusters(rng, 30, 50, sep=100.0)
    assert concreteness_silhouette(X, y, metric="euclidean") > 0.95
    # cosine: two clusters in opposite directions
    Xc = np.concatenate([rng.normal(size=(30, 8)) * 0.01 + 1, rng.normal(size=(30, 8)) * 0.01 - 1])
    assert concreteness_silhouette(Xc, [0] * 30 + [1] * 30) > 0.99


@pytest.mark.parametrize("X,y,match", [
    (np.zeros(6), [0, 0, 0, 1, 1, 1], "embeddings must be"),
    (np.zeros((6, 2)), [0, 0, 1, 1], "labels must be 1-d of length N = 6"),
    (np.zeros((6, 2)), [0, 0, 1, 1, 2, 2], "exactly 2 distinct"),
    (np.zeros((6, 2)), [0] * 6, "exactly 2 distinct"),
    (np.zeros((4, 2)), [0, 0, 0, 1], "at least 2 samples"),
    (np.full((4, 2), np.nan), [0, 0, 1, 1], "NaN or inf"),
])
def test_silhouette_errors(X, y, match):
    with pytest.raises(ValueError, match=match):
        concreteness_silhouette(X, y)
