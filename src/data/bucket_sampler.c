/* Bucketed batch sampler (Automodel's SequentialBucketSampler semantics). See include/dfm/bucket_sampler.h. */
#include "dfm/bucket_sampler.h"
#include "dfm/common.h"
#include "dfm/rng.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int errf(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static int cmp_shape(const int64_t *a, const int64_t *b, int ndim) {
    for (int d = 0; d < ndim; d++)
        if (a[d] != b[d]) return a[d] < b[d] ? -1 : 1;
    return 0;
}

static int g_ndim; /* qsort has no context argument in C11; init is not reentrant across threads */
static const int64_t *g_shapes;
static int cmp_sample(const void *pa, const void *pb) {
    int a = *(const int *)pa, b = *(const int *)pb;
    int c = cmp_shape(g_shapes + (size_t)a * g_ndim, g_shapes + (size_t)b * g_ndim, g_ndim);
    return c ? c : (a > b) - (a < b); /* ties by index: members stay ascending */
}

int bucket_sampler_init(bucket_sampler *s, int n, const int64_t *shapes, int ndim, int local_batch, int rank, int world,
                        uint64_t seed, int shuffle, int drop_last, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    if (n <= 0) return errf(err, errlen, "bucket sampler: the dataset is empty");
    if (ndim < 1 || ndim > BUCKET_MAX_DIMS)
        return errf(err, errlen, "bucket sampler: shapes need 1..%d dimensions, got %d", BUCKET_MAX_DIMS, ndim);
    if (local_batch < 1) return errf(err, errlen, "bucket sampler: local batch size %d must be >= 1", local_batch);
    if (world < 1 || rank < 0 || rank >= world)
        return errf(err, errlen, "bucket sampler: rank %d is not in a data-parallel group of %d", rank, world);
    int *order = xmalloc((size_t)n * sizeof *order);
    for (int i = 0; i < n; i++) order[i] = i;
    g_ndim = ndim;
    g_shapes = shapes;
    qsort(order, (size_t)n, sizeof *order, cmp_sample);
    for (int i = 0; i < n;) {
        int j = i;
        while (j < n && !cmp_shape(shapes + (size_t)order[i] * ndim, shapes + (size_t)order[j] * ndim, ndim)) j++;
        s->buckets = xrealloc(s->buckets, (size_t)(s->nbuckets + 1) * sizeof *s->buckets);
        bucket_info *b = &s->buckets[s->nbuckets++];
        memset(b, 0, sizeof *b);
        b->ndim = ndim;
        memcpy(b->dims, shapes + (size_t)order[i] * ndim, (size_t)ndim * sizeof *b->dims);
        b->count = j - i;
        b->members = xmalloc((size_t)b->count * sizeof *b->members);
        memcpy(b->members, order + i, (size_t)b->count * sizeof *b->members);
        i = j;
    }
    free(order);
    s->n = n;
    s->local_batch = local_batch;
    s->rank = rank;
    s->world = world;
    s->seed = seed;
    s->shuffle = shuffle;
    s->drop_last = drop_last;
    s->plan_epoch = -1;
    if (bucket_sampler_batches_per_epoch(s) == 0) {
        errf(err, errlen,
             "bucket sampler: no batch in an epoch: %d samples in %d shape buckets, local batch %d x %d ranks, "
             "drop_last; lower the local batch size or set drop_last false",
             n, s->nbuckets, local_batch, world);
        bucket_sampler_free(s);
        return -1;
    }
    return 0;
}

void bucket_sampler_free(bucket_sampler *s) {
    for (int b = 0; b < s->nbuckets; b++) free(s->buckets[b].members);
    free(s->buckets);
    free(s->plan);
    free(s->batch_start);
    free(s->batch_bucket);
    memset(s, 0, sizeof *s);
}

/* Per-rank share of bucket b after padding to a multiple of world, and the batches it makes. */
static int share_of(const bucket_sampler *s, int b) {
    return (s->buckets[b].count + s->world - 1) / s->world;
}
static int batches_of(const bucket_sampler *s, int b) {
    int share = share_of(s, b);
    return s->drop_last ? share / s->local_batch : (share + s->local_batch - 1) / s->local_batch;
}

int bucket_sampler_batches_per_epoch(const bucket_sampler *s) {
    int total = 0;
    for (int b = 0; b < s->nbuckets; b++) total += batches_of(s, b);
    return total;
}

/* Fisher-Yates from (seed + epoch, DATA stream, index = key): draw j picks among the first n - j. Every rank
 * computes the same permutation because nothing rank-dependent enters it. */
static void permute(int *a, int n, uint64_t key_seed, uint32_t key) {
    for (int j = 0; j + 1 < n; j++) {
        int last = n - 1 - j;
        int pick = (int)(rng_uniform(key_seed, RNG_STREAM_DATA, 0, key, (uint32_t)j) * (last + 1));
        if (pick > last) pick = last;
        int t = a[pick];
        a[pick] = a[last];
        a[last] = t;
    }
}

