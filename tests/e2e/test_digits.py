#!/usr/bin/python3
# test_digits.py — a real task: test-set accuracy of the sklearn digits MLP, original vs each mopt technique, all run in ONNX Runtime (TAP).
"""tests/models/make_models.py trains scikit-learn's MLPClassifier (256-128, random_state 0) on
load_digits (75/25 stratified split, random_state 0) and exports it as an ONNX Gemm/Relu MLP
(fc1 transB=1, fc2/fc3 transB=0; every weight >= 1024 elements, so the default selection takes
all three). Here each spec runs through `mopt optimize`, original and output run in ONNX Runtime
on the 450 test digits, and the accuracy drop (in points, 1 point = 1%; one digit = 0.22 points)
must stay within the bound the test names. The bounds were measured on the real outputs
(MOPT_E2E_MEASURE=1 prints them) and set with a margin.
Trade-off: 450 test samples make accuracy coarse (0.22-point steps); the bounds are per
technique, not a statistical test.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_common as E  # noqa: E402

MEASURE = os.environ.get("MOPT_E2E_MEASURE") == "1"

# name, passes, max accuracy drop in points, max output size ratio. Measured on mopt 0.1.0
# (drop in points / size ratio): int8 0.00/0.267, int4 block 32 -0.22/0.310, 2:4 0.67/1.0,
# 50% unstructured 2.67/1.0, 16 clusters -0.22/0.261, fp16 0.00/0.506, chain 2.67/0.259.
# The model is opset 13, where 4-bit values and LUT indices sit in 8-bit containers (packing
# needs opset 21, see test_optimize.py), hence the int4 and cluster size bounds.
SPECS = [
    ("int8 per-channel", [{"op": "quantize", "dtype": "int8", "granularity": "per_channel"}], 1.0, 0.29),
    ("int4 block 32", [{"op": "quantize", "dtype": "int4", "granularity": "block", "block_size": 32}], 1.0, 0.33),
    ("2:4 pruning", [{"op": "prune", "sparsity": 0.5, "pattern": "2:4"}], 2.0, 1.02),
    ("50% unstructured pruning", [{"op": "prune", "sparsity": 0.5, "pattern": "unstructured"}], 4.0, 1.02),
    ("16 clusters (lut)", [{"op": "cluster", "clusters": 16, "encoding": "lut"}], 1.0, 0.28),
    ("fp16", [{"op": "fp16"}], 0.25, 0.52),
    ("prune 50% + 16 clusters + int8", [{"op": "prune", "sparsity": 0.5, "pattern": "unstructured"},
                                        {"op": "cluster", "clusters": 16, "encoding": "lut"},
                                        {"op": "quantize", "dtype": "int8", "granularity": "per_tensor"}], 4.0, 0.28),
]


def main():
    return E.run_suite("mopt-digits-", run)


def run(tap, work):
    mdir = os.path.join(work, "models")
    E.make_models(mdir)
    with open(os.path.join(mdir, "digits_meta.json")) as f:
        meta = json.load(f)
    y = np.load(os.path.join(mdir, "digits_test_y.npy"))
    model = os.path.join(mdir, "digits_mlp.onnx")
    inputs = os.path.join(mdir, "digits_mlp.inputs.json")
    tap.ok(meta["sklearn_test_accuracy"] >= 0.95, "sklearn digits MLP trains to >= 95%% test accuracy (%.2f%%)"
           % (100 * meta["sklearn_test_accuracy"]))
    if not tap.ok(E.pin_mopt(work), "mopt binary exists at %s (copied for this run)" % E.MOPT):
        return
    outs = []
    for i, (name, passes, _drop, _size) in enumerate(SPECS):
        out = os.path.join(work, "opt_%d.onnx" % i)
        rc, so, se = E.mopt(model, out, {"passes": passes}, out + ".report.json")
        outs.append((rc, se, out))
    jobs = [{"model": model, "inputs": inputs}] + [{"model": o[2], "inputs": inputs} for o in outs if o[0] == 0]
    res = E.ort_batch(jobs, os.path.join(work, "ort"))
    r0 = res[0]
    if not tap.ok("outputs" in r0, "original digits MLP runs in ONNX Runtime", r0.get("error")):
        return
    acc0 = 100.0 * float((r0["outputs"]["logits"].argmax(1) == y).mean())
    tap.ok(abs(acc0 - 100 * meta["sklearn_test_accuracy"]) < 0.5,
           "ONNX Runtime accuracy of the exported MLP matches sklearn's (%.2f%% vs %.2f%%)"
           % (acc0, 100 * meta["sklearn_test_accuracy"]))
    k = 1
    for (name, passes, drop, size), (rc, se, out) in zip(SPECS, outs):
        if not tap.ok(rc == 0, "digits %s: mopt optimize exits 0" % name, se[-1200:]):
            continue
        r = res[k]
        k += 1
        if not tap.ok("outputs" in r, "digits %s: output runs in ONNX Runtime" % name, r.get("error")):
            continue
        acc = 100.0 * float((r["outputs"]["logits"].argmax(1) == y).mean())
        ratio = os.path.getsize(out) / os.path.getsize(model)
        if MEASURE:
            tap.note("MEASURE digits %s: accuracy %.2f%% (original %.2f%%, drop %.2f), size ratio %.4f"
                     % (name, acc, acc0, acc0 - acc, ratio))
        tap.ok(acc0 - acc <= drop, "digits %s: test accuracy within %.2f points of the original (%.2f%%)"
               % (name, drop, acc0), "accuracy %.2f%%, drop %.2f points" % (acc, acc0 - acc))
        tap.ok(ratio <= size, "digits %s: file <= %.2f x the original" % (name, size), "ratio %.4f" % ratio)


if __name__ == "__main__":
    sys.exit(main())
