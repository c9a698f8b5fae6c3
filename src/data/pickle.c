/* A restricted unpickler (pickle protocols 2-5) producing a small value tree; see include/dfm/pickle.h. Nothing
 * is called: the few Python names a tensor, numpy array or container needs are implemented here, every other
 * global is refused where it appears. The virtual machine is iterative (no recursion on input structure) and
 * checks every read, stack pop, MARK and memo index. */
#include "data/pickle_impl.h"
#include "dfm/common.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------------ arena */

struct pk_chunk {
    struct pk_chunk *next;
    size_t size;
    _Alignas(16) unsigned char data[];
};

void *pk_alloc(pk_ctx *C, size_t n) {
    pk_arena *A = C->A;
    if (n > SIZE_MAX / 2) dfm_die("pickle reader: allocation of %zu bytes", n);
    n = (n + 15) & ~(size_t)15;
    if (n > 16384) { /* a chunk of its own, behind the current one */
        struct pk_chunk *c = xmalloc(sizeof *c + n);
        c->size = n;
        memset(c->data, 0, n);
        if (A->chunks) {
            c->next = A->chunks->next;
            A->chunks->next = c;
        } else {
            c->next = NULL;
            A->chunks = c;
            A->used = A->cap = n;
        }
        return c->data;
    }
    if (!A->chunks || A->cap - A->used < n) {
        size_t sz = 65536;
        struct pk_chunk *c = xmalloc(sizeof *c + sz);
        c->size = sz;
        c->next = A->chunks;
        A->chunks = c;
        A->used = 0;
        A->cap = sz;
    }
    void *p = A->chunks->data + A->used;
    A->used += n;
    memset(p, 0, n);
    return p;
}

pk_value *pk_new(pk_ctx *C, pk_kind k) {
    pk_value *v = pk_alloc(C, sizeof *v);
    v->kind = k;
    return v;
}

void pk_arena_free(pk_arena *A) {
    if (!A) return;
    for (size_t i = 0; i < A->narrays; i++) free(A->arrays[i]->arr->data);
    free(A->arrays);
    for (struct pk_chunk *c = A->chunks, *n; c; c = n) {
        n = c->next;
        free(c);
    }
    free(A);
}

static void arena_keep_array(pk_ctx *C, pk_value *v) {
    pk_arena *A = C->A;
    if (A->narrays == A->carrays) {
        A->carrays = A->carrays ? 2 * A->carrays : 16;
        A->arrays = xrealloc(A->arrays, A->carrays * sizeof *A->arrays);
    }
    A->arrays[A->narrays++] = v;
}

void pk_ctx_keep_blob(pk_ctx *C, void *p) {
    if (C->nblobs == C->cblobs) {
        C->cblobs = C->cblobs ? 2 * C->cblobs : 8;
        C->blobs = xrealloc(C->blobs, C->cblobs * sizeof *C->blobs);
    }
    C->blobs[C->nblobs++] = p;
}

static char *arena_strdup(pk_ctx *C, const char *s) {
    size_t n = strlen(s);
    char *d = pk_alloc(C, n + 1);
    memcpy(d, s, n);
    return d;
}

/* ------------------------------------------------------------------------------------------------ errors */

int pk_fail(const pk_stream *S, size_t at, const char *fmt, ...) {
    pk_ctx *C = S->C;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (C->err && C->errlen) {
        if (S->what)
            snprintf(C->err, C->errlen, "'%s' (%s): offset %zu: %s", C->name, S->what, at, msg);
        else
            snprintf(C->err, C->errlen, "'%s': offset %zu: %s", C->name, at, msg);
    }
    return -1;
}

int pk_failc(pk_ctx *C, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (C->err && C->errlen) snprintf(C->err, C->errlen, "'%s': %s", C->name, msg);
    return -1;
}

/* A name from the stream, printable in a message: ASCII as is, other bytes as \xNN, at most ~120 characters. */
static void printable(char *out, size_t outlen, const char *s, size_t n) {
    size_t o = 0;
    for (size_t i = 0; i < n && o + 8 < outlen; i++) {
        unsigned char c = (unsigned char)s[i];
        if (o > 120) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\')
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", c);
    }
    out[o] = 0;
}

/* ------------------------------------------------------------------------------------------------ dtypes */

static const struct {
    const char *name;
    size_t size;
} dtypes[ST_NUM_DTYPES] = {
    [ST_BOOL] = {"bool", 1},
    [ST_U8] = {"uint8", 1},
    [ST_I8] = {"int8", 1},
    [ST_I16] = {"int16", 2},
    [ST_U16] = {"uint16", 2},
    [ST_F16] = {"float16", 2},
    [ST_BF16] = {"bfloat16", 2},
    [ST_I32] = {"int32", 4},
    [ST_U32] = {"uint32", 4},
    [ST_F32] = {"float32", 4},
    [ST_F64] = {"float64", 8},
    [ST_I64] = {"int64", 8},
    [ST_U64] = {"uint64", 8},
    [ST_F8_E4M3] = {"float8_e4m3fn", 1},
    [ST_F8_E5M2] = {"float8_e5m2", 1},
};

const char *pk_dtype_name(st_dtype t) {
    return (unsigned)t < ST_NUM_DTYPES ? dtypes[t].name : "?";
}
size_t pk_dtype_size(st_dtype t) {
    return (unsigned)t < ST_NUM_DTYPES ? dtypes[t].size : 0;
}

const char *pk_kind_name(pk_kind k) {
    static const char *names[] = {"None",
                                  "bool",
                                  "int",
                                  "int",
                                  "float",
                                  "str",
                                  "bytes",
                                  "list",
                                  "tuple",
                                  "set",
                                  "dict",
                                  "tensor",
                                  "ndarray",
                                  "global",
                                  "storage",
                                  "numpy dtype",
                                  "numpy array without data"};
    return (unsigned)k < sizeof names / sizeof *names ? names[k] : "?";
}

const char *pk_format_name(pk_format f) {
    return f == PK_FMT_TORCH_ZIP ? "torch.save (zip)" : f == PK_FMT_TORCH_LEGACY ? "torch.save (legacy)" : "pickle";
}

/* ------------------------------------------------------------------------------------------ whitelist */

enum {
    G_ORDERED_DICT,
    G_REBUILD_V2,
    G_REBUILD,
    G_REBUILD_PARAM,
    G_LOAD_FROM_BYTES,
    G_STORAGE,
    G_NP_RECONSTRUCT,
    G_NP_NDARRAY,
    G_NP_DTYPE,
    G_NP_SCALAR,
    G_NP_FROMBUFFER,
    G_CODECS_ENCODE,
    G_SET,
    G_FROZENSET,
    G_BYTES,
    G_BYTEARRAY,
};

static const struct {
    const char *mod, *name;
    int id;
    st_dtype dtype; /* storages */
} globals[] = {
    {"collections", "OrderedDict", G_ORDERED_DICT, 0},
    {"torch._utils", "_rebuild_tensor_v2", G_REBUILD_V2, 0},
    {"torch._utils", "_rebuild_tensor", G_REBUILD, 0},
    {"torch._utils", "_rebuild_parameter", G_REBUILD_PARAM, 0},
    {"torch.storage", "_load_from_bytes", G_LOAD_FROM_BYTES, 0},
    {"torch", "FloatStorage", G_STORAGE, ST_F32},
    {"torch", "HalfStorage", G_STORAGE, ST_F16},
    {"torch", "BFloat16Storage", G_STORAGE, ST_BF16},
    {"torch", "DoubleStorage", G_STORAGE, ST_F64},
    {"torch", "LongStorage", G_STORAGE, ST_I64},
    {"torch", "IntStorage", G_STORAGE, ST_I32},
    {"torch", "ShortStorage", G_STORAGE, ST_I16},
    {"torch", "CharStorage", G_STORAGE, ST_I8},
    {"torch", "ByteStorage", G_STORAGE, ST_U8},
    {"torch", "BoolStorage", G_STORAGE, ST_BOOL},
    {"torch", "UntypedStorage", G_STORAGE, ST_U8},
    {"torch.cuda", "FloatStorage", G_STORAGE, ST_F32}, /* old legacy files of CUDA tensors */
    {"torch.cuda", "HalfStorage", G_STORAGE, ST_F16},
    {"torch.cuda", "BFloat16Storage", G_STORAGE, ST_BF16},
    {"torch.cuda", "DoubleStorage", G_STORAGE, ST_F64},
    {"torch.cuda", "LongStorage", G_STORAGE, ST_I64},
    {"torch.cuda", "IntStorage", G_STORAGE, ST_I32},
    {"torch.cuda", "ByteStorage", G_STORAGE, ST_U8},
    {"torch.cuda", "BoolStorage", G_STORAGE, ST_BOOL},
    {"numpy.core.multiarray", "_reconstruct", G_NP_RECONSTRUCT, 0},
    {"numpy._core.multiarray", "_reconstruct", G_NP_RECONSTRUCT, 0}, /* numpy 2 */
    {"numpy", "ndarray", G_NP_NDARRAY, 0},
    {"numpy", "dtype", G_NP_DTYPE, 0},
    {"numpy.core.multiarray", "scalar", G_NP_SCALAR, 0},
    {"numpy._core.multiarray", "scalar", G_NP_SCALAR, 0},
    {"numpy.core.numeric", "_frombuffer", G_NP_FROMBUFFER, 0},
    {"numpy._core.numeric", "_frombuffer", G_NP_FROMBUFFER, 0},
    {"_codecs", "encode", G_CODECS_ENCODE, 0},
    {"builtins", "set", G_SET, 0},
    {"builtins", "frozenset", G_FROZENSET, 0},
    {"builtins", "bytes", G_BYTES, 0},
    {"builtins", "bytearray", G_BYTEARRAY, 0},
    {"__builtin__", "set", G_SET, 0}, /* protocol 2 writes Python 2's module name */
    {"__builtin__", "frozenset", G_FROZENSET, 0},
    {"__builtin__", "bytes", G_BYTES, 0},
    {"__builtin__", "bytearray", G_BYTEARRAY, 0},
};
#define NGLOBALS ((int)(sizeof globals / sizeof *globals))

