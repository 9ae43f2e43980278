"""Plain-text corpora: a directory holding ``train.txt`` and ``val.txt`` (each optionally gzipped,
``.txt.gz``), one sentence a line; blank lines are skipped. Read line by line, so that a corpus of
any size streams (e.g. the 10M / 100M-word text of the FLAVA ablation).
"""
from __future__ import annotations

import os
from typing import Dict, Iterator, Optional

from ._io import DataFormatError, PathLike, iter_lines

__all__ = ["TEXT_SPLITS", "plain_text_files", "iter_plain_text"]

#: the splits of a plain-text corpus
TEXT_SPLITS = ("train", "val")


def plain_text_files(path: PathLike, splits: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """split -> the file of each split present in the directory ``path`` (``splits``: split ->
    file relative to ``path``, overriding ``<split>.txt`` / ``<split>.txt.gz``). ValueError when
    ``path`` is not a directory or holds no train file."""
    root = os.fspath(path)
    if not os.path.isdir(root):
        raise ValueError(f"{root!r} is not a directory (a plain-text corpus is a directory of train.txt, val.txt)")
    out = {}
    for split in TEXT_SPLITS:
        names = [splits[split]] if splits and split in splits else [f"{split}.txt", f"{split}.txt.gz"]
        found = [os.path.join(root, n) for n in names if os.path.isfile(os.path.join(root, n))]
        if found:
            out[split] = found[0]
    if "train" not in out:
        raise ValueError(f"{root!r} holds no train.txt or train.txt.gz")
    return out


def iter_plain_text(path: PathLike, split: str = "train", splits: Optional[Dict[str, str]] = None) -> Iterator[str]:
    """The sentences of ``split`` of the plain-text corpus at ``path``, one per non-blank line
    (stripped), streamed. DataFormatError for a split the corpus lacks, or one with no sentence."""
    files = plain_text_files(path, splits)
    if split not in files:
        raise DataFormatError(path, None, f"no {split} split ({split}.txt or {split}.txt.gz)")
    n = 0
    for _, line in iter_lines(files[split]):
        line = line.strip()
        if line:
            n += 1
            yield line
    if n == 0:
        raise DataFormatError(files[split], None, "no sentence (every line is blank)")
