#!/usr/bin/python3
"""Export the MoE layers of a PyTorch model to a moe-serve checkpoint.

A moe-serve checkpoint is a safetensors file holding the MoE layers'
state_dict tensors under their names, with the model and layer settings as
JSON in __metadata__["config_json"], the SHA-256 of every tensor and the
model's fingerprint (docs/models.md).

Give it a whole model: every st-moe-pytorch MoE layer is found by its
parameter names, whatever its prefix (`blocks.3.ff.gate.to_gates.weight`
makes layer "blocks.3.ff"); everything else (embeddings, attention, norms,
dense feed-forwards, the LM head) is left out, and the tool says what it
exported and what it left out, by count. A module that is itself one MoE
layer (prefix "") gives a one-layer checkpoint.

Command line (Debian's /usr/bin/python3 and python3-torch):

  tools/export_checkpoint.py --state-dict model.pt --output model.safetensors \\
      [--layer-config layers.json] [--model-name NAME] \\
      [--threshold-train 0.2] [--threshold-eval 0.2] \\
      [--capacity-factor-train 1.25] [--capacity-factor-eval 2.0] \\
      [--balance-loss-coef 0.01] [--router-z-loss-coef 0.001] \\
      [--hidden-mult 4] [--dtype f32|bf16|f16]

Per layer, kind, dim, the expert counts, hidden_mult and (HEAD checkpoints)
the thresholds are inferred from the tensors; the other settings come from
the flags, or from --layer-config, a JSON object keyed by layer name whose
values override the flags for that layer:

  {"blocks.1.ff": {"capacity_factor_eval": 4.0, "threshold_eval": 0.1}}

An incomplete layer (a missing expert tensor, a shape that disagrees) is
refused here, naming the tensor.

From Python:

  from export_checkpoint import export_checkpoint
  summary = export_checkpoint(model_or_state_dict, "model.safetensors",
                              capacity_factor_eval=2.0)
"""

import argparse
import hashlib
import json
import os
import re
import struct
import sys

import torch

DEFAULTS = {
    "hidden_mult": 4,
    "threshold_train": 0.2,
    "threshold_eval": 0.2,
    "capacity_factor_train": 1.25,
    "capacity_factor_eval": 2.0,
    "balance_loss_coef": 1e-2,
    "router_z_loss_coef": 1e-3,
}
SETTINGS = tuple(DEFAULTS)
DTYPES = {"f32": (torch.float32, "F32"), "bf16": (torch.bfloat16, "BF16"),
          "f16": (torch.float16, "F16")}
TEST_VECTOR_PREFIXES = ("input.", "output.", "expected.", "alt.")
GATE = re.compile(r"^(?P<prefix>.*?)(?P<gate>gate\.to_gates\.weight|"
                  r"gate\.w_gating|gate_outer\.w_gating)$")
EXPERT_PARAMS = ("net.0.weight", "net.0.bias", "net.1.mult_bias",
                 "net.2.weight", "net.2.bias")
FF_PARAMS = ("net.0.gamma", "net.1.weight", "net.1.bias", "net.2.mult_bias",
             "net.3.weight", "net.3.bias")


class ExportError(Exception):
    pass


def _state_dict_of(obj):
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        return obj
    raise ExportError(f"cannot find a state_dict in a {type(obj).__name__}")


def _clean(state_dict):
    """Tensors by name, without DistributedDataParallel's "module." and
    without test vectors."""
    out = {}
    for name, value in state_dict.items():
        if name.startswith("module."):
            name = name[len("module."):]
        if torch.is_tensor(value) and not name.startswith(TEST_VECTOR_PREFIXES):
            out[name] = value.detach().cpu()
    return out


def _hidden(dim, mult):
    return int(dim * mult * 2 / 3)


