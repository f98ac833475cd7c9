#!/usr/bin/python3
"""test_bad_input.py — every bad input of the issue, each its own test: the right 4xx in the one
error shape with a useful message, the daemon still answers /healthz, and nothing was stored
(no new model or job rows, no new files under data/blobs, tmp/ empty)."""
import json
import os
import random
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Daemon, check, eq, expect, expect_error, expect_nothing_stored, generated_models, lazy,
                     make_mlp, run, snapshot, test)

LIMIT = 2000000
# --conn-timeout-s 2: libmicrohttpd (0.9.75, epoll) now and then misses the FIN of a client that
# half-closes right after a partial body (about 1 in 30 here); the connection, and with it the
# temp upload, then goes at the idle timeout. A short timeout bounds that in these tests.
D = lazy(lambda: Daemon(args=["--max-model-bytes", str(LIMIT), "--conn-timeout-s", "2"],
                        name="moptd-bad").start())
_base = {}


def base():
    """The daemon with one good model stored; returns (daemon, model id, snapshot)."""
    d = D()
    if "id" not in _base:
        _base["id"] = d.upload_ok(make_mlp(seed=1), name="good")["id"]
    return d, _base["id"], snapshot(d)


def text_of(e):
    return (e["message"] + " " + json.dumps(e["detail"])).lower()


def bad_model(mutate):
    """A valid MLP whose fc0.weight initializer is changed by mutate(tensor)."""
    import onnx
    m = onnx.load_from_string(make_mlp(seed=3))
    t = [t for t in m.graph.initializer if t.name == "fc0.weight"][0]
    mutate(t)
    return m.SerializeToString()


def upload_refused(data, status, code, what, name=None):
    d, _, before = base()
    e = expect_error(d.upload(data, name=name), status, code, what=what)
    expect_nothing_stored(d, before, what)
    return e


@test
def test_random_bytes_is_422():
    data = random.Random(7).randbytes(4096)
    upload_refused(data, 422, "invalid_model", "random bytes")


@test
def test_empty_body_is_refused():
    d, _, before = base()
    r = d.upload(b"")
    expect_error(r, (400, 411, 422), what="empty body")
    expect_nothing_stored(d, before, "empty body")


@test
def test_truncated_onnx_is_422_naming_truncation():
    data = make_mlp(seed=2)
    e = upload_refused(data[: int(len(data) * 0.6)], 422, "invalid_model", "truncated ONNX")
    t = text_of(e)
    check(re.search(r"truncat|end of (input|data|buffer|message)|eof|premature|past the end|exceeds",
                    t), "error does not say the protobuf is truncated: %r" % e)


@test
def test_absurd_dims_are_422_naming_the_tensor():
    def huge(t):
        del t.dims[:]
        t.dims.extend([1 << 40, 1 << 40])
    e = upload_refused(bad_model(huge), 422, "invalid_model", "dims 2^40 x 2^40")
    check("fc0.weight" in text_of(e), "error does not name the tensor: %r" % e)

    def overflow(t):
        del t.dims[:]
        t.dims.extend([1 << 62, 1 << 62, 16])
    e = upload_refused(bad_model(overflow), 422, "invalid_model", "dims product overflow")
    check("fc0.weight" in text_of(e), "error does not name the tensor: %r" % e)

    def negative(t):
        del t.dims[:]
        t.dims.extend([-64, -128])
    e = upload_refused(bad_model(negative), 422, "invalid_model", "negative dims")
    check("fc0.weight" in text_of(e), "error does not name the tensor: %r" % e)


@test
def test_raw_data_length_mismatch_is_422_naming_the_problem():
    def short(t):
        t.raw_data = t.raw_data[:12]
    e = upload_refused(bad_model(short), 422, "invalid_model", "raw_data 12 bytes for 64x128 floats")
    t = text_of(e)
    check("fc0.weight" in t, "error does not name the tensor: %r" % e)
    check("12" in t and ("32768" in t or "8192" in t), "error does not give the sizes: %r" % e)


