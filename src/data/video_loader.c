/* Video batch loader: in-memory video datasets walked in data_loader's order (loader_core.c), or Energon streams
 * whose samples hold latents and text embeddings as .npy, .pth or .pickle parts. */
#include "data/loader_core.h"
#include "dfm/bucket_sampler.h"
#include "dfm/common.h"
#include "dfm/energon.h"
#include "dfm/pickle.h"
#include "dfm/video.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Values past this (or NaN/Inf) make a sample unusable; Energon's reader applies the same bound to .npy parts. */
#define VIDEO_MAX_ABS 1e6

struct video_loader {
    loader_base b; /* batch, slice, order and position or Energon stream, prefetcher */
    int c, t, h, w, text_len, text_dim;
    size_t lat_floats, text_floats; /* per sample */
    const video_dataset *vd;        /* in-memory source */
    int64_t skipped;                /* .pth/.pickle samples skipped for bad values (Energon counts .npy ones) */
    /* bucketed (video_loader_new_buckets): one sampler per micro-batch slot of this rank, in lockstep */
    int nslots;
    bucket_sampler *slots;
    const int *indices; /* sampler position -> dataset index (the loader's copy) */
    int *idx_buf;
    float *plat, *ptext; /* the prefetched batch */
    int *plens;
    char errbuf[1024];
};

static video_loader *alloc_loader(int batch, int c, int t, int h, int w, int text_len, int text_dim) {
    video_loader *l = xcalloc(1, sizeof *l);
    l->b.batch = batch, l->c = c, l->t = t, l->h = h, l->w = w, l->text_len = text_len, l->text_dim = text_dim;
    l->lat_floats = (size_t)c * t * h * w;
    l->text_floats = (size_t)text_len * text_dim;
    l->b.slice_first = 0, l->b.slice_count = batch;
    return l;
}

/* ------------------------------------------------------------------------------------------------ in memory */

static void fill_memory(video_loader *l, loader_state *st, float *lat, float *text, int *lens) {
    const video_dataset *vd = l->vd;
    for (int b = 0; b < l->b.batch; b++) {
        int i = epoch_order_take(&l->b.order, st);
        int k = b - l->b.slice_first;
        if (k < 0 || k >= l->b.slice_count) continue;
        memcpy(lat + (size_t)k * l->lat_floats, vd->latents + (size_t)i * l->lat_floats, sizeof(float) * l->lat_floats);
        memcpy(text + (size_t)k * l->text_floats, vd->text + (size_t)i * l->text_floats,
               sizeof(float) * l->text_floats);
        lens[k] = vd->text_lens[i];
    }
}

static void prefetch_fill(void *ctx, loader_state *st) {
    video_loader *l = ctx;
    fill_memory(l, st, l->plat, l->ptext, l->plens);
}

video_loader *video_loader_new(const video_dataset *vd, const int *indices, int n, uint64_t seed, int batch,
                               int num_workers) {
    if (n < 1) dfm_die("video loader: no samples to load from");
    if (batch < 1) dfm_die("video loader: batch must be at least 1, got %d", batch);
    for (int i = 0; i < n; i++)
        if (indices[i] < 0 || indices[i] >= vd->n)
            dfm_die("internal: video loader index %d (entry %d) outside the dataset's %d samples", indices[i], i,
                    vd->n);
    video_loader *l = alloc_loader(batch, vd->c, vd->t, vd->h, vd->w, vd->text_len, vd->text_dim);
    l->vd = vd;
    epoch_order_init(&l->b.order, indices, n, seed);
    if (num_workers > 0) {
        l->b.threaded = 1;
        l->plat = xalloc_floats((size_t)batch * l->lat_floats);
        l->ptext = xalloc_floats((size_t)batch * l->text_floats);
        l->plens = xcalloc((size_t)batch, sizeof(int));
        prefetcher_start(&l->b.pf, prefetch_fill, l, "video loader");
    }
    return l;
}

/* ------------------------------------------------------------------------------------------------- bucketed */

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

