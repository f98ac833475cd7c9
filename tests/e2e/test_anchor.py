#!/usr/bin/python3
# test_anchor.py — anchored optimization end to end: `mopt optimize --anchor` on the digits fine-tune pair, outputs run in ONNX Runtime (TAP).
"""tests/ota/make_pairs.py makes digits_v1 (an sklearn MLP) and digits_v2 (v1 fine-tuned, every
weight moves a little). For each spec, v1 is optimized, then v2 twice: plain and with
`--anchor <v1 output>`. Checks: the anchored run exits 0, its report counts anchored tensors
(totals.anchored_tensors equals the tensors flagged "anchored": true, and is > 0 for int8 and
pruning), reused parameters are byte-identical to v1's (as many equal scales as the report's
note says were reused; the cluster tables), the reported SNR stays within the pass bound
(0.5 dB for quantize), and ONNX Runtime runs the anchored output with test accuracy within
1 point of the plain v2 output. A model given as anchor that does not exist fails with exit 1.
Trade-off: one real pair (450 test digits) rather than synthetic tensors: realistic weight
statistics, coarse accuracy (0.22-point steps).
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_common as E  # noqa: E402

SPECS = [
    ("int8 per-channel", ["--quantize", "int8", "--per-channel"], True),
    ("int4 block 32", ["--quantize", "int4", "--block", "32"], False),
    ("16 clusters", ["--cluster", "16"], False),
    ("50% pruning", ["--prune", "0.5"], True),
]


def initializers(path):
    import onnx
    from onnx import numpy_helper
    m = onnx.load(path)
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def main():
    return E.run_suite("mopt-anchor-", run)


def run(tap, work):
    if not tap.ok(E.pin_mopt(work), "mopt binary exists at %s (copied for this run)" % E.MOPT):
        return
    pdir = os.path.join(work, "pairs")
    import subprocess
    subprocess.run([sys.executable, os.path.join(E.ROOT, "tests", "ota", "make_pairs.py"), pdir],
                   check=True, stdout=subprocess.DEVNULL)
    sys.path.insert(0, os.path.join(E.ROOT, "tests", "ota"))
    import make_pairs
    _, Xte, _, yte = make_pairs.digits()
    np.save(os.path.join(work, "x.npy"), np.ascontiguousarray(Xte, dtype=np.float32))
    inputs = {"x": {"npy": os.path.join(work, "x.npy")}}
    v1, v2 = os.path.join(pdir, "digits_v1.onnx"), os.path.join(pdir, "digits_v2.onnx")

    jobs, checks = [], []
    for i, (name, flags, expect_anchor) in enumerate(SPECS):
        o1, o2, o2a = (os.path.join(work, "%s_%d.onnx" % (k, i)) for k in ("o1", "o2", "o2a"))
        r2, r2a = o2 + ".json", o2a + ".json"
        ok = True
        for inp, out, rep, extra in ((v1, o1, None, []), (v2, o2, r2, []), (v2, o2a, r2a, ["--anchor", o1])):
            rc, _, se = E.mopt_cmd(["optimize", inp, "-o", out] + (["--report", rep] if rep else []) + flags + extra)
            ok = tap.ok(rc == 0, "%s: mopt optimize %s%s exits 0" % (name, os.path.basename(inp),
                                                                       " --anchor" if extra else ""), se[-800:]) and ok
        if not ok:
            continue
        with open(r2) as f:
            plain = json.load(f)
        with open(r2a) as f:
            anch = json.load(f)
        flagged = [t for t in anch["tensors"] if t["anchored"]]
        total = anch["totals"].get("anchored_tensors")
        tap.ok(total == len(flagged), "%s: totals.anchored_tensors (%s) = tensors flagged anchored (%d)"
               % (name, total, len(flagged)))
        tap.ok(plain["totals"].get("anchored_tensors") == 0, "%s: without --anchor nothing is anchored" % name)
        if expect_anchor:
            tap.ok(total and total > 0, "%s: the anchored run reuses the anchor for some tensors (%s)" % (name, total))
        else:
            tap.note("%s: %s anchored tensors" % (name, total))
        if "--quantize" in flags:
            worst = max(p["snr_db"] - a["snr_db"] for p, a in zip(plain["tensors"], anch["tensors"]))
            tap.ok(worst <= 0.5 + 1e-6, "%s: anchored SNR within 0.5 dB of fresh on every tensor (worst %.3f dB)"
                   % (name, worst))
        i1, i2a = initializers(o1), initializers(o2a)
        for t in flagged:
            note = " ".join(p["note"] or "" for p in t["passes"])
            kt, ks = t["name"] + "__mopt_table", t["name"] + "__mopt_scale"
            if kt in i1 and kt in i2a:
                tap.ok(i1[kt].tobytes() == i2a[kt].tobytes(), "%s: %s is byte-identical to v1's" % (name, kt))
            if ks in i1 and ks in i2a and "scales in " in note and i1[ks].shape == i2a[ks].shape:
                reused = int(note.split("scales in ")[1].split(" of ")[0])
                same = int((i1[ks].view(np.uint32) == i2a[ks].view(np.uint32)).sum())
                tap.ok(reused > 0 and same >= reused, "%s: %s has the %d reused scales byte-identical to v1's (%d equal)"
                       % (name, ks, reused, same))
        jobs += [{"model": o2, "inputs": inputs}, {"model": o2a, "inputs": inputs}]
        checks.append(name)
    res = E.ort_batch(jobs, os.path.join(work, "ort"))
    for j, name in enumerate(checks):
        rp, ra = res[2 * j], res[2 * j + 1]
        if not tap.ok("outputs" in ra, "%s: anchored output runs in ONNX Runtime" % name, ra.get("error")):
            continue
        if not tap.ok("outputs" in rp, "%s: plain output runs in ONNX Runtime" % name, rp.get("error")):
            continue
        acc_p = 100.0 * float((rp["outputs"]["logits"].argmax(1) == yte).mean())
        acc_a = 100.0 * float((ra["outputs"]["logits"].argmax(1) == yte).mean())
        tap.ok(acc_p - acc_a <= 1.0, "%s: anchored accuracy %.2f%% within 1 point of plain %.2f%%"
               % (name, acc_a, acc_p))
    rc, _, se = E.mopt_cmd(["optimize", v2, "-o", os.path.join(work, "x.onnx"), "--quantize", "int8",
                            "--anchor", os.path.join(work, "missing.onnx")])
    tap.ok(rc == 1 and "anchor" in se and not os.path.exists(os.path.join(work, "x.onnx")),
           "a missing anchor model exits 1, names the anchor, writes nothing", "rc %d: %s" % (rc, se[-400:]))


if __name__ == "__main__":
    sys.exit(main())
