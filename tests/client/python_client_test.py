#!/usr/bin/python3
"""The Python client (client/python/moe_client) against a real moe-up on
127.0.0.1: golden parity, routing replay, dtypes, traces, model info, health
and clear errors for bad input; and its wheels (./moe python-wheel),
installed with pip into virtual environments, serving from there.

Each test runs through both of forward()'s transports: gRPC's C++ library
(the native module, where the build made it) and grpcio.

Usage: python_client_test.py BIN_DIR GOLDEN_DIR [NATIVE]
NATIVE: "built" (the default: the native transport must load) or
"not-built" (a build without it: only grpcio is tested).
"""

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import zipfile

BIN_DIR, GOLDEN_DIR = sys.argv[1:3]
del sys.argv[1:3]
NATIVE_BUILT = True
if len(sys.argv) > 1 and sys.argv[1] in ("built", "not-built"):
    NATIVE_BUILT = sys.argv.pop(1) == "built"
HERE = os.path.dirname(os.path.abspath(__file__))
# client/python alone: the generated modules live inside the package.
sys.path[:0] = [os.path.join(HERE, "..", "..", "client", "python")]

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from moe_client import (ForwardResult, MoeError, RouterClient,  # noqa: E402
                        decode_tensor, encode_tensor, native_transport_available)
from moe_client._generated.moe.v1 import router_pb2  # noqa: E402


def read_safetensors(path):
    """{name: numpy array} of a safetensors file (F32, I64, BOOL)."""
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    dtypes = {"F32": "<f4", "I64": "<i8", "BOOL": "?", "F16": "<f2"}
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        begin, end = e["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + begin:8 + n + end],
                                  dtype=dtypes[e["dtype"]]).reshape(e["shape"])
    return out


