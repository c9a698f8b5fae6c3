/* DiT forward and backward over one contiguous parameter buffer.
 *
 * Data flow of one block (x is the residual stream, [B, T, d]; mod = adaLN vector [B, 6d] per block):
 *   ln1 = LN(x)            xm1 = ln1 * (1 + scale_msa) + shift_msa     qkv = xm1 Wqkv^T + b
 *   ao = attention(qkv)    proj = ao Wo^T + b                           x_mid = x + gate_msa * proj
 *   ln2 = LN(x_mid)        xm2 = ln2 * (1 + scale_mlp) + shift_mlp      h = xm2 W1^T + b
 *   f = gelu(h) W2^T + b   x_out = x_mid + gate_mlp * f
 * Saved per block: x, qkv, ao, lse, proj, x_mid, h, f and the LayerNorm statistics. ln1/xm1, ln2/xm2 and
 * gelu(h) are recomputed in the backward (cheap elementwise work instead of 5 more [B, T, d..4d] tensors).
 * With dit_set_recompute, the first N blocks keep only x and share one slot for the rest; the backward runs
 * block_forward again before each of their backwards; dit_set_recompute_mode adds checkpoints of k blocks (k
 * slots, re-run from the checkpoint's input) and selective (every block's ao / lse in one shared pair, the
 * attention forward re-run on the kept qkv) (docs/ARCHITECTURE.md, "Activation recompute"). */
#include "dfm/dit.h"
#include "dfm/common.h"
#include "dfm/context_parallel.h"
#include "dfm/dist.h"
#include "dfm/kernels.h"
#include "dfm/rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LN_EPS 1e-6f

/* ---- configs ---------------------------------------------------------------------------------- */

int dit_config_named(dit_config *c, const char *name) {
    static const struct {
        const char *name;
        int layers, hidden, heads;
    } named[] = {
        {"tiny", 2, 32, 2}, {"S/2", 12, 384, 6}, {"B/2", 12, 768, 12}, {"L/2", 24, 1024, 16}, {"XL/2", 28, 1152, 16},
    };
    for (size_t i = 0; i < sizeof named / sizeof named[0]; i++) {
        if (strcmp(named[i].name, name)) continue;
        memset(c, 0, sizeof *c);
        c->num_layers = named[i].layers;
        c->hidden_size = named[i].hidden;
        c->num_heads = named[i].heads;
        c->patch_size = 2;
        c->in_channels = 4;
        c->image_size = strcmp(name, "tiny") ? 32 : 8;
        c->num_classes = strcmp(name, "tiny") ? 1000 : 10;
        c->freq_dim = 256;
        c->norm_eps = 1e-6f;
        return 1;
    }
    return 0;
}

int dit_config_check(dit_config *c, char *err, size_t errlen) {
#define BAD(...) return snprintf(err, errlen, __VA_ARGS__), 0
    if (c->num_layers < 1) BAD("model.num_layers must be >= 1 (got %d)", c->num_layers);
    if (c->hidden_size < 1) BAD("model.hidden_size must be >= 1 (got %d)", c->hidden_size);
    if (c->num_heads < 1) BAD("model.num_attention_heads must be >= 1 (got %d)", c->num_heads);
    if (c->hidden_size % c->num_heads)
        BAD("model.hidden_size %d is not divisible by model.num_attention_heads %d", c->hidden_size, c->num_heads);
    if (c->hidden_size % 4)
        BAD("model.hidden_size %d must be divisible by 4 for the 2-D sin-cos position embedding", c->hidden_size);
    if (c->patch_size < 1) BAD("model.patch_size must be >= 1 (got %d)", c->patch_size);
    if (c->image_size < 1) BAD("model.image_size must be >= 1 (got %d)", c->image_size);
    if (c->image_size % c->patch_size)
        BAD("model.patch_size %d does not divide model.image_size %d", c->patch_size, c->image_size);
    if (c->in_channels < 1) BAD("model.in_channels must be >= 1 (got %d)", c->in_channels);
    if (c->out_channels == 0) c->out_channels = c->in_channels;
    if (c->out_channels < c->in_channels)
        BAD("model.out_channels %d must be >= model.in_channels %d", c->out_channels, c->in_channels);
    if (c->ffn_hidden_size == 0) c->ffn_hidden_size = 4 * c->hidden_size;
    if (c->ffn_hidden_size < 1) BAD("model.ffn_hidden_size must be >= 1 (got %d)", c->ffn_hidden_size);
    if (c->num_classes < 1) BAD("model.num_classes must be >= 1 (got %d)", c->num_classes);
    if (c->freq_dim < 2 || c->freq_dim % 2) BAD("model.freq_dim must be even and >= 2 (got %d)", c->freq_dim);
    if (!(c->norm_eps > 0)) BAD("model.norm_eps must be > 0 (got %g)", (double)c->norm_eps);
    return 1;
#undef BAD
}

/* ---- parameters ------------------------------------------------------------------------------- */

/* Views into the parameter (or gradient) buffer, resolved once from the table. */
typedef struct {
    float *mod_w, *mod_b; /* norm1.linear [6d, d], [6d] */
    float *qkv_w, *qkv_b; /* to_q/to_k/to_v, adjacent in the buffer: [3d, d], [3d] */
    float *out_w, *out_b; /* to_out.0 [d, d] */
    float *fc1_w, *fc1_b; /* ff.net.0.proj [F, d] */
    float *fc2_w, *fc2_b; /* ff.net.2 [d, F] */
} block_views;

typedef struct {
    float *pe_w, *pe_b;   /* pos_embed.proj [d, C, p, p] */
    float *t1_w, *t1_b;   /* timestep_embedder.linear_1 [d, freq] */
    float *t2_w, *t2_b;   /* linear_2 [d, d] */
    float *cls;           /* class_embedder.embedding_table [classes + 1, d] */
    float *po1_w, *po1_b; /* proj_out_1 [2d, d] */
    float *po2_w, *po2_b; /* proj_out_2 [p*p*out, d] */
} views;

struct dit_acts {
    int B;
    float *buf;
    size_t nfloats;
    int recompute;  /* blocks 0..recompute-1 are recomputed in the backward (full granularity) */
    int chunk;      /* ... in checkpoints of `chunk` consecutive blocks (k slots; 1: each block its own) */
    int selective;  /* keep no block's attention output / log-sum-exp: one shared pair, recomputed per block */
    int slot_layer; /* the first block of the checkpoint whose activations the slots hold, or under selective the
                     * block whose attention output the shared pair holds (-1: none) */
    /* global */
    float *patches, *tproj, *t1, *t1s, *c, *sc, *modf, *lnf, *xmf, *lnf_mean, *lnf_rstd, *out_tok, *t_saved;
    int *labels;
    /* per block (arrays of num_layers + 1 for x) */
    float **x, **qkv, **ao, **lse, **proj, **xmid, **h, **f, **mean1, **rstd1, **mean2, **rstd2, **mod;
    /* backward scratch */
    float *xg, *dx, *dT_a, *dT_b, *d3, *dF_a, *dF_b, *dmod, *dsc, *dc, *dt1s, *dt1, *dmodf, *dtok, *attn_ws;
    size_t off_head[7], off_blk[10], off_fin[4]; /* view offsets within their segments */
};

