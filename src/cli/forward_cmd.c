/* dfm forward: one forward pass of a DiT or Wan transformer on tensors from a safetensors file, for parity
 * checks against diffusers or PyTorch. Inputs carry diffusers' forward() argument names (hidden_states,
 * timestep, encoder_hidden_states, class_labels) and the output is written as `sample`, as diffusers' models
 * return it. The model comes from a diffusers folder (its config.json's _class_name) or a dfm weights file or
 * checkpoint (its dfm_dit_config / dfm_wan_config metadata). */
#include "cli/cli_common.h"
#include "dfm/common.h"
#include "dfm/diffusers.h"
#include "dfm/dit.h"
#include "dfm/kernels.h"
#include "dfm/safetensors.h"
#include "dfm/wan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f, "usage: dfm forward --model PATH --inputs IN.safetensors --out OUT.safetensors [--weights ema|model]\n"
               "  --model PATH    a diffusers folder (pipeline or transformer/), or a dfm weights file or checkpoint\n"
               "                  (DiTTransformer2DModel or WanTransformer3DModel)\n"
               "  --inputs FILE   safetensors with the forward's inputs, diffusers' names:\n"
               "                    hidden_states          [B, C, H, W] (DiT) or [B, C, T, H, W] (Wan), float\n"
               "                    timestep               [B], float or int, the model's 0..1000 scale\n"
               "                    class_labels           [B] ints, DiT only (num_classes = the null class)\n"
               "                    encoder_hidden_states  [B, L, text_dim], Wan only\n"
               "                    encoder_attention_mask [B, L] 0/1, Wan only, optional: a prefix of valid tokens\n"
               "                                           per sample (dfm masks the padded text keys)\n"
               "  --out FILE      safetensors with the output `sample` (F32, [B, C_out, ...])\n"
               "  --weights ema|model  which weights of a dfm checkpoint folder (default ema)\n");
}

/* ---- inputs --------------------------------------------------------------------------------------- */

typedef struct {
    const st_file *f;
    const char *path;
} inputs;

static void shape_text(char *out, size_t n, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(out, n, "[");
    for (int d = 0; d < ndim && k < n; d++)
        k += (size_t)snprintf(out + k, n - k, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (k < n) snprintf(out + k, n - k, "]");
}

static int is_float(st_dtype t) {
    return t == ST_F32 || t == ST_F16 || t == ST_BF16 || t == ST_F64 || t == ST_F8_E4M3 || t == ST_F8_E5M2;
}
static int is_int(st_dtype t) {
    return t == ST_BOOL || t == ST_U8 || t == ST_I8 || t == ST_I16 || t == ST_U16 || t == ST_I32 || t == ST_U32 ||
           t == ST_I64 || t == ST_U64;
}

/* An input tensor, checked against the expected shape: want[d] < 0 means any size >= 1 there. `expect` says
 * in words what is wanted, for the message. NULL when absent and optional. */
static const st_tensor *get_input(const inputs *in, const char *name, int required, int ndim, const int64_t *want,
                                  int floats_only, const char *expect) {
    const st_tensor *t = st_find(in->f, name);
    if (!t) {
        if (required) dfm_die("'%s': input '%s' is missing; expected %s", in->path, name, expect);
        return NULL;
    }
    char got[128];
    shape_text(got, sizeof got, t->ndim, t->shape);
    int ok = t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++) ok = want[d] < 0 ? t->shape[d] >= 1 : t->shape[d] == want[d];
    if (!ok) dfm_die("'%s': input '%s' has shape %s; expected %s", in->path, name, got, expect);
    if (floats_only ? !is_float(t->dtype) : !is_float(t->dtype) && !is_int(t->dtype))
        dfm_die("'%s': input '%s' has dtype %s; expected %s values", in->path, name, st_dtype_name(t->dtype),
                floats_only ? "floating-point" : "numeric");
    return t;
}

