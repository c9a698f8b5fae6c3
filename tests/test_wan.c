/* Wan 2.1 transformer against the PyTorch reference (tests/ref/wan_ref.py, float64): forward output, a
 * flow-matching loss and every parameter gradient, with masked text of different lengths, several frames and
 * non-square latents; plus parameter counts of the real configs, config and shape errors, batch splitting,
 * determinism, initialisation, and weights files (save, load back, diffusers config.json). */
#include "dfm/common.h"
#include "dfm/diffusion.h"
#include "dfm/kernels.h"
#include "dfm/safetensors.h"
#include "dfm/wan.h"
#include "test.h"

#include <jansson.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmpdir[256];

static wan_config tiny_config(void) {
    wan_config c;
    wan_config_named(&c, "wan_tiny");
    return c;
}

/* A second small config exercising other axes: 3 heads x 14 (RoPE 6/4/4), patch [2, 2, 1], out != in. */
static wan_config other_config(void) {
    wan_config c = tiny_config();
    c.num_heads = 3, c.head_dim = 14;
    c.ffn_dim = 48, c.text_dim = 24, c.freq_dim = 64;
    c.patch_t = 2, c.patch_h = 2, c.patch_w = 1;
    c.in_channels = 3, c.out_channels = 3;
    c.eps = 1e-5f; /* not the default, so a hard-coded eps would show */
    return c;
}

/* Random parameters everywhere (the Wan init's zero proj_out would hide most gradients); norm weights around 1. */
static void randomise(wan_model *m, float scale) {
    test_fill_randn(m->params, m->table.total, scale);
    for (int i = 0; i < m->table.n; i++) {
        const param_entry *e = &m->table.e[i];
        if (strstr(e->name, "norm") && strstr(e->name, ".weight"))
            for (size_t j = 0; j < e->numel; j++) m->params[e->offset + j] += 1.0f;
    }
}

static size_t latent_numel(const wan_shape *s, int channels) {
    return (size_t)s->batch * channels * s->frames * s->height * s->width;
}

static int run_reference(const char *case_path) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/ref/wan_ref.py '%s'", case_path);
    fflush(stdout);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* dfm computes RoPE tables, the output on noised latents, the loss and all gradients; the reference recomputes. */
