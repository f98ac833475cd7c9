/* payload.c — the OTA payload codec: `full` packing, tensor-aware `delta`, validated streaming
 * apply (format documented in payload.h).
 *
 * Main trade-off: the encoder spends CPU (it compresses every changed chunk two or three ways
 * and keeps the smallest, and compresses the skeleton with and without the base prefix) so the
 * decoder can stay a single bounded-memory pass with one decode path per record. Apply reads the
 * payload twice (hash + structure check first, then decode) so nothing is written from a payload
 * that has not been fully checked.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>

#include "mopt.h"
#include "payload.h"

#define HDR_SIZE 208u
#define HDR_HASHED 176u
#define REC_SIZE 32u
#define REC_GAP 1
#define REC_CHUNK 2
#define MODE_SAME 0
#define MODE_RAW 1
#define MODE_XOR 2
#define MODE_SUB 3
#define NO_BASE UINT64_MAX
#define PREFIX_MAX (8u << 20)
#define CHUNK_MAX (4u << 20)
#define CHUNK_DEFAULT (1u << 20)
#define SKEL_WLOG 23
#define MIN_TENSOR 64u
#define IO_BUF (1u << 20)
#define AUTO_LEVEL_LIMIT (64ull << 20)

static const uint8_t MAGIC[8] = {'M', 'O', 'P', 'T', 'P', 'A', 'Y', '\n'};

/* ---------------------------------------------------------------- little helpers ---- */
static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint32_t get32(const uint8_t *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}
static uint64_t get64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}
static void hex32(const uint8_t d[32], char out[65]) {
  static const char hx[] = "0123456789abcdef";
  for (int i = 0; i < 32; i++) { out[2 * i] = hx[d[i] >> 4]; out[2 * i + 1] = hx[d[i] & 15]; }
  out[64] = 0;
}

static int pread_full(int fd, void *buf, size_t n, uint64_t off) {
  uint8_t *p = buf;
  while (n) {
    ssize_t r = pread(fd, p, n, (off_t)off);
    if (r < 0) { if (errno == EINTR) continue; return -1; }
    if (r == 0) { errno = EIO; return -1; }
    p += r; n -= (size_t)r; off += (uint64_t)r;
  }
  return 0;
}
static int write_full(int fd, const void *buf, size_t n) {
  const uint8_t *p = buf;
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0) { if (errno == EINTR) continue; return -1; }
    p += w; n -= (size_t)w;
  }
  return 0;
}

/* Streams [off, off+len) of fd into a SHA-256 state. */
static int hash_range(int fd, uint64_t off, uint64_t len, crypto_hash_sha256_state *h, uint8_t *buf) {
  while (len) {
    size_t n = len < IO_BUF ? (size_t)len : IO_BUF;
    if (pread_full(fd, buf, n, off)) return -1;
    crypto_hash_sha256_update(h, buf, n);
    off += n; len -= n;
  }
  return 0;
}

/* SHA-256 of a whole file in a thread, so apply can check the base while it checks the payload. */
typedef struct hash_job {
  int fd; uint64_t len; uint8_t digest[32]; int rc; pthread_t th; int started;
} hash_job;
static void *hash_job_run(void *arg) {
  hash_job *j = arg;
  uint8_t *buf = malloc(IO_BUF);
  crypto_hash_sha256_state h;
  crypto_hash_sha256_init(&h);
  j->rc = !buf ? MOPT_ENOMEM : hash_range(j->fd, 0, j->len, &h, buf) ? MOPT_EIO : 0;
  crypto_hash_sha256_final(&h, j->digest);
  free(buf);
  return NULL;
}

/* Temp file next to path; *tmp is malloc'd. */
static int temp_open(const char *path, char **tmp, mopt_diag *diag) {
  size_t pl = strlen(path);
  *tmp = malloc(pl + 16);
  if (!*tmp) return MOPT_ENOMEM;
  snprintf(*tmp, pl + 16, "%s.tmpXXXXXX", path);
  int fd = mkostemp(*tmp, O_CLOEXEC);
  if (fd < 0) {
    int rc = mopt_diag_set(diag, MOPT_EIO, path, "cannot create a temp file next to it: %s",
                           strerror(errno));
    free(*tmp);
    *tmp = NULL;
    return rc;
  }
  return fd;
}
/* fsync, close, rename into place, fsync the directory. Closes fd; unlinks tmp on failure. */
static int temp_commit(int fd, char *tmp, const char *path, mopt_diag *diag) {
  int ok = fchmod(fd, 0644) == 0 && fsync(fd) == 0;
  ok = close(fd) == 0 && ok;
  if (!ok || rename(tmp, path) != 0) {
    int rc = mopt_diag_set(diag, MOPT_EIO, path, "cannot write: %s", strerror(errno));
    unlink(tmp);
    return rc;
  }
  char *d = strdup(path);
  if (d) {
    int dfd = open(dirname(d), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) { fsync(dfd); close(dfd); }
    free(d);
  }
  return 0;
}
static void temp_abort(int fd, char *tmp) {
  if (fd >= 0) close(fd);
  if (tmp) unlink(tmp);
}

static int open_in(const char *path, uint64_t *size, mopt_diag *diag) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return mopt_diag_set(diag, errno == ENOENT ? MOPT_ENOTFOUND : MOPT_EIO, path,
                         "cannot open: %s", strerror(errno));
  struct stat st;
  if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
    close(fd);
    return mopt_diag_set(diag, MOPT_EIO, path, "not a regular file");
  }
  *size = (uint64_t)st.st_size;
  return fd;
}

/* ---------------------------------------------------------------- tensor lists ---- */
typedef struct tent {
  char *name;
  int32_t loc, dtype;
  uint64_t off, len, dimhash;
  int used;
} tent;
typedef struct tlist { tent *v; size_t n, cap; int oom; } tlist;

static void tlist_free(tlist *l) {
  for (size_t i = 0; i < l->n; i++) free(l->v[i].name);
  free(l->v);
  memset(l, 0, sizeof *l);
}

static int collect_cb(const mopt_scan_tensor *t, void *ctx) {
  tlist *l = ctx;
  if (t->raw_length < MIN_TENSOR) return 0;
  if (l->n == l->cap) {
    size_t nc = l->cap ? l->cap * 2 : 64;
    tent *nv = realloc(l->v, nc * sizeof *nv);
    if (!nv) { l->oom = 1; return MOPT_ENOMEM; }
    l->v = nv; l->cap = nc;
  }
  tent *e = &l->v[l->n];
  e->name = strdup(t->name ? t->name : "");
  if (!e->name) { l->oom = 1; return MOPT_ENOMEM; }
  e->loc = t->location; e->dtype = t->dtype;
  e->off = t->raw_offset; e->len = t->raw_length; e->used = 0;
  uint64_t h = 1469598103934665603ull ^ (uint64_t)t->ndim;
  for (int32_t i = 0; i < t->ndim; i++) h = (h ^ (uint64_t)t->dims[i]) * 1099511628211ull;
  e->dimhash = h;
  l->n++;
  return 0;
}

