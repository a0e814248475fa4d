#!/usr/bin/env python3
"""Gathers what a GPU machine needs to run moe-serve's worker into one folder.

    tools/gpu_bundle.py BUILD_DIR SOURCE_DIR OUT_DIR   (./moe gpu-bundle OUT_DIR)

OUT_DIR/
  bin/       moe-expert-gpu, moe-gpu-check (stripped)
  lib/       every shared library they load that a GPU machine may lack
             (gRPC, protobuf, abseil, prometheus-cpp, OpenSSL, libstdc++,
             ...): not glibc's, and not the CUDA runtime or cuBLAS, which a
             GPU machine has with its driver and toolkit
  golden/    the golden files (each is also a checkpoint)
  python/    the Python client and the moe.v1 stubs
  tools/     export_checkpoint.py (writes a moe-serve checkpoint with torch)
  tests/gpu/ device_check.sh, serve_check.py
  MANIFEST   every file and its size

Run the worker with LD_LIBRARY_PATH=OUT_DIR/lib. Fails (exit 1) when the
folder would pass 50 MiB.
"""
import os
import re
import shutil
import subprocess
import sys

LIMIT = 50 << 20
BINARIES = ["moe-expert-gpu", "moe-gpu-check"]
# What the GPU machine has: glibc's libraries and the CUDA driver, runtime
# and cuBLAS.
SYSTEM = re.compile(
    r"^(linux-vdso|ld-linux|libc\.|libm\.|libpthread\.|libdl\.|librt\.|"
    r"libresolv\.|libutil\.|libnsl\.|libcuda\.|libcudart\.|libcublas\.|"
    r"libcublasLt\.)")


def needed(binary):
    """(soname, path) of every library `binary` loads, by ldd."""
    out = subprocess.run(["ldd", binary], check=True, capture_output=True,
                         text=True).stdout
    libs = []
    for line in out.splitlines():
        m = re.match(r"\s*(\S+)\s+=>\s+(\S+)", line)
        if m and m.group(2) != "not":
            libs.append((m.group(1), m.group(2)))
        elif "not found" in line:
            sys.exit("gpu-bundle: %s: %s" % (binary, line.strip()))
    return libs


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    build, source, out = sys.argv[1:]
    bin_dir = os.path.join(build, "bin")
    if os.path.exists(out):
        shutil.rmtree(out)
    for sub in ["bin", "lib", "golden", "python", "tools", "tests/gpu"]:
        os.makedirs(os.path.join(out, sub))
    copied = set()
    for name in BINARIES:
        src = os.path.join(bin_dir, name)
        if not os.path.exists(src):
            sys.exit("gpu-bundle: %s is not built (moe-gpu-check needs the "
                     "CUDA toolkit: MOE_CUDA)" % src)
        dst = os.path.join(out, "bin", name)
        subprocess.run(["strip", "--strip-unneeded", "-o", dst, src], check=True)
        for soname, path in needed(src):
            if SYSTEM.match(soname) or soname in copied:
                continue
            copied.add(soname)
            shutil.copyfile(os.path.realpath(path), os.path.join(out, "lib", soname))
    golden = os.path.join(source, "tests", "golden", "data")
    for f in sorted(os.listdir(golden)):
        if f.endswith(".safetensors") or f == "INDEX.json":
            shutil.copyfile(os.path.join(golden, f), os.path.join(out, "golden", f))
    shutil.copytree(os.path.join(source, "client", "python", "moe_client"),
                    os.path.join(out, "python", "moe_client"),
                    # The native transport is built for this machine's
                    # Python; the client falls back to grpcio without it.
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copyfile(os.path.join(source, "tools", "export_checkpoint.py"),
                    os.path.join(out, "tools", "export_checkpoint.py"))
    gpu_tests = os.path.join(source, "tests", "gpu")
    for f in sorted(os.listdir(gpu_tests)):
        if f.endswith((".sh", ".py")):
            shutil.copy2(os.path.join(gpu_tests, f), os.path.join(out, "tests", "gpu", f))
    total = 0
    lines = []
    for root, _, files in os.walk(out):
        for f in sorted(files):
            path = os.path.join(root, f)
            size = os.path.getsize(path)
            total += size
            lines.append("%10d  %s" % (size, os.path.relpath(path, out)))
    lines.append("%10d  total" % total)
    with open(os.path.join(out, "MANIFEST"), "w") as m:
        m.write("\n".join(lines) + "\n")
    print("gpu-bundle: %s: %d files, %.1f MiB (limit 50 MiB): %d libraries in lib/"
          % (out, len(lines) - 1, total / 2**20, len(copied)))
    if total > LIMIT:
        sys.exit("gpu-bundle: %.1f MiB is over the 50 MiB limit" % (total / 2**20))


if __name__ == "__main__":
    main()
