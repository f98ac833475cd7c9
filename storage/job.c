/* job.c — the jobs table: a state machine queued → running → succeeded | failed | cancelled,
 * with a rev counter bumped by every change (the ETag and the long-poll token).
 *
 * Every transition is one conditional UPDATE (… WHERE id=? AND state=<from>), so a transition
 * from the wrong state changes nothing and is reported as MOPT_ECONFLICT instead of clobbering
 * a row another thread just moved. Claiming is one UPDATE … RETURNING inside BEGIN IMMEDIATE:
 * the write lock is taken before the oldest queued row is chosen, so two threads or two
 * processes can never claim the same job. Trade-off: writers serialize on SQLite's single
 * write lock (fine for a job queue; the scale-out backend would use SKIP LOCKED instead).
 */
#include "store_int.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const state_names[] = {
    [STORE_JOB_QUEUED] = "queued",       [STORE_JOB_RUNNING] = "running",
    [STORE_JOB_SUCCEEDED] = "succeeded", [STORE_JOB_FAILED] = "failed",
    [STORE_JOB_CANCELLED] = "cancelled",
};
_Static_assert(sizeof state_names / sizeof state_names[0] == 5, "five job states");

const char *store_job_state_name(int state) {
  return state >= 0 && state < 5 ? state_names[state] : "unknown";
}

int store_job_state_parse(const char *name) {
  for (int i = 0; name && i < 5; i++)
    if (!strcmp(name, state_names[i])) return i;
  return -1;
}

void store_job_free(store_job *j) {
  if (!j) return;
  free(j->spec);
  free(j->report);
  free(j->error);
  j->spec = j->report = j->error = NULL;
}

static char *col_dup(sqlite3_stmt *st, int col) {
  const unsigned char *t = sqlite3_column_text(st, col);
  return t ? strdup((const char *)t) : NULL;
}

/* Fills j from a row of STORE_JOB_COLS (j's previous strings are not freed). */
static int job_from_row(sqlite3_stmt *st, store_job *j) {
  memset(j, 0, sizeof *j);
  store_col_text(st, 0, j->id, sizeof j->id);
  store_col_text(st, 1, j->key, sizeof j->key);
  j->state = sqlite3_column_int(st, 2);
  j->progress = sqlite3_column_double(st, 3);
  store_col_text(st, 4, j->step, sizeof j->step);
  j->created = sqlite3_column_int64(st, 5);
  j->started = sqlite3_column_int64(st, 6);
  j->finished = sqlite3_column_int64(st, 7);
  store_col_text(st, 8, j->model, sizeof j->model);
  j->spec = col_dup(st, 9);
  store_col_text(st, 10, j->output, sizeof j->output);
  j->report = col_dup(st, 11);
  j->error = col_dup(st, 12);
  j->cancel_requested = sqlite3_column_int(st, 13);
  j->attempts = (uint32_t)sqlite3_column_int64(st, 14);
  j->rev = (uint64_t)sqlite3_column_int64(st, 15);
  if ((sqlite3_column_type(st, 9) != SQLITE_NULL && !j->spec) ||
      (sqlite3_column_type(st, 11) != SQLITE_NULL && !j->report) ||
      (sqlite3_column_type(st, 12) != SQLITE_NULL && !j->error)) {
    store_job_free(j);
    return MOPT_ENOMEM;
  }
  return 0;
}

/* "job_" + 13 hex of unix ms + 13 random hex: sortable by creation, unguessable. */
static void job_id_new(char id[40], int64_t now_ms) {
  unsigned char rnd[7];
  char hex[15];
  randombytes_buf(rnd, sizeof rnd);
  sodium_bin2hex(hex, sizeof hex, rnd, sizeof rnd);
  snprintf(id, 40, "job_%013llx%.13s", (unsigned long long)now_ms & 0xfffffffffffffull, hex);
}

/* Runs a one-row SELECT of STORE_JOB_COLS bound to id. */
static int job_select(store_conn *c, store_stmt_id sid, const char *id, store_job *j) {
  int rc = 0;
  sqlite3_stmt *st = store_stmt(c, sid, &rc);
  if (!st) return rc;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
  int r = sqlite3_step(st);
  if (r == SQLITE_ROW) rc = job_from_row(st, j);
  else rc = r == SQLITE_DONE ? MOPT_ENOTFOUND : store_sqlite_err(r);
  store_stmt_done(st);
  return rc;
}

