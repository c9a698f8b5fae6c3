/* DiT + objectives against the PyTorch reference (tests/ref/dit_ref.py, float64), plus config validation,
 * micro-batch invariance and determinism. */
#include "dfm/common.h"
#include "dfm/diffusion.h"
#include "dfm/dit.h"
#include "dfm/kernels.h"
#include "dfm/optim.h"
#include "dfm/safetensors.h"
#include "dfm/train.h"
#include "test.h"

#include <jansson.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define STEPS 20

static char tmpdir[256];

static dit_config tiny_config(int out_channels) {
    dit_config c;
    dit_config_named(&c, "tiny");
    c.num_layers = 2;
    c.hidden_size = 48;
    c.num_heads = 3; /* head dim 16 */
    c.ffn_hidden_size = 0;
    c.patch_size = 2;
    c.in_channels = 3;
    c.out_channels = out_channels;
    c.image_size = 10; /* 25 tokens: not a multiple of any block size */
    c.num_classes = 5;
    c.norm_eps = 1e-5f; /* differs from the other norms' 1e-6, so a swapped eps shows */
    return c;
}

/* Random parameters (not the zero adaLN init, which would make most gradients vanish). */
static void randomise(dit_model *m, float scale) {
    test_fill_randn(m->params, m->table.total, scale);
}

static void add_f32(st_writer *w, const char *name, const float *data, int ndim, const int64_t *shape) {
    st_writer_add(w, name, ST_F32, ndim, shape, data);
}

static json_t *objective_json(const objective_config *o) {
    return json_pack("{s:s, s:s, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:i, s:b, s:f, s:f, s:f, s:f, s:f}", "kind",
                     o->kind == OBJ_EDM ? "edm" : "flow", "sampling", timestep_sampling_name(o->sampling), "logit_mean",
                     (double)o->logit_mean, "logit_std", (double)o->logit_std, "flow_shift", (double)o->flow_shift,
                     "mix_uniform_ratio", (double)o->mix_uniform_ratio, "mode_scale", (double)o->mode_scale,
                     "sigma_min", (double)o->sigma_min, "sigma_max", (double)o->sigma_max, "num_train_timesteps",
                     o->num_train_timesteps, "use_loss_weighting", o->use_loss_weighting, "p_mean", (double)o->p_mean,
                     "p_std", (double)o->p_std, "sigma_data", (double)o->sigma_data, "edm_sigma_min",
                     (double)o->edm_sigma_min, "edm_sigma_max", (double)o->edm_sigma_max);
}

static int run_reference(const char *case_path) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/ref/dit_ref.py '%s'", case_path);
    fflush(stdout);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* One case: dfm computes output, loss, gradients and a short AdamW run; the reference recomputes all. */
