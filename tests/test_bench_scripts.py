"""The GPU benchmark script runs end to end (smoke sizes, CPU backends), so that the first GPU
machine that runs bench/gpu_lease.py does not find a broken script."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_analysis_bench_smoke(tmp_path):
    stem = tmp_path / "gpu-smoke"
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_analysis.py"), "--smoke", "--device",
                          "cpu", "--backends", "cpu,torch,cuda", "--out", str(stem)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "gpu-smoke.json").read_text())
    assert {r["backend"] for r in out["results"]} == {"cpu", "torch"}
    assert out["backends_skipped"] == ["cuda"] and out["smoke"]
    assert all(r["median_s"] > 0 and r["floor_s"] > 0 for r in out["results"])
    assert "| B attention jsd" in (tmp_path / "gpu-smoke.md").read_text()


def test_gpu_ot_bench_smoke(tmp_path):
    stem = tmp_path / "gpu-ot-smoke"
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_ot.py"), "--smoke", "--device", "cpu",
                          "--backends", "cpu,cuda", "--out", str(stem)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "gpu-ot-smoke.json").read_text())
    assert {r["backend"] for r in out["results"]} == {"cpu", "torch"} and out["backends_skipped"] == ["cuda"]
    cases = {r["case"][0] for r in out["results"]}
    assert cases == {"1", "2", "3"}
    # case 3 times both cost sources (on CPU the chunked torch passes stand in for the GPU kernels)
    feat = [r for r in out["results"] if r.get("cost_source") == "features"]
    assert len(feat) == 1 and feat[0]["backend"] == "torch" and feat[0]["vs_memory_path"] > 0
    assert feat[0]["with_backward_s"] > 0 and any("choose_cost_source" in n for n in out["notes"])
    assert all(r["vs_pot"] > 0 for r in out["results"] if r["case"][0] in "12")  # POT is installed in CI


def test_gpu_ot_case4_runs_both_regimes(tmp_path):
    """Case 4 (partial and unbalanced, streaming against fused) through the Triton kernels under the
    interpreter, at its smoke size."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs the Triton kernels under TRITON_INTERPRET=1")
    stem = tmp_path / "gpu-ot-4"
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_ot.py"), "--smoke", "--device", "cpu",
                          "--backends", "triton", "--cases", "4", "--out", str(stem)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "gpu-ot-4.json").read_text())
    runs = {(r["case"].split(" B=")[0], r["case"].split("regime ")[1].split(",")[0], r["c_reads_per_iter"])
            for r in out["results"]}
    assert runs == {(f"4 {k}", rg, 2 if rg == "stream" else 1) for k in ("partial m=0.5", "unbalanced reg_m=1")
                    for rg in ("stream", "fused")}, runs
    assert all(r["median_s"] > 0 and r["backend"] == "triton" for r in out["results"]), out["notes"]


def test_gpu_sweep_script(tmp_path):
    """Without a GPU the sweep says so (exit 2); its table lists the fastest configurations first."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import gpu_sweep
    if not __import__("torch").cuda.is_available():
        res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_sweep.py"), "fused"],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and "needs a CUDA GPU" in res.stderr
    rows = [{"dtype": "torch.float32", "pass": "row", "BR": br, "ms": ms}
            for br, ms in ((16, 0.5), (32, 0.3), (64, "OutOfResources: x"))]
    md = gpu_sweep.render({"kind": "stream", "device": "x", "commit": "0" * 40, "torch": "t", "triton": "3",
                           "copy_bandwidth_Bps": 3e12, "rows": rows})
    table = [line for line in md.splitlines() if line.startswith("| torch.float32")]
    assert table == ["| torch.float32 | row | 32 | 0.3 |", "| torch.float32 | row | 16 | 0.5 |"]
    assert "1 configurations failed" in md


def test_gpu_sweep_agree_runs_both_forms(monkeypatch):
    """The agree sweep's loops, at tiny sizes under the interpreter (do_bench replaced by one call):
    every configuration of both forms runs, the CONFIG is restored, and the table groups by form."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs the Triton kernels under TRITON_INTERPRET=1")
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import gpu_sweep
    from grounded_fast.triton_kernels.analysis import pairwise_agreement as pa
    before = dict(pa.ONE_PASS_CONFIG), pa.PROGRAMS_PER_SM, pa.VECTOR_LOADS
    monkeypatch.setattr(gpu_sweep, "_time", lambda fn: (fn(), 1.0)[1])
    rows = gpu_sweep.sweep_agree(1e9, device="cpu", sizes=(5, 2, 40))
    assert (dict(pa.ONE_PASS_CONFIG), pa.PROGRAMS_PER_SM, pa.VECTOR_LOADS) == before
    assert {r["form"] for r in rows} == {"two_pass", "one_pass"} and len(rows) == 2 * 13 * 3 * 2
    md = gpu_sweep.render({"kind": "agree", "device": "x", "commit": "0" * 40, "torch": "t", "triton": "3",
                           "copy_bandwidth_Bps": 1e9, "rows": rows})
    assert "## torch.float32 one_pass" in md and "## torch.bfloat16 two_pass" in md


