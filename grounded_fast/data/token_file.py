"""Token ids of a text corpus in a file on disk, read by memory map: a training text of any size
(the FLAVA ablation's 10M-100M words) is tokenised once, in chunks, and sampled by sentence
without the whole of it in memory, in the study's process or in its workers (a
:class:`TokenFile` pickles as its path).
"""
from __future__ import annotations

import json
import os
from typing import Callable, Iterable, List, Optional, Tuple

import numpy as np
import torch

from .._atomic import check_file, write_atomic

__all__ = ["TokenFile", "write_token_file", "token_file_problems"]

RECORD_SUFFIX = ".json"     # a token file's record: its settings, rows, and the sha256 / size of its two files


class TokenFile:
    """(N, L) token ids, one padded row per sentence, in ``path`` (uint16 when the vocabulary fits,
    else int32), with ``words``: (N,) int64 running count of the sentences' words (whitespace-split).
    ``tf[idx]`` (an int, a slice or an index array / tensor) -> int64 tensor of those rows."""

    def __init__(self, path: str, rows: int, length: int, dtype: str):
        self.path, self.rows, self.length, self.dtype = path, int(rows), int(length), dtype
        self._map: Optional[np.memmap] = None

    @property
    def shape(self) -> Tuple[int, int]:
        return self.rows, self.length

    def __len__(self) -> int:
        return self.rows

    def _array(self) -> np.memmap:
        if self._map is None:
            self._map = np.memmap(self.path, dtype=self.dtype, mode="r", shape=self.shape)
        return self._map

    def __getitem__(self, idx) -> torch.Tensor:
        if torch.is_tensor(idx):
            idx = idx.cpu().numpy()
        return torch.from_numpy(np.asarray(self._array()[idx], dtype=np.int64))

    def words(self) -> torch.Tensor:
        """(N,) int64: the words of sentences 0..n, for every n (read from ``<path>.words.npy``)."""
        return torch.from_numpy(np.load(self.path + ".words.npy"))

    def __getstate__(self):
        return {"path": self.path, "rows": self.rows, "length": self.length, "dtype": self.dtype}

    def __setstate__(self, state):
        self.__init__(**state)

    def __repr__(self) -> str:
        return f"TokenFile({self.path!r}, rows={self.rows}, length={self.length}, dtype={self.dtype})"


def write_token_file(sentences: Iterable[str], tokenize: Callable[[List[str]], np.ndarray], vocab_size: int,
                     length: int, path: str, max_words: Optional[int] = None, chunk: int = 10_000) -> TokenFile:
    """Tokenise ``sentences`` (an iterable, consumed lazily) ``chunk`` at a time with ``tokenize``
    (list of str -> (n, length) int array, padded / truncated to ``length``) into ``path``, stopping
    after the first sentence that brings the words to ``max_words`` (None: all). Reuses ``path``
    when its record (``<path>.json``) says it holds the same rows already (same ``max_words``,
    ``length``, vocabulary; the caller keys the path by the corpus) and both files match the sha256
    and size it records (a damaged one is rewritten). Returns the :class:`TokenFile`."""
    dtype = "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "int32"
    record = {"length": int(length), "vocab_size": int(vocab_size), "max_words": max_words, "dtype": dtype}
    meta = path + RECORD_SUFFIX
    if os.path.exists(meta):
        with open(meta) as f:
            done = json.load(f)
        if {k: done.get(k) for k in record} == record and not token_file_problems(meta):
            return TokenFile(path, done["rows"], length, dtype)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    words: List[int] = []
    rows = 0

    def fill(out) -> None:
        nonlocal rows
        batch: List[str] = []
        total = 0

        def flush() -> None:
            nonlocal rows
            ids = np.asarray(tokenize(batch))
            if ids.shape != (len(batch), length):
                raise ValueError(f"tokenize returned {ids.shape} for {len(batch)} sentences, expected "
                                 f"({len(batch)}, {length})")
            out.write(np.ascontiguousarray(ids, dtype=dtype).tobytes())
            rows += len(batch)
            batch.clear()

        for s in sentences:
            batch.append(s)
            total += len(s.split())
            words.append(total)
            if len(batch) == chunk:
                flush()
            if max_words is not None and total >= max_words:
                break
        if batch:
            flush()

    files = {"tokens": write_atomic(path, fill),
             "words": write_atomic(path + ".words.npy", lambda f: np.save(f, np.asarray(words, dtype=np.int64)))}
    write_atomic(meta, json.dumps({**record, "rows": rows, "files": {
        k: {"name": w.path.name, "sha256": w.sha256, "size": w.size} for k, w in files.items()}}).encode())
    return TokenFile(path, rows, length, dtype)


def token_file_problems(record_path: str) -> List[str]:
    """What is wrong with the token file whose record is ``record_path`` (``<path>.json``): one line
    per missing, truncated or corrupted file, or a record without hashes (written before they were
    recorded; rebuilt when the study next prepares it); [] when both files match it."""
    with open(record_path) as f:
        files = json.load(f).get("files")
    if not files:
        return [f"token file record without hashes (rebuilt when the study next prepares it): {record_path}"]
    folder = os.path.dirname(record_path)
    return [p for rec in files.values()
            if (p := check_file(os.path.join(folder, rec["name"]), rec["sha256"], rec["size"]))]
