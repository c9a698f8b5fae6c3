/* LoRA adapters (see include/dfm/lora.h). */
#include "dfm/lora.h"
#include "dfm/common.h"
#include "dfm/dist.h"
#include "dfm/kernels.h"
#include "dfm/rng.h"
#include "dfm/safetensors.h"

#include <cblas.h>
#include <fnmatch.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int lora_is_linear(const param_entry *e, char *module, size_t n) {
    size_t len = strlen(e->name);
    if (e->ndim != 2 || len <= 7 || strcmp(e->name + len - 7, ".weight")) return 0;
    if (strstr(e->name, "embedding_table")) return 0; /* a lookup table, not a linear */
    if (len - 7 >= n) return 0;
    memcpy(module, e->name, len - 7);
    module[len - 7] = 0;
    return 1;
}

int lora_pattern_match(const char *pattern, const char *module) {
    if (!strcmp(pattern, module)) return 1;
    size_t lp = strlen(pattern), lm = strlen(module);
    if (lm > lp && module[lm - lp - 1] == '.' && !strcmp(module + lm - lp, pattern)) return 1;
    return fnmatch(pattern, module, 0) == 0;
}

static int any_match(const char *const *pats, int n, const char *module) {
    for (int i = 0; i < n; i++)
        if (lora_pattern_match(pats[i], module)) return 1;
    return 0;
}

