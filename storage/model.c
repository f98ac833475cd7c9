/* model.c — the models index: put (idempotent by digest), get, list with cursor pagination,
 * delete guarded by references.
 *
 * Pagination is keyset, not OFFSET: the cursor is the (created, seq) of the last row returned,
 * as 32 hex chars, and the next page is every row strictly below it in (created DESC, seq DESC)
 * order. New rows are always above (a later created time or a higher seq), so a client paging
 * through while uploads happen never sees a row twice or skips one; the cost is that the
 * cursor is only meaningful for the same filter it came from.
 */
#include "store_int.h"

#include <stdio.h>
#include <string.h>

static void model_from_row(sqlite3_stmt *st, store_model *m) {
  memset(m, 0, sizeof *m);
  store_col_text(st, 0, m->id, sizeof m->id);
  store_col_text(st, 1, m->name, sizeof m->name);
  store_col_text(st, 2, m->version, sizeof m->version);
  m->size = (uint64_t)sqlite3_column_int64(st, 3);
  store_col_text(st, 4, m->format, sizeof m->format);
  m->ir_version = sqlite3_column_int64(st, 5);
  store_col_text(st, 6, m->opsets, sizeof m->opsets);
  m->node_count = (uint64_t)sqlite3_column_int64(st, 7);
  m->weight_count = (uint64_t)sqlite3_column_int64(st, 8);
  m->param_count = (uint64_t)sqlite3_column_int64(st, 9);
  m->created = sqlite3_column_int64(st, 10);
  store_col_text(st, 11, m->parent, sizeof m->parent);
  store_col_text(st, 12, m->job, sizeof m->job);
}

static void bind_text_or_null(sqlite3_stmt *st, int i, const char *s) {
  if (s && s[0]) sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
  else sqlite3_bind_null(st, i);
}

int store_model_get(store_conn *c, const char *id, store_model *m) {
  if (!id) return MOPT_EINVAL;
  int rc = 0;
  sqlite3_stmt *st = store_stmt(c, ST_MODEL_GET, &rc);
  if (!st) return rc;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
  int r = sqlite3_step(st);
  if (r == SQLITE_ROW) model_from_row(st, m);
  store_stmt_done(st);
  if (r == SQLITE_ROW) return 0;
  return r == SQLITE_DONE ? MOPT_ENOTFOUND : store_sqlite_err(r);
}

/* "sha256:<64 lowercase hex>" → the hex part, else NULL. */
static const char *id_hex(const char *id) {
  if (strncmp(id, "sha256:", 7) != 0 || strlen(id) != 71) return NULL;
  for (int i = 7; i < 71; i++)
    if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f'))) return NULL;
  return id + 7;
}

int store_model_put(store_conn *c, store_model *m, int *created) {
  if (!c || !m || !id_hex(m->id)) return MOPT_EINVAL;
  if (created) *created = 0;
  if (m->created == 0) m->created = store_now_ms();
  if (!m->format[0]) snprintf(m->format, sizeof m->format, "onnx");
  if (!m->opsets[0]) snprintf(m->opsets, sizeof m->opsets, "{}");
  /* Under the write lock, so a concurrent store_blob_remove (which also takes it) either ran
   * before — the blob is gone and this put fails — or runs after and sees this row. */
  int rc = store_tx_begin(c);
  if (rc) return rc;
  sqlite3_stmt *st = store_stmt(c, ST_MODEL_INSERT, &rc);
  if (!st) goto fail;
  sqlite3_bind_text(st, 1, m->id, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 2, m->name, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 3, m->version, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 4, (sqlite3_int64)m->size);
  sqlite3_bind_text(st, 5, m->format, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 6, m->ir_version);
  sqlite3_bind_text(st, 7, m->opsets, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 8, (sqlite3_int64)m->node_count);
  sqlite3_bind_int64(st, 9, (sqlite3_int64)m->weight_count);
  sqlite3_bind_int64(st, 10, (sqlite3_int64)m->param_count);
  sqlite3_bind_int64(st, 11, m->created);
  bind_text_or_null(st, 12, m->parent);
  bind_text_or_null(st, 13, m->job);
  int r = sqlite3_step(st);
  int changes = sqlite3_changes(c->db);
  store_stmt_done(st);
  if (r != SQLITE_DONE) {
    rc = store_sqlite_err(r);
    goto fail;
  }
  if (changes == 1) {
    char path[4096];
    rc = store_blob_path(c->s, id_hex(m->id), path, sizeof path);
    if (rc) goto fail;   /* MOPT_ENOTFOUND: publish the blob first */
    rc = store_tx_commit(c);
    if (rc == 0 && created) *created = 1;
    return rc;
  }
  store_tx_rollback(c);
  /* Already indexed (same bytes): hand back the row as it is. */
  return store_model_get(c, m->id, m);
fail:
  store_tx_rollback(c);
  return rc;
}

int store_model_list(store_conn *c, const char *name, const char *cursor, uint32_t limit,
                     store_model *out, uint32_t *n, char next_cursor[64]) {
  *n = 0;
  next_cursor[0] = 0;
  int64_t cc, cs;
  if (store_cursor_parse(cursor, &cc, &cs) != 0) return MOPT_EINVAL;
  if (limit == 0) return 0;
  int rc = 0;
  sqlite3_stmt *st = store_stmt(c, name ? ST_MODEL_LIST_NAME : ST_MODEL_LIST, &rc);
  if (!st) return rc;
  sqlite3_bind_int64(st, 1, cc);
  sqlite3_bind_int64(st, 2, cs);
  sqlite3_bind_int64(st, 3, (sqlite3_int64)limit + 1);   /* one more: is there a next page? */
  if (name) sqlite3_bind_text(st, 4, name, -1, SQLITE_TRANSIENT);
  int r;
  int64_t last_created = 0, last_seq = 0;
  while ((r = sqlite3_step(st)) == SQLITE_ROW) {
    if (*n == limit) {
      store_cursor_format(last_created, last_seq, next_cursor);
      r = SQLITE_DONE;
      break;
    }
    model_from_row(st, &out[*n]);
    last_created = out[*n].created;
    last_seq = sqlite3_column_int64(st, 13);
    (*n)++;
  }
  store_stmt_done(st);
  return r == SQLITE_DONE ? 0 : store_sqlite_err(r);
}

int store_model_delete(store_conn *c, const char *id) {
  if (!id) return MOPT_EINVAL;
  int rc = store_tx_begin(c);
  if (rc) return rc;
  sqlite3_stmt *st = store_stmt(c, ST_MODEL_REFS, &rc);
  if (!st) goto out;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
  int r = sqlite3_step(st);
  int64_t refs = r == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
  store_stmt_done(st);
  if (r != SQLITE_ROW) {
    rc = store_sqlite_err(r);
    goto out;
  }
  if (refs > 0) {
    rc = MOPT_ECONFLICT;
    goto out;
  }
  st = store_stmt(c, ST_MODEL_DELETE, &rc);
  if (!st) goto out;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
  r = sqlite3_step(st);
  int changes = sqlite3_changes(c->db);
  store_stmt_done(st);
  if (r != SQLITE_DONE) {
    rc = store_sqlite_err(r);
    goto out;
  }
  if (changes == 0) {
    rc = MOPT_ENOTFOUND;
    goto out;
  }
  return store_tx_commit(c);
out:
  store_tx_rollback(c);
  return rc;
}
