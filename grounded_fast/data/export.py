"""The demo corpus written in the real formats that :func:`~grounded_fast.data.corpora.read_corpus` reads.

:func:`write_demo_dataset` writes a :class:`~grounded_fast.data.demo.DemoCorpus` (all three splits,
from ``item.split``) as a vatex, coco, wit or multi30k folder, so that the studies' real-data path
runs on files in tests and CI. Per item, the English captions are ``[item.target] +
item.paraphrases`` and the second-language captions the German ``item.translations`` (aligned:
``translations[k]`` is the German of English caption k). Every file is written atomically; images
are PNG (:func:`~grounded_fast.data.demo.encode_png`); a ``README.txt`` in the folder says what it holds.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np

from .._atomic import write_atomic
from .corpora import _VATEX_FILES, CORPUS_KINDS, SPLITS, corpus_files
from .demo import DemoCorpus, DemoItem, encode_png

__all__ = ["write_demo_dataset", "write_demo_squad", "MULTI30K_DESCRIPTIONS"]

MULTI30K_DESCRIPTIONS = 5  # descriptions per language and image in Multi30k task 2
_FEATURE_BATCH = 64  # images per encoder call (bounds the memory of the features in flight)
_WIT_COLUMNS = ("id", "language", "page_title", "image_url", "caption_reference_description",
                "context_page_description", "context_section_description")


def _english(item: DemoItem) -> List[str]:
    return [item.target, *item.paraphrases]


def _cycle(texts: Sequence[str], n: int) -> List[str]:
    """``n`` texts: the first ``n`` of ``texts``, repeated from the start when there are fewer."""
    return [texts[k % len(texts)] for k in range(n)]


def _json_lines_list(objects: Sequence[dict]) -> bytes:
    """A JSON list with one element a line (UTF-8)."""
    body = ",\n".join(json.dumps(o, ensure_ascii=False) for o in objects)
    return f"[\n{body}\n]\n".encode("utf-8")


def _gzip(data: bytes) -> Callable:
    def write(f):
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=9, mtime=0) as g:
            g.write(data)
    return write


def _write_images(items: Sequence[DemoItem], folder: Path, progress: bool) -> None:
    it = items
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(items, desc=f"images -> {folder.name}", unit="image")
    for item in it:
        write_atomic(folder / f"{item.scene_id}.png", encode_png(item.image))


def _write_features(items: Sequence[DemoItem], folder: Path, progress: bool) -> None:
    """``<folder>/<scene_id>.npy``: float32 (49, 1280), the shipped vision encoder's patch features."""
    from ..models.encoders import VisionEncoder
    encoder = VisionEncoder.from_pretrained()
    for start in range(0, len(items), _FEATURE_BATCH):
        batch = items[start:start + _FEATURE_BATCH]
        feats = encoder.patches([item.image for item in batch], progress=progress).float().cpu().numpy()
        for item, f in zip(batch, feats):
            write_atomic(folder / f"{item.scene_id}.npy", lambda out, a=f: np.save(out, a, allow_pickle=False))


def _write_vatex(by_split: Dict[str, List[DemoItem]], root: Path, features: bool, progress: bool) -> None:
    for split, items in by_split.items():
        write_atomic(root / _VATEX_FILES[split], _json_lines_list(
            [{"videoID": it.scene_id, "enCap": _english(it), "chCap": list(it.translations)} for it in items]))
    if features:
        _write_features([it for items in by_split.values() for it in items], root / "features", progress)


def _write_coco(by_split: Dict[str, List[DemoItem]], root: Path, progress: bool) -> None:
    for split, items in by_split.items():
        images, annotations = [], []
        for it in items:
            images.append({"id": it.index, "file_name": f"{it.scene_id}.png", "height": it.image_size,
                           "width": it.image_size})
            for caption in _english(it):
                annotations.append({"id": len(annotations) + 1, "image_id": it.index, "caption": caption})
        data = {"info": {"description": "grounded_fast demo corpus (generated scenes)"}, "licenses": [],
                "images": images, "annotations": annotations}
        write_atomic(root / "annotations" / f"captions_{split}.json",
                     (json.dumps(data, ensure_ascii=False, indent=1) + "\n").encode("utf-8"))
        _write_images(items, root / split, progress)