static void reference_case(const char *label, const objective_config *obj, int out_channels, int B, int micro) {
    dit_config cfg = tiny_config(out_channels);
    dit_model m;
    dit_create(&m, &cfg, micro);
    randomise(&m, 0.15f);
    float *init = xalloc_floats(m.table.total);
    memcpy(init, m.params, m.table.total * sizeof(float));

    size_t in_n = (size_t)cfg.in_channels * cfg.image_size * cfg.image_size;
    size_t out_n = (size_t)m.cfg.out_channels * cfg.image_size * cfg.image_size;
    float *x0 = xalloc_floats((size_t)B * in_n);
    test_fill_randn(x0, (size_t)B * in_n, 1.0f);
    int labels[16];
    for (int b = 0; b < B; b++) labels[b] = (int)(test_uniform() * cfg.num_classes);
    uint64_t seed = (uint64_t)(test_uniform() * 1e9);

    adamw_config oc;
    adamw_config_defaults(&oc);
    oc.lr = 3e-3f;
    oc.weight_decay = 0.05f;
    oc.clip_grad = 1.0f;
    adamw_state opt;
    adamw_init(&opt, &m.table, &oc);
    dit_trainer tr;
    dit_trainer_init(&tr, &m, &opt, obj, seed);

    st_writer *w = st_writer_new();
    /* keep every buffer handed to the writer alive until st_writer_finish */
    float *keep[8 * STEPS + 8];
    int nkeep = 0;

    /* step 0 draws and the model output on them (full batch in one forward, for the comparison) */
    dit_model full;
    dit_create(&full, &cfg, B);
    memcpy(full.params, m.params, m.table.total * sizeof(float));
    diffusion_batch db;
    diffusion_batch_alloc(&db, B, in_n);
    float *out = keep[nkeep++] = xalloc_floats((size_t)B * out_n);
    diffusion_prepare(&db, obj, x0, labels, B, in_n, cfg.num_classes, seed, 0, 0);
    dit_forward(&full, out, db.model_in, db.timestep, db.labels, B);
    int64_t xs[4] = {B, cfg.in_channels, cfg.image_size, cfg.image_size};
    int64_t os[4] = {B, m.cfg.out_channels, cfg.image_size, cfg.image_size};
    int64_t bs[1] = {B}, one[1] = {1};
    add_f32(w, "out", out, 4, os);
    add_f32(w, "x0", x0, 4, xs);
    float *mi = keep[nkeep++] = xalloc_floats((size_t)B * in_n);
    memcpy(mi, db.model_in, (size_t)B * in_n * sizeof(float));
    add_f32(w, "step0.model_in", mi, 4, xs);
    float *ts = keep[nkeep++] = xalloc_floats((size_t)B);
    memcpy(ts, db.timestep, (size_t)B * sizeof(float));
    add_f32(w, "step0.timestep", ts, 1, bs);
    float *dn = keep[nkeep++] = xalloc_floats((size_t)B), *du = keep[nkeep++] = xalloc_floats((size_t)B);
    memcpy(dn, db.draw_normal, (size_t)B * sizeof(float));
    memcpy(du, db.draw_uniform, (size_t)B * sizeof(float));
    add_f32(w, "step0.draw_normal", dn, 1, bs);
    add_f32(w, "step0.draw_uniform", du, 1, bs);
    float *coin = keep[nkeep++] = xalloc_floats(1);
    coin[0] = db.batch_coin;
    add_f32(w, "step0.batch_coin", coin, 1, one);

    /* gradients of step 0 through the trainer (micro-batched), then STEPS AdamW steps */
    float *losses = keep[nkeep++] = xalloc_floats(STEPS);
    float *loss0 = keep[nkeep++] = xalloc_floats(1);
    float *grads0 = xalloc_floats(m.table.total);
    int32_t *lab_keep[STEPS];
    for (int k = 0; k < STEPS; k++) {
        /* record this step's draws for the reference (the trainer draws the same from the same keys) */
        diffusion_prepare(&db, obj, x0, labels, B, in_n, cfg.num_classes, seed, (uint32_t)k, 0);
        char name[64];
        float *nz = keep[nkeep++] = xalloc_floats((size_t)B * in_n);
        memcpy(nz, db.noise, (size_t)B * in_n * sizeof(float));
        snprintf(name, sizeof name, "step%d.noise", k);
        add_f32(w, name, nz, 4, xs);
        float *sg = keep[nkeep++] = xalloc_floats((size_t)B);
        memcpy(sg, db.sigma, (size_t)B * sizeof(float));
        snprintf(name, sizeof name, "step%d.sigma", k);
        add_f32(w, name, sg, 1, bs);
        lab_keep[k] = xcalloc((size_t)B, sizeof(int32_t));
        for (int b = 0; b < B; b++) lab_keep[k][b] = db.labels[b];
        snprintf(name, sizeof name, "step%d.labels", k);
        st_writer_add(w, name, ST_I32, 1, bs, lab_keep[k]);

        step_result r = dit_trainer_step(&tr, x0, labels, B, (uint32_t)k, oc.lr);
        if (k == 0) {
            memcpy(grads0, m.grads, m.table.total * sizeof(float));
            /* the step clipped the gradients in place; recompute unclipped ones for the comparison */
            dit_model g;
            dit_create(&g, &cfg, micro);
            memcpy(g.params, init, m.table.total * sizeof(float));
            dit_trainer tg;
            adamw_state og;
            adamw_init(&og, &g.table, &oc);
            dit_trainer_init(&tg, &g, &og, obj, seed);
            dit_zero_grad(&g);
            loss0[0] = (float)dit_trainer_grads(&tg, x0, labels, B, 0);
            memcpy(grads0, g.grads, m.table.total * sizeof(float));
            dit_trainer_free(&tg);
            adamw_free(&og);
            dit_free(&g);
        }
        losses[k] = (float)r.loss;
    }
    add_f32(w, "loss", loss0, 1, one);
    int64_t ls[1] = {STEPS};
    add_f32(w, "losses", losses, 1, ls);
    json_t *names = json_array();
    for (int i = 0; i < m.table.n; i++) {
        const param_entry *e = &m.table.e[i];
        char name[400];
        json_array_append_new(names, json_string(e->name));
        snprintf(name, sizeof name, "param.%s", e->name);
        add_f32(w, name, init + e->offset, e->ndim, e->shape);
        snprintf(name, sizeof name, "grad.%s", e->name);
        add_f32(w, name, grads0 + e->offset, e->ndim, e->shape);
    }
    json_t *jc = json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f}", "num_layers", cfg.num_layers, "hidden_size",
                           cfg.hidden_size, "num_heads", cfg.num_heads, "patch_size", cfg.patch_size, "out_channels",
                           m.cfg.out_channels, "image_size", cfg.image_size, "freq_dim", cfg.freq_dim, "num_classes",
                           cfg.num_classes, "norm_eps", (double)cfg.norm_eps);
    json_t *jo = objective_json(obj);
    json_t *jopt = json_pack("{s:f, s:f, s:f, s:f, s:f, s:f}", "lr", (double)oc.lr, "beta1", (double)oc.beta1, "beta2",
                             (double)oc.beta2, "eps", (double)oc.eps, "weight_decay", (double)oc.weight_decay, "clip",
                             (double)oc.clip_grad);
    char *s1 = json_dumps(jc, JSON_COMPACT), *s2 = json_dumps(jo, JSON_COMPACT), *s3 = json_dumps(jopt, JSON_COMPACT),
         *s4 = json_dumps(names, JSON_COMPACT);
    st_writer_meta(w, "config", s1);
    st_writer_meta(w, "objective", s2);
    st_writer_meta(w, "optimizer", s3);
    st_writer_meta(w, "param_names", s4);
    char steps[16];
    snprintf(steps, sizeof steps, "%d", STEPS);
    st_writer_meta(w, "steps", steps);
    char path[512];
    snprintf(path, sizeof path, "%s/%s.safetensors", tmpdir, label);
    st_writer_finish(w, path);
    printf("# case %s: B=%d micro=%d out_channels=%d, %zu parameters\n", label, B, micro, m.cfg.out_channels,
           m.table.total);
    int rc = run_reference(path);
    CHECK(rc == 0, "%s: PyTorch reference agrees (exit %d)", label, rc);
    if (!getenv("DFM_KEEP_CASES")) unlink(path);

    free(s1), free(s2), free(s3), free(s4);
    json_decref(jc), json_decref(jo), json_decref(jopt), json_decref(names);
    for (int i = 0; i < nkeep; i++) free(keep[i]);
    for (int k = 0; k < STEPS; k++) free(lab_keep[k]);
    free(grads0), free(init), free(x0);
    diffusion_batch_free(&db);
    dit_trainer_free(&tr);
    adamw_free(&opt);
    dit_free(&full);
    dit_free(&m);
}

