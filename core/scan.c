/* scan.c — validate a serialized ONNX model by streaming its protobuf wire format.
 *
 * The daemon validates every upload before acknowledging it, and an upload may be many GiB:
 * unpacking it with protobuf-c would hold every tensor in memory. This scanner walks the wire
 * format instead, guided by the generated message descriptors, with an explicit stack (so
 * hostile nesting cannot exhaust the C stack) and a small read buffer: tensor payloads
 * (raw_data, packed numbers) are skipped or counted, never kept. Only names are kept, to check
 * the graph: every node input defined, every value produced once, no cycles.
 *
 * Trade-off: it checks structure and sizes, not tensor values (a NaN weight is a valid model).
 * Memory is O(names + nodes), independent of the model's byte size.
 */
#include "mopt.h"
#include "onnx.pb-c.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SCAN_BUF (1u << 16)
#define SCAN_MAX_DEPTH_MSG 256   /* protobuf message nesting, whatever the graph depth */
#define SCAN_MAX_NAME (1u << 16)
#define SCAN_MAX_DIMS 64

/* ------------------------------------------------------------------ reader ---- */
typedef struct reader {
  int fd;                 /* -1 when reading from mem */
  const uint8_t *mem;
  uint64_t size;          /* total bytes */
  uint64_t pos;           /* absolute offset of the next byte */
  uint8_t buf[SCAN_BUF];
  uint64_t buf_off;       /* absolute offset of buf[0] */
  size_t buf_len;
} reader;

/* Makes at least min(want, size - pos) bytes available at pos; returns pointer or NULL on EOF. */
static const uint8_t *rd_peek(reader *r, size_t want, size_t *avail) {
  if (r->pos >= r->size) { *avail = 0; return NULL; }
  uint64_t left = r->size - r->pos;
  if (want > left) want = (size_t)left;
  if (r->fd < 0) { *avail = (size_t)left; return r->mem + r->pos; }
  if (r->pos >= r->buf_off && r->pos + want <= r->buf_off + r->buf_len) {
    *avail = (size_t)(r->buf_off + r->buf_len - r->pos);
    return r->buf + (r->pos - r->buf_off);
  }
  size_t n = 0;
  while (n < sizeof r->buf && r->pos + n < r->size) {
    ssize_t k = pread(r->fd, r->buf + n, sizeof r->buf - n, (off_t)(r->pos + n));
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    n += (size_t)k;
  }
  r->buf_off = r->pos;
  r->buf_len = n;
  if (n < want) { *avail = n; return n ? r->buf : NULL; }
  *avail = n;
  return r->buf;
}

static int rd_varint(reader *r, uint64_t *v) {
  size_t avail;
  const uint8_t *p = rd_peek(r, 10, &avail);
  uint64_t x = 0;
  for (size_t i = 0; i < 10; i++) {
    if (i >= avail) return -1;
    x |= (uint64_t)(p[i] & 0x7f) << (7 * i);
    if (!(p[i] & 0x80)) {
      if (i == 9 && p[i] > 1) return -1;
      r->pos += i + 1;
      *v = x;
      return 0;
    }
  }
  return -1;
}

static int rd_bytes(reader *r, void *dst, size_t n) {
  uint8_t *d = dst;
  while (n) {
    size_t avail;
    const uint8_t *p = rd_peek(r, n < SCAN_BUF ? n : SCAN_BUF, &avail);
    if (!p || !avail) return -1;
    size_t k = avail < n ? avail : n;
    memcpy(d, p, k);
    d += k; n -= k; r->pos += k;
  }
  return 0;
}

/* Counts varints in [pos, pos+len): bytes with the continuation bit clear. */
static int rd_count_varints(reader *r, uint64_t len, uint64_t *count) {
  uint64_t c = 0;
  while (len) {
    size_t avail;
    const uint8_t *p = rd_peek(r, len < SCAN_BUF ? (size_t)len : SCAN_BUF, &avail);
    if (!p || !avail) return -1;
    size_t k = avail < len ? avail : (size_t)len;
    for (size_t i = 0; i < k; i++) c += !(p[i] & 0x80);
    r->pos += k; len -= k;
  }
  *count = c;
  return 0;
}

/* ----------------------------------------------------------- name storage ---- */
typedef struct strtab {
  char *data; size_t len, cap;
} strtab;

static int64_t strtab_add(strtab *t, const char *s, size_t n) {
  if (t->len + n + 1 > t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 4096;
    while (cap < t->len + n + 1) cap *= 2;
    char *d = realloc(t->data, cap);
    if (!d) return -1;
    t->data = d; t->cap = cap;
  }
  memcpy(t->data + t->len, s, n);
  t->data[t->len + n] = 0;
  int64_t off = (int64_t)t->len;
  t->len += n + 1;
  return off;
}

typedef struct ivec { int64_t *v; size_t n, cap; } ivec;
static int ivec_push(ivec *a, int64_t x) {
  if (a->n == a->cap) {
    size_t cap = a->cap ? a->cap * 2 : 8;
    int64_t *v = realloc(a->v, cap * sizeof *v);
    if (!v) return -1;
    a->v = v; a->cap = cap;
  }
  a->v[a->n++] = x;
  return 0;
}

typedef struct snode {
  int64_t name, op;          /* strtab offsets */
  size_t in0, nin, out0, nout;   /* ranges in graph's edge arrays */
} snode;

typedef struct sgraph {
  int64_t parent;            /* graph index, -1 for the main graph */
  int64_t parent_node;       /* node index in parent graph */
  ivec inputs, inits;        /* strtab offsets */
  ivec ins, outs;            /* node input/output names, ranges per node */
  snode *nodes; size_t n_nodes, cap_nodes;
  int64_t name;
  int unchecked;             /* graphs of functions / training info: their scope is not ours */
} sgraph;

