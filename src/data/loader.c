/* Batch loader: per-epoch permutations from the seed, optional background prefetch, savable state. The order,
 * prefetch thread and Energon walk are loader_core.c's, shared with the video loader. */
#include "data/loader_core.h"
#include "dfm/common.h"
#include "dfm/data.h"
#include "dfm/energon.h"
#include "dfm/rng.h"

#include <stdlib.h>
#include <string.h>

struct data_loader {
    loader_base b; /* batch, slice, order and position or Energon stream, prefetcher */
    int null_class, c, h, w;
    size_t sample_floats;
    const image_dataset *ds; /* in-memory source */
    float *px;               /* the prefetched batch */
    int *plab;
    char errbuf[600];
};

typedef struct {
    data_loader *l;
    float *x;
    int *labels;
} image_fill;

static void fill_memory(data_loader *l, loader_state *st, float *x, int *labels) {
    const image_dataset *ds = l->ds;
    for (int b = 0; b < l->b.batch; b++) {
        int i = epoch_order_take(&l->b.order, st);
        int k = b - l->b.slice_first;
        if (k < 0 || k >= l->b.slice_count) continue;
        const uint8_t *src = ds->pixels + (size_t)i * l->sample_floats;
        float *dst = x + (size_t)k * l->sample_floats;
        for (size_t e = 0; e < l->sample_floats; e++) dst[e] = src[e] * (2.0f / 255.0f) - 1.0f;
        labels[k] = ds->labels[i] >= 0 ? ds->labels[i] : l->null_class;
    }
}

static void prefetch_fill(void *ctx, loader_state *st) {
    data_loader *l = ctx;
    fill_memory(l, st, l->px, l->plab);
}

static int take_energon(void *ctx, const energon_sample *s, int b, char *err, size_t errlen) {
    image_fill *f = ctx;
    data_loader *l = f->l;
    int k = b - l->b.slice_first;
    if (k < 0 || k >= l->b.slice_count) return 0; /* another rank's sample: the stream is read whole on every rank */
    const energon_part *img = NULL;
    for (int p = 0; p < s->nparts && !img; p++)
        if (s->parts[p].kind == EN_TENSOR && s->parts[p].dtype == EN_U8 && s->parts[p].ndim == 3) img = &s->parts[p];
    if (!img || img->shape[0] != l->h || img->shape[1] != l->w || img->shape[2] != l->c) {
        snprintf(err, errlen, "energon sample '%s' in shard '%s': expected a %dx%dx%d image part (png), got %s", s->key,
                 s->shard, l->h, l->w, l->c, img ? "another shape" : "none");
        return -1;
    }
    const uint8_t *src = img->data;
    float *dst = f->x + (size_t)k * l->sample_floats;
    for (int ch = 0; ch < l->c; ch++)
        for (int y = 0; y < l->h; y++)
            for (int xx = 0; xx < l->w; xx++)
                dst[((size_t)ch * l->h + y) * l->w + xx] =
                    src[((size_t)y * l->w + xx) * l->c + ch] * (2.0f / 255.0f) - 1.0f;
    const energon_part *cls = energon_sample_part(s, "cls");
    f->labels[k] = cls && cls->kind == EN_INT && cls->ival >= 0 ? (int)cls->ival : l->null_class;
    return 0;
}

static data_loader *alloc_loader(int batch, int c, int h, int w, int null_class) {
    data_loader *l = xcalloc(1, sizeof *l);
    l->b.batch = batch, l->c = c, l->h = h, l->w = w, l->null_class = null_class;
    l->sample_floats = (size_t)c * h * w;
    l->b.slice_first = 0, l->b.slice_count = batch;
    return l;
}

data_loader *loader_new(const image_dataset *ds, const int *indices, int n, uint64_t seed, int batch, int num_workers,
                        int null_class) {
    if (n < 1) dfm_die("data loader: no samples to load from");
    data_loader *l = alloc_loader(batch, ds->c, ds->h, ds->w, null_class);
    l->ds = ds;
    epoch_order_init(&l->b.order, indices, n, seed);
    if (num_workers > 0) {
        l->b.threaded = 1;
        l->px = xalloc_floats((size_t)batch * l->sample_floats);
        l->plab = xcalloc((size_t)batch, sizeof(int));
        prefetcher_start(&l->b.pf, prefetch_fill, l, "data loader");
    }
    return l;
}

data_loader *loader_new_energon(const char *path, const char *split, uint64_t seed, int batch, int num_workers, int c,
                                int h, int w, int null_class, char *err, size_t errlen) {
    energon_options o;
    energon_options_default(&o);
    o.split = split;
    o.seed = seed;
    o.dp_rank = 0, o.dp_size = 1;
    o.num_workers = num_workers;
    o.shuffle_buffer = 100;
    energon_reader *r = energon_open(path, &o, err, errlen);
    if (!r) return NULL;
    data_loader *l = alloc_loader(batch, c, h, w, null_class);
    l->b.en = r;
    return l;
}

double loader_next(data_loader *l, float *x, int *labels) {
    double t0 = dfm_time_s();
    if (l->b.en) {
        image_fill f = {l, x, labels};
        if (energon_fill_batch(l->b.en, l->b.batch, take_energon, &f, l->errbuf, sizeof l->errbuf) != 0)
            dfm_die("%s", l->errbuf);
        l->b.st.pos += l->b.batch;
        return dfm_time_s() - t0;
    }
    if (!l->b.threaded) {
        fill_memory(l, &l->b.st, x, labels);
        return dfm_time_s() - t0;
    }
    loader_base_wait(&l->b);
    double waited = dfm_time_s() - t0;
    memcpy(x, l->px, sizeof(float) * (size_t)l->b.slice_count * l->sample_floats);
    memcpy(labels, l->plab, sizeof(int) * (size_t)l->b.slice_count);
    loader_base_advance(&l->b);
    return waited;
}

void loader_set_slice(data_loader *l, int first, int count) {
    loader_base_set_slice(&l->b, first, count, "loader");
}

char *loader_state_save(data_loader *l) {
    return loader_base_state_save(&l->b, "memory");
}

int loader_state_restore(data_loader *l, const char *text, char *err, size_t errlen) {
    return loader_base_state_restore(&l->b, "memory", text, err, errlen);
}

void loader_free(data_loader *l) {
    if (!l) return;
    loader_base_free(&l->b);
    free(l->px), free(l->plab);
    free(l);
}

void split_indices(int n, int n_val, uint64_t seed, int **train_idx, int *n_train, int **val_idx) {
    if (n_val < 0) n_val = 0;
    if (n_val >= n) dfm_die("dataset.val_samples %d leaves no training samples out of %d", n_val, n);
    int *p = xmalloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++) p[i] = i;
    philox_shuffle(p, n, seed, RNG_STREAM_SPLIT, 0);
    *val_idx = xmalloc(sizeof(int) * (size_t)(n_val ? n_val : 1));
    memcpy(*val_idx, p, sizeof(int) * (size_t)n_val);
    *n_train = n - n_val;
    *train_idx = xmalloc(sizeof(int) * (size_t)*n_train);
    memcpy(*train_idx, p + n_val, sizeof(int) * (size_t)*n_train);
    free(p);
}