class Layer:
    """One MoE layer found in a state_dict: its prefix, config and the
    tensors it claims (name -> expected shape)."""

    def __init__(self, prefix, moe_prefix, block):
        self.prefix = prefix            # "blocks.1.ff." or ""
        self.moe = moe_prefix           # prefix + "moe." for a block
        self.block = block
        self.name = prefix[:-1] if prefix else ""
        self.expected = {}              # name -> shape
        self.optional = {}              # buffers: name -> shape
        self.config = {}

    def expect(self, name, shape):
        self.expected[self.moe + name if not name.startswith("@") else
                      self.prefix + name[1:]] = tuple(shape)

    def plan(self, sd, given):
        """Infers the config and the tensors it implies; raises ExportError
        naming the tensor when the layer is incomplete."""
        m = self.moe
        config = dict(DEFAULTS)
        if m + "gate_outer.w_gating" in sd:
            kind = "sparse_moe_block" if self.block else "hierarchical_moe"
            dim, outer = sd[m + "gate_outer.w_gating"].shape
            inner_gate = sd.get(m + "gate_inner.w_gating")
            if inner_gate is None:
                raise ExportError(f"layer {self.name!r}: {m}gate_inner.w_gating is "
                                  "missing (a two-level MoE needs its inner gates)")
            inner = inner_gate.shape[2]
            experts = [int(outer), int(inner)]
            total = int(outer) * int(inner)
            first = m + "experts.0.experts.0.net.0.weight"
            self.expect("gate_outer.w_gating", (dim, outer))
            self.expect("gate_inner.w_gating", (outer, dim, inner))
            expert_prefixes = [f"experts.{o}.experts.{i}."
                               for o in range(outer) for i in range(inner)]
            gate_buffer = "gate_outer."
        else:
            kind = "sparse_moe_block" if self.block else "moe"
            if m + "gate.to_gates.weight" in sd and m + "gate.w_gating" in sd:
                raise ExportError(f"layer {self.name!r}: both {m}gate.to_gates.weight "
                                  f"and {m}gate.w_gating are present; keep one")
            if m + "gate.to_gates.weight" in sd:
                experts, dim = sd[m + "gate.to_gates.weight"].shape
                self.expect("gate.to_gates.weight", (experts, dim))
            else:
                dim, experts = sd[m + "gate.w_gating"].shape
                self.expect("gate.w_gating", (dim, experts))
            experts = total = int(experts)
            first = m + "experts.experts.0.net.0.weight"
            expert_prefixes = [f"experts.experts.{e}." for e in range(experts)]
            gate_buffer = "gate."
            for mode in ("train", "eval"):
                buf = sd.get(f"{m}gate.threshold_{mode}")
                if buf is not None and buf.numel() == 2:
                    config[f"threshold_{mode}"] = float(buf[1])
        for mode in ("train", "eval"):
            self.optional[f"{m}{gate_buffer}threshold_{mode}"] = (2,)
        dim = int(dim)
        if first not in sd:
            raise ExportError(f"layer {self.name!r}: {first} is missing")
        hidden = sd[first].shape[0] // 2
        config.update(kind=kind, dim=dim, num_experts=experts)
        if "hidden_mult" not in given:
            # Prefer st-moe-pytorch's default, then whole multipliers, then
            # the exact ratio: int(dim * m * 2 / 3) maps several m to a size.
            candidates = [DEFAULTS["hidden_mult"], *range(1, 17),
                          hidden * 3 / (2 * dim)]
            config["hidden_mult"] = next(
                (c for c in candidates if _hidden(dim, c) == hidden),
                candidates[-1])
        for key, value in given.items():
            if value is not None:
                config[key] = value
        h = _hidden(dim, config["hidden_mult"])
        if h != hidden:
            raise ExportError(
                f"layer {self.name!r}: experts have hidden size {hidden}, but dim "
                f"{dim} and hidden_mult {config['hidden_mult']} give {h}")
        shapes = {"net.0.weight": (2 * h, dim), "net.0.bias": (2 * h,),
                  "net.1.mult_bias": (h,), "net.2.weight": (dim, h),
                  "net.2.bias": (dim,)}
        for p in expert_prefixes:
            for param in EXPERT_PARAMS:
                self.expect(p + param, shapes[param])
        if self.block:
            self.expect("@moe_prenorm.gamma", (dim,))
            h4 = _hidden(dim, 4)
            ff_shapes = {"net.0.gamma": (dim,), "net.1.weight": (2 * h4, dim),
                         "net.1.bias": (2 * h4,), "net.2.mult_bias": (h4,),
                         "net.3.weight": (dim, h4), "net.3.bias": (dim,)}
            for ff in ("ff_before.", "ff_after."):
                if any(k.startswith(self.prefix + ff) for k in sd):
                    for param in FF_PARAMS:
                        self.expect("@" + ff + param, ff_shapes[param])
        for name, shape in self.expected.items():
            if name not in sd:
                raise ExportError(f"layer {self.name!r}: {name} is missing "
                                  f"(expected shape {list(shape)})")
            if tuple(sd[name].shape) != shape:
                raise ExportError(f"layer {self.name!r}: {name} has shape "
                                  f"{list(sd[name].shape)}, expected {list(shape)}")
            if not sd[name].is_floating_point():
                raise ExportError(f"layer {self.name!r}: {name} has dtype "
                                  f"{sd[name].dtype}, expected floating point")
        # Anything else under the layer's own names is a sign of a layer
        # that does not match its config (an expert too many, say).
        for name in sd:
            if name in self.expected or name in self.optional:
                continue
            if name.startswith((m + "experts.", m + "gate.", m + "gate_outer.",
                                m + "gate_inner.")) or (
                    self.block and name.startswith(
                        (self.prefix + "ff_before.", self.prefix + "ff_after.",
                         self.prefix + "moe_prenorm."))):
                if name.endswith("gate.zero"):  # f1a7959's non-persistent buffer
                    continue
                raise ExportError(f"layer {self.name!r}: {name} does not belong "
                                  f"to a {kind} with {experts} experts")
        self.config = config
        self.total = total

    def claims(self, name):
        return name in self.expected or name in self.optional


