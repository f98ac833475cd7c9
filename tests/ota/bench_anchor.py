#!/usr/bin/python3
"""bench_anchor.py — what anchored optimization does to OTA deltas: the size of `mopt delta`
between opt(v1) and opt(v2), with v2 optimized plain and with `--anchor opt(v1)`.

usage: bench_anchor.py [--mopt build/mopt] [--work build/anchor-bench]

Pairs: digits fine-tune (make_pairs.py: v2 = v1 trained 10 more epochs, every weight moves) and
digits noise (v2 = v1 + Gaussian noise of sigma 1e-3 x each tensor's sigma, seeded: the
"retrained a little" case without the fine-tune's global shrink). Specs: int8 per-channel,
int4 block 32, 16 clusters, 50% pruning. Every payload is applied (`mopt apply`) and the result
byte-compared with the new file. Prints a table, writes WORK/results.json; exit 1 on a failed
round trip.
Trade-off: small real models (seconds to run) instead of the 400 MB synthetic pair; the ratio,
not the absolute size, is the figure that carries over.
"""
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

SPECS = [
    ("int8 per-channel", ["--quantize", "int8", "--per-channel"]),
    ("int4 block 32", ["--quantize", "int4", "--block", "32"]),
    ("16 clusters", ["--cluster", "16"]),
    ("50% pruning", ["--prune", "0.5"]),
]


def run(cmd):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(cmd), p.returncode, p.stderr.decode()[-800:]))


def noise_pair(v1, out):
    import onnx
    from onnx import numpy_helper
    m = onnx.load(v1)
    rng = np.random.default_rng(7)
    for t in m.graph.initializer:
        a = numpy_helper.to_array(t).astype(np.float32)
        if a.size >= 1024:
            a = a + rng.normal(0.0, 1e-3 * float(a.std()), a.shape).astype(np.float32)
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    onnx.save(m, out)


def main(argv):
    mopt = os.path.join(ROOT, "build", "mopt")
    work = os.path.join(ROOT, "build", "anchor-bench")
    i = 0
    while i < len(argv):
        if argv[i] == "--mopt":
            mopt = argv[i + 1]
            i += 2
        elif argv[i] == "--work":
            work = argv[i + 1]
            i += 2
        else:
            print(__doc__)
            return 2
    os.makedirs(work, exist_ok=True)
    pdir = os.path.join(work, "pairs")
    if not os.path.exists(os.path.join(pdir, "digits_v2.onnx")):
        subprocess.run([sys.executable, os.path.join(HERE, "make_pairs.py"), pdir], check=True,
                       stdout=subprocess.DEVNULL)
    v1 = os.path.join(pdir, "digits_v1.onnx")
    noisy = os.path.join(work, "digits_noise_v2.onnx")
    noise_pair(v1, noisy)
    pairs = [("digits fine-tune", v1, os.path.join(pdir, "digits_v2.onnx")),
             ("digits noise", v1, noisy)]
    results, failed = [], 0
    print("%-18s %-18s %12s %12s %8s" % ("pair", "spec", "plain B", "anchored B", "ratio"))
    for pname, a, b in pairs:
        for sname, flags in SPECS:
            tag = "%s_%s" % (pname, sname)
            tag = "".join(c if c.isalnum() else "_" for c in tag)
            o1, o2, o2a = (os.path.join(work, "%s_%s.onnx" % (tag, k)) for k in ("o1", "o2", "o2a"))
            run([mopt, "optimize", a, "-o", o1] + flags)
            run([mopt, "optimize", b, "-o", o2] + flags)
            rep = o2a + ".report.json"
            run([mopt, "optimize", b, "-o", o2a, "--report", rep, "--anchor", o1] + flags)
            with open(rep) as f:
                anchored = json.load(f)["totals"]["anchored_tensors"]
            sizes = []
            for new in (o2, o2a):
                pay, back = new + ".delta", new + ".applied"
                run([mopt, "delta", o1, new, "-o", pay])
                run([mopt, "apply", o1, pay, "-o", back])
                with open(back, "rb") as f1, open(new, "rb") as f2:
                    if f1.read() != f2.read():
                        failed += 1
                        print("ROUND TRIP FAILED: %s" % new)
                sizes.append(os.path.getsize(pay))
            ratio = sizes[1] / sizes[0] if sizes[0] else 0.0
            print("%-18s %-18s %12d %12d %8.3f  (%d tensors anchored)"
                  % (pname, sname, sizes[0], sizes[1], ratio, anchored), flush=True)
            results.append({"pair": pname, "spec": sname, "delta_plain": sizes[0],
                            "delta_anchored": sizes[1], "ratio": ratio, "anchored_tensors": anchored})
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
