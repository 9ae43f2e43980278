"""The CUDA backend's kernels (csrc/**/cuda/*.cu) and bindings run on the CPU under cuda_sim
(tests/cuda_sim: the sources rewritten for g++, threads as fibers), through the backend's host
code (grounded_fast/ops/entropic_ot/backend_cuda.py, grounded_fast/ops/entropic_ot_features/backend_cuda.py) or its ops, against the float64 reference. This is how CI, which
has no GPU, executes the CUDA kernels; tests/test_*_gpu.py run the same checks on a GPU."""
import ctypes
import glob
import math
import os
import platform
import shutil
import subprocess
import sys
import types

import pytest
import torch

from grounded_fast.ops import BALANCED, PARTIAL, UNBALANCED, SolveSpec
from grounded_fast.ops.entropic_ot import backend_cuda as cuda_ot
from grounded_fast.ops.entropic_ot.driver import finalize
from grounded_fast.ops.entropic_ot_features import backend_cuda as cuda_features
from grounded_fast.ops.entropic_ot_features.driver import cost_code
from grounded_fast.reference.analysis import attention_pair_sums_reference, pairwise_agreement_reference
from grounded_fast.reference.entropic_ot import entropic_ot_reference
from grounded_fast.reference.ot_features import entropic_ot_features_reference

from conftest import assert_close, make_problem
from cuda_sim import build
from kernel_cases import attention_inputs, check_fused_pass
from test_entropic_ot_gpu import CASES, F32_PARTIAL_HIST_ATOL, F32_PARTIAL_TOL, NAMES, _assert_outputs

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64" or shutil.which("c++") is None,
                                reason="cuda_sim needs x86-64 and a C++ compiler")
F32, F64 = (2e-4, 1e-5), (1e-9, 1e-12)


@pytest.fixture(scope="module")
def sim_ops():
    build.load()
    return torch.ops.grounded_fast_sim


@pytest.fixture
def host(sim_ops, monkeypatch):
    """The CUDA backends' host code (``solve`` of entropic_ot's, ``features_solve`` of
    entropic_ot_features') on the emulated ops, a 4-SM device with an H100's
    opt-in shared memory, and the reference's plan and objective (Triton's are tested elsewhere)."""
    monkeypatch.setattr(cuda_ot, "OPS_NAMESPACE", "grounded_fast_sim")
    props = types.SimpleNamespace(multi_processor_count=4, shared_memory_per_block_optin=227 * 1024)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(cuda_ot, "_finalize", lambda: finalize)
    return types.SimpleNamespace(solve=cuda_ot.solve, fused_blocks=cuda_ot.fused_blocks,
                                 features_solve=cuda_features.solve)


def _tol(dtype, case):
    """float32 partial OT's stop quantity, the log plan's change, rounds to ~1e-5 x sqrt(n m) on these
    problems: a smaller tol would make the stopping iteration depend on each implementation's rounding."""
    return 1e-9 if dtype == torch.float64 else (F32_PARTIAL_TOL if case == "partial" else 1e-6)


def _hist_atol(dtype, case):
    return F32_PARTIAL_HIST_ATOL if dtype == torch.float32 and case == "partial" else None


def _ot_args(C, a, b, case, max_iter, tol, check_every):
    B, n, m = C.shape
    problem, (ra, rb), kl_ref = CASES[case]
    dt = a.dtype
    mass = torch.full((B,), 0.6, dtype=dt) if problem == PARTIAL else torch.zeros(B, dtype=dt)
    return [C, a, b, mass, torch.zeros(B, n, dtype=dt), torch.zeros(B, m, dtype=dt),
            SolveSpec(problem, 0.1, ra, rb, kl_ref, max_iter, tol, check_every)]