static void add_linear(param_table *t, const char *prefix, int out, int in) {
    char name[320];
    int64_t ws[2] = {out, in}, bs[1] = {out};
    snprintf(name, sizeof name, "%s.weight", prefix);
    param_table_add(t, name, 2, ws, 0);
    snprintf(name, sizeof name, "%s.bias", prefix);
    param_table_add(t, name, 1, bs, 1);
}

/* A linear split across the TP group: column-parallel (out_axis: weight rows and bias split) or row-parallel
 * (weight columns split, bias whole). */
static void add_tp_linear(dit_model *m, const char *prefix, int out, int in, int column) {
    char name[320];
    int64_t ws[2] = {out, in}, bs[1] = {out};
    snprintf(name, sizeof name, "%s.weight", prefix);
    param_table_add_split(&m->table, name, 2, ws, 0, column ? 0 : 1, m->tp, m->tp_rank);
    snprintf(name, sizeof name, "%s.bias", prefix);
    if (column)
        param_table_add_split(&m->table, name, 1, bs, 1, 0, m->tp, m->tp_rank);
    else
        param_table_add(&m->table, name, 1, bs, 1);
}

static void build_table(dit_model *m) {
    const dit_config *c = &m->cfg;
    param_table *t = &m->table;
    int d = m->d, p = c->patch_size;
    char name[256];
    int64_t pe[4] = {d, c->in_channels, p, p}, pb[1] = {d};
    param_table_add(t, "pos_embed.proj.weight", 4, pe, 0);
    param_table_add(t, "pos_embed.proj.bias", 1, pb, 1);
    add_linear(t, "transformer_blocks.0.norm1.emb.timestep_embedder.linear_1", d, c->freq_dim);
    add_linear(t, "transformer_blocks.0.norm1.emb.timestep_embedder.linear_2", d, d);
    int64_t cs[2] = {c->num_classes + 1, d};
    param_table_add(t, "transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight", 2, cs, 0);
    for (int l = 0; l < c->num_layers; l++) {
        char pre[128];
        snprintf(pre, sizeof pre, "transformer_blocks.%d", l);
        snprintf(name, sizeof name, "%s.norm1.linear", pre);
        add_linear(t, name, 6 * d, d);
        /* q, k, v weights adjacent, then their biases adjacent: one fused GEMM reads them as [3d, d] */
        int64_t ws[2] = {d, d}, bs[1] = {d};
        const char *qkv[3] = {"to_q", "to_k", "to_v"};
        for (int i = 0; i < 3; i++) {
            snprintf(name, sizeof name, "%s.attn1.%s.weight", pre, qkv[i]);
            param_table_add_split(t, name, 2, ws, 0, 0, m->tp, m->tp_rank);
        }
        for (int i = 0; i < 3; i++) {
            snprintf(name, sizeof name, "%s.attn1.%s.bias", pre, qkv[i]);
            param_table_add_split(t, name, 1, bs, 1, 0, m->tp, m->tp_rank);
        }
        snprintf(name, sizeof name, "%s.attn1.to_out.0", pre);
        add_tp_linear(m, name, d, d, 0);
        snprintf(name, sizeof name, "%s.ff.net.0.proj", pre);
        add_tp_linear(m, name, m->ffn, d, 1);
        snprintf(name, sizeof name, "%s.ff.net.2", pre);
        add_tp_linear(m, name, d, m->ffn, 0);
    }
    add_linear(t, "proj_out_1", 2 * d, d);
    add_linear(t, "proj_out_2", m->out_dim, d);
}

/* Offsets of the views inside their segment, resolved once from the table: every block has the same layout,
 * so one set of block offsets serves all of them (checked at creation). */
enum { H_PE_W, H_PE_B, H_T1_W, H_T1_B, H_T2_W, H_T2_B, H_CLS, N_HEAD };
enum { B_MOD_W, B_MOD_B, B_QKV_W, B_QKV_B, B_OUT_W, B_OUT_B, B_FC1_W, B_FC1_B, B_FC2_W, B_FC2_B, N_BLOCK };
enum { F_PO1_W, F_PO1_B, F_PO2_W, F_PO2_B, N_FINAL };

static size_t entry_offset(const dit_model *m, const char *fmt, int l) {
    char name[256];
    snprintf(name, sizeof name, fmt, l);
    const param_entry *e = param_table_find(&m->table, name);
    if (!e) dfm_die("internal: DiT parameter '%s' missing from the table", name);
    return e->offset;
}

static void resolve_segments(dit_model *m, dit_acts *a) {
    int L = m->cfg.num_layers;
    m->nseg = L + 2;
    m->seg_begin = xcalloc((size_t)m->nseg + 1, sizeof(size_t));
    for (int l = 0; l < L; l++) m->seg_begin[1 + l] = entry_offset(m, "transformer_blocks.%d.norm1.linear.weight", l);
    m->seg_begin[L + 1] = entry_offset(m, "proj_out_1.weight", 0);
    m->seg_begin[L + 2] = m->table.total;
    static const char *head[N_HEAD] = {"pos_embed.proj.weight",
                                       "pos_embed.proj.bias",
                                       "transformer_blocks.%d.norm1.emb.timestep_embedder.linear_1.weight",
                                       "transformer_blocks.%d.norm1.emb.timestep_embedder.linear_1.bias",
                                       "transformer_blocks.%d.norm1.emb.timestep_embedder.linear_2.weight",
                                       "transformer_blocks.%d.norm1.emb.timestep_embedder.linear_2.bias",
                                       "transformer_blocks.%d.norm1.emb.class_embedder.embedding_table.weight"};
    static const char *blk[N_BLOCK] = {
        "transformer_blocks.%d.norm1.linear.weight",   "transformer_blocks.%d.norm1.linear.bias",
        "transformer_blocks.%d.attn1.to_q.weight",     "transformer_blocks.%d.attn1.to_q.bias",
        "transformer_blocks.%d.attn1.to_out.0.weight", "transformer_blocks.%d.attn1.to_out.0.bias",
        "transformer_blocks.%d.ff.net.0.proj.weight",  "transformer_blocks.%d.ff.net.0.proj.bias",
        "transformer_blocks.%d.ff.net.2.weight",       "transformer_blocks.%d.ff.net.2.bias"};
    static const char *fin[N_FINAL] = {"proj_out_1.weight", "proj_out_1.bias", "proj_out_2.weight", "proj_out_2.bias"};
    for (int i = 0; i < N_HEAD; i++) a->off_head[i] = entry_offset(m, head[i], 0);
    for (int i = 0; i < N_FINAL; i++) a->off_fin[i] = entry_offset(m, fin[i], 0) - m->seg_begin[L + 1];
    for (int l = 0; l < L; l++) {
        for (int i = 0; i < N_BLOCK; i++) {
            size_t off = entry_offset(m, blk[i], l) - m->seg_begin[1 + l];
            if (l == 0)
                a->off_blk[i] = off;
            else if (off != a->off_blk[i])
                dfm_die("internal: DiT block %d is laid out unlike block 0", l);
        }
        /* the fused GEMM relies on to_k/to_v following to_q directly */
        if (entry_offset(m, "transformer_blocks.%d.attn1.to_v.weight", l) - m->seg_begin[1 + l] !=
                a->off_blk[B_QKV_W] + 2 * (size_t)m->attn_local * m->d ||
            entry_offset(m, "transformer_blocks.%d.attn1.to_v.bias", l) - m->seg_begin[1 + l] !=
                a->off_blk[B_QKV_B] + 2 * (size_t)m->attn_local)
            dfm_die("internal: q/k/v parameters of block %d are not adjacent", l);
    }
}

