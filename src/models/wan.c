/* Wan 2.1 transformer forward and backward over one contiguous parameter buffer.
 *
 * Data flow (x is the residual stream [B*N, d]; mod = scale_shift_table + time_proj(silu(temb)), six chunks
 * of d per sample: shift, scale, gate for self-attention, then for the FFN):
 *   xm1 = LN(x) * (1 + scale) + shift         qkv = xm1 Wqkv^T + b
 *   q, k = RMSNorm over all heads (norm_q, norm_k), then RoPE       ao1 = attention(q, k, v)
 *   x_mid = x + gate * (ao1 Wo^T + b)
 *   n2 = LN(x_mid; norm2 affine)              q2 = RMSNorm(n2 Wq^T + b)    k2, v2 from the projected text ctx
 *   x2 = x_mid + attention(q2, RMSNorm(k2), v2; text mask) Wo2^T + b
 *   xm3 = LN(x2) * (1 + c_scale) + c_shift    x_out = x2 + c_gate * (gelu(xm3 W1^T + b) W2^T + b)
 * Head: LN(x) * (1 + scale) + shift with (shift, scale) = scale_shift_table + temb (temb before its SiLU),
 * proj_out, unpatchify.
 * Saved per block: x, qkv (before the norms), ao1, lse1, proj1, x_mid, q2 and text k2/v2 (before the norms),
 * ao2, lse2, x2, h, f, and every norm's statistics. LN outputs, modulated inputs, normalised and rotated
 * q/k and gelu(h) are recomputed in the backward: elementwise work next to the GEMMs, 7 d floats per token
 * fewer per block. With wan_set_recompute, the first N blocks keep only x and share one slot for the rest, and the
 * backward runs block_forward again before each of their backwards; wan_set_recompute_mode adds checkpoints of k
 * blocks and selective (ao1 / lse1 / ao2 / lse2 shared by every block, the attention kernels re-run in the backward)
 * (docs/ARCHITECTURE.md, "Activation recompute"). */
#include "dfm/wan.h"
#include "dfm/common.h"
#include "dfm/context_parallel.h"
#include "dfm/dist.h"
#include "dfm/kernels.h"
#include "dfm/rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ROPE_THETA 10000.0 /* fixed in diffusers' WanRotaryPosEmbed (not a config key) */

/* ---- configs ---------------------------------------------------------------------------------- */

int wan_config_named(wan_config *c, const char *name) {
    static const struct {
        const char *name;
        int layers, heads, head_dim, ffn, text_dim, channels;
    } named[] = {
        /* tiny: head_dim 16 splits RoPE 8/4/4, unequal axes; 2 heads make the norms' "across heads" matter */
        {"wan_tiny", 2, 2, 16, 64, 32, 4},
        {"wan_1_3b", 30, 12, 128, 8960, 4096, 16},
        {"wan_14b", 40, 40, 128, 13824, 4096, 16},
    };
    for (size_t i = 0; i < sizeof named / sizeof named[0]; i++) {
        if (strcmp(named[i].name, name)) continue;
        memset(c, 0, sizeof *c);
        c->num_layers = named[i].layers;
        c->num_heads = named[i].heads;
        c->head_dim = named[i].head_dim;
        c->ffn_dim = named[i].ffn;
        c->text_dim = named[i].text_dim;
        c->in_channels = c->out_channels = named[i].channels;
        c->freq_dim = 256;
        c->patch_t = 1, c->patch_h = 2, c->patch_w = 2;
        c->eps = 1e-6f;
        c->rope_max_seq_len = 1024;
        return 1;
    }
    return 0;
}

int wan_config_check(wan_config *c, char *err, size_t errlen) {
#define BAD(...) return snprintf(err, errlen, __VA_ARGS__), 0
    if (c->num_layers < 1) BAD("model.num_layers must be >= 1 (got %d)", c->num_layers);
    if (c->num_heads < 1) BAD("model.num_attention_heads must be >= 1 (got %d)", c->num_heads);
    if (c->head_dim < 2 || c->head_dim % 2)
        BAD("model.attention_head_dim must be even and >= 2 for the rotary embedding's pairs (got %d)", c->head_dim);
    if (c->in_channels < 1) BAD("model.in_channels must be >= 1 (got %d)", c->in_channels);
    if (c->out_channels == 0) c->out_channels = c->in_channels;
    if (c->out_channels < 1) BAD("model.out_channels must be >= 1 (got %d)", c->out_channels);
    if (c->text_dim < 1) BAD("model.text_dim must be >= 1 (got %d)", c->text_dim);
    if (c->freq_dim < 2 || c->freq_dim % 2) BAD("model.freq_dim must be even and >= 2 (got %d)", c->freq_dim);
    if (c->ffn_dim < 1) BAD("model.ffn_dim must be >= 1 (got %d)", c->ffn_dim);
    if (c->patch_t < 1 || c->patch_h < 1 || c->patch_w < 1)
        BAD("model.patch_size must be >= 1 on every axis (got [%d, %d, %d])", c->patch_t, c->patch_h, c->patch_w);
    if (!(c->eps > 0)) BAD("model.eps must be > 0 (got %g)", (double)c->eps);
    if (c->rope_max_seq_len < 1) BAD("model.rope_max_seq_len must be >= 1 (got %d)", c->rope_max_seq_len);
    if ((long long)c->num_heads * c->head_dim > (1 << 20))
        BAD("model width %d heads x %d is unreasonably large", c->num_heads, c->head_dim);
    return 1;
#undef BAD
}

/* ---- parameters ------------------------------------------------------------------------------- */

static void add_linear(param_table *t, const char *prefix, int out, int in) {
    char name[320];
    int64_t ws[2] = {out, in}, bs[1] = {out};
    snprintf(name, sizeof name, "%s.weight", prefix);
    param_table_add(t, name, 2, ws, 0);
    snprintf(name, sizeof name, "%s.bias", prefix);
    param_table_add(t, name, 1, bs, 1);
}

/* Several linears of the same shape with their weights adjacent, then their biases adjacent: one GEMM then
 * reads them as one [n*out, in] weight (self-attention q/k/v, cross-attention k/v). */
static void add_fused_linears(param_table *t, const char *prefix, const char *const *names, int n, int out, int in,
                              int tp, int tp_rank) {
    char name[320];
    int64_t ws[2] = {out, in}, bs[1] = {out};
    for (int i = 0; i < n; i++) { /* column-parallel under TP: each rank its heads' rows */
        snprintf(name, sizeof name, "%s.%s.weight", prefix, names[i]);
        param_table_add_split(t, name, 2, ws, 0, 0, tp, tp_rank);
    }
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "%s.%s.bias", prefix, names[i]);
        param_table_add_split(t, name, 1, bs, 1, 0, tp, tp_rank);
    }
}

/* A linear split over the TP group: column-parallel (weight rows and bias split) or row-parallel (weight columns
 * split, bias whole). */
static void add_tp_linear(param_table *t, const char *prefix, int out, int in, int column, int tp, int tp_rank) {
    char name[320];
    int64_t ws[2] = {out, in}, bs[1] = {out};
    snprintf(name, sizeof name, "%s.weight", prefix);
    param_table_add_split(t, name, 2, ws, 0, column ? 0 : 1, tp, tp_rank);
    snprintf(name, sizeof name, "%s.bias", prefix);
    if (column)
        param_table_add_split(t, name, 1, bs, 1, 0, tp, tp_rank);
    else
        param_table_add(t, name, 1, bs, 1);
}

static void add_tp_vector(param_table *t, const char *name, int n, int tp, int tp_rank) {
    int64_t s[1] = {n};
    param_table_add_split(t, name, 1, s, 1, 0, tp, tp_rank);
}

int wan_tp_check(const wan_config *cfg, int tp, char *err, size_t errlen) {
    wan_config c = *cfg;
    if (!wan_config_check(&c, err, errlen)) return 0;
    if (tp < 1) return snprintf(err, errlen, "model.tensor_model_parallel_size must be >= 1 (got %d)", tp), 0;
    if (c.num_heads % tp)
        return snprintf(err, errlen,
                        "model.num_attention_heads %d is not divisible by model.tensor_model_parallel_size %d (tensor "
                        "parallelism splits the attention by heads)",
                        c.num_heads, tp),
               0;
    if (c.ffn_dim % tp)
        return snprintf(err, errlen,
                        "model.ffn_hidden_size %d is not divisible by model.tensor_model_parallel_size %d (tensor "
                        "parallelism splits the FFN by columns)",
                        c.ffn_dim, tp),
               0;
    return 1;
}

static void add_vector(param_table *t, const char *name, int n) {
    int64_t s[1] = {n};
    param_table_add(t, name, 1, s, 1);
}

/* no_decay: biases, norm weights and the modulation tables (offsets added to the time embedding). */
void wan_build_table(param_table *t, const wan_config *cfg) {
    wan_build_table_tp(t, cfg, 1, 0);
}

