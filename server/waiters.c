/* waiters.c — registry of suspended long-poll requests (GET /v1/jobs/{id}?wait=S).
 *
 * A hash table of intrusive lists keyed by job id, under one mutex that is only held for list
 * surgery (never during I/O or the resume callback). A waiter is linked while its request is
 * being suspended (pending) so a notification racing with the suspension is not lost: it marks
 * the waiter fired and the suspending thread resumes itself. Trade-off: deadlines are found by
 * a periodic scan (the scheduler's 100 ms tick) rather than a timer heap, which is simpler and
 * costs microseconds even with 10,000 waiters.
 */
#include "srv.h"

#include <pthread.h>
#include <string.h>

enum { W_UNLINKED = 0, W_PENDING = 1, W_ARMED = 2 };
#define N_BUCKETS 1024

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static srv_waiter *buckets[N_BUCKETS];
static size_t n_waiters;

static size_t hash(const char *s) {
  uint32_t h = 2166136261u;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
  return h % N_BUCKETS;
}

void srv_waiters_init(void) {}

static void unlink_locked(srv_waiter *w) {
  if (w->prev) w->prev->next = w->next;
  else buckets[hash(w->job)] = w->next;
  if (w->next) w->next->prev = w->prev;
  w->prev = w->next = NULL;
  w->state = W_UNLINKED;
  n_waiters--;
}

void srv_waiters_add(srv_waiter *w) {
  size_t b = hash(w->job);
  pthread_mutex_lock(&mu);
  w->state = W_PENDING;
  w->fired = 0;
  w->prev = NULL;
  w->next = buckets[b];
  if (w->next) w->next->prev = w;
  buckets[b] = w;
  n_waiters++;
  pthread_mutex_unlock(&mu);
}

int srv_waiters_arm(srv_waiter *w) {
  int fired;
  pthread_mutex_lock(&mu);
  fired = w->fired;
  if (!fired) w->state = W_ARMED;
  pthread_mutex_unlock(&mu);
  return fired;
}

void srv_waiters_remove(srv_waiter *w) {
  pthread_mutex_lock(&mu);
  if (w->state != W_UNLINKED) unlink_locked(w);
  pthread_mutex_unlock(&mu);
}

/* Fires w under the lock: armed waiters are appended to *wake for resuming after unlock. */
static void fire_locked(srv_waiter *w, srv_waiter **wake) {
  int armed = w->state == W_ARMED;
  unlink_locked(w);
  w->fired = 1;
  if (armed) {
    w->next = *wake;
    *wake = w;
  }
}

static void resume_all(srv_waiter *wake) {
  while (wake) {
    srv_waiter *next = wake->next;   /* read first: resume hands w back to its owner */
    wake->next = NULL;
    wake->resume(wake);
    wake = next;
  }
}

void srv_waiters_notify(const char *job_id) {
  srv_waiter *wake = NULL;
  size_t b = hash(job_id);
  pthread_mutex_lock(&mu);
  for (srv_waiter *w = buckets[b], *next; w; w = next) {
    next = w->next;
    if (strcmp(w->job, job_id) == 0) fire_locked(w, &wake);
  }
  pthread_mutex_unlock(&mu);
  resume_all(wake);
}

void srv_waiters_expire(int64_t now_ms) {
  srv_waiter *wake = NULL;
  pthread_mutex_lock(&mu);
  if (n_waiters)
    for (size_t b = 0; b < N_BUCKETS; b++)
      for (srv_waiter *w = buckets[b], *next; w; w = next) {
        next = w->next;
        if (now_ms < 0 || w->deadline_ms <= now_ms) fire_locked(w, &wake);
      }
  pthread_mutex_unlock(&mu);
  resume_all(wake);
}

size_t srv_waiters_count(void) {
  pthread_mutex_lock(&mu);
  size_t n = n_waiters;
  pthread_mutex_unlock(&mu);
  return n;
}
