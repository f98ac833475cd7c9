/* manifest.c — ed25519 signatures over OTA manifests (format in payload.h): key ids, signing,
 * verification, public-key file parsing.
 *
 * Main trade-off: the signature covers the exact bytes of the manifest's "signed" value as the
 * server wrote them, so the device needs no JSON library or canonicalizer — only a small
 * bounded scanner that finds where that value starts and ends. The server must therefore embed
 * the bytes it signed verbatim (it serializes the object once and reuses the text).
 */
#include <string.h>

#include <sodium.h>

#include "mopt.h"
#include "payload.h"

#define MAX_DEPTH 64

void mopt_manifest_keyid(const uint8_t pk[32], char out[65]) {
  unsigned char d[crypto_hash_sha256_BYTES];
  static const char hx[] = "0123456789abcdef";
  crypto_hash_sha256(d, pk, 32);
  for (int i = 0; i < 32; i++) { out[2 * i] = hx[d[i] >> 4]; out[2 * i + 1] = hx[d[i] & 15]; }
  out[64] = 0;
}

int mopt_manifest_sign(const uint8_t *msg, size_t len, const uint8_t sk[64], char out[89]) {
  if (sodium_init() < 0) return MOPT_EINTERNAL;
  unsigned char sig[crypto_sign_BYTES];
  if (crypto_sign_detached(sig, NULL, msg, len, sk)) return MOPT_EINTERNAL;
  sodium_bin2base64(out, 89, sig, sizeof sig, sodium_base64_VARIANT_ORIGINAL);
  return 0;
}

/* ---- a bounded JSON scanner: positions only, no values built ---- */
typedef struct js { const uint8_t *s; size_t n, i; } js;

static void ws(js *j) {
  while (j->i < j->n && (j->s[j->i] == ' ' || j->s[j->i] == '\t' || j->s[j->i] == '\n' || j->s[j->i] == '\r'))
    j->i++;
}
/* Skips a string starting at '"'; *plain = 1 when it holds no escapes. */
static int skip_string(js *j, int *plain) {
  if (j->i >= j->n || j->s[j->i] != '"') return -1;
  j->i++;
  if (plain) *plain = 1;
  while (j->i < j->n) {
    uint8_t c = j->s[j->i++];
    if (c == '"') return 0;
    if (c < 0x20) return -1;
    if (c == '\\') {
      if (plain) *plain = 0;
      if (j->i >= j->n) return -1;
      j->i++;
    }
  }
  return -1;
}
static int skip_value(js *j, int depth) {
  if (depth > MAX_DEPTH) return -1;
  ws(j);
  if (j->i >= j->n) return -1;
  uint8_t c = j->s[j->i];
  if (c == '"') return skip_string(j, NULL);
  if (c == '{' || c == '[') {
    uint8_t close = c == '{' ? '}' : ']';
    j->i++;
    ws(j);
    if (j->i < j->n && j->s[j->i] == close) { j->i++; return 0; }
    for (;;) {
      if (c == '{') {
        ws(j);
        if (skip_string(j, NULL)) return -1;
        ws(j);
        if (j->i >= j->n || j->s[j->i] != ':') return -1;
        j->i++;
      }
      if (skip_value(j, depth + 1)) return -1;
      ws(j);
      if (j->i >= j->n) return -1;
      if (j->s[j->i] == ',') { j->i++; continue; }
      if (j->s[j->i] == close) { j->i++; return 0; }
      return -1;
    }
  }
  size_t st = j->i;
  while (j->i < j->n && (strchr("+-.0123456789eE", j->s[j->i]) || (j->s[j->i] >= 'a' && j->s[j->i] <= 'z')))
    j->i++;
  if (j->i == st) return -1;
  size_t l = j->i - st;
  const char *w = (const char *)j->s + st;
  if ((l == 4 && !memcmp(w, "true", 4)) || (l == 5 && !memcmp(w, "false", 5)) || (l == 4 && !memcmp(w, "null", 4)))
    return 0;
  if (w[0] == '-' || (w[0] >= '0' && w[0] <= '9')) return 0;
  return -1;
}
static int key_is(const js *j, size_t start, size_t end, const char *k) {
  size_t kl = strlen(k);
  return end - start == kl + 2 && !memcmp(j->s + start + 1, k, kl);
}

