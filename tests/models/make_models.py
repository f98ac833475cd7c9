#!/usr/bin/python3
# make_models.py OUTDIR — writes the moptd test models (ONNX) + fixed inputs, deterministically (fixed seeds); run with /usr/bin/python3.
"""Generates every good test model the moptd tests use, into OUTDIR:

  <name>.onnx          the model
  <name>.inputs.json   fixed inputs, {"input name": {"dtype","shape","data"}} (the format
                       tests/e2e/ort_run.js reads)
  models.json          manifest: per model the file, opset, ir_version, weight tensor names
                       (with where they live and their consumer) and a one-line description
  digits_test_y.npy    labels of the digits test split (inputs in digits_mlp.inputs.json)
  digits_meta.json     sklearn's own test accuracy, split sizes, hidden sizes

Models are built with onnx.helper (python3-onnx 1.12 at /usr/bin/python3). The onnx package here
knows opsets up to 17; opset-21 models are written by hand-set opset import + ir_version 10 and
are not run through onnx.checker (ONNX Runtime 1.30 loads them). Every selected weight has at
least 1024 elements so the default min_elements selects it. Everything is small (about 1.7 MB
in all, generated in a few seconds; the sklearn training dominates).
Trade-off: the models are tiny and synthetic (random weights) except the digits MLP, so numeric
bounds measured on them are about the encodings, not about any real-world accuracy.
"""
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# IR version that goes with each opset (ONNX's own versioning table).
IR_FOR_OPSET = {9: 4, 11: 6, 13: 7, 17: 8, 21: 10}

MANIFEST = {}


def rng(seed):
    return np.random.default_rng(seed)


def w(seed, shape, scale=None):
    """Random float32 weights, Kaiming-like scale over the last dim(s) unless given."""
    r = rng(seed)
    if scale is None:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        scale = 1.0 / np.sqrt(max(fan_in, 1))
    return (r.standard_normal(shape) * scale).astype(np.float32)


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def inputs_json(feeds):
    out = {}
    for k, v in feeds.items():
        v = np.asarray(v)
        if v.dtype == np.float32:   # shortest repr that reads back as the same float32
            data = [float(str(x)) for x in v.reshape(-1)]
        else:
            data = v.reshape(-1).tolist()
        out[k] = {"dtype": str(v.dtype), "shape": list(v.shape), "data": data}
    return out


def save(outdir, name, model, feeds, weights, desc, check=True):
    """Writes <name>.onnx and <name>.inputs.json and records the model in the manifest.
    weights: list of (tensor name, location, consumer op)."""
    if check:
        onnx.checker.check_model(model)
    path = os.path.join(outdir, name + ".onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    with open(os.path.join(outdir, name + ".inputs.json"), "w") as f:
        json.dump(inputs_json(feeds), f, separators=(",", ":"))
    opset = {op.domain: op.version for op in model.opset_import}
    MANIFEST[name] = {
        "file": name + ".onnx",
        "inputs": name + ".inputs.json",
        "ir_version": model.ir_version,
        "opset": opset.get("", opset.get("ai.onnx")),
        "weights": [{"name": n, "location": loc, "consumer": c} for (n, loc, c) in weights],
        "description": desc,
    }


def mk(graph, opset, ir=None):
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                          producer_name="moptd-tests", producer_version="1")
    m.ir_version = ir if ir is not None else IR_FOR_OPSET.get(opset, 7)
    return m


def x_input(seed, n, k):
    return rng(seed).standard_normal((n, k)).astype(np.float32)


