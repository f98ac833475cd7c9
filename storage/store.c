/* store.c — opening the data dir, per-thread SQLite connections, schema migrations, crash
 * recovery, and the statement cache shared by the other storage files.
 *
 * Connections: one per thread (a pthread key), opened lazily, each with its own cached
 * prepared statements; the store keeps every connection in a list so store_close can close
 * them all (a thread's connection is also closed when that thread exits). Connections are
 * opened SQLITE_OPEN_NOMUTEX because a connection never leaves its thread.
 *
 * Durability trade-off (synchronous): connections run with synchronous=FULL, so every commit
 * fsyncs the WAL and an acknowledged model or job survives power loss, not just a crash of
 * the process (WAL + NORMAL only guarantees the latter). The cost is one fsync per write
 * transaction; the one frequent write, job progress, switches that connection to NORMAL for
 * its single statement, since losing a progress value on power loss is harmless and the next
 * FULL commit makes it durable anyway.
 *
 * Crash recovery runs only when this process is the sole user of the data dir (an exclusive
 * flock on moptd.lock, then downgraded to shared): another live process may own the jobs in
 * state 'running' and the files in tmp/, so a second opener must not touch them.
 */
#include "store_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *const stmt_sql[ST_COUNT] = {
#define STORE_X_SQL(name, sql) [name] = sql,
    STORE_STMT_MAP(STORE_X_SQL)
#undef STORE_X_SQL
};

/* ------------------------------------------------------------------ helpers ---- */

int64_t store_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int store_sqlite_err(int rc) {
  switch (rc & 0xff) {
  case SQLITE_OK: case SQLITE_DONE: case SQLITE_ROW: return 0;
  case SQLITE_BUSY: case SQLITE_LOCKED: return MOPT_EUNAVAILABLE;
  case SQLITE_NOMEM: return MOPT_ENOMEM;
  case SQLITE_CONSTRAINT: return MOPT_ECONFLICT;
  case SQLITE_IOERR: case SQLITE_FULL: case SQLITE_CANTOPEN: case SQLITE_READONLY:
  case SQLITE_CORRUPT: case SQLITE_NOTADB: case SQLITE_PERM: return MOPT_EIO;
  default: return MOPT_EINTERNAL;
  }
}

void store_col_text(sqlite3_stmt *st, int col, char *buf, size_t n) {
  const unsigned char *t = sqlite3_column_text(st, col);
  snprintf(buf, n, "%s", t ? (const char *)t : "");
}

sqlite3_stmt *store_stmt(store_conn *c, store_stmt_id id, int *rc) {
  if (!c || id < 0 || id >= ST_COUNT) {
    if (rc) *rc = MOPT_EINTERNAL;
    return NULL;
  }
  if (!c->stmts[id]) {
    int r = sqlite3_prepare_v3(c->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
                               &c->stmts[id], NULL);
    if (r != SQLITE_OK) {
      c->stmts[id] = NULL;
      if (rc) *rc = store_sqlite_err(r);
      return NULL;
    }
  }
  return c->stmts[id];
}

void store_stmt_done(sqlite3_stmt *st) {
  if (!st) return;
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
}

int store_exec_cached(store_conn *c, store_stmt_id id) {
  int rc = 0;
  sqlite3_stmt *st = store_stmt(c, id, &rc);
  if (!st) return rc;
  int r;
  while ((r = sqlite3_step(st)) == SQLITE_ROW) {}
  store_stmt_done(st);
  return r == SQLITE_DONE ? 0 : store_sqlite_err(r);
}

int store_tx_begin(store_conn *c) { return store_exec_cached(c, ST_BEGIN_IMMEDIATE); }

int store_tx_commit(store_conn *c) {
  int rc = store_exec_cached(c, ST_COMMIT);
  if (rc) store_tx_rollback(c);
  return rc;
}

void store_tx_rollback(store_conn *c) {
  if (c && !sqlite3_get_autocommit(c->db)) (void)store_exec_cached(c, ST_ROLLBACK);
}

/* ------------------------------------------------------------------ cursors ---- */

void store_cursor_format(int64_t created, int64_t seq, char out[64]) {
  snprintf(out, 64, "%016llx%016llx", (unsigned long long)(uint64_t)created,
           (unsigned long long)(uint64_t)seq);
}

