/* The sample order, background prefetch and Energon batch walk shared by the image and video loaders. */
#include "data/loader_core.h"
#include "dfm/common.h"
#include "dfm/rng.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------- epoch order */

void epoch_order_init(epoch_order *o, const int *indices, int n, uint64_t seed) {
    o->n = n;
    o->indices = xmalloc(sizeof(int) * (size_t)n);
    memcpy(o->indices, indices, sizeof(int) * (size_t)n);
    o->perm = xmalloc(sizeof(int) * (size_t)n);
    o->seed = seed;
    o->perm_epoch = -1;
}

void epoch_order_free(epoch_order *o) {
    free(o->indices), free(o->perm);
    o->indices = o->perm = NULL;
}

void philox_shuffle(int *a, int n, uint64_t seed, uint32_t stream, uint32_t step) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(rng_uniform(seed, stream, step, 0, (uint32_t)i) * (i + 1));
        if (j > i) j = i;
        int t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

static void make_perm(epoch_order *o, int64_t epoch) {
    if (o->perm_epoch == epoch) return;
    memcpy(o->perm, o->indices, sizeof(int) * (size_t)o->n);
    philox_shuffle(o->perm, o->n, o->seed, RNG_STREAM_DATA, (uint32_t)epoch);
    o->perm_epoch = epoch;
}

int epoch_order_take(epoch_order *o, loader_state *st) {
    if (st->pos >= o->n) st->epoch++, st->pos = 0;
    make_perm(o, st->epoch);
    return o->perm[st->pos++];
}

void loader_state_advance(loader_state *st, int n, int count) {
    for (int b = 0; b < count; b++) {
        if (st->pos >= n) st->epoch++, st->pos = 0;
        st->pos++;
    }
}

char *epoch_order_state_save(const epoch_order *o, const loader_state *st, const char *kind) {
    json_t *j = json_pack("{s:s, s:I, s:I, s:I, s:i}", "kind", kind, "epoch", (json_int_t)st->epoch, "pos",
                          (json_int_t)st->pos, "seed", (json_int_t)o->seed, "samples", o->n);
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return s;
}

int epoch_order_state_restore(const epoch_order *o, loader_state *st, const char *kind, const char *text, char *err,
                              size_t errlen) {
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    json_int_t epoch, pos, seed;
    int samples;
    const char *k;
    if (!j ||
        json_unpack(j, "{s:s, s:I, s:I, s:I, s:i}", "kind", &k, "epoch", &epoch, "pos", &pos, "seed", &seed, "samples",
                    &samples) != 0 ||
        strcmp(k, kind)) {
        snprintf(err, errlen,
                 "data loader state: expected {\"kind\": \"%s\", \"epoch\", \"pos\", \"seed\", \"samples\"}", kind);
        if (j) json_decref(j);
        return -1;
    }
    json_decref(j);
    if (samples != o->n || (uint64_t)seed != o->seed || pos < 0 || pos > o->n || epoch < 0) {
        snprintf(err, errlen,
                 "data loader state does not fit this run: saved %d samples, seed %lld, position %lld; this run "
                 "has %d samples, seed %llu",
                 samples, (long long)seed, (long long)pos, o->n, (unsigned long long)o->seed);
        return -1;
    }
    st->epoch = epoch;
    st->pos = pos;
    return 0;
}

/* ----------------------------------------------------------------------------------------------- prefetcher */

static void *prefetch_main(void *arg) {
    prefetcher *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->want && !p->quit) pthread_cond_wait(&p->cv, &p->mu);
        if (p->quit) break;
        loader_state st = p->pending_st;
        pthread_mutex_unlock(&p->mu);
        p->fill(p->ctx, &st);
        pthread_mutex_lock(&p->mu);
        p->want = 0;
        p->ready = 1;
        pthread_cond_broadcast(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

void prefetcher_start(prefetcher *p, prefetch_fill_fn fill, void *ctx, const char *what) {
    memset(p, 0, sizeof *p);
    p->fill = fill, p->ctx = ctx;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (pthread_create(&p->thread, NULL, prefetch_main, p) != 0) dfm_die("%s: cannot start thread", what);
}

void prefetcher_wait(prefetcher *p, const loader_state *st) {
    pthread_mutex_lock(&p->mu);
    if (!p->ready && !p->want) { /* first call, or after a drop: nothing in flight */
        p->pending_st = *st;
        p->want = 1;
        pthread_cond_broadcast(&p->cv);
    }
    while (!p->ready) pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

void prefetcher_request(prefetcher *p, const loader_state *st) {
    pthread_mutex_lock(&p->mu);
    p->pending_st = *st;
    p->ready = 0;
    p->want = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

void prefetcher_drop(prefetcher *p) {
    pthread_mutex_lock(&p->mu);
    while (p->want) pthread_cond_wait(&p->cv, &p->mu);
    p->ready = 0;
    pthread_mutex_unlock(&p->mu);
}

void prefetcher_stop(prefetcher *p) {
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
}

/* ---------------------------------------------------------------------------------------------- loader base */

void loader_base_set_slice(loader_base *b, int first, int count, const char *what) {
    if (first < 0 || count < 1 || first + count > b->batch)
        dfm_die("internal: %s slice [%d, +%d) outside the batch of %d", what, first, count, b->batch);
    if (b->threaded) prefetcher_drop(&b->pf); /* the prefetched batch was cut to the old slice */
    b->slice_first = first, b->slice_count = count;
}

void loader_base_wait(loader_base *b) {
    prefetcher_wait(&b->pf, &b->st);
}

void loader_base_advance(loader_base *b) {
    loader_state_advance(&b->st, b->order.n, b->batch);
    prefetcher_request(&b->pf, &b->st);
}

char *loader_base_state_save(loader_base *b, const char *kind) {
    if (b->en) return energon_state_save(b->en);
    return epoch_order_state_save(&b->order, &b->st, kind);
}

int loader_base_state_restore(loader_base *b, const char *kind, const char *json, char *err, size_t errlen) {
    if (b->en) return energon_state_restore(b->en, json, err, errlen);
    loader_state st;
    if (epoch_order_state_restore(&b->order, &st, kind, json, err, errlen) != 0) return -1;
    if (b->threaded) prefetcher_drop(&b->pf); /* drop anything prefetched from the old position */
    b->st = st;
    return 0;
}

void loader_base_free(loader_base *b) {
    if (b->threaded) prefetcher_stop(&b->pf);
    if (b->en) energon_close(b->en);
    epoch_order_free(&b->order);
}

/* ---------------------------------------------------------------------------------------------- energon walk */

int energon_fill_batch(energon_reader *r, int batch, energon_take_fn take, void *ctx, char *err, size_t errlen) {
    for (int b = 0; b < batch;) {
        energon_sample *s = NULL;
        if (energon_next(r, &s) != 0) {
            snprintf(err, errlen, "%s", energon_error(r));
            return -1;
        }
        int rc = take(ctx, s, b, err, errlen);
        energon_sample_free(s);
        if (rc < 0) return -1;
        if (rc == 0) b++;
    }
    return 0;
}