static void reference_case(const char *label, const wan_config *cfg, const wan_shape *s, const int *text_lens) {
    wan_model m;
    wan_create(&m, cfg, s);
    randomise(&m, 0.2f);
    const int B = s->batch, C = m.cfg.in_channels;
    const size_t per = latent_numel(s, C) / (size_t)B, text_n = (size_t)B * s->text_len * cfg->text_dim;
    float *x0 = xalloc_floats((size_t)B * per), *text = xalloc_floats(text_n);
    test_fill_randn(x0, (size_t)B * per, 1.0f);
    test_fill_randn(text, text_n, 1.0f);

    objective_config o;
    objective_defaults_flow(&o, 0); /* uniform sigma, shift 3, loss weight 1 + 3 sigma */
    o.cond_dropout_prob = 0.0f;
    diffusion_batch db;
    diffusion_batch_alloc(&db, B, per);
    int labels[16] = {0};
    diffusion_prepare(&db, &o, x0, labels, B, per, 1, (uint64_t)(test_uniform() * 1e9), 0, 0);

    float *out = xalloc_floats((size_t)B * per), *dout = xalloc_floats((size_t)B * per);
    wan_zero_grad(&m);
    wan_forward(&m, out, db.model_in, db.timestep, text, text_lens, s);
    float loss = (float)diffusion_loss(&db, out, dout, per, 1.0f);
    wan_backward(&m, dout);

    st_writer *w = st_writer_new();
    int64_t xs[5] = {B, C, s->frames, s->height, s->width}, ts[3] = {B, s->text_len, cfg->text_dim}, bs[1] = {B};
    int64_t one[1] = {1};
    const int N = (s->frames / cfg->patch_t) * (s->height / cfg->patch_h) * (s->width / cfg->patch_w);
    int64_t rs[2] = {N, cfg->head_dim / 2};
    int32_t lens[16];
    for (int b = 0; b < B; b++) lens[b] = text_lens ? text_lens[b] : s->text_len;
    st_writer_add(w, "x0", ST_F32, 5, xs, x0);
    st_writer_add(w, "text", ST_F32, 3, ts, text);
    st_writer_add(w, "text_lens", ST_I32, 1, bs, lens);
    st_writer_add(w, "noise", ST_F32, 5, xs, db.noise);
    st_writer_add(w, "sigma", ST_F32, 1, bs, db.sigma);
    st_writer_add(w, "model_in", ST_F32, 5, xs, db.model_in);
    st_writer_add(w, "out", ST_F32, 5, xs, out);
    st_writer_add(w, "loss", ST_F32, 1, one, &loss);
    st_writer_add(w, "rope.cos", ST_F32, 2, rs, wan_rope_cos(&m));
    st_writer_add(w, "rope.sin", ST_F32, 2, rs, wan_rope_sin(&m));
    json_t *names = json_array();
    char name[400];
    for (int i = 0; i < m.table.n; i++) {
        const param_entry *e = &m.table.e[i];
        json_array_append_new(names, json_string(e->name));
        snprintf(name, sizeof name, "param.%s", e->name);
        st_writer_add(w, name, ST_F32, e->ndim, e->shape, m.params + e->offset);
        snprintf(name, sizeof name, "grad.%s", e->name);
        st_writer_add(w, name, ST_F32, e->ndim, e->shape, m.grads + e->offset);
    }
    char *sc = wan_config_to_json(&m.cfg), *sn = json_dumps(names, JSON_COMPACT);
    json_t *jo = json_pack("{s:i, s:f, s:b}", "num_train_timesteps", o.num_train_timesteps, "flow_shift",
                           (double)o.flow_shift, "use_loss_weighting", o.use_loss_weighting);
    char *so = json_dumps(jo, JSON_COMPACT);
    st_writer_meta(w, "label", label);
    st_writer_meta(w, "config", sc);
    st_writer_meta(w, "objective", so);
    st_writer_meta(w, "param_names", sn);
    char path[512];
    snprintf(path, sizeof path, "%s/%s.safetensors", tmpdir, label);
    st_writer_finish(w, path);
    printf("# case %s: B=%d latents %dx%dx%d, text %d (lens", label, B, s->frames, s->height, s->width, s->text_len);
    for (int b = 0; b < B; b++) printf(" %d", lens[b]);
    printf("), %d tensors, %zu parameters\n", m.table.n, m.table.total);
    int rc = run_reference(path);
    CHECK(rc == 0, "%s: PyTorch reference agrees on RoPE tables, output, loss and all %d gradients (exit %d)", label,
          m.table.n, rc);
    if (!getenv("DFM_KEEP_CASES")) unlink(path);
    free(sc), free(sn), free(so);
    json_decref(names), json_decref(jo);
    free(x0), free(text), free(out), free(dout);
    diffusion_batch_free(&db);
    wan_free(&m);
}

/* Exact parameter counts of the real configs from a closed formula (not from the table code). */
static void param_counts(void) {
    const char *names[2] = {"wan_1_3b", "wan_14b"};
    for (int k = 0; k < 2; k++) {
        wan_config c;
        wan_config_named(&c, names[k]);
        param_table t;
        wan_build_table(&t, &c);
        const long long d = (long long)c.num_heads * c.head_dim, F = c.ffn_dim, P = c.patch_t * c.patch_h * c.patch_w;
        const long long lin_dd = d * d + d;
        const long long top = d * c.in_channels * P + d + (d * c.freq_dim + d) + lin_dd + (6 * d * d + 6 * d) +
                              (d * c.text_dim + d) + lin_dd;
        const long long block = 2 * (4 * lin_dd + 2 * d) + 2 * d + (F * d + F) + (d * F + d) + 6 * d;
        const long long head = 2 * d + (c.out_channels * P * d + c.out_channels * P);
        const long long expect = top + c.num_layers * block + head;
        const int tensors = 12 + 27 * c.num_layers + 3;
        int ok = t.n == tensors && (long long)t.total == expect;
        if (k == 0) ok &= t.n == 825 && t.total == 1418996800ull;
        CHECK(ok, "%s: %d tensors (expected %d), %zu parameters (expected %lld)", names[k], t.n, tensors, t.total,
              expect);
        param_table_free(&t);
    }
}