static int cmp_off(const void *a, const void *b) {
  const tent *x = a, *y = b;
  return x->off < y->off ? -1 : x->off > y->off;
}
static int cmp_key(const void *a, const void *b) {
  const tent *x = a, *y = b;
  if (x->loc != y->loc) return x->loc < y->loc ? -1 : 1;
  int c = strcmp(x->name, y->name);
  if (c) return c;
  return x->off < y->off ? -1 : x->off > y->off;
}

/* Lists the tensors of a file (raw_data ≥ MIN_TENSOR bytes) sorted by offset, without overlaps.
 * A file that does not scan as ONNX yields an empty list (opaque bytes), not an error. */
static int list_tensors(const char *path, uint64_t size, int opaque, tlist *l) {
  memset(l, 0, sizeof *l);
  if (opaque || size == 0) return 0;
  mopt_diag d;
  int rc = mopt_model_scan_file_tensors(path, NULL, collect_cb, l, NULL, &d);
  if (l->oom) { tlist_free(l); return MOPT_ENOMEM; }
  if (rc) { tlist_free(l); return 0; }
  qsort(l->v, l->n, sizeof *l->v, cmp_off);
  size_t k = 0;
  uint64_t end = 0;
  for (size_t i = 0; i < l->n; i++) {
    tent *e = &l->v[i];
    if (e->off < end || e->off > size || e->len > size - e->off) { free(e->name); continue; }
    end = e->off + e->len;
    l->v[k++] = *e;
  }
  l->n = k;
  return 0;
}

static unsigned dtype_elem_size(int32_t dt) {
  switch (dt) {
  case MOPT_DT_FLOAT: case MOPT_DT_INT32: case MOPT_DT_UINT32: case MOPT_DT_COMPLEX64: return 4;
  case MOPT_DT_DOUBLE: case MOPT_DT_INT64: case MOPT_DT_UINT64: case MOPT_DT_COMPLEX128: return 8;
  case MOPT_DT_UINT16: case MOPT_DT_INT16: case MOPT_DT_FLOAT16: case MOPT_DT_BFLOAT16: return 2;
  default: return 1;
  }
}
static int dtype_is_int(int32_t dt) {
  switch (dt) {
  case MOPT_DT_UINT8: case MOPT_DT_INT8: case MOPT_DT_UINT16: case MOPT_DT_INT16:
  case MOPT_DT_INT32: case MOPT_DT_INT64: case MOPT_DT_UINT32: case MOPT_DT_UINT64:
  case MOPT_DT_BOOL: case MOPT_DT_UINT4: case MOPT_DT_INT4: return 1;
  default: return 0;
  }
}

/* ---------------------------------------------------------------- chunk transforms ---- */
static void split_planes(const uint8_t *src, size_t n, unsigned es, uint8_t *planes) {
  size_t m = n / es;
  if (es == 1) { memcpy(planes, src, n); return; }
  for (unsigned p = 0; p < es; p++) {
    uint8_t *d = planes + p * m;
    const uint8_t *s = src + p;
    for (size_t i = 0; i < m; i++) d[i] = s[i * es];
  }
}
static void join_planes(const uint8_t *planes, size_t n, unsigned es, uint8_t *dst) {
  size_t m = n / es;
  if (es == 1) { memcpy(dst, planes, n); return; }
  if (es == 4) {
    const uint8_t *p0 = planes, *p1 = planes + m, *p2 = planes + 2 * m, *p3 = planes + 3 * m;
    for (size_t i = 0; i < m; i++) {
      uint32_t v = (uint32_t)p0[i] | (uint32_t)p1[i] << 8 | (uint32_t)p2[i] << 16 |
                   (uint32_t)p3[i] << 24;
      memcpy(dst + 4 * i, &v, 4);   /* little-endian hosts only (checked at runtime below) */
    }
    return;
  }
  for (unsigned p = 0; p < es; p++) {
    const uint8_t *s = planes + p * m;
    uint8_t *d = dst + p;
    for (size_t i = 0; i < m; i++) d[i * es] = s[i];
  }
}
static void xor_into(uint8_t *dst, const uint8_t *a, const uint8_t *b, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t x, y;
    memcpy(&x, a + i, 8); memcpy(&y, b + i, 8);
    x ^= y;
    memcpy(dst + i, &x, 8);
  }
  for (; i < n; i++) dst[i] = a[i] ^ b[i];
}
/* dst = a - b (sign = -1) or a + b (sign = +1), element-wise little-endian modulo 2^(8 es). */
static void addsub(uint8_t *dst, const uint8_t *a, const uint8_t *b, size_t n, unsigned es, int sign) {
  size_t m = n / es;
  for (size_t i = 0; i < m; i++) {
    uint64_t x = 0, y = 0;
    for (unsigned k = 0; k < es; k++) {
      x |= (uint64_t)a[i * es + k] << (8 * k);
      y |= (uint64_t)b[i * es + k] << (8 * k);
    }
    uint64_t r = sign > 0 ? x + y : x - y;
    for (unsigned k = 0; k < es; k++) dst[i * es + k] = (uint8_t)(r >> (8 * k));
  }
}

/* ---------------------------------------------------------------- writer ---- */
typedef struct wr {
  int fd;
  uint8_t *buf;
  size_t n;
  uint64_t written;                 /* bytes handed to the writer */
  crypto_hash_sha256_state h;
  int err;
} wr;
static void wr_flush(wr *w) {
  if (w->n && !w->err) {
    crypto_hash_sha256_update(&w->h, w->buf, w->n);
    if (write_full(w->fd, w->buf, w->n)) w->err = errno ? errno : EIO;
  }
  w->n = 0;
}
static void wr_put(wr *w, const void *data, size_t n) {
  const uint8_t *p = data;
  w->written += n;
  while (n && !w->err) {
    size_t k = IO_BUF - w->n < n ? IO_BUF - w->n : n;
    memcpy(w->buf + w->n, p, k);
    w->n += k; p += k; n -= k;
    if (w->n == IO_BUF) wr_flush(w);
  }
}

/* ---------------------------------------------------------------- encoder ---- */
typedef struct enc {
  int level, skel_level;
  size_t chunk;
  int tfd, bfd;
  uint64_t tsize, bsize;
  ZSTD_CCtx *cc;
  ZSTD_CCtx *sk[2];              /* skeleton without / with the base prefix */
  uint8_t *skout[2];
  size_t sklen[2], skcap[2];
  uint8_t *prefix;
  size_t prefix_len;
  uint8_t *tbuf, *bbuf, *xbuf, *planes, *cand, *best, *gapbuf;
  size_t candcap;
  uint64_t nrec;
  wr w;
  mopt_payload_info st;
  mopt_diag *diag;
} enc;

