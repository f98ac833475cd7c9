/* store.c — unit tests for the SQLite index (storage/store.c, model.c, job.c): models CRUD,
 * cursor pagination across pages and under concurrent inserts, name filter, delete conflicts,
 * the jobs state machine (create, dedup by key, queue limit, claim order, progress rev bumps,
 * cancel, requeue, counts, listing), crash recovery on open, schema migration from an older
 * user_version, and concurrent claiming by threads and by processes.
 * Each test gets a fresh data dir under /tmp.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "store_int.h"
#include "fixture.h"

static int setup(void **state) { return fixture_setup(state, "storetest"); }
static int teardown(void **state) { return fixture_teardown(state); }

/* Puts a file where the blob of model_id(n) lives (the index only accepts published blobs). */
static void make_blob(store_conn *c, unsigned n) {
  char id[72], dir[PATH_MAX], path[PATH_MAX + 80];
  model_id(id, n);
  snprintf(dir, sizeof dir, "%s/blobs/%.2s", store_data_dir(c->s), id + 7);
  mkdir(dir, 0750);
  snprintf(path, sizeof path, "%s/%s", dir, id + 7);
  FILE *fp = fopen(path, "wb");
  assert_non_null(fp);
  fprintf(fp, "blob %u", n);
  fclose(fp);
}

static void put_model(store_conn *c, unsigned n, const char *name, int64_t created) {
  make_blob(c, n);
  store_model m;
  memset(&m, 0, sizeof m);
  model_id(m.id, n);
  snprintf(m.name, sizeof m.name, "%s", name);
  snprintf(m.version, sizeof m.version, "v%u", n);
  m.size = 1000 + n;
  m.created = created;
  int created_flag = -1;
  assert_int_equal(store_model_put(c, &m, &created_flag), 0);
  assert_int_equal(created_flag, 1);
}

static void make_job(store_conn *c, unsigned model_n, const char *key, int64_t created,
                     store_job *out) {
  memset(out, 0, sizeof *out);
  model_id(out->model, model_n);
  snprintf(out->key, sizeof out->key, "%s", key ? key : "");
  out->created = created;
  out->spec = strdup("{\"passes\":[]}");
  int existing = -1;
  assert_int_equal(store_job_create(c, out, 0, &existing), 0);
  assert_int_equal(existing, 0);
}

static int count_entries(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
  closedir(d);
  return n;
}

/* ------------------------------------------------------------------ models ---- */

static void test_model_crud(void **state) {
  fixture *f = *state;
  store_model m;
  memset(&m, 0, sizeof m);
  model_id(m.id, 1);
  snprintf(m.name, sizeof m.name, "kws");
  snprintf(m.version, sizeof m.version, "1.0");
  m.size = 4242;
  m.ir_version = 8;
  snprintf(m.opsets, sizeof m.opsets, "{\"\":13,\"com.microsoft\":1}");
  m.node_count = 10;
  m.weight_count = 4;
  m.param_count = 12345;
  make_blob(f->c, 1);
  make_blob(f->c, 2);
  int created = -1;
  assert_int_equal(store_model_put(f->c, &m, &created), 0);
  assert_int_equal(created, 1);
  assert_true(m.created > 0);
  assert_string_equal(m.format, "onnx");

  store_model g;
  assert_int_equal(store_model_get(f->c, m.id, &g), 0);
  assert_string_equal(g.id, m.id);
  assert_string_equal(g.name, "kws");
  assert_string_equal(g.version, "1.0");
  assert_int_equal(g.size, 4242);
  assert_int_equal(g.ir_version, 8);
  assert_string_equal(g.opsets, "{\"\":13,\"com.microsoft\":1}");
  assert_int_equal(g.node_count, 10);
  assert_int_equal(g.weight_count, 4);
  assert_int_equal(g.param_count, 12345);
  assert_int_equal(g.created, m.created);
  assert_string_equal(g.parent, "");
  assert_string_equal(g.job, "");

  /* Same id again: not created, the stored row comes back (name and time unchanged). */
  store_model again;
  memset(&again, 0, sizeof again);
  model_id(again.id, 1);
  snprintf(again.name, sizeof again.name, "other-name");
  again.created = m.created + 5000;
  assert_int_equal(store_model_put(f->c, &again, &created), 0);
  assert_int_equal(created, 0);
  assert_string_equal(again.name, "kws");
  assert_int_equal(again.created, m.created);
  assert_int_equal(again.size, 4242);

  /* A derived model keeps parent and job. */
  store_model d;
  memset(&d, 0, sizeof d);
  model_id(d.id, 2);
  snprintf(d.parent, sizeof d.parent, "%s", m.id);
  snprintf(d.job, sizeof d.job, "job_0000000000000abcdefabcdef");
  d.size = 10;
  assert_int_equal(store_model_put(f->c, &d, &created), 0);
  assert_int_equal(store_model_get(f->c, d.id, &g), 0);
  assert_string_equal(g.parent, m.id);
  assert_string_equal(g.job, "job_0000000000000abcdefabcdef");

  uint64_t bytes = 0;
  assert_int_equal(store_bytes_total(f->c, &bytes), 0);
  assert_int_equal(bytes, 4242 + 10);

  char unknown[72];
  model_id(unknown, 99);
  assert_int_equal(store_model_get(f->c, unknown, &g), MOPT_ENOTFOUND);
  assert_int_equal(store_model_delete(f->c, m.id), 0);
  assert_int_equal(store_model_get(f->c, m.id, &g), MOPT_ENOTFOUND);
  assert_int_equal(store_model_delete(f->c, m.id), MOPT_ENOTFOUND);
  assert_int_equal(store_bytes_total(f->c, &bytes), 0);
  assert_int_equal(bytes, 10);
}

