/* LoRA (include/dfm/lora.h): module selection, initialisation, adapter gradients against a PyTorch reference that
 * applies the adapters unmerged (tests/ref/lora_ref.py), PEFT's adapter files written and folded back, bad adapter
 * files refused; then dfm finetune with peft on a tiny diffusers Wan: the loss falls, the base weights stay
 * bit-identical, the adapter file has PEFT's names and shapes, resume and two ranks are bit-identical, and
 * generate / export read the LoRA checkpoint and the adapter folder alike. */
#include "dfm/checkpoint.h"
#include "dfm/common.h"
#include "dfm/diffusers.h"
#include "dfm/diffusion.h"
#include "dfm/dit.h"
#include "dfm/kernels.h"
#include "dfm/lora.h"
#include "dfm/safetensors.h"
#include "dfm/wan.h"
#include "test.h"
#include "test_fs.h"
#include "test_run.h"

#include <jansson.h>
#include <math.h>
#include <string.h>

static char *dir;
static const char *bin;

static void patterns(void) {
    struct {
        const char *p, *m;
        int want;
    } c[] = {{"to_q", "blocks.0.attn1.to_q", 1},
             {"to_q", "blocks.0.attn1.to_qq", 0},
             {"*.to_q", "blocks.3.attn2.to_q", 1},
             {"blocks.1*.ffn.*", "blocks.12.ffn.net.2", 1},
             {"blocks.1*.ffn.*", "blocks.2.ffn.net.2", 0},
             {"attn1.to_out.0", "blocks.0.attn1.to_out.0", 1},
             {"proj_out", "proj_out", 1},
             {"q", "blocks.0.attn1.to_q", 0}};
    int ok = 1;
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++)
        if (lora_pattern_match(c[i].p, c[i].m) != c[i].want) {
            ok = 0;
            printf("# pattern '%s' on '%s': got %d\n", c[i].p, c[i].m, !c[i].want);
        }
    CHECK(ok, "module patterns: exact names, dotted suffixes (PEFT's list form) and globs");
}

static lora_spec spec_of(const char *const *t, int nt, int r, float alpha) {
    lora_spec s = {r, alpha, 0.0f, 0, t, nt, NULL, 0, 0};
    return s;
}

/* selection, initialisation, merge of a fresh adapter, and the error messages */
static void selection(void) {
    wan_config c;
    wan_config_named(&c, "wan_tiny");
    wan_model m;
    wan_create_weights_only(&m, &c);
    wan_init(&m, 7);
    const char *t[] = {"to_q", "*.attn2.to_k", "ffn.net.0.proj"};
    const char *ex[] = {"blocks.0.*"};
    lora_spec s = spec_of(t, 3, 4, 8);
    s.excludes = ex, s.n_excludes = 1;
    lora_model L;
    char err[2048];
    int rc = lora_create(&L, &m.table, m.params, &s, 11, err, sizeof err);
    /* wan_tiny has 2 blocks: block 1's attn1.to_q, attn2.to_q, attn2.to_k, ffn.net.0.proj */
    int ok = rc == 0 && L.n == 4 && L.table.n == 8;
    for (int k = 0; ok && k < L.n; k++) ok = !strncmp(L.t[k].module, "blocks.1.", 9);
    CHECK(ok, "targets [to_q, *.attn2.to_k, ffn.net.0.proj] minus blocks.0.*: %d modules (want 4)", rc ? -1 : L.n);
    if (rc) return;
    const param_entry *a = param_table_find(&L.table, "blocks.1.ffn.net.0.proj.lora_A.weight");
    const param_entry *b = param_table_find(&L.table, "blocks.1.ffn.net.0.proj.lora_B.weight");
    CHECK(a && b && a->shape[0] == 4 && a->shape[1] == c.num_heads * c.head_dim && b->shape[0] == c.ffn_dim &&
              b->shape[1] == 4,
          "adapter shapes: A [r, in], B [out, r] under '<module>.lora_A.weight' names");
    float bound = 1.0f / sqrtf((float)(c.num_heads * c.head_dim)), amax = 0, bmax = 0;
    for (size_t i = 0; i < a->numel; i++) amax = fmaxf(amax, fabsf(L.params[a->offset + i]));
    for (size_t i = 0; i < b->numel; i++) bmax = fmaxf(bmax, fabsf(L.params[b->offset + i]));
    CHECK(amax > 0.5f * bound && amax <= bound && bmax == 0,
          "initialisation: A uniform within 1/sqrt(in) (max %.4f of %.4f), B zero", (double)amax, (double)bound);
    CHECK(fabsf(L.scale - 2.0f) < 1e-7f, "scale alpha / r = %g", (double)L.scale);
    float *copy = xalloc_floats(m.table.total);
    memcpy(copy, m.params, m.table.total * sizeof(float));
    lora_merge(&L, NULL, m.params);
    CHECK(!memcmp(copy, m.params, m.table.total * sizeof(float)),
          "a fresh adapter (B = 0) leaves the weights unchanged");
    free(copy);
    lora_free(&L);

    const char *none[] = {"to_x"};
    s = spec_of(none, 1, 4, 8);
    rc = lora_create(&L, &m.table, m.params, &s, 1, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "'to_x'") && strstr(err, "blocks.0.attn1.to_q"),
          "a pattern that matches nothing is an error naming it and the model's modules: %.160s", err);
    s = spec_of(t, 3, 4, 8);
    s.dropout = 0.1f;
    rc = lora_create(&L, &m.table, m.params, &s, 1, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "peft.dropout"), "dropout > 0 is refused: %.120s", err);
    s = spec_of(t, 3, 0, 8);
    rc = lora_create(&L, &m.table, m.params, &s, 1, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "rank"), "rank 0 is refused");
    const char *emb[] = {"*embedding_table*", "scale_shift_table", "norm_q"};
    s = spec_of(emb, 3, 4, 8);
    rc = lora_create(&L, &m.table, m.params, &s, 1, err, sizeof err);
    CHECK(rc != 0, "tensors that are not linear weights cannot be adapted");
    if (rc == 0) lora_free(&L);
    wan_free(&m);
}

