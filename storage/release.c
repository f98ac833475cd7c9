/* release.c — OTA releases (publish with history, current, list) and the payloads index
 * (one row per (kind, base, target), pending → ready | failed).
 *
 * Releases are append-only: a publish is one IMMEDIATE transaction reading the highest
 * version of (name, channel) and inserting version + 1, so versions only grow, even for a
 * rollback to an older model, and two concurrent publishes never get the same version (the
 * write lock serializes them; UNIQUE(name, channel, version) backs it up).
 * Payload rows are created with INSERT OR IGNORE against a unique (kind, ifnull(base,''),
 * target) index: whoever asks first creates the row, everybody else reads the same row, so the
 * computation is queued exactly once whatever the concurrency. Trade-off: a failed payload
 * stays failed (no automatic retry loop on a model the codec rejects); the full payload is
 * always the fallback the manifest offers.
 */
#include "store_int.h"

#include <stdio.h>
#include <string.h>

static const char *const pay_states[] = {"pending", "ready", "failed"};

const char *store_payload_state_name(int state) {
  return state >= 0 && state <= 2 ? pay_states[state] : "unknown";
}

static int pay_state_parse(const char *s) {
  for (int i = 0; i < 3; i++)
    if (strcmp(s, pay_states[i]) == 0) return i;
  return -1;
}

static void release_from_row(sqlite3_stmt *st, store_release *r) {
  memset(r, 0, sizeof *r);
  store_col_text(st, 0, r->name, sizeof r->name);
  store_col_text(st, 1, r->channel, sizeof r->channel);
  r->version = (uint64_t)sqlite3_column_int64(st, 2);
  store_col_text(st, 3, r->model, sizeof r->model);
  r->created = sqlite3_column_int64(st, 4);
}

static void payload_from_row(sqlite3_stmt *st, store_payload *p) {
  char state[16];
  memset(p, 0, sizeof *p);
  p->seq = sqlite3_column_int64(st, 0);
  store_col_text(st, 1, p->kind, sizeof p->kind);
  store_col_text(st, 2, p->base, sizeof p->base);
  store_col_text(st, 3, p->target, sizeof p->target);
  store_col_text(st, 4, state, sizeof state);
  p->state = pay_state_parse(state);
  store_col_text(st, 5, p->digest, sizeof p->digest);
  p->size = (uint64_t)sqlite3_column_int64(st, 6);
  store_col_text(st, 7, p->error, sizeof p->error);
  p->created = sqlite3_column_int64(st, 8);
  p->finished = sqlite3_column_int64(st, 9);
}

static int model_exists(store_conn *c, const char *id) {
  int rc = 0;
  sqlite3_stmt *st = store_stmt(c, ST_MODEL_EXISTS, &rc);
  if (!st) return rc;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
  int r = sqlite3_step(st);
  store_stmt_done(st);
  if (r == SQLITE_ROW) return 0;
  return r == SQLITE_DONE ? MOPT_ENOTFOUND : store_sqlite_err(r);
}

/* --------------------------------------------------------------- releases ---- */

int store_release_publish(store_conn *c, const char *name, const char *channel,
                          const char *model, store_release *out) {
  if (!c || !name || !name[0] || !channel || !channel[0] || !model || !model[0] || !out ||
      strlen(name) >= sizeof out->name || strlen(channel) >= sizeof out->channel ||
      strlen(model) >= sizeof out->model)
    return MOPT_EINVAL;
  int rc = store_tx_begin(c);
  if (rc) return rc;
  rc = model_exists(c, model);
  if (rc) goto fail;
  sqlite3_stmt *st = store_stmt(c, ST_REL_MAXVER, &rc);
  if (!st) goto fail;
  sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 2, channel, -1, SQLITE_TRANSIENT);
  int r = sqlite3_step(st);
  int64_t maxv = r == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
  store_stmt_done(st);
  if (r != SQLITE_ROW) {
    rc = store_sqlite_err(r);
    goto fail;
  }
  memset(out, 0, sizeof *out);
  snprintf(out->name, sizeof out->name, "%s", name);
  snprintf(out->channel, sizeof out->channel, "%s", channel);
  snprintf(out->model, sizeof out->model, "%s", model);
  out->version = (uint64_t)maxv + 1;
  out->created = store_now_ms();
  st = store_stmt(c, ST_REL_INSERT, &rc);
  if (!st) goto fail;
  sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 2, channel, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 3, (int64_t)out->version);
  sqlite3_bind_text(st, 4, model, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 5, out->created);
  r = sqlite3_step(st);
  store_stmt_done(st);
  if (r != SQLITE_DONE) {
    rc = store_sqlite_err(r);
    goto fail;
  }
  return store_tx_commit(c);
