#!/usr/bin/python3
"""make_pairs.py — version pairs of ONNX models for the OTA payload benchmark (bench_ota.py).

usage: make_pairs.py OUTDIR [--mopt build/mopt] [--big MB]

Writes into OUTDIR, and lists in OUTDIR/pairs.json as [{"name","old","new","float32"}]:
  digits_v1.onnx        sklearn MLPClassifier (256,128) trained 40 epochs on load_digits
  digits_v2.onnx        v1 fine-tuned 10 more epochs at a lower learning rate (every weight moves)
  digits_head.onnx      v1 with only the last layer (W3, b3) retrained by softmax regression
  digits_*_int8.onnx    int8 versions of the three (`mopt optimize --quantize int8 --per-channel`
                        when it works, else numpy-made per-channel symmetric DequantizeLinear)
  other.onnx            an unrelated model (MLP (200,100) on another split, other seed/producer)
With --big MB (default off): big_v1.onnx (~MB megabytes of float32 weights, 100 tensors) and
big_v2.onnx = v1 + small Gaussian noise (sigma = 1e-3 of the weights' sigma) on 30% of the
tensors, seeded.

Trade-off: real training for the small pairs (real weight statistics), synthetic for the big pair
(only the bench needs it, and it must be quick to make and deterministic).
"""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def mlp_model(coefs, intercepts, name, producer="moptd-ota-bench"):
    nodes, inits, x = [], [], "x"
    for i, (w, b) in enumerate(zip(coefs, intercepts)):
        wn, bn, h = "W%d" % (i + 1), "b%d" % (i + 1), "h%d" % (i + 1)
        inits += [numpy_helper.from_array(np.asarray(w, np.float32), wn),
                  numpy_helper.from_array(np.asarray(b, np.float32), bn)]
        last = i == len(coefs) - 1
        nodes.append(helper.make_node("Gemm", [x, wn, bn], ["logits" if last else h],
                                      name="fc%d" % (i + 1)))
        if not last:
            nodes.append(helper.make_node("Relu", [h], ["a%d" % (i + 1)], name="relu%d" % (i + 1)))
            x = "a%d" % (i + 1)
    g = helper.make_graph(nodes, name, [vi("x", ["N", 64])], [vi("logits", ["N", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name=producer)
    m.ir_version = 7
    return m


def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    return train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)


def train(hidden, seed, epochs, Xtr, ytr, clf=None, lr=1e-3):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    if clf is None:
        clf = MLPClassifier(hidden_layer_sizes=hidden, activation="relu", solver="adam",
                            alpha=1e-4, max_iter=epochs, random_state=seed,
                            learning_rate_init=lr)
    else:
        clf.set_params(max_iter=epochs, warm_start=True, learning_rate_init=lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(Xtr, ytr)
    return clf


def retrain_head(clf, Xtr, ytr, steps=200, lr=0.5):
    """Softmax regression on the last hidden layer's activations: only W3, b3 change."""
    a = Xtr
    for w, b in zip(clf.coefs_[:-1], clf.intercepts_[:-1]):
        a = np.maximum(a @ w + b, 0)
    W, b = clf.coefs_[-1].copy(), clf.intercepts_[-1].copy()
    Y = np.eye(10)[ytr]
    for _ in range(steps):
        z = a @ W + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - Y) / len(ytr)
        W -= lr * (a.T @ g + 1e-4 * W)
        b -= lr * g.sum(axis=0)
    return W, b


def numpy_int8(src, dst):
    """Per-channel symmetric int8 of every 2-D weight as DequantizeLinear (opset 13)."""
    m = onnx.load(src)
    g = m.graph
    new_inits, new_nodes = [], []
    for t in g.initializer:
        a = numpy_helper.to_array(t)
        if a.ndim != 2:
            new_inits.append(t)
            continue
        scale = np.maximum(np.abs(a).max(axis=0), 1e-12) / 127.0      # per output column
        q = np.clip(np.round(a / scale), -127, 127).astype(np.int8)
        new_inits += [numpy_helper.from_array(q, t.name + "_q"),
                      numpy_helper.from_array(scale.astype(np.float32), t.name + "_s"),
                      numpy_helper.from_array(np.zeros(scale.shape, np.int8), t.name + "_z")]
        new_nodes.append(helper.make_node("DequantizeLinear", [t.name + "_q", t.name + "_s",
                                          t.name + "_z"], [t.name], axis=1))
    del g.initializer[:]
    g.initializer.extend(new_inits)
    nodes = new_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.save(m, dst)


def int8(mopt, src, dst):
    if mopt and os.path.exists(mopt):
        r = subprocess.run([mopt, "optimize", src, "-o", dst, "--quantize", "int8",
                            "--per-channel"], capture_output=True)
        if r.returncode == 0 and os.path.exists(dst):
            return "mopt optimize --quantize int8 --per-channel"
    numpy_int8(src, dst)
    return "numpy DequantizeLinear"


def big_pair(outdir, mb, seed=7):
    n_t = 100
    per = int(mb * (1 << 20) / 4 / n_t)
    rows = 1024
    cols = max(1, per // rows)
    rng = np.random.default_rng(seed)
    inits1, inits2 = [], []
    changed = set(rng.choice(n_t, size=int(0.3 * n_t), replace=False).tolist())
    for i in range(n_t):
        w = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02)
        inits1.append(numpy_helper.from_array(w, "layer%03d.weight" % i))
        if i in changed:
            w = w + rng.standard_normal(w.shape, dtype=np.float32) * np.float32(0.02 * 1e-3)
        inits2.append(numpy_helper.from_array(w.astype(np.float32), "layer%03d.weight" % i))
    for inits, name in ((inits1, "big_v1.onnx"), (inits2, "big_v2.onnx")):
        nodes, x = [], "x"
        for i in range(n_t):
            out = "y" if i == n_t - 1 else "t%d" % i
            # shapes do not chain; the bench only needs a structurally valid file
            nodes.append(helper.make_node("Identity", [inits[i].name], [out], name="id%d" % i))
        g = helper.make_graph(nodes, "big", [], [vi("y", [rows, cols])], inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="moptd-ota-bench")
        m.ir_version = 7
        onnx.save(m, os.path.join(outdir, name))
    return sorted(changed)


def main():
    args = sys.argv[1:]
    if not args:
        sys.stderr.write(__doc__)
        return 2
    outdir, mopt, big = args[0], None, 0
    if "--mopt" in args:
        mopt = args[args.index("--mopt") + 1]
    if "--big" in args:
        big = int(args[args.index("--big") + 1])
    os.makedirs(outdir, exist_ok=True)
    P = lambda n: os.path.join(outdir, n)
    pairs = []
    if not os.path.exists(P("pairs_small.json")):
        Xtr, Xte, ytr, yte = digits()
        clf = train((256, 128), 0, 40, Xtr, ytr)
        acc1 = clf.score(Xte, yte)
        onnx.save(mlp_model(clf.coefs_, clf.intercepts_, "digits"), P("digits_v1.onnx"))
        W3, b3 = retrain_head(clf, Xtr, ytr)
        onnx.save(mlp_model(clf.coefs_[:-1] + [W3], clf.intercepts_[:-1] + [b3], "digits"),
                  P("digits_head.onnx"))
        clf = train(None, 0, 10, Xtr, ytr, clf=clf, lr=2e-4)
        acc2 = clf.score(Xte, yte)
        onnx.save(mlp_model(clf.coefs_, clf.intercepts_, "digits"), P("digits_v2.onnx"))
        other = train((200, 100), 3, 30, Xte, yte)
        onnx.save(mlp_model(other.coefs_, other.intercepts_, "other", producer="someone-else"),
                  P("other.onnx"))
        how = {}
        for v in ("v1", "v2", "head"):
            how[v] = int8(mopt, P("digits_%s.onnx" % v), P("digits_%s_int8.onnx" % v))
        small = [
            {"name": "digits fine-tune", "old": "digits_v1.onnx", "new": "digits_v2.onnx", "float32": True},
            {"name": "digits head only", "old": "digits_v1.onnx", "new": "digits_head.onnx", "float32": True},
            {"name": "digits fine-tune int8", "old": "digits_v1_int8.onnx", "new": "digits_v2_int8.onnx", "float32": False},
            {"name": "digits head only int8", "old": "digits_v1_int8.onnx", "new": "digits_head_int8.onnx", "float32": False},
            {"name": "unrelated", "old": "digits_v1.onnx", "new": "other.onnx", "float32": True},
        ]
        with open(P("pairs_small.json"), "w") as f:
            json.dump({"pairs": small, "int8_by": how, "acc_v1": acc1, "acc_v2": acc2}, f, indent=1)
    with open(P("pairs_small.json")) as f:
        pairs = json.load(f)["pairs"]
    if big:
        if not (os.path.exists(P("big_v1.onnx")) and os.path.exists(P("big_v2.onnx"))
                and os.path.exists(P("big.json")) and json.load(open(P("big.json")))["mb"] == big):
            changed = big_pair(outdir, big)
            with open(P("big.json"), "w") as f:
                json.dump({"mb": big, "changed": changed}, f)
        pairs.append({"name": "synthetic %d MB, 30%% tensors noised" % big, "old": "big_v1.onnx",
                      "new": "big_v2.onnx", "float32": True, "big": True})
    with open(P("pairs.json"), "w") as f:
        json.dump(pairs, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