static int gid(const pk_value *g) {
    return globals[g->i].id;
}

int pk_storage_global(const pk_value *g, st_dtype *dt) {
    if (g->kind != PK__GLOBAL || gid(g) != G_STORAGE) return -1;
    *dt = globals[g->i].dtype;
    return 0;
}

/* ------------------------------------------------------------------------------------------ the machine */

typedef struct {
    pk_stream *S;
    pk_ctx *C;
    size_t pos, at, start; /* read position, offset of the current opcode, of the pickle */
    uint8_t op;
    int proto;
    pk_value **stack;
    size_t sp, cstack;
    size_t *marks;
    size_t nmarks, cmarks;
    pk_value **memo;
    size_t cmemo, nmemo;
} vm;

typedef struct {
    st_dtype dtype;
    char kind; /* numpy's: b i u f */
    int size;
    char order; /* '<', '>', '|', '=' */
} np_dtype;

static const char *opname(uint8_t op) {
    switch (op) {
    case '(':
        return "MARK";
    case '.':
        return "STOP";
    case '0':
        return "POP";
    case '1':
        return "POP_MARK";
    case '2':
        return "DUP";
    case 'F':
        return "FLOAT";
    case 'I':
        return "INT";
    case 'J':
        return "BININT";
    case 'K':
        return "BININT1";
    case 'L':
        return "LONG";
    case 'M':
        return "BININT2";
    case 'N':
        return "NONE";
    case 'P':
        return "PERSID";
    case 'Q':
        return "BINPERSID";
    case 'R':
        return "REDUCE";
    case 'S':
        return "STRING";
    case 'T':
        return "BINSTRING";
    case 'U':
        return "SHORT_BINSTRING";
    case 'V':
        return "UNICODE";
    case 'X':
        return "BINUNICODE";
    case 'a':
        return "APPEND";
    case 'b':
        return "BUILD";
    case 'c':
        return "GLOBAL";
    case 'd':
        return "DICT";
    case '}':
        return "EMPTY_DICT";
    case 'e':
        return "APPENDS";
    case 'g':
        return "GET";
    case 'h':
        return "BINGET";
    case 'i':
        return "INST";
    case 'j':
        return "LONG_BINGET";
    case 'l':
        return "LIST";
    case ']':
        return "EMPTY_LIST";
    case 'o':
        return "OBJ";
    case 'p':
        return "PUT";
    case 'q':
        return "BINPUT";
    case 'r':
        return "LONG_BINPUT";
    case 's':
        return "SETITEM";
    case 't':
        return "TUPLE";
    case ')':
        return "EMPTY_TUPLE";
    case 'u':
        return "SETITEMS";
    case 'G':
        return "BINFLOAT";
    case 'B':
        return "BINBYTES";
    case 'C':
        return "SHORT_BINBYTES";
    case 0x80:
        return "PROTO";
    case 0x81:
        return "NEWOBJ";
    case 0x82:
        return "EXT1";
    case 0x83:
        return "EXT2";
    case 0x84:
        return "EXT4";
    case 0x85:
        return "TUPLE1";
    case 0x86:
        return "TUPLE2";
    case 0x87:
        return "TUPLE3";
    case 0x88:
        return "NEWTRUE";
    case 0x89:
        return "NEWFALSE";
    case 0x8a:
        return "LONG1";
    case 0x8b:
        return "LONG4";
    case 0x8c:
        return "SHORT_BINUNICODE";
    case 0x8d:
        return "BINUNICODE8";
    case 0x8e:
        return "BINBYTES8";
    case 0x8f:
        return "EMPTY_SET";
    case 0x90:
        return "ADDITEMS";
    case 0x91:
        return "FROZENSET";
    case 0x92:
        return "NEWOBJ_EX";
    case 0x93:
        return "STACK_GLOBAL";
    case 0x94:
        return "MEMOIZE";
    case 0x95:
        return "FRAME";
    case 0x96:
        return "BYTEARRAY8";
    case 0x97:
        return "NEXT_BUFFER";
    case 0x98:
        return "READONLY_BUFFER";
    default:
        return "an unknown opcode";
    }
}

#define FAIL(...) pk_fail(V->S, V->at, __VA_ARGS__)

static int need(vm *V, uint64_t n) {
    size_t left = V->S->len - V->pos;
    if (n > left)
        return FAIL("truncated: %s needs %llu more bytes after offset %zu but the stream ends at offset %zu",
                    opname(V->op), (unsigned long long)n, V->pos, V->S->len);
    return 0;
}

static uint64_t rd_le(const uint8_t *p, int n) {
    uint64_t x = 0;
    for (int i = n - 1; i >= 0; i--) x = x << 8 | p[i];
    return x;
}

static int push(vm *V, pk_value *v) {
    if (V->sp == V->cstack) {
        V->cstack = V->cstack ? 2 * V->cstack : 64;
        V->stack = xrealloc(V->stack, V->cstack * sizeof *V->stack);
    }
    V->stack[V->sp++] = v;
    return 0;
}

static size_t fence(const vm *V) {
    return V->nmarks ? V->marks[V->nmarks - 1] : 0;
}

static pk_value *pop(vm *V) {
    if (V->sp <= fence(V)) {
        FAIL("%s needs a value on the stack%s", opname(V->op), V->nmarks ? " above the last MARK" : "");
        return NULL;
    }
    return V->stack[--V->sp];
}

static pk_value *top(vm *V) {
    if (V->sp <= fence(V)) {
        FAIL("%s needs a value on the stack%s", opname(V->op), V->nmarks ? " above the last MARK" : "");
        return NULL;
    }
    return V->stack[V->sp - 1];
}

/* Pop the last MARK; the items above it are stack[*k .. sp). */
static int pop_mark(vm *V, size_t *k) {
    if (!V->nmarks) return FAIL("%s without a MARK before it", opname(V->op));
    *k = V->marks[--V->nmarks];
    return 0;
}

static int seq_add(vm *V, pk_value *c, pk_value *item) {
    if (c->n == c->cap_) {
        if (c->cap_ >= (1 << 29)) return FAIL("a container with more than %d items", 1 << 29);
        int cap = c->cap_ ? 2 * c->cap_ : 4;
        pk_value **items = pk_alloc(V->C, (size_t)cap * sizeof *items);
        if (c->n) memcpy(items, c->items, (size_t)c->n * sizeof *items);
        if (c->kind == PK_DICT) {
            pk_value **keys = pk_alloc(V->C, (size_t)cap * sizeof *keys);
            if (c->n) memcpy(keys, c->keys, (size_t)c->n * sizeof *keys);
            c->keys = keys;
        }
        c->items = items;
        c->cap_ = cap;
    }
    c->items[c->n++] = item;
    return 0;
}

static int dict_set(vm *V, pk_value *d, pk_value *k, pk_value *v) {
    if (k->kind == PK_LIST || k->kind == PK_DICT || k->kind == PK_NDARRAY || k->kind == PK__NDARRAY_NEW)
        return FAIL("a dict key must be hashable, got a %s", pk_kind_name(k->kind));
    if (seq_add(V, d, v)) return -1;
    d->keys[d->n - 1] = k;
    return 0;
}

