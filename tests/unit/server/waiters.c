/* tests/unit/server/waiters.c — the long-poll registry: notify wakes only that job's armed
 * waiters, exactly once; a notification racing with suspension is reported by arm(); deadlines
 * expire; removal; many threads notifying while waiters come and go lose no wake-up. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "srv.h"

static atomic_int resumed;
static void on_resume(srv_waiter *w) {
  atomic_fetch_add(&resumed, 1);
  w->ctx = (void *)1;   /* marks this waiter as resumed */
}

static void mk(srv_waiter *w, const char *job, int64_t deadline) {
  memset(w, 0, sizeof *w);
  snprintf(w->job, sizeof w->job, "%s", job);
  w->deadline_ms = deadline;
  w->resume = on_resume;
}

static void test_notify_armed(void **state) {
  (void)state;
  srv_waiter a, b, c;
  atomic_store(&resumed, 0);
  mk(&a, "job_a", INT64_MAX);
  mk(&b, "job_a", INT64_MAX);
  mk(&c, "job_c", INT64_MAX);
  srv_waiters_add(&a);
  srv_waiters_add(&b);
  srv_waiters_add(&c);
  assert_int_equal(srv_waiters_arm(&a), 0);
  assert_int_equal(srv_waiters_arm(&b), 0);
  assert_int_equal(srv_waiters_arm(&c), 0);
  assert_int_equal(srv_waiters_count(), 3);
  srv_waiters_notify("job_a");
  assert_int_equal(atomic_load(&resumed), 2);
  assert_ptr_equal(a.ctx, (void *)1);
  assert_ptr_equal(b.ctx, (void *)1);
  assert_null(c.ctx);
  srv_waiters_notify("job_a");   /* already woken: not again */
  assert_int_equal(atomic_load(&resumed), 2);
  assert_int_equal(srv_waiters_count(), 1);
  srv_waiters_remove(&c);
  assert_int_equal(srv_waiters_count(), 0);
  srv_waiters_notify("job_c");
  assert_int_equal(atomic_load(&resumed), 2);
  srv_waiters_remove(&a);        /* removing an unlinked waiter is harmless */
}

static void test_notify_while_pending(void **state) {
  (void)state;
  srv_waiter a;
  atomic_store(&resumed, 0);
  mk(&a, "job_p", INT64_MAX);
  srv_waiters_add(&a);
  srv_waiters_notify("job_p");           /* arrives before the request is suspended */
  assert_int_equal(atomic_load(&resumed), 0);   /* no resume of a running request */
  assert_int_equal(srv_waiters_arm(&a), 1);     /* the suspender must resume itself */
  assert_int_equal(srv_waiters_count(), 0);
}

static void test_expire(void **state) {
  (void)state;
  srv_waiter a, b;
  atomic_store(&resumed, 0);
  mk(&a, "job_e", 1000);
  mk(&b, "job_e", 5000);
  srv_waiters_add(&a);
  srv_waiters_add(&b);
  srv_waiters_arm(&a);
  srv_waiters_arm(&b);
  srv_waiters_expire(999);
  assert_int_equal(atomic_load(&resumed), 0);
  srv_waiters_expire(1000);
  assert_int_equal(atomic_load(&resumed), 1);
  assert_ptr_equal(a.ctx, (void *)1);
  srv_waiters_expire(-1);                /* shutdown: everyone */
  assert_int_equal(atomic_load(&resumed), 2);
  assert_int_equal(srv_waiters_count(), 0);
}

#define N_THREADS 4
#define N_ROUNDS 2000
static void *notifier(void *arg) {
  atomic_int *stop = arg;
  char job[40];
  for (unsigned i = 0; !atomic_load(stop); i++) {
    snprintf(job, sizeof job, "job_%u", i % 8);
    srv_waiters_notify(job);
  }
  return NULL;
}

static void test_concurrent(void **state) {
  (void)state;
  pthread_t th[N_THREADS];
  atomic_int stop = 0;
  atomic_store(&resumed, 0);
  for (int i = 0; i < N_THREADS; i++) pthread_create(&th[i], NULL, notifier, &stop);
  static srv_waiter ws[N_ROUNDS];
  int self_resumed = 0;
  for (int i = 0; i < N_ROUNDS; i++) {
    char job[40];
    snprintf(job, sizeof job, "job_%d", i % 8);
    mk(&ws[i], job, INT64_MAX);
    srv_waiters_add(&ws[i]);
    if (srv_waiters_arm(&ws[i])) self_resumed++;
  }
  /* every waiter ends up woken exactly once: by a notifier or by itself */
  for (int spin = 0; spin < 2000 && atomic_load(&resumed) + self_resumed < N_ROUNDS; spin++)
    usleep(1000);
  atomic_store(&stop, 1);
  for (int i = 0; i < N_THREADS; i++) pthread_join(th[i], NULL);
  assert_int_equal(atomic_load(&resumed) + self_resumed, N_ROUNDS);
  assert_int_equal(srv_waiters_count(), 0);
}

int main(void) {
  srv_waiters_init();
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_notify_armed),
    cmocka_unit_test(test_notify_while_pending),
    cmocka_unit_test(test_expire),
    cmocka_unit_test(test_concurrent),
  };
  return cmocka_run_group_tests_name("server/waiters", tests, NULL, NULL);
}
