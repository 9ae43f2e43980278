"""Each study preset's cost, measured on a few steps instead of a whole run.

    python bench/preset_costs.py [--device cpu|cuda] [--threads N] [--out DIR] [--studies ...]
                                 [--presets ...] [--repeats R] [--end-to-end [PRESET ...]]
                                 [--update] [--write-shipped]

For every registered study (``grounded_fast.experiments.studies``) and preset: the preset's config,
``Study.prepare`` timed once (on at most ``PREPARE_SCENES`` scenes / ``PREPARE_IMAGES`` images,
extrapolated linearly in items above that), then one unit of each kind run through
``Study.run_unit`` with a shortened config (a warm-up, then ``--repeats`` timed epochs or steps;
the unit's progress callback timestamps them): grounding, an epoch per setup; flava-ablation, steps
with and without images (and one evaluation on fewer sentences, scaled); groundedbert, pre-training and fine-tuning steps per
variant. Per-step time: median of the timed repeats. Estimate: prepare + the units, each
``steps x per-step time + its other costs`` (model build, checkpoints and evaluations, measured in
the same probe), scheduled in plan order on ``threads / threads-per-unit`` workers (one on CUDA),
+ the steps after the units (grounding's analysis: one test-set pass per checkpoint, an upper bound).

On the CPU, the presets in ``CPU_UNMEASURED`` (flava-ablation's paper)
are not probed; their rows say "unmeasured" with the reason until a CUDA measurement fills them in.

Units run pinned to ``--threads-per-unit`` threads (1, as ``grounded-fast run``), prepare to
``--threads``. The load average is recorded (the machine may be shared; a warning when it exceeds
``--threads``). Writes ``preset_costs-<device>.json`` and ``.md`` to ``--out``; ``--end-to-end``
also times ``grounded-fast run <study> --preset tiny`` for each study (``--end-to-end tiny small``:
those presets). ``--update`` merges the measured entries into ``--out``'s JSON, each with its own
provenance, and regenerates the shipped table from it (one preset re-measured without re-measuring
the rest). ``--write-shipped`` (2 threads,
CPU, end-to-end implied) regenerates ``grounded_fast/experiments/preset_costs.toml`` from this run and
the CUDA JSON in ``--out`` if one is there (``bench/gpu_lease.py`` writes it), and the README's table.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):  # this checkout's grounded_fast; bench/timing.py
    if _p not in sys.path:
        sys.path.insert(0, _p)

#: the most scenes (grounding, groundedbert) prepared; above, prepare is extrapolated linearly
PREPARE_SCENES = 400
#: held-out sentences of flava-ablation's probe evaluation (PPPL; linear in sentences), one BLiMP pair per phenomenon
PROBE_PPPL_SENTENCES = 20
#: the most images flava-ablation prepares (+ its 64 validation pairs); above, extrapolated linearly
PREPARE_IMAGES = 400
WARMUP = 1
#: (study, preset) not probed on the CPU, and why: its row says "unmeasured" until a GPU measures it
CPU_UNMEASURED = {("flava-ablation", "paper"): "too slow to probe on a CPU (FLAVA at batch 64 with 224-px images: a probe "
                                               "of the full-size model ran 6 minutes without finishing)"}
DEFAULT_OUT = os.path.join(ROOT, "bench", "results", "preset_costs")
SHIPPED = os.path.join(ROOT, "grounded_fast", "experiments", "preset_costs.toml")
README = os.path.join(ROOT, "README.md")


# ----------------------------------------------------------------------------- estimate arithmetic

def unit_seconds(kind: dict) -> float:
    """Seconds of one unit of a kind: sum of ``per_unit x step_s`` over its step types + ``overhead_s``."""
    return sum(s["per_unit"] * s["step_s"] for s in kind["steps"].values()) + kind["overhead_s"]


def makespan(durations: List[float], workers: int) -> float:
    """Wall time of ``durations`` run in this order on ``workers`` (each next one to the first free
    worker, as the executors do)."""
    free = [0.0] * max(1, workers)
    for d in durations:
        k = free.index(min(free))
        free[k] += d
    return max(free)


def estimate(entry: dict, workers: int, threads: int, threads_per_unit: int) -> dict:
    """From a probe ``entry`` ({"prepare": {"estimate_s"}, "after_s", "unit_kinds": [kind per unit,
    plan order], "kinds": {kind: {"steps": {name: {"per_unit", "step_s"}}, "overhead_s"}}}):
    {"unit_s": {kind: s}, "units_s": all units' seconds, "wall_s": prepare + makespan on ``workers``
    + after, "core_hours": main-process seconds x ``threads`` + unit seconds x ``threads_per_unit``}."""
    per = {k: unit_seconds(v) for k, v in entry["kinds"].items()}
    durations = [per[k] for k in entry["unit_kinds"]]
    main = entry["prepare"]["estimate_s"] + entry["after_s"]
    return {"unit_s": per, "units_s": sum(durations), "wall_s": main + makespan(durations, workers),
            "core_hours": (main * threads + sum(durations) * threads_per_unit) / 3600}


# ----------------------------------------------------------------------------- probing

def _median(xs: List[float]) -> float:
    return float(statistics.median(xs))


def _diffs(t0: float, ts: List[float]) -> List[float]:
    """Durations between progress timestamps; element 0 runs from ``t0`` (unit start) to the first."""
    return [b - a for a, b in zip([t0] + ts[:-1], ts)]


def _takes_device(fn) -> bool:
    import inspect
    try:
        return "device" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class Probe:
    """Timing context: the device, thread counts, repeats and a scratch directory."""

    def __init__(self, device: str, threads: int, threads_per_unit: int, repeats: int, scratch: str):
        self.device, self.threads, self.threads_per_unit = device, threads, threads_per_unit
        self.repeats, self.scratch, self._n = repeats, scratch, 0

    def _sync(self) -> None:
        if self.device != "cpu":
            import torch
            torch.cuda.synchronize()

    def _dir(self, name: str) -> str:
        self._n += 1
        return os.path.join(self.scratch, f"{self._n:03d}-{name}")

    def _device_kwargs(self, fn) -> dict:
        if _takes_device(fn):
            import torch
            return {"device": torch.device(self.device)}
        if self.device != "cpu":
            raise SystemExit("preset_costs: the studies take no device yet (Study.prepare / run_unit have no "
                             "'device' argument), so --device cuda cannot be measured")
        return {}

    def prepare(self, study, cfg):
        """(seconds, shared inputs, out_dir) of ``study.prepare`` on a fresh directory (cold caches)."""
        from timing import pinned_threads
        out_dir = self._dir(f"{study.name}-prepare")
        kw = self._device_kwargs(study.prepare)
        with pinned_threads(self.threads), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._sync()
            t0 = time.perf_counter()
            shared = study.prepare(cfg, out_dir, False, **kw)
            self._sync()
            return time.perf_counter() - t0, shared, out_dir

    def unit(self, study, unit, cfg, out_dir: str, shared):
        """(start, [timestamp after each progress call], end) of one ``study.run_unit``."""
        from timing import pinned_threads
        stamps: List[float] = []

        def progress(done, total):
            self._sync()
            stamps.append(time.perf_counter())

        kw = self._device_kwargs(study.run_unit)
        with pinned_threads(self.threads_per_unit), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            study.run_unit(unit.spec, cfg, out_dir, shared, progress, **kw)
            self._sync()
            return t0, stamps, time.perf_counter()


def _first_of_each(units, kind_of: Callable) -> Dict[str, object]:
    out: Dict[str, object] = {}
    for u in units:
        out.setdefault(kind_of(u), u)
    return out


def _timed(samples: List[float]) -> dict:
    return {"step_s": _median(samples), "samples": samples}


def probe_grounding(study, cfg, probe: Probe) -> dict:
    """Epochs of one unit per setup on a reduced corpus; per-step = epoch time / batches."""
    from grounded_fast.data import DemoCorpus
    n = WARMUP + probe.repeats
    small = dataclasses.replace(cfg, num_scenes=min(cfg.num_scenes, PREPARE_SCENES), epochs=n, checkpoint_epochs=(n,))
    prep_s, shared, out_dir = probe.prepare(study, small)
    data, _ = shared
    full = DemoCorpus(cfg.num_scenes, cfg.corpus_seed).splits
    batches_probe = max(1, len(data["train"]) // cfg.batch_size)
    batches = max(1, len(full["train"]) // cfg.batch_size)
    units = study.plan(cfg)
    kind_of = lambda u: u.spec.setup  # noqa: E731
    kinds, ckpts = {}, []
    for kind, unit in _first_of_each(study.plan(small), kind_of).items():
        t0, ts, t1 = probe.unit(study, unit, small, out_dir, shared)
        epochs = _diffs(t0, ts)
        step = _timed([e / batches_probe for e in epochs[WARMUP:]])
        build = max(0.0, epochs[0] - step["step_s"] * batches_probe)
        ckpt = (t1 - ts[-1]) * len(full["val"]) / len(data["val"])    # validation pass + save, scaled to val
        ckpts.append(ckpt)
        kinds[kind] = {"units": sum(kind_of(u) == kind for u in units),
                       "steps": {"train": {"per_unit": cfg.epochs * batches, **step}},
                       "overhead_s": build + len(cfg.checkpoint_epochs) * ckpt,
                       "notes": f"{batches} batches x {cfg.epochs} epochs; {len(cfg.checkpoint_epochs)} checkpoints"}
    n_models = len(units) * len(cfg.checkpoint_epochs)
    return {"unit_kinds": [kind_of(u) for u in units], "kinds": kinds,
            "prepare": {"measured_s": prep_s, "items_measured": small.num_scenes, "items": cfg.num_scenes,
                        "estimate_s": prep_s * cfg.num_scenes / small.num_scenes, "item": "scenes"},
            "after_s": n_models * _median(ckpts) * len(full["test"]) / len(full["val"]),
            "after": f"analysis: one test-set pass per checkpoint, {n_models} models at most"}


def probe_flava(study, cfg, probe: Probe) -> dict:
    """2 x (warm-up + repeats) steps of one cell with and one without images, evaluated once halfway."""
    n = WARMUP + probe.repeats
    cap = min(max(cfg.image_volumes), max(PREPARE_IMAGES, cfg.batch_size))
    vols = tuple(sorted({min(v, cap) for v in cfg.image_volumes}))
    pppl, pairs = min(cfg.pppl_sentences, PROBE_PPPL_SENTENCES), 1      # evaluation scaled from these
    texts = cfg.text_volumes
    if cfg.text.kind == "demo":     # a step's time does not depend on the volume: the built-in pool stands in
        from grounded_fast.experiments.flava_ablation import _text_pool_sizes
        texts = tuple(sorted({min(v, _text_pool_sizes()[0]) for v in texts}))
    small = dataclasses.replace(cfg, steps=2 * n, eval_every=n, text_volumes=texts, image_volumes=vols,
                                pppl_sentences=pppl, blimp_pairs_per_phenomenon=pairs,
                                glue_steps=0)   # the GLUE evaluation: timed apart
    prep_s, shared, out_dir = probe.prepare(study, dataclasses.replace(small, glue_steps=min(cfg.glue_steps, 1)))
    glue_s = probe_flava_glue(cfg, shared, probe) if cfg.glue_steps else 0.0
    units = study.plan(cfg)
    kind_of = lambda u: "text+images" if u.spec[1] > 0 else "text"  # noqa: E731
    evals = len(set(range(cfg.eval_every, cfg.steps + 1, cfg.eval_every)) | {cfg.steps})
    kinds = {}
    for kind, unit in _first_of_each(study.plan(small), kind_of).items():
        t0, ts, t1 = probe.unit(study, unit, small, out_dir, shared)
        d = _diffs(t0, ts)      # d[n] holds step n + 1 and the evaluation after step n
        step = _timed([x for i, x in enumerate(d) if i % n >= WARMUP and i != n])
        ev = max(0.0, d[n] - step["step_s"])
        build = max(0.0, d[0] - step["step_s"])
        final = max(0.0, t1 - ts[-1] - ev) * cfg.blimp_pairs_per_phenomenon / pairs   # BLiMP, save
        ev *= cfg.pppl_sentences / pppl
        kinds[kind] = {"units": sum(kind_of(u) == kind for u in units),
                       "steps": {"train": {"per_unit": cfg.steps, **step}},
                       "overhead_s": build + evals * ev + final + glue_s, "eval_s": ev, "glue_s": glue_s,
                       "notes": f"{cfg.steps} steps; {evals} evaluations (PPPL of {cfg.pppl_sentences} sentences)"
                                + (f"; GLUE evaluation {cfg.glue_steps} steps" if cfg.glue_steps else "")}
    images = max(cfg.image_volumes) + 64
    return {"unit_kinds": [kind_of(u) for u in units], "kinds": kinds,
            "prepare": {"measured_s": prep_s, "items_measured": max(vols) + 64, "items": images,
                        "estimate_s": prep_s * images / (max(vols) + 64), "item": "images"},
            "after_s": 0.0, "after": ""}


def probe_groundedbert(study, cfg, probe: Probe) -> dict:
    """warm-up + repeats pre-training and fine-tuning steps of every variant (its first seed) on a
    reduced corpus."""
    n = WARMUP + probe.repeats
    small = dataclasses.replace(cfg, num_scenes=min(cfg.num_scenes, PREPARE_SCENES), pretrain_steps=n,
                                finetune_steps=n)
    prep_s, shared, out_dir = probe.prepare(study, small)
    units = study.plan(cfg)
    kind_of = lambda u: u.spec[0]  # noqa: E731  (the variant: its seeds cost the same)
    kinds = {}
    for variant, unit in _first_of_each(study.plan(small), kind_of).items():
        t0, ts, t1 = probe.unit(study, unit, small, out_dir, shared)
        d = _diffs(t0, ts)
        phases = {"pretrain": d[:n], "finetune": d[n:]} if len(d) == 2 * n else {"finetune": d}
        steps = {name: {"per_unit": getattr(cfg, f"{name}_steps"), **_timed(x[WARMUP:])} for name, x in phases.items()}
        timed = sum(n * s["step_s"] for s in steps.values())
        kinds[variant] = {"units": sum(kind_of(u) == variant for u in units), "steps": steps,
                          "overhead_s": max(0.0, t1 - t0 - timed),
                          "notes": " + ".join(f"{s['per_unit']} {k}" for k, s in steps.items()) + " steps"}
    return {"unit_kinds": [kind_of(u) for u in units], "kinds": kinds,
            "prepare": {"measured_s": prep_s, "items_measured": small.num_scenes, "items": cfg.num_scenes,
                        "estimate_s": prep_s * cfg.num_scenes / small.num_scenes, "item": "scenes"},
            "after_s": 0.0, "after": ""}


def probe_flava_glue(cfg, shared, probe: Probe) -> float:
    """Seconds of one cell's GLUE evaluation (``glue_finetune`` with ``cfg.glue_steps`` steps, dev
    scoring included): timed with k and 2k steps (k = warm-up + repeats) on a fresh model, pinned
    to the units' threads; fixed cost + per-step time x ``cfg.glue_steps``."""
    import grounded_fast.models as gm
    from timing import pinned_threads
    from grounded_fast.experiments.flava_ablation import glue_finetune
    model = gm.build("flava", cfg.model_preset, vocab_size=shared["vocab_size"], max_text_len=cfg.max_text_len,
                     pad_id=shared["pad_id"], cls_id=shared["cls_id"], sep_id=shared["sep_id"], mask_id=shared["mask_id"])
    k = WARMUP + probe.repeats
    times = []
    with pinned_threads(probe.threads_per_unit):
        for steps in (k, 2 * k):
            probe._sync()
            t0 = time.perf_counter()
            glue_finetune(model, shared["glue"], dataclasses.replace(cfg, glue_steps=steps), 0, probe.device)
            probe._sync()
            times.append(time.perf_counter() - t0)
    per_step = max(0.0, (times[1] - times[0]) / k)
    return max(0.0, times[0] - k * per_step) + per_step * cfg.glue_steps


