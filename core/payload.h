/* payload.h — OTA payloads: weight-aware lossless packing (`full`) and tensor-aware deltas
 * (`delta`) of ONNX model files, their streaming, validated, atomic apply, and the signed
 * manifest check a device runs before it downloads anything.
 *
 * Main trade-off: the payload is a flat sequence of records that rebuild the target file front
 * to back, so apply needs one pass and bounded memory (≤ 2 MiB chunks + an 8 MiB skeleton
 * window + an 8 MiB dictionary), at the price of a second read of the payload to check its
 * SHA-256 before anything is written. Encoding may try several candidates per chunk (slower to
 * make, never bigger); decoding is always one cheap path.
 *
 * ============================== payload format, version 1 ==============================
 * Fixed-width integers are little-endian. varint = unsigned LEB128 (7 bits per byte, low
 * group first, at most 10 bytes); zigzag(x) = (x << 1) ^ (x >> 63) for signed values.
 *
 * Header (168 bytes):
 *   0    8  magic "MOPTPAY\n" (4d 4f 50 54 50 41 59 0a)
 *   8    1  u8 version = 1
 *   9    1  u8 kind: 1 = full (no base), 2 = delta (needs the base)
 *   10   2  u16 flags = 0
 *   12   4  u32 n_prefix: entries of the prefix table (0 for full)
 *   16   8  u64 target_size
 *   24   8  u64 base_size (0 for full)
 *   32   8  u64 records_len: bytes of the records section
 *   40   8  u64 n_records
 *   48   8  u64 prefix_len: bytes of the prefix table
 *   56   8  u64 skeleton_comp_len: bytes of the skeleton frame
 *   64   8  u64 skeleton_len: decompressed bytes of the skeleton stream
 *   72  32  target SHA-256 (raw bytes)
 *   104 32  base SHA-256 (all zero for full)
 *   136 32  payload SHA-256 = SHA-256(bytes [168, end) || bytes [0, 136))
 *           (body first, then the header fields, so a writer can hash while streaming)
 * Then, tiling the file exactly: records | prefix table | skeleton frame
 * (payload size = 168 + records_len + prefix_len + skeleton_comp_len).
 *
 * Record, in target order:
 *   u8 op: bits 0-2 kind (0 GAP, 1 SAME, 2 RAW, 3 XOR, 4 SUB, 5 SUBE), bits 3-4
 *          log2(elem_size) (elem_size 1, 2, 4, 8), bit 5 ROT, bits 6-7 zero. GAP has elem bits
 *          and ROT zero; ROT needs elem_size ≥ 2; SUBE needs elem_size 4 and ROT. (Kind 5
 *          came after the first release of version 1: older decoders refuse it by name.)
 *   varint out_len: target bytes produced (chunks: 1 byte .. 2 MiB, multiple of elem_size)
 *   SAME/XOR/SUB/SUBE: zigzag varint (base_off − expected), expected = end of the base range of the
 *          previous record that used one (0 at first); base range [base_off, base_off+out_len)
 *   RAW/XOR/SUB/SUBE: elem_size × varint (size << 1 | stored), then elem_size plane payloads: stored
 *          = the out_len/elem_size plane bytes verbatim, else one magicless zstd frame (format
 *          ZSTD_f_zstd1_magicless, content size present, no checksum) of that size.
 *   GAP  — the next out_len bytes of the skeleton stream (the target's non-tensor bytes).
 *   Chunks are pieces of one tensor's raw_data. Plane p holds byte p (little-endian
 *   significance) of every element ("byte planes": exponents, high and low mantissa bytes
 *   compress apart); the planes interleave back to D. With ROT every element e (an elem_size
 *   byte little-endian integer, base elements too) is seen as rotl(e, 1), which moves a float's
 *   sign to bit 0 so its exponent fills one plane; the output is rotated back. Then
 *     RAW: D;  SAME: base bytes;  XOR: base ^ D;
 *     SUB: base + unzigzag(D) as elem_size-byte integers modulo 2^(8*elem_size).
 *     SUBE: as SUB, but D is stored grouped by exponent: element i of the chunk's D is stored
 *       at slot(k) + (number of elements j < i with key k), k = the top byte of (rotated) base
 *       element i, slot(k) = number of elements whose key is below k.
 * Prefix table: n_prefix × (varint gap, varint len); the entries are base ranges in increasing
 *   order, each starting gap bytes after the previous one's end (the first: after byte 0). Their
 *   concatenation (≤ 8 MiB, the base's own skeleton) is the zstd prefix (raw-content dictionary)
 *   of the skeleton frame, so structure shared with the base costs almost nothing.
 * Skeleton: one standard zstd frame (window ≤ 8 MiB, content size and checksum present) whose
 *   output is consumed by the GAP records in order; it must end exactly with the last GAP.
 *
 * Validation before any output byte is written: header fields and tiling, payload SHA-256,
 * base size and SHA-256 (a wrong base is refused naming the digest it needs), every record
 * (types, reserved zeros, lengths, base ranges inside the base, frame sizes and the frames'
 * declared content sizes, sums against target_size and skeleton_len). Output goes to a temp
 * file in the output's directory; its size and SHA-256 are checked, then fsync + rename +
 * fsync(dir).
 *
 * Encoders: tensors are found with mopt_model_scan_file_tensors (raw_data ≥ 64 bytes); a file
 * that does not scan as ONNX is packed as opaque bytes (all skeleton). `delta` matches target
 * tensors to base tensors by (location, name, occurrence) with equal dtype, dims and size, and
 * per 1 MiB chunk picks the smallest of SAME / RAW / XOR / SUB / SUBE (ROT on for float dtypes). The
 * skeleton is compressed with and without the base prefix and the smaller kept, so a delta is
 * never larger than the full payload of the same target with the same options.
 * =========================================================================================
 *
 * Thread-safety: functions share no state; distinct calls may run concurrently.
 */
