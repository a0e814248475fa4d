#!/usr/bin/python3
"""The memory gRPC may hold for incoming messages is bounded
(--grpc_memory_bytes, a gRPC ResourceQuota; server/server_runner.h).

gRPC reads a unary call's whole message before its handler runs, so a
caller that starts many calls and sends most of each message, never the
rest, makes a server hold those bytes: up to a message limit on each of
--max_concurrent_streams streams of every connection, and the handler never
runs to refuse anything. Here a real moe-router (the golden model A, dim
16: a 5.5 MiB message limit; no workers, which the calls never reach) gets
one connection of 32 such calls, written frame by frame with python3-h2,
each declaring a 5,000,000-byte message and sending 4,500,000 bytes of it
(144 MB in all):

  - with --grpc_memory_bytes=16 MiB the router's resident memory stays
    within 80 MiB of where it was (the quota, gRPC's own state, and up to
    48 MiB of freed heap the allocator keeps on purpose: common/allocator.h), gRPC cancels streams (RST_STREAM
    ENHANCE_YOUR_CALM), closes it, or stops reading it; while that
    connection stays open another caller's call is answered, or refused
    for memory (never left waiting), and once it leaves callers are served;
  - with 1 GiB, the same calls are all sent and held (at least 120 MiB):
    the measure sees what the bound prevents.

Resident memory says nothing under AddressSanitizer (its quarantine keeps
freed blocks), so a sanitizer build checks the rest and the plain build
the sizes, as memory_test does.

Usage: grpc_memory_test.py BIN_DIR GOLDEN_DIR [SANITIZERS]
"""

import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest

import h2.config
import h2.connection
import h2.events
import h2.exceptions

BIN_DIR, GOLDEN_DIR = sys.argv[1:3]
del sys.argv[1:3]
SIZES_MEAN_SOMETHING = True
if len(sys.argv) > 1 and sys.argv[1].startswith("sanitize="):
    SIZES_MEAN_SOMETHING = "address" not in sys.argv.pop(1)

STREAMS = 32
DECLARED = 5_000_000  # under the router's 5.5 MiB message limit
SENT = 4_500_000      # of each message; the rest never comes
MiB = 1 << 20


def resident_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS for %d" % pid)


class Router:
    """moe-router on 127.0.0.1 with a free port and no workers."""

    def __init__(self, quota_bytes):
        self.tmp = tempfile.mkdtemp(prefix="grpc-memory-")
        port_file = os.path.join(self.tmp, "port")
        self.log_path = os.path.join(self.tmp, "router.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [os.path.join(BIN_DIR, "moe-router"),
             "--checkpoint=" + os.path.join(GOLDEN_DIR, "A_moe_eval_nodrop.safetensors"),
             # A port nobody listens on: the router listens meanwhile.
             "--workers=127.0.0.1:9", "--host=127.0.0.1", "--port=0",
             "--port_file=" + port_file, "--metrics_port=-1", "--warmup=false",
             "--grpc_memory_bytes=%d" % quota_bytes],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while not os.path.exists(port_file):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("moe-router did not start:\n" + self.logs())
            time.sleep(0.05)
        time.sleep(0.1)
        with open(port_file) as f:
            self.port = int(f.read())

    def logs(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Http2:
    """One HTTP/2 connection driven by hand: what a gRPC client library
    would never send (messages that never end)."""

    def __init__(self, port):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.out = b""
        self.closed = False
        self.resets = {}   # stream: error code
        self.trailers = {}  # stream: {name: value}

    def start_call(self, path):
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
            (b":authority", b"127.0.0.1:%d" % self.port),
            (b"content-type", b"application/grpc"), (b"te", b"trailers")])
        return sid

    def pump(self, timeout):
        """Writes what is pending and reads what came, for up to `timeout`."""
        self.out += self.conn.data_to_send()
        readable, writable, _ = select.select(
            [self.sock], [self.sock] if self.out else [], [], timeout)
        if writable:
            try:
                n = self.sock.send(self.out)
                self.out = self.out[n:]
            except (BlockingIOError, InterruptedError):
                pass
            except ConnectionError:  # closed by the server
                self.closed = True
                return
        if readable:
            try:
                data = self.sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionError:
                data = b""
            if not data:
                self.closed = True
                return
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError:  # frames after its GOAWAY
                self.closed = True
                return
            for event in events:
                if isinstance(event, h2.events.StreamReset):
                    self.resets[event.stream_id] = event.error_code
                elif isinstance(event, (h2.events.TrailersReceived,
                                        h2.events.ResponseReceived)):
                    # An error comes as headers alone ("Trailers-Only").
                    headers = dict(event.headers)
                    if b"grpc-status" in headers:
                        self.trailers[event.stream_id] = headers
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.closed = True


def stall(port, seconds):
    """STREAMS Forward calls on one connection, each sending SENT bytes of a
    DECLARED-byte message, for up to `seconds`. The connection (left open),
    the bytes that went out, and the streams reset."""
    c = Http2(port)
    sent = {}
    for _ in range(STREAMS):
        sid = c.start_call(b"/moe.v1.Router/Forward")
        # The gRPC message prefix: not compressed, then the length.
        c.conn.send_data(sid, b"\0" + struct.pack(">I", DECLARED))
        sent[sid] = 0
    deadline = time.time() + seconds
    while time.time() < deadline and not c.closed:
        for sid in sent:
            if sid in c.resets or sent[sid] >= SENT:
                continue
            n = min(c.conn.local_flow_control_window(sid),
                    c.conn.max_outbound_frame_size, SENT - sent[sid])
            # Only as much as goes out now: the socket may be full.
            if n > 0 and len(c.out) < (1 << 20):
                c.conn.send_data(sid, b"\x42" * n)
                sent[sid] += n
        c.pump(0.02)
        if all(sid in c.resets or sent[sid] >= SENT for sid in sent) and not c.out:
            break
    return c, sum(sent.values()), len(c.resets), c.closed