def test_gpu_sweep_fused_runs_both_kernels(monkeypatch):
    """The fused sweep's loops at a tiny size under the interpreter: every configuration of both
    kernels runs through the real ``fused_pass``, and the module's knobs are restored."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs the Triton kernels under TRITON_INTERPRET=1")
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import gpu_sweep
    from grounded_fast.triton_kernels.ot import sinkhorn_fused as sf
    before = (sf.RESIDENT_TILE, dict(sf.RESIDENT_PER_THREAD), sf.RESIDENT_PER_SM, sf.CONFIG)
    monkeypatch.setattr(gpu_sweep, "_time", lambda fn: (fn(), 1.0)[1])
    rows = gpu_sweep.sweep_fused(1e9, device="cpu", sizes=(2, 6, 10))
    assert (sf.RESIDENT_TILE, dict(sf.RESIDENT_PER_THREAD), sf.RESIDENT_PER_SM, sf.CONFIG) == before
    assert all(r["ms_per_iteration"] == 1.0 for r in rows), [r for r in rows if r["ms_per_iteration"] != 1.0][:1]
    assert {r["form"] for r in rows} == {"resident", "l2"} and len(rows) == 2 * (36 + 54)


def test_gpu_sweep_attention_runs_every_config(monkeypatch):
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs the Triton kernels under TRITON_INTERPRET=1")
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import gpu_sweep
    from grounded_fast.triton_kernels.analysis import attention_distance as ad
    before = dict(ad.CONFIG)
    monkeypatch.setattr(gpu_sweep, "_time", lambda fn: (fn(), 1.0)[1])
    rows = gpu_sweep.sweep_attention(1e9, device="cpu", sizes=(3, 4, 9))
    assert dict(ad.CONFIG) == before and len(rows) == 27 and all(r["ms"] == 1.0 for r in rows)


def test_gpu_sweep_small_runs_every_warp_count(monkeypatch):
    """Both shapes, the persistent kernel at every warp count and the streaming regime beside it;
    the per-iteration time is the difference of the two iteration counts; WARPS_LARGE_TILE restored."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs the Triton kernels under TRITON_INTERPRET=1")
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import gpu_sweep
    from grounded_fast.triton_kernels.ot import sinkhorn_small as sm
    times = iter([1.0, 3.0] * 10)  # ms at 2 and 4 iterations: 1 ms per iteration
    monkeypatch.setattr(gpu_sweep, "_time", lambda fn: (fn(), next(times))[1])
    rows = gpu_sweep.sweep_small(1e9, device="cpu", shapes=((2, 5, 7), (1, 3, 4)), iters=(2, 4))
    assert sm.WARPS_LARGE_TILE == 8
    assert [(r["form"], r["regime"], r["warps"]) for r in rows[:5]] == \
        [("B=2 5x7", "small", w) for w in (4, 8, 16, 32)] + [("B=2 5x7", "stream", "-")]
    assert len(rows) == 10 and all(r["us_per_iteration"] == 1000.0 for r in rows)
    md = gpu_sweep.render({"kind": "small", "device": "x", "commit": "0" * 40, "torch": "t", "triton": "3",
                           "copy_bandwidth_Bps": 1e9, "rows": rows})
    assert "## torch.float32 B=2 5x7" in md and "## torch.float32 B=1 3x4" in md


