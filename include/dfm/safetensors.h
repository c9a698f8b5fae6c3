/* safetensors reading and writing (https://huggingface.co/docs/safetensors, format facts in REFERENCE.md §4).
 * The reader validates the header fully (sizes, offsets contiguous from 0, no gaps or overlaps, file size)
 * and names the file and tensor in every error. The writer pads the header to 8 bytes and writes atomically. */
#ifndef DFM_SAFETENSORS_H
#define DFM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    ST_BOOL,
    ST_U8,
    ST_I8,
    ST_I16,
    ST_U16,
    ST_F16,
    ST_BF16,
    ST_I32,
    ST_U32,
    ST_F32,
    ST_F64,
    ST_I64,
    ST_U64,
    ST_F8_E4M3,
    ST_F8_E5M2,
    ST_NUM_DTYPES
} st_dtype;

#define ST_MAX_DIMS 8

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end; /* byte offsets relative to the data section */
} st_tensor;

typedef struct {
    char *path;
    uint64_t header_len; /* N: the data section starts at 8 + N */
    uint64_t file_size;
    int n_tensors;
    st_tensor *tensors; /* in header order */
    int n_meta;
    char **meta_keys, **meta_values;
} st_file;

const char *st_dtype_name(st_dtype t);
size_t st_dtype_size(st_dtype t);
int64_t st_numel(const st_tensor *t);

/* Open and validate; returns NULL and fills err (if non-NULL, size errlen) on any problem. */
st_file *st_open(const char *path, char *err, size_t errlen);
/* As st_open, but dies with the message. */
st_file *st_open_or_die(const char *path);
void st_close(st_file *f);
const st_tensor *st_find(const st_file *f, const char *name);
const char *st_meta(const st_file *f, const char *key);
/* Read a tensor converted to fp32 (F32, F16, BF16, F64, F8_E4M3, F8_E5M2 and integer types). Dies on I/O error. */
void st_read_f32(const st_file *f, const st_tensor *t, float *out);
/* Read a tensor's raw bytes (end - begin of them). */
void st_read_raw(const st_file *f, const st_tensor *t, void *out);

/* Writer: collect tensors (pointers must stay valid until st_writer_finish), then write atomically. */
typedef struct st_writer st_writer;
st_writer *st_writer_new(void);
void st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape, const void *data);
void st_writer_meta(st_writer *w, const char *key, const char *value);
void st_writer_finish(st_writer *w, const char *path); /* writes and frees the writer */
void st_writer_discard(st_writer *w);                  /* frees the writer without writing */

#ifdef __cplusplus
}
#endif
#endif
