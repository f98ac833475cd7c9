/* release.c — unit tests for OTA releases and the payloads index (storage/release.c):
 * versions grow per (name, channel) and a rollback still raises them, history newest first,
 * list of current releases, a released model cannot be deleted, payload rows are unique per
 * (kind, base, target) even for full payloads (NULL base) and under concurrent threads,
 * pending → ready / failed transitions, lookup by digest, and the v2 → v3 migration.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store_int.h"
#include "fixture.h"

static int setup(void **state) { return fixture_setup(state, "reltest"); }
static int teardown(void **state) { return fixture_teardown(state); }

static void put_model(store_conn *c, unsigned n) {
  char id[72], dir[PATH_MAX], path[PATH_MAX + 80];
  model_id(id, n);
  snprintf(dir, sizeof dir, "%s/blobs/%.2s", store_data_dir(c->s), id + 7);
  mkdir(dir, 0750);
  snprintf(path, sizeof path, "%s/%s", dir, id + 7);
  FILE *fp = fopen(path, "wb");
  assert_non_null(fp);
  fprintf(fp, "blob %u", n);
  fclose(fp);
  store_model m;
  memset(&m, 0, sizeof m);
  memcpy(m.id, id, sizeof m.id);
  snprintf(m.name, sizeof m.name, "m%u", n);
  m.size = 10;
  m.created = 1000 + n;
  int created = 0;
  assert_int_equal(store_model_put(c, &m, &created), 0);
  assert_int_equal(created, 1);
}

static void test_release_versions(void **state) {
  fixture *f = *state;
  char a[72], b[72], cc[72];
  put_model(f->c, 1);
  put_model(f->c, 2);
  put_model(f->c, 3);
  model_id(a, 1);
  model_id(b, 2);
  model_id(cc, 9);
  store_release r;
  assert_int_equal(store_release_current(f->c, "kws", "stable", &r), MOPT_ENOTFOUND);
  assert_int_equal(store_release_publish(f->c, "kws", "stable", cc, &r), MOPT_ENOTFOUND);
  assert_int_equal(store_release_publish(f->c, "kws", "stable", a, &r), 0);
  assert_int_equal(r.version, 1);
  assert_int_equal(store_release_publish(f->c, "kws", "stable", b, &r), 0);
  assert_int_equal(r.version, 2);
  /* rollback to a: a new row, version 3 */
  assert_int_equal(store_release_publish(f->c, "kws", "stable", a, &r), 0);
  assert_int_equal(r.version, 3);
  /* another channel counts on its own */
  assert_int_equal(store_release_publish(f->c, "kws", "beta", b, &r), 0);
  assert_int_equal(r.version, 1);
  store_release h[8];
  uint32_t n = 0;
  assert_int_equal(store_release_history(f->c, "kws", "stable", 8, h, &n), 0);
  assert_int_equal(n, 3);
  assert_int_equal(h[0].version, 3);
  assert_string_equal(h[0].model, a);
  assert_string_equal(h[1].model, b);
  assert_int_equal(h[2].version, 1);
  assert_int_equal(store_release_history(f->c, "kws", "stable", 2, h, &n), 0);
  assert_int_equal(n, 2);
  assert_int_equal(store_release_current(f->c, "kws", "stable", &r), 0);
  assert_string_equal(r.model, a);
  char next[64];
  assert_int_equal(store_release_list(f->c, NULL, 8, h, &n, next), 0);
  assert_int_equal(n, 2);
  assert_string_equal(h[0].channel, "beta");
  assert_string_equal(h[1].channel, "stable");
  assert_int_equal(h[1].version, 3);
  assert_string_equal(next, "");
  /* one per page: the cursor goes on after the last (name, channel), even when that channel
   * is published again between the pages */
  assert_int_equal(store_release_list(f->c, "", 1, h, &n, next), 0);
  assert_int_equal(n, 1);
  assert_string_equal(h[0].channel, "beta");
  assert_int_not_equal(next[0], 0);
  assert_int_equal(store_release_publish(f->c, "kws", "beta", a, &r), 0);
  char again[64];
  assert_int_equal(store_release_list(f->c, next, 1, h, &n, again), 0);
  assert_int_equal(n, 1);
  assert_string_equal(h[0].channel, "stable");
  assert_string_equal(again, "");
  assert_int_equal(store_release_list(f->c, "00000000000000000000000000000fff", 1, h, &n, next),
                   MOPT_EINVAL);
  assert_int_equal(store_release_list(f->c, "not a cursor", 1, h, &n, next), MOPT_EINVAL);
  /* released models are pinned */
  assert_int_equal(store_model_delete(f->c, b), MOPT_ECONFLICT);
  char d3[72];
  model_id(d3, 3);
  assert_int_equal(store_model_delete(f->c, d3), 0);
}

