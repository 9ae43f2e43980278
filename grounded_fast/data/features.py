"""On-disk cache of extracted features, keyed by (encoder key, item id).

Layout (one namespace directory per encoder key)::

    <directory>/
      <slug>-<hash>/               # slug of the encoder key + 12 hex digits of its sha1
        index.json                 # {"format": 1, "key": ..., "shards": {file: {...}}}
        shard-<uuid>.npz           # one per committed batch: arrays "0", "1", ... (item axis first)

``index.json`` records, per shard, the item ids it holds, the sha256 and size of the file and the
shape / dtype of every array.  Shards and the index are written with the package's atomic writer
(:func:`grounded_fast._atomic.write_atomic`: temporary file, fsync, ``os.replace``), the index
under an advisory ``fcntl`` lock where available, so that concurrent writers merge rather than
overwrite each other.  A shard becomes visible only when the index names it, so an interrupted
extraction leaves every completed batch usable and never a partial file in the index: the next
``get_or_compute`` computes only what is missing.  Files that are not in the index (an interrupted
commit, ``*.tmp``) are ignored and removed by :meth:`FeatureCache.clean`.

Every shard is checked against the index whenever it is read (size, sha256, array shapes and
dtypes).  :meth:`FeatureCache.get_or_compute` drops a shard that fails (or is missing) from the
index, warns once naming it (:class:`CorruptCacheWarning`) and recomputes its items;
:meth:`FeatureCache.get`, which cannot recompute, raises :class:`CorruptCacheError` naming the file.
An index entry that is not a shard file name of its own directory (an absolute path, ``..``, a
symlink that leads out) is refused with :class:`UnsafeCacheIndexError`: nothing is read or deleted
through it.

Outputs with ragged trailing axes (e.g. token states ``(n, L, D)`` whose ``L`` differs between
batches, together with their ``(n, L)`` masks) are zero-padded to the largest size when items
from several shards are assembled.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .._atomic import write_atomic

__all__ = ["FeatureCache", "CorruptCacheError", "CorruptCacheWarning", "UnsafeCacheIndexError"]

_FORMAT = 1
_INDEX = "index.json"
_SHARD_NAME = re.compile(r"shard-[A-Za-z0-9_-]+\.npz")
_SHARD_ADVICE = ("FeatureCache.get_or_compute drops it from the index and recomputes its items "
                 "(FeatureCache.discard(key, [file]) drops it without recomputing)")


class CorruptCacheError(RuntimeError):
    """A cache file does not match its index entry (or cannot be parsed). ``path`` names it,
    ``reason`` says what is wrong."""

    def __init__(self, path: Union[str, os.PathLike], reason: str, advice: str = _SHARD_ADVICE):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"feature cache file {self.path} is corrupted: {reason}. {advice}.")


class UnsafeCacheIndexError(CorruptCacheError):
    """An ``index.json`` entry names a file outside its cache directory (or no shard file at all)."""


class CorruptCacheWarning(RuntimeWarning):
    """A corrupted or missing shard was dropped from the index; its items are recomputed."""


def _to_numpy(x) -> np.ndarray:
    try:
        import torch
        if isinstance(x, torch.Tensor):
            x = x.detach()
            if x.dtype == torch.bfloat16:
                x = x.float()
            return x.cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(x)


def _normalise_output(out, n: int) -> Tuple[str, List[str], List[np.ndarray]]:
    """encoder_fn output -> (kind, names, arrays); kind in {'array', 'tuple', 'dict'}."""
    if isinstance(out, dict):
        kind, names, arrays = "dict", [str(k) for k in out], [_to_numpy(v) for v in out.values()]
    elif isinstance(out, (tuple, list)):
        kind, names, arrays = "tuple", [str(i) for i in range(len(out))], [_to_numpy(v) for v in out]
    else:
        kind, names, arrays = "array", ["0"], [_to_numpy(out)]
    for name, a in zip(names, arrays):
        if a.ndim == 0 or a.shape[0] != n:
            raise ValueError(f"encoder_fn output {name!r} has shape {a.shape}; its first axis must be the "
                             f"batch ({n} items)")
        if a.dtype == object:
            raise TypeError(f"encoder_fn output {name!r} has dtype object; return numeric arrays")
    return kind, names, arrays


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _locked(lock_path: Path):
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no cross-process lock
        yield
        return
    with open(lock_path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _pad_to(a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    if tuple(a.shape[1:]) == tuple(shape):
        return a
    pad = [(0, 0)] + [(0, t - s) for s, t in zip(a.shape[1:], shape)]
    return np.pad(a, pad)


def _shard_name_problem(name: Any) -> Optional[str]:
    """None if ``name`` is a plain shard file name (``shard-<id>.npz``), else why it is not."""
    if not isinstance(name, str) or not _SHARD_NAME.fullmatch(name):
        return f"{name!r} is not a shard file name (shard-<id>.npz inside the cache directory)"
    return None


def _entry_problem(meta: Any) -> Optional[str]:
    """None if an index entry has the fields the cache reads, else what is wrong."""
    if not isinstance(meta, dict):
        return "is not an object"
    ids, arrays, names = meta.get("ids"), meta.get("arrays"), meta.get("names")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return "has no list of item ids"
    if not isinstance(meta.get("sha256"), str) or not isinstance(meta.get("bytes"), int):
        return "has no sha256 / size"
    if (not isinstance(arrays, list) or not isinstance(names, list) or len(arrays) != len(names)
            or not all(isinstance(a, dict) and isinstance(a.get("shape"), list) and isinstance(a.get("dtype"), str)
                       for a in arrays)):
        return "has no array shapes / dtypes"
    if meta.get("kind") not in ("array", "tuple", "dict"):
        return f"has an unknown output kind {meta.get('kind')!r}"
    return None


class _Namespace:
    """The shards of one encoder key (in-memory view of ``index.json``)."""

    def __init__(self, root: Path, key: str):
        self.key = key
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[:60] or "features"
        self.dir = root / f"{slug}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
        self.index_path = self.dir / _INDEX
        self.lock_path = self.dir / ".lock"
        self.shards: Dict[str, dict] = {}
        self.loc: Dict[str, Tuple[str, int]] = {}  # id -> (shard file, row)
        self._mtime = None
        self.reload()

    def shard_path(self, fname: str) -> Path:
        """The path of index entry ``fname``; :class:`UnsafeCacheIndexError` unless it is a shard
        file name whose path (symlinks followed) lies in this directory."""
        problem = _shard_name_problem(fname)
        if problem is None:
            target = (self.dir / fname).resolve()
            if target.parent != self.dir.resolve():
                problem = f"{fname!r} resolves to {target}, outside the cache directory {self.dir}"
        if problem:
            raise UnsafeCacheIndexError(self.index_path, f"entry {problem}",
                                        "Refusing to read or delete through it: check who wrote this index, "
                                        "then delete the index (the features of this key are recomputed)")
        return self.dir / fname

    def reload(self) -> None:
        if not self.index_path.is_file():
            self.shards, self.loc, self._mtime = {}, {}, None
            return
        advice = "Delete it: the features of this key are then recomputed"
        try:
            raw = self.index_path.read_bytes()
            index = json.loads(raw.decode("utf-8"))
            if not isinstance(index, dict):
                raise ValueError(f"not a JSON object: {str(index)[:40]!r}")
            if index.get("format") != _FORMAT or not isinstance(index.get("shards"), dict):
                raise ValueError(f"unknown format {index.get('format')!r}")
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptCacheError(self.index_path, f"cannot parse the index ({e})", advice) from e
        if index.get("key") != self.key:
            raise CorruptCacheError(self.index_path, f"it belongs to key {index.get('key')!r}, not {self.key!r}",
                                    advice)
        shards = index["shards"]
        loc = {}
        for fname, meta in shards.items():
            self.shard_path(fname)
            problem = _entry_problem(meta)
            if problem:
                raise CorruptCacheError(self.index_path, f"entry {fname!r} {problem}", advice)
            for row, item in enumerate(meta["ids"]):
                loc[item] = (fname, row)
        self.shards, self.loc = shards, loc
        self._mtime = self.index_path.stat().st_mtime_ns

    def refresh(self) -> None:
        """Re-read the index if another writer changed it."""
        m = self.index_path.stat().st_mtime_ns if self.index_path.is_file() else None
        if m != self._mtime:
            self.reload()

    def _write_index(self) -> None:
        index = {"format": _FORMAT, "key": self.key, "shards": self.shards}
        write_atomic(self.index_path, json.dumps(index, separators=(",", ":")).encode("utf-8"))
        self._mtime = self.index_path.stat().st_mtime_ns

    def commit(self, ids: List[str], kind: str, names: List[str], arrays: List[np.ndarray]) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        fname = f"shard-{uuid.uuid4().hex[:16]}.npz"
        buf = io.BytesIO()
        np.savez(buf, **{f"a{i}": a for i, a in enumerate(arrays)})
        written = write_atomic(self.dir / fname, buf.getvalue())  # 1. the shard, complete, under its final name
        meta = {"ids": list(ids), "sha256": written.sha256, "bytes": written.size, "kind": kind,
                "names": names,
                "arrays": [{"shape": list(a.shape), "dtype": a.dtype.str} for a in arrays]}
        with _locked(self.lock_path):  # 2. then the index that makes it visible
            self.reload()
            self.shards[fname] = meta
            self._write_index()
            for row, item in enumerate(ids):
                self.loc[item] = (fname, row)
        return fname

    def drop(self, fname: str, sha256: str) -> bool:
        """Remove shard ``fname`` from the index (if it still holds the version with ``sha256``)
        and delete its file; False if another writer already replaced or dropped it."""
        path = self.shard_path(fname)
        with _locked(self.lock_path):
            self.reload()
            dropped = self.shards.get(fname, {}).get("sha256") == sha256
            if dropped:
                del self.shards[fname]
                self._write_index()
                self.reload()
        if dropped:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return dropped

    def load_shard(self, fname: str) -> List[np.ndarray]:
        """The arrays of shard ``fname``, checked against the index (size, sha256, shapes, dtypes)."""
        meta = self.shards[fname]
        path = self.shard_path(fname)
        try:
            data = path.read_bytes()
        except FileNotFoundError as e:
            raise CorruptCacheError(path, "the file is missing but listed in the index") from e
        if len(data) != meta["bytes"]:
            raise CorruptCacheError(path, f"size {len(data)} bytes, the index says {meta['bytes']}")
        got = _sha256_bytes(data)
        if got != meta["sha256"]:
            raise CorruptCacheError(path, f"sha256 {got[:16]}... != {meta['sha256'][:16]}... in the index")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = [z[f"a{i}"] for i in range(len(meta["arrays"]))]
        except Exception as e:  # zipfile.BadZipFile, ValueError, KeyError, ...
            raise CorruptCacheError(path, f"cannot read the arrays ({type(e).__name__}: {e})") from e
        n = len(meta["ids"])
        for i, (a, spec) in enumerate(zip(arrays, meta["arrays"])):
            if list(a.shape) != spec["shape"] or a.dtype.str != spec["dtype"] or a.shape[0] != n:
                raise CorruptCacheError(path, f"array {meta['names'][i]!r} has shape {a.shape} dtype "
                                              f"{a.dtype.str}, the index says {spec['shape']} {spec['dtype']}")
        return arrays


class _CorruptShards(Exception):
    """Shards that failed their check while assembling: [(file, sha256 in the index, error)]."""

    def __init__(self, bad: List[Tuple[str, str, CorruptCacheError]]):
        super().__init__(bad)
        self.bad = bad


class FeatureCache:
    """Cache of features extracted by an encoder, keyed by (encoder key, item id).

    >>> cache = FeatureCache("~/.cache/grounded_fast/features")
    >>> patches = cache.get_or_compute(image_ids, load_images, vision.patches, batch_size=32)

    ``encoder_fn`` is called on ``inputs_fn(batch_of_ids)`` and returns an array / tensor with the
    item axis first, or a tuple or dict of them (e.g. ``text.encode`` -> ``(hidden, mask)``).  The
    key defaults to ``encoder_fn.cache_key`` or, for a bound method such as ``vision.patches``, to
    ``<encoder.cache_key>/<method name>``; pass ``key=`` otherwise.  Item ids are converted with
    ``str``.

    Parameters
    ----------
    directory : the cache root (created on first write).
    progress : default for showing progress during extraction (a bar on a terminal, else a line per tenth).

    Every shard read is checked against the index (size, sha256, shapes, dtypes): hashing about
    doubles the time of reading cached features from the page cache, still far below the time of
    computing them.
    """

    def __init__(self, directory: Union[str, os.PathLike], *, progress: bool = True):
        self.directory = Path(directory).expanduser()
        self.progress = bool(progress)
        self._ns: Dict[str, _Namespace] = {}

    # -- keys ----------------------------------------------------------------------------------
    @staticmethod
    def key_for(encoder_fn: Callable) -> Optional[str]:
        """The cache key an encoder function carries (``cache_key`` attribute, or its owner's)."""
        key = getattr(encoder_fn, "cache_key", None)
        if isinstance(key, str):
            return key
        owner = getattr(encoder_fn, "__self__", None)
        okey = getattr(owner, "cache_key", None)
        if isinstance(okey, str):
            return f"{okey}/{encoder_fn.__name__}"
        return None

    def _namespace(self, key: str) -> _Namespace:
        ns = self._ns.get(key)
        if ns is None:
            ns = self._ns[key] = _Namespace(self.directory, key)
        else:
            ns.refresh()
        return ns

    def path_for(self, key: str) -> Path:
        """Directory holding the shards of ``key``."""
        return self._namespace(key).dir

    # -- queries -------------------------------------------------------------------------------
    def cached_ids(self, key: str) -> List[str]:
        return list(self._namespace(key).loc)

    def contains(self, key: str, item_id) -> bool:
        return str(item_id) in self._namespace(key).loc

    def missing(self, key: str, ids: Sequence) -> List[str]:
        """Ids (as str, first occurrence order, deduplicated) not yet in the cache for ``key``."""
        loc = self._namespace(key).loc
        seen, out = set(), []
        for i in ids:
            s = str(i)
            if s not in loc and s not in seen:
                seen.add(s)
                out.append(s)
        return out

    # -- main entry point ----------------------------------------------------------------------
    def get_or_compute(self, ids: Sequence, inputs_fn: Callable[[List[str]], Any],
                       encoder_fn: Callable[[Any], Any], batch_size: int = 64, *,
                       key: Optional[str] = None, progress: Optional[bool] = None,
                       return_tensors: str = "np"):
        """Features of ``ids`` in order, computing (in batches, with a progress bar) only the
        missing ones; each computed batch is committed as one shard before the next starts.

        ``inputs_fn(list_of_str_ids)`` returns what ``encoder_fn`` takes for that batch.  The result
        mirrors ``encoder_fn``'s output structure (an array, a tuple or a dict of arrays) with the
        items of ``ids`` stacked along axis 0 (``return_tensors='pt'`` gives torch tensors).
        A shard that fails its check (or is missing) is dropped from the index with one
        :class:`CorruptCacheWarning` naming it, and its items are recomputed.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if return_tensors not in ("np", "pt"):
            raise ValueError("return_tensors must be 'np' or 'pt'")
        key = key or self.key_for(encoder_fn)
        if not key:
            raise ValueError("cannot tell which encoder produced these features: pass key='<encoder "
                             "name/version>' (or give encoder_fn a cache_key attribute)")
        ns = self._namespace(key)
        show = self.progress if progress is None else progress
        self._compute(ns, self.missing(key, ids), inputs_fn, encoder_fn, batch_size, show)
        try:
            return self._assemble(ns, key, ids, return_tensors, collect_corrupt=True)
        except _CorruptShards as e:
            for fname, sha, err in e.bad:
                if ns.drop(fname, sha):
                    warnings.warn(f"feature cache shard {err.path} was dropped from {ns.index_path}: {err.reason}; "
                                  f"its items are recomputed", CorruptCacheWarning, stacklevel=2)
        self._compute(ns, self.missing(key, ids), inputs_fn, encoder_fn, batch_size, show)
        return self._assemble(ns, key, ids, return_tensors)

    @staticmethod
    def _compute(ns: _Namespace, todo: List[str], inputs_fn: Callable, encoder_fn: Callable, batch_size: int,
                 show: bool) -> None:
        """Encode ``todo`` in batches, committing each batch as one shard."""
        if not todo:
            return
        bar = None
        if show:
            from .._progress import progress_bar
            bar = progress_bar(len(todo), "extracting features", unit="item", every=max(1, len(todo) // 10))
        try:
            for s in range(0, len(todo), batch_size):
                chunk = todo[s:s + batch_size]
                out = encoder_fn(inputs_fn(chunk))
                kind, names, arrays = _normalise_output(out, len(chunk))
                ns.commit(chunk, kind, names, arrays)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()

    def get(self, key: str, ids: Sequence, *, return_tensors: str = "np"):
        """Features of ``ids`` (all must be cached; ``KeyError`` lists the missing ones).
        A shard that fails its check raises :class:`CorruptCacheError` naming it."""
        return self._assemble(self._namespace(key), key, ids, return_tensors)

    def _assemble(self, ns: _Namespace, key: str, ids: Sequence, return_tensors: str,
                  collect_corrupt: bool = False):
        """The cached features of ``ids`` (see :meth:`get`); with ``collect_corrupt`` every shard
        is checked and those that fail are raised together as :class:`_CorruptShards`."""
        sids = [str(i) for i in ids]
        missing = [i for i in sids if i not in ns.loc]
        if missing:
            raise KeyError(f"{len(missing)} id(s) not cached for key {key!r}, e.g. {missing[:5]}")
        if not sids:
            raise KeyError("no ids requested")
        by_shard: Dict[str, List[Tuple[int, int]]] = {}
        for pos, i in enumerate(sids):
            fname, row = ns.loc[i]
            by_shard.setdefault(fname, []).append((pos, row))
        metas = [ns.shards[f] for f in by_shard]
        kind, names = metas[0]["kind"], metas[0]["names"]
        for f, m in zip(by_shard, metas):
            if m["names"] != names or m["kind"] != kind:
                raise CorruptCacheError(ns.dir / f, f"its outputs {m['names']} differ from {names} in other "
                                                    f"shards of key {key!r}")
        out: List[Optional[np.ndarray]] = [None] * len(names)
        corrupt = []
        for fname, rows in by_shard.items():
            try:
                arrays = ns.load_shard(fname)
            except UnsafeCacheIndexError:
                raise
            except CorruptCacheError as e:
                if not collect_corrupt:
                    raise
                corrupt.append((fname, ns.shards[fname]["sha256"], e))
                continue
            pos = np.fromiter((p for p, _ in rows), dtype=np.int64, count=len(rows))
            src = np.fromiter((r for _, r in rows), dtype=np.int64, count=len(rows))
            for j, a in enumerate(arrays):
                if out[j] is None:
                    shape = [max(m["arrays"][j]["shape"][d] for m in metas)
                             for d in range(1, a.ndim)]
                    dtype = np.result_type(*[np.dtype(m["arrays"][j]["dtype"]) for m in metas])
                    out[j] = np.zeros((len(sids), *shape), dtype=dtype)
                out[j][pos] = _pad_to(a[src], out[j].shape[1:])
        if corrupt:
            raise _CorruptShards(corrupt)
        if return_tensors == "pt":
            import torch
            out = [torch.from_numpy(a) for a in out]
        if kind == "array":
            return out[0]
        if kind == "dict":
            return dict(zip(names, out))
        return tuple(out)

    # -- maintenance ---------------------------------------------------------------------------
    def verify_all(self, key: str) -> int:
        """Check every shard of ``key`` (raises :class:`CorruptCacheError`); returns the shard count."""
        ns = self._namespace(key)
        for fname in list(ns.shards):
            ns.load_shard(fname)
        return len(ns.shards)

    def keys(self) -> List[str]:
        """The keys with an index in this cache directory (read from each ``<key dir>/index.json``)."""
        keys = []
        for index in sorted(self.directory.glob(f"*/{_INDEX}")):
            try:
                key = json.loads(index.read_bytes().decode("utf-8")).get("key")
            except (ValueError, UnicodeDecodeError, AttributeError) as e:
                raise CorruptCacheError(index, f"cannot parse the index ({e})",
                                        "Delete it: the features of this key are then recomputed") from e
            if isinstance(key, str):
                keys.append(key)
        return keys

    def problems(self) -> Tuple[List[str], int]:
        """Check every shard of every key against its index (size, sha256, arrays); returns
        (one line per damaged index or shard, the number of shards that verified)."""
        found, ok = [], 0
        try:
            keys = self.keys()
        except CorruptCacheError as e:
            return [str(e)], 0
        for key in keys:
            try:
                ns = self._namespace(key)
            except CorruptCacheError as e:
                found.append(str(e))
                continue
            for fname in list(ns.shards):
                try:
                    ns.load_shard(fname)
                    ok += 1
                except CorruptCacheError as e:
                    found.append(str(e))
        return found, ok

    def discard(self, key: str, shard_files: Optional[Sequence[str]] = None) -> None:
        """Forget shards of ``key`` (all if ``shard_files`` is None) and delete their files.

        Only shard files of ``key``'s own directory are deleted: a name from the caller or from the
        index that is not one (``..``, an absolute path, a symlink leading out) is refused."""
        ns = self._namespace(key)
        if not ns.dir.is_dir():
            return
        if shard_files is not None:
            names = [Path(f).name for f in shard_files]
            for f, name in zip(shard_files, names):
                if Path(f).name != str(f) and Path(f).parent.resolve() != ns.dir.resolve():
                    raise ValueError(f"discard({key!r}): {f!r} is not in the cache directory {ns.dir}")
                problem = _shard_name_problem(name)
                if problem:
                    raise ValueError(f"discard({key!r}): {problem}")
        with _locked(ns.lock_path):
            try:
                ns.reload()
            except UnsafeCacheIndexError:
                raise
            except CorruptCacheError:  # unreadable index: start a new one, delete only what was named
                ns.shards = {}
            if shard_files is None:
                names = list(ns.shards)
            paths = [ns.shard_path(f) for f in names]
            for f in names:
                ns.shards.pop(f, None)
            ns._write_index()
            ns.reload()
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def clean(self, key: str) -> List[Path]:
        """Delete files in ``key``'s directory that the index does not reference (interrupted
        commits, temporary files); returns what was removed."""
        ns = self._namespace(key)
        removed = []
        if not ns.dir.is_dir():
            return removed
        with _locked(ns.lock_path):
            ns.reload()
            keep = set(ns.shards) | {_INDEX, ".lock"}
            for p in ns.dir.iterdir():
                if p.is_file() and p.name not in keep:
                    p.unlink()
                    removed.append(p)
        return removed

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.directory)!r})"
