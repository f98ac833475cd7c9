#!/usr/bin/python3
"""test_workers.py — worker processes as the daemon sees them: progress arrives over the pipe;
a worker that crashes, reports an error, prints garbage, hangs past --job-timeout-s or exceeds
--job-memory-mb fails only its job, with a clear error, and the daemon keeps serving; cancel kills
the worker process (SIGKILL after SIGTERM is ignored) within 1 s.

Most cases use the stub worker (harness.STUB_WORKER) switched into a misbehaving mode; the memory
limit uses the real `mopt worker` on an 8M-weight model."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (BUILD, Skip, Daemon, check, eq, expect, lazy, make_mlp, pid_alive, run, set_stub_mode,
                     set_stub_seconds, stub_pids, stub_worker, test, write_big_mlp, TERMINAL)


def _w():
    d = Daemon(workers=2, args=["--job-timeout-s", "6"], name="moptd-workers")
    d.mopt = stub_worker(d.tmp, 1.0)
    return d.start()


W = lazy(_w)
_seed = [1000]


def run_job(d, mode, seconds=1.0, timeout=30):
    set_stub_mode(d.tmp, mode)
    set_stub_seconds(d.tmp, seconds)
    mid = d.upload_ok(make_mlp(seed=3, sizes=(32, 64, 8)), name="w")["id"]
    _seed[0] += 1
    j = d.submit({"model": mid, "passes": [{"op": "prune", "sparsity": 0.5}], "seed": _seed[0]}, 202)
    return j


def still_serving(d):
    check(d.alive(), "moptd died; log tail:\n" + d.tail())
    expect(d.get("/healthz"), 200, "/healthz")
    j = run_job(d, "ok", 0.2)
    j = d.wait_job(j["id"], TERMINAL, 30)
    eq(j["state"], "succeeded", "a normal job afterwards (error %r)" % (j.get("error"),))


def new_pid(d, before, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        p = [x for x in stub_pids(d.tmp) if x not in before]
        if p:
            return p[0]
        time.sleep(0.02)
    raise AssertionError("the worker was not started")


@test
def test_progress_arrives_while_running():
    d = W()
    j = run_job(d, "ok", 2.5)
    j = d.wait_job(j["id"], ("running",) + TERMINAL, 10)
    eq(j["state"], "running", "state")
    time.sleep(0.8)
    a = d.job(j["id"])
    time.sleep(0.8)
    b = d.job(j["id"])
    eq(b["step"], "stub", "step from the worker's progress line")
    check(0 < a["progress"] < b["progress"] < 1, "progress does not advance: %r then %r"
          % (a["progress"], b["progress"]))
    j = d.wait_job(j["id"], TERMINAL, 15)
    eq(j["state"], "succeeded", "state (error %r)" % (j.get("error"),))
    eq(j["progress"], 1, "progress at the end")


@test
def test_crashing_worker_fails_its_job_clearly():
    d = W()
    j = d.wait_job(run_job(d, "crash")["id"], TERMINAL, 20)
    eq(j["state"], "failed", "state")
    e = j["error"]
    check(isinstance(e, dict) and e.get("code") and e.get("message"), "error object %r" % (e,))
    check("signal" in e["message"].lower() or "sigsegv" in e["message"].lower() or "crash" in e["message"].lower(),
          "error does not say the worker crashed: %r" % e)
    still_serving(d)


@test
def test_worker_error_event_is_passed_through():
    d = W()
    j = d.wait_job(run_job(d, "error")["id"], TERMINAL, 20)
    eq(j["state"], "failed", "state")
    e = j["error"]
    eq(e.get("code"), "invalid_model", "error code from the worker's error event (%r)" % e)
    check("stub refuses this model" in e.get("message", ""), "worker's message lost: %r" % e)
    eq((e.get("detail") or {}).get("where"), "stub/where", "worker's where lost (%r)" % e)
    still_serving(d)


@test
def test_worker_printing_garbage_fails_its_job():
    d = W()
    j = d.wait_job(run_job(d, "garbage")["id"], TERMINAL, 20)
    eq(j["state"], "failed", "state")
    check(j["error"] and j["error"].get("message"), "error %r" % (j["error"],))
    eq(j["output"], None, "output")
    still_serving(d)


@test
def test_hanging_worker_is_killed_at_the_job_timeout():
    d = W()
    before = stub_pids(d.tmp)
    t0 = time.time()
    j = run_job(d, "hang")
    pid = new_pid(d, before)
    j = d.wait_job(j["id"], TERMINAL, 20)
    took = time.time() - t0
    eq(j["state"], "failed", "state")
    eq(j["error"].get("code"), "timeout", "error code (%r)" % j["error"])
    check(5.5 <= took <= 11, "job with --job-timeout-s 6 failed after %.1fs" % took)
    time.sleep(0.2)
    check(not pid_alive(pid), "hung worker %d still alive" % pid)
    still_serving(d)


@test
def test_cancel_kills_a_worker_that_ignores_sigterm_within_one_second():
    d = W()
    before = stub_pids(d.tmp)
    j = run_job(d, "hang")
    pid = new_pid(d, before)
    d.wait_job(j["id"], ("running",) + TERMINAL, 5)
    time.sleep(0.2)
    t0 = time.time()
    expect(d.post("/v1/jobs/%s/cancel" % j["id"]), (200, 202), "cancel")
    j = d.wait_job(j["id"], TERMINAL, 5)
    took = time.time() - t0
    eq(j["state"], "cancelled", "state")
    check(took <= 1.0, "cancel of a SIGTERM-ignoring worker took %.2fs (want within 1 s)" % took)
    time.sleep(0.1)
    check(not pid_alive(pid), "worker %d still alive after cancel" % pid)
    still_serving(d)


@test
def test_cancel_kills_the_worker_process():
    d = W()
    before = stub_pids(d.tmp)
    j = run_job(d, "ok", 20.0)
    pid = new_pid(d, before)
    d.wait_job(j["id"], ("running",) + TERMINAL, 5)
    expect(d.post("/v1/jobs/%s/cancel" % j["id"]), (200, 202), "cancel")
    j = d.wait_job(j["id"], TERMINAL, 5)
    eq(j["state"], "cancelled", "state")
    time.sleep(0.1)
    check(not pid_alive(pid), "worker %d still alive after cancel" % pid)


@test
def test_pool_runs_exactly_n_workers_at_once_and_metrics_follow():
    import re
    d = Daemon(workers=4, name="moptd-pool")
    d.mopt = stub_worker(d.tmp, 1.5)
    d.start()
    try:
        mid = d.upload_ok(make_mlp(seed=8, sizes=(32, 64, 8)))["id"]
        t0 = time.time()
        ids = [d.submit({"model": mid, "passes": [], "seed": 700 + i}, 202)["id"] for i in range(8)]
        max_running, seen_metrics = 0, None
        while True:
            js = [j for j in d.all_jobs() if j["id"] in ids]
            running = sum(j["state"] == "running" for j in js)
            max_running = max(max_running, running)
            check(running <= 4, "%d jobs running with --workers 4" % running)
            if running == 4 and seen_metrics is None:
                m = expect(d.get("/metrics"), 200).body.decode()
                seen_metrics = m
            if all(j["state"] in TERMINAL for j in js):
                break
            check(time.time() - t0 < 30, "8 jobs of 1.5 s on 4 workers not done after 30 s")
            time.sleep(0.05)
        took = time.time() - t0
        eq(max_running, 4, "most jobs seen running at once")
        eq([j["state"] for j in d.all_jobs() if j["id"] in ids], ["succeeded"] * 8, "states")
        print("# 8 x 1.5 s stub jobs on 4 workers: %.1fs" % took)
        check(seen_metrics, "never saw 4 running")
        wr = re.search(r"^moptd_workers_running (\S+)$", seen_metrics, re.M)
        qd = re.search(r"^moptd_scheduler_queue_depth (\S+)$", seen_metrics, re.M)
        check(wr and float(wr.group(1)) == 4, "workers running metric with 4 busy: %r" % (wr and wr.group(0)))
        jq = re.search(r'^moptd_jobs\{state="queued"\} (\S+)$', seen_metrics, re.M)
        check(qd and float(qd.group(1)) >= 1, "queue depth metric while jobs wait: %r (same scrape: %r)"
              % (qd and qd.group(0), jq and jq.group(0)))
    finally:
        d.stop()


@test
def test_worker_over_memory_limit_fails_its_job():
    if "asan" in BUILD:
        raise Skip("sanitizer build: the worker cannot enforce RLIMIT_AS under AddressSanitizer")
    d = Daemon(workers=1, args=["--job-memory-mb", "64"], name="moptd-mem").start()
    try:
        mid = expect(d.upload(write_big_mlp(), name="big"), 201).json["id"]
        j = d.submit({"model": mid, "passes": [{"op": "cluster", "clusters": 256}]}, 202)
        j = d.wait_job(j["id"], TERMINAL, 60)
        eq(j["state"], "failed", "state of a job over --job-memory-mb 64 on a 32 MB model")
        text = (str(j["error"])).lower()
        check("memory" in text or "out_of_memory" in text, "error does not say memory: %r" % j["error"])
        expect(d.get("/healthz"), 200)
        small = d.upload_ok(make_mlp(seed=5))["id"]
        j = d.wait_job(d.submit({"model": small, "passes": [{"op": "prune", "sparsity": 0.5}]}, 202)["id"])
        eq(j["state"], "succeeded", "a small job under the same limit (error %r)" % (j.get("error"),))
    finally:
        d.stop()


if __name__ == "__main__":
    run()