def find_layers(sd):
    """The MoE layers of a state_dict, by prefix, outermost first."""
    layers = {}
    for name in sd:
        m = GATE.match(name)
        if not m:
            continue
        prefix = m.group("prefix")
        block = prefix.endswith("moe.") and \
            prefix[:-len("moe.")] + "moe_prenorm.gamma" in sd
        outer = prefix[:-len("moe.")] if block else prefix
        layers[outer] = Layer(outer, prefix, block)
    return [layers[p] for p in sorted(layers, key=_natural_key)]


def _natural_key(text):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _dtype_name(t):
    return {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
            torch.float64: "F64"}[t.dtype]


def fingerprint(config_json, tensors):
    """The model fingerprint of common/fingerprint.h; tensors: name ->
    (dtype name, shape, sha256 hex)."""
    h = hashlib.sha256()
    h.update(b"moe-serve-fingerprint-v1\n" + config_json.encode() + b"\n")
    for name in sorted(tensors):
        dtype, shape, digest = tensors[name]
        h.update(("%s %s %s %s\n" % (name, dtype, ",".join(str(d) for d in shape),
                                     digest)).encode())
    return "sha256:" + h.hexdigest()


def write_safetensors(path, tensors, metadata):
    """Writes `tensors` (name -> torch tensor) to `path` (atomically)."""
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name in sorted(tensors):
        tensor = tensors[name]
        data = tensor.contiguous().view(torch.uint8).numpy().tobytes() \
            if tensor.numel() else b""
        header[name] = {"dtype": _dtype_name(tensor), "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)


def _left_out_summary(names):
    """{"embed": 1, "layers.0.attn": 4, ...}: left-out tensors by prefix (the
    name up to its last component)."""
    groups = {}
    for name in names:
        group = name.rsplit(".", 1)[0] if "." in name else name
        group = group.rsplit(".", 1)[0] if group.endswith(("weight", "bias")) else group
        groups[group] = groups.get(group, 0) + 1
    return dict(sorted(groups.items(), key=lambda kv: _natural_key(kv[0])))


def export_checkpoint(model, output, dtype="f32", layer_config=None,
                      model_name=None, **settings):
    """Exports the MoE layers of a module or state_dict. `settings` are the
    defaults of every layer (threshold_eval=0.2, ...), `layer_config` a dict
    of per-layer overrides keyed by layer name. Returns a summary: the model
    config, the layers, the fingerprint and what was left out."""
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPES)}")
    unknown = set(settings) - set(SETTINGS) - {"kind", "dim", "num_experts"}
    if unknown:
        raise ExportError(f"unknown settings: {', '.join(sorted(unknown))}")
    sd = _clean(_state_dict_of(model))
    layers = find_layers(sd)
    if not layers:
        raise ExportError("no st-moe-pytorch MoE layer found (no tensor named "
                          "...gate.to_gates.weight, ...gate.w_gating or "
                          "...gate_outer.w_gating)")
    if any(l.name == "" for l in layers) and len(layers) > 1:
        raise ExportError("a layer without a prefix beside prefixed layers: "
                          "export the whole model or one layer, not both")
    layer_config = dict(layer_config or {})
    names = {l.name for l in layers}
    stray = sorted(set(layer_config) - names)
    if stray:
        raise ExportError(f"--layer-config names layers the model does not "
                          f"have: {', '.join(stray)} (it has {', '.join(sorted(names))})")
    given = {k: v for k, v in settings.items() if v is not None and k in SETTINGS}
    for layer in layers:
        overrides = dict(given)
        overrides.update(layer_config.get(layer.name, {}))
        layer.plan(sd, overrides)
    dims = {l.config["dim"] for l in layers}
    if len(dims) != 1:
        raise ExportError("the layers disagree on dim: " + ", ".join(
            f"{l.name!r} {l.config['dim']}" for l in layers))
    torch_dtype, _ = DTYPES[dtype]
    tensors, left_out = {}, []
    for name, value in sd.items():
        if any(l.claims(name) for l in layers):
            tensors[name] = value.to(torch_dtype)
        elif not name.endswith("gate.zero"):
            left_out.append(name)
    if len(layers) == 1 and layers[0].name == "":
        config = layers[0].config
    else:
        config = {"name": model_name or os.path.splitext(os.path.basename(output))[0],
                  "dim": dims.pop(),
                  "layers": [dict(name=l.name, **l.config) for l in layers]}
    config_json = json.dumps(config)
    digests = {}
    for name, t in tensors.items():
        data = t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
        digests[name] = (_dtype_name(t), list(t.shape), hashlib.sha256(data).hexdigest())
    fp = fingerprint(config_json, digests)
    write_safetensors(output, tensors, {
        "config_json": config_json,
        "format": "moe-serve-checkpoint-v1",
        "exported_by": "tools/export_checkpoint.py",
        "tensor_sha256": json.dumps({k: v[2] for k, v in sorted(digests.items())},
                                    separators=(",", ":")),
        "fingerprint": fp,
    })
    return {"config": config, "fingerprint": fp,
            "layers": [{"name": l.name, "kind": l.config["kind"],
                        "experts": l.total} for l in layers],
            "tensors": len(tensors),
            "bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
            "left_out": len(left_out),
            "left_out_by_prefix": _left_out_summary(left_out)}


