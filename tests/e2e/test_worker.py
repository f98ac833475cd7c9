#!/usr/bin/python3
# test_worker.py — the `mopt worker` process contract (contracts.md §1), black-box: JSON-line events, exit codes, rlimits, SIGTERM, nothing written on failure, determinism (TAP).
"""Run by tests/run_all.sh with /usr/bin/python3 (MOPT_BUILD selects the build dir).
Models are made here with python3-onnx (small MLP; a larger one so a SIGTERM lands mid-run).
Trade-off: the cancellation case depends on timing only in one direction (the signal is sent after
the first pass event, and the run it interrupts takes seconds), so it does not flake on a slow
machine; it does take a few seconds.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = os.environ.get("MOPT_ROOT", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MOPT = os.path.join(ROOT, os.environ.get("MOPT_BUILD", "build"), "mopt")
N = 0
FAILED = 0


def skip(name, why):
    global N
    N += 1
    print("ok %d - %s # SKIP %s" % (N, name, why), flush=True)


def ok(cond, name, detail=""):
    global N, FAILED
    N += 1
    print(("ok %d - %s" if cond else "not ok %d - %s") % (N, name))
    if not cond:
        FAILED += 1
        if detail:
            for line in str(detail).splitlines()[:20]:
                print("#   " + line)
    sys.stdout.flush()


def mlp(path, layers, width, seed=0):
    r = np.random.default_rng(seed)
    nodes, inits, x = [], [], "X"
    for i in range(layers):
        w = (r.standard_normal((width, width)) * 0.05).astype(np.float32)
        inits.append(numpy_helper.from_array(w, "W%d" % i))
        nodes.append(helper.make_node("MatMul", [x, "W%d" % i], ["h%d" % i]))
        x = "h%d" % i
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, width])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, width])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    onnx.save(m, path)


def worker(tmp, model, spec, out="out.onnx", rep="rep.json", extra=(), timeout=120):
    sp = os.path.join(tmp, "spec.json")
    with open(sp, "w") as f:
        f.write(spec if isinstance(spec, str) else json.dumps(spec))
    args = [MOPT, "worker", "--input", model, "--spec", sp, "--output", os.path.join(tmp, out),
            "--report", os.path.join(tmp, rep)] + list(extra)
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    return p, [json.loads(l) for l in p.stdout.splitlines() if l.strip()]


def events_ok(p):
    try:
        return all(isinstance(json.loads(l), dict) and "event" in json.loads(l)
                   for l in p.stdout.splitlines())
    except ValueError:
        return False


def main():
    tmp = tempfile.mkdtemp(prefix="mopt-worker-")
    small = os.path.join(tmp, "small.onnx")
    mlp(small, 3, 64)

    # zero passes: load + save through the ONNX loader/saver; our output is a fixed point
    p, ev = worker(tmp, small, {"passes": []}, out="z0.onnx")
    ok(p.returncode == 0 and events_ok(p), "zero passes: exit 0, stdout is JSON lines only", p.stdout + p.stderr)
    z0 = os.path.join(tmp, "z0.onnx")
    ok(ev and ev[-1] == {"event": "done", "output_bytes": os.path.getsize(z0)},
       "zero passes: last event is done with output_bytes = file size", ev[-1:] if ev else p.stderr)
    p, ev = worker(tmp, z0, {"passes": []}, out="z1.onnx")
    ok(open(z0, "rb").read() == open(os.path.join(tmp, "z1.onnx"), "rb").read(),
       "zero passes on our own output is byte-identical")

    # a real pass: progress events in [0, 1], non-decreasing, known steps; report parses
    spec = {"passes": [{"op": "quantize", "dtype": "int8", "granularity": "per_channel"}]}
    p, ev = worker(tmp, small, spec, out="q.onnx", rep="q.json")
    prog = [e for e in ev if e["event"] == "progress"]
    fr = [e["progress"] for e in prog]
    ok(p.returncode == 0 and prog and all(0 <= f <= 1 for f in fr) and fr == sorted(fr),
       "int8: progress events within [0, 1] and non-decreasing", p.stdout)
    ok({e["step"] for e in prog} <= {"load", "quantize", "encode", "save"} and "quantize" in {e["step"] for e in prog},
       "int8: progress steps name the pass", {e["step"] for e in prog})
    rep = json.load(open(os.path.join(tmp, "q.json")))
    ok(len(rep["tensors"]) == 3 and rep["totals"]["file_bytes_after"] == os.path.getsize(os.path.join(tmp, "q.onnx")),
       "int8: report has 3 tensors and file_bytes_after = output size", rep.get("totals"))
    p2, _ = worker(tmp, small, spec, out="q2.onnx", rep="q2.json")
    ok(open(os.path.join(tmp, "q.onnx"), "rb").read() == open(os.path.join(tmp, "q2.onnx"), "rb").read(),
       "int8: two runs give byte-identical output")

    # bad model: exit 1, invalid_model, nothing written
    bad = os.path.join(tmp, "bad.onnx")
    with open(small, "rb") as f, open(bad, "wb") as g:
        g.write(f.read()[:-37])
    p, ev = worker(tmp, bad, {"passes": []}, out="bad_out.onnx")
    ok(p.returncode == 1 and ev and ev[-1]["event"] == "error" and ev[-1]["code"] == "invalid_model"
       and not os.path.exists(os.path.join(tmp, "bad_out.onnx")),
       "truncated model: exit 1, error invalid_model, no output", p.stdout + p.stderr)

    # bad spec: exit 1, invalid_spec with a JSON pointer
    p, ev = worker(tmp, small, {"passes": [{"op": "prune", "sparsity": 1.5}]}, out="bs.onnx")
    ok(p.returncode == 1 and ev and ev[-1]["code"] == "invalid_spec" and ev[-1]["where"].startswith("/passes/0")
       and not os.path.exists(os.path.join(tmp, "bs.onnx")),
       "bad spec: exit 1, invalid_spec, where /passes/0/..., no output", p.stdout)
    p, ev = worker(tmp, small, "{not json", out="bj.onnx")
    ok(p.returncode == 1 and ev and ev[-1]["code"] == "malformed_json", "malformed spec JSON: exit 1, malformed_json", p.stdout)

    # usage: exit 2 with an error event
    p = subprocess.run([MOPT, "worker", "--input", small], capture_output=True, text=True)
    ev = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
    ok(p.returncode == 2 and ev and ev[-1]["event"] == "error", "missing arguments: exit 2 with an error event", p.stdout)
    p = subprocess.run([MOPT, "worker", "--bogus", "1"], capture_output=True, text=True)
    ok(p.returncode == 2, "unknown argument: exit 2")

    # rlimits are applied to itself: 40 MB of address space cannot hold the model + decode
    name = "--max-memory-mb 40 on a 38 MB model: exit 3, out_of_memory, no output"
    big = os.path.join(tmp, "big.onnx")
    mlp(big, 16, 768, seed=1)                         # 16 x 768 x 768 floats = 37.7 MB
    if "asan" in os.environ.get("MOPT_BUILD", ""):
        skip(name, "sanitizer build: RLIMIT_AS cannot be enforced under AddressSanitizer")
    else:
        p, ev = worker(tmp, big, spec, out="lim.onnx", extra=["--max-memory-mb", "40"])
        ok(p.returncode == 3 and ev and ev[-1]["event"] == "error" and ev[-1]["code"] == "out_of_memory"
           and not os.path.exists(os.path.join(tmp, "lim.onnx")), name,
           p.stdout[-400:] + p.stderr[-400:])

    # the CPU limit (soft RLIMIT_CPU → SIGXCPU) stops the run with a timeout error, exit 3
    slow = {"passes": [{"op": "cluster", "clusters": 256, "granularity": "per_channel"}]}
    p, ev = worker(tmp, big, slow, out="cpu.onnx", extra=["--max-cpu-s", "1"])
    ok(p.returncode == 3 and ev and ev[-1].get("code") == "timeout"
       and not os.path.exists(os.path.join(tmp, "cpu.onnx")),
       "--max-cpu-s 1 on a multi-second run: exit 3, error timeout, no output", p.stdout[-400:])

    # SIGTERM mid-run: prompt exit 3, cancelled, no output
    slow = {"passes": [{"op": "cluster", "clusters": 256, "granularity": "per_channel"}]}
    sp = os.path.join(tmp, "slow.json")
    json.dump(slow, open(sp, "w"))
    out = os.path.join(tmp, "term.onnx")
    proc = subprocess.Popen([MOPT, "worker", "--input", big, "--spec", sp, "--output", out,
                             "--report", os.path.join(tmp, "term.json")], stdout=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        e = json.loads(line)
        if e["event"] == "progress" and e["step"] == "cluster":
            break
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    rc = proc.wait(timeout=30)
    dt = time.time() - t0
    last = json.loads((lines + rest.splitlines())[-1])
    ok(rc == 3 and last.get("code") == "cancelled" and not os.path.exists(out) and dt < 10,
       "SIGTERM during clustering: exit 3 within %.1f s, error cancelled, no output" % dt, rest)

    print("1..%d" % N)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