static int hexval(char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  return -1;
}

int store_cursor_parse(const char *cursor, int64_t *created, int64_t *seq) {
  if (!cursor || !cursor[0]) {
    *created = INT64_MAX;
    *seq = INT64_MAX;
    return 0;
  }
  if (strlen(cursor) != 32) return MOPT_EINVAL;
  uint64_t v[2] = {0, 0};
  for (int i = 0; i < 32; i++) {
    int h = hexval(cursor[i]);
    if (h < 0) return MOPT_EINVAL;
    v[i / 16] = (v[i / 16] << 4) | (uint64_t)h;
  }
  if (v[0] > INT64_MAX || v[1] > INT64_MAX) return MOPT_EINVAL;
  *created = (int64_t)v[0];
  *seq = (int64_t)v[1];
  return 0;
}

/* --------------------------------------------------------------- migrations ---- */

/* Ordered migrations: entry i takes the schema from user_version i to i+1. Never edit a
 * shipped entry; append a new one and bump STORE_SCHEMA_VERSION. */
static const char *const migrations[] = {
    /* 0 → 1: models and jobs. seq is an explicit INTEGER PRIMARY KEY (stable across VACUUM,
     * unlike an implicit rowid) used as the tie-breaker of the (created, seq) cursor. */
    "CREATE TABLE models ("
    "  seq INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  name TEXT NOT NULL DEFAULT '',"
    "  version TEXT NOT NULL DEFAULT '',"
    "  size INTEGER NOT NULL,"
    "  format TEXT NOT NULL DEFAULT 'onnx',"
    "  ir_version INTEGER NOT NULL DEFAULT 0,"
    "  opsets TEXT NOT NULL DEFAULT '{}',"
    "  node_count INTEGER NOT NULL DEFAULT 0,"
    "  weight_count INTEGER NOT NULL DEFAULT 0,"
    "  param_count INTEGER NOT NULL DEFAULT 0,"
    "  created INTEGER NOT NULL,"
    "  parent TEXT,"
    "  job TEXT);"
    "CREATE INDEX models_created ON models(created, seq);"
    "CREATE INDEX models_name ON models(name, created, seq);"
    "CREATE TABLE jobs ("
    "  seq INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  key TEXT NOT NULL DEFAULT '',"
    "  state INTEGER NOT NULL CHECK (state BETWEEN 0 AND 4),"
    "  progress REAL NOT NULL DEFAULT 0,"
    "  step TEXT NOT NULL DEFAULT '',"
    "  created INTEGER NOT NULL,"
    "  started INTEGER,"
    "  finished INTEGER,"
    "  model TEXT NOT NULL REFERENCES models(id),"
    "  spec TEXT NOT NULL,"
    "  output TEXT REFERENCES models(id),"
    "  report TEXT,"
    "  error TEXT,"
    "  cancel_requested INTEGER NOT NULL DEFAULT 0,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  rev INTEGER NOT NULL DEFAULT 1);"
    "CREATE INDEX jobs_state ON jobs(state, created, seq);"
    "CREATE INDEX jobs_created ON jobs(created, seq);"
    "CREATE INDEX jobs_key ON jobs(key, state);"
    "CREATE INDEX jobs_model ON jobs(model, created, seq);"
    "CREATE INDEX jobs_output ON jobs(output);",
    /* 1 → 2: OTA releases (issue 4). A release pins its model: deleting a released model is
     * a conflict. version grows per (name, channel); history is every row. */
    "CREATE TABLE releases ("
    "  seq INTEGER PRIMARY KEY,"
    "  name TEXT NOT NULL,"
    "  channel TEXT NOT NULL,"
    "  version INTEGER NOT NULL,"
    "  model TEXT NOT NULL REFERENCES models(id),"
    "  created INTEGER NOT NULL,"
    "  UNIQUE (name, channel, version));"
    "CREATE INDEX releases_model ON releases(model);",
    /* 2 → 3: OTA payloads (issue 4). One row per (kind, base, target): the unique index is
     * what makes "compute once" hold under concurrent requests (ifnull because a UNIQUE
     * index treats NULLs as distinct). No foreign keys on base/target: a payload row must not
     * block deleting a model that is no longer released; its blob stays immutable. */
    "CREATE TABLE payloads ("
    "  seq INTEGER PRIMARY KEY,"
    "  kind TEXT NOT NULL CHECK (kind IN ('full','delta')),"
    "  base TEXT,"
    "  target TEXT NOT NULL,"
    "  state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending','ready','failed')),"
    "  digest TEXT,"
    "  size INTEGER,"
    "  error TEXT,"
    "  created INTEGER NOT NULL,"
    "  finished INTEGER,"
    "  CHECK ((kind = 'full') = (base IS NULL)));"
    "CREATE UNIQUE INDEX payloads_key ON payloads(kind, ifnull(base, ''), target);"
    "CREATE INDEX payloads_state ON payloads(state, seq);"
    "CREATE INDEX payloads_digest ON payloads(digest);",
};
_Static_assert(sizeof migrations / sizeof migrations[0] == STORE_SCHEMA_VERSION,
               "one migration per schema version");

