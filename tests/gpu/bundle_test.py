#!/usr/bin/python3
"""./moe gpu-bundle's folder works on its own: at most 50 MiB, and its
worker, started with LD_LIBRARY_PATH=DIR/lib and an otherwise empty
environment, serves a golden file (--device=host here) with every library
it maps either from DIR/lib or one a GPU machine has (glibc's, CUDA's);
and its device_check.sh, where no device is visible, finds every library
of its binaries (cuBLAS in Python's NVIDIA packages too) and stops at the
probe with exit 2, saying why.

    bundle_test.py BUILD_DIR SOURCE_DIR
"""
import os
import re
import subprocess
import sys
import tempfile
import time

SYSTEM = re.compile(
    r"/(ld-linux[^/]*|libc\.so[^/]*|libm\.so[^/]*|libpthread\.so[^/]*|"
    r"libdl\.so[^/]*|librt\.so[^/]*|libresolv\.so[^/]*|libcuda\.so[^/]*|"
    r"libcudart\.so[^/]*|libcublas\.so[^/]*|libcublasLt\.so[^/]*)$")


def fail(message):
    print("FAIL: " + message)
    sys.exit(1)


def main():
    build, source = sys.argv[1:3]
    with tempfile.TemporaryDirectory(prefix="moe-bundle-") as tmp:
        bundle = os.path.join(tmp, "bundle")
        subprocess.run(["/usr/bin/python3", os.path.join(source, "tools", "gpu_bundle.py"),
                        build, source, bundle], check=True)
        total = int(open(os.path.join(bundle, "MANIFEST")).read().split()[-2])
        print("bundle: %.1f MiB" % (total / 2**20))
        if total > 50 << 20:
            fail("the bundle is %d bytes, over 50 MiB" % total)
        for must in ["bin/moe-expert-gpu", "bin/moe-gpu-check",
                     "golden/A_moe_eval_nodrop.safetensors",
                     "python/moe_client/_generated/moe/v1/router_pb2.py",
                     "tests/gpu/device_check.sh", "tests/gpu/serve_check.py",
                     "tools/export_checkpoint.py"]:
            if not os.path.exists(os.path.join(bundle, must)):
                fail("the bundle lacks " + must)
        check_out = os.path.join(tmp, "check")
        # cuBLAS as CUDA 13's wheels lay it out (nvidia/cu13/lib, in a
        # namespace package with no nvidia/cublas): the script must find it.
        wheel_lib = os.path.join(tmp, "site", "nvidia", "cu13", "lib")
        os.makedirs(wheel_lib)
        real_cublas = "/usr/local/cuda/lib64/libcublas.so.13"
        if os.path.exists(real_cublas):
            os.symlink(real_cublas, os.path.join(wheel_lib, "libcublas.so.13"))
        else:
            open(os.path.join(wheel_lib, "libcublas.so.13"), "w").close()
        env = dict(os.environ, PYTHONPATH=os.path.join(tmp, "site"))
        r = subprocess.run(["bash", os.path.join(bundle, "tests", "gpu", "device_check.sh"),
                            check_out], capture_output=True, text=True, timeout=120, env=env)
        log = open(os.path.join(check_out, "device_check.log")).read()
        print(log, end="")
        if r.returncode != 2:
            fail("device_check.sh without a device: exit %d, not 2:\n%s%s"
                 % (r.returncode, r.stdout, r.stderr))
        for must in ["running from the bundle", "no CUDA device visible", "(exit 2)"]:
            if must not in log:
                fail("device_check.log lacks %r" % must)
        cublas_line = [l for l in log.splitlines() if "cuBLAS from:" in l]
        if not cublas_line or os.path.realpath(wheel_lib) not in cublas_line[0]:
            fail("device_check.sh did not find cuBLAS in Python's nvidia/cu13/lib: %s"
                 % cublas_line)
        if "libraries not found" in log:
            fail("device_check.sh found libraries missing")
        port_file = os.path.join(tmp, "port")
        log = open(os.path.join(tmp, "worker.log"), "w")
        env = {"LD_LIBRARY_PATH": os.path.join(bundle, "lib")}
        worker = subprocess.Popen(
            [os.path.join(bundle, "bin", "moe-expert-gpu"),
             "--checkpoint=" + os.path.join(bundle, "golden", "A_moe_eval_nodrop.safetensors"),
             "--device=host", "--host=127.0.0.1", "--port=0", "--port_file=" + port_file,
             "--metrics_port=-1"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 60
            while not os.path.exists(port_file):
                if worker.poll() is not None or time.time() > deadline:
                    fail("the bundled worker did not start:\n" + open(log.name).read())
                time.sleep(0.05)
            health = subprocess.run(
                [os.path.join(build, "bin", "moe-client"), "health",
                 "--target=127.0.0.1:" + open(port_file).read().strip(),
                 "--service=moe.v1.ExpertWorker"],
                capture_output=True, text=True)
            if health.returncode != 0:
                fail("the bundled worker is not healthy: " + health.stdout + health.stderr)
            mapped = set()
            for line in open("/proc/%d/maps" % worker.pid):
                parts = line.split()
                if len(parts) >= 6 and ".so" in parts[5]:
                    mapped.add(parts[5])
            lib = os.path.realpath(os.path.join(bundle, "lib")) + "/"
            outside = sorted(p for p in mapped
                             if not os.path.realpath(p).startswith(lib) and not SYSTEM.search(p))
            from_bundle = sorted(p for p in mapped if os.path.realpath(p).startswith(lib))
            print("the worker maps %d libraries: %d from the bundle, the rest glibc's or CUDA's"
                  % (len(mapped), len(from_bundle)))
            if outside:
                fail("the worker mapped libraries from outside the bundle:\n  "
                     + "\n  ".join(outside))
            if not from_bundle:
                fail("no library came from the bundle: the check would not see a leak")
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    print("PASS")


if __name__ == "__main__":
    main()
