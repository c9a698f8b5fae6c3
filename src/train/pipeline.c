/* Pipeline parallelism: stages, the 1F1B schedule and the point-to-point traffic (see pipeline.h). */
#include "dfm/pipeline.h"
#include "dfm/common.h"
#include "dfm/dist.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SENDS (2 * STAGE_MAX_TENSORS) /* per arena: its forward output and its gradients */

/* A model chunk of the stage: the model's segments [lo, hi), which are the stage's segments [seg0, seg0 + hi - lo). */
typedef struct {
    pp_stage *ps;
    void *model;
    int v, gc; /* this chunk of the stage, its place among the P V chunks of the pipeline */
    int lo, hi;
    int seg0;
    int n_arenas, arena0; /* its arenas, numbered from arena0 among the stage's */
} pp_chunk;

/* A send in flight from a copy (the interleaved schedule never waits on a send before the step's end) */
typedef struct {
    dist_req *r;
    float *buf;
} pp_send;

struct pp_stage {
    int P, s, V, m; /* stages, this one, chunks per stage, micro-batches per step */
    pp_chunk ch[PP_MAX_CHUNKS];
    param_table table; /* the stage's part: its chunks' entries one after the other, offsets from 0 */
    int nseg;
    size_t *seg_begin; /* nseg + 1, from 0 */
    float *params, *grads;
    segment_hooks eng; /* the data-parallel engine's hooks over the stage's segments */
    int n_arenas;      /* over all chunks */
    dist_req *(*sends)[MAX_SENDS];
    pp_send *copies; /* V > 1 */
    int n_copies, cap_copies;
    float **dout; /* the head chunk's output gradient, one per arena (kept from the forward to the backward) */
    size_t dout_n;
    /* LoRA (the engine holds the adapters, the stage its merged weights and their gradients): during a step, the
     * adapters and the trainer's lora_model */
    lora_model *lora;
    const float *adapters;
};

/* ---- layouts -------------------------------------------------------------------------------------------- */

#define LAYOUT_MAX_SYMBOLS 65536

typedef struct {
    char *s;
    size_t n, cap;
} symbuf;

static int sym_put(symbuf *b, const char *s, size_t n, long times, char *err, size_t errlen) {
    if (times > 0 && n > 0 && (size_t)times > (LAYOUT_MAX_SYMBOLS - b->n) / n) {
        snprintf(err, errlen, "model.pipeline_model_parallel_layout expands to more than %d symbols",
                 LAYOUT_MAX_SYMBOLS);
        return -1;
    }
    size_t add = n * (size_t)(times > 0 ? times : 0);
    if (b->n + add + 1 > b->cap) {
        b->cap = b->n + add + 64;
        b->s = xrealloc(b->s, b->cap);
    }
    for (long t = 0; t < times; t++) memcpy(b->s + b->n, s, n), b->n += n;
    b->s[b->n] = 0;
    return 0;
}

/* Expands the sequence at s[*at] (up to a ')' when depth > 0, or the end) into out: symbols E t L |, "X*N" and
 * "(...)*N" repeated, commas and blanks dropped. */
static int layout_expand(const char *s, size_t *at, int depth, symbuf *out, char *err, size_t errlen) {
    for (;;) {
        char c = s[*at];
        size_t pos = *at;
        if (c == 0) {
            if (depth == 0) return 0;
            snprintf(err, errlen, "model.pipeline_model_parallel_layout '%s': a '(' is not closed", s);
            return -1;
        }
        if (c == ')') {
            if (depth > 0) return 0;
            snprintf(err, errlen, "model.pipeline_model_parallel_layout '%s': ')' at position %zu closes nothing", s,
                     pos);
            return -1;
        }
        if (c == ',' || c == ' ' || c == '\t') {
            (*at)++;
            continue;
        }
        symbuf item = {0};
        if (c == 'E' || c == 't' || c == 'L' || c == '|') {
            (*at)++;
            if (sym_put(&item, &c, 1, 1, err, errlen) != 0) return free(item.s), -1;
        } else if (c == '(') {
            (*at)++;
            if (layout_expand(s, at, depth + 1, &item, err, errlen) != 0) return free(item.s), -1;
            (*at)++; /* the ')' */
        } else if (c == '*') {
            snprintf(err, errlen,
                     "model.pipeline_model_parallel_layout '%s': '*' at position %zu repeats nothing (write X*N or "
                     "(...)*N)",
                     s, pos);
            return -1;
        } else {
            snprintf(err, errlen,
                     "model.pipeline_model_parallel_layout '%s': '%c' at position %zu is not a layout symbol (E the "
                     "embedders, t a transformer block, L the head and the loss, '|' between stages, X*N and "
                     "(...)*N repeat, commas cosmetic)%s",
                     s, c, pos,
                     c == 'm' ? "; 'm' (multi-token prediction) has no counterpart in a diffusion model" : "");
            return -1;
        }
        long times = 1;
        if (s[*at] == '*') {
            size_t p = ++*at;
            if (s[p] < '0' || s[p] > '9') {
                free(item.s);
                snprintf(err, errlen,
                         "model.pipeline_model_parallel_layout '%s': '*' at position %zu is not followed by a count", s,
                         p - 1);
                return -1;
            }
            times = 0;
            while (s[*at] >= '0' && s[*at] <= '9') {
                times = times * 10 + (s[*at] - '0');
                (*at)++;
                if (times > LAYOUT_MAX_SYMBOLS) {
                    free(item.s);
                    snprintf(err, errlen,
                             "model.pipeline_model_parallel_layout '%s': the count at position %zu is above %d", s, p,
                             LAYOUT_MAX_SYMBOLS);
                    return -1;
                }
            }
        }
        int rc = sym_put(out, item.s ? item.s : "", item.n, times, err, errlen);
        free(item.s);
        if (rc != 0) return -1;
    }
}