video_loader *video_loader_new_buckets(const video_dataset *vd, const int *indices, int n, uint64_t seed,
                                       int local_batch, int slot_first, int slots, int world_slots, int shuffle,
                                       int drop_last, char *err, size_t errlen) {
    if (n < 1) {
        snprintf(err, errlen, "video loader: no samples to load from");
        return NULL;
    }
    if (slots < 1 || slot_first < 0 || slot_first + slots > world_slots) {
        snprintf(err, errlen, "internal: video loader slots [%d, %d) outside %d", slot_first, slot_first + slots,
                 world_slots);
        return NULL;
    }
    int64_t *shapes = xmalloc((size_t)n * 4 * sizeof *shapes);
    int *copy = xmalloc((size_t)n * sizeof *copy);
    for (int i = 0; i < n; i++) {
        if (indices[i] < 0 || indices[i] >= vd->n)
            dfm_die("internal: video loader index %d (entry %d) outside the dataset's %d samples", indices[i], i,
                    vd->n);
        copy[i] = indices[i];
    }
    /* dataset order (sorted paths): unshuffled, each bucket is walked in it, as Automodel's dataset order */
    qsort(copy, (size_t)n, sizeof *copy, cmp_int);
    for (int i = 0; i < n; i++) {
        int sh[4];
        video_dataset_sample(vd, copy[i], sh);
        for (int d = 0; d < 4; d++) shapes[4 * (size_t)i + d] = sh[d];
    }
    video_loader *l = alloc_loader(local_batch, vd->c, vd->t, vd->h, vd->w, vd->text_len, vd->text_dim);
    l->vd = vd;
    l->indices = copy;
    l->nslots = slots;
    l->slots = xcalloc((size_t)slots, sizeof *l->slots);
    l->idx_buf = xmalloc((size_t)local_batch * sizeof *l->idx_buf);
    for (int k = 0; k < slots; k++)
        if (bucket_sampler_init(&l->slots[k], n, shapes, 4, local_batch, slot_first + k, world_slots, seed, shuffle,
                                drop_last, err, errlen) != 0) {
            free(shapes);
            video_loader_free(l);
            return NULL;
        }
    free(shapes);
    return l;
}

int video_loader_is_bucketed(const video_loader *l) {
    return l->nslots > 0;
}

int video_loader_batches_per_epoch(const video_loader *l) {
    return l->nslots > 0 ? bucket_sampler_batches_per_epoch(&l->slots[0]) : 0;
}

double video_loader_next_step(video_loader *l, float *latents, float *text, int *text_lens, int *count, int shape[4],
                              int *ids) {
    double t0 = dfm_time_s();
    if (l->nslots < 1) dfm_die("internal: video_loader_next_step on a loader without buckets");
    const video_dataset *vd = l->vd;
    int len0 = -1, bucket0 = -1;
    size_t at = 0, txt_n = l->text_floats;
    for (int k = 0; k < l->nslots; k++) {
        int bucket, len = bucket_sampler_next(&l->slots[k], l->idx_buf, &bucket);
        if (k == 0)
            len0 = len, bucket0 = bucket;
        else if (len != len0 || bucket != bucket0) /* the sampler deals every slot the same lengths and buckets */
            dfm_die("internal: bucketed loader slots out of step (%d samples of bucket %d vs %d of %d)", len, bucket,
                    len0, bucket0);
        for (int b = 0; b < len; b++) {
            int i = l->indices[l->idx_buf[b]], sh[4];
            const float *src = video_dataset_sample(vd, i, sh);
            size_t ln = (size_t)sh[0] * sh[1] * sh[2] * sh[3];
            if (k == 0 && b == 0) memcpy(shape, sh, sizeof sh);
            memcpy(latents + at * ln, src, ln * sizeof(float));
            memcpy(text + at * txt_n, vd->text + (size_t)i * txt_n, txt_n * sizeof(float));
            text_lens[at] = vd->text_lens[i];
            if (ids) ids[at] = i;
            at++;
        }
    }
    *count = len0;
    return dfm_time_s() - t0;
}

/* -------------------------------------------------------------------------------------------------- energon */

/* A float tensor found in a sample part: data borrowed from the part (.npy) or owned (.pth/.pickle). */
typedef struct {
    const energon_part *part;
    float *data;
    int owned, ndim;
    int64_t shape[PK_MAX_DIMS];
    int64_t numel;
} part_tensor;

static void part_tensor_free(part_tensor *t) {
    if (t->owned) free(t->data);
    memset(t, 0, sizeof *t);
}

static const char *part_ext(const char *name) {
    const char *d = strrchr(name, '.');
    return d ? d + 1 : name;
}

static int is_float_dtype(st_dtype t) {
    return t == ST_F32 || t == ST_F16 || t == ST_BF16 || t == ST_F64;
}

static void dims_str(const int64_t *shape, int ndim, char *buf, size_t n) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < ndim && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* Decode part p as a float tensor if it is one. 1 = tensor in *t, 0 = not a float tensor (what it is goes into
 * what[]), -1 = a .pth/.pickle part that does not parse (err). */
