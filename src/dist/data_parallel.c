/* DDP and sharded data parallelism (see data_parallel.h).
 *
 * Reductions are sums: every rank scales its micro-batch gradients by (micro-batch / global batch), so the sum
 * over ranks is the gradient of the global mean loss, as in one process.
 *
 * Layout independence: a micro-batch's fp32 gradient does not depend on where it was computed, but an fp32 sum
 * of several of them depends on their order, and AdamW turns that rounding noise into visible updates wherever
 * a gradient is mathematically zero (the key bias of attention is one). So micro-batch gradients are summed
 * in fp64, within a rank and across ranks, and rounded to fp32 once: a sum of a few fp32 values in fp64 is
 * exact, hence the same for every split of the global batch over micro-batches and ranks. The price is an
 * fp64 accumulator and fp64 reductions (twice the bytes of fp32). */
#include "dfm/data_parallel.h"
#include "dfm/checkpoint.h"
#include "dfm/common.h"
#include "dfm/dist.h"
#include "dfm/kernels.h"
#include "dfm/safetensors.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct dp_engine {
    dp_model m;
    dp_sharding s;
    int overlap_grad, overlap_param;
    int dp, rank;            /* the shard group (the whole DP group unless hybrid): its size, this rank's place */
    int reps, rep_rank;      /* hybrid sharding: replica groups holding the same shards, and this rank's one */
    size_t total, S, sb, se; /* shard size and this rank's range */
    float *full_p, *full_g;  /* the model's full buffers, where the strategy keeps them */
    float *p_shard;          /* this rank's parameters (own buffer under optim_grads_params, else in full_p) */
    double *acc;             /* no_shard, optim: the whole gradient summed over micro-batches (fp64) */
    double *acc_shard;       /* sharded strategies: this rank's part of the reduced gradient (fp64); at the end
                              * of a step rounded to fp32 in place for clipping and AdamW */
    double *recv;            /* optim_grads(+params), from a rank's second micro-batch on: reduce-scatters land
                              * here and are added to acc_shard (the first one lands in acc_shard directly) */
    int n_micro;             /* micro-batches per step on this rank */
    int direct;              /* one process, one micro-batch, no_shard: no sum to take */
    int micro;               /* micro-batches begun this step */
    int bucket_direct[2];
    float *ema; /* shard, or whole under no_shard */
    adamw_state opt;
    int reduce_now;
    dist_req **seg_req; /* no_shard / optim: each segment's reduction in flight */
    dist_req **rep_req; /* hybrid: each segment's reduced shard part, all-reduced across the replicas */
    size_t max_seg;
    float *bucket[2];   /* optim_grads(+params): gradient buckets, alternating between segments */
    double *dbucket[2]; /* the same in fp64, in flight */
    int bucket_seg[2];
    dist_req *bucket_req[2];
    float *gbuf[2]; /* optim_grads_params: gathered parameters of two segments (in use, prefetched) */
    int gbuf_seg[2];
    dist_req *gbuf_req[2];
    int *counts;
    double *norm_parts; /* each shard rank's sum of squares (under TP: of split, then of whole tensors) */
    int tp;             /* tensor-parallel size: the table holds this TP rank's slices of the split tensors */
    int cp;             /* context-parallel size: each CP rank's gradient covers its tokens; summed over CP first */
};

int dp_sharding_parse(const char *s, dp_sharding *out) {
    static const char *names[] = {"no_shard", "optim", "optim_grads", "optim_grads_params"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i])) return *out = (dp_sharding)i, 1;
    return 0;
}

const char *dp_sharding_name(dp_sharding s) {
    static const char *names[] = {"no_shard", "optim", "optim_grads", "optim_grads_params"};
    return names[s];
}

static int shards_grads(const dp_engine *e) {
    return e->s >= DP_OPTIM_GRADS;
}

/* counts[r] = elements of [b, end) in rank r's shard; returns where this rank's part starts in its shard
 * (0 when it has none). */
