"""The GPU backends of the analysis ops (CUDA extension and Triton) on CUDA tensors, against the
float64 reference. Skipped without a GPU; run by bench/gpu_lease.py on a GPU machine."""
import pytest
import torch

import grounded_fast.analysis as A
from grounded_fast import _backend
from grounded_fast.ops.analysis import attention_pair_sums, pairwise_agreement_sums
from grounded_fast.reference.analysis import attention_pair_sums_reference, pairwise_agreement_reference

from conftest import assert_close
from kernel_cases import attention_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
BACKENDS = [pytest.param("cuda", marks=pytest.mark.skipif(not _backend.cuda_extension_available(),
                                                          reason="CUDA extension not built (FORCE_CUDA=1)")),
            pytest.param("triton", marks=pytest.mark.skipif(not _backend.triton_available(),
                                                            reason="triton not installed"))]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _logits(M, N, V, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = 3 * torch.randn(1, N, V, generator=g, dtype=torch.float64)
    return (base + 2 * torch.randn(M, N, V, generator=g, dtype=torch.float64)).to(dtype).cuda()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,N,V", [(1, 3, 41), (2, 1, 1), (5, 41, 401), (40, 7, 30522), (67, 5, 1271)])
def test_agreement_gpu_matches_reference(backend, dtype, M, N, V):
    z = _logits(M, N, V, dtype, seed=M + V)
    mask = torch.ones(N, dtype=torch.bool, device="cuda")
    if N > 2:
        mask[1] = False
        z[:, 1] = float("nan")
    got = pairwise_agreement_sums(z, mask, True, backend)
    ref = pairwise_agreement_reference(z, mask, True)
    assert torch.equal(got[0].cpu(), ref[0].cpu()) and int(got[4]) == int(ref[4])
    scale = max(1.0, ref[2].abs().max().item()) * N
    for k, name in ((1, "kl"), (2, "entropy"), (3, "jsd")):
        assert_close(got[k].cpu(), ref[k].cpu(), rtol=1e-4, atol=2e-5 * scale, name=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_agreement_gpu_errors_and_streaming(backend):
    z = _logits(4, 24, 97, torch.float32)
    one = A.pairwise_agreement(z, jsd=True, backend=backend)
    acc = A.PairwiseAgreement(4, jsd=True, backend=backend)
    for lo, hi in ((0, 5), (5, 24)):
        acc.update(z[:, lo:hi])
    two = acc.compute()
    for k in ("agreement", "kl", "entropy", "jsd"):
        assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, name=k)
    z[3, 7, 2] = float("nan")
    with pytest.raises(ValueError, match="model 3 at position 7"):
        A.pairwise_agreement(z, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", ["l2", "tv", "hellinger", "jsd"])
@pytest.mark.parametrize("M,R,S,masked", [(2, 1, 1, False), (3, 41, 72, True), (40, 300, 72, True), (17, 9, 401, False)])
def test_attention_gpu_matches_reference(backend, dtype, metric, M, R, S, masked):
    a, smask, w = attention_inputs(M, R, S, dtype)
    got = attention_pair_sums(a.cuda(), smask.cuda() if masked else None, w.cuda(), metric, backend)
    ref = attention_pair_sums_reference(a, w, metric, smask if masked else None)
    assert_close(got.cpu(), ref, rtol=1e-4, atol=1e-6 * R, name=metric)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_gpu_no_mass_is_an_error(backend):
    a = torch.softmax(torch.randn(3, 2, 4, 6), -1).cuda()
    a[1, 0, 0] = 0.0
    with pytest.raises(ValueError, match="no mass"):
        A.attention_distance(a, "tv", backend=backend)


def test_automatic_backend_on_cuda_tensors_is_native():
    which = _backend.choose_backend(torch.device("cuda"), None, gpu=("cuda", "triton"))
    assert which in ("cuda", "triton"), which
