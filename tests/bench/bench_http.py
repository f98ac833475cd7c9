#!/usr/bin/python3
"""moptd HTTP benchmarks (issue: daemon). Run by tests/bench/run.sh; needs wrk, nginx, curl.

Each figure is printed with its ratio to a baseline measured in the same run on this machine:
  1. GET /v1/jobs/{id} at 100 connections (wrk, median of 3): requests/s and p99, against nginx
     serving the same JSON bytes as a static file (goal: >= 15,000 req/s, p99 < 10 ms).
  2. 10,000 concurrent keep-alive connections for 30 s: no socket errors, no non-2xx.
  3. 1 GiB model download: throughput as a ratio to nginx serving the same blob (goal >= 0.8).
  4. 1 GiB model upload: MB/s (ratio to writing the same bytes with cp) and daemon RSS growth
     (goal < 32 MiB).
The machine is shared and noisy: compare ratios, not absolute figures.
"""
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, os.environ.get("MOPT_BUILD", "build"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
WRK_SECONDS = int(os.environ.get("BENCH_WRK_SECONDS", "10"))
HOLD_SECONDS = int(os.environ.get("BENCH_HOLD_SECONDS", "30"))
BIG_MIB = int(os.environ.get("BENCH_BIG_MIB", "1024"))


def log(msg):
    print(msg, flush=True)


class Daemon:
    """A real build/moptd on 127.0.0.1 with a fresh data dir."""

    def __init__(self, workdir, *extra):
        self.data = tempfile.mkdtemp(prefix="moptd-bench-data.", dir=workdir)
        self.errlog = open(os.path.join(workdir, "moptd.stderr"), "ab")
        self.proc = subprocess.Popen(
            [os.path.join(BUILD, "moptd"), "--listen", "127.0.0.1:0", "--data", self.data,
             "--log-level", "warn", *extra],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        self.port = None
        deadline = time.time() + 20
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.errlog.write(line)
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "listening":
                self.port = int(ev["addr"].rsplit(":", 1)[1])
                break
        if self.port is None:
            raise SystemExit("moptd did not report a listening address")
        threading.Thread(target=self._drain, daemon=True).start()
        self.base = "http://127.0.0.1:%d" % self.port

    def _drain(self):
        for line in self.proc.stderr:
            self.errlog.write(line)

    def rss_kib(self, field="VmRSS"):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.data, ignore_errors=True)


class Nginx:
    """Debian's nginx on loopback serving one directory (sendfile on), the baseline."""

    def __init__(self, workdir, root):
        self.prefix = tempfile.mkdtemp(prefix="nginx.", dir=workdir)
        self.port = free_port()
        conf = os.path.join(self.prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write("""user root; worker_processes 2; daemon off; pid %(p)s/nginx.pid;
error_log %(p)s/error.log; events { worker_connections 20000; }
http { access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000000;
  default_type application/octet-stream;
  client_body_temp_path %(p)s/body; proxy_temp_path %(p)s/proxy; fastcgi_temp_path %(p)s/fcgi;
  uwsgi_temp_path %(p)s/uwsgi; scgi_temp_path %(p)s/scgi;
  server { listen 127.0.0.1:%(port)d; root %(root)s; location / { } } }
""" % {"p": self.prefix, "port": self.port, "root": root})
        self.proc = subprocess.Popen(["nginx", "-c", conf, "-p", self.prefix],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        self.base = "http://127.0.0.1:%d" % self.port

    def stop(self):
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10):
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("port %d did not open" % port)


def curl(*args, check=True):
    r = subprocess.run(["curl", "-sS", *args], capture_output=True)
    if check and r.returncode != 0:
        raise SystemExit("curl %s failed: %s" % (args, r.stderr.decode()))
    return r.stdout


def parse_wrk(out):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    p99 = float(m.group(1)) * scale
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = sum(int(x) for x in errs.groups()) if errs else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, p99, errors, int(non2xx.group(1)) if non2xx else 0


def wrk(url, conns, seconds, threads=2, timeout="10s"):
    out = subprocess.run(["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % seconds,
                          "--timeout", timeout, "--latency", url],
                         capture_output=True, text=True).stdout
    return parse_wrk(out), out


def make_small_model(path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((64, 128)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((128, 10)).astype(np.float32), "w2")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])], "bench_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], [w1, w2])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, path)


