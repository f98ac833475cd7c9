#!/usr/bin/python3
"""test_ota.py — OTA server side through a real moptd (issue 4): releases with history and
rollback, signed manifests (verified and tampered with `mopt verify-manifest`), the public key,
payload downloads applied byte-exact with `mopt apply` / `mopt unpack`, Range / If-Range / 304 /
416 on payloads, a delta computed once under concurrent first requests (payloads table and the
`payload_spawn` log lines), the signing key kept across restarts with mode 0600, and scopes
(an ota token reads manifests and payloads but cannot upload or publish).
"""
import hashlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import check, eq, expect, expect_error, test  # noqa: E402

ADMIN, DEV, READER, WRITER = "adm-token-ota", "device-token-ota", "reader-token-ota", "writer-ota"
TOKENS = [("admin", ADMIN, "admin"), ("ota", DEV, "device"), ("read", READER, "reader"),
          ("write", WRITER, "writer")]
WORK = tempfile.mkdtemp(prefix="moptd-ota-test-")


def perturb(data, names=("fc0.weight",), scale=1e-3, seed=5):
    """A 'fine-tuned' version: small noise on the named initializers, everything else equal."""
    np, onnx, helper, numpy_helper, TensorProto = h._onnx()
    m = onnx.load_from_string(data)
    rng = np.random.default_rng(seed)
    for i, init in enumerate(m.graph.initializer):
        if init.name in names:
            a = numpy_helper.to_array(init).copy()
            a += (rng.standard_normal(a.shape) * scale).astype(a.dtype)
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(a, init.name))
    return m.SerializeToString()


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def publish(d, name, channel, model_id, token=h.DEFAULT):
    return d.request("PUT", "/v1/releases/%s/%s" % (name, channel), body={"model": model_id},
                     token=token)


def manifest(d, name, channel, have=None, token=DEV):
    q = {"have": have} if have else None
    return d.get("/v1/ota/%s/%s/manifest" % (name, channel), query=q, token=token)