/* ------------------------------------------------------------------ frames ---- */
typedef enum { CTX_NONE = 0, CTX_INITIALIZER, CTX_SPARSE_INITIALIZER, CTX_CONSTANT_VALUE,
               CTX_OTHER_TENSOR } tensor_ctx;

typedef struct tstate {        /* tensor being scanned */
  int64_t dims[SCAN_MAX_DIMS];
  size_t ndim;
  int has_dtype; int32_t dtype;
  int64_t name;
  uint64_t raw_len; int has_raw;
  uint64_t n_float, n_int32, n_int64, n_double, n_uint64, n_string;
  int external;
  char ext_location[512]; int has_location;
  uint64_t ext_offset, ext_length; int has_length;
  tensor_ctx ctx;
  uint64_t start;              /* byte offset of the field (key) holding the message */
  uint64_t body, body_end;     /* byte range of the message body */
  uint64_t raw_off;            /* byte offset of raw_data's payload */
} tstate;

typedef struct frame {
  const ProtobufCMessageDescriptor *desc;
  uint64_t end;
  int64_t graph;               /* graph index for Graph/Node/Attribute/Tensor frames */
  int64_t node;                /* node index (Node and its Attribute frames) */
  int attr_is_value;           /* Attribute frame: name == "value" */
  int attr_in_constant;
  int64_t tensor;              /* index into tensor stack when desc is TensorProto */
  int entry_key;               /* StringStringEntry of a tensor: 1 location 2 offset 3 length */
  char entry_value[512];
  int opset_has_version; int64_t opset_version; char opset_domain[64];
} frame;

typedef struct scan {
  reader *r;
  const mopt_load_limits *lim;
  mopt_model_info *info;
  mopt_diag *diag;
  strtab names;
  sgraph *graphs; size_t n_graphs, cap_graphs;
  frame stack[SCAN_MAX_DEPTH_MSG];
  size_t depth;
  tstate tensors[SCAN_MAX_DEPTH_MSG / 4 + 4];
  size_t n_tensors;
  uint64_t total_bytes;
  int seen_graph;
  int64_t cur_node_op_is_constant;
  mopt_scan_tensor_fn on_tensor;
  void *on_tensor_ctx;
  uint64_t tensor_ordinal;
} scan;

static int fail(scan *s, int err, uint64_t off, const char *fmt, const char *a, const char *b) {
  char where[64];
  snprintf(where, sizeof where, "byte %llu", (unsigned long long)off);
  return mopt_diag_set(s->diag, err, where, fmt, a ? a : "", b ? b : "");
}

static const char *nm(const scan *s, int64_t off) { return off < 0 ? "" : s->names.data + off; }

static int64_t graph_new(scan *s, int64_t parent, int64_t parent_node) {
  if (s->n_graphs == s->cap_graphs) {
    size_t cap = s->cap_graphs ? s->cap_graphs * 2 : 4;
    sgraph *g = realloc(s->graphs, cap * sizeof *g);
    if (!g) return -1;
    s->graphs = g; s->cap_graphs = cap;
  }
  sgraph *g = &s->graphs[s->n_graphs];
  memset(g, 0, sizeof *g);
  g->parent = parent; g->parent_node = parent_node; g->name = -1;
  return (int64_t)s->n_graphs++;
}

static int64_t node_new(scan *s, int64_t gi) {
  sgraph *g = &s->graphs[gi];
  if (g->n_nodes == g->cap_nodes) {
    size_t cap = g->cap_nodes ? g->cap_nodes * 2 : 16;
    snode *n = realloc(g->nodes, cap * sizeof *n);
    if (!n) return -1;
    g->nodes = n; g->cap_nodes = cap;
  }
  snode *n = &g->nodes[g->n_nodes];
  memset(n, 0, sizeof *n);
  n->name = -1; n->op = -1;
  n->in0 = g->ins.n; n->out0 = g->outs.n;
  return (int64_t)g->n_nodes++;
}

/* Reads a length-delimited string of len bytes into the name table (refuses huge names). */
static int64_t read_name(scan *s, uint64_t len) {
  if (len > SCAN_MAX_NAME) return -2;
  char tmp[512];
  char *buf = len < sizeof tmp ? tmp : malloc(len + 1);
  if (!buf) return -1;
  if (rd_bytes(s->r, buf, (size_t)len)) { if (buf != tmp) free(buf); return -3; }
  if (memchr(buf, 0, (size_t)len)) { if (buf != tmp) free(buf); return -4; }
  int64_t off = strtab_add(&s->names, buf, (size_t)len);
  if (buf != tmp) free(buf);
  return off;
}

static uint64_t dtype_bytes(int32_t dt, uint64_t n, int *ok) {
  int bits = mopt_dtype_bits(dt);
  *ok = bits > 0;
  if (bits == 4) return (n + 1) / 2;
  return n * (uint64_t)(bits / 8);
}