/* Views of one segment given its base (parameters or gradients). */
static void head_at(const dit_acts *a, float *base, views *v) {
    v->pe_w = base + a->off_head[H_PE_W], v->pe_b = base + a->off_head[H_PE_B];
    v->t1_w = base + a->off_head[H_T1_W], v->t1_b = base + a->off_head[H_T1_B];
    v->t2_w = base + a->off_head[H_T2_W], v->t2_b = base + a->off_head[H_T2_B];
    v->cls = base + a->off_head[H_CLS];
}

static void block_at(const dit_acts *a, float *base, block_views *b) {
    const size_t *o = a->off_blk;
    b->mod_w = base + o[B_MOD_W], b->mod_b = base + o[B_MOD_B];
    b->qkv_w = base + o[B_QKV_W], b->qkv_b = base + o[B_QKV_B];
    b->out_w = base + o[B_OUT_W], b->out_b = base + o[B_OUT_B];
    b->fc1_w = base + o[B_FC1_W], b->fc1_b = base + o[B_FC1_B];
    b->fc2_w = base + o[B_FC2_W], b->fc2_b = base + o[B_FC2_B];
}

static void final_at(const dit_acts *a, float *base, views *v) {
    v->po1_w = base + a->off_fin[F_PO1_W], v->po1_b = base + a->off_fin[F_PO1_B];
    v->po2_w = base + a->off_fin[F_PO2_W], v->po2_b = base + a->off_fin[F_PO2_B];
}

/* Where segment s lives for this pass: the model's buffers, or wherever the hooks put it. */
static float *seg_params(dit_model *m, int s, int backward) {
    if (m->hooks.params) return (float *)m->hooks.params(m->hooks.ctx, s, backward);
    return m->params + m->seg_begin[s];
}

static float *seg_grads(dit_model *m, int s) {
    if (m->hooks.grads) return m->hooks.grads(m->hooks.ctx, s);
    return m->grads + m->seg_begin[s];
}

static void seg_done(dit_model *m, int s) {
    if (m->hooks.grads_done) m->hooks.grads_done(m->hooks.ctx, s);
}

/* ---- activations ------------------------------------------------------------------------------ */

/* Two passes over the same carving code: the first counts floats, the second hands out pointers. */
typedef struct {
    float *base;
    size_t used;
} carver;

static float *carve(carver *cv, size_t n) {
    float *p = cv->base ? cv->base + cv->used : NULL;
    cv->used += (n + 15) / 16 * 16; /* keep every view 64-byte aligned */
    return p;
}

#define PER_BLOCK_LISTS(a)                                                                                             \
    {                                                                                                                  \
        &(a)->x, &(a)->qkv, &(a)->ao, &(a)->lse, &(a)->proj, &(a)->xmid, &(a)->h, &(a)->f, &(a)->mean1, &(a)->rstd1,   \
            &(a)->mean2, &(a)->rstd2, &(a)->mod                                                                        \
    }

static void carve_acts(dit_model *m, dit_acts *a, carver *cv) {
    /* F, H and the q/k/v/attention widths are this rank's share under tensor parallelism */
    size_t B = (size_t)a->B, T = (size_t)m->T, d = (size_t)m->d, F = (size_t)m->ffn_local,
           L = (size_t)m->cfg.num_layers;
    size_t BT = B * T, H = (size_t)m->heads_local, da = (size_t)m->attn_local;
    size_t BTl = B * (size_t)m->T_local; /* the residual stream's tokens: BT, or this rank's share under SP */
    a->patches = carve(cv, BT * (size_t)m->patch_dim);
    a->t_saved = carve(cv, B);
    a->tproj = carve(cv, B * (size_t)m->cfg.freq_dim);
    a->t1 = carve(cv, B * d);
    a->t1s = carve(cv, B * d);
    a->c = carve(cv, B * d);
    a->sc = carve(cv, B * d);
    a->modf = carve(cv, B * 2 * d);
    a->lnf = carve(cv, BT * d);
    a->xmf = carve(cv, BT * d);
    a->lnf_mean = carve(cv, BT);
    a->lnf_rstd = carve(cv, BT);
    a->out_tok = carve(cv, BT * (size_t)m->out_dim);
    size_t l0 = (size_t)m->block_begin, l1 = (size_t)m->block_end; /* a pipeline stage keeps its blocks only */
    (void)L;
    /* full recompute in checkpoints of k blocks: block l0 + i * k + j (i >= 1) shares slot j (block l0 + j's
     * activations); only a checkpoint's first block keeps its own input x */
    const size_t k = (size_t)a->chunk, R = (size_t)a->recompute;
    for (size_t l = l0; l <= l1; l++) {
        if (l < l1 && l < R && l - l0 >= k && (l - l0) % k)
            a->x[l] = a->x[l0 + (l - l0) % k];
        else
            a->x[l] = carve(cv, BTl * d);
    }
    for (size_t l = l0; l < l1; l++) {
        if (l < R && l - l0 >= k) {
            float ***lists[] = PER_BLOCK_LISTS(a);
            for (size_t i = 1; i < sizeof lists / sizeof lists[0]; i++) (*lists[i])[l] = (*lists[i])[l0 + (l - l0) % k];
            continue;
        }
        a->qkv[l] = carve(cv, BT * 3 * da);
        /* selective: the core attention's outputs, one pair for every block (recomputed from qkv in the backward) */
        a->ao[l] = a->selective && l > l0 ? a->ao[l0] : carve(cv, BT * da);
        a->lse[l] = a->selective && l > l0 ? a->lse[l0] : carve(cv, B * H * T);
        a->proj[l] = carve(cv, BTl * d);
        a->xmid[l] = carve(cv, BTl * d);
        a->h[l] = carve(cv, BT * F);
        a->f[l] = carve(cv, BTl * d);
        a->mean1[l] = carve(cv, BTl);
        a->rstd1[l] = carve(cv, BTl);
        a->mean2[l] = carve(cv, BTl);
        a->rstd2[l] = carve(cv, BTl);
        a->mod[l] = carve(cv, B * 6 * d);
    }
    a->dx = carve(cv, BTl * d);
    a->xg = carve(cv, m->sp ? BT * d : 0); /* SP: a gathered [B, T, d] input, or a row-parallel partial output */
    a->dT_a = carve(cv, BT * d);
    a->dT_b = carve(cv, BT * d);
    a->d3 = carve(cv, BT * 3 * da);
    a->dF_a = carve(cv, BT * F);
    a->dF_b = carve(cv, BT * F);
    a->dmod = carve(cv, B * 6 * d);
    a->dsc = carve(cv, B * d);
    a->dc = carve(cv, B * d);
    a->dt1s = carve(cv, B * d);
    a->dt1 = carve(cv, B * d);
    a->dmodf = carve(cv, B * 2 * d);
    a->dtok = carve(cv, BT * (size_t)m->out_dim);
    a->attn_ws = carve(cv, attention_workspace_floats(a->B, (int)H, (int)T));
}

