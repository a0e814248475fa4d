#!/bin/sh
# moe-gpu-check where no CUDA device is visible: exit 2, saying so.
out=$("$1" 2>&1)
rc=$?
echo "$out"
[ "$rc" -eq 2 ] || { echo "FAIL: exit $rc, expected 2"; exit 1; }
echo "$out" | grep -q "no CUDA device visible" ||
  { echo "FAIL: no 'no CUDA device visible' in the output"; exit 1; }
"$1" --help | grep -q "usage: moe-gpu-check" ||
  { echo "FAIL: --help prints no usage"; exit 1; }
echo "ok"
