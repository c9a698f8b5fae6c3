/* Generation, export and plots: samplers against hand-computed steps and closed forms, determinism, the
 * `dfm generate` / `dfm export` commands end to end (files, manifest, grid, errors), the diffusers export ->
 * import round trip, a PyTorch forward on the exported folder, and the loss-curve plot. */
#include "dfm/codec.h"
#include "dfm/common.h"
#include "dfm/diffusers.h"
#include "dfm/dit.h"
#include "dfm/kernels.h"
#include "dfm/plot.h"
#include "dfm/safetensors.h"
#include "dfm/sample.h"
#include "test.h"
#include "test_fs.h"

#include <jansson.h>
#include <string.h>
#include <sys/wait.h>

static char *tmp;

static dit_config tiny_config(void) {
    dit_config c;
    dit_config_named(&c, "tiny");
    c.num_layers = 2;
    c.hidden_size = 32;
    c.num_heads = 2;
    c.patch_size = 2;
    c.in_channels = 1;
    c.out_channels = 2; /* learned sigma: the samplers must use channel 0 only */
    c.image_size = 8;
    c.num_classes = 4;
    c.norm_eps = 1e-5f;
    return c;
}

static void make_model(dit_model *m, int max_batch, float scale) {
    dit_config c = tiny_config();
    dit_create(m, &c, max_batch);
    test_fill_randn(m->params, m->table.total, scale);
}

static size_t per_sample(const dit_model *m) {
    return (size_t)m->cfg.in_channels * m->cfg.image_size * m->cfg.image_size;
}

/* Max relative error of the first C channels of model output rows against x. */
static double max_diff(const float *a, const float *b, size_t n) {
    double d = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - (double)b[i]));
    return d;
}

/* One model forward at a single timestep, keeping the first in_channels channels: F [B, per]. */
static void forward_first(dit_model *m, float *F, const float *x, float t, const int *labels, int B) {
    size_t per = per_sample(m), out_per = (size_t)m->cfg.out_channels * m->cfg.image_size * m->cfg.image_size;
    float *out = xalloc_floats((size_t)B * out_per), *ts = xalloc_floats((size_t)B);
    for (int b = 0; b < B; b++) ts[b] = t;
    dit_forward(m, out, x, ts, labels, B);
    for (int b = 0; b < B; b++) memcpy(F + b * per, out + b * out_per, per * sizeof(float));
    free(out);
    free(ts);
}

static void test_schedules(void) {
    sampler_config s;
    sampler_defaults(&s, OBJ_FLOW_MATCHING);
    s.steps = 4;
    s.shift = 3.0f;
    double sig[5];
    sampler_sigmas(&s, sig);
    double u = 0.5, want = 3 * u / (1 + 2 * u);
    CHECK(sig[0] == 1.0 && sig[4] == 0.0 && fabs(sig[2] - want) < 1e-12,
          "flow schedule: shifted linspace, 1 -> 0 (mid %.6f, want %.6f)", sig[2], want);
    sampler_defaults(&s, OBJ_EDM);
    s.steps = 5;
    double e[6];
    sampler_sigmas(&s, e);
    int mono = 1;
    for (int i = 0; i < 5; i++) mono &= e[i] > e[i + 1];
    CHECK(fabs(e[0] - 80) < 1e-9 && fabs(e[4] / 0.002 - 1) < 1e-6 && e[5] == 0 && mono,
          "EDM schedule: Karras rho 7 from 80 to 0.002, then 0 (got %g .. %g, %g)", e[0], e[4], e[5]);
    CHECK(s.sampler == SAMPLER_HEUN && s.steps == 5, "EDM defaults to Heun");
}

