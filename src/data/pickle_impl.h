/* Internals shared by the unpickler (pickle.c) and the torch.save containers (torchload.c). */
#ifndef DFM_PICKLE_IMPL_H
#define DFM_PICKLE_IMPL_H

#include "dfm/pickle.h"

#include <stdarg.h>

#define PK_MAX_NEST 4                       /* torch.save streams inside _load_from_bytes inside ... */
#define PK_MAX_NUMEL (INT64_C(1) << 48)     /* elements of one tensor, array or storage */
#define PK_EXTRA_BYTES ((uint64_t)64 << 20) /* materialised beyond twice the input (broadcast views) */
#define PK_MAX_TREE ((uint64_t)1 << 24)     /* values in the document counted as a tree (shared ones each time) */

/* Everything a load allocates lives in the arena and goes with it. */
typedef struct pk_arena {
    struct pk_chunk *chunks;
    size_t used, cap;  /* in the newest chunk */
    pk_value **arrays; /* values whose arr->data is malloc'ed */
    size_t narrays, carrays;
} pk_arena;

typedef struct {
    st_dtype dtype;
    int64_t numel;       /* elements, from the persistent id */
    const uint8_t *data; /* NULL until the bytes are known (legacy: after the main pickle) */
    int64_t data_numel;  /* elements available at data */
    pk_value *root;      /* legacy storage views: the root storage and the element offset in it */
    int64_t view_offset;
    const char *key;
} pk_storage;

typedef struct {
    pk_value *t, *storage;
    const char *what; /* where it was rebuilt, for messages */
    size_t at;
    int64_t offset;
    int64_t stride[PK_MAX_DIMS];
    int64_t maxidx; /* highest element index read (-1 for an empty tensor) */
} pk_pending;

typedef struct {
    const char *name; /* the file or part, for messages */
    pk_arena *A;
    char *err;
    size_t errlen;
    int nest;
    pk_pending *pend;
    size_t npend, cpend;
    uint64_t budget;      /* bytes that may still be materialised */
    uint64_t read_budget; /* bytes that may still be read out of zip archives */
    void **blobs;         /* buffers freed after the load (zip entries, decoded strings) */
    size_t nblobs, cblobs;
} pk_ctx;

struct pk_stream;
typedef int (*pk_persid_fn)(struct pk_stream *S, size_t at, pk_value *pid, pk_value **out);

typedef struct pk_stream {
    pk_ctx *C;
    const uint8_t *buf;
    size_t len;
    const char *what; /* NULL for the file itself, else e.g. "data.pkl" */
    pk_persid_fn persid;
    void *persid_ctx;
} pk_stream;

/* Format "'name' (what): offset N: msg" into the context's err; returns -1. */
int pk_fail(const pk_stream *S, size_t at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int pk_failc(pk_ctx *C, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void *pk_alloc(pk_ctx *C, size_t n); /* zeroed, from the arena */
pk_value *pk_new(pk_ctx *C, pk_kind k);
void pk_arena_free(pk_arena *A);
void pk_ctx_keep_blob(pk_ctx *C, void *p);

/* Run one pickle starting at `start`; *end is the offset after its STOP, *proto its PROTO (0 if none). */
int pk_unpickle(pk_stream *S, size_t start, size_t *end, pk_value **out, int *proto);
/* Materialise every pending tensor (after all storages have their bytes). */
int pk_materialise(pk_ctx *C);
/* Check a finished result (no internal values, depth, size) and copy the bytes it references. */
int pk_finish(pk_ctx *C, pk_value *root);

/* 0 and the storage's dtype if g is one of the torch.<Type>Storage globals. */
int pk_storage_global(const pk_value *g, st_dtype *dt);
/* v is a str (or bytes) equal to s. */
int pk_is_text(const pk_value *v, const char *s);

/* torchload.c: torch.load of bytes inside a pickle (_load_from_bytes): the result must be a storage. */
int pk_torch_nested(pk_stream *S, size_t at, const uint8_t *buf, size_t len, pk_value **out);

/* A small string-keyed hash map over the arena. */
typedef struct {
    const char **keys;
    pk_value **vals;
    size_t n, cap;
} pk_map;
pk_value *pk_map_get(const pk_map *m, const char *key);
void pk_map_put(pk_ctx *C, pk_map *m, const char *key, pk_value *v);

#endif
