"""The GPU driver: everything that needs a GPU, as one command under one wall-clock budget.

    python3 bench/gpu_lease.py                       # on the GPU machine (budget 540 s)
    python3 bench/gpu_lease.py --budget 300 --stages build-cuda,ot,analysis
    python3 bench/gpu_lease.py --unbounded           # a GPU machine of one's own: no budget, no stage
                                                     # caps, and the CPU tests last
    python3 bench/gpu_lease.py --smoke               # any machine: the bench stages at tiny sizes on the CPU

A lent machine has minutes, not hours (the device tool lends 15 minutes a task, its start
included, at most 10 a command), so the stages run in the order of what an open issue needs most
and each gets min(its cap, what is left of the budget):

  env          nvidia-smi, torch / Triton versions
  build-cuda   FORCE_CUDA=1 pip install --no-build-isolation --no-deps -e . for sm_90 only
               (GROUNDED_FAST_CUDA_ARCHS overrides); MAX_JOBS = the cores
  build-cpu    only if build-cuda failed: the build without CUDA, so that the Triton stages still run
  studies      issue 22's CUDA smoke run: each study's tiny preset with --device cuda (groundedbert,
               grounding, flava-ablation; each run's units must record a CUDA device), then
               bench/preset_costs.py --device cuda where it exists; report.md and run.log of each
               run are kept in the results (the checkpoints are not). Until a lease has run it,
               GPU training of the studies is untested. Not in --smoke (the studies' CPU runs are
               the test suite's)
  peers        POT / GeomLoss wheels from bench/wheels/ (bench/fetch_peer_wheels.sh) into a
               temporary directory on the PYTHONPATH of the later stages
  ot           bench/gpu_ot.py --cases 2,4,1,3: issue 3's open point (10x POT solve_batch, the
               one-read fused regime against streaming) first, then the met targets
  analysis     bench/gpu_analysis.py: issue 4's floor fractions
  gpu-tests    the GPU test files, on pytest-xdist workers where installed
  sweep-*      bench/gpu_sweep.py fused, agree, attention, small: while time is left
  cpu-tests    the rest of the test suite (the CUDA build must not break it): only when named in
               --stages or with --unbounded (the longest stage and the least informative on a GPU)

Every bench row carries its own check against the float64 reference on the same inputs, so the
numbers that come back are known to be right even where the test stage ran out of time.

Each stage is a child process in its own session (a crash or an illegal address in one stage does
not take the next with it; at its limit the whole process group is ended). Results go to a work
directory; ``--out`` (default $OUT, else bench/results/lease) receives, after every stage and
every minute within one, two files: ``lease.tar.gz`` (results/ and logs/) and ``lease.md`` (the
stage table). The bench scripts rewrite their results after every row, so a stage stopped at its
limit, or the whole command killed, keeps what was measured. The output ends with the stage table,
the result tables, the end of each failed stage's log and a verdict: the open targets read off the
results (issue 3's ratio to POT, fused against streaming per iteration, issue 4's floor fractions),
failed checks and the GPU tests' summary. Unpack into bench/results/ with
``tar -xzf lease.tar.gz -C bench/results --strip-components=1 results``.
Exit status: 0 when every stage that ran passed, 1 otherwise.

On a machine of one's own (hours, not minutes) ``--unbounded`` runs every stage to its end, the
CPU tests included; ``--stages`` still picks some of them (e.g. ``--unbounded --stages
build-cuda,sweep-fused``). The build targets sm_90 unless GROUNDED_FAST_CUDA_ARCHS says otherwise
(e.g. "80;90").
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from gpu_analysis import git_commit  # noqa: E402
GPU_TESTS = ["tests/test_entropic_ot_gpu.py", "tests/test_entropic_ot_triton.py", "tests/test_analysis_gpu.py",
             "tests/test_analysis_triton.py", "tests/test_entropic_ot_features.py"]
PEERS_DIR = "/tmp/gf-peers"
STUDIES = ("groundedbert", "grounding", "flava-ablation")   # shortest first: the stage's cap may cut the last
# exit 1 unless every unit recorded in the store of the run directory argv[1] ran on a device of
# type argv[2] (its payload's 'device', e.g. "cuda:0 (NVIDIA H100 80GB HBM3)")
CHECK_DEVICES = ("import sys; from grounded_fast.experiments.store import ResultStore; "
                 "s = ResultStore(sys.argv[1] + \"/results.sqlite\", read_only=True); "
                 "d = {u[\"unit_id\"]: str(u[\"payload\"].get(\"device\")) for u in s.units()}; "
                 "print(sys.argv[1], \"units on\", sorted(set(d.values()))); "
                 "sys.exit(0 if d and all(v.split(\" \")[0].split(\":\")[0] == sys.argv[2] for v in d.values()) else 1)")


@dataclass
class Stage:
    """A child command: ``argv`` run in the repository root, at most ``cap_s`` seconds; skipped when
    less than ``min_s`` is left, or when ``when(statuses)`` is false."""
    name: str
    argv: List[str]
    cap_s: float
    min_s: float = 10.0
    when: Optional[Callable[[Dict[str, str]], bool]] = None
    env: Dict[str, str] = field(default_factory=dict)
    opt_in: bool = False  # run only when named in --stages, or with --unbounded


@dataclass
class Outcome:
    name: str
    status: str          # ok, failed (rc N), timed out, skipped (...)
    seconds: float
    limit_s: float


def _sh(cmd: str) -> List[str]:
    return ["bash", "-c", cmd]


def device_slug() -> str:
    """'h100' for 'NVIDIA H100 80GB HBM3' (the result files' suffix), else the name as a slug."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired):
        out = []
    if not out:
        return "nogpu"
    m = re.search(r"\b([A-Z]\d{2,3})\b", out[0])
    return m.group(1).lower() if m else re.sub(r"[^A-Za-z0-9]+", "-", out[0]).strip("-").lower()


def gpu_stages(results: str, slug: str, py: str = sys.executable) -> List[Stage]:
    """The stages of a GPU lease, in order; ``results``: the directory the bench scripts write to."""
    archs = os.environ.get("GROUNDED_FAST_CUDA_ARCHS", "90")
    xdist = f"-n {min(os.cpu_count() or 1, 14)}" if _importable(py, "xdist") else ""
    timeout = "--timeout 300" if _importable(py, "pytest_timeout") else ""
    built = f"cd /tmp && {py} -c 'import grounded_fast._C_cuda, grounded_fast.triton_kernels.ot'"
    return [
        Stage("env", _sh(f"nvidia-smi; {py} -c 'import torch, triton, sys; print(sys.version); "
                         f"print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"triton\", "
                         f"triton.__version__, torch.cuda.get_device_name())'"), 30, 5),
        Stage("build-cuda", _sh(f"{py} -m pip install --no-build-isolation --no-deps -e . && {built}"), 300, 60,
              env={"FORCE_CUDA": "1", "GROUNDED_FAST_CUDA_ARCHS": archs, "MAX_JOBS": str(os.cpu_count() or 4)}),
        Stage("build-cpu", [py, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", "."], 240, 60,
              when=lambda st: st.get("build-cuda") != "ok", env={"FORCE_CUDA": "0"}),
        studies_stage(results, py),
        Stage("peers", _sh(f"if compgen -G 'bench/wheels/*.whl' >/dev/null; then {py} -m pip install -q --no-index "
                           f"--no-deps --no-compile --target {PEERS_DIR} bench/wheels/*.whl; "
                           "else echo 'no wheels in bench/wheels/: POT and GeomLoss ratios will be missing'; fi"),
              60, 5),
        Stage("ot", [py, "bench/gpu_ot.py", "--cases", "2,4,1,3", "--out", f"{results}/gpu-ot-{slug}"], 200, 30),
        Stage("analysis", [py, "bench/gpu_analysis.py", "--out", f"{results}/gpu-{slug}"], 150, 30),
        Stage("gpu-tests", _sh(f"{py} -m pytest {' '.join(GPU_TESTS)} -q -rfs -p no:cacheprovider {xdist} {timeout} "
                               f"--junitxml {results}/gpu-tests-{slug}.xml"), 330, 60),
    ] + [Stage(f"sweep-{k}", [py, "bench/gpu_sweep.py", k, "--out", f"{results}/gpu-sweep-{k}-{slug}"], 150, 45)
         for k in ("fused", "agree", "attention", "small")] + [
        Stage("cpu-tests", _sh(f"{py} -m pytest tests -q -p no:cacheprovider {xdist} "
                               + " ".join(f"--ignore={t}" for t in GPU_TESTS)), 3600, 60, opt_in=True)]


def studies_stage(results: str, py: str = sys.executable, device: str = "cuda") -> Stage:
    """Each study's tiny preset on ``device`` through the CLI (run directories beside ``results``,
    their report.md and run.log copied into ``results/studies-<study>/``), each run's units checked
    to have run on a device of that type; then ``bench/preset_costs.py --device`` when that script exists. Every
    study is run even when one fails; the stage fails if any did."""
    runs = os.path.join(os.path.dirname(results), "study-runs")
    steps = ["rc=0"]
    for name in STUDIES:
        out, keep = f"{runs}/{name}", f"{results}/studies-{name}"
        steps.append(f"{py} -m grounded_fast.cli run {name} --preset tiny --device {device} --out {out} --no-progress "
                     f"&& {py} -c {shlex.quote(CHECK_DEVICES)} {out} {device.split(':')[0]} || rc=1; mkdir -p {keep}; "
                     f"cp {out}/report.md {out}/run.log {keep}/ 2>/dev/null")
    steps.append(f"if [ -f bench/preset_costs.py ]; then {py} bench/preset_costs.py --device {device} "
                 f"--out {results}/preset_costs || rc=1; else echo 'no bench/preset_costs.py: no preset costs'; fi")
    steps.append("exit $rc")
    return Stage("studies", _sh("; ".join(steps)), 150, 30)


def smoke_stages(results: str, py: str = sys.executable) -> List[Stage]:
    """The bench stages at tiny sizes on the CPU: the runner and the scripts' command lines, anywhere."""
    cpu = ["--smoke", "--device", "cpu", "--backends", "cpu,torch"]
    return [Stage("env", _sh(f"nvidia-smi || true; {py} -c 'import torch; print(\"torch\", torch.__version__)'"),
                  30, 5),
            Stage("ot", [py, "bench/gpu_ot.py", *cpu, "--cases", "2,1", "--out", f"{results}/gpu-ot-smoke"], 120, 5),
            Stage("analysis", [py, "bench/gpu_analysis.py", *cpu, "--out", f"{results}/gpu-smoke"], 120, 5)]


def _secs(x: float) -> str:
    return "none" if math.isinf(x) else f"{x:.0f}"


def _importable(py: str, module: str) -> bool:
    return subprocess.run([py, "-c", f"import {module}"], capture_output=True).returncode == 0


class Lease:
    """Runs stages under one deadline and keeps ``out`` up to date (lease.tar.gz, lease.md)."""

    def __init__(self, budget_s: float, out: str, work: str, reserve_s: float = 10.0, pack_every_s: float = 60.0,
                 title: str = "GPU lease"):
        self.start = time.monotonic()
        self.deadline = self.start + budget_s
        self.budget_s, self.out, self.work, self.reserve_s = budget_s, out, work, reserve_s
        self.pack_every_s, self.title = pack_every_s, title
        self.outcomes: List[Outcome] = []
        self.child: Optional[subprocess.Popen] = None
        self.commit = git_commit()
        for d in (out, os.path.join(work, "logs"), os.path.join(work, "results")):
            os.makedirs(d, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.monotonic() - self.reserve_s

    def run(self, stages: List[Stage]) -> List[Outcome]:
        for i, st in enumerate(stages):
            statuses = {o.name: o.status for o in self.outcomes}
            if st.when is not None and not st.when(statuses):
                continue
            limit = min(st.cap_s, self.left())
            if limit < st.min_s:
                self.outcomes.append(Outcome(st.name, f"skipped (left {max(0.0, self.left()):.0f} s < {st.min_s:.0f})",
                                             0.0, 0.0))
                continue
            self.outcomes.append(self._run_one(i, st, limit))
            o = self.outcomes[-1]
            print(f"[lease] {o.name}: {o.status} in {o.seconds:.0f} s (limit {_secs(o.limit_s)})", flush=True)
            self.pack()
        self.pack()
        return self.outcomes

    def _run_one(self, i: int, st: Stage, limit: float) -> Outcome:
        print(f"[lease] {st.name}: up to {_secs(limit)} s", flush=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **st.env}
        if os.path.isdir(PEERS_DIR):
            env["PYTHONPATH"] = PEERS_DIR + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        t0 = time.monotonic()
        with open(os.path.join(self.work, "logs", f"{i:02d}-{st.name}.log"), "w") as log:
            log.write(f"$ {' '.join(st.argv)}\n")
            log.flush()
            try:
                self.child = subprocess.Popen(st.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as exc:
                log.write(f"could not start: {exc}\n")
                return Outcome(st.name, f"failed ({type(exc).__name__})", time.monotonic() - t0, limit)
            rc, last_pack = None, t0
            while rc is None and time.monotonic() - t0 < limit:
                try:
                    rc = self.child.wait(timeout=min(1.0, max(0.01, limit - (time.monotonic() - t0))))
                except subprocess.TimeoutExpired:
                    if time.monotonic() - last_pack >= self.pack_every_s:
                        self.pack()
                        last_pack = time.monotonic()
            if rc is None:
                self._end_child()
                log.write(f"\n[lease] stopped at its limit of {_secs(limit)} s\n")
            self.child = None
        seconds = time.monotonic() - t0
        status = "ok" if rc == 0 else ("timed out" if rc is None else f"failed (rc {rc})")
        return Outcome(st.name, status, seconds, limit)

    def _end_child(self) -> None:
        """SIGTERM to the child's process group, SIGKILL 5 s later if anything is left."""
        if self.child is None:
            return
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.child.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.child.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue

    def summary(self) -> str:
        lines = [f"# {self.title}", "",
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}, commit `{self.commit}`, budget {_secs(self.budget_s)} s, "
                 f"{time.monotonic() - self.start:.0f} s used", "",
                 "| stage | status | seconds | limit |", "|---|---|---|---|"]
        lines += [f"| {o.name} | {o.status} | {o.seconds:.0f} | {_secs(o.limit_s)} |" for o in self.outcomes]
        return "\n".join(lines) + "\n"

    def pack(self) -> None:
        """lease.md and lease.tar.gz in ``out``, each written whole then renamed."""
        md = self.summary()
        tmp = os.path.join(self.out, ".lease.md.tmp")
        with open(tmp, "w") as f:
            f.write(md)
        os.replace(tmp, os.path.join(self.out, "lease.md"))
        tmp = os.path.join(self.out, ".lease.tar.gz.tmp")
        with tarfile.open(tmp, "w:gz") as tar:
            for sub in ("results", "logs"):
                tar.add(os.path.join(self.work, sub), arcname=sub)
            data = md.encode()
            info = tarfile.TarInfo("lease.md")
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, os.path.join(self.out, "lease.tar.gz"))

    def report(self, tail_lines: int = 25) -> str:
        """The stage table, the result tables and the end of each failed stage's log: what to print last."""
        parts = [self.summary()]
        res_dir = os.path.join(self.work, "results")
        for name in sorted(os.listdir(res_dir)):
            if name.endswith(".md"):
                with open(os.path.join(res_dir, name)) as f:
                    parts.append(f.read())
        logs = sorted(os.listdir(os.path.join(self.work, "logs")))
        for o in self.outcomes:
            if o.status != "ok" and not o.status.startswith("skipped"):
                log = next((n for n in logs if n.endswith(f"-{o.name}.log")), None)
                if log:
                    with open(os.path.join(self.work, "logs", log), errors="replace") as f:
                        parts.append(f"## {o.name} ({o.status}): end of its log\n\n" +
                                     "".join(f.readlines()[-tail_lines:]))
        tests = next((n for n in logs if n.endswith("-gpu-tests.log")), None)
        parts.append(verdict(res_dir, tests and os.path.join(self.work, "logs", tests)))
        return "\n".join(parts)


def _rows(results: str, prefix: str) -> list:
    """The result rows of the bench JSON files in ``results`` whose names start with ``prefix``."""
    rows = []
    for name in sorted(os.listdir(results)) if os.path.isdir(results) else []:
        if name.startswith(prefix) and name.endswith(".json") and not name.startswith(prefix + "sweep"):
            with open(os.path.join(results, name)) as f:
                rows += json.load(f).get("results", [])
    return rows


def verdict(results: str, test_log: Optional[str] = None) -> str:
    """The open targets, read off this run's results: what to print at the very end.

    Issue 3: the best float32-C row of case 2 against POT's solve_batch (>= 10x), and the one-read
    fused regime against streaming per iteration (cases 2 and 4), which decides ``choose_regime``.
    Issue 4: floor / time per backend of the agreement (A) and attention (B) cases (>= 0.5). Then
    any row whose check failed, and the GPU tests' summary line."""
    lines = ["## Verdict", ""]
    ot = _rows(results, "gpu-ot-")
    c2 = [r for r in ot if r["case"].startswith("2 ") and "bfloat16" not in r["case"] and r.get("vs_pot")]
    if c2:
        best = max(c2, key=lambda r: r["vs_pot"])
        regime = "fused" if "regime fused" in best["case"] else "automatic"
        lines.append(f"- issue 3, >= 10x POT solve_batch (float32 C): best {best['backend']} ({regime} regime; "
                     f"{best['case']}) {best['vs_pot']:.1f}x whole solve, {best.get('vs_pot_per_iter') or 0:.1f}x "
                     f"per iteration: {'MET' if best['vs_pot'] >= 10 else 'not met'}")
    else:
        lines.append("- issue 3: case 2 has no row with a POT ratio (not run, or POT missing: bench/wheels/)")
    per_it = {}
    for r in ot:
        if r["case"][0] in "24" and "s_per_iter" in r:
            kind = r["case"].split(" B=")[0] + (", bfloat16 C" if "bfloat16" in r["case"] else "")
            per_it.setdefault((kind, r["backend"]), {})["fused" if "regime fused" in r["case"] else "stream"] = \
                r["s_per_iter"]
    for (kind, backend), t in sorted(per_it.items()):
        if "fused" in t and "stream" in t:
            lines.append(f"- fused vs two reads (case 2: the automatic regime), case {kind}, {backend}: "
                         f"{t['stream'] * 1e3:.3f} -> {t['fused'] * 1e3:.3f} ms per iteration "
                         f"({t['stream'] / t['fused']:.2f}x)")
    an = _rows(results, "gpu-")
    an = [r for r in an if r["case"][:1] in "AB" and "floor_fraction" in r]
    for case, dtype in sorted({(r["case"][:1], r["dtype"]) for r in an}):
        fr = ", ".join(f"{r['backend']} {r['floor_fraction']:.2f}" for r in an if (r["case"][:1], r["dtype"]) ==
                       (case, dtype))
        lines.append(f"- issue 4, >= 0.5 of the floor, case {case} {dtype}: {fr}")
    if not an:
        lines.append("- issue 4: no analysis rows (not run)")
    wrong = [f"{r['case']} {r['backend']}: {r['check']}" for r in ot + an if str(r.get("check", "")).startswith("WRONG")]
    lines.append("- checks against the float64 reference: " + ("; ".join(wrong) if wrong else
                                                                 f"all ok ({len(ot) + len(an)} rows)"))
    if test_log and os.path.exists(test_log):
        with open(test_log, errors="replace") as f:
            summary = [ln.strip() for ln in f if re.search(r"\d+ (passed|failed)", ln)]
        lines.append(f"- GPU tests: {summary[-1] if summary else 'no summary line (stopped early?)'}")
    return "\n".join(lines) + "\n"


def select_stages(stages: List[Stage], names: Optional[str] = None, unbounded: bool = False) -> List[Stage]:
    """The stages named in the comma-separated ``names`` (opt-in ones too), in their order; else
    every stage but the opt-in ones, all of them when ``unbounded``. ``unbounded``: no stage caps.
    ValueError on a name that is not a stage."""
    if names:
        wanted = [n for n in names.split(",") if n]
        unknown = sorted(set(wanted) - {s.name for s in stages})
        if unknown:
            raise ValueError(f"unknown stages {unknown}: choose among {[s.name for s in stages]}")
        stages = [s for s in stages if s.name in wanted]
    else:
        stages = [s for s in stages if unbounded or not s.opt_in]
    return [replace(s, cap_s=math.inf) for s in stages] if unbounded else stages


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=540, help="seconds for the whole run (default 540)")
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(HERE, "results", "lease"),
                    help="where lease.tar.gz and lease.md go (default $OUT, else bench/results/lease)")
    ap.add_argument("--stages", default=None, help="comma-separated subset of the stages, in their order")
    ap.add_argument("--unbounded", action="store_true",
                    help="a machine of one's own: no budget, no stage caps, and the opt-in stages (cpu-tests)")
    ap.add_argument("--smoke", action="store_true", help="the bench stages at tiny sizes on the CPU")
    args = ap.parse_args(argv)
    if args.unbounded:
        args.budget = math.inf
    work = tempfile.mkdtemp(prefix="gf-lease-")
    results = os.path.join(work, "results")
    stages = smoke_stages(results) if args.smoke else gpu_stages(results, device_slug())
    try:
        stages = select_stages(stages, args.stages, args.unbounded)
    except ValueError as exc:
        shutil.rmtree(work, ignore_errors=True)
        ap.error(str(exc))
    title = "GPU lease (smoke, CPU)" if args.smoke else "GPU run (unbounded)" if args.unbounded else "GPU lease"
    lease = Lease(args.budget, args.out, work, title=title)

    def stop(signum, frame):  # the caller's time limit: end the stage, pack, report
        lease._end_child()
        lease.outcomes.append(Outcome("(runner)", f"stopped by signal {signum}", 0.0, 0.0))
        lease.pack()
        print(lease.report(), flush=True)
        sys.exit(128 + signum)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    outcomes = lease.run(stages)
    print(lease.report(), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(o.status == "ok" or o.status.startswith("skipped") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
