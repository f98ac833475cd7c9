/* store.h — moptd storage: SQLite index + content-addressed blob store on disk.
 *
 * Layout under the data dir:
 *   moptd.db (+ -wal, -shm)   SQLite in WAL mode, schema versioned by PRAGMA user_version
 *   blobs/ab/abcdef…          blobs named by their SHA-256 hex, two-level fan-out
 *   tmp/                      uploads and worker outputs in progress; swept on open
 *
 * Durability: a blob is written to tmp/, fsync'd, renamed into blobs/, and blobs/xx/ fsync'd
 * before it is indexed; only then may the caller acknowledge it. A crash at any moment leaves
 * either nothing visible or the complete blob.
 *
 * Threads: one store per process (thread-safe); SQLite connections are per thread
 * (store_conn_get), each with its own prepared statements. This interface is the seam for a
 * second backend (PostgreSQL + object store); nothing above it sees SQL or paths except
 * store_blob_path (which a remote backend would serve via a local cache).
 */
#ifndef STORE_H
#define STORE_H

#include <stddef.h>
#include <stdint.h>

#include "mopt_error.h"

typedef struct store store;
typedef struct store_conn store_conn;

/* Opens (creating when absent) the data dir, runs schema migrations, sweeps tmp/, re-queues
 * jobs left 'running' by a crash (returns how many in *requeued, may be NULL).
 * Fails with MOPT_EIO / MOPT_EINTERNAL and a diag if the schema is newer than this build.
 * Recovery (re-queue, tmp/ sweep) only runs when no other process has the data dir open. */
int store_open(const char *data_dir, store **out, uint32_t *requeued, mopt_diag *diag);
/* Closes every connection. NULL is a no-op. Not while other threads use the store. */
void store_close(store *s);
/* The data dir as given to store_open (no trailing slash). */
const char *store_data_dir(const store *s);

/* The calling thread's connection (created on first use, closed by store_close). */
store_conn *store_conn_get(store *s);

/* ------------------------------------------------------------------- blobs ---- */
typedef struct store_upload store_upload;

/* Starts a temp file under tmp/. SHA-256 is computed as bytes are written. */
int store_upload_begin(store *s, store_upload **out);
/* Appends len bytes (staged in a fixed 1 MiB buffer: memory does not grow with the blob).
 * MOPT_EIO on a write error, after which the upload can only be aborted. */
int store_upload_write(store_upload *u, const void *data, size_t len);
/* Ends writing: fsyncs the temp file, returns its digest (64 hex) and size. */
int store_upload_finish(store_upload *u, char hex[65], uint64_t *size);
/* Temp path of the upload (valid until publish/abort), for validation before publishing. */
const char *store_upload_path(const store_upload *u);
/* Renames the temp file to blobs/<hex> (or drops it when that blob exists), fsyncs the dir,
 * frees u. *existed = 1 when the blob was already there. */
int store_upload_publish(store_upload *u, int *existed);
/* Unlinks the temp file and frees u. NULL is a no-op. */
void store_upload_abort(store_upload *u);

/* A fresh unique temp path under tmp/ (for worker outputs). */
int store_tmp_path(store *s, const char *suffix, char *buf, size_t n);
/* Hashes an existing file under tmp/ and publishes it as a blob (rename, fsync). */
int store_blob_adopt(store *s, const char *tmp_path, char hex[65], uint64_t *size, int *existed);
/* Path of blob hex into buf. Returns MOPT_ENOTFOUND if the file does not exist. */
int store_blob_path(store *s, const char *hex, char *buf, size_t n);
/* Unlinks a blob (after its index row is gone). MOPT_ECONFLICT (and the blob stays) when a
 * model row with that digest exists again (a concurrent upload of the same bytes). */
int store_blob_remove(store *s, const char *hex);
/* Total bytes of indexed blobs (for metrics). */
int store_bytes_total(store_conn *c, uint64_t *bytes);

/* ------------------------------------------------------------------ models ---- */
typedef struct store_model {
  char id[72];               /* "sha256:<64 hex>" */
  char name[128];
  char version[64];
  uint64_t size;
  char format[16];           /* "onnx" */
  int64_t ir_version;
  char opsets[256];          /* JSON object text {"":13,"com.microsoft":1} */
  uint64_t node_count, weight_count, param_count;
  int64_t created;           /* unix ms */
  char parent[72];           /* model id this was optimized from, "" if uploaded */
  char job[40];              /* job that produced it, "" if uploaded */
} store_model;

