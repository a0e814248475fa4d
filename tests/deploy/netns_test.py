#!/usr/bin/python3
"""Multi-host test in network namespaces (needs root, as CI has).

One namespace per host (a router, two workers) plus a switch namespace with a
bridge, joined by veth pairs, addresses from 198.18.0.0/15 (reserved for
network benchmarks). Each host gets a hosts file with the StatefulSet names
moe-expert-<i>.moe-expert. The router starts first and finds the workers by
name when they come; then a worker's link is cut (the router's failure
policy must answer within the deadline), restored (the router must recover),
and everything created is removed. No traffic leaves the namespaces.

Usage: netns_test.py BIN_DIR GOLDEN_DIR
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

BIN_DIR, GOLDEN_DIR = sys.argv[1:3]
del sys.argv[1:3]
CHECKPOINT = os.path.join(GOLDEN_DIR, "A_moe_eval_nodrop.safetensors")
TAG = "moe%d" % (os.getpid() % 100000)
SWITCH = TAG + "-sw"
HOSTS = {  # namespace -> address
    TAG + "-r": "198.18.0.10",
    TAG + "-w0": "198.18.0.11",
    TAG + "-w1": "198.18.0.12",
}
ROUTER, W0, W1 = list(HOSTS)


def sh(*cmd, check=True):
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True)


def in_ns(ns, *cmd):
    return ["ip", "netns", "exec", ns, *cmd]


class Network:
    def __init__(self):
        self.created = []
        sh("ip", "netns", "add", SWITCH)
        self.created.append(SWITCH)
        sh(*in_ns(SWITCH, "ip", "link", "add", "br0", "type", "bridge"))
        sh(*in_ns(SWITCH, "ip", "link", "set", "br0", "up"))
        hosts = "127.0.0.1 localhost\n%s moe-expert-0.moe-expert\n%s moe-expert-1.moe-expert\n" % (
            HOSTS[W0], HOSTS[W1])
        for i, (ns, address) in enumerate(HOSTS.items()):
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
            os.makedirs("/etc/netns/" + ns, exist_ok=True)
            with open("/etc/netns/%s/hosts" % ns, "w") as f:
                f.write(hosts)
            host_end, switch_end = "v%s-%d" % (TAG, i), "s%s-%d" % (TAG, i)
            sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", switch_end)
            sh("ip", "link", "set", host_end, "netns", ns)
            sh("ip", "link", "set", switch_end, "netns", SWITCH)
            sh(*in_ns(SWITCH, "ip", "link", "set", switch_end, "master", "br0", "up"))
            sh(*in_ns(ns, "ip", "addr", "add", address + "/24", "dev", host_end))
            sh(*in_ns(ns, "ip", "link", "set", host_end, "up"))
            sh(*in_ns(ns, "ip", "link", "set", "lo", "up"))

    def switch_port(self, ns):
        return "s%s-%d" % (TAG, list(HOSTS).index(ns))

    def set_link(self, ns, up):
        sh(*in_ns(SWITCH, "ip", "link", "set", self.switch_port(ns), "up" if up else "down"))

    def remove(self):
        for ns in reversed(self.created):
            sh("ip", "netns", "delete", ns, check=False)
            shutil.rmtree("/etc/netns/" + ns, ignore_errors=True)


class NetnsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise AssertionError("the multi-host test needs root (ip netns); CI runs as root")
        cls.tmp = tempfile.mkdtemp(prefix="moe-netns-")
        cls.net = Network()
        cls.procs = []
        cls.logs = []

    @classmethod
    def tearDownClass(cls):
        for p in cls.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in cls.logs:
            log.close()
        cls.net.remove()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        for ns in [SWITCH, *HOSTS]:
            assert sh("ip", "netns", "pids", ns, check=False).returncode != 0
            assert not os.path.exists("/etc/netns/" + ns)

    def start(self, ns, name, *args):
        log = open(os.path.join(self.tmp, name + ".log"), "w")
        self.logs.append(log)
        p = subprocess.Popen(in_ns(ns, os.path.join(BIN_DIR, args[0]), *args[1:]),
                             stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def client(self, *args, timeout=60):
        return subprocess.run(in_ns(ROUTER, os.path.join(BIN_DIR, "moe-client"), *args),
                              capture_output=True, text=True, timeout=timeout)

    def forward(self, deadline_s):
        """Returns the moe-client result and the call's latency in seconds,
        as the client measured it (process start-up excluded)."""
        r = self.client("forward", "--target=127.0.0.1:50051",
                        "--input=" + CHECKPOINT, "--policy=all",
                        "--timeout_seconds=%g" % deadline_s, "--allow_degraded",
                        "--output=" + os.path.join(self.tmp, "y.safetensors"))
        m = re.search(r"latency: ([0-9.]+) ms", r.stdout)
        return r, float(m.group(1)) / 1e3 if m else float("inf")

    def wait_worker(self, address, up, timeout):
        deadline = time.monotonic() + timeout
        start = time.monotonic()
        while time.monotonic() < deadline:
            r = self.client("info", "--target=127.0.0.1:50051", "--timeout_seconds=2")
            lines = [l for l in r.stdout.splitlines()
                     if l.startswith("worker %s: " % address)]
            # "worker A: up, ..." or "worker A: unreachable (why), ..."
            if r.returncode == 0 and lines and \
                    lines[0].startswith("worker %s: up," % address) == up:
                return time.monotonic() - start
            time.sleep(0.1)
        raise AssertionError("worker %s never %s" % (address, "up" if up else "down"))

    def test_router_finds_workers_by_name_survives_a_cut_link_and_recovers(self):
        # The router starts before its workers.
        router = self.start(ROUTER, "router", "moe-router", "--checkpoint=" + CHECKPOINT,
                            "--worker_template=moe-expert-{i}.moe-expert:50052",
                            "--num_workers=2", "--host=0.0.0.0", "--port=50051",
                            "--metrics_port=-1", "--probe_interval_ms=200",
                            "--on_expert_failure=drop")
        deadline = time.monotonic() + 60
        while True:  # listening, but not SERVING: it has no workers yet
            r = self.client("health", "--target=127.0.0.1:50051", "--timeout_seconds=2")
            if r.stdout.strip():
                break
            self.assertIsNone(router.poll(), "router exited")
            self.assertLess(time.monotonic(), deadline, "router never listened")
            time.sleep(0.2)
        self.assertEqual(r.stdout.strip(), "NOT_SERVING")
        for i, ns in enumerate((W0, W1)):
            self.start(ns, "worker%d" % i, "moe-expert", "--checkpoint=" + CHECKPOINT,
                       "--shard=%d" % i, "--num_shards=2", "--host=0.0.0.0",
                       "--port=50052", "--metrics_port=-1")
        deadline = time.monotonic() + 90
        while self.client("health", "--target=127.0.0.1:50051",
                          "--timeout_seconds=2").returncode != 0:
            self.assertIsNone(router.poll(), "router exited")
            self.assertLess(time.monotonic(), deadline, "router never SERVING")
            time.sleep(0.2)

        r, took = self.forward(5)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertNotIn("DEGRADED", r.stdout)
        print("\nhealthy forward across namespaces: %.0f ms" % (took * 1e3))

        # Cut worker 1's link: its experts (2, 3) are dropped within the
        # deadline, first by the call's deadline, then at once (marked down).
        self.net.set_link(W1, False)
        r, took = self.forward(3)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("DEGRADED: experts [2,3] unavailable", r.stdout)
        self.assertLess(took, 3.0)
        print("first forward after the cut: degraded in %.0f ms (deadline 3 s)" % (took * 1e3))
        down = self.wait_worker("moe-expert-1.moe-expert:50052", False, 10)
        r, took = self.forward(3)
        self.assertIn("DEGRADED", r.stdout)
        print("worker marked down %.1f s after; next forward degraded in %.0f ms" % (down, took * 1e3))

        # Restore the link: the router probes the worker back.
        self.net.set_link(W1, True)
        recovered = self.wait_worker("moe-expert-1.moe-expert:50052", True, 30)
        r, took = self.forward(5)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertNotIn("DEGRADED", r.stdout)
        print("link restored: worker up again after %.1f s; forward in %.0f ms" % (recovered, took * 1e3))


if __name__ == "__main__":
    unittest.main(verbosity=2)
