/* Batch loader: per-epoch permutations from the seed, optional background prefetch, savable state. */
#include "dfm/common.h"
#include "dfm/data.h"
#include "dfm/energon.h"
#include "dfm/rng.h"

#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct data_loader {
    int batch, null_class, c, h, w;
    int slice_first, slice_count; /* the part of each batch this process keeps (data parallelism) */
    size_t sample_floats;
    /* in-memory source */
    const image_dataset *ds;
    int *indices, n;
    uint64_t seed;
    int64_t perm_epoch; /* epoch whose permutation is in perm (-1: none) */
    int *perm;
    loader_state st;    /* the consumer's position: the next batch handed out starts here */
    /* energon source */
    energon_reader *en;
    /* prefetch */
    int threaded;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ready, want, quit;
    loader_state pending_st; /* state the prefetched batch starts from */
    float *px;
    int *plab;
    char errbuf[600];
    int failed;
};

/* Fisher-Yates with Philox draws keyed by (seed, epoch): any process computes the same order. */
static void make_perm(data_loader *l, int64_t epoch) {
    if (l->perm_epoch == epoch) return;
    for (int i = 0; i < l->n; i++) l->perm[i] = l->indices[i];
    for (int i = l->n - 1; i > 0; i--) {
        int j = (int)(rng_uniform(l->seed, RNG_STREAM_DATA, (uint32_t)epoch, 0, (uint32_t)i) * (i + 1));
        if (j > i) j = i;
        int t = l->perm[i];
        l->perm[i] = l->perm[j];
        l->perm[j] = t;
    }
    l->perm_epoch = epoch;
}

static void fill_memory(data_loader *l, loader_state *st, float *x, int *labels) {
    const image_dataset *ds = l->ds;
    for (int b = 0; b < l->batch; b++) {
        if (st->pos >= l->n) st->epoch++, st->pos = 0;
        make_perm(l, st->epoch);
        int i = l->perm[st->pos++];
        int k = b - l->slice_first;
        if (k < 0 || k >= l->slice_count) continue;
        const uint8_t *src = ds->pixels + (size_t)i * l->sample_floats;
        float *dst = x + (size_t)k * l->sample_floats;
        for (size_t e = 0; e < l->sample_floats; e++) dst[e] = src[e] * (2.0f / 255.0f) - 1.0f;
        labels[k] = ds->labels[i] >= 0 ? ds->labels[i] : l->null_class;
    }
}

static int fill_energon(data_loader *l, float *x, int *labels) {
    for (int b = 0; b < l->batch; b++) {
        energon_sample *s = NULL;
        if (energon_next(l->en, &s) != 0) {
            snprintf(l->errbuf, sizeof l->errbuf, "%s", energon_error(l->en));
            return -1;
        }
        int k = b - l->slice_first;
        if (k < 0 || k >= l->slice_count) { /* another rank's sample: the stream is read whole on every rank */
            energon_sample_free(s);
            continue;
        }
        const energon_part *img = NULL;
        for (int p = 0; p < s->nparts && !img; p++)
            if (s->parts[p].kind == EN_TENSOR && s->parts[p].dtype == EN_U8 && s->parts[p].ndim == 3) img = &s->parts[p];
        if (!img || img->shape[0] != l->h || img->shape[1] != l->w || img->shape[2] != l->c) {
            snprintf(l->errbuf, sizeof l->errbuf,
                     "energon sample '%s' in shard '%s': expected a %dx%dx%d image part (png), got %s", s->key,
                     s->shard, l->h, l->w, l->c, img ? "another shape" : "none");
            energon_sample_free(s);
            return -1;
        }
        const uint8_t *src = img->data;
        float *dst = x + (size_t)k * l->sample_floats;
        for (int ch = 0; ch < l->c; ch++)
            for (int y = 0; y < l->h; y++)
                for (int xx = 0; xx < l->w; xx++)
                    dst[((size_t)ch * l->h + y) * l->w + xx] =
                        src[((size_t)y * l->w + xx) * l->c + ch] * (2.0f / 255.0f) - 1.0f;
        const energon_part *cls = energon_sample_part(s, "cls");
        labels[k] = cls && cls->kind == EN_INT && cls->ival >= 0 ? (int)cls->ival : l->null_class;
        energon_sample_free(s);
    }
    return 0;
}