#ifndef MOPT_PAYLOAD_H
#define MOPT_PAYLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "mopt_error.h"

#define MOPT_PAYLOAD_VERSION 1
#define MOPT_PAYLOAD_FULL 1
#define MOPT_PAYLOAD_DELTA 2

typedef struct mopt_payload_opts {
  int32_t level;        /* zstd level of tensor planes; 0 = auto: 19 up to 64 MiB targets, 6 above */
  uint32_t chunk_bytes; /* chunk size, multiple of 8, ≤ 2 MiB; 0 = 1 MiB */
  int32_t opaque;       /* 1: do not look for tensors, treat the files as plain bytes */
} mopt_payload_opts;

typedef struct mopt_payload_info {
  uint32_t version, kind;
  uint64_t payload_size;
  uint64_t target_size;
  char target_sha256[65];      /* lowercase hex */
  uint64_t base_size;
  char base_sha256[65];        /* "" for full */
  uint64_t n_records;
  uint64_t skeleton_len, skeleton_comp_len;
  int32_t skeleton_prefixed;   /* the skeleton frame uses the base prefix */
  /* filled by pack/delta only: target bytes per chunk mode, tensors seen / matched in the base */
  uint64_t bytes_same, bytes_raw, bytes_xor, bytes_sub;   /* bytes_sub: SUB and SUBE */
  uint64_t bytes_sube;                                    /* of which SUBE */
  uint64_t n_tensors, n_matched;
} mopt_payload_info;

/* Packs MODEL into a `full` payload written atomically at out_path (temp file in the same
 * directory, fsync, rename). opts may be NULL (defaults). info (may be NULL) receives the
 * header fields and statistics. Deterministic: same bytes + same opts give the same payload.
 * Memory: O(tensor count + chunk size + compressed skeleton). Returns 0, MOPT_EIO, MOPT_ENOMEM,
 * MOPT_EINVAL (bad opts), MOPT_EINTERNAL (zstd), with diag. */
int mopt_payload_pack_file(const char *model_path, const char *out_path,
                           const mopt_payload_opts *opts, mopt_payload_info *info,
                           mopt_diag *diag);

/* Makes a `delta` payload that rebuilds target_path from base_path. Never larger than
 * mopt_payload_pack_file of the target with the same opts. Same returns as pack. */
