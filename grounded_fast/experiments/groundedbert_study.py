"""The GroundedBERT study: alignment pre-training, then a GLUE-format task with and without grounding.

Pre-training (one unit per variant): the grounding and image MLPs of GroundedBERT on the demo
corpus (caption token states from the frozen MiniLM, patches from the frozen EfficientNet-Lite0,
cached), L = L_match + lambda L_OT with OT = none / balanced / partial with mass s. The share of
the step time spent in the OT loss (its forward; the envelope gradient is a product with the
plan) is measured. Downstream: a classifier on [h_CLS; g_CLS] (grounding MLP frozen) trained on a
GLUE-format task and scored on its dev split; the ``text-only`` variant uses h_CLS alone. Every
variant is trained once per seed of ``seeds``.
Pre-training data (``data``): the demo corpus, or COCO-format captions with their images (or
precomputed features). The task (``downstream``): any GLUE-format directory (``kind = "glue"``,
``path``, ``task``, e.g. SST-2's train.tsv / dev.tsv), or by default the built-in SST-2-format
task :func:`demo_glue_task`: is a shape's outline curved or straight in the image, with the shape
words of the dev set never seen in the task's training set (only in pre-training's captions). Or
SQuAD v1.1 / v2.0 from a directory (``kind = "squad"``): a span head on the token states
(``[h_i; g_i]``, or ``h_i`` for text-only), scored by F1 and exact match
(:mod:`~grounded_fast.experiments.squad_span`).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from .._atomic import Written, write_atomic
from ..data.config import DataConfig
from ..models.config import ModelConfig
from .device import autocast, synchronize

TEXT_ONLY = "text-only"
HEAD_FILE = "head.pt"


@dataclasses.dataclass
class PretrainDataConfig(DataConfig):
    """Pre-training pairs: the demo corpus or COCO-format captions + images (or features)."""
    kinds = ("demo", "coco")


@dataclasses.dataclass
class DownstreamDataConfig(DataConfig):
    """The downstream task: the built-in demo task, a GLUE task directory (``task``: its name) or a
    SQuAD v1.1 / v2.0 directory (``squad``; questions and contexts in windows of ``max_length``
    tokens overlapping by ``doc_stride``, answers of at most ``max_answer_tokens``; see
    :mod:`~grounded_fast.experiments.squad_span`)."""
    task: str = "sst2"
    max_length: int = 384
    doc_stride: int = 128
    max_answer_tokens: int = 30
    kinds = ("demo", "glue", "squad")

    def validate(self) -> None:
        super().validate()
        self.require_at_least(1, "max_length", "doc_stride", "max_answer_tokens")
        self.require("doc_stride", self.doc_stride < self.max_length, "must be < max_length (windows overlap by it)")


@dataclasses.dataclass
class GroundedBertStudyConfig(ModelConfig):
    num_scenes: int = 2000
    corpus_seed: int = 0
    variants: Tuple[str, ...] = (TEXT_ONLY, "none", "balanced", "partial-0.3", "partial-0.5", "partial-0.8")
    pretrain_steps: int = 1000
    finetune_steps: int = 500
    batch_size: int = 32
    model_preset: str = "paper"
    ot_reg: float = 0.05
    ot_weight: float = 1.0
    seeds: Tuple[int, ...] = (0, 1, 2)
    data: PretrainDataConfig = dataclasses.field(default_factory=PretrainDataConfig)
    downstream: DownstreamDataConfig = dataclasses.field(default_factory=DownstreamDataConfig)

    presets = {
        "tiny": dict(num_scenes=300, pretrain_steps=120, finetune_steps=150, model_preset="tiny"),
        "small": dict(num_scenes=800, pretrain_steps=400, finetune_steps=300, model_preset="small"),
        "paper": {},
    }

    def validate(self) -> None:
        from ..data.formats.glue import GLUE_TASKS
        from ..models.groundedbert import GroundedBERTConfig
        from .grounding import MIN_DEMO_SCENES, MIN_DEMO_SCENES_RULE
        self.require("num_scenes", self.num_scenes >= MIN_DEMO_SCENES, MIN_DEMO_SCENES_RULE)
        self.require_seed("corpus_seed", "seeds")
        self.require_distinct("variants", "seeds")
        for v in self.variants:
            self.require("variants", v in (TEXT_ONLY, "none", "balanced") or
                         (v.startswith("partial-") and _mass(v) is not None),
                         f"{v!r} is not text-only, none, balanced or partial-<mass in (0, 1]>")
        self.require_at_least(1, "pretrain_steps", "finetune_steps", "batch_size")
        self.require("batch_size", self.batch_size >= 2 or self.variants == (TEXT_ONLY,),
                     "must be >= 2 (pre-training matches each caption against the others of its batch)")
        self.require_one_of("model_preset", sorted(GroundedBERTConfig.presets))
        self.require("ot_reg", self.ot_reg > 0, "must be a finite number > 0")
        self.require("ot_weight", self.ot_weight >= 0, "must be a finite number >= 0")
        if self.downstream.kind != "squad" and _glue_task(self.downstream.task) is None:
            raise ValueError(f"{type(self).__name__}.downstream.task = {self.downstream.task!r}: must be a GLUE "
                             f"task, one of {sorted(GLUE_TASKS)}")


def _glue_task(name: str):
    """The GLUE task ``name`` names in any spelling ``load_glue_tsv`` accepts ('SST-2'), or None."""
    from ..data.formats.glue import _task
    try:
        return _task(name)
    except ValueError:
        return None


def _mass(variant: str):
    try:
        m = float(variant.split("-", 1)[1])
    except (IndexError, ValueError):
        return None
    return m if 0 < m <= 1 else None


def demo_shape_is_curved(shape: str) -> bool:
    """The built-in task's label, read off the demo renderer's geometry: whether the outline of
    ``shape`` has a curved part (an analytic curve, or a polygon of more than 12 vertices tracing
    one: heart, moon, semicircle, teardrop) rather than straight edges only."""
    from ..data.demo import _POLYGONS
    return shape in ("circle", "ring", "oval") or len(_POLYGONS[shape]) > 12


def demo_task_shapes() -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(training shapes, dev shapes) of the built-in task: the demo lexicon's first ten, its last ten."""
    from ..data.demo import SHAPES
    half = len(SHAPES) // 2
    return SHAPES[:half], SHAPES[half:]