/* Checks an external-data location against the bundle rules and the file's size. */
static int check_external(scan *s, tstate *t, uint64_t need) {
  const char *tn = nm(s, t->name);
  if (!t->has_location)
    return fail(s, MOPT_EMODEL, t->start, "tensor '%s' is external but has no location%s", tn, NULL);
  const char *loc = t->ext_location;
  if (loc[0] == '/' || strstr(loc, "..") || strchr(loc, '\\'))
    return fail(s, MOPT_EMODEL, t->start,
                "tensor '%s': external data location '%s' is absolute or leaves the bundle", tn, loc);
  if (!s->lim || !s->lim->bundle_dir)
    return fail(s, MOPT_EUNSUPPORTED, t->start,
                "tensor '%s' keeps its data in external file '%s'; a single-file model cannot "
                "refer to other files", tn, loc);
  int dir = open(s->lim->bundle_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return fail(s, MOPT_EIO, t->start, "cannot open bundle directory%s%s", NULL, NULL);
  /* Walk component by component refusing symlinks anywhere on the path. */
  char path[512];
  snprintf(path, sizeof path, "%s", loc);
  char *save = NULL, *comp = strtok_r(path, "/", &save);
  int fd = dir;
  while (comp) {
    char *next = strtok_r(NULL, "/", &save);
    int flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC | (next ? O_DIRECTORY : 0);
    int nfd = openat(fd, comp, flags);
    close(fd);
    if (nfd < 0) {
      return fail(s, errno == ELOOP ? MOPT_EMODEL : MOPT_EMODEL, t->start,
                  errno == ELOOP ? "tensor '%s': external data path '%s' goes through a symlink"
                                 : "tensor '%s': external data file '%s' not found in the bundle",
                  tn, loc);
    }
    fd = nfd;
    comp = next;
  }
  struct stat st;
  int rc = fstat(fd, &st);
  close(fd);
  if (rc || !S_ISREG(st.st_mode))
    return fail(s, MOPT_EMODEL, t->start, "tensor '%s': external data '%s' is not a regular file",
                tn, loc);
  uint64_t len = t->has_length ? t->ext_length : (uint64_t)st.st_size - t->ext_offset;
  if (t->ext_offset > (uint64_t)st.st_size || len > (uint64_t)st.st_size - t->ext_offset)
    return fail(s, MOPT_EMODEL, t->start,
                "tensor '%s': external data range lies beyond the end of '%s'", tn, loc);
  if (len != need) {
    char msg[96];
    snprintf(msg, sizeof msg, "%llu bytes, shape needs %llu", (unsigned long long)len,
             (unsigned long long)need);
    return fail(s, MOPT_EMODEL, t->start, "tensor '%s': external data holds %s", tn, msg);
  }
  return 0;
}

/* Validates a finished tensor: dtype, dims, data size. Counts weights. */
static int tensor_end(scan *s, tstate *t) {
  const char *tn = nm(s, t->name);
  if (!t->has_dtype || t->dtype <= 0 || t->dtype >= MOPT_DT_COUNT_)
    return fail(s, MOPT_EMODEL, t->start, "tensor '%s' has an unknown data type%s", tn, NULL);
  uint64_t n = 1;
  uint64_t max_elems = s->lim && s->lim->max_tensor_elems ? s->lim->max_tensor_elems : (1ull << 34);
  for (size_t i = 0; i < t->ndim; i++) {
    if (t->dims[i] < 0)
      return fail(s, MOPT_EMODEL, t->start, "tensor '%s' has a negative dimension%s", tn, NULL);
    if (__builtin_mul_overflow(n, (uint64_t)t->dims[i], &n))
      return fail(s, MOPT_ELIMIT, t->start, "tensor '%s': product of dims overflows 64 bits%s", tn,
                  NULL);
  }
  if (n > max_elems) {
    char msg[64];
    snprintf(msg, sizeof msg, "%llu elements (limit %llu)", (unsigned long long)n,
             (unsigned long long)max_elems);
    return fail(s, MOPT_ELIMIT, t->start, "tensor '%s' has %s", tn, msg);
  }
  if (t->dtype == MOPT_DT_STRING) {
    if (t->n_string != n && !(n == 0 && t->n_string == 0))
      return fail(s, MOPT_EMODEL, t->start, "tensor '%s': string_data count does not match shape%s",
                  tn, NULL);
    return 0;
  }
  int ok;
  uint64_t need = dtype_bytes(t->dtype, n, &ok);
  if (!ok) return fail(s, MOPT_EMODEL, t->start, "tensor '%s' has an unsupported data type%s", tn, NULL);
  int bits = mopt_dtype_bits(t->dtype);
  int complex = t->dtype == MOPT_DT_COMPLEX64 || t->dtype == MOPT_DT_COMPLEX128;
  uint64_t typed_expect = bits == 4 ? (n + 1) / 2 : n * (complex ? 2 : 1);
  char msg[160];
  if (t->external) {
    int rc = check_external(s, t, need);
    if (rc) return rc;
  } else if (t->has_raw) {
    if (t->raw_len != need) {
      snprintf(msg, sizeof msg, "raw_data holds %llu bytes but shape and %s need %llu",
               (unsigned long long)t->raw_len, mopt_dtype_name(t->dtype), (unsigned long long)need);
      return fail(s, MOPT_EMODEL, t->start, "tensor '%s': %s", tn, msg);
    }
  } else {
    uint64_t got = 0;
    const char *field = "";
    switch (t->dtype) {
    case MOPT_DT_FLOAT: case MOPT_DT_COMPLEX64: got = t->n_float; field = "float_data"; break;
    case MOPT_DT_INT64: got = t->n_int64; field = "int64_data"; break;
    case MOPT_DT_DOUBLE: case MOPT_DT_COMPLEX128: got = t->n_double; field = "double_data"; break;
    case MOPT_DT_UINT32: case MOPT_DT_UINT64: got = t->n_uint64; field = "uint64_data"; break;
    default: got = t->n_int32; field = "int32_data"; break;
    }
    if (got != typed_expect) {
      snprintf(msg, sizeof msg, "%s holds %llu values but the shape needs %llu", field,
               (unsigned long long)got, (unsigned long long)typed_expect);
      return fail(s, MOPT_EMODEL, t->start, "tensor '%s': %s", tn, msg);
    }
  }
  uint64_t max_total = s->lim && s->lim->max_total_bytes ? s->lim->max_total_bytes : (64ull << 30);
  if (__builtin_add_overflow(s->total_bytes, need, &s->total_bytes) || s->total_bytes > max_total)
    return fail(s, MOPT_ELIMIT, t->start, "tensor '%s': tensors exceed the total size limit%s", tn,
                NULL);
  if (s->on_tensor) {
    mopt_scan_tensor st;
    memset(&st, 0, sizeof st);
    st.name = tn;
    st.dtype = t->dtype;
    st.ndim = (int32_t)t->ndim;
    st.dims = t->dims;
    st.nelem = n;
    st.location = t->ctx == CTX_INITIALIZER ? MOPT_LOC_INITIALIZER
                : t->ctx == CTX_CONSTANT_VALUE ? MOPT_LOC_CONSTANT : -1;
    st.ordinal = s->tensor_ordinal++;
    st.msg_offset = t->body;
    st.msg_length = t->body_end - t->body;
    st.raw_offset = t->has_raw && !t->external ? t->raw_off : 0;
    st.raw_length = t->has_raw && !t->external ? t->raw_len : 0;
    int crc = s->on_tensor(&st, s->on_tensor_ctx);
    if (crc) return crc;
  }
  if (t->ctx == CTX_INITIALIZER || t->ctx == CTX_CONSTANT_VALUE) {
    s->info->weight_count++;
    s->info->param_count += n;
    s->info->weight_bytes += need;
  }
  return 0;
}

/* --------------------------------------------------------- graph checks ---- */
typedef struct nameset { int64_t *slots; int64_t *vals; size_t cap, n; const strtab *t; } nameset;

static uint64_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ull;
  while (*s) { h ^= (uint8_t)*s++; h *= 1099511628211ull; }
  return h;
}

