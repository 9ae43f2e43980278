"""Executors: where a study's independent units of work run.

``local`` (the default) runs units in a pool of worker processes on this machine (``workers = 1``
runs them in this process); ``ray`` runs them as Ray tasks, on the cluster at ``address`` or on a
local Ray instance when there is none (``ray.init(address=...)``; ``RAY_ADDRESS`` is honoured).

Guarantees, whatever the executor:

* **Identical results.** The inputs a unit shares with the others (``data``) are prepared once in
  the main process and shipped to the workers, and every unit runs with
  ``torch.set_num_threads(threads_per_unit)`` (float reductions depend on the thread count), so a
  unit gives bit-identical results in this process, in a pool or on Ray.
* **One writer.** Only the main process writes the result store: a unit's function returns its
  results and the main process commits them (``on_result``) as each unit finishes. A unit writes
  nothing but its own files (checkpoints under a directory of its own); with Ray on several
  machines the output directory must be on a file system they share.
* **Nothing lost on failure.** When a unit raises, units not yet started are cancelled, units
  already running are waited for and committed, and then the first error is raised.
* **No orphans.** Local workers die with the main process (Linux: ``PR_SET_PDEATHSIG``), so a
  killed run leaves no worker writing into the output directory of its rerun.

GPUs (``device``, a resolved ``torch.device``; see ``experiments.device``):

* The local pool with ``device`` ``cuda`` (no index) and several visible GPUs gives each worker a
  GPU of its own: its initializer sets ``CUDA_VISIBLE_DEVICES`` (round robin over the visible
  GPUs, before anything touches CUDA), so the worker's units run on its ``cuda:0``; the workers
  default to the number of GPUs. With one GPU, or an explicit ``cuda:N``, the workers share it.
  The shared inputs must be CPU tensors (they reach the workers before their GPU is set).
* Ray tasks request ``num_gpus=gpus_per_unit`` (default 1 on CUDA, 0 on the CPU; fractional
  values share a GPU between tasks) besides ``num_cpus=threads_per_unit``; Ray sets the task's
  ``CUDA_VISIBLE_DEVICES``.
* What holds on a GPU: a unit's results are reproducible on the same GPU model, driver and
  library versions, but not bit-identical across GPU models or against the CPU (different kernels,
  atomics in reductions, bf16 autocast of the training forward passes); set
  ``torch.use_deterministic_algorithms(True)`` (and ``CUBLAS_WORKSPACE_CONFIG``) for run-to-run
  identity on one GPU. Which executor or worker ran a unit does not change it beyond that. The
  bit-identical guarantee above is the CPU's. GPU training is untested until a lent GPU runs the
  ``studies`` stage of ``bench/gpu_lease.py``.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import multiprocessing as mp
import os
import signal
import sys
import math
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Union

import torch

EXECUTORS = ("local", "ray")


@dataclasses.dataclass(frozen=True)
class ExecutorConfig:
    """How units run. ``kind``: 'local' or 'ray'; ``workers``: local worker processes (None: as
    many as fit, ``cpu_count // threads_per_unit``; 1: in this process); ``threads_per_unit``:
    torch threads of every unit (results depend on it, the executor does not); ``address``: the
    Ray cluster (None: ``RAY_ADDRESS`` or a new local instance); ``device``: where the units
    compute, a resolved ``torch.device`` or 'cpu' / 'cuda' / 'cuda:N' (see
    ``experiments.device.resolve_device``; the pool gives each worker its own GPU for 'cuda', see
    the module docstring); ``gpus_per_unit``: the GPUs a Ray task requests (ray only; None: 1 on a
    CUDA device, else 0; fractional values share a GPU)."""
    kind: str = "local"
    workers: Optional[int] = None
    threads_per_unit: int = 1
    address: Optional[str] = None
    device: Union[str, torch.device] = "cpu"
    gpus_per_unit: Optional[float] = None

    def __post_init__(self):
        if self.kind not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {self.kind!r}")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ValueError(f"workers must be an integer >= 1, got {self.workers!r}")
        if not isinstance(self.threads_per_unit, int) or self.threads_per_unit < 1:
            raise ValueError(f"threads_per_unit must be an integer >= 1, got {self.threads_per_unit!r}")
        if self.address is not None and self.kind != "ray":
            raise ValueError("address is for the ray executor only")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError):
            device = None
        if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
            raise ValueError(f"device must be a resolved cpu, cuda or cuda:N device (see "
                             f"experiments.device.resolve_device), got {self.device!r}")
        object.__setattr__(self, "device", device)
        g = self.gpus_per_unit
        if g is not None:
            if isinstance(g, bool) or not isinstance(g, (int, float)) or not (math.isfinite(g) and g > 0):
                raise ValueError(f"gpus_per_unit must be a number > 0 (fractional allowed), got {g!r}")
            if self.kind != "ray":
                raise ValueError("gpus_per_unit is for the ray executor only (the local pool gives each worker "
                                 "a GPU of its own, or shares the only one)")

    @property
    def unit_gpus(self) -> float:
        """The GPUs a Ray task requests: ``gpus_per_unit``, by default 1 on a CUDA device, else 0."""
        if self.gpus_per_unit is not None:
            return float(self.gpus_per_unit)
        return 1.0 if self.device.type == "cuda" else 0.0

    def worker_gpus(self) -> Optional[List[str]]:
        """The GPU ids (as ``CUDA_VISIBLE_DEVICES`` names them) the local pool's workers take round
        robin, one each: the visible GPUs when ``device`` is 'cuda' without an index and more than
        one is visible; None otherwise (workers share the device)."""
        if self.device.type != "cuda" or self.device.index is not None:
            return None
        gpus = visible_gpus()
        return gpus if len(gpus) > 1 else None

    def local_workers(self, n_units: int) -> int:
        """Worker processes of the local pool for ``n_units`` pending units (default: as many as
        fit the cores, or one per GPU when each worker gets its own)."""
        gpus = self.worker_gpus()
        fit = len(gpus) if gpus else max(1, (os.cpu_count() or 1) // self.threads_per_unit)
        return max(1, min(self.workers or fit, n_units))


def visible_gpus() -> List[str]:
    """The ids of the GPUs this process sees, as ``CUDA_VISIBLE_DEVICES`` names them (its entries
    when set, else '0' .. 'n-1'), ``torch.cuda.device_count()`` of them."""
    n = torch.cuda.device_count()
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:n] if "CUDA_VISIBLE_DEVICES" in os.environ else [str(k) for k in range(n)]


class Task(NamedTuple):
    """One unit: ``fn(data, progress) -> result`` must be picklable (a module-level function or a
    ``functools.partial`` of one) and deterministic; ``progress(done, total)`` may be called any
    number of times."""
    key: str
    fn: Callable[[Any, Callable[[int, int], None]], Any]


OnResult = Callable[[Task, Any], None]
OnProgress = Callable[[Task, int, int], None]


def run_tasks(config: ExecutorConfig, tasks: List[Task], data: Any, on_result: OnResult,
              on_progress: Optional[OnProgress] = None) -> None:
    """Run ``tasks`` with the shared inputs ``data``; ``on_result(task, result)`` is called in this
    process as each task finishes (in completion order), ``on_progress(task, done, total)`` as
    workers report. Raises the first task error after the other started tasks are committed."""
    if not tasks:
        return
    keys = [t.key for t in tasks]
    if len(set(keys)) != len(keys):
        raise ValueError("task keys must be unique")
    on_progress = on_progress or (lambda task, done, total: None)
    if config.kind == "ray":
        _run_ray(config, tasks, data, on_result, on_progress)
    elif config.local_workers(len(tasks)) == 1:
        _run_inline(config, tasks, data, on_result, on_progress)
    else:
        _run_pool(config, tasks, data, on_result, on_progress)


@contextlib.contextmanager
def session(config: ExecutorConfig):
    """Connect to the executor's engine for the duration of a study (Ray: ``ray.init`` now, so that a
    wrong address fails before any work; shut down at exit if started here). Local: nothing."""
    if config.kind != "ray":
        yield
        return
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=config.address, include_dashboard=False, log_to_driver=False, logging_level="warning")
        except ConnectionError as exc:
            raise ConnectionError(f"cannot connect to the Ray cluster at {config.address or 'RAY_ADDRESS'}: {exc}") from exc
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _import_ray():
    try:
        import ray
        import ray.util.queue  # noqa: F401
    except ImportError as exc:
        raise ImportError("the ray executor needs Ray: pip install 'ray>=2.9'") from exc
    return ray


# ------------------------------------------------------------------------------------------ in process
def _run_inline(config, tasks, data, on_result, on_progress) -> None:
    threads = torch.get_num_threads()
    for task in tasks:
        torch.set_num_threads(config.threads_per_unit)
        try:
            result = task.fn(data, lambda done, total, t=task: on_progress(t, done, total))
        finally:
            torch.set_num_threads(threads)
        on_result(task, result)


# ------------------------------------------------------------------------------------- process pool
_WORKER: Dict[str, Any] = {}


class _Throttled:
    """A progress callback that forwards at most every ``interval`` seconds (and always the last step)."""

    def __init__(self, send: Callable[[int, int], None], interval: float = 0.2):
        self.send, self.interval, self.last = send, interval, 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - self.last >= self.interval:
            self.last = now
            self.send(done, total)


def _die_with_parent(parent_pid: int) -> None:
    """Linux: be killed when the main process dies; exit now if it already has (killed while this
    worker was starting), so that no orphan picks up a queued unit."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(1)


