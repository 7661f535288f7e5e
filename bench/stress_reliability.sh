#!/usr/bin/env bash
# Runs one reliability test N times (default 20), each under `stress --cpu 2` (two CPU hogs: on the 2-CPU build VM,
# the worker gets a fraction of a core), and prints pass/fail per run. By hand, not in `make test`:
#   bench/stress_reliability.sh [N] [TEST]
# TEST defaults to the two-worker kill test, where intermittent miscounts were once seen under load.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20}
TEST=${2:-tests/integration/test_reliability.py::test_a_killed_worker_s_partitions_are_taken_over_and_totals_stay_exact}
command -v stress >/dev/null || { echo "stress is missing: apt-get install stress" >&2; exit 2; }
mkdir -p .run/stress
passed=0
for i in $(seq 1 "$N"); do
    stress --cpu 2 --timeout 600 >/dev/null 2>&1 &
    hog=$!
    start=$(date +%s)
    if timeout 600 .venv/bin/python -m pytest -q -p no:cacheprovider "$TEST" >".run/stress/run-$i.txt" 2>&1; then
        passed=$((passed + 1)); outcome=pass
    else
        outcome="FAIL (.run/stress/run-$i.txt)"
    fi
    pkill -P "$hog" 2>/dev/null || true
    kill "$hog" 2>/dev/null || true
    wait "$hog" 2>/dev/null || true
    echo "run $i: $outcome in $(( $(date +%s) - start )) s"
done
echo "stress: $passed of $N passed"
[ "$passed" -eq "$N" ]
