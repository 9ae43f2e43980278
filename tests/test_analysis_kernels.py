"""The fused analysis kernels (pairwise agreement / divergence, attention distances) against the
float64 reference, scipy, and their mathematical properties."""
import math

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats
import torch

import grounded_fast.analysis as A
from grounded_fast.reference.analysis import attention_pair_sums_reference, pairwise_agreement_reference

from conftest import assert_close

# per input dtype: (rtol, atol) on sums, relative to the reference in float64
TOL = {torch.float64: (1e-9, 1e-10), torch.float32: (2e-5, 2e-5),
       torch.bfloat16: (2e-5, 2e-5), torch.float16: (2e-5, 2e-5)}


def logits(M, N, V, seed=0, scale=3.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, N, V, generator=g, dtype=torch.float64) * scale
    z = base + 0.7 * scale * torch.randn(M, N, V, generator=g, dtype=torch.float64)  # related models
    return z.to(dtype)


# ----------------------------------------------------------------------------- agreement / divergence

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,N,V", [(1, 7, 41), (2, 1, 1), (2, 13, 401), (5, 41, 1271), (3, 9, 40000)])
def test_agreement_sums_match_reference(dtype, M, N, V):
    z = logits(M, N, V, seed=M * 7 + N, dtype=dtype)
    mask = torch.rand(N, generator=torch.Generator().manual_seed(1)) > 0.25
    mask[0] = True
    got = torch.ops.grounded_fast.pairwise_agreement(z, mask, True, "cpu")
    ref = pairwise_agreement_reference(z, mask, True)  # same (rounded) inputs, in float64
    rtol, atol = TOL[dtype]
    assert torch.equal(got[0], ref[0]), "argmax agreement counts"
    assert int(got[4]) == int(ref[4]) == int(mask.sum())
    scale = max(1.0, ref[2].abs().max().item())  # KL / JSD are differences of sums of this size
    for k, name in ((1, "kl"), (2, "entropy"), (3, "jsd")):
        assert_close(got[k], ref[k], rtol=rtol, atol=atol * scale * N, name=name)


def test_agreement_matches_scipy_and_numpy():
    z = logits(4, 6, 50, seed=3, dtype=torch.float64)
    res = A.pairwise_agreement(z, jsd=True)
    p = torch.softmax(z, -1).numpy()
    top = z.argmax(-1).numpy()
    for i in range(4):
        assert res["entropy"][i].item() == pytest.approx(np.mean([scipy.stats.entropy(p[i, n]) for n in range(6)]), rel=1e-12)
        for j in range(4):
            kl = np.mean([scipy.stats.entropy(p[i, n], p[j, n]) for n in range(6)])
            js = np.mean([scipy.spatial.distance.jensenshannon(p[i, n], p[j, n]) ** 2 for n in range(6)])
            assert res["kl"][i, j].item() == pytest.approx(kl, rel=1e-10, abs=1e-14)
            assert res["jsd"][i, j].item() == pytest.approx(js, rel=1e-8, abs=1e-14)
            assert res["agreement"][i, j].item() == pytest.approx(np.mean(top[i] == top[j]))


def test_agreement_properties():
    z = logits(6, 30, 97, seed=5)
    z[2] = z[1]  # two identical models
    res = A.pairwise_agreement(z, jsd=True)
    agr, kl, js, ent = res["agreement"], res["kl"], res["jsd"], res["entropy"]
    assert torch.equal(agr, agr.T) and bool((agr >= 0).all() and (agr <= 1).all())
    assert torch.equal(agr.diagonal(), torch.ones(6, dtype=torch.float64))
    assert agr[1, 2] == 1 and abs(kl[1, 2]) < 1e-6 and abs(js[1, 2]) < 1e-6
    assert torch.equal(kl.diagonal(), torch.zeros(6, dtype=torch.float64))
    assert bool((kl > -1e-6).all()) and bool((js >= 0).all() and (js <= math.log(2)).all())
    assert_close(js, js.T, rtol=1e-12, atol=1e-12, name="jsd symmetric")
    assert bool((ent >= 0).all() and (ent <= math.log(97) + 1e-6).all())
    assert res["count"] == 30


