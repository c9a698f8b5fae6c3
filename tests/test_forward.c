/* dfm forward: one forward pass on tensors from a file, for a tiny DiT and a tiny Wan, from an exported diffusers
 * folder and from dfm weights files: the output equals the library's forward, and the PyTorch references
 * (tests/ref/dit_model.py, wan_model.py through diffusers_check.py, float32) loading the same folder agree within
 * 1e-4 relative; missing, ill-shaped or unexpected inputs are refused naming the tensor and the expected shape. */
#include "dfm/common.h"
#include "dfm/diffusers.h"
#include "dfm/dit.h"
#include "dfm/kernels.h"
#include "dfm/safetensors.h"
#include "dfm/wan.h"
#include "test.h"
#include "test_fs.h"

#include <string.h>

static char *tmp;
static int have_torch;

/* One named tensor of an inputs file. */
typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[5];
    const void *data;
} tin;

static void write_inputs(const char *path, const tin *t, int n) {
    st_writer *w = st_writer_new();
    for (int i = 0; i < n; i++)
        if (t[i].name) st_writer_add(w, t[i].name, t[i].dtype, t[i].ndim, t[i].shape, t[i].data);
    st_writer_finish(w, path);
}

static int run_forward(const char *model, const char *in, const char *out, const char *errf) {
    fflush(stdout);
    return test_sh("%s forward --model '%s' --inputs '%s' --out '%s' >/dev/null 2>'%s'", test_dfm_bin(), model, in, out,
                   errf);
}

/* dfm forward's `sample`, or NULL */
static float *read_sample(const char *path, size_t n) {
    st_file *f = st_open(path, NULL, 0);
    const st_tensor *t = f ? st_find(f, "sample") : NULL;
    float *x = NULL;
    if (t && t->dtype == ST_F32 && (size_t)st_numel(t) == n) {
        x = xalloc_floats(n);
        st_read_f32(f, t, x);
    }
    if (f) st_close(f);
    return x;
}

/* The inputs plus dfm's output, for tests/ref/diffusers_check.py */
static int torch_check(const char *folder, const tin *t, int n, const float *sample, const int64_t *oshape, int ondim,
                       const char *label) {
    tin all[8];
    memcpy(all, t, sizeof(tin) * (size_t)n);
    all[n] = (tin){"sample", ST_F32, ondim, {0}, sample};
    memcpy(all[n].shape, oshape, sizeof(int64_t) * (size_t)ondim);
    const char *case_path = test_path("%s/case_%s.safetensors", tmp, label);
    write_inputs(case_path, all, n + 1);
    fflush(stdout);
    return test_sh("cd tests/ref && /usr/bin/python3 diffusers_check.py '%s' '%s' --dtype float32 --tol 1e-4 --label "
                   "'%s'",
                   folder, case_path, label);
}

/* Each bad case: the inputs with one change, exit status 1 and a message holding `needle`. */
static void expect_refusal(const char *model, const tin *t, int n, const char *needle, const char *what) {
    const char *in = test_path("%s/bad_in.safetensors", tmp), *errf = test_path("%s/stderr.txt", tmp);
    write_inputs(in, t, n);
    int rc = run_forward(model, in, test_path("%s/bad_out.safetensors", tmp), errf);
    char *msg = test_read_file(errf, NULL);
    if (msg) msg[strcspn(msg, "\n")] = 0;
    CHECK(rc == 1 && msg && strstr(msg, needle), "%s -> exit %d: %s", what, rc, msg ? msg : "(no stderr)");
    free(msg);
}

