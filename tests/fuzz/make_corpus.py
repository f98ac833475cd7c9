#!/usr/bin/python3
# make_corpus.py OUTDIR — seed corpus for tests/fuzz/fuzz_load.c, generated from the test models.
"""Writes small ONNX models into OUTDIR: the models of tests/models/make_models.py (when it is
present and runs), a few hand-made ones covering what the loader must handle (Constant nodes,
If/Loop subgraphs, typed-field tensors, float16, int4 raw data, external-data references,
unknown fields), and the small models of ONNX's backend test data (/usr/share/libonnx-testdata)
when installed. Files above 64 KiB are skipped (the fuzzer's max_len). Run with /usr/bin/python3.
"""
import glob
import hashlib
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto as TP, helper, numpy_helper as nh

MAX = 64 * 1024


def put(outdir, data):
    if len(data) > MAX:
        return 0
    name = hashlib.sha256(data).hexdigest()[:16] + ".onnx"
    with open(os.path.join(outdir, name), "wb") as f:
        f.write(data)
    return 1


def own_models():
    r = np.random.default_rng(1)
    W = lambda *s: (r.standard_normal(s) * 0.3).astype(np.float32)
    out = []
    # MLP with Constant node, Transpose, Gemm transB, typed-field tensor
    typed = helper.make_tensor("Wtyped", TP.FLOAT, [4, 4], W(4, 4).reshape(-1).tolist())
    nodes = [helper.make_node("MatMul", ["X", "W1"], ["h"]),
             helper.make_node("Constant", [], ["Wc"], value=nh.from_array(W(8, 4), "Wc")),
             helper.make_node("Gemm", ["h", "Wc"], ["h2"], transB=1),
             helper.make_node("MatMul", ["h2", "Wtyped"], ["Y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TP.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("Y", TP.FLOAT, [1, 4])],
                          [nh.from_array(W(4, 4), "W1"), typed])
    for opset in (9, 13, 21):
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        out.append(m.SerializeToString())
    # If with weights in both branches, Loop body
    tb = helper.make_graph([helper.make_node("MatMul", ["X", "Wt"], ["yt"])], "t", [],
                           [helper.make_tensor_value_info("yt", TP.FLOAT, None)],
                           [nh.from_array(W(4, 4), "Wt")])
    eb = helper.make_graph([helper.make_node("Constant", [], ["We"], value=nh.from_array(W(4, 4), "We")),
                            helper.make_node("MatMul", ["X", "We"], ["ye"])], "e", [],
                           [helper.make_tensor_value_info("ye", TP.FLOAT, None)])
    body = helper.make_graph([helper.make_node("Identity", ["c"], ["co"]),
                              helper.make_node("MatMul", ["v", "Wl"], ["vo"])], "body",
                             [helper.make_tensor_value_info("i", TP.INT64, []),
                              helper.make_tensor_value_info("c", TP.BOOL, []),
                              helper.make_tensor_value_info("v", TP.FLOAT, [1, 4])],
                             [helper.make_tensor_value_info("co", TP.BOOL, []),
                              helper.make_tensor_value_info("vo", TP.FLOAT, [1, 4])],
                             [nh.from_array(W(4, 4), "Wl")])
    g = helper.make_graph([helper.make_node("If", ["cond"], ["y"], then_branch=tb, else_branch=eb),
                           helper.make_node("Loop", ["n", "", "y"], ["z"], body=body)], "g",
                          [helper.make_tensor_value_info("X", TP.FLOAT, [1, 4]),
                           helper.make_tensor_value_info("cond", TP.BOOL, []),
                           helper.make_tensor_value_info("n", TP.INT64, [])],
                          [helper.make_tensor_value_info("z", TP.FLOAT, None)])
    out.append(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    # float16 weights, int4 raw data (hand-set dtype), an external-data reference
    f16 = nh.from_array(W(4, 4).astype(np.float16), "Wh")
    i4 = onnx.TensorProto(name="Wi4", data_type=22, dims=[3, 2], raw_data=bytes([0x12, 0x9f, 0x70]))
    ext = onnx.TensorProto(name="Wx", data_type=TP.FLOAT, dims=[2, 2],
                           data_location=TP.EXTERNAL)
    for k, v in (("location", "weights.bin"), ("offset", "0"), ("length", "16")):
        e = ext.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph([helper.make_node("MatMul", ["X", "Wh"], ["Y"])], "g",
                          [helper.make_tensor_value_info("X", TP.FLOAT16, [1, 4])],
                          [helper.make_tensor_value_info("Y", TP.FLOAT16, [1, 4])], [f16, i4])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    out.append(m.SerializeToString())
    g.initializer.append(ext)
    out.append(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]).SerializeToString())
    # unknown fields appended at the end
    out.append(out[0] + bytes([0xc0, 0x3e, 0x2a, 0xca, 0x3e, 0x03]) + b"abc")
    return out


def main():
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    n = 0
    for data in own_models():
        n += put(outdir, data)
    here = os.path.dirname(os.path.abspath(__file__))
    gen = os.path.join(here, "..", "models", "make_models.py")
    if os.path.exists(gen):
        with tempfile.TemporaryDirectory() as tmp:
            res = subprocess.run(["/usr/bin/python3", gen, tmp], capture_output=True)
            if res.returncode == 0:
                for p in sorted(glob.glob(os.path.join(tmp, "*.onnx"))):
                    with open(p, "rb") as f:
                        n += put(outdir, f.read())
            else:
                print("make_models.py failed; using the other seeds", file=sys.stderr)
    for p in sorted(glob.glob("/usr/share/libonnx-testdata/data/*/*/model.onnx")):
        with open(p, "rb") as f:
            n += put(outdir, f.read())
    print(f"{n} seed models in {outdir}")


if __name__ == "__main__":
    main()
