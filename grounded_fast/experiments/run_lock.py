"""One study run at a time per output directory.

A run holds an exclusive ``fcntl.flock`` on ``<out_dir>/run.lock`` for its whole lifetime and writes
its pid into the file. The kernel drops the lock when the holding process dies (SIGKILL included),
so a stale lock file never blocks a rerun. The lock belongs to the main process only: executor
workers are started by spawn (local pool) or by Ray, never inherit the descriptor and never take
the lock. Readers (``report``, ``export``) do not lock: they open the store read-only. Where
``fcntl`` is unavailable (Windows) the lock is not taken.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

LOCK_NAME = "run.lock"


class RunDirBusyError(RuntimeError):
    """Another live process is running a study in the same output directory."""


@contextlib.contextmanager
def hold_run_lock(out_dir: str | os.PathLike) -> Iterator[None]:
    """Hold ``out_dir``'s run lock while the block runs (``out_dir`` is created if absent).

    Raises:
        RunDirBusyError: another process holds it; the message names that process's pid.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise RunDirBusyError(
                f"{out_dir} is in use by another run (pid {holder}, lock {path}): wait for it to finish "
                "or stop it, or choose another output directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
