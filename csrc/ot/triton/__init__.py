"""Triton kernels of the entropic OT ops (imported as ``grounded_fast.triton_kernels.ot``); their
host code is grounded_fast/ops/entropic_ot/backend_triton.py and
grounded_fast/ops/entropic_ot_features/."""