def test_sass_cost_hot_loop_skips_the_rare_branch():
    """bench/sass_cost.py's loop finder on a made-up listing: the innermost loop (not the outer one
    around it), without the body of its forward branch."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import sass_cost
    listing = "\n".join(f"        /*{a:04x}*/                   {t} ;" for a, t in [
        (0x00, "MOV R1, R2"), (0x10, "FADD R1, R1, R2"),           # outer loop head
        (0x20, "FMUL R3, R1, R1"), (0x30, "@!P0 BRA 0x60"),          # inner loop, rare branch
        (0x40, "MUFU.EX2 R4, R3"), (0x50, "FMUL R5, R4, R4"),        # the rare body
        (0x60, "FFMA R6, R3, R3, R6"), (0x70, "@P1 BRA 0x20"),       # back to the inner head
        (0x80, "@P2 BRA 0x10"), (0x90, "EXIT"), (0xa0, "BRA 0xa0")])
    n, counts = sass_cost.hot_loop(listing)
    assert n == 4 and counts == {"FMUL": 1, "BRA": 2, "FFMA": 1}


def test_sass_cost_hot_loop_ignores_the_jump_back_from_an_out_of_line_block():
    """Triton 3.8 moves the one-pass kernel's rare branch after the function's body, ending it with
    an unconditional jump back into the loop: that backward jump spans most of the code, and taking
    it for the V loop had counted 94 lane-instructions per entry instead of 21."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import sass_cost
    listing = "\n".join(f"        /*{a:04x}*/                   {t} ;" for a, t in [
        (0x00, "MOV R1, R2"), (0x10, "FADD R1, R1, R2"),
        (0x20, "FMUL R3, R1, R1"), (0x30, "@P0 BRA 0xa0"),           # loop head; rare: out of line
        (0x40, "FFMA R6, R3, R3, R6"), (0x50, "@P1 BRA 0x20"),       # the loop's back edge
        (0x60, "EXIT"), (0x70, "BRA 0x70"),
        (0xa0, "MUFU.EX2 R4, R3"), (0xb0, "FMUL R5, R4, R4"), (0xc0, "BRA 0x40")])  # the rare block
    n, counts = sass_cost.hot_loop(listing)
    assert n == 4 and counts == {"FMUL": 1, "BRA": 2, "FFMA": 1}


def test_sass_cost_default_one_pass_config_has_no_spills():
    """The one-pass agreement kernel at its default BM 64 configuration compiles for sm_90 without
    register spills (bench/sass_cost.py, in a child process: compiled, not interpreted)."""
    pytest.importorskip("triton")
    from grounded_fast.triton_kernels.analysis import pairwise_agreement as pa
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cfg = ",".join(map(str, ("fp32", 64, *pa.ONE_PASS_CONFIG[64])))
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "sass_cost.py"), "--config", cfg, "--json"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    row, = json.loads(res.stdout.strip().splitlines()[-1])
    assert row["stack"] == 0, row
    assert 0 < row["per_entry"] < 60, row


def test_sass_cost_fused_resident_kernel_is_lean():
    """The fused OT regime's resident kernel at case 2's layout (2 rows of 4096 columns, float32 C)
    compiles for sm_90 without spills and with at most 26 lane-instructions per entry of C: 21 with
    Triton 3.6 and 3.9 in its base-2 form, 32 with tl.exp (a guarded ex2 each) and 1.5 exponentials
    an entry in the column update (bench/results/sass-cost-ot.md); the CUDA one likewise."""
    pytest.importorskip("triton")
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not on the PATH")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "sass_cost.py"), "--kernel", "fused", "--json"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout.strip().splitlines()[-1])
    fp32 = [r for r in rows if r["dtype"] == "fp32" and "CUDA" not in r["kernel"]]
    assert len(fp32) == 2 and all(r["stack"] == 0 and 0 < r["per_entry"] < 26 for r in fp32), fp32
    # the CUDA kernel (nvcc is on CI's PATH), every path of its row loop: 29-31 now, 33 with a test an
    # entry and bounds-tested loads, 39.5 with __expf
    cuda = [r for r in rows if "CUDA" in r["kernel"]]
    assert {r["dtype"] for r in cuda} == {"fp32", "fp16", "bf16"}, cuda
    assert all(r["stack"] == 0 and 0 < r["per_entry"] < 32 for r in cuda), cuda


