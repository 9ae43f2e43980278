"""One reader for every captioned-corpus format: :func:`read_corpus` -> list of :class:`CorpusItem`.

The studies read real data through this module only; the parsing is the format loaders' (:mod:`.formats`).
Layouts under ``path`` (as the public releases ship them; :func:`grounded_fast.data.export.write_demo_dataset`
writes exactly these):

========  =====================================================================================
vatex     ``vatex_training_v1.0.json`` (train), ``vatex_validation_v1.0.json`` (val),
          ``vatex_test.json`` (test, optional). Without a test file, the validation file is cut
          in two: val = its first ceil(n/2) videos, test = the rest (the public VATEX test has no
          Chinese captions, so the usual practice is to test on part of val). captions = enCap,
          other = chCap; features ``<path>/features/<videoID>.npy`` when that folder exists.
multi30k  Multi30k task 2 (``raw/``, ``image_splits/``; also under ``task2/`` or
          ``data/task2/``); splits train, val, test = ``test_2016``. captions = the 5 English,
          other = the 5 German descriptions; item_id = the image file name's stem; images
          ``<path>/images/<file name>`` when that folder exists.
coco      ``annotations/captions_<split>*.json[.gz]`` (e.g. ``captions_train2017.json`` or
          ``captions_train.json``; exactly one match per split); images in
          ``<path>/<name after 'captions_'>/`` (``train2017/``) when that folder exists; val and
          test optional. item_id = the COCO image id.
wit       ``wit_<split>.tsv`` or ``wit_<split>.tsv.gz`` (WiT columns, :func:`load_wit_tsv`):
          captions = (``caption_reference_description``,), rows with an empty one are skipped;
          the image from ``b64_bytes`` when that column exists, else ``image_url``: a local path,
          relative to the TSV's folder (or to ``images=``) or absolute; item_id = the ``image_id``
          or ``id`` column, else ``<split>-<row index>`` (0-based, counting every data row).
========  =====================================================================================

Every item_id is file-name-safe and unique within its split (checked), so that per-item feature
files can be named ``<item_id>.npy``.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .formats._io import DataFormatError, PathLike, check_files_exist, iter_tsv
from .formats.coco import load_coco_captions
from .formats.multi30k import _resolve_root, load_multi30k
from .formats.vatex import load_vatex
from .formats.wit import load_wit_tsv

__all__ = ["CorpusItem", "CORPUS_KINDS", "SPLITS", "corpus_files", "read_corpus"]

CORPUS_KINDS = ("vatex", "multi30k", "coco", "wit")
SPLITS = ("train", "val", "test")

_VATEX_FILES = {"train": "vatex_training_v1.0.json", "val": "vatex_validation_v1.0.json", "test": "vatex_test.json"}
_MULTI30K_SPLITS = {"train": "train", "val": "val", "test": "test_2016"}
_WIT_BASE64 = "b64_bytes"
_WIT_IMAGE = "image_url"
_WIT_ID_COLUMNS = ("image_id", "id")
_SHOWN = 5  # missing files named in an error


@dataclass(frozen=True)
class CorpusItem:
    """One captioned item of a corpus.

    ``item_id`` (file-name-safe: videoID, COCO image id, Multi30k file stem, WiT row id),
    ``captions`` (English, >= 1; the first is the target), ``other`` (second-language captions:
    VATEX chCap, Multi30k German; () else), ``image_path`` / ``image_bytes`` (the image as a file
    or as encoded bytes, when the format gives one), ``features_path`` (precomputed (T, D)
    features, ``.npy``).
    """
    item_id: str
    captions: Tuple[str, ...]
    other: Tuple[str, ...] = ()
    image_path: Optional[Path] = None
    image_bytes: Optional[bytes] = field(default=None, repr=False)
    features_path: Optional[Path] = None

    def image(self) -> np.ndarray:
        """The image as uint8 (H, W, 3) RGB (decoded with Pillow). ValueError naming the item when it
        has none; DataFormatError naming the file (or the item) when it cannot be decoded."""
        from PIL import Image, UnidentifiedImageError
        if self.image_bytes is not None:
            source, name = io.BytesIO(self.image_bytes), f"{self.item_id} (image bytes)"
        elif self.image_path is not None:
            source, name = self.image_path, os.fspath(self.image_path)
        else:
            raise ValueError(f"item {self.item_id!r} has no image (no image folder or image column)")
        try:
            with Image.open(source) as im:
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
        except FileNotFoundError:
            raise DataFormatError(name, None, "image file not found") from None
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataFormatError(name, None, f"not a readable image: {e}") from None

    def features(self) -> np.ndarray:
        """The precomputed features as float32 (T, D) (a (D,) file is read as (1, D)). ValueError
        naming the item when it has none; DataFormatError naming the file when it is missing,
        unreadable, not 1-D/2-D, empty or not numeric."""
        if self.features_path is None:
            raise ValueError(f"item {self.item_id!r} has no features file (no features folder)")
        path = self.features_path
        try:
            arr = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise DataFormatError(path, None, "features file not found") from None
        except (ValueError, OSError, EOFError) as e:
            raise DataFormatError(path, None, f"not a readable .npy array: {e}") from None
        if not isinstance(arr, np.ndarray):
            raise DataFormatError(path, None, "expected a .npy array, got an .npz archive")
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or 0 in arr.shape:
            raise DataFormatError(path, None, f"features must have shape (T, D) or (D,), non-empty, "
                                  f"got {tuple(arr.shape)}")
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise DataFormatError(path, None, f"features must be numeric, got dtype {arr.dtype}")
        return np.ascontiguousarray(arr, dtype=np.float32)


def _check_kind_split(kind: str, split: Optional[str] = None) -> None:
    if kind not in CORPUS_KINDS:
        raise ValueError(f"unknown corpus kind {kind!r}; known: {', '.join(CORPUS_KINDS)}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")


def _coco_file(annotations: Path, split: str) -> Optional[Path]:
    """The one ``captions_<split>*.json[.gz]`` in ``annotations`` (None when there is none)."""
    matches = sorted({*annotations.glob(f"captions_{split}*.json"), *annotations.glob(f"captions_{split}*.json.gz")})
    if len(matches) > 1:
        raise DataFormatError(annotations, None, f"{len(matches)} annotation files match split {split!r} "
                              f"(captions_{split}*.json): {', '.join(p.name for p in matches)}; name one "
                              f"with splits={{{split!r}: ...}}")
    return matches[0] if matches else None


def _wit_file(path: Path, split: str) -> Optional[Path]:
    found = [p for p in (path / f"wit_{split}.tsv", path / f"wit_{split}.tsv.gz") if p.is_file()]
    if len(found) > 1:
        raise DataFormatError(found[0], None, f"both {found[0].name} and {found[1].name} exist; keep one")
    return found[0] if found else None


def _default_file(kind: str, root: Path, split: str) -> Optional[Path]:
    """The file (multi30k: the image list) holding ``split`` under ``root``, or None."""
    if kind == "vatex":
        p = root / _VATEX_FILES[split]
        if split == "test" and not p.is_file():
            p = root / _VATEX_FILES["val"]  # halved by read_corpus (see the module doc)
        return p if p.is_file() else None
    if kind == "multi30k":
        p = _resolve_root(root) / "image_splits" / f"{_MULTI30K_SPLITS[split]}_images.txt"
        return p if p.is_file() else None
    if kind == "coco":
        return _coco_file(root / "annotations", split) if (root / "annotations").is_dir() else None
    return _wit_file(root, split)


def corpus_files(kind: str, path: PathLike, splits: Optional[Mapping[str, str]] = None) -> Dict[str, Path]:
    """Split -> the file that holds it, for the splits present under ``path`` (layouts: module doc).

    For multi30k the file is the split's ``image_splits/<name>_images.txt``; for a vatex folder
    without ``vatex_test.json``, test maps to the validation file (read_corpus takes its second
    half). ``splits`` overrides the file of a split, as a path relative to ``path`` or absolute
    (multi30k: an ``image_splits/<name>_images.txt`` of a task 2 folder). Raises
    FileNotFoundError naming ``path`` when it does not exist, DataFormatError naming it when it
    holds no train split or names an unknown split, or an override that does not exist.
    """
    _check_kind_split(kind)
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: {kind} corpus folder not found")
    overrides = dict(splits or {})
    unknown = sorted(set(overrides) - set(SPLITS))
    if unknown:
        raise DataFormatError(root, None, f"unknown split(s) {unknown} in splits (known: {', '.join(SPLITS)})")
    out: Dict[str, Path] = {}
    for split in SPLITS:
        if split in overrides:
            p = root / overrides[split]  # an absolute override replaces root
            if not p.is_file():
                raise DataFormatError(p, None, f"file of split {split!r} (from splits) not found")
            if kind == "multi30k" and not (p.name.endswith("_images.txt") and p.parent.name == "image_splits"):
                raise DataFormatError(p, None, "a multi30k split is named by its image_splits/<name>_images.txt")
            out[split] = p
        else:
            p = _default_file(kind, root, split)
            if p is not None:
                out[split] = p
    if "train" not in out:
        expect = {"vatex": _VATEX_FILES["train"], "multi30k": "image_splits/train_images.txt",
                  "coco": "annotations/captions_train*.json", "wit": "wit_train.tsv[.gz]"}[kind]
        raise DataFormatError(root, None, f"no train split in this {kind} folder (expected {expect})")
    return out


def _existing_dir(given: Optional[PathLike], default: Optional[Path], what: str) -> Optional[Path]:
    """``given`` (must be a folder), else ``default`` when it is a folder, else None."""
    if given is not None:
        d = Path(given)
        if not d.is_dir():
            raise DataFormatError(d, None, f"{what} folder not found")
        return d
    return default if default is not None and default.is_dir() else None


def _check_ids(items: Sequence[CorpusItem], source: Path) -> None:
    seen = set()
    for it in items:
        i = it.item_id
        if not i or "/" in i or "\\" in i or i in (".", "..") or i != i.strip():
            raise DataFormatError(source, None, f"item id {i!r} is not file-name-safe")
        if i in seen:
            raise DataFormatError(source, None, f"duplicate item id {i!r}")
        seen.add(i)


def _read_vatex(files: Dict[str, Path], split: str) -> List[CorpusItem]:
    source = files[split]
    videos = load_vatex(source, n_captions=None, feature_dim=None, require_chinese=split != "test")
    items = [CorpusItem(v.video_id, v.en, v.zh) for v in videos]
    if split in ("val", "test") and files.get("test") == files["val"]:  # no test file: halve val
        half = (len(items) + 1) // 2
        items = items[:half] if split == "val" else items[half:]
        if not items:
            raise DataFormatError(source, None, f"split {split!r} is empty: the test split is the second half "
                                  f"of this file (no {_VATEX_FILES['test']}), which has {len(videos)} video(s)")
    return items


def _read_multi30k(source: Path, images: Optional[Path]) -> List[CorpusItem]:
    name = source.name[:-len("_images.txt")]
    return [CorpusItem(Path(im.image_id).stem, im.en, im.de, image_path=images / im.image_id if images else None)
            for im in load_multi30k(source.parent.parent, name)]


def _read_coco(source: Path, images: Optional[Path]) -> List[CorpusItem]:
    return [CorpusItem(im.image_id, im.captions, image_path=im.image_path)
            for im in load_coco_captions(source, images)]


def _read_wit(source: Path, split: str, images: Optional[Path]) -> List[CorpusItem]:
    header = next(iter_tsv(source, quoted=True), (1, []))[1]
    columns = [c.strip() for c in header]
    b64 = _WIT_BASE64 if _WIT_BASE64 in columns else None
    url = _WIT_IMAGE if _WIT_IMAGE in columns or b64 is None else None
    id_column = next((c for c in _WIT_ID_COLUMNS if c in columns), None)
    records = load_wit_tsv(source, image_column=url, base64_column=b64, page_column=None, section_column=None,
                           skip_empty_captions=False)
    base = images if images is not None else source.parent
    out = []
    for row, rec in enumerate(records):
        if not rec.caption:
            continue  # WiT: many images have no reference description
        item_id = rec.fields[id_column].strip() if id_column else f"{split}-{row}"
        image_path = None
        if rec.image_bytes is None:
            ref = rec.image_path or ""
            if ref.lower().startswith(("http://", "https://")):
                raise DataFormatError(source, rec.line, f"image_url is a web address ({ref}): download the images "
                                      "first and give local paths, or a base64 column")
            image_path = base / ref  # an absolute ref replaces base
        out.append(CorpusItem(item_id, (rec.caption,), image_path=image_path, image_bytes=rec.image_bytes))
    return out


def read_corpus(kind: str, path: PathLike, split: str, *, splits: Optional[Mapping[str, str]] = None,
                features: Optional[PathLike] = None, images: Optional[PathLike] = None,
                max_items: int = 0) -> List[CorpusItem]:
    """The items of one split, in file order (the first ``max_items`` when > 0).

    kind: one of CORPUS_KINDS; path: the corpus folder (layouts: module doc); split: train, val or
    test; splits: per-split file overrides (see :func:`corpus_files`). features: a folder of
    ``<item_id>.npy`` files (default: vatex ``<path>/features`` when it exists; others none).
    images: an image folder (default: multi30k ``<path>/images``, coco ``<path>/<name after
    'captions_'>`` when it exists; wit: relative image paths are resolved against it instead of the
    TSV's folder; vatex has no images). A given folder must exist, and every item read must then
    have its file: missing ones raise DataFormatError naming the first few and their count.
    Also raises DataFormatError naming the file for a split that is absent or empty, malformed
    data (the loaders' errors), unsafe or duplicate item ids and, for wit, web image addresses.
    """
    _check_kind_split(kind, split)
    if max_items < 0:
        raise ValueError(f"max_items must be >= 0, got {max_items}")
    root = Path(path)
    files = corpus_files(kind, root, splits)
    if split not in files:
        raise DataFormatError(root, None, f"no {split!r} split in this {kind} folder")
    source = files[split]
    if kind == "vatex":
        if images is not None:
            raise ValueError("vatex has no images (give features= for per-video features)")
        items = _read_vatex(files, split)
    elif kind == "multi30k":
        items = _read_multi30k(source, _existing_dir(images, root / "images", "image"))
    elif kind == "coco":
        stem = source.name.split(".json")[0]
        stem = stem[len("captions_"):] if stem.startswith("captions_") else stem
        items = _read_coco(source, _existing_dir(images, root / stem, "image"))
    else:
        items = _read_wit(source, split, _existing_dir(images, None, "image"))
    if not items:
        raise DataFormatError(source, None, f"split {split!r} has no items")
    _check_ids(items, source)
    if max_items:
        items = items[:max_items]
    fdir = _existing_dir(features, root / "features" if kind == "vatex" else None, "features")
    if fdir is not None:
        items = [CorpusItem(it.item_id, it.captions, it.other, it.image_path, it.image_bytes,
                            fdir / f"{it.item_id}.npy") for it in items]
        check_files_exist([it.features_path for it in items], "features file", f"items of {source} lack one in {fdir}",
                          _SHOWN)
    if kind != "coco":  # load_coco_captions checks its images itself
        check_files_exist([it.image_path for it in items if it.image_path is not None], "image file",
                          f"items of {source} lack one", _SHOWN)
    return items