# ------------------------------------------------------------------ MLP (Gemm) ----
def mlp_graph(name="mlp"):
    """x[N,64] -Gemm(W1[128,64],transB=1)-Relu-Gemm(W2[128,64],transB=0)-Relu-Gemm(W3[32,64],transB=1)-> y[N,32]."""
    W1, b1 = w(1, (128, 64)), w(2, (128,), 0.1)
    W2, b2 = w(3, (128, 64)), w(4, (64,), 0.1)     # transB=0: [K=128, N=64]
    W2 = (W2 * np.float32(np.sqrt(64.0 / 128.0))).astype(np.float32)
    W3, b3 = w(5, (32, 64)), w(6, (32,), 0.1)
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h1"], name="gemm1", transB=1),
        helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
        helper.make_node("Gemm", ["a1", "W2", "b2"], ["h2"], name="gemm2", transB=0),
        helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
        helper.make_node("Gemm", ["a2", "W3", "b3"], ["y"], name="gemm3", transB=1),
    ]
    g = helper.make_graph(nodes, name, [vi("x", TensorProto.FLOAT, ["N", 64])],
                          [vi("y", TensorProto.FLOAT, ["N", 32])],
                          [init("W1", W1), init("b1", b1), init("W2", W2), init("b2", b2),
                           init("W3", W3), init("b3", b3)])
    weights = [("W1", "initializer", "Gemm"), ("W2", "initializer", "Gemm"),
               ("W3", "initializer", "Gemm")]
    return g, weights


def make_mlp(outdir):
    feeds = {"x": x_input(100, 8, 64)}
    g, ws = mlp_graph()
    save(outdir, "mlp", mk(g, 13), feeds, ws,
         "MLP 64-128-64-32 with Gemm (transB=1, transB=0, transB=1), opset 13")
    for op in (9, 11, 13, 17, 21):
        g, ws = mlp_graph("mlp_opset%d" % op)
        save(outdir, "mlp_opset%d" % op, mk(g, op), feeds, ws,
             "the MLP at opset %d, ir_version %d" % (op, IR_FOR_OPSET[op]), check=op <= 17)


# ------------------------------------------------------------------ low-rank MLP ----
def make_lowrank(outdir):
    """Weights that are rank 8 plus 1% noise, so decompose(energy 0.95) finds a rank that pays."""
    def lowrank(seed, r, c, rank=8):
        rr = rng(seed)
        a = rr.standard_normal((r, rank)).astype(np.float32)
        b = rr.standard_normal((rank, c)).astype(np.float32)
        m = a @ b / np.float32(np.sqrt(rank * r))
        return (m + rr.standard_normal((r, c)).astype(np.float32) * np.float32(0.01 * m.std())).astype(np.float32)
    W1, W2 = lowrank(81, 128, 256), lowrank(82, 256, 64)
    b1 = w(83, (256,), 0.05)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m1"], name="matmul1"),
             helper.make_node("Add", ["m1", "b1"], ["h1"], name="add1"),
             helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
             helper.make_node("MatMul", ["a1", "W2"], ["y"], name="matmul2")]
    g = helper.make_graph(nodes, "lowrank", [vi("x", TensorProto.FLOAT, ["N", 128])],
                          [vi("y", TensorProto.FLOAT, ["N", 64])],
                          [init("W1", W1), init("b1", b1), init("W2", W2)])
    save(outdir, "lowrank", mk(g, 13), {"x": x_input(108, 8, 128)},
         [("W1", "initializer", "MatMul"), ("W2", "initializer", "MatMul")],
         "MatMul MLP 128-256-64 whose weights are rank 8 + 1% noise (for decompose)")