/* (Re)allocate the arena for a->recompute: the old one (if any) is freed first. */
static void size_arena(dit_model *m, dit_acts *a) {
    free(a->buf);
    carver cv = {NULL, 0};
    carve_acts(m, a, &cv);
    a->nfloats = cv.used;
    a->buf = xalloc_floats(a->nfloats);
    cv = (carver){a->buf, 0};
    carve_acts(m, a, &cv);
    a->slot_layer = -1;
}

/* An activation arena for m's max batch and blocks [block_begin, block_end], the first `recompute` blocks
 * recomputed (view offsets not yet resolved). */
static dit_acts *acts_new(dit_model *m, int recompute, int chunk, int selective) {
    dit_acts *a = xcalloc(1, sizeof *a);
    size_t L1 = (size_t)m->cfg.num_layers + 1;
    float ***lists[] = PER_BLOCK_LISTS(a);
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) *lists[i] = xcalloc(L1, sizeof(float *));
    a->B = m->max_batch;
    a->recompute = recompute;
    a->chunk = chunk;
    a->selective = selective;
    size_arena(m, a);
    a->labels = xcalloc((size_t)m->max_batch, sizeof(int));
    return a;
}

int dit_set_recompute(dit_model *m, int blocks, char *err, size_t errlen) {
    return dit_set_recompute_mode(m, blocks, 1, 0, err, errlen);
}

int dit_set_recompute_mode(dit_model *m, int blocks, int chunk, int selective, char *err, size_t errlen) {
    if (blocks < 0 || blocks > m->cfg.num_layers) {
        snprintf(err, errlen, "%d blocks to recompute, outside 0..%d (the model's blocks)", blocks, m->cfg.num_layers);
        return -1;
    }
    if (chunk < 1 || chunk > m->cfg.num_layers) {
        snprintf(err, errlen, "checkpoints of %d blocks, outside 1..%d (the model's blocks)", chunk, m->cfg.num_layers);
        return -1;
    }
    if (selective && blocks) {
        snprintf(err, errlen,
                 "selective recomputation (core attention) with %d blocks fully recomputed: one or the "
                 "other",
                 blocks);
        return -1;
    }
    if (m->arenas) {
        snprintf(err, errlen, "activation recomputation is set before the pipeline stage (dit_set_stage)");
        return -1;
    }
    if (blocks != m->acts->recompute || chunk != m->acts->chunk || !selective != !m->acts->selective) {
        m->acts->recompute = blocks;
        m->acts->chunk = chunk;
        m->acts->selective = selective != 0;
        size_arena(m, m->acts);
    }
    return 0;
}

static void cp_layout(dit_model *m);

int dit_set_sequence_parallel(dit_model *m, int on, char *err, size_t errlen) {
    if (on && m->tp < 2) {
        snprintf(err, errlen,
                 "model.sequence_parallel needs tensor parallelism: model.tensor_model_parallel_size is %d (it splits "
                 "the tokens over the tensor-parallel group)",
                 m->tp);
        return -1;
    }
    if (on && m->cp == 1 && m->T % m->tp) { /* under context parallelism the chunk is padded instead (cp_layout) */
        snprintf(err, errlen,
                 "model.sequence_parallel: the %d tokens per sample ((model.image_size %d / model.patch_size %d)^2) "
                 "are not divisible by model.tensor_model_parallel_size %d",
                 m->T, m->cfg.image_size, m->cfg.patch_size, m->tp);
        return -1;
    }
    if (m->arenas) {
        snprintf(err, errlen, "sequence parallelism is set before the pipeline stage (dit_set_stage)");
        return -1;
    }
    if (!!on != m->sp) {
        m->sp = !!on;
        if (m->cp > 1)
            cp_layout(m); /* the chunk length becomes a multiple of tp (or no longer needs to be) */
        else
            m->T_local = m->sp ? m->T / m->tp : m->T;
        size_arena(m, m->acts);
    }
    return 0;
}

int dit_tp_check(const dit_config *cfg, int tp, char *err, size_t errlen) {
    dit_config c = *cfg;
    if (!dit_config_check(&c, err, errlen)) return 0;
    if (tp < 1) return snprintf(err, errlen, "model.tensor_model_parallel_size must be >= 1 (got %d)", tp), 0;
    if (c.num_heads % tp)
        return snprintf(err, errlen,
                        "model.num_attention_heads %d is not divisible by model.tensor_model_parallel_size %d (tensor "
                        "parallelism splits the attention by heads)",
                        c.num_heads, tp),
               0;
    if (c.ffn_hidden_size % tp)
        return snprintf(err, errlen,
                        "model.ffn_hidden_size %d is not divisible by model.tensor_model_parallel_size %d (tensor "
                        "parallelism splits the MLP by columns)",
                        c.ffn_hidden_size, tp),
               0;
    return 1;
}

void dit_create(dit_model *m, const dit_config *cfg, int max_batch) {
    dit_create_tp(m, cfg, max_batch, 1, 0);
}

void dit_create_tp(dit_model *m, const dit_config *cfg, int max_batch, int tp, int tp_rank) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    char err[512];
    if (!dit_config_check(&m->cfg, err, sizeof err)) dfm_die("invalid DiT config: %s", err);
    if (!dit_tp_check(&m->cfg, tp, err, sizeof err)) dfm_die("%s", err);
    if (tp_rank < 0 || tp_rank >= tp) dfm_die("internal: tensor-parallel rank %d of %d", tp_rank, tp);
    if (max_batch < 1) dfm_die("DiT: micro-batch size must be >= 1 (got %d)", max_batch);
    const dit_config *c = &m->cfg;
    m->d = c->hidden_size;
    m->grid = c->image_size / c->patch_size;
    m->T = m->grid * m->grid;
    m->T_full = m->T, m->cp = 1, m->cp_comm = CP_LOCAL;
    m->head_dim = c->hidden_size / c->num_heads;
    m->ffn = c->ffn_hidden_size;
    m->patch_dim = c->in_channels * c->patch_size * c->patch_size;
    m->out_dim = c->out_channels * c->patch_size * c->patch_size;
    m->max_batch = max_batch;
    m->tp = tp, m->tp_rank = tp_rank;
    m->heads_local = c->num_heads / tp;
    m->attn_local = m->heads_local * m->head_dim;
    m->ffn_local = m->ffn / tp;
    m->sp = 0, m->T_local = m->T;
    build_table(m);
    m->params = xalloc_floats(m->table.total);
    m->grads = xalloc_floats(m->table.total);
    m->pos_embed = xalloc_floats((size_t)m->T * m->d);
    pos_embed_2d_sincos(m->pos_embed, m->d, m->grid, m->grid, (float)m->grid, 1.0f);

    m->block_begin = 0, m->block_end = c->num_layers;
    dit_acts *a = acts_new(m, 0, 1, 0);
    resolve_segments(m, a);
    m->acts = a;
}

/* Context parallelism's chunking from cp, cp_rank and sp: this rank's T = ceil(T_full / cp) tokens, under sequence
 * parallelism rounded up to a multiple of tp (the sequence padded to a multiple of cp x tp, so every chunk splits
 * evenly over the TP group); the position embedding of its tokens and the whole-sample buffer. */
