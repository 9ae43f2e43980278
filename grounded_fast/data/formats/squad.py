"""SQuAD v1.1 / v2.0 (Rajpurkar et al. 2016, 2018): extractive question answering.

A split is one JSON file::

    {"version": "v2.0", "data": [{"title": ..., "paragraphs": [{"context": ...,
        "qas": [{"id": ..., "question": ..., "answers": [{"text": ..., "answer_start": 17}, ...],
                 "is_impossible": false}]}]}]}

and a task directory holds a train / dev pair: ``train-v1.1.json`` + ``dev-v1.1.json`` or
``train-v2.0.json`` + ``dev-v2.0.json`` (:data:`SQUAD_FILES`). An answer's ``answer_start`` is
the character offset of its ``text`` in the context. In v2.0 an unanswerable question has
``is_impossible`` true and no answers (its ``plausible_answers`` are not read).

Scores are those of the official evaluation script (``evaluate-v2.0.py``, which also scores
v1.1): an answer is normalised (lower case; punctuation and the articles a / an / the removed;
whitespace collapsed); exact match and token F1 take the best over the question's gold answers;
an unanswerable question scores 1 for the empty prediction and 0 for any other.
"""
from __future__ import annotations

import collections
import json
import os
import re
import string
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

from ._io import DataFormatError, PathLike

__all__ = ["SQUAD_FILES", "SquadExample", "squad_files", "load_squad", "normalize_answer", "squad_scores"]

#: version -> split -> file name in a task directory
SQUAD_FILES: Dict[str, Dict[str, str]] = {
    "v2.0": {"train": "train-v2.0.json", "dev": "dev-v2.0.json"},
    "v1.1": {"train": "train-v1.1.json", "dev": "dev-v1.1.json"},
}


_PUNCTUATION = frozenset(string.punctuation)


@dataclass(frozen=True)
class SquadExample:
    """One question: ``qid``, ``question``, ``context``; ``answers`` (gold answer texts; empty for
    an unanswerable v2.0 question) with their character offsets ``answer_starts`` in ``context``."""
    qid: str
    question: str
    context: str
    answers: Tuple[str, ...]
    answer_starts: Tuple[int, ...]

    @property
    def is_impossible(self) -> bool:
        return not self.answers


def squad_files(path: PathLike) -> Dict[str, str]:
    """{'train': file, 'dev': file} of the SQuAD task directory ``path`` (the v2.0 pair if it holds
    both files, else the v1.1 pair). ValueError naming the expected files when neither pair is complete."""
    root = os.fspath(path)
    if not os.path.isdir(root):
        raise ValueError(f"{root!r} is not a directory (a SQuAD task directory holds train-v2.0.json and "
                         "dev-v2.0.json, or train-v1.1.json and dev-v1.1.json)")
    for files in SQUAD_FILES.values():
        found = {split: os.path.join(root, name) for split, name in files.items()}
        if all(os.path.isfile(f) for f in found.values()):
            return found
    present = sorted(n for files in SQUAD_FILES.values() for n in files.values() if os.path.isfile(os.path.join(root, n)))
    raise ValueError(f"{root!r} holds no complete SQuAD pair (train-v2.0.json + dev-v2.0.json, or train-v1.1.json + "
                     f"dev-v1.1.json); found: {', '.join(present) or 'none of them'}")


def load_squad(path: PathLike) -> List[SquadExample]:
    """Every question of the SQuAD JSON file ``path``, in file order. DataFormatError (naming the
    file and the question id) for a file that is not SQuAD JSON, a missing key, a duplicate id,
    an answer whose text is not at its ``answer_start`` in the context, an answerable question
    with no answer, or a file with no question."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, exc.lineno, f"not JSON: {exc.msg}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataFormatError(path, None, 'not SQuAD JSON: no "data" list at the top level')
    out: List[SquadExample] = []
    seen = set()
    for article in doc["data"]:
        for para in article.get("paragraphs", []) if isinstance(article, dict) else []:
            context = para.get("context") if isinstance(para, dict) else None
            if not isinstance(context, str):
                raise DataFormatError(path, None, f"a paragraph of {article.get('title', '?')!r} has no context")
            for qa in para.get("qas", []):
                qid = qa.get("id")
                if not isinstance(qid, str) or not isinstance(qa.get("question"), str):
                    raise DataFormatError(path, None, f"a question of {article.get('title', '?')!r} lacks an id or "
                                                      f"its question text ({qid!r})")
                if qid in seen:
                    raise DataFormatError(path, None, f"question id {qid!r} appears twice")
                seen.add(qid)
                impossible = bool(qa.get("is_impossible", False))
                answers = [] if impossible else qa.get("answers", [])
                if not impossible and not answers:
                    raise DataFormatError(path, None, f"question {qid!r} has no answer and is not marked "
                                                      "is_impossible")
                texts, starts = [], []
                for a in answers:
                    text, start = a.get("text"), a.get("answer_start")
                    if not isinstance(text, str) or not isinstance(start, int) or \
                            context[start:start + len(text)] != text:
                        raise DataFormatError(path, None, f"question {qid!r}: answer {text!r} is not at character "
                                                          f"{start!r} of its context")
                    texts.append(text)
                    starts.append(start)
                out.append(SquadExample(qid, qa["question"], context, tuple(texts), tuple(starts)))
    if not out:
        raise DataFormatError(path, None, "no question")
    return out


def normalize_answer(text: str) -> str:
    """The official script's normalisation: lower case, punctuation and articles removed,
    whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:                 # the official rule: 1 if both are empty, else 0
        return float(pred == ref)
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Mapping[str, str], examples: Sequence[SquadExample]) -> Dict[str, np.ndarray]:
    """Per question (in ``examples``' order): {'exact': (N,), 'f1': (N,)} in [0, 1], the best over
    its gold answers (an unanswerable question's gold answer is the empty string); the means are
    the official script's "exact" and "f1" / 100. KeyError naming a question without a prediction."""
    exact, f1 = np.zeros(len(examples)), np.zeros(len(examples))
    for k, ex in enumerate(examples):
        if ex.qid not in predictions:
            raise KeyError(f"no prediction for question {ex.qid!r}")
        pred = predictions[ex.qid]
        golds = [a for a in ex.answers if normalize_answer(a)] or [""]
        exact[k] = max(float(normalize_answer(pred) == normalize_answer(g)) for g in golds)
        f1[k] = max(_f1(pred, g) for g in golds)
    return {"exact": exact, "f1": f1}