def demo_glue_task(directory: str) -> str:
    """Write the built-in SST-2-format task to ``directory`` (train.tsv, dev.tsv; sentence, label)
    and return it. Sentences: "there is <noun phrase>." for every shape, colour, size and pattern
    of the demo lexicon; label: 1 when the shape's outline is curved, 0 when straight
    (:func:`demo_shape_is_curved`). Train: the first ten shapes of the lexicon (1,200 sentences);
    dev: the last ten (1,200), so that a dev shape word is never seen with a label and the
    classifier must carry the property over from the training shapes: by the text encoder's sense
    of the words, or, for the grounded variants, by where pre-training put them in the image space."""
    from ..data.demo import COLOURS, PATTERNS, SHAPES, SIZES, SceneObject, english_noun_phrase
    os.makedirs(directory, exist_ok=True)
    rows = {"train": [], "dev": []}
    train_shapes, _ = demo_task_shapes()
    for shape in SHAPES:
        split = "train" if shape in train_shapes else "dev"
        for colour in COLOURS:
            for size in SIZES:
                for pattern in PATTERNS:
                    obj = SceneObject(shape, colour, size, 0.5, 0.5, pattern)
                    rows[split].append((f"there is {english_noun_phrase(obj)}.", int(demo_shape_is_curved(shape))))
    for split, items in rows.items():
        text = "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in items)
        write_atomic(os.path.join(directory, f"{split}.tsv"), text.encode("utf-8"))
    return directory


