#!/usr/bin/env bash
# Everything that needs a GPU, on a machine with an NVIDIA GPU and its own PyTorch / Triton (no
# internet needed):
#   bash bench/gpu_suite.sh                  # every stage, in this order:
#   bash bench/gpu_suite.sh gpu-tests bench  # or some of them (each builds first if needed)
# build      the CUDA extension (FORCE_CUDA=1; archs from GROUNDED_FAST_CUDA_ARCHS, default "80;90";
#            about a minute on 16 cores for "90" alone); skipped when it is built and up to date
#            unless named;
# gpu-tests  the CUDA and Triton backends of the OT and analysis ops against the reference, every
#            dtype;
# bench      bench/gpu_ot.py -> bench/results/gpu-ot-<device>.{json,md} and
#            bench/gpu_analysis.py -> bench/results/gpu-<device>.{json,md};
# sweeps     bench/gpu_sweep.py fused, agree, attention and small: the opt-in one-pass kernels (the OT
#            fused regime, the agreement one-pass kernel) against the defaults, the Triton attention
#            tiles and the Triton persistent OT kernel's warps, over their configurations
#            -> bench/results/gpu-sweep-<kind>-<device>.{json,md}; SWEEPS="fused small" runs some of
#            them (each takes minutes: a machine lent 10 minutes a command needs them split);
# cpu-tests  the rest of the suite (the build must not break it), last: the longest and the least
#            informative on a GPU machine.
# Logs go to bench/results/gpu-suite-<date>.log. Exit status: non-zero if the build or a test fails.
# A machine lent for a few minutes at a time: run the stages as separate commands.
#
# A machine lent for minutes rather than hours: `python3 bench/gpu_lease.py` runs the same work as
# one command under one time budget, the open issues' benchmarks first, and packs the results.
# Peers without internet: POT and GeomLoss are usually missing on a GPU machine. Download their
# wheels where pip works into bench/wheels/ (git-ignored) with `bash bench/fetch_peer_wheels.sh`,
# and the suite installs them into a temporary directory on the PYTHONPATH before it starts.
# With pytest-xdist installed the tests run on several workers (a crashing test then fails alone
# instead of ending the run; the GPU tests took 211 s with -n 14 on an H100 machine, 441 s without).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"  # the interpreter that holds the machine's PyTorch
STAGES="${*:-build gpu-tests bench sweeps cpu-tests}"
for s in $STAGES; do
  case "$s" in build|gpu-tests|bench|sweeps|cpu-tests) ;; *) echo "unknown stage '$s' (build gpu-tests bench sweeps cpu-tests)"; exit 2;; esac
done
mkdir -p bench/results
LOG="bench/results/gpu-suite-$(date +%Y%m%d-%H%M%S).log"
exec > >(tee "$LOG") 2>&1
nvidia-smi || true
$PY -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available()); sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no GPU visible"; exit 2; }
built() { (cd /tmp && $PY -c "import grounded_fast._C_cuda, grounded_fast.triton_kernels.ot") 2>/dev/null; }
if [[ " $STAGES " == *" build "* ]] || ! built; then
  FORCE_CUDA=1 $PY -m pip install --no-build-isolation --no-deps -e . || { echo "CUDA build failed"; exit 1; }
  built || { echo "CUDA extension does not import"; exit 1; }
fi
if compgen -G "bench/wheels/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/gf-peers bench/wheels/*.whl \
    && export PYTHONPATH="/tmp/gf-peers${PYTHONPATH:+:$PYTHONPATH}"
fi
XDIST=""
$PY -c "import xdist" 2>/dev/null && XDIST="-n $(( $(nproc) < 14 ? $(nproc) : 14 ))"
status=0
GPU_TESTS="tests/test_entropic_ot_gpu.py tests/test_entropic_ot_triton.py tests/test_analysis_gpu.py tests/test_analysis_triton.py tests/test_entropic_ot_features.py"
if [[ " $STAGES " == *" gpu-tests "* ]]; then
  $PY -m pytest $GPU_TESTS -q -rfs $XDIST || status=1
fi
if [[ " $STAGES " == *" bench "* ]]; then
  $PY bench/gpu_ot.py || status=1
  $PY bench/gpu_analysis.py || status=1
fi
if [[ " $STAGES " == *" sweeps "* ]]; then
  for kind in ${SWEEPS:-fused agree attention small}; do
    $PY bench/gpu_sweep.py "$kind" || status=1
  done
fi
if [[ " $STAGES " == *" cpu-tests "* ]]; then
  $PY -m pytest tests -q $XDIST $(for t in $GPU_TESTS; do echo --ignore=$t; done) || status=1
fi
echo "log: $LOG"
exit $status
