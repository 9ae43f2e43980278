"""Study reports: Markdown + a self-contained HTML page with tables and matplotlib figures.

The report is decoupled from the result store: every function here takes plain Python data
(lists, dicts, numpy arrays or torch tensors), so a report can be rebuilt from any source.

Pieces
  * `reference_tables` / `reference_section` -- the published figures of the original studies,
    read from the data file ``reference_results.toml`` (shipped next to this module: per study
    the paper, the source of the values, the tables with their units, the findings), for
    printing beside ours.
  * plot helpers returning `matplotlib.figure.Figure` objects (drawn with the Agg canvas, never
    through pyplot, so no window opens and no global figure list grows); each accepts ``path=``
    to also save a PNG (atomically): `agreement_heatmap`, `distance_vs_agreement_scatter`,
    `silhouette_boxplot` (a study's own plots live in its module, e.g. the FLAVA grid's heatmap in
    ``studies/flava_ablation.py``).
  * `Report` -- a small builder: headings, paragraphs, tables, figures, reference blocks;
    `Report.write(directory)` renders one document model through two Jinja2 templates
    (``templates/report.md.j2``, ``templates/report.html.j2``) into ``report.md`` (figures as
    relative links under ``figures/``) and ``report.html`` (figures embedded as base64 PNG data
    URIs, inline CSS, no external resource), each written atomically
    (:func:`grounded_fast._atomic.write_atomic`: temporary file, fsync, ``os.replace``).

Partial runs: missing data never fail the report. ``add_table(header, None)``,
``add_figure(None, ...)`` and ``add_reference(study, None)`` print the placeholder
``"not computed yet (run incomplete)"``; inside ``with report.section(title):`` a `MissingData`
raised by the plot helpers on empty input (or by `require`) replaces whatever that section
had added with the placeholder.

Numbers in our tables are printed with 3 significant digits by default (`format_number`);
reference values are printed verbatim as published. `Report.add_scale` puts a run's scale beside
the paper's (`reference_scale`); `significance(p)` words a p-value ("not significant" at p >= 0.05)
and `tests_note(n)` says how many tests a table holds.
"""
from __future__ import annotations

import base64
import copy
import functools
import io
import math
import numbers
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import jinja2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .._atomic import write_atomic
from .._toml import tomllib

__all__ = [
    "NOT_COMPUTED", "REFERENCE_PATH", "MissingData", "require", "reference_studies",
    "Table", "ReferenceSection", "reference_section", "reference_tables", "reference_findings", "reference_stated",
    "reference_preamble", "reference_scale", "format_number", "format_interval", "significance", "tests_note",
    "correlation_summary", "figure_to_png",
    "agreement_heatmap", "distance_vs_agreement_scatter", "silhouette_boxplot",
    "Report",
]

NOT_COMPUTED = "not computed yet (run incomplete)"
REFERENCE_PATH = Path(__file__).with_name("reference_results.toml")

class MissingData(ValueError):
    """Raised when the data a report section needs are absent (a partial run); `Report.section`
    turns it into the "not computed yet" placeholder."""


def require(value: Any, what: str = "data") -> Any:
    """Return ``value``, or raise `MissingData` if it is None or empty (a sized container)."""
    if value is None:
        raise MissingData(f"{what} missing")
    try:
        empty = len(value) == 0
    except TypeError:
        empty = False
    if empty:
        raise MissingData(f"{what} empty")
    return value


# ----------------------------------------------------------------------------- tables
_NUMBER_RE = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_THOUSANDS_RE = re.compile(r"^[-+]?\d{1,3}(,\d{3})+(\.\d*)?$")


def _parse_cell(text: str) -> Any:
    """Published cell text -> float for numbers (".687" -> 0.687), None for empty, else the text."""
    t = text.strip()
    if not t:
        return None
    if _NUMBER_RE.match(t):
        return float(t)
    if _THOUSANDS_RE.match(t):  # "1,000"
        return float(t.replace(",", ""))
    return t


def _norm(s: Any) -> str:
    return re.sub(r"[^a-z0-9%]+", " ", str(s).lower()).strip()


