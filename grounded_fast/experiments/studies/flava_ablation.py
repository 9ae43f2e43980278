"""The FLAVA ablation ("Acquiring Linguistic Knowledge from Multimodal Input") as a :class:`Study`:
one ``cell/<cell id>`` unit per text volume x image volume x seed. Training and scoring are in
:mod:`grounded_fast.experiments.flava_ablation`."""
from __future__ import annotations

import json
import math
import numbers
import os
import re
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.figure import Figure

from ..flava_ablation import FlavaStudyConfig, cell_id, checkpoint_dir, grid_rows, plan_cells, prepare, train_cell
from ..runner import unit_result
from ..report import MissingData, _annotate_cells, _cmap, _maybe_save, _new_figure, _norm, _scalar
from .registry import Study, Unit

TITLE = "Acquiring linguistic knowledge from multimodal input: the ablation grid, small scale"


def plan(cfg: FlavaStudyConfig) -> List[Unit]:
    """One unit per grid cell, labelled with its text volume (words), image volume and seed."""
    return [Unit("cell", cell_id(*c), c, {"text": c[0], "images": c[1], "seed": c[2]}) for c in plan_cells(cfg)]


def run_unit(cell, cfg: FlavaStudyConfig, out_dir: str, data, progress, device="cpu") -> dict:
    """One grid cell (see ``train_cell``) on ``device``; runs on the executor."""
    start, cdir = time.time(), checkpoint_dir(out_dir, cell_id(*cell))
    res = train_cell(*cell, cfg, data, cdir, progress=progress, device=device)
    return unit_result(start, [(int(res["step"]), os.path.join(cdir, "model.pt"))],
                       [{"split": "best", "name": k, "value": float(v)} for k, v in res.items()
                        if not isinstance(v, str)], res)


def results(store, cfg) -> List[dict]:
    """One row per cell: text, images, seed, blimp, pppl, step."""
    return grid_rows(store.metrics(split="best"))


def summary(rows: List[dict]) -> List[str]:
    return [f"  text {r['text']:>6} images {r['images']:>5} seed {r['seed']}: BLiMP {r.get('blimp', 0):.1f}% "
            f"PPPL {r.get('pppl', float('nan')):.1f}" for r in rows]


def report(store, out_dir: str):
    """The scale against the paper, the grid with CIs (ours beside the published cells), its
    heatmaps, and each image cell against the text-only cell of its text volume (exact McNemar)."""
    from ..report import Report

    info = store.study_info()
    cfg = info.get("config", {})
    rows = grid_rows(store.metrics(split="best"))
    correct = _blimp_correct(store)
    rep = Report(TITLE)
    rep.add_paragraph(f"Run directory `{out_dir}`; config: `{json.dumps(cfg)}`. Text: "
                      "shipped Multi30k English captions; images: demo scenes with their captions; BLiMP: the "
                      "shipped subset; PPPL on held-out Multi30k captions; best-PPPL checkpoint per cell.")
    rep.add_scale("flava-ablation", _scale(store, cfg, rows, correct))
    grid = [{"text": r["text"], "images": r["images"], "blimp": r.get("blimp"), "pppl": r.get("pppl")} for r in rows]
    rep.add_reference("flava-ablation", ours=_cells_table(rows, correct, _glue_name(cfg)) if rows else None)
    if grid:
        rep.add_figure(flava_grid_heatmap(grid), "flava_grid", "BLiMP accuracy and pseudo-perplexity per cell")
    _images_vs_text_section(rep, rows, correct)
    _blimp_categories_section(rep, rows, correct, _blimp_groups(store))
    return rep


def _blimp_correct(store) -> Dict[str, np.ndarray]:
    """cell id -> its per-pair BLiMP correctness (cells whose payload records it)."""
    from ..significance import unpack_correct
    return {u["payload"]["run_id"]: unpack_correct(u["payload"]["blimp_correct"], f"{u['unit_id']} blimp_correct")
            for u in store.units(kind="cell", status="done") if "blimp_correct" in u.get("payload", {})}


