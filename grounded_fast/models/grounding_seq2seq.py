"""The seq2seq grounding decoders of "Grounded and Well-rounded".

A Transformer decoder generates a target sentence from one or several *sources* of the same
content: C (captioning: image patch features), P (paraphrasing: an English paraphrase's token
states) and T (translation: the German sentence's token states). Setups, named as the paper names
them (:data:`SETUPS`):

- mono-task ``P`` / ``C`` / ``T``: the memory is that source, projected;
- multi-task ``P∨C``, ``P∨T``, ``P∨C∨T``: one model with a projection per source, each batch from
  one source (the training loop goes round-robin over them, :func:`round_robin`);
- multi-modal ``P∧C``, ``P∧T``, ``P∧C∧T``: the memory is the projected sources concatenated in the
  order C, P, T, with segment ids 0, 1, 2 (C, P, T; returned for the attention analysis).

``multitask`` and ``multimodal`` (the names of earlier versions) are read as ``P∨C∨T`` and
``P∧C∧T``; ``|`` and ``&`` may be typed for ``∨`` and ``∧``.

Per-source projection: Dropout(0.5), Linear(d_src, 2048), ReLU, Linear(2048, d_model).
Decoder: ``nn.TransformerDecoder`` (paper: 6 layers, d_model 512, 8 heads, FFN 2048, dropout 0.1),
learned positions, untied output layer, Xavier init. Gaussian noise (sigma) is added to the source
features while training (the paper's noise-injected models). Loss: label-smoothed (0.1)
cross-entropy with teacher forcing. Optimiser: transformers' Adafactor with relative step.
``forward`` returns the logits and every layer's cross-attention weights (B, heads, T, S_memory).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig

TASKS = ("C", "P", "T")          # memory order (and segment ids) of the multi-modal setups
OR, AND = "\u2228", "\u2227"      # ∨ multi-task, ∧ multi-modal
#: the paper's nine setups: mono-task, multi-task (∨), multi-modal (∧)
SETUPS = ("P", "C", "T", f"P{OR}C", f"P{OR}T", f"P{OR}C{OR}T", f"P{AND}C", f"P{AND}T", f"P{AND}C{AND}T")
_ALIASES = {"multitask": f"P{OR}C{OR}T", "multimodal": f"P{AND}C{AND}T"}


def canonical_setup(name: str) -> str:
    """The paper's spelling of a setup name: 'multimodal' -> 'P∧C∧T', 'C|P' -> 'P∨C', 'T&P' ->
    'P∧T' (sources in the order P, C, T); a name that is no setup is returned unchanged."""
    if not isinstance(name, str):
        return name
    name = _ALIASES.get(name, name).replace("|", OR).replace("&", AND).replace(" ", "")
    for op in (OR, AND):
        parts = name.split(op)
        if len(parts) > 1 and set(parts) <= set(TASKS) and len(set(parts)) == len(parts):
            return op.join(t for t in ("P", "C", "T") if t in parts)
    return name


def setup_sources(setup: str) -> Tuple[str, ...]:
    """The sources a setup uses, in memory order (C, P, T): 'P∧C' -> ('C', 'P')."""
    parts = set(canonical_setup(setup).replace(OR, " ").replace(AND, " ").split())
    return tuple(t for t in TASKS if t in parts)


def setup_kind(setup: str) -> str:
    """'mono-task', 'multi-task' or 'multi-modal'."""
    setup = canonical_setup(setup)
    return "multi-task" if OR in setup else "multi-modal" if AND in setup else "mono-task"


@dataclasses.dataclass
class GroundingSeq2SeqConfig(ModelConfig):
    vocab_size: int = 1000
    setup: str = f"P{AND}C{AND}T"
    source_dims: Dict[str, int] = dataclasses.field(default_factory=lambda: {"C": 1280, "P": 384, "T": 384})
    d_model: int = 512
    num_layers: int = 6
    num_heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.1
    proj_hidden: int = 2048
    proj_dropout: float = 0.5
    max_len: int = 64
    noise_sigma: float = 0.0
    label_smoothing: float = 0.1
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    presets = {
        "tiny": dict(d_model=64, num_layers=2, num_heads=4, ffn_dim=128, proj_hidden=128),
        "small": dict(d_model=256, num_layers=3, num_heads=4, ffn_dim=1024, proj_hidden=1024),
        "paper": dict(d_model=512, num_layers=6, num_heads=8, ffn_dim=2048, proj_hidden=2048),
    }

    def check(self) -> None:
        object.__setattr__(self, "setup", canonical_setup(self.setup))
        super().check()

    def validate(self) -> None:
        if self.setup not in SETUPS:
            raise ValueError(f"GroundingSeq2SeqConfig.setup must be one of {SETUPS}, got {self.setup!r}")
        missing = [t for t in self.tasks if t not in self.source_dims]
        if missing:
            raise ValueError(f"GroundingSeq2SeqConfig.source_dims lacks {missing} needed by setup {self.setup!r}")
        if self.d_model % self.num_heads:
            raise ValueError(f"GroundingSeq2SeqConfig.d_model ({self.d_model}) must be divisible by num_heads "
                             f"({self.num_heads})")
        for key in ("vocab_size", "d_model", "num_layers", "num_heads", "ffn_dim", "proj_hidden", "max_len"):
            if getattr(self, key) < 1:
                raise ValueError(f"GroundingSeq2SeqConfig.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("dropout", "proj_dropout", "label_smoothing"):
            if not 0 <= getattr(self, key) < 1:
                raise ValueError(f"GroundingSeq2SeqConfig.{key} must be in [0, 1), got {getattr(self, key)}")
        if self.noise_sigma < 0:
            raise ValueError(f"GroundingSeq2SeqConfig.noise_sigma must be >= 0, got {self.noise_sigma}")

    @property
    def tasks(self) -> Tuple[str, ...]:
        """The sources this setup uses (memory order C, P, T)."""
        return setup_sources(self.setup)

    @property
    def kind(self) -> str:
        """'mono-task', 'multi-task' or 'multi-modal'."""
        return setup_kind(self.setup)


class _DecoderLayer(nn.TransformerDecoderLayer):
    """nn.TransformerDecoderLayer that keeps its cross-attention weights (B, heads, T, S)."""

    last_cross_attention: Optional[Tensor] = None

    def _mha_block(self, x, mem, attn_mask, key_padding_mask, is_causal=False):
        out, weights = self.multihead_attn(x, mem, mem, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                           is_causal=is_causal, need_weights=True, average_attn_weights=False)
        self.last_cross_attention = weights
        return self.dropout2(out)


class SourceProjection(nn.Sequential):
    """Dropout, Linear(d_src, hidden), ReLU, Linear(hidden, d_model): (B, S, d_src) -> (B, S, d_model)."""

    def __init__(self, d_src: int, hidden: int, d_model: int, dropout: float):
        super().__init__(nn.Dropout(dropout), nn.Linear(d_src, hidden), nn.ReLU(), nn.Linear(hidden, d_model))


Sources = Dict[str, Tuple[Tensor, Tensor]]   # task -> (features (B, S, d_src), mask (B, S) True = real)


class GroundingSeq2Seq(nn.Module):
    """Decoder of a target sentence from C / P / T sources (see the module docstring)."""

    def __init__(self, config: GroundingSeq2SeqConfig):
        super().__init__()
        self.config = c = config
        self.proj = nn.ModuleDict({t: SourceProjection(c.source_dims[t], c.proj_hidden, c.d_model, c.proj_dropout)
                                   for t in c.tasks})
        self.embed = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_id)
        self.pos = nn.Embedding(c.max_len, c.d_model)
        layer = _DecoderLayer(c.d_model, c.num_heads, c.ffn_dim, c.dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, c.num_layers)
        self.out = nn.Linear(c.d_model, c.vocab_size)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def memory(self, sources: Sources, task: Optional[str] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """(memory (B, S, d_model), padding mask (B, S) True = pad, segment ids (S,)) for a batch."""
        c = self.config
        if c.kind == "multi-modal":
            use = list(c.tasks)
        elif c.kind == "multi-task":
            if task not in c.tasks:
                raise ValueError(f"multi-task model {c.setup}: pass task= one of {list(c.tasks)}, got {task!r}")
            use = [task]
        else:
            use = [c.setup]
        missing = [t for t in use if t not in sources]
        if missing:
            raise ValueError(f"sources lack {missing} (setup {c.setup!r} needs {use})")
        mems, pads, segs = [], [], []
        for t in use:
            feats, mask = sources[t]
            if self.training and c.noise_sigma > 0:
                feats = feats + c.noise_sigma * torch.randn_like(feats)
            mems.append(self.proj[t](feats))
            pads.append(~mask.bool())
            segs.append(torch.full((feats.shape[1],), TASKS.index(t), dtype=torch.long, device=feats.device))
        return torch.cat(mems, 1), torch.cat(pads, 1), torch.cat(segs)

    def forward(self, sources: Sources, tgt_in: Tensor, task: Optional[str] = None
                ) -> Tuple[Tensor, List[Tensor], Tensor]:
        """sources: task -> (features (B, S_t, d_t), mask (B, S_t)); tgt_in (B, T) token ids (teacher
        forcing input, starting with BOS). Returns (logits (B, T, V), cross-attention per layer
        [(B, heads, T, S)], segment ids (S,) of the memory positions)."""
        B, T = tgt_in.shape
        if T > self.config.max_len:
            raise ValueError(f"target length {T} exceeds max_len {self.config.max_len}")
        mem, mem_pad, segs = self.memory(sources, task)
        pos = torch.arange(T, device=tgt_in.device)
        x = self.embed(tgt_in) + self.pos(pos)[None]
        causal = torch.ones(T, T, dtype=torch.bool, device=tgt_in.device).triu(1)  # True = masked
        h = self.decoder(x, mem, tgt_mask=causal, tgt_is_causal=True, tgt_key_padding_mask=tgt_in == self.config.pad_id,
                         memory_key_padding_mask=mem_pad)
        attn = [layer.last_cross_attention for layer in self.decoder.layers]
        return self.out(h), attn, segs

    def loss(self, logits: Tensor, tgt_out: Tensor) -> Tensor:
        """Label-smoothed cross-entropy over non-pad target positions: logits (B, T, V), tgt_out (B, T)."""
        return F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=self.config.pad_id,
                               label_smoothing=self.config.label_smoothing)


def token_accuracy(logits: Tensor, tgt_out: Tensor, pad_id: int = 0) -> float:
    """Teacher-forced accuracy of the argmax predictions over non-pad positions."""
    keep = tgt_out != pad_id
    return float((logits.argmax(-1)[keep] == tgt_out[keep]).float().mean()) if keep.any() else 0.0


def shift_targets(tokens: Tensor, bos_id: int, pad_id: int) -> Tuple[Tensor, Tensor]:
    """tokens (B, T) ending in EOS (then padding) -> (decoder input starting with BOS, target)."""
    bos = torch.full_like(tokens[:, :1], bos_id)
    tgt_in = torch.cat([bos, tokens[:, :-1]], 1)
    tgt_in = torch.where(tokens == pad_id, torch.full_like(tgt_in, pad_id), tgt_in)
    return tgt_in, tokens


def make_optimizer(model: nn.Module):
    """transformers' Adafactor with relative step size (the paper's optimiser): step size
    min(1e-2, 1/sqrt(step)) scaled by the parameter's RMS."""
    from transformers.optimization import Adafactor
    return Adafactor([p for p in model.parameters() if p.requires_grad], scale_parameter=True, relative_step=True,
                     warmup_init=False, lr=None)


def round_robin(tasks: Sequence[str], steps: int) -> List[str]:
    """The multi-task schedule: tasks in turn, one batch each, for ``steps`` batches."""
    return [tasks[i % len(tasks)] for i in range(steps)]
