"""The FLAVA ablation ("Acquiring Linguistic Knowledge from Multimodal Input") as a :class:`Study`:
one ``cell/<cell id>`` unit per text volume x image volume x seed. Training and scoring are in
:mod:`grounded_fast.experiments.flava_ablation`."""
from __future__ import annotations

import json
import os
import time
from typing import List

from ..flava_ablation import FlavaStudyConfig, cell_id, checkpoint_dir, grid_rows, plan_cells, prepare, train_cell
from ..runner import unit_result
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
                       [{"split": "best", "name": k, "value": float(v)} for k, v in res.items()], res)


def results(store, cfg) -> List[dict]:
    """One row per cell: text, images, seed, blimp, pppl, step."""
    return grid_rows(store.metrics(split="best"))


def summary(rows: List[dict]) -> List[str]:
    return [f"  text {r['text']:>6} images {r['images']:>5} seed {r['seed']}: BLiMP {r.get('blimp', 0):.1f}% "
            f"PPPL {r.get('pppl', float('nan')):.1f}" for r in rows]


def report(store, out_dir: str):
    """The grid (ours beside the published cells) and its heatmaps."""
    from ..report import Report, flava_grid_heatmap, flava_grid_table

    info = store.study_info()
    rows = grid_rows(store.metrics(split="best"))
    rep = Report(TITLE)
    rep.add_paragraph(f"Run directory `{out_dir}`; config: `{json.dumps(info.get('config', {}))}`. Text: "
                      "shipped Multi30k English captions; images: demo scenes with their captions; BLiMP: the "
                      "shipped subset; PPPL on held-out Multi30k captions; best-PPPL checkpoint per cell.")
    grid = [{"text": r["text"], "images": r["images"], "blimp": r.get("blimp"), "pppl": r.get("pppl")} for r in rows]
    rep.add_reference("flava-ablation", ours=flava_grid_table(grid) if grid else None)
    if grid:
        rep.add_figure(flava_grid_heatmap(grid), "flava_grid", "BLiMP accuracy and pseudo-perplexity per cell")
    return rep


# prepare has nothing for the device: tokenisation and the k-means codebook run on the CPU
STUDY = Study(name="flava-ablation", config_cls=FlavaStudyConfig, plan=plan,
              prepare=lambda cfg, out_dir, progress, device: prepare(cfg), run_unit=run_unit, results=results,
              summary=summary, report=report)