static int nameset_init(nameset *ns, const strtab *t, size_t expect) {
  size_t cap = 16;
  while (cap < expect * 2 + 16) cap *= 2;
  ns->slots = malloc(cap * sizeof *ns->slots);
  ns->vals = malloc(cap * sizeof *ns->vals);
  if (!ns->slots || !ns->vals) { free(ns->slots); free(ns->vals); return -1; }
  for (size_t i = 0; i < cap; i++) ns->slots[i] = -1;
  ns->cap = cap; ns->n = 0; ns->t = t;
  return 0;
}
static void nameset_free(nameset *ns) { free(ns->slots); free(ns->vals); }
/* Inserts; returns 1 if already present (value unchanged), 0 if inserted. */
static int nameset_put(nameset *ns, int64_t name, int64_t val, int64_t *old) {
  const char *key = ns->t->data + name;
  size_t i = hash_str(key) & (ns->cap - 1);
  while (ns->slots[i] >= 0) {
    if (!strcmp(ns->t->data + ns->slots[i], key)) { if (old) *old = ns->vals[i]; return 1; }
    i = (i + 1) & (ns->cap - 1);
  }
  ns->slots[i] = name; ns->vals[i] = val; ns->n++;
  return 0;
}
static int nameset_get(const nameset *ns, const char *key, int64_t *val) {
  size_t i = hash_str(key) & (ns->cap - 1);
  while (ns->slots[i] >= 0) {
    if (!strcmp(ns->t->data + ns->slots[i], key)) { if (val) *val = ns->vals[i]; return 1; }
    i = (i + 1) & (ns->cap - 1);
  }
  return 0;
}