fail:
  store_tx_rollback(c);
  return rc;
}

int store_release_history(store_conn *c, const char *name, const char *channel, uint32_t limit,
                          store_release *out, uint32_t *n) {
  *n = 0;
  if (!c || !name || !channel) return MOPT_EINVAL;
  int rc = 0;
  sqlite3_stmt *st = store_stmt(c, ST_REL_HISTORY, &rc);
  if (!st) return rc;
  sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 2, channel, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 3, limit);
  int r;
  while ((r = sqlite3_step(st)) == SQLITE_ROW && *n < limit) release_from_row(st, &out[(*n)++]);
  store_stmt_done(st);
  return r == SQLITE_DONE || r == SQLITE_ROW ? 0 : store_sqlite_err(r);
}

int store_release_current(store_conn *c, const char *name, const char *channel,
                          store_release *out) {
  uint32_t n = 0;
  int rc = store_release_history(c, name, channel, 1, out, &n);
  if (rc) return rc;
  return n ? 0 : MOPT_ENOTFOUND;
}

int store_release_list(store_conn *c, const char *cursor, uint32_t limit, store_release *out,
                       uint32_t *n, char next_cursor[64]) {
  *n = 0;
  next_cursor[0] = 0;
  /* the cursor names the last row returned (its created, seq); the page goes on after that
   * row's (name, channel), which stays valid whatever is published meanwhile */
  char after_name[128] = "", after_channel[64] = "";
  int rc = 0;
  if (cursor && cursor[0]) {
    int64_t created, seq;
    if (store_cursor_parse(cursor, &created, &seq) != 0) return MOPT_EINVAL;
    sqlite3_stmt *st = store_stmt(c, ST_REL_BY_SEQ, &rc);
    if (!st) return rc;
    sqlite3_bind_int64(st, 1, seq);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
      store_col_text(st, 0, after_name, sizeof after_name);
      store_col_text(st, 1, after_channel, sizeof after_channel);
    }
    store_stmt_done(st);
    if (r == SQLITE_DONE) return MOPT_EINVAL;
    if (r != SQLITE_ROW) return store_sqlite_err(r);
  }
  if (limit == 0) return 0;
  sqlite3_stmt *st = store_stmt(c, ST_REL_LIST, &rc);
  if (!st) return rc;
  sqlite3_bind_text(st, 1, after_name, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 2, after_channel, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 3, (sqlite3_int64)limit + 1);   /* one more: is there a next page? */
  int r;
  int64_t last_seq = 0;
  while ((r = sqlite3_step(st)) == SQLITE_ROW) {
    if (*n == limit) {
      store_cursor_format(out[*n - 1].created, last_seq, next_cursor);
      r = SQLITE_DONE;
      break;
    }
    release_from_row(st, &out[*n]);
    last_seq = sqlite3_column_int64(st, 5);
    (*n)++;
  }
  store_stmt_done(st);
  return r == SQLITE_DONE ? 0 : store_sqlite_err(r);
}

/* --------------------------------------------------------------- payloads ---- */

int store_payload_get(store_conn *c, const char *kind, const char *base, const char *target,
                      store_payload *out) {
  if (!c || !kind || !target || !out) return MOPT_EINVAL;
  int rc = 0;
  sqlite3_stmt *st = store_stmt(c, ST_PAY_GET, &rc);
  if (!st) return rc;
  sqlite3_bind_text(st, 1, kind, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 2, base ? base : "", -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 3, target, -1, SQLITE_TRANSIENT);
  int r = sqlite3_step(st);
  if (r == SQLITE_ROW) payload_from_row(st, out);
  store_stmt_done(st);
  if (r == SQLITE_ROW) return 0;
  return r == SQLITE_DONE ? MOPT_ENOTFOUND : store_sqlite_err(r);
}