@test
def test_every_generated_bad_model_is_refused():
    d, _, before = base()
    outdir = generated_models("make_bad_models.py")
    manifest = json.load(open(os.path.join(outdir, "bad_models.json")))
    http_of = {"invalid_model": 422, "unsupported": 422, "too_large": 413}
    bad = []
    for e in manifest:
        path = os.path.join(outdir, e["path"])
        if os.path.isdir(path):
            path = os.path.join(path, "model.onnx")
        data = open(path, "rb").read()
        if e["expect"] == "accept" and e["kind"] == "file":
            continue
        # a bundle's model.onnx uploaded alone: its external data cannot be resolved inside the
        # store, so every one of them (even the well-formed one) must be refused
        codes = ["unsupported", "invalid_model"] if e["kind"] == "bundle" else e["error"]
        r = d.upload(data, name="bad-" + e["name"])
        try:
            expect_error(r, tuple(http_of[c] for c in codes), tuple(codes), what=e["name"])
            expect_nothing_stored(d, before, e["name"])
        except AssertionError as ex:
            bad.append("%s (%s): %s" % (e["name"], e["why"], ex))
    eq(bad, [], "bad models not refused properly")


@test
def test_content_length_larger_than_body_then_close():
    d, _, before = base()
    body = make_mlp(seed=4)
    half = body[: len(body) // 2]
    req = ("POST /v1/models?name=short HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/octet-stream\r\n"
           "Content-Length: %d\r\n\r\n" % (d.auth_header(), len(body))).encode() + half
    d.raw(req, timeout=3)   # shuts down the write side and reads whatever comes back
    time.sleep(0.3)
    expect_nothing_stored(d, before, "Content-Length larger than the body", tmp_wait=5.0)
    # the same with an abrupt close (no half-close)
    d.raw(req, read=False, shutdown=False)
    time.sleep(0.3)
    expect_nothing_stored(d, before, "Content-Length larger than the body, abrupt close",
                          tmp_wait=5.0)


@test
def test_content_length_over_limit_is_413():
    d, _, before = base()
    req = ("POST /v1/models?name=huge HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/octet-stream\r\n"
           "Content-Length: %d\r\n\r\n" % (d.auth_header(), 50 * 1000 * 1000 * 1000)).encode()
    t0 = time.time()
    resp = d.raw(req, shutdown=False, timeout=5)
    check(resp.startswith(b"HTTP/1.1 413"), "want 413, got %r" % resp[:300])
    check(time.time() - t0 < 4, "413 only after %.1fs" % (time.time() - t0))
    check(b"too_large" in resp, "413 body lacks the error code: %r" % resp[-300:])
    expect_nothing_stored(d, before, "Content-Length over the limit")


@test
def test_malformed_content_length_is_400():
    d, _, before = base()
    for cl in ("abc", "-5", "1e3", "18446744073709551617"):
        req = ("POST /v1/models HTTP/1.1\r\nHost: x\r\n%sContent-Length: %s\r\n\r\nxyz"
               % (d.auth_header(), cl)).encode()
        resp = d.raw(req, timeout=5)
        check(re.match(rb"HTTP/1\.[01] (400|413)", resp), "Content-Length %r: got %r" % (cl, resp[:200]))
        expect_nothing_stored(d, before, "Content-Length %r" % cl)


@test
def test_chunked_upload_over_limit_is_refused():
    d, _, before = base()
    chunk = b"\0" * 65536
    n = LIMIT // len(chunk) + 4
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(n)) + b"0\r\n\r\n"
    req = ("POST /v1/models?name=chunked HTTP/1.1\r\nHost: x\r\n%sTransfer-Encoding: chunked\r\n\r\n"
           % d.auth_header()).encode() + body
    resp = d.raw(req, timeout=10)
    expect_nothing_stored(d, before, "chunked upload over the limit")
    check(re.match(rb"HTTP/1\.1 (411|413)", resp), "chunked upload over the limit: %r" % resp[:300])


def job_refused(body, status, code, where=None, what=""):
    d, _, before = base()
    r = d.post("/v1/jobs", body, headers={"Content-Type": "application/json"})
    e = expect_error(r, status, code, where=where, what=what)
    expect_nothing_stored(d, before, what)
    return e


@test
def test_malformed_json_is_400_with_position():
    _, mid, _ = base()
    for body in ('{"model": "%s", "passes": [' % mid, "{'model': 1}", "not json at all",
                 '{"model": "%s", "passes": []} trailing' % mid, "", '{"a":1,}'):
        e = job_refused(body, 400, ("malformed_json", "bad_request"), what="malformed JSON %r" % body[:30])
        if body:
            check(re.search(r"line|column|offset|position", text_of(e)),
                  "malformed JSON error lacks a position: %r" % e)


@test
def test_json_nested_10000_deep_is_400():
    _, mid, _ = base()
    job_refused("[" * 10000 + "]" * 10000, 400, ("malformed_json", "invalid_spec"), what="[[[...]]] 10000 deep")
    deep = '{"model":"%s","passes":[%s%s]}' % (mid, '{"a":' * 10000 + "1", "}" * 10000)
    job_refused(deep, 400, ("malformed_json", "invalid_spec"), what="objects 10000 deep")
    job_refused("[" * 10000, 400, ("malformed_json", "invalid_spec"), what="unterminated 10000 deep")


