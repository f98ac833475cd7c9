#!/usr/bin/python3
"""test_metrics.py — GET /metrics: valid Prometheus text (promtool check metrics), the families
the issue names (requests by route and status, latency histogram, jobs by state, queue depth,
worker count, bytes stored), and values that move with real traffic."""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, check, eq, expect, lazy, make_mlp, run, test

WORKERS = 3
D = lazy(lambda: Daemon(workers=WORKERS, name="moptd-metrics").start())
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(d):
    r = expect(d.get("/metrics"), 200, "GET /metrics")
    types, samples = {}, []
    for line in r.body.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(None, 3)
            types[name] = typ.strip()
        elif line and not line.startswith("#"):
            m = SAMPLE.match(line)
            check(m, "unparsable sample line %r" % line)
            labels = dict(LABEL.findall(m.group(3) or ""))
            samples.append((m.group(1), labels, float(m.group(4))))
    return r, types, samples


def family_of(sample_name, types):
    for suf in ("_bucket", "_sum", "_count", "_total", ""):
        if suf and sample_name.endswith(suf) and sample_name[: -len(suf)] in types:
            return sample_name[: -len(suf)]
    return sample_name


def find(types, samples, pred_name, labels=()):
    """Families whose name matches pred_name and whose samples carry all labels (a label given as
    "a|b" may be either: the HTTP status label is "code" by Prometheus convention)."""
    out = []
    for fam in types:
        if not pred_name(fam):
            continue
        ss = [s for s in samples if family_of(s[0], types) == fam]
        if all(any(any(x in s[1] for x in l.split("|")) for s in ss) for l in labels):
            out.append(fam)
    return out


def value(samples, name, **labels):
    tot = 0.0
    for n, ls, v in samples:
        if n == name and all(ls.get(k) == v2 for k, v2 in labels.items()):
            tot += v
    return tot


@test
def test_promtool_check_metrics_passes():
    d = D()
    d.get("/v1/models")
    d.get("/v1/nope")
    r, _, _ = scrape(d)
    ct = r.header("Content-Type", "")
    check(ct.startswith("text/plain"), "Content-Type %r" % ct)
    p = subprocess.run(["promtool", "check", "metrics"], input=r.body, capture_output=True, timeout=30)
    eq((p.returncode, (p.stdout + p.stderr).decode()), (0, ""), "promtool check metrics")


@test
def test_named_families_exist():
    d = D()
    d.get("/v1/models")
    _, types, samples = scrape(d)
    req = find(types, samples, lambda n: "request" in n and types[n] == "counter", ("route", "code|status"))
    check(req, "no counter of requests with route and status labels: %r" % sorted(types))
    hist = find(types, samples, lambda n: types[n] == "histogram" and
                re.search("duration|latency|seconds", n), ())
    check(hist, "no request latency histogram: %r" % sorted(types))
    jobs = find(types, samples, lambda n: "job" in n, ("state",))
    check(jobs, "no jobs-by-state family: %r" % sorted(types))
    states = {s[1].get("state") for s in samples if family_of(s[0], types) in jobs}
    check({"queued", "running", "succeeded", "failed", "cancelled"} <= states,
          "jobs by state lacks states: %r" % states)
    check(find(types, samples, lambda n: "queue" in n), "no queue depth family: %r" % sorted(types))
    wk = find(types, samples, lambda n: "worker" in n)
    check(wk, "no worker count family: %r" % sorted(types))
    check(any(s[2] == WORKERS for s in samples if family_of(s[0], types) in wk),
          "no worker sample equals --workers %d: %r" % (WORKERS, [s for s in samples if family_of(s[0], types) in wk]))
    check(find(types, samples, lambda n: "bytes" in n and re.search("stor|blob", n)),
          "no bytes-stored family: %r" % sorted(types))


@test
def test_values_move_with_traffic():
    d = D()
    _, types, s0 = scrape(d)
    req = find(types, s0, lambda n: "request" in n and types[n] == "counter", ("route", "code|status"))[0]
    req_sample = req if req in {s[0] for s in s0} else req + "_total"
    hist = find(types, s0, lambda n: types[n] == "histogram" and re.search("duration|latency|seconds", n), ())[0]
    stored = find(types, s0, lambda n: "bytes" in n and re.search("stor|blob", n))[0]
    stored_sample = stored if stored in {s[0] for s in s0} else stored + "_total"
    routes = {s[1].get("route") for s in s0 if s[0] == req_sample}
    list_route = "models_list" if "models_list" in routes or not any("/v1/models" == r for r in routes) \
        else "/v1/models"
    for _ in range(5):
        expect(d.get("/v1/models"), 200)
    d.get("/v1/models/sha256:" + "0" * 64)
    data = make_mlp(seed=77)
    expect(d.upload(data, name="m"), 201)
    job = d.submit({"model": "sha256:" + __import__("hashlib").sha256(data).hexdigest(),
                    "passes": [{"op": "prune", "sparsity": 0.5}]}, 202)
    j = d.wait_job(job["id"])
    _, types, s1 = scrape(d)
    sl = "code" if any("code" in s[1] for s in s0 if s[0] == req_sample) else "status"
    got = value(s1, req_sample, route=list_route, **{sl: "200"}) - value(s0, req_sample, route=list_route, **{sl: "200"})
    check(got >= 5, "requests{route=%s,status=200} moved by %r after 5 requests (routes %r)"
          % (list_route, got, sorted(r for r in routes if r)))
    check(any(s[1].get(sl) == "404" for s in s1 if s[0] == req_sample), "no %s=404 series after a 404" % sl)
    c0 = sum(v for n, ls, v in s0 if n == hist + "_count")
    c1 = sum(v for n, ls, v in s1 if n == hist + "_count")
    check(c1 - c0 >= 7, "latency histogram count moved by %r" % (c1 - c0))
    b0, b1 = value(s0, stored_sample), value(s1, stored_sample)
    check(b1 - b0 >= len(data), "bytes stored moved by %r after a %d-byte upload" % (b1 - b0, len(data)))
    jobs_fam = find(types, s1, lambda n: "job" in n, ("state",))[0]
    jobs_sample = jobs_fam if jobs_fam in {s[0] for s in s1} else jobs_fam + "_total"
    st = j["state"]
    check(value(s1, jobs_sample, state=st) - value(s0, jobs_sample, state=st) >= 1,
          "jobs{state=%s} did not move after a job ended %s" % (st, st))
    q = find(types, s1, lambda n: "queue" in n)[0]
    eq(value(s1, q), 0.0, "queue depth when idle")


if __name__ == "__main__":
    run()