/* The worst per-tensor difference between two sets of adapter gradients, relative to the tensor's largest. */
static double fast_vs_merged(const lora_model *L, const float *fast, const float *merged) {
    double worst = 0;
    for (int i = 0; i < L->table.n; i++) {
        const param_entry *e = &L->table.e[i];
        double big = 0, diff = 0;
        for (size_t k = 0; k < e->numel; k++) {
            big = fmax(big, fabs(merged[e->offset + k]));
            diff = fmax(diff, fabs((double)fast[e->offset + k] - merged[e->offset + k]));
        }
        worst = fmax(worst, big > 0 ? diff / big : diff);
    }
    return worst;
}

/* DiT: the fast backward (a fused q/k/v product with q and v adapted, k not; column- and row-parallel shapes, the
 * adaLN and embedder linears) against the merged-weight backward, micro-batches accumulated */
static void dit_fast_backward(void) {
    dit_config c;
    dit_config_named(&c, "tiny");
    c.num_layers = 2, c.hidden_size = 48, c.num_heads = 3, c.patch_size = 2, c.in_channels = 3, c.out_channels = 6;
    c.image_size = 10, c.num_classes = 5;
    dit_model m;
    enum { B = 3 };
    dit_create(&m, &c, B);
    test_fill_randn(m.params, m.table.total, 0.2f);
    const char *t[] = {"to_q",     "to_v",         "to_out.0",   "ff.net.0.proj",
                       "ff.net.2", "norm1.linear", "proj_out_2", "linear_1"};
    lora_spec s = spec_of(t, 8, 4, 8);
    lora_model L;
    char err[1024];
    if (lora_create(&L, &m.table, m.params, &s, 9, err, sizeof err) != 0) {
        CHECK(0, "lora_create: %s", err);
        dit_free(&m);
        return;
    }
    test_fill_randn(L.params, L.table.total, 0.3f);
    lora_merge(&L, NULL, m.params);
    size_t in_n = (size_t)c.in_channels * c.image_size * c.image_size;
    size_t out_n = (size_t)c.out_channels * c.image_size * c.image_size;
    float *x = xalloc_floats(2 * B * in_n), *out = xalloc_floats(B * out_n), *dout = xalloc_floats(2 * B * out_n),
          tt[2 * B];
    int labels[2 * B];
    test_fill_randn(x, 2 * B * in_n, 1.0f);
    test_fill_randn(dout, 2 * B * out_n, 1.0f);
    for (int i = 0; i < 2 * B; i++) tt[i] = 100.0f * (float)(i + 1), labels[i] = i % (c.num_classes + 1);
    float *g[2];
    size_t written = 0;
    for (int merged = 1; merged >= 0; merged--) { /* two micro-batches each */
        L.merged_backward = merged;
        memset(L.grads, 0, L.table.total * sizeof(float));
        memset(m.grads, 0, m.table.total * sizeof(float));
        for (int k = 0; k < 2; k++) {
            dit_forward(&m, out, x + (size_t)k * B * in_n, tt + k * B, labels + k * B, B);
            lora_micro_backward_begin(&L, NULL, m.grads, 0, m.table.total);
            dit_backward(&m, dout + (size_t)k * B * out_n, B);
            lora_micro_backward_end(&L);
        }
        g[merged] = xalloc_floats(L.table.total);
        memcpy(g[merged], L.grads, L.table.total * sizeof(float));
        if (!merged)
            for (size_t i = 0; i < m.table.total; i++) written += m.grads[i] != 0.0f;
    }
    double w = fast_vs_merged(&L, g[0], g[1]), nz = 0;
    for (size_t i = 0; i < L.table.total; i++) nz += g[0][i] != 0.0f;
    printf("# DiT: fast vs merged backward: worst adapter gradient difference %.3g (relative)\n", w);
    CHECK(w <= 1e-5 && nz > 0.9 * L.table.total && written == 0,
          "DiT: the fast LoRA backward (%d modules, q and v of the fused q/k/v, 2 micro-batches) = the merged-weight "
          "backward within 1e-5 (%.3g); no frozen weight gradient written (%zu nonzero)",
          L.n, w, written);
    free(g[0]), free(g[1]), free(x), free(out), free(dout);
    lora_free(&L);
    dit_free(&m);
}