static size_t seg_counts(dp_engine *e, size_t b, size_t end) {
    for (int r = 0; r < e->dp; r++) {
        size_t rb = (size_t)r * e->S < e->total ? (size_t)r * e->S : e->total;
        size_t re = rb + e->S < e->total ? rb + e->S : e->total;
        size_t lo = b > rb ? b : rb, hi = end < re ? end : re;
        e->counts[r] = lo < hi ? (int)(hi - lo) : 0;
    }
    return e->counts[e->rank] ? (b > e->sb ? b : e->sb) - e->sb : 0;
}

static size_t seg_len(const dp_engine *e, int s) {
    return e->m.seg_begin[s + 1] - e->m.seg_begin[s];
}

/* ---- gradients -------------------------------------------------------------------------------- */

/* Context parallelism: the CP ranks of a DP rank hold the same parameters and each computed the gradient of its
 * own tokens, so gradients are summed over DP x CP in fp64 and rounded to fp32 once, as without CP: under no_shard
 * by one non-blocking all-reduce over the DP x CP group (start_reduce); under the sharded strategies the fp64 sums
 * are first added over the CP group here (in place, blocking), then reduce-scattered over DP as before. */
static void cp_reduce(const dp_engine *e, double *buf, size_t n) {
    if (e->cp > 1 && n)
        dist_allreduce_sum_f64_in(DIST_CP, buf, (int)n, "all-reduce of gradients over the context-parallel group");
}

static void start_reduce(dp_engine *e, int s) {
    size_t b = e->m.seg_begin[s], end = e->m.seg_begin[s + 1];
    if (e->s == DP_NO_SHARD) /* whole gradients: one all-reduce over DP x CP, in flight during the backward */
        e->seg_req[s] =
            dist_iallreduce_sum_f64(e->cp > 1 ? DIST_DP_CP : DIST_DP, e->acc + b, end - b, "all-reduce of gradients");
    else {
        cp_reduce(e, e->acc + b, end - b);
        size_t o = seg_counts(e, b, end);
        e->seg_req[s] = dist_ireduce_scatter_f64(DIST_DP_SHARD, e->acc + b, e->acc_shard + o, e->counts,
                                                 "reduce-scatter of gradients");
    }
}

/* Hybrid sharding: segment s's part of this rank's shard is final for its shard group (every micro-batch
 * reduce-scattered into it); sum it over the replicas in place, in fp64, so every replica holds the same shard.
 * The ranks of a replica group hold the same shard, so they agree on the part's size (possibly 0). */
static void start_replica_reduce(dp_engine *e, int s) {
    if (e->reps == 1) return;
    size_t o = seg_counts(e, e->m.seg_begin[s], e->m.seg_begin[s + 1]);
    size_t n = (size_t)e->counts[e->rank];
    if (n)
        e->rep_req[s] = dist_iallreduce_sum_f64(DIST_DP_REPLICA, e->acc_shard + o, n,
                                                "all-reduce of gradient shards across replicas");
}

static void bucket_complete(dp_engine *e, int slot) {
    if (!e->bucket_req[slot]) return;
    dist_wait(e->bucket_req[slot]);
    e->bucket_req[slot] = NULL;
    int s = e->bucket_seg[slot];
    if (!e->bucket_direct[slot]) {
        size_t o = seg_counts(e, e->m.seg_begin[s], e->m.seg_begin[s + 1]);
        size_t n = (size_t)e->counts[e->rank];
        for (size_t i = 0; i < n; i++) e->acc_shard[o + i] += e->recv[o + i];
    }
    if (e->micro == e->n_micro) start_replica_reduce(e, s);
}

static float *hook_grads(void *ctx, int s) {
    dp_engine *e = ctx;
    int slot = s & 1;
    bucket_complete(e, slot);
    e->bucket_seg[slot] = s;
    memset(e->bucket[slot], 0, seg_len(e, s) * sizeof(float));
    return e->bucket[slot];
}