@test
def test_unknown_pass_is_400_with_pointer():
    _, mid, _ = base()
    e = job_refused({"model": mid, "passes": [{"op": "prune", "sparsity": 0.5}, {"op": "frobnicate"}]},
                    400, "invalid_spec", "/passes/1/op", "unknown pass")
    check("frobnicate" in text_of(e), "message does not name the unknown op: %r" % e)
    job_refused({"model": mid, "passes": [{"op": "prune", "sparsity": 0.5, "bogus": 1}]},
                400, "invalid_spec", "/passes/0/bogus", "unknown key in a pass")
    job_refused({"model": mid, "passes": [], "colour": "red"}, 400, "invalid_spec", "/colour", "unknown top-level key")


@test
def test_wrong_types_are_400_with_pointer():
    _, mid, _ = base()
    cases = [({"model": mid, "passes": [{"op": "prune", "sparsity": "half"}]}, "/passes/0/sparsity"),
             ({"model": mid, "passes": {"op": "prune"}}, "/passes"),
             ({"model": 123, "passes": []}, "/model"),
             ({"model": mid, "passes": [{"op": "cluster", "clusters": 2.5}]}, "/passes/0/clusters"),
             ({"model": mid, "passes": [{"op": "quantize", "dtype": 8}]}, "/passes/0/dtype"),
             ({"model": mid, "passes": [], "seed": "x"}, "/seed"),
             ({"model": mid, "passes": ["prune"]}, "/passes/0"),
             ({"passes": []}, "/model"),
             ([mid], ""),
             ({"model": "sha256:xyz", "passes": []}, "/model")]
    for body, where in cases:
        job_refused(body, 400, "invalid_spec", where, "wrong type at %r" % where)


@test
def test_sparsity_out_of_range_is_400_with_pointer():
    _, mid, _ = base()
    for s in (-0.1, 1.5, 1.0, 1e308):
        e = job_refused({"model": mid, "passes": [{"op": "prune", "sparsity": s}]}, 400, "invalid_spec",
                        "/passes/0/sparsity", "sparsity %r" % s)
        check(len(e["message"]) > 10, "message too terse: %r" % e)
    job_refused({"model": mid, "passes": [{"op": "cluster", "clusters": 100000}]}, 400, "invalid_spec",
                "/passes/0/clusters", "clusters 100000")


@test
def test_unknown_model_id_is_404():
    d, _, before = base()
    unknown = "sha256:" + "e" * 64
    expect_error(d.post("/v1/jobs", {"model": unknown, "passes": []}), 404, "not_found", what="job on unknown model")
    expect_error(d.get("/v1/models/" + unknown), 404, "not_found", what="GET unknown model")
    expect_error(d.delete("/v1/models/" + unknown), 404, "not_found", what="DELETE unknown model")
    expect_error(d.get("/v1/jobs/job_" + "1" * 26), 404, "not_found", what="GET unknown job")
    expect_error(d.post("/v1/jobs/job_%s/cancel" % ("1" * 26)), 404, "not_found", what="cancel unknown job")
    expect_nothing_stored(d, before, "unknown ids")


@test
def test_path_traversal_in_names_and_ids():
    d, mid, before = base()
    for name in ("../../etc/passwd", "..", "a/../../b", "%2e%2e%2f%2e%2e%2fetc%2fpasswd"):
        r = d.upload(make_mlp(seed=5), name=name)
        expect_error(r, 400, what="model name %r" % name)
        expect_nothing_stored(d, before, "name %r" % name)
    paths = ["/v1/models/..%2f..%2fetc%2fpasswd", "/v1/models/%2e%2e%2f%2e%2e%2fetc%2fpasswd/content",
             "/v1/models/sha256:..%2f..%2f..%2f..%2fetc%2fpasswd/content",
             "/v1/models/sha256%3a..%2f..%2fmoptd.db/content",
             "/v1/models/../../etc/passwd", "/v1/models/..%252f..%252fetc%252fpasswd/content",
             "/v1/jobs/..%2f..%2fmoptd.db", "/v1/models/%00/content",
             "/v1/models/" + mid + "%2f..%2f..%2fmoptd.db"]
    for p in paths:
        for method in ("GET", "DELETE"):
            r = d.request(method, p)
            check(r.status in (400, 404), "%s %s: %d %r" % (method, p, r.status, r.body[:100]))
            check(b"root:" not in r.body and b"SQLite format" not in r.body, "%s leaked a file" % p)
    expect(d.get("/v1/models/" + mid), 200, "the good model is still there")
    expect_nothing_stored(d, before, "path traversal ids")