def _glue_name(cfg: dict) -> str:
    """'<task> <metric>' of the run's GLUE evaluation, e.g. 'sst2 accuracy' ('demo task accuracy' built in)."""
    from ...data.formats.glue import _task
    g = cfg.get("glue", {})
    if g.get("kind", "demo") != "glue":
        return "demo task accuracy"
    try:
        task = _task(str(g.get("task", "")))
    except ValueError:
        return "score"
    return f"{task.name} {task.metric}"


def _blimp_groups(store) -> Dict[str, List[Tuple[str, str, int]]]:
    """cell id -> the paradigms of its BLiMP pairs, in order (cells whose payload records them)."""
    from ..flava_ablation import unpack_blimp_groups
    return {u["payload"]["run_id"]: unpack_blimp_groups(u["payload"]["blimp_groups"])
            for u in store.units(kind="cell", status="done") if "blimp_groups" in u.get("payload", {})}


def _accuracy_with_ci(per_seed: List[np.ndarray]) -> Tuple[float, Optional[float], Optional[float]]:
    """(accuracy %, CI low, CI high) of a cell's pairs (one 0/1 array per seed): Student t over
    the seeds' accuracies for several seeds, a bootstrap over the pairs for one."""
    from ..significance import bootstrap_mean_ci, t_interval
    if len(per_seed) >= 2:
        return tuple(100 * v for v in t_interval([b.mean() for b in per_seed]))
    lo, hi = bootstrap_mean_ci(per_seed[0])
    return 100 * float(per_seed[0].mean()), 100 * lo, 100 * hi


def _blimp_categories_section(rep, rows: List[dict], correct: Dict[str, np.ndarray],
                              groups: Dict[str, List[Tuple[str, str, int]]]) -> None:
    """BLiMP per category of the BLiMP paper (the text-only cells beside the authors' text-only
    cells, with CIs, and the mean of the categories, which is how the authors average), then per
    paradigm for every cell (mean over seeds)."""
    from ...data.formats.blimp import BLIMP_CATEGORIES, blimp_category
    from ..flava_ablation import cell_id
    from ..report import Table, format_interval, reference_tables
    rep.add_heading("BLiMP per category and per paradigm")
    cells: Dict[Tuple[int, int], List[np.ndarray]] = {}
    labels = None
    for r in rows:
        cid = cell_id(r["text"], r["images"], r["seed"])
        if cid in correct and cid in groups and sum(n for *_, n in groups[cid]) == correct[cid].size:
            labels = labels or groups[cid]
            if groups[cid] == labels:     # every cell scored on the same pairs
                cells.setdefault((r["text"], r["images"]), []).append(correct[cid])
    if not cells:
        rep.add_placeholder("no cell with its BLiMP pairs' paradigms recorded")
        return
    uid = np.array([u for u, _, n in labels for _ in range(n)])
    category = np.array([blimp_category(t) for _, t, n in labels for _ in range(n)])
    order = list(dict.fromkeys(BLIMP_CATEGORIES.values()))
    present = [c for c in order if (category == c).any()]
    text_only = sorted(k for k in cells if k[1] == 0)
    paper = next((t for t in reference_tables("flava-ablation") if t.header and t.header[0] == "category"), None)
    paper_rows = {r[0]: r[1:] for r in paper.text_rows} if paper is not None else {}
    out, means = [], {k: [] for k in text_only}
    for c in present:
        keep = category == c
        row = [c, int(keep.sum())]
        for k in text_only:
            mean, lo, hi = _accuracy_with_ci([b[keep] for b in cells[k]])
            means[k].append(mean)
            row += [mean, format_interval(lo, hi)]
        out.append(row + list(paper_rows.get(c, ["", ""])))
    out.append([f"mean of the {len(present)} categories", int(category.size)]
               + [v for k in text_only for v in (float(np.mean(means[k])), "")]
               + ([""] * len(paper.header[1:]) if paper is not None else ["", ""]))
    header = ["category", "pairs"] + [h for k in text_only for h in (f"ours, {_volume(k[0])} words (%)", "95% CI")]
    header += [f"paper, {h}" for h in (paper.header[1:] if paper is not None else ["10M words", "100M words"])]
    n_seeds = {len(v) for k, v in cells.items() if k in text_only}
    rep.add_table(Table(header, out,
                  caption="BLiMP per category (the BLiMP paper's 12), our text-only cells beside the authors' "
                          "text-only cells (full-size FLAVA, best checkpoint)",
                  units="% of the category's minimal pairs right; 95% CI: " + (
                      "Student t over the seeds" if n_seeds and min(n_seeds) >= 2 else
                      "percentile bootstrap over the category's pairs") + "; the authors' overall BLiMP is the mean "
                      "of their category means (last row for ours); our grid table averages over pairs instead"))
    paradigms = list(dict.fromkeys(uid))
    keys = sorted(cells)
    out = []
    for u in paradigms:
        keep = uid == u
        out.append([u, category[keep][0], int(keep.sum())]
                   + [100 * float(np.mean([b[keep].mean() for b in cells[k]])) for k in keys])
    n = int(min(np.sum(uid == u) for u in paradigms))
    rep.add_table(Table(["paradigm", "category", "pairs"] + [f"{_volume(t)} words, {_volume(i)} images" for t, i in keys],
                  out, caption="BLiMP per paradigm, every cell (mean over its seeds)",
                  units=f"% of the paradigm's pairs right; with {n} pairs a paradigm's accuracy near 50% has a 95% "
                        f"interval of about ±{100 * 1.96 * math.sqrt(0.25 / n):.0f} points, so most "
                        "per-paradigm differences are within noise"))


