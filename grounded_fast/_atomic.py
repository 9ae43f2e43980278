"""The one atomic, hashed file writer of the package (checkpoints, reports, figures, configs, the
feature cache's shards and index, task files).

A file is written to a temporary file in the same directory, fsync'ed, renamed over the target with
``os.replace`` and the directory is fsync'ed: a reader, or a rerun after a crash or a full disk,
sees either the previous file or the complete new one, never a partial file under the final name.
On any failure (including ``KeyboardInterrupt``) the temporary file is removed and the previous
file is left as it was.

* :func:`write_atomic`: bytes, or a function that writes to a binary file object (``torch.save``);
  returns a :class:`Written` with the sha256 and size of what is now at the path.
* :func:`atomic_path`: for writers that need a path (``pyarrow``); yields the temporary path.
* :func:`sha256_file` / :func:`check_file`: hash a file, or compare it with a recorded hash.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional, Tuple, Union

__all__ = ["Written", "write_atomic", "atomic_path", "sha256_file", "check_file", "fsync_dir", "temp_name"]

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class Written:
    """A file written by :func:`write_atomic`: its final ``path``, ``sha256`` (hex) and ``size`` (bytes)."""

    path: Path
    sha256: str
    size: int


def sha256_file(path: PathLike) -> Tuple[str, int]:
    """(sha256 hex digest, size in bytes) of the file at ``path``."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def check_file(path: PathLike, sha256: str, size: int) -> Optional[str]:
    """None if the file at ``path`` has this ``size`` and ``sha256``, else what is wrong (one line)."""
    p = Path(path)
    if not p.is_file():
        return f"missing file {p}"
    got_size = p.stat().st_size
    if got_size != size:
        return f"size {got_size} bytes, recorded {size} (truncated or rewritten): {p}"
    got, _ = sha256_file(p)
    if got != sha256:
        return f"sha256 {got[:12]}… differs from the recorded {sha256[:12]}… (corrupted): {p}"
    return None


def temp_name(path: Path) -> Path:
    """A fresh hidden temporary name beside ``path`` (same directory, so a rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def fsync_dir(directory: Path) -> None:
    """Flush ``directory``'s entries (a rename into it) to disk, where the platform allows."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _commit(tmp: Path, path: Path) -> None:
    """fsync ``tmp``, rename it over ``path``, fsync the directory."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_atomic(path: PathLike, content: Union[bytes, bytearray, Callable[[BinaryIO], object]]) -> Written:
    """Write ``content`` to ``path`` atomically (parent directories created) and return its hash.

    ``content`` is the bytes, or a function called with the temporary file opened for binary
    writing (e.g. ``lambda f: torch.save(state, f)``); the written file is then read back to hash it.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "xb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content)
        if callable(content):
            sha, size = sha256_file(tmp)
        else:
            sha, size = hashlib.sha256(content).hexdigest(), len(content)
    return Written(path, sha, size)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Write a file atomically through a path: yields a temporary path beside ``path`` to write to.

    On normal exit the temporary file is fsync'ed and renamed over ``path`` (parent directories
    are created first); on an exception it is removed and ``path`` is untouched.
    Example: ``with atomic_path(out) as tmp: pq.write_table(table, str(tmp))``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic_path: nothing was written to the temporary file {tmp} for {path}")
        _commit(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
