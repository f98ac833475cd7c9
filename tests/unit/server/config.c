/* tests/unit/server/config.c — the config table: defaults, config file < env < flags, bounds
 * errors naming the option, the loopback-without-tokens rule, and --help covering every row. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "srv.h"

/* A fake environment: NULL-terminated "NAME=value" list. */
static const char *const *fake_env;
static const char *fake_getenv(const char *name) {
  size_t n = strlen(name);
  for (const char *const *e = fake_env; e && *e; e++)
    if (strncmp(*e, name, n) == 0 && (*e)[n] == '=') return *e + n + 1;
  return NULL;
}
static const char *empty_env[] = {NULL};

static int load(srv_config *c, const char *const *env, char *err, size_t errn, ...) {
  char *argv[32];
  int argc = 0;
  va_list ap;
  argv[argc++] = (char *)"moptd";
  va_start(ap, errn);
  for (char *a; (a = va_arg(ap, char *)) != NULL && argc < 31;) argv[argc++] = a;
  va_end(ap);
  argv[argc] = NULL;
  fake_env = env;
  FILE *devnull = fopen("/dev/null", "w");
  int rc = srv_config_load(c, argc, argv, fake_getenv, 6, devnull, err, errn);
  fclose(devnull);
  return rc;
}

static char *write_tmp(const char *text) {
  static char path[64];
  snprintf(path, sizeof path, "/tmp/moptd-cfg-test-XXXXXX");
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  return path;
}

static void test_defaults(void **state) {
  (void)state;
  srv_config c;
  char err[512] = "";
  assert_int_equal(load(&c, empty_env, err, sizeof err, NULL), 0);
  assert_string_equal(c.listen, "127.0.0.1:8080");
  assert_string_equal(c.data, "./data");
  assert_int_equal(c.workers, 6);   /* 0 = cores, and the test passes 6 cores */
  assert_int_equal(c.threads, 6);
  assert_string_equal(c.tokens, "");
  assert_string_equal(c.mopt, "");
  assert_true(c.max_model_bytes == 8ull * 1024 * 1024 * 1024);
  assert_true(c.max_json_bytes == 1024 * 1024);
  assert_int_equal(c.max_queued_jobs, 1000);
  assert_int_equal(c.job_timeout_s, 3600);
  assert_int_equal(c.job_memory_mb, 8192);
  assert_int_equal(c.conn_limit, 20000);
  assert_int_equal(c.per_ip_limit, 0);
  assert_int_equal(c.conn_timeout_s, 60);
  assert_int_equal(c.max_wait_s, 60);
  assert_int_equal(c.log_level, SRV_LOG_INFO);
}

static void test_flags_both_spellings(void **state) {
  (void)state;
  srv_config c;
  char err[512] = "";
  assert_int_equal(load(&c, empty_env, err, sizeof err, "--listen", "127.0.0.1:0", "--data",
                        "/tmp/x", "--workers=3", "--max-json-bytes", "2MiB",
                        "--job_timeout_s", "10", "--log-level", "DEBUG", NULL), 0);
  assert_string_equal(c.listen, "127.0.0.1:0");
  assert_string_equal(c.data, "/tmp/x");
  assert_int_equal(c.workers, 3);
  assert_true(c.max_json_bytes == 2u * 1024 * 1024);
  assert_int_equal(c.job_timeout_s, 10);
  assert_int_equal(c.log_level, SRV_LOG_DEBUG);
}

static void test_precedence(void **state) {
  (void)state;
  srv_config c;
  char err[512] = "";
  char *path = write_tmp("# a comment\n"
                         "workers = 2\n"
                         "  max_wait_s=7   # trailing comment\n"
                         "data = \"/from/file\"\n"
                         "conn_timeout_s = 11\n");
  char cfgpath[64];
  snprintf(cfgpath, sizeof cfgpath, "%s", path);
  /* file only */
  assert_int_equal(load(&c, empty_env, err, sizeof err, "--config", cfgpath, NULL), 0);
  assert_int_equal(c.workers, 2);
  assert_int_equal(c.max_wait_s, 7);
  assert_string_equal(c.data, "/from/file");
  assert_string_equal(c.config, cfgpath);
  /* env beats file */
  const char *env1[] = {"MOPTD_WORKERS=4", "MOPTD_DATA=/from/env", NULL};
  assert_int_equal(load(&c, env1, err, sizeof err, "--config", cfgpath, NULL), 0);
  assert_int_equal(c.workers, 4);
  assert_string_equal(c.data, "/from/env");
  assert_int_equal(c.max_wait_s, 7);        /* untouched by env: still the file's */
  assert_int_equal(c.conn_timeout_s, 11);
  /* flags beat env, wherever --config appears */
  assert_int_equal(load(&c, env1, err, sizeof err, "--workers", "5", "--config", cfgpath, NULL), 0);
  assert_int_equal(c.workers, 5);
  assert_string_equal(c.data, "/from/env");
  /* MOPTD_CONFIG names the file too */
  char envcfg[96];
  snprintf(envcfg, sizeof envcfg, "MOPTD_CONFIG=%s", cfgpath);
  const char *env2[] = {envcfg, NULL};
  assert_int_equal(load(&c, env2, err, sizeof err, NULL), 0);
  assert_int_equal(c.workers, 2);
  unlink(cfgpath);
}