/* The index never points at a missing blob, and a blob is never removed under a row. */
static void test_model_blob_invariants(void **state) {
  fixture *f = *state;
  store_model m;
  memset(&m, 0, sizeof m);
  int created = -1;
  snprintf(m.id, sizeof m.id, "sha256:../../etc");
  assert_int_equal(store_model_put(f->c, &m, &created), MOPT_EINVAL);
  model_id(m.id, 5);
  m.size = 1;
  assert_int_equal(store_model_put(f->c, &m, &created), MOPT_ENOTFOUND);   /* not published */
  assert_int_equal(created, 0);
  store_model g;
  assert_int_equal(store_model_get(f->c, m.id, &g), MOPT_ENOTFOUND);       /* nothing kept */

  /* A real blob through the upload path, then indexed. */
  store_upload *u = NULL;
  assert_int_equal(store_upload_begin(f->s, &u), 0);
  assert_int_equal(store_upload_write(u, "abc", 3), 0);
  char hex[65];
  uint64_t size = 0;
  assert_int_equal(store_upload_finish(u, hex, &size), 0);
  int existed = -1;
  assert_int_equal(store_upload_publish(u, &existed), 0);
  snprintf(m.id, sizeof m.id, "sha256:%s", hex);
  m.size = size;
  m.created = 0;
  assert_int_equal(store_model_put(f->c, &m, &created), 0);
  assert_int_equal(created, 1);
  /* Removing the blob of an indexed model is refused and leaves the file. */
  char p[PATH_MAX];
  assert_int_equal(store_blob_remove(f->s, hex), MOPT_ECONFLICT);
  assert_int_equal(store_blob_path(f->s, hex, p, sizeof p), 0);
  assert_int_equal(store_model_delete(f->c, m.id), 0);
  assert_int_equal(store_blob_remove(f->s, hex), 0);
  assert_int_equal(store_blob_path(f->s, hex, p, sizeof p), MOPT_ENOTFOUND);
  /* Delete raced ahead of a re-upload's put: the put fails instead of indexing a ghost. */
  m.created = 0;
  assert_int_equal(store_model_put(f->c, &m, &created), MOPT_ENOTFOUND);
  assert_int_equal(store_model_get(f->c, m.id, &g), MOPT_ENOTFOUND);
}

static void test_model_pagination(void **state) {
  fixture *f = *state;
  /* 25 models; created times with ties (every 3 share one), names alternating a/b. */
  for (unsigned i = 0; i < 25; i++) put_model(f->c, i + 1, (i % 2) ? "b" : "a", 1000 + i / 3);

  store_model page[10];
  uint32_t n = 0;
  char cursor[64] = "", next[64];
  int seen[26] = {0};
  int total = 0, pages = 0;
  int64_t prev_created = INT64_MAX;
  do {
    assert_int_equal(store_model_list(f->c, NULL, cursor, 10, page, &n, next), 0);
    pages++;
    for (uint32_t i = 0; i < n; i++) {
      unsigned id = (unsigned)strtoul(page[i].id + 7, NULL, 16);
      assert_true(id >= 1 && id <= 25);
      assert_int_equal(seen[id], 0);   /* never twice */
      seen[id] = 1;
      assert_true(page[i].created <= prev_created);   /* newest first */
      prev_created = page[i].created;
      total++;
    }
    if (pages == 1) {
      assert_int_equal(n, 10);
      /* The newest model is first (highest created, then latest insert). */
      assert_int_equal(strtoul(page[0].id + 7, NULL, 16), 25);
      /* A model inserted while paging is newer than the cursor: not in later pages. */
      put_model(f->c, 100, "a", 5000);
    }
    snprintf(cursor, sizeof cursor, "%s", next);
  } while (cursor[0]);
  assert_int_equal(pages, 3);
  assert_int_equal(total, 25);

  /* Exactly one page when the limit covers everything: no next cursor. */
  store_model all[40];
  assert_int_equal(store_model_list(f->c, NULL, "", 40, all, &n, next), 0);
  assert_int_equal(n, 26);
  assert_string_equal(next, "");
  assert_int_equal(store_model_list(f->c, NULL, "", 26, all, &n, next), 0);
  assert_int_equal(n, 26);
  assert_string_equal(next, "");

  /* Name filter, paged by 4. */
  int count_a = 0;
  cursor[0] = 0;
  do {
    assert_int_equal(store_model_list(f->c, "a", cursor, 4, page, &n, next), 0);
    for (uint32_t i = 0; i < n; i++) assert_string_equal(page[i].name, "a");
    count_a += (int)n;
    snprintf(cursor, sizeof cursor, "%s", next);
  } while (cursor[0]);
  assert_int_equal(count_a, 13 + 1);
  assert_int_equal(store_model_list(f->c, "nope", "", 4, page, &n, next), 0);
  assert_int_equal(n, 0);
  assert_string_equal(next, "");

  /* Garbage cursors are refused, not misread. */
  assert_int_equal(store_model_list(f->c, NULL, "zz", 4, page, &n, next), MOPT_EINVAL);
  assert_int_equal(store_model_list(f->c, NULL, "' OR 1=1 --", 4, page, &n, next), MOPT_EINVAL);
}