static void cp_layout(dit_model *m) {
    m->T = cp_chunk_len_aligned(m->T_full, m->cp, m->sp ? m->tp : 1);
    m->T_local = m->sp ? m->T / m->tp : m->T;
    m->tok0 = m->cp_rank * m->T;
    /* the fixed position embedding of this rank's tokens, by global position (padding: zero) */
    float *full = xalloc_floats((size_t)m->T_full * m->d);
    pos_embed_2d_sincos(full, m->d, m->grid, m->grid, (float)m->grid, 1.0f);
    free(m->pos_embed);
    m->pos_embed = xcalloc((size_t)m->T * m->d, sizeof(float));
    int valid = cp_chunk_valid_len(m->T_full, m->T, m->cp_rank);
    if (valid > 0) memcpy(m->pos_embed, full + (size_t)m->tok0 * m->d, sizeof(float) * (size_t)valid * m->d);
    free(full);
    free(m->cp_full);
    m->cp_full = NULL;
    if (m->cp > 1) {
        int w = m->patch_dim > m->out_dim ? m->patch_dim : m->out_dim;
        m->cp_full = xalloc_floats((size_t)m->max_batch * m->T_full * w);
    }
}

void dit_set_context_parallel(dit_model *m, int cp, int cp_rank, int comm_type) {
    if (cp < 1 || cp_rank < 0 || cp_rank >= cp || m->arenas)
        dfm_die("internal: DiT context-parallel rank %d of %d (set before the pipeline stage)", cp_rank, cp);
    char err[512];
    if (!cp_check(m->heads_local, cp, (cp_comm_type)comm_type, err, sizeof err)) dfm_die("%s", err);
    m->cp = cp, m->cp_rank = cp_rank, m->cp_comm = comm_type;
    cp_layout(m);
    size_arena(m, m->acts);
}

void dit_cp_owned(const dit_model *m, unsigned char *mask, int channels) {
    int S = m->cfg.image_size, p = m->cfg.patch_size;
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) {
            int tok = (y / p) * m->grid + x / p;
            unsigned char own = tok >= m->tok0 && tok < m->tok0 + m->T;
            for (int c = 0; c < channels; c++) mask[((size_t)c * S + y) * S + x] = own;
        }
}

static void acts_free(dit_acts *a) {
    if (!a) return;
    float ***lists[] = PER_BLOCK_LISTS(a);
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) free(*lists[i]);
    free(a->labels);
    free(a->buf);
    free(a);
}

void dit_set_stage(dit_model *m, int block_begin, int block_end, int n_arenas) {
    if (block_begin < 0 || block_end > m->cfg.num_layers || block_begin >= block_end || n_arenas < 1)
        dfm_die("internal: DiT stage blocks [%d, %d) of %d with %d arenas", block_begin, block_end, m->cfg.num_layers,
                n_arenas);
    dit_acts *proto = m->acts;
    m->block_begin = block_begin, m->block_end = block_end;
    dit_acts **ar = xcalloc((size_t)n_arenas, sizeof *ar);
    for (int k = 0; k < n_arenas; k++) {
        ar[k] = acts_new(m, proto->recompute, proto->chunk, proto->selective);
        memcpy(ar[k]->off_head, proto->off_head, sizeof proto->off_head);
        memcpy(ar[k]->off_blk, proto->off_blk, sizeof proto->off_blk);
        memcpy(ar[k]->off_fin, proto->off_fin, sizeof proto->off_fin);
    }
    if (m->arenas) {
        for (int k = 0; k < m->n_arenas; k++) acts_free(m->arenas[k]);
        free(m->arenas);
    } else
        acts_free(proto);
    m->arenas = ar, m->n_arenas = n_arenas;
    m->acts = ar[0];
}

void dit_use_arena(dit_model *m, int k) {
    if (!m->arenas || k < 0 || k >= m->n_arenas) dfm_die("internal: DiT arena %d of %d", k, m->n_arenas);
    m->acts = m->arenas[k];
}

void dit_stage_tensors(dit_model *m, int B, stage_dir dir, stage_tensors *io) {
    dit_acts *a = m->acts;
    size_t n = (size_t)B * m->T_local * m->d; /* this rank's tokens under sequence parallelism */
    io->n = 2;
    io->t[0] = dir == STAGE_GRAD ? a->dx : a->x[dir == STAGE_FWD_IN ? m->block_begin : m->block_end];
    io->t[1] = dir == STAGE_GRAD ? a->dsc : a->sc;
    io->len[0] = n, io->len[1] = (size_t)B * m->d;
}

void dit_free(dit_model *m) {
    if (m->arenas) {
        for (int k = 0; k < m->n_arenas; k++) acts_free(m->arenas[k]);
        free(m->arenas);
    } else
        acts_free(m->acts);
    free(m->params);
    free(m->grads);
    free(m->pos_embed);
    free(m->cp_full);
    free(m->seg_begin);
    param_table_free(&m->table);
    memset(m, 0, sizeof *m);
}

size_t dit_activation_bytes(const dit_model *m) {
    if (!m->arenas) return m->acts->nfloats * sizeof(float);
    size_t n = 0;
    for (int k = 0; k < m->n_arenas; k++) n += m->arenas[k]->nfloats * sizeof(float);
    return n;
}

void dit_zero_grad(dit_model *m) {
    memset(m->grads, 0, m->table.total * sizeof(float));
}

/* ---- initialisation --------------------------------------------------------------------------- */

static void fill_uniform(float *w, size_t n, float bound, uint64_t seed, uint32_t idx) {
    for (size_t i = 0; i < n; i++)
        w[i] = (float)((2.0 * rng_uniform(seed, RNG_STREAM_INIT, 0, idx, (uint32_t)i) - 1.0) * bound);
}

/* Every tensor is drawn whole (a tensor-parallel rank draws the whole tensor, then keeps its slice), so a TP run
 * starts from the weights of one process. */
void dit_init(dit_model *m, uint64_t seed) {
    memset(m->params, 0, m->table.total * sizeof(float));
    float *whole = NULL;
    for (int i = 0; i < m->table.n; i++) {
        const param_entry *e = &m->table.e[i];
        const char *n = e->name;
        if (e->ndim == 1) continue;                                       /* biases: zero */
        if (strstr(n, "norm1.linear") || strstr(n, "proj_out")) continue; /* adaLN-Zero: zero modulation/output */
        size_t numel = e->global_numel;
        float *w = e->split_axis < 0 ? m->params + e->offset : (whole = xrealloc(whole, numel * sizeof(float)));
        if (strstr(n, "embedding_table") || strstr(n, "timestep_embedder")) {
            rng_fill_normal(w, numel, seed, RNG_STREAM_INIT, 1u << 20, (uint32_t)i);
            for (size_t j = 0; j < numel; j++) w[j] *= 0.02f;
        } else {
            /* xavier-uniform over [out, in...] (the patch conv as [d, C*p*p]) */
            double fan_out = (double)e->global_shape[0], fan_in = (double)numel / fan_out;
            fill_uniform(w, numel, (float)sqrt(6.0 / (fan_in + fan_out)), seed, (uint32_t)i);
        }
        if (e->split_axis >= 0) param_entry_take_slice(e, w, m->params + e->offset);
    }
    free(whole);
}

