"""Concreteness norms and the abstract-vs-concrete silhouette analysis.

The norms are Brysbaert, Warriner & Kuperman (2014), "Concreteness ratings for 40 thousand
generally known English word lemmas", Behavior Research Methods 46:904–911 (a copy ships in
``grounded_fast/analysis/data``; see its README). Words are split into the most abstract and most
concrete lemmas (`select_concreteness_words`), embedded by a model, and the separation of the two
classes in embedding space is measured with a silhouette score (`concreteness_silhouette`).
"""
from __future__ import annotations

import numbers
import os
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "DEFAULT_NORMS_PATH", "ConcretenessNorms", "load_concreteness_norms",
    "select_concreteness_words", "concreteness_silhouette",
]

DEFAULT_NORMS_PATH = Path(__file__).resolve().parent / "data" / "brysbaert2014_concreteness.tsv.gz"


@dataclass(frozen=True, eq=False)  # eq on numpy fields would be ambiguous
class ConcretenessNorms:
    """Concreteness ratings: ``words`` (N,), mean rating ``concreteness`` (N,) float64 on the
    1 (abstract) to 5 (concrete) scale, ``bigram`` (N,) bool (multi-word expression), the
    ``source`` file, and ``extra``: every other column of the file, name -> N str values as
    written (e.g. ``extra["Dom_Pos"]``, the dominant part of speech of the Brysbaert norms;
    numeric columns such as ``Conc.SD`` are kept as text too)."""
    words: List[str]
    concreteness: np.ndarray
    bigram: np.ndarray
    source: str = ""
    extra: Dict[str, List[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.words)

    def as_dict(self) -> Dict[str, float]:
        """word -> mean concreteness."""
        return {w: float(c) for w, c in zip(self.words, self.concreteness)}


_DELIMITERS = {"\t": "tab", ",": "comma"}  # the ones sniffed from the header, in this order


def _sniff_delimiter(path: Path) -> str:
    """Tab or comma, whichever the first non-blank line holds (tab when it holds neither: the
    missing-column error then says so)."""
    from ..data.formats._io import iter_lines  # not at the top: grounded_fast.data imports this module

    with closing(iter_lines(path)) as lines:
        for _, text in lines:
            if text.strip():
                return next((d for d in _DELIMITERS if d in text), "\t")
    return "\t"


def load_concreteness_norms(path: Optional[Union[str, os.PathLike]] = None, *,
                            delimiter: Optional[str] = None) -> ConcretenessNorms:
    """Read Brysbaert et al. (2014) concreteness norms (or any table with the same columns).

    path: a tab- or comma-separated file, plain or gzip-compressed (detected by content, whatever
    the name); None reads the copy shipped with the package. delimiter: the field separator (one
    character); None takes tab or comma, whichever the header line contains. Comma-separated (or
    other non-tab) files may quote fields csv-style; tab-separated lines are split as they are.
    The header must contain ``Word`` and ``Conc.M``; ``Bigram`` (0/1) is used when present,
    otherwise a word containing a space counts as a bigram; every other column is kept in
    ``extra``. Blank lines are skipped; a UTF-8 BOM and CRLF line ends are accepted.

    Raises DataFormatError (a ValueError) naming the file, and the line where one applies, for a
    missing file or column, a malformed line, invalid UTF-8, damaged gzip data, or a file
    without rows.
    """
    from ..data.formats._io import DataFormatError, iter_tsv  # see _sniff_delimiter

    path = Path(DEFAULT_NORMS_PATH if path is None else path)
    name = str(path)
    if delimiter is None:
        delimiter = _sniff_delimiter(path)
    elif not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '\r\n"':
        raise ValueError(f"delimiter must be one character other than a quote or a line break, "
                         f"got {delimiter!r}")
    rows = iter_tsv(path, quoted=delimiter != "\t", delimiter=delimiter,
                    quoting_hint='a field that starts with " must end with one, and a " inside it is written ""')
    first = next(rows, None)
    if first is None:
        raise DataFormatError(name, None, "empty file (a header row with 'Word' and 'Conc.M' is required)")
    header_line, header = first
    columns = [c.strip() for c in header]
    sep = _DELIMITERS.get(delimiter, repr(delimiter))
    for required in ("Word", "Conc.M"):
        if required not in columns:
            hint = (f"; the header has no {sep} between column names: is the file separated by "
                    "something else? pass delimiter=" if len(columns) == 1 else "")
            raise DataFormatError(name, header_line, f"header has no {required!r} column "
                                  f"(columns: {columns}, {sep}-separated){hint}")
    if len(set(columns)) != len(columns):
        raise DataFormatError(name, header_line, "duplicate column name(s) "
                              f"{sorted({c for c in columns if columns.count(c) > 1})}")
    i_word, i_conc = columns.index("Word"), columns.index("Conc.M")
    i_bigram = columns.index("Bigram") if "Bigram" in columns else None
    extra = {c: [] for c in columns if c not in ("Word", "Conc.M", "Bigram")}
    i_extra = [(columns.index(c), values) for c, values in extra.items()]
    words: List[str] = []
    conc: List[float] = []
    bigram: List[bool] = []
    for lineno, fields in rows:
        if not "".join(fields).strip():
            continue
        if len(fields) != len(columns):
            raise DataFormatError(name, lineno, f"expected {len(columns)} {sep}-separated fields "
                                  f"(as in the header), got {len(fields)}")
        word = fields[i_word].strip()
        if not word:
            raise DataFormatError(name, lineno, "empty Word")
        try:
            value = float(fields[i_conc])
        except ValueError:
            raise DataFormatError(name, lineno, f"Conc.M {fields[i_conc]!r} is not a number") from None
        if not np.isfinite(value):
            raise DataFormatError(name, lineno, f"Conc.M is {fields[i_conc]!r}")
        if i_bigram is None:
            is_bigram = " " in word
        elif fields[i_bigram].strip() in ("0", "1"):
            is_bigram = fields[i_bigram].strip() == "1"
        else:
            raise DataFormatError(name, lineno, f"Bigram {fields[i_bigram]!r} is not 0 or 1")
        words.append(word)
        conc.append(value)
        bigram.append(is_bigram)
        for i, values in i_extra:
            values.append(fields[i].strip())
    if not words:
        raise DataFormatError(name, None, "no rows after the header row")
    return ConcretenessNorms(words, np.asarray(conc, dtype=np.float64), np.asarray(bigram, dtype=bool),
                             name, extra)


def _single_piece_check(tokenizer: Any) -> Callable[[str], bool]:
    """word -> True when the tokenizer keeps it as one known piece. Accepts a Hugging Face
    tokenizer (``.tokenize``, ``.unk_token``) or a callable word -> list of pieces."""
    tokenize = tokenizer.tokenize if hasattr(tokenizer, "tokenize") else tokenizer
    if not callable(tokenize):
        raise TypeError("tokenizer must have a .tokenize method or be a callable word -> pieces")
    unk = getattr(tokenizer, "unk_token", None)

    def ok(word: str) -> bool:
        pieces = list(tokenize(word))
        return len(pieces) == 1 and (unk is None or pieces[0] != unk)
    return ok


def _pos_mask(norms: ConcretenessNorms, pos: Union[str, Collection[str]], column: str) -> List[bool]:
    """Per word: its ``column`` value is one of ``pos`` (case-insensitive)."""
    if column not in norms.extra:
        raise ValueError(f"the norms have no part-of-speech column {column!r} (extra columns: "
                         f"{sorted(norms.extra)}); pass pos_column= or pos=None")
    values = norms.extra[column]
    if len(values) != len(norms.words):
        raise ValueError(f"column {column!r} has {len(values)} values for {len(norms.words)} words")
    wanted = {pos.casefold()} if isinstance(pos, str) else {p.casefold() for p in pos}
    mask = [v.casefold() in wanted for v in values]
    if not any(mask):
        raise ValueError(f"no word has part of speech {sorted(wanted)} in column {column!r} "
                         f"(values: {sorted(set(values))})")
    return mask


def select_concreteness_words(norms: ConcretenessNorms, tokenizer: Any = None, n_per_class: int = 1000,
                              min_letters: int = 4, single_piece: bool = True,
                              exclude_bigrams: bool = True, pos: Union[str, Collection[str], None] = None,
                              pos_column: str = "Dom_Pos") -> Tuple[List[str], List[str]]:
    """The ``n_per_class`` most abstract and most concrete eligible words.

    Eligible: at least ``min_letters`` letters, alphabetic, not multi-word (no Bigram flag and no
    space; with ``exclude_bigrams=False`` multi-word entries are kept and spaces allowed),
    when ``pos`` is given of that part of speech (one value or several, e.g. ``"Noun"`` or
    ``{"Noun", "Verb"}``, matched case-insensitively against ``norms.extra[pos_column]``, the
    Brysbaert norms' ``Dom_Pos`` by default) and, when ``tokenizer`` is given and
    ``single_piece``, tokenised into exactly one piece that is not the unknown token
    (``tokenizer.tokenize(word)`` of a Hugging Face tokenizer, checked against its
    ``unk_token``, or a callable word -> list of pieces).

    Returns (abstract_words, concrete_words): the lowest Conc.M first (ties by word, ascending)
    and the highest Conc.M first (ties by word, ascending); the two lists are disjoint.
    Raises ValueError when fewer than 2 * n_per_class words are eligible (saying how many), or
    when ``pos`` is given and the norms lack ``pos_column`` or no word has that part of speech.
    """
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, numbers.Integral) or n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive int, got {n_per_class!r}")
    if isinstance(min_letters, bool) or not isinstance(min_letters, numbers.Integral) or min_letters < 0:
        raise ValueError(f"min_letters must be a non-negative int, got {min_letters!r}")
    pos_ok = _pos_mask(norms, pos, pos_column) if pos is not None else [True] * len(norms.words)

    def cheap_ok(word: str, is_bigram: bool) -> bool:
        if exclude_bigrams and (is_bigram or " " in word):
            return False
        letters = word.replace(" ", "") if not exclude_bigrams else word
        return letters.isalpha() and len(letters) >= min_letters

    pool = [(float(c), w) for w, c, b, p in zip(norms.words, norms.concreteness, norms.bigram, pos_ok)
            if p and cheap_ok(w, bool(b))]
    piece_ok = _single_piece_check(tokenizer) if (tokenizer is not None and single_piece) else None
    cache: Dict[str, bool] = {}

    def eligible(word: str) -> bool:
        if piece_ok is None:
            return True
        if word not in cache:
            cache[word] = piece_ok(word)
        return cache[word]

    # Walk from each end, tokenising only as many words as needed.
    abstract = _take(sorted(pool), n_per_class, eligible, exclude=set())
    concrete = _take(sorted(pool, key=lambda cw: (-cw[0], cw[1])), n_per_class, eligible,
                     exclude=set(abstract))
    if len(abstract) < n_per_class or len(concrete) < n_per_class:
        n_eligible = sum(eligible(w) for _, w in pool)
        raise ValueError(f"only {n_eligible} eligible words, need 2 * n_per_class = {2 * n_per_class}")
    return abstract, concrete