def _bench_module(name):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def test_bench_checks_flag_wrong_results():
    """The check column of the GPU tables: over the limit or NaN is WRONG; a 16-bit output is allowed
    its own rounding (the op returns a bfloat16 C's plan in bfloat16), a float32 one is not."""
    import torch
    ga = _bench_module("gpu_analysis")
    go = _bench_module("gpu_ot")
    assert ga.check_label({"kl": 1e-6, "entropy": 2e-4}, {"kl": 1e-3, "entropy": 1e-3}).startswith("ok ")
    assert ga.check_label({"kl": 1e-6, "entropy": 2e-3}, {"kl": 1e-3, "entropy": 1e-3}).startswith("WRONG ")
    assert ga.check_label({"kl": float("nan")}, {"kl": 1e-3}).startswith("WRONG ")
    ref = torch.tensor([[1.0, 2.0], [3.0, float("-inf")]], dtype=torch.float64)
    assert ga.rel_err(ref.float(), ref) == 0.0
    assert ga.rel_err(torch.tensor([[1.0, 2.0], [float("nan"), 0.0]]), ref) != ga.rel_err(ref, ref)  # NaN
    plan = torch.rand(2, 5, 7, dtype=torch.float64)
    value = plan.sum((1, 2))
    sol = type("Ref", (), {"plan": plan, "value": value})()
    out = (plan.float(), None, None, None, value.float())
    assert go._checked({}, out, sol)["check"].startswith("ok ")
    assert go._checked({}, (plan.float() * 1.01, None, None, None, value.float()), sol)["check"].startswith("WRONG ")
    rounded = (plan.to(torch.bfloat16), None, None, None, value.to(torch.bfloat16))
    assert go._checked({}, rounded, sol)["check"].startswith("ok ")
    assert go._checked({}, value.float(), sol)["errors"].keys() == {"value"}  # a feature path's value alone


def test_result_log_writes_every_row(tmp_path):
    """A run stopped at a lease's limit keeps each row it measured: the files are rewritten per row."""
    ga = _bench_module("gpu_analysis")
    log = ga.ResultLog(str(tmp_path / "r"), lambda res: f"{len(res['results'])} rows\n", "dev", True, {}, [])
    log.add({"case": "x", "median_s": 1.0})
    assert json.loads((tmp_path / "r.json").read_text())["results"] == [{"case": "x", "median_s": 1.0}]
    log.note("a note")
    log.add({"case": "y", "median_s": 2.0})
    out = json.loads((tmp_path / "r.json").read_text())
    assert [r["case"] for r in out["results"]] == ["x", "y"] and out["notes"] == ["a note"]
    assert (tmp_path / "r.md").read_text() == "2 rows\n" and not list(tmp_path.glob("*.tmp"))