typedef struct sigent { size_t kid_off, kid_len, sig_off, sig_len; } sigent;


int mopt_manifest_verify(const uint8_t *json, size_t len, const uint8_t pk[32],
                         size_t *signed_off, size_t *signed_len, mopt_diag *diag) {
  if (diag) diag->msg[0] = diag->where[0] = 0;
  if (sodium_init() < 0) return MOPT_EINTERNAL;
  js j = {json, len, 0};
  char at[64];
  size_t s_off = 0, s_len = 0;
  int n_signed = 0, have_sigs = 0, rc = MOPT_ESIGNATURE, tried = 0;
  char kid[65];
  mopt_manifest_keyid(pk, kid);
#define FAIL(msg) do { snprintf(at, sizeof at, "byte %zu", j.i); return mopt_diag_set(diag, MOPT_EJSON, at, "manifest: %s", msg); } while (0)
  ws(&j);
  if (j.i >= j.n || json[j.i] != '{') FAIL("not a JSON object");
  j.i++;
  ws(&j);
  if (j.i < j.n && json[j.i] == '}') FAIL("empty object: no \"signed\" value");
  /* Two sweeps: this one validates the top level and records where things are. */
  size_t sigs_start = 0, sigs_end = 0;
  for (;;) {
    ws(&j);
    size_t ks = j.i;
    if (skip_string(&j, NULL)) FAIL("expected a key string");
    size_t ke = j.i;
    ws(&j);
    if (j.i >= j.n || json[j.i] != ':') FAIL("expected ':'");
    j.i++;
    ws(&j);
    size_t vs = j.i;
    if (skip_value(&j, 1)) FAIL("malformed value");
    if (key_is(&j, ks, ke, "signed")) {
      if (json[vs] != '{') { j.i = vs; FAIL("\"signed\" is not an object"); }
      n_signed++;
      s_off = vs; s_len = j.i - vs;
    } else if (key_is(&j, ks, ke, "signatures")) {
      if (json[vs] != '[') { j.i = vs; FAIL("\"signatures\" is not an array"); }
      have_sigs++;
      sigs_start = vs; sigs_end = j.i;
    }
    ws(&j);
    if (j.i >= j.n) FAIL("unterminated object");
    if (json[j.i] == ',') { j.i++; continue; }
    if (json[j.i] == '}') { j.i++; break; }
    FAIL("expected ',' or '}'");
  }
  ws(&j);
  if (j.i != j.n) FAIL("trailing bytes after the manifest object");
  if (n_signed != 1) { j.i = 0; FAIL("needs exactly one \"signed\" object"); }
  if (have_sigs != 1) { j.i = 0; FAIL("needs exactly one \"signatures\" array"); }
  /* Walk the signatures array: objects with string "keyid" and "sig". */
  js a = {json, sigs_end, sigs_start + 1};
  ws(&a);
  if (a.i < a.n && json[a.i] == ']') a.i = a.n;
  while (a.i < a.n) {
    ws(&a);
    if (json[a.i] != '{') { j.i = a.i; FAIL("a signature entry is not an object"); }
    a.i++;
    sigent e = {0, 0, 0, 0};
    ws(&a);
    if (json[a.i] == '}') a.i++;
    else for (;;) {
      ws(&a);
      size_t ks = a.i;
      if (skip_string(&a, NULL)) { j.i = a.i; FAIL("bad key in a signature entry"); }
      size_t ke = a.i;
      ws(&a);
      if (a.i >= a.n || json[a.i] != ':') { j.i = a.i; FAIL("expected ':'"); }
      a.i++;
      ws(&a);
      size_t vs = a.i;
      int plain = 0;
      if (json[vs] == '"') {
        if (skip_string(&a, &plain)) { j.i = a.i; FAIL("bad string"); }
      } else if (skip_value(&a, 3)) { j.i = a.i; FAIL("bad value"); }
      if (json[vs] == '"' && plain) {
        if (key_is(&a, ks, ke, "keyid")) { e.kid_off = vs + 1; e.kid_len = a.i - vs - 2; }
        if (key_is(&a, ks, ke, "sig")) { e.sig_off = vs + 1; e.sig_len = a.i - vs - 2; }
      }
      ws(&a);
      if (a.i < a.n && json[a.i] == ',') { a.i++; continue; }
      if (a.i < a.n && json[a.i] == '}') { a.i++; break; }
      j.i = a.i;
      FAIL("expected ',' or '}' in a signature entry");
    }
    if (e.kid_len == 64 && !memcmp(json + e.kid_off, kid, 64) && e.sig_len) {
      unsigned char sig[crypto_sign_BYTES];
      size_t sl = 0;
      tried++;
      if (sodium_base642bin(sig, sizeof sig, (const char *)json + e.sig_off, e.sig_len, NULL, &sl,
                            NULL, sodium_base64_VARIANT_ORIGINAL) == 0 &&
          sl == sizeof sig && crypto_sign_verify_detached(sig, json + s_off, s_len, pk) == 0) {
        rc = 0;
        break;
      }
    }
    ws(&a);
    if (a.i < a.n && json[a.i] == ',') { a.i++; continue; }
    if (a.i < a.n && json[a.i] == ']') break;
  }
#undef FAIL
  if (rc) {
    return mopt_diag_set(diag, MOPT_ESIGNATURE, "signatures",
                         tried ? "the signature for key %s does not verify over the \"signed\" bytes"
                               : "no signature for key %s", kid);
  }
  if (signed_off) *signed_off = s_off;
  if (signed_len) *signed_len = s_len;
  return 0;
}

