#!/usr/bin/python3
"""test_models.py — /v1/models over real HTTP: upload, dedup, digests, size limit, metadata,
listing with cursors, download with ETag/Range/If-Range/HEAD, delete."""
import hashlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Daemon, check, digest_header, eq, expect, expect_error, expect_nothing_stored,
                     file_sha256, generated_models, lazy, list_items, make_mlp, model_facts, run, sha256_hex, snapshot,
                     test, write_big_mlp, MODEL_ID, RFC3339_MS)

D = lazy(lambda: Daemon(name="moptd").start())
LIMIT = 100000
SMALL = lazy(lambda: Daemon(args=["--max-model-bytes", str(LIMIT)], name="moptd-small").start())
MODEL = make_mlp(seed=1)
MODEL_ID_1 = "sha256:" + sha256_hex(MODEL)


def check_model_json(m, data, name=None, version=None):
    eq(m.get("id"), "sha256:" + sha256_hex(data), "id")
    check(MODEL_ID.match(m["id"]), "id format %r" % m["id"])
    eq(m.get("size"), len(data), "size")
    eq(m.get("format"), "onnx", "format")
    facts = model_facts(data)
    for k, v in facts.items():
        eq(m.get(k), v, k)
    if name is not None:
        eq(m.get("name"), name, "name")
    if version is not None:
        eq(m.get("version"), version, "version")
    check(isinstance(m.get("created"), str) and RFC3339_MS.match(m["created"]),
          "created is not RFC 3339 with ms: %r" % m.get("created"))
    eq(m.get("parent"), None, "parent of an upload")
    eq(m.get("job"), None, "job of an upload")
    eq(m.get("content_url"), "/v1/models/%s/content" % m["id"], "content_url")


@test
def test_upload_new_is_201_with_metadata():
    d = D()
    r = d.upload(MODEL, name="mlp-one", version="1.0")
    expect(r, 201, "first upload")
    check_model_json(r.json, MODEL, "mlp-one", "1.0")
    # the blob is on disk, named by its digest, byte-exact
    p = d.blob_path(r.json["id"])
    check(os.path.isfile(p), "blob file %s missing" % p)
    eq(file_sha256(p), sha256_hex(MODEL), "blob file digest")


@test
def test_metadata_counts_constants_and_subgraphs():
    d = D()
    data = make_mlp(seed=2, with_if=True, opset=17, ir_version=8)
    r = expect(d.upload(data, name="with-if", version="2"), 201)
    check_model_json(r.json, data, "with-if", "2")
    eq(r.json["opsets"], {"": 17}, "opsets")


@test
def test_metadata_of_every_generated_model():
    d = D()
    outdir = generated_models()
    names = sorted(f for f in os.listdir(outdir) if f.endswith(".onnx"))
    check(names, "no models generated")
    bad = []
    for f in names:
        data = open(os.path.join(outdir, f), "rb").read()
        r = d.upload(data, name=f[:-5], version="gen")
        if r.status not in (200, 201):
            bad.append("%s: %d %r" % (f, r.status, r.body[:200]))
            continue
        try:
            check_model_json(r.json, data, f[:-5] if r.status == 201 else None)
        except AssertionError as e:
            bad.append("%s: %s" % (f, e))
    eq(bad, [], "generated models refused or with wrong metadata")


@test
def test_reupload_same_bytes_is_200_same_id():
    d = D()
    first = d.upload_ok(MODEL, name="mlp-one", version="1.0")
    before = snapshot(d)
    r = expect(d.upload(MODEL, name="mlp-one", version="1.0"), 200, "re-upload")
    eq(r.json["id"], first["id"], "id on re-upload")
    eq(r.json["size"], len(MODEL), "size on re-upload")
    eq(snapshot(d), before, "store after re-upload")


