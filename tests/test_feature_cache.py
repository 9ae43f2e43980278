"""FeatureCache: hits avoid recomputation, interrupted extraction resumes, corruption is named,
writes are atomic.  Uses a cheap deterministic fake encoder (the real ones: tests/test_encoders.py)."""
import json
import os
import re
import warnings

import numpy as np
import pytest
import torch

from grounded_fast.data.features import CorruptCacheError, CorruptCacheWarning, FeatureCache, UnsafeCacheIndexError


def feat(i):
    """Deterministic features of item id ``i`` (a str holding an int)."""
    v = int(i)
    return np.arange(6, dtype=np.float32).reshape(2, 3) + 10 * v


class CountingEncoder:
    cache_key = "fake-encoder:v1"

    def __init__(self, fail_on_call=None):
        self.calls = 0
        self.items = 0
        self.fail_on_call = fail_on_call

    def __call__(self, batch):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise RuntimeError("simulated crash")
        self.items += len(batch)
        return torch.from_numpy(np.stack([feat(i) for i in batch]))


def ident(ids):
    return list(ids)


def shard_files(cache, key):
    d = cache.path_for(key)
    return sorted(p.name for p in d.glob("shard-*.npz")) if d.is_dir() else []


def test_hit_avoids_recomputation(tmp_path):
    enc = CountingEncoder()
    cache = FeatureCache(tmp_path, progress=False)
    ids = [str(i) for i in range(10)]
    out = cache.get_or_compute(ids, ident, enc, batch_size=4)
    assert out.shape == (10, 2, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.stack([feat(i) for i in ids]))
    assert enc.calls == 3 and enc.items == 10
    # same ids, a subset in another order, duplicates: no new calls
    out2 = cache.get_or_compute(["7", "2", "2", "9"], ident, enc, batch_size=4)
    np.testing.assert_array_equal(out2, np.stack([feat(i) for i in ["7", "2", "2", "9"]]))
    assert enc.calls == 3
    # a fresh cache object on the same directory (another process) sees the same features
    enc2 = CountingEncoder()
    out3 = FeatureCache(tmp_path, progress=False).get_or_compute(ids + ["10"], ident, enc2, batch_size=4)
    assert enc2.calls == 1 and enc2.items == 1  # only the new id
    np.testing.assert_array_equal(out3[:10], out)
    # other key -> separate namespace
    enc3 = CountingEncoder()
    cache.get_or_compute(ids, ident, enc3, batch_size=100, key="other-encoder")
    assert enc3.calls == 1 and enc3.items == 10
    t = cache.get_or_compute(ids[:2], ident, enc, return_tensors="pt")
    assert isinstance(t, torch.Tensor) and t.shape == (2, 2, 3)


def test_key_from_bound_method_and_missing_key(tmp_path):
    class Enc:
        cache_key = "enc:v2"

        def patches(self, batch):
            return np.zeros((len(batch), 4), np.float16)

    cache = FeatureCache(tmp_path, progress=False)
    e = Enc()
    out = cache.get_or_compute(["a", "b"], ident, e.patches)
    assert out.dtype == np.float16 and cache.cached_ids("enc:v2/patches") == ["a", "b"]
    with pytest.raises(ValueError, match="key="):
        cache.get_or_compute(["a"], ident, lambda b: np.zeros((len(b), 1)))


def test_tuple_and_dict_outputs_with_ragged_axes(tmp_path):
    """(hidden (n, L, D), mask (n, L)) with L differing between batches: zero-padded on assembly."""
    def enc(batch):
        L = max(len(s) for s in batch)
        h = np.zeros((len(batch), L, 2), np.float32)
        m = np.zeros((len(batch), L), np.int64)
        for r, s in enumerate(batch):
            h[r, :len(s)] = 1.0
            m[r, :len(s)] = 1
        return h, m

    cache = FeatureCache(tmp_path, progress=False)
    ids = ["aa", "aaaaa", "a"]
    h, m = cache.get_or_compute(ids, ident, enc, batch_size=1, key="ragged")
    assert h.shape == (3, 5, 2) and m.shape == (3, 5)
    assert m.sum(1).tolist() == [2, 5, 1]
    assert (h.sum(-1) == 2 * m).all()

    d = cache.get_or_compute(["x", "y"], ident, lambda b: {"emb": np.ones((len(b), 3)), "n": np.arange(len(b))},
                             key="dict-out")
    assert set(d) == {"emb", "n"} and d["emb"].shape == (2, 3)