static int key_text(const uint8_t *t, size_t n, uint8_t pk[32]) {
  size_t bl = 0;
  if (n == 64 && sodium_hex2bin(pk, 32, (const char *)t, n, NULL, &bl, NULL) == 0 && bl == 32) return 0;
  if (sodium_base642bin(pk, 32, (const char *)t, n, NULL, &bl, NULL, sodium_base64_VARIANT_ORIGINAL) == 0 &&
      bl == 32)
    return 0;
  return -1;
}

int mopt_manifest_parse_key(const uint8_t *text, size_t len, uint8_t pk[32], mopt_diag *diag) {
  if (diag) diag->msg[0] = diag->where[0] = 0;
  if (len == 32) { memcpy(pk, text, 32); return 0; }
  size_t a = 0, b = len;
  while (a < b && strchr(" \t\r\n", text[a])) a++;
  while (b > a && strchr(" \t\r\n", text[b - 1])) b--;
  if (b > a && text[a] == '{') {
    /* {"public_key": "..."}: find the key's string value */
    static const char k[] = "\"public_key\"";
    for (size_t i = a; i + sizeof k - 1 <= b; i++) {
      if (memcmp(text + i, k, sizeof k - 1)) continue;
      size_t p = i + sizeof k - 1;
      while (p < b && strchr(" \t\r\n:", text[p])) p++;
      if (p < b && text[p] == '"') {
        size_t q = p + 1;
        while (q < b && text[q] != '"') q++;
        if (q < b && key_text(text + p + 1, q - p - 1, pk) == 0) return 0;
      }
      break;
    }
    return mopt_diag_set(diag, MOPT_EINVAL, "public_key",
                         "key JSON has no usable \"public_key\" (hex or base64 of 32 bytes)");
  }
  if (key_text(text + a, b - a, pk) == 0) return 0;
  return mopt_diag_set(diag, MOPT_EINVAL, "key",
                       "not an ed25519 public key (32 raw bytes, 64 hex chars, or base64)");
}