static int user_version(sqlite3 *db, int *v) {
  sqlite3_stmt *st = NULL;
  int r = sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL);
  if (r != SQLITE_OK) return store_sqlite_err(r);
  r = sqlite3_step(st);
  *v = r == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
  sqlite3_finalize(st);
  return r == SQLITE_ROW ? 0 : store_sqlite_err(r);
}

int store_schema_migrate(sqlite3 *db, int target, mopt_diag *diag) {
  if (target < 1 || target > STORE_SCHEMA_VERSION)
    return mopt_diag_set(diag, MOPT_EINTERNAL, "schema", "no schema version %d", target);
  for (;;) {
    /* Each step in its own IMMEDIATE transaction, re-reading the version inside it, so two
     * processes opening the same fresh db do not both migrate. */
    int r = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (r != SQLITE_OK)
      return mopt_diag_set(diag, store_sqlite_err(r), "schema", "cannot lock database: %s",
                           sqlite3_errmsg(db));
    int v = 0;
    int rc = user_version(db, &v);
    if (rc) {
      sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
      return mopt_diag_set(diag, rc, "schema", "cannot read user_version: %s",
                           sqlite3_errmsg(db));
    }
    if (v > STORE_SCHEMA_VERSION) {
      sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
      return mopt_diag_set(diag, MOPT_EINTERNAL, "schema",
                           "database schema version %d is newer than this moptd (%d)", v,
                           STORE_SCHEMA_VERSION);
    }
    if (v >= target) {
      sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
      return 0;
    }
    char *err = NULL;
    r = sqlite3_exec(db, migrations[v], NULL, NULL, &err);
    if (r == SQLITE_OK) {
      char sql[64];
      snprintf(sql, sizeof sql, "PRAGMA user_version=%d", v + 1);
      r = sqlite3_exec(db, sql, NULL, NULL, &err);
    }
    if (r == SQLITE_OK) r = sqlite3_exec(db, "COMMIT", NULL, NULL, &err);
    if (r != SQLITE_OK) {
      rc = mopt_diag_set(diag, store_sqlite_err(r), "schema", "migration %d→%d failed: %s", v,
                         v + 1, err ? err : sqlite3_errmsg(db));
      sqlite3_free(err);
      sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
      return rc;
    }
  }
}

int store_db_configure(sqlite3 *db) {
  sqlite3_extended_result_codes(db, 1);
  /* Handler threads and the scheduler write concurrently; wait instead of failing. */
  sqlite3_busy_timeout(db, 5000);
  char *err = NULL;
  int r = sqlite3_exec(db,
                       "PRAGMA journal_mode=WAL;"
                       "PRAGMA foreign_keys=ON;"
                       "PRAGMA synchronous=FULL;"
                       "PRAGMA temp_store=MEMORY;"
                       "PRAGMA journal_size_limit=67108864;",
                       NULL, NULL, &err);
  sqlite3_free(err);
  return r == SQLITE_OK ? 0 : store_sqlite_err(r);
}

/* -------------------------------------------------------------- connections ---- */

static void conn_free(store_conn *c) {
  if (!c) return;
  for (int i = 0; i < ST_COUNT; i++) sqlite3_finalize(c->stmts[i]);
  sqlite3_close_v2(c->db);
  free(c);
}

