#!/usr/bin/python3
"""test_http.py — the daemon as an HTTP/1.1 server and a process: keep-alive across many
requests (errors included), per-IP connection limit, idle timeout, many concurrent clients,
in-flight requests finished on SIGTERM, and configuration (flags, env MOPTD_*, config file,
--help, out-of-bounds values, refusing a data dir whose schema is newer)."""
import http.client
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (MOPT, MOPTD, Daemon, check, eq, expect, lazy, make_mlp, run, sha256_hex,
                     test)

D = lazy(lambda: Daemon(name="moptd-http").start())


def spawn(argv, env_extra=None, timeout=10):
    """Runs moptd with argv/env; returns (proc, port or None, stderr lines so far)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOPTD_")}
    env.update(env_extra or {})
    p = subprocess.Popen([MOPTD] + argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    lines, port = [], None
    deadline = time.time() + timeout
    while time.time() < deadline:
        raw = p.stderr.readline()
        if not raw:
            break
        lines.append(raw.decode("utf-8", "replace"))
        try:
            j = json.loads(raw)
        except ValueError:
            continue
        if isinstance(j, dict) and j.get("event") == "listening":
            port = int(str(j["addr"]).rsplit(":", 1)[1])
            break
    if port is not None:
        threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    return p, port, lines


def stop(p):
    if p.poll() is None:
        p.terminate()
        try:
            return p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise AssertionError("moptd did not exit on SIGTERM")
    return p.returncode


def get_json(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


@test
def test_keep_alive_across_many_requests_and_errors():
    d = D()
    data = make_mlp(seed=1)
    up = d.upload_ok(data)
    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    sock_ids = set()
    for i in range(60):
        kind = i % 6
        if kind == 0:
            c.request("GET", "/v1/models")
        elif kind == 1:
            c.request("GET", "/v1/models/sha256:" + "0" * 64)       # 404
        elif kind == 2:
            c.request("GET", up["content_url"], headers={"Range": "bytes=0-9"})
        elif kind == 3:
            c.request("GET", up["content_url"], headers={"If-None-Match": '"%s"' % sha256_hex(data)})
        elif kind == 4:
            c.request("POST", "/v1/jobs", body=b'{"passes": 7}', headers={"Content-Type": "application/json"})
        else:
            c.request("HEAD", up["content_url"])
        r = c.getresponse()
        body = r.read()
        want = {0: 200, 1: 404, 2: 206, 3: 304, 4: 400, 5: 200}[kind]
        eq(r.status, want, "request %d on the kept-alive connection (%r)" % (i, body[:100]))
        sock_ids.add(id(c.sock))
        check(c.sock is not None, "server closed the connection after request %d (%d)" % (i, r.status))
    eq(len(sock_ids), 1, "connections used for 60 requests")
    c.close()


@test
def test_many_concurrent_clients():
    d = D()
    mid = d.upload_ok(make_mlp(seed=2))["id"]
    errors, counts = [], [0]
    lock = threading.Lock()

    def client():
        try:
            c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=20)
            for _ in range(40):
                c.request("GET", "/v1/models/" + mid)
                r = c.getresponse()
                r.read()
                if r.status != 200:
                    raise AssertionError("status %d" % r.status)
                with lock:
                    counts[0] += 1
            c.close()
        except Exception as e:
            with lock:
                errors.append(repr(e))
    ths = [threading.Thread(target=client) for _ in range(50)]
    t0 = time.time()
    for t in ths:
        t.start()
    for t in ths:
        t.join(60)
    eq(errors[:5], [], "client errors")
    eq(counts[0], 2000, "answered requests")
    print("# 2000 GETs from 50 keep-alive clients in %.2fs" % (time.time() - t0))


def read_head(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        b = s.recv(4096)
        if not b:
            break
        buf += b
    return buf


@test
def test_expect_100_continue():
    # curl sends "Expect: 100-continue" for bodies over 1 MiB: the server must say 100 (or
    # refuse with the final status) before the body is sent
    d = Daemon(args=["--max-model-bytes", "1000000"], tokens=[("admin", "tok-x", "a")], name="moptd-expect").start()
    try:
        data = make_mlp(seed=5, sizes=(128, 128, 8))
        head = ("POST /v1/models?name=cont HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-x\r\n"
                "Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(data)).encode()
        s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        s.sendall(head)
        got = read_head(s)
        check(got.startswith(b"HTTP/1.1 100"), "no 100 Continue before the body: %r" % got[:100])
        s.sendall(data)
        rest = got.split(b"\r\n\r\n", 1)[1] + read_head(s)
        check(rest.startswith(b"HTTP/1.1 201"), "after the body: %r" % rest[:100])
        s.close()
        for what, h in (("over the limit", head.replace(b"Content-Length: %d" % len(data), b"Content-Length: 5000000")),
                        ("bad token", head.replace(b"tok-x", b"tok-y"))):
            s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
            s.sendall(h)
            got = read_head(s)
            check(re.match(rb"HTTP/1\.1 (413|401)", got), "%s with Expect: got %r (want the final refusal, no 100)"
                  % (what, got[:100]))
            s.close()
        if shutil.which("curl"):
            path = os.path.join(d.tmp, "m.onnx")
            big = make_mlp(seed=6, sizes=(600, 500, 8))   # > 1 MiB: curl adds Expect
            with open(path, "wb") as f:
                f.write(big)
            p = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Authorization: Bearer tok-x",
                                "--data-binary", "@" + path, "-H", "Content-Type: application/octet-stream",
                                "http://127.0.0.1:%d/v1/models?name=curl" % d.port], capture_output=True, timeout=30)
            eq(p.stdout, b"413", "curl upload of %d bytes over a 1000000 limit (%r)" % (len(big), p.stderr))
            small = make_mlp(seed=7, sizes=(300, 400, 8))
            with open(path, "wb") as f:
                f.write(small)
            check(len(small) < 1000000, "model too big")
            p = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Authorization: Bearer tok-x",
                                "--data-binary", "@" + path, "http://127.0.0.1:%d/v1/models?name=curl" % d.port],
                               capture_output=True, timeout=30)
            eq(p.stdout, b"201", "curl upload (%r)" % p.stderr)
    finally:
        d.stop()


@test
def test_per_ip_connection_limit():
    d = Daemon(args=["--per-ip-limit", "4"], name="moptd-perip").start()
    try:
        socks = []
        # four kept-alive connections, each proven accepted by an answer; the daemon's own
        # readiness probe may still hold a slot for a moment, so a refused attempt is retried
        deadline = time.time() + 10
        while len(socks) < 4:
            c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=5)
            try:
                c.request("GET", "/healthz")
                r = c.getresponse()
                r.read()
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
                c.close()
                check(time.time() < deadline, "connection %d of 4 refused for 10 s" % (len(socks) + 1))
                time.sleep(0.2)
                continue
            eq(r.status, 200, "connection %d of 4" % (len(socks) + 1))
            socks.append(c)
        # a fifth connection from the same address is refused or closed without an answer
        s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            got = s.recv(100)
        except (ConnectionResetError, BrokenPipeError):
            got = b""
        check(not got.startswith(b"HTTP/1.1 200"), "5th connection with --per-ip-limit 4 was served: %r" % got)
        s.close()
        for x in socks:
            x.close()
        # the slots come back once the daemon has seen the closes; on a loaded machine that
        # can take longer than a moment, so poll (a refused attempt is reset, not answered)
        deadline, r = time.time() + 10, None
        while time.time() < deadline:
            try:
                r = d.get("/healthz")
                break
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
                time.sleep(0.2)
        check(r is not None, "no connection accepted within 10 s after the four closed")
        expect(r, 200, "after the connections closed")
    finally:
        d.stop()


@test
def test_idle_connection_timeout():
    d = Daemon(args=["--conn-timeout-s", "1"], name="moptd-idle").start()
    try:
        s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        t0 = time.time()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")   # headers never finished
        got = b""
        while True:
            b = s.recv(1000)
            if not b:
                break
            got += b
        took = time.time() - t0
        check(took < 4, "idle half-sent request held %.1fs with --conn-timeout-s 1" % took)
        s.close()
        expect(d.get("/healthz"), 200)
    finally:
        d.stop()


@test
def test_sigterm_finishes_in_flight_upload():
    d = Daemon(name="moptd-drain").start()
    data = make_mlp(seed=3, sizes=(512, 512, 8))
    res = {}

    def slow_upload():
        s = socket.create_connection(("127.0.0.1", d.port), timeout=20)
        s.sendall(("POST /v1/models?name=drain HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                   "Connection: close\r\n\r\n" % len(data)).encode())
        step = len(data) // 10
        for i in range(10):
            s.sendall(data[i * step:(i + 1) * step if i < 9 else len(data)])
            time.sleep(0.15)
        out = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
        res["resp"] = out
    th = threading.Thread(target=slow_upload)
    th.start()
    time.sleep(0.5)
    d.proc.terminate()     # SIGTERM while the body is still arriving
    th.join(30)
    rc = d.proc.wait(30)
    check(res.get("resp", b"").startswith(b"HTTP/1.1 201"), "in-flight upload answered %r" % res.get("resp", b"")[:200])
    eq(rc, 0, "exit status")
    d.start()
    r = expect(d.get("/v1/models/sha256:" + sha256_hex(data) + "/content"), 200, "drained upload kept")
    check(r.body == data, "drained upload content")
    d.stop()


@test
def test_config_from_env_and_file_and_flags():
    tmp = tempfile.mkdtemp(prefix="moptd-cfg-")
    # env only
    p, port, lines = spawn([], {"MOPTD_LISTEN": "127.0.0.1:0", "MOPTD_DATA": os.path.join(tmp, "d1"),
                                "MOPTD_WORKERS": "3", "MOPTD_MOPT": MOPT})
    check(port, "no listening line with env config: %r" % lines[-5:])
    st, body = get_json(port, "/metrics")
    check(b"moptd_workers_limit 3" in body or b" 3\n" in body, "MOPTD_WORKERS=3 not applied")
    eq(stop(p), 0, "exit status")
    check(os.path.isdir(os.path.join(tmp, "d1")), "MOPTD_DATA dir not created")
    # config file, overridden by env, overridden by a flag
    cfg = os.path.join(tmp, "moptd.conf")
    with open(cfg, "w") as f:
        f.write("# test config\nlisten = 127.0.0.1:0\ndata = %s\nworkers = 5\nmax_queued_jobs = 7\n"
                % os.path.join(tmp, "d2"))
    p, port, lines = spawn(["--config", cfg, "--workers", "2"], {"MOPTD_MAX_QUEUED_JOBS": "9", "MOPTD_MOPT": MOPT})
    check(port, "no listening line with a config file: %r" % lines[-5:])
    st, body = get_json(port, "/metrics")
    check(b"moptd_workers_limit 2" in body, "flag --workers 2 did not win over the config file")
    eq(stop(p), 0, "exit status")
    check(os.path.isdir(os.path.join(tmp, "d2")), "data dir from the config file not created")


@test
def test_help_and_bad_options():
    p = subprocess.run([MOPTD, "--help"], capture_output=True, timeout=10)
    eq(p.returncode, 0, "--help exit status")
    text = (p.stdout + p.stderr).decode()
    for opt in ("--listen", "--data", "--workers", "--tokens", "MOPTD_LISTEN", "MOPTD_DATA"):
        check(opt in text, "--help lacks %s" % opt)
    tmp = tempfile.mkdtemp(prefix="moptd-cfg-")
    for argv in (["--workers", "100000"], ["--workers", "abc"], ["--no-such-flag", "1"],
                 ["--max-model-bytes", "12"], ["--listen", "nonsense"]):
        p = subprocess.run([MOPTD, "--listen", "127.0.0.1:0", "--data", os.path.join(tmp, "d")] + argv,
                           capture_output=True, timeout=10)
        check(p.returncode != 0, "%r was accepted" % argv)
        check(len(p.stderr.strip()) > 10, "%r refused without a message" % argv)


@test
def test_refuses_a_data_dir_with_a_newer_schema():
    d = Daemon(name="moptd-schema").start()
    d.upload_ok(make_mlp(seed=4))
    eq(d.stop(), 0, "exit status")
    db = os.path.join(d.data, "moptd.db")
    check(os.path.isfile(db), "no moptd.db in the data dir")
    con = sqlite3.connect(db)
    v = con.execute("PRAGMA user_version").fetchone()[0]
    check(v >= 1, "schema version %d" % v)
    con.execute("PRAGMA user_version = %d" % (v + 100))
    con.commit()
    con.close()
    p = subprocess.run(d.cmd(), capture_output=True, timeout=15)
    check(p.returncode != 0, "moptd started on a data dir with schema version %d" % (v + 100))
    check(b"schema" in p.stderr.lower() or b"version" in p.stderr.lower(),
          "refusal does not mention the schema: %r" % p.stderr[-300:])


if __name__ == "__main__":
    run()