static void test_bounds_errors(void **state) {
  (void)state;
  srv_config c;
  char err[512];
  err[0] = 0;
  assert_int_equal(load(&c, empty_env, err, sizeof err, "--workers", "999", NULL), 2);
  assert_non_null(strstr(err, "--workers"));
  assert_non_null(strstr(err, "256"));
  assert_non_null(strstr(err, "command line"));

  const char *env[] = {"MOPTD_CONN_LIMIT=3", NULL};
  err[0] = 0;
  assert_int_equal(load(&c, env, err, sizeof err, NULL), 2);
  assert_non_null(strstr(err, "--conn-limit"));
  assert_non_null(strstr(err, "MOPTD_CONN_LIMIT"));
  assert_non_null(strstr(err, "16"));

  err[0] = 0;
  assert_int_equal(load(&c, empty_env, err, sizeof err, "--max-model-bytes", "12parsecs", NULL), 2);
  assert_non_null(strstr(err, "--max-model-bytes"));
  err[0] = 0;
  assert_int_equal(load(&c, empty_env, err, sizeof err, "--job-memory-mb", "-5", NULL), 2);
  assert_non_null(strstr(err, "--job-memory-mb"));
  err[0] = 0;
  assert_int_equal(load(&c, empty_env, err, sizeof err, "--listen", "nonsense", NULL), 2);
  assert_non_null(strstr(err, "--listen"));
  err[0] = 0;
  assert_int_equal(load(&c, empty_env, err, sizeof err, "--listen", "127.0.0.1:70000", NULL), 2);
  err[0] = 0;
  assert_int_equal(load(&c, empty_env, err, sizeof err, "--log-level", "chatty", NULL), 2);
  assert_non_null(strstr(err, "--log-level"));
  err[0] = 0;
  assert_int_equal(load(&c, empty_env, err, sizeof err, "--bogus", "1", NULL), 2);
  assert_non_null(strstr(err, "--bogus"));
  err[0] = 0;
  assert_int_equal(load(&c, empty_env, err, sizeof err, "--workers", NULL), 2);
  assert_non_null(strstr(err, "needs a value"));
  err[0] = 0;
  assert_int_equal(load(&c, empty_env, err, sizeof err, "stray", NULL), 2);

  char *path = write_tmp("workers = 2\nmax_json_bytes = 1\n");
  char cfgpath[64];
  snprintf(cfgpath, sizeof cfgpath, "%s", path);
  err[0] = 0;
  assert_int_equal(load(&c, empty_env, err, sizeof err, "--config", cfgpath, NULL), 2);
  assert_non_null(strstr(err, "line 2"));
  assert_non_null(strstr(err, "--max-json-bytes"));
  unlink(cfgpath);
  path = write_tmp("no_such_key = 1\n");
  snprintf(cfgpath, sizeof cfgpath, "%s", path);
  err[0] = 0;
  assert_int_equal(load(&c, empty_env, err, sizeof err, "--config", cfgpath, NULL), 2);
  assert_non_null(strstr(err, "no_such_key"));
  unlink(cfgpath);
  err[0] = 0;
  assert_int_equal(load(&c, empty_env, err, sizeof err, "--config", "/nonexistent/moptd.conf", NULL), 2);
  assert_non_null(strstr(err, "/nonexistent/moptd.conf"));
}

static void test_sizes(void **state) {
  (void)state;
  srv_config c;
  char err[512] = "";
  assert_int_equal(load(&c, empty_env, err, sizeof err, "--max-model-bytes", "3GiB", NULL), 0);
  assert_true(c.max_model_bytes == 3ull << 30);
  assert_int_equal(load(&c, empty_env, err, sizeof err, "--max-model-bytes", "1500k", NULL), 0);
  assert_true(c.max_model_bytes == 1500ull * 1024);
  assert_int_equal(load(&c, empty_env, err, sizeof err, "--max-model-bytes", "4096", NULL), 0);
  assert_true(c.max_model_bytes == 4096);
  assert_int_equal(load(&c, empty_env, err, sizeof err, "--max-model-bytes", "2TiB", NULL), 2);
}

