"""Build the CUDA sources of csrc/ for the CPU, so that tests run the kernels (cuda_sim).

``load()`` rewrites each ``csrc/**/cuda/*.cu`` into C++ (include/gfsim_device.h first; launches
``k<<<cfg>>>(args)`` -> ``gfsim::Launch(cfg).run("k", k, args)``; ``extern __shared__`` arrays ->
the launch's dynamic shared memory; the two inline-PTX instructions -> their emulation, in the
device headers ``*.cuh`` too), and each
binding ``csrc/**/cuda/*.cpp`` so that it registers its ops for CPU tensors in the namespace
``grounded_fast_sim`` (``torch.ops.grounded_fast_sim.<op>``) instead of for CUDA tensors in
``grounded_fast``. Everything is compiled with g++ by torch.utils.cpp_extension (ninja; about two
minutes on two cores the first time, cached in build/cuda_sim afterwards).
"""
from __future__ import annotations

import glob
import os
import re


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")
INCLUDE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "include")
BUILD = os.path.join(ROOT, "build", "cuda_sim")
NAMESPACE = "grounded_fast_sim"

_PTX = re.compile(r'asm\(\s*"(ex2|lg2)\.approx\.ftz\.f32 %0, %1;"\s*:\s*"=f"\((\w+)\)\s*:\s*"f"\((\w+)\)\s*\);')
_EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w:]+(?:\s+[\w:]+)*?)\s+(\w+)\[\]\s*;")


def _kernel_start(text: str, end: int) -> int:
    """Start of the kernel expression (``name`` or ``name<targs>``) that ends just before ``end``."""
    i = end
    while text[i - 1].isspace():
        i -= 1
    if text[i - 1] == ">":
        depth = 0
        while True:
            i -= 1
            depth += {">": 1, "<": -1}.get(text[i], 0)
            if depth == 0:
                break
    while i > 0 and (text[i - 1].isalnum() or text[i - 1] in "_:"):
        i -= 1
    return i


def rewrite_launches(text: str) -> str:
    """``k<targs><<<cfg>>>(args)`` -> ``gfsim::Launch(cfg).run("k", k<targs>, args)``."""
    out, pos = [], 0
    for m in re.finditer(r"<<<(.*?)>>>\s*\(", text, flags=re.S):
        start = _kernel_start(text, m.start())
        kernel = text[start:m.start()].strip()
        name = re.match(r"[\w:]+", kernel).group(0)
        rest = text[m.end():]
        comma = "" if rest.lstrip().startswith(")") else ", "
        out += [text[pos:start], f'gfsim::Launch({m.group(1)}).run("{name}", {kernel}{comma}']
        pos = m.end()
    return "".join(out) + text[pos:]


def _rewrite_ptx(text: str, path: str) -> str:
    """The two inline-PTX instructions -> their emulation; any other inline PTX is an error."""
    text = _PTX.sub(r"\2 = gfsim::\1_approx_ftz(\3);", text)
    if re.search(r"\basm\b\s*(volatile\s*)?\(", text):
        raise RuntimeError(f"{path}: inline PTX that cuda_sim does not emulate; add it to tests/cuda_sim/build.py")
    return text


def rewrite_cu(text: str, path: str) -> str:
    text = _rewrite_ptx(text, path)
    text = _EXTERN_SHARED.sub(r"\1* \2 = reinterpret_cast<\1*>(gfsim::dynamic_smem());", text)
    text = rewrite_launches(text)
    return f'#include "gfsim_device.h"\n#line 1 "{path}"\n{text}'


