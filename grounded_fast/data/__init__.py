"""Data: loaders for the real formats, the built-in demo corpus, and a cache of encoder features.

- :mod:`.loaders` (one module per format in :mod:`.formats`): VATEX, COCO Captions, Multi30k task 2
  (+ a shipped subset), WiT-style TSV, BLiMP, GLUE-format TSV, the concreteness norms; malformed input raises
  :class:`DataFormatError` naming the file and line;
- :mod:`.corpora`: :func:`read_corpus`, one reader of a split of any captioned corpus (vatex,
  multi30k, coco, wit) as :class:`CorpusItem` (captions, second-language captions, image, features);
  :mod:`.export` writes the demo corpus in those formats (``write_demo_dataset``);
- :mod:`.demo`: generated scenes (rendered images, English target + paraphrases, German
  translations from a small grammar) so that captioning (C), paraphrase (P) and translation (T)
  sources exist for the same targets; deterministic from a seed;
- :mod:`.features`: :class:`FeatureCache`, batched, resumable, checksummed extraction of encoder
  features (e.g. the demo images through the shipped EfficientNet-Lite0).
"""
from .demo import (MAX_PARAPHRASES, SPECIAL_TOKENS, SPLITS, TASKS, DemoCorpus, DemoItem, Relation, SceneGraph,
                   SceneObject, Vocab, build_vocab, caption_pair, detokenize, encode_png, english_noun_phrase,
                   generate_captions, german_noun_phrase, random_scene, render_scene, tokenize)
import os as _os

from .corpora import CORPUS_KINDS, CorpusItem, corpus_files, read_corpus
from .features import CorruptCacheError, FeatureCache
from .loaders import (GLUE_TASKS, I3D_FEATURE_DIM, MULTI30K_BUILTIN_ENGLISH, MULTI30K_BUILTIN_FILES, BlimpPair,
                      CocoImage, DataFormatError, GlueExample, GlueTask, Multi30kImage, VatexDataset, VatexVideo,
                      WitRecord, iter_multi30k_builtin_english, list_blimp_phenomena, load_blimp, load_coco_captions,
                      load_cola, load_concreteness_norms, load_glue_tsv, load_mrpc, load_multi30k,
                      load_multi30k_builtin, load_multi30k_jsonl, load_sst2, load_vatex, load_wit_tsv,
                      write_multi30k_jsonl)

BLIMP_BUILTIN = _os.path.join(_os.path.dirname(__file__), "builtin", "blimp_first20.zip")
"""The shipped BLiMP subset: first 20 pairs of each of the 67 paradigms (CC-BY 4.0; see builtin/README.md)."""

__all__ = ["BLIMP_BUILTIN", "CORPUS_KINDS", "CorpusItem", "corpus_files", "read_corpus",
           "DemoCorpus", "DemoItem", "SceneGraph", "SceneObject", "Relation", "Vocab", "build_vocab", "tokenize",
           "detokenize", "render_scene", "random_scene", "caption_pair", "generate_captions", "english_noun_phrase",
           "german_noun_phrase", "encode_png", "TASKS", "SPLITS", "SPECIAL_TOKENS", "MAX_PARAPHRASES",
           "FeatureCache", "CorruptCacheError", "DataFormatError", "VatexVideo", "VatexDataset", "load_vatex",
           "I3D_FEATURE_DIM", "CocoImage", "load_coco_captions", "Multi30kImage", "load_multi30k",
           "load_multi30k_jsonl", "write_multi30k_jsonl",
           "load_multi30k_builtin", "MULTI30K_BUILTIN_FILES", "iter_multi30k_builtin_english",
           "MULTI30K_BUILTIN_ENGLISH", "WitRecord", "load_wit_tsv", "BlimpPair", "load_blimp",
           "list_blimp_phenomena", "GlueTask", "GlueExample", "GLUE_TASKS", "load_glue_tsv", "load_cola",
           "load_sst2", "load_mrpc", "load_concreteness_norms"]
