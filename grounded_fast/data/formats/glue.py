"""GLUE-format TSV files (Wang et al. 2019, the files of the GLUE benchmark download).

Fields are split on tabs with no quoting (quotes are ordinary characters, as GLUE's own readers
do). Layouts:

* CoLA: no header, ``source  label  original_label  sentence`` (``original_label`` is ``*`` or
  empty); the test split has a header ``index  sentence`` and no labels.
* SST-2: header ``sentence  label``; test ``index  sentence``.
* MRPC: header ``Quality  #1 ID  #2 ID  #1 String  #2 String``; test
  ``index  #1 ID  #2 ID  #1 String  #2 String``.
* the other tasks in :data:`GLUE_TASKS` (QQP, STS-B, MNLI, QNLI, RTE, WNLI): header rows with
  the GLUE column names.

A file whose header lacks the label column is read as an unlabelled (test) split.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ._io import DataFormatError, PathLike, iter_tsv

__all__ = ["GlueTask", "GlueExample", "GLUE_TASKS", "load_glue_tsv", "load_cola", "load_sst2",
           "load_mrpc", "glue_score"]


@dataclass(frozen=True)
class GlueTask:
    """How to read one task: ``text_columns`` (1 or 2 names), ``label_column``, ``header``
    (False: the file has no header row and ``columns`` names its fields), ``num_labels``
    (1: regression, float labels), ``label_names`` (string labels in class-index order; empty:
    labels are written as integers 0..num_labels-1 or as floats), ``dev_file``: the dev split's
    file name in the GLUE download, ``metric``: the metric GLUE ranks the task by ('accuracy',
    'f1' of class 1, 'matthews' correlation, 'pearson' correlation)."""
    name: str
    text_columns: Tuple[str, ...]
    label_column: str
    header: bool = True
    num_labels: int = 2
    columns: Tuple[str, ...] = ()
    label_names: Tuple[str, ...] = ()
    dev_file: str = "dev.tsv"
    metric: str = "accuracy"


_NLI3 = ("entailment", "neutral", "contradiction")  # the class order of the HF `glue` datasets
_NLI2 = ("entailment", "not_entailment")

#: name -> layout; keys are lower case without punctuation ("sst2", "stsb").
GLUE_TASKS: Dict[str, GlueTask] = {t.name: t for t in (
    GlueTask("cola", ("sentence",), "label", header=False,
             columns=("source", "label", "original_label", "sentence"), metric="matthews"),
    GlueTask("sst2", ("sentence",), "label"),
    GlueTask("mrpc", ("#1 String", "#2 String"), "Quality", metric="f1"),
    GlueTask("qqp", ("question1", "question2"), "is_duplicate", metric="f1"),
    GlueTask("stsb", ("sentence1", "sentence2"), "score", num_labels=1, metric="pearson"),
    GlueTask("mnli", ("sentence1", "sentence2"), "gold_label", num_labels=3, label_names=_NLI3,
             dev_file="dev_matched.tsv"),
    GlueTask("qnli", ("question", "sentence"), "label", label_names=_NLI2),
    GlueTask("rte", ("sentence1", "sentence2"), "label", label_names=_NLI2),
    GlueTask("wnli", ("sentence1", "sentence2"), "label"),
)}


@dataclass(frozen=True)
class GlueExample:
    """``texts`` (1 or 2 str), ``label`` (int class index, float for regression, None in an
    unlabelled split) and the file ``line``."""
    texts: Tuple[str, ...]
    label: Optional[Union[int, float]]
    line: int


def glue_score(task: Union[str, GlueTask], predictions: Sequence, labels: Sequence) -> float:
    """The task's GLUE metric (:attr:`GlueTask.metric`) of (N,) predictions against (N,) gold
    labels: class indices (accuracy, F1 of class 1, Matthews correlation) or floats (Pearson r)."""
    from scipy import stats
    from sklearn import metrics
    metric = _task(task).metric
    if len(predictions) != len(labels) or len(labels) == 0:
        raise ValueError(f"glue_score: {len(predictions)} predictions for {len(labels)} labels (need as many, >= 1)")
    if metric == "pearson":
        return float(stats.pearsonr(predictions, labels).statistic)
    return float({"accuracy": metrics.accuracy_score, "f1": metrics.f1_score,
                  "matthews": metrics.matthews_corrcoef}[metric](labels, predictions))


def _task(task: Union[str, GlueTask]) -> GlueTask:
    if isinstance(task, GlueTask):
        return task
    key = task.lower().replace("-", "").replace("_", "")
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; known: {sorted(GLUE_TASKS)} "
                         "(or pass a GlueTask)")
    return GLUE_TASKS[key]


def _label(value: str, spec: GlueTask, name: str, lineno: int) -> Union[int, float]:
    v = value.strip()
    if spec.label_names:
        if v not in spec.label_names:
            raise DataFormatError(name, lineno, f"label {value!r} is not one of {list(spec.label_names)}")
        return spec.label_names.index(v)
    if spec.num_labels == 1:
        try:
            f = float(v)
        except ValueError:
            f = math.nan
        if not math.isfinite(f):
            raise DataFormatError(name, lineno, f"label {value!r} is not a finite number")
        return f
    if not (v.isdigit() and int(v) < spec.num_labels):
        raise DataFormatError(name, lineno, f"label {value!r} is not an integer in "
                              f"0..{spec.num_labels - 1}")
    return int(v)


def load_glue_tsv(path: PathLike, task: Union[str, GlueTask], *, labels: Optional[bool] = None,
                  allow_empty_text: bool = False) -> List[GlueExample]:
    """Read a GLUE-format TSV file (train, dev or test split).

    task: a key of :data:`GLUE_TASKS` (``"cola"``, ``"sst2"``, ``"SST-2"``, ``"mrpc"``, ...) or a
    :class:`GlueTask`. labels: None reads labels when the file has the label column (test
    splits do not); True requires them; False ignores them. allow_empty_text: accept empty text
    fields (otherwise an error). CRLF line ends, a UTF-8 BOM and gzip are handled; blank lines
    are skipped.

    Returns :class:`GlueExample` in file order: ``texts`` has ``len(task.text_columns)`` str,
    ``label`` an int in ``0..num_labels-1`` (float when ``num_labels == 1``) or None.
    Raises DataFormatError naming file and line for: a missing header or missing text/label
    columns, a row whose field count differs from the header's (or the task's column count),
    an empty text, an invalid label; naming the file for an empty split (no examples).
    """
    spec = _task(task)
    if not spec.header and len(spec.columns) == 0:
        raise ValueError(f"GlueTask {spec.name!r}: a task without a header row needs `columns`")
    name = os.fspath(path)
    rows = iter_tsv(path, quoted=False)
    first = next(rows, None)
    if first is None:
        raise DataFormatError(name, None, "empty file: no header and no examples")
    lineno, fields = first
    pending: List[Tuple[int, List[str]]] = []
    if spec.header or all(c in fields for c in spec.text_columns):  # headerless tasks: test header
        columns: Sequence[str] = [c.strip() for c in fields]
        missing = [c for c in spec.text_columns if c not in columns]
        if missing:
            raise DataFormatError(name, lineno, f"header lacks text column(s) {missing} for task "
                                  f"{spec.name!r} (columns: {list(columns)})")
    else:
        columns = spec.columns
        pending.append(first)
    has_label = spec.label_column in columns
    if labels and not has_label:
        raise DataFormatError(name, lineno, f"no label column {spec.label_column!r} (an unlabelled test file?)")
    use_label = has_label and labels is not False
    text_idx = [list(columns).index(c) for c in spec.text_columns]
    label_idx = list(columns).index(spec.label_column) if use_label else -1
    out: List[GlueExample] = []

    def record(lineno: int, fields: List[str]) -> None:
        if len(fields) != len(columns):
            raise DataFormatError(name, lineno, f"expected {len(columns)} tab-separated fields "
                                  f"({', '.join(columns)}), got {len(fields)}")
        texts = tuple(fields[i] for i in text_idx)
        if not allow_empty_text:
            for c, t in zip(spec.text_columns, texts):
                if not t.strip():
                    raise DataFormatError(name, lineno, f"empty text in column {c!r}")
        label = _label(fields[label_idx], spec, name, lineno) if use_label else None
        out.append(GlueExample(texts, label, lineno))

    for lineno, fields in pending:
        record(lineno, fields)
    for lineno, fields in rows:
        record(lineno, fields)
    if not out:
        raise DataFormatError(name, None, "no examples after the header row")
    return out


def load_cola(path: PathLike, **kw) -> List[GlueExample]:
    """CoLA: ``texts = (sentence,)``, label 1 acceptable / 0 unacceptable (see load_glue_tsv)."""
    return load_glue_tsv(path, "cola", **kw)


def load_sst2(path: PathLike, **kw) -> List[GlueExample]:
    """SST-2: ``texts = (sentence,)``, label 1 positive / 0 negative (see load_glue_tsv)."""
    return load_glue_tsv(path, "sst2", **kw)


def load_mrpc(path: PathLike, **kw) -> List[GlueExample]:
    """MRPC: ``texts = (#1 String, #2 String)``, label 1 paraphrase / 0 not (see load_glue_tsv)."""
    return load_glue_tsv(path, "mrpc", **kw)
