"""Every Triton kernel, as the solvers launch it, compiles for a GPU (sm_90 and sm_80), on a machine
without one; and no OT kernel takes a Python float argument.

The interpreter (TRITON_INTERPRET=1, how CI runs the kernels) executes the Python of a kernel and
never compiles it, so a kernel can pass every CPU test and still fail to build on a GPU (the H100
run of 2026-11-22 found one: Triton 3.6 could not compile the partial persistent loop). Here the
launches of representative solves are recorded under the interpreter (argument types, constexprs,
num_warps, num_stages), then a child process without the interpreter compiles each distinct one with
``triton.compile`` for a CUDA target, ptxas included: no GPU or driver needed; a kernel that
compiles but needs more shared memory than the target has (it would fail at launch) fails too.

Triton types a Python float argument as float32, which silently rounds 1/eps, exponents and
tolerances of float64 solves (the other finding of that run); the OT kernels take them from a
float64 tensor instead, and this test keeps it so.
"""
import inspect
import json
import os
import re
import subprocess
import sys

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
triton = pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(not INTERPRET, reason="records launches under TRITON_INTERPRET=1 (CPU machines)")

TARGETS = [("cuda", 90), ("cuda", 80)]
TORCH_TO_TRITON = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16", torch.bfloat16: "bf16",
                   torch.int32: "i32", torch.int64: "i64", torch.int8: "i8", torch.uint8: "u8", torch.bool: "i1"}


def _is_constexpr(annotation) -> bool:
    return annotation is not None and "constexpr" in str(annotation)