def test_agreement_counts_ties_as_first_argmax():
    z = torch.zeros(2, 3, 5)
    z[0, :, 1] = z[0, :, 3] = 1.0  # tie: first index 1
    z[1, :, 1] = 1.0
    z[1, 2, 1] = 0.0  # position 2: model 1 has all-equal logits -> argmax 0
    res = A.pairwise_agreement(z)
    assert res["agreement"][0, 1].item() == pytest.approx(2 / 3)


def test_agreement_streaming_mask_and_layouts():
    z = logits(4, 24, 33, seed=2)
    mask = torch.arange(24) % 5 != 0
    one = A.pairwise_agreement(z, mask, jsd=True)
    acc = A.PairwiseAgreement(4, jsd=True)
    for lo, hi in ((0, 7), (7, 8), (8, 24)):
        acc.update(z[:, lo:hi], mask[lo:hi])
    acc.update(z[:, :0], mask[:0])  # an empty chunk is a no-op
    streamed = acc.compute()
    for k in ("agreement", "kl", "entropy", "jsd"):
        assert_close(streamed[k], one[k], rtol=1e-6, atol=1e-9, name=k)
    assert streamed["count"] == one["count"] == int(mask.sum())
    # (M, B, T, V) with a (B, T) 0/1 mask; non-contiguous logits
    four = A.pairwise_agreement(z.reshape(4, 4, 6, 33), mask.reshape(4, 6).long(), jsd=True)
    nc = A.pairwise_agreement(z.transpose(0, 1).contiguous().transpose(0, 1), mask.numpy(), jsd=True)
    for k in ("agreement", "kl", "entropy", "jsd"):
        assert_close(four[k], one[k], rtol=1e-6, atol=1e-9, name=k)
        assert_close(nc[k], one[k], rtol=1e-6, atol=1e-9, name=k)
    # the reference backend agrees
    ref = A.pairwise_agreement(z, mask, jsd=True, backend="torch")
    for k in ("kl", "entropy", "jsd"):
        assert_close(one[k], ref[k], rtol=1e-4, atol=1e-5, name=k)


def test_agreement_errors():
    z = logits(3, 4, 5)
    with pytest.raises(ValueError, match="num_models=2"):
        A.PairwiseAgreement(2).update(z)
    with pytest.raises(ValueError, match="mask"):
        A.pairwise_agreement(z, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(M, N, V\)"):
        A.pairwise_agreement(z[0])
    with pytest.raises(TypeError, match="floating"):
        A.pairwise_agreement(z.long())
    with pytest.raises(TypeError, match="logits"):
        A.pairwise_agreement([[1.0]])
    with pytest.raises(RuntimeError, match="no position"):
        A.pairwise_agreement(z, torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="num_models"):
        A.PairwiseAgreement(0)
    bad = z.clone()
    bad[2, 1, 0] = float("inf")
    for backend in ("cpu", "torch"):
        with pytest.raises(ValueError, match="NaN or inf"):
            A.pairwise_agreement(bad, backend=backend)
    masked = torch.tensor([True, False, True, True])  # a non-finite logit at a padded position is ignored
    A.pairwise_agreement(bad, masked)


def test_agreement_mask_must_have_the_positions_shape():
    z = logits(2, 12, 7).reshape(2, 3, 4, 7)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[0, 3] = False
    msg = r"mask must have shape \(3, 4\) \(\(B, T\) for \(M, B, T, V\) logits\), got shape \(4, 3\)"
    with pytest.raises(ValueError, match=msg):  # the transposed mask has the right size
        A.pairwise_agreement(z, mask.T)
    with pytest.raises(ValueError, match=msg):
        A.PairwiseAgreement(2).update(z, mask.T.contiguous())
    with pytest.raises(ValueError, match=r"mask must have shape \(12,\)"):
        A.pairwise_agreement(z.reshape(2, 12, 7), mask.reshape(12, 1))


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("value,dtype", [(3e38, torch.float32), (-3.4e38, torch.float32), (1e25, torch.float32),
                                         (3e38, torch.bfloat16)], ids=["3e38", "finfo_min", "1e25", "bf16_3e38"])
def test_agreement_refuses_logits_beyond_the_float32_range(backend, value, dtype):
    """Finite logits near 3e38 gave KL NaN, entropy inf and JSD 0: refused, naming model and position."""
    z = logits(3, 4, 6).to(dtype)
    z[1, 2, 4] = value
    msg = (r"^pairwise_agreement: the logits of model 1 at position 2 reach [0-9.e+]+ in magnitude, "
           r"beyond MAX_ABS_LOGIT = 1e\+20")
    with pytest.raises(ValueError, match=msg):
        A.pairwise_agreement(z, jsd=True, backend=backend)
    with pytest.raises(ValueError, match=msg + r".*\(position n = batch index \* T \+ t, T = 2\)$"):
        A.pairwise_agreement(z.reshape(3, 2, 2, 6), jsd=True, backend=backend)
    counted = torch.tensor([True, True, False, True])  # at an uncounted position: ignored
    assert torch.isfinite(A.pairwise_agreement(z, counted, jsd=True, backend=backend)["kl"]).all()


def test_agreement_takes_a_large_mask_fill():
    """-1e9 for masked vocabulary entries (inside the limit) gives the reference's values."""
    z = logits(3, 5, 9)
    z[:, :, 0] = -1e9
    z[1, :, 4] = -1e20
    got = A.pairwise_agreement(z, jsd=True, backend="cpu")
    ref = A.pairwise_agreement(z, jsd=True, backend="torch")
    for k in ("kl", "entropy", "jsd"):
        assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5, name=k)