/* Gradients must not depend on how the batch is split into micro-batches. */
static void microbatch_invariance(void) {
    dit_config cfg = tiny_config(0);
    objective_config obj;
    objective_defaults_flow(&obj, 1);
    int B = 6;
    size_t in_n = (size_t)cfg.in_channels * cfg.image_size * cfg.image_size;
    float *x0 = xalloc_floats((size_t)B * in_n);
    test_fill_randn(x0, (size_t)B * in_n, 1.0f);
    int labels[6] = {0, 1, 2, 3, 4, 0};
    float *ref = NULL;
    double ref_loss = 0;
    int splits[3] = {6, 4, 1};
    for (int s = 0; s < 3; s++) {
        dit_model m;
        dit_create(&m, &cfg, splits[s]);
        uint64_t saved = test_rng_state_;
        test_rng_state_ = 12345; /* same random parameters for every split */
        randomise(&m, 0.15f);
        test_rng_state_ = saved + 1; /* later cases draw fresh numbers again */
        adamw_config oc;
        adamw_config_defaults(&oc);
        adamw_state opt;
        adamw_init(&opt, &m.table, &oc);
        dit_trainer tr;
        dit_trainer_init(&tr, &m, &opt, &obj, 99);
        dit_zero_grad(&m);
        double loss = dit_trainer_grads(&tr, x0, labels, B, 7);
        if (!ref) {
            ref = xalloc_floats(m.table.total);
            memcpy(ref, m.grads, m.table.total * sizeof(float));
            ref_loss = loss;
        } else {
            double e = test_rel_err(m.grads, ref, m.table.total);
            CHECK(e < 1e-5 && fabs(loss - ref_loss) <= 1e-6 * fabs(ref_loss),
                  "micro-batches of %d vs %d: loss %.8f vs %.8f, grads max rel err %.2e", splits[s], splits[0], loss,
                  ref_loss, e);
        }
        dit_trainer_free(&tr);
        adamw_free(&opt);
        dit_free(&m);
    }
    free(ref);
    free(x0);
}

