#!/usr/bin/env node
// ort_run.js — runs ONNX models in ONNX Runtime (onnxruntime-node from tests/node_modules) for the moptd tests.
//
// Usage:
//   node ort_run.js MODEL INPUTS.json            prints {"outputs": {name: {dtype, shape, data}}}
//   node ort_run.js --batch JOBS.json            runs many models in one process (ORT's startup
//                                                is the slow part); prints one JSON line per job
// INPUTS.json: {"input name": {"dtype": "float32", "shape": [2,3], "data": [...]}
//                             | {"npy": "/path/file.npy"}}
// JOBS.json:   [{"model": PATH, "inputs": PATH-or-object, "out_dir": DIR (optional),
//                "outputs": ["extra value names to fetch", ...] (optional)}, ...]
//   With out_dir, each output is written as DIR/output_<i>.npy (i = position in the session's
//   output list) and the printed line carries names/dtypes/shapes only; otherwise data inline.
//   "outputs" asks for specific output names (they must be graph outputs).
// Errors: a model ORT cannot load prints {"error": {"stage": "load", "message": ...}} (and in
// single mode also "ORT load error: ..." on stderr, exit 3); a run failure uses stage "run"
// (exit 4); bad usage / unreadable inputs exit 2. Batch mode always exits 0 after all jobs
// unless JOBS.json itself is unreadable.
// Trade-off: numbers go through JSON as doubles (exact for float32/int32; int64 beyond 2^53 and
// float16 travel as .npy instead), and .npy support is limited to the plain little-endian C-order
// dtypes ONNX tensors use; that keeps this file small and dependency-free.
'use strict';
const fs = require('fs');
const path = require('path');

let ort;
try {
  ort = require(path.join(__dirname, '..', 'node_modules', 'onnxruntime-node'));
} catch (e) {
  process.stderr.write('cannot load onnxruntime-node from tests/node_modules: ' + e.message + '\n');
  process.exit(2);
}

// ------------------------------------------------------------------ dtypes ----
// npy descr <-> ORT tensor type <-> typed array
const DT = {
  float32: { npy: '<f4', ort: 'float32', arr: Float32Array, size: 4 },
  float64: { npy: '<f8', ort: 'float64', arr: Float64Array, size: 8 },
  float16: { npy: '<f2', ort: 'float16', arr: Uint16Array, size: 2 },
  int8: { npy: '|i1', ort: 'int8', arr: Int8Array, size: 1 },
  uint8: { npy: '|u1', ort: 'uint8', arr: Uint8Array, size: 1 },
  int16: { npy: '<i2', ort: 'int16', arr: Int16Array, size: 2 },
  uint16: { npy: '<u2', ort: 'uint16', arr: Uint16Array, size: 2 },
  int32: { npy: '<i4', ort: 'int32', arr: Int32Array, size: 4 },
  uint32: { npy: '<u4', ort: 'uint32', arr: Uint32Array, size: 4 },
  int64: { npy: '<i8', ort: 'int64', arr: BigInt64Array, size: 8 },
  uint64: { npy: '<u8', ort: 'uint64', arr: BigUint64Array, size: 8 },
  bool: { npy: '|b1', ort: 'bool', arr: Uint8Array, size: 1 },
};
const NPY2DT = {};
for (const [k, v] of Object.entries(DT)) {
  NPY2DT[v.npy] = k;
  NPY2DT[v.npy.replace('|', '<')] = k;
  NPY2DT[v.npy.replace('<', '|')] = k;
}
const ORT2DT = { float32: 'float32', float64: 'float64', float16: 'float16', int8: 'int8',
  uint8: 'uint8', int16: 'int16', uint16: 'uint16', int32: 'int32', uint32: 'uint32',
  int64: 'int64', uint64: 'uint64', bool: 'bool', string: 'string' };

