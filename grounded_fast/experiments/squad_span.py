"""Extractive question answering (SQuAD) on a frozen text encoder: windows, a span head, answers.

As BERT is fine-tuned for SQuAD (Devlin et al. 2019), with the encoder frozen as GroundedBERT keeps
it: each question is encoded with its context as a sentence pair; a context longer than the
window is cut into windows of ``max_length`` tokens overlapping by ``stride`` tokens, each with
the question (its first ``MAX_QUESTION_TOKENS``). A head maps every token state (``[h; g]`` for a grounded variant) to a start
and an end logit; training is cross-entropy on the gold answer's first and last token in each
window (on the [CLS] token, position 0, when the window does not hold the answer or the question
has none). An answer is the span (start <= end, at most ``max_answer_tokens``, context tokens
only) with the highest start + end logit over the question's windows, cut from the context by the
tokens' character offsets; in SQuAD v2.0 the question is answered "" (no answer) when the [CLS]
score (start + end logit at position 0, its least over the windows) beats the best span.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.formats.squad import SquadExample

NOT_CONTEXT = -1        # the character offsets of a token outside the context (question, specials, padding)
MAX_QUESTION_TOKENS = 64    # a longer question is cut to its first 64 tokens (BERT's max_query_length)


def encode_squad(examples: Sequence[SquadExample], tokenizer, max_length: int, stride: int) -> Dict[str, torch.Tensor]:
    """Windows of ``examples`` (W of them, W >= N) as tensors: ``input_ids``, ``attention_mask``,
    ``token_type_ids`` (W, L = max_length); ``offsets`` (W, L, 2) character offsets of the context
    tokens in their context, ``NOT_CONTEXT`` elsewhere; ``example`` (W,) the example of each
    window; ``start`` / ``end`` (W,) the token positions of the first gold answer, 0 where the
    window does not hold it whole. Questions are cut to ``MAX_QUESTION_TOKENS``. ValueError for a
    tokenizer without character offsets (a slow one), or a question leaving a window no more room
    for context than ``stride``."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("SQuAD needs a fast (Rust) tokenizer: it maps answers to tokens by character offsets")
    questions = []
    for ex, q in zip(examples, tokenizer([e.question for e in examples], add_special_tokens=False,
                                         return_offsets_mapping=True)["offset_mapping"]):
        if len(q) > MAX_QUESTION_TOKENS:
            q = q[:MAX_QUESTION_TOKENS]
        room = max_length - len(q) - tokenizer.num_special_tokens_to_add(pair=True)
        if room <= stride:
            raise ValueError(f"question {ex.qid!r}: {len(q)} question tokens leave a window of {max_length} tokens "
                             f"room for {max(room, 0)} context tokens, not more than the stride ({stride}): raise "
                             "max_length or lower doc_stride")
        questions.append(ex.question[:q[-1][1]] if q else ex.question)
    enc = tokenizer(questions, [e.context for e in examples], truncation="only_second",
                    max_length=max_length, stride=stride, return_overflowing_tokens=True,
                    return_offsets_mapping=True, padding="max_length")
    n = len(enc["input_ids"])
    sample = np.asarray(enc["overflow_to_sample_mapping"], dtype=np.int64)
    is_context = np.array([[s == 1 for s in enc.sequence_ids(w)] for w in range(n)], dtype=bool).reshape(n, max_length)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(n, max_length, 2)
    offsets[~is_context] = NOT_CONTEXT
    empty = np.flatnonzero(~is_context.any(1))
    if empty.size:
        raise ValueError(f"question {examples[sample[empty[0]]].qid!r}: the question fills the window of {max_length} "
                         "tokens (no room for its context): raise max_length")
    # the gold span's character range per window ((-1, -1): no answer); the answer's first token is the
    # last context token starting at or before its first character, its last token the first context
    # token ending at or after its end; a window holds the answer when both lie within its context
    first = np.array([examples[i].answer_starts[0] if examples[i].answers else -1 for i in sample])
    last = np.array([first[w] + len(examples[i].answers[0]) if examples[i].answers else -1
                     for w, i in enumerate(sample)])
    lo = np.where(is_context, offsets[..., 0], np.iinfo(np.int64).max)
    hi = np.where(is_context, offsets[..., 1], -1)
    inside = (first >= 0) & (lo.min(1) <= first) & (hi.max(1) >= last)
    positions = np.arange(max_length)
    start = np.where(is_context & (lo <= first[:, None]), positions, -1).max(1)
    end = np.where(is_context & (hi >= last[:, None]), positions, max_length).min(1)
    start, end = np.where(inside, start, 0), np.where(inside, end, 0)
    out = {"input_ids": torch.tensor(enc["input_ids"]), "attention_mask": torch.tensor(enc["attention_mask"]),
           "offsets": torch.from_numpy(offsets), "example": torch.from_numpy(sample), "start": torch.from_numpy(start),
           "end": torch.from_numpy(end)}
    out["token_type_ids"] = (torch.tensor(enc["token_type_ids"]) if "token_type_ids" in enc
                             else torch.zeros_like(out["input_ids"]))
    return out