static pk_value *make_str(vm *V, const uint8_t *p, size_t n) {
    pk_value *v = pk_new(V->C, PK_STR);
    v->s = pk_alloc(V->C, n + 1);
    memcpy(v->s, p, n);
    v->len = n;
    return v;
}

/* Bytes reference the stream until pk_finish copies those the result keeps. */
static pk_value *make_bytes(vm *V, const uint8_t *p, size_t n) {
    pk_value *v = pk_new(V->C, PK_BYTES);
    v->b = (uint8_t *)p;
    v->len = n;
    v->at_ = V->pos - n; /* the payload's offset when it comes from the stream */
    return v;
}

/* Little-endian two's complement of n bytes (pickle's LONG1/LONG4). */
static pk_value *make_long(vm *V, const uint8_t *p, size_t n) {
    size_t m = n; /* drop redundant sign bytes */
    while (m > 1 && ((p[m - 1] == 0 && !(p[m - 2] & 0x80)) || (p[m - 1] == 0xff && (p[m - 2] & 0x80)))) m--;
    if (m <= 8) {
        pk_value *v = pk_new(V->C, PK_INT);
        uint64_t x = 0;
        if (n) {
            x = rd_le(p, (int)m);
            if (m < 8 && (p[m - 1] & 0x80)) x |= ~(uint64_t)0 << (8 * m);
        }
        memcpy(&v->i, &x, sizeof x);
        return v;
    }
    pk_value *v = pk_new(V->C, PK_BIGINT);
    v->b = (uint8_t *)p;
    v->len = n;
    return v;
}

/* UTF-8 text whose code points are all below 256 -> those bytes (latin-1 encoding). */
static int latin1_bytes(vm *V, const pk_value *s, uint8_t **out, size_t *outlen) {
    uint8_t *o = pk_alloc(V->C, s->len + 1);
    size_t k = 0;
    const uint8_t *p = (const uint8_t *)s->s;
    for (size_t i = 0; i < s->len;) {
        if (p[i] < 0x80)
            o[k++] = p[i++];
        else if ((p[i] & 0xe0) == 0xc0 && i + 1 < s->len && (p[i + 1] & 0xc0) == 0x80 && p[i] <= 0xc3 && p[i] >= 0xc2) {
            o[k++] = (uint8_t)((p[i] & 0x1f) << 6 | (p[i + 1] & 0x3f));
            i += 2;
        } else
            return FAIL("latin-1 encoding of a string with a character above U+00FF (or invalid UTF-8) at "
                        "character byte %zu",
                        i);
    }
    *out = o;
    *outlen = k;
    return 0;
}

static int get_int(const pk_value *v, int64_t *x) {
    if (v->kind != PK_INT && v->kind != PK_BOOL) return -1;
    *x = v->i;
    return 0;
}

int pk_is_text(const pk_value *v, const char *s) {
    return (v->kind == PK_STR || v->kind == PK_BYTES) && v->len == strlen(s) && !memcmp(v->s, s, v->len);
}

/* numel and the highest element index a strided view reads; -1 for an empty view. */
static int view_extent(vm *V, const char *what, int ndim, const int64_t *size, const int64_t *stride, int64_t offset,
                       int64_t *numel, int64_t *maxidx) {
    int64_t n = 1, hi = offset;
    for (int d = 0; d < ndim; d++) {
        if (size[d] < 0) return FAIL("%s: negative size %lld in dimension %d", what, (long long)size[d], d);
        if (stride && stride[d] < 0)
            return FAIL("%s: negative stride %lld in dimension %d", what, (long long)stride[d], d);
    }
    for (int d = 0; d < ndim; d++) {
        if (__builtin_mul_overflow(n, size[d], &n) || n > PK_MAX_NUMEL)
            return FAIL("%s: absurd size (more than 2^48 elements)", what);
    }
    if (n == 0) {
        *numel = 0;
        *maxidx = -1;
        return 0;
    }
    for (int d = 0; stride && d < ndim; d++) {
        int64_t t;
        if (__builtin_mul_overflow(size[d] - 1, stride[d], &t) || __builtin_add_overflow(hi, t, &hi))
            return FAIL("%s: strides overflow 64 bits", what);
    }
    *numel = n;
    *maxidx = stride ? hi : offset + n - 1;
    return 0;
}

static int int_tuple(vm *V, const pk_value *t, const char *what, int64_t *out, int *n) {
    if (t->kind != PK_TUPLE && t->kind != PK_LIST)
        return FAIL("%s must be a tuple of ints, got a %s", what, pk_kind_name(t->kind));
    if (t->n > PK_MAX_DIMS) return FAIL("%s has %d dimensions (at most %d)", what, t->n, PK_MAX_DIMS);
    for (int i = 0; i < t->n; i++)
        if (get_int(t->items[i], &out[i]))
            return FAIL("%s must be a tuple of ints, item %d is a %s", what, i, pk_kind_name(t->items[i]->kind));
    *n = t->n;
    return 0;
}

static pk_value *new_array_value(vm *V, pk_kind kind, st_dtype dt, int ndim, const int64_t *shape, int64_t numel) {
    pk_value *v = pk_new(V->C, kind);
    v->arr = pk_alloc(V->C, sizeof *v->arr);
    v->arr->dtype = dt;
    v->arr->ndim = ndim;
    for (int d = 0; d < ndim; d++) v->arr->shape[d] = shape[d];
    v->arr->numel = numel;
    v->arr->nbytes = (size_t)numel * pk_dtype_size(dt);
    return v;
}

/* Copy a strided view (element size es) into contiguous dst. */
static void strided_copy(uint8_t *dst, const uint8_t *src, size_t es, int ndim, const int64_t *size,
                         const int64_t *stride, int64_t offset) {
    if (ndim == 0) {
        memcpy(dst, src + (size_t)offset * es, es);
        return;
    }
    int64_t idx[PK_MAX_DIMS] = {0};
    int last = ndim - 1;
    int64_t n = size[last], st = stride[last];
    for (;;) {
        int64_t base = offset;
        for (int d = 0; d < last; d++) base += idx[d] * stride[d];
        if (st == 1) {
            memcpy(dst, src + (size_t)base * es, (size_t)n * es);
            dst += (size_t)n * es;
        } else
            for (int64_t k = 0; k < n; k++, dst += es) memcpy(dst, src + (size_t)(base + k * st) * es, es);
        int d = last - 1;
        while (d >= 0 && ++idx[d] == size[d]) idx[d--] = 0;
        if (d < 0) break;
    }
}

static int charge(pk_ctx *C, const pk_stream *S, size_t at, uint64_t nbytes, const char *what) {
    if (nbytes > C->budget) {
        if (S)
            return pk_fail(S, at, "%s of %llu bytes exceeds what this file can hold (limit %llu more bytes)", what,
                           (unsigned long long)nbytes, (unsigned long long)C->budget);
        return pk_failc(C, "%s of %llu bytes exceeds what this file can hold (limit %llu more bytes)", what,
                        (unsigned long long)nbytes, (unsigned long long)C->budget);
    }
    C->budget -= nbytes;
    return 0;
}

static void *alloc_data(size_t nbytes) {
    return malloc(nbytes ? nbytes : 1);
}

/* -------------------------------------------------------------------------------------------- numpy */

static int np_parse_dtype(vm *V, const pk_value *s, np_dtype *dt) {
    char name[32];
    printable(name, sizeof name, s->s, s->len);
    const char *p = s->s;
    size_t n = s->len;
    dt->order = '=';
    if (n && (*p == '<' || *p == '>' || *p == '|' || *p == '=')) dt->order = *p++, n--;
    if (n < 2 || n > 3) return FAIL("numpy dtype '%s' is not supported (numeric and bool dtypes only)", name);
    dt->kind = p[0];
    int size = 0;
    for (size_t i = 1; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return FAIL("numpy dtype '%s' is not supported", name);
        size = size * 10 + (p[i] - '0');
    }
    dt->size = size;
    static const struct {
        char k;
        int size;
        st_dtype t;
    } map[] = {{'b', 1, ST_BOOL}, {'i', 1, ST_I8},  {'i', 2, ST_I16}, {'i', 4, ST_I32},
               {'i', 8, ST_I64},  {'u', 1, ST_U8},  {'u', 2, ST_U16}, {'u', 4, ST_U32},
               {'u', 8, ST_U64},  {'f', 2, ST_F16}, {'f', 4, ST_F32}, {'f', 8, ST_F64}};
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
        if (map[i].k == dt->kind && map[i].size == size) {
            dt->dtype = map[i].t;
            return 0;
        }
    return FAIL("numpy dtype '%s' is not supported (numeric and bool dtypes only; not object, string, complex, "
                "datetime or structured)",
                name);
}