class LaunchRecorder:
    """Patches the interpreter's kernel launch; ``launches`` maps a key to (module, kernel, signature,
    constexprs, num_warps, num_stages, enable_fp_fusion (None where not passed), float arguments)."""

    def __init__(self):
        self.launches = {}

    def __enter__(self):
        from triton.runtime.interpreter import InterpretedFunction
        self._cls, self._run = InterpretedFunction, InterpretedFunction.run
        recorder = self

        def run(fn, *args, grid, warmup, **kwargs):
            recorder.record(fn, args, kwargs)
            return recorder._run(fn, *args, grid=grid, warmup=warmup, **kwargs)
        InterpretedFunction.run = run
        return self

    def __exit__(self, *exc):
        self._cls.run = self._run

    def record(self, fn, args, kwargs):
        params = inspect.signature(fn.fn).parameters
        bound = dict(zip(fn.arg_names, args))
        bound.update({k: v for k, v in kwargs.items() if k in params})
        sig, const, floats = {}, {}, []
        for name, p in params.items():
            value = bound.get(name, p.default)
            if _is_constexpr(p.annotation):
                sig[name] = "constexpr"
                const[name] = _encode(value)
            elif isinstance(value, torch.Tensor):
                sig[name] = "*" + TORCH_TO_TRITON[value.dtype]
            elif isinstance(value, bool):
                sig[name] = "i1"
            elif isinstance(value, int):
                sig[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            elif isinstance(value, float):
                sig[name] = "fp32"
                floats.append(name)
            else:
                raise TypeError(f"{fn.fn.__name__}: argument {name} of type {type(value).__name__}")
        entry = (fn.fn.__module__, fn.fn.__name__, sig, const, int(kwargs.get("num_warps", 4)),
                 int(kwargs.get("num_stages", 3)), kwargs.get("enable_fp_fusion"), floats)
        self.launches.setdefault(json.dumps(entry[:7], sort_keys=True), entry)


def _encode(value):
    if isinstance(value, triton.language.dtype):
        return {"dtype": value.name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"constexpr of type {type(value).__name__}")


# ------------------------------------------------------------------------------------ workloads
def _ot_launches(rec):
    from grounded_fast.ops import BALANCED, PARTIAL, UNBALANCED, SolveSpec, entropic_ot_features
    from grounded_fast.ops.entropic_ot.backend_triton import solve as entropic_ot_triton
    from grounded_fast.triton_kernels.ot.sinkhorn_fused import sinkhorn_fused
    from conftest import make_problem
    inf = float("inf")
    cases = [(BALANCED, inf, inf, True), (UNBALANCED, 0.7, 2.0, True), (UNBALANCED, 0.5, inf, False),
             (PARTIAL, inf, inf, True)]
    with rec:
        for dtype in (torch.float32, torch.float64):
            for regime, (B, n, m) in (("small", (2, 13, 29)), ("stream", (1, 40, 150))):
                C, a, b = make_problem(B, n, m, dtype=dtype, seed=n)
                for problem, ra, rb, kl_ref in cases:
                    mass = torch.full((B,), 0.5 if problem == PARTIAL else 0.0, dtype=dtype)
                    entropic_ot_triton(C, a, b, mass, torch.zeros(B, n, dtype=dtype), torch.zeros(B, m, dtype=dtype),
                                       SolveSpec(problem, 0.3, ra, rb, kl_ref, 3, 1e-9, 2), regime=regime)
                if dtype == torch.float32:  # a half-precision C, read as it is
                    for half in (torch.bfloat16, torch.float16):
                        entropic_ot_triton(C.to(half), a, b, torch.full((B,), 0.5), torch.zeros(B, n),
                                           torch.zeros(B, m), SolveSpec(PARTIAL, 0.3, inf, inf, True, 3, 1e-6, 2),
                                           regime=regime)
            C, a, b = make_problem(1, 40, 150, dtype=dtype, seed=1)  # the one-pass regime
            for Cx in (C, C.to(torch.bfloat16)) if dtype == torch.float32 else (C,):
                # balanced (no cap) and partial (the capped row update), with both kernels: rows in
                # registers, and rows too wide for them (streamed twice through L2)
                for problem, mass in ((BALANCED, 0.0), (PARTIAL, 0.5)):
                    for resident in (None, False):
                        sinkhorn_fused(Cx, a, b, torch.full((1,), mass, dtype=dtype), torch.zeros(1, 40, dtype=dtype),
                                       torch.zeros(1, 150, dtype=dtype), SolveSpec(problem, 0.3, inf, inf, True, 3, 1e-9, 2),
                                       resident=resident)
        # the feature kernels' constexprs: dtype, one feature chunk or several (d = 3 / 70), cost
        for feat_dtype, d, cost in ((torch.float32, 3, "sqeuclidean"), (torch.float32, 70, "cosine"),
                                    (torch.bfloat16, 3, "cosine"), (torch.bfloat16, 70, "sqeuclidean"),
                                    (torch.float64, 3, "cosine"), (torch.float64, 70, "sqeuclidean")):
            dt = torch.float64 if feat_dtype == torch.float64 else torch.float32
            g = torch.Generator().manual_seed(d)
            x = torch.randn(1, 20, d, generator=g, dtype=torch.float64).to(feat_dtype).requires_grad_()
            y = torch.randn(1, 30, d, generator=g, dtype=torch.float64).to(feat_dtype)
            a, b = torch.full((1, 20), 1 / 20, dtype=dt), torch.full((1, 30), 1 / 30, dtype=dt)
            sol = entropic_ot_features(x, y, a, b, reg=0.3, cost=cost, problem=PARTIAL, mass=0.5, max_iter=3,
                                       check_every=2, backend="triton", warn=False)
            sol.value.sum().backward()


def _analysis_launches(rec):
    from grounded_fast.ops.analysis import attention_pair_sums, pairwise_agreement_sums
    from grounded_fast.triton_kernels.analysis.attention_distance import attention_pair_sums_triton
    from grounded_fast.triton_kernels.analysis.pairwise_agreement import pairwise_agreement_triton
    g = torch.Generator().manual_seed(0)
    with rec:
        for dtype in (torch.float32, torch.bfloat16):
            z = torch.randn(3, 5, 37, generator=g).to(dtype)
            pairwise_agreement_sums(z, torch.ones(5, dtype=torch.bool), True, "triton")
            pairwise_agreement_triton(z, torch.ones(5, dtype=torch.bool), False, one_pass=True)
            z = torch.randn(40, 2, 70, generator=g).to(dtype)  # the benchmark's 40 models: (64 x 64) tiles
            pairwise_agreement_triton(z, torch.ones(2, dtype=torch.bool), False, one_pass=True)
            z = torch.randn(16, 2, 70, generator=g).to(dtype)  # a full tile: no spare row for the sums (SUM_COL)
            pairwise_agreement_triton(z, torch.ones(2, dtype=torch.bool), False, one_pass=True)
        for dtype in (torch.float32, torch.float64):  # 67 models: the (128 x 128) tiles, the largest on-chip
            z = torch.randn(67, 2, 70, generator=g).to(dtype)
            pairwise_agreement_sums(z, torch.ones(2, dtype=torch.bool), False, "triton")
            pairwise_agreement_triton(z, torch.ones(2, dtype=torch.bool), False, one_pass=True)
        z = torch.randn(131, 2, 37, generator=g)  # beyond 128 models: (64 x 64) tiles of model pairs
        pairwise_agreement_sums(z, torch.ones(2, dtype=torch.bool), False, "triton")
        a = torch.softmax(torch.randn(3, 4, 9, generator=g), -1)
        mask = torch.rand(4, 9, generator=g) > 0.2
        mask[:, 0] = True
        for k, metric in enumerate(("l2", "tv", "hellinger", "jsd")):
            attention_pair_sums(a, mask if k % 2 else None, torch.ones(4, dtype=torch.float64), metric, "triton")
        # a negative row weight: tv and jsd row by row (_pairs) instead of the weight-folding loop
        for k, metric in ((1, "tv"), (3, "jsd")):
            attention_pair_sums_triton(a, torch.empty(0, dtype=torch.bool), torch.tensor([1.0, -1.0, 1.0, 1.0],
                                       dtype=torch.float64), k)


@pytest.fixture(scope="module")
def launches():
    rec = LaunchRecorder()
    _ot_launches(rec)
    _analysis_launches(rec)
    return list(rec.launches.values())


def test_every_kernel_is_covered(launches):
    """Each module's entry kernels (jitted functions no other kernel calls) were all launched."""
    import importlib
    import triton.runtime.interpreter as ti
    for mod in ("grounded_fast.triton_kernels.ot.sinkhorn_small", "grounded_fast.triton_kernels.ot.sinkhorn_stream",
                "grounded_fast.triton_kernels.ot.sinkhorn_features", "grounded_fast.triton_kernels.ot.finalize",
                "grounded_fast.triton_kernels.ot.sinkhorn_fused",
                "grounded_fast.triton_kernels.analysis.pairwise_agreement",
                "grounded_fast.triton_kernels.analysis.attention_distance"):
        jitted = {k: v for k, v in vars(importlib.import_module(mod)).items() if isinstance(v, ti.InterpretedFunction)}
        sources = {k: inspect.getsource(v.fn) for k, v in jitted.items()}
        helpers = {k for k in jitted  # called by another kernel (not a suffix of a longer name: _cross, _stats_cross)
                   if any(re.search(rf"(?<![\w.]){k}\(", src) for other, src in sources.items() if other != k)}
        launched = {name for m, name, *_ in launches if m == mod}
        assert launched == set(jitted) - helpers, f"{mod}: launched {sorted(launched)}, entry kernels {sorted(set(jitted) - helpers)}"


def test_ot_kernels_take_no_python_floats(launches):
    bad = [(name, floats) for mod, name, *_, floats in launches if ".ot." in mod and floats]
    assert not bad, f"Python float arguments (typed float32 by Triton) in {bad}: pass them in a float64 tensor"


def test_every_launch_asks_for_fma_contraction(launches):
    """FMA contraction is Triton's default through 3.9 and off from 3.10 unless a launch asks for it;
    the kernels were measured with it (fast_math.LAUNCH), so every launch asks."""
    missing = sorted({name for mod, name, *_, fp_fusion, _floats in launches if fp_fusion is not True})
    assert not missing, f"launched without enable_fp_fusion=True (pass **fast_math.LAUNCH): {missing}"


COMPILE = r"""
import importlib, json, os, sys
from concurrent.futures import ProcessPoolExecutor


SHARED_LIMIT = {90: 232448, 80: 166912}  # bytes of shared memory a block may opt into (H100, A100)


def build(job):
    (mod, name, sig, const, num_warps, num_stages, fp_fusion, _), (backend, cc) = job
    import triton, triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    fn = getattr(importlib.import_module(mod), name)
    values = {k: tl.dtype(v["dtype"]) if isinstance(v, dict) else v for k, v in const.items()}
    src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in values.items()})
    try:
        kernel = triton.compile(src, target=GPUTarget(backend, cc, 32),
                                options={"num_warps": num_warps, "num_stages": num_stages,
                                         "enable_fp_fusion": fp_fusion})
    except Exception as exc:
        return f"{name} sm_{cc} {const}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if kernel.metadata.shared > SHARED_LIMIT[cc]:  # compiles, but the launch would fail (OutOfResources)
        return (f"{name} sm_{cc} {const}: needs {kernel.metadata.shared} B of shared memory, the limit is "
                f"{SHARED_LIMIT[cc]}")
    return None


if __name__ == "__main__":
    spec = json.load(sys.stdin)
    jobs = [(launch, target) for launch in spec["launches"] for target in spec["targets"]]
    with ProcessPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        failures = [f for f in pool.map(build, jobs) if f]
    print(json.dumps(failures))
"""


def test_kernels_compile_for_gpu_targets(launches, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = tmp_path / "compile_kernels.py"  # a file, so that the pool's workers can import it
    script.write_text(COMPILE)
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")  # compile for real, not from an earlier run's cache
    res = subprocess.run([sys.executable, str(script)], input=json.dumps({"launches": launches, "targets": TARGETS}),
                         capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    failures = json.loads(res.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(failures)