def _volume(n: int) -> str:
    """A volume as the tables label it: 10_000_000 -> '10M', 0 -> 'none'."""
    return _volume_key(n)[1]


def _scale(store, cfg: dict, rows: List[dict], correct: Dict[str, np.ndarray]) -> Dict[str, str]:
    """Our side of the scale table (aspects as ``[studies.flava-ablation.scale]``)."""
    from .scale import count, data_source, saved_model
    out = {}
    if "text_volumes" in cfg:
        out["text volumes"] = " / ".join(_volume(t) for t in cfg["text_volumes"]) + " words"
        out["image volumes"] = " / ".join(_volume(i) for i in cfg["image_volumes"]) + " image–caption pairs"
        out["seeds per cell"] = str(len(cfg["seeds"]))
    out["data"] = ("text: " + data_source(cfg, "whole sentences of the shipped Multi30k English training captions",
                                          key="text")
                   + "; image–caption pairs: " + data_source(cfg, f"built-in demo corpus (seed {cfg.get('corpus_seed', '?')})")
                   + "; BLiMP: " + data_source(cfg, "the shipped subset (67 phenomena x 20 pairs)", key="blimp"))
    model = saved_model(store)
    if model is not None:
        mc, params = model
        out["model"] = (f"FLAVA-style (preset {cfg.get('model_preset', '?')}): {mc['text_layers']} text, "
                        f"{mc['image_layers']} image, {mc['mm_layers']} multimodal layers, d_model {mc['d_model']}, "
                        f"{mc['num_heads']} heads, FFN {mc['ffn_dim']}; {count(params)} parameters; float32")
        lr, text_lr = cfg.get("lr", 1e-3), cfg.get("text_lr", 0.0)
        rates = f"learning rate {lr:g}" + (f", text encoder {text_lr:g}" if text_lr else " (one for all)")
        warmup = cfg.get("warmup_steps", 0)
        out["training"] = (f"{cfg.get('steps', '?')} steps × batch {cfg.get('batch_size', '?')}; MLM masking "
                           f"{mc['text_mask_prob']:g}; AdamW, {rates}, weight decay {cfg.get('weight_decay', 0.01):g}"
                           + (f", {warmup} warm-up steps" if warmup else "")
                           + (", then cosine decay" if cfg.get("lr_schedule") == "cosine" else ""))
    else:
        out["model"] = f"preset {cfg.get('model_preset', '?')} (no checkpoint yet to count its parameters)"
    steps = sorted({int(r["step"]) for r in rows if "step" in r})
    if steps:
        last = all(int(r["step"]) == cfg.get("steps") for r in rows if "step" in r)
        out["checkpoint"] = (f"best pseudo-perplexity on {cfg.get('pppl_sentences', '?')} held-out captions, checked "
                             f"every {cfg.get('eval_every', '?')} steps; won at step(s) {', '.join(map(str, steps))}"
                             + (" — every cell's best is its last step: trained too short to select" if last else ""))
    n = {len(v) for v in correct.values()}
    of = "the shipped subset" if cfg.get("blimp", {}).get("kind", "demo") == "demo" else "the release"
    out["BLiMP"] = (f"{count(n.pop())} pairs ({cfg.get('blimp_pairs_per_phenomenon', '?')} per phenomenon of {of})"
                    if len(n) == 1 else "not computed yet (run incomplete)")
    out["other evaluations"] = (f"GLUE: {_glue_name(cfg)} after {cfg['glue_steps']} fine-tuning steps of the "
                                "checkpoint's text encoder" if cfg.get("glue_steps") else "none")
    return out


