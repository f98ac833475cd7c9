/* auth.c — bearer tokens from a tokens file, checked by hash with a constant-time compare.
 *
 * The file holds only SHA-256 digests of tokens ("read,write <64 hex> [label]"), so reading it
 * does not reveal a credential. A presented token is hashed (store_token_hash) and compared
 * against every entry without an early exit, so response time does not reveal which entry or
 * how many bytes matched. Trade-off: a linear scan per request; token files hold a handful of
 * entries, and a hash table would need a keyed hash to stay timing-safe.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api_int.h"

#define AUTH_MAX_TOKENS 4096
#define AUTH_MAX_TOKEN_LEN 4096

typedef struct auth_entry {
  unsigned char hash[32];
  uint32_t scopes;
  char label[64];
} auth_entry;

struct api_auth {
  auth_entry *e;
  size_t n;
};

typedef struct scope_row { const char *name; uint32_t bit; } scope_row;
static const scope_row scope_table[] = {
  {"read", API_SCOPE_READ}, {"write", API_SCOPE_WRITE}, {"admin", API_SCOPE_ADMIN},
  {"ota", API_SCOPE_OTA},
};
_Static_assert(sizeof scope_table / sizeof scope_table[0] == 4, "one row per scope bit");

#define API_SCOPE_ALL (API_SCOPE_READ | API_SCOPE_WRITE | API_SCOPE_ADMIN | API_SCOPE_OTA)

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = tolower(c);
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

static int hex_to_bytes(const char *hex, unsigned char out[32]) {
  if (strlen(hex) != 64) return 0;
  for (int i = 0; i < 32; i++) {
    int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return 0;
    out[i] = (unsigned char)(hi << 4 | lo);
  }
  return 1;
}

static int parse_scopes(char *list, uint32_t *out) {
  uint32_t s = 0;
  char *save = NULL;
  for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    int found = 0;
    for (size_t i = 0; i < sizeof scope_table / sizeof scope_table[0]; i++)
      if (strcmp(tok, scope_table[i].name) == 0) { s |= scope_table[i].bit; found = 1; }
    if (!found) return 0;
  }
  if (!s) return 0;
  *out = s;
  return 1;
}

int api_auth_load(const char *path, api_auth **out, mopt_diag *diag) {
  *out = NULL;
  FILE *f = fopen(path, "r");
  if (!f)
    return mopt_diag_set(diag, MOPT_EIO, path, "cannot open tokens file: %s", strerror(errno));
  api_auth *a = calloc(1, sizeof *a);
  size_t cap = 0;
  char line[1024];
  int lineno = 0, rc = 0;
  if (!a) { fclose(f); return mopt_diag_set(diag, MOPT_ENOMEM, path, "out of memory"); }
  while (fgets(line, sizeof line, f)) {
    lineno++;
    char where[300];
    snprintf(where, sizeof where, "%.200s:%d", path, lineno);
    size_t len = strlen(line);
    if (len == sizeof line - 1 && line[len - 1] != '\n') {
      rc = mopt_diag_set(diag, MOPT_EINVAL, where, "line longer than %zu bytes", sizeof line - 2);
      break;
    }
    char *hash = strchr(line, '#');
    if (hash) *hash = 0;
    char *save = NULL;
    char *scopes = strtok_r(line, " \t\r\n", &save);
    if (!scopes) continue;   /* blank or comment */
    char *hex = strtok_r(NULL, " \t\r\n", &save);
    char *label = strtok_r(NULL, "\r\n", &save);
    auth_entry e = {0};
    if (!parse_scopes(scopes, &e.scopes)) {
      rc = mopt_diag_set(diag, MOPT_EINVAL, where,
                         "bad scope list (use read, write, admin, ota joined by commas)");
      break;
    }
    if (!hex || !hex_to_bytes(hex, e.hash)) {
      rc = mopt_diag_set(diag, MOPT_EINVAL, where,
                         "expected the token's SHA-256 as 64 hex characters after the scopes");
      break;
    }
    if (label) {
      while (*label == ' ' || *label == '\t') label++;
      snprintf(e.label, sizeof e.label, "%s", label);
    }
    if (a->n == AUTH_MAX_TOKENS) {
      rc = mopt_diag_set(diag, MOPT_ELIMIT, where, "more than %d tokens", AUTH_MAX_TOKENS);
      break;
    }
    if (a->n == cap) {
      size_t ncap = cap ? cap * 2 : 8;
      auth_entry *ne = realloc(a->e, ncap * sizeof *ne);
      if (!ne) { rc = mopt_diag_set(diag, MOPT_ENOMEM, where, "out of memory"); break; }
      a->e = ne;
      cap = ncap;
    }
    a->e[a->n++] = e;
  }
  if (!rc && ferror(f)) rc = mopt_diag_set(diag, MOPT_EIO, path, "read error");
  fclose(f);
  if (rc) { api_auth_destroy(a); return rc; }
  *out = a;
  return 0;
}

void api_auth_destroy(api_auth *a) {
  if (!a) return;
  free(a->e);
  free(a);
}

int api_auth_check(const api_auth *a, const char *authorization, uint32_t *scopes) {
  *scopes = 0;
  if (!a || !authorization) return MOPT_EAUTH;
  while (*authorization == ' ') authorization++;
  if (strncasecmp(authorization, "Bearer ", 7) != 0) return MOPT_EAUTH;
  const char *tok = authorization + 7;
  while (*tok == ' ') tok++;
  size_t n = strlen(tok);
  while (n && (tok[n - 1] == ' ' || tok[n - 1] == '\t')) n--;
  if (n == 0 || n > AUTH_MAX_TOKEN_LEN) return MOPT_EAUTH;
  char copy[AUTH_MAX_TOKEN_LEN + 1];
  memcpy(copy, tok, n);
  copy[n] = 0;
  char hex[65];
  unsigned char h[32];
  store_token_hash(copy, hex);
  memset(copy, 0, sizeof copy);
  if (!hex_to_bytes(hex, h)) return MOPT_EAUTH;
  uint32_t found = 0;
  for (size_t i = 0; i < a->n; i++) {
    unsigned char diff = 0;
    for (int k = 0; k < 32; k++) diff |= (unsigned char)(a->e[i].hash[k] ^ h[k]);
    /* mask = all ones when diff == 0, without a branch on the secret */
    uint32_t mask = (uint32_t)0 - (uint32_t)(((unsigned)diff - 1u) >> 8 & 1u);
    found |= a->e[i].scopes & mask;
    found |= mask & 0x80000000u;   /* marks "some entry matched" even for odd scope sets */
  }
  if (!(found & 0x80000000u)) return MOPT_EAUTH;
  found &= ~0x80000000u;
  if (found & API_SCOPE_ADMIN) found = API_SCOPE_ALL;
  *scopes = found;
  return 0;
}

int api_authorize(const api_ctx *ctx, const api_route *route, const char *authorization,
                  uint32_t *scopes) {
  if (!ctx->auth) {
    *scopes = API_SCOPE_ALL;
    return 0;
  }
  if (route && route->scope == 0) {
    /* Public route: a token is optional; report its scopes when it is a good one. */
    if (api_auth_check(ctx->auth, authorization, scopes) != 0) *scopes = 0;
    return 0;
  }
  int rc = api_auth_check(ctx->auth, authorization, scopes);
  if (rc) return rc;
  if (route && !(*scopes & route->scope)) return MOPT_EFORBIDDEN;
  return 0;
}