def test_agreement_opcheck():
    z = logits(3, 5, 11)
    mask = torch.tensor([True, False, True, True, True])
    for backend in ("cpu", "torch"):
        torch.library.opcheck(torch.ops.grounded_fast.pairwise_agreement.default, (z, mask, True, backend))


# ----------------------------------------------------------------------------- attention distances

def attention(M, N, T, S, seed=0, dtype=torch.float32, heads=None):
    g = torch.Generator().manual_seed(seed)
    shape = (M, N, T, S) if heads is None else (M, N, heads, T, S)
    return torch.softmax(2 * torch.randn(*shape, generator=g, dtype=torch.float64), -1).to(dtype)


def masks(N, T, S, seed=0):
    g = torch.Generator().manual_seed(seed)
    tmask = torch.rand(N, T, generator=g) > 0.3
    tmask[:, 0] = True
    smask = torch.rand(N, S, generator=g) > 0.3
    smask[:, 0] = True
    return tmask, smask


@pytest.mark.parametrize("metric", ["l2", "tv", "hellinger", "jsd"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M,R,S", [(2, 1, 1), (3, 41, 7), (5, 17, 72), (4, 9, 401)])
def test_attention_pair_sums_match_reference(metric, dtype, M, R, S):
    a = attention(M, 1, R, S, seed=R + S, dtype=dtype)[:, 0]
    g = torch.Generator().manual_seed(3)
    smask = torch.rand(R, S, generator=g) > 0.2
    smask[:, 0] = True
    w = torch.rand(R, generator=g, dtype=torch.float64)
    w[0] = 0.0
    got = torch.ops.grounded_fast.attention_pair_sums(a, smask, w, A.ATTENTION_METRICS.index(metric) - 1, "cpu")
    ref = attention_pair_sums_reference(a, w, metric, smask)
    rtol, atol = TOL[dtype]
    assert_close(got, ref, rtol=rtol * 10, atol=atol * R, name=metric)


@pytest.mark.parametrize("metric", ["l2", "tv", "hellinger", "jsd"])
def test_attention_distance_matches_scipy(metric):
    a = attention(3, 2, 4, 6, seed=1, dtype=torch.float64)
    got = A.attention_distance(a, metric)
    rows = a.reshape(3, 8, 6).numpy()
    fn = {"l2": lambda x, y: np.linalg.norm(x - y), "tv": lambda x, y: 0.5 * np.abs(x - y).sum(),
          "hellinger": lambda x, y: np.linalg.norm(np.sqrt(x) - np.sqrt(y)) / math.sqrt(2),
          "jsd": lambda x, y: scipy.spatial.distance.jensenshannon(x, y) ** 2}[metric]
    for i in range(3):
        for j in range(3):
            expect = np.mean([fn(rows[i, r], rows[j, r]) for r in range(8)])
            assert got[i, j].item() == pytest.approx(expect, rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("metric", A.ATTENTION_METRICS)
def test_attention_distance_properties_and_streaming(metric):
    M, N, T, S = 5, 6, 5, 12
    a = attention(M, N, T, S, seed=4)
    a[3] = a[1]
    tmask, smask = masks(N, T, S)
    seg = torch.arange(S) // 4
    d = A.attention_distance(a, metric, tmask, smask, seg)
    assert_close(d, d.T, rtol=1e-12, atol=1e-12, name="symmetric")
    assert torch.equal(d.diagonal(), torch.zeros(M, dtype=torch.float64))
    assert abs(d[1, 3].item()) < 1e-7 and bool((d >= 0).all())
    bound = {"jsd": math.log(2), "tv": 1.0, "hellinger": 1.0, "l2": math.sqrt(2), "segment_l2": math.sqrt(2)}[metric]
    assert bool((d <= bound + 1e-9).all())
    acc = A.AttentionDistance(M, metric)
    for lo, hi in ((0, 2), (2, 3), (3, 6)):
        acc.update(a[:, lo:hi], tmask[lo:hi], smask[lo:hi], seg)
    assert_close(acc.compute(), d, rtol=1e-6, atol=1e-9, name="streamed")
    ref = A.attention_distance(a, metric, tmask, smask, seg, backend="torch")
    assert_close(d, ref, rtol=1e-5, atol=1e-7, name="vs reference backend")


def test_attention_heads_are_averaged_and_masks_renormalise():
    a = attention(3, 4, 5, 6, seed=2, heads=4)
    tmask, smask = masks(4, 5, 6, seed=1)
    d = A.attention_distance(a, "jsd", tmask, smask)
    assert_close(d, A.attention_distance(a.mean(2), "jsd", tmask, smask), rtol=1e-12, atol=1e-12, name="heads")
    # masked sources and targets do not matter, whatever their attention values
    b = a.clone()
    b[:, :, :, :, :][(~smask)[None, :, None, None, :].expand_as(b)] = 5.0
    b[(~tmask)[None, :, None, :, None].expand_as(b)] = 7.0
    assert_close(A.attention_distance(b, "jsd", tmask, smask), d, rtol=1e-6, atol=1e-8, name="masked entries")


def test_segment_l2_by_hand():
    M, N, T, S = 2, 3, 2, 4
    a = attention(M, N, T, S, seed=6, dtype=torch.float64)
    seg = torch.tensor([[0, 0, 1, 1], [0, 1, 1, -1], [1, 1, 1, 0]])
    smask = seg >= 0
    acc = A.AttentionDistance(M, "segment_l2")
    acc.update(a, None, smask, seg)
    shares = torch.zeros(M, 2, dtype=torch.float64)
    for i in range(M):
        for n in range(N):
            for t in range(T):
                row = a[i, n, t] * smask[n]
                row = row / row.sum()
                for s in range(S):
                    if seg[n, s] >= 0:
                        shares[i, seg[n, s]] += row[s]
    shares /= shares.sum(1, keepdim=True)
    assert_close(acc.segment_shares(), shares, rtol=1e-12, atol=1e-14, name="shares")
    assert acc.compute()[0, 1].item() == pytest.approx((shares[0] - shares[1]).norm().item(), rel=1e-12)


def test_attention_errors():
    a = attention(3, 2, 4, 5)
    with pytest.raises(ValueError, match="metric"):
        A.attention_distance(a, "cosine")
    with pytest.raises(ValueError, match="target_mask"):
        A.attention_distance(a, "tv", target_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="source_mask"):
        A.attention_distance(a, "tv", source_mask=torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="segments"):
        A.attention_distance(a, "segment_l2")
    with pytest.raises(TypeError, match="segment ids"):
        A.attention_distance(a, "segment_l2", segments=torch.zeros(5))
    with pytest.raises(ValueError, match=r"\(M, N, T, S\)"):
        A.attention_distance(a[0])
    with pytest.raises(ValueError, match="num_models"):
        A.AttentionDistance(2, "tv").update(a)
    b = a.clone()
    b[1, 1, 2] = 0.0  # a counted row with no mass
    for backend in ("cpu", "torch"):
        with pytest.raises(ValueError, match="no mass"):
            A.attention_distance(b, "jsd", backend=backend)
    tmask = torch.ones(2, 4, dtype=torch.bool)
    tmask[1, 2] = False  # ... is fine when that target is padding
    A.attention_distance(b, "jsd", tmask)
    with pytest.raises(RuntimeError, match="no target row"):
        A.attention_distance(a, "tv", torch.zeros(2, 4, dtype=torch.bool))


@pytest.mark.parametrize("value", [math.nan, math.inf, -0.5, 0.0], ids=["nan", "inf", "negative", "no_mass"])
def test_every_attention_metric_checks_the_rows_alike(value):
    """segment_l2 rejects what the four per-row metrics reject, with the same message (model and row),
    and like them ignores what a masked source or an uncounted row holds."""
    a = attention(3, 2, 4, 5)
    seg = torch.tensor([0, 0, 1, 1, 2])
    bad = a.clone()
    if value == 0.0:
        bad[1, 1, 2] = 0.0  # item 1, target 2: row 1 * 4 + 2 = 6
    else:
        bad[1, 1, 2, 3] = value
    msg = (r"^attention_distance: the attention of model 1 in row 6 is negative, non-finite or has no mass "
           r"on the valid sources \(row r = item \* T \+ target position, T = 4\)$")
    runs = [("segment_l2", None)] + [(m, b) for m in ("jsd", "tv", "hellinger", "l2") for b in ("cpu", "torch")]
    for metric, backend in runs:
        with pytest.raises(ValueError, match=msg):
            A.attention_distance(bad, metric, segments=seg, backend=backend)
    tmask = torch.ones(2, 4, dtype=torch.bool)
    tmask[1, 2] = False
    smask = torch.ones(2, 5, dtype=torch.bool)
    smask[1, 3] = False
    hidden = a.clone()
    hidden[1, 1, 2, 3] = value  # at a masked source: ignored, when the row keeps some mass
    for metric, backend in runs:
        assert torch.isfinite(A.attention_distance(bad, metric, tmask, segments=seg, backend=backend)).all()
        if value != 0.0:
            got = A.attention_distance(hidden, metric, None, smask, seg, backend=backend)
            assert torch.isfinite(got).all(), (metric, backend)


def test_segment_ids_are_checked_against_the_number_of_segments():
    a = attention(2, 2, 3, 4)
    huge = torch.tensor([0, 1, 1_000_000_000, -1])  # was a 32 GB allocation
    with pytest.raises(ValueError, match=r"id 1000000000.*below the number of sources S = 4.*num_segments"):
        A.attention_distance(a, "segment_l2", segments=huge)
    with pytest.raises(ValueError, match=r"id 3, but num_segments = 3 allows ids 0 \.\. 2"):
        A.attention_distance(a, "segment_l2", segments=torch.tensor([0, 1, 2, 3]), num_segments=3)
    with pytest.raises(ValueError, match="num_segments"):
        A.AttentionDistance(2, "segment_l2", num_segments=0)
    acc = A.AttentionDistance(2, "segment_l2", num_segments=6)  # ids above S with num_segments; fixed K
    acc.update(a, segments=torch.tensor([0, 5, 5, -1]))
    shares = acc.segment_shares()
    assert shares.shape == (2, 6) and torch.all(shares[:, 1:5] == 0)
    assert_close(shares.sum(1), torch.ones(2, dtype=torch.float64), rtol=1e-12, atol=1e-12, name="sums")


def test_attention_opcheck():
    a = attention(3, 1, 6, 5)[:, 0]
    smask = torch.ones(6, 5, dtype=torch.bool)
    w = torch.ones(6, dtype=torch.float64)
    for backend in ("cpu", "torch"):
        torch.library.opcheck(torch.ops.grounded_fast.attention_pair_sums.default, (a, smask, w, 3, backend))
