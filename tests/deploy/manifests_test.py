#!/usr/bin/python3
"""Offline checks of the Kubernetes deployment: every overlay (cpu, gpu,
tls, rest, balance; and with the tracing component) renders with kubectl
kustomize, every object validates against the
Kubernetes, prometheus-operator and cert-manager schemas with unknown
fields rejected, yamllint is clean,
the monitoring copies match deploy/prometheus and deploy/grafana, and every
container's command is a built moe-serve binary that accepts every flag its
args pass.

Usage: manifests_test.py REPO_ROOT BIN_DIR
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import unittest

import yaml

ROOT = sys.argv.pop(1)
BIN = sys.argv.pop(1)
DEPLOY = os.path.join(ROOT, "deploy")
VALIDATE = os.path.join(ROOT, "tests", "deploy", "validate", "validate.mjs")
EXPECTED_KINDS = {
    "Namespace", "ConfigMap", "PersistentVolumeClaim", "Deployment", "Service",
    "HorizontalPodAutoscaler", "StatefulSet", "PodDisruptionBudget",
    "NetworkPolicy", "ServiceMonitor", "PodMonitor", "PrometheusRule",
}


def read(path):
    with open(path) as f:
        return f.read()


# Every overlay, and some with a component ("cpu+tracing": the cpu overlay
# with deploy/k8s/components/tracing, as a user's kustomization adds it).
OVERLAYS = ("cpu", "gpu", "tls", "rest", "balance", "cpu+tracing", "gpu+tracing",
            "tls+tracing")


def render(overlay):
    k8s = os.path.join(DEPLOY, "k8s")
    base, *components = overlay.split("+")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(k8s, "overlays", base)
        if components:
            # Kustomize takes only relative paths to other kustomizations.
            rel = os.path.relpath(k8s, d)
            with open(os.path.join(d, "kustomization.yaml"), "w") as f:
                f.write("apiVersion: kustomize.config.k8s.io/v1beta1\n"
                        "kind: Kustomization\n"
                        "resources:\n  - %s/overlays/%s\n"
                        "components:\n" % (rel, base))
                for c in components:
                    f.write("  - %s/components/%s\n" % (rel, c))
            path = d
        result = subprocess.run(["kubectl", "kustomize", path],
                                capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError("kustomize %s: %s" % (overlay, result.stderr))
    return result.stdout


def objects(text):
    return [d for d in yaml.safe_load_all(text) if d]


def find(objs, kind, name):
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    raise AssertionError("no %s/%s" % (kind, name))


class ManifestsTest(unittest.TestCase):
    def test_overlays_render_and_validate(self):
        for overlay in OVERLAYS:
            text = render(overlay)
            objs = objects(text)
            tls = overlay.split("+")[0] == "tls"
            kinds = EXPECTED_KINDS | ({"Issuer", "Certificate"} if tls else set())
            self.assertEqual({o["kind"] for o in objs}, kinds, overlay)
            for o in objs:
                if o["kind"] != "Namespace":
                    self.assertEqual(o["metadata"].get("namespace"), "moe-serve",
                                     (overlay, o["kind"]))
            with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
                f.write(text)
                f.flush()
                result = subprocess.run(["node", VALIDATE, f.name],
                                        capture_output=True, text=True)
            self.assertEqual(result.returncode, 0,
                             overlay + "\n" + result.stdout + result.stderr)
            self.assertIn("%d objects checked, 0 problems" % len(objs), result.stdout)

    def test_rest_overlay_exposes_the_http_port(self):
        objs = objects(render("rest"))
        router = find(objs, "Deployment", "moe-router")["spec"]["template"]["spec"]
        container = router["containers"][0]
        self.assertIn("--http_port=8000", container["args"])
        self.assertIn({"name": "http", "containerPort": 8000}, container["ports"])
        ports = {p["name"]: p for p in find(objs, "Service", "moe-router")["spec"]["ports"]}
        self.assertEqual(ports["http"]["port"], 8000)
        self.assertEqual(ports["http"]["targetPort"], "http")

    def test_balance_overlay_gives_the_workers_and_one_balancer_the_token(self):
        objs = objects(render("balance"))
        balancer = find(objs, "Deployment", "moe-balancer")
        self.assertEqual(balancer["spec"]["replicas"], 1)
        self.assertEqual(balancer["spec"]["strategy"]["type"], "Recreate")
        experts = find(objs, "StatefulSet", "moe-expert")
        for pod in (balancer, experts):
            spec = pod["spec"]["template"]["spec"]
            args = spec["containers"][0]["args"]
            self.assertIn("--admin_token_file=/etc/moe-admin/token", args)
            secrets = [v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v]
            self.assertEqual(secrets, ["moe-admin-token"])
        policy = find(objs, "NetworkPolicy", "moe-expert-from-balancer")
        peer = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
        self.assertEqual(peer["app.kubernetes.io/component"], "balancer")
        # The HPA scales the workers; every pod it may run has a shard, and
        # routers and balancer find the pods by the headless Service.
        hpa = find(objs, "HorizontalPodAutoscaler", "moe-expert")
        self.assertEqual(hpa["spec"]["scaleTargetRef"]["kind"], "StatefulSet")
        config = find(objs, "ConfigMap", "moe-config")
        self.assertEqual(int(config["data"]["MOE_NUM_WORKERS"]), hpa["spec"]["maxReplicas"])
        self.assertLessEqual(hpa["spec"]["minReplicas"], experts["spec"]["replicas"])
        router = find(objs, "Deployment", "moe-router")
        for pod in (router, balancer):
            args = pod["spec"]["template"]["spec"]["containers"][0]["args"]
            self.assertIn("--workers_dns=moe-expert:50052", args)
            self.assertFalse([a for a in args if a.startswith(("--worker_template", "--num_workers"))])

    def test_tracing_component_sends_every_servers_spans(self):
        for overlay in ("cpu+tracing", "gpu+tracing", "tls+tracing"):
            objs = objects(render(overlay))
            config = find(objs, "ConfigMap", "moe-config")["data"]
            self.assertTrue(config["MOE_OTLP_TRACES_ENDPOINT"].startswith("http://"))
            self.assertEqual(config["MOE_TRACE_SAMPLE_RATIO"], "0")
            # The overlay's own settings stay.
            self.assertEqual(config["MOE_NUM_WORKERS"], "2")
            router = find(objs, "Deployment", "moe-router")
            args = router["spec"]["template"]["spec"]["containers"][0]["args"]
            self.assertIn("--otlp_traces_endpoint=$(MOE_OTLP_TRACES_ENDPOINT)", args)
            self.assertIn("--trace_sample_ratio=$(MOE_TRACE_SAMPLE_RATIO)", args)
            self.assertIn("--checkpoint=$(MOE_CHECKPOINT)", args)
            experts = find(objs, "StatefulSet", "moe-expert")
            args = experts["spec"]["template"]["spec"]["containers"][0]["args"]
            self.assertIn("--otlp_traces_endpoint=$(MOE_OTLP_TRACES_ENDPOINT)", args)
            self.assertFalse([a for a in args if a.startswith("--trace_sample_ratio")])
        # Without the component, nothing traces.
        self.assertNotIn("otlp", render("cpu"))

    def test_validator_rejects_misspelled_fields(self):
        text = render("cpu").replace("readinessProbe:", "readinesProbe:", 1)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(text)
            f.flush()
            result = subprocess.run(["node", VALIDATE, f.name],
                                    capture_output=True, text=True)
        self.assertEqual(result.returncode, 1)
        self.assertIn("unknown field /spec/template/spec/containers/0/readinesProbe",
                      result.stderr)

    def test_shape_of_the_deployment(self):
        cpu = objects(render("cpu"))
        router = find(cpu, "Deployment", "moe-router")
        self.assertEqual(router["spec"]["replicas"], 2)
        container = router["spec"]["template"]["spec"]["containers"][0]
        self.assertIn("--worker_template=moe-expert-{i}.moe-expert:50052", container["args"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            self.assertEqual(container[probe]["grpc"]["port"], 50051, probe)
        service = find(cpu, "Service", "moe-router")
        self.assertEqual(service["spec"]["ports"][0]["appProtocol"], "grpc")
        self.assertEqual(find(cpu, "Service", "moe-router-headless")["spec"]["clusterIP"], "None")
        experts = find(cpu, "StatefulSet", "moe-expert")
        self.assertEqual(experts["spec"]["serviceName"], "moe-expert")
        self.assertIn("--shard=auto", experts["spec"]["template"]["spec"]["containers"][0]["args"])
        self.assertEqual(find(cpu, "Service", "moe-expert")["spec"]["clusterIP"], "None")
        config = find(cpu, "ConfigMap", "moe-config")
        self.assertEqual(int(config["data"]["MOE_NUM_WORKERS"]), experts["spec"]["replicas"])
        self.assertEqual(config["data"]["MOE_DEVICE"], "cpu")
        policy = find(cpu, "NetworkPolicy", "moe-expert")
        self.assertEqual(policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
                         ["app.kubernetes.io/component"], "router")
        dashboard = find(cpu, "ConfigMap", "moe-grafana-dashboard")
        self.assertEqual(json.loads(dashboard["data"]["moe-serve-dashboard.json"])["uid"],
                         "moe-serve-overview")

        gpu = objects(render("gpu"))
        container = find(gpu, "StatefulSet", "moe-expert")["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(container["resources"]["limits"]["nvidia.com/gpu"], "1")
        self.assertEqual(find(gpu, "ConfigMap", "moe-config")["data"]["MOE_DEVICE"], "cuda")
        # The workers run the LibTorch-free worker from the GPU image; the
        # router keeps the CPU image.
        self.assertEqual(container["command"], ["/usr/local/bin/moe-expert-gpu"])
        self.assertEqual(container["image"], "ghcr.io/moe-serve/moe-serve-gpu:0.1.0")
        router = find(gpu, "Deployment", "moe-router")["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(router["image"], "ghcr.io/moe-serve/moe-serve:0.1.0")

    def test_every_flag_is_one_the_binary_takes(self):
        known = {}
        checked = 0
        for overlay in OVERLAYS:
            objs = objects(render(overlay))
            config = find(objs, "ConfigMap", "moe-config")["data"]
            for o in objs:
                if o["kind"] not in ("Deployment", "StatefulSet"):
                    continue
                for c in o["spec"]["template"]["spec"]["containers"]:
                    name = os.path.basename(c["command"][0])
                    if name not in known:
                        result = subprocess.run([os.path.join(BIN, name), "--help"],
                                                capture_output=True, text=True)
                        self.assertEqual(result.returncode, 0, name + result.stderr)
                        known[name] = set(re.findall(r"^\s+--(\w+)", result.stdout, re.M))
                        self.assertIn("metrics_port", known[name], name)
                    env = {e["name"] for e in c.get("env", [])}
                    if any(r["configMapRef"]["name"] == "moe-config"
                           for r in c.get("envFrom", []) if "configMapRef" in r):
                        env |= set(config)
                    for arg in c["args"]:
                        flag = re.match(r"--(\w+)", arg)
                        self.assertIsNotNone(flag, (overlay, name, arg))
                        # Kubernetes leaves a $(VAR) it cannot resolve as it is.
                        for var in re.findall(r"\$\((\w+)\)", arg):
                            self.assertIn(var, env, (overlay, name, arg))
                        self.assertIn(flag.group(1), known[name], (overlay, name, arg))
                        checked += 1
        self.assertEqual(set(known), {"moe-router", "moe-expert", "moe-expert-gpu",
                                      "moe-balancer"})
        self.assertGreater(checked, 30)

    def test_tls_overlay_secures_both_hops(self):
        tls = objects(render("tls"))
        router = find(tls, "Deployment", "moe-router")["spec"]["template"]["spec"]
        args = router["containers"][0]["args"]
        for flag in ("--tls_cert_file=", "--tls_client_ca_file=", "--worker_tls_ca_file=",
                     "--worker_tls_cert_file=", "--auth_tokens_file=", "--health_port=8081"):
            self.assertTrue(any(a.startswith(flag) for a in args), flag)
        experts = find(tls, "StatefulSet", "moe-expert")["spec"]["template"]["spec"]
        args = experts["containers"][0]["args"]
        self.assertIn("--tls_client_ca_file=/tls/routers/ca.crt", args)
        for spec in (router, experts):
            container = spec["containers"][0]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                self.assertEqual(container[probe]["grpc"]["port"], 8081, probe)
            # The checkpoint volume is still there beside the secrets.
            self.assertIn("models", [v["name"] for v in spec["volumes"]])
            mounted = {m["name"] for m in container["volumeMounts"]}
            self.assertEqual(mounted, {v["name"] for v in spec["volumes"]})
        # Workers trust the routers' CA only, and never see its key.
        routers_ca = next(v for v in experts["volumes"] if v["name"] == "routers-ca")
        self.assertEqual(routers_ca["secret"]["secretName"], "moe-router-ca")
        self.assertEqual(routers_ca["secret"]["items"], [{"key": "ca.crt", "path": "ca.crt"}])
        certs = {o["metadata"]["name"]: o["spec"] for o in tls if o["kind"] == "Certificate"}
        self.assertIn("*.moe-expert", certs["moe-expert-tls"]["dnsNames"])
        self.assertEqual(certs["moe-router-client"]["issuerRef"]["name"], "moe-router-ca")
        self.assertEqual(certs["moe-client"]["issuerRef"]["name"], "moe-ca")

    def test_monitoring_copies_match_their_sources(self):
        rule = yaml.safe_load(read(os.path.join(DEPLOY, "k8s", "base", "prometheusrule.yaml")))
        self.assertEqual(rule["spec"], yaml.safe_load(read(os.path.join(DEPLOY, "prometheus", "moe-rules.yml"))))
        self.assertEqual(read(os.path.join(DEPLOY, "k8s", "base", "moe-serve-dashboard.json")),
                         read(os.path.join(DEPLOY, "grafana", "moe-serve-dashboard.json")))

    def test_kserve_runtime_runs_the_router_with_flags_it_takes(self):
        # No KServe schema offline: the shape and the flags, not the CRD.
        runtime = objects(read(os.path.join(DEPLOY, "kserve", "servingruntime.yaml")))[0]
        self.assertEqual((runtime["apiVersion"], runtime["kind"]),
                         ("serving.kserve.io/v1alpha1", "ServingRuntime"))
        container = runtime["spec"]["containers"][0]
        self.assertEqual(container["command"], ["/usr/local/bin/moe-router"])
        help_text = subprocess.run([os.path.join(BIN, "moe-router"), "--help"],
                                   capture_output=True, text=True).stdout
        known = set(re.findall(r"^\s+--(\w+)", help_text, re.M))
        for arg in container["args"]:
            self.assertIn(arg[2:].split("=", 1)[0], known, arg)
        self.assertIn("--http_port=8080", container["args"])
        service = objects(read(os.path.join(DEPLOY, "kserve", "inferenceservice.yaml")))[0]
        predictor = service["spec"]["predictor"]["model"]
        self.assertEqual(predictor["runtime"], runtime["metadata"]["name"])
        self.assertEqual(predictor["modelFormat"]["name"],
                         runtime["spec"]["supportedModelFormats"][0]["name"])

    def test_yamllint(self):
        result = subprocess.run(
            ["yamllint", "-c", os.path.join(ROOT, ".yamllint"),
             os.path.join(DEPLOY, "k8s"), os.path.join(DEPLOY, "kserve"),
             os.path.join(DEPLOY, "prometheus")],
            capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