static int plan_from_layout(pp_plan *pl, const char *layout, int L, int P, int *V, int V_set, char *err,
                            size_t errlen) {
    symbuf b = {0};
    size_t at = 0;
    if (layout_expand(layout, &at, 0, &b, err, errlen) != 0) return free(b.s), -1;
    const char *x = b.s ? b.s : "";
    int S = 1, nE = 0, nL = 0, nt = 0;
    for (const char *q = x; *q; q++) S += *q == '|';
    if (S % P) {
        snprintf(err, errlen,
                 "model.pipeline_model_parallel_layout '%s' has %d stages, not a multiple of "
                 "model.pipeline_model_parallel_size %d (it lists P x V stages)",
                 layout, S, P);
        return free(b.s), -1;
    }
    if (S / P > PP_MAX_CHUNKS || S > PP_MAX_STAGES) {
        snprintf(err, errlen,
                 "model.pipeline_model_parallel_layout '%s' has %d stages, %d model chunks per pipeline stage: at most "
                 "%d chunks per stage and %d in all are supported",
                 layout, S, S / P, PP_MAX_CHUNKS, PP_MAX_STAGES);
        return free(b.s), -1;
    }
    if (V_set && *V != S / P) {
        snprintf(err, errlen,
                 "model.pipeline_model_parallel_layout '%s' has %d stages = model.pipeline_model_parallel_size %d x "
                 "%d model chunks, but model.virtual_pipeline_model_parallel_size is %d",
                 layout, S, P, S / P, *V);
        return free(b.s), -1;
    }
    int k = 0, pos = 0;
    memset(pl->n, 0, sizeof pl->n);
    for (const char *q = x;; q++) {
        if (*q == '|' || *q == 0) {
            if (pl->n[k] == 0) {
                snprintf(
                    err, errlen,
                    "model.pipeline_model_parallel_layout '%s': stage %d of the layout (model chunk %d of pipeline "
                    "stage %d) has no transformer block: a stage without blocks is not built",
                    layout, k, k / P, k % P);
                return free(b.s), -1;
            }
            if (*q == 0) break;
            k++, pos = 0;
            continue;
        }
        if (*q == 't') pl->n[k]++, nt++;
        if (*q == 'E' && (nE++ || k != 0 || pos != 0)) {
            snprintf(err, errlen,
                     "model.pipeline_model_parallel_layout '%s': 'E' (the embedders) at symbol %d of stage %d: the "
                     "embedders are on the first stage only, before its blocks (one 'E', opening the layout)",
                     layout, pos, k);
            return free(b.s), -1;
        }
        if (*q == 'L' && (nL++ || k != S - 1 || q[1] != 0)) {
            snprintf(err, errlen,
                     "model.pipeline_model_parallel_layout '%s': 'L' (the head and the loss) at symbol %d of stage %d: "
                     "the head is on the last stage only, after its blocks (one 'L', closing the layout)",
                     layout, pos, k);
            return free(b.s), -1;
        }
        pos++;
    }
    free(b.s);
    if (nE == 0 || nL == 0) {
        snprintf(err, errlen,
                 "model.pipeline_model_parallel_layout '%s' has no '%s': it must open with 'E' (the embedders) and "
                 "close with 'L' (the head and the loss)",
                 layout, nE == 0 ? "E" : "L");
        return -1;
    }
    if (nt != L) {
        snprintf(err, errlen,
                 "model.pipeline_model_parallel_layout '%s' has %d transformer blocks ('t'), "
                 "model.num_layers is %d",
                 layout, nt, L);
        return -1;
    }
    *V = S / P;
    return 0;
}

