/* sha256.c — SHA-256 hex digests through libsodium (no home-made hash).
 * Trade-off: one-shot over an in-memory buffer; streaming callers use libsodium directly. */
#include "mopt.h"

#include <sodium.h>

void mopt_sha256_hex(const uint8_t *data, size_t len, char out[65]) {
  unsigned char d[crypto_hash_sha256_BYTES];
  static const char hex[] = "0123456789abcdef";
  crypto_hash_sha256(d, data ? data : (const uint8_t *)"", (unsigned long long)len);
  for (size_t i = 0; i < sizeof d; i++) {
    out[2 * i] = hex[d[i] >> 4];
    out[2 * i + 1] = hex[d[i] & 15];
  }
  out[64] = '\0';
}
