"""Build of the native kernels.

Always builds the CPU extension ``grounded_fast._C`` (OpenMP). No ``-std`` is passed: torch's
``BuildExtension`` adds the C++ standard that the installed torch's headers require (C++20 from
torch 2.13 on, C++17 before; torch 2.14's ATen refuses C++17). A CUDA extension is built
when asked (``FORCE_CUDA=1``), or, unless refused (``FORCE_CUDA=0``), when the installed torch is a
CUDA build *and* nvcc is found; never decided by whether a GPU is visible. ``GROUNDED_FAST_CPU_ARCH`` sets ``-march`` for the CPU
kernels (default ``native``: the kernels are compiled for the machine that builds them, with
512-bit vectors where it has AVX-512; use e.g. ``x86-64-v3`` for a portable wheel);
``GROUNDED_FAST_CPU_FLAGS`` adds compiler flags.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")


def _has_avx512():
    try:
        with open("/proc/cpuinfo") as f:
            return " avx512f " in f.read().replace("\n", " ")
    except OSError:
        return False


def cpu_flags():
    arch = os.environ.get("GROUNDED_FAST_CPU_ARCH", "native")
    flags = ["-O3", "-fopenmp", "-fopenmp-simd", "-fno-math-errno"]
    if arch:
        flags.append(f"-march={arch}")
    if arch == "native" and _has_avx512():
        # gcc keeps 256-bit vectors by default even where AVX-512 exists; the matrix-vector sweeps
        # were measured faster with 512-bit ones (docs/PERFORMANCE.md, "Threads and vector width").
        flags.append("-mprefer-vector-width=512")
    flags += os.environ.get("GROUNDED_FAST_CPU_FLAGS", "").split()
    return flags


def want_cuda():
    """FORCE_CUDA=1: build it; FORCE_CUDA=0: don't; unset: when torch is a CUDA build and nvcc is found."""
    force = os.environ.get("FORCE_CUDA", "")
    if force in ("0", "1"):
        return force == "1"
    return torch.version.cuda is not None and shutil.which("nvcc") is not None


def cuda_unbuildable():
    """Why the CUDA extension cannot be built here, or None."""
    from torch.utils.cpp_extension import CUDA_HOME
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a build without CUDA: install a CUDA build of torch"
    # torch guesses CUDA_HOME from `which nvcc`; where nvcc is a wrapper outside the toolkit the
    # guess has no headers, and the build would fail minutes later on a missing cuda_runtime.h.
    if CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "include", "cuda_runtime.h")):
        return (f"CUDA_HOME={CUDA_HOME!r} has no include/cuda_runtime.h: set CUDA_HOME to the CUDA "
                "toolkit's root (e.g. /usr/local/cuda)")
    return None


cpu_sources = sorted(glob.glob(os.path.join(CSRC, "**", "cpu", "*.cpp"), recursive=True))
ext_modules = [
    CppExtension(
        name="grounded_fast._C",
        sources=[os.path.join(CSRC, "bindings.cpp")] + cpu_sources,
        include_dirs=[os.path.join(ROOT, CSRC)],
        extra_compile_args={"cxx": cpu_flags()},
        extra_link_args=["-fopenmp"],
    )
]

cuda_sources = sorted(glob.glob(os.path.join(CSRC, "**", "cuda", "*.cu"), recursive=True))
build_cuda = want_cuda() and bool(cuda_sources)
why_not = build_cuda and cuda_unbuildable()
if why_not and os.environ.get("FORCE_CUDA") == "1":
    raise SystemExit(f"grounded_fast: FORCE_CUDA=1, but {why_not}")
if why_not:  # the automatic choice falls back, with one warning
    print(f"grounded_fast: WARNING: building without the CUDA extension: {why_not} (FORCE_CUDA=0 silences "
          "this)", file=sys.stderr)
    build_cuda = False
if build_cuda:
    archs = os.environ.get("GROUNDED_FAST_CUDA_ARCHS", "80;90").split(";")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    ext_modules.append(
        CUDAExtension(
            name="grounded_fast._C_cuda",
            sources=sorted(glob.glob(os.path.join(CSRC, "**", "cuda", "*.cpp"), recursive=True))
            + cuda_sources,
            include_dirs=[os.path.join(ROOT, CSRC)],
            extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"] + gencode},
        )
    )

# Triton kernels live beside the other kernels (csrc/<family>/triton/) and import as Python from
# grounded_fast.triton_kernels.<family>; the helpers they share, csrc/common/triton/, as
# grounded_fast.triton_kernels.common.
TRITON_PACKAGES = {
    "grounded_fast.triton_kernels.analysis": os.path.join(CSRC, "analysis", "triton"),
    "grounded_fast.triton_kernels.common": os.path.join(CSRC, "common", "triton"),
    "grounded_fast.triton_kernels.ot": os.path.join(CSRC, "ot", "triton"),
}

setup(
    packages=find_packages(include=["grounded_fast", "grounded_fast.*"]) + list(TRITON_PACKAGES),
    package_dir={"": ".", **TRITON_PACKAGES},
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
