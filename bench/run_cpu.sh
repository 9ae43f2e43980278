#!/usr/bin/env bash
# CPU benchmarks of grounded_fast's OT kernels against POT, then the report.
#
#   bash bench/run_cpu.sh            # from anywhere; writes bench/results/cpu-<host|ci>.json and cpu.md
#
# Environment: WAIT_IDLE=SECONDS (default 120) waits up to that long for the machine to be idle
# before starting (the timings are sensitive to other processes on a 2-core machine; the wait's
# outcome is printed and the run goes ahead either way); BENCH_IDLE_WAIT=SECONDS (default 30) does the
# same before each benchmark. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG="${CI:+ci}"
TAG="${TAG:-$(hostname)}"
RAW="bench/results/cpu-${TAG}-raw.json"
mkdir -p bench/results

start=$(date +%s)
python bench/throughput.py --wait-idle "${WAIT_IDLE:-120}"
python -m pytest bench/test_ot_cpu.py --benchmark-enable --benchmark-json="$RAW" \
    --benchmark-columns=min,median,max,rounds --benchmark-sort=name -p no:cacheprovider -q "$@"
python bench/report.py "$RAW" --tag "$TAG" >/dev/null
end=$(date +%s)
echo "raw: $RAW"
echo "report: bench/results/cpu-${TAG}.json bench/results/cpu.md"
echo "total wall: $((end - start)) s"
