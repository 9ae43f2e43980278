"""The grounding study ("Grounded and Well-rounded") as a :class:`Study`: ``features`` (before the
units), one ``train/<run_id>`` unit per setup x noise x seed, ``analysis`` (after). The training
and analysis themselves are in :mod:`grounded_fast.experiments.grounding`."""
from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Optional

import numpy as np

from ...models.grounding_seq2seq import setup_kind
from ..grounding import GroundingStudyConfig, analyse, plan_runs, train_run
from ..runner import unit_result
from .registry import Step, Study, Unit

TITLE = "Grounded and Well-rounded: a reproduction at small scale"


def plan(cfg: GroundingStudyConfig) -> List[Unit]:
    """One training unit per grid point (see ``plan_runs``), labelled with its setup, noise and seed."""
    return [Unit("train", s.run_id, s, {"setup": s.setup, "noise": s.noise, "seed": s.seed}) for s in plan_runs(cfg)]


def prepare(cfg: GroundingStudyConfig, out_dir: str, progress: bool, device="cpu"):
    """(data, vocab): the C / P / T sources of ``cfg.data`` per split (encoded text and images
    cached under ``out_dir/features``): the demo corpus, or a VATEX / Multi30k corpus read from its
    path (see ``data.sources.corpus_grounding_data``); encoders on ``device``, features cached and
    returned on the CPU."""
    from ...data import DemoCorpus
    from ...data.corpora import read_corpus
    from ...data.sources import corpus_grounding_data, demo_grounding_data
    d, cache_dir = cfg.data, os.path.join(out_dir, "features")
    text = d.load_encoder("text", device)
    if d.kind == "demo":
        return demo_grounding_data(DemoCorpus(cfg.num_scenes, cfg.corpus_seed), cache_dir, text_encoder=text,
                                   vision_encoder=d.load_encoder("vision", device), max_target_len=cfg.max_target_len,
                                   progress=progress)
    items = {split: read_corpus(d.kind, d.path, split, splits=d.splits, features=d.features or None,
                                images=d.images or None, max_items=d.max_items) for split in ("train", "val", "test")}
    use_features = bool(d.features) or d.kind == "vatex"
    return corpus_grounding_data(items, cache_dir, tag=d.kind, text_encoder=text,
                                 translation_encoder=d.load_encoder("translation", device),
                                 vision_encoder=None if use_features else d.load_encoder("vision", device),
                                 use_features=use_features, max_target_len=cfg.max_target_len, progress=progress)


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


#: the population pairs of the paper's table, as the CLI summary prints them first
PAPER_PAIRS = ("C/C", "P/P", "T/T", "C/P", "C/T", "P/T")


def _in_setup_order(res: Optional[dict]) -> Optional[dict]:
    """The analysis record with its populations in the paper's setup order (the store keeps JSON
    objects with sorted keys)."""
    from ...models.grounding_seq2seq import SETUPS
    if res and "populations" in res:
        order = {s: i for i, s in enumerate(SETUPS)}
        res = {**res, "populations": dict(sorted(res["populations"].items(), key=lambda kv: order.get(kv[0], 99)))}
    return res


def summary(res: dict) -> List[str]:
    """Population sizes, then agreement / KL of the paper's population pairs (the others: in the report)."""
    res = _in_setup_order(res)
    table = {_paper_pair(k): v for k, v in res.get("pair_table", {}).items()}
    sizes = {s: len(m) for s, m in res.get("populations", {}).items()}
    lines = [f"  populations: {', '.join(f'{s} {n}' for s, n in sizes.items())} accuracy-matched models"] if sizes else []
    lines += [f"  {pair:8s} agreement {row['agreement']:.3f}  KL {row['kl']:.3f} nats/token"
              + (f", {row['kl_sentence']:.2f} nats/sentence" if "kl_sentence" in row else "")
              for pair in PAPER_PAIRS for row in [table.get(pair)] if row]
    rest = len(table) - sum(p in table for p in PAPER_PAIRS)
    return lines + ([f"  ... and {rest} more population pairs in the report"] if rest else [])