/* dfm's adapter gradients (merged weights + chain rule, and the fast backward) against PyTorch with the adapters
 * unmerged */
static void gradients(void) {
    wan_config c;
    wan_config_named(&c, "wan_tiny");
    wan_shape sh = {2, 2, 4, 4, 5};
    wan_model m;
    wan_create(&m, &c, &sh);
    test_fill_randn(m.params, m.table.total, 0.2f);
    for (int i = 0; i < m.table.n; i++)
        if (strstr(m.table.e[i].name, "norm") && strstr(m.table.e[i].name, ".weight"))
            for (size_t k = 0; k < m.table.e[i].numel; k++) m.params[m.table.e[i].offset + k] += 1.0f;
    const char *t[] = {"to_q", "to_v", "attn2.to_k", "to_out.0", "ffn.net.2", "proj_out", "time_embedder.linear_1"};
    lora_spec s = spec_of(t, 7, 3, 6);
    lora_model L;
    char err[1024];
    if (lora_create(&L, &m.table, m.params, &s, 5, err, sizeof err) != 0) {
        CHECK(0, "lora_create: %s", err);
        wan_free(&m);
        return;
    }
    test_fill_randn(L.params, L.table.total, 0.3f); /* B != 0, so both gradients are non-trivial */
    float *base = xalloc_floats(m.table.total);
    memcpy(base, m.params, m.table.total * sizeof(float));

    const int B = sh.batch;
    size_t per = (size_t)c.in_channels * sh.frames * sh.height * sh.width, tn = (size_t)B * sh.text_len * c.text_dim;
    float *x0 = xalloc_floats(B * per), *text = xalloc_floats(tn), *out = xalloc_floats(B * per),
          *dout = xalloc_floats(B * per);
    test_fill_randn(x0, B * per, 1.0f);
    test_fill_randn(text, tn, 1.0f);
    objective_config o;
    objective_defaults_flow(&o, 0);
    o.cond_dropout_prob = 0.0f;
    diffusion_batch db;
    diffusion_batch_alloc(&db, B, per);
    int labels[2] = {0, 0};
    diffusion_prepare(&db, &o, x0, labels, B, per, 1, (uint64_t)(test_uniform() * 1e9), 0, 0);
    lora_merge(&L, NULL, m.params);
    wan_zero_grad(&m);
    wan_forward(&m, out, db.model_in, db.timestep, text, NULL, &sh);
    float loss = (float)diffusion_loss(&db, out, dout, per, 1.0f);
    wan_backward(&m, dout);
    memset(L.grads, 0, L.table.total * sizeof(float));
    lora_backward(&L, NULL, m.grads, L.grads);
    /* the merged-weight backward's gradients (peft.merged_backward), then the fast backward's on the same forward */
    float *gmerged = xalloc_floats(L.table.total);
    memcpy(gmerged, L.grads, L.table.total * sizeof(float));
    wan_forward(&m, out, db.model_in, db.timestep, text, NULL, &sh);
    memset(m.grads, 0, m.table.total * sizeof(float));
    memset(L.grads, 0, L.table.total * sizeof(float));
    lora_micro_backward_begin(&L, NULL, m.grads, 0, m.table.total);
    wan_backward(&m, dout);
    lora_micro_backward_end(&L);
    size_t written = 0;
    for (size_t i = 0; i < m.table.total; i++) written += m.grads[i] != 0.0f;
    double fw = fast_vs_merged(&L, L.grads, gmerged);
    printf("# Wan: fast vs merged backward: worst adapter gradient difference %.3g (relative)\n", fw);
    CHECK(fw <= 1e-5 && written == 0,
          "Wan: the fast LoRA backward's adapter gradients = the merged-weight backward's within 1e-5 (%.3g); no "
          "frozen weight gradient written (%zu nonzero of %zu)",
          fw, written, m.table.total);

    st_writer *w = st_writer_new();
    int64_t xs[5] = {B, c.in_channels, sh.frames, sh.height, sh.width}, ts[3] = {B, sh.text_len, c.text_dim};
    int64_t bs[1] = {B}, one[1] = {1};
    st_writer_add(w, "x0", ST_F32, 5, xs, x0);
    st_writer_add(w, "text", ST_F32, 3, ts, text);
    st_writer_add(w, "noise", ST_F32, 5, xs, db.noise);
    st_writer_add(w, "sigma", ST_F32, 1, bs, db.sigma);
    st_writer_add(w, "loss", ST_F32, 1, one, &loss);
    char name[128][300];
    int nn = 0;
    for (int i = 0; i < m.table.n; i++) {
        const param_entry *e = &m.table.e[i];
        static char keep[400][300];
        snprintf(keep[i], sizeof keep[i], "param.%s", e->name);
        st_writer_add(w, keep[i], ST_F32, e->ndim, e->shape, base + e->offset);
    }
    for (int i = 0; i < L.table.n && nn < 125; i++) {
        const param_entry *e = &L.table.e[i];
        snprintf(name[nn], sizeof name[nn], "lora.%s", e->name);
        st_writer_add(w, name[nn++], ST_F32, e->ndim, e->shape, L.params + e->offset);
        snprintf(name[nn], sizeof name[nn], "grad.%s", e->name);
        st_writer_add(w, name[nn++], ST_F32, e->ndim, e->shape, L.grads + e->offset);
        snprintf(name[nn], sizeof name[nn], "grad_merged.%s", e->name);
        st_writer_add(w, name[nn++], ST_F32, e->ndim, e->shape, gmerged + e->offset);
    }
    json_t *mods = json_array();
    for (int k = 0; k < L.n; k++) json_array_append_new(mods, json_string(L.t[k].module));
    char *sm = json_dumps(mods, JSON_COMPACT), *sc = wan_config_to_json(&c), scale[32];
    json_t *jo = json_pack("{s:i, s:f, s:b}", "num_train_timesteps", o.num_train_timesteps, "flow_shift",
                           (double)o.flow_shift, "use_loss_weighting", o.use_loss_weighting);
    char *so = json_dumps(jo, JSON_COMPACT);
    snprintf(scale, sizeof scale, "%.9g", (double)L.scale);
    st_writer_meta(w, "config", sc);
    st_writer_meta(w, "objective", so);
    st_writer_meta(w, "modules", sm);
    st_writer_meta(w, "scale", scale);
    const char *path = test_path("%s/lora_case.safetensors", dir);
    st_writer_finish(w, path);
    fflush(stdout);
    int rc = test_sh("cd tests/ref && /usr/bin/python3 lora_ref.py '%s'", path);
    CHECK(rc == 0,
          "LoRA on %d modules (to_q, to_v, attn2.to_k, to_out.0, ffn.net.2, proj_out, time embedder): loss "
          "and every adapter gradient, of the fast and of the merged backward, match PyTorch with unmerged adapters "
          "(exit %d)",
          L.n, rc);
    free(gmerged);
    free(sm), free(sc), free(so);
    json_decref(mods), json_decref(jo);

    /* PEFT files: written, then folded into the base weights = the merged weights, bit for bit */
    const char *ad = test_path("%s/adapter", dir);
    rc = lora_save_peft(&L, NULL, ad, "some/base", err, sizeof err);
    float *folded = xalloc_floats(m.table.total);
    memcpy(folded, base, m.table.total * sizeof(float));
    int nm = 0;
    rc |= lora_apply_peft(ad, &m.table, folded, &nm, err, sizeof err);
    CHECK(
        rc == 0 && nm == L.n && !memcmp(folded, m.params, m.table.total * sizeof(float)),
        "adapter_model.safetensors + adapter_config.json fold back into the weights dfm trained with (%d modules)%s%s",
        nm, rc ? ": " : "", rc ? err : "");
    st_file *f = st_open(test_path("%s/adapter_model.safetensors", ad), err, sizeof err);
    const st_tensor *ta = f ? st_find(f, "base_model.model.blocks.0.attn1.to_q.lora_A.weight") : NULL;
    const st_tensor *tb = f ? st_find(f, "base_model.model.proj_out.lora_B.weight") : NULL;
    CHECK(ta && tb && ta->shape[0] == 3 && ta->shape[1] == c.num_heads * c.head_dim && tb->shape[1] == 3 &&
              f->n_tensors == 2 * L.n,
          "PEFT's tensor names and shapes (base_model.model.<module>.lora_A.weight [r, in], lora_B [out, r])");
    if (f) st_close(f);
    char *cfgtext = test_read_file(test_path("%s/adapter_config.json", ad), NULL);
    json_t *cj = cfgtext ? json_loads(cfgtext, 0, NULL) : NULL;
    CHECK(cj && !strcmp(json_string_value(json_object_get(cj, "peft_type")), "LORA") &&
              json_integer_value(json_object_get(cj, "r")) == 3 &&
              json_number_value(json_object_get(cj, "lora_alpha")) == 6.0 &&
              json_array_size(json_object_get(cj, "target_modules")) == (size_t)L.n,
          "adapter_config.json: peft_type LORA, r, lora_alpha, target_modules");
    json_decref(cj);
    free(cfgtext);

    /* bad adapter files: refused with the file and tensor named, the weights untouched */
    memcpy(folded, base, m.table.total * sizeof(float));
    st_writer *bw = st_writer_new();
    int64_t as[2] = {3, 7}, bsh[2] = {c.num_heads * c.head_dim, 3};
    float junk[64 * 7] = {0};
    st_writer_add(bw, "base_model.model.blocks.0.attn1.to_q.lora_A.weight", ST_F32, 2, as, junk);
    st_writer_add(bw, "base_model.model.blocks.0.attn1.to_q.lora_B.weight", ST_F32, 2, bsh, junk);
    st_writer_finish(bw, test_path("%s/adapter_model.safetensors", ad));
    rc = lora_apply_peft(ad, &m.table, folded, NULL, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "blocks.0.attn1.to_q.lora_A.weight") && strstr(err, "[3, 7]") &&
              !memcmp(folded, base, m.table.total * sizeof(float)),
          "an adapter of the wrong shape is refused, naming it, weights untouched: %.160s", err);
    bw = st_writer_new();
    int64_t a2[2] = {3, c.num_heads * c.head_dim};
    st_writer_add(bw, "base_model.model.blocks.0.attn1.to_q.lora_A.weight", ST_F32, 2, a2, junk);
    st_writer_finish(bw, test_path("%s/adapter_model.safetensors", ad));
    rc = lora_apply_peft(ad, &m.table, folded, NULL, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "lora_B.weight"), "an A without its B is refused: %.160s", err);
    bw = st_writer_new();
    int64_t n1[2] = {3, c.num_heads * c.head_dim};
    st_writer_add(bw, "base_model.model.blocks.0.norm2.lora_A.weight", ST_F32, 2, n1, junk);
    st_writer_add(bw, "base_model.model.blocks.0.norm2.lora_B.weight", ST_F32, 2, n1, junk);
    st_writer_finish(bw, test_path("%s/adapter_model.safetensors", ad));
    rc = lora_apply_peft(ad, &m.table, folded, NULL, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "blocks.0.norm2"),
          "an adapter for a module that is no linear layer is refused: %.160s", err);

    free(folded), free(base), free(x0), free(text), free(out), free(dout);
    diffusion_batch_free(&db);
    lora_free(&L);
    wan_free(&m);
}