int lora_create(lora_model *L, const param_table *base, const float *base_params, const lora_spec *spec, uint64_t seed,
                char *err, size_t errlen) {
    memset(L, 0, sizeof *L);
    if (spec->r < 1) {
        snprintf(err, errlen, "peft.dim = %d: the LoRA rank must be at least 1", spec->r);
        return -1;
    }
    if (spec->dropout != 0.0f) {
        snprintf(err, errlen,
                 "peft.dropout = %g: dropout on the LoRA input is not built (dfm's forward runs on merged weights, "
                 "which cannot express it); use 0",
                 (double)spec->dropout);
        return -1;
    }
    if (!spec->match_all_linear && spec->n_targets == 0) {
        snprintf(err, errlen, "peft: no target_modules and match_all_linear is false: nothing to adapt");
        return -1;
    }
    char module[512];
    const param_entry **went = NULL; /* the base weight's entry of each target */
    for (int i = 0; i < base->n; i++) {
        const param_entry *e = &base->e[i];
        if (!lora_is_linear(e, module, sizeof module)) continue;
        int on = spec->match_all_linear || any_match(spec->targets, spec->n_targets, module);
        if (!on || any_match(spec->excludes, spec->n_excludes, module)) continue;
        L->t = xrealloc(L->t, (size_t)(L->n + 1) * sizeof *L->t);
        lora_target *t = &L->t[L->n++];
        t->module = xstrdup(module);
        t->w_off = e->offset;
        t->out = (int)e->shape[0], t->in = (int)e->shape[1];
        t->split = e->split_axis;
        went = xrealloc(went, (size_t)L->n * sizeof *went);
        went[L->n - 1] = e;
        t->base = xalloc_floats(e->numel);
        memcpy(t->base, base_params + e->offset, e->numel * sizeof(float));
    }
    if (L->n == 0) {
        int len = snprintf(err, errlen, "peft: target_modules [");
        for (int i = 0; i < spec->n_targets && len < (int)errlen; i++)
            len += snprintf(err + len, errlen - (size_t)len, "%s'%s'", i ? ", " : "", spec->targets[i]);
        if (len < (int)errlen)
            len += snprintf(err + len, errlen - (size_t)len, "] match no linear layer; the model's are");
        int shown = 0;
        for (int i = 0; i < base->n && shown < 6 && len < (int)errlen; i++)
            if (lora_is_linear(&base->e[i], module, sizeof module))
                len += snprintf(err + len, errlen - (size_t)len, " %s", module), shown++;
        if (len < (int)errlen) snprintf(err + len, errlen - (size_t)len, " ...");
        lora_free(L);
        free(went);
        return -1;
    }
    L->r = spec->r;
    L->alpha = spec->alpha;
    L->use_rslora = spec->use_rslora;
    L->scale = spec->use_rslora ? spec->alpha / sqrtf((float)spec->r) : spec->alpha / (float)spec->r;
    char name[600];
    int r = spec->r;
    for (int k = 0; k < L->n; k++) {
        lora_target *t = &L->t[k];
        const param_entry *w = went[k];
        int64_t gout = w->global_shape[0], gin = w->global_shape[1];
        int64_t as[2] = {r, gin}, bs[2] = {gout, r};
        /* under tensor parallelism: B split by rows with a column-parallel W, A by columns with a row-parallel W */
        int parts = t->split >= 0 ? (int)(w->global_shape[t->split] / w->shape[t->split]) : 1;
        int part = t->split >= 0 ? (int)(w->split_start / w->shape[t->split]) : 0;
        snprintf(name, sizeof name, "%s.lora_A.weight", t->module);
        param_table_add_split(&L->table, name, 2, as, 0, 1, t->split == 1 ? parts : 1, part);
        t->a_off = L->table.e[L->table.n - 1].offset;
        param_table_add(&L->global, name, 2, as, 0);
        snprintf(name, sizeof name, "%s.lora_B.weight", t->module);
        param_table_add_split(&L->table, name, 2, bs, 0, 0, t->split == 0 ? parts : 1, part);
        t->b_off = L->table.e[L->table.n - 1].offset;
        param_table_add(&L->global, name, 2, bs, 0);
        if (t->split == 0 || t->split == 1) { /* its partial gradient: A's (column-parallel) or B's (row-parallel) */
            t->p_off = L->tp_n;
            L->tp_n += t->split == 0 ? (size_t)r * t->in : (size_t)t->out * r;
        }
    }
    L->n_all = L->n;
    L->all_modules = xcalloc((size_t)L->n, sizeof(char *));
    for (int k = 0; k < L->n; k++) L->all_modules[k] = xstrdup(L->t[k].module);
    L->tp_scratch = L->tp_n ? xalloc_floats(L->tp_n) : NULL;
    L->params = xalloc_floats(L->table.total);
    L->grads = xalloc_floats(L->table.total);
    memset(L->params, 0, L->table.total * sizeof(float));
    memset(L->grads, 0, L->table.total * sizeof(float));
    /* A ~ U(-1/sqrt(in), 1/sqrt(in)) over the whole tensor (a TP rank keeps its slice of one process's draw); B = 0 */
    for (int k = 0; k < L->n; k++) {
        lora_target *t = &L->t[k];
        const param_entry *ea = &L->table.e[2 * k];
        size_t na = ea->global_numel;
        float *a = xalloc_floats(na), bound = 1.0f / sqrtf((float)ea->global_shape[1]);
        rng_fill_uniform(a, na, seed, RNG_STREAM_LORA, 0, (uint32_t)k);
        for (size_t i = 0; i < na; i++) a[i] = (2.0f * a[i] - 1.0f) * bound;
        param_entry_take_slice(ea, a, L->params + t->a_off);
        free(a);
    }
    free(went);
    L->nseg = 1;
    L->seg_begin[0] = 0, L->seg_begin[1] = L->table.total;
    return 0;
}

void lora_free(lora_model *L) {
    for (int k = 0; k < L->n; k++) free(L->t[k].module), free(L->t[k].base);
    for (int k = 0; k < L->n_all; k++) free(L->all_modules[k]);
    free(L->t), free(L->all_modules), free(L->tp_scratch), free(L->uv), free(L->bw_hits);
    free(L->params), free(L->grads);
    param_table_free(&L->table);
    param_table_free(&L->global);
    memset(L, 0, sizeof *L);
}

void lora_merge(const lora_model *L, const float *adapters, float *model_params) {
    if (!adapters) adapters = L->params;
    for (int k = 0; k < L->n; k++) {
        const lora_target *t = &L->t[k];
        float *w = model_params + t->w_off;
        memcpy(w, t->base, (size_t)t->out * t->in * sizeof(float));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, t->out, t->in, L->r, L->scale, adapters + t->b_off, L->r,
                    adapters + t->a_off, t->in, 1.0f, w, t->in);
    }
}