def test_resume_after_interruption(tmp_path):
    cache = FeatureCache(tmp_path, progress=False)
    ids = [str(i) for i in range(10)]
    crashing = CountingEncoder(fail_on_call=3)  # batches 1 and 2 succeed, the 3rd raises
    with pytest.raises(RuntimeError, match="simulated crash"):
        cache.get_or_compute(ids, ident, crashing, batch_size=3)
    key = CountingEncoder.cache_key
    assert sorted(cache.cached_ids(key), key=int) == ids[:6]  # completed shards kept
    assert len(shard_files(cache, key)) == 2
    enc = CountingEncoder()
    out = FeatureCache(tmp_path, progress=False).get_or_compute(ids, ident, enc, batch_size=3)
    assert enc.items == 4 and enc.calls == 2  # only ids 6..9
    np.testing.assert_array_equal(out, np.stack([feat(i) for i in ids]))


def test_corrupted_shard_raises_naming_the_file(tmp_path):
    cache = FeatureCache(tmp_path, progress=False)
    enc = CountingEncoder()
    ids = [str(i) for i in range(4)]
    cache.get_or_compute(ids, ident, enc, batch_size=2)
    key = enc.cache_key
    victim = cache.path_for(key) / shard_files(cache, key)[0]
    data = bytearray(victim.read_bytes())
    data[-40] ^= 0xFF  # flip a byte, same size
    victim.write_bytes(bytes(data))
    with pytest.raises(CorruptCacheError) as ei:
        FeatureCache(tmp_path, progress=False).get(key, ids)
    assert str(victim) in str(ei.value) and "sha256" in str(ei.value)
    assert ei.value.path == str(victim)
    # truncated file: size check
    victim.write_bytes(bytes(data[:100]))
    with pytest.raises(CorruptCacheError, match=str(victim.name)):
        FeatureCache(tmp_path, progress=False).get(key, ids)
    with pytest.raises(CorruptCacheError, match=str(victim.name)):
        cache.verify_all(key)
    # recovery: discard the shard, recompute only its items
    cache.discard(key, [victim.name])
    enc2 = CountingEncoder()
    out = cache.get_or_compute(ids, ident, enc2, batch_size=2)
    assert enc2.items == 2
    np.testing.assert_array_equal(out, np.stack([feat(i) for i in ids]))


def test_corrupted_index_raises_naming_it(tmp_path):
    cache = FeatureCache(tmp_path, progress=False)
    cache.get_or_compute(["1"], ident, CountingEncoder())
    index = cache.path_for(CountingEncoder.cache_key) / "index.json"
    index.write_text(index.read_text()[:-5])
    with pytest.raises(CorruptCacheError, match=str(index)):
        FeatureCache(tmp_path, progress=False).get_or_compute(["1"], ident, CountingEncoder())


def test_shape_mismatch_with_index_is_reported(tmp_path):
    cache = FeatureCache(tmp_path, progress=False)
    cache.get_or_compute(["1", "2"], ident, CountingEncoder())
    key = CountingEncoder.cache_key
    index = cache.path_for(key) / "index.json"
    meta = json.loads(index.read_text())
    (shard, entry), = meta["shards"].items()
    entry["arrays"][0]["dtype"] = "<f8"
    index.write_text(json.dumps(meta))
    with pytest.raises(CorruptCacheError, match=rf"{shard}.*dtype"):
        FeatureCache(tmp_path, progress=False).get(key, ["1"])


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
def test_atomic_writes_leave_no_partial_file(tmp_path, monkeypatch, fail_at):
    cache = FeatureCache(tmp_path, progress=False)
    enc = CountingEncoder()
    key = enc.cache_key
    cache.get_or_compute(["0", "1"], ident, enc, batch_size=2)  # one good shard + index
    d = cache.path_for(key)
    before = {p.name: p.read_bytes() for p in d.iterdir()}

    real = getattr(os, fail_at)

    def crash(*args, **kwargs):
        if fail_at == "fsync" or str(args[1]).endswith(".npz"):
            raise KeyboardInterrupt("killed while writing")
        return real(*args, **kwargs)

    monkeypatch.setattr(os, fail_at, crash)
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_compute(["0", "1", "2", "3"], ident, enc, batch_size=2)
    monkeypatch.setattr(os, fail_at, real)

    after = {p.name: p.read_bytes() for p in d.iterdir()}
    assert after == before  # no partial shard, no temp file, index untouched
    fresh = FeatureCache(tmp_path, progress=False)
    assert sorted(fresh.cached_ids(key)) == ["0", "1"]
    out = fresh.get_or_compute(["0", "1", "2", "3"], ident, CountingEncoder(), batch_size=2)
    np.testing.assert_array_equal(out, np.stack([feat(i) for i in "0123"]))