@test
def test_digest_headers_that_match_are_accepted():
    d = D()
    a = make_mlp(seed=3)
    r = expect(d.upload(a, name="dg", headers={"X-Content-SHA256": sha256_hex(a)}), 201, "X-Content-SHA256")
    eq(r.json["id"], "sha256:" + sha256_hex(a), "id")
    b = make_mlp(seed=4)
    r = expect(d.upload(b, name="dg", headers={"Digest": digest_header(b)}), 201, "Digest sha-256")
    eq(r.json["id"], "sha256:" + sha256_hex(b), "id")
    # algorithm names are case-insensitive (RFC 3230), and hex may come in upper case
    c = make_mlp(seed=41)
    expect(d.upload(c, name="dg", headers={"Digest": "SHA-256=" + digest_header(c).split("=", 1)[1]}), 201,
           "Digest SHA-256")
    c = make_mlp(seed=42)
    expect(d.upload(c, name="dg", headers={"X-Content-SHA256": sha256_hex(c).upper()}), 201, "upper-case hex")
    # RFC 9530 Content-Digest (documented in openapi.yaml)
    c = make_mlp(seed=43)
    cd = "sha-256=:" + digest_header(c).split("=", 1)[1] + ":"
    expect(d.upload(c, name="dg", headers={"Content-Digest": cd}), 201, "Content-Digest")


@test
def test_digest_mismatch_is_400_and_nothing_kept():
    d = D()
    data = make_mlp(seed=5)
    before = snapshot(d)
    wrong = sha256_hex(b"something else")
    expect_error(d.upload(data, headers={"X-Content-SHA256": wrong}), 400, "digest_mismatch",
                 what="X-Content-SHA256 mismatch")
    expect_nothing_stored(d, before, "X-Content-SHA256 mismatch")
    expect_error(d.upload(data, headers={"Digest": digest_header(b"other bytes")}), 400,
                 "digest_mismatch", what="Digest mismatch")
    expect_nothing_stored(d, before, "Digest mismatch")
    cd = "sha-256=:" + digest_header(b"other bytes").split("=", 1)[1] + ":"
    expect_error(d.upload(data, headers={"Content-Digest": cd}), 400, "digest_mismatch",
                 what="Content-Digest mismatch")
    expect_nothing_stored(d, before, "Content-Digest mismatch")
    # one right and one wrong header: still a mismatch
    expect_error(d.upload(data, headers={"X-Content-SHA256": sha256_hex(data), "Digest": digest_header(b"x")}),
                 400, "digest_mismatch", what="X-Content-SHA256 right, Digest wrong")
    expect_nothing_stored(d, before, "mixed digests")
    # a malformed digest value is a bad request, not silently ignored
    r = d.upload(data, headers={"X-Content-SHA256": "not-hex"})
    expect_error(r, 400, what="malformed X-Content-SHA256")
    expect_nothing_stored(d, before, "malformed X-Content-SHA256")
    check(not os.path.exists(d.blob_path("sha256:" + sha256_hex(data))), "blob of refused upload exists")


@test
def test_content_length_over_limit_is_413_before_the_body():
    d = SMALL()
    before = snapshot(d)
    t0 = time.time()
    # headers only: the body is never sent, so a server waiting for it would time out instead
    req = ("POST /v1/models?name=big HTTP/1.1\r\nHost: 127.0.0.1\r\n%s"
           "Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n"
           % (d.auth_header(), LIMIT + 1)).encode()
    resp = d.raw(req, shutdown=False, timeout=5)
    took = time.time() - t0
    check(resp.startswith(b"HTTP/1.1 413"), "want 413 before the body, got %r" % resp[:200])
    check(took < 4, "413 took %.1fs (server waited for the body?)" % took)
    check(b'"too_large"' in resp or b"too_large" in resp, "413 body lacks code too_large: %r" % resp[-300:])
    expect_nothing_stored(d, before, "oversize Content-Length")
    # a model under the limit is still accepted by the same daemon
    small = make_mlp(seed=6, sizes=(16, 32, 4))
    check(len(small) < LIMIT, "test model too big")
    expect(d.upload(small), 201, "upload under the limit")
    # and a real oversize upload through http.client is refused too
    big = make_mlp(seed=6, sizes=(256, 128, 4))
    check(len(big) > LIMIT, "test model too small")
    expect_error(d.upload(big), 413, "too_large", what="oversize upload")