def test_gpu_lease_stages_limits_and_packing(tmp_path):
    """The lease runner: a stage's limit ends its whole process group and the next stage runs; a
    failure is reported with its exit code; a stage that would not fit is skipped; a conditional
    stage runs only when asked; results are packed into out during a stage, not only after it."""
    import tarfile
    import time
    gl = _bench_module("gpu_lease")
    work, out = tmp_path / "work", tmp_path / "out"
    lease = gl.Lease(60, str(out), str(work), reserve_s=0, pack_every_s=0.3)
    res = work / "results"
    pidfile = tmp_path / "grandchild.pid"
    # writes a result, then checks from inside the stage that a periodic pack has already carried it
    packed = (f"echo '{{}}' > {res}/early.json; sleep 3; python3 -c \"import tarfile; "
              f"assert 'results/early.json' in tarfile.open('{out}/lease.tar.gz').getnames()\"")
    stages = [gl.Stage("first", gl._sh("echo hello"), 10, 0),
              gl.Stage("packed", gl._sh(packed), 30, 0),
              gl.Stage("slow", gl._sh(f"sleep 60 & echo $! > {pidfile}; wait"), 1.5, 0),
              gl.Stage("fails", gl._sh("exit 3"), 10, 0),
              gl.Stage("only-if-first-failed", gl._sh("exit 0"), 10, 0, when=lambda st: st["first"] != "ok"),
              gl.Stage("too-big", gl._sh("exit 0"), 10, min_s=1000)]
    t = time.monotonic()
    outcomes = {o.name: o.status for o in lease.run(stages)}
    assert time.monotonic() - t < 30
    assert outcomes == {"first": "ok", "packed": "ok", "slow": "timed out", "fails": "failed (rc 3)",
                        "too-big": outcomes["too-big"]} and outcomes["too-big"].startswith("skipped")
    grandchild = int(pidfile.read_text())
    deadline = time.time() + 10
    while os.path.exists(f"/proc/{grandchild}") and time.time() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{grandchild}"), "the stage's process group outlived its limit"
    md = (out / "lease.md").read_text()
    assert "| slow | timed out |" in md and "| fails | failed (rc 3) |" in md
    with tarfile.open(out / "lease.tar.gz") as tar:
        names = tar.getnames()
        assert {"results/early.json", "logs/00-first.log", "logs/02-slow.log", "lease.md"} <= set(names)
        assert "hello" in tar.extractfile("logs/00-first.log").read().decode()
        assert "stopped at its limit" in tar.extractfile("logs/02-slow.log").read().decode()
    report = lease.report()
    assert "## fails (failed (rc 3))" in report and "## first" not in report


def test_gpu_lease_stage_commands():
    """The GPU stages name files and cases that exist (they cannot run here), in priority order."""
    gl = _bench_module("gpu_lease")
    go = _bench_module("gpu_ot")
    stages = gl.gpu_stages("/tmp/results", "h100", py="python3")
    names = [s.name for s in stages]
    assert names[:8] == ["env", "build-cuda", "build-cpu", "studies", "peers", "ot", "analysis", "gpu-tests"]
    assert all(os.path.exists(os.path.join(ROOT, t)) for t in gl.GPU_TESTS)
    for s in stages:
        scripts = [a for a in s.argv if a.startswith("bench/")]
        assert all(os.path.exists(os.path.join(ROOT, a)) for a in scripts), s
    ot = next(s for s in stages if s.name == "ot")
    assert set(ot.argv[ot.argv.index("--cases") + 1].split(",")) == set(go.CASES)
    build = next(s for s in stages if s.name == "build-cuda")
    assert build.env["FORCE_CUDA"] == "1" and build.env["GROUNDED_FAST_CUDA_ARCHS"]
    cpu = next(s for s in stages if s.name == "build-cpu")
    assert cpu.when({"build-cuda": "failed (rc 1)"}) and not cpu.when({"build-cuda": "ok"})


def test_gpu_lease_opt_in_stages_and_unbounded(tmp_path):
    """cpu-tests (the rest of the suite, without the GPU files) runs only when named or with
    --unbounded; --unbounded lifts every stage's cap and the budget, and the tables say 'none'."""
    gl = _bench_module("gpu_lease")
    stages = gl.gpu_stages("/tmp/results", "h100", py="python3")
    cpu = next(s for s in stages if s.name == "cpu-tests")
    assert cpu.opt_in and all(f"--ignore={t}" in cpu.argv[2] for t in gl.GPU_TESTS)
    assert " tests " in cpu.argv[2] and not any(s.opt_in for s in stages if s.name != "cpu-tests")
    default = gl.select_stages(stages)
    assert [s.name for s in default] == [s.name for s in stages if s.name != "cpu-tests"]
    assert [s.cap_s for s in default] == [s.cap_s for s in stages if s.name != "cpu-tests"]
    unbounded = gl.select_stages(stages, unbounded=True)
    assert [s.name for s in unbounded] == [s.name for s in stages] and {s.cap_s for s in unbounded} == {float("inf")}
    assert [s.name for s in gl.select_stages(stages, "cpu-tests,env")] == ["env", "cpu-tests"]
    assert cpu.cap_s < float("inf")  # the selection copies, it does not change the stages
    with pytest.raises(ValueError, match="unknown stages"):
        gl.select_stages(stages, "env,nope")
    lease = gl.Lease(float("inf"), str(tmp_path / "out"), str(tmp_path / "work"), reserve_s=0)
    outcomes = lease.run(gl.select_stages([gl.Stage("quick", gl._sh("echo hi"), 1, 0)], unbounded=True))
    assert [o.status for o in outcomes] == ["ok"]
    md = (tmp_path / "out" / "lease.md").read_text()
    assert "budget none s" in md and "| quick | ok | 0 | none |" in md


