/* Pipeline parallelism: stages, the 1F1B schedule and the point-to-point traffic (see pipeline.h). */
#include "dfm/pipeline.h"
#include "dfm/common.h"
#include "dfm/dist.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SENDS (2 * STAGE_MAX_TENSORS) /* per arena: its forward output and its gradients */

struct pp_stage {
    int P, s;       /* stages, this one */
    int lo, hi;     /* the model's segments this stage owns */
    size_t base;    /* flat element of segment lo in the whole model's layout */
    const size_t *gseg;
    param_table table; /* the stage's part, offsets from 0 */
    size_t *seg_begin; /* hi - lo + 1, from 0 */
    float *params, *grads;
    segment_hooks eng; /* the data-parallel engine's hooks over the stage's segments */
    int n_arenas;
    dist_req *(*sends)[MAX_SENDS];
};

int pp_layout(int L, int P, int stage, int *b0, int *b1, char *err, size_t errlen) {
    if (P < 1 || L % P) {
        snprintf(err, errlen,
                 "model.num_layers %d is not divisible by model.pipeline_model_parallel_size %d: the blocks are split "
                 "evenly over the pipeline stages",
                 L, P);
        return -1;
    }
    *b0 = stage * (L / P), *b1 = (stage + 1) * (L / P);
    return 0;
}

double pp_bubble(int P, int m) { return (double)(P - 1) / (double)(m + P - 1); }

/* ---- the model's hooks: global segment numbers to the stage's ---------------------------------------------- */

static const float *stage_params(void *ctx, int s, int backward) {
    pp_stage *ps = ctx;
    if (s < ps->lo || s >= ps->hi) dfm_die("internal: segment %d outside pipeline stage [%d, %d)", s, ps->lo, ps->hi);
    if (ps->eng.params) return ps->eng.params(ps->eng.ctx, s - ps->lo, backward);
    return ps->params + (ps->gseg[s] - ps->base);
}

static float *stage_grads(void *ctx, int s) {
    pp_stage *ps = ctx;
    if (s < ps->lo || s >= ps->hi) dfm_die("internal: segment %d outside pipeline stage [%d, %d)", s, ps->lo, ps->hi);
    if (ps->eng.grads) return ps->eng.grads(ps->eng.ctx, s - ps->lo);
    return ps->grads + (ps->gseg[s] - ps->base);
}

static void stage_done(void *ctx, int s) {
    pp_stage *ps = ctx;
    if (ps->eng.grads_done) ps->eng.grads_done(ps->eng.ctx, s - ps->lo);
}

pp_stage *pp_stage_new(const param_table *table, int nseg, const size_t *seg_begin, float **params, float **grads,
                       segment_hooks *hooks, int b0, int b1, int n_arenas, dp_model *dm) {
    const dist_info *di = dist_get();
    int L = nseg - 2;
    pp_stage *ps = xcalloc(1, sizeof *ps);
    ps->P = di->pp, ps->s = di->pp_rank;
    ps->lo = b0 == 0 ? 0 : 1 + b0;
    ps->hi = b1 == L ? L + 2 : 1 + b1;
    ps->gseg = seg_begin;
    ps->base = seg_begin[ps->lo];
    size_t end = seg_begin[ps->hi];
    /* the table entries of [base, end), in order: param_table_add lays them out again from 0 */
    for (int i = 0; i < table->n; i++) {
        const param_entry *e = &table->e[i];
        if (e->offset >= ps->base && e->offset < end) param_table_add(&ps->table, e->name, e->ndim, e->shape, e->no_decay);
    }
    if (ps->table.total != end - ps->base) dfm_die("internal: pipeline stage table of %zu, range of %zu", ps->table.total,
                                                   end - ps->base);
    ps->seg_begin = xcalloc((size_t)(ps->hi - ps->lo) + 1, sizeof(size_t));
    for (int s = ps->lo; s <= ps->hi; s++) ps->seg_begin[s - ps->lo] = seg_begin[s] - ps->base;
    ps->params = xalloc_floats(ps->table.total);
    memcpy(ps->params, *params + ps->base, ps->table.total * sizeof(float));
    ps->grads = xalloc_floats(ps->table.total);
    memset(ps->grads, 0, ps->table.total * sizeof(float));
    free(*params), free(*grads);
    *params = *grads = NULL; /* the stage holds its part only */
    *hooks = (segment_hooks){ps, stage_params, stage_grads, stage_done};
    ps->n_arenas = n_arenas;
    ps->sends = xcalloc((size_t)n_arenas, sizeof *ps->sends);
    *dm = (dp_model){&ps->table, ps->hi - ps->lo, ps->seg_begin, &ps->params, &ps->grads, &ps->eng, table, ps->base};
    return ps;
}