def _on_sigint(signum, frame) -> None:
    """SIGINT in a pool worker (Ctrl-C reaches the whole process group). A running unit stops with
    KeyboardInterrupt, which the executor reports to the main process like any error. An idle
    worker only remembers it and refuses its next unit: raised there, in the executor's wait for
    work, it would end the worker with a traceback, while the main process, interrupted too, is
    shutting the pool down anyway."""
    _WORKER["interrupted"] = True
    if _WORKER.get("running"):
        raise KeyboardInterrupt


def _take_gpu(gpus: Optional[List[str]], counter) -> None:
    """Give this worker the next GPU of ``gpus`` (round robin over the workers, ``counter`` a shared
    ``multiprocessing.Value``): set ``CUDA_VISIBLE_DEVICES`` to it, so that its 'cuda' is that GPU.
    Must run before anything touches CUDA in the worker."""
    if not gpus:
        return
    if torch.cuda.is_initialized():
        raise RuntimeError("CUDA was initialised in a pool worker before its GPU was set (the shared inputs "
                           "must be CPU tensors)")
    with counter.get_lock():
        k = counter.value
        counter.value += 1
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus[k % len(gpus)]


def _init_worker(parent_pid: int, data, threads: int, progress_queue, gpus=None, gpu_counter=None) -> None:
    _take_gpu(gpus, gpu_counter)
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, _on_sigint)
    torch.set_num_threads(threads)
    _WORKER.update(data=data, queue=progress_queue, running=False, interrupted=False)