@dataclass
class Table:
    """A table: ``header`` (column names), ``rows`` (cells: numbers, strings, None), ``caption``.

    ``text_rows`` (optional) holds the cells as text to print verbatim (reference tables keep the
    published formatting, e.g. ".687"); otherwise cells are formatted with `format_number` to
    ``digits`` significant digits (None: the report's default). ``units`` (optional) is printed
    under the table.
    """
    header: List[str]
    rows: List[List[Any]]
    caption: str = ""
    text_rows: Optional[List[List[str]]] = None
    digits: Optional[int] = None
    units: str = ""

    def __post_init__(self) -> None:
        self.header = [str(h) for h in self.header]
        self.rows = [list(r) for r in self.rows]
        for i, r in enumerate(self.rows):
            if len(r) != len(self.header):
                raise ValueError(f"Table {self.caption!r}: row {i} has {len(r)} cells, header has "
                                 f"{len(self.header)}")

    def column_index(self, column: Union[str, int]) -> int:
        if isinstance(column, int):
            return column
        if column in self.header:
            return self.header.index(column)
        hits = [i for i, h in enumerate(self.header) if _norm(h) == _norm(column)]
        if len(hits) != 1:
            raise KeyError(f"column {column!r} not in {self.header}")
        return hits[0]

    def column(self, column: Union[str, int]) -> List[Any]:
        j = self.column_index(column)
        return [r[j] for r in self.rows]

    def _matches(self, row: List[Any], key: Union[str, Mapping[str, Any]]) -> bool:
        conds = key.items() if isinstance(key, Mapping) else [(0, key)]
        for col, want in conds:
            have = row[self.column_index(col)]
            if isinstance(want, numbers.Number) and isinstance(have, numbers.Number):
                if not math.isclose(float(want), float(have)):
                    return False
            elif _norm(have) != _norm(want):
                return False
        return True

    def value(self, row: Union[str, Mapping[str, Any]], column: Union[str, int]) -> Any:
        """The cell at ``column`` of the row whose first cell is ``row`` (e.g. ``"mean agreement"``),
        or of the row matching every ``{column: value}`` of a mapping (e.g.
        ``{"words": "100M", "images": "none"}``). KeyError if no row or several rows match."""
        hits = [r for r in self.rows if self._matches(r, row)]
        if len(hits) != 1:
            raise KeyError(f"{'no' if not hits else len(hits)} rows match {row!r} in table {self.caption!r}")
        return hits[0][self.column_index(column)]

    def as_dicts(self) -> List[Dict[str, Any]]:
        return [dict(zip(self.header, r)) for r in self.rows]


@dataclass
class ReferenceSection:
    """One study's published values (a ``[studies.<key>]`` table of the reference data file):
    title (paper and venue), source line, tables, findings, ``scale``: the paper's scale (a
    table of aspect, paper, source: population sizes, items, model size, data, training length),
    and ``stated``: values a finding states in prose, as tables by key for the studies' code to
    read (every number of them is in a finding; they are not printed as tables of their own)."""
    study: str
    title: str
    source: str = ""
    tables: List[Table] = field(default_factory=list)
    findings: List[str] = field(default_factory=list)
    scale: Optional[Table] = None
    stated: Dict[str, Table] = field(default_factory=dict)


_STUDY_KEYS = {"title", "source", "findings", "tables", "scale", "stated"}
SCALE_HEADER = ["aspect", "paper", "source"]
_TABLE_KEYS = {"caption", "units", "header", "rows"}


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {type(value).__name__}")
    return value