/* Any numeric tensor as doubles (integers exactly up to 2^53). */
static double *read_numbers(const st_file *f, const st_tensor *t) {
    size_t n = (size_t)st_numel(t);
    double *out = xmalloc(sizeof(double) * (n ? n : 1));
    if (is_float(t->dtype)) {
        float *tmpf = xalloc_floats(n);
        st_read_f32(f, t, tmpf);
        for (size_t i = 0; i < n; i++) out[i] = tmpf[i];
        free(tmpf);
        return out;
    }
    unsigned char *raw = xmalloc(t->end - t->begin + 1);
    st_read_raw(f, t, raw);
    for (size_t i = 0; i < n; i++) {
        const unsigned char *p = raw + i * st_dtype_size(t->dtype);
        switch (t->dtype) {
        case ST_BOOL:
        case ST_U8:
            out[i] = p[0];
            break;
        case ST_I8:
            out[i] = (int8_t)p[0];
            break;
        case ST_I16: {
            int16_t v;
            memcpy(&v, p, 2);
            out[i] = v;
            break;
        }
        case ST_U16: {
            uint16_t v;
            memcpy(&v, p, 2);
            out[i] = v;
            break;
        }
        case ST_I32: {
            int32_t v;
            memcpy(&v, p, 4);
            out[i] = v;
            break;
        }
        case ST_U32: {
            uint32_t v;
            memcpy(&v, p, 4);
            out[i] = v;
            break;
        }
        case ST_I64: {
            int64_t v;
            memcpy(&v, p, 8);
            out[i] = (double)v;
            break;
        }
        case ST_U64: {
            uint64_t v;
            memcpy(&v, p, 8);
            out[i] = (double)v;
            break;
        }
        default:
            dfm_die("'%s': tensor '%s': dtype %s is not numeric", f->path, t->name, st_dtype_name(t->dtype));
        }
    }
    free(raw);
    return out;
}

static float *read_floats(const st_file *f, const st_tensor *t) {
    float *x = xalloc_floats((size_t)st_numel(t));
    st_read_f32(f, t, x);
    return x;
}

/* timestep [B]: finite numbers, as floats */
static float *read_timesteps(const inputs *in, int B) {
    int64_t want[1] = {B};
    char expect[96];
    snprintf(expect, sizeof expect, "[B] = [%d] timesteps (float or int, 0..1000)", B);
    const st_tensor *t = get_input(in, "timestep", 1, 1, want, 0, expect);
    double *v = read_numbers(in->f, t);
    float *ts = xalloc_floats((size_t)B);
    for (int b = 0; b < B; b++) {
        if (!isfinite(v[b])) dfm_die("'%s': input 'timestep' [%d] is %g; expected a finite number", in->path, b, v[b]);
        ts[b] = (float)v[b];
    }
    free(v);
    return ts;
}

/* Every input name must be one this model takes: a misspelt optional input would otherwise be ignored. */
static void check_names(const inputs *in, const char *const *names, const char *model) {
    for (int i = 0; i < in->f->n_tensors; i++) {
        int known = 0;
        for (int k = 0; names[k]; k++) known |= !strcmp(in->f->tensors[i].name, names[k]);
        if (known) continue;
        char list[256] = "";
        for (int k = 0; names[k]; k++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", k ? ", " : "", names[k]);
        dfm_die("'%s': input '%s' is not one a %s forward takes (%s)", in->path, in->f->tensors[i].name, model, list);
    }
}

static void write_sample(const char *path, const float *out, int ndim, const int64_t *shape, const char *model) {
    st_writer *w = st_writer_new();
    st_writer_meta(w, "format", "pt");
    st_writer_meta(w, "dfm_model", model);
    st_writer_add(w, "sample", ST_F32, ndim, shape, out);
    st_writer_finish(w, path);
}

/* ---- the models ----------------------------------------------------------------------------------- */

static int is_diffusers_folder(const char *p) {
    char q[4200];
    struct stat st;
    if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) return 0;
    snprintf(q, sizeof q, "%s/config.json", p);
    if (access(q, F_OK) == 0) return 1;
    snprintf(q, sizeof q, "%s/transformer/config.json", p);
    return access(q, F_OK) == 0;
}