/* Producer maps of every graph, built before checking (a subgraph may use any outer value). */
static int graphs_check(scan *s) {
  int rc = 0;
  nameset *sets = calloc(s->n_graphs ? s->n_graphs : 1, sizeof *sets);
  if (!sets) return MOPT_ENOMEM;
  size_t built = 0;
  for (; built < s->n_graphs; built++) {
    sgraph *g = &s->graphs[built];
    if (nameset_init(&sets[built], &s->names, g->inputs.n + g->inits.n + g->outs.n)) {
      rc = MOPT_ENOMEM; goto out;
    }
    for (size_t i = 0; i < g->inputs.n; i++) nameset_put(&sets[built], g->inputs.v[i], -1, NULL);
    for (size_t i = 0; i < g->inits.n; i++) nameset_put(&sets[built], g->inits.v[i], -1, NULL);
    for (size_t ni = 0; ni < g->n_nodes; ni++) {
      snode *n = &g->nodes[ni];
      for (size_t k = 0; k < n->nout; k++) {
        int64_t o = g->outs.v[n->out0 + k];
        if (!nm(s, o)[0]) continue;
        int64_t old;
        if (nameset_put(&sets[built], o, (int64_t)ni, &old) && old >= 0) {
          char where[300];
          snprintf(where, sizeof where, "node '%s' (%s)", nm(s, n->name), nm(s, n->op));
          rc = mopt_diag_set(s->diag, MOPT_EMODEL, where,
                             "value '%s' is produced by more than one node", nm(s, o));
          built++;
          goto out;
        }
      }
    }
  }
  for (size_t gi = 0; gi < s->n_graphs && !rc; gi++) {
    sgraph *g = &s->graphs[gi];
    if (g->unchecked) continue;
    /* in-degree per node counting only edges from nodes of this graph */
    size_t *indeg = calloc(g->n_nodes + 1, sizeof *indeg);
    size_t *queue = malloc((g->n_nodes + 1) * sizeof *queue);
    /* consumers adjacency: for each edge producer → consumer */
    size_t *adj_cnt = calloc(g->n_nodes + 1, sizeof *adj_cnt);
    if (!indeg || !queue || !adj_cnt) { free(indeg); free(queue); free(adj_cnt); rc = MOPT_ENOMEM; break; }
    for (size_t ni = 0; ni < g->n_nodes && !rc; ni++) {
      snode *n = &g->nodes[ni];
      for (size_t k = 0; k < n->nin; k++) {
        const char *in = nm(s, g->ins.v[n->in0 + k]);
        if (!in[0]) continue;   /* optional input left out */
        int64_t prod;
        if (nameset_get(&sets[gi], in, &prod)) {
          if (prod >= 0) { indeg[ni]++; adj_cnt[prod]++; }
          continue;
        }
        int found = 0;
        for (int64_t up = g->parent; up >= 0 && !found; up = s->graphs[up].parent)
          found = nameset_get(&sets[up], in, NULL);
        if (!found) {
          char where[300];
          snprintf(where, sizeof where, "node '%s' (%s)", nm(s, n->name), nm(s, n->op));
          rc = mopt_diag_set(s->diag, MOPT_EMODEL, where,
                             "input '%s' is not a graph input, an initializer or the output of "
                             "any node", in);
        }
      }
    }
    if (!rc) {
      /* Kahn's algorithm over this graph's nodes: edges are re-derived per consumer input. */
      size_t *off = calloc(g->n_nodes + 1, sizeof *off);
      size_t total = 0;
      for (size_t i = 0; i < g->n_nodes; i++) { off[i] = total; total += adj_cnt[i]; }
      off[g->n_nodes] = total;
      size_t *edges = malloc((total + 1) * sizeof *edges);
      size_t *fill = calloc(g->n_nodes + 1, sizeof *fill);
      if (!off || !edges || !fill) rc = MOPT_ENOMEM;
      for (size_t ni = 0; ni < g->n_nodes && !rc; ni++) {
        snode *n = &g->nodes[ni];
        for (size_t k = 0; k < n->nin; k++) {
          const char *in = nm(s, g->ins.v[n->in0 + k]);
          int64_t prod;
          if (in[0] && nameset_get(&sets[gi], in, &prod) && prod >= 0)
            edges[off[prod] + fill[prod]++] = ni;
        }
      }
      size_t head = 0, tail = 0, done = 0;
      for (size_t i = 0; i < g->n_nodes && !rc; i++) if (!indeg[i]) queue[tail++] = i;
      while (head < tail && !rc) {
        size_t u = queue[head++];
        done++;
        for (size_t e = off[u]; e < off[u] + adj_cnt[u]; e++)
          if (--indeg[edges[e]] == 0) queue[tail++] = edges[e];
      }
      if (!rc && done != g->n_nodes) {
        for (size_t i = 0; i < g->n_nodes; i++) {
          if (indeg[i]) {
            char where[300];
            snprintf(where, sizeof where, "node '%s' (%s)", nm(s, g->nodes[i].name),
                     nm(s, g->nodes[i].op));
            rc = mopt_diag_set(s->diag, MOPT_EMODEL, where,
                               "the graph has a cycle through this node");
            break;
          }
        }
      }
      /* ONNX requires nodes in topological order (and the optimizer relies on it): an acyclic
       * graph whose nodes use a value before the node producing it is refused too. */
      for (size_t ni = 0; ni < g->n_nodes && !rc; ni++) {
        snode *n = &g->nodes[ni];
        for (size_t k = 0; k < n->nin && !rc; k++) {
          const char *in = nm(s, g->ins.v[n->in0 + k]);
          int64_t prod;
          if (in[0] && nameset_get(&sets[gi], in, &prod) && prod >= (int64_t)ni) {
            char where[300];
            snprintf(where, sizeof where, "node '%s' (%s)", nm(s, n->name), nm(s, n->op));
            rc = mopt_diag_set(s->diag, MOPT_EMODEL, where,
                               "input '%s' is used before node '%s' produces it: nodes must be "
                               "topologically sorted", in, nm(s, g->nodes[prod].name));
          }
        }
      }
      free(off); free(edges); free(fill);
    }
    free(indeg); free(queue); free(adj_cnt);
  }
out:
  for (size_t i = 0; i < built; i++) nameset_free(&sets[i]);
  free(sets);
  return rc;
}

/* ------------------------------------------------------------- main walk ---- */
#define D(name) (&onnx__##name##__descriptor)

static int push(scan *s, const ProtobufCMessageDescriptor *desc, uint64_t end, frame *parent) {
  if (s->depth >= SCAN_MAX_DEPTH_MSG)
    return fail(s, MOPT_ELIMIT, s->r->pos, "messages nested deeper than the limit%s%s", NULL, NULL);
  frame *f = &s->stack[s->depth++];
  memset(f, 0, sizeof *f);
  f->desc = desc; f->end = end;
  f->graph = parent ? parent->graph : -1;
  f->node = parent ? parent->node : -1;
  f->tensor = -1;
  return 0;
}

/* Called when a message ends. */
static int pop(scan *s) {
  frame *f = &s->stack[s->depth - 1];
  frame *parent = s->depth >= 2 ? &s->stack[s->depth - 2] : NULL;
  int rc = 0;
  if (f->desc == D(tensor_proto)) {
    tstate *t = &s->tensors[f->tensor];
    rc = tensor_end(s, t);
    if (!rc && (t->ctx == CTX_INITIALIZER || t->ctx == CTX_SPARSE_INITIALIZER) && f->graph >= 0 &&
        t->name >= 0 && ivec_push(&s->graphs[f->graph].inits, t->name))
      rc = MOPT_ENOMEM;
    s->n_tensors--;
  } else if (f->desc == D(operator_set_id_proto) && parent && parent->desc == D(model_proto)) {
    mopt_model_info *in = s->info;
    if (in->n_opsets < sizeof in->opsets / sizeof in->opsets[0]) {
      snprintf(in->opsets[in->n_opsets].domain, sizeof in->opsets[0].domain, "%s", f->opset_domain);
      in->opsets[in->n_opsets].version = f->opset_version;
      in->n_opsets++;
    }
    if (!f->opset_domain[0] || !strcmp(f->opset_domain, "ai.onnx")) in->default_opset = f->opset_version;
  } else if (f->desc == D(string_string_entry_proto) && parent && parent->desc == D(tensor_proto)) {
    tstate *t = &s->tensors[parent->tensor];
    if (f->entry_key == 1) {
      memcpy(t->ext_location, f->entry_value, sizeof t->ext_location);   /* same size, NUL-ended */
      t->has_location = 1;
    } else if (f->entry_key == 2 || f->entry_key == 3) {
      char *e;
      errno = 0;
      unsigned long long v = strtoull(f->entry_value, &e, 10);
      if (errno || *e || !f->entry_value[0])
        rc = fail(s, MOPT_EMODEL, s->r->pos, "tensor '%s': external data %s is not a number",
                  nm(s, t->name), f->entry_key == 2 ? "offset" : "length");
      if (f->entry_key == 2) t->ext_offset = v; else { t->ext_length = v; t->has_length = 1; }
    }
  } else if (f->desc == D(node_proto) && f->graph >= 0 && f->node >= 0) {
    sgraph *g = &s->graphs[f->graph];
    snode *n = &g->nodes[f->node];
    n->nin = g->ins.n - n->in0;
    n->nout = g->outs.n - n->out0;
    s->info->node_count++;
  }
  s->depth--;
  return rc;
}

