"""Triton kernels of the analysis ops (imported as ``grounded_fast.triton_kernels.analysis``)."""