def _cells_table(rows: List[dict], correct: Dict[str, np.ndarray], glue_name: str = "score"):
    """One row per grid cell: BLiMP with two 95% CIs, Student t over the seeds (two or more) and a
    bootstrap over the BLiMP pairs (of the per-pair correctness averaged over the seeds); PPPL with
    its t CI over the seeds; GLUE (± the seeds' standard deviation); the winning steps."""
    from ..report import Table, format_interval
    from ..significance import bootstrap_mean_ci, t_interval
    from ..flava_ablation import cell_id
    cells: Dict[tuple, List[dict]] = {}
    for r in rows:
        cells.setdefault((r["text"], r["images"]), []).append(r)
    out = []

    def over_seeds(values):
        return format_interval(*t_interval(values)[1:]) if len(values) >= 2 else "— (one seed)"

    for (text, images), rs in sorted(cells.items()):
        blimp = [r["blimp"] for r in rs if "blimp" in r]
        pppl = [r["pppl"] for r in rs if "pppl" in r]
        bits = [correct[k] for k in (cell_id(text, images, r["seed"]) for r in rs) if k in correct]
        if bits and len({b.size for b in bits}) == 1:
            lo, hi = (100 * v for v in bootstrap_mean_ci(np.mean(np.stack(bits), 0)))
            pairs = f"{format_interval(lo, hi)}, {bits[0].size} BLiMP pairs (bootstrap)"
        else:
            pairs = "—"
        glue = [r["glue"] for r in rs if "glue" in r]
        glue_cell = ((float(np.mean(glue)), float(np.std(glue, ddof=1))) if len(glue) >= 2
                     else (glue[0] if glue else "—"))
        out.append([_volume(text), _volume(images), len(rs), float(np.mean(blimp)) if blimp else None,
                    over_seeds(blimp), pairs, float(np.mean(pppl)) if pppl else None, over_seeds(pppl), glue_cell,
                    ", ".join(str(int(r["step"])) for r in rs if "step" in r)])
    return Table(["words", "images", "seeds", "BLiMP (%)", "95% CI over seeds (t)", "95% CI over pairs",
                  "PPPL", "PPPL 95% CI over seeds (t)", f"GLUE {glue_name}", "best step"], out,
                 caption="Our grid: BLiMP accuracy with its 95% CIs (training-run noise: over the seeds; the BLiMP "
                         "sample: a bootstrap over the pairs), pseudo-perplexity with its CI over the seeds, the GLUE "
                         "evaluation (mean ± standard deviation over seeds when there are several), the step whose "
                         "checkpoint won in each seed",
                 units="BLiMP: % of minimal pairs whose grammatical sentence gets the higher pseudo-log-likelihood; "
                       "PPPL: pseudo-perplexity of held-out captions (lower is better); GLUE: the task's metric on its "
                       "dev split after fine-tuning the checkpoint's text encoder")


