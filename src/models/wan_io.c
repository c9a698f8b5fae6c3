/* Wan config as diffusers' transformer/config.json, and weights files (safetensors under diffusers names with
 * the config as metadata, so a weights file alone rebuilds the model). */
#include "dfm/wan.h"
#include "dfm/common.h"
#include "dfm/safetensors.h"

#include <float.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

char *wan_config_to_json(const wan_config *c) {
    json_t *j = json_pack(
        "{s:s, s:[i,i,i], s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:b, s:s, s:f, s:n, s:n, s:i, s:n}", "_class_name",
        "WanTransformer3DModel", "patch_size", c->patch_t, c->patch_h, c->patch_w, "num_attention_heads", c->num_heads,
        "attention_head_dim", c->head_dim, "in_channels", c->in_channels, "out_channels",
        c->out_channels ? c->out_channels : c->in_channels, "text_dim", c->text_dim, "freq_dim", c->freq_dim, "ffn_dim",
        c->ffn_dim, "num_layers", c->num_layers, "cross_attn_norm", 1, "qk_norm", "rms_norm_across_heads", "eps",
        (double)c->eps, "image_dim", "added_kv_proj_dim", "rope_max_seq_len", c->rope_max_seq_len, "pos_embed_seq_len");
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    return s;
}

/* Missing keys take diffusers' defaults (WanTransformer3DModel.__init__'s, which is what diffusers does with
 * an older config.json); a key that would select another architecture, or one dfm does not know, is refused
 * rather than ignored, since the model would load and compute something else. */
int wan_config_from_json(wan_config *c, const char *text, char *err, size_t errlen) {
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    if (!j || !json_is_object(j)) {
        snprintf(err, errlen, "Wan config is not a JSON object%s%s", j ? "" : ": ", j ? "" : je.text);
        if (j) json_decref(j);
        return -1;
    }
    memset(c, 0, sizeof *c);
    c->num_layers = 40, c->num_heads = 40, c->head_dim = 128, c->in_channels = 16, c->out_channels = 16;
    c->text_dim = 4096, c->freq_dim = 256, c->ffn_dim = 13824;
    c->patch_t = 1, c->patch_h = 2, c->patch_w = 2;
    c->eps = 1e-6f;
    c->rope_max_seq_len = 1024;
    struct {
        const char *key;
        int *dst;
    } ints[] = {{"num_layers", &c->num_layers},
                {"num_attention_heads", &c->num_heads},
                {"attention_head_dim", &c->head_dim},
                {"in_channels", &c->in_channels},
                {"out_channels", &c->out_channels},
                {"text_dim", &c->text_dim},
                {"freq_dim", &c->freq_dim},
                {"ffn_dim", &c->ffn_dim},
                {"rope_max_seq_len", &c->rope_max_seq_len}};
    const char *key;
    json_t *v;
    int rc = -1;
    json_object_foreach(j, key, v) {
        if (key[0] == '_') continue; /* _class_name, _diffusers_version, _name_or_path */
        size_t i = 0;
        for (; i < sizeof ints / sizeof ints[0]; i++)
            if (!strcmp(key, ints[i].key)) break;
        if (i < sizeof ints / sizeof ints[0]) {
            if (!strcmp(key, "out_channels") && json_is_null(v)) { /* diffusers: out_channels or in_channels */
                c->out_channels = 0;
                continue;
            }
            if (!json_is_integer(v)) {
                snprintf(err, errlen, "Wan config: '%s' must be an integer", key);
                goto out;
            }
            *ints[i].dst = (int)json_integer_value(v);
        } else if (!strcmp(key, "patch_size")) {
            if (!json_is_array(v) || json_array_size(v) != 3 || !json_is_integer(json_array_get(v, 0)) ||
                !json_is_integer(json_array_get(v, 1)) || !json_is_integer(json_array_get(v, 2))) {
                snprintf(err, errlen, "Wan config: 'patch_size' must be a list of 3 integers [t, h, w]");
                goto out;
            }
            c->patch_t = (int)json_integer_value(json_array_get(v, 0));
            c->patch_h = (int)json_integer_value(json_array_get(v, 1));
            c->patch_w = (int)json_integer_value(json_array_get(v, 2));
        } else if (!strcmp(key, "eps")) {
            /* a value that overflows float (1e60) would become inf: the model would normalise by it and the
             * config could not be written back to JSON */
            if (!json_is_number(v) || !(json_number_value(v) > 0 && json_number_value(v) <= FLT_MAX)) {
                snprintf(err, errlen, "Wan config: 'eps' must be a positive number that fits a float");
                goto out;
            }
            c->eps = (float)json_number_value(v);
        } else if (!strcmp(key, "cross_attn_norm")) {
            if (!json_is_true(v)) {
                snprintf(err, errlen, "Wan config: only cross_attn_norm = true (Wan 2.1) is supported");
                goto out;
            }
        } else if (!strcmp(key, "qk_norm")) {
            if (!json_is_string(v) || strcmp(json_string_value(v), "rms_norm_across_heads")) {
                snprintf(err, errlen, "Wan config: only qk_norm = \"rms_norm_across_heads\" is supported");
                goto out;
            }
        } else if (!strcmp(key, "image_dim") || !strcmp(key, "added_kv_proj_dim") ||
                   !strcmp(key, "pos_embed_seq_len")) {
            if (!json_is_null(v)) {
                snprintf(err, errlen,
                         "Wan config: '%s' is set: image-conditioned (I2V) Wan models are not supported, only "
                         "text-to-video",
                         key);
                goto out;
            }
        } else {
            snprintf(err, errlen, "Wan config: unknown key '%s'", key);
            goto out;
        }
    }
    rc = wan_config_check(c, err, errlen) ? 0 : -1;
out:
    json_decref(j);
    return rc;
}

void wan_save_weights(const wan_model *m, const float *buf, const char *path, const char *const *extra_meta) {
    char *cfg = wan_config_to_json(&m->cfg);
    const char *meta[32] = {"format", "pt", "dfm_model", "wan", "dfm_wan_config", cfg};
    int n = 6;
    for (int i = 0; extra_meta && extra_meta[i] && n < 30; i += 2)
        meta[n++] = extra_meta[i], meta[n++] = extra_meta[i + 1];
    meta[n] = NULL;
    param_table_save(&m->table, buf, "", path, meta);
    free(cfg);
}

int wan_load_weights(const wan_model *m, float *buf, const char *path, char *err, size_t errlen) {
    return param_table_load(&m->table, buf, "", path, 0, err, errlen);
}

int wan_open_weights(wan_model *m, const char *path, const wan_shape *max, char *err, size_t errlen) {
    st_file *f = st_open(path, err, errlen);
    if (!f) return -1;
    const char *cfg_text = st_meta(f, "dfm_wan_config");
    if (!cfg_text) {
        snprintf(err, errlen, "'%s': no 'dfm_wan_config' metadata: not a dfm Wan weights file", path);
        st_close(f);
        return -1;
    }
    wan_config c;
    char cerr[400];
    if (wan_config_from_json(&c, cfg_text, cerr, sizeof cerr) != 0) {
        snprintf(err, errlen, "'%s': %s", path, cerr);
        st_close(f);
        return -1;
    }
    st_close(f);
    wan_create_weights_only(m, &c);
    if (max && wan_prepare(m, max, cerr, sizeof cerr)) {
        snprintf(err, errlen, "'%s': %s", path, cerr);
        wan_free(m);
        return -1;
    }
    if (wan_load_weights(m, m->params, path, err, errlen) != 0) {
        wan_free(m);
        return -1;
    }
    return 0;
}
