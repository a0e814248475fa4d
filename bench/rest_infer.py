#!/usr/bin/python3
"""One layer's REST infer, JSON against binary tensor data, at concurrency 1.

  bench/rest_infer.py HOST:PORT [--model layers.0.ff] [--shape 1x32]
                      [--seconds 5] [--token TOKEN] [--json]

HOST:PORT is a router's REST port (`moe-router --http_port`, `moe-up
--http_port=0`: its endpoints file says `router_http`). The same x (seed 1)
is sent both ways on one keep-alive connection (Python's http.client):
  json    x as a JSON array of numbers, y answered as one
  binary  x's bytes after the JSON (Inference-Header-Content-Length), y's
          bytes after the answer's JSON (binary_data_output): the format of
          Triton's binary tensor data extension, tritonclient.http's default
Each call includes what a Python client does: writing the body and reading
y into a float32 array. The two take turns in rounds of 20 calls, so that
both see the same moments of a shared machine; p50/p99 in microseconds and
the bytes each call sends and receives are printed (JSON with --json).
Both ways must give the same y (the check fails the run otherwise).
"""

import argparse
import http.client
import json
import sys
import time

import numpy as np


def infer_json(x, shape):
    return json.dumps({
        "parameters": {"seed": 1},
        "inputs": [{"name": "x", "shape": shape, "datatype": "FP32",
                    "data": x.ravel().tolist()}],
        "outputs": [{"name": "y"}]}).encode()


def infer_binary(x, shape):
    raw = x.astype("<f4").tobytes()
    head = json.dumps({
        "parameters": {"seed": 1, "binary_data_output": True},
        "inputs": [{"name": "x", "shape": shape, "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "y"}]}).encode()
    return head + raw, len(head)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", help="the router's REST HOST:PORT")
    ap.add_argument("--model", default="layers.0.ff")
    ap.add_argument("--shape", default="1x32", help="BATCHxTOKENS")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--token", default="")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    host, port = args.target.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    path = "/v2/models/%s" % args.model
    auth = {"Authorization": "Bearer " + args.token} if args.token else {}

    def call(body, headers):
        conn.request("POST" if body is not None else "GET",
                     path + ("/infer" if body is not None else ""), body,
                     dict(auth, **headers))
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise SystemExit("%s: HTTP %d: %s" % (path, r.status, data[:300]))
        return r, data

    _, meta = call(None, {})
    dim = json.loads(meta)["inputs"][0]["shape"][2]
    b, n = (int(v) for v in args.shape.split("x"))
    shape = [b, n, dim]
    x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    sizes = {}

    def by_json():
        body = infer_json(x, shape)
        _, data = call(body, {"Content-Type": "application/json"})
        sizes["json"] = (len(body), len(data))
        return np.asarray(json.loads(data)["outputs"][0]["data"],
                          dtype=np.float32)

    def by_binary():
        body, head = infer_binary(x, shape)
        r, data = call(body, {"Content-Type": "application/octet-stream",
                              "Inference-Header-Content-Length": str(head)})
        sizes["binary"] = (len(body), len(data))
        length = int(r.getheader("Inference-Header-Content-Length"))
        out = json.loads(data[:length])["outputs"][0]
        size = out["parameters"]["binary_data_size"]
        return np.frombuffer(data[length:length + size], dtype="<f4")

    if not np.array_equal(by_json(), by_binary()):
        raise SystemExit("y differs between the JSON and the binary answer")
    fns = {"json": by_json, "binary": by_binary}
    us = {name: [] for name in fns}
    end = time.monotonic() + args.seconds
    while time.monotonic() < end and len(us["json"]) < 100000:
        for name, fn in fns.items():
            for _ in range(20):
                t0 = time.perf_counter()
                fn()
                us[name].append((time.perf_counter() - t0) * 1e6)
    out = {"shape": shape}
    for name, v in us.items():
        v.sort()
        out[name] = {"calls": len(v), "p50_us": v[len(v) // 2],
                     "p99_us": v[min(len(v) - 1, int(0.99 * len(v)))],
                     "bytes_sent": sizes[name][0],
                     "bytes_received": sizes[name][1]}
    out["json_over_binary_p50"] = out["json"]["p50_us"] / out["binary"]["p50_us"]
    if args.json:
        print(json.dumps(out))
        return
    print("shape %s" % shape)
    for name in fns:
        o = out[name]
        print("%-7s p50 %8.0f us  p99 %8.0f us  sent %9d B  received %9d B"
              "  (%d calls)" % (name, o["p50_us"], o["p99_us"], o["bytes_sent"],
                                o["bytes_received"], o["calls"]))
    print("json / binary p50: %.2f" % out["json_over_binary_p50"])


if __name__ == "__main__":
    sys.exit(main())
