/* Consolidated and sharded checkpoint tensors (see checkpoint.h). */
#include "dfm/checkpoint.h"
#include "dfm/common.h"
#include "dfm/safetensors.h"

#include <dirent.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int file_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

static void shard_path(char *out, size_t n, const char *dir, int rank, int world) {
    snprintf(out, n, "%s/shard_%05d_of_%05d.safetensors", dir, rank, world);
}

void ckpt_write_shard(const char *dir, int rank, int world, const param_table *t, size_t begin, size_t end, int nkinds,
                      const char *const *kinds, const float *const *bufs, const char *const *meta) {
    ckpt_write_shard_tp(dir, rank, world, t, begin, end, nkinds, kinds, bufs, meta, 1);
}

void ckpt_write_shard_tp(const char *dir, int rank, int world, const param_table *t, size_t begin, size_t end,
                         int nkinds, const char *const *kinds, const float *const *bufs, const char *const *meta,
                         int with_whole) {
    st_writer *w = st_writer_new();
    json_t *pieces = json_object();
    char **names = xcalloc((size_t)t->n * (size_t)nkinds + 1, sizeof(char *));
    int nn = 0;
    for (int i = 0; i < t->n; i++) {
        const param_entry *e = &t->e[i];
        size_t lo = e->offset > begin ? e->offset : begin;
        size_t hi = e->offset + e->numel < end ? e->offset + e->numel : end;
        if (lo >= hi || (!with_whole && e->split_axis < 0)) continue;
        /* the tensor's global shape; under tensor parallelism the piece lies in this rank's slice of it */
        json_t *shape = json_array();
        for (int d = 0; d < e->ndim; d++) json_array_append_new(shape, json_integer((json_int_t)e->global_shape[d]));
        json_t *pc = json_pack("{s:o, s:I}", "shape", shape, "offset", (json_int_t)(lo - e->offset));
        if (e->split_axis >= 0)
            json_object_set_new(
                pc, "split",
                json_pack("[i, I, I]", e->split_axis, (json_int_t)e->split_start, (json_int_t)e->shape[e->split_axis]));
        json_object_set_new(pieces, e->name, pc);
        int64_t n1 = (int64_t)(hi - lo);
        for (int k = 0; k < nkinds; k++) {
            size_t len = strlen(kinds[k]) + strlen(e->name) + 2;
            names[nn] = xmalloc(len);
            snprintf(names[nn], len, "%s.%s", kinds[k], e->name);
            st_writer_add(w, names[nn++], ST_F32, 1, &n1, bufs[k] + (lo - begin));
        }
    }
    json_t *info =
        json_pack("{s:i, s:i, s:I, s:I, s:I, s:o}", "rank", rank, "world", world, "begin", (json_int_t)begin, "end",
                  (json_int_t)end, "total", (json_int_t)param_table_global_total(t), "pieces", pieces);
    char *text = json_dumps(info, JSON_COMPACT | JSON_PRESERVE_ORDER);
    st_writer_meta(w, "dfm_shard", text);
    for (int i = 0; meta && meta[i]; i += 2)
        if (meta[i + 1]) st_writer_meta(w, meta[i], meta[i + 1]);
    char path[4200];
    shard_path(path, sizeof path, dir, rank, world);
    st_writer_finish(w, path);
    free(text);
    json_decref(info);
    for (int i = 0; i < nn; i++) free(names[i]);
    free(names);
}

/* The world size of the shard files in dir (from shard_00000_of_WWWWW), or 0. */
static int shard_world(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    int world = 0;
    while ((e = readdir(d))) {
        int r, w;
        char tail[32];
        if (sscanf(e->d_name, "shard_%5d_of_%5d.%31s", &r, &w, tail) == 3 && r == 0 && !strcmp(tail, "safetensors") &&
            w > 0)
            world = w;
    }
    closedir(d);
    return world;
}