static void hook_grads_done(void *ctx, int s) {
    dp_engine *e = ctx;
    size_t b = e->m.seg_begin[s], end = e->m.seg_begin[s + 1], n = end - b;
    if (shards_grads(e)) { /* this micro-batch's bucket: widen, reduce-scatter, add to the shard when done */
        int slot = s & 1;
        const float *g = e->bucket[slot];
        double *d = e->dbucket[slot];
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) d[i] = g[i];
        cp_reduce(e, d, n);
        size_t o = seg_counts(e, b, end);
        e->bucket_direct[slot] = e->micro == 1;
        e->bucket_req[slot] = dist_ireduce_scatter_f64(DIST_DP_SHARD, d, (e->micro == 1 ? e->acc_shard : e->recv) + o,
                                                       e->counts, "reduce-scatter of gradients");
        if (!e->overlap_grad) bucket_complete(e, slot);
        dist_test(e->bucket_req[1 - slot]);
        return;
    }
    if (e->direct) return;
    /* whole gradients: add this micro-batch's segment to the fp64 sum; on the last one, reduce it */
    const float *g = e->full_g + b;
    double *acc = e->acc + b;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) acc[i] += g[i];
    if (!e->reduce_now || !e->overlap_grad) return;
    start_reduce(e, s);
    for (int k = s + 1; k < e->m.nseg; k++) /* let the earlier buckets progress */
        if (e->seg_req[k]) dist_test(e->seg_req[k]);
}

/* ---- parameters (optim_grads_params) ----------------------------------------------------------- */

static void gather_into(dp_engine *e, int slot, int s) {
    if (e->gbuf_req[slot]) dist_wait(e->gbuf_req[slot]);
    size_t o = seg_counts(e, e->m.seg_begin[s], e->m.seg_begin[s + 1]);
    e->gbuf_seg[slot] = s;
    e->gbuf_req[slot] =
        dist_iallgatherv_f32(DIST_DP_SHARD, e->p_shard + o, e->gbuf[slot], e->counts, "all-gather of parameters");
}

static const float *hook_params(void *ctx, int s, int backward) {
    dp_engine *e = ctx;
    int slot = e->gbuf_seg[0] == s ? 0 : e->gbuf_seg[1] == s ? 1 : -1;
    if (slot < 0) {
        /* not gathered yet: use the slot that does not hold the next segment in this direction */
        int next = backward ? s - 1 : s + 1;
        slot = e->gbuf_seg[0] == next ? 1 : 0;
        gather_into(e, slot, s);
    }
    if (e->gbuf_req[slot]) {
        dist_wait(e->gbuf_req[slot]);
        e->gbuf_req[slot] = NULL;
    }
    int next = backward ? s - 1 : s + 1;
    if (e->overlap_param && next >= 0 && next < e->m.nseg && e->gbuf_seg[1 - slot] != next)
        gather_into(e, 1 - slot, next);
    return e->gbuf[slot];
}

/* ---- set-up ----------------------------------------------------------------------------------- */