static int count_query(store_conn *c, store_stmt_id sid, int64_t arg, int64_t *out) {
  int rc = 0;
  sqlite3_stmt *st = store_stmt(c, sid, &rc);
  if (!st) return rc;
  sqlite3_bind_int64(st, 1, arg);
  int r = sqlite3_step(st);
  if (r == SQLITE_ROW) *out = sqlite3_column_int64(st, 0);
  store_stmt_done(st);
  return r == SQLITE_ROW ? 0 : store_sqlite_err(r);
}

int store_job_create(store_conn *c, store_job *j, uint32_t max_queued, int *existing) {
  if (existing) *existing = 0;
  if (!j || !j->spec || !j->model[0]) return MOPT_EINVAL;
  int rc = store_tx_begin(c);
  if (rc) return rc;
  sqlite3_stmt *st;
  if (j->key[0]) {
    store_job prev;
    rc = job_select(c, ST_JOB_FIND_KEY, j->key, &prev);
    if (rc == 0) {
      store_tx_rollback(c);
      *j = prev;   /* the caller's own strings stay the caller's (see store.h) */
      if (existing) *existing = 1;
      return 0;
    }
    if (rc != MOPT_ENOTFOUND) goto fail;
  }
  if (max_queued > 0) {
    int64_t queued = 0;
    rc = count_query(c, ST_JOB_COUNT_STATE, STORE_JOB_QUEUED, &queued);
    if (rc) goto fail;
    if (queued >= (int64_t)max_queued) {
      rc = MOPT_EBUSY;
      goto fail;
    }
  }
  st = store_stmt(c, ST_MODEL_EXISTS, &rc);
  if (!st) goto fail;
  sqlite3_bind_text(st, 1, j->model, -1, SQLITE_TRANSIENT);
  int r = sqlite3_step(st);
  store_stmt_done(st);
  if (r != SQLITE_ROW) {
    rc = r == SQLITE_DONE ? MOPT_ENOTFOUND : store_sqlite_err(r);
    goto fail;
  }

  int64_t now = store_now_ms();
  if (!j->id[0]) job_id_new(j->id, now);
  if (j->created == 0) j->created = now;
  st = store_stmt(c, ST_JOB_INSERT, &rc);
  if (!st) goto fail;
  sqlite3_bind_text(st, 1, j->id, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 2, j->key, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 3, j->created);
  sqlite3_bind_text(st, 4, j->model, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 5, j->spec, -1, SQLITE_TRANSIENT);
  r = sqlite3_step(st);
  store_stmt_done(st);
  if (r != SQLITE_DONE) {
    rc = store_sqlite_err(r);
    goto fail;
  }
  rc = store_tx_commit(c);
  if (rc) return rc;
  j->state = STORE_JOB_QUEUED;
  j->progress = 0;
  j->step[0] = 0;
  j->started = j->finished = 0;
  j->output[0] = 0;
  j->cancel_requested = 0;
  j->attempts = 0;
  j->rev = 1;
  return 0;
fail:
  store_tx_rollback(c);
  return rc;
}

int store_job_get(store_conn *c, const char *id, store_job *j) {
  if (!id || !j) return MOPT_EINVAL;
  return job_select(c, ST_JOB_GET, id, j);
}

int store_job_rev(store_conn *c, const char *id, uint64_t *rev) {
  if (!id) return MOPT_EINVAL;
  int rc = 0;
  sqlite3_stmt *st = store_stmt(c, ST_JOB_REV, &rc);
  if (!st) return rc;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
  int r = sqlite3_step(st);
  if (r == SQLITE_ROW) *rev = (uint64_t)sqlite3_column_int64(st, 0);
  store_stmt_done(st);
  if (r == SQLITE_ROW) return 0;
  return r == SQLITE_DONE ? MOPT_ENOTFOUND : store_sqlite_err(r);
}

