#!/usr/bin/python3
"""test_crash.py — kill -9 and SIGTERM of the daemon, then restart on the same data dir:
acknowledged models intact and byte-exact, no half-written blob visible, tmp/ swept, a job that
was running is re-queued and completes; SIGTERM exits 0.

The job killed mid-run runs on the stub worker (harness.STUB_WORKER, a contract-following test
double with a fixed duration) so the kill surely lands while it runs; the restarted daemon uses
the real `mopt worker`, which must then complete the re-queued job."""
import os
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (MOPT, Daemon, check, eq, expect, file_sha256, make_mlp, pid_alive, run, set_stub_seconds,
                     sha256_hex, stub_worker, test, write_big_mlp, TERMINAL)


def check_store_consistent(d, acked):
    """acked: {model id: bytes}. Every acknowledged model listed and byte-exact; every blob file
    is complete (its content hashes to its name); tmp/ is empty after the restart's sweep."""
    listed = {m["id"] for m in d.all_models()}
    for mid, data in acked.items():
        check(mid in listed, "acknowledged model %s lost" % mid)
        r = expect(d.get("/v1/models/%s/content" % mid), 200, "content of " + mid)
        check(r.body == data, "content of %s differs after restart" % mid)
    for rel, path in d.blob_files().items():
        name = os.path.basename(rel)
        eq(file_sha256(path), name, "blob file %s content digest (half-written blob visible?)" % rel)
    for mid in listed:
        check(os.path.exists(d.blob_path(mid)), "listed model %s has no blob" % mid)
    eq(d.tmp_files(), [], "tmp/ after restart")


