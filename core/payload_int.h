/* payload_int.h — internals shared by the payload codec's files (not a public API). */
#ifndef MOPT_PAYLOAD_INT_H
#define MOPT_PAYLOAD_INT_H

#include <stddef.h>
#include <stdint.h>

#include <sodium.h>

/* Streaming SHA-256: the x86 SHA extensions when the CPU has them (several times faster than
 * libsodium's portable code, which dominated apply time), libsodium otherwise. Same digest. */
typedef struct mopt_sha {
  int ni;
  uint32_t h[8];
  uint8_t buf[64];
  size_t n;
  uint64_t total;
  crypto_hash_sha256_state s;
} mopt_sha;

/* use_ni < 0: detect (and honour MOPT_NO_SHANI=1); 0: force libsodium; 1: SHA-NI if present. */
void mopt_sha_init(mopt_sha *c, int use_ni);
void mopt_sha_update(mopt_sha *c, const uint8_t *p, size_t n);
void mopt_sha_final(mopt_sha *c, uint8_t out[32]);
/* 1 when SHA-NI is available on this CPU. */
int mopt_sha_ni_available(void);

#endif