int pp_plan_make(pp_plan *pl, int L, int P, int *V, int V_set, int first, int last, const char *layout, char *err,
                 size_t errlen) {
    memset(pl, 0, sizeof *pl);
    int Vc = *V;
    if (P < 1 || Vc < 1 || L < 1) {
        snprintf(err, errlen, "internal: pipeline of %d stages x %d chunks for %d blocks", P, Vc, L);
        return -1;
    }
    if (layout && (first >= 0 || last >= 0)) {
        snprintf(err, errlen,
                 "model.pipeline_model_parallel_layout and model.num_layers_in_%s_pipeline_stage are both set: the "
                 "layout places every block already, use one or the other",
                 first >= 0 ? "first" : "last");
        return -1;
    }
    if (layout) {
        if (plan_from_layout(pl, layout, L, P, V, V_set, err, errlen) != 0) return -1;
        pl->P = P, pl->V = *V, pl->L = L;
        pl->even = 1;
        for (int k = 1; k < P * *V; k++) pl->even &= pl->n[k] == pl->n[0];
        return 0;
    }
    if (P * Vc > PP_MAX_STAGES) {
        snprintf(err, errlen,
                 "model.pipeline_model_parallel_size %d x model.virtual_pipeline_model_parallel_size %d = %d model "
                 "chunks: at most %d are supported",
                 P, Vc, P * Vc, PP_MAX_STAGES);
        return -1;
    }
    pl->P = P, pl->V = Vc, pl->L = L;
    if (first < 0 && last < 0) {
        if (L % (P * Vc)) {
            if (Vc > 1)
                snprintf(err, errlen,
                         "model.num_layers %d is not divisible by model.pipeline_model_parallel_size %d x "
                         "model.virtual_pipeline_model_parallel_size %d = %d: the blocks are split evenly into that "
                         "many model chunks (or set model.num_layers_in_first/last_pipeline_stage or "
                         "model.pipeline_model_parallel_layout)",
                         L, P, Vc, P * Vc);
            else
                snprintf(err, errlen,
                         "model.num_layers %d is not divisible by model.pipeline_model_parallel_size %d: the blocks "
                         "are split evenly over the pipeline stages (or set model.num_layers_in_first/"
                         "last_pipeline_stage or model.pipeline_model_parallel_layout)",
                         L, P);
            return -1;
        }
        for (int k = 0; k < P * Vc; k++) pl->n[k] = L / (P * Vc);
        pl->even = 1;
        return 0;
    }
    /* Megatron's uneven split: the first / last stage that many blocks, the others the rest evenly; then each
     * stage's count cut into its V chunks */
    const char *names[2] = {"first", "last"};
    int given[2] = {first, last}, per[PP_MAX_STAGES], rest = L, mid = P;
    for (int i = 0; i < 2; i++) {
        if (given[i] < 0) continue;
        if (given[i] == 0) {
            snprintf(err, errlen,
                     "model.num_layers_in_%s_pipeline_stage is 0: a stage without blocks is not built (at least 1)",
                     names[i]);
            return -1;
        }
        if (given[i] % Vc) {
            snprintf(err, errlen,
                     "model.num_layers_in_%s_pipeline_stage %d is not divisible by "
                     "model.virtual_pipeline_model_parallel_size %d: the stage's blocks are cut into that many equal "
                     "model chunks",
                     names[i], given[i], Vc);
            return -1;
        }
        rest -= given[i], mid--;
    }
    char what[160];
    if (first >= 0 && last >= 0)
        snprintf(what, sizeof what,
                 "model.num_layers_in_first_pipeline_stage %d + model.num_layers_in_last_pipeline_stage %d", first,
                 last);
    else
        snprintf(what, sizeof what, "model.num_layers_in_%s_pipeline_stage %d", first >= 0 ? "first" : "last",
                 first >= 0 ? first : last);
    if (mid == 0 && rest != 0) {
        snprintf(err, errlen,
                 "%s = %d, not model.num_layers %d: with model.pipeline_model_parallel_size %d there is no other stage "
                 "to take the rest",
                 what, L - rest, L, P);
        return -1;
    }
    if (mid > 0 && rest < mid) {
        snprintf(err, errlen,
                 "%s leaves %d of model.num_layers %d for the other %d pipeline stages: a stage without blocks is "
                 "not built (each needs at least 1)",
                 what, rest < 0 ? 0 : rest, L, mid);
        return -1;
    }
    if (mid > 0 && rest % mid) {
        snprintf(err, errlen,
                 "%s leaves %d of model.num_layers %d, not divisible by the other %d pipeline stages (they split the "
                 "rest evenly)",
                 what, rest, L, mid);
        return -1;
    }
    for (int s = 0; s < P; s++) per[s] = mid > 0 ? rest / mid : 0;
    if (first >= 0) per[0] = first;
    if (last >= 0) per[P - 1] = last;
    if (mid > 0 && (rest / mid) % Vc) {
        snprintf(err, errlen,
                 "%s leaves %d blocks to each of the other %d pipeline stages, not divisible by "
                 "model.virtual_pipeline_model_parallel_size %d: each stage's blocks are cut into that many equal "
                 "model chunks",
                 what, rest / mid, mid, Vc);
        return -1;
    }
    for (int k = 0; k < P * Vc; k++) pl->n[k] = per[k % P] / Vc;
    pl->even = 1;
    for (int k = 1; k < P * Vc; k++) pl->even &= pl->n[k] == pl->n[0];
    return 0;
}