/* Inserts m; *created = 0 and the existing row in *m when the id is already indexed.
 * m->id must be "sha256:<64 hex>" (MOPT_EINVAL) and its blob published (MOPT_ENOTFOUND when
 * it is not there, e.g. removed by a concurrent delete: publish again and retry). */
int store_model_put(store_conn *c, store_model *m, int *created);
/* The row of id into *m; MOPT_ENOTFOUND when absent. */
int store_model_get(store_conn *c, const char *id, store_model *m);
/* Lists models, newest first, optionally filtered by name (NULL = all). cursor is opaque
 * ("" for the first page); next_cursor is filled ("" when no more). out has room for limit. */
int store_model_list(store_conn *c, const char *name, const char *cursor, uint32_t limit,
                     store_model *out, uint32_t *n, char next_cursor[64]);
/* Deletes the row (and returns MOPT_ECONFLICT when a job or release refers to it). The caller
 * removes the blob when no other row uses that digest. */
int store_model_delete(store_conn *c, const char *id);

/* -------------------------------------------------------------------- jobs ---- */
typedef enum { STORE_JOB_QUEUED = 0, STORE_JOB_RUNNING = 1, STORE_JOB_SUCCEEDED = 2,
               STORE_JOB_FAILED = 3, STORE_JOB_CANCELLED = 4 } store_job_state;
const char *store_job_state_name(int state);   /* "queued", … */
int store_job_state_parse(const char *name);   /* -1 when unknown */

typedef struct store_job {
  char id[40];               /* "job_<26 chars>" sortable by creation */
  char key[72];              /* sha256 hex of model id + normalized spec + moptd version */
  int state;
  double progress;           /* 0..1 */
  char step[64];
  int64_t created, started, finished;   /* unix ms, 0 when not yet */
  char model[72];
  char *spec;                /* normalized spec JSON (owned; free with store_job_free) */
  char output[72];           /* output model id, "" until succeeded */
  char *report;              /* report JSON or NULL */
  char *error;               /* {"code","message","detail"} JSON or NULL */
  int cancel_requested;
  uint32_t attempts;
  uint64_t rev;              /* bumps on every change: the ETag and the long-poll token */
} store_job;
void store_job_free(store_job *j);   /* frees the owned strings, not j */

/* Inserts a queued job. If a succeeded job with the same key exists, fills *j with it and sets
 * *existing = 1 instead. Fails with MOPT_EBUSY when max_queued > 0 and that many are queued.
 * j->id "" = generate one (contracts.md); j->key "" = no dedup; MOPT_ENOTFOUND when j->model
 * is not indexed. Ownership: on a new job j keeps the caller's j->spec (store_job_free frees
 * it); with *existing = 1 every field of *j is overwritten by the stored job (fresh strings),
 * so the caller must keep its own pointer to the spec it passed and free it itself. */
int store_job_create(store_conn *c, store_job *j, uint32_t max_queued, int *existing);
/* The job id into *j (store_job_free it); MOPT_ENOTFOUND when absent. */
int store_job_get(store_conn *c, const char *id, store_job *j);
/* Only the rev (cheap, for long-poll wake-ups and ETag checks). */
int store_job_rev(store_conn *c, const char *id, uint64_t *rev);
/* Newest first; state < 0 and model NULL mean no filter. j[i] must be store_job_free'd. */
int store_job_list(store_conn *c, int state, const char *model, const char *cursor,
                   uint32_t limit, store_job *out, uint32_t *n, char next_cursor[64]);
/* Oldest queued job → running (started = now, attempts+1); MOPT_ENOTFOUND when none. */
int store_job_claim(store_conn *c, store_job *j);
/* Running job only (else MOPT_ECONFLICT; MOPT_ENOTFOUND when absent). progress is clamped to
 * 0..1; rev bumps only when progress or step actually change. Not fsync'd (cheap, frequent). */
int store_job_progress(store_conn *c, const char *id, double progress, const char *step);
/* Terminal transitions. succeed registers nothing by itself: the caller first put the output
 * model (MOPT_ENOTFOUND when output is not indexed). fail/cancel take error JSON (may be NULL).
 * succeed: running only; fail: queued or running; otherwise MOPT_ECONFLICT. */
int store_job_succeed(store_conn *c, const char *id, const char *output, const char *report);
int store_job_fail(store_conn *c, const char *id, const char *error_json);
/* Queued → cancelled at once (returns 0, *was_running = 0); running → cancel_requested = 1
 * (*was_running = 1); terminal → MOPT_ECONFLICT. */
int store_job_cancel(store_conn *c, const char *id, int *was_running);
int store_job_cancelled(store_conn *c, const char *id);   /* running → cancelled */
/* running → queued (shutdown / crash recovery); a job whose cancel was requested becomes
 * cancelled instead. MOPT_ECONFLICT when not running. */