/* Handles a length-delimited field of frame f. Returns 0, or an error. */
static int field_bytes(scan *s, frame *f, const ProtobufCFieldDescriptor *fd, uint64_t len,
                       uint64_t fstart) {
  reader *r = s->r;
  uint64_t end = r->pos + len;
  if (fd && fd->type == PROTOBUF_C_TYPE_MESSAGE) {
    const ProtobufCMessageDescriptor *sub = fd->descriptor;
    int rc = push(s, sub, end, f);
    if (rc) return rc;
    frame *c = &s->stack[s->depth - 1];
    if (sub == D(graph_proto)) {
      int64_t gi = graph_new(s, f->desc == D(model_proto) ? -1 : f->graph, f->node);
      if (gi < 0) return MOPT_ENOMEM;
      c->graph = gi;
      c->node = -1;
      s->graphs[gi].unchecked =
          !(f->desc == D(model_proto) || (f->desc == D(attribute_proto) && f->node >= 0 &&
                                          !s->graphs[f->graph].unchecked));
      if (f->desc == D(model_proto)) s->seen_graph = 1;
      if (f->desc == D(attribute_proto) || f->desc == D(model_proto)) {
        uint64_t max_depth = s->lim && s->lim->max_graph_depth ? s->lim->max_graph_depth : 32;
        uint64_t d = 0;
        for (int64_t up = s->graphs[gi].parent; up >= 0; up = s->graphs[up].parent) d++;
        if (d > max_depth)
          return fail(s, MOPT_ELIMIT, fstart, "subgraphs nested deeper than the limit%s%s", NULL, NULL);
      }
    } else if (sub == D(node_proto) && f->desc == D(graph_proto)) {
      c->node = node_new(s, f->graph);
      if (c->node < 0) return MOPT_ENOMEM;
    } else if (sub == D(tensor_proto)) {
      if (s->n_tensors >= sizeof s->tensors / sizeof s->tensors[0])
        return fail(s, MOPT_ELIMIT, fstart, "tensors nested deeper than the limit%s%s", NULL, NULL);
      tstate *t = &s->tensors[s->n_tensors];
      memset(t, 0, sizeof *t);
      t->name = -1;
      t->start = fstart;
      t->body = r->pos;
      t->body_end = end;
      if (f->desc == D(graph_proto) && !strcmp(fd->name, "initializer")) t->ctx = CTX_INITIALIZER;
      else if (f->desc == D(sparse_tensor_proto) && !strcmp(fd->name, "values") && s->depth >= 3 &&
               s->stack[s->depth - 3].desc == D(graph_proto))
        t->ctx = CTX_SPARSE_INITIALIZER;
      else if (f->desc == D(attribute_proto) && f->attr_is_value && f->attr_in_constant &&
               !strcmp(fd->name, "t"))
        t->ctx = CTX_CONSTANT_VALUE;
      else t->ctx = CTX_OTHER_TENSOR;
      c->tensor = (int64_t)s->n_tensors++;
    } else if (sub == D(attribute_proto)) {
      if (f->desc == D(node_proto) && f->node >= 0) {
        snode *n = &s->graphs[f->graph].nodes[f->node];
        c->attr_in_constant = n->op >= 0 && !strcmp(nm(s, n->op), "Constant");
      }
    }
    return 0;
  }
  /* Not a sub-message: strings, bytes, packed repeated numbers. */
  const char *name = fd ? fd->name : "";
  if (f->desc == D(tensor_proto) && fd) {
    tstate *t = &s->tensors[f->tensor];
    switch (fd->id) {
    case 9: t->raw_len = len; t->raw_off = r->pos; t->has_raw = 1; r->pos = end; return 0; /* raw_data */
    case 4: t->n_float += len / 4; if (len % 4) goto bad_packed; r->pos = end; return 0;   /* float_data */
    case 10: t->n_double += len / 8; if (len % 8) goto bad_packed; r->pos = end; return 0; /* double_data */
    case 5: { uint64_t c; if (rd_count_varints(r, len, &c)) goto trunc; t->n_int32 += c; return 0; }
    case 7: { uint64_t c; if (rd_count_varints(r, len, &c)) goto trunc; t->n_int64 += c; return 0; }
    case 11: { uint64_t c; if (rd_count_varints(r, len, &c)) goto trunc; t->n_uint64 += c; return 0; }
    case 6: t->n_string++; r->pos = end; return 0;                                      /* string_data */
    case 1: {                                                                           /* packed dims */
      while (r->pos < end) {
        uint64_t v;
        if (rd_varint(r, &v) || r->pos > end) goto trunc;
        if (t->ndim >= SCAN_MAX_DIMS)
          return fail(s, MOPT_ELIMIT, fstart, "tensor '%s' has more than 64 dimensions%s",
                      nm(s, t->name), NULL);
        t->dims[t->ndim++] = (int64_t)v;
      }
      return 0;
    }
    case 8: {                                                                           /* name */
      int64_t o = read_name(s, len);
      if (o < 0) goto badname;
      t->name = o;
      return 0;
    }
    default: r->pos = end; return 0;
    }
  }
  if (f->desc == D(node_proto) && fd && f->graph >= 0 && f->node >= 0 &&
      (fd->id == 1 || fd->id == 2 || fd->id == 3 || fd->id == 4)) {
    int64_t o = read_name(s, len);
    if (o < 0) goto badname;
    sgraph *g = &s->graphs[f->graph];
    snode *n = &g->nodes[f->node];
    if (fd->id == 1) { if (ivec_push(&g->ins, o)) return MOPT_ENOMEM; }
    else if (fd->id == 2) { if (ivec_push(&g->outs, o)) return MOPT_ENOMEM; }
    else if (fd->id == 3) n->name = o;
    else n->op = o;
    return 0;
  }
  if (f->desc == D(value_info_proto) && fd && fd->id == 1 && s->depth >= 2 && f->graph >= 0 &&
      s->stack[s->depth - 2].desc == D(graph_proto)) {
    frame *gf = &s->stack[s->depth - 2];
    (void)gf;
    int64_t o = read_name(s, len);
    if (o < 0) goto badname;
    /* Only graph inputs define values; outputs/value_info only describe them. The frame
     * remembers which list it came from through its field id (set by the graph frame). */
    if (f->entry_key == 11 && ivec_push(&s->graphs[f->graph].inputs, o)) return MOPT_ENOMEM;
    return 0;
  }
  if (f->desc == D(attribute_proto) && fd && fd->id == 1) {
    char buf[16] = {0};
    if (len < sizeof buf) {
      if (rd_bytes(r, buf, (size_t)len)) goto trunc;
      f->attr_is_value = !strcmp(buf, "value");
    } else r->pos = end;
    return 0;
  }
  if (f->desc == D(operator_set_id_proto) && fd && fd->id == 1) {
    if (len >= sizeof f->opset_domain) { r->pos = end; return 0; }
    if (rd_bytes(r, f->opset_domain, (size_t)len)) goto trunc;
    f->opset_domain[len] = 0;
    return 0;
  }
  if (f->desc == D(model_proto) && fd && (fd->id == 2 || fd->id == 3)) {
    char *dst = fd->id == 2 ? s->info->producer_name : s->info->producer_version;
    size_t cap = fd->id == 2 ? sizeof s->info->producer_name : sizeof s->info->producer_version;
    size_t take = len < cap - 1 ? (size_t)len : cap - 1;
    if (rd_bytes(r, dst, take)) goto trunc;
    dst[take] = 0;
    r->pos = end;
    return 0;
  }
  if (f->desc == D(string_string_entry_proto) && fd && s->depth >= 2 &&
      s->stack[s->depth - 2].desc == D(tensor_proto)) {
    char buf[512];
    if (len >= sizeof buf) {
      return fail(s, MOPT_EMODEL, fstart, "external data entry longer than 511 bytes%s%s", NULL, NULL);
    }
    if (rd_bytes(r, buf, (size_t)len)) goto trunc;
    buf[len] = 0;
    if (fd->id == 1) {
      f->entry_key = !strcmp(buf, "location") ? 1 : !strcmp(buf, "offset") ? 2
                   : !strcmp(buf, "length") ? 3 : 0;
    } else {
      snprintf(f->entry_value, sizeof f->entry_value, "%s", buf);
    }
    return 0;
  }
  (void)name;
  r->pos = end;
  return 0;
bad_packed:
  return fail(s, MOPT_EMODEL, fstart, "packed field '%s' has a length that is not a multiple of "
              "its element size%s", fd->name, NULL);
trunc:
  return fail(s, MOPT_EPARSE, fstart, "truncated field '%s'%s", fd ? fd->name : "?", NULL);
badname:
  return fail(s, MOPT_EPARSE, fstart, "field '%s' holds an invalid or oversized string%s",
              fd ? fd->name : "?", NULL);
}