static void config_errors(void) {
    char err[512];
    wan_config c = tiny_config();
    CHECK(wan_config_check(&c, err, sizeof err), "wan_tiny config is valid");
    c.head_dim = 15;
    CHECK(!wan_config_check(&c, err, sizeof err) && strstr(err, "attention_head_dim") && strstr(err, "15"),
          "odd head_dim rejected: %s", err);
    c = tiny_config();
    c.num_layers = 0;
    CHECK(!wan_config_check(&c, err, sizeof err) && strstr(err, "num_layers"), "zero layers rejected: %s", err);
    c = tiny_config();
    c.freq_dim = 33;
    CHECK(!wan_config_check(&c, err, sizeof err) && strstr(err, "freq_dim") && strstr(err, "33"),
          "odd freq_dim rejected: %s", err);
    c = tiny_config();
    c.patch_h = 0;
    CHECK(!wan_config_check(&c, err, sizeof err) && strstr(err, "patch_size"), "zero patch rejected: %s", err);

    c = tiny_config();
    c.rope_max_seq_len = 8;
    wan_shape mx = {2, 4, 8, 12, 6};
    wan_model m;
    wan_create(&m, &c, &mx);
    wan_shape s = {1, 3, 5, 12, 6};
    CHECK(!wan_shape_check(&m, &s, err, sizeof err) && strstr(err, "not divisible by the patch size [1, 2, 2]") &&
              strstr(err, "3 frames x 5 x 12"),
          "odd latent height rejected: %s", err);
    s = (wan_shape){3, 4, 8, 12, 6};
    CHECK(!wan_shape_check(&m, &s, err, sizeof err) && strstr(err, "batch 3") && strstr(err, "max batch 2"),
          "batch over the max rejected: %s", err);
    s = (wan_shape){1, 4, 8, 12, 7};
    CHECK(!wan_shape_check(&m, &s, err, sizeof err) && strstr(err, "text length 7") && strstr(err, "max 6"),
          "text over the max rejected: %s", err);
    s = (wan_shape){1, 4, 10, 10, 6};
    CHECK(!wan_shape_check(&m, &s, err, sizeof err) && strstr(err, "100 tokens") && strstr(err, "max 96"),
          "more tokens than the arena holds rejected: %s", err);
    s = (wan_shape){1, 2, 2, 18, 6};
    CHECK(!wan_shape_check(&m, &s, err, sizeof err) && strstr(err, "rope_max_seq_len 8"),
          "patch grid beyond rope_max_seq_len rejected: %s", err);
    s = (wan_shape){2, 2, 4, 6, 3};
    CHECK(wan_shape_check(&m, &s, err, sizeof err), "a smaller shape than the max is accepted");
    wan_free(&m);

    /* wan_forward dies with a message on a text length outside 1..L */
    int pipefd[2];
    if (pipe(pipefd) != 0) dfm_die("pipe failed");
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pipefd[1], 2);
        close(pipefd[0]);
        wan_config tc = tiny_config();
        wan_shape ms = {2, 1, 2, 2, 4};
        wan_model wm;
        wan_create(&wm, &tc, &ms);
        float x[2 * 4 * 4], t[2] = {1, 2}, text[2 * 4 * 32] = {0}, out[2 * 4 * 4];
        int lens[2] = {4, 5};
        memset(x, 0, sizeof x);
        wan_forward(&wm, out, x, t, text, lens, &ms);
        _exit(0);
    }
    close(pipefd[1]);
    char msg[512] = {0};
    size_t used = 0;
    for (ssize_t got; used < sizeof msg - 1 && (got = read(pipefd[0], msg + used, sizeof msg - 1 - used)) > 0;)
        used += (size_t)got; /* dfm_die writes its message in pieces */
    close(pipefd[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    msg[strcspn(msg, "\n")] = 0;
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) != 0 && strstr(msg, "text length 5 of sample 1 outside 1..4"),
          "text length beyond L dies with: %s", msg);
}