dp_engine *dp_engine_new(dp_model mdl, dp_sharding s, const adamw_config *oc, int n_micro, int overlap_grad,
                         int overlap_param) {
    const dist_info *di = dist_get();
    dp_engine *e = xcalloc(1, sizeof *e);
    e->m = mdl;
    e->s = s;
    e->overlap_grad = overlap_grad, e->overlap_param = overlap_param;
    e->n_micro = n_micro;
    e->dp = di->dp_shard;
    e->rank = di->dp_shard_rank;
    e->reps = di->dp_replicate;
    e->rep_rank = di->dp_replicate_rank;
    if (e->reps > 1 && s == DP_NO_SHARD)
        dfm_die("internal: hybrid sharding (%d replica groups) with nothing sharded", e->reps);
    /* one process, one micro-batch, nothing sharded: the micro-batch gradient is the gradient, no sum to take */
    e->direct = s == DP_NO_SHARD && e->dp == 1 && n_micro == 1 && di->cp == 1;
    e->cp = di->cp;
    e->total = mdl.table->total;
    e->S = (e->total + (size_t)e->dp - 1) / (size_t)e->dp;
    e->sb = (size_t)e->rank * e->S < e->total ? (size_t)e->rank * e->S : e->total;
    e->se = e->sb + e->S < e->total ? e->sb + e->S : e->total;
    e->counts = xcalloc((size_t)e->dp, sizeof(int));
    e->tp = di->tp;
    e->norm_parts = xcalloc(2 * (size_t)e->dp, sizeof(double));
    e->seg_req = xcalloc((size_t)mdl.nseg, sizeof(dist_req *));
    e->rep_req = xcalloc((size_t)mdl.nseg, sizeof(dist_req *));
    for (int k = 0; k < mdl.nseg; k++)
        if (seg_len(e, k) > e->max_seg) e->max_seg = seg_len(e, k);
    if (e->max_seg > (size_t)INT32_MAX)
        dfm_die("a model segment of %zu parameters is too large for MPI counts", e->max_seg);
    size_t len = e->se - e->sb;
    if (!e->m.ckpt_table) e->m.ckpt_table = mdl.table, e->m.ckpt_base = 0;
    e->full_p = *mdl.params;
    e->full_g = *mdl.grads;
    mdl.hooks->grads_done = hook_grads_done;
    mdl.hooks->ctx = e;
    if (s == DP_NO_SHARD) {
        adamw_init(&e->opt, mdl.table, oc);
        e->ema = xalloc_floats(e->total);
        memcpy(e->ema, e->full_p, e->total * sizeof(float));
        e->p_shard = e->full_p;
        if (!e->direct) e->acc = xcalloc(e->total, sizeof(double));
        return e;
    }
    adamw_init_range(&e->opt, mdl.table, oc, e->sb, e->se);
    e->ema = xalloc_floats(len);
    memcpy(e->ema, e->full_p + e->sb, len * sizeof(float));
    e->acc_shard = xcalloc(len ? len : 1, sizeof(double));
    e->p_shard = e->full_p + e->sb;
    if (shards_grads(e)) {
        free(e->full_g);
        e->full_g = *mdl.grads = NULL;
        if (n_micro > 1) e->recv = xcalloc(len + 1, sizeof(double));
        for (int k = 0; k < 2; k++) {
            e->bucket[k] = xalloc_floats(e->max_seg);
            e->dbucket[k] = xcalloc(e->max_seg, sizeof(double));
            e->bucket_seg[k] = -1;
        }
        mdl.hooks->grads = hook_grads;
    } else
        e->acc = xcalloc(e->total, sizeof(double));
    if (s == DP_OPTIM_GRADS_PARAMS) {
        e->p_shard = xalloc_floats(len);
        memcpy(e->p_shard, e->full_p + e->sb, len * sizeof(float));
        free(e->full_p);
        e->full_p = *mdl.params = NULL;
        for (int k = 0; k < 2; k++) e->gbuf[k] = xalloc_floats(e->max_seg), e->gbuf_seg[k] = -1;
        mdl.hooks->params = hook_params;
    }
    return e;
}

void dp_engine_free(dp_engine *e) {
    if (!e) return;
    for (int k = 0; k < 2; k++) {
        dist_wait(e->bucket_req[k]);
        dist_wait(e->gbuf_req[k]);
        free(e->bucket[k]);
        free(e->dbucket[k]);
        free(e->gbuf[k]);
    }
    for (int k = 0; k < e->m.nseg; k++) dist_wait(e->seg_req[k]), dist_wait(e->rep_req[k]);
    if (e->s == DP_OPTIM_GRADS_PARAMS) free(e->p_shard);
    free(e->acc), free(e->acc_shard), free(e->recv), free(e->ema), free(e->counts), free(e->seg_req), free(e->rep_req);
    free(e->norm_parts);
    adamw_free(&e->opt);
    memset(e->m.hooks, 0, sizeof *e->m.hooks);
    free(e);
}