/* A numpy array from raw bytes in C or Fortran order, byte order per dt. */
static int np_make(vm *V, pk_value *into, const np_dtype *dt, const pk_value *shape_t, const uint8_t *data, size_t len,
                   int fortran) {
    int64_t shape[PK_MAX_DIMS], numel, maxidx;
    int ndim;
    if (int_tuple(V, shape_t, "numpy array shape", shape, &ndim)) return -1;
    if (view_extent(V, "numpy array", ndim, shape, NULL, 0, &numel, &maxidx)) return -1;
    size_t es = (size_t)dt->size;
    if ((uint64_t)numel * es != len)
        return FAIL("numpy array of %lld elements of %zu bytes needs %llu bytes of data, got %zu", (long long)numel, es,
                    (unsigned long long)numel * es, len);
    if (charge(V->C, V->S, V->at, len, "numpy array")) return -1;
    pk_value *tmp = new_array_value(V, PK_NDARRAY, dt->dtype, ndim, shape, numel);
    uint8_t *out = alloc_data(len);
    if (!out) return FAIL("out of memory for a numpy array of %zu bytes", len);
    if (fortran && ndim > 1) {
        int64_t stride[PK_MAX_DIMS], s = 1;
        for (int d = 0; d < ndim; d++) stride[d] = s, s *= shape[d];
        if (numel) strided_copy(out, data, es, ndim, shape, stride, 0);
    } else if (len)
        memcpy(out, data, len);
    if (dt->order == '>' && es > 1)
        for (size_t i = 0; i < len; i += es)
            for (size_t a = 0, b = es - 1; a < b; a++, b--) {
                uint8_t t = out[i + a];
                out[i + a] = out[i + b];
                out[i + b] = t;
            }
    tmp->arr->data = out;
    into->kind = PK_NDARRAY;
    into->arr = tmp->arr;
    arena_keep_array(V->C, into);
    return 0;
}

static int np_data_bytes(vm *V, const pk_value *d, const uint8_t **p, size_t *n) {
    if (d->kind == PK_BYTES) {
        *p = d->b;
        *n = d->len;
        return 0;
    }
    if (d->kind == PK_STR) { /* Python 2 pickles: latin-1 text */
        uint8_t *b;
        if (latin1_bytes(V, d, &b, n)) return -1;
        *p = b;
        return 0;
    }
    if (d->kind == PK_LIST) return FAIL("numpy object arrays are not supported (their items are Python objects)");
    return FAIL("numpy array data must be bytes, got a %s", pk_kind_name(d->kind));
}

/* ndarray.__setstate__((version,) shape, dtype, is_fortran, data) */
static int np_setstate(vm *V, pk_value *inst, const pk_value *st) {
    if (st->kind != PK_TUPLE || (st->n != 4 && st->n != 5))
        return FAIL("numpy array state must be a tuple of 4 or 5 items, got a %s of %d", pk_kind_name(st->kind), st->n);
    int o = st->n == 5;
    const pk_value *shape = st->items[o], *dt = st->items[o + 1], *fo = st->items[o + 2], *data = st->items[o + 3];
    if (dt->kind != PK__DTYPE) return FAIL("numpy array state: item %d must be a dtype", o + 1);
    int64_t fortran;
    if (get_int(fo, &fortran)) return FAIL("numpy array state: is_fortran must be a bool");
    const uint8_t *p = NULL;
    size_t n = 0;
    if (np_data_bytes(V, data, &p, &n)) return -1;
    return np_make(V, inst, dt->priv, shape, p, n, fortran != 0);
}

/* numpy.dtype.__setstate__: (version, byteorder, subarray, names, fields, elsize, alignment[, flags]) */
static int dtype_setstate(vm *V, pk_value *inst, const pk_value *st) {
    np_dtype *dt = inst->priv;
    if (st->kind != PK_TUPLE || st->n < 2) return FAIL("numpy dtype state must be a tuple");
    const pk_value *bo = st->items[1];
    if (bo->kind != PK_STR || bo->len != 1 || !bo->s[0] || !strchr("<>|=", bo->s[0]))
        return FAIL("numpy dtype state: byte order must be one of < > | =");
    for (int i = 2; i < 5 && i < st->n; i++)
        if (st->items[i]->kind != PK_NONE) return FAIL("structured and sub-array numpy dtypes are not supported");
    dt->order = bo->s[0];
    return 0;
}