/* A batch equals its samples run one by one (a smaller batch than the max, each with its own text length),
 * gradients of the batch equal the sum over samples (backward accumulates), a new grid rebuilds RoPE. */
static void batch_split(void) {
    wan_config c = tiny_config();
    wan_shape s = {3, 2, 4, 6, 5};
    wan_model m;
    wan_create(&m, &c, &s);
    randomise(&m, 0.2f);
    const size_t per = (size_t)c.in_channels * 2 * 4 * 6, tper = (size_t)5 * c.text_dim, total = m.table.total;
    float *x = xalloc_floats(3 * per), *text = xalloc_floats(3 * tper), *dout = xalloc_floats(3 * per);
    float *out = xalloc_floats(3 * per), *out1 = xalloc_floats(3 * per), *g = xalloc_floats(total);
    test_fill_randn(x, 3 * per, 1), test_fill_randn(text, 3 * tper, 1), test_fill_randn(dout, 3 * per, 1);
    float t[3] = {12.5f, 500.0f, 987.0f};
    int lens[3] = {5, 2, 4};
    wan_zero_grad(&m);
    wan_forward(&m, out, x, t, text, lens, &s);
    wan_backward(&m, dout);
    memcpy(g, m.grads, total * sizeof(float));
    wan_zero_grad(&m);
    for (int b = 0; b < 3; b++) {
        wan_shape one = s;
        one.batch = 1;
        wan_forward(&m, out1 + b * per, x + b * per, t + b, text + b * tper, lens + b, &one);
        wan_backward(&m, dout + b * per);
    }
    double eo = test_rel_err(out1, out, 3 * per), eg = test_rel_err(m.grads, g, total);
    CHECK(eo < 1e-5 && eg < 1e-5, "batch of 3 vs samples one by one: output %.2e, accumulated gradients %.2e", eo, eg);

    /* the same weights on a model built for exactly a smaller grid give the same output */
    wan_shape small = {1, 1, 2, 6, 3};
    wan_model m2;
    wan_create(&m2, &c, &small);
    memcpy(m2.params, m.params, total * sizeof(float));
    wan_forward(&m, out, x, t, text, NULL, &small);
    wan_forward(&m2, out1, x, t, text, NULL, &small);
    const size_t n_small = (size_t)c.in_channels * 1 * 2 * 6;
    CHECK(!memcmp(out, out1, n_small * sizeof(float)),
          "a smaller grid on a bigger model (RoPE rebuilt) equals a model built for it, bitwise");
    wan_free(&m2);
    free(x), free(text), free(dout), free(out), free(out1), free(g);
    wan_free(&m);
}

static void determinism(void) {
    wan_config c = tiny_config();
    wan_shape s = {2, 3, 4, 4, 6};
    wan_model m;
    wan_create(&m, &c, &s);
    randomise(&m, 0.2f);
    const size_t per = (size_t)c.in_channels * 3 * 4 * 4, tn = (size_t)2 * 6 * c.text_dim;
    float *x = xalloc_floats(2 * per), *text = xalloc_floats(tn), *out = xalloc_floats(2 * per);
    float *g = xalloc_floats(m.table.total);
    test_fill_randn(x, 2 * per, 1), test_fill_randn(text, tn, 1);
    float t[2] = {3.0f, 800.0f};
    int lens[2] = {6, 1};
    int same = 1;
    for (int run = 0; run < 2; run++) {
        wan_zero_grad(&m);
        wan_forward(&m, out, x, t, text, lens, &s);
        wan_backward(&m, out);
        if (run == 0)
            memcpy(g, m.grads, m.table.total * sizeof(float));
        else
            same = !memcmp(g, m.grads, m.table.total * sizeof(float));
    }
    CHECK(same, "two identical forward + backward passes give bitwise identical gradients");
    free(x), free(text), free(out), free(g);
    wan_free(&m);
}

