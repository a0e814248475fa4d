#!/usr/bin/python3
"""A small decoder-only transformer whose MoE layers moe-serve serves.

The model is PyTorch (Debian's python3-torch): token and position
embeddings, pre-norm causal self-attention, and a feed-forward in every
layer that is an st-moe-pytorch MoE layer with st-moe-pytorch's parameter
names: plain `MoE` layers (`layers.0.ff.gate.to_gates.weight`, ...) and
`SparseMoEBlock` layers (`layers.1.ff.moe.gate...`, `moe_prenorm`,
`ff_after`). It runs twice:

  local    everything in PyTorch, the MoE layers by the reference semantics
           of docs/numerics.md (written out below);
  served   attention here, each MoE layer one call to moe-serve through the
           Python client, once per layer per step: disaggregated expert
           parallelism.

It checks that the logits agree (<= 1e-4) and that the greedily generated
tokens are identical, and prints tokens/s both ways and the time per MoE
round trip. With --microbatches=2 the served run splits the batch in two and
overlaps one micro-batch's attention with the other's MoE call (the
ping-pong schedule of MegaScale-Infer) and reports the gain.

The random second-expert policy (the reference's default) needs the same
draws on both sides: the attention side draws them (torch.rand with a seed
per layer and step) and sends them with the call, so a micro-batch's rows
get exactly the draws they would get in the whole batch.

  # starts moe-up itself on the exported model:
  examples/transformer/transformer.py --bin-dir build/bin
  # or against a running router that serves --export's checkpoint:
  examples/transformer/transformer.py --export model.safetensors
  build/bin/moe-up --checkpoint=model.safetensors &
  examples/transformer/transformer.py --target 127.0.0.1:50051

Exit code 0 when the two runs agree.
"""

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "..", "client", "python"),
                os.path.join(HERE, "..", "..", "tools")]

from export_checkpoint import export_checkpoint  # noqa: E402
from moe_client import RouterClient  # noqa: E402

EPS = 1e-9


# ---------------------------------------------------------------------------
# The model's parameters, with st-moe-pytorch's names for the MoE layers.

def _uniform(shape, bound, gen):
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


def _geglu(prefix, dim, mult, gen, first=0):
    """An st-moe-pytorch Expert's net.{first, first+1, first+2} tensors."""
    h = int(dim * mult * 2 / 3)
    return {
        f"{prefix}net.{first}.weight": _uniform((2 * h, dim), (2 * h) ** -0.5, gen),
        f"{prefix}net.{first}.bias": _uniform((2 * h,), (2 * h) ** -0.5, gen),
        f"{prefix}net.{first + 1}.mult_bias": 1 + 0.1 * torch.randn(h, generator=gen),
        f"{prefix}net.{first + 2}.weight": _uniform((dim, h), dim ** -0.5, gen),
        f"{prefix}net.{first + 2}.bias": _uniform((dim,), dim ** -0.5, gen),
    }


def build_state_dict(args):
    """A seeded model: what a training job would torch.save."""
    gen = torch.Generator().manual_seed(args.seed)
    d, sd = args.dim, {}
    sd["embed.weight"] = torch.randn(args.vocab, d, generator=gen) * 0.5
    sd["pos.weight"] = torch.randn(args.max_len, d, generator=gen) * 0.1
    for i in range(args.layers):
        p = f"layers.{i}."
        sd[p + "attn_norm.weight"] = torch.ones(d)
        sd[p + "attn.qkv.weight"] = _uniform((3 * d, d), d ** -0.5, gen)
        sd[p + "attn.out.weight"] = _uniform((d, d), d ** -0.5, gen)
        ff = p + "ff."
        if i % 2 == 0:  # a plain MoE behind the layer's own pre-norm
            sd[p + "ff_norm.weight"] = torch.ones(d)
            moe = ff
        else:  # a SparseMoEBlock: its own norm, residual, ff_after
            moe = ff + "moe."
            sd[ff + "moe_prenorm.gamma"] = 1 + 0.1 * torch.randn(d, generator=gen)
            sd[ff + "ff_after.net.0.gamma"] = 1 + 0.1 * torch.randn(d, generator=gen)
            sd.update(_geglu(ff + "ff_after.", d, 4, gen, first=1))
        sd[moe + "gate.to_gates.weight"] = _uniform((args.experts, d), d ** -0.5, gen)
        for e in range(args.experts):
            sd.update(_geglu(f"{moe}experts.experts.{e}.", d, 4, gen))
    sd["final_norm.weight"] = torch.ones(d)
    sd["lm_head.weight"] = _uniform((args.vocab, d), d ** -0.5, gen)
    return sd


