#!/usr/bin/python3
"""One layer's round trip from the Python client, at concurrency 1.

  bench/python_roundtrip.py HOST:PORT [--shape 1x32] [--seconds 5] [--json]

Measures, on one RouterClient (one channel):
  health   grpc.health.v1 Check: grpcio's own unary round trip
  request  forward_request() of a ready-made ForwardRequest (the call alone)
  forward  forward(x): encode x, the call, decode y (what a model calls),
           through the client's default transport (native where built)
  forward_grpcio  the same through grpcio's channel (transport="grpcio")
and prints p50/p99 of each in microseconds (JSON with --json), so that the
Python client's own cost per call is forward - request, and grpcio's above
gRPC's C++ floor is health against `moe-client bench --rpc=health`. The
four take turns in rounds of 50 calls each, so that all four see the
same moments of a shared machine (measured one after the other, the same
binaries gave forward - request from +40 to +200 us).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "client", "python"))

import numpy as np  # noqa: E402

from moe_client import RouterClient  # noqa: E402


def timed_in_turns(fns, seconds, per_turn=50, max_calls=200000):
    """Calls each of fns (name -> function) per_turn times in turn, for
    `seconds` in all (at least one turn each, at most max_calls calls of
    each); the sorted latencies in microseconds per name."""
    out = {name: [] for name in fns}
    end = time.monotonic() + seconds
    while True:
        for name, fn in fns.items():
            us = out[name]
            for _ in range(per_turn):
                t0 = time.perf_counter()
                fn()
                us.append((time.perf_counter() - t0) * 1e6)
        if time.monotonic() >= end or len(us) >= max_calls:
            break
    for us in out.values():
        us.sort()
    return out


def pct(sorted_us, q):
    return sorted_us[min(len(sorted_us) - 1, int(q * len(sorted_us)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target")
    ap.add_argument("--shape", default="1x32", help="BxN of x (default 1x32)")
    ap.add_argument("--layer", default="", help="layer name (default: the only one)")
    ap.add_argument("--seconds", type=float, default=5.0,
                    help="per measurement (they take turns over 4 x this)")
    ap.add_argument("--json", action="store_true", help="print JSON instead")
    args = ap.parse_args()
    try:
        b, n = (int(v) for v in args.shape.split("x"))
    except ValueError:
        ap.error("--shape must be BxN, for example 1x32")
    with RouterClient(args.target, max_attempts=1) as client, \
            RouterClient(args.target, max_attempts=1, transport="grpcio") as grpcio:
        dim = client.model_info().dim
        x = np.random.default_rng(1).standard_normal((b, n, dim)).astype(np.float32)
        request = client.make_request(x, layer=args.layer)
        for _ in range(50):  # warm-up: the channels, the router's estimates
            client.forward(x, layer=args.layer)
            grpcio.forward(x, layer=args.layer)
        measured = timed_in_turns(
            {"health": lambda: client.health(""),
             "request": lambda: client.forward_request(request),
             "forward": lambda: client.forward(x, layer=args.layer),
             "forward_grpcio": lambda: grpcio.forward(x, layer=args.layer)},
            4 * args.seconds)
        results = {name: {"calls": len(us), "p50_us": pct(us, 0.5), "p99_us": pct(us, 0.99)}
                   for name, us in measured.items()}
    results["shape"] = [b, n, dim]
    results["transport"] = client.transport
    if args.json:
        print(json.dumps(results))
        return
    print("forward's transport: %s" % results["transport"])
    for name in ("health", "request", "forward", "forward_grpcio"):
        r = results[name]
        print("%-14s %6d calls  p50 %7.1f us  p99 %7.1f us" % (name, r["calls"], r["p50_us"],
                                                             r["p99_us"]))


if __name__ == "__main__":
    main()