void wan_build_table_tp(param_table *t, const wan_config *cfg, int tp, int tp_rank) {
    wan_config c = *cfg;
    char err[400];
    if (!wan_config_check(&c, err, sizeof err)) dfm_die("invalid Wan config: %s", err);
    if (!wan_tp_check(&c, tp, err, sizeof err)) dfm_die("%s", err);
    memset(t, 0, sizeof *t);
    const int d = c.num_heads * c.head_dim;
    char name[256], pre[128];
    int64_t pe[5] = {d, c.in_channels, c.patch_t, c.patch_h, c.patch_w};
    param_table_add(t, "patch_embedding.weight", 5, pe, 0);
    add_vector(t, "patch_embedding.bias", d);
    add_linear(t, "condition_embedder.time_embedder.linear_1", d, c.freq_dim);
    add_linear(t, "condition_embedder.time_embedder.linear_2", d, d);
    add_linear(t, "condition_embedder.time_proj", 6 * d, d);
    add_linear(t, "condition_embedder.text_embedder.linear_1", d, c.text_dim);
    add_linear(t, "condition_embedder.text_embedder.linear_2", d, d);
    static const char *const qkv[3] = {"to_q", "to_k", "to_v"}, *const kv[2] = {"to_k", "to_v"};
    for (int l = 0; l < c.num_layers; l++) {
        snprintf(pre, sizeof pre, "blocks.%d.attn1", l);
        add_fused_linears(t, pre, qkv, 3, d, d, tp, tp_rank);
        snprintf(name, sizeof name, "%s.to_out.0", pre);
        add_tp_linear(t, name, d, d, 0, tp, tp_rank);
        snprintf(name, sizeof name, "%s.norm_q.weight", pre);
        add_tp_vector(t, name, d, tp, tp_rank);
        snprintf(name, sizeof name, "%s.norm_k.weight", pre);
        add_tp_vector(t, name, d, tp, tp_rank);
        snprintf(pre, sizeof pre, "blocks.%d.attn2", l);
        snprintf(name, sizeof name, "%s.to_q", pre);
        add_tp_linear(t, name, d, d, 1, tp, tp_rank);
        add_fused_linears(t, pre, kv, 2, d, d, tp, tp_rank);
        snprintf(name, sizeof name, "%s.to_out.0", pre);
        add_tp_linear(t, name, d, d, 0, tp, tp_rank);
        snprintf(name, sizeof name, "%s.norm_q.weight", pre);
        add_tp_vector(t, name, d, tp, tp_rank);
        snprintf(name, sizeof name, "%s.norm_k.weight", pre);
        add_tp_vector(t, name, d, tp, tp_rank);
        snprintf(name, sizeof name, "blocks.%d.norm2.weight", l);
        add_vector(t, name, d);
        snprintf(name, sizeof name, "blocks.%d.norm2.bias", l);
        add_vector(t, name, d);
        snprintf(name, sizeof name, "blocks.%d.ffn.net.0.proj", l);
        add_tp_linear(t, name, c.ffn_dim, d, 1, tp, tp_rank);
        snprintf(name, sizeof name, "blocks.%d.ffn.net.2", l);
        add_tp_linear(t, name, d, c.ffn_dim, 0, tp, tp_rank);
        snprintf(name, sizeof name, "blocks.%d.scale_shift_table", l);
        int64_t sst[3] = {1, 6, d};
        param_table_add(t, name, 3, sst, 1);
    }
    int64_t sst[3] = {1, 2, d};
    param_table_add(t, "scale_shift_table", 3, sst, 1);
    add_linear(t, "proj_out", c.out_channels * c.patch_t * c.patch_h * c.patch_w, d);
}

/* Views into the parameter (or gradient) buffer, resolved once from the table. */
typedef struct {
    float *qkv_w, *qkv_b; /* attn1.to_q/to_k/to_v, adjacent: [3d, d], [3d] */
    float *o1_w, *o1_b;   /* attn1.to_out.0 */
    float *nq1, *nk1;     /* attn1.norm_q / norm_k weights [d] */
    float *q2_w, *q2_b;   /* attn2.to_q */
    float *kv2_w, *kv2_b; /* attn2.to_k/to_v, adjacent: [2d, d], [2d] */
    float *o2_w, *o2_b;   /* attn2.to_out.0 */
    float *nq2, *nk2;
    float *n2_w, *n2_b; /* norm2 (affine LayerNorm before cross-attention) */
    float *fc1_w, *fc1_b, *fc2_w, *fc2_b;
    float *sst; /* scale_shift_table [6, d] */
} block_views;

typedef struct {
    float *pe_w, *pe_b; /* patch_embedding [d, C*pt*ph*pw] */
    float *t1_w, *t1_b; /* time_embedder.linear_1 [d, freq] */
    float *t2_w, *t2_b; /* time_embedder.linear_2 [d, d] */
    float *tp_w, *tp_b; /* time_proj [6d, d] */
    float *x1_w, *x1_b; /* text_embedder.linear_1 [d, text_dim] */
    float *x2_w, *x2_b; /* text_embedder.linear_2 [d, d] */
    /* the output head (the last segment) */
    float *sst;         /* scale_shift_table [2, d] */
    float *po_w, *po_b; /* proj_out [pt*ph*pw*C_out, d] */
} views;

/* Views are filled from per-segment offsets at each use (the segment may live in the model's buffer or in a
 * data-parallel gather buffer), so each struct doubles as an array of its pointers. */
#define N_VIEWS (sizeof(views) / sizeof(float *))
#define N_HEAD_VIEWS 12 /* pe .. x2: segment 0; sst, po: the last segment */
#define N_BLOCK_VIEWS (sizeof(block_views) / sizeof(float *))
typedef union {
    views v;
    float *p[N_VIEWS];
} views_u;
typedef union {
    block_views v;
    float *p[N_BLOCK_VIEWS];
} block_u;

struct wan_acts {
    float *buf;
    size_t nfloats;
    /* the last forward */
    wan_shape cur;
    int N, gt, gh, gw;             /* tokens per sample (this rank's chunk under CP) and the patch grid */
    int N_full, tok0;              /* context parallelism: the sample's tokens and this chunk's first one */
    int rope_gt, rope_gh, rope_gw; /* grid the RoPE tables hold (0 = none yet) */
    int *text_lens, masked;
    int slot_layer; /* the recomputed block whose activations the shared slot holds (-1: none) */
    /* global */
    float *patches, *tsin, *t1, *t1s, *temb, *temb_s, *tproj, *text_in, *c1, *ctx, *rope_cos, *rope_sin;
    float *hmod, *meanf, *rstdf;
    /* per block (x has num_layers + 1) */
    float **x, **mod, **mean1, **rstd1, **qkv, **rq1, **rk1, **ao1, **lse1, **proj1, **xmid, **mean2, **rstd2, **q2,
        **rq2, **kv2, **rk2, **ao2, **lse2, **x2, **mean3, **rstd3, **h, **f;
    /* scratch: [B*N, d] x4, [B*N, 3d] x2, [B*N, F] x2, output tokens, text [B*L, 2d] x3 and [B*L, d] x2 */
    float *sA, *sB, *sC, *dx, *s3a, *s3b, *sFa, *sFb, *tok, *kvs, *dkvs, *dkv, *dctx, *tsc;
    float *dmod, *dtproj, *dhmod, *dtemb, *dtemb_s, *dt1s, *dt1, *attn_ws;
    float *rowsum;             /* tensor parallelism: a float per row for the RMSNorms' all-reduced sums */
    float *xg;                 /* sequence parallelism: a gathered [B*N, d] input or a row-parallel partial output */
    float *dn2wb;              /* sequence parallelism: norm2's weight and bias gradients of this rank's tokens [2d] */
    int Nl;                    /* the residual stream's tokens per sample in the last forward (N, or N / tp under SP) */
    size_t off_views[N_VIEWS]; /* within segment 0 (the first 12) or the last segment */
    size_t off_block[N_BLOCK_VIEWS]; /* within a block's segment (every block is laid out alike) */
};

static float *view(const wan_model *m, float *base, const char *fmt, int l) {
    char name[256];
    snprintf(name, sizeof name, fmt, l);
    const param_entry *e = param_table_find(&m->table, name);
    if (!e) dfm_die("internal: Wan parameter '%s' missing from the table", name);
    return base + e->offset;
}

static void resolve_views(const wan_model *m, float *base, views *v, block_views *blk) {
    v->pe_w = view(m, base, "patch_embedding.weight", 0);
    v->pe_b = view(m, base, "patch_embedding.bias", 0);
    v->t1_w = view(m, base, "condition_embedder.time_embedder.linear_1.weight", 0);
    v->t1_b = view(m, base, "condition_embedder.time_embedder.linear_1.bias", 0);
    v->t2_w = view(m, base, "condition_embedder.time_embedder.linear_2.weight", 0);
    v->t2_b = view(m, base, "condition_embedder.time_embedder.linear_2.bias", 0);
    v->tp_w = view(m, base, "condition_embedder.time_proj.weight", 0);
    v->tp_b = view(m, base, "condition_embedder.time_proj.bias", 0);
    v->x1_w = view(m, base, "condition_embedder.text_embedder.linear_1.weight", 0);
    v->x1_b = view(m, base, "condition_embedder.text_embedder.linear_1.bias", 0);
    v->x2_w = view(m, base, "condition_embedder.text_embedder.linear_2.weight", 0);
    v->x2_b = view(m, base, "condition_embedder.text_embedder.linear_2.bias", 0);
    v->sst = view(m, base, "scale_shift_table", 0);
    v->po_w = view(m, base, "proj_out.weight", 0);
    v->po_b = view(m, base, "proj_out.bias", 0);
    const size_t d = (size_t)m->d, da = (size_t)m->attn_local;
    for (int l = 0; l < m->cfg.num_layers; l++) {
        block_views *b = &blk[l];
        b->qkv_w = view(m, base, "blocks.%d.attn1.to_q.weight", l);
        b->qkv_b = view(m, base, "blocks.%d.attn1.to_q.bias", l);
        b->o1_w = view(m, base, "blocks.%d.attn1.to_out.0.weight", l);
        b->o1_b = view(m, base, "blocks.%d.attn1.to_out.0.bias", l);
        b->nq1 = view(m, base, "blocks.%d.attn1.norm_q.weight", l);
        b->nk1 = view(m, base, "blocks.%d.attn1.norm_k.weight", l);
        b->q2_w = view(m, base, "blocks.%d.attn2.to_q.weight", l);
        b->q2_b = view(m, base, "blocks.%d.attn2.to_q.bias", l);
        b->kv2_w = view(m, base, "blocks.%d.attn2.to_k.weight", l);
        b->kv2_b = view(m, base, "blocks.%d.attn2.to_k.bias", l);
        b->o2_w = view(m, base, "blocks.%d.attn2.to_out.0.weight", l);
        b->o2_b = view(m, base, "blocks.%d.attn2.to_out.0.bias", l);
        b->nq2 = view(m, base, "blocks.%d.attn2.norm_q.weight", l);
        b->nk2 = view(m, base, "blocks.%d.attn2.norm_k.weight", l);
        b->n2_w = view(m, base, "blocks.%d.norm2.weight", l);
        b->n2_b = view(m, base, "blocks.%d.norm2.bias", l);
        b->fc1_w = view(m, base, "blocks.%d.ffn.net.0.proj.weight", l);
        b->fc1_b = view(m, base, "blocks.%d.ffn.net.0.proj.bias", l);
        b->fc2_w = view(m, base, "blocks.%d.ffn.net.2.weight", l);
        b->fc2_b = view(m, base, "blocks.%d.ffn.net.2.bias", l);
        b->sst = view(m, base, "blocks.%d.scale_shift_table", l);
        /* the fused GEMMs rely on the adjacency build_table promises */
        if (view(m, base, "blocks.%d.attn1.to_v.weight", l) != b->qkv_w + 2 * da * d ||
            view(m, base, "blocks.%d.attn1.to_v.bias", l) != b->qkv_b + 2 * da ||
            view(m, base, "blocks.%d.attn2.to_v.weight", l) != b->kv2_w + da * d ||
            view(m, base, "blocks.%d.attn2.to_v.bias", l) != b->kv2_b + da)
            dfm_die("internal: fused projections of Wan block %d are not adjacent", l);
    }
}