def _pool_task(key: str, fn):
    q = _WORKER["queue"]
    _WORKER["running"] = True  # before the test below: a SIGINT from here on raises in the unit
    try:
        if _WORKER["interrupted"]:
            raise KeyboardInterrupt
        return fn(_WORKER["data"], _Throttled(lambda done, total: q.put((key, done, total))))
    finally:
        _WORKER["running"] = False


def _drive(tasks: List[Task], window: int, submit, wait_some, drain, on_result: OnResult) -> None:
    """At most ``window`` tasks in flight; ``submit(task) -> handle``; ``wait_some(handles) ->
    [(handle, ok, result or exception)]`` (returns after a short timeout); ``drain()`` forwards
    progress. After the first error nothing new starts; the tasks in flight finish and are
    committed; then the error is raised."""
    todo, running, error = list(tasks), {}, None
    while todo or running:
        while todo and error is None and len(running) < window:
            task = todo.pop(0)
            running[submit(task)] = task
        if error is not None:
            todo.clear()
        if not running:
            break
        finished = wait_some(list(running))
        drain()
        for handle, ok, value in finished:
            task = running.pop(handle)
            if ok:
                on_result(task, value)
            elif error is None:
                error = value
    if error is not None:
        raise error


def _drain_queue(q, by_key: Dict[str, Task], on_progress: OnProgress) -> None:
    while not q.empty():
        key, done, total = q.get()
        on_progress(by_key[key], done, total)


