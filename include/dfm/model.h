/* Named parameter tables: every model keeps its parameters, gradients and optimiser moments in one
 * contiguous buffer each; this table names the views (diffusers names), so checkpoint I/O, sharding and
 * all-reduce become offset arithmetic. */
#ifndef DFM_MODEL_H
#define DFM_MODEL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DFM_MAX_DIMS 5

typedef struct {
    char *name; /* diffusers parameter name */
    int ndim;
    int64_t shape[DFM_MAX_DIMS];
    size_t offset; /* in floats, into the parameter buffer */
    size_t numel;
    int no_decay; /* excluded from weight decay (biases, embeddings where so configured) */
    /* Tensor parallelism: a table may hold this rank's slice of a tensor split along one dimension. shape is the
     * slice's (local) shape; global_shape the whole tensor's; the slice is indices [split_start, split_start +
     * shape[split_axis]) of dimension split_axis. split_axis = -1: the tensor is whole (global_shape = shape). */
    int split_axis;
    int64_t split_start;
    int64_t global_shape[DFM_MAX_DIMS];
    size_t global_numel;
} param_entry;

typedef struct {
    int n, cap;
    param_entry *e;
    size_t total; /* floats */
    /* A pipeline stage's part of a model: the whole model's global element count (param_table_global_total reports
     * it, so checkpoint pieces written or read through the part check against the whole model); 0: this table's. */
    size_t model_total;
} param_table;

void param_table_add(param_table *t, const char *name, int ndim, const int64_t *shape, int no_decay);
const param_entry *param_table_find(const param_table *t, const char *name);
/* Add part `part` of `parts` equal slices of a tensor of global shape gshape along dimension axis (tensor
 * parallelism; parts = 1 is param_table_add). The caller checks that parts divides gshape[axis]. */
void param_table_add_split(param_table *t, const char *name, int ndim, const int64_t *gshape, int no_decay, int axis,
                           int parts, int part);
/* Append a copy of entry src (name, shape, no_decay and its tensor-parallel split: global shape, axis, start) at
 * the end of t's layout. */
void param_table_add_entry(param_table *t, const param_entry *src);
/* The number of floats of the whole model the table describes slices of (= total without split entries; a stage
 * table's model_total when set). */
size_t param_table_global_total(const param_table *t);
/* Copy entry e's slice out of its whole tensor `whole` (laid out by global_shape, C order) into `slice`. */
void param_entry_take_slice(const param_entry *e, const float *whole, float *slice);
void param_table_free(param_table *t);

/* Save a buffer laid out by table t (parameters, EMA weights, a moment) as F32 safetensors, one tensor
 * per entry, names prefixed with `prefix` (may be ""), atomically. meta: NULL-terminated key/value pairs. */
void param_table_save(const param_table *t, const float *buf, const char *prefix, const char *path,
                      const char *const *meta);
/* Load every entry of t (name prefixed with `prefix`) from a safetensors file into buf, converting F16/BF16/F64.
 * A missing tensor, a shape mismatch or (unless allow_extra) a tensor the table does not know is an error
 * that names the file, the tensor and both shapes; returns 0 on success, -1 with the message in err. */
int param_table_load(const param_table *t, float *buf, const char *prefix, const char *path, int allow_extra, char *err,
                     size_t errlen);
/* How a model's forward and backward reach its parameters and gradients, segment by segment. A segment is a
 * contiguous range of the table (a model's embedders, one block, its output head). Without hooks (all NULL)
 * everything lives in the model's own buffers; a data-parallel engine sets them to gather sharded parameters
 * just before use and to start reducing a segment's gradients as soon as the backward has finished it. */
typedef struct {
    void *ctx;
    /* segment s's parameters, laid out as the table's range of s; `backward` says which pass asks */
    const float *(*params)(void *ctx, int seg, int backward);
    /* where segment s's gradients accumulate (+=), same layout */
    float *(*grads)(void *ctx, int seg);
    /* the backward has finished segment s's gradients */
    void (*grads_done)(void *ctx, int seg);
} segment_hooks;

/* Pipeline parallelism: the tensors that cross a stage boundary, in the model's current activation arena.
 * STAGE_FWD_IN: where a stage that does not start with the embedders receives its input (the hidden states
 * entering its first block and the per-sample conditioning every block reads) before its forward;
 * STAGE_FWD_OUT: what a stage that does not end with the output head sends after its forward (the same kinds);
 * STAGE_GRAD: the gradients of those tensors, received before and sent after the backward of a stage (a
 * stage's backward accumulates into them, so a received gradient continues the sum in one process's order). */
typedef enum { STAGE_FWD_IN, STAGE_FWD_OUT, STAGE_GRAD } stage_dir;
#define STAGE_MAX_TENSORS 4
typedef struct {
    int n;
    float *t[STAGE_MAX_TENSORS];
    size_t len[STAGE_MAX_TENSORS]; /* floats */
} stage_tensors;

#ifdef __cplusplus
}
#endif
#endif