/* ---- forward ---------------------------------------------------------------------------------- */

/* A row-parallel linear (to_out.0, ff.net.2 under tensor parallelism): every TP rank multiplies its slice of
 * the inputs by its columns of the weight, the partial products are summed over the TP group (one all-reduce,
 * the same bits on every rank), then the whole bias is added once. TP = 1: the plain linear. */
static void row_parallel_forward(const dit_model *m, float *out, const float *inp, const float *w, const float *b,
                                 int M, int N, int K) {
    if (m->tp == 1) {
        matmul_forward(out, inp, w, b, M, N, K);
        return;
    }
    if (m->sp) { /* sequence parallel: the partial products of every token, reduce-scattered to this rank's tokens */
        matmul_forward(m->acts->xg, inp, w, NULL, M, N, K);
        M /= m->tp;
        dist_tp_seq_reduce_scatter_f32(m->acts->xg, out, M / m->T_local, (size_t)m->T_local * N,
                                       "sequence-parallel reduce-scatter of a row-parallel output");
    } else {
        matmul_forward(out, inp, w, NULL, M, N, K);
        dist_tp_allreduce_sum_f32(out, (size_t)M * N, "tensor-parallel all-reduce of a row-parallel output");
    }
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) out[(size_t)i * N + j] += b[j];
}

/* Sequence parallelism: the input of a column-parallel linear, this rank's tokens [B, T_local, d], gathered into
 * xg [B, T, d] (returned); without SP the input itself. */
static const float *sp_gather(const dit_model *m, const float *local, int B) {
    if (!m->sp) return local;
    dist_tp_seq_gather_f32(local, m->acts->xg, B, (size_t)m->T_local * m->d, "sequence-parallel all-gather");
    return m->acts->xg;
}

/* This rank's tokens of a whole-sequence [B, T, C] tensor into [B, T_local, C]. */
static void sp_take_local(const dit_model *m, float *local, const float *full, int B, int C) {
    const size_t rows = (size_t)m->T_local * C;
    for (int b = 0; b < B; b++)
        memmove(local + (size_t)b * rows, full + ((size_t)b * m->T + (size_t)m->tp_rank * m->T_local) * C,
                sizeof(float) * rows);
}

/* The input gradient of a column-parallel linear (q/k/v, ff.net.0): each TP rank holds its slice's share; the
 * sum over the TP group is the gradient of the replicated input (Megatron's f operator, backward). */
static void tp_sum(const dit_model *m, float *buf, size_t n) {
    if (m->tp > 1) dist_tp_allreduce_sum_f32(buf, n, "tensor-parallel all-reduce of an input gradient");
}

/* The same under sequence parallelism: full [B, T, d] partial input gradients reduce-scattered to this rank's
 * tokens (into xg, returned); without SP tp_sum in place, full returned. */
static float *tp_sum_sp(const dit_model *m, float *full, int B) {
    if (!m->sp) {
        tp_sum(m, full, (size_t)B * m->T * m->d);
        return full;
    }
    dist_tp_seq_reduce_scatter_f32(full, m->acts->xg, B, (size_t)m->T_local * m->d,
                                   "sequence-parallel reduce-scatter of an input gradient");
    return m->acts->xg;
}

static void add_pos_embed(float *x, const float *pos, int B, int T, int d) {
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        float *xb = x + (size_t)b * T * d;
        for (size_t i = 0; i < (size_t)T * d; i++) xb[i] += pos[i];
    }
}

/* One block's forward from x[l] into block l's activations, its output into xout (NULL: not needed, as when the
 * backward recomputes a block whose output the next block already holds). The forward and the backward's
 * recompute both run this, so their arithmetic is the same. Scratch: dT_a, dT_b, dF_a (none carries anything
 * between the backward's blocks). */
static void block_forward(dit_model *m, int l, const block_views *w, int B, float *xout) {
    dit_acts *a = m->acts;
    const dit_config *c = &m->cfg;
    /* H, F and da (the attention width) are this rank's share under tensor parallelism */
    const int d = m->d, T = m->T, BT = B * T, H = m->heads_local, D = m->head_dim, F = m->ffn_local;
    const int da = m->attn_local;
    /* Tl: the residual stream's tokens per sample (all T, or this rank's T / tp under sequence parallelism) */
    const int Tl = m->T_local, BTl = B * Tl;
    float *ln = a->dT_a, *xm = a->dT_b, *gelu_out = a->dF_a;
    float *mod = a->mod[l];
    matmul_forward(mod, a->sc, w->mod_w, w->mod_b, B, 6 * d, d);
    /* attention half */
    layernorm_forward(ln, a->mean1[l], a->rstd1[l], a->x[l], NULL, NULL, BTl, d, LN_EPS);
    modulate_forward(xm, ln, mod + 0 * d, mod + 1 * d, B, Tl, d, 6 * d);
    matmul_forward(a->qkv[l], sp_gather(m, xm, B), w->qkv_w, w->qkv_b, BT, 3 * da, d);
    cp_attention_forward((cp_comm_type)m->cp_comm, a->ao[l], a->lse[l], a->qkv[l], a->qkv[l] + da, a->qkv[l] + 2 * da,
                         B, T, m->T_full, H, D, 3 * da, 3 * da, da, 1.0f / sqrtf((float)D));
    row_parallel_forward(m, a->proj[l], a->ao[l], w->out_w, w->out_b, BT, d, da);
    gate_residual_forward(a->xmid[l], a->x[l], a->proj[l], mod + 2 * d, B, Tl, d, 6 * d);
    /* MLP half */
    layernorm_forward(ln, a->mean2[l], a->rstd2[l], a->xmid[l], NULL, NULL, BTl, d, c->norm_eps);
    modulate_forward(xm, ln, mod + 3 * d, mod + 4 * d, B, Tl, d, 6 * d);
    matmul_forward(a->h[l], sp_gather(m, xm, B), w->fc1_w, w->fc1_b, BT, F, d);
    gelu_forward(gelu_out, a->h[l], (size_t)BT * F);
    row_parallel_forward(m, a->f[l], gelu_out, w->fc2_w, w->fc2_b, BT, d, F);
    if (xout) gate_residual_forward(xout, a->xmid[l], a->f[l], mod + 5 * d, B, Tl, d, 6 * d);
}

