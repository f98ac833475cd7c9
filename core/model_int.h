/* model_int.h — internals of libmopt's model layer shared by onnx_io.c, weights.c and encode.c.
 *
 * A mopt_model wraps the protobuf-c ModelProto tree. Every message in the tree is allocated with
 * malloc (protobuf-c's default allocator), so nodes and tensors created by the encoders can be
 * linked into the tree and the whole tree freed by protobuf_c_message_free_unpacked().
 * Other modules should use mopt.h only; this header is for core/ files that edit the graph.
 */
#ifndef MOPT_MODEL_INT_H
#define MOPT_MODEL_INT_H

#include "mopt.h"
#include "onnx.pb-c.h"

/* String set with a scope chain (functions in onnx_io.c). */
typedef struct mopt_nameset {
  const char **slots;
  size_t cap, count;
  const struct mopt_nameset *parent;
} mopt_nameset;

/* How a listed weight is currently stored (set by the encoders). */
typedef enum {
  MOPT_WENC_PLAIN = 0, MOPT_WENC_DENSE, MOPT_WENC_F16, MOPT_WENC_QUANT, MOPT_WENC_LUT,
  MOPT_WENC_LOWRANK, MOPT_WENC_REMOVED
} mopt_wenc;

/* Internal twin of one mopt_weight. */
typedef struct mopt_wrec {
  Onnx__GraphProto *graph;     /* graph that owns the initializer / Constant node */
  Onnx__TensorProto *tensor;   /* the stored tensor while plain/dense; NULL once re-encoded */
  Onnx__NodeProto *node;       /* the Constant node (loc CONSTANT), NULL for initializers */
  Onnx__NodeProto *consumer;   /* consumer node found by the listing (may be NULL) */
  mopt_wenc enc;
  int lr_rewrite;               /* low rank as (X·A)·B: 1, or 2 when B is stored transposed */
} mopt_wrec;

/* Bytes of a streamed raw_data, [off, off + n) of it, written to dst; 0 or a MOPT_E* code. */
typedef int (*mopt_produce_fn)(void *ctx, uint64_t off, uint8_t *dst, size_t n);

/* One streamed raw_data: `at` is an inaccessible reservation of len bytes that stands in for
 * the data (raw_data.data == at), so an accidental read faults instead of returning garbage. */
typedef struct mopt_streamed {
  uint8_t *at;
  size_t len;
  mopt_produce_fn produce;
  void (*release)(void *ctx);
  void *ctx;
} mopt_streamed;

struct mopt_model {
  Onnx__ModelProto *pb;
  int64_t opset;               /* default-domain opset version, 0 if absent */
  /* weight list, built on first mopt_model_weights() call and kept stable afterwards */
  int listed;
  mopt_weight *w;
  mopt_wrec *wr;
  size_t nw;
  char **strs;                 /* strings owned by the list (names, graph paths) */
  size_t nstrs, capstrs;
  /* Every X such that the model (when listed) had a value named "X__mopt_…": encoding a
   * weight named X would create duplicate names, so the encoders refuse it. */
  mopt_nameset reserved;
  /* Zero-copy loads: TensorProto.raw_data may point into this read-only buffer (the mapped
   * model file). Such pointers must never be freed or written: free tensors and nodes with
   * mopt_int_free_tensor/_node, and call mopt_int_tensor_detach before replacing raw_data. */
  const uint8_t *borrow;
  size_t borrow_len;
  int borrow_mapped;           /* borrow is an mmap to unmap on destroy */
  int internalized;            /* external data was read in: borrow is not the whole model */
  /* streamed outputs (see mopt_model_allow_streaming) */
  int streaming;
  size_t stream_min;           /* payloads of at least this many bytes are streamed */
  mopt_streamed *streamed;
  size_t nstreamed, capstreamed;
};

/* ---- borrowed payloads (onnx_io.c) ---- */
/* 1 when p lies in the mapped input (the bytes the model was read from). */
int mopt_int_in_mapping(const mopt_model *m, const void *p);
/* 1 when p lies in the mapped input or is a streamed placeholder: never free or write it. */
int mopt_int_borrowed(const mopt_model *m, const void *p);
/* Makes t's raw_data a streamed one of len bytes produced by fn(ctx, ...); the model owns ctx
 * from then on (release(ctx) at destroy). On failure (MOPT_ENOMEM, or MOPT_EINVAL when the
 * model does not allow streaming or len is below its minimum) nothing changed and the caller
 * still owns ctx and computes the payload itself. */
int mopt_int_stream(mopt_model *m, Onnx__TensorProto *t, size_t len, mopt_produce_fn fn,
                    void (*release)(void *ctx), void *ctx);
/* Forgets a borrowed raw_data (sets it to NULL/0) so the tensor can be freed or refilled. */
void mopt_int_tensor_detach(const mopt_model *m, Onnx__TensorProto *t);
void mopt_int_free_tensor(const mopt_model *m, Onnx__TensorProto *t);
void mopt_int_free_node(const mopt_model *m, Onnx__NodeProto *n);
/* mopt_model_load that borrows payloads from buf (buf must outlive the model); used by the
 * fuzzer to check that the zero-copy path and the copying path agree. */
int mopt_int_load_borrowed(const uint8_t *buf, size_t len, const mopt_load_limits *lim,
                           mopt_model **out, mopt_diag *diag);

/* ---- tensor helpers (weights.c) ---- */
/* Element count of a tensor from its dims; -1 on negative dims or overflow. */
int64_t mopt_int_tensor_nelem(const Onnx__TensorProto *t);
/* Decodes any numeric tensor (raw_data little-endian or typed fields) to n floats. */
int mopt_int_tensor_to_f32(const Onnx__TensorProto *t, float *out, uint64_t n, mopt_diag *diag);
/* Decodes an integer tensor (int8..int64, uint*, bool, int4/uint4) to n int64 values. */
int mopt_int_tensor_to_i64(const Onnx__TensorProto *t, int64_t *out, uint64_t n, mopt_diag *diag);
/* Finds the value attribute "name" of a node, NULL if absent. */
Onnx__AttributeProto *mopt_int_node_attr(const Onnx__NodeProto *n, const char *name);
/* Keeps s alive as long as the model (takes ownership of a malloc'd string); NULL on ENOMEM. */
char *mopt_int_own(mopt_model *m, char *s);

/* ---- string set with scope chain (onnx_io.c) ---- */
int mopt_nameset_init(mopt_nameset *s, const mopt_nameset *parent);
void mopt_nameset_free(mopt_nameset *s);
/* Adds (pointer kept, not copied); 0 or MOPT_ENOMEM. */
int mopt_nameset_add(mopt_nameset *s, const char *name);
/* 1 if present in s or any parent. */
int mopt_nameset_has(const mopt_nameset *s, const char *name);

/* ---- encoders (encode.c) ---- */
/* Decodes an encoded weight by evaluating the rebuild nodes the encoder wrote. */
int mopt_int_eval_encoded(const mopt_model *m, const mopt_weight *w, float *out, mopt_diag *diag);
/* Evaluates the value `name` of graph g (an initializer, or a rebuild chain the encoders wrote
 * in a saved model) to n floats; MOPT_EUNSUPPORTED when it is neither or the count differs. */
int mopt_int_eval_value(const Onnx__GraphProto *g, const char *name, float *out, uint64_t n,
                        mopt_diag *diag);

#endif
