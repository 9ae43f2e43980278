"""The one atomic, hashed writer (grounded_fast/_atomic.py) and the artefacts written through it:
a failure at any point leaves the previous file intact and no temporary file; every artefact
(model checkpoints and configs, head.pt, reports and figures, task files, feature-cache shards,
exports, saved corpora) is fsync'ed under a temporary name and renamed into place."""
import errno
import hashlib
import io
import os
import sys

import pytest
import torch

from grounded_fast._atomic import atomic_path, check_file, sha256_file, write_atomic


def test_write_atomic_returns_the_hash_and_size(tmp_path):
    data = b"hello\n" * 1000
    w = write_atomic(tmp_path / "sub" / "a.bin", data)
    assert w.path == tmp_path / "sub" / "a.bin" and w.path.read_bytes() == data
    assert (w.sha256, w.size) == (hashlib.sha256(data).hexdigest(), len(data))
    state = {"w": torch.arange(10.0)}
    w2 = write_atomic(tmp_path / "s.pt", lambda f: torch.save(state, f))
    assert (w2.sha256, w2.size) == sha256_file(w2.path)
    assert torch.equal(torch.load(w2.path, weights_only=True)["w"], state["w"])
    assert check_file(w2.path, w2.sha256, w2.size) is None
    assert "size" in check_file(w.path, w.sha256, w.size + 1)
    assert "missing" in check_file(tmp_path / "nope", w.sha256, w.size)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.bin", "s.pt", "sub"]


def disk_full_after(n):
    """A writer that writes ``n`` bytes of a new file, then fails as a full disk does."""
    def write(f):
        f.write(b"\x00" * n)
        f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")
    return write


def interrupted(f):
    f.write(b"partial")
    raise KeyboardInterrupt


@pytest.mark.parametrize("failure", ["disk-full", "interrupt", "fsync", "replace"])
def test_failure_mid_write_keeps_the_previous_file(tmp_path, monkeypatch, failure):
    target = tmp_path / "head.pt"
    before = write_atomic(target, b"previous content")
    content = {"disk-full": disk_full_after(110_000), "interrupt": interrupted}.get(failure, b"new content")
    if failure in ("fsync", "replace"):
        def fail(*args):
            raise OSError(errno.EIO, f"{failure} failed")
        monkeypatch.setattr(os, failure, fail)
    with pytest.raises((OSError, KeyboardInterrupt)):
        write_atomic(target, content)
    monkeypatch.undo()
    assert target.read_bytes() == b"previous content"
    assert check_file(target, before.sha256, before.size) is None
    assert [p.name for p in tmp_path.iterdir()] == ["head.pt"]  # no temporary file left


def test_atomic_path_for_writers_that_take_a_path(tmp_path):
    target = tmp_path / "t.csv"
    with atomic_path(target) as tmp:
        tmp.write_text("a,b\n")
    assert target.read_text() == "a,b\n"
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise ValueError("writer failed")
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_path(target):
            pass
    assert target.read_text() == "a,b\n" and [p.name for p in tmp_path.iterdir()] == ["t.csv"]