/* Compresses src (n bytes, es-byte elements) as planes into dst. Returns bytes, or 0 on error. */
static size_t enc_planes(enc *e, const uint8_t *src, size_t n, unsigned es, uint8_t *dst) {
  split_planes(src, n, es, e->planes);
  size_t m = n / es, off = 4 * es;
  for (unsigned p = 0; p < es; p++) {
    size_t r = ZSTD_compress2(e->cc, dst + off, e->candcap - off, e->planes + p * m, m);
    if (ZSTD_isError(r)) return 0;
    put32(dst + 4 * p, (uint32_t)r);
    off += r;
  }
  return off;
}

static void enc_record(enc *e, int type, int mode, unsigned es, uint64_t out_len, uint64_t base_off,
                       const uint8_t *data, size_t data_len) {
  uint8_t h[REC_SIZE] = {0};
  h[0] = (uint8_t)type; h[1] = (uint8_t)mode; h[2] = (uint8_t)es;
  put64(h + 8, out_len); put64(h + 16, base_off); put64(h + 24, data_len);
  wr_put(&e->w, h, sizeof h);
  if (data_len) wr_put(&e->w, data, data_len);
  e->nrec++;
}

static int sk_feed(enc *e, int which, const uint8_t *src, size_t n, ZSTD_EndDirective end) {
  ZSTD_inBuffer in = {src, n, 0};
  for (;;) {
    if (e->skcap[which] - e->sklen[which] < ZSTD_CStreamOutSize()) {
      size_t nc = e->skcap[which] ? e->skcap[which] * 2 : (1u << 20);
      uint8_t *nb = realloc(e->skout[which], nc);
      if (!nb) return MOPT_ENOMEM;
      e->skout[which] = nb; e->skcap[which] = nc;
    }
    ZSTD_outBuffer out = {e->skout[which], e->skcap[which], e->sklen[which]};
    size_t r = ZSTD_compressStream2(e->sk[which], &out, &in, end);
    e->sklen[which] = out.pos;
    if (ZSTD_isError(r))
      return mopt_diag_set(e->diag, MOPT_EINTERNAL, "skeleton", "zstd: %s", ZSTD_getErrorName(r));
    if (end == ZSTD_e_end ? r == 0 : in.pos == in.size) return 0;
  }
}

/* Target bytes [off, off+len) that are not tensor data: one GAP record, fed to the skeleton. */
static int enc_gap(enc *e, uint64_t off, uint64_t len, int two) {
  if (!len) return 0;
  enc_record(e, REC_GAP, 0, 0, len, NO_BASE, NULL, 0);
  while (len) {
    size_t n = len < IO_BUF ? (size_t)len : IO_BUF;
    if (pread_full(e->tfd, e->gapbuf, n, off))
      return mopt_diag_set(e->diag, MOPT_EIO, "target", "read error at byte %llu",
                           (unsigned long long)off);
    for (int k = 0; k < (two ? 2 : 1); k++) {
      int rc = sk_feed(e, k, e->gapbuf, n, ZSTD_e_continue);
      if (rc) return rc;
    }
    off += n; len -= n;
  }
  return 0;
}

static void swap_best(enc *e) { uint8_t *t = e->best; e->best = e->cand; e->cand = t; }

/* One tensor: CHUNK records; base_off == NO_BASE when unmatched. */
static int enc_tensor(enc *e, const tent *t, uint64_t base_off) {
  unsigned es = dtype_elem_size(t->dtype);
  if (t->len % es) es = 1;
  int is_int = dtype_is_int(t->dtype);
  size_t chunk = e->chunk - e->chunk % es;
  for (uint64_t pos = 0; pos < t->len;) {
    size_t n = t->len - pos < chunk ? (size_t)(t->len - pos) : chunk;
    if (pread_full(e->tfd, e->tbuf, n, t->off + pos))
      return mopt_diag_set(e->diag, MOPT_EIO, t->name, "target read error");
    uint64_t bo = base_off == NO_BASE ? NO_BASE : base_off + pos;
    if (bo != NO_BASE) {
      if (pread_full(e->bfd, e->bbuf, n, bo))
        return mopt_diag_set(e->diag, MOPT_EIO, t->name, "base read error");
      if (!memcmp(e->tbuf, e->bbuf, n)) {
        enc_record(e, REC_CHUNK, MODE_SAME, es, n, bo, NULL, 0);
        e->st.bytes_same += n;
        pos += n;
        continue;
      }
    }
    size_t bl = enc_planes(e, e->tbuf, n, es, e->best);
    int mode = MODE_RAW;
    if (!bl) return mopt_diag_set(e->diag, MOPT_EINTERNAL, t->name, "zstd compression failed");
    if (bo != NO_BASE) {
      xor_into(e->xbuf, e->tbuf, e->bbuf, n);
      size_t cl = enc_planes(e, e->xbuf, n, es, e->cand);
      if (cl && cl < bl) { swap_best(e); bl = cl; mode = MODE_XOR; }
      if (is_int && es > 0) {
        addsub(e->xbuf, e->tbuf, e->bbuf, n, es, -1);
        cl = enc_planes(e, e->xbuf, n, es, e->cand);
        if (cl && cl < bl) { swap_best(e); bl = cl; mode = MODE_SUB; }
      }
    }
    enc_record(e, REC_CHUNK, mode, es, n, mode == MODE_RAW ? NO_BASE : bo, e->best, bl);
    if (mode == MODE_RAW) e->st.bytes_raw += n;
    else if (mode == MODE_XOR) e->st.bytes_xor += n;
    else e->st.bytes_sub += n;
    pos += n;
  }
  return 0;
}

static int check_opts(const mopt_payload_opts *o, mopt_diag *diag) {
  if (!o) return 0;
  if (o->level < 0 || o->level > 22)
    return mopt_diag_set(diag, MOPT_EINVAL, "level", "zstd level %d is outside 0..22", o->level);
  if (o->chunk_bytes && (o->chunk_bytes % 8 || o->chunk_bytes > CHUNK_MAX))
    return mopt_diag_set(diag, MOPT_EINVAL, "chunk_bytes",
                         "chunk size %u must be a multiple of 8 and at most 4 MiB", o->chunk_bytes);
  return 0;
}

