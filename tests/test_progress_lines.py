"""Without a terminal (stderr to a log file, a batch job), progress is plain lines: one per unit of
a study, one per tenth of a unit's steps and of a feature extraction, no carriage returns or
escape codes; on a terminal it is a tqdm bar."""
import io

import numpy as np

from grounded_fast._progress import LineProgress, progress_bar
from grounded_fast.data.features import FeatureCache


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_lines_without_a_terminal(monkeypatch):
    err = _Stream(tty=False)
    monkeypatch.setattr("sys.stderr", err)
    bar = progress_bar(20, "grounding study", unit="unit", every=5)
    assert isinstance(bar, LineProgress)
    for _ in range(20):
        bar.update(1)
    bar.close()
    lines = err.getvalue().splitlines()
    assert [ln.split(" (")[0] for ln in lines] == [f"grounding study: {n}/20 units" for n in (5, 10, 15, 20)]
    assert "\r" not in err.getvalue() and "\x1b" not in err.getvalue()


def test_a_bar_on_a_terminal_and_nothing_when_disabled(monkeypatch):
    monkeypatch.setattr("sys.stderr", _Stream(tty=True))
    assert not isinstance(progress_bar(3, "x"), LineProgress)
    err = _Stream(tty=False)
    monkeypatch.setattr("sys.stderr", err)
    bar = progress_bar(3, "x", enabled=False)
    bar.update(3)
    bar.close()
    assert err.getvalue() == ""


def test_feature_extraction_logs_a_line_per_tenth(tmp_path, monkeypatch):
    err = _Stream(tty=False)
    monkeypatch.setattr("sys.stderr", err)
    cache = FeatureCache(str(tmp_path), progress=True)
    ids = [f"item{i}" for i in range(40)]
    out = cache.get_or_compute(ids, lambda b: np.arange(len(b), dtype=np.float32), lambda x: x[:, None],
                               batch_size=4, key="toy")
    assert out.shape == (40, 1)
    lines = err.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("extracting features: 40/40 items")
    assert "\r" not in err.getvalue() and "\x1b" not in err.getvalue()