def _take(ordered: Sequence[Tuple[float, str]], n: int, eligible: Callable[[str], bool],
          exclude: set) -> List[str]:
    out: List[str] = []
    for _, w in ordered:
        if len(out) == n:
            break
        if w not in exclude and eligible(w):
            out.append(w)
    return out


def _as_numpy(x: Any, float64: bool = False) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        x = (x.double() if float64 else x).numpy()
    return np.asarray(x, dtype=np.float64) if float64 else np.asarray(x)


def concreteness_silhouette(embeddings: Any, labels: Any, metric: str = "cosine", balance: bool = True,
                            seed: Any = 0) -> float:
    """Silhouette score of two classes (e.g. abstract vs concrete words) in embedding space.

    embeddings: (N, D) array or tensor (finite); labels: (N,) with exactly 2 distinct values,
    each at least twice. metric: any metric of ``sklearn.metrics.silhouette_score`` (default
    cosine). With ``balance`` the larger class is subsampled without replacement to the size of
    the smaller, using ``numpy.random.default_rng(seed)`` (deterministic for a given seed).
    Returns ``sklearn.metrics.silhouette_score`` in [-1, 1] (1: well separated).
    """
    from sklearn.metrics import silhouette_score

    X = _as_numpy(embeddings, float64=True)
    y = _as_numpy(labels)
    if X.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {X.shape}")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"labels must be 1-d of length N = {X.shape[0]}, got shape {y.shape}")
    if not np.isfinite(X).all():
        raise ValueError("embeddings contain NaN or inf")
    classes, counts = np.unique(y, return_counts=True)
    if classes.size != 2:
        raise ValueError(f"labels must have exactly 2 distinct values, got {classes.size}")
    if counts.min() < 2:
        raise ValueError(f"each class needs at least 2 samples, got counts {dict(zip(classes.tolist(), counts.tolist()))}")
    if balance and counts[0] != counts[1]:
        small, large = (0, 1) if counts[0] < counts[1] else (1, 0)
        rng = np.random.default_rng(seed)
        keep_large = rng.choice(np.flatnonzero(y == classes[large]), size=int(counts[small]), replace=False)
        keep = np.sort(np.concatenate([np.flatnonzero(y == classes[small]), keep_large]))
        X, y = X[keep], y[keep]
    return float(silhouette_score(X, y, metric=metric))