def one_call(port, seconds=10):
    """A whole (small, malformed) Forward on a new connection: its
    grpc-status; b"reset 11" when gRPC cancelled it for memory
    (ENHANCE_YOUR_CALM, RESOURCE_EXHAUSTED to a gRPC client, which may
    retry); b"closed" when gRPC closed its connection; None when nothing
    came back within `seconds`."""
    c = Http2(port)
    sid = c.start_call(b"/moe.v1.Router/Forward")
    c.conn.send_data(sid, b"\0" + struct.pack(">I", 3) + b"\xff\xff\xff",
                     end_stream=True)
    deadline = time.time() + seconds
    while (time.time() < deadline and sid not in c.trailers and
           sid not in c.resets and not c.closed):
        c.pump(0.05)
    c.sock.close()
    if sid in c.resets:
        return b"reset %d" % c.resets[sid]
    if sid not in c.trailers and c.closed:
        return b"closed"  # UNAVAILABLE to a gRPC client, which retries
    return c.trailers.get(sid, {}).get(b"grpc-status")


def another_caller(port, seconds=10):
    """What one_call gets (each try waiting up to 5 s), tried again as gRPC
    clients retry what gRPC cancelled or closed for memory, for up to
    `seconds`: the outcomes, joined ("nothing": a try left waiting)."""
    outcomes = []
    deadline = time.time() + seconds
    while True:
        outcomes.append(one_call(port, 5) or b"nothing")
        if outcomes[-1] not in (b"reset 11", b"closed") or time.time() > deadline:
            return b", ".join(outcomes)
        time.sleep(0.1)


class GrpcMemoryTest(unittest.TestCase):

    def held(self, quota_bytes):
        router = Router(quota_bytes)
        try:
            idle = resident_mib(router.proc.pid)
            conn, sent, resets, closed = stall(router.port, 15)
            # What the router holds now, the stalled calls still open.
            grown = resident_mib(router.proc.pid) - idle
            meanwhile = another_caller(router.port)
            conn.sock.close()
            after = another_caller(router.port)
            self.assertIsNone(router.proc.poll(), router.logs())
            return grown, sent, resets, closed, meanwhile, after, router.logs()
        finally:
            router.stop()

    def test_a_bounded_router_holds_what_its_quota_allows(self):
        grown, sent, resets, closed, meanwhile, after, logs = self.held(16 * MiB)
        print("16 MiB quota: %.0f MB sent, %d of %d streams reset, connection %s, "
              "router +%.1f MiB" % (sent / 1e6, resets, STREAMS,
                                    "closed" if closed else "open", grown))
        self.assertIn("gRPC holds at most 16 MiB of incoming messages", logs)
        if SIZES_MEAN_SOMETHING:
            self.assertLess(grown, 80,
                            "the router held %.1f MiB with a 16 MiB quota" % grown)
        # Held back one way or another: streams cancelled, the connection
        # closed, or no longer read.
        self.assertTrue(resets > 0 or closed or sent < STREAMS * SENT * 0.5,
                        "%d bytes sent, no stream reset" % sent)
        # Another caller, while that connection stays open, is answered
        # at once, or its stream cancelled or its connection closed for
        # memory (RESOURCE_EXHAUSTED or UNAVAILABLE to a gRPC client, which
        # retries): never left waiting. The bound is on memory, not on
        # fairness between connections.
        print("another caller meanwhile:", meanwhile)
        self.assertNotIn(b"nothing", meanwhile, logs)
        # Once it leaves, callers are served: INVALID_ARGUMENT (the message
        # is malformed) or UNAVAILABLE (the router has no workers).
        self.assertRegex(after, rb"^((reset 11|closed), )*(3|14)$", logs)

    def test_without_the_bound_the_same_calls_are_held(self):
        grown, sent, resets, closed, meanwhile, after, logs = self.held(1 << 30)
        print("1 GiB quota: %.0f MB sent, %d streams reset, router +%.1f MiB"
              % (sent / 1e6, resets, grown))
        self.assertEqual(resets, 0)
        self.assertFalse(closed)
        self.assertEqual(sent, STREAMS * SENT)
        if SIZES_MEAN_SOMETHING:
            self.assertGreater(grown, 120, "the router held only %.1f MiB" % grown)
        self.assertIn(meanwhile, (b"3", b"14"), logs)  # at the first try
        self.assertIn(after, (b"3", b"14"), logs)

    def test_a_bound_below_two_messages_is_an_error_naming_the_flag(self):
        for value, says in (("1048576", "less than two messages"),
                            ("-1", "must be >= 0")):
            out = subprocess.run(
                [os.path.join(BIN_DIR, "moe-router"),
                 "--checkpoint=" + os.path.join(GOLDEN_DIR, "A_moe_eval_nodrop.safetensors"),
                 "--workers=127.0.0.1:9", "--host=127.0.0.1", "--port=0",
                 "--metrics_port=-1", "--warmup=false", "--grpc_memory_bytes=" + value],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60, text=True)
            self.assertNotEqual(out.returncode, 0, out.stdout)
            self.assertIn("--grpc_memory_bytes", out.stdout)
            self.assertIn(says, out.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