static void determinism(void) {
    dit_config cfg = tiny_config(0);
    objective_config obj;
    objective_defaults_edm(&obj);
    int B = 3;
    size_t in_n = (size_t)cfg.in_channels * cfg.image_size * cfg.image_size;
    float *x0 = xalloc_floats((size_t)B * in_n);
    test_fill_randn(x0, (size_t)B * in_n, 1.0f);
    int labels[3] = {1, 2, 3};
    float *first = NULL;
    int same = 1;
    for (int run = 0; run < 2; run++) {
        dit_model m;
        dit_create(&m, &cfg, B);
        dit_init(&m, 5);
        adamw_config oc;
        adamw_config_defaults(&oc);
        adamw_state opt;
        adamw_init(&opt, &m.table, &oc);
        dit_trainer tr;
        dit_trainer_init(&tr, &m, &opt, &obj, 5);
        for (int k = 0; k < 3; k++) dit_trainer_step(&tr, x0, labels, B, (uint32_t)k, 1e-3f);
        if (!first) {
            first = xalloc_floats(m.table.total);
            memcpy(first, m.params, m.table.total * sizeof(float));
        } else
            same = !memcmp(first, m.params, m.table.total * sizeof(float));
        dit_trainer_free(&tr);
        adamw_free(&opt);
        dit_free(&m);
    }
    CHECK(same, "two identical 3-step runs give bitwise identical parameters");
    free(first);
    free(x0);
}

