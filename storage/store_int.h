/* store_int.h — internals shared by the files of the storage module (not a public header).
 *
 * Holds the store and connection structs, the table of SQL statements (an X-macro: each
 * connection prepares a statement lazily on first use and keeps it for its lifetime), the
 * schema migrations entry point (exposed so tests can build an older schema), and small
 * helpers. Trade-off: one global statement table means every connection carries a slot for
 * every statement (a few dozen pointers), in exchange for no SQL text scattered in call sites
 * and no re-preparing on the hot paths (GET /v1/jobs/{id} is one cached step).
 */
#ifndef STORE_INT_H
#define STORE_INT_H

#include <pthread.h>
#include <sqlite3.h>
#include <stdint.h>

#include "store.h"

/* Latest schema version this build knows (PRAGMA user_version after migrations). */
#define STORE_SCHEMA_VERSION 3

/* Columns read by store_job_from_row(), in this order. */
#define STORE_JOB_COLS \
  "id, key, state, progress, step, created, started, finished, model, spec, output, report, " \
  "error, cancel_requested, attempts, rev"
/* Columns read by store_model_from_row(), in this order. */
#define STORE_MODEL_COLS \
  "id, name, version, size, format, ir_version, opsets, node_count, weight_count, " \
  "param_count, created, parent, job"

/* Columns of releases / payloads rows, read by release.c in this order. */
#define STORE_REL_COLS "name, channel, version, model, created"
#define STORE_PAY_COLS \
  "seq, kind, ifnull(base,''), target, state, ifnull(digest,''), ifnull(size,0), " \
  "ifnull(error,''), created, ifnull(finished,0)"

/* Every statement the storage module runs. Lists take the cursor as (created, seq) and use
 * (INT64_MAX, INT64_MAX) for the first page so the row-value range stays index-friendly. */