static void test_model_delete_conflict(void **state) {
  fixture *f = *state;
  put_model(f->c, 1, "m", 0);
  put_model(f->c, 2, "m", 0);
  put_model(f->c, 3, "m", 0);
  store_job j;
  make_job(f->c, 1, "k1", 0, &j);
  char id[72];
  model_id(id, 1);
  assert_int_equal(store_model_delete(f->c, id), MOPT_ECONFLICT);
  store_model g;
  assert_int_equal(store_model_get(f->c, id, &g), 0);   /* still there */

  /* The output of a job is referenced too. */
  store_job cl;
  assert_int_equal(store_job_claim(f->c, &cl), 0);
  char out[72];
  model_id(out, 2);
  assert_int_equal(store_job_succeed(f->c, cl.id, out, "{}"), 0);
  assert_int_equal(store_model_delete(f->c, out), MOPT_ECONFLICT);

  /* A release refers to model 3 (the releases table of schema v2). */
  model_id(id, 3);
  char sql[256];
  snprintf(sql, sizeof sql,
           "INSERT INTO releases(name, channel, version, model, created) "
           "VALUES('kws','stable',1,'%s',0)", id);
  assert_int_equal(sqlite3_exec(f->c->db, sql, NULL, NULL, NULL), SQLITE_OK);
  assert_int_equal(store_model_delete(f->c, id), MOPT_ECONFLICT);
  assert_int_equal(sqlite3_exec(f->c->db, "DELETE FROM releases", NULL, NULL, NULL), SQLITE_OK);
  assert_int_equal(store_model_delete(f->c, id), 0);
  store_job_free(&j);
  store_job_free(&cl);
}

/* -------------------------------------------------------------------- jobs ---- */

static void test_job_create_and_dedup(void **state) {
  fixture *f = *state;
  put_model(f->c, 1, "m", 0);
  put_model(f->c, 2, "out", 0);
  int64_t before = store_now_ms();
  store_job j;
  make_job(f->c, 1, "key-A", 0, &j);
  /* id: "job_" + 13 hex of unix ms + 13 random hex, all lowercase. */
  assert_int_equal(strlen(j.id), 30);
  assert_memory_equal(j.id, "job_", 4);
  for (int i = 4; i < 30; i++) assert_non_null(strchr("0123456789abcdef", j.id[i]));
  char ms[14];
  memcpy(ms, j.id + 4, 13);
  ms[13] = 0;
  int64_t t = (int64_t)strtoll(ms, NULL, 16);
  assert_true(t >= before && t <= store_now_ms());
  assert_int_equal(j.state, STORE_JOB_QUEUED);
  assert_int_equal(j.rev, 1);

  store_job g;
  assert_int_equal(store_job_get(f->c, j.id, &g), 0);
  assert_string_equal(g.id, j.id);
  assert_string_equal(g.key, "key-A");
  assert_string_equal(g.spec, "{\"passes\":[]}");
  assert_int_equal(g.state, STORE_JOB_QUEUED);
  assert_int_equal(g.started, 0);
  assert_int_equal(g.finished, 0);
  assert_null(g.report);
  assert_null(g.error);
  assert_int_equal(g.rev, 1);
  store_job_free(&g);

  /* Same key while the first is only queued: a new job (no result to reuse yet). */
  store_job j2;
  make_job(f->c, 1, "key-A", 0, &j2);
  assert_string_not_equal(j2.id, j.id);

  /* Once one succeeds, the same key returns it with existing = 1. */
  store_job cl;
  assert_int_equal(store_job_claim(f->c, &cl), 0);
  assert_string_equal(cl.id, j.id);
  char out[72];
  model_id(out, 2);
  assert_int_equal(store_job_succeed(f->c, cl.id, out, "{\"r\":1}"), 0);
  store_job j3;
  memset(&j3, 0, sizeof j3);
  model_id(j3.model, 1);
  snprintf(j3.key, sizeof j3.key, "key-A");
  char *myspec = strdup("{\"passes\":[]}");
  j3.spec = myspec;
  int existing = -1;
  assert_int_equal(store_job_create(f->c, &j3, 1, &existing), 0);   /* limit not applied */
  assert_int_equal(existing, 1);
  assert_string_equal(j3.id, j.id);
  assert_int_equal(j3.state, STORE_JOB_SUCCEEDED);
  assert_string_equal(j3.output, out);
  assert_string_equal(j3.report, "{\"r\":1}");
  free(myspec);
  store_job_free(&j3);

  /* Unknown model and missing spec. */
  store_job bad;
  memset(&bad, 0, sizeof bad);
  model_id(bad.model, 77);
  bad.spec = strdup("{}");
  assert_int_equal(store_job_create(f->c, &bad, 0, &existing), MOPT_ENOTFOUND);
  store_job_free(&bad);
  memset(&bad, 0, sizeof bad);
  model_id(bad.model, 1);
  assert_int_equal(store_job_create(f->c, &bad, 0, &existing), MOPT_EINVAL);
  assert_int_equal(store_job_get(f->c, "job_nope", &g), MOPT_ENOTFOUND);

  store_job_free(&j);
  store_job_free(&j2);
  store_job_free(&cl);
}