static void fill_info_hdr(mopt_payload_info *info, const uint8_t *h) {
  info->version = get32(h + 8);
  info->kind = get32(h + 12);
  info->payload_size = get64(h + 16);
  info->target_size = get64(h + 24);
  hex32(h + 32, info->target_sha256);
  info->base_size = get64(h + 64);
  if (info->kind == MOPT_PAYLOAD_DELTA) hex32(h + 72, info->base_sha256);
  else info->base_sha256[0] = 0;
  info->n_records = get64(h + 120);
  info->skeleton_prefixed = get64(h + 136) != 0;
  info->skeleton_comp_len = get64(h + 152);
  info->skeleton_len = get64(h + 160);
}

/* The shared encoder behind pack (base_path NULL) and delta. */
static int encode(const char *base_path, const char *target_path, const char *out_path,
                  const mopt_payload_opts *opts, mopt_payload_info *info, mopt_diag *diag) {
  if (diag) diag->msg[0] = diag->where[0] = 0;
  int rc = check_opts(opts, diag);
  if (rc) return rc;
  enc e;
  memset(&e, 0, sizeof e);
  e.diag = diag;
  e.tfd = e.bfd = e.w.fd = -1;
  tlist tl = {0}, bl = {0};
  tent *bkey = NULL;
  uint64_t (*pranges)[2] = NULL;
  size_t npr = 0;
  char *tmp = NULL;
  int delta = base_path != NULL;
  int opaque = opts && opts->opaque;

  e.tfd = open_in(target_path, &e.tsize, diag);
  if (e.tfd < 0) { rc = e.tfd; e.tfd = -1; goto out; }
  if (delta) {
    e.bfd = open_in(base_path, &e.bsize, diag);
    if (e.bfd < 0) { rc = e.bfd; e.bfd = -1; goto out; }
  }
  e.level = opts && opts->level ? opts->level : e.tsize <= AUTO_LEVEL_LIMIT ? 19 : 3;
  e.chunk = opts && opts->chunk_bytes ? opts->chunk_bytes : CHUNK_DEFAULT;

  if ((rc = list_tensors(target_path, e.tsize, opaque, &tl))) goto out;
  if (delta && (rc = list_tensors(base_path, e.bsize, opaque, &bl))) goto out;

  /* hashes of the inputs */
  uint8_t tsha[32], bsha[32] = {0};
  e.gapbuf = malloc(IO_BUF);
  e.w.buf = malloc(IO_BUF);
  if (!e.gapbuf || !e.w.buf) { rc = MOPT_ENOMEM; goto out; }
  {
    crypto_hash_sha256_state h;
    crypto_hash_sha256_init(&h);
    if (hash_range(e.tfd, 0, e.tsize, &h, e.gapbuf)) { rc = mopt_diag_set(diag, MOPT_EIO, target_path, "read error"); goto out; }
    crypto_hash_sha256_final(&h, tsha);
    if (delta) {
      crypto_hash_sha256_init(&h);
      if (hash_range(e.bfd, 0, e.bsize, &h, e.gapbuf)) { rc = mopt_diag_set(diag, MOPT_EIO, base_path, "read error"); goto out; }
      crypto_hash_sha256_final(&h, bsha);
    }
  }

  /* base skeleton ranges → prefix (≤ PREFIX_MAX bytes) */
  if (delta) {
    pranges = malloc((bl.n + 1) * sizeof *pranges);
    e.prefix = malloc(PREFIX_MAX);
    if (!pranges || !e.prefix) { rc = MOPT_ENOMEM; goto out; }
    uint64_t cur = 0;
    for (size_t i = 0; i <= bl.n && e.prefix_len < PREFIX_MAX; i++) {
      uint64_t end = i < bl.n ? bl.v[i].off : e.bsize;
      uint64_t len = end - cur;
      if (len > PREFIX_MAX - e.prefix_len) len = PREFIX_MAX - e.prefix_len;
      if (len) {
        if (pread_full(e.bfd, e.prefix + e.prefix_len, (size_t)len, cur)) {
          rc = mopt_diag_set(diag, MOPT_EIO, base_path, "read error");
          goto out;
        }
        pranges[npr][0] = cur; pranges[npr][1] = len; npr++;
        e.prefix_len += (size_t)len;
      }
      if (i < bl.n) cur = bl.v[i].off + bl.v[i].len;
    }
    bkey = malloc((bl.n ? bl.n : 1) * sizeof *bkey);
    if (!bkey) { rc = MOPT_ENOMEM; goto out; }
    memcpy(bkey, bl.v, bl.n * sizeof *bkey);
    qsort(bkey, bl.n, sizeof *bkey, cmp_key);
  }

  /* buffers and zstd contexts */
  e.candcap = e.chunk + e.chunk / 64 + 4096;
  e.tbuf = malloc(e.chunk); e.bbuf = malloc(e.chunk); e.xbuf = malloc(e.chunk);
  e.planes = malloc(e.chunk); e.cand = malloc(e.candcap); e.best = malloc(e.candcap);
  e.cc = ZSTD_createCCtx();
  if (!e.tbuf || !e.bbuf || !e.xbuf || !e.planes || !e.cand || !e.best || !e.cc) { rc = MOPT_ENOMEM; goto out; }
  ZSTD_CCtx_setParameter(e.cc, ZSTD_c_compressionLevel, e.level);
  ZSTD_CCtx_setParameter(e.cc, ZSTD_c_checksumFlag, 1);
  uint64_t skel_len = e.tsize;
  for (size_t i = 0; i < tl.n; i++) skel_len -= tl.v[i].len;
  e.skel_level = skel_len <= AUTO_LEVEL_LIMIT ? 19 : 3;
  for (int k = 0; k < (delta ? 2 : 1); k++) {
    e.sk[k] = ZSTD_createCCtx();
    if (!e.sk[k]) { rc = MOPT_ENOMEM; goto out; }
    ZSTD_CCtx_setParameter(e.sk[k], ZSTD_c_compressionLevel, e.skel_level);
    ZSTD_CCtx_setParameter(e.sk[k], ZSTD_c_windowLog, SKEL_WLOG);
    ZSTD_CCtx_setParameter(e.sk[k], ZSTD_c_checksumFlag, 1);
    ZSTD_CCtx_setPledgedSrcSize(e.sk[k], skel_len);
  }
  if (delta && e.prefix_len) ZSTD_CCtx_refPrefix(e.sk[1], e.prefix, e.prefix_len);

  /* output */
  int ofd = temp_open(out_path, &tmp, diag);
  if (ofd < 0) { rc = ofd; goto out; }
  e.w.fd = ofd;
  crypto_hash_sha256_init(&e.w.h);
  if (lseek(ofd, HDR_SIZE, SEEK_SET) != (off_t)HDR_SIZE) { rc = mopt_diag_set(diag, MOPT_EIO, out_path, "seek failed"); goto out; }

  /* records, front to back */
  uint64_t cur = 0;
  for (size_t i = 0; i < tl.n; i++) {
    tent *t = &tl.v[i];
    if ((rc = enc_gap(&e, cur, t->off - cur, delta))) goto out;
    uint64_t bo = NO_BASE;
    e.st.n_tensors++;
    if (delta && bl.n) {
      tent key = *t;
      key.off = 0;
      size_t lo = 0, hi = bl.n;
      while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cmp_key(&bkey[mid], &key) < 0) lo = mid + 1; else hi = mid;
      }
      for (size_t j = lo; j < bl.n && bkey[j].loc == t->loc && !strcmp(bkey[j].name, t->name); j++) {
        if (bkey[j].used) continue;
        bkey[j].used = 1;
        if (bkey[j].dtype == t->dtype && bkey[j].len == t->len && bkey[j].dimhash == t->dimhash) {
          bo = bkey[j].off;
          e.st.n_matched++;
        }
        break;
      }
    }
    if ((rc = enc_tensor(&e, t, bo))) goto out;
    cur = t->off + t->len;
  }
  if ((rc = enc_gap(&e, cur, e.tsize - cur, delta))) goto out;
  uint64_t records_len = e.w.written;
  for (int k = 0; k < (delta ? 2 : 1); k++)
    if ((rc = sk_feed(&e, k, NULL, 0, ZSTD_e_end))) goto out;
  int use_prefix = delta && npr && e.sklen[1] + 16 * npr < e.sklen[0];
  if (!use_prefix) npr = 0;
  for (size_t i = 0; i < npr; i++) {
    uint8_t pe[16];
    put64(pe, pranges[i][0]); put64(pe + 8, pranges[i][1]);
    wr_put(&e.w, pe, 16);
  }
  int sk = use_prefix ? 1 : 0;
  wr_put(&e.w, e.skout[sk], e.sklen[sk]);
  wr_flush(&e.w);
  if (e.w.err) { rc = mopt_diag_set(diag, MOPT_EIO, out_path, "write error: %s", strerror(e.w.err)); goto out; }

  uint8_t hdr[HDR_SIZE] = {0};
  memcpy(hdr, MAGIC, 8);
  put32(hdr + 8, MOPT_PAYLOAD_VERSION);
  put32(hdr + 12, delta ? MOPT_PAYLOAD_DELTA : MOPT_PAYLOAD_FULL);
  put64(hdr + 16, HDR_SIZE + e.w.written);
  put64(hdr + 24, e.tsize);
  memcpy(hdr + 32, tsha, 32);
  put64(hdr + 64, delta ? e.bsize : 0);
  if (delta) memcpy(hdr + 72, bsha, 32);
  put64(hdr + 104, HDR_SIZE);
  put64(hdr + 112, records_len);
  put64(hdr + 120, e.nrec);
  put64(hdr + 128, HDR_SIZE + records_len);
  put64(hdr + 136, npr);
  put64(hdr + 144, HDR_SIZE + records_len + 16 * npr);
  put64(hdr + 152, e.sklen[sk]);
  put64(hdr + 160, skel_len);
  crypto_hash_sha256_update(&e.w.h, hdr, HDR_HASHED);
  crypto_hash_sha256_final(&e.w.h, hdr + HDR_HASHED);
  if (pwrite(ofd, hdr, HDR_SIZE, 0) != (ssize_t)HDR_SIZE) {
    rc = mopt_diag_set(diag, MOPT_EIO, out_path, "write error: %s", strerror(errno));
    goto out;
  }
  e.w.fd = -1;
  rc = temp_commit(ofd, tmp, out_path, diag);
  if (!rc && info) {
    *info = e.st;
    fill_info_hdr(info, hdr);
  }
