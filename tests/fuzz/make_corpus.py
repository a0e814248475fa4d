#!/usr/bin/python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/.

Valid messages of every kind and the inputs that once found bugs (kept as
regressions). The first bytes of each input are the target's parameters
(see each *_fuzz.cc). The checkpoint seeds are small demo checkpoints
written by moe-run and one golden file.

Usage: make_corpus.py BIN_DIR   (after ./moe build)
"""

import os
import shutil
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
OUT = os.path.join(HERE, "corpus")
F32, BF16, F16, I64 = 1, 2, 3, 4


def varint(v):
    v &= (1 << 64) - 1
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(n, value):
    """A protobuf field: int -> varint, bytes -> length-delimited."""
    if isinstance(value, int):
        return varint(n << 3) + varint(value)
    return varint(n << 3 | 2) + varint(len(value)) + value


def fixed32_float(n, v):
    return varint(n << 3 | 5) + struct.pack("<f", v)


def fixed64_double(n, v):
    return varint(n << 3 | 1) + struct.pack("<d", v)


def tensor(dtype, shape, data=None, packed=True):
    size = {F32: 4, BF16: 2, F16: 2, I64: 8}.get(dtype, 4)
    if data is None:
        n = 1
        for d in shape:
            n *= d
        data = bytes(range(256)) * (n * size // 256) + bytes(n * size % 256)
        if dtype == F32:
            data = struct.pack("<%df" % n, *[0.25 * (i % 7) for i in range(n)])
    msg = field(1, dtype)
    if packed:
        msg += field(2, b"".join(varint(d) for d in shape))
    else:
        msg += b"".join(field(2, d) for d in shape)
    return msg + field(3, data)


def segment(layer, expert, count):
    return field(1, expert) + field(2, count) + field(3, layer)


def write(target, name, data):
    os.makedirs(os.path.join(OUT, target), exist_ok=True)
    with open(os.path.join(OUT, target, name), "wb") as f:
        f.write(data)


def worker_request():
    # prefix: dim-1, max_rows/4, layers-1, slice size
    ok = field(1, tensor(F32, [3, 4])) + field(2, segment(0, 1, 2)) + field(2, segment(1, 0, 1))
    write("worker_request", "valid_f32", bytes([3, 10, 1, 0]) + ok)
    write("worker_request", "valid_f32_sliced", bytes([3, 10, 1, 3]) + ok)
    write("worker_request", "valid_bf16_out_f16",
          bytes([3, 10, 1, 5]) + field(1, tensor(BF16, [2, 4], packed=False))
          + field(2, segment(0, 0, 2)) + field(3, F16))
    write("worker_request", "empty", bytes([3, 10, 0, 0]))
    # More rows than the worker takes: ResourceExhausted, not InvalidArgument.
    write("worker_request", "rows_over_limit", bytes([3, 0, 2, 3]) + ok)
    # tokens { shape: length 0x7fffffffffffffff }: offset + length overflowed.
    write("worker_request", "regression_shape_length_overflow",
          bytes([15, 25, 0, 3]) + b"\x0a\x0a\x12\xff\xff\xff\xff\xff\xff\xff\xff\x7f")
    huge = 1 << 62
    write("worker_request", "regression_segment_sum_overflow",
          bytes([15, 25, 1, 0]) + field(1, tensor(F32, [10, 16]))
          + field(2, segment(0, 0, huge)) + field(2, segment(0, 1, huge))
          + field(2, segment(0, 0, huge)) + field(2, segment(0, 1, huge + 10)))
    write("worker_request", "negative_count",
          bytes([3, 10, 0, 0]) + field(1, tensor(F32, [3, 4])) + field(2, segment(0, 0, -1)))


def wire_response():
    # prefix: rows, dim-1, slice size
    write("wire_response", "f32", bytes([3, 3, 0]) + field(1, tensor(F32, [3, 4])))
    write("wire_response", "f32_sliced", bytes([3, 3, 5]) + field(1, tensor(F32, [3, 4])))
    write("wire_response", "bf16", bytes([2, 7, 2]) + field(1, tensor(BF16, [2, 8])))
    write("wire_response", "f16_unpacked", bytes([2, 7, 0])
          + field(1, tensor(F16, [2, 8], packed=False)))
    write("wire_response", "wrong_shape", bytes([3, 3, 0]) + field(1, tensor(F32, [4, 3])))


def tensor_codec():
    # prefix: log2 of the element limit
    for name, t in [("f32", tensor(F32, [2, 3])), ("bf16", tensor(BF16, [4])),
                    ("f16", tensor(F16, [1, 1, 2], packed=False)), ("i64", tensor(I64, [2])),
                    ("scalar", tensor(F32, [])), ("zero", tensor(F32, [0, 5], data=b""))]:
        write("tensor_codec", name, bytes([20]) + t)
    # x [4, 2^62, 16]: the element count overflowed int64.
    write("tensor_codec", "regression_shape_product_overflow",
          bytes([39]) + tensor(F32, [4, 1 << 62, 16], data=b"\0" * 16))
    write("tensor_codec", "negative_dim", bytes([20]) + tensor(F32, [-1, 2], data=b""))


def router_request():
    # prefix: max_tokens/64, dim-1
    x = field(1, tensor(F32, [1, 4, 8]))
    random = field(2, 1)  # policy RANDOM
    write("router_request", "plain", bytes([1, 7]) + x + field(3, b"layers.0.ff"))
    uniforms = field(6, tensor(F32, [1, 4],
                              data=struct.pack("<4f", 0.1, 0.5, 0.9, 1.0)))
    write("router_request", "uniforms", bytes([1, 7]) + x + field(2, random + uniforms))
    uniforms2 = field(6, tensor(F32, [2, 1, 4],
                               data=struct.pack("<8f", *[0.5] * 8)))
    write("router_request", "uniforms_two_rows", bytes([1, 7]) + x + field(2, random + uniforms2))
    bad_u = field(6, tensor(F32, [1, 4], data=struct.pack("<4f", 0.1, 2.0, float("nan"), -1)))
    write("router_request", "uniforms_out_of_range", bytes([1, 7]) + x + field(2, random + bad_u))
    write("router_request", "train_threshold",
          bytes([1, 7]) + x + field(2, field(1, 2) + fixed32_float(3, 5.0)
                                     + fixed64_double(4, 1e300) + field(5, 7)))
    # x [4, 2^62, 16]: shape(0) * shape(1) overflowed.
    write("router_request", "regression_token_count_overflow",
          bytes([255, 15]) + field(1, tensor(F32, [4, 1 << 62, 16], data=b"\0" * 16)))


def checkpoint(bin_dir):
    run = os.path.join(bin_dir, "moe-run")
    os.makedirs(os.path.join(OUT, "checkpoint"), exist_ok=True)
    for name, flags in [("moe", ["--kind=moe"]), ("block", ["--kind=sparse_moe_block"]),
                        ("two_layers", ["--layers=2"])]:
        subprocess.run([run, "demo-checkpoint", "--dim=4", "--num-experts=2",
                        "--output=" + os.path.join(OUT, "checkpoint", name)] + flags,
                       check=True, capture_output=True)
    shutil.copy(os.path.join(ROOT, "tests", "golden", "data", "F_hier_eval.safetensors"),
                os.path.join(OUT, "checkpoint", "golden_hierarchical"))
    write("checkpoint", "header_only", struct.pack("<Q", 2) + b"{}")
    write("checkpoint", "header_too_long", struct.pack("<Q", 1 << 62) + b"{}")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    shutil.rmtree(OUT, ignore_errors=True)
    worker_request()
    wire_response()
    tensor_codec()
    router_request()
    checkpoint(sys.argv[1])
    for t in sorted(os.listdir(OUT)):
        print(t, len(os.listdir(os.path.join(OUT, t))), "seeds")


if __name__ == "__main__":
    main()