def _texts(value: Any, where: str) -> List[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: expected a list of strings")
    return list(value)


def _no_unknown_keys(entry: Mapping[str, Any], allowed: set, where: str) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _reference_table(entry: Any, where: str) -> Table:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected a table of caption, units, header, rows")
    _no_unknown_keys(entry, _TABLE_KEYS, where)
    header = _texts(entry.get("header"), f"{where}.header")
    rows = entry.get("rows")
    if not isinstance(rows, list):
        raise ValueError(f"{where}.rows: expected a list of rows (lists of strings)")
    text_rows = []
    for i, row in enumerate(rows):
        row = _texts(row, f"{where}.rows[{i}]")
        if len(row) != len(header):
            raise ValueError(f"{where}.rows[{i}]: {len(row)} cells, the header has {len(header)}")
        text_rows.append(row)
    return Table(header=header, rows=[[_parse_cell(c) for c in r] for r in text_rows],
                 caption=_text(entry.get("caption", ""), f"{where}.caption"), text_rows=text_rows,
                 units=_text(entry.get("units", ""), f"{where}.units"))


def _stated_tables(entries: Any, where: str) -> Dict[str, Table]:
    if not isinstance(entries, Mapping):
        raise ValueError(f"{where}: expected [studies.<name>.stated.<key>] tables")
    return {key: _reference_table(t, f"{where}.{key}") for key, t in entries.items()}


def _scale_table(entry: Any, where: str) -> Table:
    t = _reference_table(entry, where)
    if t.header != SCALE_HEADER:
        raise ValueError(f"{where}.header: expected {SCALE_HEADER}, got {t.header}")
    return t


@functools.lru_cache(maxsize=4)
def _load_reference_file(path: str, mtime: float) -> Tuple[str, Dict[str, ReferenceSection]]:
    """-> (preamble, {study key: section}) of a reference data file, checked (ValueError naming the
    file and the key otherwise)."""
    with open(path, "rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML ({e})") from e
    studies = data.get("studies")
    if not isinstance(studies, Mapping):
        raise ValueError(f"{path}: no [studies.<name>] tables")
    sections = {}
    for key, entry in studies.items():
        where = f"{path}: studies.{key}"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: expected a table")
        _no_unknown_keys(entry, _STUDY_KEYS, where)
        tables = entry.get("tables", [])
        if not isinstance(tables, list):
            raise ValueError(f"{where}.tables: expected [[studies.{key}.tables]] entries")
        sections[key] = ReferenceSection(
            study=key, title=_text(entry.get("title"), f"{where}.title"),
            source=_text(entry.get("source", ""), f"{where}.source"),
            tables=[_reference_table(t, f"{where}.tables[{i}]") for i, t in enumerate(tables)],
            findings=_texts(entry.get("findings", []), f"{where}.findings"),
            scale=_scale_table(entry["scale"], f"{where}.scale") if "scale" in entry else None,
            stated=_stated_tables(entry.get("stated", {}), f"{where}.stated"))
    return _text(data.get("preamble", ""), f"{path}: preamble"), sections


def reference_studies(path: Optional[Union[str, os.PathLike]] = None) -> List[str]:
    """The studies the reference data file (``path``, default `REFERENCE_PATH`) has values of."""
    return sorted(_reference_data(path)[1])


def _reference_data(path: Optional[Union[str, os.PathLike]]) -> Tuple[str, Dict[str, ReferenceSection]]:
    p = Path(path) if path is not None else REFERENCE_PATH
    return _load_reference_file(str(p), p.stat().st_mtime)


def reference_section(study: str, path: Optional[Union[str, os.PathLike]] = None) -> ReferenceSection:
    """The published values of ``study`` (its registered name, e.g. 'grounding') from the reference
    data file (``path``, default the shipped
    `REFERENCE_PATH`): its tables (cells parsed to float where numeric, the published text kept in
    ``text_rows``), source line and findings. KeyError for an unknown study or one the file lacks;
    ValueError for a malformed file; OSError for a missing one."""
    key = study
    _, sections = _reference_data(path)
    if key not in sections:
        raise KeyError(f"no [studies.{key}] in {path or REFERENCE_PATH}: it has {sorted(sections)}")
    return copy.deepcopy(sections[key])


def reference_tables(study: str, path: Optional[Union[str, os.PathLike]] = None) -> List[Table]:
    """The reference tables of ``study`` (see `reference_section`); [] for a study without tables."""
    return reference_section(study, path).tables


def reference_findings(study: str, path: Optional[Union[str, os.PathLike]] = None) -> List[str]:
    """The prose paragraphs (findings, claims) of ``study``'s published values."""
    return reference_section(study, path).findings


def reference_stated(study: str, key: str, path: Optional[Union[str, os.PathLike]] = None) -> Table:
    """The values ``study``'s findings state in prose, as the table ``[studies.<study>.stated.<key>]``
    of the reference data file (cells parsed as in `reference_section`). KeyError when it lacks one."""
    stated = reference_section(study, path).stated
    if key not in stated:
        raise KeyError(f"no [studies.{study}.stated.{key}] in {path or REFERENCE_PATH}: it has {sorted(stated)}")
    return stated[key]


def reference_scale(study: str, path: Optional[Union[str, os.PathLike]] = None) -> Optional[Table]:
    """The paper's scale of ``study`` (rows of aspect, paper, source; cells verbatim in
    ``text_rows``), or None when the data file gives none."""
    return reference_section(study, path).scale


def reference_preamble(path: Optional[Union[str, os.PathLike]] = None) -> str:
    """The data file's introduction (how to read the reference values)."""
    return _reference_data(path)[0]


# ----------------------------------------------------------------------------- numbers
def _scalar(x: Any) -> Any:
    """A one-element tensor / array / numpy scalar -> the Python number; anything else unchanged."""
    if hasattr(x, "detach") and hasattr(x, "numel"):  # torch tensor
        return x.detach().cpu().item() if x.numel() == 1 else x
    if isinstance(x, np.ndarray):
        return x.item() if x.size == 1 else x
    if isinstance(x, np.generic):
        return x.item()
    return x


def format_number(x: Any, digits: int = 3) -> str:
    """Format a table cell: floats to ``digits`` significant digits in fixed notation (0.687,
    9.28, 71.3, 0.0219), scientific below 1e-3 (7e-06), the rounded integer at or above
    10**digits (12346); ints as they are; None as ''; a (mean, spread) pair as 'mean ± spread';
    strings unchanged."""
    x = _scalar(x)
    if x is None:
        return ""
    if isinstance(x, str):
        return x
    if isinstance(x, tuple) and len(x) == 2:
        return f"{format_number(x[0], digits)} ± {format_number(x[1], digits)}"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, numbers.Integral):
        return str(int(x))
    if isinstance(x, numbers.Real):
        v = float(x)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v == 0:
            return "0"
        if abs(v) >= 10 ** digits:  # no scientific notation for large values: the rounded integer
            return f"{v:.0f}" if abs(v) < 1e15 else f"{v:.{digits - 1}e}"
        v = float(f"{v:.{digits}g}")  # round to significant digits first (9.996 -> 10.0)
        a = abs(v)
        if a < 1e-3:
            return f"{v:.{digits}g}"
        decimals = max(digits - 1 - math.floor(math.log10(a)), 0)
        return f"{v:.{decimals}f}"
    return str(x)