def rewrite_binding(text: str, path: str) -> str:
    """Register the binding's ops for CPU tensors in NAMESPACE. A binding that defines its ops
    (TORCH_LIBRARY_FRAGMENT) keeps its schemas; one that only adds CUDA kernels to ops defined
    elsewhere gets them defined in NAMESPACE with the schemas inferred from the functions."""
    if "TORCH_LIBRARY_FRAGMENT(grounded_fast," in text:
        text = text.replace("TORCH_LIBRARY_FRAGMENT(grounded_fast,", f"TORCH_LIBRARY_FRAGMENT({NAMESPACE},")
        text = text.replace("TORCH_LIBRARY_IMPL(grounded_fast, CUDA,", f"TORCH_LIBRARY_IMPL({NAMESPACE}, CPU,")
    else:
        head, sep, body = text.partition("TORCH_LIBRARY_IMPL(grounded_fast, CUDA, m)")
        if not sep:
            raise RuntimeError(f"{path}: no TORCH_LIBRARY_IMPL(grounded_fast, CUDA, m) block")
        text = head + f"TORCH_LIBRARY_FRAGMENT({NAMESPACE}, m)" + body.replace("m.impl(", "m.def(")
    return f'#line 1 "{path}"\n{text}'


def rewrite_header(text: str, path: str) -> str:
    """A device header (.cuh): its inline PTX as in rewrite_cu (the .cu that includes it has
    included gfsim_device.h first)."""
    return f'#line 1 "{path}"\n{_rewrite_ptx(text, path)}'


def _write(dst: str, text: str) -> None:
    """dst := text, only when it changes; written whole, then renamed: pytest-xdist workers may build at once."""
    if not os.path.exists(dst) or open(dst).read() != text:
        tmp = f"{dst}.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, dst)


def sources() -> list[str]:
    """The rewritten sources, written to BUILD/src (rewritten only when they change). The device
    headers go there too, under their own names: a rewritten source's #include "x.cuh" finds them
    first, in its own directory."""
    os.makedirs(os.path.join(BUILD, "src"), exist_ok=True)
    headers = sorted(glob.glob(os.path.join(CSRC, "**", "cuda", "*.cuh"), recursive=True))
    names = [os.path.basename(h) for h in headers]
    if len(set(names)) != len(names):
        raise RuntimeError(f"cuda_sim keeps device headers by name: two share one in {headers}")
    for path in headers:
        with open(path) as f:
            _write(os.path.join(BUILD, "src", os.path.basename(path)), rewrite_header(f.read(), path))
    out = []
    for path in sorted(glob.glob(os.path.join(CSRC, "**", "cuda", "*.cu"), recursive=True)) + sorted(
            glob.glob(os.path.join(CSRC, "**", "cuda", "*.cpp"), recursive=True)):
        with open(path) as f:
            text = f.read()
        text = rewrite_cu(text, path) if path.endswith(".cu") else rewrite_binding(text, path)
        rel = os.path.relpath(path, CSRC).replace(os.sep, "_")
        dst = os.path.join(BUILD, "src", os.path.splitext(rel)[0] + ".cpp")
        _write(dst, text)
        out.append(dst)
    return out


def load(verbose: bool = False) -> None:
    """Build (or reuse) and load the emulated CUDA extension: ops in torch.ops.grounded_fast_sim.

    With GFSIM_SANITIZE=address the kernels are built with AddressSanitizer (build/cuda_sim-address;
    run python with LD_PRELOAD=$(c++ -print-file-name=libasan.so) and
    ASAN_OPTIONS=detect_leaks=0): an out-of-bounds read of a kernel, silent on a GPU, stops the test."""
    from torch.utils.cpp_extension import load as load_extension
    sanitize = os.environ.get("GFSIM_SANITIZE", "")
    build = BUILD + (f"-{sanitize}" if sanitize else "")
    os.makedirs(build, exist_ok=True)
    srcs = sources()
    dirs = sorted({os.path.dirname(p) for p in glob.glob(os.path.join(CSRC, "**", "cuda", "*"), recursive=True)})
    flags = ["-O2", "-Wno-unknown-pragmas"] + ([f"-fsanitize={sanitize}", "-fno-omit-frame-pointer"] if sanitize else [])
    load_extension(name="gf_cuda_sim" + (f"_{sanitize}" if sanitize else ""), sources=srcs,
                   extra_include_paths=[INCLUDE, *dirs], extra_cflags=flags,
                   extra_ldflags=[f"-fsanitize={sanitize}"] if sanitize else None, build_directory=build,
                   is_python_module=False, verbose=verbose)


if __name__ == "__main__":
    load(verbose=True)
    print(f"built {BUILD}: ops torch.ops.{NAMESPACE}.*")
