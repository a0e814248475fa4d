#!/usr/bin/python3
"""./moe bench: the machine's GEMM limit, the in-process engine and the
distributed path, measured in one run on this machine, as a table and JSON.

  (a) dense fp32 GEMM rate at the expert shapes (moe-bench)
  (b) in-process forward, README configuration x [4, 1024, 512] (moe-bench)
  (c) the same through moe-up (router + 2 workers on loopback)
  (d) where the router's time goes (moe_router_stage_seconds_total)
  (e) small-request latency, 1 x 32 tokens, at 1 and 8 concurrent clients
  (f) throughput at concurrency 1, 4 and 16 (1 x 256 tokens)
  (g) bf16 on the router-to-worker hop: throughput and accuracy against fp32
  (h) the concurrent loads of (e) and (f) again with dynamic batching off
  (i) a decode-like step of a 4-layer model: one 1 x 32 call per layer,
      against one layer's call alone
  (j) bf16 compute (--compute_dtype=bfloat16) in-process and through
      moe-up: throughput and accuracy against fp32
  (l) decode latency: a tiny model (dim 64, 8 experts: the experts' work is
      negligible) through moe-up, 1 x 32 at concurrency 1 and 4, against
      gRPC's bare unary round trip (grpc.health.v1 Check) on the same
      channel; the same from the Python client
  (m) the REST port from Python (http.client), 1 x 32 tokens on (c)'s
      router: x and y as JSON numbers against binary tensor data
      (bench/rest_infer.py), beside (e)'s gRPC call

Usage: bench/run_bench.py BIN_DIR [--quick] [--json]
       bench/run_bench.py BIN_DIR --decode [--quick] [--json]
       bench/run_bench.py BIN_DIR --soak SECONDS [--json]
--json saves the results under bench/results/ with the machine's description.
--decode runs row (l) alone (under a minute).
--soak runs moe-up under 1 x 256-token requests at concurrency 16 for
SECONDS (after a 30 s warm-up) and reports each process's resident memory
over time: a leak shows as growth.
"""

import argparse
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def machine():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {"cpus": os.cpu_count(), "cpu_model": model,
            "memory_gib": round(mem_kb / 2**20, 1), "kernel": platform.release()}


def gbench(bin_dir, flt, min_time):
    out = run([os.path.join(bin_dir, "moe-bench"), "--benchmark_filter=" + flt,
               "--benchmark_format=json", "--benchmark_min_time=%g" % min_time])
    return {b["name"]: b for b in json.loads(out.stdout)["benchmarks"]}


def metrics_text(address):
    """The Prometheus text a process serves on ADDRESS."""
    with urllib.request.urlopen("http://%s/metrics" % address, timeout=5) as r:
        return r.read().decode()