/* The paper init: adaLN modulation and output layer zero, so the initial model predicts 0. */
static void paper_init(void) {
    dit_config cfg = tiny_config(0);
    dit_model m;
    dit_create(&m, &cfg, 2);
    dit_init(&m, 1);
    size_t in_n = (size_t)cfg.in_channels * cfg.image_size * cfg.image_size;
    float *x = xalloc_floats(2 * in_n), *out = xalloc_floats(2 * in_n);
    test_fill_randn(x, 2 * in_n, 1.0f);
    float t[2] = {10.0f, 700.0f};
    int labels[2] = {0, 5};
    dit_forward(&m, out, x, t, labels, 2);
    double mx = 0;
    for (size_t i = 0; i < 2 * in_n; i++) mx = fmax(mx, fabs(out[i]));
    const param_entry *e = param_table_find(&m.table, "transformer_blocks.1.attn1.to_k.weight");
    double wn = e ? global_norm(m.params + e->offset, e->numel) : 0;
    CHECK(mx == 0.0 && wn > 0, "paper init: zero output (max |out| = %g), xavier attention weights (norm %.3f)", mx,
          wn);
    free(x), free(out);
    dit_free(&m);
}

static void config_errors(void) {
    char err[512];
    dit_config c = tiny_config(0);
    c.num_heads = 5;
    CHECK(!dit_config_check(&c, err, sizeof err) && strstr(err, "not divisible by model.num_attention_heads"),
          "hidden 48 with 5 heads rejected: %s", err);
    c = tiny_config(0);
    c.patch_size = 3;
    CHECK(!dit_config_check(&c, err, sizeof err) && strstr(err, "does not divide model.image_size"),
          "patch 3 on image 10 rejected: %s", err);
    c = tiny_config(0);
    c.hidden_size = 42, c.num_heads = 3;
    CHECK(!dit_config_check(&c, err, sizeof err) && strstr(err, "divisible by 4"),
          "hidden 42 rejected for the 2-D position embedding: %s", err);
    c = tiny_config(0);
    c.out_channels = 2;
    CHECK(!dit_config_check(&c, err, sizeof err) && strstr(err, "out_channels"), "out_channels < in rejected: %s", err);
    c = tiny_config(0);
    c.num_layers = 0;
    CHECK(!dit_config_check(&c, err, sizeof err) && strstr(err, "num_layers"), "zero layers rejected: %s", err);
    const char *names[] = {"S/2", "B/2", "L/2", "XL/2"};
    const int widths[] = {384, 768, 1024, 1152};
    for (int i = 0; i < 4; i++) {
        dit_config_named(&c, names[i]);
        CHECK(dit_config_check(&c, err, sizeof err) && c.hidden_size == widths[i] && c.ffn_hidden_size == 4 * widths[i],
              "named config DiT-%s: %d layers x %d, %d heads", names[i], c.num_layers, c.hidden_size, c.num_heads);
    }
}

int main(void) {
    test_seed();
    kernels_init();
    snprintf(tmpdir, sizeof tmpdir, "/tmp/dfm_test_dit_XXXXXX");
    if (!mkdtemp(tmpdir)) dfm_die("mkdtemp failed");
    config_errors();
    paper_init();
    determinism();
    microbatch_invariance();

    objective_config o;
    objective_defaults_flow(&o, 0); /* uniform, shift 3 */
    o.cond_dropout_prob = 0.3f;
    reference_case("flow_uniform", &o, 0, 4, 4);
    objective_defaults_flow(&o, 1); /* logit_normal, shift 2.5 */
    reference_case("flow_logit_normal_microbatched", &o, 0, 4, 2);
    o.sampling = TS_MODE;
    o.use_loss_weighting = 0;
    reference_case("flow_mode_unweighted", &o, 0, 3, 3);
    o.sampling = TS_MIX;
    o.mix_uniform_ratio = 0.5f;
    o.use_loss_weighting = 1;
    reference_case("flow_mix", &o, 0, 3, 3);
    o.sampling = TS_LOGNORM;
    o.sigma_min = 0.05f, o.sigma_max = 0.9f;
    reference_case("flow_lognorm_clamped", &o, 0, 3, 3);
    objective_defaults_edm(&o);
    reference_case("edm_learned_sigma_channels", &o, 6, 4, 4);
    if (!getenv("DFM_KEEP_CASES")) rmdir(tmpdir);
    return test_finish();
}