int store_job_list(store_conn *c, int state, const char *model, const char *cursor,
                   uint32_t limit, store_job *out, uint32_t *n, char next_cursor[64]) {
  *n = 0;
  next_cursor[0] = 0;
  int64_t cc, cs;
  if (store_cursor_parse(cursor, &cc, &cs) != 0) return MOPT_EINVAL;
  if (state > 4) return MOPT_EINVAL;
  if (limit == 0) return 0;
  store_stmt_id sid = state >= 0 ? (model ? ST_JOB_LIST_STATE_MODEL : ST_JOB_LIST_STATE)
                                 : (model ? ST_JOB_LIST_MODEL : ST_JOB_LIST);
  int rc = 0;
  sqlite3_stmt *st = store_stmt(c, sid, &rc);
  if (!st) return rc;
  sqlite3_bind_int64(st, 1, cc);
  sqlite3_bind_int64(st, 2, cs);
  sqlite3_bind_int64(st, 3, (sqlite3_int64)limit + 1);
  if (state >= 0) sqlite3_bind_int(st, 4, state);
  if (model) sqlite3_bind_text(st, 5, model, -1, SQLITE_TRANSIENT);
  int r;
  int64_t last_created = 0, last_seq = 0;
  while ((r = sqlite3_step(st)) == SQLITE_ROW) {
    if (*n == limit) {
      store_cursor_format(last_created, last_seq, next_cursor);
      r = SQLITE_DONE;
      break;
    }
    rc = job_from_row(st, &out[*n]);
    if (rc) break;
    last_created = out[*n].created;
    last_seq = sqlite3_column_int64(st, 16);
    (*n)++;
  }
  store_stmt_done(st);
  if (rc == 0 && r != SQLITE_DONE) rc = store_sqlite_err(r);
  if (rc) {
    for (uint32_t i = 0; i < *n; i++) store_job_free(&out[i]);
    *n = 0;
    next_cursor[0] = 0;
  }
  return rc;
}

int store_job_claim(store_conn *c, store_job *j) {
  int rc = store_tx_begin(c);
  if (rc) return rc;
  sqlite3_stmt *st = store_stmt(c, ST_JOB_CLAIM, &rc);
  if (!st) goto fail;
  sqlite3_bind_int64(st, 1, store_now_ms());
  int r = sqlite3_step(st);
  if (r == SQLITE_ROW) {
    rc = job_from_row(st, j);
    /* Drain so the UPDATE completes before COMMIT. */
    while (sqlite3_step(st) == SQLITE_ROW) {}
  } else {
    rc = r == SQLITE_DONE ? MOPT_ENOTFOUND : store_sqlite_err(r);
  }
  store_stmt_done(st);
  if (rc) goto fail;
  rc = store_tx_commit(c);
  if (rc) store_job_free(j);
  return rc;
fail:
  store_tx_rollback(c);
  return rc;
}

/* After an UPDATE that changed nothing: MOPT_ENOTFOUND when the job does not exist, otherwise
 * its state in *state and 0. */
static int job_state(store_conn *c, const char *id, int *state) {
  int rc = 0;
  sqlite3_stmt *st = store_stmt(c, ST_JOB_STATE, &rc);
  if (!st) return rc;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
  int r = sqlite3_step(st);
  if (r == SQLITE_ROW) *state = sqlite3_column_int(st, 0);
  store_stmt_done(st);
  if (r == SQLITE_ROW) return 0;
  return r == SQLITE_DONE ? MOPT_ENOTFOUND : store_sqlite_err(r);
}

/* Runs a prepared UPDATE (already bound), returns 0 with *changes, or an error. */
static int run_update(store_conn *c, sqlite3_stmt *st, int *changes) {
  int r = sqlite3_step(st);
  *changes = r == SQLITE_DONE ? sqlite3_changes(c->db) : 0;
  store_stmt_done(st);
  return r == SQLITE_DONE ? 0 : store_sqlite_err(r);
}

/* Conflict or not-found for a transition that matched no row. */
static int no_match(store_conn *c, const char *id) {
  int state = 0;
  int rc = job_state(c, id, &state);
  return rc ? rc : MOPT_ECONFLICT;
}

int store_job_progress(store_conn *c, const char *id, double progress, const char *step) {
  if (!id) return MOPT_EINVAL;
  if (!(progress >= 0)) progress = 0;   /* also catches NaN */
  if (progress > 1) progress = 1;
  int rc = 0;
  sqlite3_stmt *st = store_stmt(c, ST_JOB_PROGRESS, &rc);
  if (!st) return rc;
  /* Progress is frequent and losing one on power loss is harmless: skip the WAL fsync. */
  (void)store_exec_cached(c, ST_SYNC_NORMAL);
  sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
  sqlite3_bind_double(st, 2, progress);
  sqlite3_bind_text(st, 3, step ? step : "", -1, SQLITE_TRANSIENT);
  int changes = 0;
  rc = run_update(c, st, &changes);
  (void)store_exec_cached(c, ST_SYNC_FULL);
  if (rc || changes) return rc;
  int state = 0;
  rc = job_state(c, id, &state);
  if (rc) return rc;
  return state == STORE_JOB_RUNNING ? 0 : MOPT_ECONFLICT;   /* unchanged values: no bump */
}

