"""Every CUDA source compiles (CI has nvcc but no GPU): each .cu with `nvcc -c` for the default
architectures (sm_80, sm_90; GROUNDED_FAST_CUDA_ARCHS overrides, as in setup.py) and
`-Xptxas -v`, failing on register spills in any kernel and printing registers / shared memory
per kernel; each torch binding of the CUDA extension with a C++ syntax check against torch's
headers. The kernels themselves run on a GPU machine (bench/gpu_lease.py).

The sources that include torch's headers are checked under every C++ standard those headers
accept: setup.py passes none, so the build uses the one the installed torch's BuildExtension
picks (C++20 from torch 2.13 on, and 2.14's ATen refuses C++17; C++17 before). The
CPU sources are built here under one of them; the syntax check covers the other."""
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
CU = sorted(glob.glob(os.path.join(CSRC, "**", "cuda", "*.cu"), recursive=True))
BINDINGS = sorted(glob.glob(os.path.join(CSRC, "**", "cuda", "*.cpp"), recursive=True))
CPU_SOURCES = sorted(glob.glob(os.path.join(CSRC, "**", "cpu", "*.cpp"), recursive=True)) + [
    os.path.join(CSRC, "bindings.cpp")]
NVCC = shutil.which("nvcc")
ARCHS = os.environ.get("GROUNDED_FAST_CUDA_ARCHS", "80;90").split(";")

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not on the PATH")


def _demangle(names):
    tool = shutil.which("c++filt")
    if not tool or not names:
        return names
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return out if len(out) == len(names) else names


def parse_ptxas(log: str):
    """[(kernel, arch, registers, smem bytes, spill store bytes, spill load bytes)] from -Xptxas -v."""
    rows, cur, arch, spills = [], None, None, (0, 0)
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+)'", line)
        if m:
            cur, arch, spills = m.group(1), m.group(2), (0, 0)
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and cur:
            spills = (int(m.group(1)), int(m.group(2)))
            continue
        m = re.search(r"Used (\d+) registers.*?(\d+) bytes smem", line)
        if m and cur:
            rows.append([cur, arch, int(m.group(1)), int(m.group(2)), *spills])
            cur = None
    for row, name in zip(rows, _demangle([r[0] for r in rows])):
        row[0] = name
    return [tuple(r) for r in rows]


def test_cuda_sources_exist():
    assert CU, "no .cu sources found under csrc/*/cuda/"


