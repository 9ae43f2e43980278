"""A FLAVA-style multitask model ("Acquiring Linguistic Knowledge from Multimodal Input").

Text encoder, patch image encoder (ViT-style: non-overlapping pixel patches, linear embedding, CLS,
learned positions) and a multimodal encoder over [CLS_mm; text states; image states]. Losses:

- MLM: 40% of the text tokens masked (80% [MASK] / 10% random / 10% kept), predicted from the text
  encoder;
- MIM: 40% of the patches replaced by a learned mask embedding, their *codes* predicted from the
  image encoder. The paper's targets come from the DALL-E dVAE tokenizer; here a k-means codebook
  fitted on the pixel patches (:class:`KMeansCodebook`, scikit-learn) gives the discrete targets;
- MMM: masked text and masked image together through the multimodal encoder, predicting tokens and
  codes;
- ITM: 10% of the pairs get another image of the batch (a derangement), BCE on the multimodal CLS;
- contrastive: symmetric InfoNCE between projected text and image CLS with a learned logit scale
  clamped to [0, ln 100].
:class:`LossScheduler` is the paper's modality-specific early stopping of the loss weights.
Evaluation: pseudo-log-likelihood (:meth:`FlavaModel.pseudo_log_likelihood`), giving
pseudo-perplexity and BLiMP accuracy (good > bad).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig

LOSSES = ("mlm", "mim", "mmm_text", "mmm_image", "itm", "contrastive")


@dataclasses.dataclass
class FlavaConfig(ModelConfig):
    vocab_size: int = 30522
    d_model: int = 768
    text_layers: int = 12
    image_layers: int = 12
    mm_layers: int = 6
    num_heads: int = 12
    ffn_dim: int = 3072
    dropout: float = 0.1
    max_text_len: int = 64
    image_size: int = 224
    patch_size: int = 16
    codebook_size: int = 8192
    text_mask_prob: float = 0.4
    image_mask_prob: float = 0.4
    itm_negative_prob: float = 0.1
    proj_dim: int = 256
    pad_id: int = 0
    cls_id: int = 101
    sep_id: int = 102
    mask_id: int = 103

    presets = {
        "tiny": dict(d_model=64, text_layers=2, image_layers=2, mm_layers=1, num_heads=4, ffn_dim=128, image_size=32,
                     patch_size=8, codebook_size=64, proj_dim=32),
        "small": dict(d_model=128, text_layers=3, image_layers=3, mm_layers=1, num_heads=4, ffn_dim=512,
                      image_size=32, patch_size=8, codebook_size=256, proj_dim=64),
        # the ablation authors' "half-size" FLAVA (alkmi/models/lightning_flava.py): 516-d (12 heads), 6 text,
        # 6 image and 6 multimodal layers, projection 516; the rest as FLAVA
        "half": dict(d_model=516, text_layers=6, image_layers=6, mm_layers=6, num_heads=12, proj_dim=516),
        "paper": {},
    }

    def validate(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(f"FlavaConfig.d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        if self.image_size % self.patch_size:
            raise ValueError(f"FlavaConfig.image_size ({self.image_size}) must be a multiple of patch_size "
                             f"({self.patch_size})")
        for key in ("text_mask_prob", "image_mask_prob", "itm_negative_prob"):
            if not 0 <= getattr(self, key) < 1:
                raise ValueError(f"FlavaConfig.{key} must be in [0, 1), got {getattr(self, key)}")
        for key in ("vocab_size", "d_model", "text_layers", "image_layers", "mm_layers", "codebook_size", "proj_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"FlavaConfig.{key} must be >= 1, got {getattr(self, key)}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def patchify(images: Tensor, patch: int) -> Tensor:
    """(B, 3, H, W) -> (B, (H/p)(W/p), 3 p p) row-major non-overlapping patches."""
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // patch, patch, W // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(B, (H // patch) * (W // patch), C * patch * patch)


class KMeansCodebook:
    """Discrete image-patch targets for MIM: k-means (scikit-learn) on pixel patches, standing in
    for the DALL-E tokenizer of the paper. ``fit(images)``, ``encode(images) -> (B, P) int64``."""

    def __init__(self, size: int, patch: int, seed: int = 0):
        self.size, self.patch, self.seed = size, patch, seed
        self.centroids: Optional[Tensor] = None

    def fit(self, images: Tensor, max_patches: int = 100_000) -> "KMeansCodebook":
        from sklearn.cluster import MiniBatchKMeans
        x = patchify(images.float(), self.patch).reshape(-1, 3 * self.patch ** 2).numpy()
        rng = np.random.default_rng(self.seed)
        if len(x) > max_patches:
            x = x[rng.choice(len(x), max_patches, replace=False)]
        k = min(self.size, len(x))
        km = MiniBatchKMeans(n_clusters=k, random_state=self.seed, n_init=3, batch_size=1024).fit(x)
        self.centroids = torch.as_tensor(km.cluster_centers_, dtype=torch.float32)
        return self

    def encode(self, images: Tensor) -> Tensor:
        if self.centroids is None:
            raise RuntimeError("KMeansCodebook.encode before fit")
        x = patchify(images.float(), self.patch)
        d = torch.cdist(x, self.centroids.to(x.device)[None].expand(x.shape[0], -1, -1))
        return d.argmin(-1)

    def state_dict(self) -> dict:
        return {"size": self.size, "patch": self.patch, "seed": self.seed, "centroids": self.centroids}

    @classmethod
    def from_state_dict(cls, state: dict) -> "KMeansCodebook":
        cb = cls(state["size"], state["patch"], state["seed"])
        cb.centroids = state["centroids"]
        return cb


def _encoder(c: FlavaConfig, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(c.d_model, c.num_heads, c.ffn_dim, c.dropout, batch_first=True,
                                       norm_first=True, activation="gelu")
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class FlavaModel(nn.Module):
    """See the module docstring. Text: token ids (B, L) starting with [CLS]; images (B, 3, H, W)."""

    def __init__(self, config: FlavaConfig):
        super().__init__()
        self.config = c = config
        self.tok = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_id)
        self.tpos = nn.Embedding(c.max_text_len, c.d_model)
        self.text_enc = _encoder(c, c.text_layers)
        self.patch_embed = nn.Linear(3 * c.patch_size ** 2, c.d_model)
        self.img_cls = nn.Parameter(torch.zeros(1, 1, c.d_model))
        self.img_mask = nn.Parameter(torch.zeros(1, 1, c.d_model))
        self.ipos = nn.Parameter(torch.zeros(1, 1 + c.num_patches, c.d_model))
        self.image_enc = _encoder(c, c.image_layers)
        self.mm_cls = nn.Parameter(torch.zeros(1, 1, c.d_model))
        self.mm_type = nn.Embedding(2, c.d_model)
        self.mm_enc = _encoder(c, c.mm_layers)
        self.mlm_head = nn.Linear(c.d_model, c.vocab_size)
        self.mim_head = nn.Linear(c.d_model, c.codebook_size)
        self.mmm_text_head = nn.Linear(c.d_model, c.vocab_size)
        self.mmm_image_head = nn.Linear(c.d_model, c.codebook_size)
        self.itm_head = nn.Linear(c.d_model, 1)
        self.text_proj = nn.Linear(c.d_model, c.proj_dim)
        self.image_proj = nn.Linear(c.d_model, c.proj_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        for p in (self.img_cls, self.img_mask, self.ipos, self.mm_cls):
            nn.init.normal_(p, std=0.02)

    # ----------------------------------------------------------------- encoders
    def text_parameters(self) -> List[nn.Parameter]:
        """The text encoder's parameters (token and position embeddings, its layers), the part
        :meth:`text` runs: what the GLUE evaluation fine-tunes and the authors' own text learning
        rate applies to."""
        return [p for m in (self.tok, self.tpos, self.text_enc) for p in m.parameters()]

    def text(self, ids: Tensor) -> Tensor:
        """ids (B, L) -> states (B, L, d); padding (pad_id) is masked in attention."""
        L = ids.shape[1]
        if L > self.config.max_text_len:
            raise ValueError(f"text length {L} exceeds max_text_len {self.config.max_text_len}")
        x = self.tok(ids) + self.tpos(torch.arange(L, device=ids.device))[None]
        return self.text_enc(x, src_key_padding_mask=ids == self.config.pad_id)

    def image(self, images: Tensor, patch_mask: Optional[Tensor] = None) -> Tensor:
        """images (B, 3, H, W), patch_mask (B, P) True = masked -> states (B, 1 + P, d) (CLS first)."""
        x = self.patch_embed(patchify(images, self.config.patch_size))
        if patch_mask is not None:
            x = torch.where(patch_mask[..., None], self.img_mask.expand_as(x), x)
        x = torch.cat([self.img_cls.expand(x.shape[0], -1, -1), x], 1) + self.ipos
        return self.image_enc(x)

    def multimodal(self, text_states: Tensor, ids: Tensor, image_states: Tensor) -> Tensor:
        """-> states (B, 1 + L + 1 + P, d): [CLS_mm; text; image]."""
        B = text_states.shape[0]
        t = text_states + self.mm_type.weight[0]
        v = image_states + self.mm_type.weight[1]
        x = torch.cat([self.mm_cls.expand(B, -1, -1), t, v], 1)
        pad = torch.cat([torch.zeros(B, 1, dtype=torch.bool, device=ids.device), ids == self.config.pad_id,
                         torch.zeros(B, image_states.shape[1], dtype=torch.bool, device=ids.device)], 1)
        return self.mm_enc(x, src_key_padding_mask=pad)

    # ----------------------------------------------------------------- masking
    def mask_text(self, ids: Tensor, generator: Optional[torch.Generator] = None):
        """BERT-style masking of non-special tokens: (masked ids, labels with -100 where not masked)."""
        c = self.config
        special = (ids == c.pad_id) | (ids == c.cls_id) | (ids == c.sep_id)
        r = torch.rand(ids.shape, generator=generator).to(ids.device)
        chosen = (r < c.text_mask_prob) & ~special
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        r2 = torch.rand(ids.shape, generator=generator).to(ids.device)
        rand_tok = torch.randint(0, c.vocab_size, ids.shape, generator=generator).to(ids.device)
        out = torch.where(chosen & (r2 < 0.8), torch.full_like(ids, c.mask_id), ids)
        out = torch.where(chosen & (r2 >= 0.8) & (r2 < 0.9), rand_tok, out)
        return out, labels

    def mask_patches(self, B: int, device, generator: Optional[torch.Generator] = None) -> Tensor:
        P = self.config.num_patches
        m = torch.rand(B, P, generator=generator) < self.config.image_mask_prob
        m[m.sum(1) == 0, 0] = True  # at least one masked patch per image
        return m.to(device)

    # ----------------------------------------------------------------- losses
    def losses(self, ids: Optional[Tensor] = None, images: Optional[Tensor] = None, codes: Optional[Tensor] = None,
               paired: bool = False, generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        """The losses this batch allows: text -> MLM; images + codes -> MIM; paired text and images
        (+ codes) -> MMM, ITM, contrastive. ids (B, L), images (B, 3, H, W), codes (B, P) int64."""
        out: Dict[str, Tensor] = {}
        if ids is not None:
            mids, labels = self.mask_text(ids, generator)
            chosen = labels != -100      # the head only where a prediction is scored (V is large)
            out["mlm"] = F.cross_entropy(self.mlm_head(self.text(mids)[chosen]), labels[chosen])
        if images is not None and codes is not None:
            pm = self.mask_patches(images.shape[0], images.device, generator)
            logits = self.mim_head(self.image(images, pm)[:, 1:])
            out["mim"] = F.cross_entropy(logits[pm], codes[pm])
        if paired and ids is not None and images is not None:
            B = ids.shape[0]
            t, v = self.text(ids), self.image(images)
            zt = F.normalize(self.text_proj(t[:, 0]), dim=-1)
            zv = F.normalize(self.image_proj(v[:, 0]), dim=-1)
            scale = self.logit_scale.clamp(0, math.log(100)).exp()
            sim = scale * zt @ zv.T
            target = torch.arange(B, device=ids.device)
            out["contrastive"] = 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target))
            if B >= 2:
                from .groundedbert import derangement
                swap = torch.rand(B, generator=generator).to(ids.device) < self.config.itm_negative_prob
                perm = derangement(B, generator, ids.device)
                v_itm = torch.where(swap[:, None, None], v[perm], v)
                itm_logit = self.itm_head(self.multimodal(t, ids, v_itm)[:, 0]).squeeze(-1)
                out["itm"] = F.binary_cross_entropy_with_logits(itm_logit, (~swap).float())
            if codes is not None:
                mids, labels = self.mask_text(ids, generator)
                pm = self.mask_patches(B, images.device, generator)
                h = self.multimodal(self.text(mids), mids, self.image(images, pm))
                L = ids.shape[1]
                chosen = labels != -100
                out["mmm_text"] = F.cross_entropy(self.mmm_text_head(h[:, 1:1 + L][chosen]), labels[chosen])
                img_logits = self.mmm_image_head(h[:, 2 + L:])
                out["mmm_image"] = F.cross_entropy(img_logits[pm], codes[pm])
        return {k: torch.nan_to_num(v) for k, v in out.items()}  # a batch with nothing masked gives NaN

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def pseudo_log_likelihood(self, ids: Tensor, batch_size: int = 256) -> Tensor:
        """(B,) sum over the non-special tokens of log p(token | the sentence with it masked)."""
        c = self.config
        rows, cols = torch.nonzero((ids != c.pad_id) & (ids != c.cls_id) & (ids != c.sep_id), as_tuple=True)
        pll = torch.zeros(ids.shape[0], device=ids.device)
        for s in range(0, len(rows), batch_size):
            r, k = rows[s:s + batch_size], cols[s:s + batch_size]
            masked = ids[r].clone()
            masked[torch.arange(len(r)), k] = c.mask_id
            logp = torch.log_softmax(self.mlm_head(self.text(masked)[torch.arange(len(r)), k]), -1)
            pll.index_add_(0, r, logp.gather(1, ids[r, k][:, None])[:, 0])
        return pll


def pseudo_perplexity(model: FlavaModel, ids: Tensor) -> float:
    """exp(- total PLL / number of scored tokens) over a batch of sentences (B, L)."""
    c = model.config
    n = int(((ids != c.pad_id) & (ids != c.cls_id) & (ids != c.sep_id)).sum())
    return math.exp(-float(model.pseudo_log_likelihood(ids).sum()) / max(n, 1))


def blimp_accuracy(model: FlavaModel, good: Tensor, bad: Tensor) -> float:
    """Share of minimal pairs whose grammatical sentence gets the higher PLL: good, bad (B, L) ids."""
    return float((model.pseudo_log_likelihood(good) > model.pseudo_log_likelihood(bad)).float().mean())


class LossScheduler:
    """Modality-specific early stopping of the loss weights (the paper's scheduler).

    After every evaluation check, each loss's validation value is compared with its best: an
    improvement multiplies its weight by 1.1 (capped at the initial weight) and resets its patience;
    no improvement multiplies it by 0.7 and uses up one unit of patience; when patience runs out the
    weight becomes 0 (that loss is stopped). A stopped loss is revived at 0.7 x its initial weight
    (with fresh patience) after ``revive_after`` (6) checks.
    """

    def __init__(self, initial: Dict[str, float], patience: int = 3, revive_after: int = 6):
        self.initial = dict(initial)
        self.weights = dict(initial)
        self.patience = patience
        self.revive_after = revive_after
        self.best = {k: math.inf for k in initial}
        self.left = {k: patience for k in initial}
        self.stopped_for = {k: 0 for k in initial}

    def step(self, values: Dict[str, float]) -> Dict[str, float]:
        """Update with this check's validation losses; returns the new weights."""
        for k in self.initial:
            if self.weights[k] == 0:
                self.stopped_for[k] += 1
                if self.stopped_for[k] >= self.revive_after:
                    self.weights[k] = 0.7 * self.initial[k]
                    self.left[k], self.stopped_for[k] = self.patience, 0
                continue
            if k not in values:
                continue
            if values[k] < self.best[k]:
                self.best[k] = values[k]
                self.weights[k] = min(self.weights[k] * 1.1, self.initial[k])
                self.left[k] = self.patience
            else:
                self.left[k] -= 1
                self.weights[k] = 0.0 if self.left[k] <= 0 else self.weights[k] * 0.7
        return dict(self.weights)

    def total(self, losses: Dict[str, Tensor]) -> Tensor:
        """Weighted sum of the losses present (weight 0 drops a loss)."""
        terms = [self.weights.get(k, 0.0) * v for k, v in losses.items() if self.weights.get(k, 0.0) > 0]
        return torch.stack(terms).sum() if terms else next(iter(losses.values())) * 0.0

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("initial", "weights", "patience", "revive_after", "best", "left",
                                              "stopped_for")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)
