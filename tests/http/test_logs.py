#!/usr/bin/python3
"""test_logs.py — moptd's stderr: every line a JSON object; one line per request with a request
id, the route, the status and the duration; job events (queued/started/finished) logged with the
job id."""
import hashlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, check, eq, expect, lazy, make_mlp, run, test

D = lazy(lambda: Daemon(name="moptd-logs").start())
RID_KEYS = ("request_id", "req_id", "rid", "reqid")


def rid_of(j):
    for k in RID_KEYS:
        if k in j:
            return j[k]
    return None


def duration_of(j):
    for k, v in j.items():
        if k.startswith("duration") or k in ("dur_ms", "elapsed_ms", "ms", "latency_ms"):
            return v
    return None


def request_lines(d):
    with d.lock:
        return [j for j in d.jlines if "status" in j and ("route" in j or "path" in j)]


def settle(d, n_before, want, timeout=3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(request_lines(d)) >= n_before + want:
            break
        time.sleep(0.05)
    return request_lines(d)[n_before:]


@test
def test_every_stderr_line_is_json():
    d = D()
    d.get("/v1/models")
    d.get("/v1/nope")
    time.sleep(0.3)
    with d.lock:
        bad = [l for l in d.lines if l.strip() and not l.lstrip().startswith("{")]
        n = len(d.lines)
    eq(bad, [], "non-JSON stderr lines")
    eq(len(d.jlines), n, "lines that did not decode as JSON objects")


@test
def test_request_lines_have_id_route_status_duration():
    d = D()
    n0 = len(request_lines(d))
    r1 = expect(d.get("/v1/models"), 200)
    r2 = expect(d.get("/v1/models/sha256:" + "0" * 64), 404)
    r3 = expect(d.request("PUT", "/v1/models"), 405)
    lines = settle(d, n0, 3)
    check(len(lines) >= 3, "want 3 request log lines, got %r" % lines)
    # lines are written when a request completes, possibly on different threads: match them to
    # the responses by the X-Request-Id header when the daemon sends one, else by path+status
    rids = []
    for resp, status, path, routes in ((r1, 200, "/v1/models", ("models_list", "/v1/models")),
                                      (r2, 404, "/v1/models/sha256:" + "0" * 64, ("models_get", "/v1/models/{id}")),
                                      (r3, 405, "/v1/models", None)):
        hdr = resp.header("X-Request-Id")
        if hdr:
            cand = [j for j in lines if str(rid_of(j)) == hdr]
            check(cand, "no log line with the request id %s of the response (X-Request-Id)" % hdr)
        else:
            cand = [j for j in lines if j.get("status") == status and j.get("path", path) == path]
            check(cand, "no log line for %s %d: %r" % (path, status, lines))
        j = cand[0]
        rid = rid_of(j)
        check(rid, "request line without a request id: %r" % j)
        rids.append(rid)
        check("route" in j, "request line without route: %r" % j)
        eq(j["status"], status, "status in %r" % j)
        dur = duration_of(j)
        check(isinstance(dur, (int, float)) and dur >= 0, "request line without a numeric duration: %r" % j)
        if routes:
            check(j["route"] in routes, "route of %s: %r" % (path, j))
    eq(len(set(map(str, rids))), 3, "request ids distinct")


def job_lines(d, jid):
    with d.lock:
        return [l for l in d.jlines if any(jid in str(v) for v in l.values())]


@test
def test_job_events_are_logged():
    d = D()
    data = make_mlp(seed=5)
    expect(d.upload(data, name="logged"), 201)
    mid = "sha256:" + hashlib.sha256(data).hexdigest()
    job = d.submit({"model": mid, "passes": [{"op": "prune", "sparsity": 0.5}]}, 202)
    j = d.wait_job(job["id"])
    time.sleep(0.3)
    ev = [l for l in job_lines(d, job["id"]) if l.get("event") != "request"]
    check(len(ev) >= 2, "want at least 2 job event lines for %s (start, end), got %r" % (job["id"], ev))
    check(any(j["state"] in str(l.get("event", "")) or l.get("state") == j["state"] for l in ev),
          "no job event says the job ended %s: %r" % (j["state"], ev))
    _jobs_seen.append(job["id"])


_jobs_seen = []


@test
def test_job_event_lines_carry_the_job_id_as_a_field():
    d = D()
    if not _jobs_seen:
        data = make_mlp(seed=6)
        mid = d.upload_ok(data)["id"]
        _jobs_seen.append(d.wait_job(d.submit({"model": mid, "passes": []}, 202)["id"])["id"])
        time.sleep(0.3)
    jid = _jobs_seen[0]
    ev = [l for l in job_lines(d, jid) if l.get("event") != "request"]
    check(ev, "no job event lines")
    lacking = [l for l in ev if jid not in [str(v) for v in l.values()]]
    eq(lacking, [], "job event lines with the id only inside free text (not a field such as \"job\")")


if __name__ == "__main__":
    run()
