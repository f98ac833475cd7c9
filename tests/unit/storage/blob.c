/* blob.c — unit tests for the blob store (storage/blob.c): streaming uploads with SHA-256
 * computed on the fly (checked against published test vectors and a one-shot hash of the same
 * bytes), dedup, publish atomicity, abort, adopt of worker outputs, paths, O_CLOEXEC.
 * Each test gets a fresh data dir under /tmp.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "store.h"
#include "fixture.h"

static int setup(void **state) { return fixture_setup(state, "blobtest"); }
static int teardown(void **state) { return fixture_teardown(state); }

/* Number of regular files under dir (recursively). */
static int count_files(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    struct stat sb;
    if (lstat(p, &sb) != 0) continue;
    if (S_ISDIR(sb.st_mode)) n += count_files(p);
    else n++;
  }
  closedir(d);
  return n;
}

static unsigned char *read_all(const char *path, size_t *len) {
  FILE *fp = fopen(path, "rb");
  if (!fp) return NULL;
  fseek(fp, 0, SEEK_END);
  long n = ftell(fp);
  fseek(fp, 0, SEEK_SET);
  unsigned char *b = malloc((size_t)n + 1);
  *len = fread(b, 1, (size_t)n, fp);
  fclose(fp);
  return b;
}

/* Uploads data in chunks of the given sizes (cycled), publishes, returns the hex. */
static void upload_chunks(store *s, const unsigned char *data, size_t len, const size_t *chunks,
                          size_t nchunks, char hex[65], uint64_t *size, int *existed) {
  store_upload *u = NULL;
  assert_int_equal(store_upload_begin(s, &u), 0);
  size_t off = 0, k = 0;
  while (off < len) {
    size_t c = chunks[k++ % nchunks];
    if (c > len - off) c = len - off;
    assert_int_equal(store_upload_write(u, data + off, c), 0);
    off += c;
  }
  assert_int_equal(store_upload_finish(u, hex, size), 0);
  assert_int_equal(store_upload_publish(u, existed), 0);
}