def test_orphan_shard_is_invisible_and_cleaned(tmp_path):
    """A shard renamed into place but never indexed (crash between the two steps) is ignored."""
    cache = FeatureCache(tmp_path, progress=False)
    enc = CountingEncoder()
    cache.get_or_compute(["0"], ident, enc)
    d = cache.path_for(enc.cache_key)
    orphan = d / "shard-deadbeef.npz"
    orphan.write_bytes(b"partial")
    (d / ".shard-x.npz.123.tmp").write_bytes(b"partial")
    assert cache.cached_ids(enc.cache_key) == ["0"]
    removed = {p.name for p in cache.clean(enc.cache_key)}
    assert removed == {"shard-deadbeef.npz", ".shard-x.npz.123.tmp"}
    np.testing.assert_array_equal(cache.get(enc.cache_key, ["0"])[0], feat("0"))


def test_progress_bar_and_errors(tmp_path, capsys):
    cache = FeatureCache(tmp_path)  # progress on by default
    cache.get_or_compute(["1", "2", "3"], ident, CountingEncoder(), batch_size=2)
    assert "3/3" in capsys.readouterr().err
    cache.get_or_compute(["4"], ident, CountingEncoder(), progress=False)
    assert capsys.readouterr().err == ""
    with pytest.raises(KeyError, match="not cached"):
        cache.get(CountingEncoder.cache_key, ["99"])
    with pytest.raises(ValueError, match="first axis"):
        cache.get_or_compute(["5", "6"], ident, lambda b: np.zeros((1, 2)), key="bad")
    assert cache.cached_ids("bad") == []
    with pytest.raises(ValueError, match="batch_size"):
        cache.get_or_compute(["5"], ident, CountingEncoder(), batch_size=0)


def flip_byte(path, offset=-40):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_corrupt_or_missing_shard_is_dropped_and_recomputed(tmp_path, damage):
    """The rerun after a damaged shard recovers on its own: one warning naming the shard, only its
    items recomputed, the same features; the next rerun is quiet."""
    ids = [str(i) for i in range(6)]
    FeatureCache(tmp_path, progress=False).get_or_compute(ids, ident, CountingEncoder(), batch_size=2)
    cache = FeatureCache(tmp_path, progress=False)
    key = CountingEncoder.cache_key
    victim = cache.path_for(key) / shard_files(cache, key)[1]
    flip_byte(victim) if damage == "flip" else victim.unlink()
    enc = CountingEncoder()
    with pytest.warns(CorruptCacheWarning) as record:
        out = FeatureCache(tmp_path, progress=False).get_or_compute(ids, ident, enc, batch_size=2)
    assert len(record) == 1 and victim.name in str(record[0].message)
    assert enc.items == 2
    np.testing.assert_array_equal(out, np.stack([feat(i) for i in ids]))
    assert victim.name not in shard_files(cache, key) and len(shard_files(cache, key)) == 3
    enc2 = CountingEncoder()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = FeatureCache(tmp_path, progress=False).get_or_compute(ids, ident, enc2, batch_size=2)
    assert enc2.calls == 0
    np.testing.assert_array_equal(again, out)


