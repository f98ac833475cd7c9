"""harness.py — black-box test harness for moptd: a real daemon, real HTTP, stdlib only.

Starts `$MOPT_BUILD/moptd --listen 127.0.0.1:0 --data <fresh temp dir> ...`, reads the chosen
port from the JSON "listening" log line on stderr (contracts.md §6), keeps draining stderr into
a log file (and keeps the lines for log assertions), waits for /healthz, and gives request,
upload, job-wait and raw-socket helpers plus a tiny TAP runner. Test models are built here with
onnx.helper (/usr/bin/python3 has python3-onnx), deterministically from a seed.

Trade-off: one process per test file and a fresh data dir per daemon, so files are independent
and can run in any order, at the cost of a daemon start per file (well under a second).
"""
import base64
import hashlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("MOPT_BUILD", "build")
if not os.path.isabs(BUILD):
    BUILD = os.path.join(ROOT, BUILD)
MOPTD = os.path.join(BUILD, "moptd")
MOPT = os.path.join(BUILD, "mopt")


def _pin_binaries():
    """Copies moptd and mopt once per test file, so a concurrent rebuild of $MOPT_BUILD cannot
    swap or remove them between two daemon starts of one file (MOPT_NO_PIN=1 disables)."""
    global MOPTD, MOPT
    if os.environ.get("MOPT_NO_PIN"):
        return
    import atexit
    import shutil
    pin = tempfile.mkdtemp(prefix="moptd-http-bin-")
    atexit.register(shutil.rmtree, pin, True)
    def settled(src, wait):
        """Waits (up to wait s) for src to exist and stop changing (a link in progress)."""
        deadline = time.time() + wait
        last = None
        while time.time() < deadline:
            try:
                st = os.stat(src)
                cur = (st.st_size, st.st_mtime_ns)
            except OSError:
                cur = None
            if cur is not None and cur == last and os.access(src, os.X_OK):
                return True
            last = cur
            time.sleep(0.5)
        return os.access(src, os.X_OK)
    for name in ("moptd", "mopt"):
        src = os.path.join(BUILD, name)
        if settled(src, 120 if name == "moptd" else 30):
            dst = os.path.join(pin, name)
            shutil.copy2(src, dst)
            if name == "moptd":
                MOPTD = dst
            else:
                MOPT = dst


_pin_binaries()
PY = "/usr/bin/python3"
TERMINAL = ("succeeded", "failed", "cancelled")
DEFAULT = object()   # "use the daemon's default token"

# ----------------------------------------------------------------- assertions ----


class Skip(Exception):
    """Raised by a test that cannot run here (reported as "ok N - name # SKIP why")."""


def check(cond, msg="check failed"):
    if not cond:
        raise AssertionError(msg)


def eq(got, want, what="value"):
    if got != want:
        raise AssertionError("%s: got %r, want %r" % (what, got, want))


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


# ------------------------------------------------------------------- responses ----


class Response:
    def __init__(self, status, reason, headers, body, elapsed):
        self.status = status
        self.reason = reason
        self.headers = headers          # http.client.HTTPMessage (case-insensitive .get)
        self.body = body
        self.elapsed = elapsed

    def header(self, name, default=None):
        return self.headers.get(name, default)

    @property
    def json(self):
        try:
            return json.loads(self.body.decode("utf-8"))
        except Exception as e:
            raise AssertionError("response %d is not JSON (%s): %r" % (self.status, e, self.body[:300]))

    def __repr__(self):
        return "<HTTP %d %r>" % (self.status, self.body[:300])


def expect(r, status, what=""):
    """Asserts r.status (an int or a tuple of ints); returns r."""
    ok = r.status in status if isinstance(status, (tuple, list, set)) else r.status == status
    if not ok:
        raise AssertionError("%sstatus %d, want %s; body: %r" % (what + ": " if what else "", r.status,
                                                                status, r.body[:600]))
    return r