static void wait_sends(pp_stage *ps, int a) {
    for (int i = 0; i < MAX_SENDS; i++)
        if (ps->sends[a][i]) dist_wait(ps->sends[a][i]), ps->sends[a][i] = NULL;
}

static void wait_all_sends(pp_stage *ps) {
    for (int a = 0; a < ps->n_arenas; a++) wait_sends(ps, a);
}

void pp_stage_free(pp_stage *ps) {
    if (!ps) return;
    wait_all_sends(ps);
    free(ps->sends);
    free(ps->params), free(ps->grads), free(ps->seg_begin);
    param_table_free(&ps->table);
    free(ps);
}

const param_table *pp_stage_table(const pp_stage *ps) { return &ps->table; }

/* ---- the schedule ------------------------------------------------------------------------------------------- */

typedef struct {
    void *ctx;
    void (*use_arena)(void *ctx, int a);
    void (*tensors)(void *ctx, int k, stage_dir dir, stage_tensors *io);
    void (*forward)(void *ctx, int k);  /* the last stage: with the loss, and dout for the backward */
    void (*backward)(void *ctx, int k);
} pp_ops;

/* Tags: micro-batch (mod 1024), direction, tensor; messages between two ranks with one tag arrive in order. */
static int tag_of(int k, int grad, int i) { return ((k % 1024) * 2 + grad) * STAGE_MAX_TENSORS + i; }

static void recv_all(stage_tensors *io, int peer, int k, int grad) {
    dist_req *r[STAGE_MAX_TENSORS];
    for (int i = 0; i < io->n; i++)
        r[i] = dist_irecv_pp_f32(io->t[i], io->len[i], peer, tag_of(k, grad, i),
                                 grad ? "receiving gradients from the next pipeline stage"
                                      : "receiving activations from the previous pipeline stage");
    for (int i = 0; i < io->n; i++) dist_wait(r[i]);
}

static void send_all(pp_stage *ps, int a, stage_tensors *io, int peer, int k, int grad) {
    for (int i = 0; i < io->n; i++) {
        int slot = grad * STAGE_MAX_TENSORS + i;
        if (ps->sends[a][slot]) dist_wait(ps->sends[a][slot]);
        ps->sends[a][slot] = dist_isend_pp_f32(io->t[i], io->len[i], peer, tag_of(k, grad, i),
                                               grad ? "sending gradients to the previous pipeline stage"
                                                    : "sending activations to the next pipeline stage");
    }
}

static void run_forward(pp_stage *ps, const pp_ops *o, int k) {
    int a = k % ps->n_arenas;
    wait_sends(ps, a); /* the arena's buffers are free once what was sent from them has left */
    o->use_arena(o->ctx, a);
    stage_tensors io;
    if (ps->s > 0) {
        o->tensors(o->ctx, k, STAGE_FWD_IN, &io);
        recv_all(&io, ps->s - 1, k, 0);
    }
    o->forward(o->ctx, k);
    if (ps->s < ps->P - 1) {
        o->tensors(o->ctx, k, STAGE_FWD_OUT, &io);
        send_all(ps, a, &io, ps->s + 1, k, 0);
    }
}

static void run_backward(pp_stage *ps, dp_engine *e, const pp_ops *o, int k, int m) {
    int a = k % ps->n_arenas;
    o->use_arena(o->ctx, a);
    stage_tensors io;
    if (ps->s < ps->P - 1) {
        o->tensors(o->ctx, k, STAGE_GRAD, &io);
        recv_all(&io, ps->s + 1, k, 1);
    }
    dp_micro_begin(e, k == m - 1);
    o->backward(o->ctx, k);
    dp_micro_end(e);
    if (ps->s > 0) {
        o->tensors(o->ctx, k, STAGE_GRAD, &io);
        send_all(ps, a, &io, ps->s - 1, k, 1);
    }
}