out:
  if (e.w.fd >= 0) temp_abort(e.w.fd, tmp);
  free(tmp);
  if (e.tfd >= 0) close(e.tfd);
  if (e.bfd >= 0) close(e.bfd);
  tlist_free(&tl);
  tlist_free(&bl);
  free(bkey); free(pranges); free(e.prefix);
  free(e.tbuf); free(e.bbuf); free(e.xbuf); free(e.planes); free(e.cand); free(e.best);
  free(e.gapbuf); free(e.w.buf);
  free(e.skout[0]); free(e.skout[1]);
  ZSTD_freeCCtx(e.cc); ZSTD_freeCCtx(e.sk[0]); ZSTD_freeCCtx(e.sk[1]);
  return rc;
}

int mopt_payload_pack_file(const char *model_path, const char *out_path,
                           const mopt_payload_opts *opts, mopt_payload_info *info,
                           mopt_diag *diag) {
  return encode(NULL, model_path, out_path, opts, info, diag);
}

int mopt_payload_delta_file(const char *base_path, const char *target_path, const char *out_path,
                            const mopt_payload_opts *opts, mopt_payload_info *info,
                            mopt_diag *diag) {
  return encode(base_path, target_path, out_path, opts, info, diag);
}

/* ---------------------------------------------------------------- decoder ---- */
typedef struct hdr {
  uint32_t kind;
  uint64_t psize, tsize, bsize, rec_off, rec_len, nrec, pre_off, npre, sk_off, sk_clen, sk_len;
  uint8_t tsha[32], bsha[32], psha[32];
} hdr;

#define BAD(where, ...) mopt_diag_set(diag, MOPT_EPAYLOAD, where, __VA_ARGS__)

static int hdr_parse(const uint8_t *b, uint64_t fsize, hdr *h, mopt_diag *diag) {
  if (memcmp(b, MAGIC, 8)) return BAD("byte 0", "not a moptd OTA payload (bad magic)");
  uint32_t ver = get32(b + 8);
  if (ver != MOPT_PAYLOAD_VERSION)
    return BAD("byte 8", "payload format version %u is not supported (this build reads %u)", ver,
               MOPT_PAYLOAD_VERSION);
  h->kind = get32(b + 12);
  if (h->kind != MOPT_PAYLOAD_FULL && h->kind != MOPT_PAYLOAD_DELTA)
    return BAD("byte 12", "unknown payload kind %u", h->kind);
  h->psize = get64(b + 16); h->tsize = get64(b + 24); h->bsize = get64(b + 64);
  h->rec_off = get64(b + 104); h->rec_len = get64(b + 112); h->nrec = get64(b + 120);
  h->pre_off = get64(b + 128); h->npre = get64(b + 136); h->sk_off = get64(b + 144);
  h->sk_clen = get64(b + 152); h->sk_len = get64(b + 160);
  memcpy(h->tsha, b + 32, 32); memcpy(h->bsha, b + 72, 32); memcpy(h->psha, b + HDR_HASHED, 32);
  if (h->psize != fsize)
    return BAD("byte 16", "payload is %llu bytes but its header says %llu (truncated or extended)",
               (unsigned long long)fsize, (unsigned long long)h->psize);
  if (get32(b + 168) || get32(b + 172)) return BAD("byte 168", "reserved header fields are not zero");
  if (h->rec_off != HDR_SIZE) return BAD("byte 104", "records do not start at byte %u", HDR_SIZE);
  if (h->npre > PREFIX_MAX || h->rec_len > fsize || h->sk_clen > fsize ||
      h->pre_off != h->rec_off + h->rec_len || h->sk_off != h->pre_off + 16 * h->npre ||
      h->sk_off > fsize || h->sk_off + h->sk_clen != fsize)
    return BAD("byte 104", "sections do not tile the payload");
  if (h->nrec > h->rec_len / REC_SIZE) return BAD("byte 120", "record count exceeds the records section");
  if (h->sk_len > h->tsize) return BAD("byte 160", "skeleton is longer than the target");
  if (h->kind == MOPT_PAYLOAD_FULL) {
    static const uint8_t zero[32];
    if (h->bsize || h->npre || memcmp(h->bsha, zero, 32))
      return BAD("byte 64", "a full payload names a base");
  }
  return 0;
}