def _images_vs_text_section(rep, rows: List[dict], correct: Dict[str, np.ndarray]) -> None:
    """The grid's differences with their tests: each image cell against the text-only cell of its
    text volume, and each text volume against the smallest at the same image volume. Per seed, on
    the same BLiMP pairs (exact McNemar); over the seeds, when a cell has two or more (paired t on
    the per-seed differences: training-run noise included)."""
    from scipy import stats

    from ..flava_ablation import cell_id
    from ..report import format_interval, significance, tests_note
    from ..significance import mcnemar_exact, t_interval
    texts = sorted({r["text"] for r in rows})
    pairs = [((t, i), (t, 0), "images vs text only") for t in texts for i in sorted({r["images"] for r in rows}) if i]
    pairs += [((t, i), (texts[0], i), "more text") for t in texts[1:] for i in sorted({r["images"] for r in rows})]
    seeds = sorted({r["seed"] for r in rows})
    per_seed, over_seeds = [], []
    for (a, b, what) in pairs:
        diffs = []
        for seed in seeds:
            x, y = correct.get(cell_id(*a, seed)), correct.get(cell_id(*b, seed))
            if x is None or y is None or x.size != y.size:
                continue
            test = mcnemar_exact(x, y)
            diffs.append(100 * (x.mean() - y.mean()))
            per_seed.append([what, f"{_volume(a[0])} / {_volume(a[1])}", f"{_volume(b[0])} / {_volume(b[1])}", seed,
                             diffs[-1], test.only_a, test.only_b, significance(test.pvalue)])
        if len(diffs) >= 2:
            mean, lo, hi = t_interval(diffs)
            p = stats.ttest_1samp(diffs, 0.0).pvalue if np.ptp(diffs) > 0 else float("nan")   # no spread: no t
            over_seeds.append([what, f"{_volume(a[0])} / {_volume(a[1])}", f"{_volume(b[0])} / {_volume(b[1])}",
                               len(diffs), mean, format_interval(lo, hi), significance(p)])
    rep.add_heading("Differences between cells (BLiMP, paired)")
    if not per_seed:
        rep.add_placeholder("no image cell with a finished text-only cell of the same text volume and seed")
        return
    rep.add_table(["comparison", "cell (words / images)", "against", "seed", "BLiMP difference (points)",
                   "pairs right in the cell only", "pairs right in the other only", "exact McNemar"], per_seed,
                  caption="Each image cell against the text-only cell of its text volume, and each text volume "
                          "against the smallest at the same image volume, per seed on the same BLiMP pairs (exact "
                          "McNemar test on the discordant pairs: the pairs' sampling noise, one training run each)")
    rep.add_paragraph(tests_note(len(per_seed)))
    if over_seeds:
        rep.add_table(["comparison", "cell (words / images)", "against", "seeds", "mean difference (points)",
                       "95% CI", "paired t over seeds"], over_seeds,
                      caption="The same comparisons over the seeds: the mean per-seed difference, its Student-t CI "
                              "and the paired t-test (training-run noise included; few seeds give little power)")
        rep.add_paragraph(tests_note(len(over_seeds)))


# ---- the grid heatmap (rows: dicts as grid_rows gives, or the published grid's labels)
_TEXT_KEYS = ("text volume", "text_volume", "text", "words", "word volume", "n words", "text tokens")
_IMAGE_KEYS = ("image volume", "image_volume", "images", "image", "n images")
_METRIC_KEYS = {"blimp": ("blimp", "blimp %", "blimp accuracy", "blimp acc"),
                "pppl": ("pppl", "pseudo perplexity", "pseudo_perplexity", "perplexity")}
_METRIC_TITLES = {"blimp": "BLiMP accuracy (%)", "pppl": "pseudo-perplexity (lower is better)"}
_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}


def _get(row: Mapping[str, Any], keys: Sequence[str], what: str) -> Any:
    normed = {_norm(k): v for k, v in row.items()}
    for k in keys:
        if _norm(k) in normed:
            return normed[_norm(k)]
    raise KeyError(f"FLAVA grid row has no {what} (one of {list(keys)}): keys {list(row)}")


def _humanize(n: float) -> str:
    if n == 0:
        return "none"
    for suffix, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.3g}"


