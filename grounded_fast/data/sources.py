"""Sources and targets for the grounding seq2seq decoders, from the demo corpus or Multi30k.

For every target sentence the three sources of the same content:
  C  image patch features (N, 49, 1280) of the rendered scene, from the shipped EfficientNet-Lite0;
  P  token states (N, L, 384) of an English paraphrase, from the shipped MiniLM;
  T  token states of the German sentence, from the same MiniLM (an English model: the German
     side is a weaker, word-piece-level signal, as a translation source in a low-resource setting);
and the target as word ids of a :class:`~grounded_fast.data.demo.Vocab` (BOS / EOS added).
Features are extracted once and kept in a :class:`~grounded_fast.data.features.FeatureCache`.
Multi30k has no images: it gives P and T only (target = caption 1, P = caption 2, T = German 1).

From a real corpus (:func:`corpus_grounding_data`, items of
:func:`grounded_fast.data.corpora.read_corpus`): target = English caption 1, P = English caption 2,
T = the first second-language caption (VATEX Chinese, Multi30k German) through the translation
encoder, C = the item's precomputed features (e.g. VATEX I3D clips) or its image through the
vision encoder.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .demo import DemoCorpus, Vocab, build_vocab
from .features import FeatureCache


@dataclass
class GroundingData:
    """Padded tensors of one split: ``sources[task] = (features (N, S, d), mask (N, S) bool)``,
    ``targets`` (N, T) int64 (ending in EOS, then padding), ``ids`` (N,) item ids, ``texts`` (N,)."""

    sources: Dict[str, Tuple[Tensor, Tensor]]
    targets: Tensor
    ids: List[str]
    texts: List[str]

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, index: Tensor) -> Tuple[Dict[str, Tuple[Tensor, Tensor]], Tensor]:
        """(sources, targets) of the rows ``index``, trimmed to their longest sequence."""
        srcs = {}
        for t, (f, m) in self.sources.items():
            f, m = f[index], m[index]
            keep = int(m.sum(1).max()) if len(index) else 0
            srcs[t] = (f[:, :keep], m[:, :keep])
        tgt = self.targets[index]
        return srcs, tgt[:, :int((tgt != 0).sum(1).max())]


def cached_text_states(cache: FeatureCache, ids: Sequence[str], texts: Dict[str, str], encoder,
                       progress: bool) -> Tuple[Tensor, Tensor]:
    """Token states (N, L, d) float and mask (N, L) bool of ``texts[id]`` for ``ids``, from the
    cache (computed and stored in batches where missing)."""
    out = cache.get_or_compute(list(ids), lambda b: [texts[i] for i in b],
                               lambda batch: _encode_text(encoder, batch), batch_size=64,
                               key=f"{encoder.cache_key}/states", progress=progress, return_tensors="pt")
    states, mask = out
    return states.float(), mask.bool()


def _encode_text(encoder, texts: List[str]):
    states, mask = encoder.encode(texts)
    return states.cpu().numpy(), mask.cpu().numpy()


def _pad_targets(vocab: Vocab, texts: Sequence[str], max_len: int) -> Tensor:
    rows = [vocab.encode(t)[1:][:max_len] for t in texts]      # drop BOS: the decoder input adds it
    out = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.as_tensor(r)
    return out


def multi30k_grounding_data(images: Sequence, cache_dir: str, text_encoder=None, max_target_len: int = 48,
                            vocab: Optional[Vocab] = None, progress: bool = True,
                            device=None) -> Tuple[GroundingData, Vocab]:
    """P / T sources and targets from Multi30k images (e.g. ``load_multi30k_builtin("train")``):
    target = English description 1, P = English description 2 (a paraphrase: an independent
    description of the same image), T = German description 1 (translation-like). No C source
    (Multi30k ships no image features). Returns (GroundingData, vocab built on the targets unless
    given). ``device``: where the default encoder runs (features are cached and returned on the CPU)."""
    from ..models.encoders import TextEncoder
    text_encoder = text_encoder or TextEncoder.from_pretrained(device=device)
    cache = FeatureCache(cache_dir, progress=progress)
    ids = [f"multi30k-{im.image_id}" for im in images]
    p_text = {i + "/P": im.en[1] for i, im in zip(ids, images)}
    t_text = {i + "/T": im.de[0] for i, im in zip(ids, images)}
    p_states, p_mask = cached_text_states(cache, list(p_text), p_text, text_encoder, progress)
    t_states, t_mask = cached_text_states(cache, list(t_text), t_text, text_encoder, progress)
    targets = [im.en[0] for im in images]
    vocab = vocab or build_vocab(targets)
    data = GroundingData(sources={"P": (p_states, p_mask), "T": (t_states, t_mask)},
                         targets=_pad_targets(vocab, targets, max_target_len), ids=ids, texts=targets)
    return data, vocab


def demo_grounding_data(corpus: DemoCorpus, cache_dir: str, text_encoder=None, vision_encoder=None,
                        paraphrase: int = 0, max_target_len: int = 48, vocab: Optional[Vocab] = None,
                        progress: bool = True, device=None) -> Tuple[Dict[str, GroundingData], Vocab]:
    """Per split ('train', 'val', 'test'), the C / P / T sources and targets of the demo corpus.

    ``paraphrase``: which English paraphrase is the P source (its German translation is T's text
    when ``translations`` has one per paraphrase; T is the German target otherwise). Returns
    ({split: GroundingData}, vocab) with the vocabulary built on the training targets unless given.
    ``device``: where the default encoders run (features are cached and returned on the CPU).
    """
    from ..models.encoders import TextEncoder, VisionEncoder
    text_encoder = text_encoder or TextEncoder.from_pretrained(device=device)
    vision_encoder = vision_encoder or VisionEncoder.from_pretrained(device=device)
    cache = FeatureCache(cache_dir, progress=progress)
    items = list(corpus)
    ids = [f"demo-{corpus.seed}-{it.scene_id}" for it in items]
    p_text = {i: it.paraphrases[paraphrase % len(it.paraphrases)] for i, it in zip(ids, items)}
    t_text = {i: it.translations[0] for i, it in zip(ids, items)}
    images = {i: it.image for i, it in zip(ids, items)}
    patches = cache.get_or_compute(ids, lambda b: [images[i] for i in b],
                                   lambda batch: vision_encoder.patches(batch).cpu().numpy(), batch_size=16,
                                   key=f"{vision_encoder.cache_key}/patches", progress=progress, return_tensors="pt")
    p_states, p_mask = cached_text_states(cache, [i + "/P" for i in ids], {i + "/P": p_text[i] for i in ids},
                                          text_encoder, progress)
    t_states, t_mask = cached_text_states(cache, [i + "/T" for i in ids], {i + "/T": t_text[i] for i in ids},
                                          text_encoder, progress)
    targets = [it.target for it in items]
    split_of = [it.split for it in items]
    vocab = vocab or build_vocab([t for t, s in zip(targets, split_of) if s == "train"])
    all_targets = _pad_targets(vocab, targets, max_target_len)
    out = {}
    for split in ("train", "val", "test"):
        rows = torch.tensor([k for k, s in enumerate(split_of) if s == split], dtype=torch.long)
        c_mask = torch.ones(len(rows), patches.shape[1], dtype=torch.bool)
        out[split] = GroundingData(
            sources={"C": (patches[rows].float(), c_mask), "P": (p_states[rows], p_mask[rows]),
                     "T": (t_states[rows], t_mask[rows])},
            targets=all_targets[rows], ids=[ids[k] for k in rows.tolist()], texts=[targets[k] for k in rows.tolist()])
    return out, vocab


def content_digest(data: bytes) -> str:
    """16 hex digits of the sha1 of ``data``: with an item id, the cache key of an encoded text or
    image, so that edited content is encoded again."""
    return hashlib.sha1(data).hexdigest()[:16]


def _padded_features(items: Sequence, what: str) -> Tuple[Tensor, Tensor]:
    """Each item's precomputed (T_i, D) features, zero-padded to (N, max T, D) float32, and the
    (N, max T) mask of real rows."""
    arrays = [it.features() for it in items]
    dims = {a.shape[1] for a in arrays}
    if len(dims) != 1:
        first = next(it for it, a in zip(items, arrays) if a.shape[1] != arrays[0].shape[1])
        raise ValueError(f"{what}: feature files differ in their dimension ({sorted(dims)}; e.g. "
                         f"{first.features_path} against {items[0].features_path})")
    longest = max(a.shape[0] for a in arrays)
    out = torch.zeros(len(arrays), longest, dims.pop())
    mask = torch.zeros(len(arrays), longest, dtype=torch.bool)
    for k, a in enumerate(arrays):
        out[k, :a.shape[0]] = torch.from_numpy(a.astype("float32", copy=False))
        mask[k, :a.shape[0]] = True
    return out, mask


def visual_source(items: Sequence, cache: FeatureCache, what: str, tag: str, vision_encoder=None,
                  use_features: bool = False, progress: bool = True) -> Tuple[Tensor, Tensor]:
    """The visual source of corpus items: (features (N, S, D) float32, mask (N, S) bool), from the
    items' precomputed feature files (``use_features``; zero-padded to the longest) or their images
    through ``vision_encoder`` (patches, cached under the item id and a digest of the image bytes).
    ``what`` names the items in errors (e.g. 'coco train')."""
    if use_features:
        return _padded_features(items, what)
    by_id = {}
    for it in items:
        raw = it.image_bytes if it.image_bytes is not None else (
            it.image_path.read_bytes() if it.image_path is not None else None)
        if raw is None:
            raise ValueError(f"{what} item {it.item_id!r}: has no image (give data.images or data.features)")
        by_id[f"{tag}/{it.item_id}/C:{content_digest(raw)}"] = it
    patches = cache.get_or_compute(list(by_id), lambda b: [by_id[i].image() for i in b],
                                   lambda batch: vision_encoder.patches(batch).cpu().numpy(), batch_size=16,
                                   key=f"{vision_encoder.cache_key}/patches", progress=progress,
                                   return_tensors="pt").float()
    return patches, torch.ones(patches.shape[:2], dtype=torch.bool)


def corpus_caption_image_data(items: Sequence, cache_dir: str, *, tag: str, text_encoder=None, vision_encoder=None,
                              use_features: bool = False, progress: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
    """Caption-image pairs of corpus items (e.g. COCO): the first caption's token states (N, L, d)
    and mask (N, L) from ``text_encoder`` (default the shipped MiniLM), and the visual source
    (N, S, D) (see :func:`visual_source`; default vision encoder the shipped EfficientNet-Lite0)."""
    from ..models.encoders import TextEncoder, VisionEncoder
    text_encoder = text_encoder or TextEncoder.from_pretrained()
    if not use_features:
        vision_encoder = vision_encoder or VisionEncoder.from_pretrained()
    cache = FeatureCache(cache_dir, progress=progress)
    text = {f"{tag}/{it.item_id}/caption:{content_digest(it.captions[0].encode())}": it.captions[0] for it in items}
    states, mask = cached_text_states(cache, list(text), text, text_encoder, progress)
    patches, _ = visual_source(items, cache, tag, tag, vision_encoder, use_features, progress)
    return states, mask, patches


def corpus_grounding_data(items: Dict[str, Sequence], cache_dir: str, *, tag: str, text_encoder=None,
                          translation_encoder=None, vision_encoder=None, use_features: bool = False,
                          max_target_len: int = 48, vocab: Optional[Vocab] = None,
                          progress: bool = True) -> Tuple[Dict[str, GroundingData], Vocab]:
    """Per split, the C / P / T sources and targets of a real corpus.

    items: split -> :class:`~grounded_fast.data.corpora.CorpusItem` list ('train', 'val', 'test').
    Target = ``captions[0]``, P = ``captions[1]`` (text encoder), T = ``other[0]`` (translation
    encoder, default the text encoder), C = the item's features (``use_features``) or its image
    (vision encoder). Encoded text and images are cached under
    ``cache_dir``, keyed by ``tag``, the item id and a digest of the text / image bytes (an edited
    caption is re-encoded). ValueError naming the split and item when an item lacks a source.
    Returns ({split: GroundingData}, vocab built on the training targets unless given).
    """
    from ..models.encoders import TextEncoder, VisionEncoder
    text_encoder = text_encoder or TextEncoder.from_pretrained()
    translation_encoder = translation_encoder or text_encoder
    cache = FeatureCache(cache_dir, progress=progress)
    for split, its in items.items():
        for it in its:
            if len(it.captions) < 2:
                raise ValueError(f"{tag} {split} item {it.item_id!r}: needs 2 English captions (the target and a "
                                 f"paraphrase, the P source), has {len(it.captions)}")
            if not it.other:
                raise ValueError(f"{tag} {split} item {it.item_id!r}: has no second-language caption (the T source)")
    if not use_features:
        vision_encoder = vision_encoder or VisionEncoder.from_pretrained()
    vocab = vocab or build_vocab([it.captions[0] for it in items["train"]])
    out = {}
    for split, its in items.items():
        p_text = {f"{tag}/{it.item_id}/P:{content_digest(it.captions[1].encode())}": it.captions[1] for it in its}
        t_text = {f"{tag}/{it.item_id}/T:{content_digest(it.other[0].encode())}": it.other[0] for it in its}
        sources = {"P": cached_text_states(cache, list(p_text), p_text, text_encoder, progress),
                   "T": cached_text_states(cache, list(t_text), t_text, translation_encoder, progress),
                   "C": visual_source(its, cache, f"{tag} {split}", tag, vision_encoder, use_features, progress)}
        targets = [it.captions[0] for it in its]
        out[split] = GroundingData(sources=sources, targets=_pad_targets(vocab, targets, max_target_len),
                                   ids=[it.item_id for it in its], texts=targets)
    return out, vocab