static void test_job_queue_limit(void **state) {
  fixture *f = *state;
  put_model(f->c, 1, "m", 0);
  int existing;
  for (int i = 0; i < 3; i++) {
    store_job j;
    memset(&j, 0, sizeof j);
    model_id(j.model, 1);
    j.spec = strdup("{}");
    assert_int_equal(store_job_create(f->c, &j, 3, &existing), 0);
    store_job_free(&j);
  }
  store_job j;
  memset(&j, 0, sizeof j);
  model_id(j.model, 1);
  j.spec = strdup("{}");
  assert_int_equal(store_job_create(f->c, &j, 3, &existing), MOPT_EBUSY);
  assert_string_equal(j.id, "");   /* nothing inserted */
  uint64_t counts[5];
  assert_int_equal(store_job_counts(f->c, counts), 0);
  assert_int_equal(counts[STORE_JOB_QUEUED], 3);
  /* A running job does not count against the queue. */
  store_job cl;
  assert_int_equal(store_job_claim(f->c, &cl), 0);
  store_job_free(&cl);
  assert_int_equal(store_job_create(f->c, &j, 3, &existing), 0);
  assert_int_equal(store_job_create(f->c, &j, 0, &existing), MOPT_ECONFLICT);   /* same id */
  store_job_free(&j);
}

static void test_job_claim_order_and_progress(void **state) {
  fixture *f = *state;
  put_model(f->c, 1, "m", 0);
  store_job a, b, c3;
  make_job(f->c, 1, "", 3000, &a);
  make_job(f->c, 1, "", 1000, &b);   /* oldest */
  make_job(f->c, 1, "", 2000, &c3);

  store_job cl;
  assert_int_equal(store_job_claim(f->c, &cl), 0);
  assert_string_equal(cl.id, b.id);
  assert_int_equal(cl.state, STORE_JOB_RUNNING);
  assert_int_equal(cl.attempts, 1);
  assert_true(cl.started > 0);
  assert_int_equal(cl.rev, 2);
  assert_string_equal(cl.spec, "{\"passes\":[]}");

  uint64_t rev = 0;
  assert_int_equal(store_job_progress(f->c, cl.id, 0.25, "quantize"), 0);
  assert_int_equal(store_job_rev(f->c, cl.id, &rev), 0);
  assert_int_equal(rev, 3);
  /* Same values: no change, no bump. */
  assert_int_equal(store_job_progress(f->c, cl.id, 0.25, "quantize"), 0);
  assert_int_equal(store_job_rev(f->c, cl.id, &rev), 0);
  assert_int_equal(rev, 3);
  assert_int_equal(store_job_progress(f->c, cl.id, 0.5, "quantize"), 0);
  assert_int_equal(store_job_rev(f->c, cl.id, &rev), 0);
  assert_int_equal(rev, 4);
  store_job g;
  assert_int_equal(store_job_get(f->c, cl.id, &g), 0);
  assert_true(g.progress > 0.49 && g.progress < 0.51);
  assert_string_equal(g.step, "quantize");
  store_job_free(&g);
  /* Out-of-range values are clamped. */
  assert_int_equal(store_job_progress(f->c, cl.id, 7.0, "x"), 0);
  assert_int_equal(store_job_get(f->c, cl.id, &g), 0);
  assert_true(g.progress == 1.0);
  store_job_free(&g);
  /* Progress on a queued job is a conflict; on an unknown one, not found. */
  assert_int_equal(store_job_progress(f->c, a.id, 0.1, "x"), MOPT_ECONFLICT);
  assert_int_equal(store_job_progress(f->c, "job_none", 0.1, "x"), MOPT_ENOTFOUND);
  assert_int_equal(store_job_rev(f->c, "job_none", &rev), MOPT_ENOTFOUND);

  store_job cl2, cl3, none;
  assert_int_equal(store_job_claim(f->c, &cl2), 0);
  assert_string_equal(cl2.id, c3.id);
  assert_int_equal(store_job_claim(f->c, &cl3), 0);
  assert_string_equal(cl3.id, a.id);
  assert_int_equal(store_job_claim(f->c, &none), MOPT_ENOTFOUND);

  /* Terminal transitions. */
  assert_int_equal(store_job_fail(f->c, cl2.id, "{\"code\":\"worker_failed\"}"), 0);
  assert_int_equal(store_job_get(f->c, cl2.id, &g), 0);
  assert_int_equal(g.state, STORE_JOB_FAILED);
  assert_true(g.finished >= g.started);
  assert_string_equal(g.error, "{\"code\":\"worker_failed\"}");
  store_job_free(&g);
  assert_int_equal(store_job_fail(f->c, cl2.id, NULL), MOPT_ECONFLICT);
  char out[72];
  model_id(out, 1);
  assert_int_equal(store_job_succeed(f->c, cl2.id, out, NULL), MOPT_ECONFLICT);
  char missing[72];
  model_id(missing, 55);
  assert_int_equal(store_job_succeed(f->c, cl3.id, missing, NULL), MOPT_ENOTFOUND);
  assert_int_equal(store_job_succeed(f->c, cl3.id, out, "{}"), 0);
  assert_int_equal(store_job_get(f->c, cl3.id, &g), 0);
  assert_int_equal(g.state, STORE_JOB_SUCCEEDED);
  assert_true(g.progress == 1.0);
  assert_string_equal(g.output, out);
  store_job_free(&g);

  store_job_free(&a);
  store_job_free(&b);
  store_job_free(&c3);
  store_job_free(&cl);
  store_job_free(&cl2);
  store_job_free(&cl3);
}

