"""The GroundedBERT study as a :class:`Study`: one ``variant/<variant>`` unit per variant
(text-only, none, balanced, partial-<mass>). Pre-training and the downstream task are in
:mod:`grounded_fast.experiments.groundedbert_study`."""
from __future__ import annotations

import json
import os
import time
from typing import Dict, List

import numpy as np

from ..groundedbert_study import HEAD_FILE, TEXT_ONLY, GroundedBertStudyConfig, prepare, run_variant, variant_rows
from ..runner import file_records, unit_result
from .registry import Study, Unit

TITLE = "GroundedBERT: partial-OT grounding, small scale"


def plan(cfg: GroundedBertStudyConfig) -> List[Unit]:
    """One unit per variant."""
    return [Unit("variant", v, v, {"variant": v}) for v in cfg.variants]


def run_unit(variant: str, cfg: GroundedBertStudyConfig, out_dir: str, data, progress, device="cpu") -> dict:
    """One variant (see ``run_variant``) on ``device``; runs on the executor. ``head.pt`` is recorded
    with its sha256 in the unit's payload (verified on resume)."""
    start, vdir = time.time(), os.path.join(out_dir, "variants", variant)
    res, files = run_variant(variant, cfg, data, vdir, progress=progress, device=device)
    return unit_result(start, [(0, str(files["model.pt"].path))],
                       [{"split": "", "name": k, "value": float(v)} for k, v in res.items() if not isinstance(v, str)],
                       {**res, "files": file_records(out_dir, [files[HEAD_FILE]])})


def results(store, cfg) -> List[dict]:
    """One row per variant: its metrics."""
    return variant_rows(store.metrics())


def summary(rows: List[dict]) -> List[str]:
    return [f"  {r['variant']:12s} dev accuracy {r.get('dev_accuracy', float('nan')):.3f}"
            + (f"  OT share of step time {r['ot_share_of_step_time']:.2f}" if "ot_share_of_step_time" in r else "")
            for r in rows]


def report(store, out_dir: str):
    """The scale against the paper; the variants' dev accuracy with its 95% CI, matching / OT
    losses and OT time share, beside the paper; each variant vs text-only (exact McNemar)."""
    from ..report import Report, Table

    info = store.study_info()
    rows = variant_rows(store.metrics())
    cfg = info.get("config", {})
    correct = _dev_correct(store)
    rep = Report(TITLE)
    down, pre = cfg.get("downstream", {}), cfg.get("data", {})
    task = (f"GLUE {down.get('task', '')} at `{down.get('path')}`" if down.get("kind") == "glue"
            else "the built-in SST-2-format demo task (vertical vs horizontal relation)")
    pairs = (f"{pre.get('kind')} at `{pre.get('path')}`" if pre.get("kind", "demo") != "demo"
             else "the demo corpus")
    rep.add_paragraph(f"Run directory `{out_dir}`; config: `{json.dumps(cfg)}`. Pre-training pairs: {pairs}. "
                      f"Downstream task: {task}.")
    rep.add_scale("groundedbert", _scale(store, cfg, task, correct))
    ours = Table(["variant", "dev accuracy", "95% CI", "matching loss (first -> last)", "OT loss (last)",
                  "OT share of step time"],
                 [[r["variant"], r.get("dev_accuracy"), _wilson(correct.get(r["variant"])),
                   f"{r['pretrain_match_first']:.3f} -> {r['pretrain_match_last']:.3f}" if "pretrain_match_last" in r
                   else "-", r.get("pretrain_ot_last", "-"), r.get("ot_share_of_step_time", "-")] for r in rows],
                 units=f"dev accuracy: share of dev items; 95% CI: Wilson interval over the dev items (one training "
                       f"seed, {cfg.get('seed', '?')}: variation between seeds is not in it)")
    rep.add_reference("groundedbert", ours=ours if rows else None)
    _variants_vs_text_section(rep, [r["variant"] for r in rows], correct)
    return rep


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
    out["seeds"] = f"1 (seed {cfg.get('seed', '?')})"
    return out


def _variants_vs_text_section(rep, variants: List[str], correct: Dict[str, np.ndarray]) -> None:
    """Each grounded variant against text-only on the same dev items: exact McNemar."""
    from ..report import significance, tests_note
    from ..significance import mcnemar_exact
    rep.add_heading("Grounded variants vs text only (dev items, paired)")
    base = correct.get(TEXT_ONLY)
    rows = []
    for v in variants:
        bits = correct.get(v)
        if v == TEXT_ONLY or bits is None or base is None or bits.size != base.size:
            continue
        test = mcnemar_exact(bits, base)
        rows.append([v, bits.mean() - base.mean(), test.only_a, test.only_b, significance(test.pvalue)])
    if not rows:
        rep.add_placeholder("no grounded variant with a finished text-only variant to compare")
        return
    rep.add_table(["variant", "dev accuracy − text-only", "items right for the variant only",
                   "items right for text-only only", "exact McNemar"], rows,
                  caption="Each variant against text-only on the same dev items (exact McNemar test on the "
                          "discordant items)")
    rep.add_paragraph(tests_note(len(rows)))


STUDY = Study(name="groundedbert", config_cls=GroundedBertStudyConfig, plan=plan,
              prepare=lambda cfg, out_dir, progress, device: prepare(cfg, out_dir, device, progress),
              run_unit=run_unit, results=results, summary=summary, report=report)