static void conn_unlink(store *s, store_conn *c) {
  pthread_mutex_lock(&s->mu);
  for (store_conn **p = &s->conns; *p; p = &(*p)->next) {
    if (*p == c) {
      *p = c->next;
      break;
    }
  }
  pthread_mutex_unlock(&s->mu);
}

/* pthread key destructor: a thread that exits closes its connection. */
static void conn_thread_exit(void *p) {
  store_conn *c = p;
  conn_unlink(c->s, c);
  conn_free(c);
}

static store_conn *conn_open(store *s) {
  store_conn *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->s = s;
  int r = sqlite3_open_v2(s->db_path, &c->db,
                          SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
  if (r != SQLITE_OK || store_db_configure(c->db) != 0) {
    conn_free(c);
    return NULL;
  }
  return c;
}

store_conn *store_conn_get(store *s) {
  if (!s) return NULL;
  store_conn *c = pthread_getspecific(s->key);
  if (c) return c;
  c = conn_open(s);
  if (!c) return NULL;
  if (pthread_setspecific(s->key, c) != 0) {
    conn_free(c);
    return NULL;
  }
  pthread_mutex_lock(&s->mu);
  c->next = s->conns;
  s->conns = c;
  pthread_mutex_unlock(&s->mu);
  return c;
}

/* ------------------------------------------------------------ open / close ---- */

static char *path_join(const char *a, const char *b) {
  size_t n = strlen(a) + strlen(b) + 2;
  char *p = malloc(n);
  if (p) snprintf(p, n, "%s/%s", a, b);
  return p;
}

static int mkdir_p1(const char *p) {
  if (mkdir(p, 0750) == 0 || errno == EEXIST) {
    struct stat sb;
    if (stat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) return 0;
  }
  return -1;
}

uint32_t store_sweep_dir(const char *dir) {
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return 0;
  DIR *d = fdopendir(dfd);
  if (!d) {
    close(dfd);
    return 0;
  }
  uint32_t n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    if (unlinkat(dfd, e->d_name, 0) == 0) {
      n++;
      continue;
    }
    if (errno == EISDIR || errno == EPERM) {
      char *sub = path_join(dir, e->d_name);
      if (sub) {
        n += store_sweep_dir(sub);
        if (unlinkat(dfd, e->d_name, AT_REMOVEDIR) == 0) n++;
        free(sub);
      }
    }
  }
  closedir(d);
  return n;
}

/* Re-queues jobs left running by a dead process; a running job whose cancel was already
 * requested becomes cancelled instead. Returns 0 and the number re-queued. */
static int recover_jobs(store_conn *c, uint32_t *requeued) {
  int rc = store_tx_begin(c);
  if (rc) return rc;
  sqlite3_stmt *st = store_stmt(c, ST_JOB_REQUEUE_ALL, &rc);
  if (!st) goto fail;
  int r = sqlite3_step(st);
  uint32_t n = (uint32_t)sqlite3_changes(c->db);
  store_stmt_done(st);
  if (r != SQLITE_DONE) {
    rc = store_sqlite_err(r);
    goto fail;
  }
  st = store_stmt(c, ST_JOB_CANCEL_ORPHANS, &rc);
  if (!st) goto fail;
  sqlite3_bind_int64(st, 1, store_now_ms());
  r = sqlite3_step(st);
  store_stmt_done(st);
  if (r != SQLITE_DONE) {
    rc = store_sqlite_err(r);
    goto fail;
  }
  rc = store_tx_commit(c);
  if (rc == 0 && requeued) *requeued = n;
  return rc;
fail:
  store_tx_rollback(c);
  return rc;
}

