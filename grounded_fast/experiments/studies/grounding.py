"""The grounding study ("Grounded and Well-rounded") as a :class:`Study`: ``features`` (before the
units), one ``train/<run_id>`` unit per setup x noise x seed, ``analysis`` (after). The training
and analysis themselves are in :mod:`grounded_fast.experiments.grounding`."""
from __future__ import annotations

import json
import os
import time
from typing import Dict, List

import numpy as np

from ..grounding import GroundingStudyConfig, analyse, plan_runs, train_run
from ..runner import unit_result
from .registry import Step, Study, Unit

TITLE = "Grounded and Well-rounded: a reproduction on the demo corpus"


def plan(cfg: GroundingStudyConfig) -> List[Unit]:
    """One training unit per grid point (see ``plan_runs``), labelled with its setup, noise and seed."""
    return [Unit("train", s.run_id, s, {"setup": s.setup, "noise": s.noise, "seed": s.seed}) for s in plan_runs(cfg)]


def prepare(cfg: GroundingStudyConfig, out_dir: str, progress: bool, device="cpu"):
    """(data, vocab): the C / P / T sources of the demo corpus (extracted on ``device``, cached on
    the CPU under ``out_dir/features``)."""
    from ...data import DemoCorpus
    from ...data.sources import demo_grounding_data
    return demo_grounding_data(DemoCorpus(cfg.num_scenes, cfg.corpus_seed), os.path.join(out_dir, "features"),
                               max_target_len=cfg.max_target_len, progress=progress, device=device)


def run_unit(spec, cfg: GroundingStudyConfig, out_dir: str, shared, progress, device="cpu") -> dict:
    """One training run (see ``train_run``) on ``device``; runs on the executor."""
    data, vocab = shared
    start, run_dir = time.time(), os.path.join(out_dir, "runs", spec.run_id)
    results = train_run(spec, cfg, data, vocab, run_dir, progress=lambda epoch: progress(epoch, cfg.epochs),
                        device=device)
    return unit_result(start, [(e, os.path.join(run_dir, f"epoch{e}", "model.pt")) for e in results],
                       [{"epoch": e, "split": "val", "name": k, "value": v} for e, r in results.items()
                        for k, v in r.items()])


def _features(store, cfg, out_dir: str, shared, device="cpu") -> dict:
    data, vocab = shared
    return {"payload": {"train": len(data["train"]), "val": len(data["val"]), "test": len(data["test"]),
                        "vocab": len(vocab)}}


def _analysis(store, cfg: GroundingStudyConfig, out_dir: str, shared, device="cpu") -> dict:
    """Accuracy-matched populations over every checkpoint's validation accuracy, then ``analyse``
    (models and kernels on ``device``)."""
    data, vocab = shared
    candidates: Dict[str, Dict[str, float]] = {s: {} for s in cfg.setups}
    dirs = {}
    for spec in plan_runs(cfg):
        for row in store.metrics(name="val_token_accuracy", run_id=spec.run_id):
            mid = f"{spec.run_id}@{row['epoch']}"
            candidates[spec.setup][mid] = row["value"]
            dirs[mid] = os.path.join(out_dir, "runs", spec.run_id, f"epoch{row['epoch']}")
    res = analyse(candidates, dirs, data, vocab, cfg, device=device)
    models = res["models"]
    pairwise = [{"analysis": name, "model_a": models[i], "model_b": models[j], "value": float(res[name][i, j])}
                for name in ("agreement", "kl") if name in res
                for i in range(len(models)) for j in range(len(models)) if i != j]
    metrics = [{"name": f"{name}[{pair}]", "value": v, "split": "test"}
               for pair, row in res.get("pair_table", {}).items() for name, v in row.items()]
    return {"payload": res, "pairwise": pairwise, "metrics": metrics}


def results(store, cfg) -> dict:
    """The analysis record (populations, matrices, the population-pair table, tests)."""
    return store.unit("analysis")["payload"]


def summary(res: dict) -> List[str]:
    return [f"  {pair:28s} agreement {row['agreement']:.3f}  KL {row['kl']:.3f}"
            for pair, row in sorted(res.get("pair_table", {}).items())]