int store_job_requeue(store_conn *c, const char *id);
/* Counts by state (5 entries) for metrics. */
int store_job_counts(store_conn *c, uint64_t counts[5]);

/* ------------------------------------------------------------------ tokens ---- */
/* Tokens live in a file (one "scope[,scope] sha256hex-of-token [label]" per line), loaded by
 * the server; storage only hashes. */
void store_token_hash(const char *token, char hex[65]);

/* ---------------------------------------------------------------- releases ---- */
/* A release publishes a model on (name, channel). Every publish appends a row: the version
 * is 1 + the highest version of that (name, channel), so it only ever grows, even when an
 * older model is published again (a rollback). A released model cannot be deleted. */
typedef struct store_release {
  char name[128];
  char channel[64];
  uint64_t version;          /* 1, 2, … per (name, channel) */
  char model[72];
  int64_t created;           /* unix ms */
} store_release;

/* Appends a release of model on (name, channel) in one write transaction and returns it in
 * *out. MOPT_ENOTFOUND when model is not indexed, MOPT_EINVAL on empty arguments. */
int store_release_publish(store_conn *c, const char *name, const char *channel,
                          const char *model, store_release *out);
/* History of (name, channel), newest (current) first, at most limit rows into out; *n rows.
 * *n = 0 (and 0 returned) when nothing was ever published there. */
int store_release_history(store_conn *c, const char *name, const char *channel, uint32_t limit,
                          store_release *out, uint32_t *n);
/* The current release of (name, channel); MOPT_ENOTFOUND when none. */
int store_release_current(store_conn *c, const char *name, const char *channel,
                          store_release *out);
/* The current release of every (name, channel), ordered by name then channel, at most limit
 * into out; *n rows. Keyset pagination like store_model_list: cursor "" or NULL starts at the
 * beginning, next_cursor is "" on the last page; MOPT_EINVAL for a cursor this store did not
 * return. */
int store_release_list(store_conn *c, const char *cursor, uint32_t limit, store_release *out,
                       uint32_t *n, char next_cursor[64]);

/* ---------------------------------------------------------------- payloads ---- */
/* OTA payloads (core/payload.h) computed from models: kind "full" (base "") or "delta"
 * (base = the model the device has). One row per (kind, base, target), enforced by a unique
 * index, so a payload is computed once however many requests ask for it. The bytes are a
 * blob (digest); the payload's public id is "sha256:<digest>". */
typedef enum { STORE_PAYLOAD_PENDING = 0, STORE_PAYLOAD_READY = 1,
               STORE_PAYLOAD_FAILED = 2 } store_payload_state;
const char *store_payload_state_name(int state);   /* "pending", "ready", "failed" */

typedef struct store_payload {
  int64_t seq;               /* row id (task key) */
  char kind[8];              /* "full" | "delta" */
  char base[72];             /* model id, "" for full */
  char target[72];           /* model id */
  int state;                 /* store_payload_state */
  char digest[65];           /* blob hex, "" until ready */
  uint64_t size;             /* bytes, 0 until ready */
  char error[256];           /* why it failed, "" otherwise */
  int64_t created, finished; /* unix ms (finished 0 while pending) */
} store_payload;

/* Makes sure a row for (kind, base, target) exists (INSERT OR IGNORE: concurrent callers get
 * the same row) and returns it in *out; *created = 1 when this call inserted it (may be
 * NULL). kind "full" needs base NULL or "", "delta" a base different from target.
 * MOPT_EINVAL on bad arguments, MOPT_ENOTFOUND when target (or base) is not indexed. */
int store_payload_request(store_conn *c, const char *kind, const char *base, const char *target,
                          store_payload *out, int *created);
/* The row for (kind, base, target); MOPT_ENOTFOUND when there is none. */
int store_payload_get(store_conn *c, const char *kind, const char *base, const char *target,
                      store_payload *out);
/* A ready payload by its blob digest (64 hex); MOPT_ENOTFOUND when none is ready. */
int store_payload_by_digest(store_conn *c, const char *digest, store_payload *out);
/* Pending rows, oldest first, at most limit; *n rows. */
int store_payload_pending(store_conn *c, uint32_t limit, store_payload *out, uint32_t *n);
/* pending → ready with the published blob's digest and size; pending → failed with a
 * message. MOPT_ECONFLICT when the row is not pending, MOPT_ENOTFOUND when absent. */
int store_payload_ready(store_conn *c, int64_t seq, const char *digest, uint64_t size);
int store_payload_fail(store_conn *c, int64_t seq, const char *error);

#endif