@pytest.mark.parametrize("regime", ["small", "stream", "fused"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 13, 29), (2, 41, 67)])
def test_sim_cuda_backend_matches_reference(host, regime, case, dtype, shape):
    """Every regime and problem kind of the CUDA backend, with a zero-weight row and problems that
    stop at different iterations; the fused regime takes float32 (float64 is an error there)."""
    B, n, m = shape
    C, a, b = make_problem(B, n, m, dtype=dtype, seed=n)
    if n > 2:
        a[0, -1] = 0
        a = a / a.sum(1, keepdim=True)
    args = _ot_args(C, a, b, case, 60, _tol(dtype, case), 5)
    if regime == "fused" and dtype == torch.float64:
        with pytest.raises(ValueError, match="float32 or half-precision"):
            host.solve(*args, regime=regime)
        return
    out, ref = host.solve(*args, regime=regime), entropic_ot_reference(*args)
    _assert_outputs(NAMES, out, ref, dtype, *(F64 if dtype == torch.float64 else F32),
                    hist_atol=_hist_atol(dtype, case))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case,shape", [("balanced", (1, 9, 2049)), ("balanced", (1, 6, 4100)),
                                        ("partial", (1, 5, 8192)), ("unbalanced", (2, 150, 300))])
def test_sim_cuda_fused_rows(host, dtype, case, shape):
    """The fused kernel's three row widths (8, 16 and 32 entries a thread: m up to 2048, 4096,
    8192), padded rows, half-precision C read 16 bytes at a time, and several row blocks a problem
    (n = 150: 3 blocks) whose column partials are merged; against the reference on C's values."""
    B, n, m = shape
    C, a, b = make_problem(B, n, m, dtype=torch.float32, seed=m)
    C = C.to(dtype).float()
    if B > 1:
        b[1] = b[1] * torch.linspace(0.05, 3.0, m)
        b = b / b.sum(1, keepdim=True)
    args = _ot_args(C, a, b, case, 40, 1e-3 if case == "partial" else 1e-5, 4)
    assert host.fused_blocks(B, n, m, 4) == (3 if n == 150 else 1)
    out = host.solve(C.to(dtype), *args[1:], regime="fused")
    ref = entropic_ot_reference(*args)
    _assert_outputs(NAMES[1:4] + NAMES[6:8], out[1:4] + out[6:8], ref[1:4] + ref[6:8], torch.float32, *F32)


@pytest.mark.parametrize("scale,cap", [(1.0, False), (0.7, False), (1.0, True)])
def test_sim_cuda_fused_pass_is_one_sinkhorn_iteration(sim_ops, scale, cap):
    """One ot_fused_pass_cuda against its definition (kernel_cases.check_fused_pass; the GPU twin is
    in test_entropic_ot_gpu.py): scaled and capped row updates, a retired problem, -inf rows,
    3 row blocks, padding of garbage."""
    check_fused_pass(sim_ops.ot_fused_pass_cuda, scale, cap)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sim_cuda_persistent_kernel_exact_fallback(host, case, dtype):
    """Costs spanning 200 reg: rows and columns past the persistent kernel's one-pass LSE bound take
    its exact path (the GPU twin: test_gpu_cuda_persistent_kernel_exact_fallback)."""
    C, a, b = make_problem(4, 24, 37, dtype=dtype, seed=5, scale=20.0)
    # float32: potentials of ~100 carry ~1e-5 of rounding, so a tolerance of 1e-6 stops where
    # rounding noise allows (the exact exp2 here, the GPU's approximate one there); 1e-5 does not
    args = _ot_args(C, a, b, case, 80, 1e-9 if dtype == torch.float64 else (1e-2 if case == "partial" else 1e-5), 5)
    _assert_outputs(NAMES, host.solve(*args, regime="small"), entropic_ot_reference(*args), dtype,
                    *(F64 if dtype == torch.float64 else F32), hist_atol=_hist_atol(dtype, case))


def test_sim_cuda_small_regime_past_the_optin_shared_memory_is_an_error(sim_ops):
    """A tile past the device's opt-in shared memory (227 KiB) is an error of the launch, not a wrong
    answer, and it does not linger: the next launch succeeds."""
    def small(n):
        C, a, b = make_problem(1, n, n, dtype=torch.float32)
        return sim_ops.ot_small_cuda(C, a, b, torch.zeros(1), torch.zeros(1, n), torch.zeros(1, n), 0, 0.1, 1.0, 1.0,
                                     True, 10, 1e-6, 5, 2)
    with pytest.raises(RuntimeError, match="gf_ot_small failed"):
        small(250)
    assert torch.isfinite(small(8)[0]).all()