def report(store, out_dir: str):
    """Training runs, the matched populations, agreement / KL beside the paper, attention and
    concreteness sections (placeholders where the run is not that far)."""
    from ..report import Report, agreement_heatmap, distance_vs_agreement_scatter, silhouette_boxplot

    info = store.study_info()
    rep = Report(TITLE)
    rep.add_paragraph(f"Run directory `{out_dir}`; config: `{json.dumps(info.get('config', {}))}`.")
    analysis = store.unit("analysis")
    res = _in_setup_order(analysis["payload"] if analysis else None)
    rep.add_scale("grounding", _scale(store, info.get("config", {}), res))
    runs = store.runs()
    rep.add_heading("Training runs")
    rep.add_table(["run", "status", "best val token accuracy"],
                  [[r["run_id"], r["status"], max((m["value"] for m in store.metrics(name="val_token_accuracy",
                                                                                      run_id=r["run_id"])),
                                                  default=None)]
                   for r in sorted(runs, key=lambda r: (_setup_rank(r["run_id"].split("-")[0]), r["run_id"]))]
                  or None)
    rep.add_heading("Accuracy-matched populations")
    if res:
        rep.add_paragraph(f"Stopped because: {res['stopped_because']}; "
                          f"{len(next(iter(res['populations'].values())))} models per population.")
        rep.add_table(["size", "Kruskal-Wallis H", "p"], res["trace"])
        rep.add_heading("Agreement and KL between populations (test targets, teacher forcing)")
        rep.add_reference("grounding", ours=_pairs_beside_paper(res) if res.get("pair_table") else None)
        _within_between_section(rep, res)
        models = res["models"]
        if "agreement" in res:
            groups = [m.split("-")[0] for m in models]
            for name, label, what in (("agreement", "agreement", "argmax agreement (share of tokens)"),
                                      ("kl_sentence", "KL (nats / sentence)", "KL(row ‖ column), nats per sentence")):
                if name in res:
                    m = np.array(res[name], dtype=float)
                    np.fill_diagonal(m, np.nan)     # a model against itself: grey, out of the colour scale
                    rep.add_figure(agreement_heatmap(m, models, groups=groups, colorbar_label=label,
                                                     title=f"Pairwise {label}"), name,
                                   f"Pairwise {what} of the matched models, grouped by setup (diagonal grey)")
        if "segment_shares" in res:
            _attention_section(rep, res, distance_vs_agreement_scatter)
        if res.get("silhouette"):
            _silhouette_section(rep, res, silhouette_boxplot)
    else:
        rep.add_table(["population pair", "mean agreement"], None)
        rep.add_reference("grounding", ours=None)
    return rep


def _attention_section(rep, res: dict, scatter) -> None:
    """Multi-modal models: attention mass per source (per setup, beside the paper's shares) and the
    share distance against KL (Pearson, Mantel) over every pair of multi-modal models."""
    from ..report import reference_stated, significance
    from ...models.grounding_seq2seq import SETUPS, setup_sources
    order = {s: i for i, s in enumerate(SETUPS)}
    paper_shares = {row["setup"]: {t: row[t] for t in ("C", "P", "T") if row[t] is not None}
                    for row in reference_stated("grounding", "attention_shares").as_dicts()}
    paper_r = reference_stated("grounding", "attention_vs_kl").as_dicts()[0]["value"]
    rep.add_heading("Attention of the multi-modal models", level=3)
    ids = res["attention_models"]
    shares = np.array(res["segment_shares"])
    setup_of = {m: s for s, ms in res["populations"].items() for m in ms}
    rows = []
    for setup in dict.fromkeys(setup_of[m] for m in ids):
        k = [i for i, m in enumerate(ids) if setup_of[m] == setup]
        mean = shares[k].mean(0)
        paper = paper_shares.get(setup, {})
        rows.append([setup, len(k)] + [f"{mean[c]:.3f}" + (f" (paper {paper[t]:.2f})" if t in paper else "")
                                       if t in setup_sources(setup) else "—" for c, t in enumerate(("C", "P", "T"))])
    rep.add_table(["setup", "models", "C", "P", "T"], rows,
                  caption="Share of the last decoder layer's cross-attention mass on each source, pooled over the "
                          "test targets, mean over the population's models (the paper's shares in brackets)")
    n = len(ids)
    if n >= 3:
        d = np.array(res["attention_distance"])
        kl = np.array(res["kl"])
        index = [res["models"].index(m) for m in ids]
        kl = kl[index][:, index]
        iu = np.triu_indices(n, 1)
        stat = res.get("attention_vs_kl", {})
        setups = [setup_of[m] for m in ids]
        pair_of = [f"{min(setups[i], setups[j], key=order.get)} / {max(setups[i], setups[j], key=order.get)}"
                   for i, j in zip(*iu)]
        if "mantel_p" in stat:
            text = (f"Pearson r = {stat['pearson']:.3f} over the {len(iu[0])} pairs of the {n} multi-modal models; "
                    f"Mantel test (999 permutations) {significance(stat['mantel_p'])}; paper: r = {paper_r:g}")
            rep.add_paragraph(f"Attention-share distance vs KL (mean of both directions, per token): {text}.")
        rep.add_figure(scatter(d[iu], 0.5 * (kl + kl.T)[iu], groups=pair_of, p_values=False,
                               xlabel="attention-share distance (L2 over C, P, T)",
                               ylabel="KL, nats / token (mean of both directions)",
                               title="Attention-share distance vs KL, pairs of multi-modal models",
                               note=(f"Mantel {significance(stat['mantel_p'])}; paper: r = {paper_r:g}"
                                     if "mantel_p" in stat else None)), "attention_vs_kl",
                       f"Attention-share distance (L2 over C, P, T) vs KL per token, the {len(iu[0])} pairs of the "
                       f"{n} multi-modal models, coloured by their setups (p-values by the Mantel test: the pairs "
                       "are not independent)")
        if "error" in stat:
            rep.add_paragraph(f"No correlation of attention distance and KL: {stat['error']}.")
    else:
        rep.add_paragraph(f"{n} multi-modal model{'s' * (n != 1)}: the attention-distance vs KL correlation needs 3.")


