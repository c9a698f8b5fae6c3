/* Wan 2.1 diffusers folders: wan_export_diffusers -> wan_import_diffusers round trips (fp32 bitwise, bf16 / fp16
 * as their rounding, sharded with diffusers' index), the files' contents (model_index.json, config.json keys,
 * the scheduler), refusals that name the tensor or key (missing, extra, wrong shape, I2V config, broken index),
 * `dfm export` on Wan weights files and sharded checkpoints, and the exported folder loaded by name into the
 * PyTorch reference (tests/ref/diffusers_check.py) giving dfm's forward output. */
#include "dfm/checkpoint.h"
#include "dfm/common.h"
#include "dfm/diffusers.h"
#include "dfm/kernels.h"
#include "dfm/safetensors.h"
#include "dfm/wan.h"
#include "test.h"
#include "test_fs.h"

#include <jansson.h>
#include <string.h>

static char *tmp;

/* Small, with eps and freq_dim off their defaults so that a value dropped on the way would show. */
static wan_config small_config(void) {
    wan_config c;
    wan_config_named(&c, "wan_tiny");
    c.num_layers = 2;
    c.ffn_dim = 48;
    c.text_dim = 24;
    c.freq_dim = 32;
    c.in_channels = 4, c.out_channels = 4;
    c.eps = 1e-5f;
    return c;
}

static void randomise(wan_model *m) {
    test_fill_randn(m->params, m->table.total, 0.2f);
    for (int i = 0; i < m->table.n; i++) {
        const param_entry *e = &m->table.e[i];
        if (strstr(e->name, "norm") && strstr(e->name, ".weight"))
            for (size_t j = 0; j < e->numel; j++) m->params[e->offset + j] += 1.0f;
    }
}

static int run_dfm(const char *args, const char *stderr_path) {
    fflush(stdout);
    return test_sh("%s %s >/dev/null 2>'%s'", test_dfm_bin(), args, stderr_path);
}

static json_t *load(const char *path) {
    return json_load_file(path, 0, NULL);
}
static const char *jstr(json_t *o, const char *k) {
    return json_string_value(json_object_get(o, k));
}

static float bf16_round(float x) {
    uint32_t u = (uint32_t)f32_to_bf16(x) << 16;
    float v;
    memcpy(&v, &u, 4);
    return v;
}

/* fp16 bits -> float, written out here independently of the library's reader */
static float f16_value(uint16_t h) {
    int e = (h >> 10) & 31, mant = h & 1023;
    float v = e == 0 ? ldexpf((float)mant, -24) : e == 31 ? INFINITY : ldexpf(1.0f + mant / 1024.0f, e - 15);
    return (h & 0x8000) ? -v : v;
}

/* Rewrite `src` into `dst` through edit(name, shape) -> 0 keep, 1 drop, 2 change shape; optionally add one tensor. */
static void rewrite(const char *src, const char *dst, const char *drop, const char *reshape, const char *add) {
    st_file *f = st_open_or_die(src);
    st_writer *w = st_writer_new();
    float **bufs = xcalloc((size_t)f->n_tensors + 1, sizeof(float *));
    for (int i = 0; i < f->n_tensors; i++) {
        const st_tensor *t = &f->tensors[i];
        if (drop && !strcmp(t->name, drop)) continue;
        bufs[i] = xalloc_floats((size_t)st_numel(t));
        st_read_f32(f, t, bufs[i]);
        int64_t shape[ST_MAX_DIMS];
        memcpy(shape, t->shape, sizeof shape);
        int ndim = t->ndim;
        if (reshape && !strcmp(t->name, reshape)) { /* same element count, other shape: [a, b] -> [b, a] or [n, 1] */
            if (ndim == 2) {
                int64_t s = shape[0];
                shape[0] = shape[1], shape[1] = s;
            } else
                shape[ndim++] = 1;
        }
        st_writer_add(w, t->name, ST_F32, ndim, shape, bufs[i]);
    }
    static float extra[3] = {1, 2, 3};
    int64_t es[1] = {3};
    if (add) st_writer_add(w, add, ST_F32, 1, es, extra);
    st_writer_finish(w, dst);
    for (int i = 0; i < f->n_tensors; i++) free(bufs[i]);
    free(bufs);
    st_close(f);
}