def scrape(address):
    text = metrics_text(address)
    stages, requests, batch = {}, 0.0, {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        m = re.match(r'moe_router_stage_seconds_total\{stage="(\w+)"\} (\S+)', line)
        if m:
            stages[m.group(1)] = float(m.group(2))
        m = re.match(r'moe_router_requests_total\{code="OK"\} (\S+)', line)
        if m:
            requests = float(m.group(1))
        m = re.match(r'moe_router_worker_batch_forwards_(sum|count) (\S+)', line)
        if m:
            batch[m.group(1)] = float(m.group(2))
    return stages, requests, batch


def status_mb(pid, key):
    """A memory line of /proc/PID/status (VmHWM: peak RSS, VmRSS: now), MB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb(pid):
    return status_mb(pid, "VmHWM")


def forward_cpu_seconds(address):
    """moe_router_forward_cpu_seconds_total: the forwards' threads' CPU time."""
    for line in metrics_text(address).splitlines():
        if line.startswith("moe_router_forward_cpu_seconds_total "):
            return float(line.split()[1])
    return 0.0


def cpu_seconds(pid):
    """User + system CPU time of process PID, all its threads, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_compute(addresses):
    """Each worker's moe_expert_call_duration_seconds{stage="compute"}: (sum, count)."""
    out = []
    for address in addresses:
        got = {"sum": 0.0, "count": 0.0}
        for line in metrics_text(address).splitlines():
            m = re.match(r'moe_expert_call_duration_seconds_(sum|count)\{stage="compute"\} (\S+)', line)
            if m:
                got[m.group(1)] = float(m.group(2))
        out.append(got)
    return out


def children(pid):
    out = run(["ps", "-o", "pid=,comm=", "--ppid", str(pid)]).stdout
    return [(int(p), c) for p, c in (l.split(None, 1) for l in out.splitlines())]


class MoeUp:
    def __init__(self, bin_dir, tmp, name, flags=()):
        self.tmp = tmp
        port_file = os.path.join(tmp, "up-%s.port" % name)
        self.endpoints_file = os.path.join(tmp, "endpoints-" + name)
        self.log = open(os.path.join(tmp, "moe-up-%s.log" % name), "w")
        self.proc = subprocess.Popen(
            [os.path.join(bin_dir, "moe-up"), "--workers=2", "--port=0",
             "--port_file=" + port_file, "--endpoints_file=" + self.endpoints_file]
            + (["--demo_layers=1"] if not any(f.startswith("--demo_layers") for f in flags)
               else []) + list(flags),
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while not os.path.exists(port_file):
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit("moe-up did not start; see " + self.log.name)
            time.sleep(0.2)
        with open(self.endpoints_file) as f:
            self.endpoints = dict(line.split() for line in f)

    def pids(self):
        return children(self.proc.pid)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()


def read_y(path):
    """output.y of a moe-client output file, as float32 numpy."""
    import numpy as np
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    e = header["output.y"]
    begin, end = e["data_offsets"]
    return np.frombuffer(raw[8 + n + begin:8 + n + end], dtype="<f4").reshape(e["shape"])


def forward_y(bin_dir, target, tmp, name):
    out = os.path.join(tmp, name + ".safetensors")
    subprocess.run([os.path.join(bin_dir, "moe-client"), "forward", "--target=" + target,
                    "--random_input=4x1024", "--input_seed=1", "--seed=1",
                    "--output=" + out, "--summary=false"],
                   check=True, capture_output=True)
    return read_y(out)


def client_bench(bin_dir, target, shape, concurrency, duration, tmp, flags=()):
    out = os.path.join(tmp, "bench.json")
    print("  moe-client bench --shape=%s --concurrency=%d --duration=%g %s"
          % (shape, concurrency, duration, " ".join(flags)), file=sys.stderr, flush=True)
    subprocess.run([os.path.join(bin_dir, "moe-client"), "bench", "--target=" + target,
                    "--shape=" + shape, "--concurrency=%d" % concurrency,
                    "--duration=%g" % duration, "--seed=1", "--json_out=" + out]
                   + list(flags), check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        return json.load(f)


def layer_roundtrip(bin_dir, tmp, quick):
    """Row (l): the fixed cost of one layer's round trip. A forward crosses
    two unary hops (client -> router, router -> workers), so the floor is
    twice gRPC's bare round trip."""
    tiny = os.path.join(tmp, "tiny.safetensors")
    run([os.path.join(bin_dir, "moe-run"), "demo-checkpoint", "--output=" + tiny,
         "--dim=64", "--num_experts=8"])
    up = MoeUp(bin_dir, tmp, "tiny", ["--checkpoint=" + tiny])
    seconds = 3 if quick else 8
    try:
        target = up.endpoints["router"]
        client_bench(bin_dir, target, "1x32", 1, 1, tmp)  # warm-up
        bare = client_bench(bin_dir, target, "1x32", 1, seconds, tmp, ["--rpc=health"])
        c1 = client_bench(bin_dir, target, "1x32", 1, seconds, tmp)
        c4 = client_bench(bin_dir, target, "1x32", 4, seconds, tmp)
        # Python against C++ in turns: the two clients measured one after
        # the other in one long run each differed by +60 to +330 us on the
        # same binaries, as the shared machine's speed moved between them.
        # Each round runs the C++ client and then the Python one for the
        # same time; the difference is taken per round, its median kept.
        rounds = 2 if quick else 4
        paired = []
        for _ in range(rounds):
            cpp = client_bench(bin_dir, target, "1x32", 1, seconds / rounds, tmp)
            py = json.loads(run(["/usr/bin/python3",
                                 os.path.join(HERE, "python_roundtrip.py"), target,
                                 "--seconds=%g" % (seconds / rounds), "--json"]).stdout)
            paired.append((py["forward"]["p50_us"] - cpp["p50_ms"] * 1e3, py,
                           py["forward_grpcio"]["p50_us"] - cpp["p50_ms"] * 1e3))
    finally:
        up.stop()
    grpcio_over_cpp = sorted(d for _, _, d in paired)[len(paired) // 2]
    paired.sort(key=lambda d: d[0])
    python_over_cpp, py, _ = paired[len(paired) // 2]
    out = {
        "grpc_roundtrip_p50_us": bare["p50_ms"] * 1e3,
        "grpc_roundtrip_p99_us": bare["p99_ms"] * 1e3,
        "layer_roundtrip_tiny_p50_us": c1["p50_ms"] * 1e3,
        "layer_roundtrip_tiny_p99_us": c1["p99_ms"] * 1e3,
        "layer_roundtrip_tiny_c4_p50_us": c4["p50_ms"] * 1e3,
        "layer_roundtrip_tiny_c4_p99_us": c4["p99_ms"] * 1e3,
        "layer_roundtrip_tiny_c4_requests_per_s": c4["requests_per_s"],
        "python_grpc_roundtrip_p50_us": py["health"]["p50_us"],
        "python_layer_roundtrip_tiny_request_p50_us": py["request"]["p50_us"],
        "python_layer_roundtrip_tiny_p50_us": py["forward"]["p50_us"],
        "python_layer_roundtrip_tiny_p99_us": py["forward"]["p99_us"],
        # forward()'s transport (native: gRPC's C++ library; grpcio), and
        # the same calls through grpcio in the same turns.
        "python_transport": py["transport"],
        "python_grpcio_layer_roundtrip_tiny_p50_us": py["forward_grpcio"]["p50_us"],
    }
    floor = 2 * out["grpc_roundtrip_p50_us"]
    out["layer_roundtrip_over_transport"] = out["layer_roundtrip_tiny_p50_us"] / floor
    out["layer_roundtrip_p99_over_transport"] = out["layer_roundtrip_tiny_p99_us"] / floor
    out["python_over_cpp_us"] = python_over_cpp
    out["python_over_cpp_rounds_us"] = [d for d, _, _ in paired]
    out["python_grpcio_over_cpp_us"] = grpcio_over_cpp
    return out


def decode_only(args):
    r = {"machine": machine(), "quick": args.quick,
         "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    with tempfile.TemporaryDirectory(prefix="moe-bench-") as tmp:
        r.update(layer_roundtrip(args.bin_dir, tmp, args.quick))
    for k, v in r.items():
        if k != "machine":
            print("%-45s %s" % (k, "%.2f" % v if isinstance(v, float) else v))
    save(r, args, "decode")


def rss_mb(pid):
    return status_mb(pid, "VmRSS")


def soak(args):
    """RSS of router and workers over a long run at concurrency 16."""
    r = {"machine": machine(), "soak_seconds": args.soak,
         "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    with tempfile.TemporaryDirectory(prefix="moe-soak-") as tmp:
        up = MoeUp(args.bin_dir, tmp, "soak")
        try:
            target = up.endpoints["router"]
            names = {}
            for pid, comm in up.pids():
                names[pid] = "router" if comm.startswith("moe-router") else "worker%d" % (
                    sum(1 for n in names.values() if n.startswith("worker")))
            print("warm-up: 30 s", file=sys.stderr, flush=True)
            client_bench(args.bin_dir, target, "1x256", 16, 30, tmp)
            out = os.path.join(tmp, "soak.json")
            load = subprocess.Popen(
                [os.path.join(args.bin_dir, "moe-client"), "bench", "--target=" + target,
                 "--shape=1x256", "--concurrency=16", "--duration=%d" % args.soak,
                 "--seed=1", "--json_out=" + out],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            samples = []
            start = time.time()
            while load.poll() is None:
                samples.append([round(time.time() - start)] +
                               [rss_mb(pid) for pid in sorted(names)])
                print("  %4d s  " % samples[-1][0] + "  ".join(
                    "%s %.1f MB" % (names[pid], v) for pid, v in zip(sorted(names), samples[-1][1:])),
                    file=sys.stderr, flush=True)
                time.sleep(min(30, max(args.soak / 10, 1)))
            samples.append([round(time.time() - start)] + [rss_mb(pid) for pid in sorted(names)])
            with open(out) as f:
                r["load"] = json.load(f)
        finally:
            up.stop()
    r["rss_mb"] = {names[pid]: {"start": samples[0][i + 1], "end": samples[-1][i + 1],
                                "max": max(s[i + 1] for s in samples)}
                   for i, pid in enumerate(sorted(names))}
    for name, v in r["rss_mb"].items():
        print("%-8s RSS %.1f -> %.1f MB (max %.1f): %+.1f MB (%+.1f%%)" % (
            name, v["start"], v["end"], v["max"], v["end"] - v["start"],
            100 * (v["end"] - v["start"]) / v["start"]))
    print("load: %d requests, %.1f req/s, p99 %.1f ms, %d errors" % (
        r["load"]["ok"], r["load"]["requests_per_s"], r["load"]["p99_ms"], r["load"]["errors"]))
    save(r, args, "soak")


def save(r, args, kind):
    if args.json:
        os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
        path = os.path.join(HERE, "results", "%s-%s.json" % (
            kind, datetime.datetime.now().strftime("%Y%m%d-%H%M%S")))
        with open(path, "w") as f:
            json.dump(r, f, indent=2)
        print("saved " + path)
    print(json.dumps(r))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bin_dir")
    ap.add_argument("--quick", action="store_true", help="a shorter run (under 2 minutes)")
    ap.add_argument("--json", action="store_true", help="save JSON under bench/results/")
    ap.add_argument("--soak", type=int, metavar="SECONDS",
                    help="memory over a long run at concurrency 16 instead")
    ap.add_argument("--decode", action="store_true", help="row (l) alone")
    args = ap.parse_args()
    if args.soak:
        return soak(args)
    if args.decode:
        return decode_only(args)
    q = args.quick
    r = {"machine": machine(), "quick": q,
         "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}

    print("(a, b) moe-bench: GEMM at expert shapes, in-process forward",
          file=sys.stderr, flush=True)
    g = gbench(args.bin_dir, "BM_ExpertGemm/512|BM_EngineForward/|BM_MemoryRead|BM_ExpertStream/4/",
               1.0 if q else 3.0)
    gemm = g["BM_ExpertGemm/512"]["gflops"] / 1e9 if g["BM_ExpertGemm/512"]["gflops"] > 1e6 \
        else g["BM_ExpertGemm/512"]["gflops"]
    engine = next(v for k, v in g.items() if k.startswith("BM_EngineForward/4/1024/0"))
    small = next(v for k, v in g.items() if k.startswith("BM_EngineForward/1/32/0"))
    bf16 = next(v for k, v in g.items() if k.startswith("BM_EngineForward/4/1024/1"))
    r["gemm_gflops"] = gemm
    r["inprocess_forward_ms"] = engine["real_time"]
    r["inprocess_tokens_per_s"] = engine["tokens_per_s"]
    r["inprocess_useful_gflops"] = engine["gflops"] / 1e9 if engine["gflops"] > 1e6 else engine["gflops"]
    r["inprocess_share_of_gemm"] = r["inprocess_useful_gflops"] / gemm
    r["inprocess_small_request_ms"] = small["real_time"]
    r["bf16_inprocess_tokens_per_s"] = bf16["tokens_per_s"]
    r["bf16_over_fp32"] = bf16["tokens_per_s"] / engine["tokens_per_s"]
    r["bf16_max_abs_err"] = bf16["max_abs_err"]
    r["bf16_rel_rms_err"] = bf16["rel_rms_err"]
    # One core's read rate, for the weight-streaming bound of row (e).
    # (the same with two cores reading at once, per core: what each of
    # moe-up's two workers gets when both stream).
    mem = {k.rsplit("threads:", 1)[1]: v["gbps"] for k, v in g.items()
           if k.startswith("BM_MemoryRead")}
    r["memory_read_gbps"] = mem["1"]
    r["memory_read_gbps_per_core_of_2"] = mem["2"]
    # One README expert on 4 rows (a 1x32 request's share), weights from
    # memory: LibTorch's GEMMs against the skinny kernel.
    stream = {k.split("/")[2]: v for k, v in g.items() if k.startswith("BM_ExpertStream/4/")}
    r["expert_4_rows_gemm_us"] = stream["0"]["expert_seconds"] * 1e6
    r["expert_4_rows_skinny_us"] = stream["1"]["expert_seconds"] * 1e6

    with tempfile.TemporaryDirectory(prefix="moe-bench-") as tmp:
        up = MoeUp(args.bin_dir, tmp, "default", ["--http_port=0"])
        try:
            target = up.endpoints["router"]
            metrics = up.endpoints["router_metrics"]
            print("(c, d) README configuration through moe-up", file=sys.stderr, flush=True)
            router_pid = next(pid for pid, comm in up.pids() if comm.startswith("moe-router"))
            worker_metrics = [v for k, v in sorted(up.endpoints.items())
                              if re.match(r"worker\d+_metrics$", k)]
            stages0, req0, _ = scrape(metrics)
            cpu0 = cpu_seconds(router_pid)
            fcpu0 = forward_cpu_seconds(metrics)
            big = client_bench(args.bin_dir, target, "4x1024", 1, 8 if q else 20, tmp)
            cpu1 = cpu_seconds(router_pid)
            fcpu1 = forward_cpu_seconds(metrics)
            stages1, req1, _ = scrape(metrics)
            n = max(req1 - req0, 1)
            # Every thread of the router (gRPC's too: receiving x and the
            # answers, sending y), not only the forward's stages.
            r["router_cpu_ms_per_forward"] = (cpu1 - cpu0) / n * 1e3
            stage_ms = {k: (stages1[k] - stages0.get(k, 0)) / n * 1e3 for k in stages1}
            r["distributed_tokens_per_s"] = big["tokens_per_s"]
            r["distributed_forward_p50_ms"] = big["p50_ms"]
            r["distributed_over_inprocess"] = big["tokens_per_s"] / r["inprocess_tokens_per_s"]
            r["router_stage_ms"] = stage_ms
            total = sum(stage_ms.values())
            # The router's own work: every stage but waiting (for the workers,
            # or for a batch to leave).
            waiting = stage_ms.get("rpc_wait", 0) + stage_ms.get("batch_wait", 0)
            r["router_overhead_share"] = (total - waiting) / total if total else 0
            # The same stages by the CPU time of the forward's thread: their
            # work without the time it stood preempted (two workers, the
            # router and the client share the cores here).
            r["router_forward_cpu_ms"] = (fcpu1 - fcpu0) / n * 1e3
            r["router_forward_cpu_share"] = r["router_forward_cpu_ms"] / total if total else 0
            print("(e) small requests", file=sys.stderr, flush=True)
            w0 = worker_compute(worker_metrics)
            s1 = client_bench(args.bin_dir, target, "1x32", 1, 4 if q else 10, tmp)
            w1 = worker_compute(worker_metrics)
            # The workers' own time per call (their compute stage, both
            # streaming at once), against the bound: what is left above it
            # is the router and the transport.
            r["small_request_worker_compute_ms"] = max(
                (b["sum"] - a["sum"]) / max(b["count"] - a["count"], 1) * 1e3
                for a, b in zip(w0, w1))
            _, _, b0 = scrape(metrics)
            s8 = client_bench(args.bin_dir, target, "1x32", 8, 4 if q else 10, tmp)
            _, _, b1 = scrape(metrics)
            r["small_request_c8_forwards_per_call"] = (b1["sum"] - b0["sum"]) / max(b1["count"] - b0["count"], 1)
            r["small_request_p50_ms"], r["small_request_p99_ms"] = s1["p50_ms"], s1["p99_ms"]
            # The weight-streaming bound: the expert weights the slowest
            # worker read for a request (median over the run) at one core's
            # read rate.
            r["small_request_slowest_worker_weight_mb"] = s1["slowest_worker_weight_mb_p50"]
            r["small_request_bound_ms"] = s1["slowest_worker_weight_mb_p50"] / r["memory_read_gbps"]
            r["small_request_over_bound"] = s1["p50_ms"] / r["small_request_bound_ms"]
            r["small_request_shared_bound_ms"] = (s1["slowest_worker_weight_mb_p50"]
                                                  / r["memory_read_gbps_per_core_of_2"])
            r["small_request_over_shared_bound"] = s1["p50_ms"] / r["small_request_shared_bound_ms"]
            r["small_request_worker_compute_over_bound"] = (r["small_request_worker_compute_ms"]
                                                            / r["small_request_bound_ms"])
            r["small_request_c8_p50_ms"], r["small_request_c8_p99_ms"] = s8["p50_ms"], s8["p99_ms"]
            print("(f) throughput by concurrency", file=sys.stderr, flush=True)
            r["throughput_1x256"] = {}
            for c in (1, 4, 16):
                _, _, b0 = scrape(metrics)
                t = client_bench(args.bin_dir, target, "1x256", c, 4 if q else 10, tmp)
                _, _, b1 = scrape(metrics)
                t["forwards_per_call"] = (b1["sum"] - b0["sum"]) / max(b1["count"] - b0["count"], 1)
                r["throughput_1x256"][str(c)] = {k: t[k] for k in
                                                ("requests_per_s", "tokens_per_s", "p50_ms", "p99_ms",
                                                 "forwards_per_call")}
            print("(m) REST, JSON against binary tensor data", file=sys.stderr, flush=True)
            rest = json.loads(run(
                [sys.executable, os.path.join(HERE, "rest_infer.py"),
                 up.endpoints["router_http"], "--model", "demo", "--shape", "1x32",
                 "--seconds", "4" if q else "10", "--json"]).stdout)
            r["rest_json_1x32_p50_ms"] = rest["json"]["p50_us"] / 1e3
            r["rest_json_1x32_p99_ms"] = rest["json"]["p99_us"] / 1e3
            r["rest_binary_1x32_p50_ms"] = rest["binary"]["p50_us"] / 1e3
            r["rest_binary_1x32_p99_ms"] = rest["binary"]["p99_us"] / 1e3
            r["rest_json_over_binary"] = rest["json_over_binary_p50"]
            r["rest_json_1x32_bytes"] = [rest["json"]["bytes_sent"], rest["json"]["bytes_received"]]
            rss = {comm: peak_rss_mb(pid) for pid, comm in up.pids()}
            r["router_peak_rss_mb"] = max(v for k, v in rss.items() if k.startswith("moe-router"))
            r["worker_peak_rss_mb"] = max(v for k, v in rss.items() if k.startswith("moe-expert"))
            y32 = forward_y(args.bin_dir, target, tmp, "fp32")
        finally:
            up.stop()

        print("(h) the same concurrent loads without dynamic batching", file=sys.stderr, flush=True)
        off = MoeUp(args.bin_dir, tmp, "nobatch", ["--batch_window_us=0"])
        try:
            target_off = off.endpoints["router"]
            o8 = client_bench(args.bin_dir, target_off, "1x32", 8, 4 if q else 10, tmp)
            o16 = client_bench(args.bin_dir, target_off, "1x256", 16, 4 if q else 10, tmp)
        finally:
            off.stop()
        r["no_batching"] = {
            "1x32_c8": {k: o8[k] for k in ("requests_per_s", "p50_ms", "p99_ms")},
            "1x256_c16": {k: o16[k] for k in ("requests_per_s", "p50_ms", "p99_ms")}}
        r["batching_speedup_1x32_c8"] = s8["requests_per_s"] / o8["requests_per_s"]
        r["batching_speedup_1x256_c16"] = (r["throughput_1x256"]["16"]["requests_per_s"]
                                           / o16["requests_per_s"])

        def variant(name, flags):
            """moe-up with `flags`: its [4,1024] throughput, and y's error
            (max abs, relative RMS) against the fp32 deployment's."""
            up_v = MoeUp(args.bin_dir, tmp, name, flags)
            try:
                target_v = up_v.endpoints["router"]
                y = forward_y(args.bin_dir, target_v, tmp, name)
                b = client_bench(args.bin_dir, target_v, "4x1024", 1, 8 if q else 20, tmp)
            finally:
                up_v.stop()
            import numpy as np
            diff = np.abs(y.astype(np.float64) - y32)
            rel = float(np.sqrt((diff ** 2).mean() / (y32.astype(np.float64) ** 2).mean()))
            return b["tokens_per_s"], float(diff.max()), rel

        print("(g) bf16 on the router-to-worker hop", file=sys.stderr, flush=True)
        tps, max_err, rel = variant("bf16wire", ["--wire_dtype=bfloat16"])
        r["bf16_wire_tokens_per_s"] = tps
        r["bf16_wire_speedup"] = tps / r["distributed_tokens_per_s"]
        r["bf16_wire_max_abs_err"] = max_err
        r["bf16_wire_rel_rms_err"] = rel

        print("(j) bf16 compute on the workers", file=sys.stderr, flush=True)
        tps, _, rel = variant("bf16compute", ["--compute_dtype=bfloat16"])
        r["bf16_distributed_tokens_per_s"] = tps
        r["bf16_distributed_over_fp32"] = tps / r["distributed_tokens_per_s"]
        r["bf16_distributed_rel_rms_err"] = rel

        print("(i) a decode-like step: one 1x32 call per layer of a 4-layer model",
              file=sys.stderr, flush=True)
        up4 = MoeUp(args.bin_dir, tmp, "layers4", ["--demo_layers=4"])
        try:
            target4 = up4.endpoints["router"]
            one = client_bench(args.bin_dir, target4, "1x32", 1, 4 if q else 10, tmp,
                               ["--layer=layers.0.ff"])
            step = client_bench(args.bin_dir, target4, "1x32", 1, 4 if q else 10, tmp,
                                ["--all_layers"])
        finally:
            up4.stop()
        r["decode_step"] = {"layers": step["layers_per_step"], "steps_per_s": step["requests_per_s"],
                            "step_p50_ms": step["p50_ms"], "step_p99_ms": step["p99_ms"],
                            "layer_trip_p50_ms": step["trip_p50_ms"],
                            "single_layer_p50_ms": one["p50_ms"]}
        r["decode_step_over_layers_x_single"] = step["p50_ms"] / (step["layers_per_step"] * one["p50_ms"])

        print("(l) decode latency: a tiny model's round trip against gRPC's own",
              file=sys.stderr, flush=True)
        r.update(layer_roundtrip(args.bin_dir, tmp, q))

    rows = [
        ("(a) GEMM at expert shapes", "%.1f GFLOP/s" % r["gemm_gflops"]),
        ("(b) in-process [4,1024,512]", "%.0f tokens/s, %.1f ms, %.1f useful GFLOP/s = %.0f%% of (a)" % (
            r["inprocess_tokens_per_s"], r["inprocess_forward_ms"], r["inprocess_useful_gflops"],
            100 * r["inprocess_share_of_gemm"])),
        ("(c) moe-up [4,1024,512]", "%.0f tokens/s, p50 %.1f ms, (c)/(b) = %.2f" % (
            r["distributed_tokens_per_s"], r["distributed_forward_p50_ms"],
            r["distributed_over_inprocess"])),
        ("(d) router ms per forward", ", ".join("%s %.1f" % kv for kv in r["router_stage_ms"].items())
         + "; router's own share %.0f%%; the forward's thread ran %.1f ms (%.0f%%); "
         "router CPU (all threads) %.1f ms per forward" % (
             100 * r["router_overhead_share"], r["router_forward_cpu_ms"],
             100 * r["router_forward_cpu_share"], r["router_cpu_ms_per_forward"])),
        ("(e) 1x32 latency", "c=1 p50 %.1f / p99 %.1f ms; c=8 p50 %.1f / p99 %.1f ms; in-process %.1f ms" % (
            r["small_request_p50_ms"], r["small_request_p99_ms"], r["small_request_c8_p50_ms"],
            r["small_request_c8_p99_ms"], r["inprocess_small_request_ms"])),
        ("(k) one expert, 4 rows", "GEMM %.0f us, skinny kernel %.0f us (x%.2f)" % (
            r["expert_4_rows_gemm_us"], r["expert_4_rows_skinny_us"],
            r["expert_4_rows_gemm_us"] / r["expert_4_rows_skinny_us"])),
        ("(e') weight-streaming bound", "one core reads %.1f GB/s (%.1f each when two read); the slowest "
         "worker reads %.1f MB of weights per 1x32 request: bound %.2f ms (%.2f sharing); "
         "c=1 p50 / bound = %.2f (%.2f); the workers' own compute %.2f ms = %.2f x bound" % (
             r["memory_read_gbps"], r["memory_read_gbps_per_core_of_2"],
             r["small_request_slowest_worker_weight_mb"], r["small_request_bound_ms"],
             r["small_request_shared_bound_ms"], r["small_request_over_bound"],
             r["small_request_over_shared_bound"], r["small_request_worker_compute_ms"],
             r["small_request_worker_compute_over_bound"])),
        ("(f) 1x256 throughput", "; ".join("c=%s %.1f req/s (%.0f tok/s)" % (c, v["requests_per_s"], v["tokens_per_s"])
                                         for c, v in r["throughput_1x256"].items())),
        ("(h) dynamic batching", "1x32 c=8 %.1f vs %.1f req/s off (x%.2f, %.1f forwards/call, p99 %.1f vs %.1f ms); "
         "1x256 c=16 %.1f vs %.1f req/s off (x%.2f, %.1f forwards/call)" % (
             s8["requests_per_s"], o8["requests_per_s"],
             r["batching_speedup_1x32_c8"], r["small_request_c8_forwards_per_call"],
             s8["p99_ms"], o8["p99_ms"],
             r["throughput_1x256"]["16"]["requests_per_s"], o16["requests_per_s"],
             r["batching_speedup_1x256_c16"], r["throughput_1x256"]["16"]["forwards_per_call"])),
        ("(m) REST 1x32 from Python", "JSON p50 %.1f / p99 %.1f ms (%d B sent, %d received), "
         "binary tensor data p50 %.1f / p99 %.1f ms: JSON / binary = %.2f; gRPC (e) p50 %.1f ms" % (
             r["rest_json_1x32_p50_ms"], r["rest_json_1x32_p99_ms"], r["rest_json_1x32_bytes"][0],
             r["rest_json_1x32_bytes"][1], r["rest_binary_1x32_p50_ms"],
             r["rest_binary_1x32_p99_ms"], r["rest_json_over_binary"],
             r["small_request_p50_ms"])),
        ("peak RSS", "router %.0f MB, worker %.0f MB" % (r["router_peak_rss_mb"], r["worker_peak_rss_mb"])),
        ("(g) bf16 wire", "%.0f tokens/s (x%.2f of fp32 wire); y vs fp32: max |err| %.2e, relative RMS %.2e" % (
            r["bf16_wire_tokens_per_s"], r["bf16_wire_speedup"], r["bf16_wire_max_abs_err"],
            r["bf16_wire_rel_rms_err"])),
        ("(j) bf16 compute", "in-process %.0f tokens/s (x%.2f of (b)), y vs fp32: max |err| %.2e, relative RMS %.2e; "
         "moe-up %.0f tokens/s (x%.2f of (c)), relative RMS %.2e" % (
             r["bf16_inprocess_tokens_per_s"], r["bf16_over_fp32"], r["bf16_max_abs_err"],
             r["bf16_rel_rms_err"], r["bf16_distributed_tokens_per_s"],
             r["bf16_distributed_over_fp32"], r["bf16_distributed_rel_rms_err"])),
        ("(i) 4-layer decode step", "1x32 per layer, c=1: %.1f steps/s, step p50 %.1f / p99 %.1f ms, "
         "per-layer trip p50 %.1f ms vs %.1f ms for one layer alone; step / (4 x alone) = %.2f" % (
             r["decode_step"]["steps_per_s"], r["decode_step"]["step_p50_ms"],
             r["decode_step"]["step_p99_ms"], r["decode_step"]["layer_trip_p50_ms"],
             r["decode_step"]["single_layer_p50_ms"], r["decode_step_over_layers_x_single"])),
        ("(l) decode latency, tiny model", "gRPC round trip p50 %.0f us; 1x32 c=1 p50 %.0f / p99 %.0f us "
         "= %.2f / %.2f x two round trips; c=4 p50 %.0f us (%.0f req/s); Python: round trip "
         "%.0f us, forward p50 %.0f us (call alone %.0f), %+.0f us over C++ "
         "(median of %d rounds in turns with it; transport %s; through grpcio "
         "%+.0f us)" % (
             r["grpc_roundtrip_p50_us"], r["layer_roundtrip_tiny_p50_us"],
             r["layer_roundtrip_tiny_p99_us"], r["layer_roundtrip_over_transport"],
             r["layer_roundtrip_p99_over_transport"], r["layer_roundtrip_tiny_c4_p50_us"],
             r["layer_roundtrip_tiny_c4_requests_per_s"], r["python_grpc_roundtrip_p50_us"],
             r["python_layer_roundtrip_tiny_p50_us"],
             r["python_layer_roundtrip_tiny_request_p50_us"], r["python_over_cpp_us"],
             len(r["python_over_cpp_rounds_us"]), r["python_transport"],
             r["python_grpcio_over_cpp_us"])),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print("%s  %s" % (k.ljust(width), v))
    save(r, args, "bench-quick" if q else "bench")


if __name__ == "__main__":
    main()