def test_corrupt_shard_in_a_study_cache_recovers_on_rerun(tmp_path):
    """The real pipeline: MiniLM token states cached as the studies cache them (two shards), a
    flipped byte in one, a rerun: one warning, identical features."""
    from grounded_fast.data.sources import cached_text_states
    from grounded_fast.models.encoders import TextEncoder

    encoder = TextEncoder.from_pretrained()
    texts = {f"s{k}": f"the {'red blue green'.split()[k % 3]} ball is {k % 7} steps left of the cube"
             for k in range(70)}
    ids = list(texts)
    states, mask = cached_text_states(FeatureCache(tmp_path, progress=False), ids, texts, encoder, progress=False)
    cache = FeatureCache(tmp_path, progress=False)
    key = f"{encoder.cache_key}/states"
    shards = shard_files(cache, key)
    assert len(shards) == 2
    victim = cache.path_for(key) / shards[0]
    flip_byte(victim, offset=len(victim.read_bytes()) // 2)
    with pytest.raises(CorruptCacheError, match=victim.name):
        FeatureCache(tmp_path, progress=False).verify_all(key)
    with pytest.warns(CorruptCacheWarning) as record:
        states2, mask2 = cached_text_states(FeatureCache(tmp_path, progress=False), ids, texts, encoder,
                                            progress=False)
    assert len(record) == 1 and victim.name in str(record[0].message)
    assert torch.equal(mask2, mask) and torch.allclose(states2, states, atol=1e-5)
    assert FeatureCache(tmp_path, progress=False).verify_all(key) == 2


def test_get_names_the_corrupt_shard_and_how_to_recover(tmp_path):
    cache = FeatureCache(tmp_path, progress=False)
    cache.get_or_compute(["0", "1"], ident, CountingEncoder())
    key = CountingEncoder.cache_key
    victim = cache.path_for(key) / shard_files(cache, key)[0]
    victim.unlink()
    with pytest.raises(CorruptCacheError, match="missing") as ei:
        cache.get(key, ["0"])
    assert str(victim) in str(ei.value) and "get_or_compute drops it" in str(ei.value)
    assert "Delete it" not in str(ei.value)


def crafted_index(cache, key, entry):
    """Point the (only) index entry of ``key`` at ``entry``."""
    index = cache.path_for(key) / "index.json"
    meta = json.loads(index.read_text())
    (_, value), = meta["shards"].items()
    meta["shards"] = {entry: value}
    index.write_text(json.dumps(meta))
    return index


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_index_entries_outside_the_cache_are_refused(tmp_path, kind):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    root = tmp_path / "cache"
    cache = FeatureCache(root, progress=False)
    key = CountingEncoder.cache_key
    cache.get_or_compute(["0"], ident, CountingEncoder())
    d = cache.path_for(key)
    if kind == "dotdot":
        entry = os.path.relpath(outside, d)
    elif kind == "absolute":
        entry = str(outside)
    else:
        entry = "shard-link.npz"
        (d / entry).symlink_to(outside)
    index = crafted_index(cache, key, entry)
    for call in (lambda c: c.discard(key), lambda c: c.discard(key, [entry]),
                 lambda c: c.get_or_compute(["0"], ident, CountingEncoder())):
        with pytest.raises((UnsafeCacheIndexError, ValueError), match=re.escape(repr(entry))) as ei:
            call(FeatureCache(root, progress=False))
        if isinstance(ei.value, UnsafeCacheIndexError):
            assert str(index) in str(ei.value)
    assert outside.read_text() == "keep me"
    assert index.is_file()


def test_discard_refuses_names_that_are_not_shards_and_malformed_entries_are_named(tmp_path):
    cache = FeatureCache(tmp_path, progress=False)
    key = CountingEncoder.cache_key
    cache.get_or_compute(["0"], ident, CountingEncoder())
    index = cache.path_for(key) / "index.json"
    with pytest.raises(ValueError, match="'index.json' is not a shard file name"):
        cache.discard(key, ["index.json"])
    assert index.is_file() and cache.cached_ids(key) == ["0"]
    meta = json.loads(index.read_text())
    (shard, entry), = meta["shards"].items()
    entry["ids"] = "0"
    index.write_text(json.dumps(meta))
    with pytest.raises(CorruptCacheError, match=rf"{re.escape(str(index))}.*entry '{shard}' has no list of item ids"):
        FeatureCache(tmp_path, progress=False).get(key, ["0"])
