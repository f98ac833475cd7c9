#!/usr/bin/python3
"""test_nginx_cache.py — deploy/nginx/moptd-cache.conf in front of a real moptd: Debian's nginx
on loopback (the shipped file, with only the upstream port, listen port and cache path
rewritten) caches OTA payloads and model content: the first download is a MISS, the second a
HIT with the same bytes, while authorization still goes to moptd on every request (no token →
401 and a read token → 403 for a cached payload, unknown payload → 404), and ranges are served
right from the cache.
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import check, eq, expect, test  # noqa: E402

ROOT = h.ROOT
ADMIN, DEV, READER = "adm-token-ng", "device-token-ng", "reader-token-ng"
D = h.Daemon(tokens=[("admin", ADMIN, "admin"), ("ota", DEV, "device"), ("read", READER, "r")])
NG = {}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Nginx:
    def __init__(self, upstream_port):
        self.prefix = tempfile.mkdtemp(prefix="moptd-nginx-")
        self.port = free_port()
        src = open(os.path.join(ROOT, "deploy", "nginx", "moptd-cache.conf")).read()
        cache = os.path.join(self.prefix, "cache")
        os.makedirs(cache)
        conf = src.replace("/var/cache/nginx/moptd", cache)
        conf = conf.replace("server 127.0.0.1:8080;", "server 127.0.0.1:%d;" % upstream_port)
        conf = re.sub(r"listen 8081;", "listen 127.0.0.1:%d;" % self.port, conf)
        check(str(upstream_port) in conf and str(self.port) in conf, "config rewritten")
        with open(os.path.join(self.prefix, "moptd-cache.conf"), "w") as f:
            f.write(conf)
        main = os.path.join(self.prefix, "nginx.conf")
        tmp = os.path.join(self.prefix, "tmp")
        os.makedirs(tmp)
        user = "user root;" if os.geteuid() == 0 else ""
        with open(main, "w") as f:
            f.write("""%(user)s worker_processes 1; daemon off; pid %(p)s/nginx.pid;
error_log %(p)s/error.log; events { worker_connections 256; }
http { access_log %(p)s/access.log; default_type application/octet-stream;
  client_body_temp_path %(t)s/body; proxy_temp_path %(t)s/proxy;
  fastcgi_temp_path %(t)s/fcgi; uwsgi_temp_path %(t)s/uwsgi; scgi_temp_path %(t)s/scgi;
  include %(p)s/moptd-cache.conf; }
""" % {"p": self.prefix, "t": tmp, "user": user})
        self.proc = subprocess.Popen(["nginx", "-c", main, "-p", self.prefix],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("nginx exited: %s" % self.proc.stderr.read().decode()[-600:])
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nginx did not listen")

    def get(self, path, token=None, headers=None):
        hd = dict(headers or {})
        if token:
            hd["Authorization"] = "Bearer " + token
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            c.request("GET", path, headers=hd)
            r = c.getresponse()
            return h.Response(r.status, r.reason, r.headers, r.read(), 0)
        finally:
            c.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.prefix, True)


def setup():
    if not shutil.which("nginx"):
        return "nginx is not installed (make deps-bench)"
    D.start()
    a = h.make_mlp(seed=21, sizes=(64, 256, 16))
    b = h.make_mlp(seed=22, sizes=(64, 256, 16))
    NG["A"] = D.upload_ok(a, name="cam")["id"]
    NG["B"] = D.upload_ok(b, name="cam")["id"]
    NG["B_bytes"] = b
    expect(D.request("PUT", "/v1/releases/cam/stable", body={"model": NG["A"]}), 200)
    expect(D.request("PUT", "/v1/releases/cam/stable", body={"model": NG["B"]}), 200)
    m = expect(D.get("/v1/ota/cam/stable/manifest", query={"have": NG["A"]}, token=DEV), 200)
    NG["payloads"] = m.json["signed"]["payloads"]
    NG["nginx"] = Nginx(D.port)
    return None


SKIP = None


@test
def test_payload_second_download_is_cache_hit():
    if SKIP:
        raise h.Skip(SKIP)
    ng = NG["nginx"]
    for p in NG["payloads"]:
        direct = expect(D.get(p["url"], token=DEV), 200).body
        r1 = expect(ng.get(p["url"], token=DEV), 200, "first via nginx")
        eq(r1.header("X-Cache-Status"), "MISS", "first download")
        eq(r1.body, direct, "bytes through nginx")
        r2 = expect(ng.get(p["url"], token=DEV), 200, "second via nginx")
        eq(r2.header("X-Cache-Status"), "HIT", "second download of %s" % p["kind"])
        eq(r2.body, direct, "cached bytes")
        eq(r2.header("ETag"), '"%s"' % p["id"][7:], "ETag kept")
        eq(r2.header("Cache-Control"), "public, max-age=31536000, immutable", "Cache-Control")
        r3 = expect(ng.get(p["url"], token=DEV, headers={"Range": "bytes=3-40"}), 206)
        eq(r3.body, direct[3:41], "range from the cache")


@test
def test_cache_does_not_bypass_auth():
    if SKIP:
        raise h.Skip(SKIP)
    ng = NG["nginx"]
    url = NG["payloads"][0]["url"]
    expect(ng.get(url, token=DEV), 200)       # cached by now
    eq(ng.get(url).status, 401, "no token")
    eq(ng.get(url, token="wrong").status, 401, "unknown token")
    eq(ng.get(url, token=READER).status, 403, "read token lacks ota")
    eq(ng.get("/v1/payloads/sha256:" + "b" * 64, token=DEV).status, 404, "unknown payload")
    # the manifest passes through uncached
    r = expect(ng.get("/v1/ota/cam/stable/manifest?have=" + NG["A"], token=DEV), 200)
    check(r.header("X-Cache-Status") is None, "manifest not cached")


@test
def test_model_content_still_cached():
    if SKIP:
        raise h.Skip(SKIP)
    ng = NG["nginx"]
    url = "/v1/models/%s/content" % NG["B"]
    eq(expect(ng.get(url, token=ADMIN), 200).header("X-Cache-Status"), "MISS", "first")
    r = expect(ng.get(url, token=ADMIN), 200)
    eq(r.header("X-Cache-Status"), "HIT", "second")
    eq(r.body, NG["B_bytes"], "bytes")


if __name__ == "__main__":
    try:
        SKIP = setup()
        h.run()
    finally:
        if "nginx" in NG:
            NG["nginx"].stop()