static int read_header(int pfd, uint64_t psize, hdr *h, uint8_t *raw, mopt_diag *diag) {
  if (psize < HDR_SIZE)
    return BAD("byte 0", "payload is %llu bytes, shorter than its %u-byte header",
               (unsigned long long)psize, HDR_SIZE);
  if (pread_full(pfd, raw, HDR_SIZE, 0)) return mopt_diag_set(diag, MOPT_EIO, "payload", "read error");
  return hdr_parse(raw, psize, h, diag);
}

/* Pass 1: every record's structure, without decoding anything. */
static int check_records(int pfd, const hdr *h, uint64_t bsize, mopt_diag *diag) {
  uint64_t pos = h->rec_off, end = h->rec_off + h->rec_len, out = 0, gaps = 0;
  char where[64];
  for (uint64_t i = 0; i < h->nrec; i++) {
    uint8_t r[REC_SIZE];
    snprintf(where, sizeof where, "record %llu (byte %llu)", (unsigned long long)i, (unsigned long long)pos);
    if (end - pos < REC_SIZE) return BAD(where, "record header runs past the records section");
    if (pread_full(pfd, r, REC_SIZE, pos)) return mopt_diag_set(diag, MOPT_EIO, "payload", "read error");
    pos += REC_SIZE;
    unsigned type = r[0], mode = r[1], es = r[2];
    uint64_t olen = get64(r + 8), boff = get64(r + 16), dlen = get64(r + 24);
    if (r[3] || get32(r + 4)) return BAD(where, "reserved record fields are not zero");
    if (olen == 0 || olen > h->tsize - out) return BAD(where, "record length %llu overruns the target", (unsigned long long)olen);
    if (dlen > end - pos) return BAD(where, "record data runs past the records section");
    if (type == REC_GAP) {
      if (mode || es || boff != NO_BASE || dlen) return BAD(where, "malformed GAP record");
      if (olen > h->sk_len - gaps) return BAD(where, "GAP records exceed the skeleton length");
      gaps += olen;
    } else if (type == REC_CHUNK) {
      if (es != 1 && es != 2 && es != 4 && es != 8) return BAD(where, "element size %u is not 1, 2, 4 or 8", es);
      if (olen > CHUNK_MAX || olen % es) return BAD(where, "chunk length %llu is invalid", (unsigned long long)olen);
      if (mode > MODE_SUB) return BAD(where, "unknown chunk mode %u", mode);
      if (mode == MODE_RAW) {
        if (boff != NO_BASE) return BAD(where, "RAW chunk names a base range");
      } else {
        if (h->kind != MOPT_PAYLOAD_DELTA) return BAD(where, "chunk refers to a base in a full payload");
        if (boff > bsize || olen > bsize - boff) return BAD(where, "base range lies beyond the base (%llu bytes)", (unsigned long long)bsize);
      }
      if (mode == MODE_SAME) {
        if (dlen) return BAD(where, "SAME chunk carries data");
      } else {
        uint8_t sz[32];
        if (dlen < 4u * es) return BAD(where, "chunk data too short for its frame table");
        if (pread_full(pfd, sz, 4u * es, pos)) return mopt_diag_set(diag, MOPT_EIO, "payload", "read error");
        uint64_t sum = 4u * es, m = olen / es, fpos = pos + 4u * es;
        for (unsigned p = 0; p < es; p++) {
          uint64_t c = get32(sz + 4 * p);
          if (c > ZSTD_compressBound((size_t)m) + 64 || c < 4) return BAD(where, "plane %u frame size %llu is invalid", p, (unsigned long long)c);
          uint8_t fh[ZSTD_FRAMEHEADERSIZE_MAX];
          size_t fl = c < sizeof fh ? (size_t)c : sizeof fh;
          if (fpos + fl > end || pread_full(pfd, fh, fl, fpos)) return BAD(where, "plane %u frame lies beyond the records", p);
          unsigned long long cs = ZSTD_getFrameContentSize(fh, fl);
          if (cs != m) return BAD(where, "plane %u frame declares %llu bytes, chunk needs %llu", p, cs, (unsigned long long)m);
          sum += c; fpos += c;
        }
        if (sum != dlen) return BAD(where, "frame sizes add up to %llu, record says %llu", (unsigned long long)sum, (unsigned long long)dlen);
      }
    } else {
      return BAD(where, "unknown record type %u", type);
    }
    pos += dlen;
    out += olen;
  }
  if (pos != end) return BAD("records", "records section has %llu trailing bytes", (unsigned long long)(end - pos));
  if (out != h->tsize) return BAD("records", "records produce %llu bytes, target is %llu", (unsigned long long)out, (unsigned long long)h->tsize);
  if (gaps != h->sk_len) return BAD("records", "GAP records take %llu skeleton bytes of %llu", (unsigned long long)gaps, (unsigned long long)h->sk_len);
  return 0;
}

typedef struct dec {
  int pfd, bfd;
  const hdr *h;
  ZSTD_DCtx *dc;
  ZSTD_DStream *ds;
  uint8_t *inbuf;
  size_t in_n, in_pos;
  uint64_t sk_pos;          /* next payload byte of the skeleton frame to read */
  size_t last;              /* last ZSTD_decompressStream return */
  uint8_t *cbuf, *planes, *obuf, *bbuf;
  wr w;
  mopt_diag *diag;
} dec;

#define SK_IN (128u << 10)