void dp_memory(const dp_engine *e, size_t *pb, size_t *gb, size_t *ob) {
    size_t len = e->se - e->sb, f = sizeof(float);
    *pb = (e->full_p ? e->total : 0) * f + (e->s == DP_OPTIM_GRADS_PARAMS ? (len + 2 * e->max_seg) * f : 0);
    size_t d = sizeof(double);
    *gb = (e->full_g ? e->total * f : 0) + (e->acc ? e->total * d : 0) + (e->acc_shard ? len * d : 0) +
          (e->recv ? len * d : 0) + (shards_grads(e) ? 2 * e->max_seg * (f + d) : 0);
    size_t opt_len = e->opt.end - e->opt.begin;
    *ob = 2 * opt_len * f + (e->s == DP_NO_SHARD ? e->total : len) * f;
}

void dp_shard_range(const dp_engine *e, size_t *begin, size_t *end) {
    *begin = e->sb, *end = e->se;
}
long dp_optimizer_step(const dp_engine *e) {
    return e->opt.step;
}
float *dp_full_ema(dp_engine *e) {
    return e->s == DP_NO_SHARD ? e->ema : NULL;
}
adamw_state *dp_optimizer(dp_engine *e) {
    return &e->opt;
}

/* ---- the step --------------------------------------------------------------------------------- */

void dp_begin_step(dp_engine *e) {
    e->micro = 0;
    if (e->acc) memset(e->acc, 0, e->total * sizeof(double));
    if (e->acc_shard) memset(e->acc_shard, 0, (e->se - e->sb) * sizeof(double));
}

/* Round acc_shard to fp32 in place (the floats take the first half of its bytes): element i is read before
 * float i is written, and float i lies in the bytes of double i/2, already read. Byte copies keep this within
 * C's aliasing rules. */
static float *narrow_shard(dp_engine *e) {
    size_t len = e->se - e->sb;
    char *bytes = (char *)e->acc_shard;
    for (size_t i = 0; i < len; i++) {
        double d;
        memcpy(&d, bytes + i * sizeof(double), sizeof d);
        float f = (float)d;
        memcpy(bytes + i * sizeof(float), &f, sizeof f);
    }
    return (float *)(void *)bytes;
}

void dp_micro_begin(dp_engine *e, int last) {
    e->reduce_now = last;
    if (++e->micro > e->n_micro || last != (e->micro == e->n_micro))
        dfm_die("internal: micro-batch %d of a step planned with %d", e->micro, e->n_micro);
    if (e->full_g) memset(e->full_g, 0, e->total * sizeof(float)); /* this micro-batch's gradient alone */
}

void dp_micro_end(dp_engine *e) {
    if (shards_grads(e))
        for (int k = 0; k < 2; k++) bucket_complete(e, k);
}

/* The first table entry (in order) with a non-finite value in g (laid out from flat element `begin`), or -1;
 * the lowest over the data-parallel ranks. */
static int first_nonfinite(dp_engine *e, const float *g, size_t begin, size_t end) {
    const param_table *t = e->m.table;
    int found = -1;
    for (int i = 0; i < t->n && found < 0; i++) {
        size_t lo = t->e[i].offset > begin ? t->e[i].offset : begin;
        size_t hi = t->e[i].offset + t->e[i].numel < end ? t->e[i].offset + t->e[i].numel : end;
        for (size_t k = lo; k < hi && found < 0; k++)
            if (!isfinite(g[k - begin])) found = i;
    }
    int first = dist_allreduce_min_int(found < 0 ? t->n : found, "all-reduce of the non-finite gradient check");
    return first == t->n ? -1 : first;
}

/* Tensor parallelism: sums of squares of g (flat elements [begin, end) of the table) over the entries split
 * across the TP group (each TP rank holds other elements) and over the whole ones (the same on every TP rank). */
static void split_sums(const dp_engine *e, const float *g, size_t begin, size_t end, double *split, double *whole) {
    const param_table *t = e->m.table;
    *split = *whole = 0;
    for (int i = 0; i < t->n; i++) {
        size_t lo = t->e[i].offset > begin ? t->e[i].offset : begin;
        size_t hi = t->e[i].offset + t->e[i].numel < end ? t->e[i].offset + t->e[i].numel : end;
        if (lo >= hi) continue;
        double ss = sum_squares(g + (lo - begin), hi - lo);
        if (t->e[i].split_axis >= 0)
            *split += ss;
        else
            *whole += ss;
    }
}