static int scan_run(scan *s) {
  reader *r = s->r;
  int rc = push(s, D(model_proto), r->size, NULL);
  if (rc) return rc;
  while (s->depth) {
    frame *f = &s->stack[s->depth - 1];
    if (r->pos == f->end) {
      rc = pop(s);
      if (rc) return rc;
      continue;
    }
    if (r->pos > f->end)
      return fail(s, MOPT_EPARSE, r->pos, "a %s message overruns its parent%s",
                  f->desc->short_name, NULL);
    uint64_t fstart = r->pos;
    uint64_t key;
    if (rd_varint(r, &key) || r->pos > f->end)
      return fail(s, MOPT_EPARSE, fstart, "truncated or malformed field key in %s%s",
                  f->desc->short_name, NULL);
    uint32_t wt = (uint32_t)(key & 7);
    uint64_t num = key >> 3;
    if (num == 0 || num > 536870911u)
      return fail(s, MOPT_EPARSE, fstart, "invalid field number in %s%s", f->desc->short_name, NULL);
    const ProtobufCFieldDescriptor *fd =
        protobuf_c_message_descriptor_get_field(f->desc, (unsigned)num);
    uint64_t v;
    switch (wt) {
    case 0:
      if (rd_varint(r, &v) || r->pos > f->end)
        return fail(s, MOPT_EPARSE, fstart, "truncated varint in %s%s", f->desc->short_name, NULL);
      if (fd && fd->type == PROTOBUF_C_TYPE_MESSAGE)
        return fail(s, MOPT_EPARSE, fstart, "field '%s' has the wrong wire type%s", fd->name, NULL);
      if (f->desc == D(model_proto) && num == 1) s->info->ir_version = (int64_t)v;
      else if (f->desc == D(operator_set_id_proto) && num == 2) {
        f->opset_version = (int64_t)v; f->opset_has_version = 1;
      } else if (f->desc == D(tensor_proto)) {
        tstate *t = &s->tensors[f->tensor];
        if (num == 2) { t->has_dtype = 1; t->dtype = (int32_t)v; }
        else if (num == 1) {
          if (t->ndim >= SCAN_MAX_DIMS)
            return fail(s, MOPT_ELIMIT, fstart, "tensor '%s' has more than 64 dimensions%s",
                        nm(s, t->name), NULL);
          t->dims[t->ndim++] = (int64_t)v;
        } else if (num == 14) t->external = v == 1;
        else if (num == 5) t->n_int32++;
        else if (num == 7) t->n_int64++;
        else if (num == 11) t->n_uint64++;
      }
      break;
    case 1:
      if (f->end - r->pos < 8)
        return fail(s, MOPT_EPARSE, fstart, "truncated fixed64 in %s%s", f->desc->short_name, NULL);
      if (f->desc == D(tensor_proto) && num == 10) s->tensors[f->tensor].n_double++;
      r->pos += 8;
      break;
    case 5:
      if (f->end - r->pos < 4)
        return fail(s, MOPT_EPARSE, fstart, "truncated fixed32 in %s%s", f->desc->short_name, NULL);
      if (f->desc == D(tensor_proto) && num == 4) s->tensors[f->tensor].n_float++;
      r->pos += 4;
      break;
    case 2: {
      uint64_t len;
      if (rd_varint(r, &len) || r->pos > f->end || len > f->end - r->pos) {
        char msg[96];
        snprintf(msg, sizeof msg, "%s (file is %llu bytes)", fd ? fd->name : "unknown field",
                 (unsigned long long)r->size);
        return fail(s, MOPT_EPARSE, fstart,
                    "truncated model: field %s runs past the end of its message%s", msg, NULL);
      }
      if (fd && fd->type != PROTOBUF_C_TYPE_MESSAGE && fd->type != PROTOBUF_C_TYPE_STRING &&
          fd->type != PROTOBUF_C_TYPE_BYTES && fd->label != PROTOBUF_C_LABEL_REPEATED)
        return fail(s, MOPT_EPARSE, fstart, "field '%s' has the wrong wire type%s", fd->name, NULL);
      int is_input_vi = fd && f->desc == D(graph_proto) && fd->id == 11;
      rc = field_bytes(s, f, fd, len, fstart);
      if (rc) return rc;
      if (is_input_vi && s->stack[s->depth - 1].desc == D(value_info_proto))
        s->stack[s->depth - 1].entry_key = 11;
      break;
    }
    default:
      return fail(s, MOPT_EPARSE, fstart, "unsupported wire type in %s (not a protobuf model?)%s",
                  f->desc->short_name, NULL);
    }
  }
  if (!s->seen_graph)
    return mopt_diag_set(s->diag, MOPT_EPARSE, "ModelProto.graph",
                         "not an ONNX model: no graph found (%llu bytes)",
                         (unsigned long long)r->size);
  if (s->info->ir_version <= 0)
    return mopt_diag_set(s->diag, MOPT_EMODEL, "ModelProto.ir_version",
                         "ONNX model has no ir_version");
  if (s->info->ir_version >= 3 && s->info->n_opsets == 0)
    return mopt_diag_set(s->diag, MOPT_EMODEL, "ModelProto.opset_import",
                         "ONNX model declares no opset_import");
  return graphs_check(s);
}