void pp_layout(const pp_plan *pl, int stage, int chunk, int *b0, int *b1) {
    int k = chunk * pl->P + stage, at = 0;
    if (stage < 0 || stage >= pl->P || chunk < 0 || chunk >= pl->V)
        dfm_die("internal: model chunk %d of pipeline stage %d outside %d x %d", chunk, stage, pl->P, pl->V);
    for (int i = 0; i < k; i++) at += pl->n[i];
    *b0 = at, *b1 = at + pl->n[k];
}

int pp_stage_blocks(const pp_plan *pl, int s) {
    int n = 0;
    for (int v = 0; v < pl->V; v++) n += pl->n[v * pl->P + s];
    return n;
}

int pp_check_micro(int P, int V, int m, char *err, size_t errlen) {
    if (V > 1 && m % P) {
        snprintf(err, errlen,
                 "the interleaved pipeline schedule (model.virtual_pipeline_model_parallel_size %d) takes the "
                 "micro-batches in groups of model.pipeline_model_parallel_size %d: %d micro-batches per step and rank "
                 "(train.global_batch_size / (data-parallel size x train.micro_batch_size)) is not a multiple of %d",
                 V, P, m, P);
        return -1;
    }
    return 0;
}

double pp_bubble(int P, int m, int V) {
    return (double)(P - 1) / ((double)V * m + P - 1);
}

/* ---- the schedule ------------------------------------------------------------------------------------------- */

typedef struct {
    int bwd, v, k; /* a forward or a backward of chunk v (of this stage) for micro-batch k */
} pp_op;

/* Virtual micro-batch i of the interleaved schedule (Megatron's numbering): groups of P micro-batches go through
 * chunk 0, then chunk 1, ... (the backward through the chunks in reverse). */
static pp_op virtual_op(int P, int V, int i, int bwd) {
    int in_group = i % (P * V), v = in_group / P;
    return (pp_op){bwd, bwd ? V - 1 - v : v, (i / (P * V)) * P + i % P};
}

/* This stage's 2 m V operations in order; returns their number. V = 1: 1F1B, min(P - s - 1, m) warm-up forwards,
 * then a forward and a backward at a time, then the remaining backwards. V > 1: Megatron's interleaved 1F1B over
 * the m V virtual micro-batches: (P - s - 1) 2 + (V - 1) P warm-up forwards (all of them when m = P), then one
 * forward and one backward at a time, then the remaining backwards. */
static int schedule(int P, int s, int V, int m, pp_op *ops) {
    int n = 0, total = m * V, w;
    if (V == 1)
        w = P - s - 1 < m ? P - s - 1 : m;
    else {
        w = m == P ? total : (P - s - 1) * 2 + (V - 1) * P;
        if (w > total) w = total;
    }
    for (int i = 0; i < w; i++) ops[n++] = virtual_op(P, V, i, 0);
    for (int i = 0; i + w < total; i++) {
        ops[n++] = virtual_op(P, V, w + i, 0);
        ops[n++] = virtual_op(P, V, i, 1);
    }
    for (int i = total - w < 0 ? 0 : total - w; i < total; i++) ops[n++] = virtual_op(P, V, i, 1);
    return n;
}

int pp_chunk_arenas(int P, int s, int V, int m, int v) {
    pp_op *ops = xcalloc((size_t)(2 * m * V), sizeof *ops);
    int n = schedule(P, s, V, m, ops), live = 0, most = 1;
    for (int i = 0; i < n; i++) {
        if (ops[i].v != v) continue;
        live += ops[i].bwd ? -1 : 1;
        if (live > most) most = live;
    }
    free(ops);
    return most;
}

/* ---- the model's hooks: a chunk's global segment numbers to the stage's ---------------------------------------- */

static int stage_seg(const pp_chunk *ch, int s) {
    if (s < ch->lo || s >= ch->hi)
        dfm_die("internal: segment %d outside pipeline stage chunk [%d, %d)", s, ch->lo, ch->hi);
    return ch->seg0 + s - ch->lo;
}

static const float *stage_params(void *ctx, int s, int backward) {
    pp_chunk *ch = ctx;
    pp_stage *ps = ch->ps;
    int k = stage_seg(ch, s);
    if (ps->eng.params) return ps->eng.params(ps->eng.ctx, k, backward);
    return ps->params + ps->seg_begin[k];
}

static float *stage_grads(void *ctx, int s) {
    pp_chunk *ch = ctx;
    pp_stage *ps = ch->ps;
    int k = stage_seg(ch, s);
    if (ps->eng.grads) return ps->eng.grads(ps->eng.ctx, k);
    return ps->grads + ps->seg_begin[k];
}

static void stage_done(void *ctx, int s) {
    pp_chunk *ch = ctx;
    pp_stage *ps = ch->ps;
    if (ps->eng.grads_done) ps->eng.grads_done(ps->eng.ctx, stage_seg(ch, s));
}