void dit_forward(dit_model *m, float *out, const float *x, const float *t, const int *labels, int B) {
    dit_acts *a = m->acts;
    const dit_config *c = &m->cfg;
    /* a pipeline stage: the embedders only on the first, the head only on the last (dit_set_stage); a later
     * stage's input is already in its arena (dit_stage_tensors) and x, t, labels are not read */
    const int first = m->block_begin == 0, last = m->block_end == c->num_layers;
    if (B < 1 || B > m->max_batch) dfm_die("DiT forward: batch %d outside 1..%d", B, m->max_batch);
    for (int b = 0; first && b < B; b++)
        if (labels[b] < 0 || labels[b] > c->num_classes)
            dfm_die("DiT forward: class label %d of sample %d outside 0..%d (%d = null class)", labels[b], b,
                    c->num_classes, c->num_classes);
    views pv;
    const views *p = &pv;
    int d = m->d, T = m->T, BT = B * T;
    if (first) {
        head_at(a, seg_params(m, 0, 0), &pv);
        memcpy(a->labels, labels, sizeof(int) * (size_t)B);
        memcpy(a->t_saved, t, sizeof(float) * (size_t)B);

        /* patch embedding + fixed positions */
        if (m->cp == 1)
            patchify_forward(a->patches, x, B, c->in_channels, c->image_size, c->image_size, c->patch_size);
        else { /* the whole image's patches, then this rank's tokens */
            patchify_forward(m->cp_full, x, B, c->in_channels, c->image_size, c->image_size, c->patch_size);
            cp_take_rows(a->patches, m->cp_full, B, m->T, m->tok0, m->T_full, m->patch_dim);
        }
        /* on the whole sequence; under sequence parallelism each rank keeps its tokens */
        float *x0 = m->sp ? a->xg : a->x[0];
        matmul_forward(x0, a->patches, p->pe_w, p->pe_b, BT, d, m->patch_dim);
        add_pos_embed(x0, m->pos_embed, B, T, d);
        if (m->sp) sp_take_local(m, a->x[0], x0, B, d);

        /* conditioning c = MLP(sinusoid(t)) + class embedding; every adaLN linear reads silu(c) */
        timestep_embedding(a->tproj, t, B, c->freq_dim, 10000.0f, 1.0f, 1);
        matmul_forward(a->t1, a->tproj, p->t1_w, p->t1_b, B, d, c->freq_dim);
        silu_forward(a->t1s, a->t1, (size_t)B * d);
        matmul_forward(a->c, a->t1s, p->t2_w, p->t2_b, B, d, d);
        embedding_forward(a->sc, p->cls, labels, B, d); /* sc as temporary for the class embedding */
        for (size_t i = 0; i < (size_t)B * d; i++) a->c[i] += a->sc[i];
        silu_forward(a->sc, a->c, (size_t)B * d);
    }

    a->slot_layer = -1;
    for (int l = m->block_begin; l < m->block_end; l++) {
        block_views wv;
        block_at(a, seg_params(m, 1 + l, 0), &wv);
        block_forward(m, l, &wv, B, a->x[l + 1]);
        if (l < a->recompute) a->slot_layer = m->block_begin + (l - m->block_begin) / a->chunk * a->chunk;
        if (a->selective) a->slot_layer = l;
    }

    if (!last) return;
    /* final layer: adaLN shift/scale (chunk order shift, scale), linear, unpatchify */
    final_at(a, seg_params(m, c->num_layers + 1, 0), &pv);
    const float *xL = sp_gather(m, a->x[c->num_layers], B); /* the head runs on the whole sequence */
    matmul_forward(a->modf, a->sc, p->po1_w, p->po1_b, B, 2 * d, d);
    layernorm_forward(a->lnf, a->lnf_mean, a->lnf_rstd, xL, NULL, NULL, BT, d, LN_EPS);
    modulate_forward(a->xmf, a->lnf, a->modf, a->modf + d, B, T, d, 2 * d);
    matmul_forward(a->out_tok, a->xmf, p->po2_w, p->po2_b, BT, m->out_dim, d);
    const float *tok = a->out_tok;
    if (m->cp > 1) { /* this rank's tokens in place, zero elsewhere */
        cp_put_rows(m->cp_full, a->out_tok, B, m->T, m->tok0, m->T_full, m->out_dim);
        tok = m->cp_full;
    }
    unpatchify_forward(out, tok, B, c->out_channels, c->image_size, c->image_size, c->patch_size);
}

/* ---- backward --------------------------------------------------------------------------------- */

static void zero(float *p, size_t n) {
    memset(p, 0, n * sizeof(float));
}

