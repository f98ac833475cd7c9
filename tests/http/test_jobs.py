#!/usr/bin/python3
"""test_jobs.py — /v1/jobs over real HTTP: lifecycle with the real `mopt worker`, output
registered as a model and reusable, ETag/304, long-poll timing, cancel (queued at once, running
within 1 s), dedup of a repeated spec, 429 when the queue is full, list filters + cursors, and
4 workers x 20 jobs.

Daemon-side mechanics whose timing must be controlled (long-poll on a change, cancel of a running
job, queue full) also run against a stub worker (harness.STUB_WORKER, a contract-following test
double that really loads/saves the model) so they do not depend on the core's speed; the cancel
of a running job is also tested with the real worker on a heavy k-means spec."""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Daemon, Skip, check, eq, expect, expect_error, generated_models, lazy, list_items, make_mlp,
                     run, sha256_hex, stub_worker, test, write_big_mlp, JOB_ID, MODEL_ID,
                     RFC3339_MS, TERMINAL)

D = lazy(lambda: Daemon(workers=4, name="moptd").start())


def _stub():
    d = Daemon(workers=1, args=["--max-queued-jobs", "2"], name="moptd-stub")
    d.mopt = stub_worker(d.tmp, 30)
    return d.start()


S = lazy(_stub)
PRUNE = [{"op": "prune", "sparsity": 0.5}]
_models = {}


def model_on(d, seed, sizes=(64, 128, 16)):
    key = (id(d), seed, sizes)
    if key not in _models:
        _models[key] = d.upload_ok(make_mlp(seed=seed, sizes=sizes), name="jobs-%d" % seed)["id"]
    return _models[key]


def cancel_all(d):
    for j in d.all_jobs():
        if j["state"] not in TERMINAL:
            d.post("/v1/jobs/%s/cancel" % j["id"])
    for j in d.all_jobs():
        if j["state"] not in TERMINAL:
            d.wait_job(j["id"], timeout=10)


def wait_running(d, jid, timeout=20):
    j = d.wait_job(jid, ("running",) + TERMINAL, timeout)
    eq(j["state"], "running", "state of %s" % jid)
    return j


def check_job_json(j):
    for k in ("id", "state", "progress", "step", "created", "started", "finished", "model", "spec",
              "output", "report", "error"):
        check(k in j, "job JSON lacks %r: %r" % (k, j))
    check(JOB_ID.match(j["id"]), "job id format %r" % j["id"])
    check(j["state"] in ("queued", "running") + TERMINAL, "state %r" % j["state"])
    check(isinstance(j["progress"], (int, float)) and 0 <= j["progress"] <= 1, "progress %r" % j["progress"])
    check(RFC3339_MS.match(j["created"] or ""), "created %r" % j["created"])
    for k in ("started", "finished"):
        check(j[k] is None or RFC3339_MS.match(j[k]), "%s %r" % (k, j[k]))
    check(isinstance(j["spec"], dict), "spec is not an embedded object: %r" % (j["spec"],))
    check("model" not in j["spec"], "normalized spec keeps 'model': %r" % j["spec"])


@test
def test_lifecycle_output_registered_and_reusable():
    import onnx
    d = D()
    mid = model_on(d, 1)
    r = expect(d.post("/v1/jobs", {"model": mid, "passes": PRUNE}), 202, "submit")
    j = r.json
    check_job_json(j)
    eq(r.header("Location"), "/v1/jobs/" + j["id"], "Location")
    eq(j["model"], mid, "model")
    check(j["state"] in ("queued", "running"), "fresh job state %r" % j["state"])
    eq(j["output"], None, "output before running")
    eq(j["error"], None, "error before running")
    eq(j["finished"], None, "finished before running")
    eq(j["spec"]["passes"][0]["op"], "prune", "spec op")
    eq(j["spec"]["passes"][0]["sparsity"], 0.5, "spec sparsity")
    # the normalized spec has every default filled in (job_spec.h)
    check("seed" in j["spec"] and "select" in j["spec"], "spec defaults missing: %r" % j["spec"])
    check(len(j["spec"]["passes"][0]) > 2, "pass defaults missing: %r" % j["spec"]["passes"][0])
    j = d.wait_job(j["id"], timeout=60)
    check_job_json(j)
    eq(j["state"], "succeeded", "final state (error: %r)" % (j.get("error"),))
    eq(j["progress"], 1, "progress when done")
    check(j["created"] <= j["started"] <= j["finished"], "created <= started <= finished: %r" % j)
    check(MODEL_ID.match(j["output"] or ""), "output id %r" % j["output"])
    check(j["output"] != mid, "output equals the input (nothing was done)")
    check(isinstance(j["report"], dict), "report is not an object: %r" % (j["report"],))
    eq(j["error"], None, "error of a succeeded job")
    out = expect(d.get("/v1/models/" + j["output"]), 200, "output model").json
    eq(out["parent"], mid, "output parent")
    eq(out["job"], j["id"], "output job")
    data = expect(d.get(out["content_url"]), 200, "output content").body
    eq("sha256:" + sha256_hex(data), out["id"], "output digest")
    eq(len(data), out["size"], "output size")
    m = onnx.load_from_string(data)
    onnx.checker.check_model(m)
    # the output is an input like any other
    j2 = d.submit({"model": out["id"], "passes": [{"op": "quantize", "dtype": "int8"}]}, 202)
    j2 = d.wait_job(j2["id"], timeout=60)
    eq(j2["state"], "succeeded", "second job state (error: %r)" % (j2.get("error"),))
    out2 = expect(d.get("/v1/models/" + j2["output"]), 200).json
    eq(out2["parent"], out["id"], "second output parent")
    onnx.checker.check_model(onnx.load_from_string(expect(d.get(out2["content_url"]), 200).body))


