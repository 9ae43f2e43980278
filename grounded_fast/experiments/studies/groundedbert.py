"""The GroundedBERT study as a :class:`Study`: one ``variant/<variant>`` unit per variant
(text-only, none, balanced, partial-<mass>). Pre-training and the downstream task are in
:mod:`grounded_fast.experiments.groundedbert_study`."""
from __future__ import annotations

import json
import os
import time
from typing import List

from ..groundedbert_study import HEAD_FILE, GroundedBertStudyConfig, prepare, run_variant, variant_rows
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
                       [{"split": "", "name": k, "value": float(v)} for k, v in res.items()],
                       {**res, "files": file_records(out_dir, [files[HEAD_FILE]])})


def results(store, cfg) -> List[dict]:
    """One row per variant: its metrics."""
    return variant_rows(store.metrics())


def summary(rows: List[dict]) -> List[str]:
    return [f"  {r['variant']:12s} dev accuracy {r.get('dev_accuracy', float('nan')):.3f}"
            + (f"  OT share of step time {r['ot_share_of_step_time']:.2f}" if "ot_share_of_step_time" in r else "")
            for r in rows]


def report(store, out_dir: str):
    """The variants' dev accuracy, matching / OT losses and OT time share, beside the paper."""
    from ..report import Report, Table

    info = store.study_info()
    rows = variant_rows(store.metrics())
    cfg = info.get("config", {})
    rep = Report(TITLE)
    task = (f"`{cfg.get('glue_dir')}` ({cfg.get('glue_task', '')})" if cfg.get("glue_dir")
            else "the built-in SST-2-format demo task (vertical vs horizontal relation)")
    rep.add_paragraph(f"Run directory `{out_dir}`; config: `{json.dumps(cfg)}`. Downstream task: {task}.")
    ours = Table(["variant", "dev accuracy", "matching loss (first -> last)", "OT loss (last)",
                  "OT share of step time"],
                 [[r["variant"], r.get("dev_accuracy"),
                   f"{r['pretrain_match_first']:.3f} -> {r['pretrain_match_last']:.3f}" if "pretrain_match_last" in r
                   else "-", r.get("pretrain_ot_last", "-"), r.get("ot_share_of_step_time", "-")] for r in rows])
    rep.add_reference("groundedbert", ours=ours if rows else None)
    return rep


STUDY = Study(name="groundedbert", config_cls=GroundedBertStudyConfig, plan=plan,
              prepare=lambda cfg, out_dir, progress, device: prepare(cfg, out_dir, device),
              run_unit=run_unit, results=results, summary=summary, report=report)