// ------------------------------------------------------------------ .npy ----
function readNpy(file) {
  const buf = fs.readFileSync(file);
  if (buf.length < 10 || buf.toString('latin1', 0, 6) !== '\x93NUMPY') throw new Error(file + ': not a .npy file');
  const major = buf[6];
  let hlen, off;
  if (major === 1) { hlen = buf.readUInt16LE(8); off = 10; } else { hlen = buf.readUInt32LE(8); off = 12; }
  const header = buf.toString('latin1', off, off + hlen);
  const descr = /'descr':\s*'([^']+)'/.exec(header);
  const fortran = /'fortran_order':\s*(True|False)/.exec(header);
  const shapeM = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shapeM) throw new Error(file + ': bad .npy header ' + header);
  if (fortran[1] === 'True') throw new Error(file + ': fortran-order .npy not supported');
  const shape = shapeM[1].split(',').map((s) => s.trim()).filter((s) => s.length).map(Number);
  const n = shape.reduce((a, b) => a * b, 1);
  const start = off + hlen;
  const d = descr[1];
  if (/^[<|]U\d+$/.test(d)) { // unicode strings: UTF-32LE fixed width
    const width = Number(d.slice(2));
    const out = [];
    for (let i = 0; i < n; i++) {
      let s = '';
      for (let j = 0; j < width; j++) {
        const cp = buf.readUInt32LE(start + (i * width + j) * 4);
        if (cp === 0) break;
        s += String.fromCodePoint(cp);
      }
      out.push(s);
    }
    return { dtype: 'string', shape, data: out };
  }
  const dt = NPY2DT[d];
  if (!dt) throw new Error(file + ': unsupported .npy dtype ' + d);
  const info = DT[dt];
  const bytes = buf.subarray(start, start + n * info.size);
  if (bytes.length !== n * info.size) throw new Error(file + ': .npy data truncated');
  const ab = new ArrayBuffer(n * info.size);
  new Uint8Array(ab).set(bytes);
  return { dtype: dt, shape, data: new info.arr(ab) };
}

function writeNpy(file, dtype, shape, data) {
  let body, descr;
  if (dtype === 'string') {
    let width = 1;
    for (const s of data) width = Math.max(width, [...s].length);
    descr = '<U' + width;
    body = Buffer.alloc(data.length * width * 4);
    data.forEach((s, i) => { [...s].forEach((ch, j) => body.writeUInt32LE(ch.codePointAt(0), (i * width + j) * 4)); });
  } else {
    const info = DT[dtype];
    if (!info) throw new Error('cannot write dtype ' + dtype + ' to .npy');
    descr = info.npy;
    body = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  }
  const shp = '(' + shape.join(', ') + (shape.length === 1 ? ',)' : ')');
  let header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shp + ', }';
  const total = 10 + header.length + 1;
  header += ' '.repeat((64 - (total % 64)) % 64) + '\n';
  const pre = Buffer.alloc(10);
  pre.write('\x93NUMPY', 0, 'latin1');
  pre[6] = 1; pre[7] = 0;
  pre.writeUInt16LE(header.length, 8);
  fs.writeFileSync(file, Buffer.concat([pre, Buffer.from(header, 'latin1'), body]));
}

// ------------------------------------------------------------------ tensors ----
function toTensor(name, spec, baseDir) {
  let t = spec;
  if (spec && typeof spec.npy === 'string') t = readNpy(path.resolve(baseDir, spec.npy));
  if (!t || typeof t.dtype !== 'string' || !Array.isArray(t.shape)) {
    throw new Error('input ' + name + ': needs {dtype, shape, data} or {npy}');
  }
  const dims = t.shape.map(Number);
  if (t.dtype === 'string') return new ort.Tensor('string', Array.from(t.data), dims);
  const info = DT[t.dtype];
  if (!info) throw new Error('input ' + name + ': unsupported dtype ' + t.dtype);
  let data = t.data;
  if (Array.isArray(data)) {
    if (info.arr === BigInt64Array || info.arr === BigUint64Array) data = info.arr.from(data.map((v) => BigInt(v)));
    else if (t.dtype === 'bool') data = Uint8Array.from(data.map((v) => (v ? 1 : 0)));
    else data = info.arr.from(data);
  }
  if (t.dtype === 'bool') return new ort.Tensor('bool', Uint8Array.from(data), dims);
  return new ort.Tensor(info.ort, data, dims);
}

function tensorToJson(t) {
  const dtype = ORT2DT[t.type] || t.type;
  let data;
  if (t.type === 'int64' || t.type === 'uint64') data = Array.from(t.data, (v) => Number(v));
  else if (t.type === 'bool') data = Array.from(t.data, (v) => !!v);
  else if (t.type === 'string') data = Array.from(t.data);
  else if (t.type === 'float16') data = Array.from(t.data); // raw half bits
  else data = Array.from(t.data, (v) => (Number.isFinite(v) ? v : String(v)));
  return { dtype, shape: Array.from(t.dims), data };
}

