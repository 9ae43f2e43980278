"""The GroundedBERT study as a :class:`Study`: one ``variant/<variant>-seed<seed>`` unit per
variant (text-only, none, balanced, partial-<mass>) and seed. Pre-training and the downstream task
are in :mod:`grounded_fast.experiments.groundedbert_study`."""
from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Optional

import numpy as np

from ..groundedbert_study import (HEAD_FILE, TEXT_ONLY, GroundedBertStudyConfig, prepare, run_id, run_variant,
                                  variant_rows)
from ..runner import file_records, unit_result
from .registry import Study, Unit

TITLE = "GroundedBERT: partial-OT grounding, small scale"


def plan(cfg: GroundedBertStudyConfig) -> List[Unit]:
    """One unit per variant and seed."""
    return [Unit("variant", run_id(v, s), (v, s), {"variant": v, "seed": s}) for v in cfg.variants for s in cfg.seeds]


def run_unit(spec, cfg: GroundedBertStudyConfig, out_dir: str, data, progress, device="cpu") -> dict:
    """One variant with one seed (``spec``: (variant, seed); see ``run_variant``) on ``device``;
    runs on the executor. ``head.pt`` is recorded with its sha256 in the unit's payload (verified
    on resume)."""
    variant, seed = spec
    start, vdir = time.time(), os.path.join(out_dir, "variants", run_id(variant, seed))
    res, files = run_variant(variant, seed, cfg, data, vdir, progress=progress, device=device)
    return unit_result(start, [(0, str(files["model.pt"].path))],
                       [{"split": "", "name": k, "value": float(v)} for k, v in res.items() if not isinstance(v, str)],
                       {**res, "files": file_records(out_dir, [files[HEAD_FILE]])})


def results(store, cfg) -> List[dict]:
    """One row per run (variant, seed): its metrics."""
    return variant_rows(store.metrics())


def _metric(cfg: dict) -> str:
    """The name of the downstream task's metric: its GLUE metric ('accuracy', 'f1', 'matthews',
    'pearson'), or 'F1' for SQuAD."""
    from ..groundedbert_study import _glue_task
    if cfg.get("downstream", {}).get("kind") == "squad":
        return "F1"
    task = _glue_task(cfg.get("downstream", {}).get("task", "sst2"))
    return task.metric if task is not None else "score"


def _scores(rs: List[dict]) -> List[float]:
    return [r.get("dev_score", r.get("dev_accuracy")) for r in rs if "dev_score" in r or "dev_accuracy" in r]


def summary(rows: List[dict]) -> List[str]:
    """Per variant: the dev score (mean over its seeds) and the OT share of step time."""
    lines = []
    for variant, rs in _by_variant(rows).items():
        acc = _scores(rs)
        share = [r["ot_share_of_step_time"] for r in rs if "ot_share_of_step_time" in r]
        lines.append(f"  {variant:12s} dev score {np.mean(acc) if acc else float('nan'):.3f} "
                     f"({len(acc)} seed{'s' * (len(acc) != 1)})"
                     + (f"  OT share of step time {np.mean(share):.2f}" if share else ""))
    return lines


def _by_variant(rows: List[dict]) -> Dict[str, List[dict]]:
    out: Dict[str, List[dict]] = {}
    for r in rows:
        out.setdefault(r["variant"], []).append(r)
    return out


def _task_description(cfg: dict) -> str:
    down = cfg.get("downstream", {})
    if down.get("kind") == "glue":
        return f"GLUE {down.get('task', '')} at `{down.get('path')}`"
    if down.get("kind") == "squad":
        return (f"SQuAD at `{down.get('path')}` (windows of {down.get('max_length', 384)} tokens, stride "
                f"{down.get('doc_stride', 128)}; a span head on the frozen token states)")
    from ..groundedbert_study import demo_task_shapes
    train, dev = demo_task_shapes()
    return ("the built-in SST-2-format demo task: is a shape's outline curved or straight in the image; trained on "
            f"sentences about {', '.join(train)}, scored on sentences about {', '.join(dev)}")