/* The partial gradients of tp_scratch [p0, p1) (the modules with weights in [lo, hi)): summed over the TP group in
 * rank order (every rank the same bits), then added into the adapter gradients. */
static void tp_finish(lora_model *L, float *adapter_grads, size_t lo, size_t hi, size_t p0, size_t p1) {
    if (p1 <= p0) return;
    dist_tp_allreduce_sum_f32(L->tp_scratch + p0, p1 - p0, "tensor-parallel all-reduce of the LoRA gradients");
    for (int k = 0; k < L->n; k++) {
        const lora_target *t = &L->t[k];
        if (t->w_off < lo || t->w_off >= hi || t->split < 0) continue;
        size_t off = t->split == 0 ? t->a_off : t->b_off,
               n = t->split == 0 ? (size_t)L->r * t->in : (size_t)t->out * L->r;
        const float *src = L->tp_scratch + t->p_off;
        float *dst = adapter_grads + off;
        for (size_t i = 0; i < n; i++) dst[i] += src[i];
    }
}

/* The span of tp_scratch the partial gradients of the modules with weights in [lo, hi) take: [*p0, *p1). */
static void tp_span(const lora_model *L, size_t lo, size_t hi, size_t *p0, size_t *p1) {
    *p0 = L->tp_n, *p1 = 0;
    for (int k = 0; k < L->n; k++) {
        const lora_target *t = &L->t[k];
        if (t->w_off < lo || t->w_off >= hi || t->split < 0) continue;
        size_t n = t->split == 0 ? (size_t)L->r * t->in : (size_t)t->out * L->r;
        if (t->p_off < *p0) *p0 = t->p_off;
        if (t->p_off + n > *p1) *p1 = t->p_off + n;
    }
}

void lora_backward_range(lora_model *L, const float *adapters, const float *model_grads, float *adapter_grads,
                         size_t lo, size_t hi) {
    if (!adapters) adapters = L->params;
    size_t p0 = L->tp_n, p1 = 0; /* the span of tp_scratch these modules' partial gradients take */
    for (int k = 0; k < L->n; k++) {
        const lora_target *t = &L->t[k];
        if (t->w_off < lo || t->w_off >= hi) continue;
        const float *g = model_grads + t->w_off, *a = adapters + t->a_off, *b = adapters + t->b_off;
        float *da = adapter_grads + t->a_off, *db = adapter_grads + t->b_off;
        float beta_a = 1.0f, beta_b = 1.0f;
        if (t->split == 0) { /* column-parallel: this rank's rows of G give a part of dA */
            da = L->tp_scratch + t->p_off, beta_a = 0.0f;
            p0 = t->p_off < p0 ? t->p_off : p0, p1 = t->p_off + (size_t)L->r * t->in;
        } else if (t->split == 1) { /* row-parallel: this rank's columns of G give a part of dB */
            db = L->tp_scratch + t->p_off, beta_b = 0.0f;
            p0 = t->p_off < p0 ? t->p_off : p0, p1 = t->p_off + (size_t)t->out * L->r;
        }
        /* dA [r, in] += scale B^T G;  dB [out, r] += scale G A^T */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L->r, t->in, t->out, L->scale, b, L->r, g, t->in, beta_a,
                    da, t->in);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t->out, L->r, t->in, L->scale, g, t->in, a, t->in, beta_b,
                    db, L->r);
    }
    tp_finish(L, adapter_grads, lo, hi, p0, p1);
}

void lora_backward(lora_model *L, const float *adapters, const float *model_grads, float *adapter_grads) {
    lora_backward_range(L, adapters, model_grads, adapter_grads, 0, SIZE_MAX);
}

const float *lora_step_begin(lora_model *L, float *model_params) {
    const float *ad = L->hooks.params ? L->hooks.params(L->hooks.ctx, 0, 0) : L->params;
    lora_merge(L, ad, model_params);
    return ad;
}

