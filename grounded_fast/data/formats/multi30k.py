"""Multi30k task 2 (Elliott et al. 2016): 5 English and 5 German descriptions per Flickr30k image.

Layout (the upstream ``data/task2`` folder)::

    raw/{split}.{k}.{en,de}[.gz]     k = 1..5, one description a line
    image_splits/{split}_images.txt  one Flickr30k image file name a line

Line i of every raw file belongs to image i of the split's image list. Within an image the five
English descriptions were written independently by different people, so they are *paraphrases*
of each other (same picture, different wording). The German descriptions were also written
independently from the image -- they are not translations of the English ones -- so an
English/German pair is *translation-like* (comparable, same content, different language), not a
strict translation pair; ``en[k]`` and ``de[k]`` share nothing beyond the image.

A small subset ships with the package (``grounded_fast/data/builtin``, see its README):
:func:`load_multi30k_builtin`, and the English descriptions of more train images as a text pool:
:func:`iter_multi30k_builtin_english`.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

from ..._atomic import write_atomic
from ._io import DataFormatError, PathLike, iter_lines

__all__ = ["Multi30kImage", "MULTI30K_LANGUAGES", "load_multi30k", "load_multi30k_jsonl",
           "write_multi30k_jsonl", "load_multi30k_builtin", "MULTI30K_BUILTIN_FILES", "MULTI30K_BUILTIN_ENGLISH",
           "iter_multi30k_builtin_english"]

MULTI30K_LANGUAGES = ("en", "de")
_N_DESCRIPTIONS = 5
_BUILTIN_DIR = Path(__file__).resolve().parent.parent / "builtin"
#: split -> file under grounded_fast/data/builtin (first 1000 train, first 200 val images)
MULTI30K_BUILTIN_FILES: Dict[str, str] = {
    "train": "multi30k_task2_train_first1000.jsonl.gz",
    "val": "multi30k_task2_val_first200.jsonl.gz",
}
#: the English descriptions of the first 4000 train images, one a line, image by image (an image's
#: five in order): 20,000 lines, 242,040 words; its first 5000 lines are the train subset's ``en``
MULTI30K_BUILTIN_ENGLISH: Path = _BUILTIN_DIR / "multi30k_task2_train_en_first4000.txt.gz"


@dataclass(frozen=True)
class Multi30kImage:
    """One image: ``image_id`` (Flickr30k file name, e.g. ``"1000092795.jpg"``), ``en`` and
    ``de`` (tuples of str, 5 each in task 2)."""
    image_id: str
    en: Tuple[str, ...]
    de: Tuple[str, ...]

    def paraphrase_pairs(self) -> List[Tuple[str, str]]:
        """All unordered pairs of distinct English descriptions (10 for 5 descriptions)."""
        return list(combinations(self.en, 2))

    def translation_pairs(self) -> List[Tuple[str, str]]:
        """``(en[k], de[k])`` for each k: translation-like pairs (independent descriptions of the
        same image, not strict translations; the pairing by k is a convention, any en/de
        combination is equally related)."""
        return list(zip(self.en, self.de))


def _resolve_root(root: PathLike) -> Path:
    root = Path(root)
    for cand in (root, root / "task2", root / "data" / "task2"):
        if (cand / "raw").is_dir() and (cand / "image_splits").is_dir():
            return cand
    raise DataFormatError(root, None, "not a Multi30k task 2 folder (expected raw/ and "
                          "image_splits/ here, in task2/ or in data/task2/)")


def _caption_file(raw: Path, split: str, k: int, lang: str) -> Path:
    gz = raw / f"{split}.{k}.{lang}.gz"
    plain = raw / f"{split}.{k}.{lang}"
    return plain if (plain.is_file() and not gz.is_file()) else gz


def _read_nonempty(path: Path, what: str) -> List[str]:
    out = []
    for lineno, text in iter_lines(path):
        text = text.strip()
        if not text:
            raise DataFormatError(path, lineno, f"empty line (expected {what})")
        out.append(text)
    return out


def load_multi30k(root: PathLike, split: str = "train") -> List[Multi30kImage]:
    """Read one split of Multi30k task 2.

    root: the task 2 folder (``raw/`` + ``image_splits/``), or a folder holding ``task2/`` or
    ``data/task2/`` (the upstream repository). split: ``"train"``, ``"val"``, ``"test_2016"``
    (any split with all ten raw files). Caption files may be gzipped or plain text.

    Returns one :class:`Multi30kImage` per line of ``image_splits/{split}_images.txt`` (in file
    order), each with 5 English and 5 German descriptions (leading/trailing whitespace removed).
    Raises DataFormatError for missing files (all of them named), an empty image list (the
    file), an empty line (file and line), a duplicate image id (file and line), and line counts
    that differ from the image list (every differing file named with its count).
    """
    base = _resolve_root(root)
    image_file = base / "image_splits" / f"{split}_images.txt"
    files = {(lang, k): _caption_file(base / "raw", split, k, lang)
             for lang in MULTI30K_LANGUAGES for k in range(1, _N_DESCRIPTIONS + 1)}
    missing = [p for p in [image_file, *files.values()] if not p.is_file()]
    if missing:
        raise DataFormatError(missing[0], None, f"file not found ({len(missing)} file(s) of split "
                              f"{split!r} missing: {', '.join(str(p) for p in missing)})")
    images = _read_nonempty(image_file, "an image file name")
    if not images:
        raise DataFormatError(image_file, None, f"no images in split {split!r} (the file is empty)")
    first_seen: Dict[str, int] = {}
    for i, img in enumerate(images):
        if img in first_seen:
            raise DataFormatError(image_file, i + 1, f"duplicate image id {img!r} "
                                  f"(first on line {first_seen[img] + 1})")
        first_seen[img] = i
    captions = {key: _read_nonempty(p, "a description") for key, p in files.items()}
    wrong = [(files[key], len(c)) for key, c in captions.items() if len(c) != len(images)]
    if wrong:
        detail = "; ".join(f"{p} has {n}" for p, n in wrong)
        raise DataFormatError(wrong[0][0], None, f"line counts differ from {image_file} "
                              f"({len(images)} images): {detail}")
    en = [captions[("en", k)] for k in range(1, _N_DESCRIPTIONS + 1)]
    de = [captions[("de", k)] for k in range(1, _N_DESCRIPTIONS + 1)]
    return [Multi30kImage(img, tuple(c[i] for c in en), tuple(c[i] for c in de))
            for i, img in enumerate(images)]


def write_multi30k_jsonl(images: Iterable[Multi30kImage], path: PathLike) -> None:
    """Write images as JSON lines ``{"image": id, "en": [...], "de": [...]}``, gzipped when
    ``path`` ends in ``.gz`` (byte-reproducible: the gzip timestamp is 0), atomically."""
    lines = "".join(json.dumps({"image": im.image_id, "en": list(im.en), "de": list(im.de)},
                               ensure_ascii=False) + "\n" for im in images).encode("utf-8")

    def gzipped(raw):
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as f:
            f.write(lines)

    write_atomic(path, gzipped if Path(path).name.endswith(".gz") else lines)


def load_multi30k_jsonl(path: PathLike, n_captions: Optional[int] = _N_DESCRIPTIONS) -> List[Multi30kImage]:
    """Read images written by :func:`write_multi30k_jsonl` (gzip detected; blank lines skipped).

    n_captions: descriptions required per language (None: any non-zero number). Raises
    DataFormatError naming file and line for bad JSON, missing keys, wrong types, empty
    descriptions or a wrong count, and naming the file when it holds no image.
    """
    out: List[Multi30kImage] = []
    for lineno, text in iter_lines(path):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(obj, dict) or not all(k in obj for k in ("image", *MULTI30K_LANGUAGES)):
            raise DataFormatError(path, lineno, "expected an object with keys 'image', 'en', 'de'")
        if not isinstance(obj["image"], str) or not obj["image"].strip():
            raise DataFormatError(path, lineno, "'image' must be a non-empty string")
        caps = []
        for lang in MULTI30K_LANGUAGES:
            c = obj[lang]
            if not isinstance(c, list) or not c or not all(isinstance(s, str) and s.strip() for s in c):
                raise DataFormatError(path, lineno, f"{lang!r} must be a list of non-empty strings")
            if n_captions is not None and len(c) != n_captions:
                raise DataFormatError(path, lineno, f"{lang!r} has {len(c)} descriptions, expected {n_captions}")
            caps.append(tuple(c))
        out.append(Multi30kImage(obj["image"], caps[0], caps[1]))
    if not out:
        raise DataFormatError(path, None, "no images (the file is empty)")
    return out


def load_multi30k_builtin(split: str = "train") -> List[Multi30kImage]:
    """The subset shipped with the package: ``"train"`` -> the first 1000 images of the train
    split, ``"val"`` -> the first 200 of val, each with 5 en + 5 de descriptions (see
    ``grounded_fast/data/builtin/README.md`` for source and licence)."""
    if split not in MULTI30K_BUILTIN_FILES:
        raise ValueError(f"no built-in Multi30k split {split!r}; available: {sorted(MULTI30K_BUILTIN_FILES)}")
    return load_multi30k_jsonl(_BUILTIN_DIR / MULTI30K_BUILTIN_FILES[split])


def iter_multi30k_builtin_english() -> Iterator[str]:
    """The shipped English text pool, streamed: the five English descriptions of each of the first
    4000 train images, image by image (:data:`MULTI30K_BUILTIN_ENGLISH`; 242,040 words). Its first
    5000 sentences are those of :func:`load_multi30k_builtin` ``("train")``, in the same order."""
    for _, line in iter_lines(MULTI30K_BUILTIN_ENGLISH):
        yield line.strip()