@test
def test_long_and_odd_names_are_refused_or_kept_exactly():
    d, _, _ = base()
    cases = [("n" * 127, "1"), ("n" * 200, "1"), ("n" * 5000, "1"), ("ok", "v" * 100),
             ("tab\there", "1"), ("new\nline", "1"), ("nul\x00byte", "1"), ("ünïcødé-名前", "1"), ("", "1")]
    bad = []
    for i, (name, version) in enumerate(cases):
        data = make_mlp(seed=900 + i, sizes=(8, 8, 2))
        before = snapshot(d)
        r = d.upload(data, name=name, version=version)
        if r.status == 400:
            try:
                expect_error(r, 400, what="name %r" % name[:20])
                expect_nothing_stored(d, before, "name %r" % name[:20])
            except AssertionError as e:
                bad.append(str(e))
        elif r.status == 201:
            m = expect(d.get("/v1/models/" + r.json["id"]), 200).json
            if (m["name"], m["version"]) != (name, version):
                bad.append("name %r version %r stored as %r %r" % (name[:40], version[:40], m["name"][:40],
                                                                   m["version"][:40]))
        else:
            bad.append("name %r: status %d %r" % (name[:20], r.status, r.body[:100]))
    eq(bad, [], "names neither refused nor kept exactly")


@test
def test_json_body_over_the_limit_is_413():
    d, mid, before = base()
    # default --max-json-bytes is 1 MiB; the header alone must be enough to refuse
    req = ("POST /v1/jobs HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\n"
           "Content-Length: %d\r\n\r\n" % (d.auth_header(), 64 << 20)).encode()
    resp = d.raw(req, shutdown=False, timeout=5)
    check(resp.startswith(b"HTTP/1.1 413"), "JSON Content-Length 64 MiB: %r" % resp[:200])
    big = '{"model": "%s", "passes": [], "select": {"include": [%s]}}' % (mid, ",".join(['"x"'] * 300000))
    expect_error(d.post("/v1/jobs", big, headers={"Content-Type": "application/json"}), 413, "too_large",
                 what="2 MB JSON body")
    expect_nothing_stored(d, before, "JSON over the limit")


@test
def test_unknown_routes_are_404():
    d, _, before = base()
    for method, p in (("GET", "/v1/nope"), ("GET", "/"), ("GET", "/v1/models/x/y/z"), ("POST", "/v2/models"),
                      ("GET", "/v1/jobs/job_1/cancel/x"), ("GET", "/v1"), ("GET", "/healthz/x")):
        expect_error(d.request(method, p), 404, "not_found", what="%s %s" % (method, p))
    expect_nothing_stored(d, before, "unknown routes")


@test
def test_wrong_methods_are_405_with_allow():
    d, mid, before = base()
    cases = [("PUT", "/v1/models", {"GET", "POST"}), ("DELETE", "/v1/jobs", {"GET", "POST"}),
             ("PATCH", "/v1/models/" + mid, {"GET", "DELETE"}),
             ("GET", "/v1/jobs/job_%s/cancel" % ("1" * 26), {"POST"}),
             ("POST", "/healthz", {"GET"}), ("DELETE", "/metrics", {"GET"}),
             ("PUT", "/v1/models/%s/content" % mid, {"GET"})]
    for method, p, allow in cases:
        r = d.request(method, p, body=b"{}" if method in ("PUT", "PATCH", "POST") else None)
        expect_error(r, 405, "method_not_allowed", what="%s %s" % (method, p))
        got = {m.strip() for m in (r.header("Allow") or "").split(",") if m.strip()}
        check(allow <= got, "%s %s: Allow %r lacks %r" % (method, p, r.header("Allow"), allow))
    expect(d.get("/v1/models/" + mid), 200)
    expect_nothing_stored(d, before, "wrong methods")


@test
def test_bad_query_parameters_are_400():
    d, mid, before = base()
    for p in ("/v1/models?limit=abc", "/v1/models?limit=-1", "/v1/jobs?limit=99999999999999999999",
              "/v1/models?cursor=%ff%fe garbage", "/v1/jobs?state=exploded"):
        expect_error(d.get(p.replace(" ", "%20")), 400, what="GET " + p)
    expect_nothing_stored(d, before, "bad query parameters")


if __name__ == "__main__":
    run()
