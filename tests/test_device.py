"""The device of the studies (``--device``, ``experiments/device.py``) and the executors' GPU
plumbing. There is no GPU here: the CUDA paths are checked with ``torch.cuda`` mocked (device
counts, names, bf16 support), the pool's per-worker ``CUDA_VISIBLE_DEVICES`` with real spawned
workers whose units only read it, and the Ray task options on a stand-in for Ray. GPU training
itself runs in ``bench/gpu_lease.py``'s ``studies`` stage on a lent GPU."""
import dataclasses
import functools
import multiprocessing as mp
import os
import time
from types import SimpleNamespace

import pytest
import torch

from grounded_fast.cli import main
from grounded_fast.experiments import executors, studies
from grounded_fast.experiments.device import autocast, describe, resolve_device
from grounded_fast.experiments.executors import ExecutorConfig, Task, ray_options, ray_window, run_tasks
from grounded_fast.experiments.runner import run_study
from grounded_fast.experiments.store import ResultStore
from grounded_fast.experiments.studies import registry
from grounded_fast.models.config import ModelConfig


@pytest.fixture
def gpus(monkeypatch):
    """``torch.cuda`` as on a machine with ``n`` GPUs (call the fixture's value with n)."""
    def fake(n: int):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "NVIDIA H100 80GB HBM3")
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    return fake


