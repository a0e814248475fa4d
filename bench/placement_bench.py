#!/usr/bin/python3
"""Elastic placement on a skewed workload: static placement, then after
moe-balancer settles, in one run (BENCHMARKS.md, "Elastic placement").

  bench/placement_bench.py BIN_DIR [--seconds 8] [--json FILE] [--capacity-factor 8]
                           [--up-flag=--FLAG=V ...]

A demo model of one layer (dim 512 by default, the README configuration:
16 experts of hidden 1365, so that the experts' work dominates) on
`moe-up --workers=4 --balance`; every token of the traffic lies near the gate row of one of
experts 0-3 (worker 0's under the even first placement), so that worker 0
gets most of the work (policy all, capacity factor 8: the hot experts keep
their tokens instead of dropping them at the default 2). Measured twice, before the balancer's first load plan
and after it settled:
  - 1 x 256 at concurrency 16 and 1 x 32 at concurrency 8 (moe-client bench
    --input): throughput, p50, p99, failures;
  - each worker's tokens over the 1 x 256 run (moe_expert_tokens_total) and
    their imbalance ratio, (max - mean) / mean.
moe-client bench counts a failed or degraded answer as an error (the values
are compared with the reference by tests/integration/placement_test.cc). Bounded: each load phase runs --seconds, the wait for
the balancer at most 90 s. Loopback only.
"""

import argparse
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

EXPERTS, WORKERS, HOT = 16, 4, [0, 1, 2, 3]


def read_safetensors(path, name_suffix):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        for name, meta in header.items():
            if name.endswith(name_suffix):
                lo, hi = meta["data_offsets"]
                f.seek(base + lo)
                assert meta["dtype"] == "F32", meta
                return np.frombuffer(f.read(hi - lo), np.float32).reshape(meta["shape"])
    raise KeyError(name_suffix)


