"""The source distribution carries every file the build compiles or imports (setuptools adds only
the sources an extension lists: without MANIFEST.in the headers were missing, and installing the
sdist failed with "analysis_cpu.h: No such file or directory"), and the package's data files."""
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# .git is a folder in a clone, a file in a worktree
needs_git_checkout = pytest.mark.skipif(shutil.which("git") is None or not os.path.exists(os.path.join(ROOT, ".git")),
                                        reason="needs the git checkout")


def _tracked(*prefixes):
    out = subprocess.run(["git", "ls-files", *prefixes], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()


@needs_git_checkout
def test_sdist_carries_the_sources_and_the_data(tmp_path):
    tree = tmp_path / "tree"
    for path in _tracked():  # a copy of the tracked files: the build writes its egg-info beside them
        os.makedirs(tree / os.path.dirname(path), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, path), tree / path)
    res = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path / "dist")],
                         cwd=tree, capture_output=True, text=True, env={**os.environ, "FORCE_CUDA": "0"})
    assert res.returncode == 0, res.stderr[-3000:]
    (sdist,) = (tmp_path / "dist").iterdir()
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    wanted = _tracked("csrc", "grounded_fast") + ["setup.py", "pyproject.toml", "README.md", "LICENSE"]
    missing = sorted(set(wanted) - names)
    assert not missing, f"missing from the sdist: {missing}"
    assert not [n for n in names if n.endswith((".so", ".o", ".pyc"))]


def test_every_torch_load_is_weights_only():
    """No pickle code runs when loading: every ``torch.load`` in the package passes
    ``weights_only=True`` (no fallback without it: the required torch has it)."""
    import ast
    import re
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        major, minor = map(int, re.search(r'"torch>=(\d+)\.(\d+)', f.read()).groups())
    assert (major, minor) >= (1, 13), "torch.load(weights_only=...) needs torch >= 1.13"
    unsafe = []
    for folder, _, files in os.walk(os.path.join(ROOT, "grounded_fast")):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                    kw = {k.arg: k.value for k in node.keywords}
                    if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                        unsafe.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
    assert not unsafe, f"torch.load without weights_only=True at {unsafe}"


@needs_git_checkout
def test_wheel_carries_the_package_data(tmp_path):
    """What a wheel installs besides the compiled extensions (``build_py``: the modules and the
    package data of pyproject's package-data) is every tracked file of the package, e.g. the report
    templates and the reference values, which are read at run time."""
    tree = tmp_path / "tree"
    for path in _tracked():
        os.makedirs(tree / os.path.dirname(path), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, path), tree / path)
    res = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path / "lib")],
                         cwd=tree, capture_output=True, text=True, env={**os.environ, "FORCE_CUDA": "0"})
    assert res.returncode == 0, res.stderr[-3000:]
    built = {p.relative_to(tmp_path / "lib").as_posix() for p in (tmp_path / "lib").rglob("*") if p.is_file()}
    missing = sorted(set(_tracked("grounded_fast")) - built)
    assert not missing, f"missing from the wheel (add them to [tool.setuptools.package-data]): {missing}"
    assert "grounded_fast/experiments/templates/report.html.j2" in built
