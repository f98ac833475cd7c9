#!/usr/bin/python3
# test_bad_models.py — malformed models (tests/models/make_bad_models.py) through `mopt inspect`, `mopt optimize` and `mopt worker`: clear error, exit 1, nothing written (TAP).
"""For every entry of bad_models.json:
  reject: `mopt optimize` exits 1, writes neither the output nor a temp file next to it, and says
          on stderr what is wrong and where (the stderr names the tensor / node / field the
          manifest's "why" names, or at least is non-empty and mentions the model);
          `mopt inspect --json` exits 1; `mopt worker` exits 1 with one {"event":"error"} JSON
          line whose "code" is one of the manifest's acceptable codes, and writes no output.
  accept: the same commands succeed and the optimized output runs in ONNX Runtime.
Bundles (external data) are passed as DIR/model.onnx; the loader's bundle is the model's dir.
Trade-off: "what and where" is checked by looking for the culprit's name in the message, which
is a heuristic; the exact wording is the implementer's.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_common as E  # noqa: E402

# words the message should contain for each case (any of them), beyond a non-empty message
WHERE = {
    "absurd_dims": ["W"], "negative_dim": ["W"], "raw_len_mismatch": ["W"], "typed_len_mismatch": ["W"],
    "wrong_dtype": ["W", "77"], "undefined_dtype": ["W"], "cycle": ["cycle", "add_a", "relu_b", "t1", "t2"],
    "missing_input": ["W_missing"], "ext_absolute": ["W", "/etc/passwd", "absolute"],
    "ext_dotdot": ["W", ".."], "ext_dotdot_inner": ["W", ".."], "ext_symlink": ["W", "symlink", "weights.bin"],
    "ext_short": ["W", "weights.bin"],
}


def main():
    return E.run_suite("mopt-bad-", run)


def run(tap, work):
    bdir = os.path.join(work, "bad")
    entries = E.make_models(bdir, bad=True)
    tap.ok(len(entries) >= 15, "make_bad_models.py wrote %d cases" % len(entries))
    if not tap.ok(E.pin_mopt(work), "mopt binary exists at %s (copied for this run)" % E.MOPT):
        return
    spec = os.path.join(work, "spec.json")
    with open(spec, "w") as f:
        json.dump({"passes": [{"op": "quantize", "dtype": "int8", "granularity": "per_channel"}]}, f)
    accepted = []
    for e in entries:
        name, path = e["name"], os.path.join(bdir, e["path"])
        odir = os.path.join(work, "out_" + name)
        os.makedirs(odir)
        out = os.path.join(odir, "out.onnx")
        rep = os.path.join(odir, "report.json")
        rc, so, se = E.mopt_cmd(["optimize", path, "-o", out, "--spec", spec, "--report", rep])
        rci, soi, sei = E.mopt_cmd(["inspect", path, "--json"])
        wout = os.path.join(odir, "wout.onnx")
        rcw, sow, sew = E.mopt_cmd(["worker", "--input", path, "--spec", spec, "--output", wout,
                                    "--report", os.path.join(odir, "wrep.json")])
        if e["expect"] == "accept":
            tap.ok(rc == 0 and os.path.exists(out), "%s (%s): mopt optimize accepts it" % (name, e["why"]), se[-500:])
            tap.ok(rci == 0, "%s: mopt inspect --json accepts it" % name, sei[-300:])
            tap.ok(rcw == 0 and os.path.exists(wout), "%s: mopt worker accepts it" % name, sew[-300:] + sow[-300:])
            if rc == 0:
                accepted.append((name, out))
            continue
        left = sorted(os.listdir(odir))
        msg = se.strip()
        tap.ok(rc == 1 and not left, "%s (%s): mopt optimize exits 1 and writes nothing" % (name, e["why"]),
               "rc=%d, files left %s, stderr: %s" % (rc, left, msg[-400:]))
        words = WHERE.get(name)
        if words:
            tap.ok(bool(msg) and any(w.lower() in msg.lower() for w in words),
                   "%s: the error says where (mentions one of %s)" % (name, words), "stderr: %s" % msg[-400:])
        else:
            tap.ok(bool(msg), "%s: the error message is not empty" % name, "stderr empty")
        tap.ok(rci == 1, "%s: mopt inspect --json exits 1" % name, "rc=%d %s" % (rci, (sei or soi)[-300:]))
        events = []
        for ln in sow.splitlines():
            try:
                events.append(json.loads(ln))
            except ValueError:
                events.append({"unparsed": ln})
        errs = [ev for ev in events if ev.get("event") == "error"]
        tap.ok(rcw == 1 and len(errs) == 1 and errs[0].get("code") in e["error"] and not os.path.exists(wout)
               and all("unparsed" not in ev for ev in events),
               "%s: mopt worker exits 1 with one JSON error event, code in %s, no output" % (name, e["error"]),
               "rc=%d events %s stderr %s" % (rcw, json.dumps(events)[-500:], sew[-200:]))
    if accepted:
        res = E.ort_batch([{"model": out, "inputs": {"x": {"dtype": "float32", "shape": [2, 64], "data": [0.5] * 128}}}
                           for _, out in accepted], os.path.join(work, "ort"))
        for (name, _), r in zip(accepted, res):
            tap.ok("outputs" in r, "%s: optimized output runs in ONNX Runtime" % name, r.get("error"))


if __name__ == "__main__":
    sys.exit(main())