@test
def test_job_etag_and_304():
    d = D()
    j = d.submit({"model": model_on(d, 1), "passes": PRUNE})
    j = d.wait_job(j["id"])
    r = expect(d.get("/v1/jobs/" + j["id"]), 200)
    etag = r.header("ETag")
    check(etag and etag.startswith('"%s.' % j["id"]) and etag.endswith('"'), "job ETag %r" % etag)
    r = expect(d.get("/v1/jobs/" + j["id"], headers={"If-None-Match": etag}), 304, "If-None-Match")
    eq(r.body, b"", "304 body")
    expect(d.get("/v1/jobs/" + j["id"], headers={"If-None-Match": '"%s.0"' % j["id"]}), 200,
           "stale If-None-Match")
    expect_error(d.get("/v1/jobs/job_" + "0" * 26), 404, "not_found", what="unknown job")


@test
def test_repeat_of_same_spec_returns_the_same_job():
    d = D()
    mid = model_on(d, 2)
    j = d.submit({"model": mid, "passes": PRUNE, "seed": 0}, 202)
    j = d.wait_job(j["id"])
    eq(j["state"], "succeeded", "first run")
    n_before = len(d.all_jobs(model=mid))
    # same spec, keys in another order and other whitespace: the normalized spec is the same
    body = '{ "seed" : 0, "passes":[ {"sparsity":0.5, "op":"prune"} ],\n "model":"%s" }' % mid
    r = expect(d.post("/v1/jobs", body, headers={"Content-Type": "application/json"}), 200, "repeat")
    eq(r.json["id"], j["id"], "repeat job id")
    eq(r.json["state"], "succeeded", "repeat state")
    eq(r.json["output"], j["output"], "repeat output")
    eq(r.json["finished"], j["finished"], "repeat finished (recomputed?)")
    eq(len(d.all_jobs(model=mid)), n_before, "jobs of the model after the repeat")
    time.sleep(0.3)
    with d.lock:
        starts = [l for l in d.jlines if l.get("event") == "job_started" and j["id"] in str(l)]
    check(len(starts) <= 1, "the job's worker started %d times (recomputed?)" % len(starts))
    # a different spec is a new job
    r = expect(d.post("/v1/jobs", {"model": mid, "passes": [{"op": "prune", "sparsity": 0.25}]}), 202,
               "different spec")
    check(r.json["id"] != j["id"], "different spec got the same job")
    d.wait_job(r.json["id"])


@test
def test_long_poll_times_out_after_wait_seconds():
    d = S()
    mid = model_on(d, 1)
    a = d.submit({"model": mid, "passes": PRUNE, "seed": 51}, 202)
    wait_running(d, a["id"])
    b = d.submit({"model": mid, "passes": PRUNE, "seed": 52}, 202)   # queued: will not change
    etag = expect(d.get("/v1/jobs/" + b["id"]), 200).header("ETag")
    t0 = time.time()
    r = d.get("/v1/jobs/%s?wait=2" % b["id"], headers={"If-None-Match": etag}, timeout=20)
    took = time.time() - t0
    expect(r, (200, 304), "long-poll without change")
    check(1.8 <= took <= 3.0, "?wait=2 on a queued job without a change returned after %.2fs" % took)
    if r.status == 200:
        eq(r.json["state"], "queued", "state after a long-poll without change")
    # without a wait the answer is immediate
    t0 = time.time()
    expect(d.get("/v1/jobs/" + b["id"], headers={"If-None-Match": etag}), 304)
    check(time.time() - t0 < 0.5, "plain GET slow")
    # a terminal job cannot change: ?wait answers at once
    expect(d.post("/v1/jobs/%s/cancel" % b["id"]), (200, 202))
    t0 = time.time()
    expect(d.get("/v1/jobs/%s?wait=5" % b["id"]), 200)
    check(time.time() - t0 < 1.0, "?wait on a terminal job blocked %.2fs" % (time.time() - t0))
    cancel_all(d)