def _scale(store, cfg: dict, res) -> Dict[str, str]:
    """Our side of the scale table (aspects as the reference data's ``[studies.grounding.scale]``)."""
    from .scale import count, data_source, saved_model
    setups = cfg.get("setups", [])
    out = {}
    if res and res.get("populations"):
        sizes = {s: len(m) for s, m in res["populations"].items()}
        n = set(sizes.values())
        k = min(n)
        out["populations"] = (f"{k} accuracy-matched model{'s' if k != 1 else ''} each ({', '.join(sizes)})"
                              if len(n) == 1
                              else ", ".join(f"{s}: {k}" for s, k in sizes.items()) + " accuracy-matched models")
    else:
        out["populations"] = "not matched yet (run incomplete)"
    if "p_threshold" in cfg:
        out["matching rule"] = f"Kruskal–Wallis stopping rule p < {cfg['p_threshold']:g}"
    out["setups"] = "; ".join(f"{kind} {', '.join(s for s in setups if setup_kind(s) == kind)}"
                              for kind in ("mono-task", "multi-task", "multi-modal")
                              if any(setup_kind(s) == kind for s in setups))
    if setups:
        out["training runs"] = (f"{len(cfg['seeds'])} seeds × {len(cfg['noise_levels'])} noise levels per setup; "
                                f"checkpoints at epochs {', '.join(map(str, cfg['checkpoint_epochs']))} of "
                                f"{cfg['epochs']}")
    model = saved_model(store)
    if model is not None:
        mc, params = model
        out["model"] = (f"{mc['num_layers']}-layer Transformer decoder, d_model {mc['d_model']}, {mc['num_heads']} "
                        f"heads, FFN {mc['ffn_dim']} (preset {cfg.get('model_preset', '?')}), over frozen source "
                        f"features; {count(params)} parameters ({mc.get('setup', '')} model)")
    else:
        out["model"] = f"preset {cfg.get('model_preset', '?')} (no checkpoint yet to count its parameters)"
    out["data"] = data_source(cfg, f"built-in demo corpus, {cfg.get('num_scenes', '?')} rendered scenes (seed "
                                   f"{cfg.get('corpus_seed', '?')}); C from EfficientNet-Lite0 patch features of the "
                                   "image, P from MiniLM states of an English paraphrase, T from MiniLM states of "
                                   "the German translation; word-level English targets")
    items = res.get("eval_items") if res else None
    features = store.unit("features")
    split = features["payload"] if features else {}
    out["evaluation items"] = (f"{count(items['sentences'])} test items ({count(items['tokens'])} target tokens), "
                               "teacher forcing" if items else
                               f"{count(split['test'])} test items, teacher forcing" if "test" in split else
                               "not computed yet (run incomplete)")
    if "train" in split:
        out["items (train / val / test)"] = (f"{count(split['train'])} / {count(split['val'])} / "
                                             f"{count(split['test'])}; target vocabulary {count(split['vocab'])}")
    return out