/* Segments (0: patch and condition embedders, 1..L: blocks, L+1: output head) and the views' offsets in them. */
static void resolve_segments(wan_model *m, wan_acts *a) {
    const int L = m->cfg.num_layers;
    m->nseg = L + 2;
    m->seg_begin = xcalloc((size_t)m->nseg + 1, sizeof(size_t));
    for (int l = 0; l < L; l++) {
        char name[64];
        snprintf(name, sizeof name, "blocks.%d.attn1.to_q.weight", l);
        m->seg_begin[1 + l] = param_table_find(&m->table, name)->offset;
    }
    m->seg_begin[L + 1] = param_table_find(&m->table, "scale_shift_table")->offset;
    m->seg_begin[L + 2] = m->table.total;
    views_u v;
    block_views *blk = xcalloc((size_t)L, sizeof *blk);
    resolve_views(m, m->params, &v.v, blk);
    for (size_t i = 0; i < N_VIEWS; i++) {
        size_t seg_start = m->seg_begin[i < N_HEAD_VIEWS ? 0 : L + 1];
        a->off_views[i] = (size_t)(v.p[i] - m->params) - seg_start;
        if (v.p[i] - m->params < (ptrdiff_t)seg_start ||
            (size_t)(v.p[i] - m->params) >= m->seg_begin[i < N_HEAD_VIEWS ? 1 : L + 2])
            dfm_die("internal: Wan view %zu lies outside its segment", i);
    }
    for (int l = 0; l < L; l++) {
        block_u b = {.v = blk[l]};
        for (size_t i = 0; i < N_BLOCK_VIEWS; i++) {
            size_t off = (size_t)(b.p[i] - m->params) - m->seg_begin[1 + l];
            if (l == 0)
                a->off_block[i] = off;
            else if (off != a->off_block[i])
                dfm_die("internal: Wan block %d is laid out unlike block 0", l);
        }
    }
    free(blk);
}

/* Where segment s lives for this pass: the model's buffers, or wherever the hooks put it. */
static float *seg_params(wan_model *m, int s, int backward) {
    if (m->hooks.params) return (float *)m->hooks.params(m->hooks.ctx, s, backward);
    return m->params + m->seg_begin[s];
}

static float *seg_grads(wan_model *m, int s) {
    if (m->hooks.grads) return m->hooks.grads(m->hooks.ctx, s);
    return m->grads + m->seg_begin[s];
}

static void seg_done(wan_model *m, int s) {
    if (m->hooks.grads_done) m->hooks.grads_done(m->hooks.ctx, s);
}

/* Fill the embedder views (first) or the head views (!first) of v from their segment's base. */
static void views_at(const wan_acts *a, float *base, int first, views *v) {
    views_u *u = (views_u *)v;
    for (size_t i = first ? 0 : N_HEAD_VIEWS; i < (first ? N_HEAD_VIEWS : N_VIEWS); i++)
        u->p[i] = base + a->off_views[i];
}

static void block_at(const wan_acts *a, float *base, block_views *b) {
    block_u *u = (block_u *)b;
    for (size_t i = 0; i < N_BLOCK_VIEWS; i++) u->p[i] = base + a->off_block[i];
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
        &(a)->x, &(a)->mod, &(a)->mean1, &(a)->rstd1, &(a)->qkv, &(a)->rq1, &(a)->rk1, &(a)->ao1, &(a)->lse1,          \
            &(a)->proj1, &(a)->xmid, &(a)->mean2, &(a)->rstd2, &(a)->q2, &(a)->rq2, &(a)->kv2, &(a)->rk2, &(a)->ao2,   \
            &(a)->lse2, &(a)->x2, &(a)->mean3, &(a)->rstd3, &(a)->h, &(a)->f                                           \
    }

static void carve_acts(const wan_model *m, wan_acts *a, carver *cv) {
    const wan_config *c = &m->cfg;
    const size_t B = (size_t)m->max.batch, N = (size_t)m->max_tokens, Lt = (size_t)m->max.text_len;
    /* F, H and the attention widths (da) are this rank's share under tensor parallelism */
    const size_t d = (size_t)m->d, F = (size_t)m->ffn_local, H = (size_t)m->heads_local, BN = B * N, BL = B * Lt;
    const size_t da = (size_t)m->attn_local;
    const size_t BNl = m->sp ? BN / (size_t)m->tp : BN; /* the residual stream's rows (this rank's under SP) */
    a->patches = carve(cv, BN * (size_t)m->patch_in);
    a->tsin = carve(cv, B * (size_t)c->freq_dim);
    a->t1 = carve(cv, B * d);
    a->t1s = carve(cv, B * d);
    a->temb = carve(cv, B * d);
    a->temb_s = carve(cv, B * d);
    a->tproj = carve(cv, B * 6 * d);
    a->text_in = carve(cv, BL * (size_t)c->text_dim);
    a->c1 = carve(cv, BL * d);
    a->ctx = carve(cv, BL * d);
    a->rope_cos = carve(cv, N * (size_t)c->head_dim / 2);
    a->rope_sin = carve(cv, N * (size_t)c->head_dim / 2);
    a->hmod = carve(cv, B * 2 * d);
    a->meanf = carve(cv, BN);
    a->rstdf = carve(cv, BN);
    /* a stage's blocks only; full recompute in checkpoints of k blocks: block l0 + i * k + j (i >= 1) shares slot j
     * (block l0 + j's activations), and only a checkpoint's first block keeps its own input x */
    const int l0 = m->block_begin, k = m->recompute_chunk > 0 ? m->recompute_chunk : 1, R = m->recompute_layers;
    const int sel = m->recompute_selective;
    for (int l = l0; l <= m->block_end; l++) {
        if (l < m->block_end && l < R && l - l0 >= k && (l - l0) % k)
            a->x[l] = a->x[l0 + (l - l0) % k];
        else
            a->x[l] = carve(cv, BNl * d);
    }
    for (int l = l0; l < m->block_end; l++) {
        if (l < R && l - l0 >= k) {
            float ***lists[] = PER_BLOCK_LISTS(a);
            for (size_t i = 1; i < sizeof lists / sizeof lists[0]; i++) (*lists[i])[l] = (*lists[i])[l0 + (l - l0) % k];
            continue;
        }
        a->mod[l] = carve(cv, B * 6 * d);
        a->mean1[l] = carve(cv, BNl);
        a->rstd1[l] = carve(cv, BNl);
        a->qkv[l] = carve(cv, BN * 3 * da);
        a->rq1[l] = carve(cv, BN);
        a->rk1[l] = carve(cv, BN);
        /* selective: the core attentions' outputs, one set for every block (recomputed in the backward) */
        a->ao1[l] = sel && l > l0 ? a->ao1[l0] : carve(cv, BN * da);
        a->lse1[l] = sel && l > l0 ? a->lse1[l0] : carve(cv, B * H * N);
        a->proj1[l] = carve(cv, BNl * d);
        a->xmid[l] = carve(cv, BNl * d);
        a->mean2[l] = carve(cv, BNl);
        a->rstd2[l] = carve(cv, BNl);
        a->q2[l] = carve(cv, BN * da);
        a->rq2[l] = carve(cv, BN);
        a->kv2[l] = carve(cv, BL * 2 * da);
        a->rk2[l] = carve(cv, BL);
        a->ao2[l] = sel && l > l0 ? a->ao2[l0] : carve(cv, BN * da);
        a->lse2[l] = sel && l > l0 ? a->lse2[l0] : carve(cv, B * H * N);
        a->x2[l] = carve(cv, BNl * d);
        a->mean3[l] = carve(cv, BNl);
        a->rstd3[l] = carve(cv, BNl);
        a->h[l] = carve(cv, BN * F);
        a->f[l] = carve(cv, BNl * d);
    }
    a->sA = carve(cv, BN * d);
    a->sB = carve(cv, BN * d);
    a->sC = carve(cv, BN * d);
    a->dx = carve(cv, BNl * d);
    a->s3a = carve(cv, BN * 3 * da);
    a->s3b = carve(cv, BN * 3 * da);
    a->sFa = carve(cv, BN * F);
    a->sFb = carve(cv, BN * F);
    a->tok = carve(cv, BN * (size_t)m->patch_out);
    a->kvs = carve(cv, BL * (2 * da > d ? 2 * da : d)); /* also the text embedder's [BL, d] gradient scratch */
    a->dkvs = carve(cv, BL * 2 * da);
    a->dkv = carve(cv, BL * 2 * da);
    a->dctx = carve(cv, BL * d);
    a->tsc = carve(cv, BL * d);
    a->dmod = carve(cv, B * 6 * d);
    a->dtproj = carve(cv, B * 6 * d);
    a->dhmod = carve(cv, B * 2 * d);
    a->dtemb = carve(cv, B * d);
    a->dtemb_s = carve(cv, B * d);
    a->dt1s = carve(cv, B * d);
    a->dt1 = carve(cv, B * d);
    a->attn_ws = carve(cv, attention_workspace_floats((int)B, (int)H, (int)N));
    a->rowsum = carve(cv, m->tp > 1 ? (BN > BL ? BN : BL) : 0);
    a->xg = carve(cv, m->sp ? BN * d : 0);
    a->dn2wb = carve(cv, m->sp ? 2 * d : 0);
}

/* This rank's video tokens per sample out of N: N, or its context-parallel chunk, ceil(N / cp) rounded up to a
 * multiple of tp under sequence parallelism (the sequence padded to a multiple of cp x tp, never truncated). */
static int chunk_tokens(const wan_model *m, int N) {
    return m->cp == 1 ? N : cp_chunk_len_aligned(N, m->cp, m->sp ? m->tp : 1);
}

