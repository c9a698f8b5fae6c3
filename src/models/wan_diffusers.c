/* Export and import of diffusers pipeline folders for Wan 2.1 (see diffusers.h). dfm's Wan parameters are
 * diffusers' WanTransformer3DModel tensors one to one (same names, shapes and layouts), so both directions are a
 * lookup by name; what is left is the folder around them. Facts from diffusers: WanPipeline's components
 * (tokenizer, text_encoder, vae, scheduler, transformer), the transformer's config keys, and the scheduler the
 * hub's Wan2.1-T2V-*-Diffusers pipelines ship (UniPCMultistepScheduler with flow_prediction and flow sigmas). */
#include "dfm/common.h"
#include "dfm/diffusers.h"
#include "dfm/wan.h"
#include "models/diffusers_io.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* WanTransformer3DModel and WanPipeline exist from diffusers 0.33 on. */
#define WAN_DIFFUSERS_VERSION "0.33.1"
#define WAN_CLASS "WanTransformer3DModel"

/* transformer/config.json: every WanTransformer3DModel constructor key, sorted as diffusers writes them. The
 * I2V keys (image_dim, added_kv_proj_dim, pos_embed_seq_len) are null: dfm builds the text-to-video model. */
static json_t *transformer_config(const wan_config *c) {
    json_t *j = json_object();
    json_object_set_new(j, "_class_name", json_string(WAN_CLASS));
    json_object_set_new(j, "_diffusers_version", json_string(WAN_DIFFUSERS_VERSION));
    json_object_set_new(j, "added_kv_proj_dim", json_null());
    json_object_set_new(j, "attention_head_dim", json_integer(c->head_dim));
    json_object_set_new(j, "cross_attn_norm", json_true());
    json_object_set_new(j, "eps", dfu_json_float(c->eps));
    json_object_set_new(j, "ffn_dim", json_integer(c->ffn_dim));
    json_object_set_new(j, "freq_dim", json_integer(c->freq_dim));
    json_object_set_new(j, "image_dim", json_null());
    json_object_set_new(j, "in_channels", json_integer(c->in_channels));
    json_object_set_new(j, "num_attention_heads", json_integer(c->num_heads));
    json_object_set_new(j, "num_layers", json_integer(c->num_layers));
    json_object_set_new(j, "out_channels", json_integer(c->out_channels ? c->out_channels : c->in_channels));
    json_object_set_new(j, "patch_size", json_pack("[iii]", c->patch_t, c->patch_h, c->patch_w));
    json_object_set_new(j, "pos_embed_seq_len", json_null());
    json_object_set_new(j, "qk_norm", json_string("rms_norm_across_heads"));
    json_object_set_new(j, "rope_max_seq_len", json_integer(c->rope_max_seq_len));
    json_object_set_new(j, "text_dim", json_integer(c->text_dim));
    return j;
}

/* WanPipeline's components. The UMT5 text encoder, its tokenizer and the video VAE are not dfm's: [null, null]
 * loads them as None, and WanPipeline.from_pretrained(dir, vae=..., text_encoder=..., tokenizer=...) fills them
 * in (or run the transformer and scheduler in your own loop on precomputed latents and text embeddings). */
static json_t *model_index(const diffusers_export_opts *o) {
    json_t *j = json_object();
    json_object_set_new(j, "_class_name", json_string("WanPipeline"));
    json_object_set_new(j, "_diffusers_version", json_string(WAN_DIFFUSERS_VERSION));
    json_object_set_new(j, "scheduler", json_pack("[ss]", "diffusers", dfu_scheduler_class(o, 1)));
    json_object_set_new(j, "text_encoder", json_pack("[nn]"));
    json_object_set_new(j, "tokenizer", json_pack("[nn]"));
    json_object_set_new(j, "transformer", json_pack("[ss]", "diffusers", WAN_CLASS));
    json_object_set_new(j, "vae", json_pack("[nn]"));
    return j;
}