static void *prefetch_main(void *arg) {
    data_loader *l = arg;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->want && !l->quit) pthread_cond_wait(&l->cv, &l->mu);
        if (l->quit) break;
        loader_state st = l->pending_st;
        pthread_mutex_unlock(&l->mu);
        fill_memory(l, &st, l->px, l->plab);
        pthread_mutex_lock(&l->mu);
        l->want = 0;
        l->ready = 1;
        pthread_cond_broadcast(&l->cv);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

static void request(data_loader *l) {
    pthread_mutex_lock(&l->mu);
    l->pending_st = l->st;
    l->ready = 0;
    l->want = 1;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

static data_loader *alloc_loader(int batch, int c, int h, int w, int null_class) {
    data_loader *l = xcalloc(1, sizeof *l);
    l->batch = batch, l->c = c, l->h = h, l->w = w, l->null_class = null_class;
    l->sample_floats = (size_t)c * h * w;
    l->perm_epoch = -1;
    l->slice_first = 0, l->slice_count = batch;
    return l;
}

data_loader *loader_new(const image_dataset *ds, const int *indices, int n, uint64_t seed, int batch,
                        int num_workers, int null_class) {
    if (n < 1) dfm_die("data loader: no samples to load from");
    data_loader *l = alloc_loader(batch, ds->c, ds->h, ds->w, null_class);
    l->ds = ds;
    l->n = n;
    l->indices = xmalloc(sizeof(int) * (size_t)n);
    memcpy(l->indices, indices, sizeof(int) * (size_t)n);
    l->perm = xmalloc(sizeof(int) * (size_t)n);
    l->seed = seed;
    if (num_workers > 0) {
        l->threaded = 1;
        l->px = xalloc_floats((size_t)batch * l->sample_floats);
        l->plab = xcalloc((size_t)batch, sizeof(int));
        pthread_mutex_init(&l->mu, NULL);
        pthread_cond_init(&l->cv, NULL);
        if (pthread_create(&l->thread, NULL, prefetch_main, l) != 0) dfm_die("data loader: cannot start thread");
    }
    return l;
}

data_loader *loader_new_energon(const char *path, const char *split, uint64_t seed, int batch, int num_workers,
                                int c, int h, int w, int null_class, char *err, size_t errlen) {
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
    l->en = r;
    return l;
}

double loader_next(data_loader *l, float *x, int *labels) {
    double t0 = dfm_time_s();
    if (l->en) {
        if (fill_energon(l, x, labels) != 0) dfm_die("%s", l->errbuf);
        l->st.pos += l->batch;
        return dfm_time_s() - t0;
    }
    if (!l->threaded) {
        fill_memory(l, &l->st, x, labels);
        return dfm_time_s() - t0;
    }
    pthread_mutex_lock(&l->mu);
    if (!l->ready && !l->want) { /* first call, or after a restore: nothing in flight */
        l->pending_st = l->st;
        l->want = 1;
        pthread_cond_broadcast(&l->cv);
    }
    while (!l->ready) pthread_cond_wait(&l->cv, &l->mu);
    pthread_mutex_unlock(&l->mu);
    double waited = dfm_time_s() - t0;
    memcpy(x, l->px, sizeof(float) * (size_t)l->slice_count * l->sample_floats);
    memcpy(labels, l->plab, sizeof(int) * (size_t)l->slice_count);
    /* advance the consumer state exactly as the producer did, then ask for the next batch */
    for (int b = 0; b < l->batch; b++) {
        if (l->st.pos >= l->n) l->st.epoch++, l->st.pos = 0;
        l->st.pos++;
    }
    request(l);
    return waited;
}

void loader_set_slice(data_loader *l, int first, int count) {
    if (first < 0 || count < 1 || first + count > l->batch)
        dfm_die("internal: loader slice [%d, +%d) outside the batch of %d", first, count, l->batch);
    if (l->threaded) { /* the prefetched batch was cut to the old slice */
        pthread_mutex_lock(&l->mu);
        while (l->want) pthread_cond_wait(&l->cv, &l->mu);
        l->ready = 0;
        pthread_mutex_unlock(&l->mu);
    }
    l->slice_first = first, l->slice_count = count;
}

char *loader_state_save(data_loader *l) {
    if (l->en) return energon_state_save(l->en);
    json_t *j = json_pack("{s:s, s:I, s:I, s:I, s:i}", "kind", "memory", "epoch", (json_int_t)l->st.epoch, "pos",
                          (json_int_t)l->st.pos, "seed", (json_int_t)l->seed, "samples", l->n);
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return s;
}

int loader_state_restore(data_loader *l, const char *text, char *err, size_t errlen) {
    if (l->en) return energon_state_restore(l->en, text, err, errlen);
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    json_int_t epoch, pos, seed;
    int samples;
    const char *kind;
    if (!j || json_unpack(j, "{s:s, s:I, s:I, s:I, s:i}", "kind", &kind, "epoch", &epoch, "pos", &pos, "seed", &seed,
                          "samples", &samples) != 0 || strcmp(kind, "memory")) {
        snprintf(err, errlen, "data loader state: expected {\"kind\": \"memory\", \"epoch\", \"pos\", \"seed\", \"samples\"}");
        if (j) json_decref(j);
        return -1;
    }
    json_decref(j);
    if (samples != l->n || (uint64_t)seed != l->seed || pos < 0 || pos > l->n || epoch < 0) {
        snprintf(err, errlen,
                 "data loader state does not fit this run: saved %d samples, seed %lld, position %lld; this run "
                 "has %d samples, seed %llu",
                 samples, (long long)seed, (long long)pos, l->n, (unsigned long long)l->seed);
        return -1;
    }
    if (l->threaded) { /* drop anything prefetched from the old position */
        pthread_mutex_lock(&l->mu);
        while (l->want) pthread_cond_wait(&l->cv, &l->mu);
        l->ready = 0;
        pthread_mutex_unlock(&l->mu);
    }
    l->st.epoch = epoch;
    l->st.pos = pos;
    return 0;
}

void loader_free(data_loader *l) {
    if (!l) return;
    if (l->threaded) {
        pthread_mutex_lock(&l->mu);
        l->quit = 1;
        pthread_cond_broadcast(&l->cv);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->thread, NULL);
        pthread_mutex_destroy(&l->mu);
        pthread_cond_destroy(&l->cv);
    }
    if (l->en) energon_close(l->en);
    free(l->indices), free(l->perm), free(l->px), free(l->plab);
    free(l);
}

void split_indices(int n, int n_val, uint64_t seed, int **train_idx, int *n_train, int **val_idx) {
    if (n_val < 0) n_val = 0;
    if (n_val >= n) dfm_die("dataset.val_samples %d leaves no training samples out of %d", n_val, n);
    int *p = xmalloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++) p[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(rng_uniform(seed, RNG_STREAM_SPLIT, 0, 0, (uint32_t)i) * (i + 1));
        if (j > i) j = i;
        int t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
    *val_idx = xmalloc(sizeof(int) * (size_t)(n_val ? n_val : 1));
    memcpy(*val_idx, p, sizeof(int) * (size_t)n_val);
    *n_train = n - n_val;
    *train_idx = xmalloc(sizeof(int) * (size_t)*n_train);
    memcpy(*train_idx, p + n_val, sizeof(int) * (size_t)*n_train);
    free(p);
}