static void init_check(void) {
    wan_config c = tiny_config();
    wan_shape s = {2, 2, 4, 4, 3};
    wan_model m;
    wan_create(&m, &c, &s);
    wan_init(&m, 7);
    const size_t n = (size_t)2 * c.in_channels * 2 * 4 * 4;
    float *x = xalloc_floats(n), *text = xalloc_floats((size_t)2 * 3 * c.text_dim), *out = xalloc_floats(n);
    test_fill_randn(x, n, 1), test_fill_randn(text, (size_t)2 * 3 * c.text_dim, 1);
    float t[2] = {10.0f, 700.0f};
    wan_forward(&m, out, x, t, text, NULL, &s);
    double mx = 0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs(out[i]));
    const param_entry *nq = param_table_find(&m.table, "blocks.1.attn2.norm_q.weight");
    const param_entry *sst = param_table_find(&m.table, "blocks.0.scale_shift_table");
    const param_entry *te = param_table_find(&m.table, "condition_embedder.text_embedder.linear_1.weight");
    int ones = 1;
    for (size_t j = 0; j < nq->numel; j++) ones &= m.params[nq->offset + j] == 1.0f;
    double ss = 0, st = 0;
    for (size_t j = 0; j < sst->numel; j++) ss += (double)m.params[sst->offset + j] * m.params[sst->offset + j];
    for (size_t j = 0; j < te->numel; j++) st += (double)m.params[te->offset + j] * m.params[te->offset + j];
    ss = sqrt(ss / sst->numel) * sqrt((double)m.d), st = sqrt(st / te->numel);
    CHECK(mx == 0.0 && ones && fabs(ss - 1) < 0.25 && fabs(st - 0.02) < 0.004,
          "Wan init: zero output (max |out| = %g), unit norm weights, scale_shift_table std*sqrt(d) %.3f, text "
          "embedder std %.4f",
          mx, ss, st);
    free(x), free(text), free(out);
    wan_free(&m);
}

