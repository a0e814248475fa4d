#!/usr/bin/python3
"""Export an st-moe-pytorch model to a moe-serve checkpoint.

A moe-serve checkpoint is a safetensors file holding the module's state_dict
tensors under their st-moe-pytorch names, with the constructor arguments as
JSON in __metadata__["config_json"] (see README.md, "Checkpoints").

Command line (runs with Debian's /usr/bin/python3 and python3-torch):

  tools/export_checkpoint.py --state-dict moe.pt --output moe.safetensors \
      [--kind moe|sparse_moe_block|hierarchical_moe] [--dim 512] \
      [--num-experts 16 | --num-experts 4,4] [--hidden-mult 4] \
      [--threshold-train 0.2] [--threshold-eval 0.2] \
      [--capacity-factor-train 1.25] [--capacity-factor-eval 2.0] \
      [--balance-loss-coef 0.01] [--router-z-loss-coef 0.001] \
      [--dtype f32|bf16|f16]

--state-dict is a file written by torch.save: a state_dict, a dict holding one
under "state_dict"/"model", or a pickled module (unpickling a module needs
st_moe_pytorch importable). kind, dim, the expert counts, hidden_mult and
(for HEAD checkpoints) the thresholds are inferred from the tensors when not
given; the other settings default to st-moe-pytorch's defaults.

From Python:

  from export_checkpoint import export_checkpoint
  export_checkpoint(moe_module_or_state_dict, "moe.safetensors",
                    threshold_eval=0.2, capacity_factor_eval=2.0)
"""

import argparse
import json
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
PARAM_PREFIXES = ("gate.", "gate_outer.", "gate_inner.", "experts.", "moe.",
                  "moe_prenorm.", "ff_before.", "ff_after.")
# Buffers that are not parameters (HEAD keeps thresholds as buffers; f1a7959
# registers a non-persistent zero).
IGNORED = re.compile(r"(^|\.)gate(_outer|_inner)?\.(zero)$")
DTYPES = {"f32": (torch.float32, "F32"), "bf16": (torch.bfloat16, "BF16"),
          "f16": (torch.float16, "F16")}


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
    out, unknown = {}, []
    for name, value in state_dict.items():
        if name.startswith("module."):  # DistributedDataParallel
            name = name[len("module."):]
        if not torch.is_tensor(value) or IGNORED.search(name):
            continue
        if not name.startswith(PARAM_PREFIXES):
            unknown.append(name)
            continue
        out[name] = value.detach().cpu()
    if unknown:
        raise ExportError("tensors that are not st-moe-pytorch MoE parameters: "
                          + ", ".join(sorted(unknown)[:8]))
    return out


def _infer_config(sd, given):
    config = dict(DEFAULTS)
    prefix = "moe." if any(k.startswith("moe.") for k in sd) else ""
    if prefix + "gate_outer.w_gating" in sd:
        kind = "hierarchical_moe" if not prefix else "sparse_moe_block"
        dim, outer = sd[prefix + "gate_outer.w_gating"].shape
        inner = sd[prefix + "gate_inner.w_gating"].shape[2]
        experts = [int(outer), int(inner)]
        w1 = sd[prefix + "experts.0.experts.0.net.0.weight"]
    else:
        kind = "sparse_moe_block" if prefix else "moe"
        if prefix + "gate.to_gates.weight" in sd:
            experts, dim = sd[prefix + "gate.to_gates.weight"].shape
        elif prefix + "gate.w_gating" in sd:
            dim, experts = sd[prefix + "gate.w_gating"].shape
        else:
            raise ExportError("no gate weight (gate.to_gates.weight, "
                              "gate.w_gating or gate_outer.w_gating) found")
        experts = int(experts)
        w1 = sd.get(prefix + "experts.experts.0.net.0.weight")
        if w1 is None:
            raise ExportError("no experts.experts.0.net.0.weight found")
        for mode in ("train", "eval"):
            buf = sd.get(f"{prefix}gate.threshold_{mode}")
            if buf is not None and buf.numel() == 2:
                config[f"threshold_{mode}"] = float(buf[1])
    config.update(kind=kind, dim=int(dim), num_experts=experts)
    hidden = w1.shape[0] // 2
    if "hidden_mult" not in given:
        # Prefer st-moe-pytorch's default, then whole multipliers, then the
        # exact ratio: int(dim * m * 2 / 3) maps several m to one size.
        candidates = [DEFAULTS["hidden_mult"], *range(1, 17),
                      hidden * 3 / (2 * int(dim))]
        config["hidden_mult"] = next(
            (m for m in candidates if int(int(dim) * m * 2 / 3) == hidden),
            candidates[-1])
    for key, value in given.items():
        if value is not None:
            config[key] = value
    if int(config["dim"] * config["hidden_mult"] * 2 / 3) != hidden:
        raise ExportError(
            f"experts have hidden size {hidden}, but dim {config['dim']} and "
            f"hidden_mult {config['hidden_mult']} give "
            f"{int(config['dim'] * config['hidden_mult'] * 2 / 3)}")
    if config["dim"] != int(dim):
        raise ExportError(f"--dim {config['dim']} but the gate has dim {dim}")
    return config


