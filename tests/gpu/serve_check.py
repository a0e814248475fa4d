#!/usr/bin/env python3
"""The served path of the GPU worker, measured: moe-expert-gpu answering
RunExperts over loopback gRPC, checked against torch and timed.

    serve_check.py --bundle DIR --out OUT [--device cuda|host] [--quick]

Run from a bundle (./moe gpu-bundle) on a GPU machine by
tests/gpu/device_check.sh; here, on the host's reference experts, by CTest
(serve_check_test, --device host --quick), so that the script is known to
work before it reaches a GPU. It needs Python's grpcio, numpy and torch
(the GPU machine has them; Debian's python3-grpcio, python3-numpy and
python3-torch here). It speaks the wire itself (a few lines of protobuf
encoding, below), so that no generated stubs have to match the machine's
protobuf.

For each model (the golden files, then the README configuration: dim 512,
16 experts, written with tools/export_checkpoint.py from random weights):
  1. parity: every expert on random rows (24 per expert, and 4: a decode
     step's, which the small-rows kernels serve), against torch on the same device
     (float32: |y - ref| <= 1e-5 * max(1, |ref|); bfloat16: relative RMS
     within docs/numerics.md's CPU bound, 1e-2);
  2. (README configuration) calls/s and tokens/s at 32, 256, 4096 and 65536
     tokens per call, p50/p99 of 32-token calls, at concurrency 1 and 4;
  3. where a call's time goes: the worker's own
     moe_expert_stage_seconds_total{stage} (parse, host-to-device copy,
     compute, device-to-host copy, serialize) over the timed calls;
and the machine's limits in the same run: a large bf16 torch matmul and the
device's copy bandwidth, so that each figure is also a share of its limit.
Everything goes to OUT/serve_check.json and, as a table, to stdout.
"""
import argparse
import concurrent.futures
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import torch

FLOAT32, BFLOAT16 = 1, 2
METHOD = "/moe.v1.ExpertWorker/RunExperts"


# --- protobuf, the few fields this script needs ----------------------------

def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def field(number, wire_type, payload):
    tag = varint(number << 3 | wire_type)
    if wire_type == 0:
        return tag + varint(payload)
    return tag + varint(len(payload)) + payload


def tensor(dtype, shape, data):
    shape_bytes = b"".join(varint(d) for d in shape)
    return field(1, 0, dtype) + field(2, 2, shape_bytes) + field(3, 2, data)


def run_experts_request(rows, segments, output_dtype=FLOAT32):
    """rows: float32 numpy [T, d]; segments: [(layer, expert, count)]."""
    out = field(1, 2, tensor(FLOAT32, rows.shape, rows.astype(np.float32).tobytes()))
    for layer, expert, count in segments:
        seg = field(1, 0, expert) + field(2, 0, count)
        if layer:
            seg += field(3, 0, layer)
        out += field(2, 2, seg)
    return out + field(3, 0, output_dtype)


def read_varint(buf, i):
    v = shift = 0
    while True:
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, i


def fields(buf):
    i = 0
    while i < len(buf):
        tag, i = read_varint(buf, i)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            v, i = read_varint(buf, i)
            yield number, v
        elif wire_type == 2:
            n, i = read_varint(buf, i)
            yield number, buf[i:i + n]
            i += n
        else:
            raise ValueError("unexpected wire type %d" % wire_type)


def outputs_of(response, dim):
    """The float32 [T, dim] outputs of a RunExpertsResponse."""
    for number, value in fields(response):
        if number != 1:
            continue
        dtype, data = FLOAT32, b""
        for n, v in fields(value):
            if n == 1:
                dtype = v
            elif n == 3:
                data = v
        if dtype == FLOAT32:
            return np.frombuffer(data, dtype=np.float32).reshape(-1, dim)
        wide = np.frombuffer(data, dtype=np.uint16).astype(np.uint32) << 16
        return wide.view(np.float32).reshape(-1, dim)
    raise ValueError("no outputs in the response")


# --- checkpoints -------------------------------------------------------------