pp_stage *pp_stage_new(const param_table *table, int nseg, const size_t *seg_begin, int V, const pp_chunk_model *cm,
                       int m, dp_model *dm) {
    const dist_info *di = dist_get();
    int L = nseg - 2;
    if (V < 1 || V > PP_MAX_CHUNKS)
        dfm_die("%d model chunks per pipeline stage: at most %d are supported", V, PP_MAX_CHUNKS);
    if (di->pp * V > 64) /* the message tags number the chunk boundaries in 6 bits */
        dfm_die("model.pipeline_model_parallel_size %d x model.virtual_pipeline_model_parallel_size %d = %d model "
                "chunks: at most 64 are supported",
                di->pp, V, di->pp * V);
    pp_stage *ps = xcalloc(1, sizeof *ps);
    ps->P = di->pp, ps->s = di->pp_rank, ps->V = V, ps->m = m;
    size_t *sb = xcalloc((size_t)nseg + 1, sizeof(size_t));
    for (int v = 0; v < V; v++) {
        pp_chunk *ch = &ps->ch[v];
        ch->ps = ps, ch->model = cm[v].model, ch->v = v, ch->gc = v * ps->P + ps->s;
        ch->lo = cm[v].b0 == 0 ? 0 : 1 + cm[v].b0;
        ch->hi = cm[v].b1 == L ? L + 2 : 1 + cm[v].b1;
        ch->seg0 = ps->nseg;
        ch->n_arenas = cm[v].n_arenas, ch->arena0 = ps->n_arenas;
        ps->n_arenas += ch->n_arenas;
        size_t base = seg_begin[ch->lo], end = seg_begin[ch->hi];
        /* the table entries of [base, end), in order, split fields kept: laid out again after the earlier chunks */
        size_t at = ps->table.total;
        for (int i = 0; i < table->n; i++) {
            const param_entry *e = &table->e[i];
            if (e->offset >= base && e->offset < end) param_table_add_entry(&ps->table, e);
        }
        if (ps->table.total - at != end - base)
            dfm_die("internal: pipeline chunk table of %zu, range of %zu", ps->table.total - at, end - base);
        for (int s = ch->lo; s < ch->hi; s++) sb[ps->nseg++] = at + seg_begin[s] - base;
    }
    sb[ps->nseg] = ps->table.total;
    ps->seg_begin = sb;
    ps->table.model_total = param_table_global_total(table);
    ps->params = xalloc_floats(ps->table.total);
    ps->grads = xalloc_floats(ps->table.total);
    memset(ps->grads, 0, ps->table.total * sizeof(float));
    for (int v = 0; v < V; v++) {
        pp_chunk *ch = &ps->ch[v];
        size_t base = seg_begin[ch->lo];
        memcpy(ps->params + sb[ch->seg0], *cm[v].params + base, (seg_begin[ch->hi] - base) * sizeof(float));
        free(*cm[v].params), free(*cm[v].grads);
        *cm[v].params = *cm[v].grads = NULL; /* the stage holds its part only */
        *cm[v].hooks = (segment_hooks){ch, stage_params, stage_grads, stage_done};
    }
    ps->sends = xcalloc((size_t)ps->n_arenas, sizeof *ps->sends);
    /* checkpoints through the stage's own table: pieces are named, so files hold pieces of the whole model */
    *dm = (dp_model){&ps->table, ps->nseg, ps->seg_begin, &ps->params, &ps->grads, &ps->eng, NULL, 0};
    return ps;
}

static void wait_sends(pp_stage *ps, int a) {
    for (int i = 0; i < MAX_SENDS; i++)
        if (ps->sends[a][i]) dist_wait(ps->sends[a][i]), ps->sends[a][i] = NULL;
}

static void wait_all_sends(pp_stage *ps) {
    for (int a = 0; a < ps->n_arenas; a++) wait_sends(ps, a);
    for (int i = 0; i < ps->n_copies; i++) dist_wait(ps->copies[i].r), free(ps->copies[i].buf);
    ps->n_copies = 0;
}

void pp_stage_free(pp_stage *ps) {
    if (!ps) return;
    wait_all_sends(ps);
    free(ps->sends);
    free(ps->copies);
    for (int a = 0; ps->dout && a < ps->ch[ps->V - 1].n_arenas; a++) free(ps->dout[a]);
    free(ps->dout);
    free(ps->params), free(ps->grads), free(ps->seg_begin);
    param_table_free(&ps->table);
    free(ps);
}

const param_table *pp_stage_table(const pp_stage *ps) {
    return &ps->table;
}

float *pp_stage_params(pp_stage *ps) {
    return ps->params;
}

/* A LoRA step: the adapters merged into the stage's weights (lora_step_begin), kept for the backwards. */
static void lora_begin(pp_stage *ps, lora_model *L) {
    ps->lora = L;
    ps->adapters = L ? lora_step_begin(L, ps->params) : NULL;
}