static int np_scalar(vm *V, const pk_value *args, pk_value **out) {
    if (args->n != 2 || args->items[0]->kind != PK__DTYPE || args->items[1]->kind != PK_BYTES)
        return FAIL("numpy scalar() needs (dtype, bytes)");
    const np_dtype *dt = args->items[0]->priv;
    const pk_value *b = args->items[1];
    if (b->len != (size_t)dt->size) return FAIL("numpy scalar of %d bytes given %zu bytes", dt->size, b->len);
    uint8_t raw[8];
    for (int i = 0; i < dt->size; i++) raw[i] = b->b[dt->order == '>' ? dt->size - 1 - i : i];
    uint64_t u = rd_le(raw, dt->size);
    pk_value *v;
    if (dt->kind == 'b') {
        v = pk_new(V->C, PK_BOOL);
        v->i = u != 0;
    } else if (dt->kind == 'f') {
        v = pk_new(V->C, PK_FLOAT);
        if (dt->size == 8)
            memcpy(&v->f, raw, 8);
        else if (dt->size == 4) {
            float f;
            memcpy(&f, raw, 4);
            v->f = f;
        } else {
            pk_array a = {.dtype = ST_F16, .numel = 1, .data = raw};
            float f;
            pk_array_to_f32(&a, &f, NULL, 0);
            v->f = f;
        }
    } else {
        v = pk_new(V->C, PK_INT);
        if (dt->kind == 'i' && dt->size < 8 && (u >> (8 * dt->size - 1)) & 1) u |= ~(uint64_t)0 << (8 * dt->size);
        if (dt->kind == 'u' && dt->size == 8 && u > INT64_MAX) {
            v->kind = PK_BIGINT;
            v->b = pk_alloc(V->C, 9);
            memcpy(v->b, raw, 8);
            v->len = 9;
        } else
            memcpy(&v->i, &u, 8);
    }
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------------------------------- tensors */

static int rebuild_tensor(vm *V, const pk_value *args, int v2, pk_value **out) {
    const char *fn = v2 ? "_rebuild_tensor_v2" : "_rebuild_tensor";
    if (v2 ? (args->n != 6 && args->n != 7) : args->n != 4)
        return FAIL("%s: %d arguments, expected %s", fn, args->n, v2 ? "6 or 7" : "4");
    pk_value *sv = args->items[0];
    if (sv->kind != PK__STORAGE) return FAIL("%s: argument 1 must be a storage, got a %s", fn, pk_kind_name(sv->kind));
    const pk_storage *st = sv->priv;
    int64_t off, size[PK_MAX_DIMS], stride[PK_MAX_DIMS], numel, maxidx;
    int nd, ns;
    if (get_int(args->items[1], &off) || off < 0) return FAIL("%s: the storage offset must be an int >= 0", fn);
    if (int_tuple(V, args->items[2], "tensor size", size, &nd) ||
        int_tuple(V, args->items[3], "tensor stride", stride, &ns))
        return -1;
    if (nd != ns) return FAIL("%s: %d sizes but %d strides", fn, nd, ns);
    if (v2 && args->items[4]->kind != PK_BOOL && args->items[4]->kind != PK_INT)
        return FAIL("%s: requires_grad must be a bool", fn);
    if (view_extent(V, "tensor", nd, size, stride, off, &numel, &maxidx)) return -1;
    if (maxidx >= st->numel)
        return FAIL("%s: a view of %lld elements at offset %lld reads element %lld of a storage of %lld elements", fn,
                    (long long)numel, (long long)off, (long long)maxidx, (long long)st->numel);
    pk_value *t = new_array_value(V, PK_TENSOR, st->dtype, nd, size, numel);
    pk_ctx *C = V->C;
    if (C->npend == C->cpend) {
        C->cpend = C->cpend ? 2 * C->cpend : 16;
        C->pend = xrealloc(C->pend, C->cpend * sizeof *C->pend);
    }
    pk_pending *p = &C->pend[C->npend++];
    memset(p, 0, sizeof *p);
    p->t = t;
    p->storage = sv;
    p->offset = off;
    p->maxidx = maxidx;
    p->at = V->at;
    p->what = V->S->what ? arena_strdup(C, V->S->what) : NULL;
    memcpy(p->stride, stride, sizeof(int64_t) * (size_t)nd);
    *out = t;
    return 0;
}

int pk_materialise(pk_ctx *C) {
    for (size_t i = 0; i < C->npend; i++) {
        pk_pending *p = &C->pend[i];
        pk_stream S = {.C = C, .what = p->what};
        const pk_storage *st = p->storage->priv;
        const uint8_t *data = st->data;
        int64_t avail = st->data_numel;
        size_t es = pk_dtype_size(st->dtype);
        if (st->root) {
            const pk_storage *r = st->root->priv;
            if (!r->data)
                return pk_fail(&S, p->at, "storage '%s' has no bytes (it is not in the storage key list)", r->key);
            if (st->view_offset > r->data_numel)
                return pk_fail(&S, p->at, "storage view '%s' starts at element %lld of a storage of %lld", st->key,
                               (long long)st->view_offset, (long long)r->data_numel);
            data = r->data + (size_t)st->view_offset * es;
            avail = r->data_numel - st->view_offset < st->numel ? r->data_numel - st->view_offset : st->numel;
        }
        if (!data && p->maxidx >= 0)
            return pk_fail(&S, p->at, "storage '%s' has no bytes (it is not in the storage key list)",
                           st->key ? st->key : "?");
        pk_array *a = p->t->arr;
        if (p->maxidx >= avail)
            return pk_fail(&S, p->at, "tensor reads element %lld but its storage '%s' holds %lld elements",
                           (long long)p->maxidx, st->key ? st->key : "?", (long long)avail);
        if (charge(C, &S, p->at, a->nbytes, "tensor")) return -1;
        a->data = alloc_data(a->nbytes);
        if (!a->data) return pk_fail(&S, p->at, "out of memory for a tensor of %zu bytes", a->nbytes);
        arena_keep_array(C, p->t);
        if (a->numel) strided_copy(a->data, data, es, a->ndim, a->shape, p->stride, p->offset);
    }
    C->npend = 0;
    return 0;
}

/* ------------------------------------------------------------------------------------------- calls */

static const char *gname(const pk_value *g, char *buf, size_t n) {
    snprintf(buf, n, "%s.%s", globals[g->i].mod, globals[g->i].name);
    return buf;
}

static int call(vm *V, pk_value *fn, pk_value *args, int newobj, pk_value **out) {
    char nb[128];
    if (fn->kind != PK__GLOBAL)
        return FAIL("%s on a %s: only a few known Python functions may be called", opname(V->op),
                    pk_kind_name(fn->kind));
    if (args->kind != PK_TUPLE)
        return FAIL("%s of %s: the arguments must be a tuple, got a %s", opname(V->op), gname(fn, nb, sizeof nb),
                    pk_kind_name(args->kind));
    int id = gid(fn), n = args->n;
    pk_value **a = args->items;
    if (newobj) { /* cls.__new__(cls, *args): only the containers */
        if (id == G_ORDERED_DICT) {
            *out = pk_new(V->C, PK_DICT);
            return 0;
        }
        if (id == G_SET || id == G_FROZENSET) {
            *out = pk_new(V->C, PK_SET);
            return 0;
        }
        return FAIL("%s of %s is not allowed", opname(V->op), gname(fn, nb, sizeof nb));
    }
    switch (id) {
    case G_ORDERED_DICT:
        if (n) return FAIL("OrderedDict with arguments is not supported");
        *out = pk_new(V->C, PK_DICT);
        return 0;
    case G_SET:
    case G_FROZENSET: {
        pk_value *s = pk_new(V->C, PK_SET);
        if (n > 1 || (n == 1 && a[0]->kind != PK_LIST && a[0]->kind != PK_TUPLE && a[0]->kind != PK_SET))
            return FAIL("%s() takes one list, tuple or set", gname(fn, nb, sizeof nb));
        for (int i = 0; n == 1 && i < a[0]->n; i++)
            if (seq_add(V, s, a[0]->items[i])) return -1;
        *out = s;
        return 0;
    }
    case G_BYTES:
    case G_BYTEARRAY:
        if (n == 0) {
            *out = make_bytes(V, (const uint8_t *)"", 0);
            return 0;
        }
        if (n == 1 && a[0]->kind == PK_BYTES) {
            *out = make_bytes(V, a[0]->b, a[0]->len);
            (*out)->at_ = a[0]->at_;
            return 0;
        }
        return FAIL("%s() is allowed without arguments or with bytes only", gname(fn, nb, sizeof nb));
    case G_CODECS_ENCODE: {
        if (n < 1 || n > 2 || a[0]->kind != PK_STR || (n == 2 && a[1]->kind != PK_STR))
            return FAIL("_codecs.encode needs (str, encoding)");
        pk_value *b;
        if (n == 1 || pk_is_text(a[1], "utf-8") || pk_is_text(a[1], "utf8")) {
            b = make_bytes(V, (const uint8_t *)a[0]->s, a[0]->len);
        } else if (pk_is_text(a[1], "latin1") || pk_is_text(a[1], "latin-1") || pk_is_text(a[1], "iso-8859-1")) {
            uint8_t *p;
            size_t len;
            if (latin1_bytes(V, a[0], &p, &len)) return -1;
            b = make_bytes(V, p, len);
        } else {
            char e[64];
            printable(e, sizeof e, a[1]->s, a[1]->len);
            return FAIL("_codecs.encode with encoding '%s' (only latin1 and utf-8)", e);
        }
        b->at_ = V->at; /* made by this call */
        *out = b;
        return 0;
    }
    case G_REBUILD_V2:
    case G_REBUILD:
        return rebuild_tensor(V, args, id == G_REBUILD_V2, out);
    case G_REBUILD_PARAM:
        if (n != 3 || a[0]->kind != PK_TENSOR) return FAIL("_rebuild_parameter needs (tensor, requires_grad, hooks)");
        *out = a[0];
        return 0;
    case G_LOAD_FROM_BYTES:
        if (n != 1 || a[0]->kind != PK_BYTES) return FAIL("_load_from_bytes needs one bytes argument");
        return pk_torch_nested(V->S, a[0]->at_, a[0]->b, a[0]->len, out);
    case G_NP_RECONSTRUCT:
        if (n != 3 || a[0]->kind != PK__GLOBAL || gid(a[0]) != G_NP_NDARRAY)
            return FAIL("numpy _reconstruct is allowed for numpy.ndarray only");
        *out = pk_new(V->C, PK__NDARRAY_NEW);
        return 0;
    case G_NP_DTYPE: {
        if (n < 1 || n > 3 || a[0]->kind != PK_STR) return FAIL("numpy.dtype needs a type string");
        np_dtype *dt = pk_alloc(V->C, sizeof *dt);
        if (np_parse_dtype(V, a[0], dt)) return -1;
        pk_value *v = pk_new(V->C, PK__DTYPE);
        v->priv = dt;
        *out = v;
        return 0;
    }
    case G_NP_SCALAR:
        return np_scalar(V, args, out);
    case G_NP_FROMBUFFER: {
        if (n != 4 || a[0]->kind != PK_BYTES || a[1]->kind != PK__DTYPE || a[3]->kind != PK_STR || a[3]->len != 1 ||
            (a[3]->s[0] != 'C' && a[3]->s[0] != 'F'))
            return FAIL("numpy _frombuffer needs (bytes, dtype, shape, 'C' or 'F')");
        pk_value *v = pk_new(V->C, PK__NDARRAY_NEW);
        if (np_make(V, v, a[1]->priv, a[2], a[0]->b, a[0]->len, a[3]->s[0] == 'F')) return -1;
        *out = v;
        return 0;
    }
    default:
        return FAIL("%s cannot be called", gname(fn, nb, sizeof nb));
    }
}

static int find_global(vm *V, const char *mod, size_t ml, const char *name, size_t nl, pk_value **out) {
    for (int i = 0; i < NGLOBALS; i++)
        if (strlen(globals[i].mod) == ml && !memcmp(globals[i].mod, mod, ml) && strlen(globals[i].name) == nl &&
            !memcmp(globals[i].name, name, nl)) {
            pk_value *g = pk_new(V->C, PK__GLOBAL);
            g->i = i;
            *out = g;
            return 0;
        }
    char m[160], n[160];
    printable(m, sizeof m, mod, ml);
    printable(n, sizeof n, name, nl);
    return FAIL("refusing the Python global '%s.%s': dfm rebuilds only tensors, numpy arrays and plain values and "
                "never runs code from a file",
                m, n);
}

static int read_line(vm *V, const char **s, size_t *n) {
    const uint8_t *p = V->S->buf + V->pos;
    size_t left = V->S->len - V->pos, max = left < 1024 ? left : 1024;
    const uint8_t *nl = memchr(p, '\n', max);
    if (!nl) {
        if (left < 1024)
            return FAIL("truncated: %s's name has no end of line before the end of the stream", opname(V->op));
        return FAIL("%s: a name longer than 1024 bytes", opname(V->op));
    }
    *s = (const char *)p;
    *n = (size_t)(nl - p);
    V->pos += *n + 1;
    return 0;
}

static int memo_put(vm *V, uint64_t idx, pk_value *v) {
    if (idx > V->pos - V->start + 16)
        return FAIL("memo index %llu is out of range for a pickle of %zu bytes so far", (unsigned long long)idx,
                    V->pos - V->start);
    if (idx >= V->cmemo) {
        size_t nc = V->cmemo ? V->cmemo : 64;
        while (nc <= idx) nc *= 2;
        V->memo = xrealloc(V->memo, nc * sizeof *V->memo);
        memset(V->memo + V->cmemo, 0, (nc - V->cmemo) * sizeof *V->memo);
        V->cmemo = nc;
    }
    if (!V->memo[idx]) V->nmemo++;
    V->memo[idx] = v;
    return 0;
}

static int memo_get(vm *V, uint64_t idx) {
    if (idx >= V->cmemo || !V->memo[idx]) return FAIL("memo index %llu was never set", (unsigned long long)idx);
    return push(V, V->memo[idx]);
}

static int run(vm *V, pk_value **result) {
    pk_stream *S = V->S;
    pk_ctx *C = V->C;
    for (;;) {
        if (V->pos >= S->len) {
            V->at = V->pos;
            return FAIL("truncated: the pickle that starts at offset %zu ends without STOP", V->start);
        }
        V->at = V->pos;
        uint8_t op = V->op = S->buf[V->pos++];
        const uint8_t *p = S->buf + V->pos;
        pk_value *v, *w, *x;
        size_t k = 0;
        uint64_t n;
        switch (op) {
        case 0x80: /* PROTO */
            if (need(V, 1)) return -1;
            if (p[0] > 5) return FAIL("pickle protocol %d (this reader knows 2 to 5)", p[0]);
            V->proto = p[0];
            V->pos++;
            break;
        case 0x95: /* FRAME */
            if (need(V, 8)) return -1;
            n = rd_le(p, 8);
            V->pos += 8;
            if (need(V, n)) return -1;
            break;
        case '.':
            if (!(v = pop(V))) return -1;
            *result = v;
            return 0;
        case '(':
            if (V->nmarks == V->cmarks) {
                V->cmarks = V->cmarks ? 2 * V->cmarks : 16;
                V->marks = xrealloc(V->marks, V->cmarks * sizeof *V->marks);
            }
            V->marks[V->nmarks++] = V->sp;
            break;
        case '0':
            if (V->sp > fence(V))
                V->sp--;
            else if (V->nmarks)
                V->nmarks--;
            else
                return FAIL("POP on an empty stack");
            break;
        case '1':
            if (pop_mark(V, &k)) return -1;
            V->sp = k;
            break;
        case '2':
            if (!(v = top(V))) return -1;
            push(V, v);
            break;
        case 'N':
            push(V, pk_new(C, PK_NONE));
            break;
        case 0x88:
        case 0x89:
            v = pk_new(C, PK_BOOL);
            v->i = op == 0x88;
            push(V, v);
            break;
        case 'J':
            if (need(V, 4)) return -1;
            v = pk_new(C, PK_INT);
            v->i = (int32_t)(uint32_t)rd_le(p, 4);
            V->pos += 4;
            push(V, v);
            break;
        case 'K':
        case 'M':
            if (need(V, op == 'K' ? 1 : 2)) return -1;
            v = pk_new(C, PK_INT);
            v->i = (int64_t)rd_le(p, op == 'K' ? 1 : 2);
            V->pos += op == 'K' ? 1 : 2;
            push(V, v);
            break;
        case 0x8a:
        case 0x8b:
            if (need(V, op == 0x8a ? 1 : 4)) return -1;
            n = rd_le(p, op == 0x8a ? 1 : 4);
            if (op == 0x8b && (n >> 31)) return FAIL("LONG4 with a negative length");
            V->pos += op == 0x8a ? 1 : 4;
            if (need(V, n)) return -1;
            push(V, make_long(V, S->buf + V->pos, n));
            V->pos += n;
            break;
        case 'G': {
            if (need(V, 8)) return -1;
            uint64_t bits = 0;
            for (int i = 0; i < 8; i++) bits = bits << 8 | p[i];
            v = pk_new(C, PK_FLOAT);
            memcpy(&v->f, &bits, 8);
            V->pos += 8;
            push(V, v);
            break;
        }
        case 'X':    /* BINUNICODE */
        case 0x8c:   /* SHORT_BINUNICODE */
        case 0x8d:   /* BINUNICODE8 */
        case 'T':    /* BINSTRING (Python 2 str) */
        case 'U':    /* SHORT_BINSTRING */
        case 'B':    /* BINBYTES */
        case 'C':    /* SHORT_BINBYTES */
        case 0x8e:   /* BINBYTES8 */
        case 0x96: { /* BYTEARRAY8 */
            int w8 = (op == 0x8c || op == 'U' || op == 'C') ? 1 : (op == 0x8d || op == 0x8e || op == 0x96) ? 8 : 4;
            if (need(V, (uint64_t)w8)) return -1;
            n = rd_le(p, w8);
            if (op == 'T' && (n >> 31)) return FAIL("BINSTRING with a negative length");
            V->pos += (size_t)w8;
            if (need(V, n)) return -1;
            if (op == 'B' || op == 'C' || op == 0x8e || op == 0x96) {
                V->pos += n;
                v = make_bytes(V, S->buf + V->pos - n, n);
            } else {
                v = make_str(V, S->buf + V->pos, n);
                V->pos += n;
            }
            push(V, v);
            break;
        }
        case ')':
            push(V, pk_new(C, PK_TUPLE));
            break;
        case ']':
            push(V, pk_new(C, PK_LIST));
            break;
        case '}':
            push(V, pk_new(C, PK_DICT));
            break;
        case 0x8f:
            push(V, pk_new(C, PK_SET));
            break;
        case 't':
        case 'l':
        case 0x91: /* FROZENSET */
            if (pop_mark(V, &k)) return -1;
            v = pk_new(C, op == 't' ? PK_TUPLE : op == 'l' ? PK_LIST : PK_SET);
            for (size_t i = k; i < V->sp; i++)
                if (seq_add(V, v, V->stack[i])) return -1;
            V->sp = k;
            push(V, v);
            break;
        case 'd':
            if (pop_mark(V, &k)) return -1;
            if ((V->sp - k) % 2) return FAIL("DICT with an odd number of items");
            v = pk_new(C, PK_DICT);
            for (size_t i = k; i < V->sp; i += 2)
                if (dict_set(V, v, V->stack[i], V->stack[i + 1])) return -1;
            V->sp = k;
            push(V, v);
            break;
        case 0x85:
        case 0x86:
        case 0x87: {
            int m = op - 0x84;
            if (V->sp < fence(V) + (size_t)m) return FAIL("%s needs %d values on the stack", opname(op), m);
            v = pk_new(C, PK_TUPLE);
            for (int i = 0; i < m; i++)
                if (seq_add(V, v, V->stack[V->sp - (size_t)m + (size_t)i])) return -1;
            V->sp -= (size_t)m;
            push(V, v);
            break;
        }
        case 'a':
            if (!(x = pop(V)) || !(v = top(V))) return -1;
            if (v->kind != PK_LIST) return FAIL("APPEND to a %s (only lists)", pk_kind_name(v->kind));
            if (seq_add(V, v, x)) return -1;
            break;
        case 'e':
        case 'u':
        case 0x90: { /* APPENDS, SETITEMS, ADDITEMS */
            if (pop_mark(V, &k)) return -1;
            if (k == 0 || k - 1 < fence(V)) return FAIL("%s without a container below its MARK", opname(op));
            v = V->stack[k - 1];
            pk_kind want = op == 'e' ? PK_LIST : op == 'u' ? PK_DICT : PK_SET;
            if (v->kind != want)
                return FAIL("%s to a %s (only %ss)", opname(op), pk_kind_name(v->kind), pk_kind_name(want));
            if (op == 'u') {
                if ((V->sp - k) % 2) return FAIL("SETITEMS with an odd number of items");
                for (size_t i = k; i < V->sp; i += 2)
                    if (dict_set(V, v, V->stack[i], V->stack[i + 1])) return -1;
            } else
                for (size_t i = k; i < V->sp; i++)
                    if (seq_add(V, v, V->stack[i])) return -1;
            V->sp = k;
            break;
        }
        case 's':
            if (!(x = pop(V)) || !(w = pop(V)) || !(v = top(V))) return -1;
            if (v->kind != PK_DICT) return FAIL("SETITEM on a %s (only dicts)", pk_kind_name(v->kind));
            if (dict_set(V, v, w, x)) return -1;
            break;
        case 'h':
        case 'j':
            if (need(V, op == 'h' ? 1 : 4)) return -1;
            n = rd_le(p, op == 'h' ? 1 : 4);
            V->pos += op == 'h' ? 1 : 4;
            if (memo_get(V, n)) return -1;
            break;
        case 'q':
        case 'r':
            if (need(V, op == 'q' ? 1 : 4)) return -1;
            n = rd_le(p, op == 'q' ? 1 : 4);
            V->pos += op == 'q' ? 1 : 4;
            if (!(v = top(V)) || memo_put(V, n, v)) return -1;
            break;
        case 0x94:
            if (!(v = top(V)) || memo_put(V, V->nmemo, v)) return -1;
            break;
        case 'c': {
            const char *m, *nm;
            size_t ml, nl;
            if (read_line(V, &m, &ml) || read_line(V, &nm, &nl) || find_global(V, m, ml, nm, nl, &v)) return -1;
            push(V, v);
            break;
        }
        case 0x93:
            if (!(w = pop(V)) || !(v = pop(V))) return -1;
            if (v->kind != PK_STR || w->kind != PK_STR) return FAIL("STACK_GLOBAL needs two strings");
            if (find_global(V, v->s, v->len, w->s, w->len, &x)) return -1;
            push(V, x);
            break;
        case 'R':
        case 0x81: /* REDUCE, NEWOBJ */
            if (!(w = pop(V)) || !(v = pop(V)) || call(V, v, w, op == 0x81, &x)) return -1;
            push(V, x);
            break;
        case 'b':
            if (!(w = pop(V)) || !(v = top(V))) return -1;
            if (v->kind == PK__NDARRAY_NEW) {
                if (np_setstate(V, v, w)) return -1;
            } else if (v->kind == PK__DTYPE) {
                if (dtype_setstate(V, v, w)) return -1;
            } else
                return FAIL("BUILD (__setstate__) on a %s is not allowed", pk_kind_name(v->kind));
            break;
        case 'Q':
            if (!(v = pop(V))) return -1;
            if (!S->persid)
                return FAIL("a persistent id (BINPERSID) in a plain pickle; only torch.save files use them");
            if (S->persid(S, V->at, v, &x)) return -1;
            push(V, x);
            break;
        case 0x98: /* READONLY_BUFFER */
            if (!(v = top(V))) return -1;
            break;
        case 0x97:
            return FAIL("NEXT_BUFFER: the pickle was written with out-of-band buffers (protocol 5 buffer_callback), "
                        "which are not in the file");
        case 'i': {
            const char *m, *nm;
            size_t ml, nl;
            if (read_line(V, &m, &ml) || read_line(V, &nm, &nl) || find_global(V, m, ml, nm, nl, &v)) return -1;
            return FAIL("INST (instantiating a class) is not allowed");
        }
        case 'o':
            return FAIL("OBJ (instantiating a class) is not allowed");
        case 0x92: {
            char nb[128];
            if (V->sp >= fence(V) + 3 && V->stack[V->sp - 3]->kind == PK__GLOBAL)
                return FAIL("NEWOBJ_EX of %s is not allowed", gname(V->stack[V->sp - 3], nb, sizeof nb));
            return FAIL("NEWOBJ_EX is not allowed");
        }
        case 0x82:
        case 0x83:
        case 0x84:
            return FAIL("%s (a copyreg extension code) is not allowed", opname(op));
        case 'P':
        case 'I':
        case 'L':
        case 'F':
        case 'S':
        case 'V':
        case 'g':
        case 'p':
            return FAIL("opcode %s belongs to pickle protocols 0-1 (text); this reader takes protocols 2-5",
                        opname(op));
        default:
            return FAIL("unknown opcode 0x%02x", op);
        }
    }
}

int pk_unpickle(pk_stream *S, size_t start, size_t *end, pk_value **out, int *proto) {
    vm V = {.S = S, .C = S->C, .pos = start, .at = start, .start = start};
    pk_value *r = NULL;
    int rc = run(&V, &r);
    free(V.stack);
    free(V.marks);
    free(V.memo);
    if (rc) return -1;
    *out = r;
    *end = V.pos;
    if (proto) *proto = V.proto;
    return 0;
}

/* ------------------------------------------------------------------------------------------- finish */

static int walk(pk_ctx *C, pk_value *v, int depth) {
    if (v->color_ == 2) {
        if (depth + (int)v->height_ > PK_MAX_DEPTH)
            return pk_failc(C, "values nested deeper than %d levels", PK_MAX_DEPTH);
        return 0;
    }
    if (v->color_ == 1) return pk_failc(C, "a container that contains itself (a reference cycle)");
    if (depth > PK_MAX_DEPTH) return pk_failc(C, "values nested deeper than %d levels", PK_MAX_DEPTH);
    switch (v->kind) {
    case PK__GLOBAL: {
        char nb[128];
        return pk_failc(C, "the Python name %s is used as a value, not as a function", gname(v, nb, sizeof nb));
    }
    case PK__STORAGE:
        return pk_failc(C, "a torch storage outside a tensor is not supported");
    case PK__DTYPE:
        return pk_failc(C, "a numpy dtype used as a value is not supported");
    case PK__NDARRAY_NEW:
        return pk_failc(C, "a numpy array that was never given its data");
    case PK_BYTES:
    case PK_BIGINT: {
        uint8_t *b = pk_alloc(C, v->len + 1);
        if (v->len) memcpy(b, v->b, v->len);
        v->b = b;
        break;
    }
    default:
        break;
    }
    v->height_ = 0;
    v->size_ = 1;
    if (v->kind == PK_LIST || v->kind == PK_TUPLE || v->kind == PK_SET || v->kind == PK_DICT) {
        v->color_ = 1;
        for (int pass = 0; pass < (v->kind == PK_DICT ? 2 : 1); pass++)
            for (int i = 0; i < v->n; i++) {
                pk_value *c = pass ? v->keys[i] : v->items[i];
                if (walk(C, c, depth + 1)) return -1;
                if (c->height_ + 1 > v->height_) v->height_ = c->height_ + 1;
                v->size_ += c->size_;
                if (v->size_ > PK_MAX_TREE)
                    return pk_failc(C, "more than %llu values (counting shared ones each time they are used)",
                                    (unsigned long long)PK_MAX_TREE);
            }
    }
    v->color_ = 2;
    return 0;
}

int pk_finish(pk_ctx *C, pk_value *root) {
    return walk(C, root, 0);
}

/* ------------------------------------------------------------------------------------------- queries */

const pk_value *pk_dict_get(const pk_value *v, const char *key) {
    if (!v || v->kind != PK_DICT) return NULL;
    size_t kl = strlen(key);
    for (int i = v->n - 1; i >= 0; i--)
        if (v->keys[i]->kind == PK_STR && v->keys[i]->len == kl && !memcmp(v->keys[i]->s, key, kl)) return v->items[i];
    return NULL;
}

const pk_array *pk_as_array(const pk_value *v) {
    return v && (v->kind == PK_TENSOR || v->kind == PK_NDARRAY) ? v->arr : NULL;
}

const pk_value *pk_find_array(const pk_value *v, const char *key) {
    if (!v) return NULL;
    size_t head = 0, n = 0, cap = 64;
    const pk_value **q = xmalloc(cap * sizeof *q);
    const pk_value *found = NULL;
    q[n++] = v;
    while (head < n && !found) {
        const pk_value *c = q[head++];
        if (c->kind == PK_DICT) {
            const pk_value *hit = pk_dict_get(c, key);
            if (pk_as_array(hit)) found = hit;
        }
        if (c->kind != PK_DICT && c->kind != PK_LIST && c->kind != PK_TUPLE) continue;
        for (int i = 0; i < c->n && !found; i++) {
            const pk_value *it = c->items[i];
            if (it->kind != PK_DICT && it->kind != PK_LIST && it->kind != PK_TUPLE) continue;
            if (n == cap) {
                if (head > cap / 2) { /* reuse the consumed front */
                    memmove(q, q + head, (n - head) * sizeof *q);
                    n -= head;
                    head = 0;
                } else {
                    cap *= 2;
                    q = xrealloc(q, cap * sizeof *q);
                }
            }
            q[n++] = it;
        }
    }
    free(q);
    return found;
}

static float half_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, ex = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (ex == 31)
        bits = sign | 0x7f800000u | man << 13;
    else if (ex)
        bits = sign | (ex + 112) << 23 | man << 13;
    else if (!man)
        bits = sign;
    else { /* subnormal: value man * 2^-24 */
        float f = (float)man * 5.9604644775390625e-8f;
        memcpy(&bits, &f, 4);
        bits |= sign;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

int pk_array_to_f32(const pk_array *a, float *out, char *err, size_t errlen) {
    const uint8_t *p = a->data;
    int64_t n = a->numel;
    switch (a->dtype) {
    case ST_F32:
        memcpy(out, p, (size_t)n * 4);
        return 0;
    case ST_F16:
    case ST_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            if (a->dtype == ST_F16)
                out[i] = half_f32(h);
            else {
                uint32_t b = (uint32_t)h << 16;
                memcpy(&out[i], &b, 4);
            }
        }
        return 0;
#define CONV(T, ST)                                                                                                    \
    case ST:                                                                                                           \
        for (int64_t i = 0; i < n; i++) {                                                                              \
            T x;                                                                                                       \
            memcpy(&x, p + sizeof(T) * (size_t)i, sizeof(T));                                                          \
            out[i] = (float)x;                                                                                         \
        }                                                                                                              \
        return 0;
        CONV(double, ST_F64)
        CONV(int64_t, ST_I64)
        CONV(int32_t, ST_I32)
        CONV(int16_t, ST_I16)
        CONV(int8_t, ST_I8)
        CONV(uint8_t, ST_U8)
        CONV(uint16_t, ST_U16)
        CONV(uint32_t, ST_U32)
        CONV(uint64_t, ST_U64)
#undef CONV
    case ST_BOOL:
        for (int64_t i = 0; i < n; i++) out[i] = p[i] ? 1.0f : 0.0f;
        return 0;
    default:
        if (err && errlen) snprintf(err, errlen, "no float32 conversion for dtype %s", pk_dtype_name(a->dtype));
        return -1;
    }
}

void *pk_array_take(pk_array *a) {
    void *d = a->data;
    a->data = NULL;
    return d;
}

/* ------------------------------------------------------------------------------------------- printing */

typedef struct {
    FILE *f;
    int lines, max;
} printer;

static int is_leaf(const pk_value *v) {
    return v->kind <= PK_BYTES || ((v->kind == PK_LIST || v->kind == PK_TUPLE || v->kind == PK_SET) && v->n == 0) ||
           (v->kind == PK_DICT && v->n == 0);
}

/* A string for display: UTF-8 kept, control bytes escaped, cut at about max bytes on a character boundary. */
static void display_str(char *out, size_t outlen, const char *s, size_t n, size_t max) {
    size_t o = 0, i = 0;
    for (; i < n && i < max && o + 8 < outlen; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f || c == '\'' || c == '\\')
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", c);
        else
            out[o++] = (char)c;
    }
    while (i < n && o > 0 && ((unsigned char)out[o - 1] & 0xc0) == 0x80) o--, i--; /* no half characters */
    if (i < n && o > 0 && ((unsigned char)out[o - 1] & 0xc0) == 0xc0) o--, i--;
    out[o] = 0;
    if (i < n && o + 4 < outlen) memcpy(out + o, "...", 4);
}