@test
def test_concurrent_uploads_of_the_same_bytes():
    import threading
    d = D()
    data = make_mlp(seed=31)
    res = []
    lock = threading.Lock()

    def up():
        r = d.upload(data, name="race")
        with lock:
            res.append((r.status, r.json.get("id") if r.status in (200, 201) else r.body[:200]))
    ths = [threading.Thread(target=up) for _ in range(8)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(30)
    statuses = sorted(s for s, _ in res)
    eq(statuses, [200] * 7 + [201], "statuses of 8 concurrent identical uploads")
    eq({i for _, i in res}, {"sha256:" + sha256_hex(data)}, "ids")
    eq([m["id"] for m in d.all_models(name="race")], ["sha256:" + sha256_hex(data)], "rows")
    eq(file_sha256(d.blob_path("sha256:" + sha256_hex(data))), sha256_hex(data), "blob")
    eq(d.tmp_files(), [], "tmp/ after the race")


@test
def test_delete_racing_reupload_stays_consistent():
    import threading
    d = D()
    data = make_mlp(seed=32)
    mid = "sha256:" + sha256_hex(data)
    for i in range(20):
        expect(d.upload(data, name="flip"), (200, 201))
        out = {}
        t1 = threading.Thread(target=lambda: out.setdefault("del", d.delete("/v1/models/" + mid)))
        t2 = threading.Thread(target=lambda: out.setdefault("up", d.upload(data, name="flip")))
        t1.start()
        t2.start()
        t1.join(30)
        t2.join(30)
        check(out["del"].status in (204, 404), "delete: %r" % out["del"])
        check(out["up"].status in (200, 201), "upload: %r" % out["up"])
        g = d.get("/v1/models/" + mid)
        c = d.get("/v1/models/%s/content" % mid)
        if g.status == 200:
            eq(c.status, 200, "round %d: model listed but content" % i)
            check(c.body == data, "round %d: content differs" % i)
        else:
            eq((g.status, c.status), (404, 404), "round %d: model/content" % i)
        # an acknowledged upload that was not followed by a delete must be readable
        if out["up"].status in (200, 201) and g.status == 404:
            # allowed only when the delete came after the upload was acknowledged; the upload
            # must then be gone completely, blob included
            check(not os.path.exists(d.blob_path(mid)), "round %d: row gone but blob kept" % i)
    listed = {m["id"].split(":")[1] for m in d.all_models()}
    blobs = {os.path.basename(k) for k in d.blob_files()}
    eq(sorted(blobs - listed), [], "blob files with no model row")
    eq(sorted(listed - blobs), [], "model rows with no blob file")


@test
def test_list_filters_by_name_and_paginates_with_cursor():
    d = D()
    ids = []
    for i in range(5):
        ids.append(d.upload_ok(make_mlp(seed=100 + i, sizes=(8, 8, 2)), name="pager", version=str(i))["id"])
        time.sleep(0.002)
    d.upload_ok(make_mlp(seed=120, sizes=(8, 8, 2)), name="other")
    seen, cursor, pages = [], None, []
    while True:
        q = {"name": "pager", "limit": 2}
        if cursor:
            q["cursor"] = cursor
        r = expect(d.get("/v1/models", query=q), 200, "list page")
        items, cursor = list_items(r.json)
        pages.append(len(items))
        seen += items
        if not cursor:
            break
        check(len(pages) < 10, "pagination does not end")
    eq(pages, [2, 2, 1], "page sizes")
    eq(len({m["id"] for m in seen}), 5, "distinct ids across pages")
    eq({m["id"] for m in seen}, set(ids), "ids listed under name=pager")
    check(all(m["name"] == "pager" for m in seen), "name filter leaked other names")
    eq([m["id"] for m in seen], list(reversed(ids)), "newest first")
    allm = d.all_models()
    check(len(allm) >= 6 and any(m["name"] == "other" for m in allm), "unfiltered list incomplete")
    r = expect(d.get("/v1/models", query={"name": "no-such-name"}), 200)
    eq(list_items(r.json)[0], [], "unknown name lists nothing")


@test
def test_get_by_id_and_unknown_id():
    d = D()
    up = d.upload_ok(MODEL, name="mlp-one", version="1.0")
    r = expect(d.get("/v1/models/" + up["id"]), 200, "GET model")
    eq(r.json, up, "GET model equals the upload answer")
    expect_error(d.get("/v1/models/sha256:" + "0" * 64), 404, "not_found", what="unknown model")
    expect_error(d.get("/v1/models/sha256:" + "0" * 64 + "/content"), 404, "not_found", what="unknown content")


@test
def test_content_download_is_byte_exact_with_strong_etag():
    d = D()
    up = d.upload_ok(MODEL)
    r = expect(d.get(up["content_url"]), 200, "content")
    check(r.body == MODEL, "content differs from the upload (%d vs %d bytes)" % (len(r.body), len(MODEL)))
    eq(r.header("Content-Type"), "application/octet-stream", "Content-Type")
    eq(r.header("ETag"), '"%s"' % sha256_hex(MODEL), "ETag")
    eq(r.header("Content-Length"), str(len(MODEL)), "Content-Length")


@test
def test_streamed_upload_of_a_32mb_model_from_disk():
    d = D()
    path = write_big_mlp()
    hexd = file_sha256(path)
    r = expect(d.upload(path, name="big"), 201, "big upload")
    eq(r.json["id"], "sha256:" + hexd, "id")
    eq(r.json["param_count"], 2048 * 4096 + 4096 + 4096 * 16 + 16, "param_count")
    r = expect(d.get(r.json["content_url"]), 200)
    eq(sha256_hex(r.body), hexd, "downloaded digest")


def vm_hwm_kib(pid):
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM for pid %d" % pid)


@test
def test_upload_and_download_of_128mb_do_not_hold_the_model_in_memory():
    # the issue: bodies are streamed to disk and content is served from the file; the peak RSS
    # of the daemon must not grow by anything near the model's size (goal for 1 GiB: < 32 MiB)
    d = Daemon(name="moptd-rss").start()
    try:
        path = write_big_mlp(rows=4096, cols=8192, seed=9)
        size = os.path.getsize(path)
        expect(d.upload(make_mlp(seed=99), name="warm-up"), 201)
        h0 = vm_hwm_kib(d.proc.pid)
        r = expect(d.upload(path, name="big128"), 201, "128 MB upload")
        h1 = vm_hwm_kib(d.proc.pid)
        r = expect(d.get(r.json["content_url"]), 200, "128 MB download")
        eq(len(r.body), size, "downloaded size")
        h2 = vm_hwm_kib(d.proc.pid)
        print("# peak RSS: %d KiB before, +%d KiB after upload, +%d KiB after download of %d MiB"
              % (h0, h1 - h0, h2 - h1, size >> 20))
        check(h1 - h0 < 32 * 1024, "upload of %d MiB grew peak RSS by %d MiB" % (size >> 20, (h1 - h0) >> 10))
        check(h2 - h1 < 16 * 1024, "download of %d MiB grew peak RSS by %d MiB" % (size >> 20, (h2 - h1) >> 10))
    finally:
        d.stop()


@test
def test_if_none_match_gives_304():
    d = D()
    up = d.upload_ok(MODEL)
    etag = '"%s"' % sha256_hex(MODEL)
    r = expect(d.get(up["content_url"], headers={"If-None-Match": etag}), 304, "matching If-None-Match")
    eq(r.body, b"", "304 body")
    eq(r.header("ETag"), etag, "ETag on 304")
    r = expect(d.get(up["content_url"], headers={"If-None-Match": '"%s"' % ("0" * 64)}), 200,
               "other If-None-Match")
    check(r.body == MODEL, "body on 200")
    expect(d.get(up["content_url"], headers={"If-None-Match": 'W/"x", ' + etag}), 304, "list If-None-Match")


@test
def test_range_requests():
    d = D()
    up = d.upload_ok(MODEL)
    n = len(MODEL)
    url = up["content_url"]
    cases = [("bytes=0-99", 0, 99), ("bytes=100-", 100, n - 1), ("bytes=-50", n - 50, n - 1),
             ("bytes=%d-%d" % (n - 10, n + 1000), n - 10, n - 1), ("bytes=5-5", 5, 5)]
    for rng, a, b in cases:
        r = expect(d.get(url, headers={"Range": rng}), 206, rng)
        check(r.body == MODEL[a:b + 1], "%s: wrong bytes (%d bytes)" % (rng, len(r.body)))
        eq(r.header("Content-Range"), "bytes %d-%d/%d" % (a, b, n), rng + " Content-Range")
        eq(r.header("Content-Length"), str(b - a + 1), rng + " Content-Length")
        eq(r.header("ETag"), '"%s"' % sha256_hex(MODEL), rng + " ETag")
    for rng in ("bytes=%d-" % n, "bytes=%d-%d" % (n + 5, n + 10)):
        r = expect(d.get(url, headers={"Range": rng}), 416, rng)
        eq(r.header("Content-Range"), "bytes */%d" % n, rng + " Content-Range on 416")


@test
def test_if_range_with_right_and_wrong_etag():
    d = D()
    up = d.upload_ok(MODEL)
    url = up["content_url"]
    etag = '"%s"' % sha256_hex(MODEL)
    r = expect(d.get(url, headers={"Range": "bytes=10-19", "If-Range": etag}), 206, "If-Range right")
    check(r.body == MODEL[10:20], "If-Range right: bytes")
    r = expect(d.get(url, headers={"Range": "bytes=10-19", "If-Range": '"%s"' % ("f" * 64)}), 200,
               "If-Range wrong")
    check(r.body == MODEL, "If-Range wrong: must send the whole file")


@test
def test_head_requests():
    d = D()
    up = d.upload_ok(MODEL)
    r = expect(d.request("HEAD", up["content_url"]), 200, "HEAD content")
    eq(r.body, b"", "HEAD body")
    eq(r.header("Content-Length"), str(len(MODEL)), "HEAD Content-Length")
    eq(r.header("ETag"), '"%s"' % sha256_hex(MODEL), "HEAD ETag")
    expect(d.request("HEAD", "/v1/models/" + up["id"]), 200, "HEAD model")
    expect(d.request("HEAD", "/v1/models/sha256:" + "1" * 64), 404, "HEAD unknown model")


@test
def test_delete_then_404_and_blob_removed():
    d = D()
    data = make_mlp(seed=7)
    up = expect(d.upload(data, name="doomed"), 201).json
    blob = d.blob_path(up["id"])
    check(os.path.exists(blob), "blob present before delete")
    r = expect(d.delete("/v1/models/" + up["id"]), 204, "DELETE")
    eq(r.body, b"", "204 body")
    expect_error(d.get("/v1/models/" + up["id"]), 404, "not_found", what="GET after delete")
    expect_error(d.get(up["content_url"]), 404, "not_found", what="content after delete")
    expect_error(d.delete("/v1/models/" + up["id"]), 404, "not_found", what="second DELETE")
    check(up["id"] not in {m["id"] for m in d.all_models()}, "deleted model still listed")
    check(not os.path.exists(blob), "blob file still on disk after delete")
    expect(d.upload(data, name="doomed"), 201, "upload again after delete")


@test
def test_delete_while_a_job_refers_is_409():
    d = D()
    data = make_mlp(seed=8)
    up = expect(d.upload(data), 201).json
    job = d.submit({"model": up["id"], "passes": [{"op": "prune", "sparsity": 0.5}]})
    expect_error(d.delete("/v1/models/" + up["id"]), 409, "conflict", what="DELETE referenced model")
    expect(d.get("/v1/models/" + up["id"]), 200, "model still there")
    r = expect(d.get(up["content_url"]), 200)
    check(r.body == data, "content intact after refused delete")
    d.wait_job(job["id"])
    expect_error(d.delete("/v1/models/" + up["id"]), 409, "conflict", what="DELETE after the job ended")


if __name__ == "__main__":
    run()
