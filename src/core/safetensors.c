/* safetensors reader and writer. */
#include "dfm/safetensors.h"
#include "dfm/common.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define ST_MAX_HEADER 100000000ull

static const struct {
    const char *name;
    size_t size;
} dtype_info[ST_NUM_DTYPES] = {
    [ST_BOOL] = {"BOOL", 1}, [ST_U8] = {"U8", 1},           [ST_I8] = {"I8", 1},           [ST_I16] = {"I16", 2},
    [ST_U16] = {"U16", 2},   [ST_F16] = {"F16", 2},         [ST_BF16] = {"BF16", 2},       [ST_I32] = {"I32", 4},
    [ST_U32] = {"U32", 4},   [ST_F32] = {"F32", 4},         [ST_F64] = {"F64", 8},         [ST_I64] = {"I64", 8},
    [ST_U64] = {"U64", 8},   [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E5M2] = {"F8_E5M2", 1},
};

const char *st_dtype_name(st_dtype t) {
    return t < ST_NUM_DTYPES ? dtype_info[t].name : "?";
}
size_t st_dtype_size(st_dtype t) {
    return t < ST_NUM_DTYPES ? dtype_info[t].size : 0;
}

int64_t st_numel(const st_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

static int parse_dtype(const char *s, st_dtype *out) {
    for (int i = 0; i < ST_NUM_DTYPES; i++)
        if (!strcmp(s, dtype_info[i].name)) {
            *out = (st_dtype)i;
            return 1;
        }
    return 0;
}

static void seterr(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void st_close(st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    for (int i = 0; i < f->n_meta; i++) free(f->meta_keys[i]), free(f->meta_values[i]);
    free(f->tensors);
    free(f->meta_keys);
    free(f->meta_values);
    free(f->path);
    free(f);
}

static int cmp_begin(const void *a, const void *b) {
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end < y->end ? -1 : x->end > y->end);
}

st_file *st_open(const char *path, char *err, size_t errlen) {
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        seterr(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    fstat(fileno(fp), &sb);
    st_file *f = xcalloc(1, sizeof *f);
    f->path = xstrdup(path);
    f->file_size = (uint64_t)sb.st_size;
    unsigned char lenbuf[8];
    char *hdr = NULL;
    json_t *root = NULL;
    if (fread(lenbuf, 1, 8, fp) != 8) {
        seterr(err, errlen, "'%s': file too short for a safetensors header (%llu bytes)", path,
               (unsigned long long)f->file_size);
        goto fail;
    }
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | lenbuf[i];
    if (n > ST_MAX_HEADER || n + 8 > f->file_size) {
        seterr(err, errlen, "'%s': header length %llu is invalid (file size %llu, limit %llu)", path,
               (unsigned long long)n, (unsigned long long)f->file_size, ST_MAX_HEADER);
        goto fail;
    }
    f->header_len = n;
    hdr = xmalloc(n + 1);
    if (fread(hdr, 1, n, fp) != n) {
        seterr(err, errlen, "'%s': short read of the %llu-byte header", path, (unsigned long long)n);
        goto fail;
    }
    hdr[n] = 0;
    json_error_t jerr;
    root = json_loadb(hdr, n, 0, &jerr);
    if (!root || !json_is_object(root)) {
        seterr(err, errlen, "'%s': header is not a JSON object (at header byte %d: %s)", path, jerr.position,
               root ? "not an object" : jerr.text);
        goto fail;
    }
    size_t cap = json_object_size(root);
    f->tensors = xcalloc(cap ? cap : 1, sizeof(st_tensor));
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (!strcmp(key, "__metadata__")) {
            if (!json_is_object(val)) {
                seterr(err, errlen, "'%s': __metadata__ must be an object of strings", path);
                goto fail;
            }
            size_t m = json_object_size(val);
            f->meta_keys = xcalloc(m ? m : 1, sizeof(char *));
            f->meta_values = xcalloc(m ? m : 1, sizeof(char *));
            const char *mk;
            json_t *mv;
            json_object_foreach(val, mk, mv) {
                if (!json_is_string(mv)) {
                    seterr(err, errlen, "'%s': __metadata__ value of '%s' is not a string", path, mk);
                    goto fail;
                }
                f->meta_keys[f->n_meta] = xstrdup(mk);
                f->meta_values[f->n_meta] = xstrdup(json_string_value(mv));
                f->n_meta++;
            }
            continue;
        }
        st_tensor *t = &f->tensors[f->n_tensors];
        json_t *jd = json_object_get(val, "dtype"), *js = json_object_get(val, "shape"),
               *jo = json_object_get(val, "data_offsets");
        if (!json_is_object(val) || !json_is_string(jd) || !json_is_array(js) || !json_is_array(jo) ||
            json_array_size(jo) != 2) {
            seterr(err, errlen, "'%s': tensor '%s': entry needs \"dtype\", \"shape\" and \"data_offsets\" [begin, end]",
                   path, key);
            goto fail;
        }
        if (!parse_dtype(json_string_value(jd), &t->dtype)) {
            seterr(err, errlen, "'%s': tensor '%s': unknown dtype '%s'", path, key, json_string_value(jd));
            goto fail;
        }
        if (json_array_size(js) > ST_MAX_DIMS) {
            seterr(err, errlen, "'%s': tensor '%s': %zu dimensions (at most %d supported)", path, key,
                   json_array_size(js), ST_MAX_DIMS);
            goto fail;
        }
        t->ndim = (int)json_array_size(js);
        for (int i = 0; i < t->ndim; i++) {
            json_t *d = json_array_get(js, (size_t)i);
            if (!json_is_integer(d) || json_integer_value(d) < 0) {
                seterr(err, errlen, "'%s': tensor '%s': shape entry %d is not a non-negative integer", path, key, i);
                goto fail;
            }
            t->shape[i] = json_integer_value(d);
        }
        json_t *jb = json_array_get(jo, 0), *je = json_array_get(jo, 1);
        if (!json_is_integer(jb) || !json_is_integer(je) || json_integer_value(jb) < 0 ||
            json_integer_value(je) < json_integer_value(jb)) {
            seterr(err, errlen, "'%s': tensor '%s': data_offsets must be integers 0 <= begin <= end", path, key);
            goto fail;
        }
        t->begin = (uint64_t)json_integer_value(jb);
        t->end = (uint64_t)json_integer_value(je);
        t->name = xstrdup(key);
        f->n_tensors++;
        uint64_t want = (uint64_t)st_numel(t) * st_dtype_size(t->dtype);
        if (t->end - t->begin != want) {
            seterr(err, errlen, "'%s': tensor '%s': %llu data bytes, but dtype %s x shape needs %llu", path, key,
                   (unsigned long long)(t->end - t->begin), st_dtype_name(t->dtype), (unsigned long long)want);
            goto fail;
        }
    }
    /* Offsets sorted must tile the data section from 0 with no gap or overlap, up to the file's end. */
    {
        st_tensor **order = xmalloc(sizeof(st_tensor *) * (size_t)(f->n_tensors ? f->n_tensors : 1));
        for (int i = 0; i < f->n_tensors; i++) order[i] = &f->tensors[i];
        qsort(order, (size_t)f->n_tensors, sizeof *order, cmp_begin);
        uint64_t pos = 0;
        for (int i = 0; i < f->n_tensors; i++) {
            if (order[i]->begin != pos) {
                seterr(err, errlen, "'%s': tensor '%s': data starts at byte %llu, expected %llu (%s)", path,
                       order[i]->name, (unsigned long long)order[i]->begin, (unsigned long long)pos,
                       order[i]->begin > pos ? "gap" : "overlap");
                free(order);
                goto fail;
            }
            pos = order[i]->end;
        }
        free(order);
        if (pos + 8 + n != f->file_size) {
            seterr(err, errlen, "'%s': data section is %llu bytes but the file holds %llu after the header%s", path,
                   (unsigned long long)pos, (unsigned long long)(f->file_size - 8 - n),
                   pos + 8 + n > f->file_size ? " (file truncated?)" : " (trailing bytes)");
            goto fail;
        }
    }
    json_decref(root);
    free(hdr);
    fclose(fp);
    return f;
fail:
    if (root) json_decref(root);
    free(hdr);
    fclose(fp);
    st_close(f);
    return NULL;
}

st_file *st_open_or_die(const char *path) {
    char err[1024];
    st_file *f = st_open(path, err, sizeof err);
    if (!f) dfm_die("%s", err);
    return f;
}

const st_tensor *st_find(const st_file *f, const char *name) {
    for (int i = 0; i < f->n_tensors; i++)
        if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

const char *st_meta(const st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta_keys[i], key)) return f->meta_values[i];
    return NULL;
}