@test
def test_kill9_mid_upload():
    d = Daemon(name="moptd-crash1").start()
    acked = {}
    for i in range(3):
        data = make_mlp(seed=10 + i)
        r = expect(d.upload(data, name="keep"), 201)
        acked[r.json["id"]] = data
    big = open(write_big_mlp(), "rb").read()
    # half a body, then kill -9 while the connection is open
    s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    s.sendall(("POST /v1/models?name=partial HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n"
               % (d.auth_header(), len(big))).encode())
    s.sendall(big[: len(big) // 2])
    time.sleep(0.5)
    partial = d.tmp_files()
    d.kill()
    s.close()
    d.start()
    check_store_consistent(d, acked)
    check(not os.path.exists(d.blob_path("sha256:" + sha256_hex(big))), "partial upload became a blob")
    print("# temp files seen during the upload: %d" % len(partial))
    # the daemon works normally after the restart
    expect(d.upload(big, name="big"), 201, "full upload after restart")
    d.stop()


@test
def test_kill9_at_random_moments_loses_nothing_acknowledged():
    d = Daemon(name="moptd-crash2").start()
    acked = {}
    for rnd in range(3):
        stop = threading.Event()

        def uploader(seed0):
            i = 0
            while not stop.is_set():
                data = make_mlp(seed=seed0 + i, sizes=(64, 64, 8))
                i += 1
                try:
                    r = d.upload(data, name="storm")
                except Exception:
                    return   # the daemon was killed under this request
                if r.status in (200, 201):
                    acked[r.json["id"]] = data
        ths = [threading.Thread(target=uploader, args=(10000 * (rnd + 1) + 1000 * k,)) for k in range(3)]
        for t in ths:
            t.start()
        time.sleep(0.4 + 0.3 * rnd)
        d.kill()
        stop.set()
        for t in ths:
            t.join(10)
        d.start()
        check_store_consistent(d, acked)
    check(len(acked) >= 3, "too few uploads acknowledged to mean anything (%d)" % len(acked))
    print("# %d acknowledged uploads survived 3 kills" % len(acked))
    d.stop()


def running_stub_job(name):
    d = Daemon(workers=1, name=name)
    d.mopt = stub_worker(d.tmp, 30)
    d.start()
    data = make_mlp(seed=40)
    mid = expect(d.upload(data, name="crash-job"), 201).json["id"]
    j = d.submit({"model": mid, "passes": [{"op": "prune", "sparsity": 0.5}]}, 202)
    j = d.wait_job(j["id"], ("running",) + TERMINAL, 20)
    eq(j["state"], "running", "job state before the kill")
    time.sleep(0.5)
    return d, mid, data, j["id"]


def finish_with_real_worker(d, mid, data, jid):
    import onnx
    d.mopt = MOPT
    d.start()
    j = d.job(jid)
    check(j["state"] in ("queued", "running", "succeeded"), "job after restart: %r" % j)
    j = d.wait_job(jid, TERMINAL, 60)
    eq(j["state"], "succeeded", "re-queued job (error %r)" % (j.get("error"),))
    out = expect(d.get("/v1/models/%s/content" % j["output"]), 200).body
    eq("sha256:" + sha256_hex(out), j["output"], "output digest")
    onnx.checker.check_model(onnx.load_from_string(out))
    check_store_consistent(d, {mid: data})
    eq(len(d.all_jobs()), 1, "jobs after restart (the job must be re-queued, not duplicated)")


@test
def test_kill9_mid_job_then_restart_completes_it():
    d, mid, data, jid = running_stub_job("moptd-crash3")
    d.kill()
    finish_with_real_worker(d, mid, data, jid)
    d.stop()


@test
def test_sigterm_during_job_exits_0_and_job_is_requeued():
    d, mid, data, jid = running_stub_job("moptd-crash4")
    t0 = time.time()
    rc = d.stop(signal.SIGTERM, timeout=15)
    took = time.time() - t0
    eq(rc, 0, "exit status after SIGTERM with a running job")
    check(took < 10, "SIGTERM took %.1fs" % took)
    finish_with_real_worker(d, mid, data, jid)
    rc = d.stop(signal.SIGINT, timeout=15)
    eq(rc, 0, "exit status after SIGINT")


def workers_of(d):
    """pids of live processes whose command line names this daemon's data dir (its workers)."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            cmd = open("/proc/%s/cmdline" % p, "rb").read().split(b"\0")
        except OSError:
            continue
        if any(d.data.encode() in a for a in cmd) and b"worker" in cmd and pid_alive(int(p)):
            out.append(int(p))
    return out


@test
def test_kill9_of_the_daemon_takes_its_workers_down():
    # a worker orphaned by a kill -9 keeps burning CPU and later writes into tmp/ behind the
    # restarted daemon's back; it must die with the daemon
    d = Daemon(workers=1, name="moptd-orphan").start()
    orphans = []
    try:
        mid = expect(d.upload(write_big_mlp(), name="big"), 201).json["id"]
        j = d.submit({"model": mid, "passes": [{"op": "cluster", "clusters": 256}]}, 202)
        j = d.wait_job(j["id"], ("running",) + TERMINAL, 30)
        eq(j["state"], "running", "heavy job state (error %r)" % (j.get("error"),))
        # 'running' is written at the claim, just before the scheduler spawns the worker: wait
        # for the process itself
        deadline = time.time() + 10
        pids = workers_of(d)
        while not pids and time.time() < deadline:
            time.sleep(0.02)
            pids = workers_of(d)
        check(pids, "no worker process found for the running job within 10 s")
        d.kill()
        deadline = time.time() + 3
        while workers_of(d) and time.time() < deadline:
            time.sleep(0.05)
        orphans = workers_of(d)
        eq(orphans, [], "worker processes alive 3 s after kill -9 of the daemon")
    finally:
        for p in orphans:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass


@test
def test_sigterm_idle_exits_0_and_stops_accepting():
    d = Daemon(name="moptd-crash5").start()
    port = d.port
    eq(d.stop(signal.SIGTERM), 0, "exit status")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        raise AssertionError("port %d still accepts after exit" % port)
    except OSError:
        pass


if __name__ == "__main__":
    run()
