"""The FLAVA ablation ("Acquiring Linguistic Knowledge from Multimodal Input"), at small scale.

A grid of text volume x image volume (none and three image volumes): for each cell a FLAVA-style
model is trained on that many words of English text (whole sentences of the shipped Multi30k
captions, about 60K words, MLM) and that many
image-caption pairs (the demo corpus, MIM / MMM / ITM / contrastive), with the paper's
modality-specific loss scheduler; every ``eval_every`` steps the validation losses drive the
scheduler and the pseudo-perplexity (PPPL) of held-out sentences selects the checkpoint. The
selected checkpoint's BLiMP accuracy (pseudo-log-likelihood, good > bad; the shipped 67 x 20
subset) and PPPL are the cell's results. Tokenizer: the shipped MiniLM's WordPiece.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import os
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..models.config import ModelConfig


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
    model_preset: str = "tiny"
    corpus_seed: int = 0

    presets = {
        "tiny": dict(image_volumes=(0, 50, 150, 400), steps=120, eval_every=40,
                     pppl_sentences=100, blimp_pairs_per_phenomenon=5),
        "small": dict(steps=600, eval_every=100, model_preset="small"),
        "paper": dict(steps=20000, eval_every=1000, model_preset="paper", batch_size=64),
    }

    def validate(self) -> None:
        from ..models.flava import FlavaConfig
        words, held_out = _text_pool_sizes()
        self.require_at_least(1, "text_volumes", "steps", "batch_size", "eval_every", "max_text_len", "pppl_sentences")
        self.require_at_least(0, "image_volumes")
        self.require_seed("seeds", "corpus_seed")
        self.require_distinct("text_volumes", "image_volumes", "seeds")
        self.require("text_volumes", max(self.text_volumes) <= words,
                     f"every value must be <= {words} (the words of the shipped Multi30k training captions)")
        self.require("pppl_sentences", self.pppl_sentences <= held_out,
                     f"must be <= {held_out} (the shipped held-out Multi30k captions)")
        self.require("blimp_pairs_per_phenomenon", 1 <= self.blimp_pairs_per_phenomenon <= 20,
                     "must be in [1, 20] (the shipped subset)")
        self.require_one_of("model_preset", sorted(FlavaConfig.presets))


@functools.lru_cache(maxsize=1)
def _text_pool_sizes() -> Tuple[int, int]:
    """(words of the shipped Multi30k training captions, number of held-out captions): the most
    ``text_volumes`` and ``pppl_sentences`` can ask for (see :func:`prepare`)."""
    from ..data import load_multi30k_builtin
    words = sum(len(s.split()) for im in load_multi30k_builtin("train") for s in im.en)
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


def prepare(cfg: FlavaStudyConfig) -> Dict:
    """Token ids of the text pool, the held-out sentences and the BLiMP pairs; images and caption
    ids of the pair pool (demo corpus at the model's image size); a fitted k-means codebook."""
    import grounded_fast.models as gm
    from ..data import BLIMP_BUILTIN, DemoCorpus, load_blimp, load_multi30k_builtin
    from ..models.flava import KMeansCodebook

    tok = tokenizer()
    mc = gm.FlavaConfig.from_preset(cfg.model_preset)

    def ids(texts):
        enc = tok(list(texts), padding=True, truncation=True, max_length=cfg.max_text_len, return_tensors="pt")
        return enc["input_ids"]

    train_text = [s for im in load_multi30k_builtin("train") for s in im.en]
    words = torch.tensor([len(s.split()) for s in train_text]).cumsum(0)
    if max(cfg.text_volumes) > int(words[-1]):
        raise ValueError(f"text volume {max(cfg.text_volumes)} words exceeds the shipped text pool "
                         f"({int(words[-1])} words of Multi30k captions)")
    held_out = [im.en[0] for im in load_multi30k_builtin("val")][:cfg.pppl_sentences]
    need_images = max(cfg.image_volumes, default=0)
    corpus = DemoCorpus(num_scenes=max(need_images, 1) + 64, seed=cfg.corpus_seed, image_size=mc.image_size)
    images = torch.stack([torch.tensor(it.image).permute(2, 0, 1).float() / 255 for it in corpus])
    captions = [it.target for it in corpus]
    pairs = load_blimp(BLIMP_BUILTIN)
    keep, seen = [], {}
    for p in pairs:
        seen[p.uid] = seen.get(p.uid, 0) + 1
        if seen[p.uid] <= cfg.blimp_pairs_per_phenomenon:
            keep.append(p)
    codebook = KMeansCodebook(mc.codebook_size, mc.patch_size, seed=cfg.corpus_seed).fit(images)
    return {"text": ids(train_text), "text_words": words, "held_out": ids(held_out), "images": images, "captions": ids(captions),
            "codes": codebook.encode(images), "blimp_good": ids([p.sentence_good for p in keep]),
            "blimp_bad": ids([p.sentence_bad for p in keep]), "vocab_size": tok.vocab_size,
            "pad_id": tok.pad_token_id, "cls_id": tok.cls_token_id, "sep_id": tok.sep_token_id,
            "mask_id": tok.mask_token_id, "num_val_pairs": 64}


def train_cell(text_volume: int, image_volume: int, seed: int, cfg: FlavaStudyConfig, data: Dict,
               out_dir: str, progress: Optional[Callable[[int, int], None]] = None,
               device="cpu") -> Dict[str, float]:
    """Train one cell on ``device`` (training forward passes under ``device.autocast``, evaluation
    in float32); save the best-PPPL checkpoint to ``out_dir``; returns its metrics.
    ``progress(step, steps)`` is called after every training step."""
    import grounded_fast.models as gm
    from ..models.flava import LOSSES, LossScheduler, blimp_accuracy, pseudo_perplexity
    from .device import autocast

    torch.manual_seed(seed)
    model = gm.build("flava", cfg.model_preset, vocab_size=data["vocab_size"], max_text_len=cfg.max_text_len,
                     pad_id=data["pad_id"], cls_id=data["cls_id"], sep_id=data["sep_id"], mask_id=data["mask_id"])
    device = torch.device(device)
    model = model.to(device)
    data = {k: v.to(device) if torch.is_tensor(v) and k != "text_words" else v for k, v in data.items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    n_sentences = int(torch.searchsorted(data["text_words"], text_volume)) + 1   # whole sentences
    text = data["text"][:n_sentences]
    nv = data["num_val_pairs"]           # the first pairs are held out for validation losses
    img, cap, codes = (data[k][nv:nv + image_volume] for k in ("images", "captions", "codes"))
    val_img, val_cap, val_codes = (data[k][:nv] for k in ("images", "captions", "codes"))
    active = [k for k in LOSSES if image_volume > 0 or k == "mlm"]
    sched = LossScheduler({k: 1.0 for k in active})
    best = {"pppl": float("inf")}
    best_state = None
    for step in range(1, cfg.steps + 1):
        model.train()
        tb = text[torch.randint(len(text), (cfg.batch_size,), generator=g)]
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
    best["blimp"] = 100 * blimp_accuracy(model, data["blimp_good"], data["blimp_bad"])
    gm.save(model, out_dir)
    return best


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