void st_read_raw(const st_file *f, const st_tensor *t, void *out) {
    FILE *fp = xfopen(f->path, "rb");
    uint64_t off = 8 + f->header_len + t->begin;
    if (fseeko(fp, (off_t)off, SEEK_SET) != 0)
        dfm_die("'%s': cannot seek to tensor '%s' at %llu", f->path, t->name, (unsigned long long)off);
    xfread(out, 1, t->end - t->begin, fp, f->path);
    fclose(fp);
}

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0)
            bits = sign;
        else { /* subnormal: normalise */
            int e = -1;
            do {
                man <<= 1, e++;
            } while (!(man & 0x400));
            bits = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 0x3ff) << 13;
        }
    } else if (exp == 31)
        bits = sign | 0x7f800000u | man << 13;
    else
        bits = sign | (exp + 127 - 15) << 23 | man << 13;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* float8 as PyTorch's float8_e4m3fn (bias 7, no infinities, S.1111.111 is NaN) and float8_e5m2 (the top byte of
 * an fp16). */
static float f8_e4m3_to_float(uint8_t v) {
    int sign = v >> 7, exp = (v >> 3) & 0xf, man = v & 7;
    float mag = (exp == 15 && man == 7) ? NAN
                : exp == 0              ? ldexpf((float)man, -9) /* subnormal: man/8 * 2^-6 */
                                        : ldexpf(1.0f + man / 8.0f, exp - 7);
    return sign ? -mag : mag;
}

