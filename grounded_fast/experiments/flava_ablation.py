"""The FLAVA ablation ("Acquiring Linguistic Knowledge from Multimodal Input"), at small scale.

A grid of text volume x image volume (none and three image volumes): for each cell a FLAVA-style
model is trained on that many words of English text (``text``: whole sentences of the shipped
Multi30k English captions, 242K words, the captions of a corpus read from a path, or a plain-text
corpus of any size, streamed into a token file on disk; MLM) and that many
image-caption pairs (``data``: the demo corpus, or COCO / WiT captions with their images; MIM / MMM /
ITM / contrastive), with the paper's
modality-specific loss scheduler; every ``eval_every`` steps the validation losses drive the
scheduler and the pseudo-perplexity (PPPL) of held-out sentences selects the checkpoint. The
selected checkpoint's BLiMP accuracy (pseudo-log-likelihood, good > bad; ``blimp``: the shipped
67 x 20 subset or the release read from a path) and PPPL are the cell's results. Tokenizer: the shipped MiniLM's WordPiece.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import os
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from ..data.config import DataConfig
from ..models.config import ModelConfig


@dataclasses.dataclass
class FlavaPairsDataConfig(DataConfig):
    """Image-caption pairs: the demo corpus, or COCO / WiT captions with their images."""
    kinds = ("demo", "coco", "wit")


@dataclasses.dataclass
class FlavaTextDataConfig(DataConfig):
    """The text corpus (every English caption of its train split, or every line of a plain-text
    ``train.txt``; held-out sentences: the first caption of each val item, or the lines of
    ``val.txt``): the shipped Multi30k English captions (``demo``: those of the first 4000 train
    images; held out, the first caption of the first 200 val images), a captioned corpus or plain
    text from a path."""
    kinds = ("demo", "multi30k", "coco", "wit", "vatex", "text")


@dataclasses.dataclass
class BlimpDataConfig(DataConfig):
    """BLiMP: the shipped 67 x 20 subset (``demo``) or the release (a directory or zip) from a path."""
    kinds = ("demo", "blimp")


@dataclasses.dataclass
class FlavaGlueDataConfig(DataConfig):
    """The GLUE evaluation (the paper's second): the built-in task (``demo``: GroundedBERT's
    curved / straight outline task, held-out shape words) or a GLUE task directory (``task``)."""
    task: str = "sst2"
    kinds = ("demo", "glue")


@dataclasses.dataclass
class FlavaStudyConfig(ModelConfig):
    text_volumes: Tuple[int, ...] = (10_000, 50_000)     # words
    image_volumes: Tuple[int, ...] = (0, 100, 300, 1000)
    seeds: Tuple[int, ...] = (0,)
    steps: int = 300
    batch_size: int = 32
    eval_every: int = 100
    max_text_len: int = 32
    pppl_sentences: int = 200
    blimp_pairs_per_phenomenon: int = 20
    val_pairs: int = 64
    model_preset: str = "tiny"
    corpus_seed: int = 0
    data: FlavaPairsDataConfig = dataclasses.field(default_factory=FlavaPairsDataConfig)
    text: FlavaTextDataConfig = dataclasses.field(default_factory=FlavaTextDataConfig)
    blimp: BlimpDataConfig = dataclasses.field(default_factory=BlimpDataConfig)
    glue: FlavaGlueDataConfig = dataclasses.field(default_factory=FlavaGlueDataConfig)
    glue_steps: int = 200            # fine-tuning steps of the GLUE evaluation (0: none)
    glue_lr: float = 1e-4
    lr: float = 1e-3                 # AdamW learning rate of pre-training
    text_lr: float = 0.0             # the text encoder's (embeddings + layers) own learning rate; 0: lr
    weight_decay: float = 0.01
    warmup_steps: int = 0            # linear warm-up of the learning rates, then ``lr_schedule``
    lr_schedule: str = "constant"    # after the warm-up: "constant", or "cosine" decay to 0 at ``steps``

    presets = {
        "tiny": dict(image_volumes=(0, 50, 150, 400), steps=120, eval_every=40,
                     pppl_sentences=100, blimp_pairs_per_phenomenon=5, glue_steps=100),
        "small": dict(text_volumes=(20_000, 200_000), seeds=(0, 1, 2), steps=600, eval_every=100,
                      model_preset="small"),
        # the authors' grid (10M / 100M words x no / 40K / 400K / 4M WiT pairs, 5 seeds, half-size FLAVA, every
        # BLiMP pair): it needs the text, the pairs and BLiMP from paths (prepare says which is missing)
        "paper": dict(text_volumes=(10_000_000, 100_000_000), image_volumes=(0, 40_000, 400_000, 4_000_000),
                      seeds=(0, 1, 2, 3, 4), steps=20000, eval_every=1000, model_preset="half", batch_size=64,
                      pppl_sentences=1000, blimp_pairs_per_phenomenon=1000, glue_steps=2000,
                      lr=1e-3, text_lr=7.5e-4, weight_decay=0.1, warmup_steps=10000, lr_schedule="cosine"),
    }

    def validate(self) -> None:
        from ..models.flava import FlavaConfig
        self.require_at_least(1, "text_volumes", "steps", "batch_size", "eval_every", "max_text_len", "pppl_sentences",
                              "val_pairs")
        self.require_at_least(0, "image_volumes", "glue_steps")
        self.require("glue_lr", self.glue_lr > 0, "must be a finite number > 0")
        self.require("lr", self.lr > 0, "must be a finite number > 0")
        self.require("text_lr", self.text_lr >= 0, "must be a finite number >= 0 (0: lr)")
        self.require("weight_decay", self.weight_decay >= 0, "must be a finite number >= 0")
        self.require_at_least(0, "warmup_steps")
        self.require_one_of("lr_schedule", ["constant", "cosine"])
        from ..data.formats.glue import GLUE_TASKS, _task
        try:
            _task(self.glue.task)
        except ValueError:
            raise ValueError(f"{type(self).__name__}.glue.task = {self.glue.task!r}: must be a GLUE task, one of "
                             f"{sorted(GLUE_TASKS)}") from None
        self.require_seed("seeds", "corpus_seed")
        self.require_distinct("text_volumes", "image_volumes", "seeds")
        self.require("blimp_pairs_per_phenomenon", 1 <= self.blimp_pairs_per_phenomenon <= BLIMP_PAIRS,
                     f"must be in [1, {BLIMP_PAIRS}] (BLiMP's pairs per phenomenon)")
        self.require_one_of("model_preset", sorted(FlavaConfig.presets))

    def check_runnable(self) -> None:
        """The built-in data holds what the grid asks of it (text pool words, held-out captions,
        BLiMP subset pairs, demo pairs); a corpus from a path is counted when the study prepares it.
        Not on construction: the ``paper`` preset needs every source from a path."""
        if self.text.kind == "demo":
            words, held_out = _text_pool_sizes()
            self.require("text_volumes", max(self.text_volumes) <= words,
                         f"every value must be <= {words} (the words of the shipped Multi30k English captions; more "
                         "text from a path: [text] kind, path)")
            self.require("pppl_sentences", self.pppl_sentences <= held_out,
                         f"must be <= {held_out} (the shipped held-out Multi30k captions)")
        if self.blimp.kind == "demo":
            self.require("blimp_pairs_per_phenomenon", self.blimp_pairs_per_phenomenon <= BLIMP_BUILTIN_PAIRS,
                         f"must be <= {BLIMP_BUILTIN_PAIRS} with the shipped BLiMP subset (the release from a path: "
                         '[blimp] kind = "blimp", path)')
        if self.data.kind == "demo":
            self.require("image_volumes", max(self.image_volumes) + self.val_pairs <= DEMO_PAIRS_MAX,
                         f"every value + val_pairs ({self.val_pairs}) must be <= {DEMO_PAIRS_MAX} with the demo "
                         "corpus (rendered in memory; pairs from a path: [data] kind = \"wit\" or \"coco\", path)")


BLIMP_PAIRS = 1000          # pairs per paradigm in the BLiMP release
BLIMP_BUILTIN_PAIRS = 20    # ... in the shipped subset
DEMO_PAIRS_MAX = 20_000     # the demo corpus renders its pairs in memory: larger image volumes need pairs from a path


@functools.lru_cache(maxsize=1)
def _text_pool_sizes() -> Tuple[int, int]:
    """(words of the shipped Multi30k English captions, number of held-out captions): the most
    ``text_volumes`` and ``pppl_sentences`` can ask of the built-in text."""
    from ..data import iter_multi30k_builtin_english, load_multi30k_builtin
    words = sum(len(s.split()) for s in iter_multi30k_builtin_english())
    return words, len(load_multi30k_builtin("val"))


def cell_id(text: int, images: int, seed: int) -> str:
    return f"text{text}-images{images}-seed{seed}"


def plan_cells(cfg: FlavaStudyConfig) -> List[Tuple[int, int, int]]:
    return [(t, i, s) for t in cfg.text_volumes for i in cfg.image_volumes for s in cfg.seeds]


def tokenizer():
    """The shipped MiniLM WordPiece tokenizer (offline)."""
    from transformers import AutoTokenizer

    from ..models.encoders import shipped_text_model_path
    return AutoTokenizer.from_pretrained(shipped_text_model_path(), local_files_only=True)


def _text_corpus(cfg: FlavaStudyConfig) -> Tuple[Iterator[str], List[str], str]:
    """(training sentences, streamed; held-out sentences; what they are) of ``cfg.text``."""
    import itertools

    from ..data import iter_multi30k_builtin_english, load_multi30k_builtin
    from ..data.corpora import corpus_files, read_corpus
    from ..data.formats.plain_text import iter_plain_text, plain_text_files
    t = cfg.text
    if t.kind == "demo":
        return (iter_multi30k_builtin_english(), [im.en[0] for im in load_multi30k_builtin("val")],
                "the shipped Multi30k English captions")
    if t.kind == "text":
        if "val" not in plain_text_files(t.path, t.splits):
            raise ValueError(f"FlavaStudyConfig.text.path = {t.path!r}: has no val.txt (its lines are the held-out "
                             "sentences of the pseudo-perplexity)")
        held_out = list(itertools.islice(iter_plain_text(t.path, "val", t.splits), cfg.pppl_sentences))
        return iter_plain_text(t.path, "train", t.splits), held_out, f"the plain text at {t.path}"
    files = corpus_files(t.kind, t.path, t.splits)
    if t.kind == "wit" and not t.max_items:     # captions streamed, no image decoded
        from ..data.formats.wit import iter_wit_captions
        if "val" not in files:
            raise ValueError(f"FlavaStudyConfig.text.path = {t.path!r}: has no val split (its first captions are the "
                             "held-out sentences of the pseudo-perplexity)")
        held_out = list(itertools.islice(iter_wit_captions(files["val"]), cfg.pppl_sentences))
        return iter_wit_captions(files["train"]), held_out, f"the wit captions at {t.path}"
    read = functools.partial(read_corpus, t.kind, t.path, splits=t.splits, max_items=t.max_items)
    if "val" not in files:
        raise ValueError(f"FlavaStudyConfig.text.path = {t.path!r}: has no val split (its first captions are the "
                         "held-out sentences of the pseudo-perplexity)")
    return ((c for it in read("train") for c in it.captions), [it.captions[0] for it in read("val")],
            f"the {t.kind} captions at {t.path}")


def _text_key(cfg: FlavaStudyConfig) -> str:
    """What the token file of ``cfg.text`` depends on, as a digest: the section, the files' sizes and
    times, the longest text volume and the tokenised length."""
    import json

    from ..data.sources import content_digest
    t = cfg.text
    stamp = []
    for root, _, files in (os.walk(t.path) if t.path and os.path.isdir(t.path) else []):
        for name in sorted(files):
            st = os.stat(os.path.join(root, name))
            stamp.append((os.path.relpath(os.path.join(root, name), t.path), st.st_size, st.st_mtime_ns))
    return content_digest(json.dumps([dataclasses.asdict(t), sorted(stamp), max(cfg.text_volumes),
                                      cfg.max_text_len]).encode())


def _pair_images(cfg: FlavaStudyConfig, size: int, need: int) -> Tuple["torch.Tensor", List[str]]:
    """``need`` image-caption pairs of ``cfg.data`` as (images (N, 3, size, size) in [0, 1],
    captions): the demo corpus's scenes, or a corpus's val items then its train items (images
    resized to ``size``; the first ``cfg.val_pairs`` are the validation pairs)."""
    from ..data import DemoCorpus
    from ..data.corpora import corpus_files, read_corpus
    d = cfg.data
    if d.kind == "demo":
        corpus = DemoCorpus(num_scenes=need, seed=cfg.corpus_seed, image_size=size)
        return (torch.stack([torch.tensor(it.image).permute(2, 0, 1).float() / 255 for it in corpus]),
                [it.target for it in corpus])
    read = functools.partial(read_corpus, d.kind, d.path, splits=d.splits, images=d.images or None)
    items = (read("val") if "val" in corpus_files(d.kind, d.path, d.splits) else []) + read("train")
    if len(items) < need:
        raise ValueError(f"FlavaStudyConfig.data.path = {d.path!r}: {len(items)} image-caption pairs, the grid needs "
                         f"{need} (the largest image volume + val_pairs = {cfg.val_pairs} validation pairs)")
    from PIL import Image
    images = [torch.from_numpy(np.asarray(Image.fromarray(it.image()).convert("RGB").resize((size, size),
                                                                                          Image.BICUBIC)).copy())
              for it in items[:need]]
    return torch.stack(images).permute(0, 3, 1, 2).float() / 255, [it.captions[0] for it in items[:need]]


def prepare(cfg: FlavaStudyConfig, out_dir: str) -> Dict:
    """Token ids of the text pool (as much of it as the largest text volume takes, streamed into a
    :class:`~grounded_fast.data.token_file.TokenFile` under ``out_dir/features``, reused on
    resume), the held-out sentences and the BLiMP pairs; images and caption ids of the pair pool
    (at the model's image size); a fitted k-means codebook."""
    from ..data.token_file import write_token_file
    import grounded_fast.models as gm
    from ..data import BLIMP_BUILTIN, load_blimp
    from ..models.flava import KMeansCodebook

    blimp = cfg.blimp.path if cfg.blimp.kind == "blimp" else BLIMP_BUILTIN
    keep, seen = [], {}
    for p in load_blimp(blimp):
        seen[p.uid] = seen.get(p.uid, 0) + 1
        if seen[p.uid] <= cfg.blimp_pairs_per_phenomenon:
            keep.append(p)
    short = sorted(uid for uid, n in seen.items() if n < cfg.blimp_pairs_per_phenomenon)
    if short:
        raise ValueError(f"blimp_pairs_per_phenomenon = {cfg.blimp_pairs_per_phenomenon} exceeds the pairs of "
                         f"{len(short)} BLiMP paradigm(s) in {blimp} (e.g. {short[0]}: {seen[short[0]]})")
    tok = tokenizer()
    mc = gm.FlavaConfig.from_preset(cfg.model_preset)

    def ids(texts):
        enc = tok(list(texts), padding=True, truncation=True, max_length=cfg.max_text_len, return_tensors="pt")
        return enc["input_ids"]

    train_text, held_out, what = _text_corpus(cfg)
    text = write_token_file(train_text, lambda batch: tok(batch, padding="max_length", truncation=True,
                                                          max_length=cfg.max_text_len, return_tensors="np")["input_ids"],
                            tok.vocab_size, cfg.max_text_len,
                            os.path.join(out_dir, "features", f"text-{_text_key(cfg)}.tokens"),
                            max_words=max(cfg.text_volumes))
    words = text.words()
    if max(cfg.text_volumes) > int(words[-1]):
        raise ValueError(f"text volume {max(cfg.text_volumes)} words exceeds the text pool "
                         f"({int(words[-1])} words of {what})")
    if cfg.pppl_sentences > len(held_out):
        raise ValueError(f"pppl_sentences = {cfg.pppl_sentences} exceeds the held-out sentences ({len(held_out)} "
                         f"of {what})")
    held_out = held_out[:cfg.pppl_sentences]
    images, captions = _pair_images(cfg, mc.image_size, max(max(cfg.image_volumes), 1) + cfg.val_pairs)
    codebook = KMeansCodebook(mc.codebook_size, mc.patch_size, seed=cfg.corpus_seed).fit(images)
    # the pairs of one paradigm are contiguous (load_blimp reads the files one by one)
    glue = _glue_splits(cfg, tok, out_dir) if cfg.glue_steps else None
    return {"text": text, "text_words": words, "glue": glue, "held_out": ids(held_out), "images": images, "captions": ids(captions),
            "codes": codebook.encode(images), "blimp_good": ids([p.sentence_good for p in keep]),
            "blimp_bad": ids([p.sentence_bad for p in keep]), "vocab_size": tok.vocab_size,
            "pad_id": tok.pad_token_id, "cls_id": tok.cls_token_id, "sep_id": tok.sep_token_id,
            "mask_id": tok.mask_token_id, "num_val_pairs": cfg.val_pairs, "blimp_groups": pack_blimp_groups(keep)}


def _glue_splits(cfg: FlavaStudyConfig, tok, out_dir: str) -> Dict:
    """The GLUE evaluation's task: {'task': name, 'train' / 'dev': (ids (N, L), labels (N,))},
    pairs encoded as the tokenizer's sentence pairs; the built-in task written under ``out_dir``."""
    from ..data import load_glue_tsv
    from ..data.formats.glue import _task
    from .groundedbert_study import demo_glue_task
    g = cfg.glue
    spec = _task(g.task if g.kind == "glue" else "sst2")
    root = g.path if g.kind == "glue" else demo_glue_task(os.path.join(out_dir, "glue-demo"))
    out = {"task": spec.name, "num_labels": spec.num_labels}
    for split, name in (("train", "train.tsv"), ("dev", spec.dev_file)):
        examples = load_glue_tsv(os.path.join(root, name), spec, labels=True)
        if g.max_items:
            examples = examples[:g.max_items]
        columns = [list(c) for c in zip(*(e.texts for e in examples))]
        enc = tok(*columns, padding="max_length", truncation=True, max_length=cfg.max_text_len, return_tensors="pt")
        out[split] = (enc["input_ids"], torch.tensor([e.label for e in examples],
                                                     dtype=torch.float32 if spec.num_labels == 1 else torch.long))
    return out


def glue_finetune(model, glue: Dict, cfg: FlavaStudyConfig, seed: int, device) -> float:
    """Fine-tune a copy of ``model``'s text encoder with a linear head on its [CLS] state for
    ``cfg.glue_steps`` steps (AdamW, ``cfg.glue_lr``, batch ``cfg.batch_size``; cross-entropy, or
    mean squared error for a regression task) on ``glue['train']``, then return the task's GLUE
    metric on ``glue['dev']`` (:func:`~grounded_fast.data.formats.glue.glue_score`)."""
    import torch.nn.functional as F

    from ..data.formats.glue import glue_score
    from .device import autocast
    model = copy.deepcopy(model).to(device).train()
    head = torch.nn.Linear(model.config.d_model, glue["num_labels"]).to(device)
    params = model.text_parameters()
    opt = torch.optim.AdamW(params + list(head.parameters()), lr=cfg.glue_lr, weight_decay=0.01)
    (xtr, ytr), (xdev, ydev) = glue["train"], glue["dev"]
    g = torch.Generator().manual_seed(seed + 2)
    regression = glue["num_labels"] == 1
    for _ in range(cfg.glue_steps):
        idx = torch.randint(len(xtr), (cfg.batch_size,), generator=g)
        with autocast(device):
            out = head(model.text(xtr[idx].to(device))[:, 0])
        y = ytr[idx].to(device)
        loss = F.mse_loss(out[:, 0].float(), y) if regression else F.cross_entropy(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([head(model.text(xdev[k:k + 256].to(device))[:, 0]).float().cpu()
                          for k in range(0, len(xdev), 256)])
    pred = pred[:, 0] if regression else pred.argmax(1)
    return glue_score(glue["task"], pred.numpy(), ydev.numpy())


def pack_blimp_groups(pairs) -> str:
    """The paradigms of a run of BLiMP pairs, in order, as one string
    'uid:linguistics_term:count;...' (stored with each cell's per-pair correctness)."""
    groups: List[list] = []
    for p in pairs:
        if groups and groups[-1][0] == p.uid:
            groups[-1][2] += 1
        else:
            groups.append([p.uid, p.linguistics_term, 1])
    return ";".join(f"{u}:{t}:{n}" for u, t, n in groups)


def unpack_blimp_groups(text: str) -> List[Tuple[str, str, int]]:
    """:func:`pack_blimp_groups`'s string -> [(uid, linguistics_term, count), ...]."""
    out = []
    for part in filter(None, text.split(";")):
        uid, term, n = part.rsplit(":", 2)
        out.append((uid, term, int(n)))
    return out


def train_cell(text_volume: int, image_volume: int, seed: int, cfg: FlavaStudyConfig, data: Dict,
               out_dir: str, progress: Optional[Callable[[int, int], None]] = None,
               device="cpu") -> Dict[str, float]:
    """Train one cell on ``device`` (training forward passes under ``device.autocast``, evaluation
    in float32); save the best-PPPL checkpoint to ``out_dir``; returns its metrics (pppl, step,
    blimp in %), ``blimp_correct``: whether each BLiMP pair was right, as a '0' / '1' string in
    the order of ``data['blimp_good']`` (see ``significance.pack_correct``), and ``blimp_groups``:
    those pairs' paradigms (:func:`pack_blimp_groups`), and ``glue``: the GLUE task's metric after
    fine-tuning the checkpoint's text encoder (:func:`glue_finetune`; when ``cfg.glue_steps``).
    ``progress(step, steps)`` is called after every training step."""
    import grounded_fast.models as gm
    from ..models.flava import LOSSES, LossScheduler, pseudo_perplexity
    from .device import autocast
    from .significance import pack_correct

    torch.manual_seed(seed)
    model = gm.build("flava", cfg.model_preset, vocab_size=data["vocab_size"], max_text_len=cfg.max_text_len,
                     pad_id=data["pad_id"], cls_id=data["cls_id"], sep_id=data["sep_id"], mask_id=data["mask_id"])
    device = torch.device(device)
    model = model.to(device)
    data = {k: v.to(device) if torch.is_tensor(v) and k != "text_words" else v for k, v in data.items()}   # glue: CPU
    opt, schedule = _optimizer(model, cfg)
    g = torch.Generator().manual_seed(seed)
    n_sentences = int(torch.searchsorted(data["text_words"], text_volume)) + 1   # whole sentences
    text = data["text"]                  # a TokenFile: rows read from disk by batch
    nv = data["num_val_pairs"]           # the first pairs are held out for validation losses
    img, cap, codes = (data[k][nv:nv + image_volume] for k in ("images", "captions", "codes"))
    val_img, val_cap, val_codes = (data[k][:nv] for k in ("images", "captions", "codes"))
    active = [k for k in LOSSES if image_volume > 0 or k == "mlm"]
    sched = LossScheduler({k: 1.0 for k in active})
    best = {"pppl": float("inf")}
    best_state = None
    for step in range(1, cfg.steps + 1):
        model.train()
        tb = text[torch.randint(n_sentences, (cfg.batch_size,), generator=g)].to(device)
        with autocast(device):
            losses = model.losses(ids=tb, generator=g)
            if image_volume > 0:
                k = torch.randint(image_volume, (min(cfg.batch_size, image_volume),), generator=g)
                pl = model.losses(ids=cap[k], images=img[k], codes=codes[k], paired=True, generator=g)
                losses.update({n: v for n, v in pl.items() if n != "mlm"})
            loss = sched.total(losses)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        if progress is not None:
            progress(step, cfg.steps)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            model.eval()
            vg = torch.Generator().manual_seed(1)
            with torch.no_grad():
                val = {n: v.item() for n, v in model.losses(ids=data["held_out"], generator=vg).items()}
                if image_volume > 0:
                    pv = model.losses(ids=val_cap, images=val_img, codes=val_codes, paired=True, generator=vg)
                    val.update({n: v.item() for n, v in pv.items() if n != "mlm"})
            sched.step(val)
            pppl = pseudo_perplexity(model, data["held_out"])
            if pppl < best["pppl"]:
                best = {"pppl": pppl, "step": step}
                best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():   # per pair, for the report's bootstrap CI and paired tests between cells
        correct = model.pseudo_log_likelihood(data["blimp_good"]) > model.pseudo_log_likelihood(data["blimp_bad"])
    best["blimp"] = 100 * float(correct.float().mean())
    best["blimp_correct"] = pack_correct(correct)
    best["blimp_groups"] = data["blimp_groups"]
    if cfg.glue_steps and data.get("glue") is not None:   # the paper's second evaluation, on the checkpoint
        best["glue"] = glue_finetune(model, data["glue"], cfg, seed, device)
    gm.save(model, out_dir)
    return best


def _optimizer(model, cfg: FlavaStudyConfig):
    """(AdamW, its per-step learning-rate schedule) of pre-training: ``cfg.lr`` (the text encoder at
    ``cfg.text_lr`` when set, as the authors do), ``cfg.weight_decay``; a linear warm-up over
    ``cfg.warmup_steps``, then constant or a cosine decay to 0 at ``cfg.steps`` (transformers'
    schedules)."""
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup
    if cfg.text_lr:
        text = {id(p) for p in model.text_parameters()}
        groups = [{"params": [p for p in model.parameters() if id(p) not in text]},
                  {"params": [p for p in model.parameters() if id(p) in text], "lr": cfg.text_lr}]
    else:
        groups = model.parameters()
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.lr_schedule == "cosine":
        return opt, get_cosine_schedule_with_warmup(opt, cfg.warmup_steps, cfg.steps)
    return opt, get_constant_schedule_with_warmup(opt, cfg.warmup_steps)


def grid_rows(metrics: List[dict]) -> List[dict]:
    """Store metric rows -> one dict per cell (text volume, image volume, seed, blimp, pppl)."""
    cells: Dict[str, dict] = {}
    for m in metrics:
        run = m["run_id"]
        t, i, s = run.split("-")
        row = cells.setdefault(run, {"text": int(t[4:]), "images": int(i[6:]), "seed": int(s[4:])})
        row[m["name"]] = m["value"]
    return sorted(cells.values(), key=lambda r: (r["text"], r["images"], r["seed"]))


def checkpoint_dir(out_dir: str, cell: str) -> str:
    return os.path.join(out_dir, "cells", cell)