def report(store, out_dir: str):
    """The scale against the paper; per variant the dev accuracy over its seeds with its 95% CI,
    matching / OT losses and OT time share, beside the paper; each variant vs text-only (exact
    McNemar per seed; paired t over seeds)."""
    from ..report import Report, Table, format_interval
    from ..significance import t_interval

    info = store.study_info()
    rows = variant_rows(store.metrics())
    cfg = info.get("config", {})
    correct = _dev_correct(store)
    rep = Report(TITLE)
    pre = cfg.get("data", {})
    task = _task_description(cfg)
    pairs = (f"{pre.get('kind')} at `{pre.get('path')}`" if pre.get("kind", "demo") != "demo"
             else "the demo corpus")
    rep.add_paragraph(f"Run directory `{out_dir}`; config: `{json.dumps(cfg)}`. Pre-training pairs: {pairs}. "
                      f"Downstream task: {task}.")
    rep.add_scale("groundedbert", _scale(store, cfg, task, correct))
    metric = _metric(cfg)
    table = []
    for variant, rs in _by_variant(rows).items():
        acc = _scores(rs)
        if len(acc) >= 2:
            mean, lo, hi = t_interval(acc)
            ci, how = format_interval(lo, hi), f"{len(acc)} seeds (t)"
        elif metric == "accuracy":
            mean, ci, how = (acc[0] if acc else None), _wilson(correct.get(rs[0]["run"])), "dev items (Wilson)"
        else:
            mean, ci, how = (acc[0] if acc else None), "—", "— (one seed)"

        def mean_of(key):
            v = [r[key] for r in rs if key in r]
            return float(np.mean(v)) if v else "-"
        first, last = mean_of("pretrain_match_first"), mean_of("pretrain_match_last")
        table.append([variant, len(acc), mean, ci, how, f"{first:.3f} -> {last:.3f}" if last != "-" else "-",
                      mean_of("pretrain_ot_last"), mean_of("ot_share_of_step_time")])
    majority = _majority(rows)
    ours = Table(["variant", "seeds", f"dev {metric}", "95% CI", "CI over", "matching loss (first -> last)",
                  "OT loss (last)", "OT share of step time"], table,
                 units=f"dev {metric}: the task's metric on its dev split ("
                       + ("share of dev items right" if metric == "accuracy" else
                          "SQuAD's token F1 / 100, best over the gold answers, mean over the questions; exact match: "
                          "the per-seed table" if metric == "F1" else "see the GLUE benchmark")
                       + "), mean over the seeds; 95% CI: Student t over the seeds "
                       "(several seeds) or, for accuracy, Wilson over the dev items (one seed: variation between "
                       "seeds not in it); "
                       "losses and time share: means over the seeds"
                       + (f"; always answering the dev set's majority label scores {majority:.3f}"
                          if majority is not None else ""))
    rep.add_reference("groundedbert", ours=ours if rows else None)
    _variants_vs_text_section(rep, rows, correct, metric)
    return rep


def _item_metric(metric: str) -> str:
    """What a dev item's right / wrong is: exact match for SQuAD, else the classification."""
    return "exact match" if metric == "F1" else "accuracy"


def _majority(rows: List[dict]) -> Optional[float]:
    """The dev accuracy of always answering the dev set's most frequent label (``dev_majority``, the
    same in every run), or None for runs that did not record it."""
    return next((float(r["dev_majority"]) for r in rows if "dev_majority" in r), None)


def _dev_correct(store) -> Dict[str, np.ndarray]:
    """variant -> its per-dev-item correctness (variants whose payload records it)."""
    from ..significance import unpack_correct
    return {u["payload"]["run_id"]: unpack_correct(u["payload"]["dev_correct"], f"{u['unit_id']} dev_correct")
            for u in store.units(kind="variant", status="done") if "dev_correct" in u.get("payload", {})}


def _wilson(bits) -> str:
    from ..report import format_interval
    from ..significance import wilson_interval
    if bits is None or bits.size == 0:
        return "—"
    return format_interval(*wilson_interval(int(bits.sum()), int(bits.size)))