int wan_shape_check(const wan_model *m, const wan_shape *s, char *err, size_t errlen) {
#define BAD(...) return snprintf(err, errlen, __VA_ARGS__), 0
    const wan_config *c = &m->cfg;
    if (s->batch < 1) BAD("batch must be >= 1 (got %d)", s->batch);
    if (s->frames < 1 || s->height < 1 || s->width < 1)
        BAD("latent size must be positive (got %d frames x %d x %d)", s->frames, s->height, s->width);
    if (s->frames % c->patch_t || s->height % c->patch_h || s->width % c->patch_w)
        BAD("latent size %d frames x %d x %d is not divisible by the patch size [%d, %d, %d]", s->frames, s->height,
            s->width, c->patch_t, c->patch_h, c->patch_w);
    const int gt = s->frames / c->patch_t, gh = s->height / c->patch_h, gw = s->width / c->patch_w;
    if (gt > c->rope_max_seq_len || gh > c->rope_max_seq_len || gw > c->rope_max_seq_len)
        BAD("patch grid %d x %d x %d exceeds rope_max_seq_len %d", gt, gh, gw, c->rope_max_seq_len);
    if (s->text_len < 1) BAD("text length must be >= 1 (got %d)", s->text_len);
    if (m->sp && m->cp == 1 && ((long long)gt * gh * gw) % m->tp) /* under CP the chunk is padded instead */
        BAD("model.sequence_parallel: the %lld video tokens per sample (%d x %d x %d patches) are not divisible by "
            "model.tensor_model_parallel_size %d",
            (long long)gt * gh * gw, gt, gh, gw, m->tp);
    if (!m->acts) return 1; /* checking the max shape itself */
    if (s->batch > m->max.batch) BAD("batch %d exceeds the model's max batch %d", s->batch, m->max.batch);
    if ((long long)gt * gh * gw > (long long)m->max_tokens * m->cp)
        BAD("%d x %d x %d = %lld tokens per sample exceed the model's max %lld", gt, gh, gw, (long long)gt * gh * gw,
            (long long)m->max_tokens * m->cp);
    if (s->text_len > m->max.text_len) BAD("text length %d exceeds the model's max %d", s->text_len, m->max.text_len);
    return 1;
#undef BAD
}

static void create_weights(wan_model *m, const wan_config *cfg, int tp, int tp_rank) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    char err[512];
    if (!wan_config_check(&m->cfg, err, sizeof err)) dfm_die("invalid Wan config: %s", err);
    if (!wan_tp_check(&m->cfg, tp, err, sizeof err)) dfm_die("%s", err);
    if (tp_rank < 0 || tp_rank >= tp) dfm_die("internal: tensor-parallel rank %d of %d", tp_rank, tp);
    const wan_config *c = &m->cfg;
    m->d = c->num_heads * c->head_dim;
    m->ffn = c->ffn_dim;
    m->tp = tp, m->tp_rank = tp_rank;
    m->cp = 1, m->cp_comm = CP_LOCAL;
    m->heads_local = c->num_heads / tp;
    m->attn_local = m->heads_local * c->head_dim;
    m->ffn_local = c->ffn_dim / tp;
    m->patch_in = c->in_channels * c->patch_t * c->patch_h * c->patch_w;
    m->patch_out = c->out_channels * c->patch_t * c->patch_h * c->patch_w;
    wan_build_table_tp(&m->table, c, tp, tp_rank);
    m->params = xalloc_floats(m->table.total);
}

/* An activation arena for m's max shape and blocks [block_begin, block_end] (view offsets not yet resolved). */
static wan_acts *acts_new(const wan_model *m) {
    wan_acts *a = xcalloc(1, sizeof *a);
    float ***lists[] = PER_BLOCK_LISTS(a);
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++)
        *lists[i] = xcalloc((size_t)m->cfg.num_layers + 1, sizeof(float *));
    carver cv = {NULL, 0};
    carve_acts(m, a, &cv);
    a->nfloats = cv.used;
    a->buf = xalloc_floats(a->nfloats);
    cv = (carver){a->buf, 0};
    carve_acts(m, a, &cv);
    a->text_lens = xcalloc((size_t)m->max.batch, sizeof(int));
    a->slot_layer = -1;
    return a;
}

void wan_create_weights_only(wan_model *m, const wan_config *cfg) {
    create_weights(m, cfg, 1, 0);
}

void wan_create_weights_only_tp(wan_model *m, const wan_config *cfg, int tp, int tp_rank) {
    create_weights(m, cfg, tp, tp_rank);
}

int wan_prepare(wan_model *m, const wan_shape *max, char *err, size_t errlen) {
    if (m->acts) {
        snprintf(err, errlen, "the model already has its activations");
        return -1;
    }
    if (!wan_shape_check(m, max, err, errlen)) return -1; /* without acts: the shape against the config only */
    const wan_config *c = &m->cfg;
    long long tokens = (long long)(max->frames / c->patch_t) * (max->height / c->patch_h) * (max->width / c->patch_w);
    /* B*N and B*L index rows as int throughout (sizes as size_t) */
    if (tokens * max->batch > (1 << 26) || (long long)max->text_len * max->batch > (1 << 24)) {
        snprintf(err, errlen, "max input of %d samples x %lld tokens (text %d) is beyond what one process holds",
                 max->batch, tokens, max->text_len);
        return -1;
    }
    m->max = *max;
    m->max_tokens = chunk_tokens(m, (int)tokens); /* a rank's chunk */
    if (m->cp > 1) {
        int w = m->patch_in > m->patch_out ? m->patch_in : m->patch_out;
        m->cp_full = xalloc_floats((size_t)max->batch * m->max_tokens * m->cp * w);
    }
    m->grads = xalloc_floats(m->table.total);
    m->block_begin = 0, m->block_end = c->num_layers;
    wan_acts *a = acts_new(m);
    resolve_segments(m, a);
    m->acts = a;
    return 0;
}

void wan_set_context_parallel(wan_model *m, int cp, int cp_rank, int comm_type) {
    if (m->acts || cp < 1 || cp_rank < 0 || cp_rank >= cp)
        dfm_die("internal: Wan context-parallel rank %d of %d (set before wan_prepare)", cp_rank, cp);
    char err[512];
    if (!cp_check(m->heads_local, cp, (cp_comm_type)comm_type, err, sizeof err)) dfm_die("%s", err);
    m->cp = cp, m->cp_rank = cp_rank, m->cp_comm = comm_type;
}

void wan_cp_owned(const wan_model *m, unsigned char *mask, int channels) {
    const wan_acts *a = m->acts;
    const wan_config *c = &m->cfg;
    const int T = a->cur.frames, H = a->cur.height, W = a->cur.width;
    for (int t = 0; t < T; t++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                int tok = ((t / c->patch_t) * a->gh + y / c->patch_h) * a->gw + x / c->patch_w;
                unsigned char own = tok >= a->tok0 && tok < a->tok0 + a->N;
                for (int ch = 0; ch < channels; ch++) mask[(((size_t)ch * T + t) * H + y) * W + x] = own;
            }
}

int wan_set_recompute(wan_model *m, int blocks, char *err, size_t errlen) {
    return wan_set_recompute_mode(m, blocks, 1, 0, err, errlen);
}

int wan_set_recompute_mode(wan_model *m, int blocks, int chunk, int selective, char *err, size_t errlen) {
    if (m->acts) {
        snprintf(err, errlen, "activation recomputation is set before the activations are sized (wan_prepare)");
        return -1;
    }
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
    m->recompute_layers = blocks;
    m->recompute_chunk = chunk;
    m->recompute_selective = selective != 0;
    return 0;
}

int wan_set_sequence_parallel(wan_model *m, int on, char *err, size_t errlen) {
    if (m->acts) {
        snprintf(err, errlen, "sequence parallelism is set before the activations are sized (wan_prepare)");
        return -1;
    }
    if (on && m->tp < 2) {
        snprintf(err, errlen,
                 "model.sequence_parallel needs tensor parallelism: model.tensor_model_parallel_size is %d (it splits "
                 "the tokens over the tensor-parallel group)",
                 m->tp);
        return -1;
    }
    m->sp = !!on;
    return 0;
}

static void acts_free(wan_acts *a) {
    if (!a) return;
    float ***lists[] = PER_BLOCK_LISTS(a);
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) free(*lists[i]);
    free(a->text_lens);
    free(a->buf);
    free(a);
}

void wan_set_stage(wan_model *m, int block_begin, int block_end, int n_arenas) {
    if (!m->acts || block_begin < 0 || block_end > m->cfg.num_layers || block_begin >= block_end || n_arenas < 1)
        dfm_die("internal: Wan stage blocks [%d, %d) of %d with %d arenas", block_begin, block_end, m->cfg.num_layers,
                n_arenas);
    wan_acts *proto = m->acts;
    m->block_begin = block_begin, m->block_end = block_end;
    wan_acts **ar = xcalloc((size_t)n_arenas, sizeof *ar);
    for (int k = 0; k < n_arenas; k++) {
        ar[k] = acts_new(m);
        memcpy(ar[k]->off_views, proto->off_views, sizeof proto->off_views);
        memcpy(ar[k]->off_block, proto->off_block, sizeof proto->off_block);
    }
    if (m->arenas) {
        for (int k = 0; k < m->n_arenas; k++) acts_free(m->arenas[k]);
        free(m->arenas);
    } else
        acts_free(proto);
    m->arenas = ar, m->n_arenas = n_arenas;
    m->acts = ar[0];
}

void wan_use_arena(wan_model *m, int k) {
    if (!m->arenas || k < 0 || k >= m->n_arenas) dfm_die("internal: Wan arena %d of %d", k, m->n_arenas);
    m->acts = m->arenas[k];
}

void wan_stage_tensors(wan_model *m, const wan_shape *s, stage_dir dir, stage_tensors *io) {
    wan_acts *a = m->acts;
    const wan_config *c = &m->cfg;
    const size_t B = (size_t)s->batch, d = (size_t)m->d;
    const size_t N = (size_t)(s->frames / c->patch_t) * (s->height / c->patch_h) * (s->width / c->patch_w);
    const int g = dir == STAGE_GRAD;
    io->n = 4;
    io->t[0] = g ? a->dx : a->x[dir == STAGE_FWD_IN ? m->block_begin : m->block_end];
    io->t[1] = g ? a->dtemb : a->temb;
    io->t[2] = g ? a->dtproj : a->tproj;
    io->t[3] = g ? a->dctx : a->ctx;
    const size_t n = (size_t)chunk_tokens(m, (int)N);     /* this rank's chunk under context parallelism */
    io->len[0] = B * (m->sp ? n / (size_t)m->tp : n) * d; /* this rank's tokens under sequence parallelism */
    io->len[1] = B * d, io->len[2] = B * 6 * d, io->len[3] = B * (size_t)s->text_len * d;
}

void wan_create(wan_model *m, const wan_config *cfg, const wan_shape *max) {
    wan_create_tp(m, cfg, max, 1, 0);
}

void wan_create_tp(wan_model *m, const wan_config *cfg, const wan_shape *max, int tp, int tp_rank) {
    create_weights(m, cfg, tp, tp_rank);
    char err[512];
    if (wan_prepare(m, max, err, sizeof err)) dfm_die("Wan: invalid max input shape: %s", err);
}