/* The head chunk's output gradient buffer for micro-batch k (n floats at most). */
static float *dout_of(pp_stage *ps, int k, size_t n) {
    const pp_chunk *ch = &ps->ch[ps->V - 1];
    if (ps->dout_n < n) {
        if (!ps->dout) ps->dout = xcalloc((size_t)ch->n_arenas, sizeof(float *));
        for (int a = 0; a < ch->n_arenas; a++) free(ps->dout[a]), ps->dout[a] = xalloc_floats(n);
        ps->dout_n = n;
    }
    return ps->dout[k % ch->n_arenas];
}

typedef struct {
    void *ctx;
    void (*use_arena)(void *ctx, void *model, int a);
    void (*tensors)(void *ctx, void *model, int k, stage_dir dir, stage_tensors *io);
    void (*forward)(void *ctx, void *model, int k); /* the head chunk: with the loss, and dout for the backward */
    void (*backward)(void *ctx, void *model, int k);
} pp_ops;

/* Tags: micro-batch (mod 64), direction, the boundary (the upstream chunk of the P V, < 64), tensor; messages
 * between two ranks with one tag arrive in order. */
static int tag_of(int k, int grad, int boundary, int i) {
    return (((k % 64) * 2 + grad) * 64 + boundary) * STAGE_MAX_TENSORS + i;
}

static void recv_all(stage_tensors *io, int peer, int k, int grad, int boundary) {
    dist_req *r[STAGE_MAX_TENSORS];
    for (int i = 0; i < io->n; i++)
        r[i] = dist_irecv_pp_f32(io->t[i], io->len[i], peer, tag_of(k, grad, boundary, i),
                                 grad ? "receiving gradients from the next pipeline stage"
                                      : "receiving activations from the previous pipeline stage");
    for (int i = 0; i < io->n; i++) dist_wait(r[i]);
}

static void send_all(pp_stage *ps, int a, stage_tensors *io, int peer, int k, int grad, int boundary) {
    const char *what =
        grad ? "sending gradients to the previous pipeline stage" : "sending activations to the next pipeline stage";
    for (int i = 0; i < io->n; i++) {
        int tag = tag_of(k, grad, boundary, i);
        if (ps->V > 1) {                       /* from a copy: the arena may be reused before the peer has taken it */
            for (int c = 0; c < ps->n_copies;) /* finished ones go */
                if (dist_test(ps->copies[c].r)) {
                    dist_wait(ps->copies[c].r), free(ps->copies[c].buf);
                    ps->copies[c] = ps->copies[--ps->n_copies];
                } else
                    c++;
            if (ps->n_copies == ps->cap_copies) {
                ps->cap_copies = 2 * ps->cap_copies + 8;
                ps->copies = xrealloc(ps->copies, sizeof *ps->copies * (size_t)ps->cap_copies);
            }
            float *buf = xalloc_floats(io->len[i] ? io->len[i] : 1);
            memcpy(buf, io->t[i], io->len[i] * sizeof(float));
            ps->copies[ps->n_copies++] = (pp_send){dist_isend_pp_f32(buf, io->len[i], peer, tag, what), buf};
            continue;
        }
        int slot = grad * STAGE_MAX_TENSORS + i;
        if (ps->sends[a][slot]) dist_wait(ps->sends[a][slot]);
        ps->sends[a][slot] = dist_isend_pp_f32(io->t[i], io->len[i], peer, tag, what);
    }
}

static void run_forward(pp_stage *ps, const pp_ops *o, int v, int k) {
    const pp_chunk *ch = &ps->ch[v];
    int a = ch->arena0 + k % ch->n_arenas, last = ps->P * ps->V - 1;
    if (ps->V == 1) wait_sends(ps, a); /* the arena's buffers are free once what was sent from them has left */
    o->use_arena(o->ctx, ch->model, k % ch->n_arenas);
    stage_tensors io;
    if (ch->gc > 0) {
        o->tensors(o->ctx, ch->model, k, STAGE_FWD_IN, &io);
        recv_all(&io, (ch->gc - 1) % ps->P, k, 0, ch->gc - 1);
    }
    o->forward(o->ctx, ch->model, k);
    if (ch->gc < last) {
        o->tensors(o->ctx, ch->model, k, STAGE_FWD_OUT, &io);
        send_all(ps, a, &io, (ch->gc + 1) % ps->P, k, 0, ch->gc);
    }
}