def read_layer_config(value):
    """--layer-config: inline JSON (it starts with '{') or a JSON file; None
    when not given. ExportError names the flag and what is wrong."""
    if not value:
        return None
    if value.lstrip().startswith("{"):
        text, where = value, "--layer-config"
    else:
        where = f"--layer-config {value}"
        try:
            with open(value) as f:
                text = f.read()
        except OSError as e:
            raise ExportError(f"{where}: cannot read it ({e.strerror}); give "
                              "the JSON inline or a file that exists")
    try:
        config = json.loads(text)
    except ValueError as e:
        raise ExportError(f"{where} is not valid JSON: {e}")
    if not isinstance(config, dict) or not all(
            isinstance(v, dict) for v in config.values()):
        raise ExportError(f"{where} must be a JSON object of layer name -> "
                          "{setting: value}")
    return config


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Export the MoE layers of a PyTorch model to a moe-serve "
                    "checkpoint (see the module docstring).")
    parser.add_argument("--state-dict", required=True,
                        help="file written by torch.save (a state_dict, a dict "
                             "holding one under state_dict/model, or a module)")
    parser.add_argument("--output", required=True, help="output .safetensors")
    parser.add_argument("--layer-config", metavar="JSON|FILE",
                        help="per-layer settings, inline or in a file: "
                             "{\"layer\": {\"key\": value}}")
    parser.add_argument("--model-name", help="default: the output file's name")
    parser.add_argument("--hidden-mult", type=float)
    parser.add_argument("--threshold-train", type=float)
    parser.add_argument("--threshold-eval", type=float)
    parser.add_argument("--capacity-factor-train", type=float)
    parser.add_argument("--capacity-factor-eval", type=float)
    parser.add_argument("--balance-loss-coef", "--loss-coef", type=float)
    parser.add_argument("--router-z-loss-coef", type=float)
    parser.add_argument("--dtype", default="f32", choices=sorted(DTYPES))
    args = parser.parse_args(argv)
    given = {k: getattr(args, k) for k in SETTINGS}
    if given["hidden_mult"] is not None and float(given["hidden_mult"]).is_integer():
        given["hidden_mult"] = int(given["hidden_mult"])
    given = {k: v for k, v in given.items() if v is not None}
    try:
        layer_config = read_layer_config(args.layer_config)
    except ExportError as e:
        print(f"export_checkpoint: {e}", file=sys.stderr)
        return 1
    try:
        obj = torch.load(args.state_dict, map_location="cpu")
        summary = export_checkpoint(obj, args.output, dtype=args.dtype,
                                    layer_config=layer_config,
                                    model_name=args.model_name, **given)
    except (ExportError, OSError, RuntimeError, ValueError) as e:
        print(f"export_checkpoint: {args.state_dict}: {e}", file=sys.stderr)
        return 1
    print("wrote %s: %d MoE layer(s), %d tensors, %.1f MB, %s" % (
        args.output, len(summary["layers"]), summary["tensors"],
        summary["bytes"] / 1e6, summary["fingerprint"]))
    for layer in summary["layers"]:
        print("  layer %s: %s, %d experts" % (
            repr(layer["name"]) if layer["name"] else "(unnamed)", layer["kind"],
            layer["experts"]))
    if summary["left_out"]:
        print("left out %d tensors that are not MoE layers:" % summary["left_out"])
        for prefix, count in summary["left_out_by_prefix"].items():
            print("  %s: %d" % (prefix, count))
    return 0


if __name__ == "__main__":
    sys.exit(main())