/* dfm finetune with peft on the tiny diffusers Wan */
static int finetune(const char *launcher, const char *run, const char *extra) {
    return test_sh(
        "%s %s finetune -c recipes/automodel/wan_tiny_finetune.yaml --model.pretrained_model_name_or_path=%s/hf "
        "--data.dataloader.meta_folder=%s/st --checkpoint.checkpoint_dir=%s/%s --optimizer.lr=1e-2 "
        "--lr_scheduler.lr_decay_steps=16 --step_scheduler.global_batch_size=4 "
        "--step_scheduler.local_batch_size=2 --peft.target_modules=\"['to_q', 'to_k', 'to_v', 'to_out.0', "
        "'*.ffn.*']\" --peft.dim=4 --peft.alpha=8 %s > %s/%s.log 2>&1",
        launcher, bin, dir, dir, dir, run, extra, dir, run);
}

static void end_to_end(void) {
    int rc = test_tiny_wan_fixture(dir, bin);
    rc |= test_sh("cp -r %s/hf %s/hf_copy", dir, dir);
    CHECK(rc == 0, "fixtures: safetensors samples and a tiny Wan diffusers folder");

    rc = finetune("", "lora", "--step_scheduler.max_steps=16 --step_scheduler.ckpt_every_steps=8");
    double full[20] = {0};
    int n = test_run_losses(test_path("%s/lora", dir), full, 19);
    double first = (full[1] + full[2] + full[3] + full[4]) / 4, last = (full[13] + full[14] + full[15] + full[16]) / 4;
    CHECK(rc == 0 && n == 16 && last < first, "LoRA fine-tuning: 16 steps, loss %.3f (steps 1-4) -> %.3f (13-16)",
          first, last);
    char *log = test_read_file(test_path("%s/lora.log", dir), NULL);
    CHECK(log && strstr(log, "LoRA: r 4, alpha 8") && strstr(log, "on 20 linear layers"),
          "the log states the adapters (r 4, alpha 8, 20 linear layers: 2 blocks x (2 x (q, k, v, out) + ffn x2))");
    free(log);
    CHECK(test_sh("diff -r %s/hf %s/hf_copy > /dev/null", dir, dir) == 0, "the pretrained folder is left as it was");

    /* the adapter folder: PEFT's names; the merged export: every base tensor bit-identical except the adapted
     * ones, which are base + scale B A */
    const char *ck = test_path("%s/lora/LATEST", dir);
    st_file *f = st_open(test_path("%s/model/adapter_model.safetensors", ck), NULL, 0);
    const st_tensor *ta = f ? st_find(f, "base_model.model.blocks.1.ffn.net.2.lora_A.weight") : NULL;
    CHECK(f && ta && ta->shape[0] == 4 && ta->shape[1] == 64 && f->n_tensors == 40,
          "the checkpoint's adapter/ holds PEFT's names and shapes (40 tensors; ffn.net.2 A [4, 64])");
    if (f) st_close(f);
    rc = test_sh("cd %s && %s export --checkpoint lora/LATEST --weights model --out merged > x1.log 2>&1", dir, bin);
    wan_model mb, mm;
    char err[1024];
    int ok = rc == 0 && wan_import_diffusers(&mb, test_path("%s/hf", dir), NULL, err, sizeof err) == 0;
    ok = ok && wan_import_diffusers(&mm, test_path("%s/merged/transformer", dir), NULL, err, sizeof err) == 0;
    int same = 0, changed = 0, other = 0;
    if (ok) {
        for (int i = 0; i < mb.table.n; i++) {
            const param_entry *e = &mb.table.e[i];
            int eq = !memcmp(mb.params + e->offset, mm.params + e->offset, e->numel * sizeof(float));
            int adapted = strstr(e->name, ".weight") && (strstr(e->name, "attn") || strstr(e->name, "ffn")) &&
                          !strstr(e->name, "norm");
            if (eq && !adapted)
                same++;
            else if (!eq && adapted)
                changed++;
            else
                other++;
        }
        wan_free(&mb), wan_free(&mm);
    }
    wan_model mc;
    int cons_same =
        ok && wan_import_diffusers(&mm, test_path("%s/merged/transformer", dir), NULL, err, sizeof err) == 0;
    if (cons_same) {
        cons_same = wan_import_diffusers(&mc, test_path("%s/model/consolidated", ck), NULL, err, sizeof err) == 0;
        if (cons_same) {
            cons_same =
                mc.table.total == mm.table.total && !memcmp(mc.params, mm.params, mm.table.total * sizeof(float));
            wan_free(&mc);
        }
        wan_free(&mm);
    }
    CHECK(cons_same, "save_consolidated: final writes the merged model (base + adapters) as a diffusers folder");
    CHECK(ok && other == 0 && changed == 20,
          "the merged export: %d base tensors bit-identical, %d adapted weights changed, %d otherwise (want 0)", same,
          changed, other);

    /* the base as a dfm checkpoint (hf is its EMA, exported) + --merge-lora of the adapter folder = the LoRA
     * checkpoint's merged export, bit for bit; generate reads the LoRA checkpoint, and a base with --adapter */
    rc = test_sh("cd %s && %s export --checkpoint base/ck --merge-lora lora/LATEST/model --out e2 > e2.log 2>&1 "
                 "&& cmp -s e2/transformer/diffusion_pytorch_model.safetensors "
                 "merged/transformer/diffusion_pytorch_model.safetensors",
                 dir, bin);
    CHECK(rc == 0,
          "export --merge-lora of the adapter folder over the base = the LoRA checkpoint's export, bit for bit");
    char *sm = ckpt_meta(ck, "dfm_wan_sample");
    json_t *sj = sm ? json_loads(sm, 0, NULL) : NULL;
    int L = (int)json_integer_value(json_object_get(sj, "text_len"));
    json_decref(sj);
    free(sm);
    float *emb = xalloc_floats((size_t)(L > 0 ? L : 1) * 32);
    test_fill_randn(emb, (size_t)(L > 0 ? L : 1) * 32, 1.0f);
    int64_t es[3] = {1, L, 32};
    st_writer *w = st_writer_new();
    st_writer_add(w, "text_embeddings", ST_F32, 3, es, emb);
    st_writer_finish(w, test_path("%s/emb.safetensors", dir));
    free(emb);
    rc = test_sh("cd %s && %s generate --checkpoint lora/LATEST --text-embeddings emb.safetensors --per-prompt 1 "
                 "--steps 3 --out g1 > g1.log 2>&1 && %s generate --checkpoint base/ck --adapter "
                 "lora/LATEST/model --prompt 'a bag moving left' --per-prompt 1 --steps 3 --out g2 > g2.log 2>&1 "
                 "&& grep -q 'merged into 20 linear layers' g2.log",
                 dir, bin, bin);
    CHECK(rc == 0 && L > 0,
          "dfm generate reads the LoRA checkpoint, and applies an adapter folder to a base (--adapter)");

    /* resume at 8 continues bit-identically; two ranks (adapters sharded) equal one process */
    rc = finetune("", "part", "--step_scheduler.max_steps=8 --step_scheduler.ckpt_every_steps=8");
    rc |= finetune("", "part", "--step_scheduler.max_steps=16 --step_scheduler.ckpt_every_steps=8");
    double part[20] = {0};
    test_run_losses(test_path("%s/part", dir), part, 19);
    double worst = 0;
    for (int s = 1; s <= 16; s++) worst = fmax(worst, fabs(part[s] - full[s]));
    rc |= test_sh("cmp -s %s/part/LATEST/model/adapter_model.safetensors "
                  "%s/lora/LATEST/model/adapter_model.safetensors",
                  dir, dir);
    CHECK(rc == 0 && worst == 0, "LoRA resume at step 8: losses (worst %.3g) and adapters bit-identical", worst);
    rc = finetune("mpirun --oversubscribe -np 2", "dp2",
                  "--step_scheduler.max_steps=16 --step_scheduler.ckpt_every_steps=8");
    double dp2[20] = {0};
    test_run_losses(test_path("%s/dp2", dir), dp2, 19);
    worst = 0;
    for (int s = 1; s <= 16; s++) worst = fmax(worst, fabs(dp2[s] - full[s]));
    rc |= test_sh("cmp -s %s/dp2/LATEST/model/adapter_model.safetensors "
                  "%s/lora/LATEST/model/adapter_model.safetensors",
                  dir, dir);
    CHECK(rc == 0 && worst == 0,
          "LoRA on 2 ranks (FSDP over the adapters) = one process: losses (worst %.3g), adapters", worst);
}

