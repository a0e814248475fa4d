#!/usr/bin/python3
"""Tests of tools/export_checkpoint.py: exported checkpoints load in the C++
engine (through the real moe-run binary) and reproduce the golden output.

Usage: export_checkpoint_test.py MOE_RUN GOLDEN_DIR TOOLS_DIR
"""

import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch

MOE_RUN, GOLDEN_DIR, TOOLS_DIR = sys.argv[1:4]
del sys.argv[1:4]
sys.path.insert(0, TOOLS_DIR)
import export_checkpoint  # noqa: E402

DTYPES = {"F32": np.float32, "I64": np.int64}


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

    def forward(self, checkpoint, case, mode="eval"):
        out = self.path("out.safetensors")
        subprocess.run([MOE_RUN, "forward", "--checkpoint=" + checkpoint,
                        "--input=" + os.path.join(GOLDEN_DIR, case + ".safetensors"),
                        "--input_tensor=input.x", "--mode=" + mode,
                        "--output=" + out, "--summary=false"],
                       check=True, capture_output=True)
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
            self.assertEqual(exported["kind"], cfg["kind"])
            self.assertEqual(exported["num_experts"], cfg["num_experts"])
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
        sd = params_of(tensors)
        sd["decoder.weight"] = torch.zeros(2)
        result, _ = self.export_cli(sd)
        self.assertEqual(result.returncode, 1)
        self.assertIn("decoder.weight", result.stderr)
        result, _ = self.export_cli(params_of(tensors), "--hidden-mult", "2")
        self.assertEqual(result.returncode, 1)
        self.assertIn("hidden size 42", result.stderr)
        result, _ = self.export_cli({"x": 1})
        self.assertEqual(result.returncode, 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