# ------------------------------------------------------------------ CNN ----
def make_cnn(outdir):
    C1, C2 = 16, 32
    Wc1, bc1 = w(11, (C1, 8, 3, 3)), w(12, (C1,), 0.05)
    Wc2, bc2 = w(13, (C2, C1, 3, 3)), w(14, (C2,), 0.05)
    r = rng(15)

    def bn(c, seed):
        rr = rng(seed)
        return (rr.uniform(0.5, 1.5, c).astype(np.float32), (rr.standard_normal(c) * 0.1).astype(np.float32),
                (rr.standard_normal(c) * 0.1).astype(np.float32), rr.uniform(0.5, 1.5, c).astype(np.float32))
    s1, o1, m1, v1 = bn(C1, 16)
    s2, o2, m2, v2 = bn(C2, 17)
    Wf, bf = w(18, (64, C2)), w(19, (64,), 0.05)
    del r
    nodes = [
        helper.make_node("Conv", ["x", "Wc1", "bc1"], ["c1"], name="conv1", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "s1", "o1", "m1", "v1"], ["n1"], name="bn1",
                         epsilon=1e-5),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "Wc2", "bc2"], ["c2"], name="conv2", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c2", "s2", "o2", "m2", "v2"], ["n2"], name="bn2",
                         epsilon=1e-5),
        helper.make_node("Relu", ["n2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "Wf", "bf"], ["y"], name="fc", transB=1),
    ]
    inits = [init(n, a) for n, a in [("Wc1", Wc1), ("bc1", bc1), ("s1", s1), ("o1", o1), ("m1", m1),
                                     ("v1", v1), ("Wc2", Wc2), ("bc2", bc2), ("s2", s2), ("o2", o2),
                                     ("m2", m2), ("v2", v2), ("Wf", Wf), ("bf", bf)]]
    g = helper.make_graph(nodes, "cnn", [vi("x", TensorProto.FLOAT, ["N", 8, 16, 16])],
                          [vi("y", TensorProto.FLOAT, ["N", 64])], inits)
    feeds = {"x": rng(101).standard_normal((2, 8, 16, 16)).astype(np.float32)}
    save(outdir, "cnn", mk(g, 13), feeds,
         [("Wc1", "initializer", "Conv"), ("Wc2", "initializer", "Conv"), ("Wf", "initializer", "Gemm")],
         "CNN: Conv(8->16)/BN/Relu/MaxPool/Conv(16->32)/BN/Relu/GlobalAveragePool/Flatten/Gemm(32->64)")


# ------------------------------------------------------------------ Constant-node weights ----
def make_const_mlp(outdir):
    """Same shapes as the MLP, but every weight and bias is a Constant node (no initializers)."""
    g, _ = mlp_graph("const_mlp")
    consts = []
    for t in g.initializer:
        consts.append(helper.make_node("Constant", [], [t.name], name="const_" + t.name, value=t))
    nodes = consts + list(g.node)
    g2 = helper.make_graph(nodes, "const_mlp", list(g.input), list(g.output), [])
    feeds = {"x": x_input(100, 8, 64)}
    save(outdir, "const_mlp", mk(g2, 13), feeds,
         [("W1", "constant", "Gemm"), ("W2", "constant", "Gemm"), ("W3", "constant", "Gemm")],
         "the MLP with every weight in a Constant node's value attribute (no initializers)")


# ------------------------------------------------------------------ If branches ----
def make_if_model(outdir):
    """x[N,64], cond(bool) -> If: then = MatMul(x, Wt) + bt (Wt an initializer of the then graph);
    else = MatMul(x, We) + be (We a Constant node inside the else graph). y[N,32]."""
    Wt, bt = w(21, (64, 32)), w(22, (32,), 0.1)
    We, be = w(23, (64, 32)), w(24, (32,), 0.1)
    then_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "Wt"], ["mt"], name="then_matmul"),
         helper.make_node("Add", ["mt", "bt"], ["yt"], name="then_add")],
        "then_branch", [], [vi("yt", TensorProto.FLOAT, ["N", 32])],
        [init("Wt", Wt), init("bt", bt)])
    else_g = helper.make_graph(
        [helper.make_node("Constant", [], ["We"], name="else_const_We", value=init("We", We)),
         helper.make_node("Constant", [], ["be"], name="else_const_be", value=init("be", be)),
         helper.make_node("MatMul", ["x", "We"], ["me"], name="else_matmul"),
         helper.make_node("Add", ["me", "be"], ["ye"], name="else_add")],
        "else_branch", [], [vi("ye", TensorProto.FLOAT, ["N", 32])], [])
    nodes = [helper.make_node("If", ["cond"], ["y"], name="if0", then_branch=then_g, else_branch=else_g)]
    g = helper.make_graph(nodes, "if_model",
                          [vi("x", TensorProto.FLOAT, ["N", 64]), vi("cond", TensorProto.BOOL, [])],
                          [vi("y", TensorProto.FLOAT, ["N", 32])], [])
    feeds = {"x": x_input(102, 8, 64), "cond": np.array(True)}
    save(outdir, "if_model", mk(g, 13), feeds,
         [("Wt", "initializer", "MatMul"), ("We", "constant", "MatMul")],
         "If with MatMul weights inside both branches (then: subgraph initializer, else: Constant node)")
    # the same inputs with cond false, for exercising the else branch
    with open(os.path.join(outdir, "if_model.inputs_else.json"), "w") as f:
        json.dump(inputs_json({"x": feeds["x"], "cond": np.array(False)}), f, separators=(",", ":"))