def prepare(cfg: GroundedBertStudyConfig, out_dir: str, device="cpu", progress: bool = False) -> Dict:
    """Pre-training pairs (caption states, patches) of ``cfg.data`` and the downstream task's
    encoded sentences (``cfg.downstream``); encoders on ``device``, the features cached and
    returned on the CPU; ``progress``: bars for the feature extraction."""
    from ..data import DemoCorpus, load_glue_tsv
    from ..data.corpora import read_corpus
    from ..data.features import FeatureCache
    from ..data.sources import cached_text_states, content_digest, corpus_caption_image_data, demo_grounding_data

    cache_dir = os.path.join(out_dir, "features")
    d = cfg.data
    text_encoder = d.load_encoder("text", device)
    if d.kind == "demo":
        corpus = DemoCorpus(cfg.num_scenes, cfg.corpus_seed)
        data, _ = demo_grounding_data(corpus, cache_dir, text_encoder=text_encoder,
                                      vision_encoder=d.load_encoder("vision", device), progress=progress)
        train = data["train"]
        pretrain = (train.sources["P"][0], train.sources["P"][1], train.sources["C"][0])
    else:
        items = read_corpus(d.kind, d.path, "train", splits=d.splits, features=d.features or None,
                            images=d.images or None, max_items=d.max_items)
        pretrain = corpus_caption_image_data(items, cache_dir, tag=d.kind, text_encoder=text_encoder,
                                             vision_encoder=None if d.features else d.load_encoder("vision", device),
                                             use_features=bool(d.features), progress=progress)
    down = cfg.downstream
    if down.kind == "squad":
        return {"pretrain": pretrain, "squad": _squad_splits(down, text_encoder.tokenizer)}
    glue_dir = down.path if down.kind == "glue" else demo_glue_task(os.path.join(out_dir, "glue-demo"))
    spec = _glue_task(down.task)
    sep = f" {getattr(getattr(text_encoder, 'tokenizer', None), 'sep_token', None) or '[SEP]'} "
    cache = FeatureCache(cache_dir, progress=progress)
    task = {}
    for split, name in (("train", "train.tsv"), ("dev", spec.dev_file)):
        examples = load_glue_tsv(os.path.join(glue_dir, name), down.task, labels=True)
        if down.max_items:
            examples = examples[:down.max_items]
        texts = [sep.join(e.texts) for e in examples]     # a pair as one sequence, split by the separator
        ids = [f"glue-{down.task}-{split}-{k}:{content_digest(t.encode())}" for k, t in enumerate(texts)]
        states, _ = cached_text_states(cache, ids, dict(zip(ids, texts)), text_encoder, progress=progress)
        labels = torch.tensor([e.label for e in examples], dtype=torch.float32 if spec.num_labels == 1 else torch.long)
        task[split] = (states[:, 0], labels)
    return {"pretrain": pretrain, "task": task, "num_labels": spec.num_labels, "glue_task": spec.name}


def _squad_splits(down: DownstreamDataConfig, tokenizer) -> Dict:
    """{'version', 'train' / 'dev': {'examples', 'windows'}} of the SQuAD directory ``down.path``
    (the first ``down.max_items`` questions of each split when set; see ``squad_span.encode_squad``)."""
    from ..data.formats.squad import load_squad, squad_files
    from .squad_span import encode_squad
    files = squad_files(down.path)
    out = {"version": "v2.0" if files["dev"].endswith("v2.0.json") else "v1.1"}
    for split in ("train", "dev"):
        examples = load_squad(files[split])
        if down.max_items:
            examples = examples[:down.max_items]
        out[split] = {"examples": examples,
                      "windows": encode_squad(examples, tokenizer, down.max_length, down.doc_stride)}
    return out


def _head_input(model, cls_states: torch.Tensor, grounded: bool) -> torch.Tensor:
    if not grounded:
        return cls_states
    with torch.no_grad():
        return model.representation(cls_states[:, None])[:, 0]


