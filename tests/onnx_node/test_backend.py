#!/usr/bin/python3
# test_backend.py — ONNX backend test data (libonnx-testdata) through mopt: zero-pass round trip equal in ONNX Runtime, `mopt inspect --json` on every model, every technique on the models with weights still runs (TAP).
"""For every directory under /usr/share/libonnx-testdata/data (node, simple, pytorch-converted,
pytorch-operator; "real" holds only download URLs) that has model.onnx and
test_data_set_*/input_*.pb:
  1. `mopt inspect MODEL --json` exits 0 and prints one JSON object;
  2. `mopt optimize MODEL -o OUT --spec {"passes": []}` (zero passes: load + save) exits 0;
  3. OUT parses (python-onnx) to a ModelProto equal to the input's (every field kept), and a
     second round trip of OUT is byte-identical to OUT;
  4. ONNX Runtime runs OUT on the stored inputs with outputs bit-identical to the original's
     (NaN == NaN). Models ORT itself cannot load or run on those inputs, or whose inputs are
     not plain tensors (sequences, optionals), are skipped and counted ("# SKIP"); models with
     random ops only need matching names, dtypes and shapes;
  5. on the models with weights (`inspect` lists an is_weight tensor of >= 16 elements; about 30,
     mostly the opset-6 pytorch-converted Conv/Linear models), every technique in TECHS with
     min_elements 16 exits 0 and its output loads and runs in ONNX Runtime wherever the original
     does, with the same output names, dtypes and shapes (cosine < 0.99 is listed as information:
     the weights are tiny, so no bound is claimed).
One TAP line per check per data directory; failing model names are listed under the line.
Runtime is bounded by running mopt in a thread pool and all ORT sessions in two node processes.
Env: MOPT_BUILD (default build), MOPT_ONNX_DATA (default /usr/share/libonnx-testdata/data),
MOPT_ONNX_LIMIT (first N models only, for quick runs).
Trade-off: aggregated lines keep the TAP output readable (about 1000 models) at the cost of one
"not ok" covering several models; the diagnostics name each of them.
"""
import glob
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "e2e"))
import e2e_common as E  # noqa: E402

DATA = os.environ.get("MOPT_ONNX_DATA", "/usr/share/libonnx-testdata/data")
# techniques run on every backend model that has weights (is_weight, >= 16 elements)
TECHS = {
    "int8 per-channel": [{"op": "quantize", "dtype": "int8", "granularity": "per_channel"}],
    "uint8 per-tensor affine": [{"op": "quantize", "dtype": "uint8", "granularity": "per_tensor", "symmetric": False}],
    "int4 block 16": [{"op": "quantize", "dtype": "int4", "granularity": "block", "block_size": 16}],
    "int8 dynamic": [{"op": "quantize", "dtype": "int8", "granularity": "per_channel", "activations": "dynamic"}],
    "2:4 pruning": [{"op": "prune", "sparsity": 0.5, "pattern": "2:4"}],
    "channel pruning": [{"op": "prune", "sparsity": 0.25, "pattern": "channel"}],
    "16 clusters lut": [{"op": "cluster", "clusters": 16, "encoding": "lut"}],
    "fp16": [{"op": "fp16"}],
    "decompose": [{"op": "decompose", "energy": 0.9}],
}
RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
              "Bernoulli", "Dropout"}


def find_models():
    out = []
    for group in sorted(os.listdir(DATA)):
        gdir = os.path.join(DATA, group)
        if not os.path.isdir(gdir):
            continue
        for t in sorted(os.listdir(gdir)):
            d = os.path.join(gdir, t)
            if os.path.isfile(os.path.join(d, "model.onnx")):
                out.append((group, t, d))
    lim = os.environ.get("MOPT_ONNX_LIMIT")
    return out[: int(lim)] if lim else out


def all_ops(graph):
    ops = set()
    for n in graph.node:
        ops.add(n.op_type)
        for a in n.attribute:
            if a.g is not None and a.HasField("g"):
                ops |= all_ops(a.g)
            for g in a.graphs:
                ops |= all_ops(g)
    return ops


