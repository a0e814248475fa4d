#!/bin/sh
# moe-gpu-check where no CUDA device is visible: exit 2, saying so, and
# saying why where the CUDA runtime only says "CUDA driver version is
# insufficient": no driver at all, or (OLD_DRIVER_DIR: a libcuda.so.1 for
# CUDA 12.4) a driver older than the runtime.
#   no_device_test.sh MOE_GPU_CHECK OLD_DRIVER_DIR
out=$("$1" 2>&1)
rc=$?
echo "$out"
[ "$rc" -eq 2 ] || { echo "FAIL: exit $rc, expected 2"; exit 1; }
echo "$out" | grep -q "no CUDA device visible" ||
  { echo "FAIL: no 'no CUDA device visible' in the output"; exit 1; }
if ! ldconfig -p | grep -q "libcuda\.so\.1 "; then
  echo "$out" | grep -q "no NVIDIA driver (libcuda.so.1" ||
    { echo "FAIL: without libcuda.so.1 the output does not say there is no driver"; exit 1; }
fi
old=$(LD_LIBRARY_PATH="$2" "$1" --probe 2>&1)
rc=$?
echo "$old"
[ "$rc" -eq 2 ] || { echo "FAIL: with the old driver: exit $rc, expected 2"; exit 1; }
echo "$old" | grep -q "the NVIDIA driver supports CUDA 12.4 at most, and this binary's CUDA runtime is 1[3-9]\.[0-9]*: install a newer driver" ||
  { echo "FAIL: with a driver for CUDA 12.4 the output does not name both versions"; exit 1; }
"$1" --help | grep -q "usage: moe-gpu-check" ||
  { echo "FAIL: --help prints no usage"; exit 1; }
echo "ok"