static void test_round_trip(void) {
    wan_config c = small_config();
    wan_model m;
    wan_create_weights_only(&m, &c);
    randomise(&m);
    diffusers_export_opts o;
    diffusers_export_defaults(&o);
    o.flow_shift = 5.0f;
    char err[1024];
    char *dir = xstrdup(test_path("%s/wan", tmp));
    int rc = wan_export_diffusers(&m, m.params, dir, &o, err, sizeof err);
    CHECK(rc == 0, "wan_export_diffusers writes a pipeline folder%s%s", rc ? ": " : "", rc ? err : "");

    json_t *idx = load(test_path("%s/model_index.json", dir));
    json_t *cfg = load(test_path("%s/transformer/config.json", dir));
    json_t *sch = load(test_path("%s/scheduler/scheduler_config.json", dir));
    CHECK(idx && !strcmp(jstr(idx, "_class_name"), "WanPipeline") &&
              !strcmp(json_string_value(json_array_get(json_object_get(idx, "transformer"), 1)),
                      "WanTransformer3DModel") &&
              !strcmp(json_string_value(json_array_get(json_object_get(idx, "scheduler"), 1)),
                      "UniPCMultistepScheduler") &&
              json_is_null(json_array_get(json_object_get(idx, "vae"), 0)) &&
              json_is_null(json_array_get(json_object_get(idx, "text_encoder"), 0)) &&
              json_is_null(json_array_get(json_object_get(idx, "tokenizer"), 0)),
          "model_index.json: WanPipeline, WanTransformer3DModel, UniPCMultistepScheduler, no VAE/text encoder");
    const char *keys[] = {"patch_size",
                          "num_attention_heads",
                          "attention_head_dim",
                          "in_channels",
                          "out_channels",
                          "text_dim",
                          "freq_dim",
                          "ffn_dim",
                          "num_layers",
                          "cross_attn_norm",
                          "qk_norm",
                          "eps",
                          "image_dim",
                          "added_kv_proj_dim",
                          "rope_max_seq_len"};
    int have = 0;
    for (size_t i = 0; cfg && i < sizeof keys / sizeof keys[0]; i++) have += json_object_get(cfg, keys[i]) != NULL;
    json_t *ps = json_object_get(cfg, "patch_size");
    CHECK(
        cfg && have == (int)(sizeof keys / sizeof keys[0]) &&
            !strcmp(jstr(cfg, "_class_name"), "WanTransformer3DModel") &&
            json_integer_value(json_object_get(cfg, "num_attention_heads")) == 2 &&
            json_integer_value(json_object_get(cfg, "attention_head_dim")) == 16 &&
            json_integer_value(json_object_get(cfg, "ffn_dim")) == 48 &&
            json_integer_value(json_object_get(cfg, "text_dim")) == 24 &&
            json_integer_value(json_object_get(cfg, "freq_dim")) == 32 &&
            json_real_value(json_object_get(cfg, "eps")) == 1e-5 && json_integer_value(json_array_get(ps, 0)) == 1 &&
            json_integer_value(json_array_get(ps, 2)) == 2 && json_is_true(json_object_get(cfg, "cross_attn_norm")) &&
            !strcmp(jstr(cfg, "qk_norm"), "rms_norm_across_heads") && json_is_null(json_object_get(cfg, "image_dim")) &&
            json_is_null(json_object_get(cfg, "added_kv_proj_dim")),
        "transformer/config.json: all %d WanTransformer3DModel keys with the model's values (eps written 1e-05)", have);
    CHECK(sch && !strcmp(jstr(sch, "_class_name"), "UniPCMultistepScheduler") &&
              !strcmp(jstr(sch, "prediction_type"), "flow_prediction") &&
              json_is_true(json_object_get(sch, "use_flow_sigmas")) &&
              json_real_value(json_object_get(sch, "flow_shift")) == 5.0 &&
              json_integer_value(json_object_get(sch, "num_train_timesteps")) == 1000,
          "scheduler_config.json: UniPC, flow_prediction, use_flow_sigmas, flow_shift 5 (as Wan's hub pipelines)");
    json_decref(idx), json_decref(cfg), json_decref(sch);

    char serr[512];
    st_file *f = st_open(test_path("%s/transformer/diffusion_pytorch_model.safetensors", dir), serr, sizeof serr);
    int names_ok = f && f->n_tensors == m.table.n;
    for (int i = 0; names_ok && i < m.table.n; i++) {
        const st_tensor *t = st_find(f, m.table.e[i].name);
        names_ok = t && t->dtype == ST_F32 && t->ndim == m.table.e[i].ndim;
    }
    CHECK(names_ok, "one F32 safetensors file holding exactly the model's %d tensors under diffusers names", m.table.n);
    if (f) st_close(f);

    /* import: the pipeline folder, the transformer folder, weights only and for a max shape */
    wan_model r;
    wan_shape mx = {2, 2, 4, 4, 5};
    rc = wan_import_diffusers(&r, dir, &mx, err, sizeof err);
    CHECK(rc == 0 && r.table.total == m.table.total && !memcmp(r.params, m.params, m.table.total * sizeof(float)) &&
              !memcmp(&r.cfg, &m.cfg, sizeof r.cfg) && r.acts != NULL,
          "export -> import (pipeline folder, max shape): same config, bitwise the same %zu parameters%s%s",
          m.table.total, rc ? ": " : "", rc ? err : "");
    if (rc == 0) wan_free(&r);
    rc = wan_import_diffusers(&r, test_path("%s/transformer", dir), NULL, err, sizeof err);
    CHECK(rc == 0 && r.acts == NULL && r.grads == NULL && !memcmp(r.params, m.params, m.table.total * sizeof(float)),
          "import of the transformer/ folder, weights only (no gradients, no activations)%s%s", rc ? ": " : "",
          rc ? err : "");
    if (rc == 0) wan_free(&r);
    wan_shape bad = {1, 3, 5, 4, 2};
    rc = wan_import_diffusers(&r, dir, &bad, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "not divisible by the patch size"), "import for an impossible shape: %s", err);

    /* bf16 and fp16: every parameter is its rounding */
    o.dtype = ST_BF16;
    rc = wan_export_diffusers(&m, m.params, test_path("%s/wan_bf16", tmp), &o, err, sizeof err);
    rc |= wan_import_diffusers(&r, test_path("%s/wan_bf16", tmp), NULL, err, sizeof err);
    int ok = rc == 0;
    for (size_t i = 0; ok && i < m.table.total; i++) ok = r.params[i] == bf16_round(m.params[i]);
    f = st_open(test_path("%s/wan_bf16/transformer/diffusion_pytorch_model.safetensors", tmp), serr, sizeof serr);
    CHECK(ok && f && f->tensors[0].dtype == ST_BF16,
          "bf16 export -> import: BF16 tensors, each parameter its bf16 rounding");
    if (f) st_close(f);
    if (rc == 0) wan_free(&r);
    o.dtype = ST_F16;
    rc = wan_export_diffusers(&m, m.params, test_path("%s/wan_f16", tmp), &o, err, sizeof err);
    rc |= wan_import_diffusers(&r, test_path("%s/wan_f16", tmp), NULL, err, sizeof err);
    ok = rc == 0;
    for (size_t i = 0; ok && i < m.table.total; i++) ok = r.params[i] == f16_value(f32_to_f16(m.params[i]));
    CHECK(ok, "fp16 export -> import: each parameter its fp16 rounding");
    if (rc == 0) wan_free(&r);
    o.dtype = ST_F32;

    /* sharded: files of at most a third of the weights each, with diffusers' index */
    uint64_t total_bytes = m.table.total * 4, max_shard = total_bytes / 3;
    o.max_shard_bytes = max_shard;
    char *sdir = xstrdup(test_path("%s/wan_sharded", tmp));
    rc = wan_export_diffusers(&m, m.params, sdir, &o, err, sizeof err);
    json_t *index = load(test_path("%s/transformer/diffusion_pytorch_model.safetensors.index.json", sdir));
    json_t *map = json_object_get(index, "weight_map");
    int nfiles = 0, sizes_ok = 1, listed = (int)json_object_size(map);
    for (int k = 1; k <= 99; k++) {
        char fn[128];
        snprintf(fn, sizeof fn, "%s/transformer/diffusion_pytorch_model-%05d-of-", sdir, k);
        char *glob_cmd = xstrdup(test_path("ls %s* >/dev/null 2>&1", fn));
        int exists = test_sh("%s", glob_cmd) == 0;
        free(glob_cmd);
        if (!exists) break;
        nfiles++;
    }
    for (int k = 1; k <= nfiles; k++) {
        f = st_open(test_path("%s/transformer/diffusion_pytorch_model-%05d-of-%05d.safetensors", sdir, k, nfiles), serr,
                    sizeof serr);
        uint64_t bytes = 0;
        for (int i = 0; f && i < f->n_tensors; i++) bytes += f->tensors[i].end - f->tensors[i].begin;
        sizes_ok &= f && (bytes <= max_shard || f->n_tensors == 1);
        for (int i = 0; f && i < f->n_tensors; i++) {
            const char *want = json_string_value(json_object_get(map, f->tensors[i].name));
            char fn[96];
            snprintf(fn, sizeof fn, "diffusion_pytorch_model-%05d-of-%05d.safetensors", k, nfiles);
            sizes_ok &= want && !strcmp(want, fn);
        }
        if (f) st_close(f);
    }
    CHECK(rc == 0 && nfiles >= 3 && listed == m.table.n && sizes_ok &&
              json_integer_value(json_object_get(json_object_get(index, "metadata"), "total_size")) ==
                  (json_int_t)total_bytes &&
              test_sh("test -e %s/transformer/diffusion_pytorch_model.safetensors", sdir) != 0,
          "sharded export: %d files diffusion_pytorch_model-0000K-of-%05d of <= %llu bytes, index maps all %d "
          "tensors, total_size %llu",
          nfiles, nfiles, (unsigned long long)max_shard, listed, (unsigned long long)total_bytes);
    json_decref(index);
    rc = wan_import_diffusers(&r, sdir, NULL, err, sizeof err);
    CHECK(rc == 0 && !memcmp(r.params, m.params, m.table.total * sizeof(float)),
          "import of the sharded export: bitwise the same parameters%s%s", rc ? ": " : "", rc ? err : "");
    if (rc == 0) wan_free(&r);
    o.max_shard_bytes = total_bytes;
    rc = wan_export_diffusers(&m, m.params, test_path("%s/wan_fits", tmp), &o, err, sizeof err);
    CHECK(rc == 0 && test_sh("test -f %s/wan_fits/transformer/diffusion_pytorch_model.safetensors && ! test -e "
                             "%s/wan_fits/transformer/diffusion_pytorch_model.safetensors.index.json",
                             tmp, tmp) == 0,
          "a max shard size the weights fit in: one file and no index (as diffusers)");
    o.max_shard_bytes = 0;

    /* refusals, each naming what is wrong */
    const char *single = test_path("%s/transformer/diffusion_pytorch_model.safetensors", dir);
    char *bdir = xstrdup(test_path("%s/broken", tmp));
    char *bfile = xstrdup(test_path("%s/transformer/diffusion_pytorch_model.safetensors", bdir));
    test_sh("mkdir -p %s/transformer && cp %s/transformer/config.json %s/transformer/", bdir, dir, bdir);
    rewrite(single, bfile, "blocks.1.attn2.norm_k.weight", NULL, NULL);
    rc = wan_import_diffusers(&r, bdir, NULL, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "'blocks.1.attn2.norm_k.weight' [32] is missing"), "a missing tensor: %s", err);
    rewrite(single, bfile, NULL, NULL, "blocks.0.attn2.add_k_proj.weight");
    rc = wan_import_diffusers(&r, bdir, NULL, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "'blocks.0.attn2.add_k_proj.weight' [3] is not part of"),
          "an unknown (I2V) tensor: %s", err);
    rewrite(single, bfile, NULL, "blocks.0.ffn.net.0.proj.weight", NULL);
    rc = wan_import_diffusers(&r, bdir, NULL, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "'blocks.0.ffn.net.0.proj.weight' has shape [32, 48]") && strstr(err, "[48, 32]"),
          "a tensor of the wrong shape: %s", err);
    /* a tensor stored as F64 and one as F8: converted */
    {
        st_file *sf = st_open_or_die(single);
        st_writer *w = st_writer_new();
        double *d64 = NULL;
        uint8_t *f8 = NULL;
        float **bufs = xcalloc((size_t)sf->n_tensors, sizeof(float *));
        for (int i = 0; i < sf->n_tensors; i++) {
            const st_tensor *t = &sf->tensors[i];
            bufs[i] = xalloc_floats((size_t)st_numel(t));
            st_read_f32(sf, t, bufs[i]);
            if (!strcmp(t->name, "proj_out.weight")) {
                d64 = xmalloc(sizeof(double) * (size_t)st_numel(t));
                for (int64_t k = 0; k < st_numel(t); k++) d64[k] = bufs[i][k];
                st_writer_add(w, t->name, ST_F64, t->ndim, t->shape, d64);
            } else if (!strcmp(t->name, "blocks.0.norm2.bias")) {
                /* e4m3: 0x38 = 1.0, 0xC4 = -3.0 (1.1 x 2^1), 0x01 = 2^-9 (subnormal), 0x7E = 448 */
                static const uint8_t pat[4] = {0x38, 0xC4, 0x01, 0x7E};
                f8 = xmalloc((size_t)st_numel(t));
                for (int64_t k = 0; k < st_numel(t); k++) f8[k] = pat[k % 4];
                st_writer_add(w, t->name, ST_F8_E4M3, t->ndim, t->shape, f8);
            } else
                st_writer_add(w, t->name, ST_F32, t->ndim, t->shape, bufs[i]);
        }
        st_writer_finish(w, bfile);
        rc = wan_import_diffusers(&r, bdir, NULL, err, sizeof err);
        const param_entry *pe = param_table_find(&m.table, "proj_out.weight");
        const param_entry *nb = param_table_find(&m.table, "blocks.0.norm2.bias");
        int conv = rc == 0 && !memcmp(r.params + pe->offset, m.params + pe->offset, pe->numel * sizeof(float)) &&
                   r.params[nb->offset] == 1.0f && r.params[nb->offset + 1] == -3.0f &&
                   r.params[nb->offset + 2] == ldexpf(1.0f, -9) && r.params[nb->offset + 3] == 448.0f;
        CHECK(conv, "F64 and F8_E4M3 tensors are read and converted%s%s", rc ? ": " : "", rc ? err : "");
        if (rc == 0) wan_free(&r);
        for (int i = 0; i < sf->n_tensors; i++) free(bufs[i]);
        free(bufs), free(d64), free(f8);
        st_close(sf);
    }
    /* config: I2V and another class */
    test_sh("cp %s %s", single, bfile);
    test_sh("sed -i 's/\"image_dim\": null/\"image_dim\": 1280/' %s/transformer/config.json", bdir);
    rc = wan_import_diffusers(&r, bdir, NULL, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "image_dim") && strstr(err, "config.json"), "an I2V config is refused: %s", err);
    test_sh("cp %s/transformer/config.json %s/transformer/ && sed -i "
            "'s/WanTransformer3DModel/DiTTransformer2DModel/' %s/transformer/config.json",
            dir, bdir, bdir);
    rc = wan_import_diffusers(&r, bdir, NULL, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "_class_name"), "another _class_name is refused: %s", err);
    /* a broken index: a tensor in a file the index does not name for it, a missing shard */
    char *xdir = xstrdup(test_path("%s/badindex", tmp));
    test_sh("cp -r %s %s && cd %s/transformer && sed -i 's/-00002-of/-00001-of/' "
            "diffusion_pytorch_model.safetensors.index.json",
            sdir, xdir, xdir);
    rc = wan_import_diffusers(&r, xdir, NULL, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "weight_map puts"), "an index naming the wrong shard for a tensor: %s", err);
    test_sh("rm -rf %s && cp -r %s %s && rm %s/transformer/diffusion_pytorch_model-00002-of-*", xdir, sdir, xdir, xdir);
    rc = wan_import_diffusers(&r, xdir, NULL, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "-00002-of-"), "an index naming a missing shard: %s", err);

    /* replacing an earlier export, refusing anything else */
    rc = wan_export_diffusers(&m, m.params, sdir, &o, err, sizeof err);
    CHECK(rc == 0 && test_sh("test -f %s/transformer/diffusion_pytorch_model.safetensors && ! test -e "
                             "%s/transformer/diffusion_pytorch_model.safetensors.index.json && ! ls -d %s.tmp.* "
                             ">/dev/null 2>&1",
                             sdir, sdir, sdir) == 0,
          "re-export over a sharded export replaces it whole (one file, no stale index), no temporary folder left");
    test_sh("mkdir -p %s/precious && touch %s/precious/keep", tmp, tmp);
    rc = wan_export_diffusers(&m, m.params, test_path("%s/precious", tmp), &o, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "refusing"), "export into a folder that is not an export is refused: %s", err);

    free(xdir), free(bdir), free(bfile), free(sdir), free(dir);
    wan_free(&m);
}