def mopt(*args):
    return subprocess.run([h.MOPT] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def spawns(d, kind, base=None, target=None):
    n = 0
    for j in list(d.jlines):
        if j.get("event") == "payload_spawn" and j.get("kind") == kind and \
                (base is None or j.get("base") == base) and \
                (target is None or j.get("target") == target):
            n += 1
    return n


def db_rows(d, sql, args=()):
    con = sqlite3.connect("file:%s?mode=ro" % os.path.join(d.data, "moptd.db"), uri=True)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


# One daemon for the file; models: A, B = A fine-tuned, C = B fine-tuned again, U unrelated.
D = h.Daemon(tokens=TOKENS, workers=2)
M = {}


def setup():
    D.start()
    a = h.make_mlp(seed=11, sizes=(64, 256, 128, 16))
    b = perturb(a, names=("fc0.weight", "fc1.bias"), seed=1)
    c = perturb(b, names=("fc1.weight",), seed=2)
    u = h.make_mlp(seed=99, sizes=(64, 256, 128, 16))
    for k, data in (("A", a), ("B", b), ("C", c), ("U", u)):
        M[k] = expect(D.upload(data, name="kws"), (200, 201)).json["id"]
        M[k + "_bytes"] = data
        M[k + "_path"] = write(os.path.join(WORK, k + ".onnx"), data)


@test
def test_publish_history_rollback():
    r = expect(publish(D, "kws", "stable", M["A"]), 200).json
    eq(r["current"]["version"], 1, "first version")
    eq(r["current"]["model"], M["A"], "current model")
    r = expect(publish(D, "kws", "stable", M["B"]), 200).json
    eq(r["current"]["version"], 2, "second version")
    # rollback to A: a new entry with a higher version
    r = expect(publish(D, "kws", "stable", M["A"]), 200).json
    eq(r["current"]["version"], 3, "rollback raises the version")
    eq(r["current"]["model"], M["A"], "rollback model")
    g = expect(D.get("/v1/releases/kws/stable", token=READER), 200).json
    eq([e["version"] for e in g["history"]], [3, 2, 1], "history newest first")
    eq([e["model"] for e in g["history"]], [M["A"], M["B"], M["A"]], "history models")
    eq(g["name"], "kws", "name")
    eq(g["channel"], "stable", "channel")
    # another channel has its own versions
    r = expect(publish(D, "kws", "beta", M["B"]), 200).json
    eq(r["current"]["version"], 1, "beta starts at 1")
    # forward again to B then C (deltas from the previous releases are queued at publish)
    eq(expect(publish(D, "kws", "stable", M["B"]), 200).json["current"]["version"], 4, "v4")
    eq(expect(publish(D, "kws", "stable", M["C"]), 200).json["current"]["version"], 5, "v5")
    # a released model cannot be deleted
    expect_error(D.delete("/v1/models/" + M["C"]), 409, "conflict")


@test
def test_publish_errors():
    expect_error(publish(D, "kws", "stable", "sha256:" + "0" * 64), 404, "not_found")
    expect_error(publish(D, "kws", "stable", "nope"), 400)
    expect_error(D.request("PUT", "/v1/releases/kws/stable", body=b"{not json",
                           headers={"Content-Type": "application/json"}), 400)
    expect_error(D.request("PUT", "/v1/releases/kws/stable",
                           body={"model": M["A"], "extra": 1}), 400)
    expect_error(publish(D, "k:ws", "stable", M["A"]), 400, where="name")
    expect_error(D.get("/v1/releases/nothing/stable"), 404, "not_found")
    expect_error(manifest(D, "nothing", "stable"), 404, "not_found")
    expect_error(manifest(D, "kws", "stable", have="sha256:xyz"), 400, where="have")


def verify(manifest_bytes, key_bytes):
    mp = write(os.path.join(WORK, "m.json"), manifest_bytes)
    kp = write(os.path.join(WORK, "k.json"), key_bytes)
    return mopt("verify-manifest", mp, "--key", kp)


@test
def test_release_list_pages_by_name_then_channel():
    expect(publish(D, "asr", "stable", M["A"]), 200)
    full = expect(D.get("/v1/releases?limit=100", token=READER), 200)
    eq(full.headers.get("Cache-Control"), "no-store", "list is not cached")
    items = full.json["items"]
    eq([(i["name"], i["channel"]) for i in items], [("asr", "stable"), ("kws", "beta"), ("kws", "stable")],
       "every channel once, by name then channel")
    eq(items[2]["current"]["version"], 5, "kws/stable current version")
    eq(items[2]["current"]["model"], M["C"], "kws/stable current model")
    eq(full.json["next_cursor"], None, "one page")
    p1 = expect(D.get("/v1/releases?limit=2", token=READER), 200).json
    eq([(i["name"], i["channel"]) for i in p1["items"]], [("asr", "stable"), ("kws", "beta")], "page 1")
    check(isinstance(p1["next_cursor"], str) and p1["next_cursor"], "page 1 has a cursor")
    # a channel published between the pages keeps its place
    expect(publish(D, "kws", "beta", M["C"]), 200)
    p2 = expect(D.get("/v1/releases?limit=2&cursor=" + p1["next_cursor"], token=READER), 200).json
    eq([(i["name"], i["channel"]) for i in p2["items"]], [("kws", "stable")], "page 2")
    eq(p2["next_cursor"], None, "last page")
    again = expect(D.get("/v1/releases?limit=100", token=READER), 200).json["items"]
    eq(again[1]["current"], {"version": 2, "model": M["C"], "created": again[1]["current"]["created"]},
       "kws/beta moved to version 2")
    expect_error(D.get("/v1/releases?cursor=" + "0" * 29 + "fff", token=READER), 400, where="cursor")
    expect_error(D.get("/v1/releases?cursor=zz", token=READER), 400, where="cursor")
    expect_error(D.get("/v1/releases?limit=0", token=READER), 400, where="limit")
    expect_error(D.get("/v1/releases", token=DEV), 403, "forbidden")
    expect_error(D.get("/v1/releases", token=None), 401)


@test
def test_manifest_known_have_delta_first_and_signature():
    r = expect(manifest(D, "kws", "stable", have=M["B"]), 200)
    eq(r.header("Cache-Control"), "no-store", "manifest not cacheable")
    m = r.json
    s = m["signed"]
    eq(s["name"], "kws", "name")
    eq(s["version"], 5, "version")
    eq(s["target"], {"id": M["C"], "size": len(M["C_bytes"])}, "target")
    eq(s["up_to_date"], False, "up_to_date")
    check(s["expires"] > s["issued"], "expires after issued")
    kinds = [p["kind"] for p in s["payloads"]]
    eq(sorted(kinds), ["delta", "full"], "delta and full listed: %r" % s["payloads"])
    sizes = [p["size"] for p in s["payloads"]]
    eq(sizes, sorted(sizes), "smallest first")
    eq(kinds[0], "delta", "the delta of a fine-tune is the smallest")
    delta = s["payloads"][0]
    eq(delta["from"], M["B"], "delta base")
    eq(delta["url"], "/v1/payloads/" + delta["id"], "url")
    check(delta["size"] < s["payloads"][1]["size"] / 2, "fine-tune delta is small: %r" % sizes)
    # signature: verifies with the public key, fails with any byte of "signed" changed
    key = expect(D.get("/v1/ota/public-key", token=None), 200)
    kj = key.json
    eq(kj["algorithm"], "ed25519", "algorithm")
    eq(kj["keyid"], m["signatures"][0]["keyid"], "key id in the manifest")
    import base64
    pk = base64.b64decode(kj["public_key"])
    eq(len(pk), 32, "key length")
    eq(kj["keyid"], hashlib.sha256(pk).hexdigest(), "key id = sha256 of the key")
    v = verify(r.body, key.body)
    eq(v.returncode, 0, "verify-manifest ok (%s)" % v.stderr.decode()[-300:])
    i = r.body.index(b'"version":5')
    tampered = r.body[:i] + b'"version":6' + r.body[i + len(b'"version":5'):]
    v = verify(tampered, key.body)
    check(v.returncode != 0, "a tampered manifest must fail verification")
    i = r.body.index(M["C"].encode()) + 10
    flip = r.body[:i] + bytes([r.body[i] ^ 1]) + r.body[i + 1:]
    check(verify(flip, key.body).returncode != 0, "one flipped bit must fail verification")
    other = base64.b64encode(bytes(32)).decode()
    check(verify(r.body, ('{"public_key":"%s"}' % other).encode()).returncode != 0,
          "another key must fail verification")


def download(path, token=DEV, headers=None):
    return D.get(path, token=token, headers=headers)


@test
def test_payload_apply_byte_exact():
    s = expect(manifest(D, "kws", "stable", have=M["B"]), 200).json["signed"]
    for p in s["payloads"]:
        r = expect(download(p["url"]), 200, p["kind"])
        eq(len(r.body), p["size"], "payload size")
        eq("sha256:" + hashlib.sha256(r.body).hexdigest(), p["id"], "content-addressed id")
        pp = write(os.path.join(WORK, p["kind"] + ".pay"), r.body)
        out = os.path.join(WORK, "out-" + p["kind"] + ".onnx")
        if p["kind"] == "delta":
            res = mopt("apply", M["B_path"], pp, "-o", out)
        else:
            res = mopt("unpack", pp, "-o", out)
        eq(res.returncode, 0, "mopt %s: %s" % (p["kind"], res.stderr.decode()[-300:]))
        eq("sha256:" + h.file_sha256(out), M["C"], "applied %s reproduces the target" % p["kind"])
        # the wrong base is refused and nothing is written
        if p["kind"] == "delta":
            bad = os.path.join(WORK, "bad.onnx")
            res = mopt("apply", M["A_path"], pp, "-o", bad)
            check(res.returncode != 0 and not os.path.exists(bad), "wrong base refused")


@test
def test_payload_http_conditionals():
    s = expect(manifest(D, "kws", "stable"), 200).json["signed"]
    eq([p["kind"] for p in s["payloads"]], ["full"], "no have: full only")
    p = s["payloads"][0]
    full = expect(download(p["url"]), 200)
    size = len(full.body)
    etag = full.header("ETag")
    eq(etag, '"%s"' % p["id"][7:], "strong ETag = digest")
    eq(full.header("Cache-Control"), "public, max-age=31536000, immutable", "Cache-Control")
    eq(full.header("Accept-Ranges"), "bytes", "Accept-Ranges")
    r = expect(download(p["url"], headers={"If-None-Match": etag}), 304)
    eq(r.body, b"", "304 has no body")
    r = expect(download(p["url"], headers={"If-None-Match": '"other", ' + etag}), 304)
    r = expect(download(p["url"], headers={"Range": "bytes=10-109"}), 206)
    eq(r.body, full.body[10:110], "range bytes")
    eq(r.header("Content-Range"), "bytes 10-109/%d" % size, "Content-Range")
    r = expect(download(p["url"], headers={"Range": "bytes=-7"}), 206)
    eq(r.body, full.body[-7:], "suffix range")
    r = expect(download(p["url"], headers={"Range": "bytes=5-9", "If-Range": etag}), 206)
    eq(r.body, full.body[5:10], "If-Range matching keeps the range")
    r = expect(download(p["url"], headers={"Range": "bytes=5-9", "If-Range": '"stale"'}), 200)
    eq(r.body, full.body, "If-Range not matching sends everything")
    r = expect_error(download(p["url"], headers={"Range": "bytes=%d-" % (size + 10)}), 416)
    eq(D.get(p["url"], token=DEV, headers={"Range": "bytes=%d-" % (size + 10)})
       .header("Content-Range"), "bytes */%d" % size, "416 Content-Range")
    r = expect(D.request("HEAD", p["url"], token=DEV), 200)
    eq(r.body, b"", "HEAD has no body")
    expect_error(download("/v1/payloads/sha256:" + "a" * 64), 404, "not_found")
    expect_error(download("/v1/payloads/nothex"), 400)
    # a model id is not a payload id
    expect_error(download("/v1/payloads/" + M["A"]), 404)


@test
def test_up_to_date_and_unknown_have():
    s = expect(manifest(D, "kws", "stable", have=M["C"]), 200).json["signed"]
    eq(s["up_to_date"], True, "device on the target is up to date")
    eq(s["payloads"], [], "nothing to download")
    eq(s["have"], M["C"], "have echoed")
    unknown = "sha256:" + "1" * 64
    s = expect(manifest(D, "kws", "stable", have=unknown), 200).json["signed"]
    eq([p["kind"] for p in s["payloads"]], ["full"], "unknown have: full only")
    eq(s["up_to_date"], False, "not up to date")


@test
def test_concurrent_first_requests_compute_delta_once():
    # U was never released: no delta U -> C exists until a device holding U asks.
    eq(db_rows(D, "SELECT COUNT(*) FROM payloads WHERE base=?", (M["U"],))[0][0], 0,
       "no delta from U before the first request")
    results, errors = [], []

    def one():
        try:
            results.append(manifest(D, "kws", "stable", have=M["U"]))
        except Exception as e:   # noqa: BLE001
            errors.append(e)
    ts = [threading.Thread(target=one) for _ in range(12)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    eq(errors, [], "requests failed")
    eq(len(results), 12, "answers")
    for r in results:
        expect(r, 200)
    rows = db_rows(D, "SELECT kind, state, digest FROM payloads WHERE base=? AND target=?",
                   (M["U"], M["C"]))
    eq(len(rows), 1, "one payloads row for (delta, U, C)")
    eq(rows[0][:2], ("delta", "ready"), "computed")
    eq(spawns(D, "delta", M["U"]), 1, "exactly one `mopt delta` spawn for U -> C")
    # the requests waited for it: every answer lists it (unrelated models: full may be smaller)
    for r in results:
        kinds = sorted(p["kind"] for p in r.json["signed"]["payloads"])
        eq(kinds, ["delta", "full"], "delta listed after the wait")
        sizes = [p["size"] for p in r.json["signed"]["payloads"]]
        eq(sizes, sorted(sizes), "smallest first")
    # and a later request neither spawns nor waits
    r = expect(manifest(D, "kws", "stable", have=M["U"]), 200)
    eq(spawns(D, "delta", M["U"]), 1, "still one spawn")
    # deltas from previous releases were computed at publish time, once each
    eq(spawns(D, "delta", M["B"], M["C"]), 1, "B -> C once")
    eq(spawns(D, "delta", M["A"], M["C"]), 1, "A -> C once (previous releases A, B)")
    eq(spawns(D, "full"), len(set([M["A"], M["B"], M["C"]])), "one full payload per released model")


@test
def test_scopes():
    # ota token: manifests and payloads yes; upload / publish / model reads no
    s = expect(manifest(D, "kws", "stable", have=M["B"], token=DEV), 200).json["signed"]
    expect(download(s["payloads"][0]["url"], token=DEV), 200)
    expect_error(D.upload(b"x" * 10, token=DEV), 403, "forbidden")
    expect_error(publish(D, "kws", "stable", M["A"], token=DEV), 403, "forbidden")
    expect_error(D.get("/v1/releases/kws/stable", token=DEV), 403, "forbidden")
    # read token: release history yes, OTA routes no; write token publishes
    expect(D.get("/v1/releases/kws/stable", token=READER), 200)
    expect_error(manifest(D, "kws", "stable", token=READER), 403, "forbidden")
    expect_error(download(s["payloads"][0]["url"], token=READER), 403, "forbidden")
    expect_error(publish(D, "kws", "stable", M["A"], token=READER), 403, "forbidden")
    expect(publish(D, "kws", "canary", M["A"], token=WRITER), 200)
    # no token: 401 everywhere but the public key
    expect_error(manifest(D, "kws", "stable", token=None), 401)
    expect_error(download(s["payloads"][0]["url"], token=None), 401)
    expect(D.get("/v1/ota/public-key", token=None), 200)


@test
def test_signing_key_file_and_restart():
    path = os.path.join(D.data, "ota-signing.key")
    st = os.stat(path)
    eq(st.st_mode & 0o777, 0o600, "key file mode")
    eq(st.st_size, 64, "ed25519 secret key size")
    before = expect(D.get("/v1/ota/public-key", token=None), 200).json
    D.restart()
    after = expect(D.get("/v1/ota/public-key", token=None), 200).json
    eq(after, before, "same key after a restart")
    r = expect(manifest(D, "kws", "stable", have=M["B"]), 200)
    eq(verify(r.body, D.get("/v1/ota/public-key", token=None).body).returncode, 0,
       "manifests still verify after a restart")
    # a key file readable by others is refused at start-up
    D.stop()
    os.chmod(path, 0o644)
    p = subprocess.run(D.cmd(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    check(p.returncode != 0, "moptd must refuse a world-readable signing key")
    check(b"chmod 600" in p.stderr, "the error says what to do: %r" % p.stderr[-300:])
    os.chmod(path, 0o600)
    D.start()
    eq(expect(D.get("/v1/ota/public-key", token=None), 200).json, before, "key kept")


class NoWaitDaemon(h.Daemon):
    """moptd with MOPTD_OTA_WAIT_S=0: manifests never wait for payloads being computed."""

    def cmd(self):
        return ["/usr/bin/env", "MOPTD_OTA_WAIT_S=0"] + super().cmd()


@test
def test_no_wait_full_first_then_delta_on_a_later_request():
    d = NoWaitDaemon(name="moptd-nowait")
    d.start()
    try:
        a = d.upload_ok(M["A_bytes"], name="kws")["id"]
        c = d.upload_ok(M["C_bytes"], name="kws")["id"]
        u = d.upload_ok(h.make_mlp(seed=7, sizes=(64, 256, 128, 16)), name="kws")["id"]
        expect(d.request("PUT", "/v1/releases/kws/stable", body={"model": a}), 200)
        expect(d.request("PUT", "/v1/releases/kws/stable", body={"model": c}), 200)
        # the full payload may still be computing: 503 with Retry-After, never a wait
        deadline = time.time() + 30
        while True:
            r = d.get("/v1/ota/kws/stable/manifest", query={"have": u})
            if r.status == 200:
                break
            err = expect_error(r, 503, "unavailable")
            check(r.header("Retry-After") is not None, "Retry-After on 503: %r" % err)
            check(time.time() < deadline, "full payload never became ready")
            time.sleep(0.1)
        check(r.elapsed < 2.0, "no long-poll with MOPTD_OTA_WAIT_S=0 (%.2fs)" % r.elapsed)
        kinds = [p["kind"] for p in r.json["signed"]["payloads"]]
        check(kinds in (["full"], ["delta", "full"], ["full", "delta"]), "kinds %r" % kinds)
        print("# first answer lists %r after %.3fs" % (kinds, r.elapsed))
        # the delta from U was queued by that request and shows up on a later one
        deadline = time.time() + 30
        while "delta" not in kinds:
            check(time.time() < deadline, "delta from U never appeared")
            time.sleep(0.1)
            r = expect(d.get("/v1/ota/kws/stable/manifest", query={"have": u}), 200)
            kinds = [p["kind"] for p in r.json["signed"]["payloads"]]
        eq(spawns(d, "delta", u, c), 1, "one delta computation for U -> C")
    finally:
        d.stop()


if __name__ == "__main__":
    setup()
    h.run()
