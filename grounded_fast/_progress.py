"""Progress display: a tqdm bar on a terminal, plain lines elsewhere (a log file, a batch job).

One factory, :func:`progress_bar`, for every long loop of the package (a study's units, a unit's
steps, feature extraction), so that a run whose stderr goes to a file logs one line per ``every``
steps, without carriage returns or escape codes.
"""
from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "unit", every: int = 1, **bar):
    """A tqdm bar of ``total`` ``unit`` s when stderr is a terminal; where it is not, a
    :class:`LineProgress` printing one line per ``every`` steps and at the end; nothing shown
    when not ``enabled``. ``bar``: further tqdm arguments (ignored by the line printer)."""
    if enabled and not stderr_is_terminal():
        return LineProgress(total, desc, unit, every)
    return tqdm(total=total, desc=desc, disable=not enabled, unit=unit, **bar)


def stderr_is_terminal() -> bool:
    """Whether ``sys.stderr`` is a terminal (progress bars can redraw in place)."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class LineProgress:
    """The part of tqdm's interface the package uses (``n``, ``total``, ``update``, ``close``),
    printing ``'<desc>: <n>/<total> <unit>s (<seconds> s)'`` to stderr once per ``every`` steps
    and when ``total`` is reached."""

    def __init__(self, total: int, desc: str, unit: str, every: int = 1):
        self.n, self.total, self.desc, self.unit, self.every = 0, total, desc, unit, max(1, every)
        self.start, self._printed = time.time(), 0

    def update(self, k: int = 1) -> None:
        self.n += k
        if k and (self.n - self._printed >= self.every or self.n >= (self.total or 0)):
            self._printed = self.n
            print(f"{self.desc}: {self.n}/{self.total} {self.unit}s ({time.time() - self.start:.0f} s)",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        pass