def _paper_pair(pair: str) -> str:
    """'P/C' -> 'C/P': population pairs named as the paper's table names them (sorted)."""
    return "/".join(sorted(pair.split("/")))


def _setup_rank(setup: str) -> int:
    """A setup's place in the paper's order (P, C, T, P∨C, ...; unknown names last)."""
    from ...models.grounding_seq2seq import SETUPS
    return SETUPS.index(setup) if setup in SETUPS else len(SETUPS)


def _pair_rank(pair: str):
    """Sort key of a population pair 'A/B': the paper's six pairs in its table's order, then the
    others in setup order."""
    pair = _paper_pair(pair)
    if pair in PAPER_PAIRS:
        return (0, PAPER_PAIRS.index(pair))
    return (1, *sorted(_setup_rank(s) for s in pair.split("/")))


def _pairs_beside_paper(res: dict):
    """Our population-pair table in the paper's units (and per token), with bootstrap CIs over
    models, beside the paper's values."""
    from ..report import Table, format_interval, reference_tables
    try:
        paper = reference_tables("grounding")[0]
    except (OSError, KeyError, ValueError, IndexError):
        paper = None

    def published(row: str, pair: str):
        """The paper's cell as published ('.687'), or None."""
        firsts = [r[0] for r in paper.text_rows] if paper is not None else []
        if row not in firsts or pair not in paper.header:
            return None
        return paper.text_rows[firsts.index(row)][paper.header.index(pair)] or None

    blocks = {name: m["blocks"] for name, m in res.get("population_tests", {}).get("metrics", {}).items()}

    def ci(name: str, pair: str) -> str:
        b = blocks.get(name, {}).get(pair)
        return format_interval(b["ci_low"], b["ci_high"]) if b else "—"

    rows = []
    for key, v in sorted(res["pair_table"].items(), key=lambda kv: _pair_rank(kv[0])):
        pair = _paper_pair(key)
        kl_sentence = v.get("kl_sentence")
        rows.append([pair, v.get("model_pairs"), v["agreement"], ci("agreement", pair),
                     published("mean agreement", pair), kl_sentence, ci("kl_sentence", pair),
                     published("mean KL", pair), v["kl"], ci("kl", pair)])
    items = res.get("eval_items", {})
    t = Table(["population pair", "model pairs", "agreement", "95% CI", "paper", "KL / sentence", "95% CI", "paper",
               "KL / token", "95% CI"], rows,
              caption="Mean over the model pairs of each population pair, ours beside the paper's (C/P also "
                      "counts P/C; KL as the mean of both directions)")
    t.units = ("agreement: share of target tokens with the same argmax prediction (0 to 1); KL: nats, summed over "
               "a sentence's target tokens and averaged over the sentences (the paper's unit), and per target "
               f"token; {items.get('sentences', '?')} test sentences, {items.get('tokens', '?')} tokens. 95% CI: "
               "percentile bootstrap over the models of each population; '—' where it cannot vary (fewer than 3 "
               "models in a within-population block) or the paper has no such pair")
    return t


def _within_between_section(rep, res: dict) -> None:
    """Within- vs between-population agreement and KL: the permutation test over population
    labels, or why it cannot run."""
    from ..report import significance, tests_note
    rep.add_heading("Within vs between populations", level=3)
    tests = res.get("population_tests")
    if not tests:
        rep.add_placeholder("within vs between test")
        return
    if "impossible" in tests:
        rep.add_paragraph(f"No test of within- vs between-population differences: {tests['impossible']}. "
                          "Kruskal–Wallis / Mann–Whitney over pairs would not be valid either.")
        return
    names = {"agreement": "agreement (share of tokens)", "kl_sentence": "KL (nats / sentence)"}
    sizes = ", ".join(f"{s} {n}" for s, n in sorted(tests["sizes"].items(), key=lambda kv: _setup_rank(kv[0])))
    rows = [[label, m["n_within"], m["n_between"], m["difference"], significance(m["pvalue"])]
            for name, label in names.items() for m in [tests["metrics"].get(name)] if m]
    how = ("all orderings of the labels" if all(tests["metrics"][n]["exact"] for n in names if n in tests["metrics"])
           else f"{tests['permutations']} random shufflings (seed {tests['seed']})")
    rep.add_table(["metric", "within pairs", "between pairs", "mean within − mean between", "permutation test"], rows,
                  caption="Within- vs between-population pairs: permutation test shuffling the population labels "
                          f"across models ({how}; population sizes {sizes}). Pairs that share a model are "
                          "not independent, so this test, not a test over pairs, is the valid one; KL per token "
                          "gives the same p-value as KL per sentence (a constant factor).")
    rep.add_paragraph(tests_note(len(rows)))