function tensorToNpy(file, t) {
  const dtype = ORT2DT[t.type] || t.type;
  let data = t.data;
  if (dtype === 'bool') data = Uint8Array.from(t.data, (v) => (v ? 1 : 0));
  else if (dtype === 'float16' && !(data instanceof Uint16Array)) {
    // newer runtimes may hand out Float16Array: keep the raw bits
    data = new Uint16Array(data.buffer, data.byteOffset, data.length);
  }
  writeNpy(file, dtype, Array.from(t.dims), data);
}

// ------------------------------------------------------------------ running ----
function sessionOptions() {
  return { intraOpNumThreads: 1, interOpNumThreads: 1, graphOptimizationLevel: 'all', logSeverityLevel: 3 };
}

function loadInputs(inputs, baseDir) {
  if (typeof inputs === 'string') {
    const p = path.resolve(baseDir, inputs);
    return { spec: JSON.parse(fs.readFileSync(p, 'utf8')), dir: path.dirname(p) };
  }
  return { spec: inputs || {}, dir: baseDir };
}

async function runJob(job, baseDir) {
  let feeds;
  try {
    const { spec, dir } = loadInputs(job.inputs, baseDir);
    feeds = {};
    for (const [k, v] of Object.entries(spec)) feeds[k] = toTensor(k, v, dir);
  } catch (e) {
    return { error: { stage: 'inputs', message: String(e && e.message ? e.message : e) } };
  }
  let sess;
  try {
    sess = await ort.InferenceSession.create(path.resolve(baseDir, job.model), sessionOptions());
  } catch (e) {
    return { error: { stage: 'load', message: String(e && e.message ? e.message : e) } };
  }
  let res;
  const fetches = Array.isArray(job.outputs) && job.outputs.length ? job.outputs : sess.outputNames;
  try {
    res = await sess.run(feeds, fetches);
  } catch (e) {
    try { await sess.release(); } catch (e2) { /* ignore */ }
    return { error: { stage: 'run', message: String(e && e.message ? e.message : e) } };
  }
  const out = { outputs: {}, output_names: fetches, input_names: sess.inputNames };
  try {
    fetches.forEach((name, i) => {
      const t = res[name];
      if (job.out_dir) {
        fs.mkdirSync(job.out_dir, { recursive: true });
        tensorToNpy(path.join(job.out_dir, 'output_' + i + '.npy'), t);
        out.outputs[name] = { dtype: ORT2DT[t.type] || t.type, shape: Array.from(t.dims), npy: 'output_' + i + '.npy' };
      } else {
        out.outputs[name] = tensorToJson(t);
      }
    });
  } catch (e) {
    return { error: { stage: 'output', message: String(e && e.message ? e.message : e) } };
  } finally {
    try { await sess.release(); } catch (e2) { /* ignore */ }
  }
  return out;
}

async function main() {
  const argv = process.argv.slice(2);
  if (argv.length === 2 && argv[0] === '--batch') {
    let jobs;
    try {
      jobs = JSON.parse(fs.readFileSync(argv[1], 'utf8'));
    } catch (e) {
      process.stderr.write('cannot read jobs ' + argv[1] + ': ' + e.message + '\n');
      process.exit(2);
    }
    const base = path.dirname(path.resolve(argv[1]));
    for (let i = 0; i < jobs.length; i++) {
      const r = await runJob(jobs[i], base);
      r.job = i;
      if (jobs[i].id !== undefined) r.id = jobs[i].id;
      process.stdout.write(JSON.stringify(r) + '\n');
    }
    return 0;
  }
  if (argv.length !== 2 || argv[0].startsWith('-')) {
    process.stderr.write('usage: node ort_run.js MODEL INPUTS.json | --batch JOBS.json\n');
    return 2;
  }
  const r = await runJob({ model: argv[0], inputs: argv[1] }, process.cwd());
  process.stdout.write(JSON.stringify(r) + '\n');
  if (r.error) {
    const label = { load: 'ORT load error', run: 'ORT run error', inputs: 'bad inputs', output: 'output error' }[r.error.stage];
    process.stderr.write(label + ': ' + argv[0] + ': ' + r.error.message + '\n');
    return r.error.stage === 'load' ? 3 : r.error.stage === 'inputs' ? 2 : 4;
  }
  return 0;
}

main().then((rc) => { process.exitCode = rc; }, (e) => {
  process.stderr.write('ort_run.js: ' + (e && e.stack ? e.stack : e) + '\n');
  process.exitCode = 5;
});
