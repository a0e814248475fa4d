#!/bin/bash
# The one script to run on a GPU machine (docs/gpu.md): moe-gpu-check's
# parity checks and throughput table, in under 5 minutes, written to OUT.
#   tests/gpu/device_check.sh OUT
# It uses build/bin/moe-gpu-check as built and carried from a development
# machine; should that not start there (other system libraries), it builds
# moe-gpu-check from experts/cuda/ with CMake and nvcc alone. Nothing is
# installed. With compute-sanitizer present, a memcheck of the parity
# checks runs too.
set -uo pipefail
OUT="${1:?usage: tests/gpu/device_check.sh OUT}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
mkdir -p "$OUT"
log() { echo "device_check: $*" | tee -a "$OUT/device_check.log"; }
start=$(date +%s)

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
  --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || log "nvidia-smi failed"
cat "$OUT/nvidia-smi.csv"

# cuBLAS where the loader may not look: the CUDA toolkit's or Python's.
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib \
         /usr/local/cuda/targets/x86_64-linux/lib \
         $(python3 -c 'import nvidia.cublas, os; print(os.path.dirname(nvidia.cublas.__file__) + "/lib")' 2>/dev/null); do
  [ -e "$d/libcublas.so.13" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done

CHECK="$ROOT/build/bin/moe-gpu-check"
probe=$("$CHECK" --probe 2>&1); rc=$?
if [ $rc -ne 0 ] && [ $rc -ne 2 ] || [ ! -x "$CHECK" ]; then
  log "the carried moe-gpu-check does not start here (exit $rc: $probe); building it with nvcc"
  cmake -S "$ROOT/experts/cuda" -B /tmp/moe-gpu-build -DCMAKE_BUILD_TYPE=Release \
    > "$OUT/build.log" 2>&1 &&
    cmake --build /tmp/moe-gpu-build --parallel "$(nproc)" >> "$OUT/build.log" 2>&1 ||
    { log "build failed (see build.log)"; tail -20 "$OUT/build.log"; exit 1; }
  CHECK=/tmp/moe-gpu-build/moe-gpu-check
  probe=$("$CHECK" --probe 2>&1); rc=$?
fi
log "device: $probe (exit $rc)"
[ $rc -eq 0 ] || exit 2

GOLDEN=("$ROOT"/tests/golden/data/*.safetensors)
timeout 200 "$CHECK" --out "$OUT" "${GOLDEN[@]}"
status=$?
log "moe-gpu-check exit $status after $(( $(date +%s) - start )) s"

if command -v compute-sanitizer >/dev/null && [ $(( $(date +%s) - start )) -lt 200 ]; then
  timeout 90 compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$CHECK" --no_throughput "${GOLDEN[0]}" > "$OUT/memcheck.txt" 2>&1
  log "compute-sanitizer memcheck exit $? (9: errors found; see memcheck.txt)"
  tail -5 "$OUT/memcheck.txt"
fi
log "done in $(( $(date +%s) - start )) s"
exit $status
