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
from grounded_fast.data.loaders import DataFormatError

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
    ("Word\tBigram\tConc.SD\nidea\t0\t1.0\n", r"norms\.txt:1: header has no 'Conc\.M' column"),
    ("Words\tConc.M\nidea\t1.0\n", r"norms\.txt:1: header has no 'Word' column"),
    (HEADER + "idea\t0\t1.5\t0.5\nwhale\t0\t4.9\n", r"norms\.txt:3: expected 4 .*got 3"),
    (HEADER + "idea\t0\t1.5\t0.5\n\nwhale\t0\tlots\t0.1\n", r"norms\.txt:4: Conc\.M 'lots' is not a number"),
    (HEADER + "idea\t0\tnan\t0.5\n", r"norms\.txt:2: Conc\.M is 'nan'"),
    (HEADER + "idea\tyes\t1.5\t0.5\n", r"norms\.txt:2: Bigram 'yes'"),
    (HEADER + "\t0\t1.5\t0.5\n", r"norms\.txt:2: empty Word"),
    (HEADER + "\n\n", r"norms\.txt: no rows after the header"),
    ("", r"norms\.txt: empty file"),
    ("Word\tWord\tConc.M\nidea\tidea\t1.5\n", r"norms\.txt:1: duplicate column name\(s\) \['Word'\]"),
])
def test_malformed_files(tmp_path, text, match):
    with pytest.raises(DataFormatError, match=match):
        load_concreteness_norms(write(tmp_path, text))


def test_encoding_and_compression_errors_name_the_file(tmp_path):
    p = tmp_path / "norms.txt"
    p.write_bytes(HEADER.encode() + b"idea\t0\t1.5\t0.5\nna\xefve\t0\t2.0\t0.5\n")
    with pytest.raises(DataFormatError, match="not valid UTF-8") as info:
        load_concreteness_norms(p)
    assert (info.value.path, info.value.line) == (str(p), 3)
    body = HEADER + "".join(f"word{i}\t0\t{1 + i % 4}.5\t0.5\n" for i in range(2000))
    gz = tmp_path / "norms.tsv.gz"
    gz.write_bytes(gzip.compress(body.encode())[:-40])  # truncated
    with pytest.raises(DataFormatError, match="compressed data") as info:
        load_concreteness_norms(gz)
    assert info.value.path == str(gz) and isinstance(info.value.__cause__, (EOFError, OSError))
    unnamed = tmp_path / "norms.txt"  # gzip content, no .gz in the name
    unnamed.write_bytes(gzip.compress(body.encode()))
    n = load_concreteness_norms(unnamed)
    assert len(n) == 2000 and n.words[-1] == "word1999" and n.concreteness[-1] == 4.5
    with pytest.raises(DataFormatError, match="file not found"):
        load_concreteness_norms(tmp_path / "missing.tsv")


BRYSBAERT_CSV = ("Word,Bigram,Conc.M,Conc.SD,Unknown,Total,Percent_known,SUBTLEX,Dom_Pos\r\n"
                 "apple,0,5,0,0,29,1,1863,Noun\r\n"
                 "justice,0,1.45,0.83,0,29,1,4033,Noun\r\n"
                 '"hot, dog",1,4.9,0.3,0,29,1,10,#N/A\r\n'
                 "bring,0,2.3,1.1,0,30,1,9000,Verb\r\n")


def test_comma_separated_file_sniffed_or_forced(tmp_path):
    n = load_concreteness_norms(write(tmp_path, BRYSBAERT_CSV, "norms.csv"))
    assert n.words == ["apple", "justice", "hot, dog", "bring"]  # csv quoting understood
    assert n.concreteness.tolist() == [5.0, 1.45, 4.9, 2.3] and n.bigram.tolist() == [False, False, True, False]
    assert list(n.extra) == ["Conc.SD", "Unknown", "Total", "Percent_known", "SUBTLEX", "Dom_Pos"]
    assert n.extra["Dom_Pos"] == ["Noun", "Noun", "#N/A", "Verb"] and n.extra["SUBTLEX"][0] == "1863"
    tab = load_concreteness_norms(write(tmp_path, BRYSBAERT_CSV.replace('"hot, dog"', "hot dog")
                                        .replace(",", "\t"), "norms.tsv"))
    assert tab.extra == {**n.extra} and tab.words[2] == "hot dog"
    semi = write(tmp_path, "Word;Conc.M\nidea;1.5\n", "semi.txt")
    assert load_concreteness_norms(semi, delimiter=";").words == ["idea"]
    with pytest.raises(DataFormatError, match=r"semi\.txt:1: header has no 'Word' column.*pass delimiter="):
        load_concreteness_norms(semi)
    with pytest.raises(DataFormatError, match=r"norms\.csv:1: header has no 'Word'.*tab-separated"):
        load_concreteness_norms(tmp_path / "norms.csv", delimiter="\t")
    with pytest.raises(DataFormatError, match=r'norms\.csv:4: bad quoting.*must end with one'):
        load_concreteness_norms(write(tmp_path, BRYSBAERT_CSV.replace('"hot, dog"', '"hot, dog'), "norms.csv"))
    for bad in ("", ",;", '"', "\n", 9):
        with pytest.raises(ValueError, match="delimiter must be one character"):
            load_concreteness_norms(semi, delimiter=bad)


def test_shipped_norms_keep_the_part_of_speech(norms):
    pos = norms.extra["Dom_Pos"]
    assert len(pos) == len(norms) and pos[norms.words.index("apple")] == "Noun"
    assert pos[norms.words.index("bring")] == "Verb"
    assert sorted(norms.extra) == ["Conc.SD", "Dom_Pos", "Percent_known", "SUBTLEX", "Total", "Unknown"]


def test_selection_by_part_of_speech(norms):
    n = toy_norms()
    pos = ["Noun", "Noun", "Noun", "Verb", "Noun", "Noun", "Noun", "Noun", "noun", "Noun", "Noun", "Noun",
           "Adjective", "Noun"]
    tagged = ConcretenessNorms(n.words, n.concreteness, n.bigram, extra={"Dom_Pos": pos})
    abstract, concrete = select_concreteness_words(tagged, n_per_class=3, pos="noun")
    assert abstract == ["essence", "truth", "notion"] and concrete == ["apple", "banana", "zebra"]
    abstract, concrete = select_concreteness_words(tagged, n_per_class=1, pos={"Verb", "Adjective"})
    assert (abstract, concrete) == (["hope"], ["whale"])
    with pytest.raises(ValueError, match=r"no part-of-speech column 'Dom_Pos'"):
        select_concreteness_words(n, n_per_class=1, pos="Noun")
    with pytest.raises(ValueError, match=r"no word has part of speech \['nouns'\].*'Adjective'"):
        select_concreteness_words(tagged, n_per_class=1, pos="Nouns")
    with pytest.raises(ValueError, match="only 1 eligible words"):
        select_concreteness_words(tagged, n_per_class=1, pos="Verb")
    nouns = select_concreteness_words(norms, n_per_class=200, pos="Noun")
    assert all(norms.extra["Dom_Pos"][norms.words.index(w)] == "Noun" for w in nouns[0] + nouns[1])


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