# ------------------------------------------------------------------ LSTM ----
def make_lstm(outdir):
    I, H, T = 32, 64, 5
    W = w(31, (1, 4 * H, I), 1.0 / np.sqrt(I))
    R = w(32, (1, 4 * H, H), 1.0 / np.sqrt(H))
    B = w(33, (1, 8 * H), 0.1)
    nodes = [helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y", "Y_h"], name="lstm", hidden_size=H)]
    g = helper.make_graph(nodes, "lstm", [vi("X", TensorProto.FLOAT, [T, "N", I])],
                          [vi("Y", TensorProto.FLOAT, [T, 1, "N", H]), vi("Y_h", TensorProto.FLOAT, [1, "N", H])],
                          [init("W", W), init("R", R), init("B", B)])
    feeds = {"X": rng(103).standard_normal((T, 4, I)).astype(np.float32)}
    save(outdir, "lstm", mk(g, 13), feeds,
         [("W", "initializer", "LSTM"), ("R", "initializer", "LSTM")],
         "one-layer LSTM, input 32, hidden 64, 5 steps (W [1,256,32], R [1,256,64])")


# ------------------------------------------------------------------ Transposed MatMul ----
def make_matmul_transposed(outdir):
    Wt = w(41, (48, 64))         # stored [out, in]; Transpose makes it [in, out] for MatMul
    b = w(42, (48,), 0.1)
    nodes = [helper.make_node("Transpose", ["Wt"], ["WtT"], name="transpose_w", perm=[1, 0]),
             helper.make_node("MatMul", ["x", "WtT"], ["m"], name="matmul"),
             helper.make_node("Add", ["m", "b"], ["y"], name="add")]
    g = helper.make_graph(nodes, "matmul_transposed", [vi("x", TensorProto.FLOAT, ["N", 64])],
                          [vi("y", TensorProto.FLOAT, ["N", 48])], [init("Wt", Wt), init("b", b)])
    save(outdir, "matmul_transposed", mk(g, 13), {"x": x_input(104, 8, 64)},
         [("Wt", "initializer", "MatMul")],
         "MatMul whose weight [48,64] reaches it through Transpose(perm 1,0)")


# ------------------------------------------------------------------ Embedding ----
def make_embedding(outdir):
    V, D = 100, 32
    E = w(51, (V, D), 1.0)
    Wp, bp = w(52, (D, 48)), w(53, (48,), 0.1)
    nodes = [helper.make_node("Gather", ["E", "ids"], ["emb"], name="embed", axis=0),
             helper.make_node("ReduceMean", ["emb"], ["pooled"], name="pool", axes=[1], keepdims=0),
             helper.make_node("MatMul", ["pooled", "Wp"], ["m"], name="proj"),
             helper.make_node("Add", ["m", "bp"], ["y"], name="add")]
    g = helper.make_graph(nodes, "embedding", [vi("ids", TensorProto.INT64, ["N", 6])],
                          [vi("y", TensorProto.FLOAT, ["N", 48])],
                          [init("E", E), init("Wp", Wp), init("bp", bp)])
    ids = rng(105).integers(0, V, (8, 6)).astype(np.int64)
    save(outdir, "embedding", mk(g, 13), {"ids": ids},
         [("E", "initializer", "Gather"), ("Wp", "initializer", "MatMul")],
         "embedding table E[100,32] via Gather, mean over 6 tokens, MatMul projection [32,48]")


# ------------------------------------------------------------------ float16 weights ----
def make_fp16_weights(outdir):
    W1 = w(61, (64, 64)).astype(np.float16)
    W2 = w(62, (64, 32)).astype(np.float16)
    b1 = w(63, (64,), 0.1)
    nodes = [helper.make_node("Cast", ["W1h"], ["W1f"], name="cast_w1", to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "W1f"], ["m1"], name="matmul1"),
             helper.make_node("Add", ["m1", "b1"], ["h1"], name="add1"),
             helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
             helper.make_node("Cast", ["W2h"], ["W2f"], name="cast_w2", to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["a1", "W2f"], ["y"], name="matmul2")]
    g = helper.make_graph(nodes, "fp16_weights", [vi("x", TensorProto.FLOAT, ["N", 64])],
                          [vi("y", TensorProto.FLOAT, ["N", 32])],
                          [init("W1h", W1), init("W2h", W2), init("b1", b1)])
    save(outdir, "fp16_weights", mk(g, 13), {"x": x_input(106, 8, 64)},
         [("W1h", "initializer", "MatMul"), ("W2h", "initializer", "MatMul")],
         "float16 weight initializers, Cast to float32 in front of MatMul")