def report(store, out_dir: str):
    """Training runs, the matched populations, agreement / KL beside the paper, attention and
    concreteness sections (placeholders where the run is not that far)."""
    from ..report import Report, Table, agreement_heatmap, distance_vs_agreement_scatter, silhouette_boxplot

    info = store.study_info()
    rep = Report(TITLE)
    rep.add_paragraph(f"Run directory `{out_dir}`; config: `{json.dumps(info.get('config', {}))}`.")
    runs = store.runs()
    rep.add_heading("Training runs")
    rep.add_table(["run", "status", "best val token accuracy"],
                  [[r["run_id"], r["status"], max((m["value"] for m in store.metrics(name="val_token_accuracy",
                                                                                      run_id=r["run_id"])),
                                                  default=None)] for r in runs] or None)
    analysis = store.unit("analysis")
    res = analysis["payload"] if analysis else None
    rep.add_heading("Accuracy-matched populations")
    if res:
        rep.add_paragraph(f"Stopped because: {res['stopped_because']}; "
                          f"{len(next(iter(res['populations'].values())))} models per population.")
        rep.add_table(["size", "Kruskal-Wallis H", "p"], res["trace"])
        rep.add_heading("Agreement and KL between populations (test targets, teacher forcing)")
        pairs = sorted(res.get("pair_table", {}).items())
        ours = Table(["population pair", "mean agreement", "mean KL (nats / token)"],
                     [[k, v["agreement"], v["kl"]] for k, v in pairs])
        rep.add_reference("grounding", ours=ours)
        models = res["models"]
        if "agreement" in res:
            groups = [m.split("-")[0] for m in models]
            rep.add_figure(agreement_heatmap(np.array(res["agreement"]), models, groups=groups), "agreement",
                           "Pairwise argmax agreement of the matched models, grouped by setup")
        if "attention_distance" in res and len(res["attention_distance"]) >= 3:
            d = np.array(res["attention_distance"])
            mm = [k for k, m in enumerate(models) if m.startswith("multimodal")]
            kl = np.array(res["kl"])[mm][:, mm]
            iu = np.triu_indices(len(mm), 1)
            note = None
            if "mantel_p" in res.get("attention_vs_kl", {}):
                note = f"Mantel p = {res['attention_vs_kl']['mantel_p']:.3g}"
            rep.add_figure(distance_vs_agreement_scatter(d[iu], 0.5 * (kl + kl.T)[iu], note=note),
                           "attention_vs_kl", "Attention segment-share distance vs KL (multimodal models)")
        if "segment_shares" in res:
            shares = np.array(res["segment_shares"]).mean(0)
            rep.add_table(["source", "mean attention share"], [[s, v] for s, v in zip(("C", "P", "T"), shares)],
                          caption="Multimodal models: attention mass per source segment (reference PCT: "
                                  ".32 C / .30 P / .38 T)")
        if res.get("silhouette"):
            _silhouette_section(rep, res, silhouette_boxplot)
    else:
        rep.add_table(["population pair", "mean agreement"], None)
        rep.add_reference("grounding", ours=None)
    return rep


def _silhouette_section(rep, res: dict, silhouette_boxplot) -> None:
    words = res["concreteness_words"]
    rep.add_heading("Concreteness: silhouettes of abstract vs concrete words")
    rep.add_paragraph(f"{len(words['abstract'])} abstract words ({', '.join(words['abstract'])}) and "
                      f"{len(words['concrete'])} concrete words ({', '.join(words['concrete'])}) of the "
                      "decoders' vocabulary, by the Brysbaert et al. (2014) norms; Euclidean silhouette.")
    for kind in ("input_embeddings", "hidden_states"):
        values = {s: [res["silhouette"][m][kind] for m in res["populations"][s]
                      if kind in res["silhouette"][m]] for s in res["populations"]}
        if any(values.values()):
            rep.add_figure(silhouette_boxplot(values, title=f"Silhouette, {kind.replace('_', ' ')}"),
                           f"silhouette_{kind}", f"Silhouette per population ({kind.replace('_', ' ')})")
        test = res.get("silhouette_tests", {}).get(kind)
        if test and "kruskal_p" in test:
            rep.add_table(["test", "p"], [["Kruskal-Wallis across populations", test["kruskal_p"]]]
                          + [[f"Mann-Whitney {k}", v] for k, v in test["mann_whitney"].items()],
                          caption=f"Silhouettes ({kind.replace('_', ' ')}): population differences")


STUDY = Study(name="grounding", config_cls=GroundingStudyConfig, plan=plan, prepare=prepare, run_unit=run_unit,
              results=results, summary=summary, report=report, before=(Step("features", _features),),
              after=(Step("analysis", _analysis),), progress_unit="epoch")
