#!/usr/bin/python3
"""Tests of tools/export_checkpoint.py: exported checkpoints load in the C++
engine (through the real moe-run binary) and reproduce the golden output.

Usage: export_checkpoint_test.py MOE_RUN GOLDEN_DIR TOOLS_DIR
"""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np
import torch

MOE_RUN, GOLDEN_DIR, TOOLS_DIR = sys.argv[1:4]
del sys.argv[1:4]
BIN_DIR = os.path.dirname(MOE_RUN)
sys.path.insert(0, TOOLS_DIR)
sys.path.insert(0, os.path.join(TOOLS_DIR, "..", "client", "python"))
import export_checkpoint  # noqa: E402

DTYPES = {"F32": np.float32, "I64": np.int64, "BF16": np.uint16}


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    out = {}
    for name, e in header.items():
        begin, end = e["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + begin:8 + n + end],
                                  dtype=DTYPES[e["dtype"]]).reshape(e["shape"])
    return out, meta


def golden(name):
    return read_safetensors(os.path.join(GOLDEN_DIR, name + ".safetensors"))


class MoeUp:
    """moe-up on a checkpoint, on 127.0.0.1 with a free port."""

    def __init__(self, checkpoint, workers=2):
        self.tmp = tempfile.mkdtemp(prefix="moe-export-up-")
        port_file = os.path.join(self.tmp, "port")
        self.log = open(os.path.join(self.tmp, "moe-up.log"), "w")
        self.proc = subprocess.Popen(
            [os.path.join(BIN_DIR, "moe-up"), "--checkpoint=" + checkpoint,
             "--workers=%d" % workers, "--port=0", "--port_file=" + port_file],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while not os.path.exists(port_file):
            if self.proc.poll() is not None or time.time() > deadline:
                self.log.flush()
                raise RuntimeError("moe-up did not start:\n" +
                                   open(self.log.name).read())
            time.sleep(0.1)
        with open(port_file) as f:
            self.target = "127.0.0.1:" + f.read().strip()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def random_moe(dim, experts):
    """The state_dict of an st-moe-pytorch MoE (HEAD names), random."""
    h = int(dim * 4 * 2 / 3)
    sd = {"gate.to_gates.weight": torch.randn(experts, dim)}
    for e in range(experts):
        p = "experts.experts.%d.net." % e
        sd[p + "0.weight"] = torch.randn(2 * h, dim)
        sd[p + "0.bias"] = torch.randn(2 * h)
        sd[p + "1.mult_bias"] = torch.ones(h)
        sd[p + "2.weight"] = torch.randn(dim, h)
        sd[p + "2.bias"] = torch.randn(dim)
    return sd


def prefixed(params, prefix):
    return {prefix + k: v for k, v in params.items()}


def params_of(tensors):
    return {k: torch.from_numpy(v.copy()) for k, v in tensors.items()
            if not k.split(".")[0] in ("input", "output", "expected", "alt")}


class ExportCheckpointTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def forward(self, checkpoint, case, mode="eval", layer=""):
        out = self.path("out.safetensors")
        golden_file = os.path.join(GOLDEN_DIR, case + ".safetensors")
        args = [MOE_RUN, "forward", "--checkpoint=" + checkpoint,
                "--input=" + golden_file, "--input_tensor=input.x",
                "--mode=" + mode, "--layer=" + layer, "--output=" + out,
                "--summary=false"]
        if "input.probs" in golden(case)[0]:
            args.append("--draws_tensor=input.probs")
        subprocess.run(args, check=True, capture_output=True)
        return read_safetensors(out)[0]

    def export_cli(self, state_dict, *args):
        sd_path = self.path("sd.pt")
        torch.save(state_dict, sd_path)
        out = self.path("exported.safetensors")
        result = subprocess.run(
            ["/usr/bin/python3", os.path.join(TOOLS_DIR, "export_checkpoint.py"),
             "--state-dict", sd_path, "--output", out, *args],
            capture_output=True, text=True)
        return result, out

    def test_head_state_dict_reproduces_golden_output(self):
        tensors, meta = golden("A_moe_eval_nodrop")
        cfg = json.loads(meta["config_json"])
        result, out = self.export_cli(
            params_of(tensors), "--capacity-factor-eval",
            str(cfg["capacity_factor_eval"]))
        self.assertEqual(result.returncode, 0, result.stderr)
        _, exported_meta = read_safetensors(out)
        exported = json.loads(exported_meta["config_json"])
        self.assertEqual(exported["dim"], 16)
        self.assertEqual(exported["num_experts"], 4)
        self.assertEqual(exported["hidden_mult"], 4)
        # Thresholds come from HEAD's buffers.
        self.assertAlmostEqual(exported["threshold_eval"], 1e-9)
        y = self.forward(out, "A_moe_eval_nodrop")["output.y"]
        np.testing.assert_allclose(y, tensors["output.y"], atol=1e-5)

    def test_seed_spelling_with_ddp_prefix(self):
        tensors, _ = golden("C_moe_train")
        sd = params_of(tensors)
        sd = {("module." + k): v for k, v in sd.items()
              if not k.startswith("gate.threshold")}
        sd["module.gate.w_gating"] = sd.pop("module.gate.to_gates.weight").t()
        result, out = self.export_cli(sd, "--threshold-train", "1e-9",
                                      "--threshold-eval", "1e-9")
        self.assertEqual(result.returncode, 0, result.stderr)
        outputs = self.forward(out, "C_moe_train", mode="train")
        np.testing.assert_allclose(outputs["output.y"], tensors["output.y"],
                                   atol=1e-5)
        np.testing.assert_allclose(outputs["output.balance_loss"],
                                   tensors["output.balance_loss"], atol=1e-5)

    def test_block_and_two_level_modules(self):
        for case in ("E_sparse_block_eval", "F_hier_eval"):
            tensors, meta = golden(case)
            cfg = json.loads(meta["config_json"])
            module = torch.nn.Module()
            for name, value in params_of(tensors).items():
                module.register_buffer(name.replace(".", "__"), value)
            # A module whose state_dict has the st-moe-pytorch names.
            module.state_dict = lambda t=tensors: params_of(t)
            out = self.path(case + ".safetensors")
            exported = export_checkpoint.export_checkpoint(
                module, out, threshold_train=1e-9, threshold_eval=1e-9,
                capacity_factor_eval=cfg["capacity_factor_eval"])
            self.assertEqual(exported["config"]["kind"], cfg["kind"])
            self.assertEqual(exported["config"]["num_experts"], cfg["num_experts"])
            y = self.forward(out, case)["output.y"]
            np.testing.assert_allclose(y, tensors["output.y"], atol=1e-5)

    def test_bf16_export_loads(self):
        tensors, _ = golden("A_moe_eval_nodrop")
        result, out = self.export_cli(params_of(tensors), "--dtype", "bf16",
                                      "--capacity-factor-eval", "4")
        self.assertEqual(result.returncode, 0, result.stderr)
        with open(out, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
        self.assertEqual(header["gate.to_gates.weight"]["dtype"], "BF16")
        y = self.forward(out, "A_moe_eval_nodrop")["output.y"]
        # bf16 weights: close to, not equal to, the float32 reference.
        np.testing.assert_allclose(y, tensors["output.y"], atol=5e-2)

    def test_errors_are_clear(self):
        tensors, _ = golden("A_moe_eval_nodrop")
        result, _ = self.export_cli(params_of(tensors), "--hidden-mult", "2")
        self.assertEqual(result.returncode, 1)
        self.assertIn("hidden size 42", result.stderr)
        result, _ = self.export_cli({"x": torch.zeros(2)})
        self.assertEqual(result.returncode, 1)
        self.assertIn("no st-moe-pytorch MoE layer found", result.stderr)
        # An incomplete layer is refused at export, naming the tensor.
        sd = prefixed(params_of(tensors), "blocks.2.ff.")
        del sd["blocks.2.ff.experts.experts.3.net.2.bias"]
        result, out = self.export_cli(sd)
        self.assertEqual(result.returncode, 1)
        self.assertIn("blocks.2.ff.experts.experts.3.net.2.bias is missing",
                      result.stderr)
        self.assertFalse(os.path.exists(out))
        sd = prefixed(params_of(tensors), "blocks.2.ff.")
        sd["blocks.2.ff.experts.experts.1.net.0.bias"] = torch.zeros(5)
        result, _ = self.export_cli(sd)
        self.assertIn("blocks.2.ff.experts.experts.1.net.0.bias has shape [5], "
                      "expected [84]", result.stderr)
        sd = prefixed(params_of(tensors), "blocks.2.ff.")
        sd["blocks.2.ff.experts.experts.9.net.0.bias"] = torch.zeros(84)
        result, _ = self.export_cli(sd)
        self.assertIn("experts.experts.9.net.0.bias does not belong", result.stderr)
        # Layers that disagree on dim.
        sd = prefixed(params_of(tensors), "a.")
        sd.update(prefixed(random_moe(8, 4), "b."))
        result, _ = self.export_cli(sd)
        self.assertEqual(result.returncode, 1)
        self.assertIn("the layers disagree on dim: 'a' 16, 'b' 8", result.stderr)

    def test_layer_config_inline_or_a_file_and_its_errors_name_it(self):
        tensors, _ = golden("A_moe_eval_nodrop")
        sd = prefixed(params_of(tensors), "layers.5.ff.")
        result, out = self.export_cli(
            sd, "--layer-config", '{"layers.5.ff": {"capacity_factor_eval": 4.0}}')
        self.assertEqual(result.returncode, 0, result.stderr)
        _, meta = read_safetensors(out)
        layer = json.loads(meta["config_json"])["layers"][0]
        self.assertEqual(layer["capacity_factor_eval"], 4.0)
        for arg, message in [
                ('{"layers.5.ff": ', "--layer-config is not valid JSON"),
                ('{"layers.5.ff": 4}', "--layer-config must be a JSON object"),
                (self.path("missing.json"), "missing.json: cannot read it")]:
            result, _ = self.export_cli(sd, "--layer-config", arg)
            self.assertEqual(result.returncode, 1, arg)
            self.assertIn(message, result.stderr)
            self.assertNotIn("sd.pt", result.stderr)  # not the state dict

    def test_whole_model_every_layer_through_moe_up(self):
        """A toy transformer's state_dict: plain MoE layers in both gate
        spellings, a SparseMoEBlock and a two-level MoE among dense tensors;
        every layer through moe-up with 3 workers equals moe-run in-process
        (1e-6) and its golden output (1e-5)."""
        cases = {"layers.0.ff": ("A_moe_eval_nodrop", "head"),
                 "layers.1.ff": ("E_sparse_block_eval", "head"),
                 "layers.2.ff": ("B2_moe_eval_drop_cap12", "seed"),
                 "layers.3.ff": ("F_hier_eval", "seed")}
        sd, layer_config = {}, {}
        for layer, (case, spelling) in cases.items():
            tensors, meta = golden(case)
            params = params_of(tensors)
            if spelling == "seed" and "gate.to_gates.weight" in params:
                params = {k: v for k, v in params.items()
                          if not k.startswith("gate.threshold")}
                params["gate.w_gating"] = params.pop("gate.to_gates.weight").t()
            sd.update(prefixed(params, layer + "."))
            cfg = json.loads(meta["config_json"])
            layer_config[layer] = {k: cfg[k] for k in (
                "threshold_train", "threshold_eval", "capacity_factor_train",
                "capacity_factor_eval") if k in cfg}
        sd["embed.weight"] = torch.randn(50, 16)
        sd["lm_head.weight"] = torch.randn(50, 16)
        for i in range(4):
            sd[f"layers.{i}.attn.qkv.weight"] = torch.randn(48, 16)
            sd[f"layers.{i}.attn.out.weight"] = torch.randn(16, 16)
            sd[f"layers.{i}.norm.weight"] = torch.ones(16)
        config_path = self.path("layers.json")
        with open(config_path, "w") as f:
            json.dump(layer_config, f)
        result, out = self.export_cli(sd, "--layer-config", config_path,
                                      "--model-name", "toy-lm")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("4 MoE layer(s)", result.stdout)
        self.assertIn("left out 14 tensors that are not MoE layers", result.stdout)
        self.assertIn("layers.0.attn", result.stdout)
        _, meta = read_safetensors(out)
        config = json.loads(meta["config_json"])
        self.assertEqual(config["name"], "toy-lm")
        self.assertEqual([l["name"] for l in config["layers"]], list(cases))
        self.assertEqual([l["kind"] for l in config["layers"]],
                         ["moe", "sparse_moe_block", "moe", "hierarchical_moe"])

        up = MoeUp(out, workers=3)
        try:
            from moe_client import RouterClient
            with RouterClient(up.target, timeout=60) as client:
                info = client.model_info()
                self.assertEqual(info.model_name, "toy-lm")
                # The exporter's fingerprint is the one C++ computes.
                self.assertEqual(info.fingerprint, meta["fingerprint"])
                self.assertEqual([l.name for l in info.layers], list(cases))
                for w in info.workers:
                    self.assertEqual(len(w.experts), 4, w)  # a share of every layer
                for layer, (case, _) in cases.items():
                    tensors, _ = golden(case)
                    x = tensors["input.x"]
                    extra = {}
                    if "input.probs" in tensors:
                        extra["second_choice_uniforms"] = tensors["input.probs"]
                    remote = client.forward(x, layer=layer, **extra).y
                    local = self.forward(out, case, layer=layer)["output.y"]
                    np.testing.assert_allclose(remote, local, atol=1e-6, rtol=0,
                                               err_msg=layer)
                    np.testing.assert_allclose(remote, tensors["output.y"],
                                               atol=1e-5, rtol=0, err_msg=layer)
        finally:
            up.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