/* dfm export on Wan weights files and checkpoints */
static void test_export_cmd(void) {
    wan_config c = small_config();
    wan_model m;
    wan_create_weights_only(&m, &c);
    randomise(&m);
    char *w = xstrdup(test_path("%s/wan_w.safetensors", tmp)), *errf = xstrdup(test_path("%s/stderr.txt", tmp));
    const char *meta[] = {"dfm_objective", "{\"kind\": \"flow_matching\", \"flow_shift\": 2.5}", NULL};
    wan_save_weights(&m, m.params, w, meta);
    int rc = run_dfm(test_path("export --checkpoint %s --out %s/cli", w, tmp), errf);
    wan_model r;
    char err[1024];
    int irc = rc == 0 ? wan_import_diffusers(&r, test_path("%s/cli", tmp), NULL, err, sizeof err) : -1;
    json_t *sch = load(test_path("%s/cli/scheduler/scheduler_config.json", tmp));
    CHECK(irc == 0 && !memcmp(r.params, m.params, m.table.total * sizeof(float)) && sch &&
              !strcmp(jstr(sch, "_class_name"), "UniPCMultistepScheduler") &&
              json_real_value(json_object_get(sch, "flow_shift")) == 2.5,
          "dfm export of a Wan weights file: a WanPipeline folder, same weights, UniPC with the training shift 2.5 "
          "(exit %d)",
          rc);
    json_decref(sch);
    if (irc == 0) wan_free(&r);

    rc = run_dfm(test_path("export --checkpoint %s --out %s/cli2 --dtype bf16 --scheduler euler --shift 7 "
                           "--max-shard-size 4KB",
                           w, tmp),
                 errf);
    sch = load(test_path("%s/cli2/scheduler/scheduler_config.json", tmp));
    json_t *mi = load(test_path("%s/cli2/model_index.json", tmp));
    CHECK(rc == 0 && sch && !strcmp(jstr(sch, "_class_name"), "FlowMatchEulerDiscreteScheduler") &&
              json_real_value(json_object_get(sch, "shift")) == 7.0 && mi &&
              !strcmp(json_string_value(json_array_get(json_object_get(mi, "scheduler"), 1)),
                      "FlowMatchEulerDiscreteScheduler") &&
              test_sh("test -f %s/cli2/transformer/diffusion_pytorch_model.safetensors.index.json", tmp) == 0,
          "--dtype bf16 --scheduler euler --shift 7 --max-shard-size 4KB: FlowMatchEulerDiscreteScheduler, shards");
    json_decref(sch), json_decref(mi);
    irc = rc == 0 ? wan_import_diffusers(&r, test_path("%s/cli2", tmp), NULL, err, sizeof err) : -1;
    int ok = irc == 0;
    for (size_t i = 0; ok && i < m.table.total; i++) ok = r.params[i] == bf16_round(m.params[i]);
    CHECK(ok, "... and imports back as the bf16 rounding%s%s", irc ? ": " : "", irc ? err : "");
    if (irc == 0) wan_free(&r);

    /* a sharded checkpoint (2 ranks) at the root's latest iteration; --weights model */
    const char *root = test_path("%s/ckpt", tmp);
    char *it = xstrdup(test_path("%s/iter_0000004", root));
    test_sh("mkdir -p %s && echo 4 > %s/latest_checkpointed_iteration.txt", it, root);
    float *ema = xalloc_floats(m.table.total);
    for (size_t i = 0; i < m.table.total; i++) ema[i] = 0.5f * m.params[i];
    char *cfg_json = wan_config_to_json(&m.cfg);
    const char *smeta[] = {"dfm_wan_config", cfg_json, NULL};
    const char *kinds[2] = {"model", "ema"};
    size_t half = m.table.total / 2 + 7;
    for (int rank = 0; rank < 2; rank++) {
        size_t b = rank ? half : 0, e = rank ? m.table.total : half;
        const float *bufs[2] = {m.params + b, ema + b};
        ckpt_write_shard(it, rank, 2, &m.table, b, e, 2, kinds, bufs, smeta);
    }
    rc = run_dfm(test_path("export --checkpoint %s --weights model --out %s/cli3", root, tmp), errf);
    irc = rc == 0 ? wan_import_diffusers(&r, test_path("%s/cli3", tmp), NULL, err, sizeof err) : -1;
    CHECK(irc == 0 && !memcmp(r.params, m.params, m.table.total * sizeof(float)),
          "dfm export of a sharded Wan checkpoint (2 shards, --weights model): the gathered weights (exit %d)", rc);
    if (irc == 0) wan_free(&r);
    rc = run_dfm(test_path("export --checkpoint %s --out %s/cli4", root, tmp), errf);
    irc = rc == 0 ? wan_import_diffusers(&r, test_path("%s/cli4", tmp), NULL, err, sizeof err) : -1;
    sch = load(test_path("%s/cli4/scheduler/scheduler_config.json", tmp));
    CHECK(irc == 0 && !memcmp(r.params, ema, m.table.total * sizeof(float)) && sch &&
              json_real_value(json_object_get(sch, "flow_shift")) == 3.0,
          "... default --weights ema: the EMA weights; no objective metadata: Wan's usual shift 3");
    json_decref(sch);
    if (irc == 0) wan_free(&r);

    rc = run_dfm(test_path("export --checkpoint %s --out %s/x --max-shard-size 5XB", w, tmp), errf);
    char *msg = test_read_file(errf, NULL);
    CHECK(rc == 1 && msg && strstr(msg, "--max-shard-size"), "a malformed --max-shard-size is refused");
    free(msg);
    rc = run_dfm(test_path("export --checkpoint %s --out %s/x --scheduler ddim", w, tmp), errf);
    msg = test_read_file(errf, NULL);
    CHECK(rc == 1 && msg && strstr(msg, "--scheduler must be"), "an unknown --scheduler is refused");
    free(msg);
    free(cfg_json), free(ema), free(it), free(w), free(errf);
    wan_free(&m);
}