class MoeUp:
    """moe-up on a checkpoint, on 127.0.0.1 with a free port."""

    def __init__(self, checkpoint, workers=2, flags=()):
        self.tmp = tempfile.mkdtemp(prefix="moe-pyclient-")
        port_file = os.path.join(self.tmp, "port")
        self.log = open(os.path.join(self.tmp, "moe-up.log"), "w")
        self.proc = subprocess.Popen(
            [os.path.join(BIN_DIR, "moe-up"), "--checkpoint=" + checkpoint,
             "--workers=%d" % workers, "--port=0", "--port_file=" + port_file]
            + list(flags),
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        port = ""
        while not port:
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("moe-up did not start:\n" + self.logs())
            time.sleep(0.1)
            if os.path.exists(port_file):
                with open(port_file) as f:
                    port = f.read().strip()
        self.target = "127.0.0.1:" + port

    def logs(self):
        with open(self.log.name) as f:
            return f.read()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def golden(name):
    return read_safetensors(os.path.join(GOLDEN_DIR, name + ".safetensors"))


# The transport the test classes below use; the *GrpcioTest subclasses
# run them again through grpcio.
DEFAULT_TRANSPORT = "native" if NATIVE_BUILT else "grpcio"


class PythonClientTest(unittest.TestCase):
    TRANSPORT = DEFAULT_TRANSPORT

    @classmethod
    def setUpClass(cls):
        cls.up = MoeUp(os.path.join(GOLDEN_DIR, "B2_moe_eval_drop_cap12.safetensors"))
        cls.client = RouterClient(cls.up.target, timeout=30, transport=cls.TRANSPORT)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.up.stop()

    def test_golden_forward_matches_the_reference(self):
        g = golden("B2_moe_eval_drop_cap12")
        r = self.client.forward(g["input.x"], policy="all", trace=True)
        self.assertEqual(r.y.shape, g["output.y"].shape)
        self.assertLessEqual(float(np.abs(r.y - g["output.y"]).max()), 1e-5)
        self.assertFalse(r.degraded)
        np.testing.assert_array_equal(r.trace["trace.gate_indices"],
                                      g["expected.gate_indices"])
        np.testing.assert_array_equal(r.trace["trace.positions"],
                                      g["expected.positions"])
        stats = r.stats.routing
        # B2 keeps 96 assignments and drops 34 first + 126 second choices.
        self.assertEqual(stats.kept_first + stats.kept_second, 96)
        self.assertEqual((stats.dropped_first, stats.dropped_second), (34, 126))
        self.assertEqual(sum(r.kept_per_expert), 96)
        self.assertAlmostEqual(r.losses["total_aux_loss"],
                               r.losses["weighted_balance_loss"] +
                               r.losses["weighted_router_z_loss"], places=6)

    def test_torch_tensors_travel_in_their_dtype_and_come_back_as_torch(self):
        import torch
        g = golden("B2_moe_eval_drop_cap12")
        x = torch.from_numpy(g["input.x"].copy())
        numpy_y = self.client.forward(g["input.x"], policy="all").y
        r = self.client.forward(x, policy="all")
        self.assertIsInstance(r.y, torch.Tensor)
        self.assertEqual(r.y.dtype, torch.float32)
        self.assertTrue(np.array_equal(r.y.numpy(), numpy_y))
        for dtype, name in [(torch.bfloat16, "bfloat16"), (torch.float16, "float16")]:
            xd = x.to(dtype)
            # On the wire: x's own bits, as the numpy path sends its values.
            self.assertEqual(self.client.request_bytes(xd, dtype=name, policy="all"),
                             self.client.request_bytes(xd.float().numpy(), dtype=name,
                                                       policy="all"), name)
            rd = self.client.forward(xd, policy="all")  # dtype from x
            self.assertEqual(rd.y.dtype, dtype)
            ref = self.client.forward(xd.float().numpy(), dtype=name, policy="all").y
            self.assertTrue(torch.equal(rd.y, torch.from_numpy(ref).to(dtype)), name)
            self.assertTrue(torch.equal(
                self.client.forward_async(xd, policy="all").result().y, rd.y), name)
        # Explicit uniforms as a torch tensor; another dtype asked for.
        u = torch.from_numpy(np.random.default_rng(5).random(x.shape[:2]).astype(np.float32))
        a = self.client.forward(x.to(torch.bfloat16), dtype="float32",
                                second_choice_uniforms=u)
        b = self.client.forward(x.to(torch.bfloat16).float().numpy(),
                                second_choice_uniforms=u.numpy())
        self.assertEqual(a.y.dtype, torch.bfloat16)
        self.assertTrue(torch.equal(a.y, torch.from_numpy(b.y).to(torch.bfloat16)))

    def test_forward_aio_awaits_the_call_without_holding_the_loop(self):
        import asyncio
        g = golden("B2_moe_eval_drop_cap12")

        async def main():
            task = asyncio.ensure_future(self.client.forward_aio(g["input.x"], policy="all"))
            await asyncio.sleep(0)  # the task has started its call and waits
            self.assertFalse(task.done())
            results = [await task] + list(await asyncio.gather(*[
                self.client.forward_aio(g["input.x"], policy="all") for _ in range(4)]))
            with self.assertRaises(MoeError) as e:
                await self.client.forward_aio(g["input.x"][..., :3])
            self.assertEqual(e.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
            # A cancelled wait ends at once; the client serves on.
            cancelled = asyncio.ensure_future(self.client.forward_aio(g["input.x"]))
            await asyncio.sleep(0)
            cancelled.cancel()
            with self.assertRaises(asyncio.CancelledError):
                await cancelled
            results.append(await self.client.forward_aio(g["input.x"], policy="all"))
            return results

        for r in asyncio.run(main()):
            self.assertLessEqual(float(np.abs(r.y - g["output.y"]).max()), 1e-5)

    def test_explicit_uniforms_replay_the_random_policy(self):
        x = np.random.default_rng(3).standard_normal((2, 24, 16)).astype(np.float32)
        u = np.random.default_rng(4).random((2, 24)).astype(np.float32)
        a = self.client.forward(x, second_choice_uniforms=u, trace=True)
        b = self.client.forward(x, second_choice_uniforms=u, trace=True)
        np.testing.assert_array_equal(a.y, b.y)
        seeded = [self.client.forward(x, seed=11).y for _ in range(2)]
        np.testing.assert_array_equal(seeded[0], seeded[1])
        # Draws of 0 request every second choice (u < g2 / threshold), as the
        # "all" policy does.
        everything = self.client.forward(x, policy="all")
        always = self.client.forward(x, second_choice_uniforms=np.zeros_like(u))
        np.testing.assert_allclose(always.y, everything.y, atol=1e-6)

    def test_half_precision_inputs_come_back_in_their_dtype(self):
        x = np.random.default_rng(5).standard_normal((1, 16, 16)).astype(np.float32)
        full = self.client.forward(x, policy="all").y
        for dtype, tol in (("float16", 2e-2), ("bfloat16", 1e-1)):
            r = self.client.forward(x, dtype=dtype, policy="all")
            self.assertEqual(r.response.y.dtype, encode_tensor(x, dtype).dtype)
            self.assertLess(float(np.abs(r.y.astype(np.float32) - full).max()), tol, dtype)

    def test_request_bytes_are_make_requests_message(self):
        # forward() sends bytes made from cached parts; they must parse to
        # the message make_request builds, whatever the arguments.
        x = np.random.default_rng(6).standard_normal((2, 5, 16)).astype(np.float32)
        u = np.random.default_rng(7).random((2, 5)).astype(np.float32)
        cases = [{}, {"dtype": "float16"}, {"dtype": "bfloat16", "seed": 3},
                 {"policy": "threshold", "threshold": 0.25, "mode": "train"},
                 {"capacity_factor": 2.5, "trace": True, "on_expert_failure": "fail"},
                 {"second_choice_uniforms": u, "layer": "ff"}]
        for options in cases + cases:  # the second time from the caches
            with self.subTest(options=options):
                made = self.client.make_request(x, **options)
                sent = router_pb2.ForwardRequest.FromString(
                    self.client.request_bytes(x, **options))
                self.assertEqual(sent, made)
        with self.assertRaises(ValueError):
            self.client.request_bytes(x, policy="sometimes")
        # And forward() answers what a ready-made request gets, bit for bit.
        a = self.client.forward(x, seed=5, trace=True)
        b = self.client.forward_request(self.client.make_request(x, seed=5, trace=True))
        np.testing.assert_array_equal(a.y, decode_tensor(b.y))
        self.assertEqual(a.response, b)
        self.assertEqual(a.losses["balance_loss"], b.losses.balance_loss)
        self.assertEqual(a.kept_per_expert, list(b.stats.kept_per_expert))
        self.assertIn("ForwardResult(y=<2x5x16 float32>", repr(a))

    def test_tensor_codec_round_trips(self):
        x = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
        np.testing.assert_array_equal(decode_tensor(encode_tensor(x)), x)
        np.testing.assert_array_equal(
            decode_tensor(encode_tensor(x, "float16")), x.astype(np.float16))
        bf = decode_tensor(encode_tensor(x, "bfloat16"))
        self.assertLess(float(np.abs(bf - x).max()), 1e-2)
        self.assertEqual(decode_tensor(encode_tensor(np.float32([1.0, -2.5]), "bfloat16")).tolist(),
                         [1.0, -2.5])

    def test_model_info_and_health(self):
        info = self.client.model_info()
        self.assertEqual(info.dim, 16)
        self.assertEqual(len(info.layers), 1)
        self.assertEqual((info.layers[0].kind, info.layers[0].num_experts),
                         ("moe", 4))
        self.assertTrue(info.fingerprint.startswith("sha256:"))
        self.assertEqual(info.model_name, "B2_moe_eval_drop_cap12")
        self.assertEqual(len(info.workers), 2)
        self.assertTrue(all(w.up for w in info.workers))
        self.assertEqual(self.client.health(), "SERVING")

    def test_bad_input_is_a_clear_error(self):
        cases = [
            (np.zeros((1, 4, 15), np.float32), {}, "model dim is 16"),
            (np.zeros((4, 16), np.float32), {}, "rank 3"),
            (np.full((1, 2, 16), np.nan, np.float32), {}, "NaN"),
            (np.zeros((1, 4, 16), np.float32), {"threshold": -2.0}, "options.threshold"),
            (np.zeros((1, 4, 16), np.float32), {"capacity_factor": -1.0},
             "options.capacity_factor"),
            (np.zeros((1, 4, 16), np.float32),
             {"second_choice_uniforms": np.zeros((3, 3), np.float32)},
             "second_choice_uniforms"),
        ]
        for x, kwargs, words in cases:
            with self.assertRaises(MoeError, msg=words) as caught:
                self.client.forward(x, **kwargs)
            self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT, words)
            self.assertIn(words, caught.exception.details)
        with self.assertRaises(ValueError):
            self.client.forward(np.zeros((1, 4, 16), np.float32), policy="sometimes")
        with self.assertRaises(MoeError) as caught:
            self.client.forward(np.zeros((1, 4, 16), np.float32), layer="blocks.1.ff")
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("blocks.1.ff", caught.exception.details)
        # The router still serves.
        self.assertEqual(self.client.forward(np.zeros((1, 4, 16), np.float32)).y.shape,
                         (1, 4, 16))

    def test_a_forward_goes_by_its_request_id(self):
        x = np.zeros((1, 4, 16), np.float32)
        self.assertEqual(self.client.forward(x, request_id="py-ok.1").request_id,
                         "py-ok.1")
        made = self.client.forward(x).request_id
        self.assertRegex(made, r"\A[0-9a-f]{16}\Z")
        self.assertNotEqual(self.client.forward(x).request_id, made)
        for call in (self.client.forward,
                     lambda x, **kw: self.client.forward_async(x, **kw).result(30)):
            with self.assertRaises(MoeError) as caught:
                call(x, layer="blocks.1.ff", request_id="py-bad.%s" % self.TRANSPORT)
            e = caught.exception
            self.assertEqual(e.request_id, "py-bad.%s" % self.TRANSPORT)
            self.assertTrue(str(e).endswith("[request py-bad.%s]" % self.TRANSPORT),
                            str(e))
        # The router's log names the refused call by the same ID.
        deadline = time.time() + 10
        while ("Forward py-bad.%s from" % self.TRANSPORT not in self.up.logs()
               and time.time() < deadline):
            time.sleep(0.1)
        self.assertIn("Forward py-bad.%s from" % self.TRANSPORT, self.up.logs())
        for bad in ("", "two words", "x" * 129, "caf\u00e9", 7):
            with self.assertRaises(ValueError, msg=repr(bad)):
                self.client.forward(x, request_id=bad)

    def test_forward_async_gives_the_same_answer(self):
        x = np.random.default_rng(6).standard_normal((1, 8, 16)).astype(np.float32)
        futures = [self.client.forward_async(x, policy="all") for _ in range(3)]
        sync = self.client.forward(x, policy="all").y
        for f in futures:
            # Concurrent forwards may share worker calls (dynamic batching),
            # whose GEMMs round differently in the last bits.
            np.testing.assert_allclose(f.result(timeout=30).y, sync, atol=1e-6)

    def test_forward_async_errors_and_waits_are_reported_alike(self):
        # A refused call raises MoeError from result(); a call still running
        # raises TimeoutError (both transports), and its deadline ends it.
        with self.assertRaises(MoeError) as caught:
            self.client.forward_async(np.zeros((1, 4, 16), np.float32),
                                      layer="blocks.1.ff").result(timeout=30)
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        try:
            with RouterClient("127.0.0.1:%d" % silent.getsockname()[1], timeout=1,
                              max_attempts=1, transport=self.TRANSPORT) as c:
                future = c.forward_async(np.zeros((1, 4, 16), np.float32))
                with self.assertRaises(TimeoutError):
                    future.result(timeout=0.2)
                self.assertFalse(future.done())
                with self.assertRaises(MoeError) as caught:
                    future.result(timeout=30)
                self.assertEqual(caught.exception.code,
                                 grpc.StatusCode.DEADLINE_EXCEEDED)
                self.assertTrue(future.done())
            # Closing the client ends the calls still running on it, as
            # closing a grpcio channel does.
            # 20 calls: on the native transport 16 wait on the client's
            # threads and 4 for a thread.
            c = RouterClient("127.0.0.1:%d" % silent.getsockname()[1], timeout=30,
                             max_attempts=1, transport=self.TRANSPORT)
            futures = [c.forward_async(np.zeros((1, 4, 16), np.float32))
                       for _ in range(20)]
            time.sleep(0.3)
            start = time.time()
            c.close()
            for future in futures:
                with self.assertRaises(MoeError) as caught:
                    future.result(timeout=10)
                self.assertEqual(caught.exception.code, grpc.StatusCode.CANCELLED)
            self.assertLess(time.time() - start, 3)
        finally:
            silent.close()

    def test_unreachable_router_raises_unavailable_after_retries(self):
        with RouterClient("127.0.0.1:1", timeout=5, max_attempts=2,
                          transport=self.TRANSPORT) as c:
            for call in (c.model_info,
                         lambda: c.forward(np.zeros((1, 4, 16), np.float32))):
                start = time.time()
                with self.assertRaises(MoeError) as caught:
                    call()
                self.assertEqual(caught.exception.code, grpc.StatusCode.UNAVAILABLE)
                self.assertLess(time.time() - start, 5)

    def test_results_read_from_bytes_equal_the_parsed_message(self):
        # forward() reads y and degraded straight from the response's bytes
        # (the native module's reader) and parses the message only when
        # another field is asked for: the same values either way.
        x = np.random.default_rng(10).standard_normal((2, 7, 16)).astype(np.float32)
        for options in ({}, {"dtype": "float16"}, {"dtype": "bfloat16"},
                        {"trace": True, "seed": 4}):
            with self.subTest(options=options):
                raw = self.client.request_bytes(x, **options)
                response = self.client._call(self.client._forward_bytes, raw, None)
                self.assertIsInstance(response, bytes)
                fast = ForwardResult.from_bytes(response)
                slow = ForwardResult(router_pb2.ForwardResponse.FromString(response))
                self.assertEqual(fast.y.dtype, slow.y.dtype)
                np.testing.assert_array_equal(fast.y, slow.y)
                self.assertTrue(fast.y.flags.writeable)
                self.assertEqual(fast.degraded, slow.degraded)
                self.assertEqual(fast.response, slow.response)
                self.assertEqual(fast.losses, slow.losses)
                self.assertEqual(fast.kept_per_expert, slow.kept_per_expert)
                self.assertEqual(repr(fast), repr(slow))
        if not NATIVE_BUILT:
            return
        from moe_client._generated import _transport
        y = encode_tensor(np.ones((1, 2, 3), np.float32)).SerializeToString()
        cases = {
            # degraded, unknown fields of every wire type, shape unpacked
            b"\x28\x01" + b"\x0a" + bytes([len(y)]) + y + b"\x98\x06\x07"
            b"\xa1\x06" + b"\0" * 8 + b"\xad\x06" + b"\0" * 4:
                (1, (1, 2, 3), True),
            b"\x0a\x0a\x08\x01\x10\x02\x10\x03\x1a\x02ab":
                (1, (2, 3), False),
            b"": (0, (), False),
        }
        for raw, (dtype, shape, degraded) in cases.items():
            fields = _transport.forward_fields(raw)
            self.assertIsNotNone(fields, raw)
            self.assertEqual((fields[0], fields[1], fields[3]), (dtype, shape, degraded))
        # Bytes only protobuf should read: None, never an exception.
        for raw in (b"\x0a\x05\x08", b"\x0a\x00\x0a\x00", b"\x2b", b"\x28",
                    b"\x0a\x03\x12\x05\x01", b"\xff" * 11):
            self.assertIsNone(_transport.forward_fields(raw), raw)
        self.assertEqual(len(_transport.forward_fields(b"\x0a" + bytes([len(y)]) + y)[2]),
                         24)

    def test_ctrl_c_ends_a_waiting_call(self):
        # A listener that never speaks HTTP/2: the call waits. A signal
        # handler that raises (Python's SIGINT handler raises
        # KeyboardInterrupt) ends it long before its deadline.
        class Interrupted(Exception):
            pass

        def interrupt(signum, frame):
            raise Interrupted()

        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        previous = signal.signal(signal.SIGALRM, interrupt)
        try:
            with RouterClient("127.0.0.1:%d" % silent.getsockname()[1], timeout=20,
                              max_attempts=1, transport=self.TRANSPORT) as c:
                start = time.time()
                signal.setitimer(signal.ITIMER_REAL, 0.5)
                with self.assertRaises(Interrupted):
                    c.forward(np.zeros((1, 4, 16), np.float32))
                self.assertLess(time.time() - start, 3)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            silent.close()

    def test_the_transport_is_the_one_asked_for(self):
        self.assertEqual(self.client.transport, self.TRANSPORT)
        if NATIVE_BUILT:
            self.assertTrue(native_transport_available())
        with self.assertRaises(ValueError):
            RouterClient(self.up.target, transport="carrier pigeon")

    def test_both_transports_give_the_same_bits(self):
        x = np.random.default_rng(8).standard_normal((2, 9, 16)).astype(np.float32)
        other = "grpcio" if self.TRANSPORT == "native" else "native"
        if other == "native" and not NATIVE_BUILT:
            other = "grpcio"
        with RouterClient(self.up.target, timeout=30, transport=other) as c:
            a = self.client.forward(x, seed=9, trace=True)
            b = c.forward(x, seed=9, trace=True)
        np.testing.assert_array_equal(a.y, b.y)
        self.assertEqual(a.response, b.response)

    def test_forwards_from_threads_share_one_client(self):
        # The native transport releases the GIL while it waits: calls from
        # several threads overlap on one channel.
        xs = [np.random.default_rng(20 + i).standard_normal((1, 6, 16)).astype(np.float32)
              for i in range(4)]
        alone = [self.client.forward(x, policy="all").y for x in xs]
        results = [[] for _ in xs]

        def run(i):
            for _ in range(10):
                results[i].append(self.client.forward(xs[i], policy="all").y)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(xs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        for i, ys in enumerate(results):
            self.assertEqual(len(ys), 10, "thread %d did not finish" % i)
            for y in ys:
                # Concurrent forwards may share worker calls (dynamic
                # batching), whose GEMMs round differently in the last bits.
                np.testing.assert_allclose(y, alone[i], atol=1e-6)


class PythonClientTlsTest(unittest.TestCase):
    """moe-up with mutual TLS on both hops and a token (certificates from
    tests/testing/make_test_pki.sh); the client with and without them."""

    TRANSPORT = DEFAULT_TRANSPORT

    @classmethod
    def setUpClass(cls):
        cls.pki = tempfile.mkdtemp(prefix="moe-pyclient-pki-")
        subprocess.run([os.path.join(HERE, "..", "testing", "make_test_pki.sh"), cls.pki],
                       check=True, capture_output=True)
        # moe-up uses one certificate for every process and as the router's
        # client certificate toward the workers: it needs both usages.
        p = lambda name: os.path.join(cls.pki, name)  # noqa: E731
        ext = p("both.ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                    "extendedKeyUsage=serverAuth,clientAuth\n")
        subprocess.run(["openssl", "req", "-new", "-key", p("server.key"), "-out",
                        p("both.csr"), "-subj", "/CN=moe-up"], check=True,
                       capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", p("both.csr"), "-CA", p("ca.crt"),
                        "-CAkey", p("ca.key"), "-CAcreateserial", "-days", "2",
                        "-out", p("both.crt"), "-extfile", ext], check=True,
                       capture_output=True)
        with open(p("tokens"), "w") as f:
            f.write("py-token\n")
        cls.up = MoeUp(os.path.join(GOLDEN_DIR, "B2_moe_eval_drop_cap12.safetensors"),
                       flags=["--tls_cert_file=" + p("both.crt"),
                              "--tls_key_file=" + p("server.key"),
                              "--tls_ca_file=" + p("ca.crt"),
                              "--tls_client_ca_file=" + p("ca.crt"),
                              "--auth_tokens_file=" + p("tokens")])

    @classmethod
    def tearDownClass(cls):
        cls.up.stop()
        shutil.rmtree(cls.pki, ignore_errors=True)

    def read(self, name):
        with open(os.path.join(self.pki, name), "rb") as f:
            return f.read()

    def client(self, **kw):
        return RouterClient(self.up.target, timeout=10, max_attempts=1,
                            transport=self.TRANSPORT, **kw)

    def test_with_certificates_and_token_it_answers(self):
        g = golden("B2_moe_eval_drop_cap12")
        with self.client(root_certificates=self.read("ca.crt"),
                         private_key=self.read("client.key"),
                         certificate_chain=self.read("client.crt"),
                         token="py-token") as c:
            r = c.forward(g["input.x"], policy="all")
            self.assertLessEqual(float(np.abs(r.y - g["output.y"]).max()), 1e-5)
            self.assertEqual(len(c.model_info().workers), 2)

    def test_a_token_a_header_cannot_carry_is_refused_at_once(self):
        # gRPC's C++ library would abort the process on such a header.
        for token in ("py-token\n", "py-t\u00f6ken", "a\tb"):
            with self.assertRaises(ValueError) as caught:
                self.client(token=token)
            self.assertIn("printable ASCII", str(caught.exception))
        if NATIVE_BUILT:
            from moe_client._generated import _transport
            channel = _transport.Channel(self.up.target)
            for metadata in ((("authorization", "Bearer x\n"),), (("Upper", "x"),),
                             (("", "x"),)):
                with self.assertRaises(ValueError, msg=metadata):
                    channel.unary("/moe.v1.Router/Forward", b"", 1.0, metadata)
            # Binary values carry any bytes.
            with self.assertRaises(_transport.RpcError):
                channel.unary("/moe.v1.Router/Forward", b"", 1.0,
                              (("x-bin", "\n\u00f6"),))
            # Any timeout: none, zero, negative, unbounded.
            for timeout in (None, 0.0, -1.0, float("inf"), float("nan")):
                with self.assertRaises(_transport.RpcError, msg=timeout):
                    channel.unary("/moe.v1.Router/Forward", b"", timeout)
            channel.close()
            with self.assertRaises(ValueError):
                channel.unary("/moe.v1.Router/Forward", b"")

    def test_without_a_token_unauthenticated(self):
        g = golden("B2_moe_eval_drop_cap12")
        with self.client(root_certificates=self.read("ca.crt"),
                         private_key=self.read("client.key"),
                         certificate_chain=self.read("client.crt")) as c:
            with self.assertRaises(MoeError) as e:
                c.forward(g["input.x"], request_id="py-no-token")
            self.assertEqual(e.exception.code, grpc.StatusCode.UNAUTHENTICATED)
            # Refused at its headers (TLS): the router names the request
            # in the message, and the error says it once.
            self.assertEqual(e.exception.request_id, "py-no-token")
            self.assertTrue(str(e.exception).endswith(" [request py-no-token]"),
                            str(e.exception))
            self.assertEqual(str(e.exception).count("[request "), 1, str(e.exception))
            self.assertTrue(c.model_info().workers_hidden)

    def test_without_a_client_certificate_or_in_plaintext_refused(self):
        g = golden("B2_moe_eval_drop_cap12")
        for kw in ({"root_certificates": self.read("ca.crt")}, {}):
            with self.client(token="py-token", **kw) as c:
                with self.assertRaises(MoeError) as e:
                    c.forward(g["input.x"])
                self.assertEqual(e.exception.code, grpc.StatusCode.UNAVAILABLE, kw)


class PythonClientTracingTest(unittest.TestCase):
    """traceparent= puts a forward in the caller's trace: moe-up's router
    sends its spans to an OTLP/HTTP receiver in this test."""

    @classmethod
    def setUpClass(cls):
        import http.server
        cls.bodies = []
        bodies = cls.bodies

        class Receiver(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        cls.receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        threading.Thread(target=cls.receiver.serve_forever, daemon=True).start()
        cls.up = MoeUp(os.path.join(GOLDEN_DIR, "B2_moe_eval_drop_cap12.safetensors"),
                       flags=["--otlp_traces_endpoint=http://127.0.0.1:%d/v1/traces"
                              % cls.receiver.server_address[1]])

    @classmethod
    def tearDownClass(cls):
        cls.up.stop()
        cls.receiver.shutdown()

    def span(self, request_id):
        """The router's span of the forward `request_id` (not its worker
        calls' spans, which name the forward too)."""
        deadline = time.time() + 20
        while time.time() < deadline:
            for body in list(self.bodies):
                for rs in body["resourceSpans"]:
                    for ss in rs["scopeSpans"]:
                        for span in ss["spans"]:
                            if span["kind"] != 2:  # SPAN_KIND_SERVER
                                continue
                            for a in span.get("attributes", []):
                                if a["key"] == "moe.request_id" and \
                                        a["value"]["stringValue"] == request_id:
                                    return span
            time.sleep(0.1)
        return None

    def test_a_sampled_traceparent_puts_the_forward_in_the_callers_trace(self):
        g = golden("B2_moe_eval_drop_cap12")
        trace = "%032x" % 0x4bf92f3577b34da6a3ce929d0e0e4736
        for transport in (["native"] if NATIVE_BUILT else []) + ["grpcio"]:
            with RouterClient(self.up.target, timeout=30, transport=transport) as c:
                caller = "%016x" % (0x00f067aa0ba902b7 + len(transport))
                c.forward(g["input.x"], request_id="py-" + transport,
                          traceparent="00-%s-%s-01" % (trace, caller))
                c.forward_async(g["input.x"], request_id="py-async-" + transport,
                                traceparent="00-%s-%s-01" % (trace, caller)).result()
                c.forward(g["input.x"], request_id="py-unsampled-" + transport,
                          traceparent="00-%s-%s-00" % (trace, caller))
                with self.assertRaises(ValueError):
                    c.forward(g["input.x"], traceparent="00-\n")
                for rid in ("py-" + transport, "py-async-" + transport):
                    span = self.span(rid)
                    self.assertIsNotNone(span, rid)
                    self.assertEqual(span["traceId"], trace)
                    self.assertEqual(span["parentSpanId"], caller)
                    self.assertEqual(span["name"], "moe.v1.Router/Forward")
        time.sleep(2.5)  # past the router's export interval
        for transport in ("native", "grpcio"):
            for body in self.bodies:
                self.assertNotIn('"py-unsampled-%s"' % transport, json.dumps(body))


# What WheelTest runs with a virtual environment's python, outside the
# source tree: it forwards the .npy it is given and says where moe_client
# came from.
_WHEEL_PROBE = """
import json, sys
import numpy as np
import moe_client
from moe_client import RouterClient, native_transport_available
with RouterClient(sys.argv[1], timeout=30) as client:
    np.save(sys.argv[3], client.forward(np.load(sys.argv[2]), policy="all").y)
print(json.dumps({"file": moe_client.__file__, "version": moe_client.__version__,
                  "native": native_transport_available()}))
"""


class WheelTest(unittest.TestCase):
    """./moe python-wheel's wheels (tools/python_wheel.py) install with pip
    into virtual environments, from files alone, and serve from there."""

    @classmethod
    def setUpClass(cls):
        cls.source = os.path.abspath(os.path.join(HERE, "..", ".."))
        with open(os.path.join(cls.source, "CMakeLists.txt")) as f:
            cls.version = re.search(r"project\(moe_serve VERSION (\S+)", f.read()).group(1)
        cls.tmp = tempfile.mkdtemp(prefix="moe-wheel-test-")
        cls.wheels = os.path.join(cls.tmp, "wheels")
        r = subprocess.run(["/usr/bin/python3",
                            os.path.join(cls.source, "tools", "python_wheel.py"),
                            cls.source, cls.wheels],
                           capture_output=True, text=True, timeout=240)
        if r.returncode != 0:
            raise RuntimeError("python_wheel.py failed:\n" + r.stdout + r.stderr)
        # A native wheel where the source tree has the module (a sanitizer
        # build makes none, but finds the plain build's there).
        cls.has_native = bool(glob.glob(os.path.join(
            cls.source, "client", "python", "moe_client", "_generated", "_transport*.so")))
        cls.pure = "moe_serve_client-%s-py3-none-any.whl" % cls.version
        tag = "cp%d%d" % sys.version_info[:2]
        cls.native = "moe_serve_client-%s-%s-%s-linux_x86_64.whl" % (cls.version, tag, tag)
        cls.up = MoeUp(os.path.join(GOLDEN_DIR, "B2_moe_eval_drop_cap12.safetensors"))

    @classmethod
    def tearDownClass(cls):
        cls.up.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_the_wheels_hold_the_package_and_its_requirements(self):
        made = sorted(os.listdir(self.wheels))
        self.assertEqual(made, sorted([self.pure] + ([self.native] if self.has_native else [])))
        for wheel in made:
            with zipfile.ZipFile(os.path.join(self.wheels, wheel)) as z:
                names = z.namelist()
                for must in ["moe_client/__init__.py", "moe_client/client.py",
                             "moe_client/_generated/version.py",
                             "moe_client/_generated/moe/v1/router_pb2.py",
                             "moe_client/_generated/moe/v1/router_pb2_grpc.py",
                             "moe_client/_generated/moe/v1/tensor_pb2.py"]:
                    self.assertIn(must, names, wheel)
                modules = [n for n in names if n.endswith(".so")]
                self.assertEqual(len(modules), 1 if wheel == self.native else 0,
                                 (wheel, modules))
                self.assertFalse([n for n in names if "__pycache__" in n or n.endswith(".cc")])
                metadata = z.read("moe_serve_client-%s.dist-info/METADATA"
                                  % self.version).decode()
                # "grpcio>=1.51" or, from older setuptools, "grpcio (>=1.51)".
                for name, least in [("grpcio", "1.51"), ("protobuf", "3.20"),
                                    ("numpy", "1.21")]:
                    self.assertRegex(metadata, r"Requires-Dist: %s ?\(?>=%s\b"
                                     % (name, re.escape(least)))

    def install_and_forward(self, name, *pip_args):
        """A virtual environment (Debian's grpcio, protobuf and numpy from
        the system's site-packages) with the client installed by `pip
        install pip_args`, no network, then _WHEEL_PROBE run from it
        against moe-up on the golden input: (what it said, max |y - golden|)."""
        venv = os.path.join(self.tmp, name)
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", venv],
                       check=True, timeout=120)
        python = os.path.join(venv, "bin", "python")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        r = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-index"]
                           + list(pip_args), capture_output=True, text=True, env=env,
                           timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        g = golden("B2_moe_eval_drop_cap12")
        x_path, y_path = os.path.join(venv, "x.npy"), os.path.join(venv, "y.npy")
        np.save(x_path, g["input.x"])
        r = subprocess.run([python, "-c", _WHEEL_PROBE, self.up.target, x_path, y_path],
                           capture_output=True, text=True, env=env, cwd=venv, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        said = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertTrue(os.path.realpath(said["file"]).startswith(os.path.realpath(venv)),
                        said)
        self.assertEqual(said["version"], self.version)
        return said, float(np.abs(np.load(y_path) - g["output.y"]).max())

    def test_find_links_installs_the_best_wheel_and_serves_the_golden_forward(self):
        said, err = self.install_and_forward("venv-links", "--find-links", self.wheels,
                                             "moe-serve-client")
        self.assertEqual(said["native"], self.has_native)
        self.assertLessEqual(err, 1e-5)

    def test_the_pure_wheel_serves_through_grpcio(self):
        said, err = self.install_and_forward("venv-pure",
                                             os.path.join(self.wheels, self.pure))
        self.assertFalse(said["native"])
        self.assertLessEqual(err, 1e-5)


if NATIVE_BUILT:
    class PythonClientGrpcioTest(PythonClientTest):
        TRANSPORT = "grpcio"

    class PythonClientTlsGrpcioTest(PythonClientTlsTest):
        TRANSPORT = "grpcio"


if __name__ == "__main__":
    unittest.main(verbosity=2)