static int decode_tensor_part(const energon_sample *s, const energon_part *p, part_tensor *t, char *what,
                              size_t whatlen, char *err, size_t errlen) {
    memset(t, 0, sizeof *t);
    const char *ext = part_ext(p->name);
    if (p->kind == EN_TENSOR) {
        char sh[128];
        dims_str(p->shape, p->ndim, sh, sizeof sh);
        if (p->dtype != EN_F32) {
            snprintf(what, whatlen, "uint8 %s", sh);
            return 0;
        }
        t->part = p, t->data = p->data, t->ndim = p->ndim;
        memcpy(t->shape, p->shape, sizeof(int64_t) * (size_t)p->ndim);
        t->numel = (int64_t)(p->nbytes / sizeof(float));
        return 1;
    }
    int torch = !strcmp(ext, "pth") || !strcmp(ext, "pt"), pick = !strcmp(ext, "pickle") || !strcmp(ext, "pkl");
    if (p->kind != EN_BYTES || (!torch && !pick)) {
        snprintf(what, whatlen, "%s", p->kind == EN_STRING ? "text" : p->kind == EN_INT ? "int" : "bytes");
        return 0;
    }
    char name[512];
    snprintf(name, sizeof name, "%s/%s.%s", s->shard, s->key, p->name);
    pk_doc *d = pk_load_mem(p->data, p->nbytes, name, torch ? PK_TORCH : PK_PICKLE, err, errlen);
    if (!d) return -1;
    const pk_array *a = pk_as_array(d->root);
    if (!a || !is_float_dtype(a->dtype)) {
        if (a) {
            char sh[128];
            dims_str(a->shape, a->ndim, sh, sizeof sh);
            snprintf(what, whatlen, "%s %s", pk_dtype_name(a->dtype), sh);
        } else
            snprintf(what, whatlen, "a %s", pk_kind_name(d->root->kind));
        pk_doc_free(d);
        return 0;
    }
    t->part = p, t->owned = 1, t->ndim = a->ndim, t->numel = a->numel;
    memcpy(t->shape, a->shape, sizeof(int64_t) * (size_t)a->ndim);
    t->data = xmalloc(sizeof(float) * (size_t)(a->numel ? a->numel : 1));
    int rc = pk_array_to_f32(a, t->data, err, errlen);
    pk_doc_free(d);
    if (rc != 0) {
        part_tensor_free(t);
        return -1;
    }
    return 1;
}

/* Whether the tensor has ndim dims, or ndim + 1 with a leading 1 (a batch of one, as the VAE and encoder emit). */
static int has_dims(const part_tensor *t, int ndim) {
    return t->ndim == ndim || (t->ndim == ndim + 1 && t->shape[0] == 1);
}

static int all_finite(const part_tensor *t) {
    for (int64_t i = 0; i < t->numel; i++)
        if (!isfinite(t->data[i]) || fabsf(t->data[i]) > VIDEO_MAX_ABS) return 0;
    return 1;
}

typedef struct {
    video_loader *l;
    float *lat, *text;
    int *lens;
} video_fill;

/* One Energon sample: find the latents and text parts, check them, copy them if the sample is in this rank's
 * slice. Every rank decodes every sample, so that a skipped sample is skipped by all of them and the order stays
 * the same everywhere. */