static void test_sha256_vectors(void **state) {
  fixture *f = *state;
  static const struct { const char *msg; const char *hex; } vec[] = {
      {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
      {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
      {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
  };
  for (size_t i = 0; i < sizeof vec / sizeof vec[0]; i++) {
    char hex[65];
    uint64_t size = 99;
    int existed = -1;
    size_t one = 1;
    upload_chunks(f->s, (const unsigned char *)vec[i].msg, strlen(vec[i].msg), &one, 1, hex,
                  &size, &existed);
    assert_string_equal(hex, vec[i].hex);
    assert_int_equal(size, strlen(vec[i].msg));
    assert_int_equal(existed, 0);
    char p[PATH_MAX];
    assert_int_equal(store_blob_path(f->s, hex, p, sizeof p), 0);
    size_t n = 0;
    unsigned char *b = read_all(p, &n);
    assert_non_null(b);
    assert_int_equal(n, strlen(vec[i].msg));
    if (n) assert_memory_equal(b, vec[i].msg, n);
    free(b);
  }
  /* One million 'a' (FIPS 180-2 vector) in odd chunk sizes that straddle the 1 MiB buffer. */
  size_t len = 1000000;
  unsigned char *a = malloc(len);
  memset(a, 'a', len);
  size_t chunks[] = {7, 65536, 1, 333333};
  char hex[65];
  uint64_t size = 0;
  int existed = -1;
  upload_chunks(f->s, a, len, chunks, 4, hex, &size, &existed);
  assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  assert_int_equal(size, len);
  free(a);
}

static void test_large_stream(void **state) {
  fixture *f = *state;
  /* 5 MiB + 17 of patterned bytes; chunks include one bigger than the staging buffer (written
   * directly) and small ones (staged), so both paths and the flush at finish are exercised. */
  size_t len = (5u << 20) + 17;
  unsigned char *data = malloc(len);
  uint32_t x = 12345;
  for (size_t i = 0; i < len; i++) {
    x = x * 1103515245u + 12345u;
    data[i] = (unsigned char)(x >> 16);
  }
  unsigned char h[32];
  crypto_hash_sha256(h, data, len);
  char want[65];
  sodium_bin2hex(want, sizeof want, h, sizeof h);

  size_t chunks[] = {4096, (1u << 20) + 5, 100, 3 * 65536 + 1};
  char hex[65];
  uint64_t size = 0;
  int existed = -1;
  upload_chunks(f->s, data, len, chunks, 4, hex, &size, &existed);
  assert_string_equal(hex, want);
  assert_int_equal(size, len);
  char p[PATH_MAX];
  assert_int_equal(store_blob_path(f->s, hex, p, sizeof p), 0);
  /* blobs/ab/<hex> layout */
  char expect[PATH_MAX];
  snprintf(expect, sizeof expect, "%s/blobs/%.2s/%s", f->dir, hex, hex);
  assert_string_equal(p, expect);
  size_t n = 0;
  unsigned char *b = read_all(p, &n);
  assert_int_equal(n, len);
  assert_memory_equal(b, data, len);
  free(b);
  free(data);
}

static void test_dedup(void **state) {
  fixture *f = *state;
  const char *msg = "the same bytes twice";
  size_t one = 5;
  char hex1[65], hex2[65];
  uint64_t sz;
  int existed = -1;
  upload_chunks(f->s, (const unsigned char *)msg, strlen(msg), &one, 1, hex1, &sz, &existed);
  assert_int_equal(existed, 0);
  upload_chunks(f->s, (const unsigned char *)msg, strlen(msg), &one, 1, hex2, &sz, &existed);
  assert_int_equal(existed, 1);
  assert_string_equal(hex1, hex2);
  char blobs[PATH_MAX], tmp[PATH_MAX];
  snprintf(blobs, sizeof blobs, "%s/blobs", f->dir);
  snprintf(tmp, sizeof tmp, "%s/tmp", f->dir);
  assert_int_equal(count_files(blobs), 1);
  assert_int_equal(count_files(tmp), 0);   /* the duplicate temp file was dropped */
}

static void test_publish_atomicity_and_abort(void **state) {
  fixture *f = *state;
  char blobs[PATH_MAX], tmp[PATH_MAX];
  snprintf(blobs, sizeof blobs, "%s/blobs", f->dir);
  snprintf(tmp, sizeof tmp, "%s/tmp", f->dir);

  store_upload *u = NULL;
  assert_int_equal(store_upload_begin(f->s, &u), 0);
  const char *msg = "not yet published";
  assert_int_equal(store_upload_write(u, msg, strlen(msg)), 0);
  /* Mid-upload: nothing under blobs/, the bytes live in tmp/. */
  assert_int_equal(count_files(blobs), 0);
  assert_int_equal(count_files(tmp), 1);
  char hex[65];
  uint64_t size = 0;
  assert_int_equal(store_upload_finish(u, hex, &size), 0);
  assert_int_equal(size, strlen(msg));
  /* Finished (fsync'd) but not published: still invisible. */
  assert_int_equal(count_files(blobs), 0);
  char p[PATH_MAX];
  assert_int_equal(store_blob_path(f->s, hex, p, sizeof p), MOPT_ENOTFOUND);
  const char *tp = store_upload_path(u);
  assert_non_null(tp);
  assert_int_equal(strncmp(tp, tmp, strlen(tmp)), 0);
  size_t n = 0;
  unsigned char *b = read_all(tp, &n);
  assert_int_equal(n, strlen(msg));
  free(b);
  char tp_copy[PATH_MAX];
  snprintf(tp_copy, sizeof tp_copy, "%s", tp);
  store_upload_abort(u);
  assert_int_equal(access(tp_copy, F_OK), -1);
  assert_int_equal(count_files(tmp), 0);
  assert_int_equal(count_files(blobs), 0);

  /* Abort without finishing also removes the temp file. */
  assert_int_equal(store_upload_begin(f->s, &u), 0);
  assert_int_equal(store_upload_write(u, msg, 3), 0);
  assert_int_equal(count_files(tmp), 1);
  store_upload_abort(u);
  assert_int_equal(count_files(tmp), 0);
  store_upload_abort(NULL);   /* no-op */

  /* Publish: visible afterwards, temp gone. */
  int existed = -1;
  assert_int_equal(store_upload_begin(f->s, &u), 0);
  assert_int_equal(store_upload_write(u, msg, strlen(msg)), 0);
  assert_int_equal(store_upload_publish(u, &existed), 0);   /* publish finishes implicitly */
  assert_int_equal(existed, 0);
  assert_int_equal(store_blob_path(f->s, hex, p, sizeof p), 0);
  assert_int_equal(count_files(tmp), 0);
  assert_int_equal(count_files(blobs), 1);
}

static void test_adopt_and_remove(void **state) {
  fixture *f = *state;
  char tp[PATH_MAX];
  assert_int_equal(store_tmp_path(f->s, ".onnx", tp, sizeof tp), 0);
  char other[PATH_MAX];
  assert_int_equal(store_tmp_path(f->s, ".onnx", other, sizeof other), 0);
  assert_string_not_equal(tp, other);
  char tmpdir[PATH_MAX];
  snprintf(tmpdir, sizeof tmpdir, "%s/tmp/", f->dir);
  assert_int_equal(strncmp(tp, tmpdir, strlen(tmpdir)), 0);
  assert_int_equal(store_tmp_path(f->s, "/../x", tp + 0, sizeof tp), MOPT_EINVAL);
  assert_int_equal(store_tmp_path(f->s, ".onnx", tp, sizeof tp), 0);

  FILE *fp = fopen(tp, "wb");
  assert_non_null(fp);
  fputs("abc", fp);
  fclose(fp);
  char hex[65];
  uint64_t size = 0;
  int existed = -1;
  assert_int_equal(store_blob_adopt(f->s, tp, hex, &size, &existed), 0);
  assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  assert_int_equal(size, 3);
  assert_int_equal(existed, 0);
  assert_int_equal(access(tp, F_OK), -1);
  char p[PATH_MAX];
  assert_int_equal(store_blob_path(f->s, hex, p, sizeof p), 0);

  /* The same bytes again: existed, temp dropped. */
  fp = fopen(tp, "wb");
  fputs("abc", fp);
  fclose(fp);
  assert_int_equal(store_blob_adopt(f->s, tp, hex, &size, &existed), 0);
  assert_int_equal(existed, 1);
  assert_int_equal(access(tp, F_OK), -1);

  /* Only files directly in tmp/ can be adopted. */
  char outside[PATH_MAX];
  snprintf(outside, sizeof outside, "%s/moptd.db", f->dir);
  assert_int_equal(store_blob_adopt(f->s, outside, hex, &size, &existed), MOPT_EINVAL);
  snprintf(outside, sizeof outside, "%s/tmp/../moptd.db", f->dir);
  assert_int_equal(store_blob_adopt(f->s, outside, hex, &size, &existed), MOPT_EINVAL);
  assert_int_equal(access(outside, F_OK), 0);   /* untouched */
  assert_int_equal(store_blob_adopt(f->s, other, hex, &size, &existed), MOPT_ENOTFOUND);

  /* Paths: malformed digests are refused, removal makes the blob disappear. */
  assert_int_equal(store_blob_path(f->s, "../../etc/passwd", p, sizeof p), MOPT_EINVAL);
  assert_int_equal(store_blob_path(f->s, "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
                                   p, sizeof p), MOPT_EINVAL);
  assert_int_equal(store_blob_remove(f->s, hex), 0);
  assert_int_equal(store_blob_path(f->s, hex, p, sizeof p), MOPT_ENOTFOUND);
  assert_int_equal(store_blob_remove(f->s, hex), MOPT_ENOTFOUND);
}

/* Every descriptor the store holds on files in the data dir is close-on-exec, so worker
 * processes spawned by the daemon inherit none of them. */
static void test_cloexec(void **state) {
  fixture *f = *state;
  store_conn *c = store_conn_get(f->s);
  uint64_t bytes = 0;
  assert_int_equal(store_bytes_total(c, &bytes), 0);   /* opens the db files */
  store_upload *u = NULL;
  assert_int_equal(store_upload_begin(f->s, &u), 0);
  int seen = 0;
  DIR *d = opendir("/proc/self/fd");
  assert_non_null(d);
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char lp[300], target[PATH_MAX];
    snprintf(lp, sizeof lp, "/proc/self/fd/%s", e->d_name);
    ssize_t n = readlink(lp, target, sizeof target - 1);
    if (n <= 0) continue;
    target[n] = 0;
    if (strncmp(target, f->dir, strlen(f->dir)) != 0) continue;
    int fd = atoi(e->d_name);
    int fl = fcntl(fd, F_GETFD);
    assert_true(fl >= 0);
    if (!(fl & FD_CLOEXEC)) fail_msg("fd %d on %s lacks FD_CLOEXEC", fd, target);
    seen++;
  }
  closedir(d);
  assert_true(seen >= 3);   /* db, lock file, upload temp file at least */
  store_upload_abort(u);
}

static long rss_kib(void) {
  FILE *fp = fopen("/proc/self/status", "r");
  if (!fp) return -1;
  char line[256];
  long v = -1;
  while (fgets(line, sizeof line, fp))
    if (sscanf(line, "VmRSS: %ld kB", &v) == 1) break;
  fclose(fp);
  return v;
}

/* Memory does not grow with the blob: 96 MiB streamed in 64 KiB chunks (as HTTP delivers
 * them) moves RSS by far less than the blob's size. */
static void test_upload_memory_bounded(void **state) {
  fixture *f = *state;
  unsigned char *chunk = malloc(64 * 1024);
  memset(chunk, 0x5a, 64 * 1024);
  store_upload *u = NULL;
  assert_int_equal(store_upload_begin(f->s, &u), 0);
  assert_int_equal(store_upload_write(u, chunk, 64 * 1024), 0);
  long before = rss_kib();
  for (int i = 1; i < 96 * 16; i++) {
    chunk[0] = (unsigned char)i;
    assert_int_equal(store_upload_write(u, chunk, 64 * 1024), 0);
  }
  long after = rss_kib();
  char hex[65];
  uint64_t size = 0;
  assert_int_equal(store_upload_finish(u, hex, &size), 0);
  assert_int_equal(size, 96ull << 20);
  int existed = -1;
  assert_int_equal(store_upload_publish(u, &existed), 0);
  assert_true(before > 0 && after > 0);
  if (after - before > 8 * 1024) fail_msg("RSS grew by %ld KiB for a 96 MiB upload", after - before);
  free(chunk);
}

/* Checks that every file under blobs/ is complete: its SHA-256 equals its name. */
static int verify_blobs(const char *dir, int *count) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  struct dirent *e;
  int bad = 0;
  while ((e = readdir(d)) != NULL) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    struct stat sb;
    if (lstat(p, &sb) != 0) continue;
    if (S_ISDIR(sb.st_mode)) {
      bad += verify_blobs(p, count);
      continue;
    }
    size_t n = 0;
    unsigned char *b = read_all(p, &n);
    unsigned char h[32];
    char hex[65];
    crypto_hash_sha256(h, b, n);
    sodium_bin2hex(hex, sizeof hex, h, sizeof h);
    free(b);
    if (strcmp(hex, e->d_name) != 0) {
      fprintf(stderr, "# blob %s has %zu bytes hashing to %s\n", e->d_name, n, hex);
      bad++;
    }
    (*count)++;
  }
  closedir(d);
  return bad;
}

