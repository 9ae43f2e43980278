"""The Triton analysis kernels, run by Triton's interpreter on CPU tensors (TRITON_INTERPRET=1),
against the float64 reference on awkward shapes. On a GPU the same tests run on CUDA tensors
(bench/gpu_lease.py)."""
import os

import pytest
import torch

# conftest.py sets TRITON_INTERPRET=1 on machines without a GPU, before triton is imported.
pytest.importorskip("triton")

import grounded_fast.analysis as A  # noqa: E402
from grounded_fast.reference.analysis import (attention_pair_sums_reference,  # noqa: E402
                                              pairwise_agreement_reference)

from conftest import assert_close  # noqa: E402

DEVICE = "cuda" if os.environ.get("TRITON_INTERPRET") != "1" and torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs a GPU or TRITON_INTERPRET=1")


def _logits(M, N, V, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = 3 * torch.randn(1, N, V, generator=g, dtype=torch.float64)
    return (base + 2 * torch.randn(M, N, V, generator=g, dtype=torch.float64)).to(dtype).to(DEVICE)


@pytest.mark.parametrize("one_pass", [False, True], ids=["two_pass", "one_pass"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("M,N,V", [(1, 3, 41), (2, 1, 1), (5, 7, 401), (16, 2, 70), (17, 3, 1271)])
def test_triton_agreement_matches_reference(M, N, V, dtype, one_pass):
    from grounded_fast.triton_kernels.analysis.pairwise_agreement import pairwise_agreement_triton
    z = _logits(M, N, V, dtype, seed=M + V)
    mask = torch.ones(N, dtype=torch.bool, device=DEVICE)
    if N > 2:
        mask[1] = False
        z[:, 1] = float("nan")  # padded positions may hold anything
    got = pairwise_agreement_triton(z, mask, True, one_pass)
    ref = pairwise_agreement_reference(z, mask, True)
    assert torch.equal(got[0].cpu(), ref[0].cpu()) and int(got[4]) == int(ref[4])
    scale = max(1.0, ref[2].abs().max().item()) * N
    for k, name in ((1, "kl"), (2, "entropy"), (3, "jsd")):
        assert_close(got[k].cpu(), ref[k].cpu(), rtol=1e-4, atol=2e-5 * scale, name=name)


@pytest.mark.parametrize("one_pass,offset,atol", [(False, 1e3, 3e-4), (True, 1e3, 3e-5), (True, 1e4, 3e-5)],
                         ids=["two_pass", "one_pass", "one_pass_1e4"])
def test_triton_agreement_offset_logits_ties_and_growing_max(one_pass, offset, atol):
    """Logits far from 0 at one position, a maximum that grows from block to block (every rescaling
    step), and an exact tie of the maximum in two blocks (the first index counts). The one-pass
    kernel takes its products and lse - c about each row's first logit c, so its KL and entropy do
    not degrade with the offset (fp32 rounding of an lse near 1e4 alone is ~1e-3); the two-pass
    kernel's L = z - lse does."""
    from grounded_fast.triton_kernels.analysis.pairwise_agreement import pairwise_agreement_triton
    M, N, V = 6, 4, 700
    z = _logits(M, N, V, torch.float64, seed=3) + torch.linspace(0, 6, V, dtype=torch.float64, device=DEVICE)
    z[:, 2] += offset
    top = z[:, 3].max() + 1.0
    z[0, 3, 5] = z[0, 3, 600] = top   # model 0 ties; models 1 and 2 peak at one of the two
    z[1, 3, 5] = z[2, 3, 600] = top + 1.0
    z = z.float()
    mask = torch.ones(N, dtype=torch.bool, device=DEVICE)
    got = pairwise_agreement_triton(z, mask, True, one_pass)
    ref = pairwise_agreement_reference(z, mask, True)
    assert torch.equal(got[0].cpu(), ref[0].cpu())
    for k, name in ((1, "kl"), (2, "entropy")):
        assert_close(got[k].cpu(), ref[k].cpu(), rtol=0, atol=atol, name=name)
    # JSD reads the stored fp32 lse in both forms
    assert_close(got[3].cpu(), ref[3].cpu(), rtol=0, atol=3e-5 * offset / 1e2, name="jsd")


@pytest.mark.parametrize("one_pass", [False, True], ids=["two_pass", "one_pass"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("M,N,V", [(5, 6, 402), (3, 8, 1030), (2, 4, 66)])
def test_triton_agreement_aligned_peeled_rows(M, N, V, dtype, one_pass):
    """Rows that start off a 16-byte boundary (V = 2 mod 4, as 30522): each position's V loop starts
    at the row start rounded down (a shift of 2 entries at every other position), with a masked
    first and last block around an unmasked, vector-loaded interior."""
    from grounded_fast.triton_kernels.analysis import pairwise_agreement as pa
    z = _logits(M, N, V, dtype, seed=V)
    mask = torch.ones(N, dtype=torch.bool, device=DEVICE)
    mask[1] = False
    vec, align = pa._vector_width(z, N, V, shared_shift=True)
    assert vec > 1 and align == vec * z.element_size()
    if dtype != torch.float64:  # 8-byte entries: these rows all start on a 16-byte boundary
        assert any((n * V) % vec for n in range(N))  # some positions do start with a shift
    got = pa.pairwise_agreement_triton(z, mask, True, one_pass)
    ref = pairwise_agreement_reference(z, mask, True)
    assert torch.equal(got[0].cpu(), ref[0].cpu())
    for k, name in ((1, "kl"), (2, "entropy"), (3, "jsd")):
        assert_close(got[k].cpu(), ref[k].cpu(), rtol=1e-5, atol=2e-5, name=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_triton_vector_width_promise_holds(dtype):
    """The alignment hint is a promise to the compiler (a false one means misaligned vector loads on
    a GPU): for every row (i, n), the base the kernels hint, row start - shift, is ALIGN-byte aligned,
    with shift = (n V) % VEC shared by all models (_cross, _stats_cross) or per row (_row_stats)."""
    from grounded_fast.triton_kernels.analysis import pairwise_agreement as pa
    es = torch.empty(0, dtype=dtype).element_size()
    buf = torch.zeros(4096, dtype=dtype)
    for M, N, V, start in [(3, 4, 30522, 0), (2, 6, 402, 0), (5, 3, 70, 0), (2, 5, 33, 0), (3, 4, 40, 1),
                           (2, 8, 1030, 4), (4, 2, 17, 8)]:
        z = buf[start:start + M * N * V] if M * N * V + start <= buf.numel() else torch.zeros(M * N * V, dtype=dtype)
        for shared in (True, False):
            vec, align = pa._vector_width(z, N, V, shared_shift=shared)
            if not align:
                continue
            for i in range(M):
                for n in range(N):
                    row = (i * N + n) * V
                    shift = (n * V) % vec if shared else row % vec
                    assert (z.data_ptr() + (row - shift) * es) % align == 0, (M, N, V, start, shared)


def test_triton_vector_width_falls_back():
    from grounded_fast.triton_kernels.analysis import pairwise_agreement as pa
    z = torch.zeros(2, 3, 10)
    assert pa._vector_width(z, 3, 10, shared_shift=True) == (2, 8)      # N V = 30: 2 entries
    assert pa._vector_width(z, 3, 10, shared_shift=False) == (4, 16)    # one row per program
    assert pa._vector_width(z[..., 1:], 3, 9, shared_shift=False) == (1, 0)  # a view 4 bytes in


def test_triton_one_pass_bfloat16_products_keep_fp32_accuracy():
    """bfloat16 logits take the one-pass kernel's bf16 products: P in three bfloat16 pieces times the
    exact logits. KL and entropy stay at fp32 accuracy (errors ~5e-6 here; with two pieces of P,
    16 significand bits, they were 6e-5 and 1.4e-4)."""
    from grounded_fast.triton_kernels.analysis.pairwise_agreement import pairwise_agreement_triton
    z = _logits(6, 4, 700, torch.bfloat16, seed=3)
    mask = torch.ones(4, dtype=torch.bool, device=DEVICE)
    got = pairwise_agreement_triton(z, mask, False, True)
    ref = pairwise_agreement_reference(z, mask, False)
    assert torch.equal(got[0].cpu(), ref[0].cpu())
    assert_close(got[1].cpu(), ref[1].cpu(), rtol=0, atol=3e-5, name="kl")
    assert_close(got[2].cpu(), ref[2].cpu(), rtol=0, atol=3e-5, name="entropy")


@pytest.mark.parametrize("one_pass", [False, True], ids=["two_pass", "one_pass"])
def test_triton_agreement_beyond_128_models(one_pass):
    """Beyond 128 models the products run over (64 x 64) tiles of model pairs (one tile would not fit
    on a GPU); the one-pass request falls back to the two passes."""
    from grounded_fast.triton_kernels.analysis.pairwise_agreement import pairwise_agreement_triton
    z = _logits(131, 2, 37, torch.float32, seed=5)
    mask = torch.ones(2, dtype=torch.bool, device=DEVICE)
    got = pairwise_agreement_triton(z, mask, False, one_pass)
    ref = pairwise_agreement_reference(z, mask, False)
    assert torch.equal(got[0].cpu(), ref[0].cpu())
    assert_close(got[1].cpu(), ref[1].cpu(), rtol=1e-4, atol=1e-4, name="kl")
    assert_close(got[2].cpu(), ref[2].cpu(), rtol=1e-4, atol=1e-4, name="entropy")


def test_triton_agreement_api_and_errors():
    z = _logits(3, 4, 33, torch.float32)
    got = A.pairwise_agreement(z, jsd=True, backend="triton")
    ref = A.pairwise_agreement(z.cpu(), jsd=True, backend="torch")
    for k in ("agreement", "kl", "entropy", "jsd"):
        assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5, name=k)
    z[2, 3, 5] = float("inf")
    with pytest.raises(ValueError, match="model 2 at position 3"):
        A.pairwise_agreement(z, backend="triton")


@pytest.mark.parametrize("value,dtype", [(3e38, torch.float32), (-3.4e38, torch.float32), (1e25, torch.float32),
                                         (3e38, torch.bfloat16)], ids=["3e38", "finfo_min", "1e25", "bf16_3e38"])
def test_triton_agreement_refuses_logits_beyond_the_float32_range(value, dtype):
    """The same error as the C++ kernel and the reference (tests/test_analysis_kernels.py)."""
    z = _logits(3, 4, 6, dtype)
    z[1, 2, 4] = value
    with pytest.raises(ValueError, match=r"^pairwise_agreement: the logits of model 1 at position 2 reach "
                                         r"[0-9.e+]+ in magnitude, beyond MAX_ABS_LOGIT = 1e\+20"):
        A.pairwise_agreement(z, jsd=True, backend="triton")


@pytest.mark.parametrize("fill", [-1e6, -1e9, -1e20])
def test_triton_agreement_far_first_logit_takes_the_two_pass_kernels(fill):
    """A masked vocabulary entry 0 (the one-pass kernel's per-row shift) far below the rest: the
    one-pass kernel's float32 rounding grows with that distance (entropy off by 0.2 nats at -1e6),
    so the op runs the two-pass kernels, and matches the reference."""
    z = _logits(3, 5, 300, torch.float32)
    z[:, :, 0] = fill
    z[2, :, 0] = 0.0  # one model with an ordinary first logit
    got = A.pairwise_agreement(z, jsd=True, backend="triton")
    ref = A.pairwise_agreement(z.cpu(), jsd=True, backend="torch")
    for k in ("agreement", "kl", "entropy", "jsd"):
        assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5, name=k)


@pytest.mark.parametrize("one_pass", [False, True], ids=["two_pass", "one_pass"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
def test_triton_agreement_names_the_row_with_a_non_finite_logit(value, dtype, one_pass):
    """A non-finite logit at a counted position is an error naming its model and position, wherever
    it is in the row (the first block, the interior, the last block), whichever model it is in (the
    one-pass kernel tells them apart from the sums and the products' columns, not per entry), and
    also when every model has one; at a padded position it is ignored."""
    from grounded_fast.triton_kernels.analysis.pairwise_agreement import pairwise_agreement_triton
    M, N, V = 5, 4, 300
    mask = torch.tensor([True, False, True, True], device=DEVICE)
    for i, n, v in [(0, 0, 0), (3, 2, 150), (4, 3, V - 1), (2, 3, 77)]:
        z = _logits(M, N, V, dtype, seed=v)
        z[:, 1, 10] = value  # padded
        z[i, n, v] = value
        with pytest.raises(ValueError, match=f"model {i} at position {n} "):
            pairwise_agreement_triton(z, mask, False, one_pass)
    z = _logits(M, N, V, dtype, seed=1)
    z[:, 2, 40] = value
    with pytest.raises(ValueError, match="model 0 at position 2 "):
        pairwise_agreement_triton(z, mask, False, one_pass)
    z[:, 2, 40] = 0.0
    z[:, 1] = value
    got = pairwise_agreement_triton(z, mask, False, one_pass)
    ref = pairwise_agreement_reference(z, mask, False)
    assert_close(got[1].cpu(), ref[1].cpu(), rtol=1e-4, atol=1e-4, name="kl")


@pytest.mark.parametrize("metric", ["l2", "tv", "hellinger", "jsd"])
@pytest.mark.parametrize("M,R,S,masked", [(2, 1, 1, False), (3, 5, 72, True), (17, 3, 41, True), (40, 2, 72, True)])
def test_triton_attention_matches_reference(metric, M, R, S, masked):
    from grounded_fast.triton_kernels.analysis.attention_distance import attention_pair_sums_triton
    g = torch.Generator().manual_seed(R + S)
    a = torch.softmax(2 * torch.randn(M, R, S, generator=g), -1).to(DEVICE)
    smask = torch.rand(R, S, generator=g) > 0.3
    smask[:, 0] = True
    w = torch.rand(R, generator=g, dtype=torch.float64)
    if R > 1:
        w[1] = 0.0
    sm = smask.to(DEVICE) if masked else torch.empty(0, dtype=torch.bool, device=DEVICE)
    got = attention_pair_sums_triton(a, sm, w.to(DEVICE), A.ATTENTION_METRICS.index(metric) - 1)
    ref = attention_pair_sums_reference(a.cpu(), w, metric, smask if masked else None)
    assert_close(got.cpu(), ref, rtol=1e-4, atol=1e-6 * R, name=metric)


@pytest.mark.parametrize("metric", ["l2", "tv", "hellinger", "jsd"])
def test_triton_attention_weights_of_either_sign_and_bad_rows(metric):
    """Non-negative weights send tv and jsd through the weight-folding single loop (_pairs_linear),
    a negative weight through the row-by-row kernel: both match the reference. A row holding NaN
    at weight 0 is never read; the same row counted is an error."""
    from grounded_fast.triton_kernels.analysis.attention_distance import attention_pair_sums_triton
    g = torch.Generator().manual_seed(7)
    M, R, S = 5, 9, 37
    a = torch.softmax(2 * torch.randn(M, R, S, generator=g), -1)
    a[2] = a[3]  # identical models: a distance of 0
    a[:, 4, 3] = float("nan")
    w = torch.rand(R, generator=g, dtype=torch.float64) * 3
    w[4] = 0.0
    k = A.ATTENTION_METRICS.index(metric) - 1
    empty = torch.empty(0, dtype=torch.bool, device=DEVICE)
    for weights in (w, torch.where(torch.arange(R) == 6, -w, w)):
        got = attention_pair_sums_triton(a.to(DEVICE), empty, weights.to(DEVICE), k)
        ref = attention_pair_sums_reference(a, weights, metric)
        assert_close(got.cpu(), ref, rtol=1e-4, atol=1e-5, name=metric)
    w[4] = 1.0
    with pytest.raises(ValueError, match="negative, non-finite or has no mass"):
        attention_pair_sums_triton(a.to(DEVICE), empty, w.to(DEVICE), k)


@pytest.mark.parametrize("BI,warps", [(8, 2), (32, 8)])
def test_triton_attention_other_tile_configs(BI, warps, monkeypatch):
    """The configurations bench/gpu_sweep.py attention tries: every metric still matches."""
    from grounded_fast.triton_kernels.analysis import attention_distance as ad
    monkeypatch.setitem(ad.CONFIG, "BI", BI)
    monkeypatch.setitem(ad.CONFIG, "num_warps", warps)
    g = torch.Generator().manual_seed(BI)
    a = torch.softmax(2 * torch.randn(19, 3, 41, generator=g), -1).to(DEVICE)
    w = torch.rand(3, generator=g, dtype=torch.float64)
    for metric in ("l2", "jsd"):
        got = ad.attention_pair_sums_triton(a, torch.empty(0, dtype=torch.bool, device=DEVICE), w.to(DEVICE),
                                            A.ATTENTION_METRICS.index(metric) - 1)
        assert_close(got.cpu(), attention_pair_sums_reference(a.cpu(), w, metric), rtol=1e-4, atol=1e-6, name=metric)


def test_triton_attention_api_and_errors():
    g = torch.Generator().manual_seed(0)
    a = torch.softmax(torch.randn(3, 2, 4, 6, generator=g), -1).to(DEVICE)
    tmask = torch.tensor([[True, True, False, True], [True, False, True, True]], device=DEVICE)
    got = A.attention_distance(a, "jsd", tmask, backend="triton")
    ref = A.attention_distance(a.cpu(), "jsd", tmask.cpu(), backend="torch")
    assert_close(got, ref, rtol=1e-4, atol=1e-7, name="jsd")
    a[1, 0, 0] = 0.0
    with pytest.raises(ValueError, match="no mass"):
        A.attention_distance(a, "tv", backend="triton")


def test_explicit_triton_without_interpreter_or_gpu_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        A.pairwise_agreement(torch.randn(2, 3, 4), backend="triton")


def test_triton_backend_of_the_registered_ops_opcheck():
    """The 'triton' backend runs through the registered ops (schema, fake tensors) like the others."""
    z = _logits(3, 5, 7, torch.float32)
    mask = torch.tensor([True, False, True, True, True], device=DEVICE)
    torch.library.opcheck(torch.ops.grounded_fast.pairwise_agreement.default, (z, mask, True, "triton", True))
    attn = torch.rand(3, 4, 6, dtype=torch.float32, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    smask = torch.ones(4, 6, dtype=torch.bool, device=DEVICE)
    w = torch.ones(4, dtype=torch.float64, device=DEVICE)
    torch.library.opcheck(torch.ops.grounded_fast.attention_pair_sums.default, (attn, smask, w, 3, "triton"))
    got = torch.ops.grounded_fast.attention_pair_sums(attn, smask, w, 3, "triton")
    ref = torch.ops.grounded_fast.attention_pair_sums(attn, smask, w, 3, "torch")
    assert_close(got.cpu(), ref.cpu(), rtol=1e-5, atol=1e-7, name="triton vs torch backend")