void st_read_f32(const st_file *f, const st_tensor *t, float *out) {
    int64_t n = st_numel(t);
    if (t->dtype == ST_F32) {
        st_read_raw(f, t, out);
        return;
    }
    unsigned char *raw = xmalloc(t->end - t->begin);
    st_read_raw(f, t, raw);
    for (int64_t i = 0; i < n; i++) {
        const unsigned char *p = raw + (size_t)i * st_dtype_size(t->dtype);
        switch (t->dtype) {
        case ST_F16: {
            uint16_t h;
            memcpy(&h, p, 2);
            out[i] = half_to_float(h);
            break;
        }
        case ST_BF16: {
            uint16_t h;
            memcpy(&h, p, 2);
            uint32_t b = (uint32_t)h << 16;
            memcpy(&out[i], &b, 4);
            break;
        }
        case ST_F64: {
            double d;
            memcpy(&d, p, 8);
            out[i] = (float)d;
            break;
        }
        case ST_I64: {
            int64_t v;
            memcpy(&v, p, 8);
            out[i] = (float)v;
            break;
        }
        case ST_I32: {
            int32_t v;
            memcpy(&v, p, 4);
            out[i] = (float)v;
            break;
        }
        case ST_U32: {
            uint32_t v;
            memcpy(&v, p, 4);
            out[i] = (float)v;
            break;
        }
        case ST_I16: {
            int16_t v;
            memcpy(&v, p, 2);
            out[i] = (float)v;
            break;
        }
        case ST_U16: {
            uint16_t v;
            memcpy(&v, p, 2);
            out[i] = (float)v;
            break;
        }
        case ST_U64: {
            uint64_t v;
            memcpy(&v, p, 8);
            out[i] = (float)v;
            break;
        }
        case ST_U8:
        case ST_BOOL:
            out[i] = (float)p[0];
            break;
        case ST_I8:
            out[i] = (float)(int8_t)p[0];
            break;
        case ST_F8_E4M3:
            out[i] = f8_e4m3_to_float(p[0]);
            break;
        case ST_F8_E5M2:
            out[i] = half_to_float((uint16_t)(p[0] << 8));
            break;
        default:
            free(raw);
            dfm_die("'%s': tensor '%s': dtype %s cannot be read as fp32", f->path, t->name, st_dtype_name(t->dtype));
        }
    }
    free(raw);
}