/* kill -9 of a process in the middle of uploads, at arbitrary moments: whatever is under
 * blobs/ afterwards is complete, and the next open sweeps the leftovers in tmp/. */
static void test_kill9_leaves_no_partial_blob(void **state) {
  fixture *f = *state;
  store_close(f->s);
  f->s = NULL;
  int total = 0, leftovers = 0;
  for (int round = 0; round < 8; round++) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      store *s = NULL;
      if (store_open(f->dir, &s, NULL, NULL) != 0) _exit(2);
      unsigned char *chunk = malloc(256 * 1024);
      for (unsigned seq = 0;; seq++) {
        store_upload *u = NULL;
        if (store_upload_begin(s, &u) != 0) _exit(3);
        size_t chunks = 4 + seq % 9;   /* 1 to 3 MiB per blob */
        for (size_t k = 0; k < chunks; k++) {
          randombytes_buf(chunk, 256 * 1024);
          if (store_upload_write(u, chunk, 256 * 1024) != 0) _exit(4);
        }
        int existed;
        if (store_upload_publish(u, &existed) != 0) _exit(5);
      }
    }
    struct timespec ts = {0, (long)(20 + 37 * round) * 1000000L};
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    assert_true(WIFSIGNALED(status));   /* it was still uploading, not failed */
    char blobs[PATH_MAX];
    snprintf(blobs, sizeof blobs, "%s/blobs", f->dir);
    int count = 0;
    assert_int_equal(verify_blobs(blobs, &count), 0);
    total = count;
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s/tmp", f->dir);
    leftovers += count_files(tmp);
  }
  assert_true(leftovers > 0);   /* the kills did land mid-upload */
  mopt_diag d = {{0}, {0}};
  assert_int_equal(store_open(f->dir, &f->s, NULL, &d), 0);
  char tmp[PATH_MAX];
  snprintf(tmp, sizeof tmp, "%s/tmp", f->dir);
  assert_int_equal(count_files(tmp), 0);
  fprintf(stderr, "# %d complete blobs after 8 kills, %d temp files swept\n", total,
          leftovers);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_sha256_vectors, setup, teardown),
      cmocka_unit_test_setup_teardown(test_large_stream, setup, teardown),
      cmocka_unit_test_setup_teardown(test_dedup, setup, teardown),
      cmocka_unit_test_setup_teardown(test_publish_atomicity_and_abort, setup, teardown),
      cmocka_unit_test_setup_teardown(test_adopt_and_remove, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cloexec, setup, teardown),
      cmocka_unit_test_setup_teardown(test_upload_memory_bounded, setup, teardown),
      cmocka_unit_test_setup_teardown(test_kill9_leaves_no_partial_blob, setup, teardown),
  };
  return cmocka_run_group_tests_name("storage/blob", tests, NULL, NULL);
}
