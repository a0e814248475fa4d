#!/usr/bin/python3
"""serve_check.py against this build's moe-expert-gpu on the host's
reference experts (--device host --quick), from a bundle-shaped folder of
links into the build: the served-path check works before it reaches a GPU.

    serve_check_test.py BUILD_DIR SOURCE_DIR
"""
import json
import os
import subprocess
import sys
import tempfile


def main():
    build, source = sys.argv[1:3]
    with tempfile.TemporaryDirectory(prefix="serve-check-test-") as tmp:
        bundle = os.path.join(tmp, "bundle")
        os.makedirs(os.path.join(bundle, "bin"))
        os.makedirs(os.path.join(bundle, "lib"))
        os.symlink(os.path.join(build, "bin", "moe-expert-gpu"),
                   os.path.join(bundle, "bin", "moe-expert-gpu"))
        os.symlink(os.path.join(source, "tests", "golden", "data"),
                   os.path.join(bundle, "golden"))
        os.symlink(os.path.join(source, "tools"), os.path.join(bundle, "tools"))
        out = os.path.join(tmp, "out")
        r = subprocess.run(["/usr/bin/python3",
                            os.path.join(source, "tests", "gpu", "serve_check.py"),
                            "--bundle", bundle, "--out", out, "--device", "host",
                            "--quick"])
        if r.returncode != 0:
            print("FAIL: serve_check.py exit %d" % r.returncode)
            sys.exit(1)
        text = open(os.path.join(out, "serve_check.json")).read()
        for key in ['"parity"', '"timing"', '"stage_share"', '"compute"']:
            if key not in text:
                print("FAIL: the report lacks " + key)
                sys.exit(1)
        report = json.loads(text)
        per_expert = sorted(p["rows_per_expert"] for p in report["parity"])
        if per_expert != [4, 24]:
            print("FAIL: parity ran with %s rows per expert, not 4 (the "
                  "small-rows kernels' size) and 24" % per_expert)
            sys.exit(1)
        for p in report["parity"]:
            if sorted(p.get("passes", {})) != ["gemm", "small_rows"]:
                print("FAIL: parity did not read the worker's "
                      "moe_expert_gpu_passes_total by path: %s" % p)
                sys.exit(1)
    print("PASS")


if __name__ == "__main__":
    main()