/* The fast backward of a frozen linear whose weight gradient would land at dweight (kernels_set_frozen): for each
 * adapted module among the rows of that weight (q, k and v are one fused [3 d, d] product), with G its columns of
 * dout [M, N] and X = inp [M, K]:  U = X A^T, V = G B;  dB += scale G^T U, dA += scale V^T X. Under tensor
 * parallelism the part that sums over the split axis goes to tp_scratch (dA of a column-parallel weight: V sums
 * over this rank's rows; dB of a row-parallel one: U over its columns), summed over the group at the end. */
static void fast_linear(void *ctx, float *dweight, const float *dout, const float *inp, int M, int N, int K) {
    lora_model *L = ctx;
    const size_t off = (size_t)(dweight - L->bw_model_grads), end = off + (size_t)N * K;
    const int r = L->r;
    for (int k = 0; k < L->n; k++) {
        const lora_target *t = &L->t[k];
        if (t->w_off < off || t->w_off >= end) continue;
        if (t->in != K || (t->w_off - off) % (size_t)K || (t->w_off - off) / K + (size_t)t->out > (size_t)N)
            dfm_die("LoRA backward: module %s [%d, %d] is not whole rows of a [%d, %d] linear; set "
                    "peft.merged_backward: true",
                    t->module, t->out, t->in, N, K);
        const float *a = L->bw_adapters + t->a_off, *b = L->bw_adapters + t->b_off;
        const float *g = dout + (t->w_off - off) / K; /* this module's columns of dout, row stride N */
        float *da = L->bw_grads + t->a_off, *db = L->bw_grads + t->b_off;
        if (t->split == 0) da = L->tp_scratch + t->p_off;
        if (t->split == 1) db = L->tp_scratch + t->p_off;
        if (L->uv_n < (size_t)2 * M * r) {
            free(L->uv);
            L->uv_n = (size_t)2 * M * r;
            L->uv = xalloc_floats(L->uv_n);
        }
        float *U = L->uv, *V = L->uv + (size_t)M * r;
        kernels_sgemm('N', 'T', M, r, K, 1.0f, inp, K, a, K, 0.0f, U, r);         /* U [M, r] = X A^T */
        kernels_sgemm('N', 'N', M, r, t->out, 1.0f, g, N, b, r, 0.0f, V, r);      /* V [M, r] = G B */
        kernels_sgemm('T', 'N', t->out, r, M, L->scale, g, N, U, r, 1.0f, db, r); /* dB [out, r] += s G^T U */
        kernels_sgemm('T', 'N', r, K, M, L->scale, V, r, inp, K, 1.0f, da, K);    /* dA [r, in] += s V^T X */
        L->bw_hits[k]++;
    }
}

void lora_micro_backward_begin(lora_model *L, const float *adapters, float *model_grads, size_t lo, size_t hi) {
    L->bw_adapters = adapters ? adapters : L->params;
    L->bw_grads = L->hooks.grads ? L->hooks.grads(L->hooks.ctx, 0) : L->grads;
    L->bw_model_grads = model_grads;
    L->bw_lo = lo, L->bw_hi = hi;
    if (L->merged_backward) { /* this micro-batch's weight gradients, from zero */
        memset(model_grads + lo, 0, (hi - lo) * sizeof(float));
        return;
    }
    size_t p0, p1;
    tp_span(L, lo, hi, &p0, &p1);
    if (p1 > p0) memset(L->tp_scratch + p0, 0, (p1 - p0) * sizeof(float));
    if (!L->bw_hits) L->bw_hits = xcalloc((size_t)(L->n ? L->n : 1), sizeof(int));
    memset(L->bw_hits, 0, (size_t)L->n * sizeof(int));
    kernels_set_frozen(model_grads + lo, hi - lo, fast_linear, L);
}

