"""Triton kernels of the entropic OT op (imported as ``grounded_fast.triton_kernels.ot``)."""