def expect_error(r, status, code=None, where=None, what=""):
    """Checks the one error shape {"error":{"code","message","detail":{...}}}; returns error obj."""
    expect(r, status, what)
    ct = r.header("Content-Type", "")
    check("json" in ct, "%s: error Content-Type %r is not JSON" % (what, ct))
    j = r.json
    check(isinstance(j, dict) and isinstance(j.get("error"), dict),
          "%s: error body lacks the {\"error\":{...}} shape: %r" % (what, j))
    e = j["error"]
    for k in ("code", "message", "detail"):
        check(k in e, "%s: error lacks %r: %r" % (what, k, e))
    check(isinstance(e["code"], str) and e["code"], "%s: error.code empty" % what)
    check(isinstance(e["message"], str) and len(e["message"]) >= 3, "%s: error.message useless: %r" % (what, e))
    check(isinstance(e["detail"], dict), "%s: error.detail not an object: %r" % (what, e))
    if code is not None:
        codes = code if isinstance(code, (tuple, list)) else (code,)
        check(e["code"] in codes, "%s: error.code %r, want %r (%r)" % (what, e["code"], code, e))
    if where is not None:
        eq(e["detail"].get("where"), where, "%s: error.detail.where (%r)" % (what, e))
    return e


# ------------------------------------------------------------------- the daemon ----

_daemons = []


def tokens_file(dirpath, entries):
    """entries: [(scopes "read,write", token, label)]. Writes a tokens file, returns its path."""
    path = os.path.join(dirpath, "tokens")
    with open(path, "w") as f:
        f.write("# moptd test tokens\n")
        for scopes, tok, label in entries:
            f.write("%s %s %s\n" % (scopes, sha256_hex(tok.encode()), label))
    os.chmod(path, 0o600)
    return path