void wan_free(wan_model *m) {
    free(m->cp_full);
    if (m->arenas) {
        for (int k = 0; k < m->n_arenas; k++) acts_free(m->arenas[k]);
        free(m->arenas);
    } else
        acts_free(m->acts);
    free(m->seg_begin);
    free(m->params);
    free(m->grads);
    param_table_free(&m->table);
    memset(m, 0, sizeof *m);
}

size_t wan_activation_bytes(const wan_model *m) {
    if (!m->arenas) return m->acts->nfloats * sizeof(float);
    size_t n = 0;
    for (int k = 0; k < m->n_arenas; k++) n += m->arenas[k]->nfloats * sizeof(float);
    return n;
}

void wan_zero_grad(wan_model *m) {
    memset(m->grads, 0, m->table.total * sizeof(float));
}

const float *wan_rope_cos(const wan_model *m) {
    return m->acts->rope_cos;
}
const float *wan_rope_sin(const wan_model *m) {
    return m->acts->rope_sin;
}

/* ---- initialisation --------------------------------------------------------------------------- */

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* Wan's own init (the original repository's init_weights; diffusers defines none beyond PyTorch's
 * defaults): see wan.h. Every tensor draws from its own Philox stream keyed by its table index. */
void wan_init(wan_model *m, uint64_t seed) {
    memset(m->params, 0, m->table.total * sizeof(float));
    float *whole = NULL; /* a tensor-parallel rank draws every split tensor whole, then keeps its slice */
    for (int i = 0; i < m->table.n; i++) {
        const param_entry *e = &m->table.e[i];
        const char *n = e->name;
        if (ends_with(n, ".bias")) continue;
        if (strstr(n, "norm_q.weight") || strstr(n, "norm_k.weight") || strstr(n, "norm2.weight")) {
            for (size_t j = 0; j < e->numel; j++) m->params[e->offset + j] = 1.0f;
            continue;
        }
        if (e->split_axis >= 0) { /* only xavier-uniform linears are split */
            whole = xrealloc(whole, e->global_numel * sizeof(float));
            const double fan_out = (double)e->global_shape[0], fan_in = (double)e->global_numel / fan_out;
            const double bound = sqrt(6.0 / (fan_in + fan_out));
            for (size_t j = 0; j < e->global_numel; j++)
                whole[j] =
                    (float)((2.0 * rng_uniform(seed, RNG_STREAM_INIT, 0, (uint32_t)i, (uint32_t)j) - 1.0) * bound);
            param_entry_take_slice(e, whole, m->params + e->offset);
            continue;
        }
        float *w = m->params + e->offset;
        if (strstr(n, "scale_shift_table")) {
            rng_fill_normal(w, e->numel, seed, RNG_STREAM_INIT, 1u << 20, (uint32_t)i);
            const float s = 1.0f / sqrtf((float)m->d);
            for (size_t j = 0; j < e->numel; j++) w[j] *= s;
            continue;
        }
        if (!strcmp(n, "proj_out.weight")) continue; /* zero: the initial prediction is the zero bias */
        if (strstr(n, "time_embedder") || strstr(n, "text_embedder")) {
            rng_fill_normal(w, e->numel, seed, RNG_STREAM_INIT, 1u << 20, (uint32_t)i);
            for (size_t j = 0; j < e->numel; j++) w[j] *= 0.02f;
            continue;
        }
        /* xavier-uniform over [out, in...] (the patch Conv3d as [d, C*pt*ph*pw]) */
        const double fan_out = (double)e->shape[0], fan_in = (double)e->numel / fan_out;
        const double bound = sqrt(6.0 / (fan_in + fan_out));
        for (size_t j = 0; j < e->numel; j++)
            w[j] = (float)((2.0 * rng_uniform(seed, RNG_STREAM_INIT, 0, (uint32_t)i, (uint32_t)j) - 1.0) * bound);
    }
    free(whole);
}

/* ---- helpers ---------------------------------------------------------------------------------- */

static void zero(float *p, size_t n) {
    memset(p, 0, n * sizeof(float));
}

/* dst[r, 0:C] = src[r, 0:C] for rows dst_stride / src_stride apart (accumulate: +=) */
static void copy_rows(float *restrict dst, const float *restrict src, size_t rows, int C, int dst_stride,
                      int src_stride, int accumulate) {
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        float *o = dst + r * (size_t)dst_stride;
        const float *i = src + r * (size_t)src_stride;
        if (accumulate)
            for (int j = 0; j < C; j++) o[j] += i[j];
        else
            memcpy(o, i, sizeof(float) * (size_t)C);
    }
}

/* ---- tensor parallelism: the collectives of Megatron's split (no-ops for TP = 1) ----------------------- */

/* A row-parallel linear (to_out.0, ffn.net.2): each TP rank's partial product over its slice of the inputs,
 * summed over the TP group (one all-reduce, the same bits on every rank), then the whole bias once. */
static void row_parallel_forward(const wan_model *m, float *out, const float *inp, const float *w, const float *b,
                                 int M, int N, int K) {
    if (m->tp == 1) {
        matmul_forward(out, inp, w, b, M, N, K);
        return;
    }
    if (m->sp) { /* sequence parallel: the partial products of every token, reduce-scattered to this rank's tokens */
        const wan_acts *a = m->acts;
        matmul_forward(a->xg, inp, w, NULL, M, N, K);
        M /= m->tp;
        dist_tp_seq_reduce_scatter_f32(a->xg, out, M / a->Nl, (size_t)a->Nl * N,
                                       "sequence-parallel reduce-scatter of a row-parallel output");
    } else {
        matmul_forward(out, inp, w, NULL, M, N, K);
        dist_tp_allreduce_sum_f32(out, (size_t)M * N, "tensor-parallel all-reduce of a row-parallel output");
    }
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) out[(size_t)i * N + j] += b[j];
}

/* The input gradient of a column-parallel linear: the sum over the TP group of every rank's share. */
static void tp_sum(const wan_model *m, float *buf, size_t n) {
    if (m->tp > 1) dist_tp_allreduce_sum_f32(buf, n, "tensor-parallel all-reduce of an input gradient");
}

/* Sequence parallelism: this rank's tokens [B, Nl, d] gathered into xg [B, N, d] (returned); without SP the input. */
static const float *sp_gather(const wan_model *m, const float *local) {
    if (!m->sp) return local;
    const wan_acts *a = m->acts;
    dist_tp_seq_gather_f32(local, a->xg, a->cur.batch, (size_t)a->Nl * m->d, "sequence-parallel all-gather");
    return a->xg;
}

/* The input gradient of a column-parallel linear under SP: full [B, N, d] partial sums reduce-scattered to this
 * rank's tokens (into xg, returned); without SP tp_sum in place, full returned. */
static float *tp_sum_sp(const wan_model *m, float *full) {
    const wan_acts *a = m->acts;
    if (!m->sp) {
        tp_sum(m, full, (size_t)a->cur.batch * a->N * m->d);
        return full;
    }
    dist_tp_seq_reduce_scatter_f32(full, a->xg, a->cur.batch, (size_t)a->Nl * m->d,
                                   "sequence-parallel reduce-scatter of an input gradient");
    return a->xg;
}

/* This rank's tokens of a whole-sequence [B, N, d] tensor into [B, Nl, d]. */
static void sp_take_local(const wan_model *m, float *local, const float *full) {
    const wan_acts *a = m->acts;
    const size_t rows = (size_t)a->Nl * m->d;
    for (int b = 0; b < a->cur.batch; b++)
        memmove(local + (size_t)b * rows, full + ((size_t)b * a->N + (size_t)m->tp_rank * a->Nl) * m->d,
                sizeof(float) * rows);
}

/* RMSNorm "across heads" of rows of this rank's heads (attn_local wide) a stride apart. Under TP the mean square
 * is over all heads of the TP group: the rows' partial sums of squares are all-reduced. saved: rstd holds the
 * forward's statistics (a recomputation in the backward: no all-reduce); else they are computed into rstd. */
static void rms_tp_forward(const wan_model *m, float *out, float *rstd, const float *inp, const float *w, int N,
                           int inp_stride, int out_stride, int saved) {
    const int C = m->attn_local;
    if (m->tp == 1) {
        rmsnorm_forward_strided(out, saved ? NULL : rstd, inp, w, N, C, inp_stride, out_stride, m->cfg.eps);
        return;
    }
    if (!saved) {
#pragma omp parallel for schedule(static)
        for (int i = 0; i < N; i++) {
            const float *x = inp + (size_t)i * inp_stride;
            double ss = 0;
            for (int j = 0; j < C; j++) ss += (double)x[j] * x[j];
            rstd[i] = (float)ss;
        }
        dist_tp_allreduce_sum_f32(rstd, (size_t)N, "tensor-parallel all-reduce of an RMSNorm's mean square");
        const double Cg = (double)m->d;
#pragma omp parallel for schedule(static)
        for (int i = 0; i < N; i++) rstd[i] = (float)(1.0 / sqrt((double)rstd[i] / Cg + (double)m->cfg.eps));
    }
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * inp_stride;
        float *o = out + (size_t)i * out_stride;
        const float r = rstd[i];
        for (int j = 0; j < C; j++) o[j] = x[j] * r * w[j];
    }
}

/* Its backward: dinp += r (g w - x r^2 mean(g w x)) with the mean over all heads of the TP group (all-reduced
 * row sums); the weight's gradient (this rank's slice) needs no communication. */
static void rms_tp_backward(const wan_model *m, float *dinp, float *dweight, const float *dout, const float *inp,
                            const float *w, const float *rstd, int N, int dinp_stride, int dout_stride,
                            int inp_stride) {
    const int C = m->attn_local;
    if (m->tp == 1) {
        rmsnorm_backward_strided(dinp, dweight, dout, inp, w, rstd, N, C, dinp_stride, dout_stride, inp_stride);
        return;
    }
    float *s = m->acts->rowsum;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * inp_stride, *g = dout + (size_t)i * dout_stride;
        float acc = 0;
        for (int j = 0; j < C; j++) acc += g[j] * w[j] * x[j];
        s[i] = acc;
    }
    dist_tp_allreduce_sum_f32(s, (size_t)N, "tensor-parallel all-reduce of an RMSNorm's gradient");
    const float Cg = (float)m->d;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * inp_stride, *g = dout + (size_t)i * dout_stride;
        float *dx = dinp + (size_t)i * dinp_stride;
        const float r = rstd[i], k = r * r * s[i] / Cg;
        for (int j = 0; j < C; j++) dx[j] += r * (g[j] * w[j] - x[j] * k);
    }
    rmsnorm_backward_strided(NULL, dweight, dout, inp, w, rstd, N, C, dinp_stride, dout_stride, inp_stride);
}

