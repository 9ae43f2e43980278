"""GPU primitives of the analysis kernels with an interpreter twin: ``log2`` and ``exp2`` (the
hardware approximations on a GPU, ``tl.log2`` / ``tl.exp2`` elsewhere), ``bf16_dot`` and
``dot_3xtf32``.

``tl.log`` compiles to libdevice's ``__nv_logf``, a polynomial of about 25 instructions, so the
log-bound pair loops (JSD: one log per pair and entry) ran at the polynomial's rate. On the GPU
``fast_log2f`` is one ``lg2.approx.ftz.f32`` (the special-function unit; absolute error about
2^-22 on [1/2, 2], relative 2^-22 elsewhere); x log2 x summed over a distribution then errs by at
most ~2^-22 bits, far below the float32 accumulation's own error over thousands of terms.
``tl.exp`` / ``tl.exp2`` compile to ``ex2.approx.f32`` without flush-to-zero, which ptxas guards
against subnormal results with a compare and two predicated multiplies around each MUFU.EX2;
``exp2`` here is ``ex2.approx.ftz.f32`` alone (results below 2^-126 flush to 0, far below anything
a float32 sum of probabilities resolves).
Triton's interpreter has no extern functions or inline assembly, so under ``TRITON_INTERPRET=1`` (how CI runs the
kernels) the same kernels take ``tl.log2``: identical math, exact to float32 rounding.
"""
import os

import triton
import triton.language as tl
from triton.language.extra import libdevice

# Options every launch of the package's kernels passes. FMA contraction: Triton's default through
# 3.9, off from 3.10 unless asked for; the kernels' accuracy and instruction counts
# (bench/sass_cost.py) were measured with it.
LAUNCH = {"enable_fp_fusion": True}
COMPILED = tl.constexpr(os.environ.get("TRITON_INTERPRET") != "1")  # for a GPU, not interpreted
# below this, x log2 x (< 1e-28) is dropped: the hardware log flushes subnormals to zero
TINY = tl.constexpr(1e-30)


@triton.jit
def log2(x):
    if COMPILED:
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
    if COMPILED:
        return tl.dot(a, b)
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")


@triton.jit
def exp2(x):
    """2^x in float32: one ex2.approx.ftz on a GPU (subnormal results flush to 0)."""
    if COMPILED:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.exp2(x)


@triton.jit
def split_tf32(x):
    """x = hi + lo, hi = x rounded to TF32 (11 significand bits, nearest, by its bit pattern: an
    integer add and a mask; inf and NaN stay inf and NaN, and then lo is NaN), lo = x - hi exact."""
    hi = ((x.to(tl.int32, bitcast=True) + 0x1000) & -8192).to(tl.float32, bitcast=True)
    return hi, x - hi


@triton.jit
def _tf32(x):
    """What a TF32 tensor-core product reads of a float32 operand: its 19 leading bits."""
    return (x.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def dot_3xtf32(a, b, acc):
    """acc + a @ b for float32 tiles at about float32 accuracy on the TF32 tensor cores:
    a_lo b_hi + a_hi b_lo + a_hi b_hi (the a_lo b_lo term, 2^-22 relative, is dropped). Triton's own
    ``input_precision='tf32x3'`` rounds each piece with an inf guard (about 5 instructions per
    operand entry); here hi is rounded by ``split_tf32`` (2) and lo goes in as it is: the tensor
    core truncates it to TF32, a relative error of 2^-21 of the entry, as with the guarded form's
    2^-22 far below the float32 sums' own. Under the interpreter the operands are truncated to
    TF32 first, so that the tests see the products a GPU computes."""
    a_hi, a_lo = split_tf32(a)
    b_hi, b_lo = split_tf32(b)
    if COMPILED:
        acc = tl.dot(a_lo, b_hi, acc, input_precision="tf32")
        acc = tl.dot(a_hi, b_lo, acc, input_precision="tf32")
        return tl.dot(a_hi, b_hi, acc, input_precision="tf32")
    else:
        acc = tl.dot(_tf32(a_lo), b_hi, acc, input_precision="ieee")
        acc = tl.dot(a_hi, _tf32(b_lo), acc, input_precision="ieee")
        return tl.dot(a_hi, b_hi, acc, input_precision="ieee")