#define STORE_STMT_MAP(X) \
  X(ST_BEGIN_IMMEDIATE, "BEGIN IMMEDIATE") \
  X(ST_COMMIT, "COMMIT") \
  X(ST_ROLLBACK, "ROLLBACK") \
  X(ST_SYNC_FULL, "PRAGMA synchronous=FULL") \
  X(ST_SYNC_NORMAL, "PRAGMA synchronous=NORMAL") \
  X(ST_BYTES_TOTAL, "SELECT COALESCE(SUM(size),0) FROM models") \
  X(ST_MODEL_INSERT, \
    "INSERT INTO models(id, name, version, size, format, ir_version, opsets, node_count, " \
    "weight_count, param_count, created, parent, job) " \
    "VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13) ON CONFLICT(id) DO NOTHING") \
  X(ST_MODEL_GET, "SELECT " STORE_MODEL_COLS ", seq FROM models WHERE id=?1") \
  X(ST_MODEL_LIST, \
    "SELECT " STORE_MODEL_COLS ", seq FROM models WHERE (created, seq) < (?1, ?2) " \
    "ORDER BY created DESC, seq DESC LIMIT ?3") \
  X(ST_MODEL_LIST_NAME, \
    "SELECT " STORE_MODEL_COLS ", seq FROM models WHERE name=?4 AND (created, seq) < (?1, ?2) " \
    "ORDER BY created DESC, seq DESC LIMIT ?3") \
  X(ST_MODEL_REFS, \
    "SELECT (SELECT COUNT(*) FROM jobs WHERE model=?1 OR output=?1) + " \
    "(SELECT COUNT(*) FROM releases WHERE model=?1)") \
  X(ST_MODEL_DELETE, "DELETE FROM models WHERE id=?1") \
  X(ST_JOB_FIND_KEY, \
    "SELECT " STORE_JOB_COLS " FROM jobs WHERE key=?1 AND state=2 " \
    "ORDER BY created DESC, seq DESC LIMIT 1") \
  X(ST_JOB_COUNT_STATE, "SELECT COUNT(*) FROM jobs WHERE state=?1") \
  X(ST_MODEL_EXISTS, "SELECT 1 FROM models WHERE id=?1") \
  X(ST_JOB_INSERT, \
    "INSERT INTO jobs(id, key, state, progress, step, created, model, spec, attempts, rev) " \
    "VALUES(?1,?2,0,0,'',?3,?4,?5,0,1)") \
  X(ST_JOB_GET, "SELECT " STORE_JOB_COLS " FROM jobs WHERE id=?1") \
  X(ST_JOB_REV, "SELECT rev FROM jobs WHERE id=?1") \
  X(ST_JOB_STATE, "SELECT state FROM jobs WHERE id=?1") \
  X(ST_JOB_LIST, \
    "SELECT " STORE_JOB_COLS ", seq FROM jobs WHERE (created, seq) < (?1, ?2) " \
    "ORDER BY created DESC, seq DESC LIMIT ?3") \
  X(ST_JOB_LIST_STATE, \
    "SELECT " STORE_JOB_COLS ", seq FROM jobs WHERE state=?4 AND (created, seq) < (?1, ?2) " \
    "ORDER BY created DESC, seq DESC LIMIT ?3") \
  X(ST_JOB_LIST_MODEL, \
    "SELECT " STORE_JOB_COLS ", seq FROM jobs WHERE model=?5 AND (created, seq) < (?1, ?2) " \
    "ORDER BY created DESC, seq DESC LIMIT ?3") \
  X(ST_JOB_LIST_STATE_MODEL, \
    "SELECT " STORE_JOB_COLS ", seq FROM jobs WHERE state=?4 AND model=?5 " \
    "AND (created, seq) < (?1, ?2) ORDER BY created DESC, seq DESC LIMIT ?3") \
  X(ST_JOB_CLAIM, \
    "UPDATE jobs SET state=1, started=?1, finished=NULL, progress=0, step='', " \
    "attempts=attempts+1, rev=rev+1 " \
    "WHERE seq=(SELECT seq FROM jobs WHERE state=0 ORDER BY created, seq LIMIT 1) " \
    "RETURNING " STORE_JOB_COLS) \
  X(ST_JOB_PROGRESS, \
    "UPDATE jobs SET progress=?2, step=?3, rev=rev+1 WHERE id=?1 AND state=1 " \
    "AND (progress IS NOT ?2 OR step IS NOT ?3)") \
  X(ST_JOB_SUCCEED, \
    "UPDATE jobs SET state=2, progress=1, finished=?2, output=?3, report=?4, error=NULL, " \
    "rev=rev+1 WHERE id=?1 AND state=1") \
  X(ST_JOB_FAIL, \
    "UPDATE jobs SET state=3, finished=?2, error=?3, rev=rev+1 WHERE id=?1 AND state IN (0,1)") \
  X(ST_JOB_CANCEL_QUEUED, \
    "UPDATE jobs SET state=4, finished=?2, cancel_requested=1, rev=rev+1 " \
    "WHERE id=?1 AND state=0") \
  X(ST_JOB_CANCEL_RUNNING, \
    "UPDATE jobs SET cancel_requested=1, rev=rev+1 WHERE id=?1 AND state=1 " \
    "AND cancel_requested=0") \
  X(ST_JOB_CANCELLED, \
    "UPDATE jobs SET state=4, finished=?2, cancel_requested=1, rev=rev+1 " \
    "WHERE id=?1 AND state=1") \
  X(ST_JOB_REQUEUE, \
    "UPDATE jobs SET state=CASE WHEN cancel_requested THEN 4 ELSE 0 END, " \
    "finished=CASE WHEN cancel_requested THEN ?2 ELSE NULL END, " \
    "started=NULL, progress=0, step='', rev=rev+1 WHERE id=?1 AND state=1") \
  X(ST_JOB_REQUEUE_ALL, \
    "UPDATE jobs SET state=0, started=NULL, progress=0, step='', rev=rev+1 " \
    "WHERE state=1 AND cancel_requested=0") \
  X(ST_JOB_CANCEL_ORPHANS, \
    "UPDATE jobs SET state=4, finished=?1, rev=rev+1 WHERE state=1 AND cancel_requested=1") \
  X(ST_JOB_COUNTS, "SELECT state, COUNT(*) FROM jobs GROUP BY state") \
  X(ST_REL_MAXVER, "SELECT COALESCE(MAX(version),0) FROM releases WHERE name=?1 AND channel=?2") \
  X(ST_REL_INSERT, \
    "INSERT INTO releases(name, channel, version, model, created) VALUES(?1,?2,?3,?4,?5)") \
  X(ST_REL_HISTORY, \
    "SELECT " STORE_REL_COLS " FROM releases WHERE name=?1 AND channel=?2 " \
    "ORDER BY version DESC LIMIT ?3") \
  X(ST_REL_LIST, \
    "SELECT " STORE_REL_COLS ", seq FROM releases r WHERE version=(SELECT MAX(version) FROM " \
    "releases WHERE name=r.name AND channel=r.channel) AND (name > ?1 OR (name = ?1 AND " \
    "channel > ?2)) ORDER BY name, channel LIMIT ?3") \
  X(ST_REL_BY_SEQ, "SELECT name, channel FROM releases WHERE seq=?1") \
  X(ST_PAY_INSERT, \
    "INSERT OR IGNORE INTO payloads(kind, base, target, state, created) " \
    "VALUES(?1,?2,?3,'pending',?4)") \
  X(ST_PAY_GET, \
    "SELECT " STORE_PAY_COLS " FROM payloads WHERE kind=?1 AND ifnull(base,'')=?2 " \
    "AND target=?3") \
  X(ST_PAY_BY_DIGEST, \
    "SELECT " STORE_PAY_COLS " FROM payloads WHERE digest=?1 AND state='ready' " \
    "ORDER BY seq LIMIT 1") \
  X(ST_PAY_PENDING, \
    "SELECT " STORE_PAY_COLS " FROM payloads WHERE state='pending' ORDER BY seq LIMIT ?1") \
  X(ST_PAY_READY, \
    "UPDATE payloads SET state='ready', digest=?2, size=?3, finished=?4, error=NULL " \
    "WHERE seq=?1 AND state='pending'") \
  X(ST_PAY_FAIL, \
    "UPDATE payloads SET state='failed', error=?2, finished=?3 WHERE seq=?1 AND state='pending'") \
  X(ST_PAY_EXISTS, "SELECT state FROM payloads WHERE seq=?1")

