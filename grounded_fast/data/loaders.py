"""Loaders for the real data formats (one module per format in :mod:`grounded_fast.data.formats`).

Every loader validates its input and raises :class:`DataFormatError` (a ``ValueError`` with
``path`` and ``line`` attributes, message ``"path:line: what is wrong"``) on malformed or missing
data. Text input may be gzipped (detected by content), CRLF, and UTF-8 with or without a BOM;
damaged compressed data (gzip, a zip member) names the file, and a split without records (an
empty file, a header only) is an error too.

========================  =====================================================================
VATEX                     :func:`load_vatex` -> :class:`VatexDataset` of :class:`VatexVideo`
                          (10 en + 10 zh captions, lazily memory-mapped (T, D) features)
COCO Captions             :func:`load_coco_captions` -> list of :class:`CocoImage` (captions
                          grouped per image, image files located)
Multi30k task 2           :func:`load_multi30k` -> list of :class:`Multi30kImage` (5 en + 5 de);
                          :func:`load_multi30k_builtin` (shipped subset), ``*_jsonl`` read/write
WiT-style TSV             :func:`load_wit_tsv` -> list of :class:`WitRecord`
BLiMP                     :func:`load_blimp` (directory or zip) -> list of :class:`BlimpPair`;
                          :func:`list_blimp_phenomena`
GLUE TSV                  :func:`load_glue_tsv` (task table :data:`GLUE_TASKS`), :func:`load_cola`,
                          :func:`load_sst2`, :func:`load_mrpc` -> list of :class:`GlueExample`
Concreteness norms        :func:`load_concreteness_norms` (from :mod:`grounded_fast.analysis`)
========================  =====================================================================
"""
from ..analysis.concreteness import load_concreteness_norms
from .formats._io import DataFormatError
from .formats.coco import CocoImage, load_coco_captions
from .formats.blimp import BlimpPair, list_blimp_phenomena, load_blimp
from .formats.glue import GLUE_TASKS, GlueExample, GlueTask, load_cola, load_glue_tsv, load_mrpc, load_sst2
from .formats.multi30k import (MULTI30K_BUILTIN_ENGLISH, MULTI30K_BUILTIN_FILES, Multi30kImage,
                               iter_multi30k_builtin_english, load_multi30k, load_multi30k_builtin,
                               load_multi30k_jsonl, write_multi30k_jsonl)
from .formats.vatex import I3D_FEATURE_DIM, VatexDataset, VatexVideo, load_vatex
from .formats.wit import WitRecord, load_wit_tsv

__all__ = [
    "DataFormatError",
    "VatexVideo", "VatexDataset", "load_vatex", "I3D_FEATURE_DIM",
    "CocoImage", "load_coco_captions",
    "Multi30kImage", "load_multi30k", "load_multi30k_jsonl", "write_multi30k_jsonl",
    "load_multi30k_builtin", "MULTI30K_BUILTIN_FILES", "iter_multi30k_builtin_english", "MULTI30K_BUILTIN_ENGLISH",
    "WitRecord", "load_wit_tsv",
    "BlimpPair", "load_blimp", "list_blimp_phenomena",
    "GlueTask", "GlueExample", "GLUE_TASKS", "load_glue_tsv", "load_cola", "load_sst2", "load_mrpc",
    "load_concreteness_norms",
]