/* The exported folder in PyTorch (float64), loaded by name: the same forward output as dfm's, sharded and bf16. */
static void test_pytorch(void) {
    if (test_sh("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0) {
        printf("# /usr/bin/python3 has no torch: skipping tests/ref/diffusers_check.py\n");
        return;
    }
    wan_config c = small_config();
    wan_shape s = {3, 3, 4, 6, 7};
    wan_model m;
    wan_create(&m, &c, &s);
    randomise(&m);
    const size_t xn = (size_t)s.batch * c.in_channels * s.frames * s.height * s.width;
    const size_t tn = (size_t)s.batch * s.text_len * c.text_dim;
    float *x = xalloc_floats(xn), *text = xalloc_floats(tn), *out = xalloc_floats(xn), t[3] = {3.0f, 480.5f, 999.0f};
    float *mask = xalloc_floats((size_t)s.batch * s.text_len);
    int lens[3] = {7, 2, 5};
    for (int b = 0; b < 3; b++)
        for (int l = 0; l < s.text_len; l++) mask[b * s.text_len + l] = l < lens[b];
    test_fill_randn(x, xn, 1.0f), test_fill_randn(text, tn, 1.0f);
    wan_forward(&m, out, x, t, text, lens, &s);
    st_writer *w = st_writer_new();
    int64_t xs[5] = {s.batch, c.in_channels, s.frames, s.height, s.width}, ts[3] = {s.batch, s.text_len, c.text_dim};
    int64_t bs[1] = {s.batch}, ms[2] = {s.batch, s.text_len};
    st_writer_add(w, "hidden_states", ST_F32, 5, xs, x);
    st_writer_add(w, "timestep", ST_F32, 1, bs, t);
    st_writer_add(w, "encoder_hidden_states", ST_F32, 3, ts, text);
    st_writer_add(w, "encoder_attention_mask", ST_F32, 2, ms, mask);
    st_writer_add(w, "sample", ST_F32, 5, xs, out);
    char *case_path = xstrdup(test_path("%s/wan_case.safetensors", tmp));
    st_writer_finish(w, case_path);

    diffusers_export_opts o;
    diffusers_export_defaults(&o);
    o.max_shard_bytes = m.table.total; /* about 4 shards */
    char err[1024];
    int rc = wan_export_diffusers(&m, m.params, test_path("%s/py", tmp), &o, err, sizeof err);
    fflush(stdout);
    rc |= test_sh("cd tests/ref && /usr/bin/python3 diffusers_check.py '%s/py' '%s' --dtype float64 --tol 1e-5 "
                  "--label 'wan sharded fp32 folder'",
                  tmp, case_path);
    CHECK(rc == 0, "PyTorch (float64) on the sharded fp32 export agrees with dfm's forward within 1e-5 relative");

    /* bf16: the reference on the bf16 weights vs dfm's forward on the same rounded weights */
    for (size_t i = 0; i < m.table.total; i++) m.params[i] = bf16_round(m.params[i]);
    wan_forward(&m, out, x, t, text, lens, &s);
    w = st_writer_new();
    st_writer_add(w, "hidden_states", ST_F32, 5, xs, x);
    st_writer_add(w, "timestep", ST_F32, 1, bs, t);
    st_writer_add(w, "encoder_hidden_states", ST_F32, 3, ts, text);
    st_writer_add(w, "encoder_attention_mask", ST_F32, 2, ms, mask);
    st_writer_add(w, "sample", ST_F32, 5, xs, out);
    st_writer_finish(w, case_path);
    o.dtype = ST_BF16;
    o.max_shard_bytes = 0;
    rc = wan_export_diffusers(&m, m.params, test_path("%s/py_bf16", tmp), &o, err, sizeof err);
    fflush(stdout);
    rc |= test_sh("cd tests/ref && /usr/bin/python3 diffusers_check.py '%s/py_bf16/transformer' '%s' --dtype float64 "
                  "--tol 1e-5 --label 'wan bf16 transformer folder'",
                  tmp, case_path);
    CHECK(rc == 0, "PyTorch (float64) on the bf16 export's transformer/ folder agrees with dfm within 1e-5 relative");
    free(case_path), free(x), free(text), free(out), free(mask);
    wan_free(&m);
}

int main(void) {
    test_seed();
    kernels_init();
    tmp = test_mkdtemp();
    double t0 = dfm_time_s();
    test_round_trip();
    test_export_cmd();
    test_pytorch();
    printf("# %.1f s\n", dfm_time_s() - t0);
    test_rmtree(tmp);
    free(tmp);
    return test_finish();
}