/* 1F1B over m micro-batches: warm-up forwards, one forward and one backward at a time, cool-down backwards. */
static void run_1f1b(pp_stage *ps, dp_engine *e, const pp_ops *o, int m) {
    int w = ps->P - ps->s - 1 < m ? ps->P - ps->s - 1 : m;
    if (ps->n_arenas < w + 1 && ps->n_arenas < m)
        dfm_die("internal: pipeline stage %d with %d arenas for %d micro-batches in flight", ps->s, ps->n_arenas, w + 1);
    for (int k = 0; k < w; k++) run_forward(ps, o, k);
    for (int i = 0; i + w < m; i++) {
        run_forward(ps, o, w + i);
        run_backward(ps, e, o, i, m);
    }
    for (int i = m - w; i < m; i++) run_backward(ps, e, o, i, m);
    wait_all_sends(ps);
}

/* The loss (on the last stage; 0 elsewhere) summed over the data-parallel group, then over the pipeline: adding
 * zeros is exact, so every rank holds one process's number. */
static double share_loss(double loss) {
    dist_allreduce_sum_f64(&loss, 1, "all-reduce of the loss");
    dist_allreduce_sum_f64_in(DIST_PP, &loss, 1, "all-reduce of the loss over the pipeline");
    return loss;
}

static step_result finish(dp_engine *e, double loss, float lr) {
    step_result r;
    r.loss = share_loss(loss);
    r.skipped = !isfinite(r.loss);
    r.grad_norm = dp_finish_step(e, lr, r.skipped, &r.bad_param);
    r.skipped |= !isfinite(r.grad_norm);
    return r;
}

/* ---- DiT ---------------------------------------------------------------------------------------------------- */

typedef struct {
    pp_stage *ps;
    dit_trainer *tr;
    const objective_config *obj;
    uint64_t seed;
    const float *x0;
    const int *labels;
    int n, B_global, want_grad;
    uint32_t first, step;
    double loss;
} dit_ctx;

static int dit_count(const dit_ctx *c, int k) {
    int mbs = c->tr->model->max_batch, off = k * mbs;
    return c->n - off < mbs ? c->n - off : mbs;
}

static void dit_use(void *ctx, int a) { dit_use_arena(((dit_ctx *)ctx)->tr->model, a); }

static void dit_io(void *ctx, int k, stage_dir dir, stage_tensors *io) {
    dit_ctx *c = ctx;
    dit_stage_tensors(c->tr->model, dit_count(c, k), dir, io);
}

static void dit_fwd(void *ctx, int k) {
    dit_ctx *c = ctx;
    dit_model *m = c->tr->model;
    const dit_config *dc = &m->cfg;
    size_t in_n = (size_t)dc->in_channels * dc->image_size * dc->image_size;
    size_t out_n = (size_t)dc->out_channels * dc->image_size * dc->image_size;
    int off = k * m->max_batch, mb = dit_count(c, k);
    int first = m->block_begin == 0, last = m->block_end == dc->num_layers;
    diffusion_batch *db = &c->tr->db;
    if (first || last)
        diffusion_prepare(db, c->obj, c->x0 + (size_t)off * in_n, c->labels + off, mb, in_n, dc->num_classes, c->seed,
                          c->step, c->first + (uint32_t)off);
    dit_forward(m, c->tr->out, db->model_in, db->timestep, db->labels, mb);
    if (!last) return;
    float share = c->want_grad ? (float)mb / (float)c->B_global : 1.0f;
    c->loss += share * diffusion_loss(db, c->tr->out, c->want_grad ? c->tr->dout : NULL, out_n, share);
}

static void dit_bwd(void *ctx, int k) {
    dit_ctx *c = ctx;
    dit_backward(c->tr->model, c->tr->dout, dit_count(c, k));
}

step_result pp_dit_step(pp_stage *ps, dit_trainer *tr, dp_engine *e, const float *x0, const int *labels, int n_local,
                        int B_global, uint32_t first, uint32_t step, float lr) {
    dit_ctx c = {ps, tr, &tr->obj, tr->seed, x0, labels, n_local, B_global, 1, first, step, 0};
    pp_ops o = {&c, dit_use, dit_io, dit_fwd, dit_bwd};
    int mbs = tr->model->max_batch;
    dp_begin_step(e);
    run_1f1b(ps, e, &o, (n_local + mbs - 1) / mbs);
    return finish(e, c.loss, lr);
}