static void forward_dit(const char *model, int diffusers, const char *which, int which_explicit, const inputs *in,
                        const char *out_path) {
    static const char *const names[] = {"hidden_states", "timestep", "class_labels", NULL};
    check_names(in, names, "DiTTransformer2DModel");
    int64_t any4[4] = {-1, -1, -1, -1};
    const st_tensor *hs = get_input(in, "hidden_states", 1, 4, any4, 1, "[B, C, H, W] latents (DiT), float");
    const int B = (int)hs->shape[0];
    if (B > 65536) dfm_die("'%s': input 'hidden_states' has batch %d; at most 65536", in->path, B);
    dit_model m;
    char err[2048];
    if (diffusers) {
        if (dit_import_diffusers(&m, model, B, err, sizeof err)) dfm_die("%s", err);
    } else {
        cli_model_info info;
        if (cli_open_dit(model, which, which_explicit, B, &m, &info, err, sizeof err)) dfm_die("%s", err);
        cli_model_info_free(&info, m.cfg.num_classes);
    }
    const dit_config *c = &m.cfg;
    const int S = c->image_size;
    int64_t want[4] = {B, c->in_channels, S, S};
    char expect[160];
    snprintf(expect, sizeof expect, "[B, in_channels, sample_size, sample_size] = [%d, %d, %d, %d]", B, c->in_channels,
             S, S);
    get_input(in, "hidden_states", 1, 4, want, 1, expect);
    float *ts = read_timesteps(in, B);
    int64_t wb[1] = {B};
    snprintf(expect, sizeof expect, "[B] = [%d] class indices (integers 0..%d; %d is the null class)", B,
             c->num_classes, c->num_classes);
    const st_tensor *lt = get_input(in, "class_labels", 1, 1, wb, 0, expect);
    if (!is_int(lt->dtype))
        dfm_die("'%s': input 'class_labels' has dtype %s; expected integers", in->path, st_dtype_name(lt->dtype));
    double *lv = read_numbers(in->f, lt);
    int *labels = xmalloc(sizeof(int) * (size_t)B);
    for (int b = 0; b < B; b++) {
        if (!(lv[b] >= 0 && lv[b] <= c->num_classes))
            dfm_die("'%s': input 'class_labels' [%d] is %g, outside 0..%d (%d is the null class)", in->path, b, lv[b],
                    c->num_classes, c->num_classes);
        labels[b] = (int)lv[b];
    }
    float *x = read_floats(in->f, st_find(in->f, "hidden_states"));
    const size_t out_n = (size_t)B * c->out_channels * S * S;
    float *out = xalloc_floats(out_n);
    dit_forward(&m, out, x, ts, labels, B);
    int64_t os[4] = {B, c->out_channels, S, S};
    write_sample(out_path, out, 4, os, "dit");
    fprintf(stderr, "forward: DiTTransformer2DModel (%d layers) on %d samples -> %s 'sample' [%d, %d, %d, %d]\n",
            c->num_layers, B, out_path, B, c->out_channels, S, S);
    free(lv), free(labels), free(ts), free(x), free(out);
    dit_free(&m);
}

