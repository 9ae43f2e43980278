#!/usr/bin/env bash
# CPU benchmarks of grounded_fast's analysis kernels against per-pair baselines, then the report.
#
#   bash bench/run_analysis_cpu.sh                          # writes bench/results/analysis-cpu-<host|ci>.json,
#                                                           # analysis-cpu-<host|ci>-raw.json and analysis-cpu.md
#   ANALYSIS_BENCH_QUICK=1 bash bench/run_analysis_cpu.sh   # smoke test at small sizes (well under a minute):
#                                                           # analysis-cpu-<host|ci>-quick{,-raw}.json, analysis-cpu-quick.md
#
# Environment: WAIT_IDLE=SECONDS (default 120; 0 in quick mode) waits up to that long for the machine to
# be idle before starting; BENCH_IDLE_WAIT=SECONDS (default 30; 0 in quick mode) does the same before
# each benchmark (see bench/conftest.py). Extra arguments go to pytest. The full run takes ~3-4 minutes
# on an idle 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG="${CI:+ci}"
TAG="${TAG:-$(hostname)}"
if [ "${ANALYSIS_BENCH_QUICK:-0}" = "1" ]; then
    TAG="${TAG}-quick"
    export BENCH_IDLE_WAIT="${BENCH_IDLE_WAIT:-0}"
    WAIT_IDLE="${WAIT_IDLE:-0}"
fi
RAW="bench/results/analysis-cpu-${TAG}-raw.json"
mkdir -p bench/results

start=$(date +%s)
python bench/throughput.py --wait-idle "${WAIT_IDLE:-120}"
python -m pytest bench/test_analysis_cpu.py --benchmark-enable --benchmark-json="$RAW" \
    --benchmark-columns=min,median,max,rounds --benchmark-sort=name -p no:cacheprovider -q "$@"
python bench/report.py "$RAW" --suite analysis --tag "$TAG" >/dev/null
end=$(date +%s)
echo "raw: $RAW"
echo "report: bench/results/analysis-cpu-${TAG}.json bench/results/analysis-cpu$([ "${ANALYSIS_BENCH_QUICK:-0}" = "1" ] && echo -quick).md"
echo "total wall: $((end - start)) s"