def _scale(store, cfg: dict, task: str, correct: Dict[str, np.ndarray]) -> Dict[str, str]:
    """Our side of the scale table (aspects as ``[studies.groundedbert.scale]``)."""
    from .scale import count, data_source, encoder, saved_model
    out = {"text encoder": encoder(cfg, "text_encoder", "shipped MiniLM (384-d states)") + ", frozen",
           "vision encoder": encoder(cfg, "vision_encoder", "shipped EfficientNet-Lite0 (1280-d patch features)")
           + ", frozen",
           "pre-training data": data_source(cfg, f"built-in demo corpus, {cfg.get('num_scenes', '?')} rendered scenes "
                                                 "with their captions")}
    n_dev = {len(v) for v in correct.values()}
    out["downstream"] = task + (f"; {count(n_dev.pop())} dev items" if len(n_dev) == 1 else "")
    model = saved_model(store)
    if model is not None:
        mc, params = model
        out["model"] = (f"grounding and image MLPs (preset {cfg.get('model_preset', '?')}: grounding dim "
                        f"{mc['ground_dim']}, hidden {mc['hidden_dim']}) on the frozen encoders' features; {count(params)} "
                        "parameters (the classifier head not counted)")
    out["training"] = (f"{cfg.get('pretrain_steps', '?')} pre-training + {cfg.get('finetune_steps', '?')} fine-tuning "
                       f"steps × batch {cfg.get('batch_size', '?')}")
    seeds = cfg.get("seeds", [])
    out["seeds"] = f"{len(seeds)} per variant ({', '.join(map(str, seeds))})"
    return out


def _variants_vs_text_section(rep, rows: List[dict], correct: Dict[str, np.ndarray], metric: str) -> None:
    """Each grounded variant against text-only: per seed, accuracy (SQuAD: exact match) on the same
    dev items (exact McNemar; classification tasks and SQuAD), and over the seeds, the task's metric (paired t on the
    per-seed differences, for two seeds or more)."""
    from ..groundedbert_study import run_id
    from ..report import format_interval, significance, tests_note
    from ..significance import mcnemar_exact, t_interval
    from scipy import stats
    rep.add_heading("Grounded variants vs text only (dev items, paired)")
    per_seed, over_seeds = [], []
    for variant, rs in _by_variant(rows).items():
        if variant == TEXT_ONLY:
            continue
        diffs = []
        base_score = {r["seed"]: _scores([r]) for r in rows if r["variant"] == TEXT_ONLY}
        for r in sorted(rs, key=lambda r: r["seed"]):
            if _scores([r]) and base_score.get(r["seed"]):
                diffs.append(_scores([r])[0] - base_score[r["seed"]][0])
            bits, base = correct.get(r["run"]), correct.get(run_id(TEXT_ONLY, r["seed"]))
            if bits is None or base is None or bits.size != base.size:
                continue
            test = mcnemar_exact(bits, base)
            per_seed.append([variant, r["seed"], bits.mean() - base.mean(), test.only_a, test.only_b,
                             significance(test.pvalue)])
        if len(diffs) >= 2:
            mean, lo, hi = t_interval(diffs)
            p = stats.ttest_1samp(diffs, 0.0).pvalue if np.ptp(diffs) > 0 else float("nan")   # no spread: no t
            over_seeds.append([variant, len(diffs), mean, format_interval(lo, hi), significance(p)])
    if not per_seed and not over_seeds:
        rep.add_placeholder("no grounded variant with a finished text-only run of the same seed to compare")
        return
    if per_seed:
        rep.add_table(["variant", "seed", f"dev {_item_metric(metric)} − text-only", "items right for the variant only",
                       "items right for text-only only", "exact McNemar"], per_seed,
                      caption="Each variant against text-only of the same seed on the same dev items (exact McNemar "
                              "test on the discordant items): the dev items' sampling noise, one training run each")
        rep.add_paragraph(tests_note(len(per_seed)))
    if over_seeds:
        rep.add_table(["variant", "seeds", f"mean difference in dev {metric}", "95% CI", "paired t over seeds"],
                      over_seeds,
                      caption=f"Each variant against text-only over the seeds: the mean of the per-seed differences "
                              f"in dev {metric}, its Student-t CI and the paired t-test (training-run noise "
                              "included; few seeds give little power)")
        rep.add_paragraph(tests_note(len(over_seeds)))


STUDY = Study(name="groundedbert", config_cls=GroundedBertStudyConfig, plan=plan,
              prepare=lambda cfg, out_dir, progress, device: prepare(cfg, out_dir, device, progress),
              run_unit=run_unit, results=results, summary=summary, report=report)