def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    tensors = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        buf = data[b:end]
        if e["dtype"] == "F32":
            a = np.frombuffer(buf, dtype=np.float32)
        elif e["dtype"] == "BF16":
            a = (np.frombuffer(buf, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            continue
        tensors[name] = a.reshape(e["shape"])
    return header.get("__metadata__", {}), tensors


def experts_of(path):
    """{(layer, expert): (w1, b1, mult_bias, w2, b2)} of a one-layer file."""
    meta, t = read_safetensors(path)
    out = {}
    prefixes = sorted({k[:-len(".net.0.weight")] for k in t
                       if k.endswith(".net.0.weight") and "experts" in k},
                      key=lambda p: [int(x) if x.isdigit() else x for x in p.split(".")])
    for i, p in enumerate(prefixes):
        out[(0, i)] = tuple(t[p + s] for s in (".net.0.weight", ".net.0.bias",
                                                ".net.1.mult_bias", ".net.2.weight",
                                                ".net.2.bias"))
    return json.loads(meta["config_json"]), out


def write_readme_model(tools_dir, path):
    """The README configuration (dim 512, 16 experts, hidden_mult 4) with
    random weights, written by tools/export_checkpoint.py."""
    sys.path.insert(0, tools_dir)
    from export_checkpoint import export_checkpoint  # noqa: E402
    g = torch.Generator().manual_seed(7)
    d, e, h = 512, 16, int(512 * 4 * 2 / 3)
    sd = {"gate.to_gates.weight": torch.randn(e, d, generator=g) * 0.04}
    for i in range(e):
        p = "experts.experts.%d." % i
        sd[p + "net.0.weight"] = torch.randn(2 * h, d, generator=g) * d ** -0.5
        sd[p + "net.0.bias"] = torch.randn(2 * h, generator=g) * d ** -0.5
        sd[p + "net.1.mult_bias"] = 1 + 0.1 * torch.randn(h, generator=g)
        sd[p + "net.2.weight"] = torch.randn(d, h, generator=g) * h ** -0.5
        sd[p + "net.2.bias"] = torch.randn(d, generator=g) * h ** -0.5
    export_checkpoint(sd, path)


# --- the worker --------------------------------------------------------------

class Worker:
    def __init__(self, bundle, checkpoint, device, compute, tmp, name, library_path=""):
        self.port_file = os.path.join(tmp, name + ".port")
        self.metrics_file = os.path.join(tmp, name + ".metrics.port")
        self.log = open(os.path.join(tmp, name + ".log"), "w")
        # Only the worker loads the bundle's libraries (and the folders
        # where cuBLAS was found): this interpreter, torch and grpcio keep
        # the machine's own.
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = ":".join(
            p for p in [os.path.join(bundle, "lib"), library_path,
                        env.get("LD_LIBRARY_PATH", "")] if p)
        self.proc = subprocess.Popen(
            [os.path.join(bundle, "bin", "moe-expert-gpu"), "--checkpoint=" + checkpoint,
             "--device=" + device, "--compute_dtype=" + compute, "--host=127.0.0.1",
             "--port=0", "--port_file=" + self.port_file, "--metrics_port=0",
             "--metrics_port_file=" + self.metrics_file, "--max_tokens_per_call=65536",
             "--gpu_streams=2", "--compute_threads=4", "--warmup=false"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 240
        while not (os.path.exists(self.port_file) and os.path.exists(self.metrics_file)):
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit("moe-expert-gpu did not start:\n" + open(self.log.name).read())
            time.sleep(0.05)
        import grpc
        self.channel = grpc.insecure_channel(
            "127.0.0.1:" + open(self.port_file).read().strip(),
            options=[("grpc.max_send_message_length", 1 << 30),
                     ("grpc.max_receive_message_length", 1 << 30)])
        self.call = self.channel.unary_unary(METHOD)
        self.metrics = "http://127.0.0.1:%s/metrics" % open(self.metrics_file).read().strip()

    def run(self, request, dim, timeout=120):
        return outputs_of(self.call(request, timeout=timeout), dim)

    def counters(self, name, label):
        """The series of counter `name` by the value of `label`, now."""
        out = {}
        for line in urllib.request.urlopen(self.metrics, timeout=10).read().decode().splitlines():
            if line.startswith(name + "{"):
                value = line.split(label + '="')[1].split('"')[0]
                out[value] = float(line.split()[-1])
        return out

    def stages(self):
        """moe_expert_stage_seconds_total by stage, now."""
        return self.counters("moe_expert_stage_seconds_total", "stage")

    def passes(self):
        """moe_expert_gpu_passes_total by path (small_rows, gemm), now."""
        return self.counters("moe_expert_gpu_passes_total", "path")

    def stop(self):
        self.channel.close()
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


# --- checks ------------------------------------------------------------------

def reference(x, w, device, dtype):
    """The expert (docs/numerics.md, "Expert") in torch on `device`."""
    w1, b1, m, w2, b2 = (torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in w)
    xt = torch.from_numpy(x).to(device)
    if dtype == torch.float64:
        xt, w1, b1, m, w2, b2 = (a.double() for a in (xt, w1, b1, m, w2, b2))
    h = m.shape[0]
    u = xt @ w1.T + b1
    v = torch.nn.functional.gelu(u[:, h:]) * u[:, :h] * m
    return (v @ w2.T + b2).float().cpu().numpy()


def parity(worker, experts, dim, compute, device, rows_per_expert, rng):
    keys = sorted(experts)
    rows = np.concatenate([rng.standard_normal((rows_per_expert, dim)).astype(np.float32)
                           for _ in keys])
    segments = [(l, e, rows_per_expert) for (l, e) in keys]
    y = worker.run(run_experts_request(rows, segments), dim)
    worst_abs, worst_rel_rms = 0.0, 0.0
    ref_dtype = torch.float64 if compute == "float32" else torch.float32
    for k, key in enumerate(keys):
        x = rows[k * rows_per_expert:(k + 1) * rows_per_expert]
        want = reference(x, experts[key], device, ref_dtype)
        got = y[k * rows_per_expert:(k + 1) * rows_per_expert]
        worst_abs = max(worst_abs, float(np.max(np.abs(got - want) / np.maximum(1, np.abs(want)))))
        rms = math.sqrt(float(np.mean((got - want) ** 2)) / max(1e-30, float(np.mean(want ** 2))))
        worst_rel_rms = max(worst_rel_rms, rms)
    ok = worst_abs <= 1e-5 if compute == "float32" else worst_rel_rms <= 1e-2
    return {"compute": compute, "experts": len(keys), "rows_per_expert": rows_per_expert,
            "max_rel_err": worst_abs, "rel_rms_err": worst_rel_rms, "ok": ok}


def timed(worker, experts, dim, tokens, concurrency, seconds, rng):
    keys = sorted(experts)
    per = [tokens // len(keys) + (1 if i < tokens % len(keys) else 0) for i in range(len(keys))]
    segments = [(l, e, n) for (l, e), n in zip(keys, per) if n > 0]
    request = run_experts_request(rng.standard_normal((tokens, dim)).astype(np.float32), segments)
    worker.run(request, dim)  # warm
    latencies = []
    stop = time.time() + seconds

    def loop():
        mine = []
        while time.time() < stop:
            t = time.perf_counter()
            worker.call(request, timeout=120)
            mine.append(time.perf_counter() - t)
        return mine

    before = worker.stages()
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(loop) for _ in range(concurrency)]:
            latencies += f.result()
    elapsed = time.perf_counter() - start
    after = worker.stages()
    latencies.sort()
    calls = len(latencies)
    stage_s = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    total = sum(stage_s.values()) or 1
    return {"tokens": tokens, "concurrency": concurrency, "calls": calls,
            "calls_per_s": calls / elapsed, "tokens_per_s": calls * tokens / elapsed,
            "p50_ms": 1e3 * latencies[calls // 2],
            "p99_ms": 1e3 * latencies[min(calls - 1, calls * 99 // 100)],
            "stage_share": {k: v / total for k, v in sorted(stage_s.items())}}


def limits(device):
    """The machine's bf16 matmul rate and copy bandwidths (device only)."""
    if device != "cuda" or not torch.cuda.is_available():
        return {}
    out = {}
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    out["bf16_matmul_tflops"] = 20 * 2 * n ** 3 / (time.perf_counter() - t) / 1e12
    x = torch.empty(1 << 28, device="cuda", dtype=torch.float32)  # 1 GiB
    y = torch.empty_like(x)
    y.copy_(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    out["device_copy_gbps"] = 10 * 2 * x.numel() * 4 / (time.perf_counter() - t) / 1e9
    host = torch.empty(1 << 26, dtype=torch.float32).pin_memory()  # 256 MiB
    dev = torch.empty(1 << 26, device="cuda", dtype=torch.float32)
    t = time.perf_counter()
    for _ in range(10):
        dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    out["host_to_device_gbps"] = 10 * host.numel() * 4 / (time.perf_counter() - t) / 1e9
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda", choices=["cuda", "host"])
    ap.add_argument("--quick", action="store_true",
                    help="one golden file, small calls, short timings")
    ap.add_argument("--library_path", default="",
                    help="folders (':'-separated) the worker's loader searches "
                         "after the bundle's lib/, e.g. where cuBLAS is")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch_device = "cuda" if args.device == "cuda" else "cpu"
    rng = np.random.default_rng(1)
    report = {"device": args.device, "quick": args.quick, "limits": limits(args.device),
              "parity": [], "timing": []}
    golden_dir = os.path.join(args.bundle, "golden")
    golden = sorted(f for f in os.listdir(golden_dir) if f.endswith(".safetensors"))
    if args.quick:
        golden = golden[:1]
    computes = ["float32"] + (["bfloat16"] if args.device == "cuda" else [])
    ok = True
    with tempfile.TemporaryDirectory(prefix="serve-check-") as tmp:
        models = [(f[:-len(".safetensors")], os.path.join(golden_dir, f)) for f in golden]
        if not args.quick:
            readme = os.path.join(tmp, "readme.safetensors")
            write_readme_model(os.path.join(args.bundle, "tools"), readme)
            models.append(("readme", readme))
        for name, path in models:
            config, experts = experts_of(path)
            dim = config.get("dim") or config["layers"][0]["dim"]
            for compute in computes:
                worker = Worker(args.bundle, path, args.device, compute, tmp,
                                "%s-%s" % (name, compute), args.library_path)
                try:
                    # 24 rows per expert: the GEMMs; 4: a decode step's, the
                    # small-rows kernels (docs/gpu.md).
                    for per_expert in (24, 4):
                        before = worker.passes()
                        p = parity(worker, experts, dim, compute, torch_device,
                                   per_expert, rng)
                        after = worker.passes()
                        p["passes"] = {k: after.get(k, 0) - before.get(k, 0) for k in after}
                        if args.device == "cuda":
                            # The worker's own count of the path its passes took.
                            want = "small_rows" if per_expert <= 8 and dim % 8 == 0 else "gemm"
                            if p["passes"].get(want, 0) < 1 or sum(p["passes"].values()) != p["passes"][want]:
                                print("parity %s %s %d rows/expert ran on %s, not only %s"
                                      % (name, compute, per_expert, p["passes"], want))
                                p["ok"] = False
                        p["model"] = name
                        report["parity"].append(p)
                        ok &= p["ok"]
                        print("parity %-28s %-8s %2d rows/expert: max rel err %.2e, "
                              "rel RMS %.2e: %s"
                              % (name, compute, per_expert, p["max_rel_err"],
                                 p["rel_rms_err"], "ok" if p["ok"] else "FAIL"),
                              flush=True)
                    if name != "readme" and not (args.quick and compute == "float32"):
                        continue
                    sizes = [32, 256] if args.quick else [32, 256, 4096, 65536]
                    for tokens in sizes:
                        for concurrency in [1, 4]:
                            t = timed(worker, experts, dim, tokens, concurrency,
                                      1.0 if args.quick else 4.0, rng)
                            t.update(model=name, compute=compute)
                            report["timing"].append(t)
                            print("timing %-8s %6d tokens x%d: %8.1f calls/s %11.0f tokens/s "
                                  "p50 %7.2f ms p99 %7.2f ms; stages %s"
                                  % (compute, tokens, concurrency, t["calls_per_s"],
                                     t["tokens_per_s"], t["p50_ms"], t["p99_ms"],
                                     " ".join("%s %.0f%%" % (k, 100 * v)
                                              for k, v in t["stage_share"].items())),
                                  flush=True)
                finally:
                    worker.stop()
    report["ok"] = bool(ok)
    with open(os.path.join(args.out, "serve_check.json"), "w") as f:
        json.dump(report, f, indent=1)
    print("limits: %s" % json.dumps(report["limits"]))
    print("serve_check: %s" % ("PASS" if ok else "FAIL"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
