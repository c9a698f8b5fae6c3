/* dfm generate for a Wan checkpoint: text-conditioned clips as animated GIFs and frame strips, with a manifest
 * of the prompt and seed of each and the raw samples as safetensors. */
#include "cli/cli_common.h"
#include "cli/generate_wan.h"
#include "dfm/codec.h"
#include "dfm/common.h"
#include "dfm/gif.h"
#include "dfm/safetensors.h"
#include "dfm/video.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Prompts the built-in clips model knows, when none are given: four garments, four directions. */
static const char *const default_prompts[] = {"a sneaker moving left", "a trouser moving right", "a bag moving up",
                                              "a dress moving down"};

static void write_bytes(const char *path, const void *data, size_t len) {
    dfm_atomic_file af;
    atomic_open(&af, path);
    xfwrite(data, 1, len, af.f, af.tmp_path);
    atomic_commit(&af);
}

static uint8_t to_u8(float v) {
    v = (v + 1.0f) * 127.5f;
    return (uint8_t)lrintf(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* Text for the prompts: the stand-in encoder named by the checkpoint, or embeddings from a file. */
static int load_text(const wan_gen_opts *o, json_t *enc, int text_len, int dim, float **text, int **lens,
                     char ***prompts, int *n, char *err, size_t errlen) {
    if (o->text_embeddings) {
        st_file *f = st_open(o->text_embeddings, err, errlen);
        if (!f) return -1;
        const st_tensor *t = st_find(f, "text_embeddings"), *l = st_find(f, "text_lens");
        if (!t || t->ndim != 3 || t->shape[1] > text_len || t->shape[2] != dim) {
            snprintf(err, errlen,
                     "'%s': expected a tensor 'text_embeddings' [n, <= %d, %d] (the model's text length and "
                     "width)",
                     o->text_embeddings, text_len, dim);
            st_close(f);
            return -1;
        }
        *n = (int)t->shape[0];
        int L = (int)t->shape[1];
        float *raw = xalloc_floats((size_t)*n * L * dim);
        st_read_f32(f, t, raw);
        *text = xalloc_floats((size_t)*n * text_len * dim);
        for (int i = 0; i < *n; i++)
            memcpy(*text + (size_t)i * text_len * dim, raw + (size_t)i * L * dim, sizeof(float) * (size_t)L * dim);
        free(raw);
        *lens = xcalloc((size_t)*n, sizeof(int));
        if (l) {
            if (l->ndim != 1 || l->shape[0] != *n) {
                snprintf(err, errlen, "'%s': 'text_lens' must be [%d]", o->text_embeddings, *n);
                st_close(f);
                return -1;
            }
            float *lv = xalloc_floats((size_t)*n);
            st_read_f32(f, l, lv);
            for (int i = 0; i < *n; i++) (*lens)[i] = (int)lv[i];
            free(lv);
        } else
            for (int i = 0; i < *n; i++) (*lens)[i] = L;
        json_t *names = st_meta(f, "prompts") ? json_loads(st_meta(f, "prompts"), 0, NULL) : NULL;
        *prompts = xcalloc((size_t)*n, sizeof(char *));
        for (int i = 0; i < *n; i++) {
            json_t *v = json_is_array(names) ? json_array_get(names, (size_t)i) : NULL;
            char buf[64];
            snprintf(buf, sizeof buf, "embedding %d", i);
            (*prompts)[i] = xstrdup(json_is_string(v) ? json_string_value(v) : buf);
        }
        json_decref(names);
        st_close(f);
        return 0;
    }
    const char *kind = json_string_value(json_object_get(enc, "kind"));
    if (!kind || strcmp(kind, "stand_in")) {
        snprintf(err, errlen,
                 "the checkpoint was trained on precomputed text embeddings: pass them with "
                 "--text-embeddings FILE.safetensors (tensor 'text_embeddings' [n, L, %d])",
                 dim);
        return -1;
    }
    uint64_t seed = (uint64_t)json_integer_value(json_object_get(enc, "seed"));
    *n = o->nprompts ? o->nprompts : (int)(sizeof default_prompts / sizeof default_prompts[0]);
    *text = xalloc_floats((size_t)*n * text_len * dim);
    *lens = xcalloc((size_t)*n, sizeof(int));
    *prompts = xcalloc((size_t)*n, sizeof(char *));
    for (int i = 0; i < *n; i++) {
        const char *p = o->nprompts ? o->prompts[i] : default_prompts[i];
        (*prompts)[i] = xstrdup(p);
        char e2[512];
        if (text_encoder_encode(p, dim, text_len, seed, *text + (size_t)i * text_len * dim, &(*lens)[i], e2,
                                sizeof e2) != 0) {
            snprintf(err, errlen, "prompt '%s': %s", p, e2);
            return -1;
        }
    }
    return 0;
}

int dfm_generate_wan(const wan_gen_opts *o) {
    char err[2048];
    char *sample_text = cli_checkpoint_meta(o->checkpoint, o->weights, "dfm_wan_sample");
    json_t *sm = sample_text ? json_loads(sample_text, 0, NULL) : NULL;
    free(sample_text);
    int C = (int)json_integer_value(json_object_get(sm, "channels")),
        T = (int)json_integer_value(json_object_get(sm, "frames")),
        H = (int)json_integer_value(json_object_get(sm, "height")),
        W = (int)json_integer_value(json_object_get(sm, "width")),
        L = (int)json_integer_value(json_object_get(sm, "text_len"));
    if (C < 1 || T < 1 || H < 1 || W < 1 || L < 1)
        dfm_die("'%s': no valid 'dfm_wan_sample' metadata (channels, frames, height, width, text_len): was it saved by "
                "dfm pretrain?",
                o->checkpoint);
    int rows = o->guidance != 1.0 ? 2 * o->batch : o->batch;
    wan_shape mx = {rows, T, H, W, L};
    wan_model m;
    cli_wan_info info;
    if (cli_open_wan(o->checkpoint, o->weights, o->weights_explicit, &mx, &m, &info, err, sizeof err))
        dfm_die("%s", err);
    cli_apply_adapter(o->adapter, &m.table, m.params);
    if (m.cfg.in_channels != C)
        dfm_die("'%s': the model has %d input channels, its clips %d", info.path, m.cfg.in_channels, C);

    float *text;
    int *lens, np;
    char **prompts;
    if (load_text(o, json_object_get(sm, "text_encoder"), L, m.cfg.text_dim, &text, &lens, &prompts, &np, err,
                  sizeof err))
        dfm_die("%s", err);

    sampler_config sc;
    sampler_defaults(&sc, info.has_objective ? info.obj.kind : OBJ_FLOW_MATCHING);
    if (o->steps) sc.steps = o->steps;
    sc.guidance = (float)o->guidance;
    sc.shift = o->shift > 0 ? (float)o->shift : info.obj.flow_shift;
    sc.sigma_data = info.obj.sigma_data;
    if (!sampler_check(&sc, err, sizeof err)) dfm_die("%s", err);

    int n = np * o->per;
    size_t tl = (size_t)L * m.cfg.text_dim, per = (size_t)C * T * H * W;
    float *all_text = xalloc_floats((size_t)n * tl);
    int *all_lens = xcalloc((size_t)n, sizeof(int));
    uint64_t *seeds = xcalloc((size_t)n, sizeof(uint64_t));
    for (int p = 0; p < np; p++)
        for (int k = 0; k < o->per; k++) {
            int i = p * o->per + k;
            memcpy(all_text + (size_t)i * tl, text + (size_t)p * tl, tl * sizeof(float));
            all_lens[i] = lens[p];
            seeds[i] = sample_seed(o->seed, (uint32_t)i);
        }
    fprintf(stderr,
            "generate: %s: %d clips (%d prompts x %d) of %d x %dx%d, flow matching, %s, %d steps, shift %g, "
            "guidance %g, seed %llu\n",
            info.path, n, np, o->per, T, H, W, sampler_name(sc.sampler), sc.steps, (double)sc.shift,
            (double)sc.guidance, (unsigned long long)o->seed);
    xmkdir_p(o->out_dir);
    float *x = xalloc_floats((size_t)n * per);
    double t0 = dfm_time_s();
    if (wan_sample(&m, &sc, all_text, all_lens, seeds, n, T, H, W, L, x, o->progress, &t0, err, sizeof err))
        dfm_die("%s", err);

    /* every clip: a looping GIF and a strip of its frames (gray or RGB), plus the manifest and the raw samples */
    char path[8192], gif_name[64], strip_name[64];
    json_t *manifest = json_array();
    int viewable = C == 1 || C == 3;
    uint8_t *frames = xmalloc((size_t)T * H * W * (size_t)C), *strip = xmalloc((size_t)T * H * W * (size_t)C);
    for (int i = 0; i < n && viewable; i++) {
        const float *clip = x + (size_t)i * per;
        for (int t = 0; t < T; t++)
            for (int y = 0; y < H; y++)
                for (int xx = 0; xx < W; xx++)
                    for (int c = 0; c < C; c++) {
                        uint8_t v = to_u8(clip[(((size_t)c * T + t) * H + y) * W + xx]);
                        frames[(((size_t)t * H + y) * W + xx) * C + c] = v;
                        strip[(((size_t)y * T + t) * W + xx) * C + c] = v; /* frames side by side */
                    }
        snprintf(gif_name, sizeof gif_name, "clip_%04d.gif", i);
        snprintf(path, sizeof path, "%.4000s/%s", o->out_dir, gif_name);
        if (gif_write(path, frames, T, H, W, C, 25, 4, err, sizeof err) != 0) dfm_die("%s", err);
        size_t len;
        uint8_t *png = png_encode_mem(strip, T * W, H, C, &len);
        snprintf(strip_name, sizeof strip_name, "clip_%04d_frames.png", i);
        snprintf(path, sizeof path, "%.4000s/%s", o->out_dir, strip_name);
        write_bytes(path, png, len);
        free(png);
        json_array_append_new(manifest, json_pack("{s:s, s:s, s:s, s:I}", "gif", gif_name, "frames", strip_name,
                                                  "prompt", prompts[i / o->per], "seed", (json_int_t)seeds[i]));
    }
    if (!viewable)
        for (int i = 0; i < n; i++)
            json_array_append_new(manifest, json_pack("{s:s, s:i, s:I}", "prompt", prompts[i / o->per], "index", i,
                                                      "seed", (json_int_t)seeds[i]));
    st_writer *w = st_writer_new();
    int64_t shape[5] = {n, C, T, H, W};
    st_writer_add(w, "sample", ST_F32, 5, shape, x);
    snprintf(path, sizeof path, "%.4000s/samples.safetensors", o->out_dir);
    st_writer_finish(w, path);
    char *mj = json_dumps(manifest, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    snprintf(path, sizeof path, "%.4000s/samples.json", o->out_dir);
    write_bytes(path, mj, strlen(mj));
    fprintf(stderr, "generate: wrote %d clips%s, samples.json and samples.safetensors to %s (%.1f s)\n", n,
            viewable ? " (GIF + frame strip each)" : " (latents: decode them with the VAE to view)", o->out_dir,
            dfm_time_s() - t0);
    free(mj);
    json_decref(manifest);
    free(frames), free(strip), free(x), free(seeds), free(all_lens), free(all_text), free(text), free(lens);
    for (int p = 0; p < np; p++) free(prompts[p]);
    free(prompts);
    json_decref(sm);
    wan_free(&m);
    return 0;
}
