#!/usr/bin/python3
"""Observability end to end: Prometheus rules and dashboard against live
metrics, and a real Prometheus server scraping a moe-up deployment.

Usage: observability_test.py BIN_DIR GOLDEN_DIR DEPLOY_DIR

Everything listens on 127.0.0.1; every process is stopped at the end.
"""

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

BIN_DIR, GOLDEN_DIR, DEPLOY_DIR = sys.argv[1:4]
del sys.argv[1:4]
RULES = os.path.join(DEPLOY_DIR, "prometheus", "moe-rules.yml")
RULES_TEST = os.path.join(DEPLOY_DIR, "prometheus", "moe-rules.test.yml")
DASHBOARD = os.path.join(DEPLOY_DIR, "grafana", "moe-serve-dashboard.json")
CASE = "B2_moe_eval_drop_cap12"  # per forward: 96 kept, 160 dropped (capacity)

PROMQL_WORDS = {
    "sum", "avg", "max", "min", "count", "by", "without", "rate", "irate",
    "increase", "histogram_quantile", "scalar", "vector", "on", "ignoring",
    "group_left", "group_right", "and", "or", "unless", "le", "offset",
    "bool", "topk", "bottomk", "abs", "clamp_min", "clamp_max",
}


def metric_names_in(expr):
    """Metric (or recording rule) names an expression reads."""
    expr = re.sub(r'"[^"]*"', "", expr)           # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)         # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)        # ranges
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        word = m.group(0)
        after = expr[m.end():].lstrip()
        if word in PROMQL_WORDS or after.startswith("("):
            continue
        if re.fullmatch(r"[0-9.e+-]+", word):
            continue
        names.add(word)
    return names


def rule_exprs():
    """(record or alert name, expr) pairs of the rules file, without YAML."""
    text = read(RULES)
    out = []
    for block in re.split(r"\n\s*- (?=record:|alert:)", text)[1:]:
        name = re.match(r"(record|alert): (\S+)", block).group(2)
        expr = re.search(r"expr: (\|\n((?:\s{10}.*\n?)+)|(.*))", block)
        body = expr.group(2) if expr.group(2) else expr.group(3)
        out.append((name, " ".join(body.split())))
    return out


def read(path):
    with open(path) as f:
        return f.read()


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value is not None:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out waiting for " + what)