int wan_export_diffusers(const wan_model *m, const float *weights, const char *dir, const diffusers_export_opts *o,
                         char *err, size_t errlen) {
    if (o->dtype != ST_F32 && o->dtype != ST_BF16 && o->dtype != ST_F16) {
        snprintf(err, errlen, "export dtype must be F32, BF16 or F16 (got %s)", st_dtype_name(o->dtype));
        return -1;
    }
    char tmp[DFU_DIR_MAX], path[DFU_PATH_MAX];
    if (dfu_begin_export(dir, tmp, err, errlen)) return -1;
    snprintf(path, sizeof path, "%s/model_index.json", tmp);
    int rc = dfu_write_json(path, model_index(o), err, errlen);
    snprintf(path, sizeof path, "%s/transformer/config.json", tmp);
    if (!rc) rc = dfu_write_json(path, transformer_config(&m->cfg), err, errlen);
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", tmp);
    if (!rc) rc = dfu_write_json(path, dfu_scheduler_config(o, 1, WAN_DIFFUSERS_VERSION), err, errlen);
    if (!rc) {
        dfu_tensor *t = xcalloc((size_t)m->table.n, sizeof *t);
        for (int i = 0; i < m->table.n; i++) {
            const param_entry *e = &m->table.e[i];
            t[i] = (dfu_tensor){e->name, e->ndim, e->shape, e->numel, weights + e->offset};
        }
        snprintf(path, sizeof path, "%s/transformer", tmp);
        rc = dfu_write_weights(path, t, m->table.n, o->dtype, o->max_shard_bytes, err, errlen);
        free(t);
    }
    if (rc) {
        rm_tree(tmp);
        return -1;
    }
    return dfu_finish_export(tmp, dir, err, errlen);
}

/* The config of a transformer folder: WanTransformer3DModel's keys through wan_config_from_json (which refuses
 * I2V and unknown keys), and the class name when it is given. */
static int read_config(const char *tdir, wan_config *c, char *err, size_t errlen) {
    char path[DFU_PATH_MAX], cerr[600];
    snprintf(path, sizeof path, "%s/config.json", tdir);
    json_t *j = dfu_load_json(path, err, errlen);
    if (!j) return -1;
    json_t *cls = json_object_get(j, "_class_name");
    int bad_class = cls && (!json_is_string(cls) || strcmp(json_string_value(cls), WAN_CLASS));
    json_decref(j);
    if (bad_class) {
        snprintf(err, errlen, "'%s': _class_name is not \"" WAN_CLASS "\"", path);
        return -1;
    }
    char *text = read_file_err(path, cerr, sizeof cerr);
    if (!text) {
        snprintf(err, errlen, "%s", cerr);
        return -1;
    }
    int rc = wan_config_from_json(c, text, cerr, sizeof cerr);
    free(text);
    if (rc) snprintf(err, errlen, "'%s': %s", path, cerr);
    return rc;
}

int wan_import_diffusers(wan_model *m, const char *dir, const wan_shape *max, char *err, size_t errlen) {
    char tdir[DFU_DIR_MAX];
    wan_config c;
    if (dfu_transformer_dir(dir, tdir, err, errlen) || read_config(tdir, &c, err, errlen)) return -1;
    dfu_shards sh;
    if (dfu_open_shards(&sh, tdir, err, errlen)) return -1;
    wan_create_weights_only(m, &c);
    char shape[160], serr[400];
    int rc = 0;
    if (max && wan_prepare(m, max, serr, sizeof serr)) { /* before reading gigabytes for nothing */
        snprintf(err, errlen, "Wan model of '%s': %s", dir, serr);
        rc = -1;
    }
    for (int i = 0; i < m->table.n && !rc; i++) {
        const param_entry *e = &m->table.e[i];
        const st_file *f;
        const st_tensor *t = dfu_shards_find(&sh, e->name, &f);
        if (!t) {
            dfu_shape_str(shape, sizeof shape, e->ndim, e->shape);
            snprintf(err, errlen, "'%s': tensor '%s' %s is missing", tdir, e->name, shape);
            rc = -1;
        } else
            rc = dfu_read_checked(f, t, e, m->params + e->offset, err, errlen);
    }
    /* every stored tensor must be one of the model's: anything else (an I2V image embedder, another model's
     * weights) would be silently ignored otherwise */
    for (int s = 0; s < sh.n && !rc; s++)
        for (int i = 0; i < sh.files[s]->n_tensors && !rc; i++) {
            const st_tensor *t = &sh.files[s]->tensors[i];
            if (param_table_find(&m->table, t->name)) continue;
            dfu_shape_str(shape, sizeof shape, t->ndim, t->shape);
            snprintf(err, errlen, "'%s': tensor '%s' %s is not part of a text-to-video " WAN_CLASS " of this config",
                     sh.files[s]->path, t->name, shape);
            rc = -1;
        }
    dfu_shards_close(&sh);
    if (rc) wan_free(m);
    return rc;
}
