/* dfm generate: class-conditional samples from a DiT checkpoint, as PNGs, a samples.json manifest and a
 * labelled grid; or, from a Wan checkpoint, clips from text (src/cli/generate_wan.c). */
#include "cli/cli_common.h"
#include "cli/generate_wan.h"
#include "dfm/codec.h"
#include "dfm/common.h"
#include "dfm/kernels.h"
#include "dfm/plot.h"
#include "dfm/sample.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: dfm generate --checkpoint PATH --out DIR [options]\n"
            "  --checkpoint PATH   a dfm weights file, a checkpoint folder (iter_NNNNNNN/, epoch_E_step_S/) or the\n"
            "                      root holding latest_checkpointed_iteration.txt or LATEST (then its newest one)\n"
            "  --weights ema|model which weights of a checkpoint folder (default ema)\n"
            "  --out DIR           output folder: sample_NNNN.png, samples.json, grid.png\n"
            "  --adapter DIR       a LoRA adapter folder (PEFT's adapter_model.safetensors + adapter_config.json)\n"
            "                      merged into the weights first\n"
            "  --objective flow_matching|edm   what the model predicts, when the weights file does not say\n"
            "  --sampler euler|heun             default: euler for flow matching, heun for EDM\n"
            "  --steps N           sampling steps (default 50 flow / 35 EDM)\n"
            "  --guidance G        classifier-free guidance scale (default 1 = none)\n"
            "  --shift S           flow-matching sampling shift (default: the training shift, else 1)\n"
            "  --seed N            base seed; sample i uses seed N + i (default 0)\n"
            "  --classes LIST      comma-separated class numbers or names, or 'all' (default all)\n"
            "  --per-class N       samples of each class (default 8)\n"
            "  --batch N           samples per model evaluation (default 32; Wan 4)\n"
            "Wan checkpoints (clips from text; GIFs, frame strips, samples.json, samples.safetensors):\n"
            "  --prompt TEXT       a caption (repeatable), encoded by the checkpoint's stand-in text encoder\n"
            "  --per-prompt N      clips of each prompt (default 2)\n"
            "  --text-embeddings F precomputed embeddings (safetensors: text_embeddings [n, L, D], text_lens [n])\n");
}

static int parse_classes(const char *s, const cli_model_info *info, int K, int **out, int *n, char *err,
                         size_t errlen) {
    *n = 0;
    *out = NULL;
    if (!strcmp(s, "all")) {
        *out = xmalloc(sizeof(int) * (size_t)K);
        for (int k = 0; k < K; k++) (*out)[k] = k;
        *n = K;
        return 0;
    }
    char *copy = xstrdup(s), *save = NULL;
    int rc = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (isspace((unsigned char)*tok)) tok++;
        long v = -1;
        if (!cli_parse_int(tok, -2147483647L, 2147483647L, &v)) {
            for (int k = 0; k < K; k++)
                if (!strcasecmp(tok, info->class_names[k])) v = k;
            if (v < 0) {
                snprintf(err, errlen, "--classes: '%s' is neither a class number nor a class name", tok);
                rc = -1;
                break;
            }
        }
        if (v < 0 || v >= K) {
            snprintf(err, errlen, "--classes: class %ld is out of range: this model has classes 0..%d", v, K - 1);
            rc = -1;
            break;
        }
        *out = xrealloc(*out, sizeof(int) * (size_t)(*n + 1));
        (*out)[(*n)++] = (int)v;
    }
    free(copy);
    if (!rc && *n == 0) snprintf(err, errlen, "--classes: no classes given"), rc = -1;
    return rc;
}

static void write_file_atomic(const char *path, const void *data, size_t len) {
    dfm_atomic_file af;
    atomic_open(&af, path);
    xfwrite(data, 1, len, af.f, af.tmp_path);
    atomic_commit(&af);
}

