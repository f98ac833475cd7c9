#!/usr/bin/python3
"""test_auth.py — the auth matrix: every route of openapi.yaml (and of contracts.md §5) x
{no token, bad token, valid token without the scope, right scope, admin}; and the rule that
without a tokens file moptd refuses to listen on anything but loopback."""
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (MOPTD, ROOT, Daemon, check, eq, expect, expect_error, lazy, make_mlp, run,
                     test)

TOKENS = [("admin", "tok-admin-5f1c2d", "ops"),
          ("read", "tok-read-a81b", "dashboard"),
          ("write", "tok-write-77c0", "uploader"),
          ("read,write", "tok-rw-0d3e", "platform"),
          ("ota", "tok-ota-9e12", "ota-server")]
TOK = {t[2]: t[1] for t in TOKENS}
D = lazy(lambda: Daemon(tokens=TOKENS, name="moptd-auth").start())

# contracts.md §5: (method, path) -> scope ("" = public)
CONTRACT = {
    ("GET", "/healthz"): "", ("GET", "/readyz"): "", ("GET", "/metrics"): "read",
    ("POST", "/v1/models"): "write", ("GET", "/v1/models"): "read",
    ("GET", "/v1/models/{id}"): "read", ("GET", "/v1/models/{id}/content"): "read",
    ("DELETE", "/v1/models/{id}"): "write", ("POST", "/v1/jobs"): "write",
    ("GET", "/v1/jobs"): "read", ("GET", "/v1/jobs/{id}"): "read",
    ("POST", "/v1/jobs/{id}/cancel"): "write",
}
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def openapi_routes():
    """{(METHOD, path): scope or None} parsed from the text of openapi.yaml (no YAML library:
    paths are the keys under `paths:`, methods the keys one level deeper; the scope is taken from
    an operation's `security` list or `x-scope` when present)."""
    path = os.path.join(ROOT, "openapi.yaml")
    check(os.path.isfile(path), "openapi.yaml missing at %s" % path)
    routes = {}
    in_paths, cur, pind, mind, op = False, None, None, None, None
    for line in open(path).read().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        ind = len(line) - len(line.lstrip())
        if re.match(r"^paths:\s*$", line):
            in_paths = True
            continue
        if in_paths and ind == 0:
            in_paths = False
        if not in_paths:
            continue
        m = re.match(r"^(\s+)['\"]?(/[^'\"]*?)['\"]?:\s*$", line)
        if m and (pind is None or ind == pind):
            pind, cur, op, mind = ind, m.group(2), None, None
            continue
        m = re.match(r"^\s+(%s):\s*$" % "|".join(METHODS), line)
        if m and cur and ind > pind and (mind is None or ind == mind):
            mind = ind
            op = (m.group(1).upper(), cur)
            routes[op] = None
            continue
        if op and mind is not None and ind > mind:
            m = re.search(r"x-scope:\s*['\"]?(\w+)", line) or \
                re.search(r"^\s+-\s*\w+:\s*\[\s*['\"]?(\w+)['\"]?\s*\]", line)
            if m and routes[op] is None:
                routes[op] = m.group(1)
            elif re.search(r"security:\s*\[\s*\]", line):
                routes[op] = ""
    return routes


def fill(path):
    path = path.replace("/v1/models/{id}", "/v1/models/sha256:" + "a" * 64)
    path = path.replace("/v1/jobs/{id}", "/v1/jobs/job_" + "0" * 26)
    return re.sub(r"\{[^}]+\}", "x", path)


def call(d, method, path, token):
    body, headers = None, {}
    if method == "POST" and path == "/v1/models":
        body = make_mlp(seed=1, sizes=(8, 8, 2))
        headers["Content-Type"] = "application/octet-stream"
    elif method in ("POST", "PUT", "PATCH"):
        body = b"{}"
        headers["Content-Type"] = "application/json"
    return d.request(method, fill(path), body=body, headers=headers, token=token)


def all_routes():
    try:
        spec = openapi_routes()
        err = None
    except AssertionError as e:
        spec, err = {}, e
    routes = dict(CONTRACT)
    for k, v in spec.items():
        if k not in routes:
            routes[k] = v
    return routes, spec, err


@test
def test_openapi_lists_every_contract_route():
    routes, spec, err = all_routes()
    if err:
        raise err
    missing = sorted(set(CONTRACT) - set(spec))
    eq(missing, [], "contract routes missing from openapi.yaml")