class Daemon:
    """One moptd process on 127.0.0.1 with a random port and its own data dir.

    tokens: None (no auth) or a list of (scopes, token, label); the first entry with admin
    (or the first entry) becomes the default token of requests."""

    def __init__(self, tokens=None, workers=None, args=(), mopt=None, data=None, name="moptd"):
        self.tmp = tempfile.mkdtemp(prefix="moptd-http-")
        self.data = data or os.path.join(self.tmp, "data")
        os.makedirs(self.data, exist_ok=True)
        self.name = name
        self.token = None
        self.tokens_path = None
        if tokens:
            self.tokens_path = tokens_file(self.tmp, tokens)
            admin = [t for t in tokens if "admin" in t[0].split(",")]
            self.token = (admin or tokens)[0][1]
        self.workers = workers
        self.args = list(args)
        self.mopt = mopt or MOPT
        self.proc = None
        self.port = None
        self.lines = []          # every stderr line (str), all runs
        self.jlines = []         # the JSON-decoded ones
        self.lock = threading.Lock()
        self.log_path = os.path.join(self.tmp, "moptd.log")
        self.runs = 0
        _daemons.append(self)

    # ---- process control ----
    def cmd(self):
        c = [MOPTD, "--listen", "127.0.0.1:0", "--data", self.data, "--mopt", self.mopt]
        if self.tokens_path:
            c += ["--tokens", self.tokens_path]
        if self.workers is not None:
            c += ["--workers", str(self.workers)]
        return c + self.args

    def start(self, timeout=20):
        check(os.access(MOPTD, os.X_OK), "daemon binary %s is missing (build it first)" % MOPTD)
        self.runs += 1
        logf = open(self.log_path, "ab")
        logf.write(("==== run %d: %s\n" % (self.runs, " ".join(self.cmd()))).encode())
        logf.flush()
        listening = threading.Event()
        self.port = None
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("MOPTD_"):
                del env[k]
        self.proc = subprocess.Popen(self.cmd(), stdin=subprocess.DEVNULL, stdout=logf,
                                     stderr=subprocess.PIPE, env=env, cwd=self.tmp)

        def drain(proc=self.proc):
            for raw in proc.stderr:
                logf.write(raw)
                logf.flush()
                line = raw.decode("utf-8", "replace").rstrip("\n")
                j = None
                try:
                    j = json.loads(line)
                except ValueError:
                    pass
                with self.lock:
                    self.lines.append(line)
                    if isinstance(j, dict):
                        self.jlines.append(j)
                if isinstance(j, dict) and j.get("event") == "listening" and self.port is None:
                    addr = str(j.get("addr", ""))
                    try:
                        self.port = int(addr.rsplit(":", 1)[1])
                    except (IndexError, ValueError):
                        pass
                    listening.set()
            logf.close()
            listening.set()

        self.drain_thread = threading.Thread(target=drain, daemon=True)
        self.drain_thread.start()
        listening.wait(timeout)
        if self.port is None:
            rc = self.proc.poll()
            self.kill()
            raise AssertionError("moptd did not report a 'listening' line with a port (exit %r); log tail:\n%s"
                                 % (rc, self.tail()))
        deadline = time.time() + timeout
        while True:
            try:
                if self.get("/healthz", token=None).status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                raise AssertionError("moptd did not answer /healthz; log tail:\n" + self.tail())
            time.sleep(0.05)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=20):
        """Sends sig and waits for exit; returns the exit code (negative = killed by signal)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            self.drain_thread.join(5)
            raise AssertionError("moptd did not exit within %ss after signal %d" % (timeout, sig))
        self.drain_thread.join(5)
        return rc

    def kill(self):
        return self.stop(signal.SIGKILL, 10)

    def restart(self, sig=signal.SIGTERM):
        self.stop(sig)
        return self.start()

    def tail(self, n=25):
        with self.lock:
            return "\n".join(self.lines[-n:])

    # ---- HTTP ----
    def request(self, method, path, body=None, headers=None, token=DEFAULT, timeout=60,
                query=None):
        if query:
            path += ("&" if "?" in path else "?") + urllib.parse.urlencode(query)
        h = dict(headers or {})
        tok = self.token if token is DEFAULT else token
        if tok is not None and "Authorization" not in h:
            h["Authorization"] = "Bearer " + tok
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
        if body is not None and not hasattr(body, "read"):
            h.setdefault("Content-Length", str(len(body)))
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        t0 = time.time()
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for k, v in h.items():
                conn.putheader(k, v)
            conn.endheaders()
            if body is not None:
                try:
                    if hasattr(body, "read"):
                        while True:
                            chunk = body.read(256 * 1024)
                            if not chunk:
                                break
                            conn.send(chunk)
                    else:
                        conn.send(body)
                except (BrokenPipeError, ConnectionResetError) as e:
                    # the server may answer early (401, 413, ...) and close before the whole
                    # body is sent: read that answer if it is there
                    try:
                        resp = conn.getresponse()
                        data = resp.read()
                        return Response(resp.status, resp.reason, resp.headers, data, time.time() - t0)
                    except Exception:
                        raise e
            resp = conn.getresponse()
            data = resp.read()
            return Response(resp.status, resp.reason, resp.headers, data, time.time() - t0)
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def upload(self, data, name=None, version=None, headers=None, token=DEFAULT):
        """POST /v1/models with bytes, or with a file path (streamed from disk)."""
        q = {}
        if name is not None:
            q["name"] = name
        if version is not None:
            q["version"] = version
        h = {"Content-Type": "application/octet-stream"}
        h.update(headers or {})
        if isinstance(data, str):
            h["Content-Length"] = str(os.path.getsize(data))
            with open(data, "rb") as f:
                return self.request("POST", "/v1/models", body=f, headers=h, token=token, query=q)
        return self.request("POST", "/v1/models", body=data, headers=h, token=token, query=q)

    def upload_ok(self, data, name=None, version=None):
        r = self.upload(data, name, version)
        expect(r, (200, 201), "upload")
        return r.json

    def submit(self, spec, status=(200, 202)):
        r = self.post("/v1/jobs", spec)
        expect(r, status, "POST /v1/jobs")
        return r.json

    def job(self, jid):
        return expect(self.get("/v1/jobs/" + jid), 200, "GET job").json

    def wait_job(self, jid, states=TERMINAL, timeout=60):
        """Long-polls GET /v1/jobs/{id}?wait= until the state is in states; returns the job."""
        deadline = time.time() + timeout
        etag = None
        while True:
            # first a plain GET (a ?wait without If-None-Match waits for a change from now),
            # then long-polls on the ETag seen
            h = {"If-None-Match": etag} if etag else {}
            t0 = time.time()
            r = self.get("/v1/jobs/%s%s" % (jid, "?wait=5" if etag else ""), headers=h, timeout=30)
            if r.status == 200:
                j = r.json
                etag = r.header("ETag")
                if j.get("state") in states:
                    return j
            elif r.status != 304:
                raise AssertionError("GET job %s: %r" % (jid, r))
            if time.time() > deadline:
                raise AssertionError("job %s not in %s after %ss (last: %s)" % (jid, states, timeout,
                                                                             r.body[:400]))
            if time.time() - t0 < 0.05:
                time.sleep(0.05)   # long-poll did not wait: do not spin

    # ---- raw sockets (for malformed framing) ----
    def raw(self, data, read=True, timeout=10, shutdown=True, one=True):
        """Sends raw bytes; returns what the server sent: one complete response (one=True), or
        everything until it closed or timeout."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        try:
            try:
                s.sendall(data)
                if shutdown:
                    s.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass   # the server answered early and closed; read what it said
            if not read:
                return b""
            out = b""
            while True:
                if one and _complete_response(out):
                    break
                try:
                    b = s.recv(65536)
                except socket.timeout:
                    break
                except ConnectionResetError:
                    break
                if not b:
                    break
                out += b
            return out
        finally:
            s.close()

    def auth_header(self):
        return ("Authorization: Bearer %s\r\n" % self.token) if self.token else ""

    # ---- the data dir ----
    def blob_files(self):
        out = {}
        root = os.path.join(self.data, "blobs")
        for d, _, files in os.walk(root):
            for f in files:
                p = os.path.join(d, f)
                out[os.path.relpath(p, root)] = p
        return out

    def tmp_files(self):
        root = os.path.join(self.data, "tmp")
        out = []
        for d, _, files in os.walk(root):
            out += [os.path.join(d, f) for f in files]
        return out

    def blob_path(self, model_id):
        hexd = model_id.split(":", 1)[1]
        return os.path.join(self.data, "blobs", hexd[:2], hexd)

    def all_models(self, **q):
        return list_all(self, "/v1/models", q)

    def all_jobs(self, **q):
        return list_all(self, "/v1/jobs", q)