@test
def test_long_poll_returns_soon_after_a_change_and_cancel_of_queued_is_immediate():
    d = S()
    mid = model_on(d, 1)
    a = d.submit({"model": mid, "passes": PRUNE, "seed": 101}, 202)
    wait_running(d, a["id"])
    b = d.submit({"model": mid, "passes": PRUNE, "seed": 102}, 202)
    eq(d.job(b["id"])["state"], "queued", "second job with one busy worker")
    etag = expect(d.get("/v1/jobs/" + b["id"]), 200).header("ETag")
    res = {}

    def poll():
        t0 = time.time()
        res["r"] = d.get("/v1/jobs/%s?wait=10" % b["id"], headers={"If-None-Match": etag}, timeout=30)
        res["t"] = time.time()
        res["t0"] = t0
    th = threading.Thread(target=poll)
    th.start()
    time.sleep(1.0)
    check("r" not in res, "long-poll returned before any change: %r" % res.get("r"))
    t_cancel = time.time()
    r = expect(d.post("/v1/jobs/%s/cancel" % b["id"]), (200, 202), "cancel queued")
    t_cancelled = time.time()
    eq(r.json["state"], "cancelled", "a queued job is cancelled at once (answer of cancel)")
    th.join(15)
    check("r" in res, "long-poll did not return")
    expect(res["r"], 200, "long-poll after change")
    eq(res["r"].json["state"], "cancelled", "long-poll result")
    lag = res["t"] - t_cancelled
    check(lag < 0.5, "long-poll returned %.2fs after the change" % lag)
    check(res["t"] - t_cancel < 1.5, "long-poll slow")
    # cancelling a terminal job is a conflict
    expect_error(d.post("/v1/jobs/%s/cancel" % b["id"]), 409, what="cancel of a cancelled job")
    cancel_all(d)


@test
def test_cancel_of_running_job_within_one_second_stub_worker():
    d = S()
    mid = model_on(d, 1)
    a = d.submit({"model": mid, "passes": PRUNE, "seed": 201}, 202)
    wait_running(d, a["id"])
    b = d.submit({"model": mid, "passes": PRUNE, "seed": 202}, 202)
    time.sleep(0.3)
    t0 = time.time()
    expect(d.post("/v1/jobs/%s/cancel" % a["id"]), (200, 202), "cancel running")
    j = d.wait_job(a["id"], TERMINAL, timeout=5)
    took = time.time() - t0
    eq(j["state"], "cancelled", "state after cancel")
    check(took <= 1.0, "running job cancelled after %.2fs (want within 1 s)" % took)
    eq(j["output"], None, "output of a cancelled job")
    # the worker slot is free again: the queued job starts
    wait_running(d, b["id"], timeout=5)
    cancel_all(d)


@test
def test_cancel_of_running_job_within_one_second_real_worker():
    d = Daemon(workers=1, name="moptd-heavy").start()
    try:
        path = write_big_mlp()
        mid = expect(d.upload(path, name="big"), 201).json["id"]
        j = d.submit({"model": mid, "passes": [{"op": "cluster", "clusters": 256}]}, 202)
        j = d.wait_job(j["id"], ("running",) + TERMINAL, 30)
        if j["state"] == "succeeded":
            raise Skip("the heavy spec succeeded before it was seen running")
        eq(j["state"], "running", "heavy job state (error %r)" % (j.get("error"),))
        time.sleep(0.5)
        if d.job(j["id"])["state"] != "running":
            raise Skip("heavy job finished within 0.5 s")
        t0 = time.time()
        expect(d.post("/v1/jobs/%s/cancel" % j["id"]), (200, 202), "cancel running")
        j = d.wait_job(j["id"], TERMINAL, 10)
        took = time.time() - t0
        eq(j["state"], "cancelled", "state after cancel")
        check(took <= 1.0, "running job cancelled after %.2fs (want within 1 s)" % took)
    finally:
        d.stop()


@test
def test_queue_full_is_429_with_retry_after():
    d = S()
    mid = model_on(d, 1)
    a = d.submit({"model": mid, "passes": PRUNE, "seed": 301}, 202)
    wait_running(d, a["id"])
    accepted = []
    r = None
    for i in range(6):
        r = d.post("/v1/jobs", {"model": mid, "passes": PRUNE, "seed": 310 + i})
        if r.status != 202:
            break
        accepted.append(r.json["id"])
    e = expect_error(r, 429, "busy", what="submit past --max-queued-jobs 2")
    eq(len(accepted), 2, "jobs accepted while one runs and the queue holds 2")
    ra = r.header("Retry-After")
    check(ra is not None and ra.isdigit() and int(ra) >= 1, "Retry-After %r" % ra)
    check(e["message"], "message")
    # once a queued job is cancelled there is room again
    expect(d.post("/v1/jobs/%s/cancel" % accepted[0]), (200, 202))
    expect(d.post("/v1/jobs", {"model": mid, "passes": PRUNE, "seed": 399}), 202, "after room freed")
    cancel_all(d)