static int take_video(void *ctx, const energon_sample *s, int b, char *err, size_t errlen) {
    video_fill *f = ctx;
    video_loader *l = f->l;
    part_tensor lat = {0}, txt = {0};
    char seen[768] = "";
    size_t seen_n = 0;
    int rc = -1;
    for (int i = 0; i < s->nparts && (!lat.data || !txt.data); i++) {
        part_tensor t;
        char what[160] = "";
        int got = decode_tensor_part(s, &s->parts[i], &t, what, sizeof what, err, errlen);
        if (got < 0) {
            char inner[1024];
            snprintf(inner, sizeof inner, "%s", err);
            snprintf(err, errlen, "energon sample '%s' in shard '%s', part '%s': %s", s->key, s->shard,
                     s->parts[i].name, inner);
            goto out;
        }
        if (got == 1) {
            if (!lat.data && has_dims(&t, 4))
                lat = t, snprintf(what, sizeof what, "the latents");
            else if (!txt.data && has_dims(&t, 2))
                txt = t, snprintf(what, sizeof what, "the text");
            else {
                dims_str(t.shape, t.ndim, what, sizeof what);
                part_tensor_free(&t);
            }
        }
        if (seen_n < sizeof seen)
            seen_n += (size_t)snprintf(seen + seen_n, sizeof seen - seen_n, "%s%s (%s)", seen_n ? ", " : "",
                                       s->parts[i].name, what);
    }
    if (!lat.data || !txt.data) {
        snprintf(err, errlen,
                 "energon sample '%s' in shard '%s': no %s part (a float tensor [%s] or [1, %s] in a .npy, .pth or "
                 ".pickle part); the sample has: %s",
                 s->key, s->shard, lat.data ? "text embeddings" : "latents", lat.data ? "L, D" : "C, T, H, W",
                 lat.data ? "L, D" : "C, T, H, W", seen[0] ? seen : "no parts");
        goto out;
    }
    const int64_t *ld = lat.shape + (lat.ndim == 5), *td = txt.shape + (txt.ndim == 3);
    if (ld[0] != l->c || ld[1] != l->t || ld[2] != l->h || ld[3] != l->w) {
        char sh[128];
        dims_str(lat.shape, lat.ndim, sh, sizeof sh);
        snprintf(err, errlen,
                 "energon sample '%s' in shard '%s': latents part '%s' has shape %s; expected [%d, %d, %d, %d]", s->key,
                 s->shard, lat.part->name, sh, l->c, l->t, l->h, l->w);
        goto out;
    }
    if (td[1] != l->text_dim || td[0] < 1) {
        char sh[128];
        dims_str(txt.shape, txt.ndim, sh, sizeof sh);
        snprintf(err, errlen,
                 "energon sample '%s' in shard '%s': text part '%s' has shape %s; expected [L, %d] with L >= 1", s->key,
                 s->shard, txt.part->name, sh, l->text_dim);
        goto out;
    }
    if ((lat.owned && !all_finite(&lat)) || (txt.owned && !all_finite(&txt))) {
        dfm_warn("skipping energon sample '%s' in shard '%s': NaN/Inf or |x| > %g in a tensor", s->key, s->shard,
                 VIDEO_MAX_ABS);
        l->skipped++;
        rc = 1;
        goto out;
    }
    int64_t rows = td[0], len = -1;
    const energon_part *js = energon_sample_part(s, "json");
    if (js && js->kind == EN_STRING) {
        json_error_t je;
        json_t *j = json_loads(js->data, 0, &je);
        if (!j) {
            snprintf(err, errlen, "energon sample '%s' in shard '%s': json part: %s (line %d)", s->key, s->shard,
                     je.text, je.line);
            goto out;
        }
        json_t *tl = json_is_object(j) ? json_object_get(j, "text_len") : NULL;
        if (tl) {
            if (!json_is_integer(tl) || json_integer_value(tl) < 1 || json_integer_value(tl) > rows) {
                snprintf(err, errlen,
                         "energon sample '%s' in shard '%s': json \"text_len\" must be a whole number from 1 to the "
                         "%lld rows of text part '%s'",
                         s->key, s->shard, (long long)rows, txt.part->name);
                json_decref(j);
                goto out;
            }
            len = json_integer_value(tl);
        }
        json_decref(j);
    }
    if (len < 0) { /* the last non-zero row + 1, at least 1 */
        len = 1;
        for (int64_t r = rows - 1; r > 0 && len == 1; r--)
            for (int64_t e = 0; e < l->text_dim; e++)
                if (txt.data[r * l->text_dim + e] != 0.0f) {
                    len = r + 1;
                    break;
                }
    }
    if (len > l->text_len) {
        snprintf(err, errlen,
                 "energon sample '%s' in shard '%s': text part '%s' has %lld valid rows, more than the text length %d",
                 s->key, s->shard, txt.part->name, (long long)len, l->text_len);
        goto out;
    }
    int k = b - l->b.slice_first;
    if (k >= 0 && k < l->b.slice_count) {
        memcpy(f->lat + (size_t)k * l->lat_floats, lat.data, sizeof(float) * l->lat_floats);
        float *dst = f->text + (size_t)k * l->text_floats;
        memcpy(dst, txt.data, sizeof(float) * (size_t)len * l->text_dim);
        memset(dst + (size_t)len * l->text_dim, 0, sizeof(float) * (size_t)(l->text_len - len) * l->text_dim);
        f->lens[k] = (int)len;
    }
    rc = 0;
out:
    part_tensor_free(&lat);
    part_tensor_free(&txt);
    return rc;
}