/* An int of any size (little-endian two's complement) in hexadecimal. */
static void bigint_repr(const uint8_t *b, size_t n, char *buf, size_t len) {
    int neg = n && (b[n - 1] & 0x80);
    size_t o = 0;
    if (neg) buf[o++] = '-';
    o += (size_t)snprintf(buf + o, len - o, "0x");
    uint8_t *m = malloc(n ? n : 1);
    for (size_t i = 0, carry = 1; i < n; i++) { /* magnitude */
        unsigned x = neg ? (unsigned)(uint8_t)~b[i] + (unsigned)carry : b[i];
        m[i] = (uint8_t)x;
        carry = neg ? x >> 8 : 0;
    }
    size_t top = n;
    while (top > 1 && !m[top - 1]) top--;
    for (size_t i = top; i-- > 0 && o + 3 < len;)
        o += (size_t)snprintf(buf + o, len - o, i == top - 1 ? "%x" : "%02x", m[i]);
    if (o + 4 >= len) snprintf(buf + len - 4, 4, "...");
    free(m);
}

/* One-line form of a leaf value. */
static void leaf_repr(const pk_value *v, char *buf, size_t n) {
    char t[256];
    switch (v->kind) {
    case PK_NONE:
        snprintf(buf, n, "None");
        break;
    case PK_BOOL:
        snprintf(buf, n, "%s", v->i ? "True" : "False");
        break;
    case PK_INT:
        snprintf(buf, n, "%lld", (long long)v->i);
        break;
    case PK_BIGINT:
        bigint_repr(v->b, v->len, buf, n < 80 ? n : 80);
        break;
    case PK_FLOAT:
        snprintf(buf, n, "%.10g", v->f);
        break;
    case PK_STR:
        display_str(t, sizeof t, v->s, v->len, 60);
        snprintf(buf, n, "'%s'", t);
        break;
    case PK_BYTES:
        snprintf(buf, n, "<%zu bytes>", v->len);
        break;
    case PK_LIST:
        snprintf(buf, n, "[]");
        break;
    case PK_TUPLE:
        snprintf(buf, n, "()");
        break;
    case PK_SET:
        snprintf(buf, n, "set()");
        break;
    case PK_DICT:
        snprintf(buf, n, "{}");
        break;
    default:
        snprintf(buf, n, "?");
        break;
    }
}