static void forward_wan(const char *model, int diffusers, const char *which, int which_explicit, const inputs *in,
                        const char *out_path) {
    static const char *const names[] = {"hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask",
                                        NULL};
    check_names(in, names, "WanTransformer3DModel");
    int64_t any5[5] = {-1, -1, -1, -1, -1};
    const st_tensor *hs = get_input(in, "hidden_states", 1, 5, any5, 1, "[B, C, T, H, W] video latents (Wan), float");
    /* the weights alone first: the inputs are checked against the config before the activations are sized */
    wan_model m;
    char err[2048];
    if (diffusers) {
        if (wan_import_diffusers(&m, model, NULL, err, sizeof err)) dfm_die("%s", err);
    } else {
        cli_wan_info info;
        if (cli_open_wan(model, which, which_explicit, NULL, &m, &info, err, sizeof err)) dfm_die("%s", err);
    }
    const wan_config *c = &m.cfg;
    const int B = (int)hs->shape[0], T = (int)hs->shape[2], H = (int)hs->shape[3], W = (int)hs->shape[4];
    char expect[256];
    snprintf(expect, sizeof expect,
             "[B, in_channels, T, H, W] = [B, %d, T, H, W] with T, H, W multiples of the patch size [%d, %d, %d] "
             "and at most %d patches along each",
             c->in_channels, c->patch_t, c->patch_h, c->patch_w, c->rope_max_seq_len);
    int64_t want[5] = {-1, c->in_channels, -1, -1, -1};
    get_input(in, "hidden_states", 1, 5, want, 1, expect);
    if (T % c->patch_t || H % c->patch_h || W % c->patch_w || T / c->patch_t > c->rope_max_seq_len ||
        H / c->patch_h > c->rope_max_seq_len || W / c->patch_w > c->rope_max_seq_len) {
        char got[128];
        shape_text(got, sizeof got, 5, hs->shape);
        dfm_die("'%s': input 'hidden_states' has shape %s; expected %s", in->path, got, expect);
    }
    int64_t wt[3] = {B, -1, c->text_dim};
    snprintf(expect, sizeof expect, "[B, L, text_dim] = [%d, L, %d] text embeddings, float", B, c->text_dim);
    const st_tensor *et = get_input(in, "encoder_hidden_states", 1, 3, wt, 1, expect);
    const int L = (int)et->shape[1];
    float *ts = read_timesteps(in, B);
    int64_t wm[2] = {B, L};
    snprintf(expect, sizeof expect, "[B, L] = [%d, %d] of 0/1, each row a prefix of ones", B, L);
    const st_tensor *mt = get_input(in, "encoder_attention_mask", 0, 2, wm, 0, expect);
    int *lens = NULL;
    if (mt) { /* dfm's cross-attention takes a valid length per sample: the mask must be 1...1 0...0 */
        double *mv = read_numbers(in->f, mt);
        lens = xmalloc(sizeof(int) * (size_t)B);
        for (int b = 0; b < B; b++) {
            int n = 0;
            for (int l = 0; l < L; l++) {
                double v = mv[(size_t)b * L + l];
                if (v != 0 && v != 1)
                    dfm_die("'%s': input 'encoder_attention_mask' [%d, %d] is %g; expected 0 or 1", in->path, b, l, v);
                if (v == 1 && n < l)
                    dfm_die(
                        "'%s': input 'encoder_attention_mask' row %d is not a prefix mask (1 at position %d after a "
                        "0 at %d): dfm takes a valid length per sample, the first tokens",
                        in->path, b, l, n);
                if (v == 1) n++;
            }
            if (n == 0)
                dfm_die("'%s': input 'encoder_attention_mask' row %d has no valid token; expected at least one 1",
                        in->path, b);
            lens[b] = n;
        }
        free(mv);
    }
    wan_shape s = {B, T, H, W, L};
    if (wan_prepare(&m, &s, err, sizeof err)) dfm_die("'%s': the inputs' shape: %s", in->path, err);
    float *x = read_floats(in->f, hs), *text = read_floats(in->f, et);
    const size_t out_n = (size_t)B * c->out_channels * T * H * W;
    float *out = xalloc_floats(out_n);
    wan_forward(&m, out, x, ts, text, lens, &s);
    int64_t os[5] = {B, c->out_channels, T, H, W};
    write_sample(out_path, out, 5, os, "wan");
    fprintf(stderr,
            "forward: WanTransformer3DModel (%d layers) on %d samples of %d x %d x %d, text %d%s -> %s 'sample' "
            "[%d, %d, %d, %d, %d]\n",
            c->num_layers, B, T, H, W, L, lens ? " (masked)" : "", out_path, B, c->out_channels, T, H, W);
    free(lens), free(ts), free(x), free(text), free(out);
    wan_free(&m);
}

int dfm_forward_main(int argc, char **argv) {
    const char *model = NULL, *inputs_path = NULL, *out_path = NULL, *which = "ema";
    int which_explicit = 0;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (cli_opt(argc, argv, &i, "--model", &v))
            model = v;
        else if (cli_opt(argc, argv, &i, "--inputs", &v))
            inputs_path = v;
        else if (cli_opt(argc, argv, &i, "--out", &v))
            out_path = v;
        else if (cli_opt(argc, argv, &i, "--weights", &v))
            which = v, which_explicit = 1;
        else {
            fprintf(stderr, "dfm: error: forward: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (!model || !inputs_path || !out_path) {
        fprintf(stderr, "dfm: error: forward needs --model, --inputs and --out\n");
        usage(stderr);
        return 2;
    }
    if (strcmp(which, "ema") && strcmp(which, "model")) dfm_die("--weights must be 'ema' or 'model' (got '%s')", which);
    kernels_init();
    char err[2048];
    st_file *f = st_open(inputs_path, err, sizeof err);
    if (!f) dfm_die("--inputs: %s", err);
    inputs in = {f, inputs_path};

    int diffusers = is_diffusers_folder(model), wan;
    if (diffusers) {
        char cls[128];
        if (diffusers_transformer_class(model, cls, sizeof cls, err, sizeof err)) dfm_die("%s", err);
        if (!strcmp(cls, "WanTransformer3DModel"))
            wan = 1;
        else if (!strcmp(cls, "DiTTransformer2DModel"))
            wan = 0;
        else
            dfm_die("'%s': transformer _class_name is '%s'; dfm runs DiTTransformer2DModel and WanTransformer3DModel",
                    model, cls);
    } else
        wan = cli_checkpoint_is_wan(model, which, which_explicit);
    if (wan)
        forward_wan(model, diffusers, which, which_explicit, &in, out_path);
    else
        forward_dit(model, diffusers, which, which_explicit, &in, out_path);
    st_close(f);
    return 0;
}