static int dir_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* Weights at the top of dir (Megatron's iter_N/ form): model.safetensors or shard files. */
static int has_top_weights(const char *dir) {
    char p[4200];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    return file_exists(p) || shard_world(dir) > 0;
}

int ckpt_is_automodel_step(const char *dir) {
    char p[4200];
    snprintf(p, sizeof p, "%s/model", dir);
    return !has_top_weights(dir) && dir_exists(p);
}

void ckpt_kind_dir(const char *dir, const char *kind, char *out, size_t outlen) {
    if (!ckpt_is_automodel_step(dir))
        snprintf(out, outlen, "%s", dir);
    else
        snprintf(out, outlen, "%s/%s", dir,
                 !strcmp(kind, "exp_avg") || !strcmp(kind, "exp_avg_sq") ? "optim" : "model");
}

int ckpt_is_sharded(const char *dir, char *err, size_t errlen) {
    char p[4200], d[4096];
    ckpt_kind_dir(dir, "model", d, sizeof d);
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    if (file_exists(p)) return 0;
    if (shard_world(d) > 0) return 1;
    snprintf(err, errlen, "'%s' holds neither model.safetensors nor shard_00000_of_NNNNN.safetensors", d);
    return -1;
}

char *ckpt_meta(const char *dir_in, const char *key) {
    char p[4200], dir[4096];
    ckpt_kind_dir(dir_in, "model", dir, sizeof dir);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    if (!file_exists(p)) {
        int w = shard_world(dir);
        if (!w) return NULL;
        shard_path(p, sizeof p, dir, 0, w);
    }
    st_file *f = st_open(p, NULL, 0);
    if (!f) return NULL;
    const char *v = st_meta(f, key);
    char *out = v ? xstrdup(v) : NULL;
    st_close(f);
    return out;
}

static int is_float(st_dtype d) {
    return d == ST_F32 || d == ST_F16 || d == ST_BF16 || d == ST_F64;
}

static void shape_text(char *out, size_t n, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(out, n, "[");
    for (int d = 0; d < ndim && k < n; d++)
        k += (size_t)snprintf(out + k, n - k, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (k < n) snprintf(out + k, n - k, "]");
}

typedef struct {
    size_t lo, hi; /* flat elements */
    int shard;
} span;

/* A slice of a tensor along one axis in the tensor's global C order: `outer` rows of `run` contiguous elements,
 * row o starting at global element o * grow + gstart (a whole tensor: one row of all its elements). */
typedef struct {
    size_t outer, run, grow, gstart;
} slice_layout;

static slice_layout layout_of(int ndim, const int64_t *gshape, int axis, int64_t start, int64_t len) {
    if (axis < 0) axis = 0, start = 0, len = gshape[0];
    size_t outer = 1, inner = 1;
    for (int i = 0; i < axis; i++) outer *= (size_t)gshape[i];
    for (int i = axis + 1; i < ndim; i++) inner *= (size_t)gshape[i];
    return (slice_layout){outer, (size_t)len * inner, (size_t)gshape[axis] * inner, (size_t)start * inner};
}

/* Copy the n elements src[0..n) - elements [p0, p0 + n) of the writer's slice w of entry e's tensor - wherever
 * they fall in this table's slice of it and in the flat range [begin, end), into out (out[0] = flat element
 * begin). Every contiguous copy is recorded in *spans (when spans is not NULL) for the tiling check. Returns the
 * number of elements copied. Handles any pair of slicings: whole/whole, TP slice into a whole tensor, a whole
 * tensor into a TP slice, and equal or different TP sizes. */
static size_t map_piece(const param_entry *e, slice_layout w, const float *src, size_t p0, size_t n, size_t begin,
                        size_t end, float *out, span **spans, size_t *nspans, size_t *cspans, int shard) {
    slice_layout r = layout_of(e->ndim, e->global_shape, e->split_axis, e->split_start,
                               e->split_axis < 0 ? 0 : e->shape[e->split_axis]);
    size_t copied = 0;
    for (size_t ow = p0 / w.run; n && ow <= (p0 + n - 1) / w.run; ow++) {
        size_t l0 = ow * w.run > p0 ? ow * w.run : p0, l1 = (ow + 1) * w.run < p0 + n ? (ow + 1) * w.run : p0 + n;
        size_t g0 = ow * w.grow + w.gstart + (l0 - ow * w.run), g1 = g0 + (l1 - l0);
        const float *s = src + (l0 - p0);
        for (size_t orr = g0 / r.grow; orr <= (g1 - 1) / r.grow && orr < r.outer; orr++) {
            size_t rb = orr * r.grow + r.gstart, re = rb + r.run;
            size_t h0 = g0 > rb ? g0 : rb, h1 = g1 < re ? g1 : re;
            if (h0 >= h1) continue;
            size_t f0 = e->offset + orr * r.run + (h0 - rb), f1 = f0 + (h1 - h0); /* flat elements of this table */
            size_t c0 = f0 > begin ? f0 : begin, c1 = f1 < end ? f1 : end;
            if (c0 >= c1) continue;
            memcpy(out + (c0 - begin), s + (h0 - g0) + (c0 - f0), (c1 - c0) * sizeof(float));
            copied += c1 - c0;
            if (spans) {
                if (*nspans == *cspans)
                    *spans = xrealloc(*spans, sizeof(span) * (*cspans = *cspans ? 2 * *cspans : 64));
                (*spans)[(*nspans)++] = (span){c0, c1, shard};
            }
        }
    }
    return copied;
}

static int read_consolidated(const char *dir, const char *kind, const param_table *t, size_t begin, size_t end,
                             float *out, char *err, size_t errlen) {
    const char *file = "model", *prefix = "";
    if (!strcmp(kind, "ema"))
        file = "ema";
    else if (!strcmp(kind, "exp_avg"))
        file = "optimizer", prefix = "exp_avg.";
    else if (!strcmp(kind, "exp_avg_sq"))
        file = "optimizer", prefix = "exp_avg_sq.";
    else if (strcmp(kind, "model")) {
        snprintf(err, errlen, "internal: unknown checkpoint kind '%s'", kind);
        return -1;
    }
    char path[4200], name[600], want[128], got[128];
    snprintf(path, sizeof path, "%s/%s.safetensors", dir, file);
    st_file *f = st_open(path, err, errlen);
    if (!f) return -1;
    float *tmp = NULL;
    size_t tmp_cap = 0;
    int rc = 0;
    for (int i = 0; i < t->n && !rc; i++) {
        const param_entry *e = &t->e[i];
        if (e->offset >= end || e->offset + e->numel <= begin) continue;
        snprintf(name, sizeof name, "%s%s", prefix, e->name);
        const st_tensor *s = st_find(f, name);
        shape_text(want, sizeof want, e->ndim, e->global_shape); /* the whole tensor (a TP rank keeps a slice) */
        int same = s && s->ndim == e->ndim;
        for (int d = 0; same && d < e->ndim; d++) same = s->shape[d] == e->global_shape[d];
        if (!s)
            snprintf(err, errlen, "'%s': tensor '%s' %s is missing", path, name, want), rc = -1;
        else if (!same) {
            shape_text(got, sizeof got, s->ndim, s->shape);
            snprintf(err, errlen, "'%s': tensor '%s' has shape %s, but this model expects %s", path, name, got, want);
            rc = -1;
        } else if (!is_float(s->dtype)) {
            snprintf(err, errlen, "'%s': tensor '%s' has dtype %s; expected a floating-point dtype", path, name,
                     st_dtype_name(s->dtype));
            rc = -1;
        } else if (e->split_axis < 0 && e->offset >= begin && e->offset + e->numel <= end) {
            st_read_f32(f, s, out + (e->offset - begin));
        } else {
            if (tmp_cap < e->global_numel) free(tmp), tmp = xalloc_floats(tmp_cap = e->global_numel);
            st_read_f32(f, s, tmp);
            map_piece(e, layout_of(e->ndim, e->global_shape, -1, 0, 0), tmp, 0, e->global_numel, begin, end, out, NULL,
                      NULL, NULL, 0);
        }
    }
    free(tmp);
    st_close(f);
    return rc;
}

static int span_cmp(const void *a, const void *b) {
    const span *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* The name of the parameter holding flat element k. */
static const char *entry_name(const param_table *t, size_t k) {
    for (int i = 0; i < t->n; i++)
        if (k >= t->e[i].offset && k < t->e[i].offset + t->e[i].numel) return t->e[i].name;
    return "?";
}

static int read_sharded(const char *dir, const char *kind, const param_table *t, size_t begin, size_t end, float *out,
                        char *err, size_t errlen) {
    int world = shard_world(dir);
    /* every copied interval, so that overlapping pieces (which could add up to the right count while leaving a
     * gap) are caught, not only missing ones */
    span *spans = NULL;
    size_t nspans = 0, cspans = 0;
    float *tmp = NULL;
    size_t tmp_cap = 0;
    int rc = 0;
    char path[4200], name[600], want[128];
    for (int r = 0; r < world && !rc; r++) {
        shard_path(path, sizeof path, dir, r, world);
        if (!file_exists(path)) {
            snprintf(err, errlen, "'%s' is missing: the checkpoint was saved by %d ranks and needs all their shards",
                     path, world);
            rc = -1;
            break;
        }
        st_file *f = st_open(path, err, errlen);
        if (!f) {
            rc = -1;
            break;
        }
        const char *mtext = st_meta(f, "dfm_shard");
        json_t *m = mtext ? json_loads(mtext, 0, NULL) : NULL;
        json_t *pieces = m ? json_object_get(m, "pieces") : NULL;
        json_t *total = m ? json_object_get(m, "total") : NULL;
        if (!json_is_object(pieces) || !json_is_integer(total)) {
            snprintf(err, errlen, "'%s': metadata 'dfm_shard' is missing or lacks \"pieces\"/\"total\"", path);
            rc = -1;
        } else if ((size_t)json_integer_value(total) != param_table_global_total(t)) {
            snprintf(err, errlen, "'%s' holds a model of %lld parameters; this one has %zu", path,
                     (long long)json_integer_value(total), param_table_global_total(t));
            rc = -1;
        }
        for (int i = 0; i < t->n && !rc; i++) {
            const param_entry *e = &t->e[i];
            json_t *pc = json_object_get(pieces, e->name);
            if (!pc) continue;
            json_t *shape = json_object_get(pc, "shape"), *off = json_object_get(pc, "offset");
            json_t *split = json_object_get(pc, "split"); /* [axis, start, length]: the writer's TP slice */
            int same = json_is_array(shape) && (int)json_array_size(shape) == e->ndim && json_is_integer(off);
            for (int d = 0; same && d < e->ndim; d++)
                same = json_integer_value(json_array_get(shape, (size_t)d)) == e->global_shape[d];
            int wa = -1;
            int64_t wstart = 0, wlen = 0;
            size_t wnumel = e->global_numel; /* elements of the writer's slice */
            if (same && split) {
                json_int_t a = -1, st = -1, ln = -1;
                if (json_unpack(split, "[I, I, I]", &a, &st, &ln) != 0 || a < 0 || a >= e->ndim || st < 0 || ln < 1 ||
                    st + ln > e->global_shape[a])
                    same = 0;
                else
                    wa = (int)a, wstart = st, wlen = ln,
                    wnumel = e->global_numel / (size_t)e->global_shape[a] * (size_t)ln;
            }
            snprintf(name, sizeof name, "%s.%s", kind, e->name);
            const st_tensor *s = st_find(f, name);
            shape_text(want, sizeof want, e->ndim, e->global_shape);
            if (!same) {
                snprintf(err, errlen, "'%s': piece of '%s' is not of a tensor of shape %s", path, e->name, want);
                rc = -1;
            } else if (!s || s->ndim != 1 || !is_float(s->dtype)) {
                snprintf(err, errlen, "'%s': tensor '%s' is missing or not a 1-D floating-point piece", path, name);
                rc = -1;
            } else {
                json_int_t o = json_integer_value(off);
                size_t n = (size_t)s->shape[0];
                if (o < 0 || (size_t)o + n > wnumel) {
                    snprintf(err, errlen, "'%s': piece '%s' [%lld, +%zu) lies outside its tensor of %zu elements", path,
                             name, (long long)o, n, wnumel);
                    rc = -1;
                    break;
                }
                /* whole tensors in both: the piece is a flat range of this table; else map it through the slices */
                size_t lo = e->offset + (size_t)o;
                if (wa < 0 && e->split_axis < 0 && (lo >= end || lo + n <= begin)) continue;
                if (e->offset >= end || e->offset + e->numel <= begin) continue;
                if (tmp_cap < n) free(tmp), tmp = xalloc_floats(tmp_cap = n);
                st_read_f32(f, s, tmp);
                map_piece(e, layout_of(e->ndim, e->global_shape, wa, wstart, wlen), tmp, (size_t)o, n, begin, end, out,
                          &spans, &nspans, &cspans, r);
            }
        }
        if (m) json_decref(m);
        st_close(f);
    }
    /* the copied intervals must tile [begin, end) exactly: sorted, each starting where the last ended */
    if (!rc && nspans) qsort(spans, nspans, sizeof(span), span_cmp); /* qsort may not be given NULL */
    size_t at = begin;
    for (size_t k = 0; k < nspans && !rc; k++) {
        if (spans[k].lo != at) {
            const char *what = spans[k].lo < at ? "overlaps another shard's piece" : "leaves a gap before it";
            snprintf(err, errlen, "'%s': the %s piece of '%s' from shard %d at element %zu %s", dir, kind,
                     entry_name(t, spans[k].lo), spans[k].shard, spans[k].lo, what);
            rc = -1;
        }
        at = spans[k].hi;
    }
    if (!rc && at != end) {
        snprintf(err, errlen, "'%s': the %d shards do not hold %s elements %zu..%zu (of '%s')", dir, world, kind, at,
                 end, entry_name(t, at));
        rc = -1;
    }
    free(tmp);
    free(spans);
    return rc;
}

int ckpt_read_range(const char *top, const char *kind, const param_table *t, size_t begin, size_t end, float *out,
                    char *err, size_t errlen) {
    if (begin > end || end > t->total) {
        snprintf(err, errlen, "internal: range [%zu, %zu) outside the model's %zu parameters", begin, end, t->total);
        return -1;
    }
    char dir[4096];
    ckpt_kind_dir(top, kind, dir, sizeof dir);       /* an Automodel step folder keeps them in model/ and optim/ */
    int sharded = ckpt_is_sharded(top, err, errlen); /* the model's form is the optimizer's */
    if (sharded < 0) return -1;
    return sharded ? read_sharded(dir, kind, t, begin, end, out, err, errlen)
                   : read_consolidated(dir, kind, t, begin, end, out, err, errlen);
}

int ckpt_train_state_parse(const char *text, const char *name, long *iteration, int64_t *consumed, int64_t *seed,
                           char **loader_state, char *err, size_t errlen) {
    json_error_t je;
    json_t *st = json_loads(text, 0, &je);
    json_int_t it = 0, cs = 0, sd = 0;
    json_t *ls = NULL;
    if (!st ||
        json_unpack(st, "{s:I, s:I, s:I, s:o}", "iteration", &it, "consumed_samples", &cs, "seed", &sd, "data_loader",
                    &ls) != 0 ||
        it < 0 || cs < 0 || it > (json_int_t)1 << 40) {
        snprintf(err, errlen,
                 "'%s': expected {\"iteration\", \"consumed_samples\" (non-negative integers), \"seed\", "
                 "\"data_loader\"}%s%s",
                 name, st ? "" : ": ", st ? "" : je.text);
        if (st) json_decref(st);
        return -1;
    }
    *iteration = (long)it, *consumed = cs, *seed = sd;
    *loader_state = json_dumps(ls, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(st);
    if (!*loader_state) {
        snprintf(err, errlen, "'%s': the data_loader state cannot be written back as JSON", name);
        return -1;
    }
    return 0;
}