static void test_loopback_rule(void **state) {
  (void)state;
  srv_config c;
  char err[512] = "";
  assert_int_equal(load(&c, empty_env, err, sizeof err, "--listen", "0.0.0.0:8080", NULL), 0);
  assert_int_equal(srv_config_check(&c, err, sizeof err), 2);
  assert_non_null(strstr(err, "--tokens"));
  assert_int_equal(load(&c, empty_env, err, sizeof err, "--listen", "0.0.0.0:8080", "--tokens",
                        "/etc/moptd/tokens", NULL), 0);
  assert_int_equal(srv_config_check(&c, err, sizeof err), 0);
  const char *lo[] = {"127.0.0.1:1", "127.5.6.7:0", "localhost:80", "[::1]:8080",
                      "[::ffff:127.0.0.1]:9"};
  for (size_t i = 0; i < sizeof lo / sizeof lo[0]; i++) {
    assert_int_equal(load(&c, empty_env, err, sizeof err, "--listen", lo[i], NULL), 0);
    assert_int_equal(srv_config_check(&c, err, sizeof err), 0);
  }
  const char *not_lo[] = {"10.0.0.1:80", "[::]:8080", "example.com:80", "[2001:db8::1]:1"};
  for (size_t i = 0; i < sizeof not_lo / sizeof not_lo[0]; i++) {
    assert_int_equal(load(&c, empty_env, err, sizeof err, "--listen", not_lo[i], NULL), 0);
    assert_int_equal(srv_config_check(&c, err, sizeof err), 2);
  }
}

static void test_listen_split(void **state) {
  (void)state;
  char host[64];
  uint16_t port = 1;
  assert_int_equal(srv_listen_split("127.0.0.1:0", host, sizeof host, &port), 0);
  assert_string_equal(host, "127.0.0.1");
  assert_int_equal(port, 0);
  assert_int_equal(srv_listen_split("[::1]:8080", host, sizeof host, &port), 0);
  assert_string_equal(host, "::1");
  assert_int_equal(port, 8080);
  assert_int_equal(srv_listen_split("::1:8080", host, sizeof host, &port), MOPT_EINVAL);
  assert_int_equal(srv_listen_split("host:", host, sizeof host, &port), MOPT_EINVAL);
  assert_int_equal(srv_listen_split(":80", host, sizeof host, &port), MOPT_EINVAL);
  assert_int_equal(srv_listen_split("h:65536", host, sizeof host, &port), MOPT_EINVAL);
  assert_int_equal(srv_listen_split("h:8o", host, sizeof host, &port), MOPT_EINVAL);
}

static void test_help_covers_every_option(void **state) {
  (void)state;
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  srv_config_help(f);
  fclose(f);
  assert_true(srv_config_option_count() >= 17);
  for (size_t i = 0; i < srv_config_option_count(); i++) {
    const char *name = srv_config_option_name(i);
    char flag[64], env[64];
    size_t k = 0;
    for (const char *p = name; *p && k < sizeof flag - 3; p++) flag[k++] = *p == '_' ? '-' : *p;
    flag[k] = 0;
    char dashed[70];
    snprintf(dashed, sizeof dashed, "--%s", flag);
    assert_non_null(strstr(buf, dashed));
    k = 0;
    for (const char *p = "MOPTD_"; *p; p++) env[k++] = *p;
    for (const char *p = name; *p && k < sizeof env - 1; p++)
      env[k++] = (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
    env[k] = 0;
    assert_non_null(strstr(buf, env));
  }
  /* per_ip_limit's help explains why it is off by default */
  assert_non_null(strstr(buf, "0 = off"));
  free(buf);

  /* --help anywhere returns 1 (exit 0) even next to a bad option value */
  srv_config c;
  char err[256] = "";
  assert_int_equal(load(&c, empty_env, err, sizeof err, "--workers", "5", "--help", NULL), 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_defaults),
    cmocka_unit_test(test_flags_both_spellings),
    cmocka_unit_test(test_precedence),
    cmocka_unit_test(test_bounds_errors),
    cmocka_unit_test(test_sizes),
    cmocka_unit_test(test_loopback_rule),
    cmocka_unit_test(test_listen_split),
    cmocka_unit_test(test_help_covers_every_option),
  };
  return cmocka_run_group_tests_name("server/config", tests, NULL, NULL);
}
