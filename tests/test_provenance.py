"""A study's provenance (git commit, dirty flag) comes from git only in a checkout of this project,
read-only and bounded in time; anything else records no commit and never fails the study."""
import os
import shutil
import subprocess

import pytest

from grounded_fast.experiments import store
from grounded_fast.experiments.store import ResultStore

_REAL_RUN = subprocess.run   # for the test repositories, before any test patches subprocess.run
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


@pytest.fixture
def git_calls(monkeypatch):
    """Every subprocess.run of the store module (it still runs), as (argv, kwargs)."""
    calls, real = [], subprocess.run

    def run(argv, **kw):
        calls.append((list(argv), kw))
        return real(argv, **kw)

    monkeypatch.setattr(store.subprocess, "run", run)
    return calls


def _repo(path, name):
    path.mkdir()
    (path / "pyproject.toml").write_text(f'[project]\nname = "{name}"\n')
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["init", "-q"], ["add", "pyproject.toml"], ["commit", "-qm", "x"]):
        _REAL_RUN([shutil.which("git"), "-c", "commit.gpgsign=false", "-C", str(path), *cmd], check=True,
                  capture_output=True, env={**os.environ, **env})
    return path


@needs_git
def test_another_projects_repository_runs_no_git(tmp_path, git_calls):
    # the package installed at the top of some other git repository (e.g. a venv's site-packages)
    other = _repo(tmp_path / "other", "someone-else")
    assert store._git_info(other) == (None, None)
    assert git_calls == []


@needs_git
def test_this_projects_checkout_is_read_without_locks_within_the_bound(tmp_path, git_calls, monkeypatch):
    root = _repo(tmp_path / "checkout", "grounded_fast")
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))        # the user's GIT_* must not redirect git
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "other-index"))
    commit, dirty = store._git_info(root)
    assert len(commit) == 40 and dirty == "false"
    (root / "pyproject.toml").write_text('[project]\nname = "grounded_fast"\nversion = "2"\n')
    assert store._git_info(root)[1] == "true"
    assert [argv[argv.index("-C") + 2] for argv, _ in git_calls] == ["rev-parse", "status"] * 2
    for argv, kw in git_calls:
        assert "--no-optional-locks" in argv and kw["env"]["GIT_OPTIONAL_LOCKS"] == "0"
        assert "GIT_DIR" not in kw["env"] and "GIT_INDEX_FILE" not in kw["env"]
        assert 0 < kw["timeout"] <= store._GIT_TIMEOUT_S
    assert not (tmp_path / "other-index").exists()


@pytest.mark.parametrize("failure", [
    FileNotFoundError("git"), subprocess.TimeoutExpired("git", 5), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "x"),
    RuntimeError("anything"), subprocess.CompletedProcess([], 0, b"\xff\xfe/not/here\nabc\n", b""),
    subprocess.CompletedProcess([], 128, b"", b"fatal: detected dubious ownership in repository"),
])
def test_git_failures_record_no_commit(monkeypatch, failure):
    def run(argv, **kw):
        if isinstance(failure, BaseException):
            raise failure
        return failure

    monkeypatch.setattr(store.subprocess, "run", run)
    monkeypatch.setattr(store.shutil, "which", lambda name: "/usr/bin/git")
    monkeypatch.setattr(store, "_is_project_checkout", lambda root: True)
    assert store._git_info() == (None, None)


def test_a_study_starts_without_git(monkeypatch):
    monkeypatch.setenv("PATH", "")
    with ResultStore(":memory:") as db:
        info = db.begin_study("demo", {"a": 1})
    assert info["git_commit"] is None and info["package_version"]