int store_payload_request(store_conn *c, const char *kind, const char *base, const char *target,
                          store_payload *out, int *created) {
  if (created) *created = 0;
  if (!c || !kind || !target || !target[0] || !out) return MOPT_EINVAL;
  int full = strcmp(kind, "full") == 0;
  if (!full && strcmp(kind, "delta") != 0) return MOPT_EINVAL;
  if (full && base && base[0]) return MOPT_EINVAL;
  if (!full && (!base || !base[0] || strcmp(base, target) == 0)) return MOPT_EINVAL;
  /* Fast path: the row usually exists already (every manifest request asks). */
  int rc = store_payload_get(c, kind, base, target, out);
  if (rc != MOPT_ENOTFOUND) return rc;
  rc = model_exists(c, target);
  if (rc == 0 && !full) rc = model_exists(c, base);
  if (rc) return rc;
  sqlite3_stmt *st = store_stmt(c, ST_PAY_INSERT, &rc);
  if (!st) return rc;
  sqlite3_bind_text(st, 1, kind, -1, SQLITE_TRANSIENT);
  if (full) sqlite3_bind_null(st, 2);
  else sqlite3_bind_text(st, 2, base, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 3, target, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 4, store_now_ms());
  int r = sqlite3_step(st);
  int changes = sqlite3_changes(sqlite3_db_handle(st));
  store_stmt_done(st);
  if (r != SQLITE_DONE) return store_sqlite_err(r);
  if (created) *created = changes > 0;
  return store_payload_get(c, kind, base, target, out);
}

int store_payload_by_digest(store_conn *c, const char *digest, store_payload *out) {
  if (!c || !digest || !out) return MOPT_EINVAL;
  int rc = 0;
  sqlite3_stmt *st = store_stmt(c, ST_PAY_BY_DIGEST, &rc);
  if (!st) return rc;
  sqlite3_bind_text(st, 1, digest, -1, SQLITE_TRANSIENT);
  int r = sqlite3_step(st);
  if (r == SQLITE_ROW) payload_from_row(st, out);
  store_stmt_done(st);
  if (r == SQLITE_ROW) return 0;
  return r == SQLITE_DONE ? MOPT_ENOTFOUND : store_sqlite_err(r);
}

int store_payload_pending(store_conn *c, uint32_t limit, store_payload *out, uint32_t *n) {
  *n = 0;
  int rc = 0;
  sqlite3_stmt *st = store_stmt(c, ST_PAY_PENDING, &rc);
  if (!st) return rc;
  sqlite3_bind_int64(st, 1, limit);
  int r;
  while ((r = sqlite3_step(st)) == SQLITE_ROW && *n < limit) payload_from_row(st, &out[(*n)++]);
  store_stmt_done(st);
  return r == SQLITE_DONE || r == SQLITE_ROW ? 0 : store_sqlite_err(r);
}

/* Runs a pending → terminal update; distinguishes "not pending" from "absent". */
static int pay_finish(store_conn *c, sqlite3_stmt *st, int64_t seq) {
  int r = sqlite3_step(st);
  int changes = sqlite3_changes(sqlite3_db_handle(st));
  store_stmt_done(st);
  if (r != SQLITE_DONE) return store_sqlite_err(r);
  if (changes > 0) return 0;
  int rc = 0;
  sqlite3_stmt *ex = store_stmt(c, ST_PAY_EXISTS, &rc);
  if (!ex) return rc;
  sqlite3_bind_int64(ex, 1, seq);
  r = sqlite3_step(ex);
  store_stmt_done(ex);
  if (r == SQLITE_ROW) return MOPT_ECONFLICT;
  return r == SQLITE_DONE ? MOPT_ENOTFOUND : store_sqlite_err(r);
}

int store_payload_ready(store_conn *c, int64_t seq, const char *digest, uint64_t size) {
  if (!c || !digest || strlen(digest) != 64) return MOPT_EINVAL;
  int rc = 0;
  sqlite3_stmt *st = store_stmt(c, ST_PAY_READY, &rc);
  if (!st) return rc;
  sqlite3_bind_int64(st, 1, seq);
  sqlite3_bind_text(st, 2, digest, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 3, (int64_t)size);
  sqlite3_bind_int64(st, 4, store_now_ms());
  return pay_finish(c, st, seq);
}

int store_payload_fail(store_conn *c, int64_t seq, const char *error) {
  if (!c) return MOPT_EINVAL;
  int rc = 0;
  sqlite3_stmt *st = store_stmt(c, ST_PAY_FAIL, &rc);
  if (!st) return rc;
  sqlite3_bind_int64(st, 1, seq);
  sqlite3_bind_text(st, 2, error ? error : "failed", -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 3, store_now_ms());
  return pay_finish(c, st, seq);
}
