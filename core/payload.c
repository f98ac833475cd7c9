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
#include "payload_int.h"

#define HDR_SIZE 168u
#define HDR_HASHED 136u
#define K_GAP 0
#define K_SAME 1
#define K_RAW 2
#define K_XOR 3
#define K_SUB 4
#define K_SUBE 5
#define OP_ROT 0x20u
#define NO_BASE UINT64_MAX
#define PREFIX_MAX (8u << 20)
#define CHUNK_MAX (2u << 20)
#define CHUNK_DEFAULT (1u << 20)
#define SKEL_WLOG 23
#define MIN_TENSOR 64u
#define IO_BUF (1u << 20)
#define AUTO_LEVEL_LIMIT (64ull << 20)

static const uint8_t MAGIC[8] = {'M', 'O', 'P', 'T', 'P', 'A', 'Y', '\n'};

/* ---------------------------------------------------------------- little helpers ---- */
static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static size_t put_varint(uint8_t *p, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) { p[n++] = (uint8_t)(v | 0x80); v >>= 7; }
  p[n++] = (uint8_t)v;
  return n;
}
static uint64_t zigzag(int64_t v) { return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63); }
static int64_t unzigzag(uint64_t z) { return (int64_t)(z >> 1) ^ -(int64_t)(z & 1); }
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
static int hash_range(int fd, uint64_t off, uint64_t len, mopt_sha *h, uint8_t *buf) {
  while (len) {
    size_t n = len < IO_BUF ? (size_t)len : IO_BUF;
    if (pread_full(fd, buf, n, off)) return -1;
    mopt_sha_update(h, buf, n);
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
  mopt_sha h;
  mopt_sha_init(&h, -1);
  j->rc = !buf ? MOPT_ENOMEM : hash_range(j->fd, 0, j->len, &h, buf) ? MOPT_EIO : 0;
  mopt_sha_final(&h, j->digest);
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

/* ---------------------------------------------------------------- chunk transforms ---- */
/* The scalar reference semantics are those of payload.h; these loops are the only ones. */
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
      memcpy(dst + 4 * i, &v, 4);   /* little-endian hosts only (checked at entry) */
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
/* Elements as es-byte little-endian integers (host is little-endian). */
static uint64_t ld(const uint8_t *p, unsigned es) { uint64_t v = 0; memcpy(&v, p, es); return v; }
static void st(uint8_t *p, uint64_t v, unsigned es) { memcpy(p, &v, es); }
static uint64_t mask_of(unsigned es) { return es == 8 ? UINT64_MAX : (1ull << (8 * es)) - 1; }

/* ROT: rotate every element left (left = 1) or right by one bit within its width. */
static void rot_elems(uint8_t *buf, size_t n, unsigned es, int left) {
  unsigned bits = 8 * es;
  uint64_t mk = mask_of(es);
  if (es == 4) {
    for (size_t i = 0; i + 4 <= n; i += 4) {
      uint32_t v;
      memcpy(&v, buf + i, 4);
      v = left ? (v << 1) | (v >> 31) : (v >> 1) | (v << 31);
      memcpy(buf + i, &v, 4);
    }
    return;
  }
  for (size_t i = 0; i + es <= n; i += es) {
    uint64_t v = ld(buf + i, es);
    v = left ? ((v << 1) | (v >> (bits - 1))) & mk : ((v >> 1) | (v << (bits - 1))) & mk;
    st(buf + i, v, es);
  }
}
/* SUB encode: dst = zigzag(t - b) per element, signed within the element width. */
static void sub_zz(uint8_t *dst, const uint8_t *t, const uint8_t *b, size_t n, unsigned es) {
  if (es == 4) {
    for (size_t i = 0; i + 4 <= n; i += 4) {
      uint32_t x, y;
      memcpy(&x, t + i, 4); memcpy(&y, b + i, 4);
      int32_t sd = (int32_t)(x - y);
      uint32_t z = ((uint32_t)sd << 1) ^ (uint32_t)(sd >> 31);
      memcpy(dst + i, &z, 4);
    }
    return;
  }
  unsigned sh = 64 - 8 * es;
  uint64_t mk = mask_of(es);
  for (size_t i = 0; i + es <= n; i += es) {
    uint64_t d = (ld(t + i, es) - ld(b + i, es)) & mk;
    int64_t sd = (int64_t)(d << sh) >> sh;
    st(dst + i, zigzag(sd) & mk, es);
  }
}
/* SUBE ("SUB grouped by exponent"), 4-byte rotated floats only: the SUB differences reordered
 * by a stable counting sort on the base element's top byte (its exponent after ROT). The
 * difference of a noised float scales with 1/ulp of its base, so grouping by exponent gives
 * each zstd block one scale to learn (about 5% smaller on small-noise fine-tunes). Both sides
 * know the base, so the order costs nothing to send. */
static void exp_slots(const uint8_t *b, size_t m, uint32_t slot[256]) {
  uint32_t cnt[256] = {0};
  for (size_t i = 0; i < m; i++) cnt[b[4 * i + 3]]++;
  uint32_t sum = 0;
  for (int k = 0; k < 256; k++) { slot[k] = sum; sum += cnt[k]; }
}
static void group_by_exp(uint8_t *dst, const uint8_t *src, const uint8_t *b, size_t m) {
  uint32_t slot[256];
  exp_slots(b, m, slot);
  for (size_t i = 0; i < m; i++) memcpy(dst + 4 * (size_t)slot[b[4 * i + 3]]++, src + 4 * i, 4);
}
static void ungroup_by_exp(uint8_t *dst, const uint8_t *src, const uint8_t *b, size_t m) {
  uint32_t slot[256];
  exp_slots(b, m, slot);
  for (size_t i = 0; i < m; i++) memcpy(dst + 4 * i, src + 4 * (size_t)slot[b[4 * i + 3]]++, 4);
}

/* SUB decode: dst = b + unzigzag(d) modulo 2^(8 es). dst may alias d. */
static void add_zz(uint8_t *dst, const uint8_t *b, const uint8_t *d, size_t n, unsigned es) {
  if (es == 4) {   /* the common float32 case, same arithmetic on 32-bit words */
    for (size_t i = 0; i + 4 <= n; i += 4) {
      uint32_t x, z;
      memcpy(&x, b + i, 4); memcpy(&z, d + i, 4);
      x += (z >> 1) ^ (0u - (z & 1));
      memcpy(dst + i, &x, 4);
    }
    return;
  }
  uint64_t mk = mask_of(es);
  for (size_t i = 0; i + es <= n; i += es)
    st(dst + i, (ld(b + i, es) + (uint64_t)unzigzag(ld(d + i, es))) & mk, es);
}

/* ---------------------------------------------------------------- writer ---- */
#define WR_RING 3
typedef struct wr {
  int fd;
  uint8_t *buf;                     /* the buffer being filled */
  size_t n;
  uint64_t written;                 /* bytes handed to the writer */
  mopt_sha h;
  int err;
  uint64_t sunk, wb_done;           /* bytes written to fd; of those, sent to early writeback */
  /* apply: two background threads take the filled buffers in order from a ring of WR_RING,
   * one hashing and one writing them, so decoding, hashing and the kernel copy overlap */
  int threaded, stop;
  pthread_t hash_th, store_th;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  uint8_t *ring[WR_RING];
  size_t ring_n[WR_RING];
  uint64_t filled, hashed, stored;  /* buffers handed over, hashed, written */
} wr;

/* Asks the kernel to start writing back each WB_STEP bytes as soon as they are written, so the
 * fsync before the rename finds little left to do: on a 400 MB model it otherwise waited
 * 0.3 s for the whole file at the end. */
#define WB_STEP (8u << 20)
static void wr_store(wr *w, const uint8_t *p, size_t n) {
  if (w->err) return;
  if (write_full(w->fd, p, n)) {
    w->err = errno ? errno : EIO;
    return;
  }
  w->sunk += n;
#ifdef SYNC_FILE_RANGE_WRITE
  if (w->sunk - w->wb_done >= WB_STEP) {
    (void)sync_file_range(w->fd, (off_t)w->wb_done, (off_t)(w->sunk - w->wb_done),
                          SYNC_FILE_RANGE_WRITE);        /* advisory: fsync still decides */
    w->wb_done = w->sunk;
  }
#endif
}

/* One background stage: handles the ring's buffers in order until stopped and drained. */
static void wr_stage(wr *w, uint64_t *done, int hashing) {
  pthread_mutex_lock(&w->mu);
  for (;;) {
    while (*done == w->filled && !w->stop) pthread_cond_wait(&w->cv, &w->mu);
    if (*done == w->filled) break;
    size_t slot = (size_t)(*done % WR_RING);
    pthread_mutex_unlock(&w->mu);
    if (hashing) mopt_sha_update(&w->h, w->ring[slot], w->ring_n[slot]);
    else wr_store(w, w->ring[slot], w->ring_n[slot]);
    pthread_mutex_lock(&w->mu);
    (*done)++;
    pthread_cond_broadcast(&w->cv);
  }
  pthread_mutex_unlock(&w->mu);
}
/* Tells the stages to finish what is queued and return. */
static void wr_stop_stages(wr *w) {
  pthread_mutex_lock(&w->mu);
  w->stop = 1;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}
static void *wr_hash_thread(void *arg) {
  wr *w = arg;
  wr_stage(w, &w->hashed, 1);
  return NULL;
}
static void *wr_store_thread(void *arg) {
  wr *w = arg;
  wr_stage(w, &w->stored, 0);
  return NULL;
}

/* Starts the two background stages. The writer then owns its buffer and WR_RING - 1 more that
 * it allocates; wr_finish frees them all. Without memory or threads it stays inline. */
static void wr_start_threads(wr *w) {
  w->ring[0] = w->buf;
  for (int i = 1; i < WR_RING; i++)
    if (!(w->ring[i] = malloc(IO_BUF))) {
      for (int j = 1; j < i; j++) free(w->ring[j]);
      return;
    }
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
  if (pthread_create(&w->hash_th, NULL, wr_hash_thread, w) != 0) goto inline_only;
  if (pthread_create(&w->store_th, NULL, wr_store_thread, w) != 0) {
    wr_stop_stages(w);
    pthread_join(w->hash_th, NULL);
    w->stop = 0;
    goto inline_only;
  }
  w->threaded = 1;
  return;
inline_only:
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
  for (int i = 1; i < WR_RING; i++) free(w->ring[i]);
}
static void wr_flush(wr *w) {
  if (!w->n) return;
  if (!w->threaded) {
    mopt_sha_update(&w->h, w->buf, w->n);
    wr_store(w, w->buf, w->n);
    w->n = 0;
    return;
  }
  pthread_mutex_lock(&w->mu);
  w->ring_n[w->filled % WR_RING] = w->n;
  w->filled++;
  pthread_cond_broadcast(&w->cv);
  /* the next slot is free once both stages are past it */
  while (w->filled - (w->hashed < w->stored ? w->hashed : w->stored) >= WR_RING)
    pthread_cond_wait(&w->cv, &w->mu);
  pthread_mutex_unlock(&w->mu);
  w->buf = w->ring[w->filled % WR_RING];
  w->n = 0;
}
/* Flushes, drains and stops the stages, and frees the ring (w->buf becomes NULL). Safe to call
 * when no thread runs: then it only flushes. */
static void wr_finish(wr *w) {
  wr_flush(w);
  if (!w->threaded) return;
  wr_stop_stages(w);
  pthread_join(w->hash_th, NULL);
  pthread_join(w->store_th, NULL);
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
  for (int i = 0; i < WR_RING; i++) free(w->ring[i]);
  w->buf = NULL;
  w->threaded = 0;
}
static void wr_put(wr *w, const void *data, size_t n) {
  const uint8_t *p = data;
  w->written += n;
  while (n) {
    size_t k = IO_BUF - w->n < n ? IO_BUF - w->n : n;
    memcpy(w->buf + w->n, p, k);
    w->n += k; p += k; n -= k;
    if (w->n == IO_BUF) wr_flush(w);
  }
}

/* ---------------------------------------------------------------- header ---- */
typedef struct hdr {
  uint32_t kind, npre;
  uint64_t tsize, bsize, rec_len, nrec, pre_len, sk_clen, sk_len;
  uint8_t tsha[32], bsha[32], psha[32];
} hdr;

static void hdr_write(const hdr *h, uint8_t *b) {
  memset(b, 0, HDR_SIZE);
  memcpy(b, MAGIC, 8);
  b[8] = MOPT_PAYLOAD_VERSION;
  b[9] = (uint8_t)h->kind;
  put32(b + 12, h->npre);
  put64(b + 16, h->tsize); put64(b + 24, h->bsize); put64(b + 32, h->rec_len);
  put64(b + 40, h->nrec); put64(b + 48, h->pre_len); put64(b + 56, h->sk_clen);
  put64(b + 64, h->sk_len);
  memcpy(b + 72, h->tsha, 32); memcpy(b + 104, h->bsha, 32);
}

static void fill_info(mopt_payload_info *info, const hdr *h) {
  info->version = MOPT_PAYLOAD_VERSION;
  info->kind = h->kind;
  info->payload_size = HDR_SIZE + h->rec_len + h->pre_len + h->sk_clen;
  info->target_size = h->tsize;
  hex32(h->tsha, info->target_sha256);
  info->base_size = h->bsize;
  if (h->kind == MOPT_PAYLOAD_DELTA) hex32(h->bsha, info->base_sha256);
  else info->base_sha256[0] = 0;
  info->n_records = h->nrec;
  info->skeleton_prefixed = h->npre != 0;
  info->skeleton_comp_len = h->sk_clen;
  info->skeleton_len = h->sk_len;
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
  uint8_t *tbuf, *bbuf, *xbuf, *gbuf, *planes, *cand, *best, *gapbuf;
  size_t candcap;
  uint64_t nrec, bexp;
  wr w;
  mopt_payload_info st;
  mopt_diag *diag;
} enc;

#define PLANE_HDR_MAX 80u   /* 8 varints of at most 10 bytes */

/* Encodes src (n bytes of es-byte elements) as the plane table + plane payloads into dst
 * (capacity e->candcap). A plane zstd cannot shrink is stored. Returns the byte count. */
static size_t enc_planes(enc *e, const uint8_t *src, size_t n, unsigned es, uint8_t *dst) {
  split_planes(src, n, es, e->planes);
  size_t m = n / es, off = PLANE_HDR_MAX;
  uint64_t szs[8];
  for (unsigned p = 0; p < es; p++) {
    const uint8_t *pl = e->planes + p * m;
    size_t r = ZSTD_compress2(e->cc, dst + off, e->candcap - off, pl, m);
    if (ZSTD_isError(r) || r >= m) {
      memcpy(dst + off, pl, m);
      szs[p] = ((uint64_t)m << 1) | 1;
      off += m;
    } else {
      szs[p] = (uint64_t)r << 1;
      off += r;
    }
  }
  uint8_t h[PLANE_HDR_MAX];
  size_t hl = 0;
  for (unsigned p = 0; p < es; p++) hl += put_varint(h + hl, szs[p]);
  memmove(dst + hl, dst + PLANE_HDR_MAX, off - PLANE_HDR_MAX);
  memcpy(dst, h, hl);
  return hl + off - PLANE_HDR_MAX;
}

static void enc_head(enc *e, unsigned op, uint64_t out_len, uint64_t base_off) {
  uint8_t h[32];
  size_t n = 0;
  h[n++] = (uint8_t)op;
  n += put_varint(h + n, out_len);
  if (base_off != NO_BASE) {
    n += put_varint(h + n, zigzag((int64_t)(base_off - e->bexp)));
    e->bexp = base_off + out_len;
  }
  wr_put(&e->w, h, n);
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
  enc_head(e, K_GAP, len, NO_BASE);
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

static int dtype_is_float(int32_t dt) {
  return dt == MOPT_DT_FLOAT || dt == MOPT_DT_FLOAT16 || dt == MOPT_DT_BFLOAT16 ||
         dt == MOPT_DT_DOUBLE || dt == MOPT_DT_COMPLEX64 || dt == MOPT_DT_COMPLEX128;
}

/* One tensor as chunk records; base_off == NO_BASE when it has no match in the base. */
static int enc_tensor(enc *e, const tent *t, uint64_t base_off) {
  unsigned es = dtype_elem_size(t->dtype);
  if (t->len % es) es = 1;
  unsigned lg = es == 1 ? 0 : es == 2 ? 1 : es == 4 ? 2 : 3;
  unsigned rot = dtype_is_float(t->dtype) && es >= 2 ? OP_ROT : 0;
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
        enc_head(e, K_SAME | lg << 3, n, bo);
        e->st.bytes_same += n;
        pos += n;
        continue;
      }
    }
    if (rot) {
      rot_elems(e->tbuf, n, es, 1);
      if (bo != NO_BASE) rot_elems(e->bbuf, n, es, 1);
    }
    size_t bl = enc_planes(e, e->tbuf, n, es, e->best);
    unsigned kind = K_RAW;
    if (bo != NO_BASE) {
      /* a base reference costs its offset varint: count it so a chunk is never bigger than
       * its RAW form (which keeps every delta ≤ the full payload of the same target) */
      uint8_t vb[10];
      size_t ref = put_varint(vb, zigzag((int64_t)(bo - e->bexp)));
      xor_into(e->xbuf, e->tbuf, e->bbuf, n);
      size_t cl = enc_planes(e, e->xbuf, n, es, e->cand) + ref;
      if (cl < bl) { swap_best(e); bl = cl; kind = K_XOR; }
      sub_zz(e->xbuf, e->tbuf, e->bbuf, n, es);
      cl = enc_planes(e, e->xbuf, n, es, e->cand) + ref;
      if (cl < bl) { swap_best(e); bl = cl; kind = K_SUB; }
      if (es == 4 && rot) {
        group_by_exp(e->gbuf, e->xbuf, e->bbuf, n / 4);
        cl = enc_planes(e, e->gbuf, n, es, e->cand) + ref;
        if (cl < bl) { swap_best(e); bl = cl; kind = K_SUBE; }
      }
      if (kind != K_RAW) bl -= ref;
    }
    enc_head(e, kind | lg << 3 | rot, n, kind == K_RAW ? NO_BASE : bo);
    wr_put(&e->w, e->best, bl);
    if (kind == K_RAW) e->st.bytes_raw += n;
    else if (kind == K_XOR) e->st.bytes_xor += n;
    else e->st.bytes_sub += n;             /* SUB and SUBE */
    if (kind == K_SUBE) e->st.bytes_sube += n;
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
                         "chunk size %u must be a multiple of 8 and at most 2 MiB", o->chunk_bytes);
  return 0;
}

