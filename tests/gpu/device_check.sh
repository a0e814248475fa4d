#!/bin/bash
# The one script to run on a GPU machine (docs/gpu.md), in under 6 minutes,
# everything written to OUT:
#   1. moe-gpu-check: parity on every golden file (float32 and bfloat16) and
#      the kernels' throughput table;
#   2. the served path: moe-expert-gpu --device=cuda answering RunExperts
#      over loopback, checked against torch and timed, with the machine's
#      limits measured in the same run (serve_check.py).
# Run it from a bundle (./moe gpu-bundle DIR; then DIR/tests/gpu/
# device_check.sh OUT), whose binaries run on the bundle's own libraries, or
# from a source tree with build/bin. Should the carried moe-gpu-check not
# start, it is built from experts/cuda/ (the tree's, or that of the
# repository the bundle sits in) with CMake and nvcc alone.
# Nothing is installed. With compute-sanitizer present and time left, a
# memcheck of the parity checks runs too, and with ncu, the kernels of a
# decode call and of the largest one are profiled (ncu.txt). At most 8
# files are written to OUT.
set -uo pipefail
OUT="${1:?usage: tests/gpu/device_check.sh OUT}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
log() { echo "device_check: $*" | tee -a "$OUT/device_check.log"; }
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }

if [ -x "$ROOT/bin/moe-gpu-check" ]; then
  BUNDLE="$ROOT"
  CHECK="$ROOT/bin/moe-gpu-check"
  GOLDEN=("$ROOT"/golden/*.safetensors)
  BUNDLE_LIB="$ROOT/lib"
  # The device tool copies the repository with the bundle inside it.
  SOURCE="$ROOT/../experts/cuda"
  log "running from the bundle $ROOT"
else
  BUNDLE=""
  CHECK="$ROOT/build/bin/moe-gpu-check"
  GOLDEN=("$ROOT"/tests/golden/data/*.safetensors)
  BUNDLE_LIB=""
  SOURCE="$ROOT/experts/cuda"
fi

log "nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
  --format=csv,noheader 2>&1)"

# cuBLAS where the loader may not look: the CUDA toolkit's, Python's NVIDIA
# packages' (nvidia/cublas/lib in CUDA 12's wheels, nvidia/cu13/lib in
# 13's: every folder of the namespace is searched) or, when neither has it,
# wherever a bounded search finds it.
cublas_dirs() {
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib \
           /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -e "$d/libcublas.so.13" ] && echo "$d"
  done
  python3 - <<'PY' 2>/dev/null
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit
for base in nvidia.__path__:
    for p in sorted(glob.glob(os.path.join(base, "**", "libcublas.so.13"), recursive=True)):
        print(os.path.dirname(p))
PY
}
found=$(cublas_dirs)
if [ -z "$found" ] && ! ldconfig -p 2>/dev/null | grep -q "libcublas.so.13 "; then
  found=$(timeout 30 find /usr/local /opt /usr/lib /usr/lib64 -maxdepth 9 \
    -name libcublas.so.13 -printf '%h\n' 2>/dev/null)
fi
CUDA_LIBS=""
for d in $found; do
  d=$(readlink -f "$d")
  case ":$CUDA_LIBS:" in *":$d:"*) ;; *) CUDA_LIBS="${CUDA_LIBS:+$CUDA_LIBS:}$d" ;; esac
done
# Only our binaries load the bundle's libraries (Debian's libstdc++,
# OpenSSL, ...) and those folders: python3, torch and grpcio keep the
# machine's own.
BIN_PATH="$BUNDLE_LIB"
for p in "$CUDA_LIBS" "${LD_LIBRARY_PATH:-}"; do
  [ -n "$p" ] && BIN_PATH="${BIN_PATH:+$BIN_PATH:}$p"
done
check() { LD_LIBRARY_PATH="$BIN_PATH" "$CHECK" "$@"; }
log "cuBLAS from: ${CUDA_LIBS:-the default search path}"
if [ -n "$BUNDLE" ]; then
  missing=$(LD_LIBRARY_PATH="$BIN_PATH" ldd "$ROOT/bin/moe-expert-gpu" "$CHECK" 2>&1 | grep "not found")
  [ -z "$missing" ] || log "libraries not found: $missing"
fi

probe=$(check --probe 2>&1); rc=$?
if { [ $rc -ne 0 ] && [ $rc -ne 2 ]; } || [ ! -x "$CHECK" ]; then
  if [ -d "$SOURCE" ]; then
    log "the carried moe-gpu-check does not start here (exit $rc: $probe); building it with nvcc"
    if ! command -v nvcc >/dev/null && [ -z "${CUDACXX:-}" ]; then
      for c in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
        [ -x "$c" ] && { export CUDACXX="$c"; break; }
      done
    fi
    cmake -S "$SOURCE" -B /tmp/moe-gpu-build -DCMAKE_BUILD_TYPE=Release \
      > "$OUT/build.log" 2>&1 &&
      cmake --build /tmp/moe-gpu-build --parallel "$(nproc)" >> "$OUT/build.log" 2>&1 ||
      { log "build failed (see build.log)"; tail -20 "$OUT/build.log"; exit 1; }
    CHECK=/tmp/moe-gpu-build/moe-gpu-check
    probe=$(check --probe 2>&1); rc=$?
  fi
fi
log "device: $probe (exit $rc)"
[ $rc -eq 0 ] || exit 2

timeout 150 env LD_LIBRARY_PATH="$BIN_PATH" "$CHECK" --out "$OUT" "${GOLDEN[@]}"
status=$?
log "moe-gpu-check exit $status after $(elapsed) s"

if [ -n "$BUNDLE" ]; then
  timeout 180 python3 "$ROOT/tests/gpu/serve_check.py" --bundle "$BUNDLE" \
    --out "$OUT" --device cuda --library_path "$CUDA_LIBS" 2>&1 | tee "$OUT/serve_check.txt"
  serve=${PIPESTATUS[0]}
  log "serve_check exit $serve after $(elapsed) s"
  [ $serve -eq 0 ] || status=$serve
else
  log "the served path needs the bundle (./moe gpu-bundle DIR): not run"
fi

if command -v compute-sanitizer >/dev/null && [ "$(elapsed)" -lt 300 ]; then
  # The tool follows env's exec into the check; it keeps its own libraries.
  timeout 50 compute-sanitizer --tool memcheck --error-exitcode 9 \
    env LD_LIBRARY_PATH="$BIN_PATH" "$CHECK" --no_throughput "${GOLDEN[0]}" > "$OUT/memcheck.txt" 2>&1
  log "compute-sanitizer memcheck exit $? (9: errors found; see memcheck.txt)"
  tail -5 "$OUT/memcheck.txt"
fi
# Where the decode and the largest calls' kernels stand against the
# hardware's limits (Speed Of Light: memory and compute throughput as shares
# of peak), where ncu can read the counters (not under gVisor).
if command -v ncu >/dev/null && [ "$(elapsed)" -lt 320 ]; then
  for n in 32 65536; do
    echo "=== moe-gpu-check --profile $n"
    timeout 40 ncu --clock-control none --target-processes all \
      --section SpeedOfLight --print-summary none \
      env LD_LIBRARY_PATH="$BIN_PATH" "$CHECK" --profile "$n" 2>&1
    echo "=== exit $?"
  done > "$OUT/ncu.txt"
  log "ncu: $(grep -c "Section: GPU Speed Of Light" "$OUT/ncu.txt") kernels profiled (ncu.txt)"
  grep -E "^=== exit|==ERROR==" "$OUT/ncu.txt" | head -6
fi
log "done in $(elapsed) s"
exit $status