def prepare_inputs(model_dir, work):
    """Converts test_data_set_0/input_*.pb into .npy; returns (inputs dict for ort_run.js, reason
    to skip or None, random-op flag)."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load(os.path.join(model_dir, "model.onnx"))
    random = bool(all_ops(m.graph) & RANDOM_OPS)
    inits = {t.name for t in m.graph.initializer}
    ginputs = [i for i in m.graph.input if i.name not in inits]
    sets = sorted(glob.glob(os.path.join(model_dir, "test_data_set_*")))
    if not sets:
        return None, "no test_data_set", random
    files = sorted(glob.glob(os.path.join(sets[0], "input_*.pb")),
                   key=lambda p: int(os.path.basename(p)[6:-3]))
    feeds = {}
    os.makedirs(work, exist_ok=True)
    for i, f in enumerate(files):
        if i >= len(ginputs):
            return None, "more input files than graph inputs", random
        gi = ginputs[i]
        if gi.type.WhichOneof("value") != "tensor_type":
            return None, "input %s is a %s, not a tensor" % (gi.name, gi.type.WhichOneof("value")), random
        t = onnx.TensorProto()
        with open(f, "rb") as fh:
            t.ParseFromString(fh.read())
        try:
            a = numpy_helper.to_array(t)
        except Exception as e:  # noqa: BLE001
            return None, "input %s: numpy cannot hold it (%s)" % (gi.name, e), random
        if a.dtype == object:
            a = np.array([x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in a.ravel()]).reshape(a.shape)
        if t.data_type == onnx.TensorProto.BFLOAT16:
            return None, "bfloat16 input", random
        p = os.path.join(work, "in_%d.npy" % i)
        np.save(p, np.ascontiguousarray(a), allow_pickle=False)
        feeds[gi.name] = {"npy": p}
    return feeds, None, random


def same(a, b):
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def main():
    return E.run_suite("mopt-onnx-node-", run)


def run(tap, work):
    import onnx
    models = find_models()
    if not tap.ok(len(models) > 0, "found %d backend test models under %s" % (len(models), DATA)):
        return
    if not tap.ok(E.pin_mopt(work), "mopt binary exists at %s (copied for this run)" % E.MOPT):
        return
    spec = os.path.join(work, "zero.json")
    with open(spec, "w") as f:
        json.dump({"passes": []}, f)

    tspecs = {}
    for tname, passes in TECHS.items():
        tspecs[tname] = os.path.join(work, tname + ".json")
        with open(tspecs[tname], "w") as f:
            json.dump({"passes": passes, "select": {"min_elements": 16}}, f)

    def per_model(idx):
        group, name, d = models[idx]
        w = os.path.join(work, "m%04d" % idx)
        os.makedirs(w)
        src = os.path.join(d, "model.onnx")
        out, out2 = os.path.join(w, "rt.onnx"), os.path.join(w, "rt2.onnx")
        r = {"group": group, "name": name}
        rc, so, se = E.mopt_cmd(["inspect", src, "--json"], timeout=60)
        js = None
        try:
            js = json.loads(so) if rc == 0 else None
            r["inspect"] = None if isinstance(js, dict) else "rc=%d %s" % (rc, (se or so).strip()[-300:])
        except ValueError as e:
            r["inspect"] = "stdout is not one JSON object: %s" % e
        # models with weights the techniques would touch (is_weight, >= 16 elements)
        r["weighted"] = isinstance(js, dict) and any(
            isinstance(t, dict) and t.get("is_weight") and (t.get("elements") or 0) >= 16 for t in js.get("tensors", []))
        rc, so, se = E.mopt_cmd(["optimize", src, "-o", out, "--spec", spec], timeout=120)
        r["rt"] = None if rc == 0 and os.path.exists(out) else "rc=%d %s" % (rc, se.strip()[-300:])
        r["out"] = out if r["rt"] is None else None
        if r["out"]:
            try:
                a, b = onnx.ModelProto(), onnx.ModelProto()
                with open(src, "rb") as fh:
                    a.ParseFromString(fh.read())
                with open(out, "rb") as fh:
                    b.ParseFromString(fh.read())
                r["fields"] = None if a == b else "parsed ModelProto differs from the input's"
            except Exception as e:  # noqa: BLE001
                r["fields"] = "output does not parse: %s" % e
            rc, so, se = E.mopt_cmd(["optimize", out, "-o", out2, "--spec", spec], timeout=120)
            if rc != 0:
                r["stable"] = "second round trip rc=%d %s" % (rc, se.strip()[-200:])
            else:
                with open(out, "rb") as f1, open(out2, "rb") as f2:
                    r["stable"] = None if f1.read() == f2.read() else "second round trip differs"
        # every technique on the models that have weights (min_elements 16): must still load/run
        r["tech"], r["tech_out"] = {}, {}
        if r["weighted"]:
            for tname, tspec in tspecs.items():
                to = os.path.join(w, tname + ".onnx")
                rc, so, se = E.mopt_cmd(["optimize", src, "-o", to, "--spec", tspec], timeout=120)
                r["tech"][tname] = None if rc == 0 and os.path.exists(to) else "rc=%d %s" % (rc, se.strip()[-300:])
                r["tech_out"][tname] = to if r["tech"][tname] is None else None
        try:
            feeds, why, random = prepare_inputs(d, os.path.join(w, "in"))
        except Exception as e:  # noqa: BLE001
            feeds, why, random = None, "cannot read test data: %s" % e, False
        r["feeds"], r["skip"], r["random"] = feeds, why, random
        r["src"] = src
        return r

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as ex:
        res = list(ex.map(per_model, range(len(models))))

    # ORT: original and round trip of every model with plain tensor inputs, two node processes
    jobs, keys = [], []
    for i, r in enumerate(res):
        if r["feeds"] is None:
            continue
        jobs.append({"model": r["src"], "inputs": r["feeds"]})
        keys.append((i, "orig"))
        if r["out"]:
            jobs.append({"model": r["out"], "inputs": r["feeds"]})
            keys.append((i, "rt"))
        for tname, to in r["tech_out"].items():
            if to:
                jobs.append({"model": to, "inputs": r["feeds"]})
                keys.append((i, tname))
    half = (len(jobs) + 1) // 2
    halves = [(jobs[:half], os.path.join(work, "ort_a")), (jobs[half:], os.path.join(work, "ort_b"))]
    with ThreadPoolExecutor(max_workers=2) as ex:
        parts = list(ex.map(lambda h: E.ort_batch(h[0], h[1], timeout=1800) if h[0] else [], halves))
    ort = dict(zip(keys, parts[0] + parts[1]))

    groups = sorted({r["group"] for r in res})
    for g in groups:
        rs = [r for r in res if r["group"] == g]
        n = len(rs)

        def line(key, label, subset=None):
            sub = rs if subset is None else subset
            bad = [(r["name"], r.get(key)) for r in sub if r.get(key)]
            tap.ok(not bad, "%s: %s (%d models)" % (g, label, len(sub)),
                   "\n".join("%s: %s" % b for b in bad[:40]) + ("\n... %d more" % (len(bad) - 40) if len(bad) > 40 else ""))
            if bad:
                for name, why in bad[40:200]:
                    tap.note("  also %s: %s" % (name, why))

        line("inspect", "mopt inspect --json exits 0 with one JSON object")
        line("rt", "zero-pass mopt optimize exits 0 and writes the output")
        have = [r for r in rs if r["out"]]
        line("fields", "round trip keeps every field (parsed ModelProto equal to the input's)", have)
        line("stable", "round trip of our own output is byte-identical", have)
        # ORT equality
        skipped, checked, bad = [], 0, []
        for r in rs:
            i = res.index(r)
            if r["feeds"] is None:
                skipped.append("%s (%s)" % (r["name"], r["skip"]))
                continue
            o = ort.get((i, "orig"))
            if not o or "outputs" not in o:
                skipped.append("%s (ORT on the original: %s)" % (r["name"], (o or {}).get("error", {}).get("message", "?")[:120]))
                continue
            if not r["out"]:
                continue  # counted by the "exits 0" line
            checked += 1
            t = ort.get((i, "rt"))
            if not t or "outputs" not in t:
                bad.append("%s: ORT fails on the round trip: %s" % (r["name"], (t or {}).get("error")))
                continue
            if set(o["outputs"]) != set(t["outputs"]):
                bad.append("%s: output names differ" % r["name"])
                continue
            for k in o["outputs"]:
                a, b = o["outputs"][k], t["outputs"][k]
                if r["random"]:
                    if a.dtype != b.dtype or a.shape != b.shape:
                        bad.append("%s: output %s dtype/shape differ" % (r["name"], k))
                elif not same(a, b):
                    bad.append("%s: output %s differs (max abs diff %s)" % (
                        r["name"], k, np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64)))
                        if a.shape == b.shape and a.dtype.kind in "fiub" else "n/a"))
        tap.ok(not bad, "%s: round trip runs in ONNX Runtime with outputs equal to the original's (%d models)" % (g, checked),
               "\n".join(bad))
        wrs = [r for r in rs if r["weighted"]]
        for tname in (TECHS if wrs else ()):
            for r in wrs:
                r["_t"] = r["tech"].get(tname)
            line("_t", "%s (min_elements 16) mopt optimize exits 0 on the models with weights" % tname, wrs)
            # loads and runs wherever the original does, same output names/dtypes/shapes
            qbad, qn, lowcos = [], 0, []
            for r in wrs:
                i = res.index(r)
                o = ort.get((i, "orig"))
                if r["feeds"] is None or not o or "outputs" not in o or not r["tech_out"].get(tname):
                    continue
                qn += 1
                t = ort.get((i, tname))
                if not t or "outputs" not in t:
                    qbad.append("%s: ORT fails on the %s output: %s" % (r["name"], tname, (t or {}).get("error")))
                    continue
                for k in o["outputs"]:
                    a, b = o["outputs"][k], t["outputs"].get(k)
                    if b is None or a.dtype != b.dtype or a.shape != b.shape:
                        qbad.append("%s: output %s dtype/shape differ" % (r["name"], k))
                    elif a.dtype.kind == "f" and a.size and not r["random"] and np.isfinite(a).all():
                        c = E.cosine(a, b)
                        if c < 0.99:
                            lowcos.append("%s/%s cosine %.4f" % (r["name"], k, c))
            tap.ok(not qbad, "%s: %s output loads and runs in ONNX Runtime wherever the original does, "
                   "outputs keep names/dtypes/shapes (%d models)" % (g, tname, qn), "\n".join(qbad))
            if lowcos:
                tap.note("%s: %s outputs with cosine < 0.99 vs the original (information: tiny weights): %s"
                         % (g, tname, "; ".join(lowcos[:30])))
        if skipped:
            tap.skip("%s: %d of %d models not compared in ONNX Runtime" % (g, len(skipped), n),
                     "ORT cannot run the original on its stored inputs, or the inputs are not plain tensors")
            for s in skipped[:300]:
                tap.note("  skipped " + s)


if __name__ == "__main__":
    sys.exit(main())
