#!/usr/bin/python3
"""test_anchor_jobs.py — anchored optimization through a real moptd: a job spec's "anchor" (a
model id or "release:{name}/{channel}") is validated, resolved by POST /v1/jobs to a model id
(unknown ones: 404 with the pointer /passes/N/anchor), stored in the job's spec so the job key
includes it, and the worker gets --anchor with that model's blob: the report counts anchored
tensors and the reused scales are v1's bytes.
"""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import check, eq, expect, expect_error, test  # noqa: E402

_d = None


def D():
    global _d
    if _d is None:
        _d = h.Daemon(workers=2, data=tempfile.mkdtemp(prefix="moptd-anchor-test-"))
        _d.start()
    return _d


def perturb(data, scale=2e-4, seed=5):
    np, onnx, helper, numpy_helper, TensorProto = h._onnx()
    m = onnx.load_from_string(data)
    rng = np.random.default_rng(seed)
    for i, init in enumerate(m.graph.initializer):
        a = numpy_helper.to_array(init).copy()
        if a.size >= 1024:
            a += (rng.standard_normal(a.shape) * scale).astype(a.dtype)
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(a, init.name))
    return m.SerializeToString()


def initializers(data):
    np, onnx, helper, numpy_helper, TensorProto = h._onnx()
    return {t.name: numpy_helper.to_array(t) for t in onnx.load_from_string(data).graph.initializer}


Q = {"op": "quantize", "dtype": "int8", "granularity": "per_tensor"}


@test
def test_anchor_by_release_and_id():
    d = D()
    v1 = h.make_mlp(seed=41, sizes=(64, 128, 16))
    m1 = d.upload_ok(v1, name="anc", version="1")["id"]
    m2 = d.upload_ok(perturb(v1), name="anc", version="2")["id"]
    j1 = d.wait_job(d.submit({"model": m1, "passes": [Q]})["id"])
    eq(j1["state"], "succeeded", "v1 job")
    o1 = j1["output"]
    expect(d.request("PUT", "/v1/releases/anc/stable", body={"model": o1}), (200, 201), "publish")
    # by release: resolved to the released model id in the stored spec
    j2 = d.submit({"model": m2, "passes": [dict(Q, anchor="release:anc/stable")]})
    eq(j2["spec"]["passes"][0].get("anchor"), o1, "stored anchor (the release's model id)")
    j2 = d.wait_job(j2["id"])
    eq(j2["state"], "succeeded", "anchored job: %s" % j2.get("error"))
    check(j2["report"]["totals"]["anchored_tensors"] > 0, "anchored tensors: %r" % j2["report"]["totals"])
    out1 = expect(d.get("/v1/models/%s/content" % o1), 200).body
    out2 = expect(d.get("/v1/models/%s/content" % j2["output"]), 200).body
    i1, i2 = initializers(out1), initializers(out2)
    for t in j2["report"]["tensors"]:
        if t["anchored"]:
            k = t["name"] + "__mopt_scale"
            eq(i2[k].tobytes(), i1[k].tobytes(), "%s bytes" % k)
    # by model id: the same model → same spec → same job key → the same job
    j3 = d.submit({"model": m2, "passes": [dict(Q, anchor=o1)]}, status=(200,))
    eq(j3["id"], j2["id"], "an anchor by id equal to the release's model is the same job")
    # without an anchor it is another job
    j4 = d.submit({"model": m2, "passes": [Q]})
    check(j4["id"] != j2["id"], "a job without anchor has another key")


@test
def test_anchor_errors():
    d = D()
    m = d.upload_ok(h.make_mlp(seed=42), name="anc-err")["id"]
    expect_error(d.post("/v1/jobs", {"model": m, "passes": [dict(Q, anchor="release:nope/stable")]}),
                 404, "not_found", "/passes/0/anchor")
    expect_error(d.post("/v1/jobs", {"model": m, "passes": [{"op": "prune", "sparsity": 0.25}, dict(Q, anchor="sha256:" + "0" * 64)]}),
                 404, "not_found", "/passes/1/anchor")
    expect_error(d.post("/v1/jobs", {"model": m, "passes": [dict(Q, anchor="latest")]}),
                 400, "invalid_spec", "/passes/0/anchor")
    expect_error(d.post("/v1/jobs", {"model": m, "passes": [{"op": "fp16", "anchor": m}]}),
                 400, "invalid_spec")


if __name__ == "__main__":
    h.run()