int store_open(const char *data_dir, store **out, uint32_t *requeued, mopt_diag *diag) {
  *out = NULL;
  if (requeued) *requeued = 0;
  if (!data_dir || !data_dir[0])
    return mopt_diag_set(diag, MOPT_EINVAL, "data", "no data directory given");
  if (sodium_init() < 0)
    return mopt_diag_set(diag, MOPT_EINTERNAL, "libsodium", "sodium_init failed");
  if (!sqlite3_threadsafe())
    return mopt_diag_set(diag, MOPT_EINTERNAL, "sqlite", "SQLite built without threads");

  store *s = calloc(1, sizeof *s);
  if (!s) return mopt_diag_set(diag, MOPT_ENOMEM, "store", "out of memory");
  s->lock_fd = -1;
  size_t dl = strlen(data_dir);
  while (dl > 1 && data_dir[dl - 1] == '/') dl--;
  s->dir = strndup(data_dir, dl);
  int rc = MOPT_ENOMEM;
  if (!s->dir) goto fail_nokey;
  s->db_path = path_join(s->dir, "moptd.db");
  s->tmp_dir = path_join(s->dir, "tmp");
  s->blob_dir = path_join(s->dir, "blobs");
  if (!s->db_path || !s->tmp_dir || !s->blob_dir) goto fail_nokey;
  if (pthread_key_create(&s->key, conn_thread_exit) != 0) goto fail_nokey;
  pthread_mutex_init(&s->mu, NULL);

  if (mkdir_p1(s->dir) || mkdir_p1(s->tmp_dir) || mkdir_p1(s->blob_dir)) {
    rc = mopt_diag_set(diag, MOPT_EIO, s->dir, "cannot create data directory: %s",
                       strerror(errno));
    goto fail;
  }
  char *lock_path = path_join(s->dir, "moptd.lock");
  if (!lock_path) goto fail;
  s->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
  free(lock_path);
  if (s->lock_fd < 0) {
    rc = mopt_diag_set(diag, MOPT_EIO, s->dir, "cannot open lock file: %s", strerror(errno));
    goto fail;
  }
  int sole = flock(s->lock_fd, LOCK_EX | LOCK_NB) == 0;

  store_conn *c = store_conn_get(s);
  if (!c) {
    rc = mopt_diag_set(diag, MOPT_EIO, s->db_path, "cannot open SQLite database");
    goto fail;
  }
  rc = store_schema_migrate(c->db, STORE_SCHEMA_VERSION, diag);
  if (rc) goto fail;

  if (sole) {
    store_sweep_dir(s->tmp_dir);
    rc = recover_jobs(c, requeued);
    if (rc) {
      mopt_diag_set(diag, rc, s->db_path, "cannot re-queue running jobs: %s",
                    sqlite3_errmsg(c->db));
      goto fail;
    }
  }
  /* Stay registered as a user of the data dir for as long as the store is open. */
  if (flock(s->lock_fd, LOCK_SH) != 0) {
    rc = mopt_diag_set(diag, MOPT_EIO, s->dir, "cannot lock data directory: %s",
                       strerror(errno));
    goto fail;
  }
  *out = s;
  return 0;

fail:
  store_close(s);
  return rc;
fail_nokey:
  free(s->dir);
  free(s->db_path);
  free(s->tmp_dir);
  free(s->blob_dir);
  free(s);
  return mopt_diag_set(diag, rc, "store", "out of memory");
}

void store_close(store *s) {
  if (!s) return;
  /* After key_delete no thread-exit destructor runs for this store any more. */
  pthread_key_delete(s->key);
  pthread_mutex_lock(&s->mu);
  store_conn *c = s->conns;
  s->conns = NULL;
  pthread_mutex_unlock(&s->mu);
  while (c) {
    store_conn *next = c->next;
    conn_free(c);
    c = next;
  }
  pthread_mutex_destroy(&s->mu);
  if (s->lock_fd >= 0) close(s->lock_fd);
  free(s->dir);
  free(s->db_path);
  free(s->tmp_dir);
  free(s->blob_dir);
  free(s);
}

const char *store_data_dir(const store *s) { return s ? s->dir : NULL; }

/* ------------------------------------------------------------------- misc ---- */

int store_bytes_total(store_conn *c, uint64_t *bytes) {
  int rc = 0;
  sqlite3_stmt *st = store_stmt(c, ST_BYTES_TOTAL, &rc);
  if (!st) return rc;
  int r = sqlite3_step(st);
  if (r == SQLITE_ROW) *bytes = (uint64_t)sqlite3_column_int64(st, 0);
  store_stmt_done(st);
  return r == SQLITE_ROW ? 0 : store_sqlite_err(r);
}

void store_token_hash(const char *token, char hex[65]) {
  unsigned char h[crypto_hash_sha256_BYTES];
  crypto_hash_sha256(h, (const unsigned char *)token, token ? strlen(token) : 0);
  sodium_bin2hex(hex, 65, h, sizeof h);
}