static void test_samplers(void) {
    dit_model m;
    make_model(&m, 8, 0.15f);
    size_t per = per_sample(&m);
    int labels[6] = {0, 1, 2, 3, 1, 2};
    uint64_t seeds[6];
    for (int i = 0; i < 6; i++) seeds[i] = sample_seed(17, (uint32_t)i);
    float *a = xalloc_floats(6 * per), *b = xalloc_floats(6 * per);
    char err[512];

    /* determinism and seed dependence */
    sampler_config s;
    sampler_defaults(&s, OBJ_FLOW_MATCHING);
    s.steps = 4, s.guidance = 2.0f, s.shift = 2.0f;
    int rc = dit_sample(&m, &s, labels, seeds, 6, a, NULL, NULL, err, sizeof err);
    rc |= dit_sample(&m, &s, labels, seeds, 6, b, NULL, NULL, err, sizeof err);
    CHECK(rc == 0 && memcmp(a, b, 6 * per * sizeof(float)) == 0, "same seeds, classes and settings: bitwise equal");
    uint64_t seeds2[6];
    for (int i = 0; i < 6; i++) seeds2[i] = sample_seed(18000, (uint32_t)i);
    dit_sample(&m, &s, labels, seeds2, 6, b, NULL, NULL, err, sizeof err);
    CHECK(max_diff(a, b, per) > 1e-3, "a different seed gives a different sample (max diff %.3g)", max_diff(a, b, per));
    /* sample 4 of seed 17 alone is sample 0 of seed 21 (its manifest seed) */
    uint64_t one_seed = seeds[4];
    dit_sample(&m, &s, &labels[4], &one_seed, 1, b, NULL, NULL, err, sizeof err);
    CHECK(max_diff(a + 4 * per, b, per) < 1e-5, "a sample regenerated alone from its seed matches (max diff %.3g)",
          max_diff(a + 4 * per, b, per));

    /* Euler, 1 step: x = noise + (0 - 1) * v(noise, t = 1000) */
    float *x0 = xalloc_floats(6 * per), *F = xalloc_floats(6 * per), *Fu = xalloc_floats(6 * per);
    float *want = xalloc_floats(6 * per);
    for (int i = 0; i < 6; i++) sample_initial_noise(x0 + i * per, per, seeds[i], 1.0f);
    forward_first(&m, F, x0, 1000.0f, labels, 6);
    for (size_t i = 0; i < 6 * per; i++) want[i] = x0[i] - F[i];
    s.steps = 1, s.guidance = 1.0f;
    dit_sample(&m, &s, labels, seeds, 6, a, NULL, NULL, err, sizeof err);
    CHECK(max_diff(a, want, 6 * per) <= 1e-6, "Euler 1 step, no guidance = x + (0 - 1) * v_cond (max diff %.3g)",
          max_diff(a, want, 6 * per));

    /* guidance 2, 1 step: uncond + 2 (cond - uncond) from separate forwards */
    int nulls[6] = {4, 4, 4, 4, 4, 4};
    forward_first(&m, Fu, x0, 1000.0f, nulls, 6);
    for (size_t i = 0; i < 6 * per; i++) want[i] = x0[i] - (Fu[i] + 2.0f * (F[i] - Fu[i]));
    s.guidance = 2.0f;
    dit_sample(&m, &s, labels, seeds, 6, a, NULL, NULL, err, sizeof err);
    CHECK(max_diff(a, want, 6 * per) <= 1e-5, "CFG g=2, 1 step = x - (v_u + 2 (v_c - v_u)) (max diff %.3g)",
          max_diff(a, want, 6 * per));

    /* 3 shifted Euler steps by hand, guidance 1 (conditional half only) */
    s.steps = 3, s.guidance = 1.0f, s.shift = 3.0f;
    double sig[4];
    sampler_sigmas(&s, sig);
    memcpy(want, x0, 6 * per * sizeof(float));
    for (int k = 0; k < 3; k++) {
        forward_first(&m, F, want, (float)(1000.0 * sig[k]), labels, 6);
        for (size_t i = 0; i < 6 * per; i++) want[i] += (float)(sig[k + 1] - sig[k]) * F[i];
    }
    dit_sample(&m, &s, labels, seeds, 6, a, NULL, NULL, err, sizeof err);
    CHECK(max_diff(a, want, 6 * per) <= 1e-5, "Euler 3 steps with shift 3 = hand-computed steps (max diff %.3g)",
          max_diff(a, want, 6 * per));

    /* chunking: a model built for batches of 2 gives the same samples (to rounding) */
    dit_model m2;
    dit_config c = m.cfg;
    dit_create(&m2, &c, 2);
    memcpy(m2.params, m.params, m.table.total * sizeof(float));
    s.guidance = 2.0f;
    dit_sample(&m, &s, labels, seeds, 6, a, NULL, NULL, err, sizeof err);
    dit_sample(&m2, &s, labels, seeds, 6, b, NULL, NULL, err, sizeof err);
    CHECK(max_diff(a, b, 6 * per) <= 1e-5, "batches of 1 (CFG in a max_batch 2 model) = one batch of 6 (max diff %.3g)",
          max_diff(a, b, 6 * per));
    dit_free(&m2);

    /* errors */
    int bad = 4;
    CHECK(dit_sample(&m, &s, &bad, seeds, 1, a, NULL, NULL, err, sizeof err) == -1 && strstr(err, "outside 0..3"),
          "a class out of range is refused: %s", err);
    dit_model m1;
    dit_create(&m1, &c, 1);
    CHECK(dit_sample(&m1, &s, labels, seeds, 1, a, NULL, NULL, err, sizeof err) == -1 && strstr(err, "guidance"),
          "guidance with max_batch 1 is refused: %s", err);
    dit_free(&m1);

    /* Heun on EDM with F = 0 (zero output layer): D = c_skip x, so every step scales x by a known factor */
    const param_entry *w = param_table_find(&m.table, "proj_out_2.weight");
    const param_entry *bias = param_table_find(&m.table, "proj_out_2.bias");
    memset(m.params + w->offset, 0, w->numel * sizeof(float));
    memset(m.params + bias->offset, 0, bias->numel * sizeof(float));
    sampler_defaults(&s, OBJ_EDM);
    s.steps = 6;
    s.guidance = 3.0f; /* F_u = F_c = 0: guidance changes nothing */
    double e[7];
    sampler_sigmas(&s, e);
    double sd = s.sigma_data, factor = e[0];
#define K_(sig) ((sig) / ((sig) * (sig) + sd * sd)) /* dx/ds = x * K(s) when D = c_skip x */
    for (int i = 0; i < 6; i++) {
        double h = e[i + 1] - e[i], k1 = K_(e[i]);
        if (e[i + 1] == 0)
            factor *= 1 + h * k1;
        else
            factor *= 1 + h * 0.5 * (k1 + K_(e[i + 1]) * (1 + h * k1));
    }
    dit_sample(&m, &s, labels, seeds, 6, a, NULL, NULL, err, sizeof err);
    for (size_t i = 0; i < 6 * per; i++) want[i] = (float)(x0[i] * factor);
    CHECK(test_rel_err(a, want, 6 * per) <= 1e-5,
          "EDM Heun, F = 0: matches the closed-form product of steps (rel %.3g)", test_rel_err(a, want, 6 * per));
    /* and, with enough steps, the ODE's exact solution x(s) = x(smax) sqrt(s^2 + sd^2) / sqrt(smax^2 + sd^2) */
    s.steps = 200; /* Heun's error here falls as 1/steps^2: 1e-2 at 40 steps, 3e-4 at 200 */
    s.guidance = 1.0f;
    dit_sample(&m, &s, labels, seeds, 6, a, NULL, NULL, err, sizeof err);
    double exact = 80.0 * sd / sqrt(80.0 * 80.0 + sd * sd);
    for (size_t i = 0; i < 6 * per; i++) want[i] = (float)(x0[i] * exact);
    CHECK(test_rel_err(a, want, 6 * per) <= 1e-3,
          "EDM Heun 200 steps, F = 0: close to the exact ODE solution (rel %.3g)", test_rel_err(a, want, 6 * per));
#undef K_
    free(x0), free(F), free(Fu), free(want), free(a), free(b);
    dit_free(&m);
}