static void run_backward(pp_stage *ps, dp_engine *e, const pp_ops *o, int v, int k, int final) {
    const pp_chunk *ch = &ps->ch[v];
    int a = ch->arena0 + k % ch->n_arenas, last = ps->P * ps->V - 1;
    o->use_arena(o->ctx, ch->model, k % ch->n_arenas);
    stage_tensors io;
    if (ch->gc < last) {
        o->tensors(o->ctx, ch->model, k, STAGE_GRAD, &io);
        recv_all(&io, (ch->gc + 1) % ps->P, k, 1, ch->gc);
    }
    dp_micro_begin(e, final);
    size_t lo = ps->seg_begin[ch->seg0], hi = ps->seg_begin[ch->seg0 + ch->hi - ch->lo];
    if (ps->lora) lora_micro_backward_begin(ps->lora, ps->adapters, ps->grads, lo, hi); /* the chunk's adapters */
    o->backward(o->ctx, ch->model, k);
    if (ps->lora) lora_micro_backward_end(ps->lora);
    dp_micro_end(e);
    if (ch->gc > 0) {
        o->tensors(o->ctx, ch->model, k, STAGE_GRAD, &io);
        send_all(ps, a, &io, (ch->gc - 1) % ps->P, k, 1, ch->gc - 1);
    }
}

/* A step over m micro-batches: the schedule's operations in order (the engine counts one backward per chunk and
 * micro-batch, the last one of the step ending its reductions). */
static void run_schedule(pp_stage *ps, dp_engine *e, const pp_ops *o, int m) {
    if (m != ps->m) dfm_die("internal: a pipeline step of %d micro-batches on a stage planned for %d", m, ps->m);
    pp_op *ops = xcalloc((size_t)(2 * m * ps->V), sizeof *ops);
    int n = schedule(ps->P, ps->s, ps->V, m, ops), backwards = 0;
    for (int i = 0; i < n; i++)
        if (ops[i].bwd)
            run_backward(ps, e, o, ops[i].v, ops[i].k, ++backwards == m * ps->V);
        else
            run_forward(ps, o, ops[i].v, ops[i].k);
    free(ops);
    wait_all_sends(ps);
}

/* The forward of one micro-batch through every chunk in the pipeline's order (validation). */
static void run_forward_only(pp_stage *ps, const pp_ops *o) {
    for (int g = 0; g < ps->P * ps->V; g++)
        if (g % ps->P == ps->s) run_forward(ps, o, g / ps->P, 0);
    wait_all_sends(ps);
}

/* The loss (on the last stage; 0 elsewhere) summed over the data-parallel group, then over the context-parallel
 * group (each CP rank's share covers its tokens), then over the pipeline: adding zeros is exact, so every rank
 * holds the number the last stage's ranks hold. */
static double share_loss(double loss) {
    dist_allreduce_sum_f64(&loss, 1, "all-reduce of the loss");
    dist_allreduce_sum_f64_in(DIST_CP, &loss, 1, "all-reduce of the loss over the context-parallel group");
    dist_allreduce_sum_f64_in(DIST_PP, &loss, 1, "all-reduce of the loss over the pipeline");
    return loss;
}

/* A validation loss (one micro-batch, on the last stage) summed over the context-parallel group, then over the
 * pipeline. */