void lora_micro_backward_end(lora_model *L) {
    if (L->merged_backward)
        lora_backward_range(L, L->bw_adapters, L->bw_model_grads, L->bw_grads, L->bw_lo, L->bw_hi);
    else {
        kernels_set_frozen(NULL, 0, NULL, NULL);
        for (int k = 0; k < L->n; k++) /* every adapted linear of the span went through matmul_backward once */
            if (L->t[k].w_off >= L->bw_lo && L->t[k].w_off < L->bw_hi && L->bw_hits[k] != 1)
                dfm_die("LoRA backward: module %s was differentiated %d times in one backward (want 1); set "
                        "peft.merged_backward: true",
                        L->t[k].module, L->bw_hits[k]);
        size_t p0, p1;
        tp_span(L, L->bw_lo, L->bw_hi, &p0, &p1);
        tp_finish(L, L->bw_grads, L->bw_lo, L->bw_hi, p0, p1);
    }
    if (L->hooks.grads_done) L->hooks.grads_done(L->hooks.ctx, 0);
    L->bw_adapters = NULL, L->bw_grads = L->bw_model_grads = NULL;
}

int lora_restrict(lora_model *L, const param_table *part) {
    param_table nt = {0};
    float *np = NULL;
    int kept = 0;
    char wname[600];
    size_t tp_n = 0;
    for (int k = 0; k < L->n; k++) {
        lora_target *t = &L->t[k];
        snprintf(wname, sizeof wname, "%s.weight", t->module);
        const param_entry *w = param_table_find(part, wname);
        if (!w) {
            free(t->module), free(t->base);
            continue;
        }
        lora_target u = *t;
        u.w_off = w->offset;
        param_table_add_entry(&nt, &L->table.e[2 * k]);
        u.a_off = nt.e[nt.n - 1].offset;
        param_table_add_entry(&nt, &L->table.e[2 * k + 1]);
        u.b_off = nt.e[nt.n - 1].offset;
        np = xrealloc(np, nt.total * sizeof(float));
        memcpy(np + u.a_off, L->params + t->a_off, (size_t)L->r * t->in * sizeof(float));
        memcpy(np + u.b_off, L->params + t->b_off, (size_t)t->out * L->r * sizeof(float));
        if (u.split >= 0) u.p_off = tp_n, tp_n += u.split == 0 ? (size_t)L->r * u.in : (size_t)u.out * L->r;
        L->t[kept++] = u;
    }
    nt.model_total = param_table_global_total(&L->table);
    param_table_free(&L->table);
    L->table = nt;
    L->n = kept;
    free(L->params), free(L->grads);
    L->params = np ? np : xalloc_floats(1);
    L->grads = xalloc_floats(nt.total ? nt.total : 1);
    memset(L->grads, 0, (nt.total ? nt.total : 1) * sizeof(float));
    L->tp_n = tp_n;
    free(L->tp_scratch);
    L->tp_scratch = tp_n ? xalloc_floats(tp_n) : NULL;
    L->seg_begin[0] = 0, L->seg_begin[1] = nt.total;
    return kept;
}

/* ---- PEFT files ------------------------------------------------------------------------------- */

static const char *PEFT_PREFIX = "base_model.model.";