def _complete_response(buf):
    """True when buf holds a whole HTTP response (headers + Content-Length body)."""
    i = buf.find(b"\r\n\r\n")
    if i < 0:
        return False
    head = buf[:i].decode("latin-1").lower()
    m = re.search(r"\ncontent-length:\s*(\d+)", head)
    if m:
        return len(buf) - (i + 4) >= int(m.group(1))
    return head.startswith("http/1.1 304") or head.startswith("http/1.1 204")


def list_items(j):
    """Items and next cursor of a list response ({"models"|"jobs"|"items": [...], "next_cursor"})."""
    check(isinstance(j, dict), "list response is not an object: %r" % (j,))
    items = None
    for k in ("models", "jobs", "items", "data"):
        if isinstance(j.get(k), list):
            items = j[k]
            break
    check(items is not None, "list response has no item array: %r" % (list(j.keys()),))
    nxt = None
    for k in ("next_cursor", "cursor", "next"):
        if k in j:
            nxt = j[k]
            break
    return items, (nxt or None)


def list_all(d, path, q, limit=None):
    out, cursor, pages = [], None, 0
    while True:
        qq = dict(q)
        if limit:
            qq["limit"] = limit
        if cursor:
            qq["cursor"] = cursor
        r = expect(d.get(path, query=qq), 200, "GET " + path)
        items, cursor = list_items(r.json)
        out += items
        pages += 1
        check(pages < 10000, "pagination does not end")
        if not cursor:
            return out


def snapshot(d):
    """What is stored: model ids, blob files, tmp files (for 'nothing was stored' checks)."""
    return {"models": sorted(m["id"] for m in d.all_models()),
            "blobs": sorted(d.blob_files()),
            "jobs": sorted(j["id"] for j in d.all_jobs()),
            "tmp": sorted(d.tmp_files())}


_noted = set()


def expect_nothing_stored(d, before, what="", tmp_wait=3.0):
    """Daemon alive and answering, no new models/blobs/jobs, no new file in tmp/ (waits up to
    tmp_wait for the daemon to remove its temp files; files left by an earlier check are that
    check's failure, not this one's)."""
    check(d.alive(), "%s: moptd died; log tail:\n%s" % (what, d.tail()))
    expect(d.get("/healthz", token=None), 200, what + ": /healthz afterwards")
    after = snapshot(d)
    eq(after["models"], before["models"], what + ": models after")
    eq(after["blobs"], before["blobs"], what + ": blob files after")
    eq(after["jobs"], before["jobs"], what + ": jobs after")
    for p in after["tmp"]:
        if p in before.get("tmp", []) and p not in _noted:
            _noted.add(p)
            print("# note: %s still in tmp/ (left by an earlier case)" % p)
    new_tmp = lambda: sorted(set(d.tmp_files()) - set(before.get("tmp", [])))
    deadline = time.time() + tmp_wait
    while new_tmp() and time.time() < deadline:
        time.sleep(0.05)
    eq(new_tmp(), [], what + ": files left in tmp/")


