/* Named parameter tables. */
#include "dfm/model.h"
#include "dfm/common.h"

#include <stdlib.h>
#include <string.h>


void param_table_add(param_table *t, const char *name, int ndim, const int64_t *shape, int no_decay) {
    if (ndim > DFM_MAX_DIMS) dfm_die("parameter '%s': %d dims (max %d)", name, ndim, DFM_MAX_DIMS);
    if (param_table_find(t, name)) dfm_die("parameter '%s' defined twice", name);
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 64;
        t->e = xrealloc(t->e, sizeof(param_entry) * (size_t)t->cap);
    }
    param_entry *e = &t->e[t->n++];
    e->name = xstrdup(name);
    e->ndim = ndim;
    e->numel = 1;
    for (int i = 0; i < ndim; i++) {
        e->shape[i] = shape[i];
        e->numel *= (size_t)shape[i];
    }
    e->offset = t->total;
    e->no_decay = no_decay;
    t->total += e->numel;
}

const param_entry *param_table_find(const param_table *t, const char *name) {
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->e[i].name, name)) return &t->e[i];
    return NULL;
}

void param_table_free(param_table *t) {
    for (int i = 0; i < t->n; i++) free(t->e[i].name);
    free(t->e);
    memset(t, 0, sizeof *t);
}