# ------------------------------------------------------------------ typed-field tensors ----
def make_typed_fields(outdir):
    W = w(71, (64, 32))
    b = w(72, (32,), 0.1)
    W2 = w(73, (32, 64)).astype(np.float64)
    Wt = helper.make_tensor("W", TensorProto.FLOAT, W.shape, W.reshape(-1).tolist(), raw=False)
    bt = helper.make_tensor("b", TensorProto.FLOAT, b.shape, b.reshape(-1).tolist(), raw=False)
    W2t = helper.make_tensor("W2d", TensorProto.DOUBLE, W2.shape, W2.reshape(-1).tolist(), raw=False)
    shp = helper.make_tensor("shape", TensorProto.INT64, [3], [-1, 8, 8], raw=False)
    assert not Wt.raw_data and len(Wt.float_data) == W.size and len(W2t.double_data) == W2.size
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"], name="matmul"),
             helper.make_node("Add", ["m", "b"], ["h"], name="add"),
             helper.make_node("Cast", ["W2d"], ["W2f"], name="cast_w2", to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["h", "W2f"], ["m2"], name="matmul2"),
             helper.make_node("Reshape", ["m2", "shape"], ["y"], name="reshape")]
    g = helper.make_graph(nodes, "typed_fields", [vi("x", TensorProto.FLOAT, ["N", 64])],
                          [vi("y", TensorProto.FLOAT, ["N", 8, 8])], [Wt, bt, W2t, shp])
    save(outdir, "typed_fields", mk(g, 13), {"x": x_input(107, 8, 64)},
         [("W", "initializer", "MatMul"), ("W2d", "initializer", "MatMul")],
         "tensors in typed fields: float_data (W [64,32], b), double_data (W2d [32,64] + Cast), int64_data (shape)")


# ------------------------------------------------------------------ fp16 range, bf16, fp16 in int32_data ----
def make_fp16_overflow(outdir):
    """MatMul weight with 6 values outside the float16 range (|v| > 65504): fp16 must clamp them."""
    W = w(91, (64, 32))
    W[0, 0], W[1, 5], W[10, 7] = 1e5, -2e5, 7e4
    W[20, 3], W[30, 30], W[63, 31] = -1e6, 65520.0, 3e38
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")]
    g = helper.make_graph(nodes, "fp16_overflow", [vi("x", TensorProto.FLOAT, ["N", 64])],
                          [vi("y", TensorProto.FLOAT, ["N", 32])], [init("W", W)])
    save(outdir, "fp16_overflow", mk(g, 13), {"x": x_input(109, 4, 64)}, [("W", "initializer", "MatMul")],
         "MatMul weight with 6 values beyond the float16 range (1e5, -2e5, 7e4, -1e6, 65520, 3e38)")


