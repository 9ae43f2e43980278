"""GroundedBERT: a frozen text encoder grounded in a frozen vision encoder by partial optimal transport.

Inputs are the frozen encoders' outputs (computed once and cached by the caller, or on the fly
with :meth:`GroundedBERT.encode` from the shipped MiniLM and EfficientNet-Lite0): token states
h (B, L, d_text) with a padding mask, and image patch embeddings (B, P, d_vision). The encoders
are *not* part of this module's state (their weights ship in their packages), so checkpoints hold
only the trained parts.

Pre-training (:meth:`pretrain_losses`):
- visual grounding g_i = MLP(h_i) (d_ground), image projection u_k = MLP(patch_k) (d_ground);
- alignment loss: entropic **partial** OT between {g_i} and {u_k} on the cosine cost, transporting a
  fraction ``ot_mass`` (s) of the mass (``grounded_fast.nn.PartialOTLoss``, reg ``ot_reg``); the
  ablations ``ot='balanced'`` (SinkhornLoss) and ``ot='none'``;
- global image-sentence matching: BCE of a head on [t_CLS; v_0] (v_0 = mean of the projected
  patches) for the true pairs and for shuffled negatives (a derangement of the batch);
- total L = L_match + lambda * L_OT (``ot_weight``).
Downstream (:meth:`classify`): the representation [h_i; g_i] with a classification head on the CLS
position, for GLUE-format tasks.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import PartialOTLoss, SinkhornLoss
from .config import ModelConfig

OT_MODES = ("partial", "balanced", "none")


@dataclasses.dataclass
class GroundedBERTConfig(ModelConfig):
    text_dim: int = 384
    vision_dim: int = 1280
    ground_dim: int = 256
    hidden_dim: int = 512
    dropout: float = 0.1
    ot: str = "partial"
    ot_mass: float = 0.5
    ot_reg: float = 0.05
    ot_weight: float = 1.0
    ot_max_iter: int = 200
    num_labels: int = 2

    presets = {
        "tiny": dict(ground_dim=64, hidden_dim=128),
        "small": dict(ground_dim=128, hidden_dim=256),
        "paper": dict(ground_dim=768, hidden_dim=768),
    }

    def validate(self) -> None:
        if self.ot not in OT_MODES:
            raise ValueError(f"GroundedBERTConfig.ot must be one of {OT_MODES}, got {self.ot!r}")
        if not 0 < self.ot_mass <= 1:
            raise ValueError(f"GroundedBERTConfig.ot_mass must be in (0, 1], got {self.ot_mass}")
        if not self.ot_reg > 0:
            raise ValueError(f"GroundedBERTConfig.ot_reg must be > 0, got {self.ot_reg}")
        if not self.ot_weight >= 0:
            raise ValueError(f"GroundedBERTConfig.ot_weight must be >= 0, got {self.ot_weight}")
        for key in ("text_dim", "vision_dim", "ground_dim", "hidden_dim", "num_labels", "ot_max_iter"):
            if getattr(self, key) < 1:
                raise ValueError(f"GroundedBERTConfig.{key} must be >= 1, got {getattr(self, key)}")


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


def derangement(B: int, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
    """A random permutation of range(B) with no fixed point (B >= 2): the shuffled negatives."""
    if B < 2:
        raise ValueError("matching negatives need a batch of at least 2")
    shift = int(torch.randint(1, B, (1,), generator=generator))
    perm = torch.randperm(B, generator=generator)
    out = torch.empty(B, dtype=torch.long)
    out[perm] = perm.roll(shift)        # a cyclic shift along a random order: never i -> i
    return out.to(device)


class GroundedBERT(nn.Module):
    """See the module docstring. All inputs are frozen-encoder outputs."""

    def __init__(self, config: GroundedBERTConfig):
        super().__init__()
        self.config = c = config
        self.ground = _mlp(c.text_dim, c.hidden_dim, c.ground_dim, c.dropout)
        self.image = _mlp(c.vision_dim, c.hidden_dim, c.ground_dim, c.dropout)
        self.match = _mlp(c.text_dim + c.ground_dim, c.hidden_dim, 1, c.dropout)
        self.classifier = _mlp(c.text_dim + c.ground_dim, c.hidden_dim, c.num_labels, c.dropout)
        if c.ot == "partial":
            self.ot_loss = PartialOTLoss(reg=c.ot_reg, mass=c.ot_mass, cost="cosine", max_iter=c.ot_max_iter)
        elif c.ot == "balanced":
            self.ot_loss = SinkhornLoss(reg=c.ot_reg, cost="cosine", max_iter=c.ot_max_iter)
        else:
            self.ot_loss = None

    def representation(self, text_states: Tensor) -> Tensor:
        """[h_i; g_i]: (B, L, d_text) -> (B, L, d_text + d_ground)."""
        return torch.cat([text_states, self.ground(text_states)], -1)

    def pretrain_losses(self, text_states: Tensor, text_mask: Tensor, patches: Tensor,
                        generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        """text_states (B, L, d_text), text_mask (B, L) True = token, patches (B, P, d_vision).
        Returns {'loss', 'match', 'ot'} (scalars; 'ot' is 0 with ot='none')."""
        g = self.ground(text_states)                       # (B, L, d_ground)
        u = self.image(patches)                            # (B, P, d_ground)
        if self.ot_loss is not None:
            # float32 features, outside any autocast: the cost matrix too is float32 (the solver's
            # own accumulation is float32 whatever its inputs)
            with torch.autocast(g.device.type, enabled=False):
                l_ot = self.ot_loss(g.float(), u.float(), x_mask=text_mask.bool()).mean()
        else:
            l_ot = g.new_zeros(())
        t_cls, v0 = text_states[:, 0], u.mean(1)
        neg = derangement(text_states.shape[0], generator, text_states.device)
        pos_logit = self.match(torch.cat([t_cls, v0], -1)).squeeze(-1)
        neg_logit = self.match(torch.cat([t_cls, v0[neg]], -1)).squeeze(-1)
        logits = torch.cat([pos_logit, neg_logit])
        labels = torch.cat([torch.ones_like(pos_logit), torch.zeros_like(neg_logit)])
        l_match = F.binary_cross_entropy_with_logits(logits, labels)
        return {"loss": l_match + self.config.ot_weight * l_ot, "match": l_match.detach(), "ot": l_ot.detach()}

    def classify(self, text_states: Tensor, text_mask: Optional[Tensor] = None) -> Tensor:
        """Logits (B, num_labels) from the CLS position of [h; g]."""
        return self.classifier(self.representation(text_states[:, :1])[:, 0])

    @staticmethod
    def encode(texts, images=None, text_encoder=None, vision_encoder=None):
        """Frozen features from raw inputs with the shipped encoders (loaded on first use):
        (text_states (B, L, 384), text_mask (B, L)) and, with images, patches (B, 49, 1280)."""
        from .encoders import TextEncoder, VisionEncoder
        text_encoder = text_encoder or TextEncoder.from_pretrained()
        states, mask = text_encoder.encode(list(texts))
        if images is None:
            return states, mask
        vision_encoder = vision_encoder or VisionEncoder.from_pretrained()
        return states, mask, vision_encoder.patches(images)
