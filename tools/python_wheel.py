#!/usr/bin/python3
"""Builds the Python client's wheels (./moe python-wheel DIR).

    tools/python_wheel.py SOURCE_DIR OUT_DIR

OUT_DIR/
  moe_serve_client-VERSION-py3-none-any.whl
      pure Python: forward() calls through grpcio; installs wherever
      grpcio, protobuf and numpy do (the attention side's own image)
  moe_serve_client-VERSION-cpXY-cpXY-linux_x86_64.whl
      where the build made the native transport: the same package with it,
      for this Python, on hosts with the build machine's gRPC C++ library
      (Debian bookworm's libgrpc++1.51); where that library is missing the
      module does not load and the client calls through grpcio

`pip install --no-index --find-links OUT_DIR moe-serve-client` takes the
native wheel where it fits the Python that installs, the pure one
elsewhere. Needs `./moe build` first (it generates the moe.v1 modules and
the version into client/python/moe_client/_generated), and pip, setuptools
and wheel (python3-pip, python3-setuptools, python3-wheel); nothing from
the network.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    source, out = sys.argv[1:]
    package = os.path.join(source, "client", "python")
    generated = os.path.join(package, "moe_client", "_generated")
    for must in ["version.py", "moe/v1/router_pb2.py"]:
        if not os.path.exists(os.path.join(generated, must)):
            sys.exit("python-wheel: %s is missing: run ./moe build first"
                     % os.path.join(generated, must))
    native = glob.glob(os.path.join(generated, "_transport*.so"))
    os.makedirs(out, exist_ok=True)
    for old in glob.glob(os.path.join(out, "moe_serve_client-*.whl")):
        os.remove(old)
    variants = [("pure", False)] + ([("native", True)] if native else [])
    for name, with_native in variants:
        with tempfile.TemporaryDirectory(prefix="moe-wheel-") as tmp:
            src = os.path.join(tmp, "src")
            # A copy: pip builds in the tree it is given (build/, *.egg-info).
            skip = ["__pycache__", "*.pyc", "native"]
            if not with_native:
                skip.append("_transport*.so")
            shutil.copytree(package, src, ignore=shutil.ignore_patterns(*skip))
            env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
            env.pop("MOE_CLIENT_NATIVE", None)
            if with_native:
                env["MOE_CLIENT_NATIVE"] = "1"
            r = subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                 "--no-build-isolation", "--no-index", "--wheel-dir", out, src],
                env=env, capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit("python-wheel: pip wheel (%s) failed:\n%s%s"
                         % (name, r.stdout, r.stderr))
    for wheel in sorted(glob.glob(os.path.join(out, "moe_serve_client-*.whl"))):
        print("python-wheel: %s (%.0f KiB)" % (wheel, os.path.getsize(wheel) / 1024))
    if not native:
        print("python-wheel: no native transport in this build (python3-dev): "
              "the pure wheel only")


if __name__ == "__main__":
    main()
