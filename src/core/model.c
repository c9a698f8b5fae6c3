/* Named parameter tables. */
#include "dfm/model.h"
#include "dfm/common.h"
#include "dfm/safetensors.h"

#include <stdio.h>

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
    e->split_axis = -1;
    e->split_start = 0;
    for (int i = 0; i < DFM_MAX_DIMS; i++) e->global_shape[i] = i < ndim ? shape[i] : 0;
    e->global_numel = e->numel;
    t->total += e->numel;
}

void param_table_add_split(param_table *t, const char *name, int ndim, const int64_t *gshape, int no_decay, int axis,
                           int parts, int part) {
    if (parts <= 1) {
        param_table_add(t, name, ndim, gshape, no_decay);
        return;
    }
    if (axis < 0 || axis >= ndim || gshape[axis] % parts || part < 0 || part >= parts)
        dfm_die("internal: parameter '%s' cannot be split in %d along dimension %d", name, parts, axis);
    int64_t local[DFM_MAX_DIMS];
    for (int i = 0; i < ndim; i++) local[i] = gshape[i];
    local[axis] = gshape[axis] / parts;
    param_table_add(t, name, ndim, local, no_decay);
    param_entry *e = &t->e[t->n - 1];
    e->split_axis = axis;
    e->split_start = local[axis] * part;
    e->global_numel = 1;
    for (int i = 0; i < ndim; i++) e->global_shape[i] = gshape[i], e->global_numel *= (size_t)gshape[i];
}

void param_table_add_entry(param_table *t, const param_entry *src) {
    param_table_add(t, src->name, src->ndim, src->shape, src->no_decay);
    param_entry *e = &t->e[t->n - 1];
    e->split_axis = src->split_axis;
    e->split_start = src->split_start;
    for (int i = 0; i < DFM_MAX_DIMS; i++) e->global_shape[i] = src->global_shape[i];
    e->global_numel = src->global_numel;
}

size_t param_table_global_total(const param_table *t) {
    if (t->model_total) return t->model_total;
    size_t n = 0;
    for (int i = 0; i < t->n; i++) n += t->e[i].global_numel;
    return n;
}

void param_entry_take_slice(const param_entry *e, const float *whole, float *slice) {
    if (e->split_axis < 0) {
        memcpy(slice, whole, e->numel * sizeof(float));
        return;
    }
    size_t outer = 1, inner = 1;
    for (int i = 0; i < e->split_axis; i++) outer *= (size_t)e->shape[i];
    for (int i = e->split_axis + 1; i < e->ndim; i++) inner *= (size_t)e->shape[i];
    size_t run = (size_t)e->shape[e->split_axis] * inner, grow = (size_t)e->global_shape[e->split_axis] * inner;
    for (size_t o = 0; o < outer; o++)
        memcpy(slice + o * run, whole + o * grow + (size_t)e->split_start * inner, run * sizeof(float));
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

static void shape_str(char *out, size_t n, int ndim, const int64_t *shape) {
    size_t used = (size_t)snprintf(out, n, "[");
    for (int i = 0; i < ndim && used < n; i++)
        used += (size_t)snprintf(out + used, n - used, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (used < n) snprintf(out + used, n - used, "]");
}

void param_table_save(const param_table *t, const float *buf, const char *prefix, const char *path,
                      const char *const *meta) {
    st_writer *w = st_writer_new();
    char name[512];
    for (int i = 0; i < t->n; i++) {
        snprintf(name, sizeof name, "%s%s", prefix, t->e[i].name);
        st_writer_add(w, name, ST_F32, t->e[i].ndim, t->e[i].shape, buf + t->e[i].offset);
    }
    for (int i = 0; meta && meta[i]; i += 2) st_writer_meta(w, meta[i], meta[i + 1]);
    st_writer_finish(w, path);
}

int param_table_load(const param_table *t, float *buf, const char *prefix, const char *path, int allow_extra, char *err,
                     size_t errlen) {
    st_file *f = st_open(path, err, errlen);
    if (!f) return -1;
    char name[512], want[128], got[128];
    size_t plen = strlen(prefix);
    for (int i = 0; i < t->n; i++) {
        const param_entry *e = &t->e[i];
        snprintf(name, sizeof name, "%s%s", prefix, e->name);
        const st_tensor *s = st_find(f, name);
        shape_str(want, sizeof want, e->ndim, e->shape);
        if (!s) {
            snprintf(err, errlen, "'%s': tensor '%s' %s is missing", path, name, want);
            st_close(f);
            return -1;
        }
        int same = s->ndim == e->ndim;
        for (int d = 0; same && d < e->ndim; d++) same = s->shape[d] == e->shape[d];
        if (!same) {
            shape_str(got, sizeof got, s->ndim, s->shape);
            snprintf(err, errlen, "'%s': tensor '%s' has shape %s, but this model expects %s", path, name, got, want);
            st_close(f);
            return -1;
        }
        if (s->dtype != ST_F32 && s->dtype != ST_F16 && s->dtype != ST_BF16 && s->dtype != ST_F64) {
            snprintf(err, errlen, "'%s': tensor '%s' has dtype %s; expected a floating-point dtype", path, name,
                     st_dtype_name(s->dtype));
            st_close(f);
            return -1;
        }
        st_read_f32(f, s, buf + e->offset);
    }
    if (!allow_extra) {
        for (int i = 0; i < f->n_tensors; i++) {
            const char *n = f->tensors[i].name;
            if (strncmp(n, prefix, plen) || !param_table_find(t, n + plen)) {
                snprintf(err, errlen, "'%s': tensor '%s' is not a parameter of this model", path, n);
                st_close(f);
                return -1;
            }
        }
    }
    st_close(f);
    return 0;
}