static int is_little_endian(void) {
  uint16_t v = 1;
  uint8_t b;
  memcpy(&b, &v, 1);
  return b == 1;
}

/* The shared encoder behind pack (base_path NULL) and delta. */
static int encode(const char *base_path, const char *target_path, const char *out_path,
                  const mopt_payload_opts *opts, mopt_payload_info *info, mopt_diag *diag) {
  if (diag) diag->msg[0] = diag->where[0] = 0;
  if (!is_little_endian()) return mopt_diag_set(diag, MOPT_EUNSUPPORTED, "host", "big-endian hosts are not supported");
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
  hdr h;
  memset(&h, 0, sizeof h);

  e.tfd = open_in(target_path, &e.tsize, diag);
  if (e.tfd < 0) { rc = e.tfd; e.tfd = -1; goto out; }
  if (delta) {
    e.bfd = open_in(base_path, &e.bsize, diag);
    if (e.bfd < 0) { rc = e.bfd; e.bfd = -1; goto out; }
  }
  /* Auto level: 19 where the work is small (models up to 64 MiB, and deltas, which compress
   * only the chunks that changed: about 60 s on a 400 MB pair with 30% of tensors changed,
   * against bsdiff's two hours), 6 for full payloads of bigger models. */
  e.level = opts && opts->level ? opts->level : delta || e.tsize <= AUTO_LEVEL_LIMIT ? 19 : 6;
  e.chunk = opts && opts->chunk_bytes ? opts->chunk_bytes : CHUNK_DEFAULT;

  if ((rc = list_tensors(target_path, e.tsize, opaque, &tl))) goto out;
  if (delta && (rc = list_tensors(base_path, e.bsize, opaque, &bl))) goto out;

  e.gapbuf = malloc(IO_BUF);
  e.w.buf = malloc(IO_BUF);
  if (!e.gapbuf || !e.w.buf) { rc = MOPT_ENOMEM; goto out; }
  {
    mopt_sha hs;
    mopt_sha_init(&hs, -1);
    if (hash_range(e.tfd, 0, e.tsize, &hs, e.gapbuf)) { rc = mopt_diag_set(diag, MOPT_EIO, target_path, "read error"); goto out; }
    mopt_sha_final(&hs, h.tsha);
    if (delta) {
      mopt_sha_init(&hs, -1);
      if (hash_range(e.bfd, 0, e.bsize, &hs, e.gapbuf)) { rc = mopt_diag_set(diag, MOPT_EIO, base_path, "read error"); goto out; }
      mopt_sha_final(&hs, h.bsha);
    }
  }

  /* base skeleton ranges → prefix (≤ PREFIX_MAX bytes), and the base tensors by key */
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
  e.gbuf = malloc(e.chunk);
  e.planes = malloc(e.chunk); e.cand = malloc(e.candcap); e.best = malloc(e.candcap);
  e.cc = ZSTD_createCCtx();
  if (!e.tbuf || !e.bbuf || !e.xbuf || !e.gbuf || !e.planes || !e.cand || !e.best || !e.cc) { rc = MOPT_ENOMEM; goto out; }
  ZSTD_CCtx_setParameter(e.cc, ZSTD_c_compressionLevel, e.level);
  ZSTD_CCtx_setParameter(e.cc, ZSTD_c_format, ZSTD_f_zstd1_magicless);
  ZSTD_CCtx_setParameter(e.cc, ZSTD_c_checksumFlag, 0);
  ZSTD_CCtx_setParameter(e.cc, ZSTD_c_contentSizeFlag, 1);
  ZSTD_CCtx_setParameter(e.cc, ZSTD_c_dictIDFlag, 0);
  h.sk_len = e.tsize;
  for (size_t i = 0; i < tl.n; i++) h.sk_len -= tl.v[i].len;
  e.skel_level = h.sk_len <= AUTO_LEVEL_LIMIT ? 19 : 3;
  for (int k = 0; k < (delta ? 2 : 1); k++) {
    e.sk[k] = ZSTD_createCCtx();
    if (!e.sk[k]) { rc = MOPT_ENOMEM; goto out; }
    ZSTD_CCtx_setParameter(e.sk[k], ZSTD_c_compressionLevel, e.skel_level);
    ZSTD_CCtx_setParameter(e.sk[k], ZSTD_c_windowLog, SKEL_WLOG);
    ZSTD_CCtx_setParameter(e.sk[k], ZSTD_c_checksumFlag, 1);
    ZSTD_CCtx_setPledgedSrcSize(e.sk[k], h.sk_len);
  }
  if (delta && e.prefix_len) ZSTD_CCtx_refPrefix(e.sk[1], e.prefix, e.prefix_len);

  /* output */
  int ofd = temp_open(out_path, &tmp, diag);
  if (ofd < 0) { rc = ofd; goto out; }
  e.w.fd = ofd;
  mopt_sha_init(&e.w.h, -1);
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
  h.rec_len = e.w.written;
  h.nrec = e.nrec;
  for (int k = 0; k < (delta ? 2 : 1); k++)
    if ((rc = sk_feed(&e, k, NULL, 0, ZSTD_e_end))) goto out;
  /* the prefix table, varint-coded; used only when it pays for itself */
  uint8_t *ptab = malloc(npr * 20 + 1);
  if (!ptab) { rc = MOPT_ENOMEM; goto out; }
  size_t ptl = 0;
  uint64_t pend = 0;
  for (size_t i = 0; i < npr; i++) {
    ptl += put_varint(ptab + ptl, pranges[i][0] - pend);
    ptl += put_varint(ptab + ptl, pranges[i][1]);
    pend = pranges[i][0] + pranges[i][1];
  }
  int use_prefix = delta && npr && e.sklen[1] + ptl < e.sklen[0];
  if (use_prefix) {
    wr_put(&e.w, ptab, ptl);
    h.npre = (uint32_t)npr;
    h.pre_len = ptl;
  }
  free(ptab);
  int sk = use_prefix ? 1 : 0;
  wr_put(&e.w, e.skout[sk], e.sklen[sk]);
  h.sk_clen = e.sklen[sk];
  wr_flush(&e.w);
  if (e.w.err) { rc = mopt_diag_set(diag, MOPT_EIO, out_path, "write error: %s", strerror(e.w.err)); goto out; }

  h.kind = delta ? MOPT_PAYLOAD_DELTA : MOPT_PAYLOAD_FULL;
  h.tsize = e.tsize;
  h.bsize = delta ? e.bsize : 0;
  uint8_t raw[HDR_SIZE];
  hdr_write(&h, raw);
  mopt_sha_update(&e.w.h, raw, HDR_HASHED);
  mopt_sha_final(&e.w.h, raw + HDR_HASHED);
  if (pwrite(ofd, raw, HDR_SIZE, 0) != (ssize_t)HDR_SIZE) {
    rc = mopt_diag_set(diag, MOPT_EIO, out_path, "write error: %s", strerror(errno));
    goto out;
  }
  e.w.fd = -1;
  rc = temp_commit(ofd, tmp, out_path, diag);
  if (!rc && info) {
    *info = e.st;
    fill_info(info, &h);
  }
out:
  if (e.w.fd >= 0) temp_abort(e.w.fd, tmp);
  free(tmp);
  if (e.tfd >= 0) close(e.tfd);
  if (e.bfd >= 0) close(e.bfd);
  tlist_free(&tl);
  tlist_free(&bl);
  free(bkey); free(pranges); free(e.prefix);
  free(e.tbuf); free(e.bbuf); free(e.xbuf); free(e.gbuf); free(e.planes); free(e.cand); free(e.best);
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
#define BAD(where, ...) mopt_diag_set(diag, MOPT_EPAYLOAD, where, __VA_ARGS__)

static int hdr_parse(const uint8_t *b, uint64_t fsize, hdr *h, mopt_diag *diag) {
  if (memcmp(b, MAGIC, 8)) return BAD("byte 0", "not a moptd OTA payload (bad magic)");
  if (b[8] != MOPT_PAYLOAD_VERSION)
    return BAD("byte 8", "payload format version %u is not supported (this build reads %u)", b[8],
               MOPT_PAYLOAD_VERSION);
  h->kind = b[9];
  if (h->kind != MOPT_PAYLOAD_FULL && h->kind != MOPT_PAYLOAD_DELTA)
    return BAD("byte 9", "unknown payload kind %u", h->kind);
  if (b[10] || b[11]) return BAD("byte 10", "unknown header flags");
  h->npre = get32(b + 12);
  h->tsize = get64(b + 16); h->bsize = get64(b + 24); h->rec_len = get64(b + 32);
  h->nrec = get64(b + 40); h->pre_len = get64(b + 48); h->sk_clen = get64(b + 56);
  h->sk_len = get64(b + 64);
  memcpy(h->tsha, b + 72, 32); memcpy(h->bsha, b + 104, 32); memcpy(h->psha, b + HDR_HASHED, 32);
  uint64_t body = fsize - HDR_SIZE;
  if (h->rec_len > body || h->pre_len > body || h->sk_clen > body ||
      h->rec_len + h->pre_len + h->sk_clen != body)
    return BAD("byte 32", "payload is %llu bytes but its header describes %llu bytes (truncated or "
               "extended)", (unsigned long long)fsize,
               (unsigned long long)(HDR_SIZE + h->rec_len + h->pre_len + h->sk_clen));
  if (h->nrec > h->rec_len / 2) return BAD("byte 40", "record count exceeds the records section");
  if (h->npre > h->pre_len / 2) return BAD("byte 12", "prefix count exceeds the prefix table");
  if (h->sk_len > h->tsize) return BAD("byte 64", "skeleton is longer than the target");
  if (h->kind == MOPT_PAYLOAD_FULL) {
    static const uint8_t zero[32];
    if (h->bsize || h->npre || h->pre_len || memcmp(h->bsha, zero, 32))
      return BAD("byte 24", "a full payload names a base");
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

/* A buffered reader over one section of the payload file. */
#define RD_BUF (64u << 10)
typedef struct rdr {
  int fd;
  uint64_t pos, end;          /* logical position and section end */
  uint64_t boff;              /* buf holds [boff, boff + blen) */
  size_t blen;
  uint8_t *buf;
  int ioerr;
} rdr;

static int rd_get(rdr *r, uint8_t *dst, size_t n) {
  if (n > r->end - r->pos) return -1;
  while (n) {
    if (r->pos >= r->boff && r->pos < r->boff + r->blen) {
      size_t k = (size_t)(r->boff + r->blen - r->pos);
      if (k > n) k = n;
      memcpy(dst, r->buf + (r->pos - r->boff), k);
      r->pos += k; dst += k; n -= k;
      continue;
    }
    if (n >= RD_BUF) {
      if (pread_full(r->fd, dst, n, r->pos)) { r->ioerr = 1; return -1; }
      r->pos += n;
      return 0;
    }
    size_t k = r->end - r->pos < RD_BUF ? (size_t)(r->end - r->pos) : RD_BUF;
    if (pread_full(r->fd, r->buf, k, r->pos)) { r->ioerr = 1; return -1; }
    r->boff = r->pos; r->blen = k;
  }
  return 0;
}
static int rd_skip(rdr *r, uint64_t n) {
  if (n > r->end - r->pos) return -1;
  r->pos += n;
  return 0;
}
static int rd_varint(rdr *r, uint64_t *v) {
  *v = 0;
  for (int i = 0; i < 10; i++) {
    uint8_t b;
    if (rd_get(r, &b, 1)) return -1;
    if (i == 9 && b > 1) return -1;
    *v |= (uint64_t)(b & 0x7f) << (7 * i);
    if (!(b & 0x80)) return 0;
  }
  return -1;
}

typedef struct rec {
  unsigned kind, es, rot;
  uint64_t out_len, base_off;
  uint64_t psz[8];
  int stored[8];
} rec;

/* Parses and checks one record header (not the plane payloads). */
static int rec_read(rdr *r, const hdr *h, uint64_t bsize, uint64_t out_left, uint64_t *bexp,
                    rec *c, const char *where, mopt_diag *diag) {
  uint8_t op;
  if (rd_get(r, &op, 1)) return BAD(where, "record runs past the records section");
  if (op & 0xC0) return BAD(where, "record op 0x%02x has reserved bits set", op);
  c->kind = op & 7;
  c->es = 1u << ((op >> 3) & 3);
  c->rot = (op & OP_ROT) != 0;
  if (c->kind > K_SUBE) return BAD(where, "unknown record kind %u", c->kind);
  if (rd_varint(r, &c->out_len)) return BAD(where, "bad record length");
  if (c->out_len == 0 || c->out_len > out_left)
    return BAD(where, "record length %llu overruns the target", (unsigned long long)c->out_len);
  c->base_off = NO_BASE;
  if (c->kind == K_GAP) {
    if (op & 0x38) return BAD(where, "GAP record with element bits");
    return 0;
  }
  if (c->rot && c->es == 1) return BAD(where, "ROT on one-byte elements");
  if (c->kind == K_SUBE && (c->es != 4 || !c->rot))
    return BAD(where, "SUBE record without ROT on 4-byte elements");
  if (c->out_len > CHUNK_MAX || c->out_len % c->es)
    return BAD(where, "chunk length %llu is invalid", (unsigned long long)c->out_len);
  if (c->kind != K_RAW) {
    uint64_t z;
    if (h->kind != MOPT_PAYLOAD_DELTA) return BAD(where, "chunk refers to a base in a full payload");
    if (rd_varint(r, &z)) return BAD(where, "bad base offset");
    c->base_off = *bexp + (uint64_t)unzigzag(z);
    if (c->base_off > bsize || c->out_len > bsize - c->base_off)
      return BAD(where, "base range lies beyond the base (%llu bytes)", (unsigned long long)bsize);
    *bexp = c->base_off + c->out_len;
  }
  if (c->kind == K_SAME) return 0;
  uint64_t m = c->out_len / c->es;
  for (unsigned p = 0; p < c->es; p++) {
    uint64_t v;
    if (rd_varint(r, &v)) return BAD(where, "bad plane table");
    c->stored[p] = (int)(v & 1);
    c->psz[p] = v >> 1;
    if (c->stored[p] ? c->psz[p] != m : (c->psz[p] < 2 || c->psz[p] > ZSTD_compressBound((size_t)m) + 64))
      return BAD(where, "plane %u size %llu is invalid for %llu bytes", p,
                 (unsigned long long)c->psz[p], (unsigned long long)m);
  }
  return 0;
}

/* Pass 1: every record's structure and every frame header, without decoding anything. */
static int check_records(int pfd, const hdr *h, uint64_t bsize, uint8_t *buf, mopt_diag *diag) {
  rdr r = {pfd, HDR_SIZE, HDR_SIZE + h->rec_len, 0, 0, buf, 0};
  uint64_t out = 0, gaps = 0, bexp = 0;
  char where[64];
  for (uint64_t i = 0; i < h->nrec; i++) {
    rec c;
    snprintf(where, sizeof where, "record %llu (byte %llu)", (unsigned long long)i, (unsigned long long)r.pos);
    int rc = rec_read(&r, h, bsize, h->tsize - out, &bexp, &c, where, diag);
    if (rc) return r.ioerr ? mopt_diag_set(diag, MOPT_EIO, "payload", "read error") : rc;
    if (c.kind == K_GAP) {
      if (c.out_len > h->sk_len - gaps) return BAD(where, "GAP records exceed the skeleton length");
      gaps += c.out_len;
    } else if (c.kind != K_SAME) {
      uint64_t m = c.out_len / c.es;
      for (unsigned p = 0; p < c.es; p++) {
        if (c.stored[p]) {
          if (rd_skip(&r, m)) return BAD(where, "plane %u runs past the records section", p);
          continue;
        }
        uint8_t fh[ZSTD_FRAMEHEADERSIZE_MAX];
        size_t fl = c.psz[p] < sizeof fh ? (size_t)c.psz[p] : sizeof fh;
        if (rd_get(&r, fh, fl) || rd_skip(&r, c.psz[p] - fl))
          return BAD(where, "plane %u runs past the records section", p);
        ZSTD_frameHeader zh;
        if (ZSTD_getFrameHeader_advanced(&zh, fh, fl, ZSTD_f_zstd1_magicless) != 0 ||
            zh.frameType != ZSTD_frame || zh.frameContentSize != m)
          return BAD(where, "plane %u is not a zstd frame of %llu bytes", p, (unsigned long long)m);
      }
    }
    out += c.out_len;
  }
  if (r.pos != r.end)
    return BAD("records", "records section has %llu trailing bytes", (unsigned long long)(r.end - r.pos));
  if (out != h->tsize)
    return BAD("records", "records produce %llu bytes, target is %llu", (unsigned long long)out, (unsigned long long)h->tsize);
  if (gaps != h->sk_len)
    return BAD("records", "GAP records take %llu skeleton bytes of %llu", (unsigned long long)gaps, (unsigned long long)h->sk_len);
  return 0;
}

typedef struct dec {
  int pfd, bfd;
  const hdr *h;
  uint64_t bsize;
  ZSTD_DCtx *dc;
  ZSTD_DStream *ds;
  uint8_t *inbuf;
  size_t in_n, in_pos;
  uint64_t sk_pos, sk_end;  /* skeleton frame bytes still to read */
  size_t last;              /* last ZSTD_decompressStream return */
  uint8_t *cbuf, *planes, *obuf, *bbuf, *rbuf;
  wr w;
  mopt_diag *diag;
} dec;

#define SK_IN (128u << 10)

static int skel_refill(dec *d) {
  mopt_diag *diag = d->diag;
  uint64_t left = d->sk_end - d->sk_pos;
  if (!left) return BAD("skeleton", "skeleton frame ends early");
  size_t k = left < SK_IN ? (size_t)left : SK_IN;
  if (pread_full(d->pfd, d->inbuf, k, d->sk_pos)) return mopt_diag_set(diag, MOPT_EIO, "payload", "read error");
  d->sk_pos += k; d->in_n = k; d->in_pos = 0;
  return 0;
}

/* Produces n skeleton bytes into the output. */
static int skel_out(dec *d, uint64_t n) {
  mopt_diag *diag = d->diag;
  while (n) {
    size_t want = n < IO_BUF ? (size_t)n : IO_BUF;
    ZSTD_outBuffer out = {d->obuf, want, 0};
    while (out.pos < out.size) {
      if (d->in_pos == d->in_n) {
        int rc = skel_refill(d);
        if (rc) return rc;
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
      int rc = skel_refill(d);
      if (rc) return rc;
    }
    ZSTD_outBuffer out = {&one, 1, 0};
    ZSTD_inBuffer in = {d->inbuf, d->in_n, d->in_pos};
    size_t r = ZSTD_decompressStream(d->ds, &out, &in);
    d->in_pos = in.pos;
    if (ZSTD_isError(r)) return BAD("skeleton", "zstd: %s", ZSTD_getErrorName(r));
    if (out.pos) return BAD("skeleton", "skeleton frame is longer than the GAP records");
    d->last = r;
  }
  if (d->in_pos != d->in_n || d->sk_pos != d->sk_end)
    return BAD("skeleton", "bytes follow the skeleton frame");
  return 0;
}

/* Pass 2: decode every record into the writer. */
static int decode_records(dec *d) {
  mopt_diag *diag = d->diag;
  const hdr *h = d->h;
  rdr r = {d->pfd, HDR_SIZE, HDR_SIZE + h->rec_len, 0, 0, d->rbuf, 0};
  uint64_t out = 0, bexp = 0;
  char where[64];
  d->last = 1;
  for (uint64_t i = 0; i < h->nrec; i++) {
    rec c;
    snprintf(where, sizeof where, "record %llu", (unsigned long long)i);
    int rc = rec_read(&r, h, d->bsize, h->tsize - out, &bexp, &c, where, diag);
    if (rc) return r.ioerr ? mopt_diag_set(diag, MOPT_EIO, "payload", "read error") : rc;
    out += c.out_len;
    if (c.kind == K_GAP) {
      if ((rc = skel_out(d, c.out_len))) return rc;
      continue;
    }
    size_t n = (size_t)c.out_len, m = n / c.es;
    if (c.kind != K_RAW && pread_full(d->bfd, d->bbuf, n, c.base_off))
      return mopt_diag_set(diag, MOPT_EIO, "base", "read error at byte %llu", (unsigned long long)c.base_off);
    if (c.kind == K_SAME) {
      wr_put(&d->w, d->bbuf, n);
      continue;
    }
    for (unsigned p = 0; p < c.es; p++) {
      uint8_t *pl = d->planes + p * m;
      if (c.stored[p]) {
        if (rd_get(&r, pl, m)) return BAD(where, "plane %u runs past the records", p);
        continue;
      }
      size_t cs = (size_t)c.psz[p];
      if (rd_get(&r, d->cbuf, cs)) return BAD(where, "plane %u runs past the records", p);
      size_t got = ZSTD_decompressDCtx(d->dc, pl, m, d->cbuf, cs);
      if (ZSTD_isError(got) || got != m)
        return BAD(where, "plane %u does not decode to %zu bytes%s%s", p, m,
                   ZSTD_isError(got) ? ": " : "", ZSTD_isError(got) ? ZSTD_getErrorName(got) : "");
    }
    join_planes(d->planes, n, c.es, d->obuf);
    if (c.kind != K_RAW) {
      if (c.rot) rot_elems(d->bbuf, n, c.es, 1);
      if (c.kind == K_XOR) {
        xor_into(d->obuf, d->obuf, d->bbuf, n);
      } else if (c.kind == K_SUBE) {          /* the planes are free again: reorder into them */
        ungroup_by_exp(d->planes, d->obuf, d->bbuf, m);
        add_zz(d->obuf, d->bbuf, d->planes, n, c.es);
      } else {
        add_zz(d->obuf, d->bbuf, d->obuf, n, c.es);
      }
    }
    if (c.rot) rot_elems(d->obuf, n, c.es, 0);
    wr_put(&d->w, d->obuf, n);
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
    fill_info(info, &h);
  }
  return rc;
}

int mopt_payload_apply_file(const char *base_path, const char *payload_path, const char *out_path,
                            mopt_payload_info *info, mopt_diag *diag) {
  if (diag) diag->msg[0] = diag->where[0] = 0;
  if (!is_little_endian()) return mopt_diag_set(diag, MOPT_EUNSUPPORTED, "host", "big-endian hosts are not supported");
  dec d;
  memset(&d, 0, sizeof d);
  d.diag = diag;
  d.pfd = d.bfd = d.w.fd = -1;
  hash_job bj;
  memset(&bj, 0, sizeof bj);
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
    /* the base is hashed in a second thread while this one checks the payload */
    bj.fd = d.bfd; bj.len = bsize;
    if (pthread_create(&bj.th, NULL, hash_job_run, &bj) == 0) bj.started = 1;
    else hash_job_run(&bj);
  }
  d.bsize = bsize;
  tmpbuf = malloc(IO_BUF);
  if (!tmpbuf) { rc = MOPT_ENOMEM; goto out; }
  {
    mopt_sha hs;
    uint8_t dg[32];
    mopt_sha_init(&hs, -1);
    if (hash_range(d.pfd, HDR_SIZE, psize - HDR_SIZE, &hs, tmpbuf)) { rc = mopt_diag_set(diag, MOPT_EIO, payload_path, "read error"); goto out; }
    mopt_sha_update(&hs, raw, HDR_HASHED);
    mopt_sha_final(&hs, dg);
    if (memcmp(dg, h.psha, 32)) {
      rc = BAD(payload_path, "payload is corrupted: its SHA-256 does not match the one in its header");
      goto out;
    }
  }
  d.rbuf = malloc(RD_BUF);
  if (!d.rbuf) { rc = MOPT_ENOMEM; goto out; }
  if ((rc = check_records(d.pfd, &h, bsize, d.rbuf, diag))) goto out;
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

  /* prefix: the base skeleton ranges listed in the prefix table */
  size_t plen = 0;
  if (h.npre) {
    prefix = malloc(PREFIX_MAX);
    if (!prefix) { rc = MOPT_ENOMEM; goto out; }
    rdr pr = {d.pfd, HDR_SIZE + h.rec_len, HDR_SIZE + h.rec_len + h.pre_len, 0, 0, d.rbuf, 0};
    uint64_t pend = 0;
    for (uint64_t i = 0; i < h.npre; i++) {
      uint64_t gap, l;
      if (rd_varint(&pr, &gap) || rd_varint(&pr, &l) || gap > bsize - pend || l == 0 ||
          l > bsize - pend - gap || l > PREFIX_MAX - plen) {
        rc = BAD("prefix table", "entry %llu is malformed, outside the base or over 8 MiB", (unsigned long long)i);
        goto out;
      }
      if (pread_full(d.bfd, prefix + plen, (size_t)l, pend + gap)) { rc = mopt_diag_set(diag, MOPT_EIO, base_path, "read error"); goto out; }
      plen += (size_t)l;
      pend += gap + l;
    }
    if (pr.pos != pr.end) { rc = BAD("prefix table", "trailing bytes in the prefix table"); goto out; }
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
  ZSTD_DCtx_setParameter(d.dc, ZSTD_d_format, ZSTD_f_zstd1_magicless);
  if (plen) ZSTD_DCtx_refPrefix(d.ds, prefix, plen);
  d.sk_pos = HDR_SIZE + h.rec_len + h.pre_len;
  d.sk_end = d.sk_pos + h.sk_clen;

  int ofd = temp_open(out_path, &tmp, diag);
  if (ofd < 0) { rc = ofd; goto out; }
  d.w.fd = ofd;
  mopt_sha_init(&d.w.h, -1);
  wr_start_threads(&d.w);
  if ((rc = decode_records(&d))) goto out;
  wr_finish(&d.w);
  if (d.w.err) { rc = mopt_diag_set(diag, MOPT_EIO, out_path, "write error: %s", strerror(d.w.err)); goto out; }
  uint8_t odg[32];
  mopt_sha_final(&d.w.h, odg);
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
    fill_info(info, &h);
  }
out:
  if (bj.started) pthread_join(bj.th, NULL);
  d.w.n = 0;   /* after an error nothing more is queued; the temp file is removed anyway */
  wr_finish(&d.w);
  if (d.w.fd >= 0) temp_abort(d.w.fd, tmp);
  free(tmp);
  if (d.pfd >= 0) close(d.pfd);
  if (d.bfd >= 0) close(d.bfd);
  free(prefix); free(tmpbuf);
  free(d.inbuf); free(d.cbuf); free(d.planes); free(d.obuf); free(d.bbuf); free(d.w.buf); free(d.rbuf);
  ZSTD_freeDCtx(d.dc);
  ZSTD_freeDStream(d.ds);
  return rc;
}

int mopt_payload_unpack_file(const char *payload_path, const char *out_path,
                             mopt_payload_info *info, mopt_diag *diag) {
  return mopt_payload_apply_file(NULL, payload_path, out_path, info, diag);
}