/* ---- dfm generate ------------------------------------------------------------------------------- */

static int run_dfm(const char *args, const char *stderr_path) {
    fflush(stdout);
    return test_sh("%s %s >/dev/null 2>'%s'", test_dfm_bin(), args, stderr_path);
}

static int file_contains(const char *path, const char *needle) {
    char *s = test_read_file(path, NULL);
    int ok = s && strstr(s, needle);
    free(s);
    return ok;
}

static int decode_png(const char *path, uint8_t **px, int *w, int *h, int *c) {
    size_t len;
    char *buf = test_read_file(path, &len);
    if (!buf) return -1;
    char err[256];
    int rc = png_decode_mem((const uint8_t *)buf, len, px, w, h, c, err, sizeof err);
    free(buf);
    return rc;
}

static void save_weights(const dit_model *m, const char *path, const char *objective) {
    const char *meta[] = {"dfm_objective", objective, NULL};
    dit_save_weights(m, m->params, path, objective ? meta : NULL);
}

static void test_generate_cmd(void) {
    dit_model m;
    make_model(&m, 8, 0.15f);
    char *wflow = xstrdup(test_path("%s/flow.safetensors", tmp));
    save_weights(&m, wflow, "{\"kind\": \"flow_matching\", \"flow_shift\": 2.0}");
    char *errf = xstrdup(test_path("%s/stderr.txt", tmp));

    int rc = run_dfm(test_path("generate --checkpoint %s --out %s/gen --steps 3 --classes 0,2 --per-class 3 --seed 17 "
                               "--guidance 1.5",
                               wflow, tmp),
                     errf);
    CHECK(rc == 0, "dfm generate runs (exit %d)", rc);
    json_error_t je;
    json_t *man = json_load_file(test_path("%s/gen/samples.json", tmp), 0, &je);
    int ok = json_is_array(man) && json_array_size(man) == 6;
    for (size_t i = 0; ok && i < 6; i++) {
        json_t *e = json_array_get(man, i);
        char name[32];
        snprintf(name, sizeof name, "sample_%04zu.png", i);
        ok = !strcmp(json_string_value(json_object_get(e, "file")), name) &&
             json_integer_value(json_object_get(e, "label")) == (i < 3 ? 0 : 2) &&
             json_integer_value(json_object_get(e, "seed")) == (json_int_t)(17 + i);
    }
    CHECK(ok, "samples.json lists 6 files with labels 0,0,0,2,2,2 and seeds 17..22");
    json_decref(man);

    /* every PNG decodes to 8x8 gray and matches the library's samples */
    int labels[6] = {0, 0, 0, 2, 2, 2};
    uint64_t seeds[6];
    for (int i = 0; i < 6; i++) seeds[i] = sample_seed(17, (uint32_t)i);
    sampler_config s;
    sampler_defaults(&s, OBJ_FLOW_MATCHING);
    s.steps = 3, s.guidance = 1.5f, s.shift = 2.0f;
    size_t per = per_sample(&m);
    float *x = xalloc_floats(6 * per);
    char err[512];
    dit_sample(&m, &s, labels, seeds, 6, x, NULL, NULL, err, sizeof err);
    int pngs_ok = 1, worst = 0;
    for (int i = 0; i < 6; i++) {
        uint8_t *px;
        int w, h, c;
        if (decode_png(test_path("%s/gen/sample_%04d.png", tmp, i), &px, &w, &h, &c) || w != 8 || h != 8 || c != 1) {
            pngs_ok = 0;
            continue;
        }
        for (int k = 0; k < 64; k++) {
            float v = (x[i * per + k] + 1.0f) * 127.5f;
            int want = v < 0 ? 0 : v > 255 ? 255 : (int)lrintf(v);
            worst = abs(want - px[k]) > worst ? abs(want - px[k]) : worst;
        }
        free(px);
    }
    CHECK(pngs_ok && worst <= 1, "6 PNGs decode as 8x8 gray and hold the library's samples (worst pixel diff %d)",
          worst);
    uint8_t *gp;
    int gw, gh, gc;
    sample_grid g = {.rows = 2, .cols = 3, .size = 8, .channels = 1, .scale = sample_grid_scale(8), .title = "t"};
    int ew, eh;
    sample_grid_dims(&g, &ew, &eh);
    int grc = decode_png(test_path("%s/gen/grid.png", tmp), &gp, &gw, &gh, &gc);
    CHECK(grc == 0 && gw == ew && gh == eh && ew == 2 * 10 + 120 + 3 * 80 + 2 * 4 && eh == 2 * 10 + 24 + 2 * 80 + 4,
          "grid.png: 2 rows x 3 upscaled (10x) 8-px samples with a label column and title: %dx%d (want %dx%d)", gw, gh,
          ew, eh);
    if (grc == 0) {
        /* the label column holds dark text pixels (the class name), the first cell holds the image */
        int dark = 0;
        for (int y = 44; y < 44 + 80; y++)
            for (int xx = 10; xx < 126; xx++) dark += gp[((size_t)y * gw + xx) * gc] < 128;
        CHECK(dark > 20, "grid.png: the row label is drawn (%d dark pixels in the label column)", dark);
        free(gp);
    }

    /* one sample regenerated alone from its manifest seed */
    rc = run_dfm(test_path("generate --checkpoint %s --out %s/one --steps 3 --classes 2 --per-class 1 --seed 21 "
                           "--guidance 1.5",
                           wflow, tmp),
                 errf);
    uint8_t *p1 = NULL, *p4 = NULL;
    int w, h, c, diff = 999;
    if (rc == 0 && !decode_png(test_path("%s/one/sample_0000.png", tmp), &p1, &w, &h, &c) &&
        !decode_png(test_path("%s/gen/sample_0004.png", tmp), &p4, &w, &h, &c)) {
        diff = 0;
        for (int k = 0; k < 64; k++) diff = abs(p1[k] - p4[k]) > diff ? abs(p1[k] - p4[k]) : diff;
    }
    free(p1), free(p4);
    CHECK(diff <= 1, "--seed 21 --classes 2 --per-class 1 regenerates sample 4 (max pixel diff %d)", diff);

    /* checkpoint folders: root -> latest iter -> ema.safetensors (model.safetensors with --weights model) */
    test_sh("mkdir -p %s/ckpt/iter_0000005 && cp %s %s/ckpt/iter_0000005/ema.safetensors && echo 5 > "
            "%s/ckpt/latest_checkpointed_iteration.txt",
            tmp, wflow, tmp, tmp);
    dit_model m2;
    make_model(&m2, 1, 0.15f);
    save_weights(&m2, test_path("%s/ckpt/iter_0000005/model.safetensors", tmp),
                 "{\"kind\": \"flow_matching\", \"flow_shift\": 2.0}");
    dit_free(&m2);
    const char *common = "--steps 3 --classes 0,2 --per-class 3 --seed 17 --guidance 1.5";
    rc = run_dfm(test_path("generate --checkpoint %s/ckpt --out %s/gen_root %s", tmp, tmp, common), errf);
    int same = rc == 0 && test_sh("cmp -s %s/gen/samples.json %s/gen_root/samples.json && cmp -s "
                                  "%s/gen/sample_0005.png %s/gen_root/sample_0005.png",
                                  tmp, tmp, tmp, tmp) == 0;
    CHECK(same, "--checkpoint ROOT uses the latest iteration's EMA weights (same files as from the weights file)");
    rc = run_dfm(
        test_path("generate --checkpoint %s/ckpt/iter_0000005 --weights model --out %s/gen_model %s", tmp, tmp, common),
        errf);
    CHECK(rc == 0 && test_sh("cmp -s %s/gen/sample_0005.png %s/gen_model/sample_0005.png", tmp, tmp) != 0,
          "--weights model samples the raw weights (different images)");

    /* bad input: exit status 1 and a message that says what is wrong */
    struct {
        const char *args, *needle;
    } bad[] = {
        {"generate --checkpoint /nonexistent/w.safetensors --out %s/x", "does not exist"},
        {"generate --checkpoint %s/garbage.bin --out %s/x", "not a dfm weights file"},
        {"generate --checkpoint %s/plain.safetensors --out %s/x", "no 'dfm_dit_config' metadata"},
        {"generate --checkpoint %s/noobj.safetensors --out %s/x", "pass --objective"},
        {"generate --checkpoint %s/flow.safetensors --out %s/x --classes 7", "out of range"},
        {"generate --checkpoint %s/flow.safetensors --out %s/x --classes shoe", "neither a class number"},
        {"generate --checkpoint %s/flow.safetensors --out %s/x --steps 2x", "--steps must be"},
        {"generate --checkpoint %s/flow.safetensors --out %s/x --guidance abc", "--guidance must be"},
        {"generate --checkpoint %s/flow.safetensors --out %s/x --seed -3", "--seed must be"},
        {"generate --checkpoint %s/flow.safetensors --out %s/x --sampler ddim", "--sampler must be"},
        {"generate --checkpoint %s/badckpt --out %s/x", "iteration 9, but"},
        {"generate --checkpoint %s/ckpt/iter_0000005 --weights ema2 --out %s/x", "--weights must be"},
        {"export --checkpoint %s/flow.safetensors --out %s/x --dtype fp8", "--dtype must be"},
    };
    /* fixtures for the cases above */
    st_writer *sw = st_writer_new();
    float one = 1.0f;
    int64_t shp[1] = {1};
    st_writer_add(sw, "w", ST_F32, 1, shp, &one);
    st_writer_finish(sw, test_path("%s/plain.safetensors", tmp));
    save_weights(&m, test_path("%s/noobj.safetensors", tmp), NULL);
    test_sh("echo hello > %s/garbage.bin", tmp);
    test_sh("mkdir -p %s/badckpt && echo 9 > %s/badckpt/latest_checkpointed_iteration.txt", tmp, tmp);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char args[1024];
        snprintf(args, sizeof args, bad[i].args, tmp, tmp);
        rc = run_dfm(args, errf);
        char *msg = test_read_file(errf, NULL);
        if (msg) msg[strcspn(msg, "\n")] = 0;
        CHECK(rc == 1 && file_contains(errf, bad[i].needle), "bad input '%s' -> exit %d: %s", bad[i].needle, rc,
              msg ? msg : "(no stderr)");
        free(msg);
    }
    rc = run_dfm(test_path("generate --checkpoint %s/noobj.safetensors --objective edm --steps 2 --per-class 1 --out "
                           "%s/edm",
                           tmp, tmp),
                 errf);
    CHECK(rc == 0 && file_contains(test_path("%s/edm/samples.json", tmp), "sample_0003.png"),
          "--objective edm for a file without objective metadata (Heun default) runs");
    free(x);
    free(errf);
    free(wflow);
    dit_free(&m);
}

