/* Restricted reader for Python pickles and torch.save files: DFM's pre-encoded `.meta` files (pickle.dump or
 * torch.save of a dict of tensors, numpy arrays and plain values), Energon `.pth` parts (torch.save of a tensor)
 * and `.pickle` parts (pickle.dumps of a tensor).
 *
 * Nothing in a file is ever executed. The unpickler reads pickle protocols 2-5 and knows a fixed list of Python
 * names, each implemented here in C: torch._utils._rebuild_tensor_v2 / _rebuild_tensor / _rebuild_parameter,
 * torch.<Type>Storage (Float, Half, BFloat16, Double, Long, Int, Short, Char, Byte, Bool; UntypedStorage) inside
 * persistent ids, torch.storage._load_from_bytes (its bytes are read as a nested torch.save stream under the same
 * rules), numpy's _reconstruct / _frombuffer / scalar / ndarray / dtype, collections.OrderedDict, _codecs.encode
 * (latin-1 only) and builtins set / frozenset / bytes / bytearray. Any other global (os.system, builtins.eval,
 * subprocess.*, ...) is refused where it appears, with an error naming the file, the offset and the global.
 * Sizes, strides and offsets are checked against their storage before any read, sizes are checked before any
 * allocation, memo indices, stack and MARK use are checked, nesting is limited, and a truncated stream is an
 * error naming the offset. Formats (facts from torch/serialization.py and pickletools):
 *   pickle:        one pickle; pickle.dump of a tensor stores its storage as _load_from_bytes(<legacy stream>)
 *   torch zip:     <dir>/data.pkl with persistent ids ('storage', <Type>Storage, key, location, numel);
 *                  storage bytes in <dir>/data/<key>; optional <dir>/byteorder ("little")
 *   torch legacy:  pickles of the magic number 0x1950a86a20f9469cfc6c, protocol version 1001, sys_info, the
 *                  object (persistent ids ('storage', type, key, location, numel, view_metadata)) and the list
 *                  of storage keys; then per key an int64 element count and the raw little-endian bytes.
 * Every tensor and numpy array comes out materialised: contiguous, row-major, little-endian. */
#ifndef DFM_PICKLE_H
#define DFM_PICKLE_H

#include "dfm/safetensors.h" /* st_dtype */

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PK_MAX_DIMS 16
#define PK_MAX_DEPTH 200 /* containers nested deeper than this are refused */

typedef enum {
    PK_NONE,
    PK_BOOL,    /* i: 0 or 1 */
    PK_INT,     /* i */
    PK_BIGINT,  /* an int outside int64: b/len hold its little-endian two's complement bytes (pickle's LONG) */
    PK_FLOAT,   /* f */
    PK_STR,     /* s/len: UTF-8 as stored, NUL-terminated */
    PK_BYTES,   /* b/len: bytes or bytearray */
    PK_LIST,    /* items/n */
    PK_TUPLE,   /* items/n */
    PK_SET,     /* items/n: set or frozenset, in stream order */
    PK_DICT,    /* keys/items/n in insertion order (dict and OrderedDict) */
    PK_TENSOR,  /* arr: a torch tensor */
    PK_NDARRAY, /* arr: a numpy array (0-d for numpy arrays of shape ()) */
    /* only while loading; never in a loaded document */
    PK__GLOBAL,
    PK__STORAGE,
    PK__DTYPE,
    PK__NDARRAY_NEW
} pk_kind;

typedef struct {
    st_dtype dtype; /* ST_F32, ST_F16, ST_BF16, ST_F64, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL (numpy also
                       ST_U16, ST_U32, ST_U64) */
    int ndim;
    int64_t shape[PK_MAX_DIMS];
    int64_t numel;
    size_t nbytes; /* numel * element size */
    void *data;    /* contiguous, row-major, little-endian; owned by the document (see pk_array_take) */
} pk_array;

typedef struct pk_value pk_value;
struct pk_value {
    pk_kind kind;
    int n;      /* LIST, TUPLE, SET: items; DICT: entries */
    size_t len; /* STR, BYTES, BIGINT: bytes (STR: excluding the NUL) */
    union {
        int64_t i;        /* BOOL, INT */
        double f;         /* FLOAT */
        char *s;          /* STR */
        uint8_t *b;       /* BYTES, BIGINT */
        pk_value **items; /* LIST, TUPLE, SET items; DICT values */
        pk_array *arr;    /* TENSOR, NDARRAY */
        void *priv;       /* internal kinds */
    };
    pk_value **keys; /* DICT keys (any hashable value; usually STR) */
    /* private to the loader */
    int cap_;
    size_t at_; /* BYTES: offset of the payload (or of the call that made it) in its stream */
    uint8_t color_;
    uint32_t height_;
    uint64_t size_;
};

typedef enum { PK_FMT_PICKLE, PK_FMT_TORCH_ZIP, PK_FMT_TORCH_LEGACY } pk_format;
typedef enum {
    PK_ANY,    /* whatever the bytes are: a torch.save zip archive, a legacy torch.save stream or a pickle */
    PK_PICKLE, /* what pickle.load reads: one pickle (a legacy torch.save stream is refused with a hint) */
    PK_TORCH   /* what torch.load reads: a zip archive or a legacy stream */
} pk_expect;

struct pk_arena;
typedef struct {
    pk_value *root;
    pk_format format;
    int protocol; /* the pickle protocol of the object's pickle (data.pkl / the main pickle) */
    struct pk_arena *arena_;
} pk_doc;

/* Load a file or a memory buffer (name is used in messages, e.g. "shard_000000.tar/s001.pth"). NULL on any
 * problem, with a message naming the file, the offset (and the inner stream, for nested ones) and what was
 * expected in err. The buffer is not kept: the document owns copies of everything it holds. */
pk_doc *pk_load_file(const char *path, pk_expect expect, char *err, size_t errlen);
pk_doc *pk_load_mem(const void *buf, size_t len, const char *name, pk_expect expect, char *err, size_t errlen);
void pk_doc_free(pk_doc *d);

const char *pk_kind_name(pk_kind k);     /* "dict", "tensor", ... */
const char *pk_format_name(pk_format f); /* "pickle", "torch.save (zip)", "torch.save (legacy)" */
const char *pk_dtype_name(st_dtype t);   /* torch's names: "float32", "bfloat16", "uint8", "bool", ... */
size_t pk_dtype_size(st_dtype t);

/* The value stored under a string key of a dict; NULL if v is not a dict or has no such key (the last entry
 * wins if a hand-written stream sets a key twice). */
const pk_value *pk_dict_get(const pk_value *v, const char *key);
/* The tensor or numpy array stored under `key` (e.g. "video_latents"), looked up in v if it is a dict, then in
 * the dicts nested in it (breadth-first, through dicts, lists and tuples); NULL if there is none. */
const pk_value *pk_find_array(const pk_value *v, const char *key);
/* v as an array if it is a tensor or numpy array, else NULL (an Energon .pth/.pickle part's root). */
const pk_array *pk_as_array(const pk_value *v);

/* Convert to float32 (float, bfloat16, half, integer and bool types). out holds a->numel floats. 0, or -1 with
 * a message for a dtype that has no conversion. */
int pk_array_to_f32(const pk_array *a, float *out, char *err, size_t errlen);
/* Detach an array's data from its document (the caller frees it with free()); the array keeps its shape and
 * its data becomes NULL. */
void *pk_array_take(pk_array *a);

/* Print v as an indented tree (keys, types, dtypes and shapes; short values inline), at most max_lines lines. */
void pk_print(FILE *f, const pk_value *v, int max_lines);

#ifdef __cplusplus
}
#endif
#endif