int lora_save_peft(const lora_model *L, const float *adapters, const char *dir, const char *base_name, char *err,
                   size_t errlen) {
    if (!adapters) adapters = L->params;
    xmkdir_p(dir);
    st_writer *w = st_writer_new();
    const param_table *gt = &L->global;
    char **names = xcalloc((size_t)gt->n, sizeof(char *));
    for (int i = 0; i < gt->n; i++) {
        const param_entry *e = &gt->e[i];
        names[i] = xmalloc(strlen(PEFT_PREFIX) + strlen(e->name) + 1);
        sprintf(names[i], "%s%s", PEFT_PREFIX, e->name);
        st_writer_add(w, names[i], ST_F32, e->ndim, e->shape, adapters + e->offset);
    }
    st_writer_meta(w, "format", "pt");
    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    st_writer_finish(w, path);
    for (int i = 0; i < gt->n; i++) free(names[i]);
    free(names);

    json_t *targets = json_array();
    for (int k = 0; k < L->n_all; k++) json_array_append_new(targets, json_string(L->all_modules[k]));
    json_t *c = json_object();
    json_object_set_new(c, "base_model_name_or_path", base_name ? json_string(base_name) : json_null());
    json_object_set_new(c, "peft_type", json_string("LORA"));
    json_object_set_new(c, "task_type", json_null());
    json_object_set_new(c, "inference_mode", json_true());
    json_object_set_new(c, "r", json_integer(L->r));
    json_object_set_new(c, "lora_alpha", json_real(L->alpha));
    json_object_set_new(c, "lora_dropout", json_real(0.0));
    json_object_set_new(c, "target_modules", targets);
    json_object_set_new(c, "bias", json_string("none"));
    json_object_set_new(c, "fan_in_fan_out", json_false());
    json_object_set_new(c, "init_lora_weights", json_true());
    json_object_set_new(c, "use_rslora", json_boolean(L->use_rslora));
    json_object_set_new(c, "use_dora", json_false());
    json_object_set_new(c, "modules_to_save", json_null());
    json_object_set_new(c, "rank_pattern", json_object());
    json_object_set_new(c, "alpha_pattern", json_object());
    char *text = json_dumps(c, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(c);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    write_text_atomic(path, text);
    free(text);
    (void)err, (void)errlen;
    return 0;
}

/* The module of an adapter tensor name and which half it is: 'A', 'B', or 0 when the name is no LoRA tensor. */
static int split_name(const char *name, char *module, size_t n) {
    const char *prefixes[] = {"base_model.model.", "transformer.", ""};
    for (int p = 0; p < 3; p++) {
        size_t lp = strlen(prefixes[p]);
        if (strncmp(name, prefixes[p], lp)) continue;
        const char *rest = name + lp;
        size_t lr = strlen(rest);
        const char *sfx[] = {".lora_A.weight", ".lora_B.weight"};
        for (int k = 0; k < 2; k++) {
            size_t ls = strlen(sfx[k]);
            if (lr > ls && !strcmp(rest + lr - ls, sfx[k]) && lr - ls < n) {
                memcpy(module, rest, lr - ls);
                module[lr - ls] = 0;
                return k ? 'B' : 'A';
            }
        }
    }
    return 0;
}

int lora_apply_peft(const char *path, const param_table *base, float *params, int *n_modules, char *err,
                    size_t errlen) {
    char file[4200], cfgpath[4200];
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        snprintf(file, sizeof file, "%s/adapter_model.safetensors", path);
        snprintf(cfgpath, sizeof cfgpath, "%s/adapter_config.json", path);
    } else {
        snprintf(file, sizeof file, "%s", path);
        const char *slash = strrchr(path, '/');
        int dl = slash ? (int)(slash - path) : 1;
        snprintf(cfgpath, sizeof cfgpath, "%.*s/adapter_config.json", dl, slash ? path : ".");
    }
    char *text = read_file_err(cfgpath, err, errlen);
    if (!text) return -1;
    json_error_t je;
    json_t *c = json_loads(text, 0, &je);
    free(text);
    if (!json_is_object(c)) {
        snprintf(err, errlen, "'%s': not a JSON object (%s, line %d)", cfgpath, je.text, je.line);
        json_decref(c);
        return -1;
    }
    json_t *jr = json_object_get(c, "r"), *ja = json_object_get(c, "lora_alpha");
    char pt_buf[64] = "";
    const char *pt = json_string_value(json_object_get(c, "peft_type"));
    if (pt) snprintf(pt_buf, sizeof pt_buf, "%s", pt);
    pt = pt ? pt_buf : NULL;
    int rs = json_is_true(json_object_get(c, "use_rslora")), dora = json_is_true(json_object_get(c, "use_dora"));
    json_t *rp = json_object_get(c, "rank_pattern"), *ap = json_object_get(c, "alpha_pattern");
    int r = json_is_integer(jr) ? (int)json_integer_value(jr) : 0;
    double alpha = json_is_number(ja) ? json_number_value(ja) : NAN;
    int bad_patterns = (rp && json_object_size(rp)) || (ap && json_object_size(ap));
    int fan = json_is_true(json_object_get(c, "fan_in_fan_out"));
    json_decref(c);
    if ((pt && strcmp(pt, "LORA")) || r < 1 || !isfinite(alpha) || dora || bad_patterns || fan) {
        snprintf(err, errlen,
                 "'%s': expected a LoRA adapter config with an integer r >= 1 and a numeric lora_alpha (peft_type %s, "
                 "r %d, lora_alpha %g)%s",
                 cfgpath, pt ? pt : "missing", r, alpha,
                 dora           ? "; DoRA (use_dora) is not supported"
                 : bad_patterns ? "; per-module rank_pattern / alpha_pattern are not supported"
                 : fan          ? "; fan_in_fan_out layouts are not supported"
                                : "");
        return -1;
    }
    float scale = rs ? (float)(alpha / sqrt((double)r)) : (float)(alpha / r);
    st_file *f = st_open(file, err, errlen);
    if (!f) return -1;
    int rc = -1, done = 0;
    char module[512], other[600], wname[600];
    float *A = NULL, *B = NULL;
    /* pass 0 checks every tensor, pass 1 changes the weights: a bad file leaves them untouched */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < f->n_tensors; i++) {
            const st_tensor *ta = &f->tensors[i];
            int half = split_name(ta->name, module, sizeof module);
            if (!half) {
                snprintf(err, errlen,
                         "'%s': tensor '%s' is not a LoRA weight (expected <module>.lora_A.weight / "
                         ".lora_B.weight; modules_to_save and bias adapters are not supported)",
                         file, ta->name);
                goto out;
            }
            if (half == 'B') { /* applied with its A; it must have one */
                size_t ln = strlen(ta->name);
                snprintf(other, sizeof other, "%.*sA.weight", (int)(ln - 8), ta->name);
                if (!st_find(f, other)) {
                    snprintf(err, errlen, "'%s': '%s' has no matching '%s'", file, ta->name, other);
                    goto out;
                }
                continue;
            }
            size_t ln = strlen(ta->name);
            snprintf(other, sizeof other, "%.*sB.weight", (int)(ln - 8), ta->name);
            const st_tensor *tb = st_find(f, other);
            if (!tb) {
                snprintf(err, errlen, "'%s': '%s' has no matching '%s'", file, ta->name, other);
                goto out;
            }
            snprintf(wname, sizeof wname, "%s.weight", module);
            const param_entry *e = param_table_find(base, wname);
            char m2[512];
            if (!e || !lora_is_linear(e, m2, sizeof m2)) {
                snprintf(err, errlen,
                         "'%s': adapter '%s' is for module '%s', which is not a linear layer of this model", file,
                         ta->name, module);
                goto out;
            }
            int out_ = (int)e->shape[0], in_ = (int)e->shape[1];
            if (ta->ndim != 2 || tb->ndim != 2 || ta->shape[0] != r || ta->shape[1] != in_ || tb->shape[0] != out_ ||
                tb->shape[1] != r) {
                snprintf(err, errlen,
                         "'%s': '%s' is [%lld, %lld] and its B [%lld, %lld]; module '%s' [%d, %d] at r = %d needs A "
                         "[%d, %d] "
                         "and B [%d, %d]",
                         file, ta->name, (long long)ta->shape[0], (long long)(ta->ndim > 1 ? ta->shape[1] : 0),
                         (long long)tb->shape[0], (long long)(tb->ndim > 1 ? tb->shape[1] : 0), module, out_, in_, r, r,
                         in_, out_, r);
                goto out;
            }
            if (pass == 0) continue;
            A = xrealloc(A, (size_t)r * in_ * sizeof(float));
            B = xrealloc(B, (size_t)out_ * r * sizeof(float));
            st_read_f32(f, ta, A);
            st_read_f32(f, tb, B);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out_, in_, r, scale, B, r, A, in_, 1.0f,
                        params + e->offset, in_);
            done++;
        }
    if (done == 0) {
        snprintf(err, errlen, "'%s' holds no LoRA tensors", file);
        goto out;
    }
    if (n_modules) *n_modules = done;
    rc = 0;
out:
    free(A), free(B);
    st_close(f);
    return rc;
}