# ---------------------------------------------------------------------------
# The attention side (the part that stays with the caller).

def rms_layer_norm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w


def attention(sd, i, h, heads):
    p = f"layers.{i}."
    b, n, d = h.shape
    x = rms_layer_norm(h, sd[p + "attn_norm.weight"])
    q, k, v = (x @ sd[p + "attn.qkv.weight"].t()).split(d, dim=-1)
    split = lambda t: t.view(b, n, heads, d // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // heads)
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
    return h + out @ sd[p + "attn.out.weight"].t()


def moe_input(sd, i, h):
    """What layer i's MoE call receives: the plain MoE sits behind the
    layer's pre-norm; a SparseMoEBlock takes the residual stream itself."""
    if i % 2 == 0:
        return rms_layer_norm(h, sd[f"layers.{i}.ff_norm.weight"])
    return h


def moe_output(i, h, y):
    """The residual stream after layer i's MoE output y."""
    return h + y if i % 2 == 0 else y  # a block adds its own residual


def logits_of(sd, h):
    return rms_layer_norm(h, sd["final_norm.weight"]) @ sd["lm_head.weight"].t()


def embed(sd, tokens):
    n = tokens.shape[1]
    return sd["embed.weight"][tokens] + sd["pos.weight"][:n]


# ---------------------------------------------------------------------------
# The MoE layers in PyTorch, by docs/numerics.md (the local run).

def expert(sd, prefix, x, first=0):
    u = x @ sd[f"{prefix}net.{first}.weight"].t() + sd[f"{prefix}net.{first}.bias"]
    a, g = u.chunk(2, dim=-1)
    v = torch.nn.functional.gelu(g) * a * sd[f"{prefix}net.{first + 1}.mult_bias"]
    return v @ sd[f"{prefix}net.{first + 2}.weight"].t() + sd[f"{prefix}net.{first + 2}.bias"]


def rms_norm_st(x, gamma):
    """st-moe-pytorch's RMSNorm: F.normalize(x) * gamma * sqrt(d)."""
    return torch.nn.functional.normalize(x, dim=-1, eps=1e-12) * gamma * x.shape[-1] ** 0.5


def moe_reference(sd, moe, x, uniforms, threshold, capacity_factor):
    """Top-2 MoE (§2-5): x [B, n, d], uniforms [B, n]."""
    b, n, d = x.shape
    w = sd[moe + "gate.to_gates.weight"]
    num_experts = w.shape[0]
    probs = (x @ w.t()).softmax(-1)
    g, idx = probs.topk(2, dim=-1)
    g1, g2 = g[..., 0], g[..., 1]
    denom = g1 + g2 + EPS
    g1, g2 = g1 / denom, g2 / denom
    i1, i2 = idx[..., 0], idx[..., 1]
    requested2 = uniforms < g2 / max(threshold, EPS)
    capacity = max(4, min(n, int(n * capacity_factor / num_experts)))
    one1 = torch.nn.functional.one_hot(i1, num_experts)
    pos1 = ((one1.cumsum(1) - 1) * one1).sum(-1)
    kept1 = pos1 < capacity
    count1 = torch.minimum(one1.sum(1), torch.tensor(capacity))  # [B, E]
    one2 = torch.nn.functional.one_hot(i2, num_experts) * requested2[..., None]
    pos2 = ((one2.cumsum(1) - 1) * one2).sum(-1) + count1.gather(1, i2)
    kept2 = requested2 & (pos2 < capacity)
    w1 = g1 * kept1
    w2 = g2 * kept2
    outs = torch.stack([expert(sd, f"{moe}experts.experts.{e}.", x)
                        for e in range(num_experts)], dim=2)  # [B, n, E, d]
    o1 = outs.gather(2, i1[..., None, None].expand(b, n, 1, d))[:, :, 0]
    o2 = outs.gather(2, i2[..., None, None].expand(b, n, 1, d))[:, :, 0]
    y = torch.zeros_like(x)
    y = y + w1[..., None] * o1
    return y + w2[..., None] * o2


def moe_local(sd, i, x, uniforms, args):
    ff = f"layers.{i}.ff."
    if i % 2 == 0:
        return moe_reference(sd, ff, x, uniforms, args.threshold, args.capacity_factor)
    # SparseMoEBlock (§9.3): no ff_before; ff_after is pre-normed.
    y = x + moe_reference(sd, ff + "moe.", rms_norm_st(x, sd[ff + "moe_prenorm.gamma"]),
                          uniforms, args.threshold, args.capacity_factor)
    z = rms_norm_st(y, sd[ff + "ff_after.net.0.gamma"])
    return y + expert(sd, ff + "ff_after.", z, first=1)


# ---------------------------------------------------------------------------
# Generation.

def draws(args, layer, step, batch, n):
    """The random policy's uniforms of one layer's call at one step."""
    gen = torch.Generator().manual_seed(args.seed * 100003 + step * 101 + layer)
    return torch.rand(batch, n, generator=gen)


class Served:
    """The MoE layers as calls to a router."""

    def __init__(self, client):
        self.client = client
        self.trips = []

    # torch tensors in, torch tensors of x's dtype and device out.
    def call(self, i, x, uniforms):
        start = time.perf_counter()
        y = self.client.forward(x, layer=f"layers.{i}.ff",
                                second_choice_uniforms=uniforms).y
        self.trips.append(time.perf_counter() - start)
        return y

    def call_async(self, i, x, uniforms):
        start = time.perf_counter()
        future = self.client.forward_async(x, layer=f"layers.{i}.ff",
                                           second_choice_uniforms=uniforms)

        def result():
            y = future.result().y
            self.trips.append(time.perf_counter() - start)
            return y
        return result


def forward(sd, args, tokens, step, moe):
    """Logits of every position; `moe(i, x, uniforms)` runs layer i's MoE."""
    h = embed(sd, tokens)
    b, n = tokens.shape
    for i in range(args.layers):
        h = attention(sd, i, h, args.heads)
        h = moe_output(i, h, moe(i, moe_input(sd, i, h), draws(args, i, step, b, n)))
    return logits_of(sd, h)


def forward_pingpong(sd, args, tokens, step, served):
    """The same with two micro-batches: while one's MoE call is out, the
    other's attention runs (MegaScale-Infer's ping-pong)."""
    b, n = tokens.shape
    half = b // 2
    parts = [slice(0, half), slice(half, b)]
    h = [embed(sd, tokens[p]) for p in parts]
    u = [draws(args, i, step, b, n) for i in range(args.layers)]
    pending = [None, None]

    def launch(m, i):
        h[m] = attention(sd, i, h[m], args.heads)
        pending[m] = (i, h[m], served.call_async(i, moe_input(sd, i, h[m]), u[i][parts[m]]))

    def finish(m):
        i, before, result = pending[m]
        h[m] = moe_output(i, before, result())

    launch(0, 0)
    for i in range(args.layers):
        launch(1, i)          # overlaps micro-batch 0's MoE call
        finish(0)
        if i + 1 < args.layers:
            launch(0, i + 1)  # overlaps micro-batch 1's MoE call
        finish(1)
    return torch.cat([logits_of(sd, x) for x in h])


def generate(sd, args, prompt, step_logits):
    """Greedy decoding, the whole sequence recomputed every step (MoE routing
    is not causal: docs/numerics.md §5.4). Returns the new tokens, the logits
    of every step and the seconds taken."""
    tokens, all_logits = prompt, []
    start = time.perf_counter()
    for step in range(args.new_tokens):
        logits = step_logits(tokens, step)
        all_logits.append(logits)
        next_token = logits[:, -1].argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, next_token], dim=1)
    return tokens[:, prompt.shape[1]:], all_logits, time.perf_counter() - start