def run_variant(variant: str, seed: int, cfg: GroundedBertStudyConfig, data: Dict, out_dir: str,
                progress: Optional[Callable[[int, int], None]] = None,
                device="cpu") -> Tuple[Dict[str, float], Dict[str, Written]]:
    """Pre-train (unless text-only), then fit and score the downstream classifier, with ``seed``
    (initialisation, batches, dropout) on ``device``
    (training forward passes under ``device.autocast``; the OT loss in float32, outside it); save
    the model (``config.json``, ``model.pt``) and the classifier (``head.pt``, CPU state) to
    ``out_dir``, each atomically. The OT share of step time is measured with the device synchronised.
    ``progress(step, steps)`` is called after every pre-training and fine-tuning step.
    Returns (metrics, {file name: its path, sha256 and size}); the metrics include ``dev_score``
    (the task's GLUE metric, :func:`~grounded_fast.data.formats.glue.glue_score`) and, for a
    classification task, ``dev_accuracy``, ``dev_majority`` (always answering the commonest dev
    label) and ``dev_correct``: whether each dev item was classified right, as a '0' / '1' string
    (``significance.pack_correct``); for SQuAD (``data['squad']``), ``dev_score`` is the F1, with
    ``dev_exact`` and ``dev_correct`` by exact match (:func:`_finetune_squad`)."""
    import grounded_fast.models as gm
    from ..models.config import cpu_state

    torch.manual_seed(seed)
    ot = "none" if variant == TEXT_ONLY else variant.split("-")[0]
    mass = _mass(variant) or 0.5
    model = gm.build("groundedbert", cfg.model_preset, ot=ot, ot_mass=mass, ot_reg=cfg.ot_reg,
                     ot_weight=cfg.ot_weight, num_labels=data.get("num_labels", 2))   # SQuAD: a span head instead
    device = torch.device(device)
    model = model.to(device)
    out: Dict[str, float] = {}
    steps = cfg.finetune_steps + (cfg.pretrain_steps if variant != TEXT_ONLY else 0)
    step = 0

    def advance():
        nonlocal step
        step += 1
        if progress is not None:
            progress(step, steps)

    if variant != TEXT_ONLY:
        states, mask, patches = (t.to(device) for t in data["pretrain"])
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(seed)
        ot_time = [0.0]
        if model.ot_loss is not None:
            t_start = {}
            model.ot_loss.register_forward_pre_hook(lambda m, a: t_start.__setitem__("t", _synced(device)))
            model.ot_loss.register_forward_hook(lambda m, a, o: ot_time.__setitem__(0, ot_time[0] + _synced(device)
                                                                                    - t_start["t"]))
        step_time, first, last = 0.0, None, None
        for _ in range(cfg.pretrain_steps):
            idx = torch.randint(len(states), (cfg.batch_size,), generator=g)
            t0 = _synced(device)
            with autocast(device):
                losses = model.pretrain_losses(states[idx], mask[idx], patches[idx], generator=g)
            opt.zero_grad()
            losses["loss"].backward()
            opt.step()
            step_time += _synced(device) - t0
            advance()
            last = {k: float(v.detach()) for k, v in losses.items()}
            first = first or last
        out.update({"pretrain_match_first": first["match"], "pretrain_match_last": last["match"],
                    "pretrain_ot_last": last["ot"], "ot_share_of_step_time": ot_time[0] / step_time})
    model.eval()
    grounded = variant != TEXT_ONLY
    finetune = _finetune_squad if "squad" in data else _finetune_glue
    head = finetune(model, grounded, cfg, data, seed, device, advance, out)
    files = gm.save(model, out_dir)
    files[HEAD_FILE] = write_atomic(os.path.join(out_dir, HEAD_FILE), lambda f: torch.save(cpu_state(head), f))
    return out, files