class Deployment:
    """moe-up on a golden checkpoint; endpoints from its endpoints file."""

    def __init__(self, tmp, case):
        self.port_file = os.path.join(tmp, "up.port")
        self.endpoints_file = os.path.join(tmp, "endpoints")
        self.log = open(os.path.join(tmp, "moe-up.log"), "w")
        self.proc = subprocess.Popen(
            [os.path.join(BIN_DIR, "moe-up"),
             "--checkpoint=" + os.path.join(GOLDEN_DIR, case + ".safetensors"),
             "--workers=2", "--port=0", "--port_file=" + self.port_file,
             "--endpoints_file=" + self.endpoints_file,
             # moe-balancer too: its metrics are scraped and its rules read.
             "--balance",
             # Tracing on, so that moe_trace_spans_total is there for the
             # rules that read it (nothing is sampled: no span is sent to
             # this port, where nothing listens).
             "--otlp_traces_endpoint=http://127.0.0.1:1/v1/traces"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: True if os.path.exists(self.port_file) else
                 (_ for _ in ()).throw(AssertionError("moe-up exited"))
                 if self.proc.poll() is not None else None, 90, "moe-up")
        self.endpoints = dict(line.split() for line in
                              read(self.endpoints_file).splitlines())

    def forward(self, case, output):
        subprocess.run(
            [os.path.join(BIN_DIR, "moe-client"), "forward",
             "--target=" + self.endpoints["router"],
             "--input=" + os.path.join(GOLDEN_DIR, case + ".safetensors"),
             "--output=" + output, "--summary=false"],
            check=True, capture_output=True)

    def metrics_targets(self):
        return [v for k, v in self.endpoints.items() if k.endswith("_metrics")]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.log.close()


class RulesTest(unittest.TestCase):
    def test_promtool_check_and_unit_tests(self):
        subprocess.run(["promtool", "check", "rules", RULES], check=True,
                       capture_output=True)
        result = subprocess.run(["promtool", "test", "rules", RULES_TEST],
                                capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_alerts_carry_for_severity_summary_runbook(self):
        text = read(RULES)
        alerts = re.split(r"\n\s*- alert: ", text)[1:]
        self.assertEqual(len(alerts), 11)
        for alert in alerts:
            for key in ("for:", "severity:", "summary:", "runbook_url:"):
                self.assertIn(key, alert, alert.splitlines()[0])


class LiveTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="moe-observability-")
        cls.deployment = Deployment(cls.tmp, CASE)
        cls.names = set()
        for target in cls.deployment.metrics_targets():
            for line in http_get("http://%s/metrics" % target).splitlines():
                if line and not line.startswith("#"):
                    cls.names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))

    @classmethod
    def tearDownClass(cls):
        cls.deployment.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def known(self):
        # "up" is Prometheus' own, about every scrape target.
        return self.names | {name for name, _ in rule_exprs()} | {"up"}

    def test_rules_read_existing_metrics(self):
        for name, expr in rule_exprs():
            missing = metric_names_in(expr) - self.known()
            self.assertFalse(missing, "%s reads unknown %s" % (name, missing))

    def test_dashboard_panels_read_existing_metrics(self):
        dashboard = json.loads(read(DASHBOARD))
        self.assertEqual(dashboard["uid"], "moe-serve-overview")
        variables = [v["name"] for v in dashboard["templating"]["list"]]
        self.assertIn("datasource", variables)
        self.assertGreaterEqual(len(dashboard["panels"]), 10)
        for panel in dashboard["panels"]:
            self.assertEqual(panel["datasource"]["uid"], "${datasource}")
            self.assertTrue(panel["targets"], panel["title"])
            for target in panel["targets"]:
                names = metric_names_in(target["expr"])
                self.assertTrue(names, target["expr"])
                missing = names - self.known()
                self.assertFalse(missing, "%s: unknown %s" % (panel["title"], missing))

    def test_stats_view_shows_load_drops_and_workers(self):
        self.deployment.forward(CASE, os.path.join(self.tmp, "y-stats"))
        router_metrics = self.deployment.endpoints["router_metrics"]
        total = sum(float(line.split()[-1]) for line in
                    http_get("http://%s/metrics" % router_metrics).splitlines()
                    if line.startswith("moe_router_requests_total{"))
        result = subprocess.run(
            [os.path.join(BIN_DIR, "moe-client"), "stats",
             "--target=" + self.deployment.endpoints["router"],
             "--iterations=1", "--interval=0.2"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        out = result.stdout
        self.assertIn("total %d requests" % total, out)
        self.assertIn("drops     ", out)
        self.assertIn("capacity", out)
        self.assertEqual(len(re.findall(r"^  expert +\d+ \|", out, re.M)), 4, out)
        self.assertEqual(out.count(" up;"), 2, out)
        # The forward above touched the workers: their shares of call time.
        self.assertRegex(out, r"worker load( since start)? \(share of call time, "
                              r"calls(/s)?\):( \S+ \d+% [0-9.]+(/s)?;)+")
        # B2's expert capacity, in the layer's line.
        self.assertRegex(out, r"\(the only layer\) +\S+ +\S+ +12 ")

    def test_prometheus_scrapes_and_recording_rules_match_requests(self):
        port = free_port()
        rules = os.path.join(self.tmp, "rules.yml")
        # Evaluate the rules every second instead of every 15 s.
        write(rules, read(RULES).replace("interval: 15s", "interval: 1s"))
        config = os.path.join(self.tmp, "prometheus.yml")
        targets = ", ".join('"%s"' % t for t in self.deployment.metrics_targets())
        write(config,
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "rule_files:\n  - %s\n"
            "scrape_configs:\n  - job_name: moe\n    static_configs:\n"
            "      - targets: [%s]\n" % (rules, targets))
        log = open(os.path.join(self.tmp, "prometheus.log"), "w")
        prometheus = subprocess.Popen(
            ["prometheus", "--config.file=" + config,
             "--storage.tsdb.path=" + os.path.join(self.tmp, "tsdb"),
             "--web.listen-address=127.0.0.1:%d" % port],
            stdout=log, stderr=subprocess.STDOUT)
        base = "http://127.0.0.1:%d" % port

        def query(q):
            try:
                body = json.loads(http_get(base + "/api/v1/query?query=" +
                                           urllib.parse.quote(q)))
            except OSError:
                return None
            return body["data"]["result"] if body.get("status") == "success" else None

        try:
            # Every target scraped once before the traffic, counters at 0.
            wait_for(lambda: True if (r := query("sum(up)")) and
                     float(r[0]["value"][1]) == 4 else None, 60, "4 targets up")
            forwards = 5
            for i in range(forwards):
                self.deployment.forward(CASE, os.path.join(self.tmp, "y%d" % i))
            wait_for(lambda: True if (r := query('moe_router_requests_total{code="OK"}'))
                     and float(r[0]["value"][1]) == forwards else None, 30,
                     "Prometheus to see the requests")

            def recorded(q):
                # A rule evaluated before the scrape that saw the forwards
                # recorded 0 / 0 = NaN: wait for a value computed from them.
                r = query(q)
                if not r or any(math.isnan(float(x["value"][1])) for x in r):
                    return None
                return r

            ratio = wait_for(lambda: recorded("moe:router_dropped_assignments:total_ratio_rate5m"),
                             30, "the dropped-ratio recording rule")
            # Each forward of B2 keeps 96 and drops 34 + 126 assignments.
            self.assertAlmostEqual(float(ratio[0]["value"][1]), 160 / 256, places=6)
            by_reason = {r["metric"]["reason"]: float(r["value"][1]) for r in
                         recorded("moe:router_dropped_assignments:ratio_rate5m")}
            self.assertAlmostEqual(by_reason["capacity"], 160 / 256, places=6)
            self.assertEqual(by_reason.get("expert_unavailable", 0), 0)
            balanced = recorded("moe:router_load_balancedness:rate5m")
            # B2 keeps 24 assignments on each of its 4 experts.
            self.assertAlmostEqual(float(balanced[0]["value"][1]), 1.0, places=6)
            rates = {r["metric"]["expert"]: float(r["value"][1]) for r in
                     recorded("moe:router_expert_assignments:rate1m")}
            self.assertEqual(sorted(rates), ["0", "1", "2", "3"])
            total = sum(rates.values())
            for expert, rate in rates.items():
                self.assertAlmostEqual(rate / total, 0.25, places=6, msg=expert)
            # Every panel's expression parses and evaluates in Prometheus
            # (the layer variable at "all").
            for panel in json.loads(read(DASHBOARD))["panels"]:
                for target in panel["targets"]:
                    expr = target["expr"].replace("$layer", ".*")
                    self.assertIsNotNone(query(expr), "%s: %s does not evaluate"
                                         % (panel["title"], expr))
            # The workers' stage shares add up to 1 (CPU workers: no copies).
            shares = {r["metric"]["stage"]: float(r["value"][1]) for r in wait_for(
                lambda: recorded("sum by (stage) (rate(moe_expert_stage_seconds_total[5m]))"
                                 " / scalar(sum(rate(moe_expert_stage_seconds_total[5m])))"),
                30, "the workers' stage shares")}
            self.assertAlmostEqual(sum(shares.values()), 1.0, places=6)
            self.assertGreater(shares["compute"], 0)
            self.assertEqual(shares.get("copy_in", 0), 0)
        finally:
            prometheus.send_signal(signal.SIGTERM)
            prometheus.wait(timeout=30)
            log.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