def format_interval(lo: Any, hi: Any) -> str:
    """A confidence interval as '[lo, hi]' (each as `format_number` prints it); '—' when a bound
    is missing or NaN."""
    if lo is None or hi is None or lo != lo or hi != hi:
        return "—"
    return f"[{format_number(lo)}, {format_number(hi)}]"


SIGNIFICANCE_LEVEL = 0.05


def significance(p: Any, alpha: float = SIGNIFICANCE_LEVEL) -> str:
    """A p-value as the reports print it: 'p = 0.003 (significant)', 'p = 0.23 (not significant)'
    (p >= ``alpha``), 'n/a' for None / NaN."""
    p = _scalar(p)
    if p is None or (isinstance(p, numbers.Real) and math.isnan(float(p))):
        return "n/a"
    return f"p = {format_number(float(p), 2)} ({'significant' if p < alpha else 'not significant'})"


def tests_note(n_tests: int, alpha: float = SIGNIFICANCE_LEVEL) -> str:
    """The multiple-comparisons sentence under a table of ``n_tests`` tests."""
    if n_tests <= 1:
        return (f"{n_tests} test; 'significant' means p < {alpha:g}, 'not significant' p >= {alpha:g} (no "
                "evidence of a difference, not evidence of none).")
    return (f"{n_tests} tests, each called significant at p < {alpha:g} without correction: with no real "
            f"difference anywhere, {n_tests * alpha:.2g} of them would be significant by chance on average; a "
            f"Bonferroni correction for {n_tests} tests needs p < {alpha / n_tests:.2g}. 'Not significant' "
            f"(p >= {alpha:g}) means no evidence of a difference, not evidence of none.")


def _is_numeric_cell(x: Any) -> bool:
    x = _scalar(x)
    return (isinstance(x, numbers.Real) and not isinstance(x, bool)) or (
        isinstance(x, tuple) and len(x) == 2 and all(isinstance(_scalar(v), numbers.Real) for v in x))