/* The squared norm of the whole model's gradient from this TP rank's sums: every slice once, the whole tensors
 * once (TP rank 0's sum, so every TP rank gets the same bits and the replicated parameters stay identical). */
static double tp_squared_norm(const dp_engine *e, double split, double whole) {
    double mine[2] = {split, whole}, *all = xcalloc(2 * (size_t)e->tp, sizeof(double));
    dist_tp_allgather_f64(mine, all, 2, "tensor-parallel all-gather of the gradient norm");
    double ss = 0;
    for (int r = 0; r < e->tp; r++) ss += all[2 * r];
    ss += all[1];
    free(all);
    return ss;
}

/* Clip to the global norm (coef = max / (norm + 1e-6), applied if < 1, as torch's clip_grad_norm_) and step. */
static void clip_and_step(dp_engine *e, float *g, size_t len, double norm, float lr) {
    if (e->opt.cfg.clip_grad > 0) {
        double coef = e->opt.cfg.clip_grad / (norm + 1e-6);
        if (coef < 1.0) {
            const float c = (float)coef;
#pragma omp parallel for schedule(static)
            for (size_t i = 0; i < len; i++) g[i] *= c;
        }
    }
    adamw_step_range(&e->opt, e->p_shard, g, lr);
}

/* The global norm from this rank's (this stage's) sum of squares: under pipeline parallelism each stage's sum in
 * its own slot of an all-reduce over the pipeline group, added in stage order, so every stage gets the same bits
 * (the same clip factor, the same decision to skip). */
static double pp_norm(dp_engine *e, double ss) {
    const dist_info *di = dist_get();
    if (di->pp == 1) return sqrt(ss);
    double parts[64] = {0};
    if (di->pp > 64) dfm_die("pipeline of %d stages: at most 64 are supported", di->pp);
    parts[di->pp_rank] = ss;
    dist_allreduce_sum_f64_in(DIST_PP, parts, di->pp, "all-reduce of the gradient norm over the pipeline");
    double t = 0;
    for (int r = 0; r < di->pp; r++) t += parts[r];
    (void)e;
    return sqrt(t);
}