# ------------------------------------------------------------------------------ resolve_device
def test_resolve_device_specs(gpus):
    gpus(0)
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device("auto") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^device 'cuda': CUDA is not available \(.*\); use --device cpu or auto$"):
        resolve_device("cuda")
    gpus(2)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and resolve_device(" CUDA:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"^device 'cuda:2': out of range, 2 GPUs visible \(cuda:0 \.\. cuda:1\)$"):
        resolve_device("cuda:2")
    for junk in ("gpu", "cpu:1", "cuda:x", "auto:0", "", "cuda:-1", "mps", 3):
        with pytest.raises(ValueError, match=r"^device must be auto, cpu, cuda or cuda:N, got "):
            resolve_device(junk)


def test_autocast_is_bf16_on_cuda_and_nothing_on_cpu(gpus):
    gpus(1)
    with autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    ctx = autocast(torch.device("cuda"))
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
    torch.cuda.is_bf16_supported = lambda *a, **k: False           # restored by the fixture
    assert not isinstance(autocast(torch.device("cuda")), torch.autocast)


def test_describe(gpus):
    gpus(2)
    assert describe(torch.device("cpu")) == "cpu"
    assert describe(torch.device("cuda")) == "cuda:0 (NVIDIA H100 80GB HBM3)"
    assert describe(torch.device("cuda", 1)) == "cuda:1 (NVIDIA H100 80GB HBM3)"


# ------------------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize("argv, message", [
    (["--device", "cuda"], "--device: device 'cuda': CUDA is not available"),
    (["--device", "tpu"], "--device: device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["--executor", "ray", "--gpus-per-unit", "0"], "--gpus-per-unit must be a number > 0 (fractional allowed), got '0'"),
    (["--executor", "ray", "--gpus-per-unit", "nan"], "--gpus-per-unit must be a number > 0"),
    (["--gpus-per-unit", "0.5"], "--gpus-per-unit is for --executor ray"),
])
def test_bad_device_flags_are_one_line_exit_2_before_anything_is_written(tmp_path, capsys, gpus, argv, message):
    gpus(0)
    out = tmp_path / "run"
    assert main(["run", "groundedbert", "--out", str(out), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("grounded-fast run: ") and message in err, err
    assert not out.exists()


@dataclasses.dataclass
class _Config(ModelConfig):
    n: int = 2
    presets = {"tiny": {}}


def _prepare(cfg, out_dir, progress, device):
    return {"device": str(device)}


def _unit(k, cfg, out_dir, shared, progress, device):
    from grounded_fast._atomic import write_atomic
    from grounded_fast.experiments.runner import unit_result
    path = os.path.join(out_dir, f"k{k}.pt")
    write_atomic(path, lambda f: torch.save(torch.ones(2, device=device), f))
    return unit_result(time.time(), [(0, path)], [{"name": "k", "value": k}], {"seen": [shared["device"], str(device)]})


_STUDY = studies.Study(
    name="device-toy", config_cls=_Config, plan=lambda cfg: [studies.Unit("u", f"k{k}", k) for k in range(cfg.n)],
    prepare=_prepare, run_unit=_unit, results=lambda store, cfg: None, summary=lambda res: [],
    report=lambda store, out_dir: __import__("grounded_fast.experiments.report", fromlist=["Report"]).Report("t"),
    after=(studies.Step("after", lambda store, cfg, out_dir, shared, device: {"payload": {"step_saw": str(device)}}),))


def test_the_device_reaches_prepare_units_and_steps_and_each_payload_records_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "device-toy", _STUDY)
    out = tmp_path / "run"
    assert main(["run", "device-toy", "--out", str(out), "--no-progress", "--device", "cpu", "--workers", "1"]) == 0
    assert " s on cpu; report: " in capsys.readouterr().out
    with ResultStore(out / "results.sqlite", read_only=True) as store:
        payloads = {u["unit_id"]: u["payload"] for u in store.units()}
    assert payloads["u/k0"]["device"] == payloads["u/k1"]["device"] == payloads["after"]["device"] == "cpu"
    assert payloads["u/k1"]["seen"] == ["cpu", "cpu"] and payloads["after"]["step_saw"] == "cpu"


def test_run_study_device_replaces_the_executors(tmp_path, gpus):
    gpus(0)
    with pytest.raises(ValueError, match="CUDA is not available"):
        run_study(_STUDY, _Config(), str(tmp_path / "a"), progress=False, executor=ExecutorConfig(workers=1),
                  device="cuda")
    assert not (tmp_path / "a").exists()   # refused before the run directory is made
    run_study(_STUDY, _Config(), str(tmp_path / "b"), progress=False,
              executor=ExecutorConfig(workers=1, device="cpu"), device="auto")


def test_checkpoints_are_saved_from_cpu_state(tmp_path, monkeypatch):
    """save_model writes CPU tensors; for a CPU model the bytes are those of its own state_dict."""
    import collections
    import io

    import grounded_fast.models as gm
    from grounded_fast.models.config import cpu_state
    model = gm.build("groundedbert", "tiny")
    assert cpu_state(model) is not None
    files = gm.save(model, str(tmp_path / "m"))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    assert open(files["model.pt"].path, "rb").read() == buf.getvalue()
    # a module on a GPU (stand-in tensors: there is none here): every tensor copied to the CPU,
    # the state dict's version metadata kept
    on_gpu = SimpleNamespace(device=torch.device("cuda", 0), detach=lambda: SimpleNamespace(cpu=lambda: "on cpu"))
    state = collections.OrderedDict(w=on_gpu)
    state._metadata = {"": {"version": 1}}
    monkeypatch.setattr(torch.nn.Linear, "state_dict", lambda self: state)
    out = cpu_state(torch.nn.Linear(1, 1))
    assert out == {"w": "on cpu"} and out._metadata == {"": {"version": 1}}


# ------------------------------------------------------------------------------------ executors
def test_executor_config_device_and_gpus(gpus):
    gpus(4)
    cfg = ExecutorConfig(device="cuda")
    assert cfg.device == torch.device("cuda") and cfg.unit_gpus == 1.0
    assert cfg.worker_gpus() == ["0", "1", "2", "3"] and cfg.local_workers(10) == 4 and cfg.local_workers(2) == 2
    assert ExecutorConfig(device="cuda", workers=6).local_workers(10) == 6     # round robin: two share a GPU
    assert ExecutorConfig(device="cuda:1").worker_gpus() is None               # an explicit GPU is shared
    assert ExecutorConfig().unit_gpus == 0.0 and ExecutorConfig().worker_gpus() is None
    assert ExecutorConfig("ray", device="cuda", gpus_per_unit=0.25).unit_gpus == 0.25
    gpus(1)
    assert ExecutorConfig(device="cuda").worker_gpus() is None                 # one GPU: workers share it
    with pytest.raises(ValueError, match="device must be a resolved cpu, cuda or cuda:N device"):
        ExecutorConfig(device="auto")
    with pytest.raises(ValueError, match="gpus_per_unit must be a number > 0"):
        ExecutorConfig("ray", gpus_per_unit=0)
    with pytest.raises(ValueError, match="gpus_per_unit is for the ray executor only"):
        ExecutorConfig(gpus_per_unit=1)


def test_visible_gpus_follow_cuda_visible_devices(gpus, monkeypatch):
    gpus(2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert ExecutorConfig(device="cuda").worker_gpus() == ["4", "6"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert executors.visible_gpus() == ["0", "1"]


def test_take_gpu_is_round_robin(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    counter = mp.get_context("spawn").Value("i", 0)
    seen = []
    for _ in range(5):
        executors._take_gpu(["0", "1", "2"], counter)
        seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
    assert seen == ["0", "1", "2", "0", "1"]
    executors._take_gpu(None, None)           # no GPUs of their own: the environment is left alone
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"


def _visible(k, data, progress):
    time.sleep(0.3)
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_pool_workers_each_get_their_own_gpu(gpus, monkeypatch):
    """Spawned workers (they do not see the mock) set CUDA_VISIBLE_DEVICES in their initializer."""
    gpus(2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    results = {}
    run_tasks(ExecutorConfig(device="cuda"), [Task(f"u/{k}", functools.partial(_visible, k)) for k in range(4)],
              None, lambda t, r: results.__setitem__(t.key, r))
    by_pid = {}
    for pid, visible in results.values():
        assert by_pid.setdefault(pid, visible) == visible     # a worker keeps its GPU
    assert set(by_pid.values()) <= {"3", "5"} and len(set(by_pid.values())) == len(by_pid) <= 2


class _Ref:
    def __init__(self, value):
        self.value = value


class _FakeRay:
    """Just what ``executors._run_ray_tasks`` uses of Ray, running each task at once in this process."""

    class exceptions:
        class RayError(Exception):
            pass

        class RayTaskError(RayError):
            pass

    def __init__(self, resources):
        self.resources, self.options = resources, []
        queue = SimpleNamespace(put_nowait=lambda item: None, qsize=lambda: 0, actor=None)
        self.util = SimpleNamespace(queue=SimpleNamespace(Queue=lambda: queue))

    def put(self, x):
        return x

    def remote(self, **options):
        self.options.append(options)
        return lambda fn: SimpleNamespace(remote=lambda *args: _Ref(fn(*args)))

    def cluster_resources(self):
        return self.resources

    def wait(self, refs, num_returns, timeout):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return ref.value

    def kill(self, actor):
        pass


def _double(k, data, progress):
    return 2 * k


def test_ray_tasks_request_gpus():
    threads = torch.get_num_threads()
    cfg = ExecutorConfig("ray", threads_per_unit=2, device="cuda", gpus_per_unit=0.5)
    assert ray_options(cfg) == {"num_cpus": 2, "num_gpus": 0.5, "max_retries": 0}
    assert ray_options(ExecutorConfig("ray", device="cuda"))["num_gpus"] == 1.0
    assert ray_options(ExecutorConfig("ray"))["num_gpus"] == 0.0
    assert ray_window(cfg, {"CPU": 16, "GPU": 2}) == 4                     # GPUs bound it: 2 / 0.5
    assert ray_window(cfg, {"CPU": 4, "GPU": 8}) == 2                      # CPUs do: 4 / 2 threads
    assert ray_window(ExecutorConfig("ray"), {"CPU": 16}) == 16
    assert ray_window(ExecutorConfig("ray", device="cuda"), {"CPU": 16}) == 1   # none yet: one at a time
    ray, results = _FakeRay({"CPU": 16, "GPU": 2}), {}
    try:
        executors._run_ray_tasks(ray, cfg, [Task(f"u/{k}", functools.partial(_double, k)) for k in range(3)], None,
                                 lambda t, r: results.__setitem__(t.key, r), lambda *a: None)
    finally:
        torch.set_num_threads(threads)
    assert ray.options == [{"num_cpus": 2, "num_gpus": 0.5, "max_retries": 0}]
    assert results == {"u/0": 0, "u/1": 2, "u/2": 4}