/* Produces n skeleton bytes into the output. */
static int skel_out(dec *d, uint64_t n) {
  mopt_diag *diag = d->diag;
  while (n) {
    size_t want = n < IO_BUF ? (size_t)n : IO_BUF;
    ZSTD_outBuffer out = {d->obuf, want, 0};
    while (out.pos < out.size) {
      if (d->in_pos == d->in_n) {
        uint64_t left = d->h->sk_off + d->h->sk_clen - d->sk_pos;
        if (!left) return BAD("skeleton", "skeleton frame ends early");
        size_t k = left < SK_IN ? (size_t)left : SK_IN;
        if (pread_full(d->pfd, d->inbuf, k, d->sk_pos)) return mopt_diag_set(diag, MOPT_EIO, "payload", "read error");
        d->sk_pos += k; d->in_n = k; d->in_pos = 0;
      }
      ZSTD_inBuffer in = {d->inbuf, d->in_n, d->in_pos};
      size_t r = ZSTD_decompressStream(d->ds, &out, &in);
      d->in_pos = in.pos;
      if (ZSTD_isError(r)) return BAD("skeleton", "zstd: %s", ZSTD_getErrorName(r));
      d->last = r;
      if (r == 0 && out.pos < out.size) return BAD("skeleton", "skeleton frame ends early");
    }
    wr_put(&d->w, d->obuf, want);
    n -= want;
  }
  return 0;
}

static int skel_finish(dec *d) {
  mopt_diag *diag = d->diag;
  uint8_t one;
  while (d->last != 0) {
    if (d->in_pos == d->in_n) {
      uint64_t left = d->h->sk_off + d->h->sk_clen - d->sk_pos;
      if (!left) return BAD("skeleton", "skeleton frame is incomplete");
      size_t k = left < SK_IN ? (size_t)left : SK_IN;
      if (pread_full(d->pfd, d->inbuf, k, d->sk_pos)) return mopt_diag_set(diag, MOPT_EIO, "payload", "read error");
      d->sk_pos += k; d->in_n = k; d->in_pos = 0;
    }
    ZSTD_outBuffer out = {&one, 1, 0};
    ZSTD_inBuffer in = {d->inbuf, d->in_n, d->in_pos};
    size_t r = ZSTD_decompressStream(d->ds, &out, &in);
    d->in_pos = in.pos;
    if (ZSTD_isError(r)) return BAD("skeleton", "zstd: %s", ZSTD_getErrorName(r));
    if (out.pos) return BAD("skeleton", "skeleton frame is longer than the GAP records");
    d->last = r;
  }
  if (d->in_pos != d->in_n || d->sk_pos != d->h->sk_off + d->h->sk_clen)
    return BAD("skeleton", "bytes follow the skeleton frame");
  return 0;
}

/* Pass 2: decode every record into the writer. */
static int decode_records(dec *d) {
  mopt_diag *diag = d->diag;
  const hdr *h = d->h;
  uint64_t pos = h->rec_off;
  char where[64];
  d->last = 1;
  for (uint64_t i = 0; i < h->nrec; i++) {
    uint8_t r[REC_SIZE];
    if (pread_full(d->pfd, r, REC_SIZE, pos)) return mopt_diag_set(diag, MOPT_EIO, "payload", "read error");
    pos += REC_SIZE;
    snprintf(where, sizeof where, "record %llu", (unsigned long long)i);
    unsigned type = r[0], mode = r[1], es = r[2];
    uint64_t olen = get64(r + 8), boff = get64(r + 16), dlen = get64(r + 24);
    if (type == REC_GAP) {
      int rc = skel_out(d, olen);
      if (rc) return rc;
      continue;
    }
    size_t n = (size_t)olen, m = n / es;
    if (mode != MODE_RAW && pread_full(d->bfd, d->bbuf, n, boff))
      return mopt_diag_set(diag, MOPT_EIO, "base", "read error at byte %llu", (unsigned long long)boff);
    if (mode == MODE_SAME) {
      wr_put(&d->w, d->bbuf, n);
      continue;
    }
    uint8_t sz[32];
    if (pread_full(d->pfd, sz, 4u * es, pos)) return mopt_diag_set(diag, MOPT_EIO, "payload", "read error");
    uint64_t fpos = pos + 4u * es;
    for (unsigned p = 0; p < es; p++) {
      size_t c = get32(sz + 4 * p);
      if (pread_full(d->pfd, d->cbuf, c, fpos)) return mopt_diag_set(diag, MOPT_EIO, "payload", "read error");
      size_t got = ZSTD_decompressDCtx(d->dc, d->planes + p * m, m, d->cbuf, c);
      if (ZSTD_isError(got) || got != m)
        return BAD(where, "plane %u does not decode to %zu bytes%s%s", p, m,
                   ZSTD_isError(got) ? ": " : "", ZSTD_isError(got) ? ZSTD_getErrorName(got) : "");
      fpos += c;
    }
    join_planes(d->planes, n, es, d->obuf);
    if (mode == MODE_XOR) xor_into(d->obuf, d->obuf, d->bbuf, n);
    else if (mode == MODE_SUB) addsub(d->obuf, d->bbuf, d->obuf, n, es, +1);
    wr_put(&d->w, d->obuf, n);
    pos += dlen;
  }
  return skel_finish(d);
}

int mopt_payload_info_file(const char *payload_path, mopt_payload_info *info, mopt_diag *diag) {
  if (diag) diag->msg[0] = diag->where[0] = 0;
  uint64_t psize;
  int pfd = open_in(payload_path, &psize, diag);
  if (pfd < 0) return pfd;
  hdr h;
  uint8_t raw[HDR_SIZE];
  int rc = read_header(pfd, psize, &h, raw, diag);
  close(pfd);
  if (!rc && info) {
    memset(info, 0, sizeof *info);
    fill_info_hdr(info, raw);
  }
  return rc;
}

static int is_little_endian(void) {
  uint16_t v = 1;
  uint8_t b;
  memcpy(&b, &v, 1);
  return b == 1;
}