static void test_job_cancel_requeue_counts(void **state) {
  fixture *f = *state;
  put_model(f->c, 1, "m", 0);
  store_job q, r, r2;
  make_job(f->c, 1, "", 1000, &r);
  make_job(f->c, 1, "", 2000, &r2);
  make_job(f->c, 1, "", 3000, &q);
  store_job cl, cl2;
  assert_int_equal(store_job_claim(f->c, &cl), 0);
  assert_string_equal(cl.id, r.id);
  assert_int_equal(store_job_claim(f->c, &cl2), 0);
  assert_string_equal(cl2.id, r2.id);

  /* Queued → cancelled at once. */
  int was_running = -1;
  assert_int_equal(store_job_cancel(f->c, q.id, &was_running), 0);
  assert_int_equal(was_running, 0);
  store_job g;
  assert_int_equal(store_job_get(f->c, q.id, &g), 0);
  assert_int_equal(g.state, STORE_JOB_CANCELLED);
  assert_true(g.finished > 0);
  assert_int_equal(g.rev, 2);
  store_job_free(&g);
  /* Terminal → conflict. */
  assert_int_equal(store_job_cancel(f->c, q.id, &was_running), MOPT_ECONFLICT);
  assert_int_equal(store_job_cancel(f->c, "job_none", &was_running), MOPT_ENOTFOUND);

  /* Running → cancel requested, still running until the worker stops. */
  uint64_t rev0 = 0, rev1 = 0;
  assert_int_equal(store_job_rev(f->c, cl.id, &rev0), 0);
  assert_int_equal(store_job_cancel(f->c, cl.id, &was_running), 0);
  assert_int_equal(was_running, 1);
  assert_int_equal(store_job_get(f->c, cl.id, &g), 0);
  assert_int_equal(g.state, STORE_JOB_RUNNING);
  assert_int_equal(g.cancel_requested, 1);
  rev1 = g.rev;
  assert_true(rev1 > rev0);
  store_job_free(&g);
  was_running = -1;
  assert_int_equal(store_job_cancel(f->c, cl.id, &was_running), 0);   /* repeated: same answer */
  assert_int_equal(was_running, 1);
  assert_int_equal(store_job_cancelled(f->c, cl.id), 0);
  assert_int_equal(store_job_get(f->c, cl.id, &g), 0);
  assert_int_equal(g.state, STORE_JOB_CANCELLED);
  store_job_free(&g);
  assert_int_equal(store_job_cancelled(f->c, cl.id), MOPT_ECONFLICT);

  /* Requeue: running → queued, claimable again with attempts 2. */
  assert_int_equal(store_job_requeue(f->c, cl2.id), 0);
  assert_int_equal(store_job_get(f->c, cl2.id, &g), 0);
  assert_int_equal(g.state, STORE_JOB_QUEUED);
  assert_int_equal(g.started, 0);
  store_job_free(&g);
  assert_int_equal(store_job_requeue(f->c, cl2.id), MOPT_ECONFLICT);
  store_job again;
  assert_int_equal(store_job_claim(f->c, &again), 0);
  assert_string_equal(again.id, cl2.id);
  assert_int_equal(again.attempts, 2);
  store_job_free(&again);
  /* Requeue of a job whose cancel was requested cancels it instead. */
  assert_int_equal(store_job_cancel(f->c, cl2.id, &was_running), 0);
  assert_int_equal(store_job_requeue(f->c, cl2.id), 0);
  assert_int_equal(store_job_get(f->c, cl2.id, &g), 0);
  assert_int_equal(g.state, STORE_JOB_CANCELLED);
  store_job_free(&g);

  store_job n1;
  make_job(f->c, 1, "", 0, &n1);
  uint64_t counts[5];
  assert_int_equal(store_job_counts(f->c, counts), 0);
  assert_int_equal(counts[STORE_JOB_QUEUED], 1);
  assert_int_equal(counts[STORE_JOB_RUNNING], 0);
  assert_int_equal(counts[STORE_JOB_SUCCEEDED], 0);
  assert_int_equal(counts[STORE_JOB_FAILED], 0);
  assert_int_equal(counts[STORE_JOB_CANCELLED], 3);

  assert_string_equal(store_job_state_name(STORE_JOB_SUCCEEDED), "succeeded");
  assert_int_equal(store_job_state_parse("cancelled"), STORE_JOB_CANCELLED);
  assert_int_equal(store_job_state_parse("bogus"), -1);

  store_job_free(&q);
  store_job_free(&r);
  store_job_free(&r2);
  store_job_free(&cl);
  store_job_free(&cl2);
  store_job_free(&n1);
}