def write_safetensors(path, tensors, metadata):
    """Writes `tensors` (name -> (torch tensor, dtype name)) to `path`."""
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name in sorted(tensors):
        tensor, dtype_name = tensors[name]
        data = tensor.contiguous().view(torch.uint8).numpy().tobytes() \
            if tensor.numel() else b""
        header[name] = {"dtype": dtype_name, "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)


def export_checkpoint(model, output, dtype="f32", **config):
    """Exports an st-moe-pytorch module or state_dict; returns the config."""
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPES)}")
    sd = _clean(_state_dict_of(model))
    cfg = _infer_config(sd, config)
    torch_dtype, dtype_name = DTYPES[dtype]
    tensors = {}
    for name, value in sd.items():
        if not value.is_floating_point():
            raise ExportError(f"tensor {name} has dtype {value.dtype}")
        tensors[name] = (value.to(torch_dtype), dtype_name)
    write_safetensors(output, tensors, {
        "config_json": json.dumps(cfg),
        "format": "moe-serve-checkpoint-v1",
        "exported_by": "tools/export_checkpoint.py",
    })
    return cfg


def _experts_arg(text):
    parts = [int(p) for p in text.split(",")]
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError("expected N or OUTER,INNER")
    return parts[0] if len(parts) == 1 else parts


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Export an st-moe-pytorch model to a moe-serve checkpoint.")
    parser.add_argument("--state-dict", required=True,
                        help="file written by torch.save (state_dict or module)")
    parser.add_argument("--output", required=True, help="output .safetensors")
    parser.add_argument("--kind", choices=["moe", "sparse_moe_block",
                                           "hierarchical_moe"])
    parser.add_argument("--dim", type=int)
    parser.add_argument("--num-experts", type=_experts_arg)
    parser.add_argument("--hidden-mult", type=float)
    parser.add_argument("--threshold-train", type=float)
    parser.add_argument("--threshold-eval", type=float)
    parser.add_argument("--capacity-factor-train", type=float)
    parser.add_argument("--capacity-factor-eval", type=float)
    parser.add_argument("--balance-loss-coef", "--loss-coef", type=float)
    parser.add_argument("--router-z-loss-coef", type=float)
    parser.add_argument("--dtype", default="f32", choices=sorted(DTYPES))
    args = parser.parse_args(argv)
    given = {k: getattr(args, k) for k in (
        "kind", "dim", "num_experts", "hidden_mult", "threshold_train",
        "threshold_eval", "capacity_factor_train", "capacity_factor_eval",
        "balance_loss_coef", "router_z_loss_coef")}
    if given["hidden_mult"] is not None and given["hidden_mult"].is_integer():
        given["hidden_mult"] = int(given["hidden_mult"])
    given = {k: v for k, v in given.items() if v is not None}
    try:
        obj = torch.load(args.state_dict, map_location="cpu")
        cfg = export_checkpoint(obj, args.output, dtype=args.dtype, **given)
    except (ExportError, OSError, RuntimeError) as e:
        print(f"export_checkpoint: {args.state_dict}: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: {json.dumps(cfg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