def make_big_model(path, mib):
    """A valid ONNX model of about `mib` MiB: a chain of 4096x4096 float32 MatMuls (64 MiB each)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper
    n = max(1, mib // 64)
    rng = np.random.default_rng(1)
    inits, nodes = [], []
    prev = "x"
    for i in range(n):
        data = (rng.standard_normal((4096, 4096), dtype=np.float32) * 0.01).tobytes()
        inits.append(helper.make_tensor("w%d" % i, TensorProto.FLOAT, [4096, 4096], data, raw=True))
        nodes.append(helper.make_node("MatMul", [prev, "w%d" % i], ["h%d" % i]))
        prev = "h%d" % i
    g = helper.make_graph(nodes, "bench_big",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4096])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 4096])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    with open(path, "wb") as f:
        f.write(m.SerializeToString())


def timed(cmd):
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def bench_job_get(work):
    log("\n## GET /v1/jobs/{id}, 100 connections, %d s x %d runs (baseline: nginx, same bytes)"
        % (WRK_SECONDS, RUNS))
    d = Daemon(work, "--workers", "2")
    try:
        model = os.path.join(work, "small.onnx")
        make_small_model(model)
        up = json.loads(curl("-X", "POST", "--data-binary", "@" + model,
                             d.base + "/v1/models?name=bench&version=1"))
        job = json.loads(curl("-X", "POST", "-H", "Content-Type: application/json", "-d",
                              json.dumps({"model": up["id"], "passes": [
                                  {"op": "quantize", "dtype": "int8",
                                   "granularity": "per_channel"}]}), d.base + "/v1/jobs"))
        url = d.base + "/v1/jobs/" + job["id"]
        for _ in range(100):
            j = json.loads(curl(url + "?wait=5"))
            if j["state"] in ("succeeded", "failed", "cancelled"):
                break
        log("job %s state %s" % (job["id"], j["state"]))
        body = curl(url)
        static_dir = tempfile.mkdtemp(prefix="static.", dir=work)
        with open(os.path.join(static_dir, "job.json"), "wb") as f:
            f.write(body)
        ngx = Nginx(work, static_dir)
        try:
            ours, base = [], []
            for _ in range(RUNS):
                ours.append(wrk(url, 100, WRK_SECONDS)[0])
                base.append(wrk(ngx.base + "/job.json", 100, WRK_SECONDS)[0])
        finally:
            ngx.stop()
        rps = statistics.median(r[0] for r in ours)
        p99 = statistics.median(r[1] for r in ours)
        nrps = statistics.median(r[0] for r in base)
        np99 = statistics.median(r[1] for r in base)
        errors = sum(r[2] + r[3] for r in ours)
        log("moptd  GET /v1/jobs/{id}: %.0f req/s (runs: %s), p99 %.2f ms, errors %d"
            % (rps, ", ".join("%.0f" % r[0] for r in ours), p99, errors))
        log("nginx  static same bytes: %.0f req/s, p99 %.2f ms" % (nrps, np99))
        log("ratio  moptd/nginx req/s: %.2f   goal: >= 15000 req/s and p99 < 10 ms: %s"
            % (rps / nrps, "MET" if rps >= 15000 and p99 < 10 else "NOT MET"))

        log("\n## 10,000 concurrent keep-alive connections for %d s" % HOLD_SECONDS)
        fd_before = len(os.listdir("/proc/%d/fd" % d.proc.pid))
        peak = [0]

        def sample():
            t_end = time.time() + HOLD_SECONDS
            while time.time() < t_end:
                try:
                    peak[0] = max(peak[0], len(os.listdir("/proc/%d/fd" % d.proc.pid)))
                except OSError:
                    pass
                time.sleep(1)
        t = threading.Thread(target=sample)
        t.start()
        (rps10k, p99_10k, err10k, non2xx10k), out = wrk(url, 10000, HOLD_SECONDS, timeout="30s")
        t.join()
        log("moptd held up to %d open sockets (before: %d fds); %.0f req/s, p99 %.1f ms, "
            "socket errors %d, non-2xx %d: %s" % (peak[0] - fd_before, fd_before, rps10k, p99_10k,
                                                err10k, non2xx10k,
                                                "OK" if err10k == 0 and non2xx10k == 0 and
                                                peak[0] - fd_before >= 9900 else "NOT MET"))
        if err10k or non2xx10k:
            log(out)
        health = curl(d.base + "/healthz")
        log("after: /healthz -> %s" % health.decode().strip())
    finally:
        d.stop()


def bench_big_transfer(work):
    log("\n## %d MiB model upload and download (baselines: cp, nginx)" % BIG_MIB)
    big = os.path.join(work, "big.onnx")
    make_big_model(big, BIG_MIB)
    size = os.path.getsize(big)
    cp_times = []
    for _ in range(RUNS):
        dst = os.path.join(work, "cp.copy")
        cp_times.append(timed(["sh", "-c", "cp %s %s && sync %s" % (big, dst, dst)]))
        os.unlink(dst)
    d = Daemon(work, "--workers", "1")
    try:
        rss0 = d.rss_kib("VmRSS")
        hwm0 = d.rss_kib("VmHWM")
        peak = [rss0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], d.rss_kib("VmRSS"))
                time.sleep(0.02)
        th = threading.Thread(target=sample)
        th.start()
        t0 = time.perf_counter()
        resp = curl("-X", "POST", "-H", "Content-Type: application/octet-stream",
                    "-T", big, d.base + "/v1/models?name=big&version=1")
        up_s = time.perf_counter() - t0
        stop.set()
        th.join()
        hwm1 = d.rss_kib("VmHWM")
        model = json.loads(resp)
        if "id" not in model:
            raise SystemExit("upload failed: %s" % resp[:500])
        growth_mib = (max(hwm1, peak[0]) - max(rss0, hwm0 if hwm0 <= rss0 else rss0)) / 1024.0
        cp_s = statistics.median(cp_times)
        log("upload %.0f MiB: %.2f s = %.0f MB/s; cp+sync of the same file: %.0f MB/s; ratio %.2f"
            % (size / 2**20, up_s, size / up_s / 1e6, size / cp_s / 1e6, cp_s / up_s))
        log("daemon RSS: before %.1f MiB, peak %.1f MiB, growth %.1f MiB   goal < 32 MiB: %s"
            % (rss0 / 1024, max(hwm1, peak[0]) / 1024, growth_mib,
               "MET" if growth_mib < 32 else "NOT MET"))

        hexid = model["id"].split(":", 1)[1]
        blob_dir = os.path.join(d.data, "blobs", hexid[:2])
        ngx = Nginx(work, blob_dir)
        try:
            ours, base = [], []
            # one untimed download from each first, so both serve from a warm page cache
            timed(["curl", "-sS", "-o", "/dev/null", d.base + "/v1/models/%s/content" % model["id"]])
            timed(["curl", "-sS", "-o", "/dev/null", ngx.base + "/" + hexid])
            for _ in range(max(RUNS, 5)):
                ours.append(timed(["curl", "-sS", "-o", "/dev/null",
                                   d.base + "/v1/models/%s/content" % model["id"]]))
                base.append(timed(["curl", "-sS", "-o", "/dev/null", ngx.base + "/" + hexid]))
        finally:
            ngx.stop()
        o, b = statistics.median(ours), statistics.median(base)
        runs = "moptd runs %s s; nginx runs %s s" % (", ".join("%.2f" % x for x in ours),
                                                   ", ".join("%.2f" % x for x in base))
        log("download (medians): moptd %.0f MB/s, nginx %.0f MB/s; ratio %.2f   goal >= 0.8: %s\n  (%s)"
            % (size / o / 1e6, size / b / 1e6, b / o, "MET" if b / o >= 0.8 else "NOT MET", runs))
    finally:
        d.stop()
        os.unlink(big)


def main():
    for tool in ("wrk", "nginx", "curl"):
        if not shutil.which(tool):
            raise SystemExit("bench needs %s (make deps-bench installs it)" % tool)
    work = tempfile.mkdtemp(prefix="moptd-bench.")
    try:
        bench_job_get(work)
        bench_big_transfer(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
