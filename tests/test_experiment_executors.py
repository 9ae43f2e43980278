"""Executors: the same units give bit-identical results in this process, in a local process pool
and on a local Ray instance; errors surface after the other units are committed; progress reaches
the main process; and a tiny grounding grid run through the CLI on Ray equals the local run."""
import functools
import json
import sqlite3
import subprocess
import sys

import pytest
import torch

from grounded_fast.experiments.executors import ExecutorConfig, Task, run_tasks


def _unit(seed: int, data, progress):
    """A deterministic float-heavy unit (its result depends on the thread count it runs with)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(256, 256, generator=g, dtype=torch.float32)
    x = data["x"]
    for step in range(3):
        x = torch.tanh(x @ w)
        progress(step + 1, 3)
    return {"seed": seed, "sum": float(x.sum()), "bytes": x.numpy().tobytes().hex()[:64],
            "threads": torch.get_num_threads()}


def _failing(seed: int, data, progress):
    if seed == 1:
        raise ValueError("unit 1 is broken")
    return _unit(seed, data, progress)


def _run(config, fn=_unit, n=4):
    data = {"x": torch.randn(64, 256, generator=torch.Generator().manual_seed(0))}
    results, progress = {}, {}
    tasks = [Task(f"unit/{k}", functools.partial(fn, k)) for k in range(n)]
    run_tasks(config, tasks, data, lambda t, r: results.__setitem__(t.key, r),
              lambda t, done, total: progress.__setitem__(t.key, (done, total)))
    return results, progress


def test_executor_config_validation():
    with pytest.raises(ValueError, match="executor"):
        ExecutorConfig("dask")
    with pytest.raises(ValueError, match="workers"):
        ExecutorConfig(workers=0)
    with pytest.raises(ValueError, match="threads_per_unit"):
        ExecutorConfig(threads_per_unit=0)
    with pytest.raises(ValueError, match="address"):
        ExecutorConfig("local", address="ray://head:10001")
    assert ExecutorConfig(workers=8).local_workers(3) == 3
    assert ExecutorConfig(workers=1).local_workers(5) == 1


def test_inline_and_pool_identical_with_progress():
    inline, p_inline = _run(ExecutorConfig(workers=1))
    pool, p_pool = _run(ExecutorConfig(workers=2))
    assert inline == pool
    assert all(r["threads"] == 1 for r in pool.values())
    assert set(p_pool) == set(pool) and all(v == (3, 3) for v in p_pool.values())   # the last report arrives
    assert p_inline == p_pool
    threads2, _ = _run(ExecutorConfig(workers=2, threads_per_unit=2))
    assert all(r["threads"] == 2 for r in threads2.values())


def test_inline_restores_thread_count():
    before = torch.get_num_threads()
    _run(ExecutorConfig(workers=1, threads_per_unit=1), n=1)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("config", [ExecutorConfig(workers=1), ExecutorConfig(workers=2)], ids=["inline", "pool"])
def test_error_raised_after_other_units_committed(config):
    data = {"x": torch.randn(64, 256)}
    results = {}
    tasks = [Task(f"unit/{k}", functools.partial(_failing, k)) for k in range(3)]
    with pytest.raises(ValueError, match="unit 1 is broken"):
        run_tasks(config, tasks, data, lambda t, r: results.__setitem__(t.key, r))
    assert "unit/0" in results and "unit/1" not in results


def test_duplicate_task_keys_rejected():
    with pytest.raises(ValueError, match="unique"):
        run_tasks(ExecutorConfig(workers=1), [Task("a", None), Task("a", None)], None, lambda t, r: None)


def test_ray_identical_to_local():
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # Ray's workers cannot import tests/
    local, _ = _run(ExecutorConfig(workers=1))
    on_ray, progress = _run(ExecutorConfig("ray"))
    assert on_ray == local
    assert all(v == (3, 3) for v in progress.values()) and set(progress) == set(local)
    with pytest.raises(ValueError, match="unit 1 is broken"):
        _run(ExecutorConfig("ray"), fn=_failing, n=2)


# --------------------------------------------------------------------- the CLI, a real tiny grid
MICRO = """
num_scenes = 40
setups = ["P", "multimodal"]
noise_levels = [0.0]
seeds = [0, 1]
epochs = 2
checkpoint_epochs = [1, 2]
batch_size = 8
"""


def _cli(out, cfg, *extra):
    cmd = [sys.executable, "-m", "grounded_fast.cli", "run", "grounding", "--out", str(out), "--no-progress", *extra]
    if cfg is not None:
        cmd += ["--config", str(cfg)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _results(out):
    con = sqlite3.connect(str(out / "results.sqlite"))
    metrics = con.execute("SELECT run_id, epoch, split, name, value FROM metrics ORDER BY 1, 2, 3, 4").fetchall()
    pairwise = con.execute("SELECT analysis, model_a, model_b, value FROM pairwise ORDER BY 1, 2, 3").fetchall()
    ckpts = con.execute("SELECT run_id, epoch, sha256 FROM checkpoints ORDER BY 1, 2").fetchall()
    analysis = json.loads(con.execute("SELECT payload FROM units WHERE unit_id = 'analysis'").fetchone()[0])
    con.close()
    return metrics, pairwise, ckpts, analysis


def test_tiny_grid_on_ray_equals_local_pool(tmp_path):
    pytest.importorskip("ray")
    cfg = tmp_path / "micro.toml"
    cfg.write_text(MICRO)
    runs = {}
    for name, extra in (("pool", ["--workers", "2"]), ("ray", ["--executor", "ray"])):
        res = _cli(tmp_path / name, cfg, *extra)
        assert res.returncode == 0, res.stderr[-3000:]
        runs[name] = _results(tmp_path / name)
    metrics, pairwise, ckpts, analysis = runs["pool"]
    assert sum(m[2] == "val" for m in metrics) == 4 * 2 * 2 and len(ckpts) == 8 and pairwise
    assert runs["ray"] == runs["pool"]        # metrics, pairwise results, checkpoint bytes, analysis


def test_cli_rejects_bad_executor_settings(tmp_path, monkeypatch):
    from grounded_fast import cli
    assert cli.main(["run", "grounding", "--out", str(tmp_path / "a"), "--workers", "0"]) == 2
    assert cli.main(["run", "grounding", "--out", str(tmp_path / "b"), "--ray-address", "x:1"]) == 2
    real = __import__("importlib.util").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    assert cli.main(["run", "grounding", "--out", str(tmp_path / "c"), "--executor", "ray"]) == 2
    assert not (tmp_path / "c").exists()


def test_cli_unreachable_ray_cluster_fails_before_any_work(tmp_path, monkeypatch, capsys):
    ray = pytest.importorskip("ray")
    from grounded_fast import cli

    def refuse(*args, **kwargs):
        raise ConnectionError("could not reach the GCS")
    monkeypatch.setattr(ray, "init", refuse)
    out = tmp_path / "run"
    assert cli.main(["run", "grounding", "--out", str(out), "--executor", "ray", "--ray-address", "10.0.0.1:6379"]) == 2
    assert "cannot connect to the Ray cluster at 10.0.0.1:6379" in capsys.readouterr().err
    assert not out.exists()


def test_resume_flag(tmp_path):
    cfg = tmp_path / "micro.toml"
    cfg.write_text(MICRO.replace('setups = ["P", "multimodal"]', 'setups = ["P", "C"]').replace("[0, 1]", "[0]"))
    out = tmp_path / "run"
    missing = _cli(out, None, "--resume")
    assert missing.returncode == 2 and "no run to resume" in missing.stderr
    first = _cli(out, cfg, "--workers", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    con = sqlite3.connect(str(out / "results.sqlite"))
    con.execute("DELETE FROM units WHERE unit_id = 'analysis'")      # as if killed before the analysis
    con.commit()
    con.close()
    resumed = _cli(out, None, "--resume", "--workers", "1")         # no --config: the stored one
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "report:" in resumed.stdout
    other = _cli(out, None, "--preset", "tiny")                      # another config into the same dir
    assert other.returncode == 2 and "num_scenes" in other.stderr and "--resume" in other.stderr
    wrong = subprocess.run([sys.executable, "-m", "grounded_fast.cli", "run", "groundedbert", "--out", str(out),
                            "--resume", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2 and "holds a 'grounding' run" in wrong.stderr


SLEEPER = """
import functools, os, sys, time
from grounded_fast.experiments.executors import ExecutorConfig, Task, run_tasks