static void weights_files(void) {
    char err[512], path[512];
    wan_config c = other_config();
    wan_shape s = {1, 2, 4, 3, 4};
    wan_model m;
    wan_create(&m, &c, &s);
    randomise(&m, 0.2f);
    snprintf(path, sizeof path, "%s/wan_weights.safetensors", tmpdir);
    const char *meta[] = {"dfm_note", "test", NULL};
    wan_save_weights(&m, m.params, path, meta);
    wan_model r;
    int rc = wan_open_weights(&r, path, &s, err, sizeof err);
    int same = rc == 0 && r.table.total == m.table.total &&
               !memcmp(r.params, m.params, m.table.total * sizeof(float)) && !memcmp(&r.cfg, &m.cfg, sizeof r.cfg);
    st_file *f = st_open_or_die(path);
    const st_tensor *pe = st_find(f, "patch_embedding.weight");
    int shape_ok = pe && pe->ndim == 5 && pe->shape[0] == 42 && pe->shape[1] == 3 && pe->shape[2] == 2 &&
                   pe->shape[3] == 2 && pe->shape[4] == 1 && st_meta(f, "dfm_note");
    st_close(f);
    CHECK(same && shape_ok, "save + open: %d tensors under diffusers names come back bitwise with the config%s%s",
          m.table.n, rc ? ": " : "", rc ? err : "");
    if (rc == 0) wan_free(&r);

    /* loading into a model of another shape names the tensor and both shapes */
    wan_config c2 = other_config();
    c2.ffn_dim = 40;
    wan_model m2;
    wan_create(&m2, &c2, &s);
    rc = wan_load_weights(&m2, m2.params, path, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "blocks.0.ffn.net.0.proj.weight") && strstr(err, "[40, 42]") &&
              strstr(err, "[48, 42]"),
          "load into a different ffn_dim fails: %s", err);
    wan_free(&m2);

    /* diffusers' transformer/config.json of Wan2.1-T2V-1.3B parses to the named config */
    const char *diffusers_json =
        "{\"_class_name\": \"WanTransformer3DModel\", \"_diffusers_version\": \"0.33.0.dev0\", "
        "\"added_kv_proj_dim\": null, \"attention_head_dim\": 128, \"cross_attn_norm\": true, \"eps\": 1e-06, "
        "\"ffn_dim\": 8960, \"freq_dim\": 256, \"image_dim\": null, \"in_channels\": 16, \"num_attention_heads\": 12, "
        "\"num_layers\": 30, \"out_channels\": 16, \"patch_size\": [1, 2, 2], \"qk_norm\": \"rms_norm_across_heads\", "
        "\"rope_max_seq_len\": 1024, \"text_dim\": 4096}";
    wan_config parsed, named;
    wan_config_named(&named, "wan_1_3b");
    rc = wan_config_from_json(&parsed, diffusers_json, err, sizeof err);
    CHECK(rc == 0 && !memcmp(&parsed, &named, sizeof parsed),
          "diffusers config.json of Wan2.1-T2V-1.3B parses to wan_1_3b%s%s", rc ? ": " : "", rc ? err : "");
    char *js = wan_config_to_json(&m.cfg);
    rc = wan_config_from_json(&parsed, js, err, sizeof err);
    CHECK(rc == 0 && !memcmp(&parsed, &m.cfg, sizeof parsed), "config JSON round trip: %s", js);
    free(js);
    rc = wan_config_from_json(&parsed, "{\"num_layers\": 2, \"image_dim\": 1280}", err, sizeof err);
    CHECK(rc != 0 && strstr(err, "image_dim") && strstr(err, "I2V"), "an I2V config is refused: %s", err);
    rc = wan_config_from_json(&parsed, "{\"num_layers\": 2, \"num_heads\": 4}", err, sizeof err);
    CHECK(rc != 0 && strstr(err, "unknown key 'num_heads'"), "an unknown key is refused: %s", err);
    rc = wan_config_from_json(&parsed, "{\"attention_head_dim\": 7}", err, sizeof err);
    CHECK(rc != 0 && strstr(err, "attention_head_dim") && strstr(err, "7"), "an invalid value is refused: %s", err);
    unlink(path);
    wan_free(&m);
}

int main(void) {
    test_seed();
    kernels_init();
    snprintf(tmpdir, sizeof tmpdir, "/tmp/dfm_test_wan_XXXXXX");
    if (!mkdtemp(tmpdir)) dfm_die("mkdtemp failed");
    param_counts();
    config_errors();
    init_check();
    determinism();
    batch_split();
    weights_files();

    wan_config tiny = tiny_config(), other = other_config();
    /* 3 frames of 4 x 6 latents (18 tokens), text padded to 7 with 7, 3 and 5 valid tokens */
    wan_shape s1 = {3, 3, 4, 6, 7};
    int lens1[3] = {7, 3, 5};
    reference_case("wan_tiny_masked_text", &tiny, &s1, lens1);
    /* 4 frames of 4 x 3 latents through patch [2, 2, 1] (12 tokens), unmasked text */
    wan_shape s2 = {2, 4, 4, 3, 5};
    reference_case("wan_other_unmasked", &other, &s2, NULL);
    if (!getenv("DFM_KEEP_CASES")) rmdir(tmpdir);
    return test_finish();
}