typedef enum {
#define STORE_X_ENUM(name, sql) name,
  STORE_STMT_MAP(STORE_X_ENUM)
#undef STORE_X_ENUM
  ST_COUNT
} store_stmt_id;

struct store_conn {
  store *s;
  sqlite3 *db;
  sqlite3_stmt *stmts[ST_COUNT];
  store_conn *next;                 /* in s->conns, guarded by s->mu */
};

struct store {
  char *dir;                        /* data dir, no trailing slash */
  char *db_path;                    /* <dir>/moptd.db */
  char *tmp_dir;                    /* <dir>/tmp */
  char *blob_dir;                   /* <dir>/blobs */
  int lock_fd;                      /* <dir>/moptd.lock, flock'd shared for our lifetime */
  pthread_key_t key;                /* calling thread's store_conn */
  pthread_mutex_t mu;               /* guards conns */
  store_conn *conns;
};

/* The cached statement id of connection c, reset and unbound; NULL (and *rc set) when it
 * cannot be prepared. Callers run it and call store_stmt_done(). */
sqlite3_stmt *store_stmt(store_conn *c, store_stmt_id id, int *rc);
void store_stmt_done(sqlite3_stmt *st);
/* Runs a statement without results (BEGIN/COMMIT/…) from the cache; returns 0 or an error. */
int store_exec_cached(store_conn *c, store_stmt_id id);
/* BEGIN IMMEDIATE (takes the write lock now, waiting up to busy_timeout), COMMIT, ROLLBACK. */
int store_tx_begin(store_conn *c);
int store_tx_commit(store_conn *c);
void store_tx_rollback(store_conn *c);
/* Maps an SQLite result code to a mopt error. */
int store_sqlite_err(int rc);
/* Current time in unix milliseconds. */
int64_t store_now_ms(void);

/* Applies migrations up to target (1..STORE_SCHEMA_VERSION) on db in one transaction each.
 * Used by store_open with STORE_SCHEMA_VERSION; tests use it to build older schemas.
 * Returns 0, MOPT_EINTERNAL with diag when the db is newer than target, or an SQLite error. */
int store_schema_migrate(sqlite3 *db, int target, mopt_diag *diag);
/* Sets the pragmas every connection uses (WAL, busy_timeout, foreign_keys, synchronous). */
int store_db_configure(sqlite3 *db);

/* Cursor text <-> (created, seq). An empty cursor gives (INT64_MAX, INT64_MAX). */
int store_cursor_parse(const char *cursor, int64_t *created, int64_t *seq);
void store_cursor_format(int64_t created, int64_t seq, char out[64]);

/* Copies column col of st (may be NULL) into buf of size n ("" for NULL). */
void store_col_text(sqlite3_stmt *st, int col, char *buf, size_t n);

/* Removes every entry under dir (recursively), keeping dir itself. Returns files removed. */
uint32_t store_sweep_dir(const char *dir);

#endif