static void test_dit(void) {
    dit_config c;
    dit_config_named(&c, "tiny");
    c.num_layers = 2, c.hidden_size = 32, c.num_heads = 2, c.patch_size = 2;
    c.in_channels = 1, c.out_channels = 2, c.image_size = 8, c.num_classes = 4, c.norm_eps = 1e-5f;
    const int B = 3;
    dit_model m;
    dit_create(&m, &c, B);
    test_fill_randn(m.params, m.table.total, 0.15f);
    char err[1024];
    char *folder = xstrdup(test_path("%s/dit", tmp)), *wfile = xstrdup(test_path("%s/dit.safetensors", tmp));
    diffusers_export_opts o;
    diffusers_export_defaults(&o);
    o.max_shard_bytes = 40000; /* sharded, embedder copies included */
    int rc = dit_export_diffusers(&m, m.params, folder, &o, err, sizeof err);
    rc |= test_sh("test -f %s/transformer/diffusion_pytorch_model.safetensors.index.json", folder);
    dit_save_weights(&m, m.params, wfile, NULL);

    const size_t xn = (size_t)B * 64, on = (size_t)B * 2 * 64;
    float *x = xalloc_floats(xn), *ref = xalloc_floats(on), tf[3] = {0, 500, 999};
    int64_t ti[3] = {0, 500, 999}, lab[3] = {0, 3, 4}; /* 4: the null class */
    int labi[3] = {0, 3, 4};
    test_fill_randn(x, xn, 1.0f);
    dit_forward(&m, ref, x, tf, labi, B);
    tin in[3] = {{"hidden_states", ST_F32, 4, {B, 1, 8, 8}, x},
                 {"timestep", ST_I64, 1, {B}, ti},
                 {"class_labels", ST_I64, 1, {B}, lab}};
    char *inp = xstrdup(test_path("%s/dit_in.safetensors", tmp)),
         *outp = xstrdup(test_path("%s/dit_out.safetensors", tmp));
    char *errf = xstrdup(test_path("%s/stderr.txt", tmp));
    write_inputs(inp, in, 3);
    rc |= run_forward(folder, inp, outp, errf);
    float *got = rc == 0 ? read_sample(outp, on) : NULL;
    CHECK(got && test_rel_err(got, ref, on) <= 1e-6,
          "DiT: dfm forward on the sharded diffusers folder (int64 timesteps and labels, the null class) = dit_forward "
          "(rel %.2e, exit %d)",
          got ? test_rel_err(got, ref, on) : -1.0, rc);
    rc = run_forward(wfile, inp, test_path("%s/dit_out2.safetensors", tmp), errf);
    float *got2 = rc == 0 ? read_sample(test_path("%s/dit_out2.safetensors", tmp), on) : NULL;
    CHECK(got && got2 && !memcmp(got, got2, on * sizeof(float)),
          "DiT: dfm forward on the dfm weights file = on the folder, bitwise (exit %d)", rc);
    if (have_torch && got) {
        int64_t os[4] = {B, 2, 8, 8};
        rc = torch_check(folder, in, 3, got, os, 4, "dit");
        CHECK(rc == 0, "DiT: PyTorch float32 reference on the same folder agrees with dfm forward within 1e-4");
    }

    /* refusals */
    tin bad[3];
    memcpy(bad, in, sizeof bad);
    bad[1].name = NULL;
    expect_refusal(folder, bad, 3, "input 'timestep' is missing; expected [B] = [3]", "DiT without timestep");
    memcpy(bad, in, sizeof bad);
    bad[2].name = NULL;
    expect_refusal(folder, bad, 3, "input 'class_labels' is missing", "DiT without class_labels");
    memcpy(bad, in, sizeof bad);
    bad[0].shape[2] = 4, bad[0].shape[3] = 16;
    expect_refusal(folder, bad, 3,
                   "input 'hidden_states' has shape [3, 1, 4, 16]; expected [B, in_channels, "
                   "sample_size, sample_size] = [3, 1, 8, 8]",
                   "DiT latents of the wrong size");
    memcpy(bad, in, sizeof bad);
    bad[0].ndim = 5, bad[0].shape[1] = 1, bad[0].shape[2] = 1, bad[0].shape[3] = 8, bad[0].shape[4] = 8;
    expect_refusal(folder, bad, 3, "expected [B, C, H, W]", "DiT given 5-D latents");
    memcpy(bad, in, sizeof bad);
    bad[2].dtype = ST_F32, bad[2].data = tf;
    expect_refusal(folder, bad, 3, "'class_labels' has dtype F32; expected integers", "DiT float labels");
    int64_t lab_bad[3] = {0, 5, 1};
    memcpy(bad, in, sizeof bad);
    bad[2].data = lab_bad;
    expect_refusal(folder, bad, 3, "'class_labels' [1] is 5, outside 0..4", "DiT label out of range");
    memcpy(bad, in, sizeof bad);
    bad[1].shape[0] = 2;
    expect_refusal(folder, bad, 3, "input 'timestep' has shape [2]; expected [B] = [3]", "DiT timesteps [2] for B=3");
    tin extra[4];
    memcpy(extra, in, sizeof in);
    extra[3] = (tin){"encoder_hidden_states", ST_F32, 3, {B, 1, 1}, x};
    expect_refusal(folder, extra, 4, "input 'encoder_hidden_states' is not one a DiTTransformer2DModel forward takes",
                   "DiT given text");
    test_sh("mkdir -p %s/unet && echo '{\"_class_name\": \"UNet2DConditionModel\"}' > %s/unet/config.json", tmp, tmp);
    expect_refusal(test_path("%s/unet", tmp), in, 3, "dfm runs DiTTransformer2DModel and WanTransformer3DModel",
                   "a folder of another model class");
    free(got), free(got2), free(x), free(ref), free(inp), free(outp), free(errf), free(folder), free(wfile);
    dit_free(&m);
}