def test_gpu_lease_studies_stage(tmp_path, monkeypatch):
    """The studies stage: each study's tiny preset with --device cuda through the CLI (flags the
    CLI accepts), run directories outside the packed results, preset_costs.py where it exists; its
    device check passes a run whose units ran on the device type asked for and fails any other."""
    import shlex

    from grounded_fast.cli import main
    gl = _bench_module("gpu_lease")
    stage = gl.studies_stage(str(tmp_path / "work" / "results"), py="python3")
    script = stage.argv[2]
    assert stage.name == "studies" and stage.cap_s <= 150 and "smoke" not in script
    runs = [shlex.split(part.split(" && ")[0])[3:] for part in script.split("; ") if " grounded_fast.cli run " in part]
    assert [r[1] for r in runs] == ["groundedbert", "grounding", "flava-ablation"]
    for argv in runs:
        assert argv[argv.index("--device") + 1] == "cuda" and argv[argv.index("--preset") + 1] == "tiny"
        assert argv[argv.index("--out") + 1].startswith(str(tmp_path / "work" / "study-runs"))
    assert "bench/preset_costs.py --device cuda --out" in script and "[ -f bench/preset_costs.py ]" in script
    # the device check, on a real (toy) run recorded as on the CPU
    import dataclasses as dc
    import time as _time

    from grounded_fast.experiments import studies
    from grounded_fast.experiments.studies import registry
    from grounded_fast.models.config import ModelConfig

    @dc.dataclass
    class Cfg(ModelConfig):
        presets = {"tiny": {}}

    def unit(spec, cfg, out_dir, shared, progress, device):
        from grounded_fast._atomic import write_atomic
        from grounded_fast.experiments.runner import unit_result
        path = write_atomic(os.path.join(out_dir, "u.txt"), b"1").path
        return unit_result(_time.time(), [(0, path)], [])
    from grounded_fast.experiments.report import Report
    toy = studies.Study("lease-toy", Cfg, lambda cfg: [studies.Unit("u", "one")], lambda *a, **k: None, unit,
                        lambda store, cfg: None, lambda res: [], lambda store, out: Report("toy"))
    monkeypatch.setitem(registry._REGISTRY, "lease-toy", toy)
    run = tmp_path / "run"
    assert main(["run", "lease-toy", "--out", str(run), "--no-progress", "--device", "cpu", "--workers", "1"]) == 0
    check = lambda kind: subprocess.run([sys.executable, "-c", gl.CHECK_DEVICES, str(run), kind], cwd=ROOT,  # noqa: E731
                                        capture_output=True, text=True)
    ok, wrong = check("cpu"), check("cuda")
    assert ok.returncode == 0 and "units on ['cpu']" in ok.stdout, ok.stderr
    assert wrong.returncode == 1


def test_gpu_lease_smoke(tmp_path):
    """The runner end to end on the CPU: bench stages at smoke sizes, two files in out."""
    import tarfile
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_lease.py"), "--smoke", "--stages",
                          "env,analysis", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lease.md", "lease.tar.gz"]
    assert "| analysis | ok |" in (tmp_path / "lease.md").read_text()
    with tarfile.open(tmp_path / "lease.tar.gz") as tar:
        assert {"results/gpu-smoke.json", "results/gpu-smoke.md", "logs/01-analysis.log"} <= set(tar.getnames())
    assert "| A agreement" in res.stdout and "ok kl" in res.stdout  # the result tables are printed last


def test_fetch_peer_wheels_is_valid_bash():
    assert subprocess.run(["bash", "-n", os.path.join(ROOT, "bench", "fetch_peer_wheels.sh")]).returncode == 0


