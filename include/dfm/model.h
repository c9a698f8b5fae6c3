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
} param_entry;

typedef struct {
    int n, cap;
    param_entry *e;
    size_t total; /* floats */
} param_table;

void param_table_add(param_table *t, const char *name, int ndim, const int64_t *shape, int no_decay);
const param_entry *param_table_find(const param_table *t, const char *name);
void param_table_free(param_table *t);

#ifdef __cplusplus
}
#endif
#endif
