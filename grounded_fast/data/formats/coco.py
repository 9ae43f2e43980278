"""COCO Captions (Chen et al. 2015): the ``captions_<split>.json`` annotation files.

One JSON object ``{"images": [{"id": int, "file_name": str, ...}, ...], "annotations":
[{"image_id": int, "caption": str, ...}, ...]}`` (other keys, e.g. ``info`` and ``licenses``, are
ignored); an image has about five captions. The images are files ``<image_dir>/<file_name>``
(e.g. ``train2017/000000391895.jpg``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ._io import DataFormatError, PathLike, check_files_exist, read_text

__all__ = ["CocoImage", "load_coco_captions"]


@dataclass(frozen=True)
class CocoImage:
    """One image: ``image_id`` (the JSON id as str), ``file_name``, ``captions`` (str each, in
    annotation order, stripped) and ``image_path`` (``image_dir / file_name``, or None without an
    image folder)."""
    image_id: str
    file_name: str
    captions: Tuple[str, ...]
    image_path: Optional[Path] = None


def _image_id(value, path: str, where: str) -> str:
    """A JSON id (int, or a non-empty str without path separators) as str."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataFormatError(path, None, f"{where}: id must be an int or a string, got {value!r}")
    text = str(value)
    if not text or "/" in text or "\\" in text or text in (".", ".."):
        raise DataFormatError(path, None, f"{where}: id must be file-name-safe, got {value!r}")
    return text


def _safe_file_name(name, path: str, where: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise DataFormatError(path, None, f"{where}: 'file_name' must be a non-empty string, got {name!r}")
    parts = Path(name.replace("\\", "/")).parts
    if os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts:
        raise DataFormatError(path, None, f"{where}: unsafe file_name {name!r} (absolute or with '..'; "
                              "it must be relative to the image folder)")
    return name


def load_coco_captions(annotations: PathLike, image_dir: Optional[PathLike] = None) -> List[CocoImage]:
    """Read a COCO captions JSON file (gzip detected).

    annotations: the ``captions_*.json`` file. image_dir: the folder of the image files (None:
    images are not located, ``image_path`` is None).

    Returns one :class:`CocoImage` per entry of ``images``, in the file's order, each with its
    captions in annotation order. Raises DataFormatError naming the file (and the item) for invalid
    JSON, missing keys, no images, a duplicate image id, an unsafe file name (absolute or with
    ``..``), an annotation whose ``image_id`` is not an image, an empty caption, an image without
    captions; with ``image_dir``, a missing folder or missing image files (the first five named,
    with their count).
    """
    path = os.fspath(annotations)
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFormatError(path, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        raise DataFormatError(path, None, "expected an object with the lists 'images' and 'annotations'")
    if not data["images"]:
        raise DataFormatError(path, None, "no images (the 'images' list is empty)")
    order: List[str] = []
    names: Dict[str, str] = {}
    for i, img in enumerate(data["images"]):
        where = f"images[{i}]"
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise DataFormatError(path, None, f"{where}: expected an object with keys 'id', 'file_name'")
        iid = _image_id(img["id"], path, where)
        if iid in names:
            raise DataFormatError(path, None, f"{where}: duplicate image id {img['id']!r} "
                                  f"(first at images[{order.index(iid)}])")
        names[iid] = _safe_file_name(img["file_name"], path, f"{where} (id {img['id']!r})")
        order.append(iid)
    captions: Dict[str, List[str]] = {iid: [] for iid in order}
    for j, ann in enumerate(data["annotations"]):
        where = f"annotations[{j}]"
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            raise DataFormatError(path, None, f"{where}: expected an object with keys 'image_id', 'caption'")
        iid = _image_id(ann["image_id"], path, where)
        if iid not in captions:
            raise DataFormatError(path, None, f"{where}: image_id {ann['image_id']!r} is not in 'images'")
        cap = ann["caption"]
        if not isinstance(cap, str) or not cap.strip():
            raise DataFormatError(path, None, f"{where} (image {ann['image_id']!r}): empty caption")
        captions[iid].append(cap.strip())
    bare = [iid for iid in order if not captions[iid]]
    if bare:
        raise DataFormatError(path, None, f"image {bare[0]!r} has no caption ({len(bare)} of {len(order)} "
                              f"images have none)")
    folder = Path(image_dir) if image_dir is not None else None
    if folder is not None and not folder.is_dir():
        raise DataFormatError(folder, None, "image folder not found")
    out = [CocoImage(iid, names[iid], tuple(captions[iid]), folder / names[iid] if folder is not None else None)
           for iid in order]
    if folder is not None:
        check_files_exist([im.image_path for im in out], "image file",  # type: ignore[misc]
                          f"images of {path} missing in {folder}")
    return out