@pytest.mark.parametrize("case", ["balanced", "unbalanced", "partial"])
@pytest.mark.parametrize("cost", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 13, 29, 3), (1, 150, 257, 20)])
def test_sim_cuda_features_match_reference(host, case, cost, dtype, shape):
    """The cost recomputed from features (sinkhorn_features.cu), one and two ranges of the streamed
    axis (n = 150, m = 257), against the reference on the features' values."""
    B, n, m, d = shape
    g = torch.Generator().manual_seed(n + d)
    x = (torch.randn(B, n, d, generator=g, dtype=torch.float64) / d ** 0.5).to(dtype)
    y = (torch.randn(B, m, d, generator=g, dtype=torch.float64) / d ** 0.5 + 0.3).to(dtype)
    vt = torch.float64 if dtype == torch.float64 else torch.float32
    a, b = torch.rand(B, n, generator=g, dtype=vt) + 0.1, torch.rand(B, m, generator=g, dtype=vt) + 0.1
    a[0, -1] = 0
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    problem = {"balanced": BALANCED, "unbalanced": UNBALANCED, "partial": PARTIAL}[case]
    mass = torch.full((B,), 0.6 if problem == PARTIAL else 0.0, dtype=vt)
    ra, rb = (0.7, 2.0) if problem == UNBALANCED else (math.inf, math.inf)
    reg = 0.3 if cost == "sqeuclidean" else 0.1
    tail = [cost_code(cost), SolveSpec(problem, reg, ra, rb, True, 60, _tol(vt, case) if case == "partial" else
                                       (1e-9 if vt == torch.float64 else 1e-5), 5)]
    out = host.features_solve(x, y, a, b, mass, torch.zeros_like(a), torch.zeros_like(b), *tail)
    ref = entropic_ot_features_reference(x.to(vt), y.to(vt), a, b, mass, torch.zeros_like(a), torch.zeros_like(b),
                                         *tail)
    names = ("log_u", "log_v", "log_scale", "value", "value_linear", "n_iter", "status", "err_history")
    _assert_outputs(names, out, ref, vt, *(F64 if vt == torch.float64 else (5e-4, 2e-5)),
                    hist_atol=_hist_atol(vt, case))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,N,V", [(1, 3, 41), (2, 1, 1), (5, 13, 301), (70, 3, 130)])