PROBES = {"grounding": probe_grounding, "flava-ablation": probe_flava, "groundedbert": probe_groundedbert}


def end_to_end(study: str, preset: str, workers: int, scratch: str, device: str) -> float:
    """Wall seconds of ``grounded-fast run <study> --preset <preset>`` in a fresh directory (a new process)."""
    out = os.path.join(scratch, f"e2e-{study}-{preset}")
    cmd = [sys.executable, "-m", "grounded_fast.cli", "run", study, "--preset", preset, "--out", out,
           "--no-progress", "--workers", str(workers)] + (["--device", device] if device != "cpu" else [])
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if res.returncode != 0:
        raise SystemExit(f"preset_costs: {' '.join(cmd[1:])} failed: {res.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- provenance, output

def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe_device(device: str) -> str:
    if device == "cpu":
        return f"cpu ({_cpu_name()})"
    import torch
    return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"


def _fmt_s(s: float) -> str:
    from timing import fmt_seconds
    return fmt_seconds(s)


def markdown(result: dict) -> str:
    """The run's JSON as a Markdown report: provenance, then one table row per study x preset x kind."""
    m = result["meta"]
    lines = [f"# Preset costs ({m['device']})", "",
             f"commit {m['commit']}{' (uncommitted changes)' if m['dirty'] else ''}, {m['date']}, {m['threads']} "
             f"threads (units: {m['threads_per_unit']}), {m['workers']} workers, load average "
             f"{m['load_before'][0]:.2f} before / {m['load_after'][0]:.2f} after, torch {m['torch']}; per-step "
             f"times: median (min-max) of {m['repeats']} repeats after {WARMUP} warm-up.", "",
             "| study | preset | units | prepare (measured on, estimate) | kind | per step | steps / unit | "
             "unit | estimate | core-hours | end to end |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in result["entries"]:
        if "unmeasured" in e:
            lines.append(f"| {e['study']} | {e['preset']} | {len(e['unit_kinds'])} | not measured: {e['unmeasured']} "
                         "| | | | | | | |")
            continue
        p, est = e["prepare"], e["estimate"]
        first = True
        for kind, k in e["kinds"].items():
            steps = "; ".join(f"{name} {_spread(s['samples'])}" for name, s in k["steps"].items())
            per_unit = " + ".join(str(s["per_unit"]) for s in k["steps"].values())
            head = (f"| {e['study']} | {e['preset']} | {len(e['unit_kinds'])} | {_fmt_s(p['measured_s'])} on "
                    f"{p['items_measured']} {p['item']}, {_fmt_s(p['estimate_s'])} for {p['items']} | " if first
                    else "| | | | | ")
            tail = (f"{_fmt_s(est['wall_s'])} | {est['core_hours']:.3g} | "
                    f"{_fmt_s(e['end_to_end_s']) if e.get('end_to_end_s') else '-'} |" if first else "| | |")
            lines.append(f"{head}{kind} ({k['units']}) | {steps} | {per_unit} | {_fmt_s(est['unit_s'][kind])} | {tail}")
            first = False
        if e.get("after"):
            lines.append(f"| | | | | after the units | {e['after']} | | {_fmt_s(e['after_s'])} | | | |")
    return "\n".join(lines) + "\n"


def _spread(samples: List[float]) -> str:
    from timing import fmt_spread
    return fmt_spread(_median(samples), min(samples), max(samples))


# ----------------------------------------------------------------------------- shipped TOML, README

def _toml_value(v) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(float(f"{v:.4g}"))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def shipped_toml(cpu: dict, gpu: Optional[dict]) -> str:
    """The shipped cost table: one ``[measurements.<device>]`` header per measurement, then one
    ``[<study>.<preset>]`` table each (units, minutes on 2 cores, per-step seconds per kind, CPU
    core-hours; tiny: the measured end-to-end minutes; paper: GPU-hours or "unmeasured")."""
    out = ["# Generated by `python bench/preset_costs.py --write-shipped` from bench/results/preset_costs/",
           "# (do not edit by hand). Estimates = prepare + units x steps x measured per-step time + their",
           "# other costs (model build, checkpoints, evaluations), units scheduled on 2 workers of 1 thread;",
           "# see bench/preset_costs.py.", ""]
    gpu_by = {(e["study"], e["preset"]): e for e in (gpu or {}).get("entries", [])}
    metas = []      # (name, meta): the file's, then each entry's own (merged by --update)
    for name, res in (("cpu", cpu), ("cuda", gpu)):
        if res:
            metas.append((name, res["meta"]))
    measurement = {}
    for e in cpu["entries"]:
        if "meta" in e:
            if e["meta"] not in [m for _, m in metas]:
                metas.append((f"cpu-{e['meta']['date'][:16].replace(' ', '-').replace(':', '')}", e["meta"]))
            measurement[e["study"], e["preset"]] = next(n for n, m in metas if m == e["meta"])
    for name, m in metas:
        out += [f"[measurements.{name}]"] + [f"{k} = {_toml_value(m[k])}" for k in
                                             ("commit", "dirty", "device", "date", "threads", "load_before",
                                              "load_after")] + [""]
    for e in cpu["entries"]:
        rows = {"measurement": measurement.get((e["study"], e["preset"]), "cpu"), "units": len(e["unit_kinds"])}
        if "unmeasured" in e:
            rows.update(minutes_on_2_cores="unmeasured", cpu_core_hours="unmeasured", unmeasured_because=e["unmeasured"])
        else:
            rows.update(minutes_on_2_cores=e["estimate"]["wall_s"] / 60,
                        step_seconds={k if len(v["steps"]) == 1 else f"{k} {step}": s["step_s"]
                                      for k, v in e["kinds"].items() for step, s in v["steps"].items()},
                        cpu_core_hours=e["estimate"]["core_hours"])
        if e.get("end_to_end_s"):
            rows["end_to_end_minutes"] = e["end_to_end_s"] / 60
        g = gpu_by.get((e["study"], e["preset"]))
        if e["preset"] == "paper" or g:
            rows["gpu_hours"] = g["estimate"]["wall_s"] / 3600 if g else "unmeasured"
            if g:
                rows["gpu_measurement"] = "cuda"
        out += [f"[{_toml_key(e['study'])}.{e['preset']}]"] + [f"{k} = {_toml_value(v)}" for k, v in rows.items()] + [""]
    return "\n".join(out)


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def update_readme(path: str = README) -> None:
    """Rewrite the README's preset table (between its markers) from the shipped TOML."""
    from grounded_fast.experiments import preset_costs
    text = open(path).read()
    start, end = preset_costs.README_MARKERS
    if start not in text or end not in text:
        raise SystemExit(f"preset_costs: {path} has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(f"{head}{start}\n{preset_costs.table(preset_costs.load())}{end}{tail}")


# ----------------------------------------------------------------------------- main

def measure(args) -> dict:
    import torch

    from grounded_fast.experiments import studies
    names = args.studies or studies.available()
    for s in names:
        studies.get(s)
    workers = 1 if args.device != "cpu" else max(1, args.threads // args.threads_per_unit)
    load_before = list(os.getloadavg())
    if load_before[0] > args.threads:
        print(f"preset_costs: warning: load average {load_before[0]:.2f} > {args.threads} threads: other processes "
              "compete for the cores, times are inflated", file=sys.stderr)
    entries = []
    with tempfile.TemporaryDirectory(prefix="preset-costs-") as scratch:
        probe = Probe(args.device, args.threads, args.threads_per_unit, args.repeats, scratch)
        for name in names:
            study = studies.get(name)
            for preset in args.presets or sorted(study.config_cls.presets):
                if preset not in study.config_cls.presets:
                    continue
                print(f"{name} {preset} ...", file=sys.stderr, flush=True)
                cfg = study.config_cls.from_preset(preset)
                if args.device == "cpu" and (name, preset) in CPU_UNMEASURED:
                    entries.append({"study": name, "preset": preset, "unit_kinds": [u.kind for u in study.plan(cfg)],
                                    "unmeasured": CPU_UNMEASURED[name, preset]})
                    continue
                e = {"study": name, "preset": preset, **PROBES[name](study, cfg, probe)}
                e["estimate"] = estimate(e, workers, args.threads, args.threads_per_unit)
                if preset in (args.end_to_end or ()):
                    print(f"{name} {preset}: end to end ...", file=sys.stderr, flush=True)
                    e["end_to_end_s"] = end_to_end(name, preset, workers, args.keep_runs or scratch, args.device)
                entries.append(e)
    load_after = list(os.getloadavg())
    meta = {"commit": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
            "device": describe_device(args.device), "date": datetime.datetime.now(datetime.timezone.utc)
            .strftime("%Y-%m-%d %H:%M UTC"), "threads": args.threads, "threads_per_unit": args.threads_per_unit,
            "workers": workers, "repeats": args.repeats, "load_before": load_before, "load_after": load_after,
            "torch": torch.__version__, "python": platform.python_version()}
    if max(load_before[0], load_after[0]) > args.threads:
        print(f"preset_costs: warning: load average {load_before[0]:.2f} / {load_after[0]:.2f} (before / after) > "
              f"{args.threads} threads: rerun on a quiet machine for figures to ship", file=sys.stderr)
    return {"meta": meta, "entries": entries}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="cores of the estimate: prepare's threads, and the "
                    "workers (threads / threads-per-unit) the units are scheduled on (default 2)")
    ap.add_argument("--threads-per-unit", type=int, default=1, help="each unit's threads (default 1, as `run`)")
    ap.add_argument("--repeats", type=int, default=3, help="timed epochs (grounding) or steps per kind (default 3)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="directory of the JSON and Markdown results")
    ap.add_argument("--studies", nargs="+", default=None, help="default: every registered study")
    ap.add_argument("--presets", nargs="+", default=None, help="default: every preset of each study")
    ap.add_argument("--end-to-end", nargs="*", default=None, metavar="PRESET",
                    help="also time `grounded-fast run <study> --preset P` for these of the measured presets "
                         "(no PRESET: tiny)")
    ap.add_argument("--keep-runs", metavar="DIR", default=None,
                    help="the end-to-end runs' directory (DIR/e2e-<study>-<preset>, kept: their reports); "
                         "default a temporary one")
    ap.add_argument("--update", action="store_true",
                    help="merge into --out's JSON: the measured study x preset entries replace theirs, each "
                         "carrying this run's provenance; the others keep their own")
    ap.add_argument("--write-shipped", action="store_true",
                    help="CPU, 2 threads, every study and preset, end to end: regenerate the shipped TOML and "
                         "the README's table (with the CUDA JSON in --out when there is one)")
    ap.add_argument("--ship-only", action="store_true",
                    help="measure nothing: regenerate the shipped TOML and the README's table from the JSON already "
                         "in --out (preset_costs-cpu.json, and preset_costs-cuda.json when there is one)")
    args = ap.parse_args(argv)
    if args.ship_only:
        return ship(args.out, None)
    for key in ("threads", "threads_per_unit", "repeats"):
        if getattr(args, key) < 1:
            print(f"preset_costs: --{key.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if args.write_shipped:
        if args.device != "cpu" or args.threads != 2 or args.studies or args.presets:
            print("preset_costs: --write-shipped measures the 2-core CPU figures of every study and preset: "
                  "no --device cuda, --threads, --studies or --presets", file=sys.stderr)
            return 2
        args.end_to_end = ["tiny"]
    if args.write_shipped and args.update:
        print("preset_costs: --write-shipped measures everything: no --update", file=sys.stderr)
        return 2
    if args.end_to_end is not None and not args.end_to_end:
        args.end_to_end = ["tiny"]
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            print("preset_costs: --device cuda: no CUDA device is available here", file=sys.stderr)
            return 2
    try:
        from grounded_fast.experiments import studies
        for s in args.studies or []:
            studies.get(s)
    except ValueError as exc:
        print(f"preset_costs: --studies: {exc}", file=sys.stderr)
        return 2
    result = measure(args)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"preset_costs-{args.device}")
    if args.update and os.path.exists(stem + ".json"):
        result = merge(json.load(open(stem + ".json")), result)
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(result))
    print(markdown(result))
    print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)
    return ship(args.out, result) if args.write_shipped or args.update else 0


def merge(old: dict, new: dict) -> dict:
    """``old``'s results with ``new``'s entries in place of theirs (same study and preset, else
    appended); each entry of ``new`` carries ``new``'s provenance as its own ``meta`` (the file's
    ``meta`` stays ``old``'s, that of the entries without one)."""
    fresh = {(e["study"], e["preset"]): {**e, "meta": new["meta"]} for e in new["entries"]}
    entries = [fresh.pop((e["study"], e["preset"]), e) for e in old["entries"]] + list(fresh.values())
    return {"meta": old["meta"], "entries": entries}


def ship(out: str, cpu: Optional[dict]) -> int:
    """Write the shipped TOML and the README's table from ``cpu`` (else ``out``'s CPU JSON) and
    ``out``'s CUDA JSON if there is one."""
    def read(device):
        path = os.path.join(out, f"preset_costs-{device}.json")
        return json.load(open(path)) if os.path.exists(path) else None
    cpu = cpu or read("cpu")
    if cpu is None:
        print(f"preset_costs: --ship-only: no preset_costs-cpu.json in {out}", file=sys.stderr)
        return 2
    with open(SHIPPED, "w") as f:
        f.write(shipped_toml(cpu, read("cuda")))
    update_readme()
    print(f"wrote {SHIPPED} and the README's table", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