def make_typed_more(outdir):
    """float16 weight in int32_data (typed field) and a bfloat16 weight in raw_data, each Cast to
    float32 in front of a MatMul."""
    Wh = w(95, (64, 64)).astype(np.float16)
    # make_tensor turns float values into float16 bit patterns stored in int32_data
    Wht = helper.make_tensor("Wh", TensorProto.FLOAT16, Wh.shape, Wh.astype(np.float32).reshape(-1).tolist(), raw=False)
    assert not Wht.raw_data and len(Wht.int32_data) == Wh.size
    assert np.array_equal(numpy_helper.to_array(Wht), Wh)
    Wb = w(96, (64, 32))
    bits = (Wb.view(np.uint32) + 0x7FFF + ((Wb.view(np.uint32) >> 16) & 1)) >> 16   # round to nearest even
    Wbt = TensorProto(name="Wb", data_type=TensorProto.BFLOAT16, dims=list(Wb.shape),
                      raw_data=bits.astype("<u2").tobytes())
    nodes = [helper.make_node("Cast", ["Wh"], ["Whf"], name="cast_wh", to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "Whf"], ["m1"], name="matmul1"),
             helper.make_node("Relu", ["m1"], ["a1"], name="relu1"),
             helper.make_node("Cast", ["Wb"], ["Wbf"], name="cast_wb", to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["a1", "Wbf"], ["y"], name="matmul2")]
    g = helper.make_graph(nodes, "typed_more", [vi("x", TensorProto.FLOAT, ["N", 64])],
                          [vi("y", TensorProto.FLOAT, ["N", 32])], [Wht, Wbt])
    save(outdir, "typed_more", mk(g, 13), {"x": x_input(110, 8, 64)},
         [("Wh", "initializer", "MatMul"), ("Wb", "initializer", "MatMul")],
         "float16 weight in int32_data + bfloat16 weight in raw_data, both Cast to float32 before MatMul")


def make_lowrank_gemm(outdir):
    """Gemm layers (transB=1 then transB=0) whose weights are rank 8 + 1% noise (decompose on Gemm)."""
    def lowrank(seed, r, c, rank=8):
        rr = rng(seed)
        m = rr.standard_normal((r, rank)).astype(np.float32) @ rr.standard_normal((rank, c)).astype(np.float32)
        m = m / np.float32(np.sqrt(rank * c))
        return (m + rr.standard_normal((r, c)).astype(np.float32) * np.float32(0.01 * m.std())).astype(np.float32)
    W1, W2 = lowrank(97, 128, 128), lowrank(98, 128, 64)   # W1 [N=128, K=128] transB=1; W2 [K=128, N=64]
    b1, b2 = w(99, (128,), 0.05), w(100, (64,), 0.05)
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h1"], name="gemm1", transB=1),
             helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
             helper.make_node("Gemm", ["a1", "W2", "b2"], ["y"], name="gemm2", transB=0)]
    g = helper.make_graph(nodes, "lowrank_gemm", [vi("x", TensorProto.FLOAT, ["N", 128])],
                          [vi("y", TensorProto.FLOAT, ["N", 64])],
                          [init("W1", W1), init("b1", b1), init("W2", W2), init("b2", b2)])
    save(outdir, "lowrank_gemm", mk(g, 13), {"x": x_input(111, 8, 128)},
         [("W1", "initializer", "Gemm"), ("W2", "initializer", "Gemm")],
         "Gemm 128-128-64 (transB=1, transB=0) with rank-8 + 1% noise weights (decompose on Gemm)")


# ------------------------------------------------------------------ real-exporter shapes ----
def make_tied_embedding(outdir):
    """One table E[100,32] used twice: Gather (rows) and, through Transpose, as the output
    projection of a MatMul (tied input/output embeddings, as in GPT-2 exports)."""
    E = w(121, (100, 32), 0.5)
    nodes = [helper.make_node("Gather", ["E", "ids"], ["emb"], name="embed", axis=0),
             helper.make_node("ReduceMean", ["emb"], ["pooled"], name="pool", axes=[1], keepdims=0),
             helper.make_node("Transpose", ["E"], ["Et"], name="transpose_e", perm=[1, 0]),
             helper.make_node("MatMul", ["pooled", "Et"], ["logits"], name="lm_head")]
    g = helper.make_graph(nodes, "tied_embedding", [vi("ids", TensorProto.INT64, ["N", 6])],
                          [vi("logits", TensorProto.FLOAT, ["N", 100])], [init("E", E)])
    ids = rng(122).integers(0, 100, (8, 6)).astype(np.int64)
    save(outdir, "tied_embedding", mk(g, 13), {"ids": ids}, [("E", "initializer", "Gather")],
         "tied embedding: E[100,32] feeds Gather and (via Transpose) the output MatMul")