/* ---- writer ---------------------------------------------------------------------------------- */

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
} st_entry;

struct st_writer {
    int n, cap;
    st_entry *e;
    json_t *meta;
};

st_writer *st_writer_new(void) {
    st_writer *w = xcalloc(1, sizeof *w);
    return w;
}

void st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape, const void *data) {
    if (ndim > ST_MAX_DIMS) dfm_die("safetensors writer: tensor '%s' has %d dims (max %d)", name, ndim, ST_MAX_DIMS);
    for (int i = 0; i < w->n; i++)
        if (!strcmp(w->e[i].name, name)) dfm_die("safetensors writer: tensor '%s' added twice", name);
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 64;
        w->e = xrealloc(w->e, sizeof(st_entry) * (size_t)w->cap);
    }
    st_entry *e = &w->e[w->n++];
    e->name = xstrdup(name);
    e->dtype = dtype;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
    e->data = data;
}

void st_writer_meta(st_writer *w, const char *key, const char *value) {
    if (!w->meta) w->meta = json_object();
    json_object_set_new(w->meta, key, json_string(value));
}

void st_writer_finish(st_writer *w, const char *path) {
    json_t *root = json_object();
    if (w->meta) json_object_set(root, "__metadata__", w->meta);
    uint64_t off = 0;
    for (int i = 0; i < w->n; i++) {
        st_entry *e = &w->e[i];
        uint64_t bytes = st_dtype_size(e->dtype);
        json_t *shape = json_array();
        for (int d = 0; d < e->ndim; d++) {
            json_array_append_new(shape, json_integer(e->shape[d]));
            bytes *= (uint64_t)e->shape[d];
        }
        json_t *ent = json_object();
        json_object_set_new(ent, "dtype", json_string(st_dtype_name(e->dtype)));
        json_object_set_new(ent, "shape", shape);
        json_object_set_new(ent, "data_offsets", json_pack("[II]", (json_int_t)off, (json_int_t)(off + bytes)));
        json_object_set_new(root, e->name, ent);
        off += bytes;
    }
    char *hdr = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    size_t hlen = strlen(hdr), padded = (hlen + 7) / 8 * 8;
    dfm_atomic_file af;
    atomic_open(&af, path);
    unsigned char lenbuf[8];
    for (int i = 0; i < 8; i++) lenbuf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    xfwrite(lenbuf, 1, 8, af.f, af.tmp_path);
    xfwrite(hdr, 1, hlen, af.f, af.tmp_path);
    for (size_t i = hlen; i < padded; i++) fputc(' ', af.f);
    for (int i = 0; i < w->n; i++) {
        st_entry *e = &w->e[i];
        size_t bytes = st_dtype_size(e->dtype);
        for (int d = 0; d < e->ndim; d++) bytes *= (size_t)e->shape[d];
        if (bytes) xfwrite(e->data, 1, bytes, af.f, af.tmp_path);
    }
    atomic_commit(&af);
    free(hdr);
    json_decref(root);
    st_writer_discard(w);
}

void st_writer_discard(st_writer *w) {
    if (w->meta) json_decref(w->meta);
    for (int i = 0; i < w->n; i++) free(w->e[i].name);
    free(w->e);
    free(w);
}
