/* DiT weights on disk: dfm's own files carry the model config as safetensors metadata, so a weights file
 * alone is enough to rebuild the model (generation, export, evaluation). */
#include "dfm/dit.h"
#include "dfm/common.h"
#include "dfm/safetensors.h"

#include <float.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

char *dit_config_to_json(const dit_config *c) {
    json_t *j = json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f}", "num_layers", c->num_layers,
                          "hidden_size", c->hidden_size, "num_attention_heads", c->num_heads, "ffn_hidden_size",
                          c->ffn_hidden_size, "patch_size", c->patch_size, "in_channels", c->in_channels,
                          "out_channels", c->out_channels, "image_size", c->image_size, "num_classes", c->num_classes,
                          "freq_dim", c->freq_dim, "norm_eps", (double)c->norm_eps);
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    return s;
}

int dit_config_from_json(dit_config *c, const char *text, char *err, size_t errlen) {
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    if (!j || !json_is_object(j)) {
        snprintf(err, errlen, "DiT config is not a JSON object: %s", j ? "" : je.text);
        if (j) json_decref(j);
        return -1;
    }
    memset(c, 0, sizeof *c);
    struct {
        const char *key;
        int *dst;
    } ints[] = {{"num_layers", &c->num_layers},         {"hidden_size", &c->hidden_size},
                {"num_attention_heads", &c->num_heads}, {"ffn_hidden_size", &c->ffn_hidden_size},
                {"patch_size", &c->patch_size},         {"in_channels", &c->in_channels},
                {"out_channels", &c->out_channels},     {"image_size", &c->image_size},
                {"num_classes", &c->num_classes},       {"freq_dim", &c->freq_dim}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        json_t *v = json_object_get(j, ints[i].key);
        if (!json_is_integer(v)) {
            snprintf(err, errlen, "DiT config: key '%s' missing or not an integer", ints[i].key);
            json_decref(j);
            return -1;
        }
        *ints[i].dst = (int)json_integer_value(v);
    }
    json_t *eps = json_object_get(j, "norm_eps");
    /* as Wan's eps: a value past FLT_MAX would become inf and not print back to JSON */
    if (!json_is_number(eps) || !(json_number_value(eps) > 0 && json_number_value(eps) <= FLT_MAX)) {
        snprintf(err, errlen, "DiT config: key 'norm_eps' missing or not a positive number that fits a float");
        json_decref(j);
        return -1;
    }
    c->norm_eps = (float)json_number_value(eps);
    json_decref(j);
    return dit_config_check(c, err, errlen) ? 0 : -1;
}

void dit_save_weights(const dit_model *m, const float *buf, const char *path, const char *const *extra_meta) {
    char *cfg = dit_config_to_json(&m->cfg);
    const char *meta[32] = {"format", "pt", "dfm_model", "dit", "dfm_dit_config", cfg};
    int n = 6;
    for (int i = 0; extra_meta && extra_meta[i] && n < 30; i += 2)
        meta[n++] = extra_meta[i], meta[n++] = extra_meta[i + 1];
    meta[n] = NULL;
    param_table_save(&m->table, buf, "", path, meta);
    free(cfg);
}

int dit_open_weights(dit_model *m, const char *path, int max_batch, char *err, size_t errlen) {
    st_file *f = st_open(path, err, errlen);
    if (!f) return -1;
    const char *cfg_text = st_meta(f, "dfm_dit_config");
    if (!cfg_text) {
        snprintf(err, errlen, "'%s': no 'dfm_dit_config' metadata: not a dfm DiT weights file", path);
        st_close(f);
        return -1;
    }
    dit_config c;
    char cerr[400];
    if (dit_config_from_json(&c, cfg_text, cerr, sizeof cerr) != 0) {
        snprintf(err, errlen, "'%s': %s", path, cerr);
        st_close(f);
        return -1;
    }
    st_close(f);
    dit_create(m, &c, max_batch);
    if (param_table_load(&m->table, m->params, "", path, 0, err, errlen) != 0) {
        dit_free(m);
        return -1;
    }
    return 0;
}
