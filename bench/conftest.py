"""Fixtures and helpers of the CPU benchmark suite (bench/test_ot_cpu.py).

Run through bench/run_cpu.sh, or
    python -m pytest bench/test_ot_cpu.py --benchmark-enable --benchmark-json=out.json
The project's pytest config adds --benchmark-disable; without --benchmark-enable every test here
is skipped (these are measurements, not tests).

What goes into the JSON:
  * per benchmark, ``extra_info``: case, side ('ours' / 'pot'), implementation, dtype, shape,
    iterations, the work (cost entries x iterations), the effective median (POT subsets scaled to the
    whole batch), throughput, and the POT-vs-ours ratios (``vs_pot`` on ours, ``ratio_vs`` on POT:
    POT effective median / our median, > 1 means ours is faster), accuracy figures;
  * top level ``grounded_fast``: machine, versions, git commit, thread settings, this CPU's exp /
    FMA throughput (bench/throughput.py) before and after the run, CPU load, memory probes, notes.
"""
from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import throughput  # noqa: E402

from timing import default_threads, pinned_threads, thread_state, time_repeats  # noqa: E402

# threads of every side (torch's intra-op pool and every BLAS / OpenMP pool): BENCH_THREADS, default all cores
THREADS = int(os.environ.get("BENCH_THREADS") or default_threads())
# the package files whose last commit names the kernels a run measured
KERNEL_PATHS = ["csrc", "setup.py", "grounded_fast/ops", "grounded_fast/ot", "grounded_fast/reference",
                "grounded_fast/_backend.py", "grounded_fast/triton_kernels"]
_SESSION: dict = {"memory": {}, "notes": []}


# ------------------------------------------------------------------------------ environment
def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=30).stdout.rstrip()
    except Exception as exc:  # pragma: no cover
        return f"<{type(exc).__name__}>"


def _lscpu() -> dict:
    out = {}
    for line in _run(["lscpu"]).splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return {k: out.get(k) for k in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket",
                                    "Socket(s)", "L2 cache", "L3 cache", "Hypervisor vendor")}


def _environment() -> dict:
    import numpy
    import ot
    import torch

    import grounded_fast

    so = [f for f in os.listdir(os.path.dirname(grounded_fast.__file__)) if f.startswith("_C")]
    so_path = os.path.join(os.path.dirname(grounded_fast.__file__), so[0]) if so else None
    dirty = _run(["git", "status", "--porcelain", "--", "grounded_fast", "csrc", "setup.py", "pyproject.toml"])
    kernel_dirty = _run(["git", "status", "--porcelain", "--", *KERNEL_PATHS])
    return {
        "hostname": socket.gethostname(),
        "lscpu": _lscpu(),
        "os_cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pot": ot.__version__,
        "grounded_fast": getattr(grounded_fast, "__version__", "?"),
        "git_commit": _run(["git", "rev-parse", "HEAD"]),
        "git_last_csrc_commit": _run(["git", "log", "-1", "--format=%h %ci", "--", "csrc", "setup.py"]),
        "git_kernel_commit": _run(["git", "log", "-1", "--format=%H %ci", "--", *KERNEL_PATHS]),
        "git_dirty_kernel_files": [ln[3:] for ln in kernel_dirty.splitlines()],
        "git_dirty_package_files": [ln[3:] for ln in dirty.splitlines()],
        "geomloss": _version("geomloss"),
        "torchmatch": _version("torchmatch"),
        "extension_mtime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(so_path)))
        if so_path else None,
        "torch_threads": torch.get_num_threads(),
        "threads_pinned": THREADS,
        "thread_state": thread_state(),
        "torch_parallel_info": [ln for ln in torch.__config__.parallel_info().splitlines()
                                if "OpenMP" in ln or "threads" in ln.lower()][:4],
        "blas_numpy": _numpy_blas(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                               "OMP_WAIT_POLICY", "GROUNDED_FAST_BACKEND")},
    }


def _version(module: str):
    """The installed version of an optional peer, or None."""
    try:
        return __import__(module).__version__
    except Exception:
        return None


def load_peers() -> None:
    """Import every library timed here, so that their BLAS / OpenMP pools exist when the threads are
    pinned (a pool loaded later keeps its default)."""
    import numpy  # noqa: F401
    import ot  # noqa: F401
    import scipy.linalg  # noqa: F401
    import torch  # noqa: F401
    _version("geomloss")