static void test_wan(void) {
    wan_config c;
    wan_config_named(&c, "wan_tiny");
    c.num_layers = 2, c.ffn_dim = 48, c.text_dim = 24, c.freq_dim = 32, c.in_channels = 4, c.out_channels = 4;
    wan_shape s = {2, 3, 4, 6, 7};
    wan_model m;
    wan_create(&m, &c, &s);
    test_fill_randn(m.params, m.table.total, 0.2f);
    for (int i = 0; i < m.table.n; i++)
        if (strstr(m.table.e[i].name, "norm") && strstr(m.table.e[i].name, ".weight"))
            for (size_t j = 0; j < m.table.e[i].numel; j++) m.params[m.table.e[i].offset + j] += 1.0f;
    char err[1024];
    char *folder = xstrdup(test_path("%s/wan", tmp)), *wfile = xstrdup(test_path("%s/wan.safetensors", tmp));
    diffusers_export_opts o;
    diffusers_export_defaults(&o);
    o.max_shard_bytes = 50000; /* sharded, as a real 1.3B / 14B folder */
    int rc = wan_export_diffusers(&m, m.params, folder, &o, err, sizeof err);
    wan_save_weights(&m, m.params, wfile, NULL);

    const size_t xn = (size_t)2 * 4 * 3 * 4 * 6, tn = (size_t)2 * 7 * 24;
    float *x = xalloc_floats(xn), *text = xalloc_floats(tn), *ref = xalloc_floats(xn), ts[2] = {12.5f, 870.0f};
    int64_t mask[14], lens64[2] = {7, 3};
    int lens[2] = {7, 3};
    for (int b = 0; b < 2; b++)
        for (int l = 0; l < 7; l++) mask[b * 7 + l] = l < lens64[b];
    test_fill_randn(x, xn, 1.0f), test_fill_randn(text, tn, 1.0f);
    wan_forward(&m, ref, x, ts, text, lens, &s);
    tin in[4] = {{"hidden_states", ST_F32, 5, {2, 4, 3, 4, 6}, x},
                 {"timestep", ST_F32, 1, {2}, ts},
                 {"encoder_hidden_states", ST_F32, 3, {2, 7, 24}, text},
                 {"encoder_attention_mask", ST_I64, 2, {2, 7}, mask}};
    char *inp = xstrdup(test_path("%s/wan_in.safetensors", tmp)),
         *outp = xstrdup(test_path("%s/wan_out.safetensors", tmp));
    char *errf = xstrdup(test_path("%s/stderr.txt", tmp));
    write_inputs(inp, in, 4);
    rc |= run_forward(folder, inp, outp, errf);
    float *got = rc == 0 ? read_sample(outp, xn) : NULL;
    CHECK(got && test_rel_err(got, ref, xn) <= 1e-6,
          "Wan: dfm forward on the sharded diffusers folder (prefix mask, lengths 7 and 3) = wan_forward (rel %.2e, "
          "exit %d)",
          got ? test_rel_err(got, ref, xn) : -1.0, rc);
    rc = run_forward(wfile, inp, test_path("%s/wan_out2.safetensors", tmp), errf);
    float *got2 = rc == 0 ? read_sample(test_path("%s/wan_out2.safetensors", tmp), xn) : NULL;
    CHECK(got && got2 && !memcmp(got, got2, xn * sizeof(float)),
          "Wan: dfm forward on the dfm weights file = on the folder, bitwise (exit %d)", rc);
    if (have_torch && got) {
        int64_t os[5] = {2, 4, 3, 4, 6};
        rc = torch_check(folder, in, 4, got, os, 5, "wan");
        CHECK(rc == 0, "Wan: PyTorch float32 reference on the same folder agrees with dfm forward within 1e-4");
    }
    /* without a mask: every text token attends (diffusers' behaviour) */
    wan_forward(&m, ref, x, ts, text, NULL, &s);
    write_inputs(inp, in, 3);
    rc = run_forward(folder, inp, outp, errf);
    free(got);
    got = rc == 0 ? read_sample(outp, xn) : NULL;
    CHECK(got && test_rel_err(got, ref, xn) <= 1e-6, "Wan without encoder_attention_mask: all text tokens (rel %.2e)",
          got ? test_rel_err(got, ref, xn) : -1.0);
    if (have_torch && got) {
        int64_t os[5] = {2, 4, 3, 4, 6};
        rc = torch_check(test_path("%s/transformer", folder), in, 3, got, os, 5, "wan_nomask");
        CHECK(rc == 0, "Wan without mask: PyTorch float32 on the transformer/ folder agrees within 1e-4");
    }

    /* refusals */
    tin bad[5];
    memcpy(bad, in, sizeof in);
    bad[2].name = NULL;
    expect_refusal(folder, bad, 4, "input 'encoder_hidden_states' is missing; expected [B, L, text_dim] = [2, L, 24]",
                   "Wan without text");
    memcpy(bad, in, sizeof in);
    bad[2].shape[2] = 16;
    expect_refusal(folder, bad, 4,
                   "'encoder_hidden_states' has shape [2, 7, 16]; expected [B, L, text_dim] = [2, L, 24]",
                   "Wan text of the wrong width");
    memcpy(bad, in, sizeof in);
    bad[0].ndim = 4, bad[0].shape[3] = 24;
    expect_refusal(folder, bad, 4, "expected [B, C, T, H, W]", "Wan given 4-D latents");
    memcpy(bad, in, sizeof in);
    bad[0].shape[1] = 3, bad[0].shape[3] = 4, bad[0].shape[4] = 8;
    expect_refusal(folder, bad, 4,
                   "'hidden_states' has shape [2, 3, 3, 4, 8]; expected [B, in_channels, T, H, W] = "
                   "[B, 4, T, H, W]",
                   "Wan latents with 3 channels");
    memcpy(bad, in, sizeof in);
    bad[0].shape[3] = 3, bad[0].shape[4] = 8;
    expect_refusal(folder, bad, 4, "multiples of the patch size [1, 2, 2]", "Wan latent height 3 (patch 2)");
    int64_t holes[14];
    memcpy(holes, mask, sizeof holes);
    holes[7 + 1] = 0; /* row 1: 1 0 1 0 ... */
    memcpy(bad, in, sizeof in);
    bad[3].data = holes;
    expect_refusal(folder, bad, 4, "row 1 is not a prefix mask", "Wan mask with a hole");
    int64_t twos[14];
    memcpy(twos, mask, sizeof twos);
    twos[3] = 2;
    bad[3].data = twos;
    expect_refusal(folder, bad, 4, "'encoder_attention_mask' [0, 3] is 2; expected 0 or 1", "Wan mask value 2");
    int64_t empty[14];
    memcpy(empty, mask, sizeof empty);
    for (int l = 0; l < 7; l++) empty[7 + l] = 0;
    bad[3].data = empty;
    expect_refusal(folder, bad, 4, "row 1 has no valid token", "Wan mask row of zeros");
    memcpy(bad, in, sizeof in);
    bad[3].shape[1] = 6;
    expect_refusal(folder, bad, 4, "'encoder_attention_mask' has shape [2, 6]; expected [B, L] = [2, 7]",
                   "Wan mask of the wrong length");
    memcpy(bad, in, sizeof in);
    int64_t lab[2] = {0, 1};
    bad[4] = (tin){"class_labels", ST_I64, 1, {2}, lab};
    expect_refusal(folder, bad, 5, "input 'class_labels' is not one a WanTransformer3DModel forward takes",
                   "Wan given class labels");
    float nan_t[2] = {1.0f, NAN};
    memcpy(bad, in, sizeof in);
    bad[1].data = nan_t;
    expect_refusal(wfile, bad, 4, "'timestep' [1] is nan", "a NaN timestep (dfm weights file)");
    free(got), free(got2), free(x), free(text), free(ref), free(inp), free(outp), free(errf), free(folder), free(wfile);
    wan_free(&m);
}

int main(void) {
    test_seed();
    kernels_init();
    tmp = test_mkdtemp();
    have_torch = test_sh("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") == 0;
    if (!have_torch) printf("# /usr/bin/python3 has no torch: skipping the PyTorch comparisons\n");
    double t0 = dfm_time_s();
    test_dit();
    test_wan();
    printf("# %.1f s\n", dfm_time_s() - t0);
    test_rmtree(tmp);
    free(tmp);
    return test_finish();
}