# ----------------------------------------------------------------------------- figures
def _new_figure(figsize: Tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _as_array(x: Any, name: str, ndim: int) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: expected numbers, got {type(x).__name__}") from e
    if a.size == 0:
        raise MissingData(f"{name} is empty")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimension(s), got shape {a.shape}")
    return a


def figure_to_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (Agg canvas)."""
    if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def _maybe_save(fig: Figure, path: Optional[Union[str, os.PathLike]], dpi: int = 100) -> Figure:
    if path is not None:
        write_atomic(path, figure_to_png(fig, dpi))
    return fig


def _cmap(name: Any):
    import matplotlib
    cm = matplotlib.colormaps[name] if isinstance(name, str) else name
    return cm.with_extremes(bad="#d9d9d9")


def _annotate_cells(ax, im, values: np.ndarray, digits: int) -> None:
    cm, norm = im.get_cmap(), im.norm
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            if np.isfinite(v):
                r, g, b, _ = cm(norm(v))
                color = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                ax.text(j, i, format_number(v, digits), ha="center", va="center", fontsize=8, color=color)
            else:
                ax.text(j, i, "—", ha="center", va="center", fontsize=8, color="black")


def agreement_heatmap(matrix: Any, labels: Optional[Sequence[str]] = None, title: str = "Pairwise agreement",
                      groups: Optional[Sequence[Any]] = None, *, cmap: str = "viridis",
                      vmin: Optional[float] = None, vmax: Optional[float] = None,
                      annotate: Optional[bool] = None, colorbar_label: str = "agreement",
                      max_tick_labels: int = 40, path: Optional[Union[str, os.PathLike]] = None) -> Figure:
    """Heatmap of an M x M pairwise matrix (agreement, KL, ...).

    ``groups`` (one population label per model, e.g. 'C', 'P', 'T') draws population boundaries;
    models are first ordered stably by group (in order of first appearance) so each population
    is a contiguous block (the image is still M x M). Per-model tick labels are shown up to
    ``max_tick_labels`` models (y axis; the x axis then names the populations when grouped);
    cell values are written when M <= 12 (or ``annotate=True``). NaN cells are grey.
    Raises `MissingData` for an empty matrix. Returns the Figure (axes[0] the heatmap,
    axes[1] the colorbar); ``path`` also saves a PNG.
    """
    m = _as_array(matrix, "matrix", 2)
    M = m.shape[0]
    if m.shape != (M, M):
        raise ValueError(f"matrix must be square, got shape {m.shape}")
    labels = [str(s) for s in labels] if labels is not None else None
    if labels is not None and len(labels) != M:
        raise ValueError(f"labels: {len(labels)} for a {M} x {M} matrix")
    boundaries: List[int] = []
    group_spans: List[Tuple[str, int, int]] = []
    if groups is not None:
        groups = list(groups)
        if len(groups) != M:
            raise ValueError(f"groups: {len(groups)} for a {M} x {M} matrix")
        first = {}
        for g in groups:
            first.setdefault(g, len(first))
        order = sorted(range(M), key=lambda i: first[groups[i]])
        m = m[np.ix_(order, order)]
        groups = [groups[i] for i in order]
        labels = [labels[i] for i in order] if labels is not None else None
        start = 0
        for i in range(1, M + 1):
            if i == M or groups[i] != groups[start]:
                group_spans.append((str(groups[start]), start, i))
                if i < M:
                    boundaries.append(i)
                start = i
    size = min(4.0 + 0.12 * M, 12.0)
    fig = _new_figure((size + 1.2, size))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(m), cmap=_cmap(cmap), vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, label=colorbar_label, shrink=0.85)
    for b in boundaries:
        ax.axhline(b - 0.5, color="white", linewidth=1.5)
        ax.axvline(b - 0.5, color="white", linewidth=1.5)
    centers = [(s + e - 1) / 2 for _, s, e in group_spans]
    names = [g for g, _, _ in group_spans]
    if labels is not None and M <= max_tick_labels:
        ax.set_yticks(range(M), labels, fontsize=7)
        if group_spans:
            ax.set_xticks(centers, names)
        else:
            ax.set_xticks(range(M), labels, fontsize=7, rotation=90)
    elif group_spans:
        ax.set_xticks(centers, names)
        ax.set_yticks(centers, names)
    if annotate if annotate is not None else M <= 12:
        _annotate_cells(ax, im, m, 3)
    ax.set_title(title)
    return _maybe_save(fig, path)


def correlation_summary(x: Any, y: Any) -> Dict[str, float]:
    """Pearson r and Spearman rho of x and y over the pairs where both are finite, with scipy's
    p-values (which assume independent pairs: for the M(M-1)/2 pairs of a pairwise matrix use a
    Mantel test, `grounded_fast.analysis.mantel`). NaN where undefined (n < 3 or a constant)."""
    from scipy import stats
    x = _as_array(x, "x", 1)
    y = _as_array(y, "y", 1)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.shape[0]} vs {y.shape[0]}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out = dict(n=int(x.size), pearson=float("nan"), pearson_p=float("nan"),
               spearman=float("nan"), spearman_p=float("nan"))
    if x.size >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        r = stats.pearsonr(x, y)
        s = stats.spearmanr(x, y)
        out.update(pearson=float(r[0]), pearson_p=float(r[1]), spearman=float(s[0]), spearman_p=float(s[1]))
    return out


def distance_vs_agreement_scatter(x: Any, y: Any, groups: Optional[Sequence[Any]] = None, *,
                                  xlabel: str = "attention distance", ylabel: str = "agreement",
                                  title: str = "Attention distance vs agreement", annotate: bool = True,
                                  p_values: bool = True, fit_line: bool = True, note: Optional[str] = None,
                                  path: Optional[Union[str, os.PathLike]] = None) -> Figure:
    """Scatter of one point per model pair: x (e.g. attention-share distance) vs y (agreement or
    KL). ``groups`` (one label per point, e.g. the population pair 'C/P') gives one coloured
    series each, with a legend. ``annotate`` writes Pearson r and Spearman rho (see
    `correlation_summary`) and n, with their p-values when ``p_values`` (leave it off when the
    points are model pairs, which are not independent: test with the Mantel test and put it in
    ``note``); ``note`` adds lines (one per '; '-separated part). The legend and the annotation sit right of the axes, off the
    points. ``fit_line`` draws the least-squares line. Raises `MissingData` for empty input.
    Returns the Figure."""
    xa = _as_array(x, "x", 1)
    ya = _as_array(y, "y", 1)
    if xa.shape != ya.shape:
        raise ValueError(f"x and y differ in length: {xa.shape[0]} vs {ya.shape[0]}")
    fig = _new_figure((8.0, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    if groups is not None:
        groups = list(groups)
        if len(groups) != xa.size:
            raise ValueError(f"groups: {len(groups)} labels for {xa.size} points")
        keys: Dict[Any, List[int]] = {}
        for i, g in enumerate(groups):
            keys.setdefault(g, []).append(i)
        for g, idx in keys.items():
            ax.scatter(xa[idx], ya[idx], s=10, alpha=0.6, label=str(g))
        ax.legend(fontsize=8, title="pair", title_fontsize=8, loc="lower left", bbox_to_anchor=(1.02, 0.0),
                  borderaxespad=0.0, markerscale=1.5)
    else:
        ax.scatter(xa, ya, s=10, alpha=0.6)
    stats = correlation_summary(xa, ya)
    ok = np.isfinite(xa) & np.isfinite(ya)
    if fit_line and ok.sum() >= 2 and np.ptp(xa[ok]) > 0:
        slope, intercept = np.polyfit(xa[ok], ya[ok], 1)
        xs = np.array([xa[ok].min(), xa[ok].max()])
        ax.plot(xs, slope * xs + intercept, color="black", linewidth=1, linestyle="--")
    if annotate:
        def fmt(v: float, p: float) -> str:
            return "n/a" if math.isnan(v) else f"{v:.3f}" + (f" (p = {format_number(p, 2)})" if p_values else "")
        lines = [f"Pearson r = {fmt(stats['pearson'], stats['pearson_p'])}",
                 f"Spearman ρ = {fmt(stats['spearman'], stats['spearman_p'])}",
                 f"n = {stats['n']}"]
        if note:
            lines += note.split("; ")
        ax.text(1.02, 1.0, "\n".join(lines), transform=ax.transAxes, va="top", ha="left", fontsize=8,
                bbox=dict(boxstyle="round", facecolor="white", alpha=0.8, edgecolor="#999999"))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _maybe_save(fig, path)


def silhouette_boxplot(values: Mapping[Any, Sequence[float]], *, title: str = "Silhouette: abstract vs concrete",
                       ylabel: str = "silhouette", reference: Optional[Mapping[Any, float]] = None,
                       show_points: bool = True, path: Optional[Union[str, os.PathLike]] = None) -> Figure:
    """Box plot of silhouette scores per group (population / setting), one box per group with
    data, tick labels with n. ``show_points`` overlays the individual models (jittered, one
    series per group); ``reference`` ({group: value}) marks published means as red diamonds (one
    series). Groups with no values keep their slot, labelled 'n = 0'. Raises `MissingData` when
    there is no value at all. Returns the Figure."""
    if not values:
        raise MissingData("no silhouette values")
    names = [str(k) for k in values]
    data = []
    for k in values:
        v = values[k]
        arr = _as_array(v, f"values[{k!r}]", 1) if v is not None and len(v) else np.empty(0)
        data.append(arr[np.isfinite(arr)])
    if not any(d.size for d in data):
        raise MissingData("no silhouette values")
    fig = _new_figure((max(4.0, 1.1 * len(names) + 2.0), 4.5))
    ax = fig.add_subplot(1, 1, 1)
    pos = [i + 1 for i, d in enumerate(data) if d.size]
    ax.boxplot([d for d in data if d.size], positions=pos, widths=0.55, patch_artist=True,
               showfliers=not show_points, medianprops=dict(color="black"),
               boxprops=dict(facecolor="#9ecae1", edgecolor="#3182bd"))
    if show_points:
        rng = np.random.default_rng(0)
        for p, d in zip(pos, [d for d in data if d.size]):
            ax.scatter(p + rng.uniform(-0.12, 0.12, d.size), d, s=10, color="#08519c", alpha=0.6, zorder=3)
    if reference:
        ref = [(i + 1, float(reference[k])) for i, k in enumerate(values) if k in reference
               and reference[k] is not None]
        if ref:
            ax.scatter([p for p, _ in ref], [v for _, v in ref], marker="D", s=36, color="#d62728", zorder=4,
                       label="reference (original study)")
            ax.legend(fontsize=8, loc="best")
    ax.axhline(0.0, color="#999999", linewidth=0.8, linestyle=":")
    ax.set_xticks(range(1, len(names) + 1), [f"{n}\n(n = {d.size})" for n, d in zip(names, data)])
    ax.set_xlim(0.4, len(names) + 0.6)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _maybe_save(fig, path)


# ----------------------------------------------------------------------------- the report
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")


def _md_text(s: Any) -> str:
    """Markdown prose: neutralise raw HTML (a '<' would start a tag in most renderers)."""
    return _TAG_START.sub("&lt;", str(s))


def _md_cell(s: Any) -> str:
    """A Markdown table cell: prose escaping, '|' and '\\' escaped, on one line."""
    return _md_text(s).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_alt(s: Any) -> str:
    """Markdown image alt text: no brackets or line breaks, prose escaping."""
    return _md_text(re.sub(r"[\[\]\n]", " ", str(s)))


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@functools.lru_cache(maxsize=None)
def _template(name: str) -> jinja2.Template:
    """``templates/<name>`` (shipped with the package): HTML-escaped when it ends in .html.j2;
    the Markdown template escapes through the ``md`` / ``md_cell`` / ``md_alt`` filters."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("grounded_fast.experiments", "templates"),
                             autoescape=name.endswith(".html.j2"), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(md=_md_text, md_cell=_md_cell, md_alt=_md_alt, base64=_base64)
    return env.get_template(name)


def _safe_name(name: str) -> str:
    stem = name[:-4] if name.lower().endswith(".png") else name
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip(".-_")
    return stem or "figure"


@dataclass
class _Figure:
    name: str
    png: bytes
    caption: str


class Report:
    """Builder of a study report; see the module docstring. Blocks are kept in order and
    rendered by `to_markdown` / `to_html`; `write` puts both files (and the PNGs) on disk.

    ``digits``: significant digits of numbers in our tables; ``dpi``: PNG resolution;
    ``reference_path``: a reference data file other than the shipped `REFERENCE_PATH` (same TOML
    layout).
    """

    def __init__(self, title: str, *, digits: int = 3, dpi: int = 100,
                 reference_path: Optional[Union[str, os.PathLike]] = None) -> None:
        self.title = str(title)
        self.digits = int(digits)
        self.dpi = int(dpi)
        self.reference_path = reference_path
        self._blocks: List[Tuple[str, Any]] = []

    # ---- building
    def add_heading(self, text: str, level: int = 2) -> "Report":
        self._blocks.append(("heading", (min(max(int(level), 1), 6), str(text))))
        return self

    def add_paragraph(self, text: str) -> "Report":
        self._blocks.append(("paragraph", str(text)))
        return self

    def add_placeholder(self, detail: Optional[str] = None) -> "Report":
        """The partial-run placeholder: 'not computed yet (run incomplete)' (+ ``detail``)."""
        self._blocks.append(("placeholder", NOT_COMPUTED + (f": {detail}" if detail else "")))
        return self

    def _table(self, header: Any, rows: Any, caption: Optional[str], digits: Optional[int]) -> Optional[Table]:
        if isinstance(header, Table):
            t = copy.deepcopy(header)
            if caption is not None:
                t.caption = caption
        else:
            if rows is None or header is None or len(rows) == 0:
                return None
            t = Table(header=list(header), rows=[list(r) for r in rows], caption=caption or "")
        if digits is not None:
            t.digits = int(digits)
        return t

    def add_table(self, header: Union[Sequence[str], Table, None], rows: Optional[Sequence[Sequence[Any]]] = None,
                  caption: Optional[str] = None, *, digits: Optional[int] = None) -> "Report":
        """A table from ``header`` + ``rows`` (or a `Table` as ``header``). Numbers are formatted with
        ``digits`` significant digits (the report's default 3). ``rows`` None or empty (a partial
        run) prints the placeholder, with the caption."""
        t = self._table(header, rows, caption, digits)
        if t is None:
            self.add_placeholder(caption)
        else:
            self._blocks.append(("table", t))
        return self

    def add_figure(self, fig: Optional[Figure], name: str, caption: Optional[str] = None, *,
                   close: bool = True) -> "Report":
        """A figure, rendered to PNG now (later changes to ``fig`` do not show). ``name`` gives the
        file name ``figures/<name>.png`` (made safe and unique). ``fig`` None prints the
        placeholder. ``close`` clears the figure afterwards to free its memory."""
        if fig is None:
            return self.add_placeholder(caption or name)
        png = figure_to_png(fig, self.dpi)
        if close:
            fig.clear()
        self._blocks.append(("figure", _Figure(name=_safe_name(name), png=png, caption=caption or "")))
        return self

    def add_reference(self, study: str, ours: Union[Table, Tuple[Sequence[str], Sequence[Sequence[Any]]], None] = None,
                      *, caption: Optional[str] = None, heading: Optional[str] = None,
                      level: int = 3) -> "Report":
        """Our table beside the published values of ``study`` (see `reference_section`): ``ours`` (a
        `Table` or a (header, rows) pair; None prints the placeholder) and the reference tables
        verbatim, its source and findings. In the HTML page the two sit side by side."""
        key = study
        if isinstance(ours, tuple):
            ours_t = self._table(ours[0], ours[1], caption, None)
        elif ours is not None:
            ours_t = self._table(ours, None, caption, None)
        else:
            ours_t = None
        try:
            ref: Optional[ReferenceSection] = reference_section(key, self.reference_path)
            preamble = reference_preamble(self.reference_path)
        except (OSError, KeyError, ValueError) as e:  # missing or malformed data file: the report still renders
            ref, preamble = None, f"reference values unavailable ({e})"
        self._blocks.append(("reference", dict(study=key, ours=ours_t, ref=ref, preamble=preamble,
                                               heading=heading, level=level,
                                               ours_caption=caption)))
        return self

    def add_scale(self, study: str, ours: Mapping[str, Any], *,
                  caption: str = "Scale: ours against the paper") -> "Report":
        """A table of ``ours`` ({aspect: value}) beside the paper's scale of ``study`` (see
        `reference_scale`): the paper's aspects in its order (our value or '—'), then aspects only we
        give. Columns: aspect, ours, paper, source of the paper's value."""
        try:
            ref = reference_scale(study, self.reference_path)
        except (OSError, KeyError, ValueError) as e:
            ref, caption = None, f"{caption} (the paper's values unavailable: {e})"
        rows: List[List[Any]] = []
        seen = set()
        for aspect, paper, source in (ref.text_rows if ref is not None else []):
            rows.append([aspect, ours.get(aspect, "—"), paper, source])
            seen.add(aspect)
        rows += [[aspect, value, "—", ""] for aspect, value in ours.items() if aspect not in seen]
        self._blocks.append(("table", Table(["aspect", "ours", "paper", "source of the paper's value"],
                                            [[c if c is not None else "—" for c in r] for r in rows],
                                            caption=caption)))
        return self

    @contextmanager
    def section(self, title: str, level: int = 2,
                missing: Tuple[type, ...] = (MissingData,)) -> Iterator["Report"]:
        """``with report.section("Agreement"): ...`` -- a heading, then whatever the body adds; if
        the body raises one of ``missing`` (default `MissingData`, e.g. from a plot helper given
        no data, or `require`), everything it added is replaced by the placeholder."""
        self.add_heading(title, level)
        mark = len(self._blocks)
        try:
            yield self
        except missing as e:
            del self._blocks[mark:]
            self.add_placeholder(str(e) or None)

    # ---- rendering: one document model, two templates
    def _figure_names(self) -> List[Tuple[_Figure, str]]:
        used: set = set()
        out = []
        for kind, b in self._blocks:
            if kind == "figure":
                name, n = b.name, 1
                while name.lower() in used:  # case-insensitive: figures/ may be on such a file system
                    n += 1
                    name = f"{b.name}-{n}"
                used.add(name.lower())
                out.append((b, name))
        return out

    def _table_model(self, t: Table) -> Dict[str, Any]:
        """A table as the templates print it: caption, header, cells as text, which columns are
        numeric (right-aligned), units."""
        digits = self.digits if t.digits is None else t.digits
        if t.text_rows is not None:
            cells = [list(r) for r in t.text_rows]
        else:
            cells = [[format_number(c, digits) for c in r] for r in t.rows]
        numeric = []
        for j in range(len(t.header)):
            col = [r[j] for r in t.rows if r[j] is not None and r[j] != ""]
            numeric.append(bool(col) and all(_is_numeric_cell(c) for c in col))
        return dict(caption=t.caption, header=list(t.header), cells=cells, numeric=numeric, units=t.units)

    def _reference_model(self, b: Dict[str, Any]) -> Dict[str, Any]:
        ref: Optional[ReferenceSection] = b["ref"]
        title = b["heading"] or f"Ours vs the reference: {ref.title if ref is not None else b['study']}"
        return dict(title=title, level=b["level"], sublevel=min(b["level"] + 1, 6),
                    ours=None if b["ours"] is None else self._table_model(b["ours"]),
                    preamble=b["preamble"], source=ref.source if ref is not None else "",
                    tables=[self._table_model(t) for t in ref.tables] if ref is not None else [],
                    findings=list(ref.findings) if ref is not None else [])

    def _document(self, figure_dir: str) -> Dict[str, Any]:
        """The report as plain data for the templates: the title, ``not_computed`` (the
        placeholder text) and ``blocks``, each a dict with ``kind`` ('heading': level, text;
        'paragraph' / 'placeholder': text; 'table': table; 'figure': number, name, caption, alt,
        path (``<figure_dir>/<name>.png``), png (bytes); 'reference': title, level, sublevel,
        ours (a table or None), preamble, source, tables, findings), tables as `_table_model`."""
        names = {id(f): n for f, n in self._figure_names()}
        blocks: List[Dict[str, Any]] = []
        fig_no = 0
        for kind, b in self._blocks:
            if kind == "heading":
                blocks.append(dict(kind=kind, level=b[0], text=b[1]))
            elif kind in ("paragraph", "placeholder"):
                blocks.append(dict(kind=kind, text=b))
            elif kind == "table":
                blocks.append(dict(kind=kind, table=self._table_model(b)))
            elif kind == "figure":
                fig_no += 1
                name = names[id(b)]
                blocks.append(dict(kind=kind, number=fig_no, name=name, caption=b.caption,
                                   alt=b.caption or name, path=f"{figure_dir}/{name}.png", png=b.png))
            elif kind == "reference":
                blocks.append(dict(kind=kind, **self._reference_model(b)))
        return dict(title=self.title, not_computed=NOT_COMPUTED, blocks=blocks)

    def to_markdown(self, figure_dir: str = "figures") -> str:
        """The report as Markdown (``templates/report.md.j2``); figures link to
        ``<figure_dir>/<name>.png``."""
        text = _template("report.md.j2").render(self._document(figure_dir))
        return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"  # one blank line between blocks

    def to_html(self) -> str:
        """The report as one self-contained HTML page (``templates/report.html.j2``: inline CSS,
        figures as base64 PNG data URIs)."""
        return _template("report.html.j2").render(self._document("figures"))

    def write(self, directory: Union[str, os.PathLike]) -> Tuple[Path, Path]:
        """Write ``figures/*.png``, ``report.md`` and ``report.html`` under ``directory`` (created),
        each file atomically. Returns (markdown path, html path)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for f, name in self._figure_names():
            write_atomic(d / "figures" / f"{name}.png", f.png)
        md = write_atomic(d / "report.md", self.to_markdown("figures").encode("utf-8"))
        page = write_atomic(d / "report.html", self.to_html().encode("utf-8"))
        return md.path, page.path