def _numpy_blas() -> str:
    try:
        import numpy
        cfg = numpy.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # pragma: no cover
        return "?"


# ------------------------------------------------------------------------------ pytest hooks
def _enabled(config) -> bool:
    return bool(config.getoption("benchmark_enable", False)) or not config.getoption("benchmark_disable", False)


def pytest_collection_modifyitems(config, items):
    if _enabled(config):
        return
    skip = pytest.mark.skip(reason="benchmarks: run with --benchmark-enable (see bench/run_cpu.sh)")
    for item in items:
        if HERE in str(item.fspath):
            item.add_marker(skip)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["grounded_fast"] = _SESSION


@pytest.fixture(scope="session", autouse=True)
def _session_environment(request):
    """Pin every side to THREADS threads (torch and every BLAS / OpenMP pool) for the whole session;
    measure the machine before the benchmarks (and again after): CPU busy fraction, exp / FMA
    throughput."""
    if not _enabled(request.config):
        yield
        return
    with session_threads(THREADS):
        yield from _measured_session()


@contextlib.contextmanager
def session_threads(n: int):
    """Every peer imported, then torch and every BLAS / OpenMP pool pinned to ``n`` threads."""
    load_peers()
    with pinned_threads(n):
        yield


def _measured_session():
    _SESSION["environment"] = _environment()
    _SESSION["cpu_busy_before"] = throughput.cpu_busy_fraction(1.0)
    _SESSION["loadavg_before"] = os.getloadavg()
    _SESSION["throughput_before"] = throughput.measure(THREADS)
    _SESSION["started"] = time.strftime("%Y-%m-%d %H:%M:%S")
    t0 = time.perf_counter()
    yield
    _SESSION["suite_wall_s"] = time.perf_counter() - t0
    _SESSION["loadavg_after"] = os.getloadavg()
    _SESSION["throughput_after"] = throughput.measure(THREADS)
    _SESSION["cpu_busy_after"] = throughput.cpu_busy_fraction(1.0)


# ------------------------------------------------------------------------------ data fixtures
@pytest.fixture(scope="session")
def case1():
    import cases
    return cases.grounded_bert()


@pytest.fixture(scope="session")
def case2():
    import cases
    return cases.points2d(512, seed=2)


@pytest.fixture(scope="session")
def case4():
    import cases
    return cases.points2d(2048, seed=4)


@pytest.fixture(scope="session")
def registry():
    """key ('case1/ours_f32', ...) -> {'median': effective median seconds, 'extra': extra_info dict,
    'result': last output}. Later benchmarks write ratios into earlier ones' extra_info (the JSON
    is written at the end of the session, so these edits land in it)."""
    return {}


@pytest.fixture(scope="session")
def session_info():
    return _SESSION


# ------------------------------------------------------------------------------ helpers
IDLE_WAIT_S = float(os.environ.get("BENCH_IDLE_WAIT", "30"))
RETRIES = int(os.environ.get("BENCH_RETRIES", "2"))
CONTAMINATED = 0.10  # share of the CPUs taken by other processes above which a timing is measured again


def _foreign(t0, t1) -> tuple[float, float]:
    """(other processes' share, this process's share) of the machine's CPU time between two _ticks()."""
    (b0, a0, o0), (b1, a1, o1) = t0, t1
    return max(0.0, ((b1 - b0) - (o1 - o0)) / max(a1 - a0, 1)), (o1 - o0) / max(a1 - a0, 1)