int store_job_succeed(store_conn *c, const char *id, const char *output, const char *report) {
  if (!id || !output || !output[0]) return MOPT_EINVAL;
  int rc = 0;
  sqlite3_stmt *st = store_stmt(c, ST_JOB_SUCCEED, &rc);
  if (!st) return rc;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 2, store_now_ms());
  sqlite3_bind_text(st, 3, output, -1, SQLITE_TRANSIENT);
  if (report) sqlite3_bind_text(st, 4, report, -1, SQLITE_TRANSIENT);
  else sqlite3_bind_null(st, 4);
  int changes = 0;
  rc = run_update(c, st, &changes);
  if (rc == MOPT_ECONFLICT) return MOPT_ENOTFOUND;   /* output is not an indexed model */
  if (rc) return rc;
  return changes ? 0 : no_match(c, id);
}

/* The shape of the simple terminal transitions: UPDATE … WHERE id = ?1 with now as ?2 and, for
 * statements that take one, text (or NULL) as ?3; MOPT_ENOTFOUND / MOPT_ECONFLICT when no row
 * moved (no_match tells which). */
static int job_transition(store_conn *c, int stmt_id, const char *id, const char *text) {
  if (!id) return MOPT_EINVAL;
  int rc = 0;
  sqlite3_stmt *st = store_stmt(c, stmt_id, &rc);
  if (!st) return rc;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 2, store_now_ms());
  if (sqlite3_bind_parameter_count(st) >= 3) {
    if (text) sqlite3_bind_text(st, 3, text, -1, SQLITE_TRANSIENT);
    else sqlite3_bind_null(st, 3);
  }
  int changes = 0;
  rc = run_update(c, st, &changes);
  if (rc) return rc;
  return changes ? 0 : no_match(c, id);
}

int store_job_fail(store_conn *c, const char *id, const char *error_json) {
  return job_transition(c, ST_JOB_FAIL, id, error_json);
}

int store_job_cancel(store_conn *c, const char *id, int *was_running) {
  if (was_running) *was_running = 0;
  if (!id) return MOPT_EINVAL;
  int rc = store_tx_begin(c);
  if (rc) return rc;
  sqlite3_stmt *st = store_stmt(c, ST_JOB_CANCEL_QUEUED, &rc);
  if (!st) goto fail;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 2, store_now_ms());
  int changes = 0;
  rc = run_update(c, st, &changes);
  if (rc) goto fail;
  if (!changes) {
    st = store_stmt(c, ST_JOB_CANCEL_RUNNING, &rc);
    if (!st) goto fail;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    rc = run_update(c, st, &changes);
    if (rc) goto fail;
    int state = 0;
    rc = job_state(c, id, &state);
    if (rc) goto fail;
    if (state != STORE_JOB_RUNNING) {   /* terminal */
      rc = MOPT_ECONFLICT;
      goto fail;
    }
    if (was_running) *was_running = 1;   /* also when a cancel was already requested */
  }
  return store_tx_commit(c);
fail:
  store_tx_rollback(c);
  return rc;
}

int store_job_cancelled(store_conn *c, const char *id) {
  return job_transition(c, ST_JOB_CANCELLED, id, NULL);
}

int store_job_requeue(store_conn *c, const char *id) {
  return job_transition(c, ST_JOB_REQUEUE, id, NULL);
}

int store_job_counts(store_conn *c, uint64_t counts[5]) {
  for (int i = 0; i < 5; i++) counts[i] = 0;
  int rc = 0;
  sqlite3_stmt *st = store_stmt(c, ST_JOB_COUNTS, &rc);
  if (!st) return rc;
  int r;
  while ((r = sqlite3_step(st)) == SQLITE_ROW) {
    int s = sqlite3_column_int(st, 0);
    if (s >= 0 && s < 5) counts[s] = (uint64_t)sqlite3_column_int64(st, 1);
  }
  store_stmt_done(st);
  return r == SQLITE_DONE ? 0 : store_sqlite_err(r);
}