video_loader *video_loader_new_energon(const char *path, const char *split, uint64_t seed, int batch, int num_workers,
                                       int c, int t, int h, int w, int text_len, int text_dim, char *err,
                                       size_t errlen) {
    if (batch < 1 || c < 1 || t < 1 || h < 1 || w < 1 || text_len < 1 || text_dim < 1) {
        snprintf(err, errlen,
                 "video loader '%s': batch %d, latents [%d, %d, %d, %d], text [%d, %d]: every size must be positive",
                 path, batch, c, t, h, w, text_len, text_dim);
        return NULL;
    }
    energon_options o;
    energon_options_default(&o);
    o.split = split;
    o.seed = seed;
    o.dp_rank = 0, o.dp_size = 1; /* every rank reads the whole stream and keeps its slice of each batch */
    o.num_workers = num_workers;
    o.shuffle_buffer = 100;
    o.max_abs = VIDEO_MAX_ABS;
    energon_reader *r = energon_open(path, &o, err, errlen);
    if (!r) return NULL;
    video_loader *l = alloc_loader(batch, c, t, h, w, text_len, text_dim);
    l->b.en = r;
    return l;
}

/* ------------------------------------------------------------------------------------------------- batches */

double video_loader_next(video_loader *l, float *latents, float *text, int *text_lens) {
    double t0 = dfm_time_s();
    if (l->b.en) {
        video_fill f = {l, latents, text, text_lens};
        if (energon_fill_batch(l->b.en, l->b.batch, take_video, &f, l->errbuf, sizeof l->errbuf) != 0)
            dfm_die("%s", l->errbuf);
        return dfm_time_s() - t0;
    }
    if (!l->b.threaded) {
        fill_memory(l, &l->b.st, latents, text, text_lens);
        return dfm_time_s() - t0;
    }
    loader_base_wait(&l->b);
    double waited = dfm_time_s() - t0;
    size_t k = (size_t)l->b.slice_count;
    memcpy(latents, l->plat, sizeof(float) * k * l->lat_floats);
    memcpy(text, l->ptext, sizeof(float) * k * l->text_floats);
    memcpy(text_lens, l->plens, sizeof(int) * k);
    loader_base_advance(&l->b);
    return waited;
}

void video_loader_set_slice(video_loader *l, int first, int count) {
    loader_base_set_slice(&l->b, first, count, "video loader");
}

/* kind "video", so that an image loader's state is not taken for a video loader's */
char *video_loader_state_save(video_loader *l) {
    if (l->nslots > 0) { /* every slot is at the same (epoch, batch); the first one's state says it */
        char *inner = bucket_sampler_state_save(&l->slots[0]);
        size_t n = strlen(inner) + 64;
        char *out = xmalloc(n);
        snprintf(out, n, "{\"kind\":\"video_buckets\",\"sampler\":%s}", inner);
        free(inner);
        return out;
    }
    return loader_base_state_save(&l->b, "video");
}

int video_loader_state_restore(video_loader *l, const char *json, char *err, size_t errlen) {
    json_t *o = json_loads(json, 0, NULL);
    const char *kind = json_string_value(json_object_get(o, "kind"));
    int saved_buckets = kind && !strcmp(kind, "video_buckets");
    if (saved_buckets != (l->nslots > 0)) {
        snprintf(err, errlen,
                 "the data loader state was saved by a %s loader, and this run uses a %s one (bucketed batches are "
                 "used for dfm finetune and for folders of several latent shapes; dataset.bucket_sampler)",
                 saved_buckets ? "bucketed" : "single-shape", l->nslots > 0 ? "bucketed" : "single-shape");
        json_decref(o);
        return -1;
    }
    if (!saved_buckets) {
        json_decref(o);
        return loader_base_state_restore(&l->b, "video", json, err, errlen);
    }
    char *inner = json_dumps(json_object_get(o, "sampler"), JSON_COMPACT);
    json_decref(o);
    int rc = 0;
    for (int k = 0; k < l->nslots && rc == 0; k++)
        rc = bucket_sampler_state_restore(&l->slots[k], inner ? inner : "", err, errlen);
    if (rc != 0) { /* the sampler's "data-parallel size" is the micro-batch slot count here */
        size_t n = strlen(err);
        snprintf(err + n, errlen > n ? errlen - n : 0,
                 " (bucketed batches deal one slot per micro-batch of the global step: global batch / local batch "
                 "slots)");
    }
    free(inner);
    return rc;
}

int64_t video_loader_skipped(const video_loader *l) {
    return l->b.en ? l->skipped + energon_skipped(l->b.en) : 0;
}

void video_loader_free(video_loader *l) {
    if (!l) return;
    loader_base_free(&l->b);
    free(l->plat), free(l->ptext), free(l->plens);
    for (int k = 0; k < l->nslots; k++) bucket_sampler_free(&l->slots[k]);
    free(l->slots), free((void *)l->indices), free(l->idx_buf);
    free(l);
}
