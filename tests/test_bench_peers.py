"""The OT speed comparisons are fair and say what they measured: ratios below 1 print as such, both
sides run with the same pinned threads, bench/compare_peers.py prints its table (and says what is
missing), the GeomLoss wrapper solves our problem, and the CPU results file names the kernels'
commit, the device, the date and the threads."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
if BENCH not in sys.path:  # the bench scripts' own modules (timing.py)
    sys.path.insert(0, BENCH)

from timing import Timing, fmt_ratio, pinned_threads, thread_state  # noqa: E402


def _load(name, path):
    """A bench/ script as a module of its own name (bench/conftest.py is not tests/conftest.py)."""
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Bench:
    """pytest-benchmark's fixture, as far as bench/conftest.py's run_bench uses it (1 s a round)."""

    def __init__(self):
        self.extra_info = {}
        self.stats = type("S", (), {"stats": type("T", (), {"min": 1.0, "max": 1.0, "median": 1.0})})()

    def pedantic(self, fn, rounds, iterations, warmup_rounds):
        for _ in range(rounds + warmup_rounds):
            fn()


def test_ratios_below_one_print_as_such(capsys):
    assert [fmt_ratio(r) for r in (0.42, 0.0042, 1.0, 3.14159, 42.13, 2107.4)] == \
        ["0.42x", "0.0042x", "1.00x", "3.14x", "42.1x", "2107x"]
    peers = _load("compare_peers", os.path.join(BENCH, "compare_peers.py"))
    t = lambda s: Timing([s] * 3, {"torch": 2})  # noqa: E731
    peers.print_table([dict(case="c", peer="POT x", ours=t(1e-3), theirs=t(0.42e-3), check="-"),
            dict(case="c", peer="POT y", ours=t(1e-3), theirs=t(2.5e-1), check="-")])
    out = capsys.readouterr().out
    assert " 0.42x " in out and " 250x " in out and " 0x " not in out


def test_compare_peers_pins_both_sides_to_the_same_threads():
    """Every timed call of both sides ran with torch and every BLAS / OpenMP pool at --threads
    (1 here, below this machine's default), and the previous settings come back afterwards."""
    pytest.importorskip("ot", reason="POT not installed (pip install pot==0.9.7.post1)")
    peers = _load("compare_peers", os.path.join(BENCH, "compare_peers.py"))
    before = thread_state()
    rows = peers.compare_peers(iters=2, threads=1, repeat=1, quick=True)
    timed = [r for r in rows if r["ours"] is not None]
    assert len(timed) == 5
    for r in timed:
        for side in (r["ours"], r["theirs"]):
            assert side.threads["torch"] == 1 and any(k.startswith("openblas") for k in side.threads), side.threads
            assert set(side.threads.values()) == {1}, (r["peer"], side.threads)
    after = thread_state()
    assert {k: after[k] for k in before} == before  # (POT's own OpenMP pool is loaded on the way)


def test_compare_peers_script_prints_its_table():
    """`python bench/compare_peers.py --quick`: the POT rows (partial and balanced, like for like), the
    GeomLoss row when GeomLoss is installed (else a line saying there is none), the untimed
    small-reg row, all at the requested iterations and threads."""
    pytest.importorskip("ot", reason="POT not installed (pip install pot==0.9.7.post1)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    res = subprocess.run([sys.executable, os.path.join(BENCH, "compare_peers.py"), "--quick", "--iters", "5",
                          "--threads", "1", "--repeat", "2"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "threads: torch 1, " in out and "the same for grounded_fast and every peer" in out
    assert "median (min-max) of 2 runs" in out and "speed-up" in out
    for row in ("partial B=16 64x197 cosine f32, 5 it", "partial B=16 64x197 cosine f64, 5 it",
                "balanced 256x256 sqeuclidean f32, 5 it", "balanced 256x256 sqeuclidean f64, 5 it"):
        assert row in out, (row, out)
    assert out.count("POT entropic_partial_wasserstein") == 3 and out.count("POT sinkhorn (exp domain)") == 3
    assert "marginal error ours" in out
    if importlib.util.find_spec("geomloss") is None:
        assert "GeomLoss not installed" in out
    else:
        assert "balanced B=16 64x197 cosine f32, 5 it" in out and "GeomLoss ot.solve_batch" in out


def test_compare_peers_without_pot_says_so(monkeypatch, capsys):
    """No POT: exit 2 and the install line, nothing timed."""
    peers = _load("compare_peers", os.path.join(BENCH, "compare_peers.py"))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ot" else find_spec(name, *a))
    monkeypatch.setattr(peers, "compare_peers", lambda *a, **k: pytest.fail("timed without POT"))
    assert peers.main(["--quick"]) == 2
    assert "needs POT: pip install pot==0.9.7.post1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        peers.main(["--iters", "0"])


def test_pinned_threads_without_threadpoolctl_pins_torch_and_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import fails
    before = torch.get_num_threads()
    with pytest.warns(UserWarning, match="threadpoolctl is not installed"), pinned_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        with pinned_threads(0):
            pass


def test_bench_suite_pins_both_sides(monkeypatch):
    """bench/conftest.py: BENCH_THREADS sets the threads, the session pinning covers a POT (numpy
    BLAS) call and one of ours, and run_bench records the pools' counts with each benchmark."""
    monkeypatch.setenv("BENCH_THREADS", "1")
    bc = _load("bench_conftest", os.path.join(BENCH, "conftest.py"))
    cases = _load("cases", os.path.join(BENCH, "cases.py"))
    assert bc.THREADS == 1
    monkeypatch.setattr(bc, "IDLE_WAIT_S", 0)

    p = cases.points2d(16, seed=1)
    seen = {}
    with bc.session_threads(bc.THREADS):
        for side, fn in (("pot", lambda: cases.pot_sinkhorn(p, 2, array="np64")),
                         ("ours", lambda: cases.ours_balanced(p, torch.float32, 2))):
            b = Bench()
            bc.run_bench(b, lambda fn=fn, side=side: (seen.__setitem__(side, thread_state()), fn()), rounds=1)
            assert set(b.extra_info["threads"].values()) == {1}, b.extra_info["threads"]
    assert set(seen["pot"].values()) == set(seen["ours"].values()) == {1}
    assert any(k.startswith("openblas") for k in seen["pot"])


def test_bench_suite_measures_a_contaminated_row_again(monkeypatch):
    """A row during which other processes took > 10% of the CPU time is timed again and the cleaner
    attempt kept; a clean first attempt is not repeated."""
    bc = _load("bench_conftest", os.path.join(BENCH, "conftest.py"))
    monkeypatch.setattr(bc, "IDLE_WAIT_S", 0)
    # /proc/stat ticks (busy, all, ours) before and after each attempt: 80% foreign, then 2%
    ticks = iter([(0, 0, 0), (90, 100, 10), (0, 0, 0), (12, 100, 10)])
    monkeypatch.setattr(bc.throughput, "_ticks", lambda: next(ticks))
    b = Bench()
    out, med = bc.run_bench(b, lambda: 7, rounds=3)
    info = b.extra_info
    assert out == 7 and med < 0.5 and info["timing"]["rounds"] == 3 and len(info["timing"]["samples"]) == 3
    assert info["foreign_cpu_fraction"] == pytest.approx(0.02) and len(info["attempts"]) == 2
    ticks = iter([(0, 0, 0), (12, 100, 10)])
    b = Bench()
    assert bc.run_bench(b, lambda: 7, rounds=3) == (7, 1.0) and "timing" not in b.extra_info
    assert "attempts" not in b.extra_info


def test_geomloss_wrapper_solves_our_problem():
    """geomloss.ot.solve_batch through the wrapper, run long on a small balanced problem, returns our
    float64 entropic plan at the same reg, and its value is ours in the KL(P | ab^T) convention. A
    wrapper that passed blur (reg ** 0.5) or reg ** 2 as eps lands 0.06-0.08 away."""
    pytest.importorskip("geomloss", reason="GeomLoss not installed (pip install geomloss==0.3.1)")
    from grounded_fast.ops import BALANCED, entropic_ot
    g = torch.Generator().manual_seed(0)
    B, n, m, reg = 2, 5, 7, 0.1
    C = torch.rand(B, n, m, generator=g, dtype=torch.float64)
    a = torch.rand(B, n, generator=g, dtype=torch.float64) + 0.5
    b = torch.rand(B, m, generator=g, dtype=torch.float64) + 0.5
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    ref = entropic_ot(C, a, b, reg=reg, problem=BALANCED, max_iter=5000, check_every=0, warn=False)
    cases = _load("cases", os.path.join(BENCH, "cases.py"))
    P, value = cases.geomloss_solve_batch(C, a, b, reg=reg, iters=3000)
    assert P.shape == (B, n, m) and value.shape == (B,)
    assert (P - ref.plan).abs().max() < 2e-4  # GeomLoss's annealed plan approaches it as 1/iters
    ent = lambda w: (w * w.log()).sum(-1)  # noqa: E731
    torch.testing.assert_close(value, ref.value - reg * (ent(a) + ent(b)), rtol=0, atol=1e-6)
    assert abs(cases.kl_value(ref.value, a, b, reg) - (ref.value - reg * (ent(a) + ent(b))).numpy()).max() < 1e-15


def _raw(commit="0b528c6e08bd0000000000000000000000000000", date="2026-12-06 02:53:08 +0000"):
    """A pytest-benchmark JSON as bench/test_ot_cpu.py writes it: ours and two peers on case 4."""
    threads = {"torch": 2, "openblas libscipy_openblas.so": 2}

    def bench(name, key, side, median, **extra):
        ei = dict(key=key, case="4", side=side, impl="x", dtype="f32", shape=[1, 8, 8], iters=10, entries=64,
                  entry_iters=640, timed_problems=1, extrapolation_factor=1.0, median_s=median,
                  effective_median_s=median, throughput_entry_iters_per_s=640 / median, threads=threads,
                  foreign_cpu_fraction=0.01, accuracy={"marginal_err_l1": 1e-7}, **extra)
        return {"name": name, "extra_info": ei, "stats": {"min": median * 0.9, "max": median * 1.5, "median": median,
                                                          "mean": median, "stddev": 0.0, "iqr": 0.0, "rounds": 3}}
    env = {"lscpu": {"Model name": "AMD EPYC", "CPU(s)": "2", "Hypervisor vendor": "KVM"}, "git_commit": commit,
           "git_kernel_commit": f"{commit} {date}", "git_dirty_kernel_files": [], "threads_pinned": 2,
           "hostname": "vm", "torch": "2.13", "pot": "0.9.7.post1", "geomloss": "0.3.1"}
    return {"benchmarks": [bench("test_case4_balanced2048_ours[f32]", "case4/ours_f32", "ours", 2e-3, domain="auto"),
                           bench("test_case4_balanced2048_pot[t32]", "case4/pot_t32", "peer", 1e-3, peer="POT",
                                 solver="sinkhorn (exp domain)", array="t32", array_label="torch f32"),
                           bench("test_case4_balanced2048_pot[np64]", "case4/pot_np64", "peer", 8e-3, peer="POT",
                                 solver="sinkhorn (exp domain)", array="np64", array_label="numpy f64",
                                 timing={"min": 7e-3, "max": 9e-3, "median": 8e-3, "rounds": 3},  # a 2nd attempt kept
                                 attempts=[{"foreign_cpu_fraction": 0.5}, {"foreign_cpu_fraction": 0.01}])],
            "grounded_fast": {"environment": env, "started": "2026-12-07 09:30:00", "memory": {}}}


def test_cpu_results_file_names_commit_device_date_threads(tmp_path, capsys):
    report = _load("report", os.path.join(BENCH, "report.py"))
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps(_raw()))
    report.main([str(raw), "--outdir", str(tmp_path / "out"), "--tag", "vm"])
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["cpu-vm-0b528c6.json", "cpu-vm-0b528c6.md", "cpu.md"]
    md = (out / "cpu-vm-0b528c6.md").read_text()
    head = md.split("\n\n")[1]
    for fact in ("commit `0b528c6` (2026-12-06 02:53:08 +0000", "device: 2-core CPU VM (AMD EPYC)",
                 "measured 2026-12-07 09:30:00 UTC", "2 threads on every side"):
        assert fact in head, (fact, head)
    assert "bash bench/run_cpu.sh" in md and "python bench/report.py --compare" in md
    # like for like: POT on torch f32 against our f32 is faster here (0.5x), and says so; numpy f64's
    # ratio against our f32 is the separate, labelled column
    row = next(line for line in md.splitlines() if "| torch f32 |" in line)
    assert "**0.5x**" in row and "2 ms (1.8-3)" in row
    assert "| numpy f64 | 8 ms (7-9) |" in md and md.count("| 4.00x |") == 1 and "pot_np64: " in md
    assert "(foreign CPU 1% (2 attempts))" in md
    assert "Peer faster than ours (like for like) in:** case 4: pot_t32 vs ours f32 (0.5x)" in md
    s = json.loads((out / "cpu-vm-0b528c6.json").read_text())
    assert (s["kernel_commit"], s["device"], s["threads"]) == ("0b528c6", "2-core CPU VM (AMD EPYC)", 2)
    # the comparison of two runs
    after = _raw(commit="1234567" + "0" * 33, date="2026-12-08 00:00:00 +0000")
    after["benchmarks"][0]["stats"].update(min=0.9e-3, median=1e-3, max=1.5e-3)
    after["benchmarks"][0]["extra_info"]["effective_median_s"] = 1e-3
    raw.write_text(json.dumps(after))
    report.main([str(raw), "--outdir", str(out), "--tag", "vm"])
    capsys.readouterr()
    report.main(["--compare", str(out / "cpu-vm-0b528c6.json"), str(out / "cpu-vm-1234567.json")])
    cmp = capsys.readouterr().out
    assert "0b528c6 -> 1234567" in cmp and "| 4 | 1 x 8x8 x 10 | f32 | 2 ms (1.8-3) | 1 ms (0.9-1.5) | 0.5x |" in cmp


def test_report_reads_the_suite_off_the_json(tmp_path, capsys):
    """One report script for both CPU suites: an analysis run (its ``grounded_fast.analysis``
    section) gets the analysis tables and file names, an OT run the OT ones; --suite names it."""
    report = _load("report", os.path.join(BENCH, "report.py"))
    analysis_raw = os.path.join(BENCH, "results", "analysis-cpu-vm-raw.json")
    with open(analysis_raw) as f:
        raw = json.load(f)
    assert report.detect_suite(raw) == "analysis" and report.detect_suite(_raw()) == "ot"
    raw["grounded_fast"]["analysis"]["quick"] = True
    quick = tmp_path / "quick-raw.json"
    quick.write_text(json.dumps(raw))
    report.main([str(quick), "--outdir", str(tmp_path / "out"), "--tag", "vm"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["analysis-cpu-quick.md", "analysis-cpu-vm.json"]
    md = (tmp_path / "out" / "analysis-cpu-quick.md").read_text()
    assert "QUICK MODE" in md and "| A: pairwise agreement" in md and "bench/report.py" in md
    del raw["grounded_fast"]["analysis"]  # no section: still the analysis suite by its benchmarks' work rates
    assert report.detect_suite(raw) == "analysis"
    ot = tmp_path / "ot-raw.json"
    ot.write_text(json.dumps(_raw()))
    report.main([str(ot), "--suite", "ot", "--outdir", str(tmp_path / "ot"), "--tag", "vm"])
    assert sorted(p.name for p in (tmp_path / "ot").iterdir()) == ["cpu-vm-0b528c6.json", "cpu-vm-0b528c6.md", "cpu.md"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        report.main([])  # neither a raw JSON nor --compare
