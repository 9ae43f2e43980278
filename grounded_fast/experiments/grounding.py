"""The "Grounded and Well-rounded" study, in units of work the runner can resume.

Units:
  ``features``            C / P / T sources of the demo corpus from the shipped encoders (cached);
  ``train/<run_id>``      one decoder (setup x noise x seed) trained for ``epochs`` epochs, with a
                          checkpoint and its validation token accuracy at every ``checkpoint_epochs``;
  ``analysis``            accuracy-matched populations over the checkpoints, pairwise agreement / KL
                          on the test targets (fused kernel; KL per token and per sentence), block
                          means with bootstrap CIs and the within- vs between-population
                          permutation test, attention segment shares and their
                          distances vs agreement (correlation + Mantel), Kruskal-Wallis tables.
Each unit's results are committed in one transaction of the result store, so a killed run
resumes at the first unit not recorded as done.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from ..data.config import DataConfig
from ..models.config import ModelConfig
from ..models.grounding_seq2seq import SETUPS as SETUP_NAMES
from ..models.grounding_seq2seq import canonical_setup, setup_kind, setup_sources


@dataclasses.dataclass
class GroundingDataConfig(DataConfig):
    """The study's corpus: the built-in demo corpus, VATEX (captions + per-video features) or
    Multi30k task 2 (captions + the Flickr30k images or their features)."""
    kinds = ("demo", "vatex", "multi30k")


@dataclasses.dataclass
class GroundingStudyConfig(ModelConfig):
    """The study's grid and analysis. ``num_scenes`` / ``corpus_seed``: the demo corpus (``data.kind
    = 'demo'``); ``setups``: the paper's names (:data:`SETUP_NAMES`); one decoder per setup x noise
    level x seed, checkpointed at ``checkpoint_epochs``; populations matched to ``pivot`` with the
    Kruskal-Wallis rule ``p_threshold``; ``eval_items``: the fixed sample of test items the pairwise
    analysis runs on (its first items; the paper: 1,000)."""
    num_scenes: int = 2000
    corpus_seed: int = 0
    setups: Tuple[str, ...] = SETUP_NAMES
    noise_levels: Tuple[float, ...] = (0.0, 0.5, 1.0, 1.5)
    seeds: Tuple[int, ...] = (0, 1, 2, 3, 4)
    epochs: int = 25
    checkpoint_epochs: Tuple[int, ...] = (5, 10, 15, 20, 25)
    batch_size: int = 32
    model_preset: str = "paper"
    max_target_len: int = 48
    p_threshold: float = 0.5
    pivot: str = "P"
    eval_items: int = 1000
    data: GroundingDataConfig = dataclasses.field(default_factory=GroundingDataConfig)

    # paper: the authors' grid (allruns.sh of TimotheeMickus/vid-txt-diff: seeds 1-5, noise none / 0.5 / 1.0 /
    # 1.5, 25 epochs) with checkpoints every 5 epochs. tiny / small: all nine setups, fewer seeds and noise
    # levels, a checkpoint every epoch from the second, so that the matching has candidates at every accuracy
    presets = {
        "tiny": dict(num_scenes=300, noise_levels=(0.0, 0.5), seeds=(0, 1, 2), epochs=8,
                     checkpoint_epochs=(2, 3, 4, 5, 6, 7, 8), batch_size=16, model_preset="tiny"),
        "small": dict(num_scenes=600, noise_levels=(0.0, 0.5, 1.0), seeds=(0, 1, 2), epochs=10,
                      checkpoint_epochs=(2, 3, 4, 5, 6, 7, 8, 9, 10), model_preset="small"),
        "paper": {},
    }

    def check(self) -> None:
        # the paper's spellings ('multimodal' -> 'P∧C∧T', 'P|C' -> 'P∨C'), as run ids and reports show them
        if isinstance(self.setups, (list, tuple)):
            object.__setattr__(self, "setups", tuple(canonical_setup(s) for s in self.setups))
        object.__setattr__(self, "pivot", canonical_setup(self.pivot))
        super().check()

    def validate(self) -> None:
        from ..models.grounding_seq2seq import GroundingSeq2SeqConfig
        self.require("num_scenes", self.num_scenes >= MIN_DEMO_SCENES, MIN_DEMO_SCENES_RULE)
        self.require_seed("corpus_seed", "seeds")
        self.require_at_least(0, "noise_levels")
        self.require_at_least(1, "epochs", "checkpoint_epochs", "batch_size", "max_target_len", "eval_items")
        self.require_one_of("setups", SETUP_NAMES)
        self.require_distinct("setups", "seeds", "checkpoint_epochs")
        self.require_distinct("noise_levels", label=lambda n: f"{n:g}")   # as they appear in run ids
        self.require("setups", len(self.setups) >= 2, "needs at least 2 distinct setups to compare")
        self.require("pivot", self.pivot in self.setups, f"must be one of setups {list(self.setups)}")
        self.require("checkpoint_epochs", max(self.checkpoint_epochs) <= self.epochs,
                     f"every value must lie in [1, epochs={self.epochs}]")
        self.require("p_threshold", 0 < self.p_threshold <= 1, "must be in (0, 1]")
        self.require_one_of("model_preset", sorted(GroundingSeq2SeqConfig.presets))
        d = self.data
        if d.kind == "multi30k" and not (d.features or d.images or os.path.isdir(os.path.join(d.path, "images"))):
            raise ValueError(f"{type(self).__name__}.data.images = '': multi30k gives no visual source (C) by "
                             f"itself: set data.images to the Flickr30k image folder (or put it at "
                             f"{os.path.join(d.path, 'images')}), or data.features to precomputed features")


#: the demo corpus's 80 / 10 / 10 split gives val and test at least one scene each from this size on
MIN_DEMO_SCENES = 10
MIN_DEMO_SCENES_RULE = f"must be >= {MIN_DEMO_SCENES} (val and test each need a scene of the demo corpus)"


@dataclass(frozen=True)
class RunSpec:
    setup: str
    noise: float
    seed: int

    @property
    def run_id(self) -> str:
        return make_run_id(self.setup, self.noise, self.seed)


def make_run_id(setup: str, noise: float, seed: int) -> str:
    """Deterministic run id, e.g. ``make_run_id('P', 0.1, 2) == 'P-noise0.1-seed2'``."""
    return f"{setup}-noise{float(noise):g}-seed{int(seed)}"


def plan_runs(cfg: GroundingStudyConfig) -> List[RunSpec]:
    """Every training run of the grid (setup x noise x seed), in a fixed order."""
    return [RunSpec(s, n, k) for s in cfg.setups for n in cfg.noise_levels for k in cfg.seeds]


def _tasks(setup: str) -> List:
    """The ``task`` arguments a model of ``setup`` is run with: each source of a multi-task setup, else None."""
    return list(setup_sources(setup)) if setup_kind(setup) == "multi-task" else [None]


def train_run(spec: RunSpec, cfg: GroundingStudyConfig, data: Dict, vocab, run_dir: str,
              progress=None, device="cpu") -> Dict[int, Dict[str, float]]:
    """Train one decoder on ``device`` (forward passes under ``device.autocast``); save a checkpoint
    directory ``run_dir/epoch<k>`` at each checkpoint epoch. Returns {epoch: {'val_token_accuracy':
    ..., 'train_loss': ...}}. Deterministic given the spec (seeded initialisation, batch order and
    noise) on the CPU."""
    import grounded_fast.models as gm
    from ..models.grounding_seq2seq import make_optimizer, round_robin, shift_targets, token_accuracy
    from .device import autocast

    torch.manual_seed(spec.seed)
    dims = {t: data["train"].sources[t][0].shape[-1] for t in ("C", "P", "T")}
    model = gm.build("grounding-seq2seq", cfg.model_preset, vocab_size=len(vocab), setup=spec.setup,
                     source_dims=dims, noise_sigma=float(spec.noise), max_len=cfg.max_target_len + 1)
    device = torch.device(device)
    model = model.to(device)
    opt = make_optimizer(model)
    train = data["train"]
    g = torch.Generator().manual_seed(10_000 + spec.seed)
    n_batches = max(1, len(train) // cfg.batch_size)
    tasks = (round_robin(list(setup_sources(spec.setup)), n_batches) if setup_kind(spec.setup) == "multi-task"
             else [None] * n_batches)
    results = {}
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(train), generator=g)
        total = 0.0
        for b, task in enumerate(tasks):
            src, tgt = _to(device, *train.batch(order[b * cfg.batch_size:(b + 1) * cfg.batch_size]))
            tin, tout = shift_targets(tgt, vocab.bos_id, vocab.pad_id)
            with autocast(device):
                logits, _, _ = model(src, tin, task=task)
                loss = model.loss(logits, tout)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        if progress is not None:
            progress(epoch)
        if epoch in cfg.checkpoint_epochs:
            model.eval()
            val = data["val"]
            src, tgt = _to(device, *val.batch(torch.arange(len(val))))
            tin, tout = shift_targets(tgt, vocab.bos_id, vocab.pad_id)
            with torch.no_grad():
                accs = [token_accuracy(model(src, tin, task=t)[0], tout, vocab.pad_id) for t in _tasks(spec.setup)]
            gm.save(model, os.path.join(run_dir, f"epoch{epoch}"))
            results[epoch] = {"val_token_accuracy": sum(accs) / len(accs), "train_loss": total / n_batches}
    return results


def _to(device: torch.device, sources: Dict, targets: Tensor):
    """A batch (sources {task: (features, mask)}, targets) on ``device``."""
    return {t: (f.to(device), m.to(device)) for t, (f, m) in sources.items()}, targets.to(device)


#: the logits of one chunk of test items for every model, at most (the analysis streams over chunks)
ANALYSIS_CHUNK_BYTES = 1 << 30
#: the parameters of the models held at once by the analysis, at most, and never more than half the
#: device's free memory (more models are analysed block pair by block pair: the paper's 9 populations
#: of 40 models of ~60M parameters would need ~86 GB)
ANALYSIS_MODEL_BYTES = 16 << 30


def analysis_model_budget(device) -> int:
    """Bytes of model parameters the analysis may hold at once on ``device``: the smaller of
    :data:`ANALYSIS_MODEL_BYTES` and half the free memory (the GPU's, or the host's available RAM)."""
    dev = torch.device(device)
    try:
        free = (torch.cuda.mem_get_info(dev)[0] if dev.type == "cuda"
                else os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError, RuntimeError):     # no such figure on this platform
        return ANALYSIS_MODEL_BYTES
    return int(min(ANALYSIS_MODEL_BYTES, free // 2))


@dataclass
class TestSetSummary:
    """What the analyses need from one teacher-forced pass of M models over the test items,
    accumulated chunk by chunk so that memory does not grow with the items:

    pairwise: :func:`pairwise_per_sentence`'s dict (agreement, kl, kl_sentence (M, M), tokens, sentences);
    shares: per multi-modal model index, its last layer's cross-attention mass share on C, P, T (3,)
        (0 for a source its setup lacks), pooled over the counted targets;
    embeddings: per model, the input-embedding rows of the ``word_ids`` (W, d);
    hidden: per model, the mean last-layer state at the decoder inputs equal to each word of
        ``word_ids`` that occurs (W_seen, d), ``seen`` those words' indices into ``word_ids``."""
    pairwise: Dict
    shares: Dict[int, Tensor]
    embeddings: List[Tensor]
    hidden: List[Tensor]
    seen: List[int]


