#!/usr/bin/python3
# make_bad_models.py OUTDIR — writes malformed ONNX models (and external-data bundles) that moptd must refuse with a clear error; run with /usr/bin/python3.
"""Writes into OUTDIR:

  <name>.onnx           single-file bad models
  <name>/model.onnx     directory bundles for external-data cases (weights next to the model)
  bad_models.json       manifest: [{"name", "path", "kind": "file"|"bundle", "expect": "reject"|
                        "accept", "error": expected mopt error code, "why": ...}]

Every "reject" model must make `mopt optimize`/`mopt inspect` (and POST /v1/models) fail with a
clear error that says what and where, writing nothing. "accept" entries are controls (the valid
model the bad ones were derived from, and a well-formed external-data bundle) that must load.
"error" lists the acceptable wire codes from core/mopt_error.h (invalid_model for MOPT_EPARSE /
MOPT_EMODEL, too_large for MOPT_ELIMIT, unsupported for MOPT_EUNSUPPORTED); the message wording
is not fixed.
Deterministic (fixed seeds). Trade-off: each case breaks exactly one thing in an otherwise valid
small MLP, so a rejection can only be due to that one defect.
"""
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ENTRIES = []


def base_model(W=None, extra_inits=None, nodes=None, inputs=None):
    """x[N,64] -MatMul(W[64,32])-Add(b)-> y[N,32]; opset 13, IR 7."""
    r = np.random.default_rng(7)
    if W is None:
        W = numpy_helper.from_array((r.standard_normal((64, 32)) * 0.1).astype(np.float32), "W")
    b = numpy_helper.from_array((r.standard_normal(32) * 0.1).astype(np.float32), "b")
    if nodes is None:
        nodes = [helper.make_node("MatMul", ["x", "W"], ["m"], name="matmul"),
                 helper.make_node("Add", ["m", "b"], ["y"], name="add")]
    inits = [W, b] + (extra_inits or [])
    g = helper.make_graph(nodes, "bad", inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="moptd-tests")
    m.ir_version = 7
    return m


def put(outdir, name, data, expect, error, why, kind="file"):
    if kind == "file":
        rel = name + ".onnx"
        with open(os.path.join(outdir, rel), "wb") as f:
            f.write(data)
    else:
        rel = os.path.join(name, "model.onnx")
    ENTRIES.append({"name": name, "path": rel, "kind": kind, "expect": expect, "error": error, "why": why})


def bundle(outdir, name, location, expect, error, why, make_target=None):
    """A directory bundle: OUTDIR/name/model.onnx whose weight W is external at `location`."""
    d = os.path.join(outdir, name)
    os.makedirs(d, exist_ok=True)
    r = np.random.default_rng(8)
    arr = (r.standard_normal((64, 32)) * 0.1).astype(np.float32)
    W = TensorProto()
    W.name = "W"
    W.data_type = TensorProto.FLOAT
    W.dims.extend([64, 32])
    W.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(arr.nbytes))):
        e = W.external_data.add()
        e.key, e.value = k, v
    if make_target is not None:
        make_target(d, arr.tobytes())
    with open(os.path.join(d, "model.onnx"), "wb") as f:
        f.write(base_model(W=W).SerializeToString())
    put(outdir, name, None, expect, error, why, kind="bundle")


