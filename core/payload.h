/* payload.h — OTA payloads: weight-aware lossless packing (`full`) and tensor-aware deltas
 * (`delta`) of ONNX model files, their streaming, validated, atomic apply, and the signed
 * manifest check a device runs before it downloads anything.
 *
 * Main trade-off: the payload is a flat sequence of records that rebuild the target file front
 * to back, so apply needs one pass and bounded memory (≤ 4 MiB chunks + an 8 MiB skeleton
 * window + an 8 MiB dictionary), at the price of a second read of the payload to check its
 * SHA-256 before anything is written. Encoding may try several candidates per chunk (slower to
 * make, never bigger); decoding is always one cheap path.
 *
 * ============================== payload format, version 1 ==============================
 * All integers little-endian. Byte offsets are from the start of the payload file.
 *
 * Header (208 bytes):
 *   0    8  magic "MOPTPAY\n" (4d 4f 50 54 50 41 59 0a)
 *   8    4  u32 version = 1
 *   12   4  u32 kind: 1 = full (no base), 2 = delta (needs the base)
 *   16   8  u64 payload_size: total bytes of this file
 *   24   8  u64 target_size
 *   32  32  target SHA-256 (raw bytes)
 *   64   8  u64 base_size (0 for full)
 *   72  32  base SHA-256 (all zero for full)
 *   104  8  u64 records_off (= 208)
 *   112  8  u64 records_len
 *   120  8  u64 n_records
 *   128  8  u64 prefix_off (= records_off + records_len)
 *   136  8  u64 n_prefix: entries of the prefix table (0 for full)
 *   144  8  u64 skeleton_off (= prefix_off + 16 * n_prefix)
 *   152  8  u64 skeleton_comp_len (skeleton_off + skeleton_comp_len = payload_size)
 *   160  8  u64 skeleton_len: decompressed bytes of the skeleton stream
 *   168  4  u32 flags = 0
 *   172  4  u32 reserved = 0
 *   176 32  payload SHA-256 = SHA-256(bytes [208, payload_size) || bytes [0, 176))
 *           (body first, then the header fields, so a writer can hash while streaming)
 * Sections tile the file exactly: header | records | prefix table | skeleton frame.
 *
 * Record (32-byte header + data_len bytes of data), in target order:
 *   0  u8  type: 1 = GAP, 2 = CHUNK
 *   1  u8  mode (CHUNK): 0 SAME, 1 RAW, 2 XOR, 3 SUB; 0 for GAP
 *   2  u8  elem_size (CHUNK): 1, 2, 4 or 8; 0 for GAP
 *   3  u8  0;  4 u32 0 (reserved, must be zero)
 *   8  u64 out_len: target bytes this record produces (CHUNK: 1..4 MiB, multiple of elem_size)
 *   16 u64 base_off: base range [base_off, base_off + out_len) for SAME/XOR/SUB; all ones for
 *          GAP and RAW
 *   24 u64 data_len: 0 for GAP and SAME; else 4 * elem_size + the sum of the frame sizes
 *   GAP   — the next out_len bytes of the skeleton stream (the target's non-tensor bytes).
 *   CHUNK — a piece of one tensor's raw_data. Data: elem_size u32 frame sizes, then elem_size
 *           zstd frames; frame p holds byte p (little-endian significance) of every element
 *           ("byte planes": exponents, high and low mantissa bytes compress apart). Decoded
 *           planes interleave back to D; the chunk is then
 *             RAW: D;  SAME: base bytes (no data);  XOR: base ^ D (bitwise, floats);
 *             SUB: base + D as elem_size-byte little-endian integers modulo 2^(8*elem_size).
 * Prefix table: n_prefix × {u64 base_off, u64 len}; the concatenation of these base ranges
 *   (≤ 8 MiB, the base's own skeleton) is the zstd prefix (raw-content dictionary) of the
 *   skeleton frame, so structure shared with the base costs almost nothing.
 * Skeleton: one zstd frame (window ≤ 8 MiB, content size and checksum present) whose output
 *   is consumed by the GAP records in order; it must end exactly with the last GAP.
 * Every zstd frame carries its content checksum.
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
 * per 1 MiB chunk picks the smallest of SAME / RAW / XOR / SUB (SUB for integer dtypes). The
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
  int32_t level;        /* zstd level of tensor planes; 0 = auto: 19 for targets ≤ 64 MiB, 3 above */
  uint32_t chunk_bytes; /* chunk size, multiple of 8, ≤ 4 MiB; 0 = 1 MiB */
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
  uint64_t bytes_same, bytes_raw, bytes_xor, bytes_sub;
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
 * Memory is bounded (about 24 MiB worst case) whatever the model size.
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