double pp_dit_loss(pp_stage *ps, dit_trainer *tr, const objective_config *obj, uint64_t seed, const float *x0,
                   const int *labels, int B, uint32_t step) {
    dit_ctx c = {ps, tr, obj, seed, x0, labels, B, B, 0, 0, step, 0};
    pp_ops o = {&c, dit_use, dit_io, dit_fwd, dit_bwd};
    run_forward(ps, &o, 0);
    wait_all_sends(ps);
    dist_allreduce_sum_f64_in(DIST_PP, &c.loss, 1, "all-reduce of the validation loss over the pipeline");
    return c.loss;
}

/* ---- Wan ---------------------------------------------------------------------------------------------------- */

typedef struct {
    pp_stage *ps;
    wan_trainer *tr;
    const objective_config *obj;
    uint64_t seed;
    const wan_micro *mb;
    int B_global, want_grad;
    uint32_t step;
    double loss;
} wan_ctx;

static wan_shape wan_shape_of(const wan_ctx *c, int k) {
    const wan_micro *u = &c->mb[k];
    return (wan_shape){u->count, u->frames, u->height, u->width, c->tr->text_len};
}

static void wan_use(void *ctx, int a) { wan_use_arena(((wan_ctx *)ctx)->tr->model, a); }

static void wan_io(void *ctx, int k, stage_dir dir, stage_tensors *io) {
    wan_ctx *c = ctx;
    wan_shape s = wan_shape_of(c, k);
    wan_stage_tensors(c->tr->model, &s, dir, io);
}

static void wan_fwd(void *ctx, int k) {
    wan_ctx *c = ctx;
    wan_trainer *tr = c->tr;
    wan_model *m = tr->model;
    const wan_micro *u = &c->mb[k];
    /* every stage draws the dropout (the text lengths mask every block's cross-attention) */
    wan_trainer_prepare(tr, c->obj, c->seed, u->latents, u->text, u->text_lens, u->count, u->frames, u->height,
                        u->width, c->step, u->first);
    wan_shape s = wan_shape_of(c, k);
    wan_forward(m, tr->out, tr->db.model_in, tr->db.timestep, tr->text, tr->lens, &s);
    if (m->block_end != m->cfg.num_layers) return;
    size_t out_n = (size_t)m->cfg.out_channels * u->frames * u->height * u->width;
    float share = c->want_grad ? (float)u->count / (float)c->B_global : 1.0f;
    c->loss += share * diffusion_loss(&tr->db, tr->out, c->want_grad ? tr->dout : NULL, out_n, share);
}

static void wan_bwd(void *ctx, int k) {
    wan_ctx *c = ctx;
    wan_backward(c->tr->model, c->tr->dout);
}

step_result pp_wan_step(pp_stage *ps, wan_trainer *tr, dp_engine *e, const wan_micro *mb, int n_micro, int B_global,
                        uint32_t step, float lr) {
    wan_ctx c = {ps, tr, &tr->obj, tr->seed, mb, B_global, 1, step, 0};
    pp_ops o = {&c, wan_use, wan_io, wan_fwd, wan_bwd};
    dp_begin_step(e);
    run_1f1b(ps, e, &o, n_micro);
    return finish(e, c.loss, lr);
}

double pp_wan_loss(pp_stage *ps, wan_trainer *tr, const objective_config *obj, uint64_t seed, const float *latents,
                   const float *text, const int *text_lens, int B, uint32_t step) {
    wan_micro u = {latents, text, text_lens, B, tr->frames, tr->height, tr->width, 0};
    wan_ctx c = {ps, tr, obj, seed, &u, B, 0, step, 0};
    pp_ops o = {&c, wan_use, wan_io, wan_fwd, wan_bwd};
    run_forward(ps, &o, 0);
    wait_all_sends(ps);
    dist_allreduce_sum_f64_in(DIST_PP, &c.loss, 1, "all-reduce of the validation loss over the pipeline");
    return c.loss;
}