static double share_val_loss(double loss) {
    dist_allreduce_sum_f64_in(DIST_CP, &loss, 1, "all-reduce of the validation loss over the context-parallel group");
    dist_allreduce_sum_f64_in(DIST_PP, &loss, 1, "all-reduce of the validation loss over the pipeline");
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

static void dit_use(void *ctx, void *model, int a) {
    (void)ctx;
    dit_use_arena(model, a);
}

static void dit_io(void *ctx, void *model, int k, stage_dir dir, stage_tensors *io) {
    dit_stage_tensors(model, dit_count(ctx, k), dir, io);
}

static size_t dit_out_n(const dit_model *m) {
    return (size_t)m->cfg.out_channels * m->cfg.image_size * m->cfg.image_size;
}

static void dit_fwd(void *ctx, void *model, int k) {
    dit_ctx *c = ctx;
    dit_model *m = model;
    const dit_config *dc = &m->cfg;
    size_t in_n = (size_t)dc->in_channels * dc->image_size * dc->image_size, out_n = dit_out_n(m);
    int off = k * m->max_batch, mb = dit_count(c, k);
    int first = m->block_begin == 0, last = m->block_end == dc->num_layers;
    diffusion_batch *db = &c->tr->db;
    if (first || last)
        diffusion_prepare(db, c->obj, c->x0 + (size_t)off * in_n, c->labels + off, mb, in_n, dc->num_classes, c->seed,
                          c->step, c->first + (uint32_t)off);
    dit_forward(m, c->tr->out, db->model_in, db->timestep, db->labels, mb);
    if (!last) return;
    float share = c->want_grad ? (float)mb / (float)c->B_global : 1.0f;
    float *dout = c->want_grad ? dout_of(c->ps, k, (size_t)m->max_batch * out_n) : NULL;
    /* context parallelism: this rank's pixels only (tr->cp_mask; NULL without CP), the shares summed later */
    c->loss += share * diffusion_loss_masked(db, c->tr->out, dout, out_n, share, c->tr->cp_mask);
}

static void dit_bwd(void *ctx, void *model, int k) {
    dit_ctx *c = ctx;
    dit_model *m = model;
    float *dout = m->block_end == m->cfg.num_layers ? dout_of(c->ps, k, (size_t)m->max_batch * dit_out_n(m)) : NULL;
    dit_backward(m, dout, dit_count(c, k));
}

step_result pp_dit_step(pp_stage *ps, dit_trainer *tr, dp_engine *e, const float *x0, const int *labels, int n_local,
                        int B_global, uint32_t first, uint32_t step, float lr) {
    dit_ctx c = {ps, tr, &tr->obj, tr->seed, x0, labels, n_local, B_global, 1, first, step, 0};
    pp_ops o = {&c, dit_use, dit_io, dit_fwd, dit_bwd};
    int mbs = tr->model->max_batch;
    dp_begin_step(e);
    lora_begin(ps, tr->lora);
    run_schedule(ps, e, &o, (n_local + mbs - 1) / mbs);
    ps->lora = NULL;
    return finish(e, c.loss, lr);
}

double pp_dit_loss(pp_stage *ps, dit_trainer *tr, const objective_config *obj, uint64_t seed, const float *x0,
                   const int *labels, int B, uint32_t step) {
    dit_ctx c = {ps, tr, obj, seed, x0, labels, B, B, 0, 0, step, 0};
    pp_ops o = {&c, dit_use, dit_io, dit_fwd, dit_bwd};
    run_forward_only(ps, &o);
    return share_val_loss(c.loss);
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

static void wan_use(void *ctx, void *model, int a) {
    (void)ctx;
    wan_use_arena(model, a);
}

static void wan_io(void *ctx, void *model, int k, stage_dir dir, stage_tensors *io) {
    wan_shape s = wan_shape_of(ctx, k);
    wan_stage_tensors(model, &s, dir, io);
}

/* the head's output gradient for the model's largest micro-batch */
static size_t wan_dout_n(const wan_trainer *tr, const wan_model *m) {
    return (size_t)m->max.batch * m->cfg.out_channels * tr->frames * tr->height * tr->width;
}

static void wan_fwd(void *ctx, void *model, int k) {
    wan_ctx *c = ctx;
    wan_trainer *tr = c->tr;
    wan_model *m = model;
    const wan_micro *u = &c->mb[k];
    /* every stage draws the dropout (the text lengths mask every block's cross-attention) */
    wan_trainer_prepare(tr, c->obj, c->seed, u->latents, u->text, u->text_lens, u->count, u->frames, u->height,
                        u->width, c->step, u->first);
    wan_shape s = wan_shape_of(c, k);
    wan_forward(m, tr->out, tr->db.model_in, tr->db.timestep, tr->text, tr->lens, &s);
    if (m->block_end != m->cfg.num_layers) return;
    size_t out_n = (size_t)m->cfg.out_channels * u->frames * u->height * u->width;
    float share = c->want_grad ? (float)u->count / (float)c->B_global : 1.0f;
    float *dout = c->want_grad ? dout_of(c->ps, k, wan_dout_n(tr, m)) : NULL;
    if (tr->cp_mask) wan_cp_owned(m, tr->cp_mask, m->cfg.in_channels); /* this rank's tokens of this shape */
    c->loss += share * diffusion_loss_masked(&tr->db, tr->out, dout, out_n, share, tr->cp_mask);
}

static void wan_bwd(void *ctx, void *model, int k) {
    wan_ctx *c = ctx;
    wan_model *m = model;
    wan_backward(m, m->block_end == m->cfg.num_layers ? dout_of(c->ps, k, wan_dout_n(c->tr, m)) : NULL);
}

step_result pp_wan_step(pp_stage *ps, wan_trainer *tr, dp_engine *e, const wan_micro *mb, int n_micro, int B_global,
                        uint32_t step, float lr) {
    wan_ctx c = {ps, tr, &tr->obj, tr->seed, mb, B_global, 1, step, 0};
    pp_ops o = {&c, wan_use, wan_io, wan_fwd, wan_bwd};
    dp_begin_step(e);
    lora_begin(ps, tr->lora);
    run_schedule(ps, e, &o, n_micro);
    ps->lora = NULL;
    return finish(e, c.loss, lr);
}

double pp_wan_loss(pp_stage *ps, wan_trainer *tr, const objective_config *obj, uint64_t seed, const float *latents,
                   const float *text, const int *text_lens, int B, uint32_t step) {
    return pp_wan_loss_shaped(ps, tr, obj, seed, latents, text, text_lens, B, tr->frames, tr->height, tr->width, step);
}

double pp_wan_loss_shaped(pp_stage *ps, wan_trainer *tr, const objective_config *obj, uint64_t seed,
                          const float *latents, const float *text, const int *text_lens, int B, int frames, int height,
                          int width, uint32_t step) {
    wan_micro u = {latents, text, text_lens, B, frames, height, width, 0};
    wan_ctx c = {ps, tr, obj, seed, &u, B, 0, step, 0};
    pp_ops o = {&c, wan_use, wan_io, wan_fwd, wan_bwd};
    run_forward_only(ps, &o);
    return share_val_loss(c.loss);
}
