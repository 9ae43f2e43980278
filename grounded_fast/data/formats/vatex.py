"""VATEX (Wang et al. 2019): bilingual video captions with per-video feature files.

Annotations: a JSON list of ``{"videoID": str, "enCap": [10 str], "chCap": [10 str]}`` (the
official ``vatex_training_v1.0.json`` / ``vatex_validation_v1.0.json``). Features: one ``.npy``
file per video, ``<feature_dir>/<videoID>.npy``, a (T, D) float array of T clip features (the
released I3D features have D = 1024). Features are opened lazily as read-only memory maps.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ._io import DataFormatError, PathLike, check_files_exist, line_of_offset, read_text

__all__ = ["VatexVideo", "VatexDataset", "load_vatex", "I3D_FEATURE_DIM"]

I3D_FEATURE_DIM = 1024


def _iter_json_array(text: str, path: str) -> Iterator[Tuple[int, int, Any]]:
    """Yield ``(index, line, item)`` for each element of a top-level JSON array, ``line`` being
    the 1-based line where the element starts. Syntax errors raise DataFormatError with the line
    reported by the JSON decoder."""
    decoder = json.JSONDecoder()
    n = len(text)

    def skip_ws(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    def fail(msg: str, pos: int) -> DataFormatError:
        return DataFormatError(path, line_of_offset(text, pos), msg)

    i = skip_ws(0)
    if i >= n or text[i] != "[":
        raise fail("expected a JSON list of videos ('[' ...)", i)
    i = skip_ws(i + 1)
    if i < n and text[i] == "]":
        i = skip_ws(i + 1)
        if i < n:
            raise fail("extra data after the JSON list", i)
        return
    index = 0
    while True:
        try:
            item, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, e.lineno, f"invalid JSON (item {index}): {e.msg} "
                                  f"(column {e.colno})") from None
        yield index, line_of_offset(text, i), item
        index += 1
        i = skip_ws(end)
        if i < n and text[i] == ",":
            i = skip_ws(i + 1)
            continue
        if i < n and text[i] == "]":
            i = skip_ws(i + 1)
            if i < n:
                raise fail("extra data after the JSON list", i)
            return
        raise fail(f"invalid JSON after item {index - 1}: expected ',' or ']'", i)


def _validate_features(arr: np.ndarray, path: Path, feature_dim: Optional[int]) -> None:
    if arr.ndim != 2 or arr.shape[0] < 1 or (feature_dim is not None and arr.shape[1] != feature_dim):
        want = f"(T, {feature_dim})" if feature_dim is not None else "(T, D)"
        raise DataFormatError(path, None, f"features must have shape {want} with T >= 1, "
                              f"got {tuple(arr.shape)}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataFormatError(path, None, f"features must be numeric, got dtype {arr.dtype}")


def _open_npy(path: Path, feature_dim: Optional[int], mmap: bool) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise DataFormatError(path, None, "feature file not found") from None
    except (ValueError, OSError, EOFError) as e:
        raise DataFormatError(path, None, f"not a readable .npy array: {e}") from None
    if not isinstance(arr, np.ndarray):
        raise DataFormatError(path, None, "expected a .npy array, got an .npz archive")
    _validate_features(arr, path, feature_dim)
    return arr


@dataclass(frozen=True)
class VatexVideo:
    """One VATEX video: ``video_id``, ``en`` (English captions, str each), ``zh`` (Chinese
    captions; empty when the split has none), ``feature_path`` (the ``.npy`` file or None) and
    ``line`` (where the item starts in the JSON file)."""
    video_id: str
    en: Tuple[str, ...]
    zh: Tuple[str, ...]
    feature_path: Optional[Path] = None
    line: int = 0
    feature_dim: Optional[int] = field(default=I3D_FEATURE_DIM, repr=False)

    def features(self, mmap: bool = True) -> np.ndarray:
        """The (T, D) feature array, a read-only memory map unless ``mmap=False``; the shape is
        validated (2-D, T >= 1, D == ``feature_dim``) on every call, the data is not read."""
        if self.feature_path is None:
            raise ValueError(f"video {self.video_id!r} has no feature file (no feature_dir given)")
        return _open_npy(self.feature_path, self.feature_dim, mmap)


class VatexDataset(Sequence[VatexVideo]):
    """A list of :class:`VatexVideo` (indexable, iterable) plus ``features(i)`` -> (T, D) array
    and ``by_id(video_id)``."""

    def __init__(self, videos: List[VatexVideo], source: str):
        self.videos = videos
        self.source = source
        self._index = {v.video_id: i for i, v in enumerate(videos)}

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i):  # int -> VatexVideo, slice -> List[VatexVideo]
        return self.videos[i]

    def by_id(self, video_id: str) -> VatexVideo:
        """The video with this id (KeyError if absent)."""
        return self.videos[self._index[video_id]]

    def features(self, i: int, mmap: bool = True) -> np.ndarray:
        """Features (T, D) of video ``i`` (see :meth:`VatexVideo.features`)."""
        return self.videos[i].features(mmap=mmap)

    def __repr__(self) -> str:
        return f"VatexDataset({len(self)} videos from {self.source})"


def _captions(item: dict, key: str, n: Optional[int], path: str, line: int, index: int) -> Tuple[str, ...]:
    caps = item[key]
    where = f"item {index} (videoID {item.get('videoID')!r})"
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise DataFormatError(path, line, f"{where}: {key!r} must be a list of strings")
    if n is not None and len(caps) != n:
        raise DataFormatError(path, line, f"{where}: {key!r} has {len(caps)} captions, expected {n}")
    for j, c in enumerate(caps):
        if not c.strip():
            raise DataFormatError(path, line, f"{where}: {key!r}[{j}] is empty")
    return tuple(caps)


def load_vatex(annotations: PathLike, feature_dir: Optional[PathLike] = None, *,
               feature_dim: Optional[int] = I3D_FEATURE_DIM, n_captions: Optional[int] = 10,
               require_chinese: bool = True, check_shapes: bool = False) -> VatexDataset:
    """Read VATEX annotations and (optionally) locate the per-video feature files.

    annotations: the JSON list (gzip detected). feature_dir: directory of ``<videoID>.npy``
    files, each (T, D) numeric; None skips features. feature_dim: the expected D (None: any).
    n_captions: captions expected per language (None: any non-zero number). require_chinese:
    False allows items without ``chCap`` (``zh`` is then empty). check_shapes: also open every
    feature file's header now (otherwise only their existence is checked here and the shape when
    :meth:`VatexVideo.features` is called).

    Returns a :class:`VatexDataset` of :class:`VatexVideo` in file order. Raises DataFormatError:
    invalid JSON (file and line), an empty list, an item that is not an object or lacks keys, wrong caption
    counts or empty captions, duplicate video ids (file, line and item index), missing feature
    files (names the first missing files and their count), bad feature shapes.
    """
    path = os.fspath(annotations)
    text = read_text(path)
    videos: List[VatexVideo] = []
    seen: dict = {}
    fdir = Path(feature_dir) if feature_dir is not None else None
    if fdir is not None and not fdir.is_dir():
        raise DataFormatError(fdir, None, "feature directory not found")
    for index, line, item in _iter_json_array(text, path):
        if not isinstance(item, dict):
            raise DataFormatError(path, line, f"item {index}: expected an object, got {type(item).__name__}")
        required = ("videoID", "enCap", "chCap") if require_chinese else ("videoID", "enCap")
        missing = [k for k in required if k not in item]
        if missing:
            raise DataFormatError(path, line, f"item {index}: missing key(s) {missing}")
        vid = item["videoID"]
        if not isinstance(vid, str) or not vid or "/" in vid or "\\" in vid or vid in (".", ".."):
            raise DataFormatError(path, line, f"item {index}: videoID must be a non-empty file-name-safe "
                                  f"string, got {vid!r}")
        if vid in seen:
            raise DataFormatError(path, line, f"item {index}: duplicate videoID {vid!r} "
                                  f"(first at item {seen[vid]})")
        seen[vid] = index
        en = _captions(item, "enCap", n_captions, path, line, index)
        zh = _captions(item, "chCap", n_captions, path, line, index) if "chCap" in item else ()
        fpath = fdir / f"{vid}.npy" if fdir is not None else None
        videos.append(VatexVideo(vid, en, zh, fpath, line, feature_dim))
    if not videos:
        raise DataFormatError(path, None, "no videos (the JSON list is empty)")
    if fdir is not None:
        check_files_exist([v.feature_path for v in videos], "feature file",  # type: ignore[misc]
                          f"videos lack features in {fdir}")
        if check_shapes:
            for v in videos:
                v.features()
    return VatexDataset(videos, path)