/* q and k of a fused [rows, 3da] qkv (da = this rank's heads x head_dim), normalised over all heads and rotated,
 * plus v copied: what self-attention reads (strides 3da). rq, rk receive the RMS statistics, or hold them
 * (saved: a recomputation in the backward). */
static void self_attention_inputs(const wan_model *m, float *att, float *rq, float *rk, const float *qkv,
                                  const block_views *w, int B, int N, int saved) {
    const wan_acts *a = m->acts;
    const int da = m->attn_local, BN = B * N, H = m->heads_local, D = m->cfg.head_dim;
    rms_tp_forward(m, att, rq, qkv, w->nq1, BN, 3 * da, 3 * da, saved);
    rms_tp_forward(m, att + da, rk, qkv + da, w->nk1, BN, 3 * da, 3 * da, saved);
    rope_forward(att, att, a->rope_cos, a->rope_sin, B, N, H, D, 3 * da, 3 * da);
    rope_forward(att + da, att + da, a->rope_cos, a->rope_sin, B, N, H, D, 3 * da, 3 * da);
    copy_rows(att + 2 * da, qkv + 2 * da, (size_t)BN, da, 3 * da, 3 * da, 0);
}

/* k of the fused [rows, 2da] text k/v normalised over all heads, v copied: what cross-attention reads. */
static void cross_attention_kv(const wan_model *m, float *kvs, float *rk, const float *kv, const block_views *w, int BL,
                               int saved) {
    const int da = m->attn_local;
    rms_tp_forward(m, kvs, rk, kv, w->nk2, BL, 2 * da, 2 * da, saved);
    copy_rows(kvs + da, kv + da, (size_t)BL, da, 2 * da, 2 * da, 0);
}

static void add_residual(float *restrict out, const float *restrict x, const float *restrict y, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = x[i] + y[i];
}

/* mod[b, :] = table[:] + tproj[b, :] over n = 6d (blocks) or the head's 2d built from temb */
static void add_table(float *mod, const float *table, const float *per_sample, int B, int n) {
    for (int b = 0; b < B; b++)
        for (int j = 0; j < n; j++) mod[(size_t)b * n + j] = table[j] + per_sample[(size_t)b * n + j];
}

/* ---- forward ---------------------------------------------------------------------------------- */

/* One block's forward from x[l] (the last forward's shape) into block l's activations; the block's output goes to
 * xout (NULL: not needed, as when the backward recomputes a block whose output the next block already holds).
 * The forward and the recompute in the backward both run this, so their arithmetic is the same. Scratch: sA, sB,
 * s3a, sFa, kvs (none of which carries anything between the backward's blocks). */
static void block_forward(wan_model *m, int l, const block_views *w, float *xout) {
    wan_acts *a = m->acts;
    const wan_config *c = &m->cfg;
    const int B = a->cur.batch, Lt = a->cur.text_len, N = a->N, BN = B * N, BL = B * Lt;
    /* H, F and da (the attention width) are this rank's share under tensor parallelism */
    const int d = m->d, H = m->heads_local, D = c->head_dim, F = m->ffn_local, da = m->attn_local;
    const int *lens = a->masked ? a->text_lens : NULL;
    const float scale = 1.0f / sqrtf((float)D);
    /* Nl: the residual stream's tokens per sample (N, or this rank's N / tp under sequence parallelism) */
    const int Nl = a->Nl, BNl = B * Nl;
    float *mod = a->mod[l];
    add_table(mod, w->sst, a->tproj, B, 6 * d);
    /* self-attention */
    layernorm_forward(a->sA, a->mean1[l], a->rstd1[l], a->x[l], NULL, NULL, BNl, d, c->eps);
    modulate_forward(a->sB, a->sA, mod + 0 * d, mod + 1 * d, B, Nl, d, 6 * d);
    matmul_forward(a->qkv[l], sp_gather(m, a->sB), w->qkv_w, w->qkv_b, BN, 3 * da, d);
    self_attention_inputs(m, a->s3a, a->rq1[l], a->rk1[l], a->qkv[l], w, B, N, 0);
    cp_attention_forward((cp_comm_type)m->cp_comm, a->ao1[l], a->lse1[l], a->s3a, a->s3a + da, a->s3a + 2 * da, B, N,
                         a->N_full, H, D, 3 * da, 3 * da, da, scale);
    row_parallel_forward(m, a->proj1[l], a->ao1[l], w->o1_w, w->o1_b, BN, d, da);
    gate_residual_forward(a->xmid[l], a->x[l], a->proj1[l], mod + 2 * d, B, Nl, d, 6 * d);
    /* cross-attention over the projected text (no RoPE, no gate) */
    layernorm_forward(a->sA, a->mean2[l], a->rstd2[l], a->xmid[l], w->n2_w, w->n2_b, BNl, d, c->eps);
    matmul_forward(a->q2[l], sp_gather(m, a->sA), w->q2_w, w->q2_b, BN, da, d);
    rms_tp_forward(m, a->sB, a->rq2[l], a->q2[l], w->nq2, BN, da, da, 0);
    matmul_forward(a->kv2[l], a->ctx, w->kv2_w, w->kv2_b, BL, 2 * da, d);
    cross_attention_kv(m, a->kvs, a->rk2[l], a->kv2[l], w, BL, 0);
    attention_forward(a->ao2[l], a->lse2[l], a->sB, a->kvs, a->kvs + da, lens, B, N, Lt, H, D, da, 2 * da, da, scale);
    row_parallel_forward(m, a->sA, a->ao2[l], w->o2_w, w->o2_b, BN, d, da);
    add_residual(a->x2[l], a->xmid[l], a->sA, (size_t)BNl * d);
    /* feed-forward */
    layernorm_forward(a->sA, a->mean3[l], a->rstd3[l], a->x2[l], NULL, NULL, BNl, d, c->eps);
    modulate_forward(a->sB, a->sA, mod + 3 * d, mod + 4 * d, B, Nl, d, 6 * d);
    matmul_forward(a->h[l], sp_gather(m, a->sB), w->fc1_w, w->fc1_b, BN, F, d);
    gelu_forward(a->sFa, a->h[l], (size_t)BN * F);
    row_parallel_forward(m, a->f[l], a->sFa, w->fc2_w, w->fc2_b, BN, d, F);
    if (xout) gate_residual_forward(xout, a->x2[l], a->f[l], mod + 5 * d, B, Nl, d, 6 * d);
}

void wan_forward(wan_model *m, float *out, const float *latents, const float *timesteps, const float *text,
                 const int *text_lens, const wan_shape *s) {
    wan_acts *a = m->acts;
    const wan_config *c = &m->cfg;
    char err[400];
    if (!a) dfm_die("Wan forward: the model was built without activations (weights only, for conversion)");
    if (!wan_shape_check(m, s, err, sizeof err)) dfm_die("Wan forward: %s", err);
    const int B = s->batch, Lt = s->text_len, d = m->d, D = c->head_dim;
    a->masked = 0;
    for (int b = 0; b < B; b++) {
        const int n = text_lens ? text_lens[b] : Lt;
        if (n < 1 || n > Lt)
            dfm_die("Wan forward: text length %d of sample %d outside 1..%d (the padded text length)", n, b, Lt);
        a->text_lens[b] = n;
        a->masked |= n < Lt;
    }
    a->cur = *s;
    a->gt = s->frames / c->patch_t, a->gh = s->height / c->patch_h, a->gw = s->width / c->patch_w;
    a->N_full = a->gt * a->gh * a->gw;
    a->N = chunk_tokens(m, a->N_full), a->tok0 = m->cp_rank * a->N;
    const int N = a->N, BN = B * N, BL = B * Lt;
    /* without CP wan_shape_check refused a token count tp does not divide; with CP the chunk is a multiple of tp */
    a->Nl = m->sp ? N / m->tp : N;
    if (a->rope_gt != a->gt || a->rope_gh != a->gh || a->rope_gw != a->gw) {
        if (m->cp == 1)
            rope_table_3d(a->rope_cos, a->rope_sin, a->gt, a->gh, a->gw, D, ROPE_THETA);
        else { /* the rows of this rank's tokens, by global position (padding: zero) */
            size_t row = (size_t)D / 2, nf = (size_t)a->N_full * row;
            float *fc = xalloc_floats(nf), *fs = xalloc_floats(nf);
            rope_table_3d(fc, fs, a->gt, a->gh, a->gw, D, ROPE_THETA);
            memset(a->rope_cos, 0, sizeof(float) * (size_t)N * row);
            memset(a->rope_sin, 0, sizeof(float) * (size_t)N * row);
            int valid = cp_chunk_valid_len(a->N_full, N, m->cp_rank);
            if (valid > 0) {
                memcpy(a->rope_cos, fc + (size_t)a->tok0 * row, sizeof(float) * (size_t)valid * row);
                memcpy(a->rope_sin, fs + (size_t)a->tok0 * row, sizeof(float) * (size_t)valid * row);
            }
            free(fc), free(fs);
        }
        a->rope_gt = a->gt, a->rope_gh = a->gh, a->rope_gw = a->gw;
    }
    views pv;
    const views *p = &pv;
    /* a pipeline stage: the embedders only on the first, the head only on the last (wan_set_stage); a later
     * stage's hidden states, temb, time_proj output and text context are already in its arena */
    const int first = m->block_begin == 0, last = m->block_end == c->num_layers;
    if (first) {
        views_at(a, seg_params(m, 0, 0), 1, &pv);

        /* patch embedding (Conv3d with kernel = stride = patch, as a GEMM) */
        if (m->cp == 1)
            patchify3d_forward(a->patches, latents, B, c->in_channels, s->frames, s->height, s->width, c->patch_t,
                               c->patch_h, c->patch_w);
        else { /* the whole sample's patches, then this rank's tokens */
            patchify3d_forward(m->cp_full, latents, B, c->in_channels, s->frames, s->height, s->width, c->patch_t,
                               c->patch_h, c->patch_w);
            cp_take_rows(a->patches, m->cp_full, B, a->N, a->tok0, a->N_full, m->patch_in);
        }
        /* on the whole sequence; under sequence parallelism each rank keeps its tokens */
        matmul_forward(m->sp ? a->xg : a->x[0], a->patches, p->pe_w, p->pe_b, BN, d, m->patch_in);
        if (m->sp) sp_take_local(m, a->x[0], a->xg);

        /* time: sinusoid [cos, sin] with frequencies exp(-ln(10000) i / half) (diffusers' Timesteps with
         * flip_sin_to_cos, downscale_freq_shift 0), MLP with SiLU -> temb; time_proj(silu(temb)) -> 6 chunks */
        timestep_embedding(a->tsin, timesteps, B, c->freq_dim, 10000.0f, 0.0f, 1);
        matmul_forward(a->t1, a->tsin, p->t1_w, p->t1_b, B, d, c->freq_dim);
        silu_forward(a->t1s, a->t1, (size_t)B * d);
        matmul_forward(a->temb, a->t1s, p->t2_w, p->t2_b, B, d, d);
        silu_forward(a->temb_s, a->temb, (size_t)B * d);
        matmul_forward(a->tproj, a->temb_s, p->tp_w, p->tp_b, B, 6 * d, d);

        /* text: linear, GELU (tanh), linear */
        memcpy(a->text_in, text, sizeof(float) * (size_t)BL * c->text_dim);
        matmul_forward(a->c1, a->text_in, p->x1_w, p->x1_b, BL, d, c->text_dim);
        gelu_forward(a->tsc, a->c1, (size_t)BL * d);
        matmul_forward(a->ctx, a->tsc, p->x2_w, p->x2_b, BL, d, d);
    }

    const int k = m->recompute_chunk > 0 ? m->recompute_chunk : 1; /* blocks per checkpoint */
    a->slot_layer = -1;
    for (int l = m->block_begin; l < m->block_end; l++) {
        block_views wv;
        block_at(a, seg_params(m, 1 + l, 0), &wv);
        block_forward(m, l, &wv, a->x[l + 1]);
        if (l < m->recompute_layers) a->slot_layer = m->block_begin + (l - m->block_begin) / k * k;
        if (m->recompute_selective) a->slot_layer = l;
    }

    if (!last) return;
    /* head: (shift, scale) = scale_shift_table + temb (chunk order shift, scale), LN, modulate, proj_out */
    views_at(a, seg_params(m, c->num_layers + 1, 0), 0, &pv);
    for (int b = 0; b < B; b++)
        for (int k = 0; k < 2; k++)
            for (int j = 0; j < d; j++)
                a->hmod[((size_t)b * 2 + k) * d + j] = p->sst[(size_t)k * d + j] + a->temb[(size_t)b * d + j];
    /* the head runs on the whole sequence */
    layernorm_forward(a->sA, a->meanf, a->rstdf, sp_gather(m, a->x[c->num_layers]), NULL, NULL, BN, d, c->eps);
    modulate_forward(a->sB, a->sA, a->hmod, a->hmod + d, B, N, d, 2 * d);
    matmul_forward(a->tok, a->sB, p->po_w, p->po_b, BN, m->patch_out, d);
    const float *tok = a->tok;
    if (m->cp > 1) { /* this rank's tokens in place, zero elsewhere */
        cp_put_rows(m->cp_full, a->tok, B, a->N, a->tok0, a->N_full, m->patch_out);
        tok = m->cp_full;
    }
    unpatchify3d_forward(out, tok, B, c->out_channels, s->frames, s->height, s->width, c->patch_t, c->patch_h,
                         c->patch_w);
}