int mopt_payload_delta_file(const char *base_path, const char *target_path, const char *out_path,
                            const mopt_payload_opts *opts, mopt_payload_info *info,
                            mopt_diag *diag);

/* Applies a payload: validates it completely (see the format notes), then streams the target
 * into a temp file next to out_path, checks its size and SHA-256, fsyncs and renames it into
 * place. base_path is required for a delta and ignored for a full payload (may be NULL).
 * On any error nothing exists at out_path that was not there before and no temp file remains.
 * Memory is bounded whatever the model size: at most an 8 MiB prefix, an 8 MiB skeleton window,
 * four 2 MiB chunk buffers and 4 MiB of I/O buffers (about 29 MiB; ~12 MiB measured on 400 MB).
 * Returns 0; MOPT_EPAYLOAD (malformed, truncated, corrupted payload); MOPT_EDIGEST (wrong base:
 * the diag names the expected base SHA-256; or the output does not match the target digest);
 * MOPT_EINVAL (delta without base); MOPT_EIO; MOPT_ENOMEM. */
int mopt_payload_apply_file(const char *base_path, const char *payload_path, const char *out_path,
                            mopt_payload_info *info, mopt_diag *diag);

/* mopt_payload_apply_file for a `full` payload (no base). A delta gives MOPT_EINVAL naming the
 * base it needs. */
int mopt_payload_unpack_file(const char *payload_path, const char *out_path,
                             mopt_payload_info *info, mopt_diag *diag);

/* Reads and checks the header (fields and tiling against the file size, not the hashes) and
 * fills info. Returns 0, MOPT_EPAYLOAD, MOPT_EIO. */
int mopt_payload_info_file(const char *payload_path, mopt_payload_info *info, mopt_diag *diag);

/* ============================== signed manifests ==============================
 * A manifest is a JSON object of the form
 *     {"signed": {...}, "signatures": [{"keyid": "<hex>", "sig": "<base64>"}, ...]}
 * (other top-level keys are allowed and ignored; "signed" must appear exactly once).
 * The canonical signed bytes are EXACTLY the bytes of the "signed" value as they appear in the
 * manifest text, from its opening '{' to its matching '}' inclusive — the server serializes
 * that object once (jansson, sorted keys, compact, no whitespace) and embeds those bytes
 * verbatim; the verifier never re-serializes, so it needs no JSON library.
 *   sig   = standard base64 (RFC 4648, with padding) of the 64-byte ed25519 detached signature
 *           (libsodium crypto_sign_detached) over the signed bytes;
 *   keyid = lowercase hex SHA-256 of the 32-byte ed25519 public key (64 chars).
 * Verification succeeds when some entry's keyid equals the key's id and its sig verifies.
 * Fields inside "signed" (version, expires, target, payloads) are the caller's to check. */

/* Computes the key id (64 hex + NUL) of a 32-byte ed25519 public key. */
void mopt_manifest_keyid(const uint8_t pk[32], char out[65]);

/* Signs msg with a 64-byte libsodium ed25519 secret key; out receives the base64 signature
 * (88 chars + NUL). Returns 0 or MOPT_EINTERNAL. */
int mopt_manifest_sign(const uint8_t *msg, size_t len, const uint8_t sk[64], char out[89]);

/* Verifies a manifest's signature with public key pk. On success *signed_off / *signed_len
 * (may be NULL) locate the signed bytes inside json. Returns 0; MOPT_EJSON (not a manifest of
 * the shape above: where = byte offset); MOPT_ESIGNATURE (no entry for this key, or it does not
 * verify). */
int mopt_manifest_verify(const uint8_t *json, size_t len, const uint8_t pk[32],
                         size_t *signed_off, size_t *signed_len, mopt_diag *diag);

/* Parses a public key file's contents: 32 raw bytes, 64 hex chars, base64 of 32 bytes (44
 * chars), or a JSON object with a "public_key" string in one of those text forms; surrounding
 * whitespace ignored. Returns 0 or MOPT_EINVAL with diag. */
int mopt_manifest_parse_key(const uint8_t *text, size_t len, uint8_t pk[32], mopt_diag *diag);

#endif