@pytest.fixture
def file_events(monkeypatch):
    """Records ('fsync', path) and ('replace', src, dst) calls (Linux: fds resolved by /proc)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("needs /proc/self/fd")
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        events.append(("replace", os.path.realpath(src), os.path.realpath(dst)))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def assert_written_atomically(events, files):
    """Each file was fsync'ed under a temporary name, renamed into place, and its directory fsync'ed."""
    files = [os.path.realpath(f) for f in files]
    assert files
    for f in files:
        renames = [k for k, e in enumerate(events) if e[0] == "replace" and e[2] == f]
        assert renames, f"{f} was not renamed into place"
        k = renames[-1]
        src = events[k][1]
        assert src != f and ("fsync", src) in events[:k], f"{f}: temporary file not fsync'ed before the rename"
        assert ("fsync", os.path.dirname(f)) in events[k:], f"{f}: directory not fsync'ed after the rename"


def _tiny_task(n=24, dim=384):
    g = torch.Generator().manual_seed(0)
    split = (torch.randn(n, dim, generator=g), torch.randint(0, 2, (n,), generator=g))
    return {"task": {"train": split, "dev": split}, "num_labels": 2}


def _variant_cfg():
    from grounded_fast.experiments.groundedbert_study import GroundedBertStudyConfig
    return GroundedBertStudyConfig.from_preset("tiny", finetune_steps=2, batch_size=8)


def test_every_artefact_goes_through_the_atomic_writer(tmp_path, file_events):
    import numpy as np
    from grounded_fast.data import DemoCorpus, Multi30kImage, load_multi30k_jsonl, write_multi30k_jsonl
    from grounded_fast.data.features import FeatureCache
    from grounded_fast.experiments.groundedbert_study import demo_glue_task, run_variant
    from grounded_fast.experiments.report import Report, Table
    from grounded_fast.experiments.store import ResultStore

    result = run_variant("text-only", 0, _variant_cfg(), _tiny_task(), str(tmp_path / "variant"))
    names = ["config.json", "head.pt", "model.pt"]
    assert sorted(p.name for p in (tmp_path / "variant").iterdir()) == names
    assert_written_atomically(file_events, [tmp_path / "variant" / f for f in names])
    _, files = result
    assert sorted(files) == names and all(check_file(w.path, w.sha256, w.size) is None for w in files.values())

    corpus = DemoCorpus(20, 0)
    demo_glue_task(str(tmp_path / "glue"))
    assert_written_atomically(file_events, [tmp_path / "glue" / "train.tsv", tmp_path / "glue" / "dev.tsv"])
    saved = corpus.save(tmp_path / "corpus", images=True)
    assert_written_atomically(file_events, [p for p in saved.rglob("*") if p.is_file()])
    assert DemoCorpus.load(saved).texts() == corpus.texts()

    images = [Multi30kImage(f"{k}.jpg", tuple(f"en {k} {j}" for j in range(5)), tuple(f"de {k} {j}" for j in range(5)))
              for k in range(3)]
    for name in ("m.jsonl", "m.jsonl.gz"):
        write_multi30k_jsonl(images, tmp_path / name)
        assert_written_atomically(file_events, [tmp_path / name])
        assert load_multi30k_jsonl(tmp_path / name) == images

    rep = Report("t")
    rep.add_table(Table(["a"], [[1]]), "t")
    md, html = rep.write(tmp_path / "report")
    assert_written_atomically(file_events, [md, html])

    cache = FeatureCache(tmp_path / "features", progress=False)
    cache.get_or_compute(["a"], list, lambda b: np.zeros((len(b), 2)), key="k")
    d = cache.path_for("k")
    assert_written_atomically(file_events, list(d.glob("shard-*.npz")) + [d / "index.json"])

    with ResultStore(tmp_path / "results.sqlite") as store:
        written = store.export(tmp_path / "export")
    assert_written_atomically(file_events, written)


def test_head_pt_left_intact_when_the_disk_fills_up(tmp_path, monkeypatch):
    """A full disk while head.pt is saved leaves the previous head.pt, not a partial file."""
    from grounded_fast.experiments import groundedbert_study
    from grounded_fast.experiments.groundedbert_study import run_variant

    out = tmp_path / "variant"
    run_variant("text-only", 0, _variant_cfg(), _tiny_task(), str(out))
    before = (out / "head.pt").read_bytes()
    real_save = torch.save

    def save_until_disk_full(obj, f, *args, **kwargs):
        name = os.fspath(f) if isinstance(f, (str, os.PathLike)) else str(getattr(f, "name", ""))
        if "head.pt" not in os.path.basename(name):
            return real_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real_save(obj, buf)
        data = buf.getvalue()[:len(before) // 2]
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as fh:
                fh.write(data)
        else:
            f.write(data)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(groundedbert_study.torch, "save", save_until_disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_variant("text-only", 0, _variant_cfg(), _tiny_task(n=32), str(out))
    monkeypatch.undo()
    assert (out / "head.pt").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "head.pt", "model.pt"]


def test_a_corrupt_head_pt_makes_the_variant_rerun(tmp_path):
    """head.pt's sha256 is recorded with the unit; a damaged head.pt means the unit is not done."""
    from grounded_fast.experiments.executors import Task
    from grounded_fast.experiments.runner import _commit, _units_done
    from grounded_fast.experiments.studies.groundedbert import run_unit
    from grounded_fast.experiments.store import ResultStore

    out = str(tmp_path)
    result = run_unit(("text-only", 0), _variant_cfg(), out, _tiny_task(), None)
    with ResultStore(tmp_path / "results.sqlite") as store:
        _commit(store, Task("variant/text-only-seed0", None), result)
        assert _units_done(store, "variant/text-only-seed0", "text-only-seed0")
        head = tmp_path / "variants" / "text-only-seed0" / "head.pt"
        data = bytearray(head.read_bytes())
        data[len(data) // 2] ^= 0xFF
        head.write_bytes(bytes(data))
        assert not _units_done(store, "variant/text-only-seed0", "text-only-seed0")
        head.write_bytes(bytes(data[:len(data) // 2]))
        assert not _units_done(store, "variant/text-only-seed0", "text-only-seed0")
