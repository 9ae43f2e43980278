"""GPU primitives of the analysis kernels with an interpreter twin: ``log2`` (the hardware
approximation on a GPU, ``tl.log2`` elsewhere) and ``bf16_dot``.

``tl.log`` compiles to libdevice's ``__nv_logf``, a polynomial of about 25 instructions, so the
log-bound pair loops (JSD: one log per pair and entry) ran at the polynomial's rate. On the GPU
``fast_log2f`` is one ``lg2.approx.ftz.f32`` (the special-function unit; absolute error about
2^-22 on [1/2, 2], relative 2^-22 elsewhere); x log2 x summed over a distribution then errs by at
most ~2^-22 bits, far below the float32 accumulation's own error over thousands of terms.
Triton's interpreter has no extern functions, so under ``TRITON_INTERPRET=1`` (how CI runs the
kernels) the same kernels take ``tl.log2``: identical math, exact to float32 rounding.
"""
import os

import triton
import triton.language as tl
from triton.language.extra import libdevice

FAST_LOG2 = tl.constexpr(os.environ.get("TRITON_INTERPRET") != "1")  # compiled, not interpreted
# below this, x log2 x (< 1e-28) is dropped: the hardware log flushes subnormals to zero
TINY = tl.constexpr(1e-30)


@triton.jit
def log2(x):
    if FAST_LOG2:
        return libdevice.fast_log2f(x)
    else:
        return tl.log2(x)


@triton.jit
def xlog2x(x):
    """x log2 x with 0 log 0 = 0 (x >= 0, float32)."""
    return tl.where(x > TINY, x * log2(tl.where(x > TINY, x, 1.0)), 0.0)


@triton.jit
def bf16_dot(a, b):
    """a @ b of bfloat16 tiles, accumulated in float32. Triton's interpreter multiplies bfloat16
    tiles wrongly (3.6 and 3.9: their raw bits, results ~1e9), so there the tiles are widened to
    float32 first: the same products (a bf16 x bf16 product is exact in fp32), summed in another
    order."""
    if FAST_LOG2:  # i.e. compiled for a GPU
        return tl.dot(a, b)
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