def test_gpu_lease_verdict(tmp_path):
    """The verdict printed last reads the open targets off the run's JSON: issue 3's best float32 row
    against POT and fused against streaming per iteration, issue 4's floor fractions, failed checks
    and the GPU tests' summary line."""
    gl = _bench_module("gpu_lease")
    c2 = "2 balanced B=16 4096x4096 given C"
    ot = [{"case": f"{c2}, 50 it", "backend": "triton", "vs_pot": 8.5, "vs_pot_per_iter": 8.8, "s_per_iter": 7.7e-4,
           "check": "ok plan 1e-7"},
          {"case": f"{c2}, regime fused, 50 it", "backend": "triton", "vs_pot": 14.2, "vs_pot_per_iter": 15.0,
           "s_per_iter": 4.1e-4, "check": "ok plan 1e-7"},
          {"case": f"{c2}, bfloat16 C, regime fused, 50 it", "backend": "triton", "vs_pot": 30.0,
           "s_per_iter": 2.0e-4, "check": "ok plan 1e-7"},
          {"case": "4 partial m=0.5 B=16 4096x4096 given C, regime stream, 50 it", "backend": "cuda",
           "s_per_iter": 1.0e-3, "check": "ok"},
          {"case": "4 partial m=0.5 B=16 4096x4096 given C, regime fused, 50 it", "backend": "cuda",
           "s_per_iter": 5.0e-4, "check": "WRONG plan 3e-01"}]
    an = [{"case": "A agreement M=40", "dtype": "float32", "backend": "triton", "floor_fraction": 0.41, "check": "ok"},
          {"case": "B attention jsd M=40", "dtype": "float32", "backend": "cuda", "floor_fraction": 0.52,
           "check": "ok"}]
    (tmp_path / "gpu-ot-h100.json").write_text(json.dumps({"results": ot}))
    (tmp_path / "gpu-h100.json").write_text(json.dumps({"results": an}))
    (tmp_path / "gpu-sweep-fused-h100.json").write_text(json.dumps({"results": [{"case": "A x"}]}))
    log = tmp_path / "tests.log"
    log.write_text("....\n= 700 passed, 1 skipped in 250.0s =\n")
    text = gl.verdict(str(tmp_path), str(log))
    assert "best triton (fused regime; " in text and "14.2x whole solve, 15.0x per iteration: MET" in text
    assert "case 2 balanced, triton: 0.770 -> 0.410 ms per iteration (1.88x)" in text
    assert "case 4 partial m=0.5, cuda: 1.000 -> 0.500 ms per iteration (2.00x)" in text
    assert "case A float32: triton 0.41" in text and "case B float32: cuda 0.52" in text
    assert "WRONG plan 3e-01" in text and "GPU tests: = 700 passed, 1 skipped in 250.0s =" in text
    empty = gl.verdict(str(tmp_path / "none"))
    assert "issue 3: case 2 has no row" in empty and "issue 4: no analysis rows" in empty


def test_ab_interleaved_runs_one_round_of_a_case(tmp_path, monkeypatch):
    """bench/ab_interleaved.py: its cases name bench/cases.py's calls, a round runs a case in a fresh
    interpreter of each checkout (here the same one twice), and the rounds are checked."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import ab_interleaved as ab
        import cases
    finally:
        sys.path.remove(os.path.join(ROOT, "bench"))
    for fn, maker, _, _ in ab.CASES.values():
        assert callable(getattr(cases, fn)) and callable(getattr(cases, maker))
    monkeypatch.setattr(ab, "CASES", {"3 balanced small": ("ours_balanced", "points2d", (40, 0), 3)})
    out = tmp_path / "ab.jsonl"
    assert ab.main([ROOT, ROOT, "--rounds", "1", "--threads", "1", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["side"] for r in rows] == ["before", "after"]
    assert set(rows[0]["ms"]) == {"3 balanced small float32", "3 balanced small float64"}
    assert all(v > 0 for r in rows for v in r["ms"].values())
    with pytest.raises(SystemExit):
        ab.main([ROOT, ROOT, "--rounds", "0"])
