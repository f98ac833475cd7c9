/* fixture.h — what the storage tests share: a store opened on a fresh temp data dir (removed
 * with everything in it at teardown) with this thread's connection, and model ids made from a
 * number. Include after cmocka.h. */
#ifndef MOPT_STORAGE_FIXTURE_H
#define MOPT_STORAGE_FIXTURE_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "store.h"

typedef struct fixture {
  char dir[64];
  store *s;
  store_conn *c;
} fixture;

static int fixture_rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb; (void)flag; (void)ftw;
  return remove(p);
}

/* cmocka setup: *state becomes the fixture; tag names the temp dir (/tmp/moptd-<tag>.XXXXXX). */
static inline int fixture_setup(void **state, const char *tag) {
  fixture *f = calloc(1, sizeof *f);
  if (!f) return -1;
  snprintf(f->dir, sizeof f->dir, "/tmp/moptd-%s.XXXXXX", tag);
  if (!mkdtemp(f->dir)) return -1;
  mopt_diag d = {{0}, {0}};
  if (store_open(f->dir, &f->s, NULL, &d) != 0) return -1;
  f->c = store_conn_get(f->s);
  *state = f;
  return f->c ? 0 : -1;
}

static inline int fixture_teardown(void **state) {
  fixture *f = *state;
  store_close(f->s);
  nftw(f->dir, fixture_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(f);
  return 0;
}

/* A model id: "sha256:" + 64 hex digits of n. */
static inline void model_id(char out[72], unsigned n) { snprintf(out, 72, "sha256:%064x", n); }

#endif