def span_logits(head: torch.nn.Module, states: torch.Tensor, attention_mask: torch.Tensor):
    """(start, end) logits (W, L) of ``head`` ((..., d) -> (..., 2)) on token states (W, L, d); padding -inf."""
    logits = head(states).float()
    pad = attention_mask == 0
    return logits[..., 0].masked_fill(pad, float("-inf")), logits[..., 1].masked_fill(pad, float("-inf"))


def span_loss(start_logits: torch.Tensor, end_logits: torch.Tensor, start: torch.Tensor, end: torch.Tensor):
    """Mean cross-entropy of the gold start and end positions (W,) under the logits (W, L)."""
    return 0.5 * (F.cross_entropy(start_logits, start) + F.cross_entropy(end_logits, end))


def predict_answers(examples: Sequence[SquadExample], windows: Dict[str, torch.Tensor], start_logits: torch.Tensor,
                    end_logits: torch.Tensor, max_answer_tokens: int = 30,
                    allow_no_answer: bool = False) -> Dict[str, str]:
    """qid -> answer text for every example: the best span over its windows (module doc); with
    ``allow_no_answer`` (SQuAD v2.0), "" where the no-answer score beats it. Logits (W, L)."""
    best: Dict[int, tuple] = {}
    null: Dict[int, float] = {}
    L = start_logits.shape[1]
    band = torch.triu(torch.ones(L, L, dtype=torch.bool)) & ~torch.triu(torch.ones(L, L, dtype=torch.bool),
                                                                         diagonal=max_answer_tokens)
    for w in range(start_logits.shape[0]):
        ex = int(windows["example"][w])
        s, e = start_logits[w].double(), end_logits[w].double()
        null[ex] = min(null.get(ex, float("inf")), float(s[0] + e[0]))
        ctx = windows["offsets"][w, :, 0] != NOT_CONTEXT
        score = (s[:, None] + e[None, :]).masked_fill(~(band & ctx[:, None] & ctx[None, :]), float("-inf"))
        k = int(score.argmax())
        i, j = divmod(k, L)
        if score[i, j] > float("-inf") and (ex not in best or float(score[i, j]) > best[ex][0]):
            best[ex] = (float(score[i, j]), int(windows["offsets"][w, i, 0]), int(windows["offsets"][w, j, 1]))
    out = {}
    for k, example in enumerate(examples):
        if k not in best or (allow_no_answer and null[k] > best[k][0]):
            out[example.qid] = ""
        else:
            out[example.qid] = example.context[best[k][1]:best[k][2]]
    return out


def frozen_states(encoder, windows: Dict[str, torch.Tensor], index: torch.Tensor, device,
                  transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """Token states (B, L, d) of the windows ``index`` under the frozen ``encoder`` (a
    :class:`~grounded_fast.models.encoders.TextEncoder`), then ``transform`` (e.g. ``[h; g]``), float32."""
    with torch.no_grad():
        h = encoder(windows["input_ids"][index].to(device), windows["attention_mask"][index].to(device),
                    windows["token_type_ids"][index].to(device)).float()
        return transform(h) if transform is not None else h


def evaluate_windows(head, encoder, windows: Dict[str, torch.Tensor], device, batch_size: int = 64,
                     transform=None) -> List[torch.Tensor]:
    """[start logits, end logits] (W, L) of every window, on the CPU, in batches."""
    starts, ends = [], []
    with torch.no_grad():
        for a in range(0, windows["input_ids"].shape[0], batch_size):
            idx = torch.arange(a, min(a + batch_size, windows["input_ids"].shape[0]))
            s, e = span_logits(head, frozen_states(encoder, windows, idx, device, transform),
                               windows["attention_mask"][idx].to(device))
            starts.append(s.cpu())
            ends.append(e.cpu())
    return [torch.cat(starts), torch.cat(ends)]
