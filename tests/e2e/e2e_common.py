# e2e_common.py — shared helpers for the moptd e2e suites: TAP output, running build/mopt, running models in ONNX Runtime (batched), reading back effective weights.
"""Used by tests/e2e/test_*.py and tests/onnx_node/test_backend.py (run by /usr/bin/python3).

- Tap: numbered "ok N - name" / "not ok N - name" lines, "# ..." diagnostics, exit status.
- mopt(): runs `$MOPT_ROOT/$MOPT_BUILD/mopt optimize IN -o OUT --spec SPEC --report R`.
- ort_batch(): runs many (model, inputs) jobs in ONE node process (tests/e2e/ort_run.js), the
  results come back as numpy arrays (via .npy files in a temp dir).
- with_outputs(): writes a copy of a model that also outputs given intermediate values, so the
  effective weight a consumer sees (after DequantizeLinear / Gather LUT / Cast) can be read back
  from ONNX Runtime, whatever encoding mopt chose.
Trade-off: everything goes through files and subprocesses (simple, robust to crashes of mopt or
ORT) at the cost of some speed; batching ORT keeps the node start-up cost to once per suite.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.environ.get("MOPT_ROOT") or os.path.dirname(os.path.dirname(HERE))
BUILD = os.environ.get("MOPT_BUILD", "build")
MOPT = os.path.join(ROOT, BUILD, "mopt") if not os.path.isabs(BUILD) else os.path.join(BUILD, "mopt")
ORT_RUN = os.path.join(ROOT, "tests", "e2e", "ort_run.js")
MODELS = os.path.join(ROOT, "tests", "models")


class Tap:
    def __init__(self):
        self.n = 0
        self.failed = 0
        self.skipped = 0

    def ok(self, cond, name, diag=None):
        self.n += 1
        if cond:
            print("ok %d - %s" % (self.n, name), flush=True)
        else:
            self.failed += 1
            print("not ok %d - %s" % (self.n, name), flush=True)
            if diag:
                for line in str(diag).splitlines()[:40]:
                    print("#   " + line, flush=True)
        return bool(cond)

    def skip(self, name, why):
        self.n += 1
        self.skipped += 1
        print("ok %d - %s # SKIP %s" % (self.n, name, why), flush=True)

    def note(self, msg):
        for line in str(msg).splitlines():
            print("# " + line, flush=True)

    def done(self):
        print("1..%d" % self.n)
        print("# %d tests, %d failed, %d skipped" % (self.n, self.failed, self.skipped), flush=True)
        return 1 if self.failed else 0


def make_models(outdir, bad=False):
    script = os.path.join(MODELS, "make_bad_models.py" if bad else "make_models.py")
    subprocess.run([sys.executable, script, outdir], check=True)
    with open(os.path.join(outdir, "bad_models.json" if bad else "models.json")) as f:
        return json.load(f)


def mopt_exists():
    return os.path.isfile(MOPT) and os.access(MOPT, os.X_OK)


def pin_mopt(workdir):
    """Copies the mopt binary into workdir and uses the copy from then on, so a rebuild of
    build/mopt while a suite runs (others build in the same tree) cannot pull the file away
    mid-run. Returns False when there is no binary."""
    global MOPT
    if not mopt_exists():
        return False
    dst = os.path.join(workdir, "mopt.pinned")
    for _ in range(10):
        try:
            shutil.copy2(MOPT, dst)
            break
        except OSError:
            time.sleep(1)
    else:
        return False
    MOPT = dst
    return True


def mopt(inp, out, spec, report=None, timeout=300, extra=()):
    """Runs mopt optimize; spec is a dict (written next to out) or a path. Returns
    (returncode, stdout, stderr)."""
    if isinstance(spec, dict):
        sp = out + ".spec.json"
        with open(sp, "w") as f:
            json.dump(spec, f)
        spec = sp
    cmd = [MOPT, "optimize", inp, "-o", out, "--spec", spec]
    if report:
        cmd += ["--report", report]
    cmd += list(extra)
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, "", "timeout after %ds: %s" % (timeout, " ".join(cmd))
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def mopt_cmd(args, timeout=120):
    try:
        p = subprocess.run([MOPT] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, "", "timeout"
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def ort_batch(jobs, workdir, timeout=900):
    """jobs: list of dicts {model, inputs (path or dict), outputs (optional list of names)}.
    Returns a list (same order) of {"outputs": {name: ndarray}, "names": [...]} or
    {"error": {"stage", "message"}}."""
    os.makedirs(workdir, exist_ok=True)
    spec = []
    for i, j in enumerate(jobs):
        d = dict(j)
        d["out_dir"] = os.path.join(workdir, "out_%d" % i)
        spec.append(d)
    jp = os.path.join(workdir, "jobs.json")
    with open(jp, "w") as f:
        json.dump(spec, f)
    p = subprocess.run(["node", ORT_RUN, "--batch", jp], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout, cwd=workdir)
    lines = [ln for ln in p.stdout.decode("utf-8", "replace").splitlines() if ln.startswith("{")]
    res = [{"error": {"stage": "crash", "message": "ort_run.js produced no result (rc %d): %s" %
                      (p.returncode, p.stderr.decode("utf-8", "replace")[-2000:])}} for _ in jobs]
    for ln in lines:
        r = json.loads(ln)
        i = r["job"]
        if "error" in r:
            res[i] = r
            continue
        outs = {}
        for name, o in r["outputs"].items():
            arr = np.load(os.path.join(spec[i]["out_dir"], o["npy"]), allow_pickle=False)
            outs[name] = arr
        res[i] = {"outputs": outs, "names": r["output_names"]}
    return res


def with_outputs(model_path, names, out_path):
    """Copies the model adding graph outputs for the given value names (float32, no shape)."""
    import onnx
    from onnx import TensorProto, helper
    m = onnx.load(model_path, load_external_data=False)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    with open(out_path, "wb") as f:
        f.write(m.SerializeToString())
    return out_path


def consumer_inputs(model_path, node_name, op_type=None, index=1, nth=0):
    """Name of input `index` of the node called node_name in the main graph (or, when no node has
    that name, of the nth node of op_type)."""
    import onnx
    m = onnx.load(model_path, load_external_data=False)
    for n in m.graph.node:
        if n.name == node_name and len(n.input) > index:
            return n.input[index]
    if op_type:
        c = [n for n in m.graph.node if n.op_type == op_type]
        if len(c) > nth and len(c[nth].input) > index:
            return c[nth].input[index]
    return None


def cosine(a, b):
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def rel_err(ref, x):
    ref = np.asarray(ref, dtype=np.float64).ravel()
    x = np.asarray(x, dtype=np.float64).ravel()
    d = np.linalg.norm(ref)
    return float(np.linalg.norm(ref - x) / d) if d else float(np.linalg.norm(x))


def flatten_keys(obj, prefix=""):
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are not descended."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            kk = prefix + "." + k if prefix else k
            if isinstance(v, dict):
                out.update(flatten_keys(v, kk))
            else:
                out[kk] = v
    return out


def find_tensor_entries(report):
    """The per-tensor list in a report: the longest list of dicts that carry a "name" key."""
    best = []

    def walk(o):
        nonlocal best
        if isinstance(o, list):
            if o and all(isinstance(e, dict) and "name" in e for e in o) and len(o) > len(best):
                best = o
            for e in o:
                walk(e)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
    walk(report)
    return best


def tmpdir(prefix):
    return tempfile.mkdtemp(prefix=prefix)


def run_suite(prefix, run):
    """Runs run(tap, work) in a fresh temp dir (kept when MOPT_E2E_KEEP=1, removed otherwise)
    and returns the TAP exit status."""
    tap = Tap()
    work = tmpdir(prefix)
    try:
        run(tap, work)
    finally:
        if os.environ.get("MOPT_E2E_KEEP") == "1":
            tap.note("work dir kept: " + work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return tap.done()