def main():
    if len(sys.argv) != 2:
        sys.stderr.write("usage: make_bad_models.py OUTDIR\n")
        return 2
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    good = base_model()
    onnx.checker.check_model(good)
    gb = good.SerializeToString()

    put(outdir, "good", gb, "accept", None, "control: the valid model the others derive from")
    put(outdir, "truncated", gb[: len(gb) // 2], "reject", ["invalid_model"], "first half of a valid model's bytes")
    put(outdir, "truncated_tail", gb[:-7], "reject", ["invalid_model"], "valid model minus its last 7 bytes")
    put(outdir, "random_bytes", np.random.default_rng(9).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "reject", ["invalid_model"], "4096 random bytes")
    put(outdir, "empty", b"", "reject", ["invalid_model"], "zero bytes")

    # dims 2^40 x 2^40: the element count overflows 64 bits once multiplied by 4 bytes
    t = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[1 << 40, 1 << 40], raw_data=b"\0" * 16)
    put(outdir, "absurd_dims", base_model(W=t).SerializeToString(), "reject", ["too_large", "invalid_model"],
        "initializer W with dims [2^40, 2^40] and 16 bytes of data")
    t = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[64, -32], raw_data=b"\0" * 16)
    put(outdir, "negative_dim", base_model(W=t).SerializeToString(), "reject", ["invalid_model"],
        "initializer W with dims [64, -32]")
    t = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[64, 32], raw_data=b"\0" * 100)
    put(outdir, "raw_len_mismatch", base_model(W=t).SerializeToString(), "reject", ["invalid_model"],
        "W [64,32] float32 needs 8192 raw bytes, has 100")
    t = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[64, 32], float_data=[0.5] * 1000)
    put(outdir, "typed_len_mismatch", base_model(W=t).SerializeToString(), "reject", ["invalid_model"],
        "W [64,32] float32 has 1000 float_data values, needs 2048")
    t = TensorProto(name="W", data_type=77, dims=[64, 32], raw_data=b"\0" * 8192)
    # a type number we do not know may be a newer ONNX type: unsupported is as right as invalid
    put(outdir, "wrong_dtype", base_model(W=t).SerializeToString(), "reject", ["invalid_model", "unsupported"],
        "W has data_type 77 (no such ONNX type)")
    t = TensorProto(name="W", data_type=TensorProto.UNDEFINED, dims=[64, 32], raw_data=b"\0" * 8192)
    put(outdir, "undefined_dtype", base_model(W=t).SerializeToString(), "reject", ["invalid_model"],
        "W has data_type 0 (UNDEFINED)")

    cyc = [helper.make_node("MatMul", ["x", "W"], ["m"], name="matmul"),
           helper.make_node("Add", ["m", "t2"], ["t1"], name="add_a"),
           helper.make_node("Relu", ["t1"], ["t2"], name="relu_b"),
           helper.make_node("Add", ["t2", "b"], ["y"], name="add")]
    put(outdir, "cycle", base_model(nodes=cyc).SerializeToString(), "reject", ["invalid_model"],
        "nodes add_a and relu_b feed each other (t1 -> t2 -> t1)")
    miss = [helper.make_node("MatMul", ["x", "W_missing"], ["m"], name="matmul"),
            helper.make_node("Add", ["m", "b"], ["y"], name="add")]
    put(outdir, "missing_input", base_model(nodes=miss).SerializeToString(), "reject", ["invalid_model"],
        "node matmul reads W_missing, which no input, initializer or node produces")

    # external data bundles
    def write_file(name):
        def f(d, data):
            with open(os.path.join(d, name), "wb") as fh:
                fh.write(data)
        return f

    bundle(outdir, "ext_ok", "weights.bin", "accept", None,
           "control: W in weights.bin next to model.onnx", write_file("weights.bin"))
    bundle(outdir, "ext_absolute", "/etc/passwd", "reject", ["unsupported", "invalid_model"],
           "W's external location is the absolute path /etc/passwd")
    os.makedirs(os.path.join(outdir, "ext_dotdot_secret"), exist_ok=True)
    with open(os.path.join(outdir, "ext_dotdot_secret", "weights.bin"), "wb") as fh:
        fh.write(b"\0" * 8192)
    bundle(outdir, "ext_dotdot", "../ext_dotdot_secret/weights.bin", "reject", ["unsupported", "invalid_model"],
           "W's external location climbs out of the bundle with '..' (the target exists)")
    bundle(outdir, "ext_dotdot_inner", "sub/../../ext_dotdot_secret/weights.bin", "reject", ["unsupported", "invalid_model"],
           "W's location hides '..' in the middle of the path")

    def symlink(d, data):
        target = os.path.join(os.path.dirname(d), "ext_symlink_target.bin")
        with open(target, "wb") as fh:
            fh.write(data)
        link = os.path.join(d, "weights.bin")
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(os.path.join("..", "ext_symlink_target.bin"), link)
    bundle(outdir, "ext_symlink", "weights.bin", "reject", ["unsupported", "invalid_model"],
           "W's external file weights.bin is a symlink pointing outside the bundle", symlink)

    def short_file(d, data):
        with open(os.path.join(d, "weights.bin"), "wb") as fh:
            fh.write(data[:100])
    bundle(outdir, "ext_short", "weights.bin", "reject", ["invalid_model"],
           "W's external file holds 100 bytes, the tensor needs 8192", short_file)

    with open(os.path.join(outdir, "bad_models.json"), "w") as f:
        json.dump(ENTRIES, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