def _run_pool(config, tasks, data, on_result, on_progress) -> None:
    ctx = mp.get_context("spawn")  # not fork: torch's thread pools do not survive a fork
    # a SimpleQueue writes each report into the pipe before put() returns, like the executor's own
    # result queue; a Queue hands it to a feeder thread that a fresh worker starts on its first put,
    # so a unit's reports could arrive after its result, when the last drain had already run
    progress_queue = ctx.SimpleQueue()
    by_key = {t.key: t for t in tasks}
    workers = config.local_workers(len(tasks))
    gpus = config.worker_gpus()
    pool = cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                  initargs=(os.getpid(), data, config.threads_per_unit, progress_queue,
                                            gpus, ctx.Value("i", 0) if gpus else None))

    def wait_some(futures):
        done, _ = cf.wait(futures, timeout=0.1, return_when=cf.FIRST_COMPLETED)
        return [(f, f.exception() is None, f.exception() or f.result()) for f in done]

    try:
        _drive(tasks, workers, lambda t: pool.submit(_pool_task, t.key, t.fn), wait_some,
               lambda: _drain_queue(progress_queue, by_key, on_progress), on_result)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        progress_queue.close()


# ---------------------------------------------------------------------------------------------- Ray
def _ray_task(key: str, fn, data, threads: int, progress_queue):
    torch.set_num_threads(threads)
    return fn(data, _Throttled(lambda done, total: progress_queue.put_nowait((key, done, total)), interval=0.5))


def ray_options(config: ExecutorConfig) -> Dict[str, Any]:
    """The resources of one unit's Ray task: ``num_cpus`` = its threads, ``num_gpus`` = its GPUs
    (``config.unit_gpus``), no retries (a failed unit is redone by rerunning the study)."""
    return {"num_cpus": config.threads_per_unit, "num_gpus": config.unit_gpus, "max_retries": 0}


def ray_window(config: ExecutorConfig, resources: Dict[str, float]) -> int:
    """How many units to keep in flight on a cluster with ``resources`` (``ray.cluster_resources()``):
    as many as its CPUs, and GPUs where units request them, hold at once (at least 1)."""
    fit = resources.get("CPU", 1) // config.threads_per_unit
    if config.unit_gpus > 0:
        fit = min(fit, math.floor(resources.get("GPU", 0) / config.unit_gpus + 1e-9))
    return max(1, int(fit))


def _run_ray(config, tasks, data, on_result, on_progress) -> None:
    with session(config):   # a no-op inside the caller's session
        _run_ray_tasks(_import_ray(), config, tasks, data, on_result, on_progress)


def _run_ray_tasks(ray, config, tasks, data, on_result, on_progress) -> None:
    progress_queue = None
    try:
        progress_queue = ray.util.queue.Queue()
        by_key = {t.key: t for t in tasks}
        data_ref = ray.put(data)
        remote = ray.remote(**ray_options(config))(_ray_task)
        window = ray_window(config, ray.cluster_resources())

        def wait_some(refs):
            done, _ = ray.wait(refs, num_returns=1, timeout=0.1)
            out = []
            for ref in done:
                try:
                    out.append((ref, True, ray.get(ref)))
                except ray.exceptions.RayTaskError as exc:      # the unit raised
                    out.append((ref, False, exc.as_instanceof_cause()))
                except ray.exceptions.RayError as exc:          # its worker died (e.g. out of memory)
                    out.append((ref, False, exc))
            return out

        def drain():
            waiting = progress_queue.qsize()
            for key, done, total in progress_queue.get_nowait_batch(waiting) if waiting else ():
                on_progress(by_key[key], done, total)

        _drive(tasks, window,
               lambda t: remote.remote(t.key, t.fn, data_ref, config.threads_per_unit, progress_queue),
               wait_some, drain, on_result)
    finally:
        if progress_queue is not None:
            ray.kill(progress_queue.actor)