def test_sim_cuda_agreement_matches_reference(sim_ops, dtype, M, N, V):
    """analysis_kernels.cu's agreement kernels through their binding: a padded position full of NaN,
    M = 70 (two 64-model tiles), against the float64 reference."""
    g = torch.Generator().manual_seed(M + V)
    z = (3 * torch.randn(1, N, V, generator=g, dtype=torch.float64)
         + 2 * torch.randn(M, N, V, generator=g, dtype=torch.float64)).to(dtype)
    mask = torch.ones(N, dtype=torch.bool)
    if N > 2:
        mask[1] = False
        z[:, 1] = float("nan")
    got, ref = sim_ops.pairwise_agreement_kernel(z, mask, True), pairwise_agreement_reference(z, mask, True)
    assert torch.equal(got[0], ref[0]) and int(got[4]) == int(ref[4])
    scale = max(1.0, ref[2].abs().max().item()) * N
    for k, name in ((1, "kl"), (2, "entropy"), (3, "jsd")):
        assert_close(got[k], ref[k], rtol=1e-4, atol=2e-5 * scale, name=name)
    if N > 2:
        z[M - 1, 2, V // 2] = float("inf")
        with pytest.raises(ValueError, match=f"model {M - 1} at position 2"):
            sim_ops.pairwise_agreement_kernel(z, mask, False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("metric", ["l2", "tv", "hellinger", "jsd"])
@pytest.mark.parametrize("M,R,S,masked", [(2, 1, 1, False), (3, 41, 72, True), (33, 9, 130, True)])
def test_sim_cuda_attention_matches_reference(sim_ops, dtype, metric, M, R, S, masked):
    """analysis_kernels.cu's attention kernels: every metric, source masks, 33 models (three 16-model
    tiles), sources in chunks of 64, a row of zero weight."""
    from grounded_fast.ops.analysis import ATTENTION_METRICS
    a, smask, w = attention_inputs(M, R, S, dtype)
    got = sim_ops.attention_pair_sums_kernel(a, smask if masked else torch.empty(0, dtype=torch.bool), w,
                                      ATTENTION_METRICS[metric])
    ref = attention_pair_sums_reference(a, w, metric, smask if masked else None)
    assert_close(got, ref, rtol=1e-4, atol=1e-6 * R, name=metric)


def test_sim_cuda_attention_flags_a_bad_counted_row(sim_ops):
    """A counted row with no mass on its valid sources, or a negative entry, is an error; the same
    row with zero weight is not looked at."""
    a, smask, w = attention_inputs(3, 5, 9, torch.float32)
    w[:] = 1.0
    for bad_value in (0.0, -0.1):
        x = a.clone()
        x[1, 2] = bad_value
        with pytest.raises(ValueError, match="no mass"):
            sim_ops.attention_pair_sums_kernel(x, torch.empty(0, dtype=torch.bool), w, 3)
        w2 = w.clone()
        w2[2] = 0.0
        got = sim_ops.attention_pair_sums_kernel(x, torch.empty(0, dtype=torch.bool), w2, 3)
        assert_close(got, attention_pair_sums_reference(x, w2, "jsd"), rtol=1e-4, atol=1e-6, name="jsd")


@pytest.mark.skipif(bool(os.environ.get("GFSIM_SANITIZE")), reason="this is the sanitizer's run")
def test_sim_kernels_read_and_write_only_their_tensors(tmp_path):
    """This file's kernel tests again, with the kernels built under AddressSanitizer, in a child
    process that preloads its runtime: a read or write past a tensor (on a GPU, a silent wrong value
    or a corrupted neighbour) is an error there. The child runs each block's threads in reverse
    order, so that a shared-memory read missing its barrier shows whichever thread writes it.
    About a minute, a second build of the sources included."""
    libs = [subprocess.run(["c++", f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
            for lib in ("libasan.so", "libstdc++.so")]
    if not all(os.path.isabs(lib) and os.path.exists(lib) for lib in libs):
        pytest.skip("the compiler has no AddressSanitizer runtime")
    env = dict(os.environ, GFSIM_SANITIZE="address", GFSIM_REVERSE="1", LD_PRELOAD=" ".join(libs),
               ASAN_OPTIONS=f"detect_leaks=0:detect_stack_use_after_return=0:log_path={tmp_path / 'asan'}")
    # the float64 cases (dtype1 of most tests) left out: their indexing is the float32 cases'
    run = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k",
                          "(cuda_backend or cuda_fused or persistent or features or agreement or cuda_attention) "
                          "and not dtype1"],
                         env=env, capture_output=True, text=True, timeout=1500)
    reports = "".join(open(f).read() for f in glob.glob(str(tmp_path / "asan*")))
    assert run.returncode == 0 and not reports, (run.stdout[-3000:] + run.stderr[-2000:] + reports[:4000])
    assert " passed" in run.stdout


# ----------------------------------------------------------------- the emulator catches what it claims
PROBE = r"""
#include <cuda_runtime.h>
__global__ void reverse_kernel(const float* x, float* y, int sync) {
  __shared__ float s[64];
  s[threadIdx.x] = x[threadIdx.x];
  if (sync) __syncthreads();
  y[threadIdx.x] = s[63 - threadIdx.x];
}
__global__ void divergent_kernel(float* y) {  // lane 0 of each warp waits for the block, the rest for lane 0
  if (threadIdx.x % 32 == 0) __syncthreads();
  y[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
}
__global__ void warp_sum_kernel(const float* x, float* y) {
  float v = x[threadIdx.x];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  y[threadIdx.x] = v;
}
__global__ void dynamic_kernel(float* y) {
  extern __shared__ __align__(16) unsigned char raw[];
  float* s = reinterpret_cast<float*>(raw);
  s[threadIdx.x] = float(blockIdx.x);
  __syncthreads();
  y[blockIdx.x * blockDim.x + threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}
extern "C" int probe(int which, const float* x, float* y, int arg) {
  switch (which) {
    case 0: reverse_kernel<<<1, 64>>>(x, y, arg); break;
    case 1: divergent_kernel<<<1, 64>>>(y); break;
    case 2: warp_sum_kernel<<<dim3(1), 64>>>(x, y); break;
    default: dynamic_kernel<<<3, 32, arg>>>(y);
  }
  return int(cudaGetLastError());
}
extern "C" const char* probe_error() { return cudaGetErrorString(cudaErrorLaunchFailure); }
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    d = tmp_path_factory.mktemp("cuda_sim_probe")
    src, lib = d / "probe.cpp", d / "probe.so"
    src.write_text(build.rewrite_cu(PROBE, "probe.cu"))
    subprocess.run(["c++", "-std=c++17", "-O2", "-shared", "-fPIC", "-Wno-unknown-pragmas", f"-I{build.INCLUDE}",
                    str(src), "-o", str(lib)], check=True)
    so = ctypes.CDLL(str(lib))
    so.probe_error.restype = ctypes.c_char_p
    return so


def _call(so, which, x, y, arg=0):
    f = ctypes.POINTER(ctypes.c_float)
    return so.probe(which, ctypes.cast(x.data_ptr(), f), ctypes.cast(y.data_ptr(), f), arg)


def test_sim_exposes_a_missing_barrier_and_a_divergent_one(probe):
    """A shared-memory exchange without __syncthreads reads stale values (threads run in turn up to
    each barrier); threads waiting for each other at different barriers are reported, not hung on."""
    x, y = torch.arange(64, dtype=torch.float32), torch.zeros(64)
    assert _call(probe, 0, x, y, 1) == 0 and torch.equal(y, x.flip(0))
    x = x + 100  # the shared array still holds the last launch's values
    assert _call(probe, 0, x, y, 0) == 0 and not torch.equal(y, x.flip(0))
    assert _call(probe, 1, x, y) != 0
    assert b"deadlock" in probe.probe_error()


def test_sim_warp_shuffles_and_dynamic_shared_memory(probe):
    x, y = torch.arange(64, dtype=torch.float32), torch.zeros(96)
    assert _call(probe, 2, x, y) == 0
    assert torch.equal(y[:64], torch.cat([x[:32].sum().expand(32), x[32:].sum().expand(32)]))
    assert _call(probe, 3, x, y, 32 * 4) == 0 and torch.equal(y, torch.arange(3.0).repeat_interleave(32))
    assert _call(probe, 3, x, y, 64 * 1024) != 0  # past the 48 KiB default without the opt-in attribute


def test_sim_half_conversions_round_like_torch(tmp_path):
    """The emulated __half / __nv_bfloat16 conversions (round to nearest even, subnormals, inf, NaN)
    against torch's, on every bfloat16 / float16 bit pattern's float value and the midpoints."""
    src = tmp_path / "cvt.cpp"
    src.write_text('#include <cuda_fp16.h>\n#include <cuda_bf16.h>\n#include <cstdint>\n'
                   'extern "C" void cvt(const float* x, uint16_t* h, uint16_t* b, float* hf, float* bf, long n) {\n'
                   '  for (long i = 0; i < n; ++i) { h[i] = __float2half(x[i]).x; b[i] = __float2bfloat16(x[i]).x;\n'
                   '    hf[i] = __half2float(__half{h[i]}); bf[i] = __bfloat162float(__nv_bfloat16{b[i]}); } }\n')
    subprocess.run(["c++", "-std=c++17", "-O2", "-shared", "-fPIC", f"-I{build.INCLUDE}", str(src), "-o",
                    str(tmp_path / "cvt.so")], check=True)
    so = ctypes.CDLL(str(tmp_path / "cvt.so"))
    bits = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16)
    vals = torch.cat([bits.view(torch.float16).float(), bits.view(torch.bfloat16).float()])
    x = torch.cat([vals, (vals[:-1] + vals[1:]) / 2, vals * (1 + 2 ** -12), torch.randn(10000) * 1e-6])
    x = x[~torch.isnan(x)].contiguous()
    n = x.numel()
    h, b = torch.zeros(n, dtype=torch.int16), torch.zeros(n, dtype=torch.int16)
    hf, bf = torch.zeros(n), torch.zeros(n)
    ptr = ctypes.c_void_p
    so.cvt(ptr(x.data_ptr()), ptr(h.data_ptr()), ptr(b.data_ptr()), ptr(hf.data_ptr()), ptr(bf.data_ptr()),
           ctypes.c_long(n))
    assert torch.equal(h, x.half().view(torch.int16)) and torch.equal(b, x.bfloat16().view(torch.int16))
    assert torch.equal(hf, x.half().float()) and torch.equal(bf, x.bfloat16().float())