void dit_backward(dit_model *m, const float *dout, int B) {
    dit_acts *a = m->acts;
    const dit_config *c = &m->cfg;
    views pv, gv;
    const views *p = &pv, *g = &gv;
    int d = m->d, T = m->T, BT = B * T, H = m->heads_local, D = m->head_dim, F = m->ffn_local, da = m->attn_local;
    int Tl = m->T_local, BTl = B * Tl;
    size_t nT = (size_t)BT * d, nTl = (size_t)BTl * d;
    /* a pipeline stage that does not end with the head finds dx and dsc received (dit_stage_tensors) */
    const int first = m->block_begin == 0, last = m->block_end == c->num_layers;
    if (last) {
        final_at(a, seg_params(m, c->num_layers + 1, 1), &pv);
        final_at(a, seg_grads(m, c->num_layers + 1), &gv);

        /* final layer */
        zero(a->dtok, (size_t)BT * m->out_dim);
        if (m->cp == 1)
            unpatchify_backward(a->dtok, dout, B, c->out_channels, c->image_size, c->image_size, c->patch_size);
        else {
            memset(m->cp_full, 0, sizeof(float) * (size_t)B * m->T_full * m->out_dim);
            unpatchify_backward(m->cp_full, dout, B, c->out_channels, c->image_size, c->image_size, c->patch_size);
            cp_take_rows(a->dtok, m->cp_full, B, m->T, m->tok0, m->T_full, m->out_dim);
        }
        float *dxm = a->dT_a, *dln = a->dT_b;
        zero(dxm, nT);
        matmul_backward(dxm, g->po2_w, g->po2_b, a->dtok, a->xmf, p->po2_w, BT, m->out_dim, d);
        zero(dln, nT);
        zero(a->dmodf, (size_t)B * 2 * d);
        modulate_backward(dln, a->dmodf, a->dmodf + d, dxm, a->lnf, a->modf + d, B, T, d, 2 * d);
        if (m->sp) { /* the head ran on the whole sequence: its input gradient, then this rank's tokens of it */
            const float *xL = sp_gather(m, a->x[c->num_layers], B);
            zero(dxm, nT);
            layernorm_backward(dxm, NULL, NULL, dln, xL, NULL, a->lnf_mean, a->lnf_rstd, BT, d);
            sp_take_local(m, a->dx, dxm, B, d);
        } else {
            zero(a->dx, nT);
            layernorm_backward(a->dx, NULL, NULL, dln, a->x[c->num_layers], NULL, a->lnf_mean, a->lnf_rstd, BT, d);
        }
        zero(a->dsc, (size_t)B * d);
        matmul_backward(a->dsc, g->po1_w, g->po1_b, a->dmodf, a->sc, p->po1_w, B, 2 * d, d);
        seg_done(m, c->num_layers + 1);
    }

    float *ln = a->dT_a, *xm = a->dT_b;    /* recomputed forward values */
    float *dtmp = a->lnf, *dtmp2 = a->xmf; /* [B,T,d] buffers no longer needed after the final layer */
    for (int l = m->block_end - 1; l >= m->block_begin; l--) {
        block_views wv, gwv;
        int c0 = m->block_begin + (l - m->block_begin) / a->chunk * a->chunk; /* l's checkpoint: blocks c0..l */
        if (l < a->recompute && a->slot_layer != c0) { /* the checkpoint's activations again, from x[c0] */
            for (int j = c0; j <= l; j++) {
                block_at(a, seg_params(m, 1 + j, 1), &wv);
                block_forward(m, j, &wv, B, j < l ? a->x[j + 1] : NULL);
            }
            a->slot_layer = c0;
        }
        block_at(a, seg_params(m, 1 + l, 1), &wv);
        block_at(a, seg_grads(m, 1 + l), &gwv);
        const block_views *w = &wv, *gw = &gwv;
        const float *mod = a->mod[l];
        float *dmod = a->dmod;
        zero(dmod, (size_t)B * 6 * d);

        /* ---- MLP half: x_out = x_mid + gate_mlp * f ---- (under sequence parallelism the residual stream's
         * gradients are this rank's tokens, BTl rows; the linears' are the whole sequence's, gathered) */
        float *df = dtmp;
        zero(df, nTl);
        gate_residual_backward(NULL, df, dmod + 5 * d, a->dx, a->f[l], mod + 5 * d, B, Tl, d, 6 * d);
        float *gelu_out = a->dF_a, *dg = a->dF_b;
        gelu_forward(gelu_out, a->h[l], (size_t)BT * F);
        zero(dg, (size_t)BT * F);
        matmul_backward(dg, gw->fc2_w, gw->fc2_b, sp_gather(m, df, B), gelu_out, w->fc2_w, BT, d, F);
        float *dh = a->dF_a; /* gelu_out is dead once fc2's weight gradient is taken */
        zero(dh, (size_t)BT * F);
        gelu_backward(dh, dg, a->h[l], (size_t)BT * F);
        layernorm_forward(ln, a->mean2[l], a->rstd2[l], a->xmid[l], NULL, NULL, BTl, d, c->norm_eps);
        modulate_forward(xm, ln, mod + 3 * d, mod + 4 * d, B, Tl, d, 6 * d);
        float *dxm2 = dtmp;
        zero(dxm2, nT);
        matmul_backward(dxm2, gw->fc1_w, gw->fc1_b, dh, sp_gather(m, xm, B), w->fc1_w, BT, F, d);
        dxm2 = tp_sum_sp(m, dxm2, B);
        float *dln2 = dtmp2;
        zero(dln2, nTl);
        modulate_backward(dln2, dmod + 3 * d, dmod + 4 * d, dxm2, ln, mod + 4 * d, B, Tl, d, 6 * d);
        layernorm_backward(a->dx, NULL, NULL, dln2, a->xmid[l], NULL, a->mean2[l], a->rstd2[l], BTl, d);

        /* ---- attention half: x_mid = x + gate_msa * proj ---- */
        float *dproj = dtmp;
        zero(dproj, nTl);
        gate_residual_backward(NULL, dproj, dmod + 2 * d, a->dx, a->proj[l], mod + 2 * d, B, Tl, d, 6 * d);
        if (a->selective && a->slot_layer != l) { /* the core attention again, same kernel on the kept qkv */
            cp_attention_forward((cp_comm_type)m->cp_comm, a->ao[l], a->lse[l], a->qkv[l], a->qkv[l] + da,
                                 a->qkv[l] + 2 * da, B, T, m->T_full, H, D, 3 * da, 3 * da, da, 1.0f / sqrtf((float)D));
            a->slot_layer = l;
        }
        float *dao = dtmp2;
        zero(dao, (size_t)BT * da);
        matmul_backward(dao, gw->out_w, gw->out_b, sp_gather(m, dproj, B), a->ao[l], w->out_w, BT, d, da);
        float *dqkv = a->d3;
        zero(dqkv, (size_t)BT * 3 * da);
        cp_attention_backward((cp_comm_type)m->cp_comm, dqkv, dqkv + da, dqkv + 2 * da, a->attn_ws, dao, a->ao[l],
                              a->lse[l], a->qkv[l], a->qkv[l] + da, a->qkv[l] + 2 * da, B, T, m->T_full, H, D, 3 * da,
                              3 * da, da, 1.0f / sqrtf((float)D));
        layernorm_forward(ln, a->mean1[l], a->rstd1[l], a->x[l], NULL, NULL, BTl, d, LN_EPS);
        modulate_forward(xm, ln, mod + 0 * d, mod + 1 * d, B, Tl, d, 6 * d);
        float *dxm1 = dtmp;
        zero(dxm1, nT);
        matmul_backward(dxm1, gw->qkv_w, gw->qkv_b, dqkv, sp_gather(m, xm, B), w->qkv_w, BT, 3 * da, d);
        dxm1 = tp_sum_sp(m, dxm1, B);
        float *dln1 = dtmp2;
        zero(dln1, nTl);
        modulate_backward(dln1, dmod + 0 * d, dmod + 1 * d, dxm1, ln, mod + 1 * d, B, Tl, d, 6 * d);
        layernorm_backward(a->dx, NULL, NULL, dln1, a->x[l], NULL, a->mean1[l], a->rstd1[l], BTl, d);

        /* under sequence parallelism dmod holds this rank's tokens' share: summed over the TP group (rank order),
         * the adaLN linear's gradients and dsc are the whole sequence's, the same bits on every TP rank */
        if (m->sp)
            dist_tp_allreduce_sum_f32(dmod, (size_t)B * 6 * d, "sequence-parallel all-reduce of adaLN gradients");
        /* adaLN linear of this block */
        matmul_backward(a->dsc, gw->mod_w, gw->mod_b, dmod, a->sc, w->mod_w, B, 6 * d, d);
        seg_done(m, 1 + l);
    }

    if (!first) return;
    /* conditioning */
    head_at(a, seg_params(m, 0, 1), &pv);
    head_at(a, seg_grads(m, 0), &gv);
    zero(a->dc, (size_t)B * d);
    silu_backward(a->dc, a->dsc, a->c, (size_t)B * d);
    embedding_backward(g->cls, a->dc, a->labels, B, d);
    zero(a->dt1s, (size_t)B * d);
    matmul_backward(a->dt1s, g->t2_w, g->t2_b, a->dc, a->t1s, p->t2_w, B, d, d);
    zero(a->dt1, (size_t)B * d);
    silu_backward(a->dt1, a->dt1s, a->t1, (size_t)B * d);
    matmul_backward(NULL, g->t1_w, g->t1_b, a->dt1, a->tproj, p->t1_w, B, d, c->freq_dim);

    /* patch embedding (the position embedding is fixed) */
    matmul_backward(NULL, g->pe_w, g->pe_b, sp_gather(m, a->dx, B), a->patches, p->pe_w, BT, d, m->patch_dim);
    seg_done(m, 0);
}

double dit_forward_flops(const dit_model *m, int B) {
    const dit_config *c = &m->cfg;
    /* the whole model's FLOPs (under context parallelism each rank runs about 1/cp of them) */
    double BT = (double)B * m->T_full, d = m->d, F = m->ffn, L = c->num_layers;
    double per_block = 2 * BT * d * (3 * d) + 2 * BT * d * d + 2 * BT * d * F * 2             /* qkv, out, MLP */
                       + 4.0 * B * c->num_heads * (double)m->T_full * m->T_full * m->head_dim /* QK^T and PV */
                       + 2.0 * B * d * 6 * d;                                                 /* adaLN */
    return L * per_block + 2 * BT * m->patch_dim * d + 2 * BT * d * m->out_dim + 2.0 * B * d * 2 * d +
           2.0 * B * (c->freq_dim * d + d * d);
}
