#!/bin/bash
# Runs one libFuzzer target for SECONDS on a working copy of its seed
# corpus (new inputs go to WORK, never into the repository), then prints
# the executions, coverage and corpus size. A crash leaves its input in
# WORK/crashes and fails.
# Usage: run_fuzzer.sh FUZZER SEED_CORPUS WORK SECONDS [libFuzzer flags]
set -euo pipefail
fuzzer=$1 seeds=$2 work=$3 seconds=$4
shift 4
mkdir -p "$work/corpus" "$work/crashes"
log="$work/fuzz.log"
status=0
"$fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
  -max_len=65536 -print_final_stats=1 -artifact_prefix="$work/crashes/" \
  "$@" "$work/corpus" "$seeds" >"$log" 2>&1 || status=$?
name=$(basename "$fuzzer")
runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
units=$(ls "$work/corpus" | wc -l)
echo "$name: ${runs:-0} executions in ${seconds} s, coverage ${cov:-?} edges (${ft:-?} features), $units new corpus inputs"
if [ $status -ne 0 ]; then
  echo "$name FAILED (exit $status); last lines of $log:"
  tail -40 "$log"
  ls -l "$work/crashes"
fi
exit $status
