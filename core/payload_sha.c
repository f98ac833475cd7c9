/* payload_sha.c — streaming SHA-256 for the payload codec: x86 SHA-NI when present, libsodium
 * otherwise (see payload_int.h).
 *
 * Trade-off: a second SHA-256 implementation to maintain, justified because apply hashes the
 * base, the payload and the output (three passes over ~the model size) and libsodium's
 * portable code runs ~250 MB/s, below the apply throughput goal. The NI path is checked against
 * libsodium in tests/unit/core/payload.c on many lengths and split points.
 */
#include <stdlib.h>
#include <string.h>

#include "payload_int.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_NI_CODE 1
#else
#define HAVE_NI_CODE 0
#endif

static const uint32_t IV[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
static const uint32_t K[64] = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#if HAVE_NI_CODE
__attribute__((target("sha,sse4.1,ssse3")))
static void blocks_ni(uint32_t st[8], const uint8_t *p, size_t nb) {
  const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
  __m128i tmp = _mm_loadu_si128((const __m128i *)&st[0]);     /* DCBA */
  __m128i s1 = _mm_loadu_si128((const __m128i *)&st[4]);      /* HGFE */
  tmp = _mm_shuffle_epi32(tmp, 0xB1);                         /* CDAB */
  s1 = _mm_shuffle_epi32(s1, 0x1B);                           /* EFGH */
  __m128i s0 = _mm_alignr_epi8(tmp, s1, 8);                   /* ABEF */
  s1 = _mm_blend_epi16(s1, tmp, 0xF0);                        /* CDGH */
  while (nb--) {
    __m128i save0 = s0, save1 = s1, w[4];
    for (int g = 0; g < 16; g++) {
      __m128i m;
      if (g < 4) {
        m = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * g)), bswap);
      } else {
        __m128i x = _mm_sha256msg1_epu32(w[g & 3], w[(g + 1) & 3]);
        x = _mm_add_epi32(x, _mm_alignr_epi8(w[(g + 3) & 3], w[(g + 2) & 3], 4));
        m = _mm_sha256msg2_epu32(x, w[(g + 3) & 3]);
      }
      w[g & 3] = m;
      __m128i k = _mm_add_epi32(m, _mm_loadu_si128((const __m128i *)&K[4 * g]));
      s1 = _mm_sha256rnds2_epu32(s1, s0, k);
      k = _mm_shuffle_epi32(k, 0x0E);
      s0 = _mm_sha256rnds2_epu32(s0, s1, k);
    }
    s0 = _mm_add_epi32(s0, save0);
    s1 = _mm_add_epi32(s1, save1);
    p += 64;
  }
  tmp = _mm_shuffle_epi32(s0, 0x1B);                          /* FEBA */
  s1 = _mm_shuffle_epi32(s1, 0xB1);                           /* DCHG */
  s0 = _mm_blend_epi16(tmp, s1, 0xF0);                        /* DCBA */
  s1 = _mm_alignr_epi8(s1, tmp, 8);                           /* HGFE */
  _mm_storeu_si128((__m128i *)&st[0], s0);
  _mm_storeu_si128((__m128i *)&st[4], s1);
}
#endif

int mopt_sha_ni_available(void) {
#if HAVE_NI_CODE
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  int sse = (c & (1u << 19)) && (c & (1u << 9));   /* SSE4.1, SSSE3 */
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
  return sse && (b & (1u << 29));                   /* SHA */
#else
  return 0;
#endif
}

void mopt_sha_init(mopt_sha *c, int use_ni) {
  memset(c, 0, sizeof *c);
  if (use_ni < 0) {
    const char *e = getenv("MOPT_NO_SHANI");
    use_ni = !(e && e[0] == '1');
  }
  c->ni = use_ni && mopt_sha_ni_available();
  if (c->ni) memcpy(c->h, IV, sizeof IV);
  else crypto_hash_sha256_init(&c->s);
}

void mopt_sha_update(mopt_sha *c, const uint8_t *p, size_t n) {
#if HAVE_NI_CODE
  if (c->ni) {
    c->total += n;
    if (c->n) {
      size_t k = 64 - c->n < n ? 64 - c->n : n;
      memcpy(c->buf + c->n, p, k);
      c->n += k; p += k; n -= k;
      if (c->n < 64) return;
      blocks_ni(c->h, c->buf, 1);
      c->n = 0;
    }
    if (n >= 64) {
      blocks_ni(c->h, p, n / 64);
      p += n & ~(size_t)63;
      n &= 63;
    }
    memcpy(c->buf, p, n);
    c->n = n;
    return;
  }
#endif
  crypto_hash_sha256_update(&c->s, p, n);
}

void mopt_sha_final(mopt_sha *c, uint8_t out[32]) {
#if HAVE_NI_CODE
  if (c->ni) {
    uint64_t bits = c->total * 8;
    uint8_t pad[128] = {0x80};
    size_t padlen = (c->n < 56 ? 56 : 120) - c->n;
    for (int i = 0; i < 8; i++) pad[padlen + i] = (uint8_t)(bits >> (56 - 8 * i));
    mopt_sha_update(c, pad, padlen + 8);
    for (int i = 0; i < 8; i++) {
      out[4 * i] = (uint8_t)(c->h[i] >> 24); out[4 * i + 1] = (uint8_t)(c->h[i] >> 16);
      out[4 * i + 2] = (uint8_t)(c->h[i] >> 8); out[4 * i + 3] = (uint8_t)c->h[i];
    }
    return;
  }
#endif
  crypto_hash_sha256_final(&c->s, out);
}