static void test_payload_rows(void **state) {
  fixture *f = *state;
  char a[72], b[72];
  put_model(f->c, 1);
  put_model(f->c, 2);
  model_id(a, 1);
  model_id(b, 2);
  store_payload p, q;
  int created = 0;
  assert_int_equal(store_payload_request(f->c, "full", "", b, &p, &created), 0);
  assert_int_equal(created, 1);
  assert_int_equal(p.state, STORE_PAYLOAD_PENDING);
  assert_string_equal(p.base, "");
  /* NULL base: the unique index still holds (ifnull) */
  assert_int_equal(store_payload_request(f->c, "full", NULL, b, &q, &created), 0);
  assert_int_equal(created, 0);
  assert_int_equal(q.seq, p.seq);
  assert_int_equal(sqlite3_exec(f->c->db, "INSERT INTO payloads(kind, base, target, created) "
                                "VALUES('full', NULL, 'x', 1), ('full', NULL, 'x', 2)",
                                NULL, NULL, NULL) & 0xff, SQLITE_CONSTRAINT);
  assert_int_equal(store_payload_request(f->c, "delta", a, b, &q, &created), 0);
  assert_int_equal(created, 1);
  assert_true(q.seq != p.seq);
  assert_int_equal(store_payload_request(f->c, "delta", b, b, &q, &created), MOPT_EINVAL);
  assert_int_equal(store_payload_request(f->c, "delta", NULL, b, &q, &created), MOPT_EINVAL);
  assert_int_equal(store_payload_request(f->c, "full", a, b, &q, &created), MOPT_EINVAL);
  assert_int_equal(store_payload_request(f->c, "zip", NULL, b, &q, &created), MOPT_EINVAL);
  char z[72];
  model_id(z, 77);
  assert_int_equal(store_payload_request(f->c, "delta", z, b, &q, &created), MOPT_ENOTFOUND);

  store_payload pend[8];
  uint32_t n = 0;
  assert_int_equal(store_payload_pending(f->c, 8, pend, &n), 0);
  assert_int_equal(n, 2);
  assert_int_equal(pend[0].seq, p.seq);
  char dig[65];
  memset(dig, 'e', 64);
  dig[64] = 0;
  assert_int_equal(store_payload_by_digest(f->c, dig, &q), MOPT_ENOTFOUND);
  assert_int_equal(store_payload_ready(f->c, p.seq, dig, 1234), 0);
  assert_int_equal(store_payload_ready(f->c, p.seq, dig, 1234), MOPT_ECONFLICT);
  assert_int_equal(store_payload_ready(f->c, 99999, dig, 1), MOPT_ENOTFOUND);
  assert_int_equal(store_payload_by_digest(f->c, dig, &q), 0);
  assert_int_equal(q.size, 1234);
  assert_string_equal(q.kind, "full");
  assert_int_equal(q.state, STORE_PAYLOAD_READY);
  assert_int_equal(store_payload_fail(f->c, pend[1].seq, "codec said no"), 0);
  assert_int_equal(store_payload_get(f->c, "delta", a, b, &q), 0);
  assert_int_equal(q.state, STORE_PAYLOAD_FAILED);
  assert_string_equal(q.error, "codec said no");
  assert_int_equal(store_payload_pending(f->c, 8, pend, &n), 0);
  assert_int_equal(n, 0);
  assert_string_equal(store_payload_state_name(STORE_PAYLOAD_READY), "ready");
}

typedef struct race { store *s; int created; int64_t seq; } race;

static void *race_thread(void *arg) {
  race *r = arg;
  store_conn *c = store_conn_get(r->s);
  char a[72], b[72];
  model_id(a, 1);
  model_id(b, 2);
  store_payload p;
  if (store_payload_request(c, "delta", a, b, &p, &r->created) == 0) r->seq = p.seq;
  return NULL;
}

static void test_payload_concurrent(void **state) {
  fixture *f = *state;
  put_model(f->c, 1);
  put_model(f->c, 2);
  enum { N = 8 };
  pthread_t t[N];
  race r[N];
  for (int i = 0; i < N; i++) {
    r[i].s = f->s;
    r[i].created = 0;
    r[i].seq = -1;
    assert_int_equal(pthread_create(&t[i], NULL, race_thread, &r[i]), 0);
  }
  int total = 0;
  for (int i = 0; i < N; i++) {
    pthread_join(t[i], NULL);
    total += r[i].created;
    assert_int_equal(r[i].seq, r[0].seq);
    assert_true(r[i].seq > 0);
  }
  assert_int_equal(total, 1);
}

static void test_migration_v2_to_v3(void **state) {
  (void)state;
  char dir[64];
  snprintf(dir, sizeof dir, "/tmp/moptd-relmig.XXXXXX");
  assert_non_null(mkdtemp(dir));
  char dbp[128];
  snprintf(dbp, sizeof dbp, "%s/moptd.db", dir);
  sqlite3 *db = NULL;
  assert_int_equal(sqlite3_open(dbp, &db), SQLITE_OK);
  assert_int_equal(store_schema_migrate(db, 2, NULL), 0);
  assert_int_not_equal(sqlite3_exec(db, "SELECT * FROM payloads", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);
  store *s = NULL;
  mopt_diag d = {{0}, {0}};
  assert_int_equal(store_open(dir, &s, NULL, &d), 0);
  store_conn *c = store_conn_get(s);
  assert_int_equal(sqlite3_exec(c->db, "SELECT * FROM payloads", NULL, NULL, NULL), SQLITE_OK);
  store_close(s);
  nftw(dir, fixture_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_release_versions, setup, teardown),
      cmocka_unit_test_setup_teardown(test_payload_rows, setup, teardown),
      cmocka_unit_test_setup_teardown(test_payload_concurrent, setup, teardown),
      cmocka_unit_test(test_migration_v2_to_v3),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