/* ---- export ------------------------------------------------------------------------------------- */

static const char *emb_names[5] = {"timestep_embedder.linear_1.weight", "timestep_embedder.linear_1.bias",
                                   "timestep_embedder.linear_2.weight", "timestep_embedder.linear_2.bias",
                                   "class_embedder.embedding_table.weight"};

static void test_export(void) {
    dit_config c = tiny_config();
    c.num_layers = 3;
    dit_model m;
    dit_create(&m, &c, 4);
    test_fill_randn(m.params, m.table.total, 0.15f);
    diffusers_export_opts o;
    diffusers_export_defaults(&o);
    o.flow_shift = 3.0f;
    char err[1024];
    char *dir = xstrdup(test_path("%s/export", tmp));
    int rc = dit_export_diffusers(&m, m.params, dir, &o, err, sizeof err);
    CHECK(rc == 0, "export writes a diffusers folder%s%s", rc ? ": " : "", rc ? err : "");

    json_t *idx = json_load_file(test_path("%s/model_index.json", dir), 0, NULL);
    json_t *cfg = json_load_file(test_path("%s/transformer/config.json", dir), 0, NULL);
    json_t *sch = json_load_file(test_path("%s/scheduler/scheduler_config.json", dir), 0, NULL);
    CHECK(idx && !strcmp(json_string_value(json_object_get(idx, "_class_name")), "DiTPipeline") &&
              !strcmp(json_string_value(json_array_get(json_object_get(idx, "scheduler"), 1)),
                      "FlowMatchEulerDiscreteScheduler"),
          "model_index.json: DiTPipeline with FlowMatchEulerDiscreteScheduler");
    const char *keys[] = {"_class_name",
                          "num_attention_heads",
                          "attention_head_dim",
                          "in_channels",
                          "out_channels",
                          "num_layers",
                          "dropout",
                          "norm_num_groups",
                          "attention_bias",
                          "sample_size",
                          "patch_size",
                          "activation_fn",
                          "num_embeds_ada_norm",
                          "upcast_attention",
                          "norm_type",
                          "norm_elementwise_affine",
                          "norm_eps"};
    int have = 0;
    for (size_t i = 0; cfg && i < sizeof keys / sizeof keys[0]; i++) have += json_object_get(cfg, keys[i]) != NULL;
    CHECK(cfg && have == (int)(sizeof keys / sizeof keys[0]) &&
              json_integer_value(json_object_get(cfg, "attention_head_dim")) == 16 &&
              json_integer_value(json_object_get(cfg, "num_embeds_ada_norm")) == 4 &&
              json_integer_value(json_object_get(cfg, "sample_size")) == 8 &&
              json_integer_value(json_object_get(cfg, "out_channels")) == 2 &&
              json_real_value(json_object_get(cfg, "norm_eps")) == 1e-5 &&
              !strcmp(json_string_value(json_object_get(cfg, "norm_type")), "ada_norm_zero") &&
              !strcmp(json_string_value(json_object_get(cfg, "activation_fn")), "gelu-approximate"),
          "transformer/config.json: all %d DiTTransformer2DModel keys with the model's values", have);
    CHECK(sch && json_integer_value(json_object_get(sch, "num_train_timesteps")) == 1000 &&
              json_real_value(json_object_get(sch, "shift")) == 3.0,
          "scheduler_config.json: num_train_timesteps 1000, shift 3");
    json_decref(idx), json_decref(cfg), json_decref(sch);

    /* the tensor set: every dfm tensor plus the embedder copied into every block */
    char serr[512];
    st_file *f = st_open(test_path("%s/transformer/diffusion_pytorch_model.safetensors", dir), serr, sizeof serr);
    int all = f != NULL && f->n_tensors == m.table.n + 5 * (c.num_layers - 1);
    for (int i = 0; all && i < m.table.n; i++) all = st_find(f, m.table.e[i].name) != NULL;
    int copies = f != NULL;
    for (int l = 0; copies && l < c.num_layers; l++)
        for (int k = 0; copies && k < 5; k++) {
            char n[256], n0[256];
            snprintf(n, sizeof n, "transformer_blocks.%d.norm1.emb.%s", l, emb_names[k]);
            snprintf(n0, sizeof n0, "transformer_blocks.0.norm1.emb.%s", emb_names[k]);
            const st_tensor *t = st_find(f, n);
            const param_entry *e = param_table_find(&m.table, n0);
            copies = t && st_numel(t) == (int64_t)e->numel;
            if (copies) {
                float *buf = xalloc_floats(e->numel);
                st_read_f32(f, t, buf);
                copies = !memcmp(buf, m.params + e->offset, e->numel * sizeof(float));
                free(buf);
            }
        }
    CHECK(all, "exported safetensors: %d tensors = every dfm tensor + 5 embedder copies per extra block",
          f ? f->n_tensors : -1);
    CHECK(copies, "exported safetensors: transformer_blocks.N.norm1.emb.* in every block equal the shared embedder");
    if (f) st_close(f);

    /* round trip */
    dit_model r;
    rc = dit_import_diffusers(&r, dir, 2, err, sizeof err);
    CHECK(rc == 0 && r.table.total == m.table.total && !memcmp(r.params, m.params, m.table.total * sizeof(float)) &&
              !memcmp(&r.cfg, &m.cfg, sizeof r.cfg),
          "export -> import: same config and bitwise the same parameters%s%s", rc ? ": " : "", rc ? err : "");
    if (rc == 0) dit_free(&r);
    rc = dit_import_diffusers(&r, test_path("%s/transformer", dir), 2, err, sizeof err);
    CHECK(rc == 0, "import also takes the transformer/ folder itself");
    if (rc == 0) dit_free(&r);

    /* sharded: split the tensors over two files with an index */
    f = st_open(test_path("%s/transformer/diffusion_pytorch_model.safetensors", dir), serr, sizeof serr);
    char *sdir = xstrdup(test_path("%s/sharded", tmp));
    test_sh("mkdir -p %s/transformer && cp %s/transformer/config.json %s/transformer/", sdir, dir, sdir);
    st_writer *w[2] = {st_writer_new(), st_writer_new()};
    json_t *map = json_object();
    float **bufs = xcalloc((size_t)f->n_tensors, sizeof(float *));
    for (int i = 0; i < f->n_tensors; i++) {
        const st_tensor *t = &f->tensors[i];
        bufs[i] = xalloc_floats((size_t)st_numel(t));
        st_read_f32(f, t, bufs[i]);
        int k = i % 2;
        st_writer_add(w[k], t->name, ST_F32, t->ndim, t->shape, bufs[i]);
        json_object_set_new(map, t->name,
                            json_string(k ? "diffusion_pytorch_model-00002-of-00002.safetensors"
                                          : "diffusion_pytorch_model-00001-of-00002.safetensors"));
    }
    st_writer_finish(w[0], test_path("%s/transformer/diffusion_pytorch_model-00001-of-00002.safetensors", sdir));
    st_writer_finish(w[1], test_path("%s/transformer/diffusion_pytorch_model-00002-of-00002.safetensors", sdir));
    for (int i = 0; i < f->n_tensors; i++) free(bufs[i]);
    free(bufs);
    st_close(f);
    json_t *index = json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)0, "weight_map", map);
    json_dump_file(index, test_path("%s/transformer/diffusion_pytorch_model.safetensors.index.json", sdir), 0);
    json_decref(index);
    rc = dit_import_diffusers(&r, sdir, 2, err, sizeof err);
    CHECK(rc == 0 && !memcmp(r.params, m.params, m.table.total * sizeof(float)),
          "import of a sharded folder (index.json + 2 shards): bitwise the same parameters%s%s", rc ? ": " : "",
          rc ? err : "");
    if (rc == 0) dit_free(&r);

    /* bf16: import gives the bf16-rounded parameters */
    o.dtype = ST_BF16;
    rc = dit_export_diffusers(&m, m.params, test_path("%s/export_bf16", tmp), &o, err, sizeof err);
    rc |= dit_import_diffusers(&r, test_path("%s/export_bf16", tmp), 2, err, sizeof err);
    int bf_ok = rc == 0;
    for (size_t i = 0; bf_ok && i < m.table.total; i++) {
        uint32_t u = (uint32_t)f32_to_bf16(m.params[i]) << 16;
        float v;
        memcpy(&v, &u, 4);
        bf_ok = r.params[i] == v;
    }
    CHECK(bf_ok, "bf16 export -> import: every parameter is its bf16 rounding");
    if (rc == 0) dit_free(&r);
    CHECK(f32_to_f16(1.0f) == 0x3C00 && f32_to_f16(-2.5f) == 0xC100 && f32_to_f16(65504.0f) == 0x7BFF &&
              f32_to_f16(1e6f) == 0x7C00 && f32_to_f16(5.9604645e-08f) == 0x0001 && f32_to_f16(1.0009766f) == 0x3C01 &&
              f32_to_bf16(1.0f) == 0x3F80 && f32_to_bf16(1.00390625f) == 0x3F80,
          "fp16/bf16 conversion: exact values, overflow, subnormals, ties to even");

    /* replacing: an earlier export is replaced; a folder that is not an export is refused */
    o.dtype = ST_F32;
    o.objective = OBJ_EDM;
    rc = dit_export_diffusers(&m, m.params, dir, &o, err, sizeof err);
    CHECK(rc == 0 && file_contains(test_path("%s/scheduler/scheduler_config.json", dir), "EDMEulerScheduler") &&
              test_sh("ls -d %s.tmp.* >/dev/null 2>&1", dir) != 0,
          "re-export over an earlier export replaces it (EDM: EDMEulerScheduler), no temporary folder left");
    test_sh("mkdir -p %s/notexport && touch %s/notexport/precious", tmp, tmp);
    rc = dit_export_diffusers(&m, m.params, test_path("%s/notexport", tmp), &o, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "refusing") && test_sh("test -f %s/notexport/precious", tmp) == 0,
          "export into a non-empty folder that is not an export is refused: %s", err);
    dit_config c2 = c;
    c2.ffn_hidden_size = 48;
    dit_model m3;
    dit_create(&m3, &c2, 1);
    rc = dit_export_diffusers(&m3, m3.params, test_path("%s/ffn", tmp), &o, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "4 x hidden_size"), "a model diffusers cannot express is refused: %s", err);
    dit_free(&m3);

    /* import errors */
    test_sh(
        "mkdir -p %s/bad/transformer && echo '{\"_class_name\": \"DiTTransformer2DModel\", \"num_attention_heads\": "
        "2}' > %s/bad/transformer/config.json",
        tmp, tmp);
    rc = dit_import_diffusers(&r, test_path("%s/bad", tmp), 1, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "attention_head_dim"), "import: a missing config key is named: %s", err);
    rc = dit_import_diffusers(&r, test_path("%s/nothing", tmp), 1, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "not a diffusers folder"), "import: a folder without config.json: %s", err);

    /* dfm export CLI on an EDM weights file, fp16 */
    save_weights(&m, test_path("%s/edm.safetensors", tmp), "{\"kind\": \"edm\", \"sigma_data\": 0.5}");
    char *errf = xstrdup(test_path("%s/stderr.txt", tmp));
    rc = run_dfm(test_path("export --checkpoint %s/edm.safetensors --out %s/cli_export --dtype fp16", tmp, tmp), errf);
    f = rc == 0 ? st_open(test_path("%s/cli_export/transformer/diffusion_pytorch_model.safetensors", tmp), serr,
                          sizeof serr)
                : NULL;
    CHECK(f && f->tensors[0].dtype == ST_F16 &&
              file_contains(test_path("%s/cli_export/model_index.json", tmp), "EDMEulerScheduler"),
          "dfm export --dtype fp16 on an EDM checkpoint: F16 tensors, EDMEulerScheduler (exit %d)", rc);
    if (f) st_close(f);

    /* PyTorch reference forward on the exported folder vs dfm's forward */
    if (test_sh("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") == 0) {
        int B = 3;
        size_t in_n = (size_t)c.in_channels * 64, out_n = (size_t)c.out_channels * 64;
        float *xin = xalloc_floats(B * in_n), *out = xalloc_floats(B * out_n), t[3] = {12.5f, 500.0f, 990.0f};
        int32_t lab[3] = {0, 3, 4};
        test_fill_randn(xin, B * in_n, 1.0f);
        dit_forward(&m, out, xin, t, (const int *)lab, B);
        o.objective = OBJ_FLOW_MATCHING;
        dit_export_diffusers(&m, m.params, dir, &o, err, sizeof err);
        st_writer *cw = st_writer_new();
        int64_t xs[4] = {B, c.in_channels, 8, 8}, os[4] = {B, c.out_channels, 8, 8}, bs[1] = {B};
        st_writer_add(cw, "x", ST_F32, 4, xs, xin);
        st_writer_add(cw, "out", ST_F32, 4, os, out);
        st_writer_add(cw, "t", ST_F32, 1, bs, t);
        st_writer_add(cw, "labels", ST_I32, 1, bs, lab);
        st_writer_finish(cw, test_path("%s/case.safetensors", tmp));
        fflush(stdout);
        rc = test_sh("cd tests/ref && /usr/bin/python3 export_check.py '%s' '%s/case.safetensors'", dir, tmp);
        if (rc != 0) CHECK(0, "tests/ref/export_check.py exited with status %d", rc);
        free(xin), free(out);
    } else {
        printf("# /usr/bin/python3 has no torch: skipping tests/ref/export_check.py\n");
    }
    free(errf);
    free(sdir);
    free(dir);
    dit_free(&m);
}

