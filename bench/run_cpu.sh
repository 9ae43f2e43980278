#!/usr/bin/env bash
# CPU benchmarks of grounded_fast's OT kernels against POT and GeomLoss, then the report.
#
#   bash bench/run_cpu.sh            # from anywhere
#
# writes bench/results/cpu-<host|ci>-<kernel commit>.json and .md (named by the last commit that
# changed the kernels, so that a run before and one after a kernel change sit side by side; compare
# them with `python bench/report.py --compare BEFORE.json AFTER.json`), cpu.md (a copy of the .md)
# and the raw pytest-benchmark JSON cpu-<host|ci>-raw.json.
#
# Environment: BENCH_THREADS=N (default: all cores) threads of every side, ours and the peers':
# torch's intra-op pool and every BLAS / OpenMP pool are pinned to N (bench/conftest.py);
# WAIT_IDLE=SECONDS (default 120) waits up to that long for the machine to be idle before starting
# (the timings are sensitive to other processes on a 2-core machine; the wait's outcome is printed
# and the run goes ahead either way); BENCH_IDLE_WAIT=SECONDS (default 30) does the same before each
# benchmark; BENCH_RETRIES=K (default 2): a benchmark during which other processes took > 10% of the
# CPU time is measured again up to K times, the least contaminated attempt kept. Extra arguments go
# to pytest. GeomLoss rows need `pip install geomloss==0.3.1`
# (skipped, with the reason, without it).
set -euo pipefail
cd "$(dirname "$0")/.."

TAG="${CI:+ci}"
TAG="${TAG:-$(hostname)}"
RAW="bench/results/cpu-${TAG}-raw.json"
export BENCH_THREADS="${BENCH_THREADS:-$(nproc)}"
mkdir -p bench/results

start=$(date +%s)
python bench/throughput.py --threads "$BENCH_THREADS" --wait-idle "${WAIT_IDLE:-120}"
python -m pytest bench/test_ot_cpu.py --benchmark-enable --benchmark-json="$RAW" \
    --benchmark-columns=min,median,max,rounds --benchmark-sort=name -p no:cacheprovider -q -rs "$@"
python bench/report.py "$RAW" --suite ot --tag "$TAG" | tail -n 1
end=$(date +%s)
echo "raw: $RAW"
echo "threads: $BENCH_THREADS; total wall: $((end - start)) s"