# -------------------------------------------------------------------- models ----

def _onnx():
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper, TensorProto
    return np, onnx, helper, numpy_helper, TensorProto


def make_mlp(seed=0, sizes=(64, 128, 16), opset=13, ir_version=8, constant_bias=True,
             with_if=False, name="mlp"):
    """A valid ONNX MLP: MatMul+Add(+Relu) per layer; the last bias is a Constant node (so the
    weight count covers Constant values); with_if adds an If whose branches hold a Constant
    each (subgraph weights and nodes). Deterministic in seed."""
    np, onnx, helper, numpy_helper, TensorProto = _onnx()
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "input"
    n = len(sizes) - 1
    for i in range(n):
        a, b = sizes[i], sizes[i + 1]
        w = (rng.standard_normal((a, b)) * 0.1).astype(np.float32)
        bias = (rng.standard_normal((b,)) * 0.01).astype(np.float32)
        inits.append(numpy_helper.from_array(w, "fc%d.weight" % i))
        if constant_bias and i == n - 1:
            nodes.append(helper.make_node("Constant", [], ["fc%d.bias" % i],
                                          value=numpy_helper.from_array(bias, "fc%d.bias" % i)))
        else:
            inits.append(numpy_helper.from_array(bias, "fc%d.bias" % i))
        nodes.append(helper.make_node("MatMul", [x, "fc%d.weight" % i], ["mm%d" % i]))
        out = "add%d" % i
        nodes.append(helper.make_node("Add", ["mm%d" % i, "fc%d.bias" % i], [out]))
        if i < n - 1:
            nodes.append(helper.make_node("Relu", [out], ["relu%d" % i]))
            out = "relu%d" % i
        x = out
    outputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, sizes[-1]])]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, sizes[0]])]
    if with_if:
        inputs.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
        branches = []
        for tag, val in (("then", 1.0), ("else", -1.0)):
            c = numpy_helper.from_array(np.full((4, 4), val, np.float32), "%s_c" % tag)
            g = helper.make_graph([helper.make_node("Constant", [], ["%s_out" % tag], value=c)],
                                  "%s_branch" % tag, [],
                                  [helper.make_tensor_value_info("%s_out" % tag, TensorProto.FLOAT, [4, 4])])
            branches.append(g)
        nodes.append(helper.make_node("If", ["cond"], ["if_out"], then_branch=branches[0],
                                      else_branch=branches[1]))
        outputs.append(helper.make_tensor_value_info("if_out", TensorProto.FLOAT, [4, 4]))
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="moptd-tests")
    model.ir_version = ir_version
    onnx.checker.check_model(model)
    return model.SerializeToString()


def model_facts(data):
    """What the daemon's metadata must say, computed with python3-onnx."""
    np, onnx, helper, numpy_helper, TensorProto = _onnx()
    m = onnx.load_from_string(data)
    facts = {"nodes": 0, "weights": 0, "params": 0}

    def count_tensor(t):
        facts["weights"] += 1
        p = 1
        for d in t.dims:
            p *= d
        facts["params"] += p

    def walk(g):
        for t in g.initializer:
            count_tensor(t)
        for nd in g.node:
            facts["nodes"] += 1
            for a in nd.attribute:
                if nd.op_type == "Constant" and a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    count_tensor(a.t)
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                for sg in a.graphs:
                    walk(sg)
    walk(m.graph)
    return {"ir_version": m.ir_version,
            "opsets": {o.domain: o.version for o in m.opset_import},
            "node_count": facts["nodes"], "weight_count": facts["weights"],
            "param_count": facts["params"]}


def write_big_mlp(path=None, rows=2048, cols=4096, seed=7):
    """A model with one rows x cols weight (8M floats by default) written to path (default: a
    cache file under the temp dir, reused across runs since the bytes are deterministic)."""
    if path is None:
        cache = os.path.join(tempfile.gettempdir(), "moptd-http-cache")
        os.makedirs(cache, exist_ok=True)
        path = os.path.join(cache, "mlp-%dx%d-%d.onnx" % (rows, cols, seed))
    if os.path.exists(path):
        return path
    data = make_mlp(seed=seed, sizes=(rows, cols, 16))
    part = "%s.%d.part" % (path, os.getpid())
    with open(part, "wb") as f:
        f.write(data)
    os.rename(part, path)
    return path