/* ---- loss curve --------------------------------------------------------------------------------- */

static void test_loss_curve(void) {
    const char *mp = test_path("%s/metrics.jsonl", tmp), *png = test_path("%s/loss.png", tmp);
    FILE *f = fopen(mp, "w");
    for (int s = 1; s <= 200; s++) {
        fprintf(f, "{\"step\": %d, \"loss\": %.6f, \"lr\": 0.001, \"grad_norm\": 1.0, \"samples_per_s\": 100}\n", s,
                2.0 * exp(-s / 40.0) + 0.02);
        if (s % 50 == 0) fprintf(f, "{\"step\": %d, \"val_loss\": %.6f}\n", s, 2.2 * exp(-s / 40.0) + 0.03);
    }
    fclose(f);
    char err[512];
    int rc = plot_loss_curve(mp, png, err, sizeof err);
    uint8_t *px;
    int w, h, c;
    int drc = rc == 0 ? decode_png(png, &px, &w, &h, &c) : -1;
    int blue = 0, orange = 0;
    for (int i = 0; drc == 0 && i < w * h; i++) {
        const uint8_t *p = px + (size_t)i * c;
        blue += p[2] > 150 && p[0] < 80;
        orange += p[0] > 200 && p[2] < 60 && p[1] > 80;
    }
    CHECK(rc == 0 && drc == 0 && w == 800 && h == 480, "loss curve (log y, train + val): %dx%d PNG", w, h);
    CHECK(blue > 100 && orange > 20, "loss curve draws the train (%d blue px) and validation (%d orange px) series",
          blue, orange);
    if (drc == 0) free(px);

    f = fopen(mp, "w");
    for (int s = 0; s < 5; s++) fprintf(f, "{\"step\": %d, \"loss\": %.3f}\n", s * 10, 0.5 - 0.01 * s);
    fclose(f);
    CHECK(plot_loss_curve(mp, png, err, sizeof err) == 0, "loss curve with a linear y axis");
    f = fopen(mp, "w");
    fclose(f);
    CHECK(plot_loss_curve(mp, png, err, sizeof err) == 0, "loss curve of an empty metrics file (no data yet)");
    f = fopen(mp, "w");
    fprintf(f, "{\"step\": 1, \"loss\": 0.5}\nnot json\n");
    fclose(f);
    CHECK(plot_loss_curve(mp, png, err, sizeof err) == -1 && strstr(err, "line 2"), "malformed line named: %s", err);
    CHECK(plot_loss_curve(test_path("%s/none.jsonl", tmp), png, err, sizeof err) == -1 && strstr(err, "none.jsonl"),
          "missing metrics file named: %s", err);
}

int main(void) {
    test_seed();
    kernels_init();
    tmp = test_mkdtemp();
    double t0 = dfm_time_s();
    void (*parts[])(void) = {test_schedules, test_samplers, test_generate_cmd, test_export, test_loss_curve};
    const char *names[] = {"schedules", "samplers", "generate command", "export", "loss curve"};
    for (int i = 0; i < 5; i++) {
        double t = dfm_time_s();
        parts[i]();
        printf("# %s: %.1f s\n", names[i], dfm_time_s() - t);
    }
    printf("# %.1f s\n", dfm_time_s() - t0);
    test_rmtree(tmp);
    free(tmp);
    return test_finish();
}