@needs_nvcc
@pytest.mark.parametrize("source", CU, ids=[os.path.relpath(p, CSRC) for p in CU])
def test_cu_compiles_without_spills(source, tmp_path):
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    cmd = [NVCC, "-c", "-O3", "-std=c++17", "-I", CSRC, *gencode, "-Xptxas", "-v", source,
           "-o", str(tmp_path / "k.o")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"nvcc failed:\n{res.stderr[-4000:]}"
    kernels = parse_ptxas(res.stderr)
    assert {k[1] for k in kernels} == {f"sm_{a}" for a in ARCHS}, "ptxas reported no kernels for some arch"
    print(f"\n{os.path.relpath(source, ROOT)}: {'arch':6} {'regs':>4} {'smem':>6} {'spill st/ld':>11}  kernel")
    for name, arch, regs, smem, st, ld in kernels:
        print(f"  {arch:6} {regs:4d} {smem:6d} {st:5d}/{ld:<5d}  {name[:110]}")
    spilled = [k for k in kernels if k[4] or k[5]]
    assert not spilled, "register spills: " + "; ".join(f"{k[0]} ({k[1]}: {k[4]}/{k[5]} bytes)" for k in spilled)


def test_ptxas_parser_reports_spills():
    log = ("ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90'\n"
           "ptxas info    : Function properties for _Z3fooPf\n"
           "    16 bytes stack frame, 20 bytes spill stores, 24 bytes spill loads\n"
           "ptxas info    : Used 40 registers, used 1 barriers, 8320 bytes smem\n")
    (name, arch, regs, smem, st, ld), = parse_ptxas(log)
    assert (arch, regs, smem, st, ld) == ("sm_90", 40, 8320, 20, 24) and "foo" in name


def _cuda_include():
    for base in filter(None, [os.environ.get("CUDA_HOME"), NVCC and os.path.dirname(os.path.dirname(NVCC)),
                              "/usr/local/cuda"]):
        inc = os.path.join(base, "include")
        if os.path.exists(os.path.join(inc, "cuda_runtime.h")):
            return inc
    return None


def torch_cxx_standards():
    """The C++ standards, of C++17 and C++20, that the installed torch's headers accept (ATen.h
    refuses anything older than the ``__cplusplus`` value it tests)."""
    from torch.utils.cpp_extension import include_paths
    aten = next(os.path.join(p, "ATen", "ATen.h") for p in include_paths()
                if os.path.exists(os.path.join(p, "ATen", "ATen.h")))
    with open(aten) as f:
        need = int(re.search(r"__cplusplus < (\d+)L", f.read()).group(1))
    return [std for std, value in (("c++17", 201703), ("c++20", 202002)) if value >= need]


def test_torch_cxx_standards_read_the_headers():
    stds = torch_cxx_standards()
    assert "c++20" in stds and set(stds) <= {"c++17", "c++20"}


def _torch_syntax_check(source, std, extra_includes=()):
    from torch.utils.cpp_extension import include_paths
    cmd = ["g++", "-fsyntax-only", f"-std={std}", "-fopenmp", "-w", *[f"-I{p}" for p in include_paths()],
           f"-I{sysconfig.get_paths()['include']}", *[f"-I{p}" for p in extra_includes], f"-I{CSRC}", source]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"syntax check ({std}) failed:\n{res.stderr[-4000:]}"


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++")
@pytest.mark.parametrize("std", torch_cxx_standards())
@pytest.mark.parametrize("source", CPU_SOURCES, ids=[os.path.relpath(p, CSRC) for p in CPU_SOURCES])
def test_cpu_source_syntax(source, std):
    _torch_syntax_check(source, std)


@needs_nvcc
@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++")
@pytest.mark.parametrize("std", torch_cxx_standards())
@pytest.mark.parametrize("source", BINDINGS, ids=[os.path.relpath(p, CSRC) for p in BINDINGS])
def test_cuda_binding_syntax(source, std, tmp_path):
    cuda_inc = _cuda_include()
    if cuda_inc is None:
        pytest.skip("CUDA headers not found")
    # The CPU torch wheel ships c10/cuda headers but not the one its build generates; an empty
    # stand-in is enough for a syntax check (the real build on a GPU machine has the real one).
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    _torch_syntax_check(source, std, [cuda_inc, tmp_path])


def _run_setup(code, prelude="", unset=(), **env):
    """Runs setup.py as `setup.py --version` in a child (after `prelude`, with `env` and without the
    variables in `unset`), then `code` with setup.py's globals as `g`."""
    script = (f"import runpy, sys\n{prelude}\nsys.argv = ['setup.py', '--version']\n"
              f"g = runpy.run_path('setup.py')\n{code}\n")
    env = {**{k: v for k, v in os.environ.items() if k not in unset}, **env}
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, env=env)


EXTENSIONS = "print([e.name for e in g['ext_modules']])"


def test_setup_leaves_the_cxx_standard_to_torch():
    """No -std flag of ours: it would override the one torch's headers need (torch 2.14 refuses C++17)."""
    res = _run_setup("print([a for e in g['ext_modules'] for v in e.extra_compile_args.values() for a in v])",
                     FORCE_CUDA="0")
    assert res.returncode == 0, res.stderr[-2000:]
    args = res.stdout.splitlines()[-1]
    assert "-O3" in args and "-std" not in args


def test_setup_refuses_a_cuda_build_it_cannot_make(tmp_path):
    """FORCE_CUDA=1 stops at once, with the reason, instead of failing minutes later in the compiler."""
    import torch
    res = _run_setup("", FORCE_CUDA="1", CUDA_HOME=str(tmp_path))
    assert res.returncode != 0 and "FORCE_CUDA=1, but" in res.stderr
    if torch.version.cuda is None:
        assert "is a build without CUDA" in res.stderr and torch.__version__ in res.stderr
    else:
        assert "include/cuda_runtime.h" in res.stderr and str(tmp_path) in res.stderr


def test_setup_automatic_cuda_choice_falls_back_with_a_warning(tmp_path):
    """A CUDA torch and an nvcc on the PATH, but no toolkit headers: the CPU extension alone, and
    one warning that says why; FORCE_CUDA=0 builds the CPU extension alone without a word."""
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text("#!/bin/sh\nexit 1\n")
    nvcc.chmod(0o755)
    path = f"{nvcc.parent}{os.pathsep}{os.environ['PATH']}"
    prelude = "import torch\ntorch.version.cuda = torch.version.cuda or '13.0'"  # a CUDA torch, as far as setup.py asks
    res = _run_setup(EXTENSIONS, prelude, unset=("FORCE_CUDA",), PATH=path, CUDA_HOME=str(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.splitlines()[-1] == "['grounded_fast._C']"
    assert res.stderr.count("WARNING: building without the CUDA extension") == 1 and "cuda_runtime.h" in res.stderr
    quiet = _run_setup(EXTENSIONS, prelude, FORCE_CUDA="0", PATH=path, CUDA_HOME=str(tmp_path))
    assert quiet.returncode == 0 and quiet.stdout.splitlines()[-1] == "['grounded_fast._C']"
    assert "WARNING" not in quiet.stderr
