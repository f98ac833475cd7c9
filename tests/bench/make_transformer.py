#!/usr/bin/python3
"""make_transformer.py OUT.onnx [LAYERS] — a ~100M-parameter transformer-shaped ONNX model for
the optimizer benchmarks (about 400 MB; generated, never committed). Run with /usr/bin/python3.

Shape: token embedding 32000x768 (Gather), then LAYERS (default 11) blocks of Q/K/V/O
projections (768x768 MatMul + bias) and an MLP (768x3072, 3072x768) with residual Adds and
LayerNormalization, and an LM head tied to nothing (768x32000). Attention is simplified to the
projections (the optimizer sees the same weights a real block has). Weights are random with
per-tensor scales like trained layers; fixed seed, so every run writes identical bytes."""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper

D, FF, VOCAB = 768, 3072, 32000


def main():
    out = sys.argv[1]
    layers = int(sys.argv[2]) if len(sys.argv) > 2 else 11
    rng = np.random.default_rng(20261127)
    inits, nodes = [], []

    def weight(name, shape, scale):
        a = rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
        inits.append(helper.make_tensor(name, TensorProto.FLOAT, list(shape), a.tobytes(), raw=True))
        return name

    def node(op, ins, out, **attrs):
        nodes.append(helper.make_node(op, ins, [out], name=out + "_" + op, **attrs))
        return out

    x = node("Gather", [weight("tok_embed", (VOCAB, D), 0.02), "ids"], "embed")
    for i in range(layers):
        p = "l%d_" % i
        ln1 = node("LayerNormalization", [x, weight(p + "ln1_g", (D,), 1.0), weight(p + "ln1_b", (D,), 0.0)],
                   p + "ln1", axis=-1)
        proj = []
        for w in "qkv":
            mm = node("MatMul", [ln1, weight(p + w + "_w", (D, D), D ** -0.5)], p + w)
            proj.append(node("Add", [mm, weight(p + w + "_b", (D,), 0.01)], p + w + "_bias"))
        mix = node("Add", [node("Add", [proj[0], proj[1]], p + "qk"), proj[2]], p + "qkv")
        o = node("MatMul", [mix, weight(p + "o_w", (D, D), D ** -0.5)], p + "o")
        x = node("Add", [x, o], p + "res1")
        ln2 = node("LayerNormalization", [x, weight(p + "ln2_g", (D,), 1.0), weight(p + "ln2_b", (D,), 0.0)],
                   p + "ln2", axis=-1)
        h = node("Relu", [node("MatMul", [ln2, weight(p + "ff1_w", (D, FF), D ** -0.5)], p + "ff1")], p + "act")
        x = node("Add", [x, node("MatMul", [h, weight(p + "ff2_w", (FF, D), FF ** -0.5)], p + "ff2")], p + "res2")
    g = helper.make_graph(nodes, "transformer_bench",
                          [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 16])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 16, D])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="moptd-bench")
    m.ir_version = 8
    with open(out, "wb") as f:
        f.write(m.SerializeToString())
    params = sum(int(np.prod(t.dims)) for t in inits)
    print("wrote %s: %d layers, %.1fM parameters" % (out, layers, params / 1e6))


if __name__ == "__main__":
    main()