double dp_finish_step(dp_engine *e, float lr, int skip, int *bad) {
    size_t len = e->se - e->sb;
    *bad = -1;
    if (!shards_grads(e)) {
        for (int s = 0; s < e->m.nseg && !e->direct; s++)
            if (!e->seg_req[s]) start_reduce(e, s); /* not started during the backward (no overlap, or DP = 1) */
        /* in the order the backward started them; under hybrid sharding each part goes on across the replicas */
        for (int s = e->m.nseg - 1; s >= 0; s--) {
            dist_wait(e->seg_req[s]), e->seg_req[s] = NULL;
            if (e->s != DP_NO_SHARD) start_replica_reduce(e, s);
        }
        if (e->s == DP_NO_SHARD) {
            if (!e->direct) {
#pragma omp parallel for schedule(static)
                for (size_t i = 0; i < e->total; i++) e->full_g[i] = (float)e->acc[i];
            }
            double norm;
            if (e->tp > 1) {
                double sp, wh;
                split_sums(e, e->full_g, 0, e->total, &sp, &wh);
                norm = pp_norm(e, tp_squared_norm(e, sp, wh));
            } else
                norm = pp_norm(e, sum_squares(e->full_g, e->total));
            if (!isfinite(norm)) *bad = first_nonfinite(e, e->full_g, 0, e->total);
            if (!isfinite(norm) || skip) return norm;
            clip_and_step(e, e->full_g, e->total, norm, lr);
            return norm;
        }
    }
    /* hybrid sharding with gradients sharded: a segment whose last micro-batch was not the step's last backward
     * (the interleaved pipeline's chunks) has its part all-reduced across the replicas only now */
    if (e->reps > 1 && shards_grads(e))
        for (int s = 0; s < e->m.nseg; s++)
            if (!e->rep_req[s]) start_replica_reduce(e, s);
    for (int s = 0; s < e->m.nseg; s++) dist_wait(e->rep_req[s]), e->rep_req[s] = NULL;
    float *g = narrow_shard(e);
    /* each shard counted once: over the shard group (the replicas hold the same shards). Every rank's partial sum
     * travels in its own slot (adding zeros is exact) and is added up here in rank order, so every rank of every
     * replica gets the same bits whatever order MPI reduces in: replicas must not drift apart by a clip factor. */
    memset(e->norm_parts, 0, 2 * (size_t)e->dp * sizeof(double));
    double ss = 0;
    if (e->tp > 1) { /* split and whole tensors apart: the whole ones are counted once over the TP group */
        split_sums(e, g, e->sb, e->se, &e->norm_parts[2 * e->rank], &e->norm_parts[2 * e->rank + 1]);
        dist_allreduce_sum_f64_in(DIST_DP_SHARD, e->norm_parts, 2 * e->dp, "all-reduce of the gradient norm");
        double sp = 0, wh = 0;
        for (int r = 0; r < e->dp; r++) sp += e->norm_parts[2 * r], wh += e->norm_parts[2 * r + 1];
        ss = tp_squared_norm(e, sp, wh);
    } else {
        e->norm_parts[e->rank] = sum_squares(g, len);
        dist_allreduce_sum_f64_in(DIST_DP_SHARD, e->norm_parts, e->dp, "all-reduce of the gradient norm");
        for (int r = 0; r < e->dp; r++) ss += e->norm_parts[r];
    }
    double norm = pp_norm(e, ss); /* over the pipeline's stages */
    if (!isfinite(norm)) *bad = first_nonfinite(e, g, e->sb, e->se);
    if (!isfinite(norm) || skip) return norm;
    clip_and_step(e, g, len, norm, lr);
    if (e->full_p) { /* optim, optim_grads: every rank needs all parameters for the next forward */
        seg_counts(e, 0, e->total);
        dist_wait(
            dist_iallgatherv_f32(DIST_DP_SHARD, e->p_shard, e->full_p, e->counts, "all-gather of updated parameters"));
    }
    for (int k = 0; k < 2; k++) { /* gathered copies are stale now */
        dist_wait(e->gbuf_req[k]);
        e->gbuf_req[k] = NULL;
        e->gbuf_seg[k] = -1;
    }
    return norm;
}

void dp_ema_update(dp_engine *e, float decay) {
    if (e->s == DP_NO_SHARD)
        ema_update(e->ema, e->full_p, e->total, decay);
    else
        ema_update(e->ema, e->p_shard, e->se - e->sb, decay);
}

void dp_gather_full(dp_engine *e, int ema, float *out) {
    if (e->s == DP_NO_SHARD) {
        memcpy(out, ema ? e->ema : e->full_p, e->total * sizeof(float));
        return;
    }
    seg_counts(e, 0, e->total);
    dist_wait(
        dist_iallgatherv_f32(DIST_DP_SHARD, ema ? e->ema : e->p_shard, out, e->counts, "all-gather of the model"));
}

/* ---- checkpoints ------------------------------------------------------------------------------ */

/* Which shard file this rank writes of how many, and its range of the whole model's layout; 0 when it writes none.
 * Files are numbered (pipeline stage, tensor-parallel rank, shard rank), shard rank fastest. Hybrid sharding: the
 * replicas hold the same shards, replica 0 writes them. no_shard: data-parallel rank 0 of each (stage, TP rank)
 * writes its table whole. Under tensor parallelism every TP rank writes its own slices; the replicated tensors come
 * from TP rank 0's files only (ckpt_write_shard_tp). */