static void test_job_list(void **state) {
  fixture *f = *state;
  put_model(f->c, 1, "m1", 0);
  put_model(f->c, 2, "m2", 0);
  /* 12 jobs on model 1, 5 on model 2, with tied creation times. */
  for (int i = 0; i < 17; i++) {
    store_job j;
    make_job(f->c, i < 12 ? 1 : 2, "", 1000 + i / 4, &j);
    store_job_free(&j);
  }
  store_job cl;
  assert_int_equal(store_job_claim(f->c, &cl), 0);   /* one running on model 1 */

  store_job page[5];
  uint32_t n;
  char cursor[64] = "", next[64];
  int total = 0;
  char seen[20][40];
  do {
    assert_int_equal(store_job_list(f->c, -1, NULL, cursor, 5, page, &n, next), 0);
    for (uint32_t i = 0; i < n; i++) {
      for (int k = 0; k < total; k++) assert_string_not_equal(seen[k], page[i].id);
      memcpy(seen[total++], page[i].id, 40);
      assert_non_null(page[i].spec);
      store_job_free(&page[i]);
    }
    snprintf(cursor, sizeof cursor, "%s", next);
  } while (cursor[0]);
  assert_int_equal(total, 17);

  char m2[72];
  model_id(m2, 2);
  total = 0;
  cursor[0] = 0;
  do {
    assert_int_equal(store_job_list(f->c, -1, m2, cursor, 2, page, &n, next), 0);
    for (uint32_t i = 0; i < n; i++) {
      assert_string_equal(page[i].model, m2);
      store_job_free(&page[i]);
    }
    total += (int)n;
    snprintf(cursor, sizeof cursor, "%s", next);
  } while (cursor[0]);
  assert_int_equal(total, 5);

  assert_int_equal(store_job_list(f->c, STORE_JOB_RUNNING, NULL, "", 5, page, &n, next), 0);
  assert_int_equal(n, 1);
  assert_string_equal(page[0].id, cl.id);
  store_job_free(&page[0]);
  assert_int_equal(store_job_list(f->c, STORE_JOB_RUNNING, m2, "", 5, page, &n, next), 0);
  assert_int_equal(n, 0);
  assert_int_equal(store_job_list(f->c, STORE_JOB_QUEUED, m2, "", 5, page, &n, next), 0);
  assert_int_equal(n, 5);
  for (uint32_t i = 0; i < n; i++) store_job_free(&page[i]);
  assert_int_equal(store_job_list(f->c, -1, NULL, "123", 5, page, &n, next), MOPT_EINVAL);
  store_job_free(&cl);
}

/* ------------------------------------------------- recovery and migration ---- */

static void test_crash_recovery(void **state) {
  fixture *f = *state;
  put_model(f->c, 1, "m", 0);
  store_job j1, j2, j3;
  make_job(f->c, 1, "", 1000, &j1);
  make_job(f->c, 1, "", 2000, &j2);
  make_job(f->c, 1, "", 3000, &j3);
  store_job cl1, cl2;
  assert_int_equal(store_job_claim(f->c, &cl1), 0);
  assert_int_equal(store_job_claim(f->c, &cl2), 0);
  int was_running;
  assert_int_equal(store_job_cancel(f->c, cl2.id, &was_running), 0);
  /* Leftovers of an interrupted upload and worker. */
  store_upload *u = NULL;
  assert_int_equal(store_upload_begin(f->s, &u), 0);
  assert_int_equal(store_upload_write(u, "partial", 7), 0);
  char tmp[256], sub[300], junk[400];
  snprintf(tmp, sizeof tmp, "%s/tmp", f->dir);
  snprintf(sub, sizeof sub, "%s/wdir", tmp);
  assert_int_equal(mkdir(sub, 0700), 0);
  snprintf(junk, sizeof junk, "%s/out.onnx", sub);
  FILE *fp = fopen(junk, "w");
  fputs("x", fp);
  fclose(fp);
  assert_int_equal(count_entries(tmp), 2);

  /* While this store is open, a second opener must not recover anything. */
  store *s2 = NULL;
  uint32_t requeued = 99;
  mopt_diag d = {{0}, {0}};
  assert_int_equal(store_open(f->dir, &s2, &requeued, &d), 0);
  assert_int_equal(requeued, 0);
  assert_int_equal(count_entries(tmp), 2);
  store_close(s2);

  /* "Crash": the process goes away without finishing anything (the upload is never
   * aborted; its descriptor and buffer are simply lost with the process). */
  store_close(f->s);
  f->s = NULL;
  assert_int_equal(store_open(f->dir, &f->s, &requeued, &d), 0);
  f->c = store_conn_get(f->s);
  assert_int_equal(requeued, 1);
  assert_int_equal(count_entries(tmp), 0);
  store_job g;
  assert_int_equal(store_job_get(f->c, cl1.id, &g), 0);
  assert_int_equal(g.state, STORE_JOB_QUEUED);
  store_job_free(&g);
  assert_int_equal(store_job_get(f->c, cl2.id, &g), 0);
  assert_int_equal(g.state, STORE_JOB_CANCELLED);   /* cancel was requested before the crash */
  store_job_free(&g);
  /* The re-queued job keeps its place: oldest first. */
  store_job again;
  assert_int_equal(store_job_claim(f->c, &again), 0);
  assert_string_equal(again.id, cl1.id);
  assert_int_equal(again.attempts, 2);
  store_job_free(&again);

  store_job_free(&j1);
  store_job_free(&j2);
  store_job_free(&j3);
  store_job_free(&cl1);
  store_job_free(&cl2);
  store_upload_abort(u);   /* only frees: its temp file was already swept */
}