static void build_plan(bucket_sampler *s) {
    if (s->plan_epoch == s->epoch && s->plan) return;
    uint64_t es = s->seed + (uint64_t)s->epoch;
    int nb = s->nbuckets;
    int *border = xmalloc((size_t)nb * sizeof *border);
    for (int b = 0; b < nb; b++) border[b] = b;
    if (s->shuffle) permute(border, nb, es, 0);
    int nbatches = bucket_sampler_batches_per_epoch(s);
    free(s->plan);
    free(s->batch_start);
    free(s->batch_bucket);
    s->plan = xmalloc((size_t)nbatches * s->local_batch * sizeof *s->plan + sizeof(int));
    s->batch_start = xmalloc((size_t)(nbatches + 1) * sizeof *s->batch_start);
    s->batch_bucket = xmalloc((size_t)(nbatches > 0 ? nbatches : 1) * sizeof *s->batch_bucket);
    int k = 0, pos = 0;
    for (int o = 0; o < nb; o++) {
        int b = border[o];
        const bucket_info *bk = &s->buckets[b];
        int *idx = xmalloc((size_t)bk->count * sizeof *idx);
        memcpy(idx, bk->members, (size_t)bk->count * sizeof *idx);
        if (s->shuffle) permute(idx, bk->count, es, (uint32_t)b + 1);
        int share = share_of(s, b);
        /* this rank's share of the padded list: padded[rank + i*world], padded[p] = idx[p % count] */
        int *mine = xmalloc((size_t)share * sizeof *mine);
        for (int i = 0; i < share; i++) mine[i] = idx[((size_t)s->rank + (size_t)i * s->world) % (size_t)bk->count];
        for (int i = 0; i < share; i += s->local_batch) {
            int len = share - i < s->local_batch ? share - i : s->local_batch;
            if (len < s->local_batch && s->drop_last) break;
            s->batch_start[k] = pos;
            s->batch_bucket[k] = b;
            memcpy(s->plan + pos, mine + i, (size_t)len * sizeof *mine);
            pos += len;
            k++;
        }
        free(mine);
        free(idx);
    }
    s->batch_start[k] = pos;
    s->nbatches = k;
    s->plan_epoch = s->epoch;
    free(border);
}

int bucket_sampler_next(bucket_sampler *s, int *idx, int *bucket) {
    build_plan(s);
    if (s->yielded >= s->nbatches) {
        s->epoch++;
        s->yielded = 0;
        build_plan(s);
    }
    int k = (int)s->yielded++;
    int len = s->batch_start[k + 1] - s->batch_start[k];
    memcpy(idx, s->plan + s->batch_start[k], (size_t)len * sizeof *idx);
    if (bucket) *bucket = s->batch_bucket[k];
    return len;
}

void bucket_sampler_set_epoch(bucket_sampler *s, int64_t epoch) {
    s->epoch = epoch;
    s->yielded = 0;
}

char *bucket_sampler_state_save(const bucket_sampler *s) {
    json_t *o =
        json_pack("{s:I,s:I,s:I,s:i,s:i,s:i,s:i,s:b,s:b}", "epoch", (json_int_t)s->epoch, "batches_yielded",
                  (json_int_t)s->yielded, "seed", (json_int_t)s->seed, "world", s->world, "local_batch", s->local_batch,
                  "samples", s->n, "buckets", s->nbuckets, "drop_last", s->drop_last, "shuffle", s->shuffle);
    char *text = json_dumps(o, JSON_SORT_KEYS | JSON_COMPACT);
    json_decref(o);
    char *r = xstrdup(text);
    free(text);
    return r;
}

int bucket_sampler_state_restore(bucket_sampler *s, const char *json, char *err, size_t errlen) {
    json_error_t je;
    json_t *o = json_loads(json, 0, &je);
    if (!o) return errf(err, errlen, "bucket sampler state: not JSON (%s, line %d)", je.text, je.line);
    json_int_t epoch, yielded, seed;
    int world, lb, samples, buckets, drop_last, shuffle;
    if (json_unpack_ex(o, &je, 0, "{s:I,s:I,s:I,s:i,s:i,s:i,s:i,s:b,s:b}", "epoch", &epoch, "batches_yielded", &yielded,
                       "seed", &seed, "world", &world, "local_batch", &lb, "samples", &samples, "buckets", &buckets,
                       "drop_last", &drop_last, "shuffle", &shuffle)) {
        json_decref(o);
        return errf(err, errlen, "bucket sampler state: %s", je.text);
    }
    json_decref(o);
    char what[256] = "";
    if (world != s->world)
        snprintf(what, sizeof what, "data-parallel size %d, now %d", world, s->world);
    else if (lb != s->local_batch)
        snprintf(what, sizeof what, "local batch size %d, now %d", lb, s->local_batch);
    else if (samples != s->n || buckets != s->nbuckets)
        snprintf(what, sizeof what, "%d samples in %d buckets, now %d in %d", samples, buckets, s->n, s->nbuckets);
    else if ((uint64_t)seed != s->seed)
        snprintf(what, sizeof what, "seed %lld, now %llu", (long long)seed, (unsigned long long)s->seed);
    else if (drop_last != s->drop_last || shuffle != s->shuffle)
        snprintf(what, sizeof what, "drop_last/shuffle %d/%d, now %d/%d", drop_last, shuffle, s->drop_last, s->shuffle);
    if (what[0])
        return errf(err, errlen, "bucket sampler state was saved with %s: the saved position would name other batches",
                    what);
    if (epoch < 0 || yielded < 0 || yielded > bucket_sampler_batches_per_epoch(s))
        return errf(err, errlen, "bucket sampler state: position epoch %lld batch %lld is out of range",
                    (long long)epoch, (long long)yielded);
    s->epoch = epoch;
    s->yielded = yielded;
    return 0;
}
