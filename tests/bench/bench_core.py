#!/usr/bin/python3
"""moptd compression-core benchmarks (issue: compression core). Run by tests/bench/run.sh.

  1. ~100M-parameter transformer-shaped model (tests/bench/make_transformer.py, ~410 MB):
     `mopt optimize` end to end for int8 per-channel, int4 block 32, 16-cluster LUT, 2:4
     pruning. Wall time as a ratio to `cp` of the same file in the same run (goal <= 4x for
     int8), peak RSS as a ratio to the file size (goal <= 2.5x).
  2. k-means on 4M float32 values, 256 clusters: libmopt's kernel (tests/bench/kmeans_bench.c)
     vs scikit-learn's KMeans (n_init=1, same initial centroids, same data), in the same run:
     speed ratio (goal >= 100x) and inertia ratio (goal <= 1.0).
Medians of BENCH_RUNS runs (default 3) for the short timings; the machine is shared and noisy.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, os.environ.get("MOPT_BUILD", "build"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
KM_N = int(os.environ.get("BENCH_KMEANS_N", str(4 * 1024 * 1024)))


def log(msg):
    print(msg, flush=True)


def measure_child(cmd):
    """(seconds, peak RSS bytes) of one command, measured in an isolated helper process."""
    helper = ("import os,resource,subprocess,sys,time,json;t=time.perf_counter();"
              "r=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL,stderr=subprocess.PIPE);"
              "dt=time.perf_counter()-t;"
              "print(json.dumps({'rc':r.returncode,'s':dt,"
              "'rss':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss*1024,"
              "'err':r.stderr.decode()[-1500:]}))")
    out = subprocess.run([sys.executable, "-c", helper, *cmd], capture_output=True, text=True).stdout
    res = json.loads(out)
    if res["rc"] != 0:
        raise SystemExit("%s failed (%d): %s" % (" ".join(cmd), res["rc"], res["err"]))
    return res["s"], res["rss"]


def bench_optimize(work):
    log("\n## mopt optimize on a ~100M-parameter transformer-shaped model (baseline: cp)")
    model = os.path.join(work, "transformer.onnx")
    subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "tests/bench/make_transformer.py"), model],
                   check=True)
    size = os.path.getsize(model)
    cps = []
    for _ in range(RUNS):
        dst = os.path.join(work, "copy.onnx")
        cps.append(measure_child(["cp", model, dst])[0])
        os.unlink(dst)
    cp_s = statistics.median(cps)
    log("file %.0f MB; cp median %.3f s (runs %s)" % (size / 1e6, cp_s, ", ".join("%.3f" % c for c in cps)))
    cases = [
        ("int8 per-channel", [{"op": "quantize", "dtype": "int8", "granularity": "per_channel"}], 4.0),
        ("int4 block 32", [{"op": "quantize", "dtype": "int4", "granularity": "block", "block_size": 32}], None),
        ("16-cluster LUT", [{"op": "cluster", "clusters": 16, "encoding": "lut"}], None),
        ("2:4 pruning", [{"op": "prune", "sparsity": 0.5, "pattern": "2:4"}], None),
    ]
    for name, passes, goal in cases:
        spec = os.path.join(work, "spec.json")
        with open(spec, "w") as f:
            json.dump({"passes": passes}, f)
        out = os.path.join(work, "out.onnx")
        runs = [measure_child([os.path.join(BUILD, "mopt"), "optimize", model, "-o", out, "--spec", spec])
                for _ in range(RUNS if goal else 1)]
        s = statistics.median(r[0] for r in runs)
        rss = max(r[1] for r in runs)
        out_size = os.path.getsize(out)
        os.unlink(out)
        verdict = ""
        if goal:
            verdict = "   goal time <= %.1fx cp: %s, RSS <= 2.5x file: %s" % (
                goal, "MET" if s / cp_s <= goal else "NOT MET", "MET" if rss / size <= 2.5 else "NOT MET")
        log("%-17s %.2f s = %.2fx cp; peak RSS %.0f MB = %.2fx file; output %.0f MB (%.2fx)%s"
            % (name, s, s / cp_s, rss / 1e6, rss / size, out_size / 1e6, out_size / size, verdict))
    os.unlink(model)


def inertia_1d(x, cent):
    import numpy as np
    c = np.sort(np.asarray(cent, dtype=np.float64))
    mids = (c[1:] + c[:-1]) / 2
    idx = np.searchsorted(mids, x)
    d = x - c[idx]
    return float(np.dot(d, d))


def bench_kmeans(work):
    import numpy as np
    log("\n## 1-D k-means, %d float32 values, 256 clusters (baseline: scikit-learn KMeans, n_init=1,"
        " same init and data)" % KM_N)
    ours = []
    for _ in range(RUNS):
        out = subprocess.run([os.path.join(BUILD, "bench", "kmeans_bench"), str(KM_N), "256", "7", work],
                             check=True, capture_output=True, text=True).stdout
        ours.append(json.loads(out))
    ms = statistics.median(o["total_ms"] for o in ours)
    x = np.fromfile(os.path.join(work, "data.f32"), dtype=np.float32)
    init = np.fromfile(os.path.join(work, "init.f32"), dtype=np.float32)
    final = np.fromfile(os.path.join(work, "final.f32"), dtype=np.float32)
    from sklearn.cluster import KMeans
    t0 = time.perf_counter()
    km = KMeans(n_clusters=len(init), init=init.reshape(-1, 1), n_init=1, algorithm="lloyd",
                random_state=0).fit(x.reshape(-1, 1))
    sk_s = time.perf_counter() - t0
    xd = x.astype(np.float64)
    i_ours = inertia_1d(xd, final)
    i_sk = inertia_1d(xd, km.cluster_centers_.ravel())
    log("moptd   %.1f ms median (sort %.1f, init %.1f, fit %.1f; runs %s)" % (
        ms, ours[0]["sort_ms"], ours[0]["init_ms"], ours[0]["fit_ms"],
        ", ".join("%.1f" % o["total_ms"] for o in ours)))
    log("sklearn %.2f s (%d iterations)" % (sk_s, km.n_iter_))
    log("speed ratio sklearn/moptd: %.0fx   goal >= 100x: %s" % (sk_s * 1000 / ms,
                                                               "MET" if sk_s * 1000 / ms >= 100 else "NOT MET"))
    log("inertia moptd %.6g, sklearn %.6g, ratio %.4f   goal <= 1.0: %s" % (
        i_ours, i_sk, i_ours / i_sk, "MET" if i_ours <= i_sk * (1 + 1e-9) else "NOT MET"))


def main():
    work = tempfile.mkdtemp(prefix="moptd-bench-core.")
    try:
        what = sys.argv[1] if len(sys.argv) > 1 else "all"
        if what in ("all", "kmeans"):
            bench_kmeans(work)
        if what in ("all", "optimize"):
            bench_optimize(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