static int scan_reader(reader *r, const mopt_load_limits *lim, mopt_model_info *info,
                       mopt_diag *diag, mopt_scan_tensor_fn fn, void *fn_ctx) {
  mopt_model_info local;
  if (!info) info = &local;
  memset(info, 0, sizeof *info);
  if (diag) diag->msg[0] = diag->where[0] = 0;
  scan *s = calloc(1, sizeof *s);
  if (!s) return MOPT_ENOMEM;
  s->r = r; s->lim = lim; s->info = info; s->diag = diag;
  s->on_tensor = fn; s->on_tensor_ctx = fn_ctx;
  int rc = r->size == 0 ? mopt_diag_set(diag, MOPT_EPARSE, "byte 0", "empty body: not an ONNX model")
                        : scan_run(s);
  for (size_t i = 0; i < s->n_graphs; i++) {
    sgraph *g = &s->graphs[i];
    free(g->inputs.v); free(g->inits.v); free(g->ins.v); free(g->outs.v); free(g->nodes);
  }
  free(s->graphs);
  free(s->names.data);
  free(s);
  return rc;
}

int mopt_model_scan_tensors(const uint8_t *buf, size_t len, const mopt_load_limits *lim,
                            mopt_scan_tensor_fn fn, void *ctx, mopt_model_info *info,
                            mopt_diag *diag) {
  reader *r = calloc(1, sizeof *r);
  if (!r) return MOPT_ENOMEM;
  r->fd = -1; r->mem = buf; r->size = len;
  int rc = scan_reader(r, lim, info, diag, fn, ctx);
  free(r);
  return rc;
}

int mopt_model_scan(const uint8_t *buf, size_t len, const mopt_load_limits *lim,
                    mopt_model_info *info, mopt_diag *diag) {
  return mopt_model_scan_tensors(buf, len, lim, NULL, NULL, info, diag);
}

int mopt_model_scan_file(const char *path, const mopt_load_limits *lim, mopt_model_info *info,
                         mopt_diag *diag) {
  return mopt_model_scan_file_tensors(path, lim, NULL, NULL, info, diag);
}

int mopt_model_scan_file_tensors(const char *path, const mopt_load_limits *lim,
                                 mopt_scan_tensor_fn fn, void *ctx, mopt_model_info *info,
                                 mopt_diag *diag) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return mopt_diag_set(diag, MOPT_EIO, path, "cannot open model file: %s", strerror(errno));
  struct stat st;
  if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
    close(fd);
    return mopt_diag_set(diag, MOPT_EIO, path, "not a regular file");
  }
  reader *r = calloc(1, sizeof *r);
  if (!r) { close(fd); return MOPT_ENOMEM; }
  r->fd = fd; r->size = (uint64_t)st.st_size;
  posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  int rc = scan_reader(r, lim, info, diag, fn, ctx);
  free(r);
  close(fd);
  return rc;
}