def write_x(path, x):
    x = np.ascontiguousarray(x, np.float32)
    header = json.dumps({"x": {"dtype": "F32", "shape": list(x.shape),
                               "data_offsets": [0, x.nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + x.tobytes())


def skewed_inputs(gate, tokens, k, rng):
    """k inputs of `tokens` tokens, each near a hot expert's gate row."""
    dim = gate.shape[1]
    rows = gate[HOT] / np.linalg.norm(gate[HOT], axis=1, keepdims=True) * 4
    pick = rng.integers(0, len(HOT), size=(k, tokens))
    # Noise of norm about 2.4 whatever the dim: the hot expert stays first,
    # the second choice varies.
    return rows[pick] + 2.4 / np.sqrt(dim) * rng.standard_normal((k, tokens, dim))


def worker_tokens(endpoints):
    out = []
    for i in range(WORKERS):
        text = urllib.request.urlopen(
            "http://%s/metrics" % endpoints["worker%d_metrics" % i], timeout=5).read().decode()
        out.append(sum(float(l.split()[-1]) for l in text.splitlines()
                       if l.startswith("moe_expert_tokens_total{")))
    return out


def imbalance(loads):
    mean = sum(loads) / len(loads)
    return (max(loads) - mean) / mean if mean > 0 else 0.0


CAPACITY_FACTOR = 8  # --capacity-factor


def bench(bin_dir, router, x_path, concurrency, seconds, tmp, tag):
    out = os.path.join(tmp, tag + ".json")
    subprocess.run([os.path.join(bin_dir, "moe-client"), "bench", "--target=" + router,
                    "--input=" + x_path, "--concurrency=%d" % concurrency,
                    "--duration=%g" % seconds, "--policy=all",
                    "--capacity_factor=%g" % CAPACITY_FACTOR, "--json_out=" + out],
                   check=True, capture_output=True, timeout=seconds + 120)
    with open(out) as f:
        return json.load(f)


def phase(bin_dir, router, endpoints, inputs, seconds, tmp, tag):
    before = worker_tokens(endpoints)
    wide = bench(bin_dir, router, inputs["256"], 16, seconds, tmp, tag + "-256")
    after = worker_tokens(endpoints)
    narrow = bench(bin_dir, router, inputs["32"], 8, seconds, tmp, tag + "-32")
    loads = [a - b for a, b in zip(after, before)]
    return {"worker_tokens": loads, "imbalance": imbalance(loads),
            "1x256_c16": wide, "1x32_c8": narrow}


def main():
    global CAPACITY_FACTOR
    parser = argparse.ArgumentParser()
    parser.add_argument("bin_dir")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--json")
    parser.add_argument("--capacity-factor", type=float, default=8,
                        help="the requests' capacity factor (8: the hot experts keep "
                        "their tokens; 2, the default of the reference, drops most)")
    parser.add_argument("--up-flag", action="append", default=[],
                        help="a flag for moe-up (e.g. --join_open_batches=false); repeatable")
    args = parser.parse_args()
    CAPACITY_FACTOR = args.capacity_factor
    tmp = tempfile.mkdtemp(prefix="moe-placement-bench-")
    up = None
    try:
        model = os.path.join(tmp, "model.safetensors")
        subprocess.run([os.path.join(args.bin_dir, "moe-run"), "demo-checkpoint",
                        "--output=" + model, "--dim=%d" % args.dim,
                        "--num_experts=%d" % EXPERTS], check=True, capture_output=True)
        gate = read_safetensors(model, "gate.to_gates.weight")
        rng = np.random.default_rng(5)
        inputs = {}
        for n in (256, 32):
            inputs[str(n)] = os.path.join(tmp, "x%d.safetensors" % n)
            write_x(inputs[str(n)], skewed_inputs(gate, n, 16, rng))
        log_path = os.path.join(tmp, "moe-up.log")
        log = open(log_path, "w")
        endpoints_file = os.path.join(tmp, "endpoints")
        # The balancer's first load plan comes after the static phase.
        rebalance = int(2 * args.seconds + 10)
        up = subprocess.Popen(
            [os.path.join(args.bin_dir, "moe-up"), "--checkpoint=" + model,
             "--workers=%d" % WORKERS, "--port=0", "--endpoints_file=" + endpoints_file,
             "--work_dir=" + os.path.join(tmp, "up"), "--balance",
             "--balance_flags=--interval=1s,--rebalance_every=%ds,--load_half_life=5s,"
             "--settle=2500ms,--dead_after=3s" % rebalance] + args.up_flag,
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while not os.path.exists(endpoints_file):
            if up.poll() is not None or time.time() > deadline:
                sys.exit("moe-up did not start:\n" + open(log_path).read())
            time.sleep(0.2)
        endpoints = dict(l.split() for l in open(endpoints_file).read().splitlines())
        router = endpoints["router"]
        start = time.time()
        static = phase(args.bin_dir, router, endpoints, inputs, args.seconds, tmp, "static")
        # Load while the balancer decides and moves, bounded.
        keep = subprocess.Popen(
            [os.path.join(args.bin_dir, "moe-client"), "bench", "--target=" + router,
             "--input=" + inputs["256"], "--concurrency=4", "--duration=90",
             "--policy=all", "--capacity_factor=%g" % CAPACITY_FACTOR],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        moved = None
        while time.time() < start + rebalance + 90:
            text = open(log_path).read()
            if "placement change load" in text:
                moved = time.time() - start
                break
            time.sleep(0.5)
        time.sleep(6)  # settle + the routers' probes
        keep.terminate()
        keep.wait(timeout=30)
        balanced = phase(args.bin_dir, router, endpoints, inputs, args.seconds, tmp, "balanced")
        text = open(log_path).read()
        plan = re.findall(r"placement change load: worst imbalance ([0-9.]+) -> ([0-9.]+)", text)
        result = {"dim": args.dim, "up_flags": args.up_flag,
                  "capacity_factor": CAPACITY_FACTOR,
                  "static": static, "balanced": balanced,
                  "load_plan_at_s": moved, "planned": plan,
                  "throughput_gain_1x256": balanced["1x256_c16"]["tokens_per_s"] /
                  static["1x256_c16"]["tokens_per_s"],
                  "throughput_gain_1x32": balanced["1x32_c8"]["tokens_per_s"] /
                  static["1x32_c8"]["tokens_per_s"]}
        for name, p in (("static", static), ("balanced", balanced)):
            print("%-9s imbalance %.3f  worker tokens %s" % (
                name, p["imbalance"], " ".join("%d" % t for t in p["worker_tokens"])))
            for row in ("1x256_c16", "1x32_c8"):
                r = p[row]
                print("          %-9s %8.0f tokens/s  p50 %7.2f ms  p99 %7.2f ms  errors %d" % (
                    row, r["tokens_per_s"], r["p50_ms"], r["p99_ms"], r.get("errors", 0)))
        print("load plan applied %s s after start; planned %s" % (
            "%.0f" % moved if moved else "never", plan))
        print("throughput balanced / static: 1x256 %.2fx, 1x32 %.2fx" % (
            result["throughput_gain_1x256"], result["throughput_gain_1x32"]))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    finally:
        if up is not None and up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                up.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