/* The Megatron paradigm: dfm pretrain with peft.* over a DiT checkpoint; two ranks equal one process; generate and
 * export read the LoRA checkpoint. */
static void megatron_dit(void) {
    const char *tiny = "model.num_layers=2 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=128 "
                       "model.patch_size=7 train.global_batch_size=8 train.micro_batch_size=4 train.eval_interval=4 "
                       "train.eval_iters=1 dataset.val_samples=16 dataset.num_workers=1 logger.log_interval=1 "
                       "optimizer.lr=3e-3 scheduler.lr_warmup_iters=0";
    int rc = test_sh("cd %s && %s pretrain %s train.train_iters=2 logger.output_dir=dbase checkpoint.save=dbase/ck "
                     "> dbase.log 2>&1",
                     dir, bin, tiny);
    const char *lora = "peft.target_modules=\"['attn1.to_q', 'norm1.linear', '*.ff.net.*']\" peft.dim=2 peft.alpha=4 "
                       "checkpoint.pretrained_checkpoint=dbase/ck train.train_iters=6";
    rc |= test_sh("cd %s && %s pretrain %s %s logger.output_dir=dl checkpoint.save=dl/ck > dl.log 2>&1", dir, bin, tiny,
                  lora);
    rc |= test_sh(
        "cd %s && mpirun --oversubscribe -np 2 %s pretrain %s %s ddp.data_parallel_sharding_strategy=optim_grads "
        "logger.output_dir=dl2 checkpoint.save=dl2/ck > dl2.log 2>&1",
        dir, bin, tiny, lora);
    double a[8] = {0}, b[8] = {0};
    int n = test_run_losses(test_path("%s/dl", dir), a, 7);
    test_run_losses(test_path("%s/dl2", dir), b, 7);
    double worst = 0;
    for (int k = 1; k <= 6; k++) worst = fmax(worst, fabs(a[k] - b[k]));
    char *log = test_read_file(test_path("%s/dl.log", dir), NULL);
    CHECK(rc == 0 && n == 6 && worst == 0 && log && strstr(log, "on 8 linear layers"),
          "Megatron paradigm: DiT LoRA (peft.* keys, 8 layers) trains; 2 ranks (optim_grads) = 1 process (worst %.3g)",
          worst);
    free(log);
    rc = test_sh("cd %s && %s generate --checkpoint dl/ck --classes 0,1 --per-class 1 --steps 3 --out dg > dg.log 2>&1 "
                 "&& %s export --checkpoint dl2/ck --out dx > dx.log 2>&1",
                 dir, bin, bin);
    CHECK(rc == 0, "dfm generate and dfm export read DiT LoRA checkpoints (consolidated and sharded)");
    rc = test_sh("cd %s && %s pretrain %s peft.target_modules=\"['to_q']\" train.train_iters=1 logger.output_dir=dn "
                 "> dn.log 2>&1",
                 dir, bin, tiny);
    log = test_read_file(test_path("%s/dn.log", dir), NULL);
    CHECK(rc != 0 && log && strstr(log, "checkpoint.pretrained_checkpoint"),
          "LoRA without pretrained weights is refused, naming checkpoint.pretrained_checkpoint");
    free(log);
}

int main(void) {
    static char abs_bin[2048], cwd[800];
    snprintf(abs_bin, sizeof abs_bin, "%s/%s", getcwd(cwd, sizeof cwd) ? cwd : ".", test_dfm_bin());
    bin = abs_bin;
    dir = test_mkdtemp();
    test_mpi_env();
    kernels_init();
    test_seed();
    patterns();
    selection();
    gradients();
    dit_fast_backward();
    end_to_end();
    megatron_dit();
    if (!getenv("DFM_KEEP_CASES")) test_rmtree(dir);
    free(dir);
    return test_finish();
}