def generated_models(script="make_models.py"):
    """Runs tests/models/<script> OUTDIR once (cached by the script's content) and returns
    OUTDIR. Raises Skip when the script is absent."""
    src = os.path.join(ROOT, "tests", "models", script)
    if not os.path.isfile(src):
        raise Skip("tests/models/%s not present" % script)
    key = hashlib.sha256(open(src, "rb").read()).hexdigest()[:16]
    out = os.path.join(tempfile.gettempdir(), "moptd-http-%s-%s" % (script.split(".")[0], key))
    if not os.path.isfile(os.path.join(out, ".done")):
        tmp = out + ".%d" % os.getpid()
        subprocess.run([PY, src, tmp], check=True, stdout=subprocess.DEVNULL, timeout=300)
        open(os.path.join(tmp, ".done"), "w").close()
        try:
            os.rename(tmp, out)
        except OSError:
            pass   # another test file made it first
    return out


STUB_WORKER = r'''#!/usr/bin/python3
# Test double for `mopt worker` (contracts.md §1) with a controlled duration, so daemon-side job
# mechanics (cancel, queue, signals, restarts) can be tested without depending on how fast the
# compression core is. It still really loads and re-saves the model with python3-onnx.
import json, os, signal, sys, time
args = sys.argv[1:]
if not args or args[0] != "worker":
    sys.exit(2)
opt = {}
i = 1
while i < len(args):
    opt[args[i]] = args[i + 1] if i + 1 < len(args) else ""
    i += 2
def out(ev):
    sys.stdout.write(json.dumps(ev) + "\n"); sys.stdout.flush()
def term(sig, frm):
    sys.stderr.write("stub worker: SIGTERM, stopping\n"); sys.exit(3)
signal.signal(signal.SIGTERM, term)
here = os.path.dirname(os.path.abspath(__file__))
seconds = float(open(os.path.join(here, "stub_seconds")).read())
mode = open(os.path.join(here, "stub_mode")).read().strip() if os.path.exists(os.path.join(here, "stub_mode")) else "ok"
ppid = os.getppid()
with open(os.path.join(here, "stub_pids"), "a") as f:
    f.write("%d\n" % os.getpid())
if mode == "crash":          # dies of a signal mid-run
    out({"event": "progress", "progress": 0.1, "step": "stub"}); time.sleep(0.3)
    os.kill(os.getpid(), signal.SIGSEGV)
if mode == "error":          # refuses the input the way the contract says
    out({"event": "error", "code": "invalid_model", "message": "stub refuses this model", "where": "stub/where"})
    sys.exit(1)
if mode == "garbage":        # non-JSON on stdout, exit 0, no output file
    sys.stdout.write("this is not json\n{\"event\": \n" + "x" * 3000000 + "\n"); sys.stdout.flush()
    sys.exit(0)
if mode == "hang":           # ignores SIGTERM and never finishes
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while os.getppid() == ppid:
        time.sleep(0.1)
    sys.exit(3)
t0 = time.time()
while time.time() - t0 < seconds:
    if os.getppid() != ppid:
        sys.exit(3)   # the daemon died: behave like a worker killed with it
    out({"event": "progress", "progress": round((time.time() - t0) / seconds * 0.9, 3), "step": "stub"})
    time.sleep(0.1)
import onnx
m = onnx.load(opt["--input"])
spec = open(opt["--spec"]).read()
m.doc_string = "stub " + spec
tmp = opt["--output"] + ".stub"
onnx.save(m, tmp)
os.rename(tmp, opt["--output"])
with open(opt["--report"], "w") as f:
    json.dump({"stub": True}, f)
out({"event": "done", "output_bytes": os.path.getsize(opt["--output"])})
'''


def stub_worker(dirpath, seconds):
    """Writes the stub worker into dirpath (duration in dirpath/stub_seconds); returns its path."""
    path = os.path.join(dirpath, "stub-mopt")
    with open(path, "w") as f:
        f.write(STUB_WORKER)
    os.chmod(path, 0o755)
    set_stub_seconds(dirpath, seconds)
    return path


def set_stub_mode(dirpath, mode):
    """ok | crash | error | garbage | hang (see STUB_WORKER)."""
    with open(os.path.join(dirpath, "stub_mode"), "w") as f:
        f.write(mode)


def stub_pids(dirpath):
    try:
        return [int(x) for x in open(os.path.join(dirpath, "stub_pids")).read().split()]
    except FileNotFoundError:
        return []