def _volume_key(v: Any) -> Tuple[float, str]:
    """A data volume -> (sort key, label): None/'none'/0 -> (0, 'none'); 10_000_000 -> '10M';
    '40K' -> (40000, '40K'); other text keeps its label and sorts last."""
    v = _scalar(v)
    if v is None:
        return 0.0, "none"
    if isinstance(v, numbers.Real):
        return float(v), _humanize(float(v))
    s = str(v).strip()
    if s.lower() in ("", "none", "0", "no", "-", "—"):
        return 0.0, "none"
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([kKmMbBgG]?)", s.replace(",", ""))
    if m:
        return float(m.group(1)) * _SUFFIX.get(m.group(2).lower(), 1.0), s.upper()
    return math.inf, s


def _flava_cells(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]):
    if not rows:
        raise MissingData("no FLAVA grid rows")
    cells: Dict[Tuple[str, str], Dict[str, List[float]]] = {}
    tkeys: Dict[str, float] = {}
    ikeys: Dict[str, float] = {}
    for row in rows:
        tk, tl = _volume_key(_get(row, _TEXT_KEYS, "text volume"))
        ik, il = _volume_key(_get(row, _IMAGE_KEYS, "image volume"))
        tkeys[tl], ikeys[il] = tk, ik
        cell = cells.setdefault((tl, il), {m: [] for m in metrics})
        for m in metrics:
            try:
                v = _scalar(_get(row, _METRIC_KEYS.get(m, (m,)), m))
            except KeyError:
                v = None
            if v is not None and not isinstance(v, str) and np.isfinite(float(v)):
                cell[m].append(float(v))
    texts = sorted(tkeys, key=lambda k: (tkeys[k], k))
    images = sorted(ikeys, key=lambda k: (ikeys[k], k))
    return texts, images, cells


def flava_grid_heatmap(rows: Sequence[Mapping[str, Any]], *, metrics: Sequence[str] = ("blimp", "pppl"),
                       title: str = "FLAVA ablation grid", path: Optional[Union[str, os.PathLike]] = None) -> Figure:
    """Heatmaps of the FLAVA text-volume x image-volume grid, one panel per metric (BLiMP, PPPL).

    ``rows``: dicts with a text volume ('text_volume' / 'words' / 'text'), an image volume
    ('image_volume' / 'images'; None, 0 or 'none' = text only) and the metrics ('blimp',
    'pppl'); volumes may be numbers (10_000_000) or labels ('10M'). Several rows for one cell
    (seeds) are averaged; missing cells are grey with '—'. PPPL uses a reversed colour map so
    that 'better' has the same colour in both panels. Each panel's image is
    (#text volumes x #image volumes). Raises `MissingData` for no rows. Returns the Figure
    (per metric: the heatmap axes, then its colorbar)."""
    texts, images, cells = _flava_cells(rows, metrics)
    fig = _new_figure((4.2 * len(metrics) + 0.6, 1.2 + 0.6 * len(texts) + 1.2))
    for k, metric in enumerate(metrics):
        grid = np.full((len(texts), len(images)), np.nan)
        for i, t in enumerate(texts):
            for j, im_ in enumerate(images):
                vals = cells.get((t, im_), {}).get(metric, [])
                if vals:
                    grid[i, j] = float(np.mean(vals))
        ax = fig.add_subplot(1, len(metrics), k + 1)
        cm = "viridis_r" if metric == "pppl" else "viridis"
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=_cmap(cm), aspect="auto", interpolation="nearest")
        fig.colorbar(im, ax=ax, shrink=0.85)
        _annotate_cells(ax, im, grid, 3)
        ax.set_xticks(range(len(images)), images)
        ax.set_yticks(range(len(texts)), texts)
        ax.set_xlabel("images")
        ax.set_ylabel("words")
        ax.set_title(_METRIC_TITLES.get(metric, metric))
    fig.suptitle(title)
    return _maybe_save(fig, path)


# prepare has nothing for the device: tokenisation and the k-means codebook run on the CPU
STUDY = Study(name="flava-ablation", config_cls=FlavaStudyConfig, plan=plan,
              prepare=lambda cfg, out_dir, progress, device: prepare(cfg, out_dir), run_unit=run_unit, results=results,
              summary=summary, report=report)