def _write_wit(by_split: Dict[str, List[DemoItem]], root: Path, progress: bool) -> None:
    for split, items in by_split.items():
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter="\t", quotechar='"', lineterminator="\n")
        writer.writerow(_WIT_COLUMNS)
        for it in items:
            writer.writerow([it.scene_id, "en", "Demo scene", f"images/{it.scene_id}.png", it.target,
                             "A generated scene of coloured shapes.", ""])
        write_atomic(root / f"wit_{split}.tsv", buf.getvalue().encode("utf-8"))
        _write_images(items, root / "images", progress)


def _write_multi30k(by_split: Dict[str, List[DemoItem]], root: Path, progress: bool) -> None:
    names = {"train": "train", "val": "val", "test": "test_2016"}
    n = MULTI30K_DESCRIPTIONS
    for split, items in by_split.items():
        name = names[split]
        write_atomic(root / "image_splits" / f"{name}_images.txt",
                     "".join(f"{it.scene_id}.png\n" for it in items).encode("utf-8"))
        for lang, texts in (("en", [_cycle(_english(it), n) for it in items]),
                            ("de", [_cycle(it.translations, n) for it in items])):
            for k in range(n):
                lines = "".join(t[k] + "\n" for t in texts).encode("utf-8")
                write_atomic(root / "raw" / f"{name}.{k + 1}.{lang}.gz", _gzip(lines))
        _write_images(items, root / "images", progress)


def _readme(corpus: DemoCorpus, fmt: str, sizes: Dict[str, int], features: bool) -> str:
    n_en = corpus.num_paraphrases + 1
    lines = [
        f"grounded_fast demo corpus in the {fmt} layout",
        "",
        f"{len(corpus)} generated scenes (seed {corpus.seed}, {corpus.image_size}x{corpus.image_size} PNG images), "
        f"splits: " + ", ".join(f"{s} {n}" for s, n in sizes.items()) + ".",
        "Written by grounded_fast.data.export.write_demo_dataset (`grounded-fast demo-data`); read it with",
        f"grounded_fast.data.read_corpus({fmt!r}, <this folder>, <split>).",
        "Synthetic data: shapes on white with English captions from a small grammar, not the real corpus.",
        "",
    ]
    if fmt != "wit":
        lines.append(f"English captions per item: {n_en} (the target first, then paraphrases).")
    if fmt == "vatex":
        lines += ["The chCap field holds the GERMAN translations of the English captions (same order), not Chinese:",
                  "the demo grammar has German only.",
                  "features/<videoID>.npy: float32 (49, 1280), the shipped EfficientNet-Lite0 patch features of the "
                  "rendered scene, standing in for VATEX's I3D clip features." if features
                  else "No features/ folder (written with features off)."]
    elif fmt == "multi30k":
        lines += [f"Multi30k task 2 has {MULTI30K_DESCRIPTIONS} English and {MULTI30K_DESCRIPTIONS} German "
                  "descriptions per image: the first five captions are used, and with fewer the list repeats from "
                  "its start. Unlike real Multi30k, German k translates English k.",
                  "The test split is named test_2016 as in the release; images/ holds the PNG files."]
    elif fmt == "coco":
        lines += ["annotations/captions_<split>.json (COCO captions JSON; image ids are the scene indices) and "
                  "<split>/<scene id>.png."]
    else:
        lines += ["wit_<split>.tsv: one row per scene with its target caption only (caption_reference_description);",
                  "image_url is the PNG's path relative to this folder (images/)."]
    return "\n".join(lines) + "\n"