@test
def test_no_token_is_401_on_every_protected_route():
    d = D()
    routes, _, _ = all_routes()
    bad = []
    for (method, path), scope in sorted(routes.items()):
        r = call(d, method, path, None)
        if scope == "":
            if r.status != 200:
                bad.append("%s %s public route: %d" % (method, path, r.status))
        elif r.status != 401:
            bad.append("%s %s: %d" % (method, path, r.status))
        else:
            if method != "HEAD":   # HEAD answers carry no body to check
                expect_error(r, 401, "unauthorized", what="%s %s" % (method, path))
            wa = r.header("WWW-Authenticate") or ""
            check(wa.lower().startswith("bearer"), "%s %s: 401 without WWW-Authenticate: Bearer (%r)"
                  % (method, path, wa))
    eq(bad, [], "routes not answering 401 without a token")


@test
def test_bad_token_is_401_on_every_protected_route():
    d = D()
    routes, _, _ = all_routes()
    bad = []
    headers_variants = ["Bearer nope", "Bearer " + TOK["ops"] + "x", "bearer", "Basic " + TOK["ops"],
                        "Bearer  ", "Bearer " + TOK["ops"][:-1]]
    for (method, path), scope in sorted(routes.items()):
        if scope == "":
            continue
        for hv in headers_variants:
            r = d.request(method, fill(path), headers={"Authorization": hv}, token=None,
                          body=b"{}" if method == "POST" else None)
            if r.status != 401:
                bad.append("%s %s with %r: %d" % (method, path, hv, r.status))
    eq(bad, [], "routes not answering 401 with a bad token")


@test
def test_valid_token_without_scope_is_403():
    d = D()
    routes, _, _ = all_routes()
    bad = []
    for (method, path), scope in sorted(routes.items()):
        if not scope:
            continue
        lacking = [lab for s, tok, lab in TOKENS if scope not in s.split(",") and "admin" not in s]
        for lab in lacking:
            r = call(d, method, path, TOK[lab])
            if r.status != 403:
                bad.append("%s %s (needs %s) with %s token: %d" % (method, path, scope, lab, r.status))
            elif method != "HEAD":
                expect_error(r, 403, "forbidden", what="%s %s" % (method, path))
    eq(bad, [], "routes not answering 403 to a token lacking the scope")


@test
def test_right_scope_and_admin_are_let_through():
    d = D()
    routes, _, _ = all_routes()
    bad = []
    for (method, path), scope in sorted(routes.items()):
        labs = ["ops"]
        if scope:
            labs += [lab for s, tok, lab in TOKENS if scope in s.split(",")]
        for lab in labs:
            r = call(d, method, path, TOK[lab])
            if r.status in (401, 403) or r.status >= 500:
                bad.append("%s %s with %s token: %d %r" % (method, path, lab, r.status, r.body[:120]))
    eq(bad, [], "routes refusing a token that has the scope")
    # and the allowed calls really work
    m = make_mlp(seed=9, sizes=(8, 8, 2))
    up = expect(d.upload(m, token=TOK["uploader"]), 201, "upload with write").json
    expect(d.get("/v1/models/" + up["id"], token=TOK["dashboard"]), 200, "read with read")
    expect(d.get("/v1/models/" + up["id"], token=TOK["platform"]), 200, "read with read,write")
    expect(d.get("/metrics", token=TOK["dashboard"]), 200, "metrics with read")


@test
def test_without_tokens_file_refuses_non_loopback():
    tmp = tempfile.mkdtemp(prefix="moptd-auth-")
    for addr in ("0.0.0.0:0", "[::]:0"):
        p = subprocess.Popen([MOPTD, "--listen", addr, "--data", os.path.join(tmp, "data")],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            raise AssertionError("moptd --listen %s without --tokens kept running; stderr: %r"
                                 % (addr, err[-500:]))
        check(p.returncode != 0, "moptd --listen %s without --tokens exited 0" % addr)
        check(b"listening" not in err or b'"event":"listening"' not in err.replace(b" ", b""),
              "it reported listening on %s" % addr)
        text = (err + out).decode("utf-8", "replace").lower()
        check("token" in text or "loopback" in text,
              "refusal does not say why (mentions neither tokens nor loopback): %r" % text[-400:])


@test
def test_with_tokens_file_non_loopback_is_allowed():
    d = Daemon(tokens=TOKENS, name="moptd-any")
    d.cmd_orig = d.cmd
    d.cmd = lambda: [a if a != "127.0.0.1:0" else "0.0.0.0:0" for a in d.cmd_orig()]
    d.start()
    try:
        expect(d.get("/v1/models"), 200, "admin on 0.0.0.0 listener")
        expect(d.get("/v1/models", token=None), 401, "no token on 0.0.0.0 listener")
    finally:
        eq(d.stop(), 0, "exit status after SIGTERM")


if __name__ == "__main__":
    run()