@test
def test_list_jobs_filters_and_pagination():
    d = D()
    m1, m2 = model_on(d, 11), model_on(d, 12)
    ids = []
    for i in range(3):
        ids.append(d.submit({"model": m1, "passes": [{"op": "prune", "sparsity": 0.1 * (i + 1)}]}, 202)["id"])
    ids.append(d.submit({"model": m2, "passes": PRUNE}, 202)["id"])
    for jid in ids:
        d.wait_job(jid)
    alljobs = d.all_jobs()
    jids = [j["id"] for j in alljobs]
    eq(len(jids), len(set(jids)), "duplicate jobs across pages")
    eq(jids, sorted(jids, reverse=True), "newest first")
    # pagination with a small page size gives the same sequence
    seen, cursor, pages = [], None, 0
    while True:
        q = {"limit": 2}
        if cursor:
            q["cursor"] = cursor
        items, cursor = list_items(expect(d.get("/v1/jobs", query=q), 200).json)
        check(len(items) <= 2, "page larger than limit")
        seen += [j["id"] for j in items]
        pages += 1
        if not cursor:
            break
        check(pages < 100, "pagination does not end")
    eq(seen, jids, "paged listing")
    check(pages >= 2, "only one page with limit=2")
    by_model = [j for j in d.all_jobs(model=m1)]
    eq(sorted(j["id"] for j in by_model), sorted(ids[:3]), "model filter")
    succ = d.all_jobs(state="succeeded")
    check(all(j["state"] == "succeeded" for j in succ), "state filter leaked")
    check(set(ids) <= {j["id"] for j in succ}, "succeeded jobs missing from state=succeeded")
    eq(d.all_jobs(state="queued", model=m2), [], "state+model filter")
    expect_error(d.get("/v1/jobs", query={"state": "bogus"}), 400, what="unknown state filter")


@test
def test_every_generated_model_optimizes_through_the_daemon():
    import onnx
    d = D()
    outdir = generated_models()
    jobs = {}
    for f in sorted(os.listdir(outdir)):
        if not f.endswith(".onnx"):
            continue
        data = open(os.path.join(outdir, f), "rb").read()
        mid = d.upload_ok(data, name="gen-" + f[:-5])["id"]
        spec = {"model": mid, "passes": [{"op": "prune", "sparsity": 0.5}, {"op": "quantize", "dtype": "int8"}]}
        jobs[f] = d.submit(spec)["id"]
    bad = []
    for f, jid in jobs.items():
        j = d.wait_job(jid, timeout=60)
        if j["state"] != "succeeded":
            bad.append("%s: %s %r" % (f, j["state"], j["error"]))
            continue
        out = expect(d.get("/v1/models/%s/content" % j["output"]), 200).body
        try:
            m = onnx.load_from_string(out)
            if m.opset_import[0].version <= 17 and m.ir_version <= 8:
                onnx.checker.check_model(m)
        except Exception as e:
            bad.append("%s: output does not load/check: %s" % (f, e))
    check(jobs, "no generated models")
    eq(bad, [], "generated models whose job failed")


@test
def test_four_workers_twenty_jobs():
    d = D()
    mids = [model_on(d, 500 + i, sizes=(128, 256, 16)) for i in range(20)]
    t0 = time.time()
    jobs = [d.submit({"model": m, "passes": [{"op": "quantize", "dtype": "int8"}]}, 202)["id"]
            for m in mids]
    max_running = 0
    while True:
        states = {}
        for j in d.all_jobs():
            if j["id"] in jobs:
                states[j["id"]] = j["state"]
        running = sum(1 for s in states.values() if s == "running")
        max_running = max(max_running, running)
        if all(s in TERMINAL for s in states.values()) and len(states) == 20:
            break
        check(time.time() - t0 < 90, "20 jobs not done after 90 s: %r" % states)
        time.sleep(0.05)
    check(max_running <= 4, "%d jobs ran at once with --workers 4" % max_running)
    bad = {j: s for j, s in states.items() if s != "succeeded"}
    eq(bad, {}, "jobs that did not succeed")
    outs = {d.job(j)["output"] for j in jobs}
    eq(len(outs), 20, "distinct outputs")
    print("# 20 jobs on 4 workers took %.2fs, max running seen %d" % (time.time() - t0, max_running))


if __name__ == "__main__":
    run()