class MoeUp:
    def __init__(self, bin_dir, checkpoint, workers):
        self.tmp = tempfile.mkdtemp(prefix="moe-transformer-")
        port_file = os.path.join(self.tmp, "port")
        self.log = open(os.path.join(self.tmp, "moe-up.log"), "w")
        self.proc = subprocess.Popen(
            [os.path.join(bin_dir, "moe-up"), "--checkpoint=" + checkpoint,
             "--workers=%d" % workers, "--port=0", "--port_file=" + port_file],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while not os.path.exists(port_file):
            if self.proc.poll() is not None or time.time() > deadline:
                self.log.flush()
                raise SystemExit("moe-up did not start:\n" + open(self.log.name).read())
            time.sleep(0.1)
        with open(port_file) as f:
            self.target = "127.0.0.1:" + f.read().strip()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-dir", help="start moe-up from here on the exported model")
    ap.add_argument("--target", help="instead: a running router serving --export's file")
    ap.add_argument("--export", help="where the checkpoint goes (default: a temporary file, removed at exit)")
    ap.add_argument("--workers", type=int, default=2, help="moe-up workers")
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=4, help="MoE layers (every layer)")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--microbatches", type=int, default=1, choices=(1, 2))
    ap.add_argument("--threshold", type=float, default=0.2)
    ap.add_argument("--capacity-factor", type=float, default=2.0, help="eval")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.max_len = args.prompt + args.new_tokens
    if args.microbatches == 2 and args.batch % 2:
        ap.error("--microbatches=2 needs an even --batch")
    torch.set_grad_enabled(False)

    sd = build_state_dict(args)
    # Without --export the checkpoint lives in a temporary folder removed
    # at exit.
    scratch = None if args.export else tempfile.mkdtemp(prefix="moe-transformer-")
    try:
        return run(args, sd, args.export or os.path.join(scratch, "model.safetensors"))
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def run(args, sd, export):
    summary = export_checkpoint(sd, export, model_name="toy-transformer",
                                threshold_train=args.threshold,
                                threshold_eval=args.threshold,
                                capacity_factor_eval=args.capacity_factor)
    print("exported %d MoE layers of %d experts (%s) to %s; left out %d dense tensors"
          % (len(summary["layers"]), args.experts, summary["fingerprint"][:19], export,
             summary["left_out"]))
    if not args.bin_dir and not args.target:
        print("give --bin-dir (start moe-up) or --target (a running router)")
        return 0

    up = MoeUp(args.bin_dir, export, args.workers) if args.bin_dir else None
    try:
        target = up.target if up else args.target
        with RouterClient(target, timeout=120) as client:
            info = client.model_info()
            if info.fingerprint != summary["fingerprint"]:
                raise SystemExit("the router at %s serves %s, not this model (%s)"
                                 % (target, info.fingerprint, summary["fingerprint"]))
            prompt = torch.randint(0, args.vocab, (args.batch, args.prompt),
                                   generator=torch.Generator().manual_seed(args.seed + 1))
            local_tokens, local_logits, local_s = generate(
                sd, args, prompt,
                lambda t, s: forward(sd, args, t, s,
                                     lambda i, x, u: moe_local(sd, i, x, u, args)))
            served = Served(client)
            served_tokens, served_logits, served_s = generate(
                sd, args, prompt, lambda t, s: forward(sd, args, t, s, served.call))
            trip_ms = 1e3 * sum(served.trips) / len(served.trips)
            diff = max(float((a - b).abs().max())
                       for a, b in zip(local_logits, served_logits))
            n_tokens = args.batch * args.new_tokens
            print("local   (PyTorch MoE):      %6.1f tokens/s" % (n_tokens / local_s))
            print("served  (moe-serve MoE):    %6.1f tokens/s, %.2f ms per MoE round "
                  "trip (%d calls)" % (n_tokens / served_s, trip_ms, len(served.trips)))
            print("logits: max |local - served| = %.2e over %d steps" % (diff, args.new_tokens))
            same = torch.equal(local_tokens, served_tokens)
            print("greedy tokens identical: %s (%d tokens x %d sequences)"
                  % (same, args.new_tokens, args.batch))
            ok = same and diff <= 1e-4
            if args.microbatches == 2:
                pp = Served(client)
                pp_tokens, pp_logits, pp_s = generate(
                    sd, args, prompt, lambda t, s: forward_pingpong(sd, args, t, s, pp))
                pp_diff = max(float((a - b).abs().max())
                              for a, b in zip(served_logits, pp_logits))
                print("ping-pong (2 micro-batches): %6.1f tokens/s = x%.2f of the served "
                      "run, %.2f ms per MoE round trip; logits vs served %.1e, tokens "
                      "identical: %s" % (n_tokens / pp_s, served_s / pp_s,
                                         1e3 * sum(pp.trips) / len(pp.trips), pp_diff,
                                         torch.equal(pp_tokens, served_tokens)))
                ok = ok and torch.equal(pp_tokens, served_tokens) and pp_diff <= 1e-4
    finally:
        if up:
            up.stop()
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