def write_demo_dataset(corpus: DemoCorpus, directory, fmt: str, *, features: bool = True,
                       progress: bool = False) -> Dict[str, Path]:
    """Write ``corpus`` (its train/val/test splits) into ``directory`` in the layout of ``fmt``.

    fmt: vatex | coco | wit | multi30k (layouts: :mod:`grounded_fast.data.corpora`). English
    captions are ``[target] + paraphrases``; the second language is German:

    * vatex: ``enCap`` the English, ``chCap`` the German translations (German, not Chinese: the
      demo has no Chinese); with ``features``, ``features/<videoID>.npy`` float32 (49, 1280) = the
      shipped EfficientNet-Lite0 patch features of the rendered scene (in place of I3D clip
      features; the encoder runs on the CPU in batches);
    * coco: ``annotations/captions_<split>.json`` + ``<split>/<scene_id>.png``, image id = scene index;
    * wit: ``wit_<split>.tsv``, one row per scene with its target caption, ``image_url`` relative
      (``images/<scene_id>.png``);
    * multi30k: task 2 (``raw/<split>.<k>.<en|de>.gz``, ``image_splits/``, ``images/``) with 5 + 5
      captions per image: the first five, repeated from the start when the corpus has fewer
      (``num_paraphrases < 4``).

    ``features`` matters for vatex only. Every file is written atomically; existing files of the
    same names are replaced. Returns split -> its file (as :func:`corpus_files`). Raises
    ValueError for an unknown format or a corpus with an empty split.
    """
    if fmt not in CORPUS_KINDS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(CORPUS_KINDS)}")
    by_split = {s: [corpus[i] for i in idx] for s, idx in corpus.splits.items()}
    empty = [s for s in SPLITS if not by_split[s]]
    if empty:
        raise ValueError(f"the demo corpus ({len(corpus)} scenes) has no {'/'.join(empty)} items; use more scenes")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    if fmt == "vatex":
        _write_vatex(by_split, root, features, progress)
    elif fmt == "coco":
        _write_coco(by_split, root, progress)
    elif fmt == "wit":
        _write_wit(by_split, root, progress)
    else:
        _write_multi30k(by_split, root, progress)
    sizes = {s: len(items) for s, items in by_split.items()}
    write_atomic(root / "README.txt", _readme(corpus, fmt, sizes, features).encode("utf-8"))
    return corpus_files(fmt, root)


def _colour_questions(item: DemoItem, shapes: Sequence[str]) -> List[dict]:
    """SQuAD questions on ``item.target``: "what colour is the <shape>?" for each shape that one
    object of the scene has (answer: its colour word, the last before the shape word in the
    caption), and, unanswerable, for the first shape of ``shapes`` not in the scene."""
    import re
    text, out = item.target, []
    present = [o.shape for o in item.graph.objects]
    for k, obj in enumerate(item.graph.objects):
        if present.count(obj.shape) != 1:
            continue
        shape_at = [m.start() for m in re.finditer(rf"\b{re.escape(obj.shape)}\b", text)]
        if len(shape_at) != 1:
            continue
        colours = [m.start() for m in re.finditer(rf"\b{re.escape(obj.colour)}\b", text[:shape_at[0]])]
        if colours:
            out.append({"id": f"{item.scene_id}-q{k}", "question": f"what colour is the {obj.shape}?",
                        "answers": [{"text": obj.colour, "answer_start": colours[-1]}], "is_impossible": False})
    absent = next((s for s in shapes if s not in present), None)
    if absent is not None:
        out.append({"id": f"{item.scene_id}-none", "question": f"what colour is the {absent}?", "answers": [],
                    "is_impossible": True})
    return out


def write_demo_squad(corpus: DemoCorpus, directory, version: str = "v2.0") -> Dict[str, Path]:
    """Write ``corpus`` as a SQuAD task directory (``train-<version>.json`` from its train split,
    ``dev-<version>.json`` from val): one article per scene, its context the target caption, its
    questions "what colour is the <shape>?" for the shapes one object of the scene has (answer:
    the colour word in the caption); v2.0 adds one unanswerable question per scene (a shape the
    scene lacks). Returns {'train': file, 'dev': file}; ValueError for another version."""
    from .demo import SHAPES
    from .formats.squad import SQUAD_FILES
    if version not in SQUAD_FILES:
        raise ValueError(f"unknown SQuAD version {version!r}; known: {', '.join(SQUAD_FILES)}")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, source in (("train", "train"), ("dev", "val")):
        articles = []
        for i in corpus.splits[source]:
            item = corpus[i]
            qas = [q for q in _colour_questions(item, SHAPES) if version == "v2.0" or not q["is_impossible"]]
            if version == "v1.1":
                for q in qas:
                    q.pop("is_impossible")
            if qas:
                articles.append({"title": item.scene_id, "paragraphs": [{"context": item.target, "qas": qas}]})
        out[split] = root / SQUAD_FILES[version][split]
        write_atomic(out[split], json.dumps({"version": version, "data": articles}, indent=1).encode("utf-8"))
    return out
