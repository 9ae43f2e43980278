#!/usr/bin/env bash
# Everything that needs a GPU, in one command, on a machine with an NVIDIA GPU and its own
# PyTorch / Triton (no internet needed):
#   bash bench/gpu_suite.sh
# 1. builds the CUDA extension (FORCE_CUDA=1; archs from GROUNDED_FAST_CUDA_ARCHS, default "80;90"),
# 2. runs the GPU tests: CUDA and Triton backends of the OT and analysis ops against the reference,
#    every dtype, plus the whole CPU suite (the build must not break it),
# 3. runs the GPU benchmarks: bench/gpu_ot.py -> bench/results/gpu-ot-<device>.{json,md} and
#    bench/gpu_analysis.py -> bench/results/gpu-<device>.{json,md}.
# Logs go to bench/results/gpu-suite-<date>.log. Exit status: non-zero if the build or a test fails.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/results
LOG="bench/results/gpu-suite-$(date +%Y%m%d-%H%M%S).log"
exec > >(tee "$LOG") 2>&1
nvidia-smi || true
python -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available()); sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no GPU visible"; exit 2; }
FORCE_CUDA=1 pip install --no-build-isolation --no-deps -e . || { echo "CUDA build failed"; exit 1; }
python -c "import grounded_fast._C_cuda" || { echo "CUDA extension does not import"; exit 1; }
status=0
GPU_TESTS="tests/test_entropic_ot_gpu.py tests/test_entropic_ot_triton.py tests/test_analysis_gpu.py tests/test_analysis_triton.py"
python -m pytest $GPU_TESTS -q -rs || status=1
python -m pytest tests -q $(for t in $GPU_TESTS; do echo --ignore=$t; done) || status=1
python bench/gpu_ot.py || status=1
python bench/gpu_analysis.py || status=1
echo "log: $LOG"
exit $status