def summarise_test_set(model_dirs: List[str], data: Dict, vocab, device="cpu", items: int = 0,
                       word_ids: Sequence[int] = (), chunk_items: int = 0, models_per_pass: int = 0) -> TestSetSummary:
    """Run the M models of ``model_dirs`` teacher-forced over the test set's first ``items`` items
    (a fixed sample; 0: all) on ``device``, in chunks of ``chunk_items`` items (0: as many as keep
    one chunk's logits of every model within :data:`ANALYSIS_CHUNK_BYTES`), accumulating the
    pairwise sums (:class:`~grounded_fast.analysis.PairwiseAgreement`), the multi-modal models'
    attention mass per source (:class:`~grounded_fast.analysis.AttentionDistance`, per setup) and
    the hidden-state sums at ``word_ids``. Multi-task models run with their P source.

    Memory: one chunk's logits of the models loaded together, and at most ``models_per_pass``
    models at once (0: as many as fit :func:`analysis_model_budget`, judged by the first model's
    parameters; at least 2). When the M models do not fit, they are split into blocks of half
    that many and every pair of blocks runs together: each model pair is computed in one pass
    (within a block: in every pass of that block, identically), at the cost of about as many
    forward passes per model as there are blocks. The items only set the number of chunks."""
    import grounded_fast.models as gm
    M = len(model_dirs)
    if models_per_pass == 0:
        first = gm.load(model_dirs[0], map_location="cpu")
        size = sum(p.numel() * p.element_size() for p in first.parameters())
        models_per_pass = max(2, analysis_model_budget(device) // max(1, size))
    if models_per_pass < 2:
        raise ValueError(f"models_per_pass must be 0 (from the memory budget) or >= 2, got {models_per_pass}")
    if M <= models_per_pass:
        return _summarise_pass(model_dirs, data, vocab, device, items, word_ids, chunk_items)
    half = models_per_pass // 2
    blocks = [list(range(s, min(M, s + half))) for s in range(0, M, half)]
    matrices = {k: torch.zeros(M, M, dtype=torch.float64) for k in ("agreement", "kl", "kl_sentence")}
    counts: Dict[str, int] = {}
    shares: Dict[int, Tensor] = {}
    embeddings: List = [None] * M
    hidden: List = [None] * M
    for a, block_a in enumerate(blocks):
        for block_b in blocks[a + 1:]:
            index = block_a + block_b
            part = _summarise_pass([model_dirs[k] for k in index], data, vocab, device, items, word_ids, chunk_items)
            ix = torch.tensor(index)
            for key, full in matrices.items():
                full[ix[:, None], ix[None, :]] = part.pairwise[key].to(torch.float64)
            for local, k in enumerate(index):
                embeddings[k], hidden[k] = part.embeddings[local], part.hidden[local]
                if local in part.shares:
                    shares[k] = part.shares[local]
            counts = {k: part.pairwise[k] for k in ("tokens", "sentences")}   # the same in every pass
            seen = part.seen
    return TestSetSummary(pairwise={**matrices, **counts}, shares=shares, embeddings=embeddings, hidden=hidden, seen=seen)


def _summarise_pass(model_dirs: List[str], data: Dict, vocab, device, items: int, word_ids: Sequence[int],
                    chunk_items: int) -> TestSetSummary:
    """:func:`summarise_test_set` of models that are all loaded at once."""
    import grounded_fast.analysis as ga
    import grounded_fast.models as gm
    from ..models.grounding_seq2seq import TASKS, shift_targets
    dev = torch.device(device)
    models = [gm.load(d, map_location=dev).eval() for d in model_dirs]
    M, test = len(models), data["test"]
    n = min(items, len(test)) if items else len(test)
    T, V = test.targets.shape[1], models[0].config.vocab_size
    chunk = chunk_items or max(1, ANALYSIS_CHUNK_BYTES // (4 * M * T * V))
    ids = torch.as_tensor(list(word_ids), dtype=torch.long, device=dev)
    pairwise, sentences = ga.PairwiseAgreement(M), 0
    groups: Dict[str, List[int]] = {}
    for k, m in enumerate(models):
        if m.config.kind == "multi-modal":
            groups.setdefault(m.config.setup, []).append(k)
    attention = {s: ga.AttentionDistance(len(ks), "segment_l2", num_segments=len(TASKS)) for s, ks in groups.items()}
    hidden_sum = torch.zeros(M, len(ids), models[0].config.d_model, dtype=torch.float64, device=dev)
    seen_count = torch.zeros(len(ids), dtype=torch.float64, device=dev)
    for start in range(0, n, chunk):
        src, tgt = _to(dev, *test.batch(torch.arange(start, min(n, start + chunk))))
        tin, tout = shift_targets(tgt, vocab.bos_id, vocab.pad_id)
        mask = tout != vocab.pad_id
        at = (tin[..., None] == ids).double()                    # (B, T, W): decoder input is word w
        seen_count += at.sum((0, 1))
        logits, attn = [], {}
        for k, model in enumerate(models):
            states = {}
            hook = model.decoder.register_forward_hook(lambda mod, inp, o: states.__setitem__("h", o))
            with torch.no_grad():
                out = model(src, tin, task="P" if model.config.kind == "multi-task" else None)
            hook.remove()
            logits.append(out[0])
            if model.config.kind == "multi-modal":
                attn[k] = (out[1][-1], out[2])
            hidden_sum[k] += torch.einsum("btw,btd->wd", at, states["h"].double())
        pairwise.update(torch.stack(logits), mask)
        sentences += int(mask.any(1).sum())
        for setup, ks in groups.items():
            smask = torch.cat([src[t][1] for t in models[ks[0]].config.tasks], 1)
            attention[setup].update(torch.stack([attn[k][0] for k in ks]), mask, smask, attn[ks[0]][1])
    shares = {k: row for setup, ks in groups.items() for k, row in zip(ks, attention[setup].segment_shares().cpu())}
    seen = [w for w in range(len(ids)) if seen_count[w] > 0]
    return TestSetSummary(
        pairwise=_in_paper_units(pairwise.compute(), sentences),
        shares=shares, embeddings=[m.embed.weight.detach()[ids].cpu() for m in models],
        hidden=[(hidden_sum[k, seen] / seen_count[seen, None]).float().cpu() for k in range(M)], seen=seen)


def concreteness_words(vocab, n_max: int = 1000, abstract_below: float = 3.0, concrete_from: float = 4.0,
                       norms=None) -> Dict:
    """The abstract and concrete words of the decoder's vocabulary by the Brysbaert et al. (2014)
    norms (``norms``: a :class:`~grounded_fast.analysis.ConcretenessNorms`, default the shipped
    ones). Eligible: vocabulary words of more than 3 letters, alphabetic, that the norms rate;
    abstract: mean rating < ``abstract_below``, concrete: >= ``concrete_from`` (1-5 scale; words in
    between are left out); at most ``n_max`` per class, the most extreme first (ties by word; the
    paper: 1000 per class of a BERT vocabulary, the most extreme ones).

    Returns ``{"abstract": [...], "concrete": [...], "thresholds": {"abstract_below": float,
    "concrete_from": float}, "counts": {"rated": int, "abstract": int, "concrete": int,
    "between": int}}``: the counts before the cap (``rated``: the eligible words)."""
    import grounded_fast.analysis as ga
    if not abstract_below <= concrete_from:
        raise ValueError(f"abstract_below ({abstract_below}) must not exceed concrete_from ({concrete_from})")
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    rating = (norms if norms is not None else ga.load_concreteness_norms()).as_dict()
    rated = sorted((rating[w], w) for w in vocab.stoi if w in rating and len(w) > 3 and w.isalpha())
    abstract = [w for c, w in rated if c < abstract_below]
    concrete = [w for c, w in sorted(rated, key=lambda cw: (-cw[0], cw[1])) if c >= concrete_from]
    return {"abstract": abstract[:n_max], "concrete": concrete[:n_max],
            "thresholds": {"abstract_below": float(abstract_below), "concrete_from": float(concrete_from)},
            "counts": {"rated": len(rated), "abstract": len(abstract), "concrete": len(concrete),
                       "between": len(rated) - len(abstract) - len(concrete)}}


def silhouettes(summary: TestSetSummary, models: List[str], words: Tuple[List[str], List[str]]) -> Dict:
    """Per model: silhouette (Euclidean) of abstract vs concrete words (``summary`` run with
    ``word_ids`` = the abstract then the concrete words' ids) in its input embeddings and in its
    last decoder layer's states (mean over the words' occurrences as decoder inputs in the test
    targets; when each class occurs at least twice)."""
    import grounded_fast.analysis as ga
    abstract, concrete = words
    labels = [0] * len(abstract) + [1] * len(concrete)
    lab = [labels[k] for k in summary.seen]
    out = {}
    for mid, emb, h in zip(models, summary.embeddings, summary.hidden):
        row = {"input_embeddings": ga.concreteness_silhouette(emb, labels, metric="euclidean")}
        if min(lab.count(0), lab.count(1)) >= 2:
            row["hidden_states"] = ga.concreteness_silhouette(h, lab, metric="euclidean")
        out[mid] = row
    return out


def analyse(candidates: Dict[str, Dict[str, float]], checkpoint_dirs: Dict[str, str], data: Dict, vocab,
            cfg: GroundingStudyConfig, device="cpu") -> Dict:
    """Populations, pairwise agreement / KL, attention segment shares (multimodal) and the
    agreement-vs-attention correlation. candidates: setup -> {model id: val accuracy};
    checkpoint_dirs: model id -> saved model directory; ``device``: where the models run and the
    agreement / attention kernels compute (float32 models, no autocast). Returns plain data for the
    store / report."""
    import grounded_fast.analysis as ga
    pops = ga.match_populations(candidates, pivot=cfg.pivot, p_threshold=cfg.p_threshold)
    models = [m for s in cfg.setups for m in pops.populations[s]]
    setup_of = {m: s for s in cfg.setups for m in pops.populations[s]}
    out: Dict = {"populations": {s: pops.populations[s] for s in cfg.setups}, "trace": [tuple(t) for t in pops.trace],
                 "stopped_because": pops.stopped_because, "models": models}
    if len(models) < 2:
        return out
    words = concreteness_words(vocab)
    out["concreteness_words"] = words
    summary = summarise_test_set([checkpoint_dirs[m] for m in models], data, vocab, device, items=cfg.eval_items,
                                 word_ids=[vocab.stoi[w] for w in words["abstract"] + words["concrete"]])
    if min(len(words["abstract"]), len(words["concrete"])) >= 2:
        sil = silhouettes(summary, models, (words["abstract"], words["concrete"]))
        out["silhouette"] = sil
        tests = {}
        for kind in ("input_embeddings", "hidden_states"):
            groups = {s: [sil[m][kind] for m in pops.populations[s] if kind in sil[m]] for s in cfg.setups}
            groups = {s: v for s, v in groups.items() if len(v) >= 2}
            if len(groups) >= 2:
                try:
                    kw = ga.kruskal_wallis(*groups.values())
                    tests[kind] = {"kruskal_H": kw.statistic, "kruskal_p": kw.pvalue, "mann_whitney": {
                        f"{a}/{b}": ga.mann_whitney(groups[a], groups[b]).pvalue
                        for i, a in enumerate(groups) for b in list(groups)[i + 1:]}}
                except ValueError as exc:   # e.g. identical values in a degenerate tiny run
                    tests[kind] = {"error": str(exc)}
        out["silhouette_tests"] = tests
    res = summary.pairwise
    out["agreement"], out["kl"], out["kl_sentence"] = (res[k].numpy() for k in ("agreement", "kl", "kl_sentence"))
    out["eval_items"] = {"sentences": res["sentences"], "tokens": res["tokens"]}
    # per population pair: mean agreement / KL over the ordered model pairs (i != j; both directions of KL)
    table = {}
    for i, si in enumerate(cfg.setups):
        for sj in cfg.setups[i:]:
            ia = [k for k, m in enumerate(models) if setup_of[m] == si]
            ib = [k for k, m in enumerate(models) if setup_of[m] == sj]
            pairs = [(a, b) for a in ia for b in ib if a != b]
            pairs += [(b, a) for a, b in pairs] if si != sj else []
            if pairs:
                table[f"{si}/{sj}"] = {name: float(sum(out[name][a, b] for a, b in pairs) / len(pairs))
                                       for name in ("agreement", "kl", "kl_sentence")}
                table[f"{si}/{sj}"]["model_pairs"] = len(pairs) // 2   # unordered pairs
    out["pair_table"] = table
    out["population_tests"] = population_tests(out, models, setup_of)
    out.update(attention_analysis(summary, models, setup_of, cfg, out["kl"]))
    return out


def attention_analysis(summary: TestSetSummary, models: List[str], setup_of: Dict[str, str], cfg, kl) -> Dict:
    """The multi-modal models' attention: per model the share of its last layer's cross-attention
    mass on each source (columns C, P, T; 0 where a setup lacks the source), pooled over the
    counted target tokens of the test set (``summary.shares``); the Euclidean distances between
    the models' share vectors (``segment_l2``: comparable across the multi-modal setups, whose
    shares live in the same three columns) and their correlation (Pearson, Mantel) with the
    symmetrised KL. Returns {} without multi-modal models, else ``attention_models``,
    ``segment_shares`` (M, 3), ``attention_distance`` (M, M) and ``attention_vs_kl`` (>= 3 models)."""
    import numpy as np

    import grounded_fast.analysis as ga
    index = [k for setup in cfg.setups for k, m in enumerate(models) if setup_of[m] == setup and k in summary.shares]
    if not index:
        return {}
    sh = np.stack([summary.shares[k].numpy() for k in index])
    dist = np.sqrt(((sh[:, None, :] - sh[None, :, :]) ** 2).sum(-1))
    res = {"attention_models": [models[k] for k in index], "segment_shares": sh, "attention_distance": dist}
    if len(index) >= 3:
        sub = np.asarray(kl)[index][:, index]
        sym = 0.5 * (sub + sub.T)
        try:
            res["attention_vs_kl"] = {"pearson": ga.matrix_correlation(dist, sym).statistic,
                                      "mantel_p": ga.mantel(dist, sym, permutations=999, seed=0).pvalue,
                                      "models": len(index)}
        except ValueError as exc:      # e.g. constant distances in a degenerate tiny run
            res["attention_vs_kl"] = {"error": str(exc)}
    return res


def pairwise_per_sentence(logits: Tensor, mask: Tensor) -> Dict:
    """All-pairs agreement and KL of M teacher-forced models in both units of the paper's table.

    logits (M, B, T, V), mask (B, T) counted target positions. Returns ``agreement`` (M, M) share
    of counted tokens with equal argmax, ``kl`` (M, M) mean KL(p_i || p_j) per token (nats),
    ``kl_sentence`` (M, M) KL summed over a sentence's tokens and averaged over the sentences with
    at least one counted token (the paper's unit: the fused kernel's per-token sums, so it equals
    ``kl * tokens / sentences``), ``tokens`` and ``sentences`` counted."""
    import grounded_fast.analysis as ga
    return _in_paper_units(ga.pairwise_agreement(logits, mask), int(mask.reshape(mask.shape[0], -1).any(1).sum()))


def _in_paper_units(res: Dict, sentences: int) -> Dict:
    """A :class:`~grounded_fast.analysis.PairwiseAgreement` result with KL also per sentence
    (``sentences``: those with at least one counted token)."""
    tokens = int(res["count"])
    return {"agreement": res["agreement"], "kl": res["kl"], "kl_sentence": res["kl"] * (tokens / sentences),
            "tokens": tokens, "sentences": sentences}


#: label shufflings of the within- vs between-population permutation test, and bootstrap replicates of the block CIs
PERMUTATIONS, BOOTSTRAP = 9999, 2000


def population_tests(out: Dict, models: List[str], setup_of: Dict[str, str]) -> Dict:
    """Within- vs between-population agreement and KL of the matched models: per population pair
    the mean over its model pairs with a bootstrap CI over models, and the permutation test that
    shuffles population labels across models (``analysis.pairs_table``, as ``grounded-fast
    analyse`` runs it; KL as the mean of both directions). ``{"impossible": why}`` when no
    population holds two models (no within-population pair) or only one population has models."""
    import numpy as np

    from ..analysis.pairs_table import PairsTable, analyse_pairs
    sizes = {s: sum(1 for m in models if setup_of[m] == s) for s in dict.fromkeys(setup_of.values())}
    if len(sizes) < 2 or max(sizes.values()) < 2:
        return {"impossible": f"population sizes {sizes}: a within-population pair needs two models of one "
                              "population and a between-population pair two populations, so within vs between "
                              "cannot be compared"}
    values = {}
    for name in ("agreement", "kl", "kl_sentence"):
        m = np.array(out[name], dtype=np.float64)
        np.fill_diagonal(m, np.nan)
        values[name] = m
    table = PairsTable("analysis", "long", list(models), values,
                       {"agreement": "symmetric", "kl": "declared", "kl_sentence": "declared"})
    try:
        res = analyse_pairs(table, {m: setup_of[m] for m in models}, permutations=PERMUTATIONS, bootstrap=BOOTSTRAP)
    except ValueError as exc:      # e.g. every pair equal in a degenerate tiny run
        return {"impossible": str(exc)}
    return {"sizes": res.sizes, "permutations": res.permutations, "bootstrap": res.bootstrap,
            "confidence": res.confidence, "seed": res.seed, "metrics": {
                name: {"handling": a.handling, "n_within": a.n_within, "n_between": a.n_between,
                       "difference": a.permutation.difference, "pvalue": a.permutation.pvalue,
                       "exact": a.permutation.exact,
                       "blocks": {"/".join(b.populations): {"n_pairs": b.n_pairs, "mean": b.mean, "ci_low": b.ci_low,
                                                             "ci_high": b.ci_high} for b in a.blocks}}
                for name, a in res.metrics.items()}}