/* ---- backward --------------------------------------------------------------------------------- */

/* dtable[j] += sum_b dmod[b, j]; dper_sample[b, j] += dmod[b, j] (the per-sample part may be NULL) */
static void add_table_backward(float *dtable, float *dper_sample, const float *dmod, int B, int n) {
    if (kernels_grad_frozen(dtable)) dtable = NULL; /* LoRA: a frozen table */
    for (int b = 0; b < B; b++)
        for (int j = 0; j < n; j++) {
            if (dtable) dtable[j] += dmod[(size_t)b * n + j];
            if (dper_sample) dper_sample[(size_t)b * n + j] += dmod[(size_t)b * n + j];
        }
}

void wan_backward(wan_model *m, const float *dout) {
    wan_acts *a = m->acts;
    const wan_config *c = &m->cfg;
    const wan_shape *s = &a->cur;
    if (s->batch < 1) dfm_die("Wan backward: no forward to differentiate");
    views pv, gv;
    const views *p = &pv, *g = &gv;
    const int B = s->batch, Lt = s->text_len, N = a->N, BN = B * N, BL = B * Lt;
    const int d = m->d, H = m->heads_local, D = c->head_dim, F = m->ffn_local, da = m->attn_local;
    const size_t nT = (size_t)BN * d, nA = (size_t)BN * da;
    /* the residual stream's rows: BN, or this rank's tokens of every sample under sequence parallelism (the
     * linears' input and output gradients are the whole sequence's, gathered) */
    const int Nl = a->Nl, BNl = B * Nl;
    const size_t nTl = (size_t)BNl * d;
    const int *lens = a->masked ? a->text_lens : NULL;
    const float scale = 1.0f / sqrtf((float)D);

    /* a pipeline stage that does not end with the head finds dx, dtemb, dtproj and dctx received */
    const int first = m->block_begin == 0, last = m->block_end == c->num_layers;
    if (last) {
        views_at(a, seg_params(m, c->num_layers + 1, 1), 0, &pv);
        views_at(a, seg_grads(m, c->num_layers + 1), 0, &gv);
        /* head */
        if (m->cp == 1) {
            zero(a->tok, (size_t)BN * m->patch_out);
            unpatchify3d_backward(a->tok, dout, B, c->out_channels, s->frames, s->height, s->width, c->patch_t,
                                  c->patch_h, c->patch_w);
        } else {
            zero(m->cp_full, (size_t)B * a->N_full * m->patch_out);
            unpatchify3d_backward(m->cp_full, dout, B, c->out_channels, s->frames, s->height, s->width, c->patch_t,
                                  c->patch_h, c->patch_w);
            cp_take_rows(a->tok, m->cp_full, B, a->N, a->tok0, a->N_full, m->patch_out);
        }
        const float *xL = sp_gather(m, a->x[c->num_layers]); /* the head ran on the whole sequence */
        layernorm_forward(a->sA, NULL, NULL, xL, NULL, NULL, BN, d, c->eps);
        modulate_forward(a->sB, a->sA, a->hmod, a->hmod + d, B, N, d, 2 * d);
        zero(a->sC, nT);
        matmul_backward(a->sC, g->po_w, g->po_b, a->tok, a->sB, p->po_w, BN, m->patch_out, d);
        zero(a->dhmod, (size_t)B * 2 * d);
        zero(a->sB, nT);
        modulate_backward(a->sB, a->dhmod, a->dhmod + d, a->sC, a->sA, a->hmod + d, B, N, d, 2 * d);
        float *dxf = m->sp ? a->sA : a->dx; /* SP: the whole sequence's input gradient, then this rank's tokens */
        zero(dxf, nT);
        layernorm_backward(dxf, NULL, NULL, a->sB, xL, NULL, a->meanf, a->rstdf, BN, d);
        if (m->sp) sp_take_local(m, a->dx, dxf);
        zero(a->dtemb, (size_t)B * d);
        float *dsst = kernels_grad_frozen(g->sst) ? NULL : g->sst; /* LoRA: a frozen table */
        for (int b = 0; b < B; b++)
            for (int k = 0; k < 2; k++)
                for (int j = 0; j < d; j++) {
                    const float v = a->dhmod[((size_t)b * 2 + k) * d + j];
                    if (dsst) dsst[(size_t)k * d + j] += v;
                    a->dtemb[(size_t)b * d + j] += v;
                }
        seg_done(m, c->num_layers + 1);

        zero(a->dtproj, (size_t)B * 6 * d);
        zero(a->dctx, (size_t)BL * d);
    }
    const int k = m->recompute_chunk > 0 ? m->recompute_chunk : 1; /* blocks per checkpoint */
    for (int l = m->block_end - 1; l >= m->block_begin; l--) {
        block_views wv, gwv;
        int c0 = m->block_begin + (l - m->block_begin) / k * k; /* l's checkpoint: blocks c0..l */
        if (l < m->recompute_layers && a->slot_layer != c0) {   /* the checkpoint's activations again, from x[c0] */
            for (int j = c0; j <= l; j++) {
                block_at(a, seg_params(m, 1 + j, 1), &wv);
                block_forward(m, j, &wv, j < l ? a->x[j + 1] : NULL);
            }
            a->slot_layer = c0;
        }
        /* selective: the attention outputs again (same kernels on the same inputs), once per block */
        const int resel = m->recompute_selective && a->slot_layer != l;
        if (resel) a->slot_layer = l;
        block_at(a, seg_params(m, 1 + l, 1), &wv);
        block_at(a, seg_grads(m, 1 + l), &gwv);
        const block_views *w = &wv, *gw = &gwv;
        const float *mod = a->mod[l];
        float *dmod = a->dmod;
        zero(dmod, (size_t)B * 6 * d);

        /* ---- feed-forward: x_out = x2 + c_gate * f (dx flows through unchanged) ---- */
        float *df = a->sA;
        zero(df, nTl);
        gate_residual_backward(NULL, df, dmod + 5 * d, a->dx, a->f[l], mod + 5 * d, B, Nl, d, 6 * d);
        gelu_forward(a->sFa, a->h[l], (size_t)BN * F);
        zero(a->sFb, (size_t)BN * F);
        matmul_backward(a->sFb, gw->fc2_w, gw->fc2_b, sp_gather(m, df), a->sFa, w->fc2_w, BN, d, F);
        float *dh = a->sFa; /* gelu(h) is dead once fc2's weight gradient is taken */
        zero(dh, (size_t)BN * F);
        gelu_backward(dh, a->sFb, a->h[l], (size_t)BN * F);
        float *ln3 = a->sA, *xm3 = a->sB;
        layernorm_forward(ln3, NULL, NULL, a->x2[l], NULL, NULL, BNl, d, c->eps);
        modulate_forward(xm3, ln3, mod + 3 * d, mod + 4 * d, B, Nl, d, 6 * d);
        zero(a->sC, nT);
        matmul_backward(a->sC, gw->fc1_w, gw->fc1_b, dh, sp_gather(m, xm3), w->fc1_w, BN, F, d);
        float *dxm3 = tp_sum_sp(m, a->sC);
        float *dln3 = a->sB;
        zero(dln3, nTl);
        modulate_backward(dln3, dmod + 3 * d, dmod + 4 * d, dxm3, ln3, mod + 4 * d, B, Nl, d, 6 * d);
        layernorm_backward(a->dx, NULL, NULL, dln3, a->x2[l], NULL, a->mean3[l], a->rstd3[l], BNl, d);

        /* ---- cross-attention: x2 = x_mid + attention(...) Wo2^T + b ---- */
        float *q2n = a->sB, *dq2n = a->sC;
        rms_tp_forward(m, q2n, a->rq2[l], a->q2[l], w->nq2, BN, da, da, 1);
        cross_attention_kv(m, a->kvs, a->rk2[l], a->kv2[l], w, BL, 1);
        if (resel)
            attention_forward(a->ao2[l], a->lse2[l], q2n, a->kvs, a->kvs + da, lens, B, N, Lt, H, D, da, 2 * da, da,
                              scale);
        float *dao2 = a->sA;
        zero(dao2, nA);
        matmul_backward(dao2, gw->o2_w, gw->o2_b, sp_gather(m, a->dx), a->ao2[l], w->o2_w, BN, d, da);
        zero(dq2n, nA);
        zero(a->dkvs, (size_t)BL * 2 * da);
        attention_backward(dq2n, a->dkvs, a->dkvs + da, a->attn_ws, dao2, a->ao2[l], a->lse2[l], q2n, a->kvs,
                           a->kvs + da, lens, B, N, Lt, H, D, da, 2 * da, da, scale);
        float *dq2 = a->sA;
        zero(dq2, nA);
        rms_tp_backward(m, dq2, gw->nq2, dq2n, a->q2[l], w->nq2, a->rq2[l], BN, da, da, da);
        zero(a->dkv, (size_t)BL * 2 * da);
        rms_tp_backward(m, a->dkv, gw->nk2, a->dkvs, a->kv2[l], w->nk2, a->rk2[l], BL, 2 * da, 2 * da, 2 * da);
        copy_rows(a->dkv + da, a->dkvs + da, (size_t)BL, da, 2 * da, 2 * da, 0);
        /* dctx: this rank's share, summed over the TP group once after the last block */
        matmul_backward(a->dctx, gw->kv2_w, gw->kv2_b, a->dkv, a->ctx, w->kv2_w, BL, 2 * da, d);
        float *n2 = a->sB, *dn2 = a->sC;
        layernorm_forward(n2, NULL, NULL, a->xmid[l], w->n2_w, w->n2_b, BNl, d, c->eps);
        zero(dn2, nT);
        matmul_backward(dn2, gw->q2_w, gw->q2_b, dq2, sp_gather(m, n2), w->q2_w, BN, da, d);
        dn2 = tp_sum_sp(m, dn2);
        if (m->sp && kernels_grad_frozen(gw->n2_w)) /* LoRA: frozen, no weight gradients to sum */
            layernorm_backward(a->dx, NULL, NULL, dn2, a->xmid[l], w->n2_w, a->mean2[l], a->rstd2[l], BNl, d);
        else if (m->sp) { /* norm2's weight and bias see this rank's tokens: their gradients summed over the TP group */
            float *dwb = a->dn2wb;
            zero(dwb, 2 * (size_t)d);
            layernorm_backward(a->dx, dwb, dwb + d, dn2, a->xmid[l], w->n2_w, a->mean2[l], a->rstd2[l], BNl, d);
            dist_tp_allreduce_sum_f32(dwb, 2 * (size_t)d, "sequence-parallel all-reduce of norm2's gradients");
            for (int j = 0; j < d; j++) gw->n2_w[j] += dwb[j], gw->n2_b[j] += dwb[d + j];
        } else
            layernorm_backward(a->dx, gw->n2_w, gw->n2_b, dn2, a->xmid[l], w->n2_w, a->mean2[l], a->rstd2[l], BN, d);

        /* ---- self-attention: x_mid = x + gate * proj1 ---- */
        float *dproj = a->sA;
        zero(dproj, nTl);
        gate_residual_backward(NULL, dproj, dmod + 2 * d, a->dx, a->proj1[l], mod + 2 * d, B, Nl, d, 6 * d);
        float *att = a->s3a, *datt = a->s3b;
        self_attention_inputs(m, att, a->rq1[l], a->rk1[l], a->qkv[l], w, B, N, 1);
        if (resel)
            cp_attention_forward((cp_comm_type)m->cp_comm, a->ao1[l], a->lse1[l], att, att + da, att + 2 * da, B, N,
                                 a->N_full, H, D, 3 * da, 3 * da, da, scale);
        float *dao1 = a->sB;
        zero(dao1, nA);
        matmul_backward(dao1, gw->o1_w, gw->o1_b, sp_gather(m, dproj), a->ao1[l], w->o1_w, BN, d, da);
        zero(datt, (size_t)BN * 3 * da);
        cp_attention_backward((cp_comm_type)m->cp_comm, datt, datt + da, datt + 2 * da, a->attn_ws, dao1, a->ao1[l],
                              a->lse1[l], att, att + da, att + 2 * da, B, N, a->N_full, H, D, 3 * da, 3 * da, da,
                              scale);
        float *dqkv = a->s3a; /* the attention inputs are dead now */
        zero(dqkv, (size_t)BN * 3 * da);
        for (int qk = 0; qk < 2; qk++) { /* undo RoPE, then the RMSNorm, for q then k */
            float *dn = a->sA;
            zero(dn, nA);
            rope_backward(dn, datt + qk * da, a->rope_cos, a->rope_sin, B, N, H, D, da, 3 * da);
            rms_tp_backward(m, dqkv + qk * da, qk ? gw->nk1 : gw->nq1, dn, a->qkv[l] + qk * da, qk ? w->nk1 : w->nq1,
                            qk ? a->rk1[l] : a->rq1[l], BN, 3 * da, da, 3 * da);
        }
        copy_rows(dqkv + 2 * da, datt + 2 * da, (size_t)BN, da, 3 * da, 3 * da, 0);
        float *ln1 = a->sA, *xm1 = a->sB;
        layernorm_forward(ln1, NULL, NULL, a->x[l], NULL, NULL, BNl, d, c->eps);
        modulate_forward(xm1, ln1, mod + 0 * d, mod + 1 * d, B, Nl, d, 6 * d);
        zero(a->sC, nT);
        matmul_backward(a->sC, gw->qkv_w, gw->qkv_b, dqkv, sp_gather(m, xm1), w->qkv_w, BN, 3 * da, d);
        float *dxm1 = tp_sum_sp(m, a->sC);
        float *dln1 = a->sB;
        zero(dln1, nTl);
        modulate_backward(dln1, dmod + 0 * d, dmod + 1 * d, dxm1, ln1, mod + 1 * d, B, Nl, d, 6 * d);
        layernorm_backward(a->dx, NULL, NULL, dln1, a->x[l], NULL, a->mean1[l], a->rstd1[l], BNl, d);

        /* under sequence parallelism dmod holds this rank's tokens' share: summed over the TP group (rank order),
         * the table's and time_proj's gradients are the whole sequence's, the same bits on every TP rank */
        if (m->sp)
            dist_tp_allreduce_sum_f32(dmod, (size_t)B * 6 * d, "sequence-parallel all-reduce of modulation gradients");
        /* mod = scale_shift_table + time_proj output */
        add_table_backward(gw->sst, a->dtproj, dmod, B, 6 * d);
        seg_done(m, 1 + l);
    }

    /* a later pipeline stage sends its TP rank's share of dctx on (to the same TP rank of the previous stage): the
     * share is summed over the TP group once, on the first stage, after every block has added to it */
    /* under context parallelism dctx (like dtemb) holds this rank's tokens' share only: the text and time embedders'
     * parameter gradients are linear in it, and the data-parallel engine sums them over the CP group (fp64) */
    if (!first) return;
    tp_sum(m, a->dctx, (size_t)BL * d); /* every block's text k/v input gradient, summed over the TP group */

    /* time embedding: temb feeds time_proj (through SiLU) and the head (directly) */
    views_at(a, seg_params(m, 0, 1), 1, &pv);
    views_at(a, seg_grads(m, 0), 1, &gv);
    zero(a->dtemb_s, (size_t)B * d);
    matmul_backward(a->dtemb_s, g->tp_w, g->tp_b, a->dtproj, a->temb_s, p->tp_w, B, 6 * d, d);
    silu_backward(a->dtemb, a->dtemb_s, a->temb, (size_t)B * d);
    zero(a->dt1s, (size_t)B * d);
    matmul_backward(a->dt1s, g->t2_w, g->t2_b, a->dtemb, a->t1s, p->t2_w, B, d, d);
    zero(a->dt1, (size_t)B * d);
    silu_backward(a->dt1, a->dt1s, a->t1, (size_t)B * d);
    matmul_backward(NULL, g->t1_w, g->t1_b, a->dt1, a->tsin, p->t1_w, B, d, c->freq_dim);

    /* text embedder */
    float *gelu_c1 = a->tsc, *dgelu = a->kvs;
    gelu_forward(gelu_c1, a->c1, (size_t)BL * d);
    zero(dgelu, (size_t)BL * d);
    matmul_backward(dgelu, g->x2_w, g->x2_b, a->dctx, gelu_c1, p->x2_w, BL, d, d);
    float *dc1 = a->tsc;
    zero(dc1, (size_t)BL * d);
    gelu_backward(dc1, dgelu, a->c1, (size_t)BL * d);
    matmul_backward(NULL, g->x1_w, g->x1_b, dc1, a->text_in, p->x1_w, BL, d, c->text_dim);

    /* patch embedding */
    matmul_backward(NULL, g->pe_w, g->pe_b, sp_gather(m, a->dx), a->patches, p->pe_w, BN, d, m->patch_in);
    seg_done(m, 0);
}

double wan_forward_flops(const wan_model *m, const wan_shape *s) {
    const wan_config *c = &m->cfg;
    const double B = s->batch,
                 N = (double)(s->frames / c->patch_t) * (s->height / c->patch_h) * (s->width / c->patch_w);
    const double Q = B * N, Q2 = B * N * N, K = B * s->text_len, QK = B * N * s->text_len, h = m->d, F = m->ffn;
    const double pv = (double)c->patch_t * c->patch_h * c->patch_w;
    const double self = 2 * Q * h * 3 * h + 4 * Q2 * h + 2 * Q * h * h;
    const double cross = 2 * Q * h * h + 4 * K * h * h + 4 * QK * h + 2 * Q * h * h;
    const double mlp = 4 * Q * h * F;
    const double time = 2 * B * (c->freq_dim * h + h * h + 6 * h * h); /* time embedder MLP and time_proj */
    return c->num_layers * (self + cross + mlp) + 2 * Q * c->in_channels * pv * h + 2 * K * (c->text_dim * h + h * h) +
           time + 2 * Q * h * c->out_channels * pv;
}