static int pragma_int(sqlite3 *db, const char *sql) {
  sqlite3_stmt *st = NULL;
  assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
  int v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
  sqlite3_finalize(st);
  return v;
}

static void test_migration_from_v1(void **state) {
  (void)state;
  char dir[64];
  snprintf(dir, sizeof dir, "/tmp/moptd-migrate.XXXXXX");
  assert_non_null(mkdtemp(dir));
  char db_path[PATH_MAX];
  snprintf(db_path, sizeof db_path, "%s/moptd.db", dir);
  sqlite3 *db = NULL;
  assert_int_equal(sqlite3_open(db_path, &db), SQLITE_OK);
  assert_int_equal(store_schema_migrate(db, 1, NULL), 0);
  assert_int_equal(pragma_int(db, "PRAGMA user_version"), 1);
  assert_int_equal(pragma_int(db, "SELECT COUNT(*) FROM sqlite_master WHERE name='releases'"), 0);
  char id[72];
  model_id(id, 7);
  char sql[512];
  snprintf(sql, sizeof sql,
           "INSERT INTO models(id, name, version, size, created) VALUES('%s','old','1',5,123);"
           "INSERT INTO jobs(id, key, state, created, model, spec) "
           "VALUES('job_old', 'k', 1, 124, '%s', '{}');", id, id);
  assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);

  store *s = NULL;
  uint32_t requeued = 0;
  mopt_diag d = {{0}, {0}};
  assert_int_equal(store_open(dir, &s, &requeued, &d), 0);
  assert_int_equal(requeued, 1);
  store_conn *c = store_conn_get(s);
  assert_int_equal(pragma_int(c->db, "PRAGMA user_version"), STORE_SCHEMA_VERSION);
  assert_int_equal(pragma_int(c->db, "SELECT COUNT(*) FROM sqlite_master WHERE name='releases'"),
                   1);
  assert_int_equal(pragma_int(c->db, "PRAGMA foreign_keys"), 1);
  sqlite3_stmt *st = NULL;
  assert_int_equal(sqlite3_prepare_v2(c->db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
  sqlite3_finalize(st);
  store_model m;
  assert_int_equal(store_model_get(c, id, &m), 0);
  assert_string_equal(m.name, "old");
  assert_int_equal(m.created, 123);
  store_close(s);

  /* A database from a newer moptd is refused, with a message. */
  assert_int_equal(sqlite3_open(db_path, &db), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db, "PRAGMA user_version=99", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);
  s = NULL;
  assert_int_equal(store_open(dir, &s, &requeued, &d), MOPT_EINTERNAL);
  assert_null(s);
  assert_non_null(strstr(d.msg, "newer"));
  nftw(dir, fixture_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* --------------------------------------------------- concurrent claiming ---- */

#define CLAIM_JOBS 200
#define CLAIM_THREADS 6

typedef struct claimer {
  store *s;
  char (*ids)[40];
  int n;
  int err;
} claimer;

static void *claim_thread(void *arg) {
  claimer *cl = arg;
  store_conn *c = store_conn_get(cl->s);   /* this thread's own connection */
  if (!c) {
    cl->err = MOPT_EIO;
    return NULL;
  }
  for (;;) {
    store_job j;
    int rc = store_job_claim(c, &j);
    if (rc == MOPT_ENOTFOUND) break;
    if (rc) {
      cl->err = rc;
      break;
    }
    memcpy(cl->ids[cl->n++], j.id, 40);
    store_job_free(&j);
  }
  return NULL;
}

static int cmp_id(const void *a, const void *b) { return strcmp(a, b); }

static void check_unique(char (*all)[40], int n) {
  qsort(all, (size_t)n, 40, cmp_id);
  for (int i = 1; i < n; i++)
    if (!strcmp(all[i - 1], all[i])) fail_msg("job %s claimed twice", all[i]);
}

static void test_claim_threads(void **state) {
  fixture *f = *state;
  put_model(f->c, 1, "m", 0);
  for (int i = 0; i < CLAIM_JOBS; i++) {
    store_job j;
    make_job(f->c, 1, "", 0, &j);
    store_job_free(&j);
  }
  pthread_t th[CLAIM_THREADS];
  claimer cl[CLAIM_THREADS];
  for (int t = 0; t < CLAIM_THREADS; t++) {
    cl[t] = (claimer){f->s, calloc(CLAIM_JOBS, 40), 0, 0};
    assert_int_equal(pthread_create(&th[t], NULL, claim_thread, &cl[t]), 0);
  }
  char(*all)[40] = calloc(CLAIM_JOBS * CLAIM_THREADS, 40);
  int total = 0, busy_threads = 0;
  for (int t = 0; t < CLAIM_THREADS; t++) {
    pthread_join(th[t], NULL);
    assert_int_equal(cl[t].err, 0);
    if (cl[t].n > 0) busy_threads++;
    memcpy(all + total, cl[t].ids, (size_t)cl[t].n * 40);
    total += cl[t].n;
    free(cl[t].ids);
  }
  assert_int_equal(total, CLAIM_JOBS);
  check_unique(all, total);
  assert_true(busy_threads >= 1);
  uint64_t counts[5];
  assert_int_equal(store_job_counts(f->c, counts), 0);
  assert_int_equal(counts[STORE_JOB_RUNNING], CLAIM_JOBS);
  assert_int_equal(counts[STORE_JOB_QUEUED], 0);
  free(all);
}

#define CLAIM_PROCS 4

static void test_claim_processes(void **state) {
  fixture *f = *state;
  put_model(f->c, 1, "m", 0);
  for (int i = 0; i < CLAIM_JOBS; i++) {
    store_job j;
    make_job(f->c, 1, "", 0, &j);
    store_job_free(&j);
  }
  /* SQLite connections must not cross fork(): close ours, children open their own. */
  store_close(f->s);
  f->s = NULL;
  int fds[CLAIM_PROCS][2];
  pid_t pids[CLAIM_PROCS];
  for (int p = 0; p < CLAIM_PROCS; p++) {
    assert_int_equal(pipe(fds[p]), 0);
    pids[p] = fork();
    assert_true(pids[p] >= 0);
    if (pids[p] == 0) {
      close(fds[p][0]);
      store *s = NULL;
      if (store_open(f->dir, &s, NULL, NULL) != 0) _exit(2);
      store_conn *c = store_conn_get(s);
      for (;;) {
        store_job j;
        int rc = store_job_claim(c, &j);
        if (rc == MOPT_ENOTFOUND) break;
        if (rc) _exit(3);
        char line[41];
        memcpy(line, j.id, 40);
        line[40] = 0;
        if (write(fds[p][1], line, 40) != 40) _exit(4);
        store_job_free(&j);
      }
      store_close(s);
      _exit(0);
    }
    close(fds[p][1]);
  }
  char(*all)[40] = calloc(CLAIM_JOBS * 2, 40);
  int total = 0;
  for (int p = 0; p < CLAIM_PROCS; p++) {
    char buf[40];
    ssize_t r;
    while ((r = read(fds[p][0], buf, 40)) == 40) {
      assert_true(total < CLAIM_JOBS * 2);
      memcpy(all[total++], buf, 40);
    }
    close(fds[p][0]);
    int status = 0;
    waitpid(pids[p], &status, 0);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
  }
  assert_int_equal(total, CLAIM_JOBS);
  check_unique(all, total);
  free(all);
  mopt_diag d = {{0}, {0}};
  assert_int_equal(store_open(f->dir, &f->s, NULL, &d), 0);   /* teardown closes it */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_model_crud, setup, teardown),
      cmocka_unit_test_setup_teardown(test_model_blob_invariants, setup, teardown),
      cmocka_unit_test_setup_teardown(test_model_pagination, setup, teardown),
      cmocka_unit_test_setup_teardown(test_model_delete_conflict, setup, teardown),
      cmocka_unit_test_setup_teardown(test_job_create_and_dedup, setup, teardown),
      cmocka_unit_test_setup_teardown(test_job_queue_limit, setup, teardown),
      cmocka_unit_test_setup_teardown(test_job_claim_order_and_progress, setup, teardown),
      cmocka_unit_test_setup_teardown(test_job_cancel_requeue_counts, setup, teardown),
      cmocka_unit_test_setup_teardown(test_job_list, setup, teardown),
      cmocka_unit_test_setup_teardown(test_crash_recovery, setup, teardown),
      cmocka_unit_test(test_migration_from_v1),
      cmocka_unit_test_setup_teardown(test_claim_threads, setup, teardown),
      cmocka_unit_test_setup_teardown(test_claim_processes, setup, teardown),
  };
  return cmocka_run_group_tests_name("storage/store", tests, NULL, NULL);
}
