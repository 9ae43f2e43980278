"""The ``data`` sections of the study configs: where a study's data comes from.

A :class:`DataConfig` names one data set: its ``kind`` (``demo``: the data built into the package;
or a real format the loaders read), its ``path``, and how each source becomes features: an
encoder (``text_encoder``, ``translation_encoder``, ``vision_encoder``: empty for the shipped
defaults, or a local Hugging Face directory) or precomputed features (``features``: a directory of
one ``<item id>.npy`` per item, as VATEX ships I3D features). In a TOML config::

    [data]
    kind = "vatex"
    path = "/data/vatex"                      # vatex_training_v1.0.json, vatex_validation_v1.0.json, features/
    translation_encoder = "/models/bert-base-chinese"

Each study says which kinds each of its sections accepts by a subclass that sets ``kinds``
(e.g. ``GroundingDataConfig``). Paths are made
absolute, and everything that can be checked without reading the data is checked on
construction (the path and its layout, the folders, that an encoder directory is a model), so
that a wrong path is one line naming the key before any training; what needs the data read (a
split with no items, a missing feature file) is found when the study prepares its inputs, also
before any training.
"""
from __future__ import annotations

import dataclasses
import os
from typing import ClassVar, Dict, Tuple

from ..models.config import ModelConfig
from .corpora import CORPUS_KINDS, SPLITS as SPLIT_NAMES, corpus_files

#: every kind a data section may name; each study accepts a subset (see the study's config)
DATA_KINDS = ("demo", "vatex", "multi30k", "coco", "wit", "glue", "squad", "blimp", "text")
_PATH_KEYS = ("path", "features", "images", "text_encoder", "translation_encoder", "vision_encoder")


@dataclasses.dataclass
class DataConfig(ModelConfig):
    """One data set of a study.

    kind: ``demo`` (built in: the demo corpus, the shipped Multi30k / BLiMP subsets, the built-in
        downstream task, as the study says) or one of ``vatex``, ``multi30k``, ``coco``, ``wit``
        (captioned corpora, :func:`grounded_fast.data.corpora.read_corpus`), ``glue`` (a GLUE task
        directory holding train.tsv and dev.tsv), ``blimp`` (the BLiMP release: a directory or zip),
        ``text`` (plain text, one sentence a line: a directory of train.txt and val.txt, or .txt.gz).
    path: the data set's directory (a file for a zipped BLiMP); empty for ``demo``.
    splits: split -> file or folder, relative to ``path``, where it is not where the format puts it.
    features: a directory of ``<item id>.npy`` (T, D) feature files for the visual source (vatex:
        default ``<path>/features``); empty: the images through ``vision_encoder``.
    images: the image folder (multi30k: the Flickr30k images, default ``<path>/images``; coco:
        default the folder named like the annotation file).
    text_encoder / translation_encoder / vision_encoder: a local Hugging Face model directory (a
        vision encoder may also be an EfficientNet-Lite state dict); empty: the shipped MiniLM /
        the text encoder / the shipped EfficientNet-Lite0.
    task: the GLUE task of a ``glue`` section (e.g. ``sst2``).
    max_items: use the first this-many items of each split (0: all).
    """
    kind: str = "demo"
    path: str = ""
    splits: Dict[str, str] = dataclasses.field(default_factory=dict)
    features: str = ""
    images: str = ""
    text_encoder: str = ""
    translation_encoder: str = ""
    vision_encoder: str = ""
    task: str = ""
    max_items: int = 0

    #: the kinds this section accepts (a study's subclass narrows it)
    kinds: ClassVar[Tuple[str, ...]] = DATA_KINDS

    def check(self) -> None:
        for key in _PATH_KEYS:       # absolute, so that a resumed run finds its data from any directory
            value = getattr(self, key)
            if isinstance(value, str) and value:
                object.__setattr__(self, key, os.path.abspath(os.path.expanduser(value)))
        super().check()

    def validate(self) -> None:
        self.require("kind", self.kind in self.kinds, f"must be one of {list(self.kinds)}"
                     + ("" if self.kinds == DATA_KINDS else " for this study"))
        self.require_at_least(0, "max_items")
        self.require("splits", set(self.splits) <= set(SPLIT_NAMES), f"keys must be among {list(SPLIT_NAMES)}")
        for key in ("text_encoder", "translation_encoder"):
            value = getattr(self, key)
            self.require(key, not value or os.path.isfile(os.path.join(value, "config.json")),
                         "not a Hugging Face model directory (no config.json in it)")
        v = self.vision_encoder
        self.require("vision_encoder", not v or os.path.isfile(v) or os.path.isfile(os.path.join(v, "config.json")),
                     "must be a Hugging Face vision model directory (with config.json) or an EfficientNet-Lite "
                     "state-dict file")
        if self.kind == "demo":
            given = [k for k in ("path", "features", "images") if getattr(self, k)]
            self.require(given[0] if given else "path", not given,
                         "must be empty for kind 'demo' (the demo data is built in)")
            self.require("splits", not self.splits, "must be empty for kind 'demo'")
            return
        self.require("path", bool(self.path), f"must name the {self.kind} data (a directory or file)")
        self.require("path", os.path.exists(self.path), "no such file or directory")
        if self.kind in CORPUS_KINDS:
            try:
                corpus_files(self.kind, self.path, self.splits)
            except (OSError, ValueError) as exc:
                self.require("path", False, f"not a {self.kind} data set: {exc}")
        elif self.kind == "text":
            from .formats.plain_text import plain_text_files
            try:
                plain_text_files(self.path, self.splits)
            except ValueError as exc:
                self.require("path", False, f"not a plain-text corpus: {exc}")
        elif self.kind == "glue":
            from .formats.glue import _task
            try:
                dev_file = _task(self.task).dev_file
            except ValueError:              # an unknown task is the study's error to report
                dev_file = "dev.tsv"
            need = ("train.tsv", dev_file)
            missing = [f for f in need if not os.path.isfile(os.path.join(self.path, f))]
            self.require("path", not missing, f"must be a GLUE task directory holding {' and '.join(need)} "
                                              f"(missing: {', '.join(missing)})")
        elif self.kind == "squad":
            from .formats.squad import squad_files
            try:
                squad_files(self.path)
            except ValueError as exc:
                self.require("path", False, f"not a SQuAD task directory: {exc}")
        for key in ("features", "images"):
            value = getattr(self, key)
            self.require(key, not value or os.path.isdir(value), "no such directory")

    def load_encoder(self, which: str, device=None):
        """The section's ``'text'``, ``'translation'`` or ``'vision'`` encoder on ``device``: the
        directory its key names, else the shipped default (for ``'translation'``: None, meaning
        the text encoder)."""
        from ..models.encoders import TextEncoder, VisionEncoder
        path = {"text": self.text_encoder, "translation": self.translation_encoder,
                "vision": self.vision_encoder}[which]
        if which == "translation" and not path:
            return None
        if which == "vision":
            return VisionEncoder.from_pretrained(path or None, device=device)
        return TextEncoder.from_pretrained(path or None, device=device)

    def describe(self) -> str:
        """One line for reports: 'the built-in demo data' or '<kind> at <path>'."""
        return "the built-in demo data" if self.kind == "demo" else f"{self.kind} at `{self.path}`"