def _paper_silhouettes(kind: str, setups: List[str]) -> Dict[str, float]:
    """The paper's population mean silhouettes (its second reference table) for our setups:
    mono-task P / C / T from the mono-task rows, P∨C ... from the multi-task row's PC / PT / PCT
    columns, P∧C ... from the multi-modal row's (input embeddings only; hidden states: mono-task)."""
    from ...models.grounding_seq2seq import setup_sources
    from ..report import reference_tables
    try:
        table = reference_tables("grounding")[1]
    except (OSError, KeyError, ValueError, IndexError):
        return {}
    rows = {r[0]: r for r in table.rows}
    what = "input embeddings" if kind == "input_embeddings" else "last hidden states"
    out = {}
    for setup in setups:
        k = setup_kind(setup)
        column = setup if k == "mono-task" else "".join(t for t in ("P", "C", "T") if t in setup_sources(setup))
        row = rows.get(f"{k}, {what}")
        if row is not None and column in table.header:
            value = row[table.header.index(column)]
            if isinstance(value, float):
                out[setup] = value
    return out


def _concreteness_words_text(words: dict) -> str:
    """Which words the silhouettes compare: the classes with their thresholds, counts and words."""
    th, counts = words.get("thresholds"), words.get("counts")
    if th is None:  # results stored before thresholds were recorded
        return (f"{len(words['abstract'])} abstract words ({', '.join(words['abstract'])}) and "
                f"{len(words['concrete'])} concrete words ({', '.join(words['concrete'])}) of the "
                "decoders' vocabulary, by the Brysbaert et al. (2014) norms; Euclidean silhouette.")
    capped = [f"{k} capped from {counts[k]}" for k in ("abstract", "concrete") if counts[k] > len(words[k])]
    return (f"Of the decoders' vocabulary, {counts['rated']} words of more than 3 letters are rated by the "
            f"Brysbaert et al. (2014) concreteness norms (1 abstract to 5 concrete): "
            f"{len(words['abstract'])} abstract words, rated below {th['abstract_below']:g} "
            f"({', '.join(words['abstract'])}), and {len(words['concrete'])} concrete words, rated "
            f"{th['concrete_from']:g} or more ({', '.join(words['concrete'])}); the {counts['between']} "
            f"in between are left out" + (f" ({'; '.join(capped)}, the most extreme kept)" if capped else "")
            + ". Euclidean silhouette.")


def _silhouette_section(rep, res: dict, silhouette_boxplot) -> None:
    from ..report import significance, tests_note
    words = res["concreteness_words"]
    rep.add_heading("Concreteness: silhouettes of abstract vs concrete words")
    rep.add_paragraph(_concreteness_words_text(words))
    for kind in ("input_embeddings", "hidden_states"):
        values = {s: [res["silhouette"][m][kind] for m in res["populations"][s]
                      if kind in res["silhouette"][m]] for s in res["populations"]}
        if any(values.values()):
            rep.add_figure(silhouette_boxplot(values, title=f"Silhouette, {kind.replace('_', ' ')}",
                                              reference=_paper_silhouettes(kind, list(values))),
                           f"silhouette_{kind}", f"Silhouette per population ({kind.replace('_', ' ')})")
        test = res.get("silhouette_tests", {}).get(kind)
        if test and "kruskal_p" in test:
            rows = ([["Kruskal-Wallis across populations", significance(test["kruskal_p"])]]
                    + [[f"Mann-Whitney {k}", significance(v)]
                       for k, v in sorted(test["mann_whitney"].items(), key=lambda kv: _pair_rank(kv[0]))])
            rep.add_table(["test", "p"], rows,
                          caption=f"Silhouettes ({kind.replace('_', ' ')}): population differences (one "
                                  "silhouette per model)")
            rep.add_paragraph(tests_note(len(rows)))


STUDY = Study(name="grounding", config_cls=GroundingStudyConfig, plan=plan, prepare=prepare, run_unit=run_unit,
              results=results, summary=summary, report=report, before=(Step("features", _features),),
              after=(Step("analysis", _analysis),), progress_unit="epoch")