static int shard_file(const dp_engine *e, int *file, int *files, size_t *begin, size_t *end) {
    const dist_info *di = dist_get();
    if (e->rep_rank != 0 || di->cp_rank != 0) return 0; /* the CP ranks hold the same state: CP rank 0 writes it */
    int group = di->pp_rank * e->tp + di->tp_rank, groups = di->pp * e->tp;
    if (e->s == DP_NO_SHARD) {
        if (di->dp_rank != 0) return 0;
        *file = group, *files = groups;
        *begin = e->m.ckpt_base, *end = e->m.ckpt_base + e->total;
        return 1;
    }
    *file = group * e->dp + e->rank, *files = groups * e->dp;
    *begin = e->m.ckpt_base + e->sb, *end = e->m.ckpt_base + e->se;
    return 1;
}

void dp_save_shard(dp_engine *e, const char *dir, const char *const *meta) {
    const char *kinds[4] = {"model", "ema", "exp_avg", "exp_avg_sq"};
    const float *bufs[4] = {e->p_shard, e->ema, e->opt.m, e->opt.v};
    int file, files;
    size_t b, end;
    if (!shard_file(e, &file, &files, &b, &end)) return;
    ckpt_write_shard_tp(dir, file, files, e->m.ckpt_table, b, end, 4, kinds, bufs, meta, dist_get()->tp_rank == 0);
}

void dp_save_shard_split(dp_engine *e, const char *model_dir, const char *optim_dir, const char *const *meta) {
    const char *mk[2] = {"model", "ema"}, *ok[2] = {"exp_avg", "exp_avg_sq"};
    const float *mb[2] = {e->p_shard, e->ema}, *ob[2] = {e->opt.m, e->opt.v};
    int file, files;
    size_t b, end;
    if (!shard_file(e, &file, &files, &b, &end)) return;
    int whole = dist_get()->tp_rank == 0; /* replicated tensors: once, from TP rank 0 */
    ckpt_write_shard_tp(model_dir, file, files, e->m.ckpt_table, b, end, 2, mk, mb, meta, whole);
    ckpt_write_shard_tp(optim_dir, file, files, e->m.ckpt_table, b, end, 2, ok, ob, meta, whole);
}

int dp_load(dp_engine *e, const char *dir, int load_optim, char *err, size_t errlen) {
    /* in the whole model's layout: this stage's part starts at ckpt_base (0 without pipeline parallelism) */
    const param_table *t = e->m.ckpt_table;
    size_t o = e->m.ckpt_base;
    size_t eb = e->s == DP_NO_SHARD ? 0 : e->sb, ee = e->s == DP_NO_SHARD ? e->total : e->se;
    if (e->full_p) {
        if (ckpt_read_range(dir, "model", t, o, o + e->total, e->full_p, err, errlen)) return -1;
    } else if (ckpt_read_range(dir, "model", t, o + e->sb, o + e->se, e->p_shard, err, errlen))
        return -1;
    if (ckpt_read_range(dir, "ema", t, o + eb, o + ee, e->ema, err, errlen)) return -1;
    for (int k = 0; k < 2; k++) e->gbuf_seg[k] = -1;
    if (!load_optim) return 0;
    if (ckpt_read_range(dir, "exp_avg", t, o + e->opt.begin, o + e->opt.end, e->opt.m, err, errlen) ||
        ckpt_read_range(dir, "exp_avg_sq", t, o + e->opt.begin, o + e->opt.end, e->opt.v, err, errlen))
        return -1;
    char *step = NULL;
    char path[4200];
    if (ckpt_is_sharded(dir, err, errlen) == 1)
        step = ckpt_meta(dir, "step");
    else {
        char odir[4096];
        ckpt_kind_dir(dir, "exp_avg", odir, sizeof odir); /* dir itself, or an Automodel step folder's optim/ */
        snprintf(path, sizeof path, "%s/optimizer.safetensors", odir);
        st_file *f = st_open(path, err, errlen);
        if (!f) return -1;
        if (st_meta(f, "step")) step = xstrdup(st_meta(f, "step"));
        st_close(f);
    }
    if (!step) {
        snprintf(err, errlen, "'%s': the optimizer state has no 'step' metadata", dir);
        return -1;
    }
    e->opt.step = atol(step);
    free(step);
    return 0;
}