def make_relayout(outdir):
    """Weights that reach their consumer only re-laid-out: flat [2048] -> Reshape -> MatMul,
    and [64,32] -> Identity -> Gemm (transB=0)."""
    Wf = w(131, (64, 32)).reshape(-1)
    W2 = w(132, (32, 64))
    shape = np.array([64, 32], dtype=np.int64)
    nodes = [helper.make_node("Reshape", ["Wflat", "wshape"], ["W1"], name="reshape_w"),
             helper.make_node("MatMul", ["x", "W1"], ["m1"], name="matmul1"),
             helper.make_node("Relu", ["m1"], ["a1"], name="relu1"),
             helper.make_node("Identity", ["W2"], ["W2i"], name="identity_w"),
             helper.make_node("Gemm", ["a1", "W2i"], ["y"], name="gemm2")]
    g = helper.make_graph(nodes, "relayout", [vi("x", TensorProto.FLOAT, ["N", 64])],
                          [vi("y", TensorProto.FLOAT, ["N", 64])],
                          [init("Wflat", Wf), init("wshape", shape), init("W2", W2)])
    save(outdir, "relayout", mk(g, 13), {"x": x_input(133, 8, 64)},
         [("Wflat", "initializer", "MatMul"), ("W2", "initializer", "Gemm")],
         "weights through Reshape (flat [2048] -> [64,32]) and Identity before MatMul/Gemm")


def make_loop_model(outdir):
    """Loop (3 iterations) whose body applies h = Tanh(MatMul(h, Wl)) with Wl an initializer of
    the body graph, followed by an If nested in the then-branch of another If (weights two
    subgraph levels deep)."""
    Wl = w(141, (64, 64))
    Wn = w(142, (64, 32))
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "Wl"], ["hm"], name="body_matmul"),
         helper.make_node("Tanh", ["hm"], ["h_out"], name="body_tanh"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond")],
        "loop_body", [vi("iter", TensorProto.INT64, []), vi("cond_in", TensorProto.BOOL, []),
                      vi("h_in", TensorProto.FLOAT, ["N", 64])],
        [vi("cond_out", TensorProto.BOOL, []), vi("h_out", TensorProto.FLOAT, ["N", 64])],
        [init("Wl", Wl)])
    inner_then = helper.make_graph([helper.make_node("MatMul", ["h", "Wn"], ["yi"], name="inner_matmul")],
                                   "inner_then", [], [vi("yi", TensorProto.FLOAT, ["N", 32])], [init("Wn", Wn)])
    inner_else = helper.make_graph([helper.make_node("Constant", [], ["ze"], name="inner_zero",
                                                     value=init("zv", np.zeros((1, 32), np.float32))),
                                    helper.make_node("Add", ["ze", "hz"], ["ye"], name="inner_add")],
                                   "inner_else", [], [vi("ye", TensorProto.FLOAT, ["N", 32])], [])
    outer_then = helper.make_graph([helper.make_node("If", ["cond"], ["yo"], name="inner_if",
                                                     then_branch=inner_then, else_branch=inner_else)],
                                   "outer_then", [], [vi("yo", TensorProto.FLOAT, ["N", 32])], [])
    outer_else = helper.make_graph([helper.make_node("Identity", ["hz"], ["yz"], name="outer_id")],
                                   "outer_else", [], [vi("yz", TensorProto.FLOAT, ["N", 32])], [])
    nodes = [helper.make_node("Loop", ["trip", "", "x"], ["h"], name="loop", body=body),
             helper.make_node("Slice", ["h", "s0", "s1", "s_ax"], ["hz0"], name="slice"),
             helper.make_node("Mul", ["hz0", "zero"], ["hz"], name="zero_mul"),
             helper.make_node("If", ["cond"], ["y"], name="outer_if", then_branch=outer_then, else_branch=outer_else)]
    g = helper.make_graph(nodes, "loop_model",
                          [vi("x", TensorProto.FLOAT, ["N", 64]), vi("cond", TensorProto.BOOL, [])],
                          [vi("y", TensorProto.FLOAT, ["N", 32])],
                          [init("trip", np.array(3, np.int64)), init("s0", np.array([0], np.int64)),
                           init("s1", np.array([32], np.int64)), init("s_ax", np.array([1], np.int64)),
                           init("zero", np.array(0.0, np.float32))])
    save(outdir, "loop_model", mk(g, 13), {"x": x_input(143, 8, 64), "cond": np.array(True)},
         [("Wl", "initializer", "MatMul"), ("Wn", "initializer", "MatMul")],
         "Loop body with a MatMul weight, and a MatMul weight inside an If nested in an If")