def _finetune_glue(model, grounded: bool, cfg: GroundedBertStudyConfig, data: Dict, seed: int, device,
                   advance: Callable[[], None], out: Dict) -> torch.nn.Module:
    """Fit the classifier (an MLP on ``[h_CLS; g_CLS]`` when ``grounded``, else ``h_CLS``; the
    grounding MLP frozen) on ``data['task']``'s train split, score its dev split: ``out`` gains
    ``dev_score`` and, for classification, ``dev_accuracy``, ``dev_majority``, ``dev_correct``
    (see :func:`run_variant`). Returns the head."""
    from ..data.formats.glue import glue_score
    from ..models.groundedbert import _mlp
    from .significance import pack_correct
    (xtr, ytr), (xdev, ydev) = ((x.to(device), y.to(device)) for x, y in (data["task"]["train"], data["task"]["dev"]))
    htr, hdev = _head_input(model, xtr, grounded), _head_input(model, xdev, grounded)
    head = _mlp(htr.shape[1], model.config.hidden_dim, data["num_labels"], model.config.dropout).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed + 1)
    regression = data["num_labels"] == 1
    for _ in range(cfg.finetune_steps):
        idx = torch.randint(len(htr), (cfg.batch_size,), generator=g)
        with autocast(device):
            y_hat = head(htr[idx])
            loss = F.mse_loss(y_hat[:, 0].float(), ytr[idx]) if regression else F.cross_entropy(y_hat, ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        advance()
    head.eval()
    with torch.no_grad():
        logits = head(hdev).float()
    pred = logits[:, 0] if regression else logits.argmax(1)
    out["dev_score"] = glue_score(data.get("glue_task", "sst2"), pred.cpu().numpy(), ydev.cpu().numpy())
    if not regression:
        correct = pred == ydev
        out["dev_accuracy"] = float(correct.float().mean())
        out["dev_majority"] = float(torch.bincount(ydev).max()) / len(ydev)    # always answering the commonest label
        out["dev_correct"] = pack_correct(correct)   # per dev item, for the report's CI and paired tests
    return head


def _finetune_squad(model, grounded: bool, cfg: GroundedBertStudyConfig, data: Dict, seed: int, device,
                    advance: Callable[[], None], out: Dict) -> torch.nn.Module:
    """Fit a span head (an MLP per token, on ``[h; g]`` when ``grounded``, else ``h``; the text
    encoder and the grounding MLP frozen) on ``data['squad']``'s train windows, score the dev questions:
    ``out`` gains ``dev_score`` (F1), ``dev_exact`` (exact match), both in [0, 1], and
    ``dev_correct`` (per dev question, exact match). Returns the head."""
    from ..data.formats.squad import squad_scores
    from ..models.groundedbert import _mlp
    from .significance import pack_correct
    from .squad_span import evaluate_windows, frozen_states, predict_answers, span_logits, span_loss
    squad = data["squad"]
    encoder = cfg.data.load_encoder("text", device)
    transform = model.representation if grounded else None
    d_in = model.config.text_dim + (model.config.ground_dim if grounded else 0)
    torch.manual_seed(seed + 1)
    head = _mlp(d_in, model.config.hidden_dim, 2, model.config.dropout).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed + 1)
    train = squad["train"]["windows"]
    for _ in range(cfg.finetune_steps):
        idx = torch.randint(train["input_ids"].shape[0], (cfg.batch_size,), generator=g)
        states = frozen_states(encoder, train, idx, device, transform)
        with autocast(device):
            s, e = span_logits(head, states, train["attention_mask"][idx].to(device))
        loss = span_loss(s, e, train["start"][idx].to(device), train["end"][idx].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        advance()
    head.eval()
    dev = squad["dev"]
    starts, ends = evaluate_windows(head, encoder, dev["windows"], device, transform=transform)
    answers = predict_answers(dev["examples"], dev["windows"], starts, ends, cfg.downstream.max_answer_tokens,
                              allow_no_answer=squad["version"] == "v2.0")
    scores = squad_scores(answers, dev["examples"])
    out.update({"dev_score": float(scores["f1"].mean()), "dev_exact": float(scores["exact"].mean()),
                "dev_correct": pack_correct(scores["exact"] == 1)})
    return head


def _synced(device: torch.device) -> float:
    """``time.perf_counter()`` once the work queued on ``device`` is done (GPU kernels are asynchronous)."""
    synchronize(device)
    return time.perf_counter()


def run_id(variant: str, seed: int) -> str:
    """The unit / run id of ``variant`` trained with ``seed``: 'partial-0.5-seed1'."""
    return f"{variant}-seed{seed}"


def split_run_id(run: str) -> Tuple[str, int]:
    """:func:`run_id`'s inverse: 'partial-0.5-seed1' -> ('partial-0.5', 1); a run id without a seed
    (a store of before the seeds, one run per variant) -> (run, 0)."""
    variant, sep, seed = run.rpartition("-seed")
    return (variant, int(seed)) if sep and seed.isdigit() else (run, 0)


def variant_rows(metrics: List[dict]) -> List[dict]:
    """Store metric rows -> one dict per run (variant, seed, its metrics), in the store's order."""
    rows: Dict[str, dict] = {}
    for m in metrics:
        if m["run_id"] not in rows:
            variant, seed = split_run_id(m["run_id"])
            rows[m["run_id"]] = {"run": m["run_id"], "variant": variant, "seed": seed}
        rows[m["run_id"]][m["name"]] = m["value"]
    return list(rows.values())