/* [-1, 1] -> 0..255, channels last. */
static void to_pixels(uint8_t *px, const float *x, int C, int S) {
    for (int c = 0; c < C; c++)
        for (int i = 0; i < S * S; i++) {
            float v = (x[(size_t)c * S * S + i] + 1.0f) * 127.5f;
            v = v < 0 ? 0 : v > 255 ? 255 : v;
            px[(size_t)i * C + c] = (uint8_t)lrintf(v);
        }
}

static void progress(int done, int total, void *ctx) {
    double t0 = *(double *)ctx;
    fprintf(stderr, "generate: %d/%d samples (%.1f s)\n", done, total, dfm_time_s() - t0);
}

int dfm_generate_main(int argc, char **argv) {
    const char *checkpoint = NULL, *out_dir = NULL, *weights = "ema", *objective = NULL, *sampler = NULL;
    const char *steps_s = NULL, *guid_s = NULL, *shift_s = NULL, *seed_s = "0", *classes_s = "all";
    const char *per_s = "8", *batch_s = NULL, *per_prompt_s = "2", *text_emb = NULL, *adapter = NULL;
    const char **prompts = xcalloc((size_t)argc, sizeof(char *));
    int nprompts = 0;
    int weights_explicit = 0;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (cli_opt(argc, argv, &i, "--checkpoint", &v))
            checkpoint = v;
        else if (cli_opt(argc, argv, &i, "--out", &v))
            out_dir = v;
        else if (cli_opt(argc, argv, &i, "--weights", &v))
            weights = v, weights_explicit = 1;
        else if (cli_opt(argc, argv, &i, "--adapter", &v))
            adapter = v;
        else if (cli_opt(argc, argv, &i, "--objective", &v))
            objective = v;
        else if (cli_opt(argc, argv, &i, "--sampler", &v))
            sampler = v;
        else if (cli_opt(argc, argv, &i, "--steps", &v))
            steps_s = v;
        else if (cli_opt(argc, argv, &i, "--guidance", &v))
            guid_s = v;
        else if (cli_opt(argc, argv, &i, "--shift", &v))
            shift_s = v;
        else if (cli_opt(argc, argv, &i, "--seed", &v))
            seed_s = v;
        else if (cli_opt(argc, argv, &i, "--classes", &v))
            classes_s = v;
        else if (cli_opt(argc, argv, &i, "--per-class", &v))
            per_s = v;
        else if (cli_opt(argc, argv, &i, "--batch", &v))
            batch_s = v;
        else if (cli_opt(argc, argv, &i, "--prompt", &v))
            prompts[nprompts++] = v;
        else if (cli_opt(argc, argv, &i, "--per-prompt", &v))
            per_prompt_s = v;
        else if (cli_opt(argc, argv, &i, "--text-embeddings", &v))
            text_emb = v;
        else {
            fprintf(stderr, "dfm: error: generate: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (!checkpoint || !out_dir) {
        fprintf(stderr, "dfm: error: generate needs --checkpoint and --out\n");
        usage(stderr);
        return 2;
    }
    if (strcmp(weights, "ema") && strcmp(weights, "model"))
        dfm_die("--weights must be 'ema' or 'model' (got '%s')", weights);
    /* numbers first, so a typo fails before any work */
    long per, batch, steps = 0;
    uint64_t seed;
    double guidance = 1.0, shift = 0;
    if (!cli_parse_int(per_s, 1, 100000, &per))
        dfm_die("--per-class must be an integer in 1..100000 (got '%s')", per_s);
    char *wan_cfg = cli_checkpoint_meta(checkpoint, weights, "dfm_wan_config");
    int is_wan = wan_cfg != NULL;
    free(wan_cfg);
    if (!batch_s) batch_s = is_wan ? "4" : "32";
    if (!cli_parse_int(batch_s, 1, 65536, &batch))
        dfm_die("--batch must be an integer in 1..65536 (got '%s')", batch_s);
    if (!cli_parse_u64(seed_s, &seed)) dfm_die("--seed must be a non-negative integer (got '%s')", seed_s);
    if (steps_s && !cli_parse_int(steps_s, 1, 100000, &steps))
        dfm_die("--steps must be an integer in 1..100000 (got '%s')", steps_s);
    if (guid_s && !cli_parse_float(guid_s, -1e6, 1e6, &guidance))
        dfm_die("--guidance must be a number (got '%s')", guid_s);
    if (shift_s && !cli_parse_float(shift_s, 1e-6, 1e6, &shift))
        dfm_die("--shift must be a positive number (got '%s')", shift_s);
    objective_kind obj_flag = OBJ_FLOW_MATCHING;
    if (objective) {
        if (!strcmp(objective, "flow_matching") || !strcmp(objective, "flow"))
            obj_flag = OBJ_FLOW_MATCHING;
        else if (!strcmp(objective, "edm"))
            obj_flag = OBJ_EDM;
        else
            dfm_die("--objective must be 'flow_matching' or 'edm' (got '%s')", objective);
    }
    sampler_kind sk = SAMPLER_EULER;
    if (sampler && !sampler_parse(sampler, &sk)) dfm_die("--sampler must be 'euler' or 'heun' (got '%s')", sampler);
    if (is_wan) {
        long per_prompt;
        if (!cli_parse_int(per_prompt_s, 1, 100000, &per_prompt))
            dfm_die("--per-prompt must be an integer in 1..100000 (got '%s')", per_prompt_s);
        if (objective || sampler || strcmp(classes_s, "all") || strcmp(per_s, "8"))
            dfm_die("--objective, --sampler, --classes and --per-class are DiT options; a Wan checkpoint samples with "
                    "the Euler flow ODE from --prompt captions (--per-prompt N)");
        kernels_init();
        wan_gen_opts o = {checkpoint,
                          weights,
                          out_dir,
                          weights_explicit,
                          adapter,
                          text_emb,
                          prompts,
                          nprompts,
                          (int)per_prompt,
                          (int)batch,
                          (int)steps,
                          guidance,
                          shift_s ? shift : 0,
                          seed,
                          progress};
        int rc = dfm_generate_wan(&o);
        free(prompts);
        return rc;
    }
    if (nprompts || text_emb || strcmp(per_prompt_s, "2"))
        dfm_die("--prompt, --per-prompt and --text-embeddings need a Wan checkpoint; '%s' is a DiT", checkpoint);
    free(prompts);

    kernels_init();
    dit_model m;
    cli_model_info info;
    char err[2048];
    int max_batch = guidance != 1.0 ? (int)(2 * batch) : (int)batch;
    if (cli_open_dit(checkpoint, weights, weights_explicit, max_batch, &m, &info, err, sizeof err)) dfm_die("%s", err);
    cli_apply_adapter(adapter, &m.table, m.params);
    int K = m.cfg.num_classes, C = m.cfg.in_channels, S = m.cfg.image_size;
    if (C != 1 && C != 3) dfm_die("'%s': the model has %d channels; images need 1 (gray) or 3 (RGB)", info.path, C);
    int *classes, ncls;
    if (parse_classes(classes_s, &info, K, &classes, &ncls, err, sizeof err)) dfm_die("%s", err);

    /* settings: the weights file's objective unless overridden */
    objective_kind ok;
    if (info.has_objective) {
        ok = info.obj.kind;
        if (objective && obj_flag != ok) dfm_warn("--objective %s overrides the weights file's objective", objective);
        if (objective) ok = obj_flag;
    } else if (objective) {
        ok = obj_flag;
    } else {
        dfm_die("'%s' does not say which objective trained it (no 'dfm_objective' metadata): pass --objective "
                "flow_matching or --objective edm",
                info.path);
    }
    sampler_config sc;
    sampler_defaults(&sc, ok);
    if (sampler) sc.sampler = sk;
    if (steps) sc.steps = (int)steps;
    sc.guidance = (float)guidance;
    sc.shift = shift_s ? (float)shift : info.obj.flow_shift;
    sc.sigma_data = info.obj.sigma_data;
    if (!sampler_check(&sc, err, sizeof err)) dfm_die("%s", err);

    int n = ncls * (int)per;
    int *labels = xmalloc(sizeof(int) * (size_t)n);
    uint64_t *seeds = xmalloc(sizeof(uint64_t) * (size_t)n);
    for (int r = 0; r < ncls; r++)
        for (int k = 0; k < per; k++) {
            int i = r * (int)per + k;
            labels[i] = classes[r];
            seeds[i] = sample_seed(seed, (uint32_t)i);
        }
    char settings[256];
    if (ok == OBJ_FLOW_MATCHING)
        snprintf(settings, sizeof settings, "flow matching, %s, %d steps, shift %g, guidance %g, seed %llu",
                 sampler_name(sc.sampler), sc.steps, (double)sc.shift, (double)sc.guidance, (unsigned long long)seed);
    else
        snprintf(settings, sizeof settings, "EDM, %s, %d steps, guidance %g, seed %llu", sampler_name(sc.sampler),
                 sc.steps, (double)sc.guidance, (unsigned long long)seed);
    fprintf(stderr, "generate: %s: %d samples (%d classes x %ld), %s\n", info.path, n, ncls, per, settings);
    xmkdir_p(out_dir);

    size_t per_sample = (size_t)C * S * S;
    float *x = xalloc_floats((size_t)n * per_sample);
    double t0 = dfm_time_s();
    if (dit_sample(&m, &sc, labels, seeds, n, x, progress, &t0, err, sizeof err)) dfm_die("%s", err);

    /* one PNG per sample and the manifest */
    uint8_t **px = xcalloc((size_t)n, sizeof(uint8_t *));
    json_t *manifest = json_array();
    char path[8192], name[64];
    for (int i = 0; i < n; i++) {
        px[i] = xmalloc(per_sample);
        to_pixels(px[i], x + (size_t)i * per_sample, C, S);
        size_t len;
        uint8_t *png = png_encode_mem(px[i], S, S, C, &len);
        snprintf(name, sizeof name, "sample_%04d.png", i);
        snprintf(path, sizeof path, "%.4000s/%s", out_dir, name);
        write_file_atomic(path, png, len);
        free(png);
        json_array_append_new(manifest, json_pack("{s:s, s:i, s:s, s:I}", "file", name, "label", labels[i], "class",
                                                  info.class_names[labels[i]], "seed", (json_int_t)seeds[i]));
    }
    char *mj = json_dumps(manifest, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(manifest);
    snprintf(path, sizeof path, "%.4000s/samples.json", out_dir);
    write_file_atomic(path, mj, strlen(mj));
    free(mj);

    /* the grid: one row per requested class */
    const char **row_labels = xmalloc(sizeof(char *) * (size_t)ncls);
    for (int r = 0; r < ncls; r++) row_labels[r] = info.class_names[classes[r]];
    char title[300];
    snprintf(title, sizeof title, "dfm generate: %s", settings);
    sample_grid g = {.rows = ncls,
                     .cols = (int)per,
                     .size = S,
                     .channels = C,
                     .scale = sample_grid_scale(S),
                     .images = (const uint8_t *const *)px,
                     .row_labels = row_labels,
                     .title = title};
    snprintf(path, sizeof path, "%.4000s/grid.png", out_dir);
    if (plot_sample_grid(&g, path, err, sizeof err)) dfm_die("%s", err);
    fprintf(stderr, "generate: wrote %d samples, samples.json and grid.png to %s (%.1f s)\n", n, out_dir,
            dfm_time_s() - t0);

    free(row_labels);
    for (int i = 0; i < n; i++) free(px[i]);
    free(px);
    free(x);
    free(seeds);
    free(labels);
    free(classes);
    cli_model_info_free(&info, K);
    dit_free(&m);
    return 0;
}