# ------------------------------------------------------------------ sklearn digits MLP ----
DIGITS_HIDDEN = (256, 128)


def make_digits(outdir):
    import warnings
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=DIGITS_HIDDEN, activation="relu", solver="adam",
                        alpha=1e-4, max_iter=40, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(Xtr.astype(np.float64), ytr)
    acc = float(clf.score(Xte.astype(np.float64), yte))
    c, b = clf.coefs_, clf.intercepts_
    # Layer 1 stored [out, in] with transB=1; layers 2 and 3 stored [in, out] with transB=0.
    W1 = np.ascontiguousarray(c[0].T).astype(np.float32)     # [256, 64]
    W2 = c[1].astype(np.float32)                             # [256, 128]
    W3 = c[2].astype(np.float32)                             # [128, 10]
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h1"], name="fc1", transB=1),
        helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
        helper.make_node("Gemm", ["a1", "W2", "b2"], ["h2"], name="fc2", transB=0),
        helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
        helper.make_node("Gemm", ["a2", "W3", "b3"], ["logits"], name="fc3", transB=0),
    ]
    g = helper.make_graph(nodes, "digits_mlp", [vi("x", TensorProto.FLOAT, ["N", 64])],
                          [vi("logits", TensorProto.FLOAT, ["N", 10])],
                          [init("W1", W1), init("b1", b[0].astype(np.float32)),
                           init("W2", W2), init("b2", b[1].astype(np.float32)),
                           init("W3", W3), init("b3", b[2].astype(np.float32))])
    save(outdir, "digits_mlp", mk(g, 13), {"x": Xte}, [("W1", "initializer", "Gemm"),
         ("W2", "initializer", "Gemm"), ("W3", "initializer", "Gemm")],
         "sklearn MLPClassifier %s trained on load_digits (75/25 split, random_state 0)" % (DIGITS_HIDDEN,))
    np.save(os.path.join(outdir, "digits_test_y.npy"), yte.astype(np.int64))
    with open(os.path.join(outdir, "digits_meta.json"), "w") as f:
        json.dump({"sklearn_test_accuracy": acc, "n_train": int(len(ytr)), "n_test": int(len(yte)),
                   "hidden": list(DIGITS_HIDDEN), "inputs": "digits_mlp.inputs.json",
                   "labels": "digits_test_y.npy"}, f, indent=1)


def main():
    if len(sys.argv) != 2:
        sys.stderr.write("usage: make_models.py OUTDIR\n")
        return 2
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    make_mlp(outdir)
    make_cnn(outdir)
    make_lowrank(outdir)
    make_const_mlp(outdir)
    make_if_model(outdir)
    make_lstm(outdir)
    make_matmul_transposed(outdir)
    make_embedding(outdir)
    make_fp16_weights(outdir)
    make_typed_fields(outdir)
    make_fp16_overflow(outdir)
    make_typed_more(outdir)
    make_lowrank_gemm(outdir)
    make_tied_embedding(outdir)
    make_relayout(outdir)
    make_loop_model(outdir)
    make_digits(outdir)
    with open(os.path.join(outdir, "models.json"), "w") as f:
        json.dump(MANIFEST, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