static int pline(printer *P) {
    if (P->lines == P->max) fprintf(P->f, "... (cut at %d lines)\n", P->max);
    return P->lines++ < P->max;
}

static void print_value(printer *P, const pk_value *v, int indent, const char *label) {
    if (P->lines > P->max) return;
    char buf[256];
    if (!pline(P)) return;
    fprintf(P->f, "%*s%s", indent, "", label);
    if (v->kind == PK_TENSOR || v->kind == PK_NDARRAY) {
        fprintf(P->f, "%s %s [", v->kind == PK_TENSOR ? "tensor" : "ndarray", pk_dtype_name(v->arr->dtype));
        for (int d = 0; d < v->arr->ndim; d++) fprintf(P->f, "%s%lld", d ? ", " : "", (long long)v->arr->shape[d]);
        fprintf(P->f, "]\n");
        return;
    }
    if (is_leaf(v)) {
        leaf_repr(v, buf, sizeof buf);
        if (v->kind == PK_NONE)
            fprintf(P->f, "None\n");
        else
            fprintf(P->f, "%s %s\n", pk_kind_name(v->kind), buf);
        return;
    }
    int n = v->n;
    if (v->kind != PK_DICT) { /* a short sequence of leaves on one line */
        int all = 1;
        size_t len = 0;
        for (int i = 0; i < n && all; i++) {
            all = is_leaf(v->items[i]);
            leaf_repr(v->items[i], buf, sizeof buf);
            len += strlen(buf) + 2;
        }
        if (all && len < 100) {
            fprintf(P->f, "%s (%d): %s", pk_kind_name(v->kind), n, v->kind == PK_TUPLE ? "(" : "[");
            for (int i = 0; i < n; i++) {
                leaf_repr(v->items[i], buf, sizeof buf);
                fprintf(P->f, "%s%s", i ? ", " : "", buf);
            }
            fprintf(P->f, "%s\n", v->kind == PK_TUPLE ? (n == 1 ? ",)" : ")") : "]");
            return;
        }
    }
    fprintf(P->f, "%s (%d %s)\n", pk_kind_name(v->kind), n,
            v->kind == PK_DICT ? (n == 1 ? "entry" : "entries") : (n == 1 ? "item" : "items"));
    int shown = n <= 50 ? n : 20;
    for (int i = 0; i < shown && P->lines <= P->max; i++) {
        char lab[160];
        if (v->kind == PK_DICT) {
            if (is_leaf(v->keys[i]))
                leaf_repr(v->keys[i], buf, sizeof buf);
            else
                snprintf(buf, sizeof buf, "<%s>", pk_kind_name(v->keys[i]->kind));
            snprintf(lab, sizeof lab, "%.150s: ", buf);
        } else
            snprintf(lab, sizeof lab, "[%d]: ", i);
        print_value(P, v->items[i], indent + 2, lab);
    }
    if (shown < n && pline(P)) fprintf(P->f, "%*s... %d more\n", indent + 2, "", n - shown);
}

void pk_print(FILE *f, const pk_value *v, int max_lines) {
    printer P = {f, 0, max_lines > 0 ? max_lines : 1};
    print_value(&P, v, 0, "");
}