def run_bench(benchmark, fn, *, rounds: int, warmup_rounds: int = 1):
    """Time ``fn``: ``rounds`` timed calls after ``warmup_rounds``; returns (fn's last output, median
    seconds) and records in extra_info the thread counts in force (``threads``), the spread
    (``min_s``, ``max_s``) and ``foreign_cpu_fraction``: the share of the machine's CPU time used by
    *other* processes meanwhile. Before timing, waits up to BENCH_IDLE_WAIT seconds (default 30) for
    the CPUs to be idle (< 10% busy over 1 s). A timing during which other processes took more than
    10% is measured again, up to BENCH_RETRIES (default 2) more times; the least contaminated
    attempt is kept (the first through pytest-benchmark's pedantic, later ones by the same loop
    here: then ``timing`` holds the kept samples and bench/report.py uses them); every attempt's
    figures are in ``attempts``."""
    box = {"threads": thread_state()}  # the pools' thread counts as the timed calls run
    info = benchmark.extra_info

    def call():
        box["out"] = fn()

    attempts = []
    for k in range(1 + RETRIES):
        wait = throughput.wait_idle(IDLE_WAIT_S, window=1.0) if IDLE_WAIT_S > 0 else None
        t0 = throughput._ticks()
        if k == 0:
            benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=warmup_rounds)
            st = benchmark.stats.stats
            samples = None
            med, lo, hi = st.median, st.min, st.max
        else:
            timing = time_repeats(call, rounds, warmup_rounds)
            samples = timing.samples
            med, lo, hi = timing.median, timing.min, timing.max
        foreign, own = _foreign(t0, throughput._ticks())
        attempts.append({"median_s": med, "min_s": lo, "max_s": hi, "samples": samples, "foreign_cpu_fraction": foreign,
                         "own_cpu_fraction": own, "idle_wait": wait})
        if foreign <= CONTAMINATED:
            break
    best = min(attempts, key=lambda a: a["foreign_cpu_fraction"])
    info["idle_wait"] = best["idle_wait"]
    info["foreign_cpu_fraction"] = best["foreign_cpu_fraction"]
    info["own_cpu_fraction"] = best["own_cpu_fraction"]
    info["min_s"], info["max_s"] = best["min_s"], best["max_s"]
    if best["samples"] is not None:  # not pytest-benchmark's own attempt
        info["timing"] = {"min": best["min_s"], "max": best["max_s"], "median": best["median_s"],
                          "rounds": len(best["samples"]), "samples": best["samples"]}
    if len(attempts) > 1:
        info["attempts"] = [{k: v for k, v in a.items() if k != "samples"} for a in attempts]
    info["threads"] = box["threads"]
    return box.get("out"), best["median_s"]


def record(benchmark, registry, key: str, median: float, result, *, case: str, side: str, impl: str,
           dtype: str, shape, iters: int, timed_problems: int | None = None, **extra):
    """Fill extra_info and the registry. ``timed_problems`` < B: POT timed on a subset, the
    effective median is scaled linearly to the whole batch."""
    B = shape[0]
    timed = B if timed_problems is None else timed_problems
    scale = B / timed
    entries = B * shape[1] * shape[2]
    eff = median * scale
    info = benchmark.extra_info
    info.update(key=key, case=case, side=side, impl=impl, dtype=dtype, shape=list(shape), iters=iters,
                entries=entries, entry_iters=entries * iters, timed_problems=timed, extrapolation_factor=scale,
                median_s=median, effective_median_s=eff, throughput_entry_iters_per_s=entries * iters / eff)
    info.update(extra)
    registry[key] = {"median": eff, "extra": info, "result": result, "case": case, "side": side}
    # cross-link ratios (POT effective median / our median) in both directions
    for other_key, other in registry.items():
        if other_key == key or other["case"] != case or other["side"] == side:
            continue
        ours, pot = (registry[key], other) if side == "ours" else (other, registry[key])
        ours_key, pot_key = (key, other_key) if side == "ours" else (other_key, key)
        ratio = pot["median"] / ours["median"]
        ours["extra"].setdefault("vs_pot", {})[pot_key] = {"pot_effective_median_s": pot["median"], "ratio": ratio}
        pot["extra"].setdefault("ratio_vs", {})[ours_key] = ratio
    return info


def max_abs(x, y) -> float:
    import numpy as np
    import torch
    x = x.detach().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    y = y.detach().double().numpy() if isinstance(y, torch.Tensor) else np.asarray(y, dtype=np.float64)
    return float(np.max(np.abs(x - y)))


def memprobe(probe: str) -> dict:
    """bench/memprobe.py PROBE in a fresh interpreter; returns its JSON."""
    import json
    r = subprocess.run([sys.executable, os.path.join(HERE, "memprobe.py"), probe], capture_output=True,
                       text=True, cwd=ROOT, timeout=300)
    if r.returncode != 0:
        return {"probe": probe, "error": r.stderr[-2000:]}
    return json.loads(r.stdout.strip().splitlines()[-1])
