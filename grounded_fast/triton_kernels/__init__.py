"""Triton kernels, kept beside the C++/CUDA sources under csrc/*/triton/ and mapped here by
setup.py (``package_dir``): ``grounded_fast.triton_kernels.analysis`` is csrc/analysis/triton/, ``.ot`` csrc/ot/triton/ and
``.common`` (helpers they share) csrc/common/triton/.
Importing a kernel module needs ``triton``; the launchers run on CUDA tensors, or on CPU tensors
with ``TRITON_INTERPRET=1`` (how the tests run them without a GPU)."""