int mopt_payload_apply_file(const char *base_path, const char *payload_path, const char *out_path,
                            mopt_payload_info *info, mopt_diag *diag) {
  if (diag) diag->msg[0] = diag->where[0] = 0;
  if (!is_little_endian()) return mopt_diag_set(diag, MOPT_EUNSUPPORTED, "host", "big-endian hosts are not supported");
  dec d;
  memset(&d, 0, sizeof d);
  d.diag = diag;
  d.pfd = d.bfd = d.w.fd = -1;
  hash_job bj = {0};
  uint64_t psize, bsize = 0;
  hdr h;
  uint8_t raw[HDR_SIZE];
  uint8_t *prefix = NULL, *tmpbuf = NULL;
  char *tmp = NULL;
  int rc;
  d.h = &h;

  d.pfd = open_in(payload_path, &psize, diag);
  if (d.pfd < 0) { rc = d.pfd; d.pfd = -1; goto out; }
  if ((rc = read_header(d.pfd, psize, &h, raw, diag))) goto out;
  char want[65];
  hex32(h.bsha, want);
  if (h.kind == MOPT_PAYLOAD_DELTA) {
    if (!base_path) {
      rc = mopt_diag_set(diag, MOPT_EINVAL, payload_path,
                         "this is a delta payload: it needs the base model sha256:%s (%llu bytes)",
                         want, (unsigned long long)h.bsize);
      goto out;
    }
    d.bfd = open_in(base_path, &bsize, diag);
    if (d.bfd < 0) { rc = d.bfd; d.bfd = -1; goto out; }
    if (bsize != h.bsize) {
      rc = mopt_diag_set(diag, MOPT_EDIGEST, base_path,
                         "wrong base: the payload applies to sha256:%s (%llu bytes), this file is %llu bytes",
                         want, (unsigned long long)h.bsize, (unsigned long long)bsize);
      goto out;
    }
    bj.fd = d.bfd; bj.len = bsize;
    if (pthread_create(&bj.th, NULL, hash_job_run, &bj) == 0) bj.started = 1;
    else hash_job_run(&bj);
  }
  /* payload SHA-256: body, then the hashed header fields */
  tmpbuf = malloc(IO_BUF);
  if (!tmpbuf) { rc = MOPT_ENOMEM; goto out; }
  {
    crypto_hash_sha256_state hs;
    uint8_t dg[32];
    crypto_hash_sha256_init(&hs);
    if (hash_range(d.pfd, HDR_SIZE, psize - HDR_SIZE, &hs, tmpbuf)) { rc = mopt_diag_set(diag, MOPT_EIO, payload_path, "read error"); goto out; }
    crypto_hash_sha256_update(&hs, raw, HDR_HASHED);
    crypto_hash_sha256_final(&hs, dg);
    if (memcmp(dg, h.psha, 32)) {
      rc = BAD(payload_path, "payload is corrupted: its SHA-256 does not match the one in its header");
      goto out;
    }
  }
  if (bj.started) { pthread_join(bj.th, NULL); bj.started = 0; }
  if (h.kind == MOPT_PAYLOAD_DELTA) {
    if (bj.rc) { rc = mopt_diag_set(diag, bj.rc, base_path, "read error"); goto out; }
    if (memcmp(bj.digest, h.bsha, 32)) {
      char got[65];
      hex32(bj.digest, got);
      rc = mopt_diag_set(diag, MOPT_EDIGEST, base_path,
                         "wrong base: the payload applies to sha256:%s, this file is sha256:%s",
                         want, got);
      goto out;
    }
  }
  if ((rc = check_records(d.pfd, &h, bsize, diag))) goto out;

  /* prefix (the base skeleton ranges) */
  size_t plen = 0;
  if (h.npre) {
    prefix = malloc(PREFIX_MAX);
    if (!prefix) { rc = MOPT_ENOMEM; goto out; }
    for (uint64_t i = 0; i < h.npre; i++) {
      uint8_t pe[16];
      if (pread_full(d.pfd, pe, 16, h.pre_off + 16 * i)) { rc = mopt_diag_set(diag, MOPT_EIO, "payload", "read error"); goto out; }
      uint64_t o = get64(pe), l = get64(pe + 8);
      if (o > bsize || l > bsize - o || l > PREFIX_MAX - plen || !l) {
        rc = BAD("prefix table", "entry %llu is outside the base or over the 8 MiB limit", (unsigned long long)i);
        goto out;
      }
      if (pread_full(d.bfd, prefix + plen, (size_t)l, o)) { rc = mopt_diag_set(diag, MOPT_EIO, base_path, "read error"); goto out; }
      plen += (size_t)l;
    }
  }
  /* decoder state */
  d.dc = ZSTD_createDCtx();
  d.ds = ZSTD_createDStream();
  d.inbuf = malloc(SK_IN);
  d.cbuf = malloc(ZSTD_compressBound(CHUNK_MAX) + 64);
  d.planes = malloc(CHUNK_MAX);
  d.obuf = malloc(CHUNK_MAX);
  d.bbuf = malloc(CHUNK_MAX);
  d.w.buf = tmpbuf;
  tmpbuf = NULL;
  if (!d.dc || !d.ds || !d.inbuf || !d.cbuf || !d.planes || !d.obuf || !d.bbuf) { rc = MOPT_ENOMEM; goto out; }
  ZSTD_DCtx_setParameter(d.ds, ZSTD_d_windowLogMax, SKEL_WLOG);
  ZSTD_DCtx_setParameter(d.dc, ZSTD_d_windowLogMax, 23);
  if (plen) ZSTD_DCtx_refPrefix(d.ds, prefix, plen);
  d.sk_pos = h.sk_off;

  int ofd = temp_open(out_path, &tmp, diag);
  if (ofd < 0) { rc = ofd; goto out; }
  d.w.fd = ofd;
  crypto_hash_sha256_init(&d.w.h);
  if ((rc = decode_records(&d))) goto out;
  wr_flush(&d.w);
  if (d.w.err) { rc = mopt_diag_set(diag, MOPT_EIO, out_path, "write error: %s", strerror(d.w.err)); goto out; }
  uint8_t odg[32];
  crypto_hash_sha256_final(&d.w.h, odg);
  if (d.w.written != h.tsize || memcmp(odg, h.tsha, 32)) {
    char a[65], b[65];
    hex32(h.tsha, a); hex32(odg, b);
    rc = mopt_diag_set(diag, MOPT_EDIGEST, out_path,
                       "rebuilt model is sha256:%s, the payload promised sha256:%s; nothing written", b, a);
    goto out;
  }
  d.w.fd = -1;
  rc = temp_commit(ofd, tmp, out_path, diag);
  if (!rc && info) {
    memset(info, 0, sizeof *info);
    fill_info_hdr(info, raw);
  }
out:
  if (bj.started) pthread_join(bj.th, NULL);
  if (d.w.fd >= 0) temp_abort(d.w.fd, tmp);
  free(tmp);
  if (d.pfd >= 0) close(d.pfd);
  if (d.bfd >= 0) close(d.bfd);
  free(prefix); free(tmpbuf);
  free(d.inbuf); free(d.cbuf); free(d.planes); free(d.obuf); free(d.bbuf); free(d.w.buf);
  ZSTD_freeDCtx(d.dc);
  ZSTD_freeDStream(d.ds);
  return rc;
}

int mopt_payload_unpack_file(const char *payload_path, const char *out_path,
                             mopt_payload_info *info, mopt_diag *diag) {
  return mopt_payload_apply_file(NULL, payload_path, out_path, info, diag);
}