def unit(k, data, progress):
    path = os.path.join(sys.argv[1], f"{k}.pid")
    with open(path + ".tmp", "w") as f:  # whole, or not there: the test reads it as soon as it appears
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(120)

if __name__ == "__main__":
    run_tasks(ExecutorConfig(workers=2), [Task(f"u/{k}", functools.partial(unit, k)) for k in range(4)], None,
              lambda t, r: None)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\tZ" not in next(line for line in f if line.startswith("State:"))
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_pool_workers_die_with_the_main_process(tmp_path):
    import os
    import signal
    import time
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)])
    deadline = time.time() + 120
    while len(list(tmp_path.glob("*.pid"))) < 2 and time.time() < deadline:
        time.sleep(0.2)
    pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
    assert len(pids) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), "pool workers outlived the killed main process"


SIGINT_WORKER = """
import concurrent.futures as cf, multiprocessing as mp, os, signal, sys, time
from grounded_fast.experiments import executors as ex


def slow(data, progress):
    with open(sys.argv[1] + ".tmp", "w") as f:  # running: its pid
        f.write(str(os.getpid()))
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(60)


def pool():
    ctx = mp.get_context("spawn")
    return cf.ProcessPoolExecutor(1, mp_context=ctx, initializer=ex._init_worker,
                                  initargs=(os.getpid(), None, 1, ctx.SimpleQueue()))


if __name__ == "__main__":
    p = pool()
    pid = p.submit(os.getpid).result(timeout=60)   # the worker is up, and then idle
    os.kill(pid, signal.SIGINT)
    time.sleep(0.5)
    assert p.submit(os.getpid).result(timeout=30) == pid, "the idle worker died"
    exc = p.submit(ex._pool_task, "u", slow).exception(timeout=30)
    assert isinstance(exc, KeyboardInterrupt), f"a unit after the interrupt: {exc!r}"
    p.shutdown()
    p = pool()
    fut = p.submit(ex._pool_task, "u", slow)
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.05)
    t = time.monotonic()
    os.kill(int(open(sys.argv[1]).read()), signal.SIGINT)
    exc = fut.exception(timeout=30)
    assert isinstance(exc, KeyboardInterrupt) and time.monotonic() - t < 10, f"the running unit: {exc!r}"
    p.shutdown()
    print("OK")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals")
def test_sigint_in_a_pool_worker_stops_its_unit_and_spares_an_idle_one(tmp_path):
    """Ctrl-C reaches every process of the group: a worker waiting for work must neither die with a
    traceback (that broke the pool and printed one; test_ctrl_c_stops_cleanly_... then failed now
    and then, when a worker was between units) nor start a new unit; a running unit stops."""
    import signal
    script = tmp_path / "sigint_worker.py"
    script.write_text(SIGINT_WORKER)
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "running")], capture_output=True, text=True,
                         timeout=240, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc")
def test_ctrl_c_stops_cleanly_and_the_rerun_finishes(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) during a pooled run: exit
    130 with a resume hint and no traceback, no worker left, and the same command then finishes."""
    import os
    import signal
    import time
    cfg = tmp_path / "micro.toml"
    cfg.write_text(MICRO)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "grounded_fast.cli", "run", "grounding", "--config", str(cfg), "--out", str(out),
           "--no-progress", "--workers", "2"]
    # the run starts with SIGINT at its default (Python then raises KeyboardInterrupt on it): a shell
    # hands SIG_IGN to background jobs, which pytest and then the run would inherit (pytest started
    # with `cmd &` made this test fail: the run ignored the interrupt and finished with 0)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def train_units_done():
        try:
            con = sqlite3.connect(f"file:{out / 'results.sqlite'}?mode=ro", uri=True, timeout=5)
            n = con.execute("SELECT COUNT(*) FROM units WHERE kind = 'train' AND status = 'done'").fetchone()[0]
            con.close()
            return n
        except sqlite3.Error:
            return 0

    deadline = time.time() + 300
    while train_units_done() < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    left = "?"
    for _ in range(50):                                               # nothing of the run is left
        left = subprocess.run(["pgrep", "-a", "-s", str(proc.pid)], capture_output=True, text=True).stdout
        if not left:
            break
        time.sleep(0.2)
    assert left == "", left
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    con = sqlite3.connect(str(out / "results.sqlite"))
    units = con.execute("SELECT unit_id, status FROM units").fetchall()
    con.close()
    assert len(units) == 1 + 4 + 1 and all(s == "done" for _, s in units)