def pid_alive(pid):
    """True when pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def set_stub_seconds(dirpath, seconds):
    with open(os.path.join(dirpath, "stub_seconds"), "w") as f:
        f.write(str(seconds))


# ------------------------------------------------------------------ TAP runner ----

_tests = []


def test(fn):
    """Decorator: registers a test function (run in definition order)."""
    _tests.append(fn)
    return fn


def cleanup():
    """Stops every daemon still running (SIGTERM, so sanitizers get to report at exit)."""
    for d in _daemons:
        if d.alive():
            try:
                d.stop(signal.SIGTERM, 20)
            except Exception:
                try:
                    d.kill()
                except Exception:
                    pass


def remove_temp_dirs(keep_logs):
    """Removes the daemons' temp dirs (models of up to 128 MB pile up otherwise); after a failure
    keeps each dir's log and SQLite index for inspection and drops only blobs and tmp files."""
    import shutil
    for d in _daemons:
        if not keep_logs:
            shutil.rmtree(d.tmp, True)
            continue
        for sub in ("blobs", "tmp"):
            shutil.rmtree(os.path.join(d.data, sub), True)
        for f in os.listdir(d.tmp) if os.path.isdir(d.tmp) else []:
            if f.endswith(".onnx"):
                os.unlink(os.path.join(d.tmp, f))


SANITIZER = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|UndefinedBehaviorSanitizer|"
                       r"Segmentation fault|double free|heap-use-after-free|stack smashing")


def sanitizer_reports():
    """Lines of the daemons' logs that report memory errors, UB or crashes."""
    out = []
    for d in _daemons:
        try:
            text = open(d.log_path, "rb").read().decode("utf-8", "replace")
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("{"):
                try:
                    json.loads(line)
                    continue   # the daemon's own log lines (which may quote a worker's crash)
                except ValueError:
                    pass
            if SANITIZER.search(line):
                out.append("%s: %s" % (d.name, line[:300]))
    return out


def run():
    """Runs the registered tests, prints TAP, exits 1 if any failed. MOPT_TEST=substring runs
    only the tests whose name contains it (for debugging one case)."""
    global _tests
    only = os.environ.get("MOPT_TEST")
    if only:
        _tests = [t for t in _tests if only in t.__name__]
    failed = 0
    t_all = time.time()
    for i, fn in enumerate(_tests, 1):
        name = fn.__name__[5:] if fn.__name__.startswith("test_") else fn.__name__
        t0 = time.time()
        try:
            fn()
            print("ok %d - %s" % (i, name), flush=True)
        except Skip as e:
            print("ok %d - %s # SKIP %s" % (i, name, e), flush=True)
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            failed += 1
            print("not ok %d - %s" % (i, name), flush=True)
            for line in traceback.format_exc().rstrip().splitlines():
                print("# " + line)
            for d in _daemons:
                if d.lines:
                    print("# --- %s log tail (%s):" % (d.name, d.log_path))
                    for line in d.tail(12).splitlines():
                        print("#   " + line[:400])
            sys.stdout.flush()
        print("# %s took %.2fs" % (name, time.time() - t0), flush=True)
    cleanup()
    # one more check over the whole file: no daemon reported a memory error, UB or a crash
    n = len(_tests) + 1
    rep = sanitizer_reports()
    if rep:
        failed += 1
        print("not ok %d - daemon logs free of sanitizer and crash reports" % n)
        for line in rep[:40]:
            print("# " + line)
    else:
        print("ok %d - daemon logs free of sanitizer and crash reports" % n)
    print("1..%d" % n)
    print("# %d tests, %d failed, %.1fs" % (n, failed, time.time() - t_all), flush=True)
    remove_temp_dirs(keep_logs=failed > 0)
    sys.exit(1 if failed else 0)


def lazy(factory):
    """A fixture made on first use (e.g. the shared daemon of a test file)."""
    box = []

    def get():
        if not box:
            box.append(factory())
        elif isinstance(box[0], Daemon) and not box[0].alive():
            box[0].start()
        return box[0]
    return get


def digest_header(data):
    return "sha-256=" + base64.b64encode(hashlib.sha256(data).digest()).decode()


RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
JOB_ID = re.compile(r"^job_[0-9a-f]{26}$")
MODEL_ID = re.compile(r"^sha256:[0-9a-f]{64}$")
