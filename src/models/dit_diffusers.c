/* Export and import of diffusers pipeline folders for the DiT (see diffusers.h). Config keys and class names
 * are diffusers' (DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler, EDMEulerScheduler); the folder,
 * weights and scheduler code shared with Wan is in diffusers_io.c. */
#include "dfm/common.h"
#include "dfm/diffusers.h"
#include "models/diffusers_io.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIFFUSERS_VERSION "0.30.0"

/* The embedder tensors diffusers repeats in every block, as suffixes of "transformer_blocks.N.norm1.emb.". */
static const char *const emb_suffixes[] = {
    "timestep_embedder.linear_1.weight", "timestep_embedder.linear_1.bias",       "timestep_embedder.linear_2.weight",
    "timestep_embedder.linear_2.bias",   "class_embedder.embedding_table.weight",
};
#define N_EMB (sizeof emb_suffixes / sizeof emb_suffixes[0])

void diffusers_export_defaults(diffusers_export_opts *o) {
    memset(o, 0, sizeof *o);
    o->dtype = ST_F32;
    o->objective = OBJ_FLOW_MATCHING;
    o->flow_shift = 1.0f;
    o->sigma_min = 0.002f;
    o->sigma_max = 80.0f;
    o->sigma_data = 0.5f;
}

uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7FFFu + ((u >> 16) & 1u);                                          /* round to nearest even */
    return (uint16_t)(u >> 16);
}

uint16_t f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return sign | 0x7E00u;  /* NaN */
    if (a >= 0x477FF000u) return sign | 0x7C00u; /* rounds to >= 65520: inf */
    if (a < 0x38800000u) {                       /* below the smallest normal 2^-14: subnormal or zero */
        /* value = a as float; subnormal step 2^-24, so compute round(value * 2^24) with ties to even */
        float v;
        memcpy(&v, &a, 4);
        float scaled = v * 16777216.0f; /* exact: a power-of-two scale */
        uint32_t q = (uint32_t)scaled;
        float rem = scaled - (float)q;
        if (rem > 0.5f || (rem == 0.5f && (q & 1u))) q++;
        return sign | (uint16_t)q;
    }
    uint32_t e = (a >> 23) - 127 + 15, mant = a & 0x7FFFFFu;
    uint32_t h = (e << 10) | (mant >> 13), rest = mant & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++; /* a carry into the exponent is still right */
    return sign | (uint16_t)h;
}

/* ---- export ----------------------------------------------------------------------------------- */

static json_t *transformer_config(const dit_config *c) {
    json_t *j = json_object();
    json_object_set_new(j, "_class_name", json_string("DiTTransformer2DModel"));
    json_object_set_new(j, "_diffusers_version", json_string(DIFFUSERS_VERSION));
    json_object_set_new(j, "num_attention_heads", json_integer(c->num_heads));
    json_object_set_new(j, "attention_head_dim", json_integer(c->hidden_size / c->num_heads));
    json_object_set_new(j, "in_channels", json_integer(c->in_channels));
    json_object_set_new(j, "out_channels", json_integer(c->out_channels));
    json_object_set_new(j, "num_layers", json_integer(c->num_layers));
    json_object_set_new(j, "dropout", json_real(0.0));
    json_object_set_new(j, "norm_num_groups", json_integer(32));
    json_object_set_new(j, "attention_bias", json_true());
    json_object_set_new(j, "sample_size", json_integer(c->image_size));
    json_object_set_new(j, "patch_size", json_integer(c->patch_size));
    json_object_set_new(j, "activation_fn", json_string("gelu-approximate"));
    json_object_set_new(j, "num_embeds_ada_norm", json_integer(c->num_classes));
    json_object_set_new(j, "upcast_attention", json_false());
    json_object_set_new(j, "norm_type", json_string("ada_norm_zero"));
    json_object_set_new(j, "norm_elementwise_affine", json_false());
    json_object_set_new(j, "norm_eps", dfu_json_float(c->norm_eps));
    return j;
}

static json_t *model_index(const diffusers_export_opts *o) {
    json_t *j = json_object();
    json_object_set_new(j, "_class_name", json_string("DiTPipeline"));
    json_object_set_new(j, "_diffusers_version", json_string(DIFFUSERS_VERSION));
    json_object_set_new(j, "transformer", json_pack("[ss]", "diffusers", "DiTTransformer2DModel"));
    json_object_set_new(j, "scheduler", json_pack("[ss]", "diffusers", dfu_scheduler_class(o, 0)));
    /* dfm's DiT works in pixel space: there is no VAE (a [null, null] component loads as None) */
    json_object_set_new(j, "vae", json_pack("[nn]"));
    return j;
}

int dit_export_diffusers(const dit_model *m, const float *weights, const char *dir, const diffusers_export_opts *o,
                         char *err, size_t errlen) {
    const dit_config *c = &m->cfg;
    if (c->ffn_hidden_size != 4 * c->hidden_size) {
        snprintf(err, errlen,
                 "diffusers' DiTTransformer2DModel fixes the MLP width at 4 x hidden_size (%d); this model has "
                 "ffn_hidden_size %d",
                 4 * c->hidden_size, c->ffn_hidden_size);
        return -1;
    }
    if (c->freq_dim != 256) {
        snprintf(err, errlen,
                 "diffusers' DiTTransformer2DModel fixes the timestep sinusoid width at 256; this model "
                 "has freq_dim %d",
                 c->freq_dim);
        return -1;
    }
    if (o->dtype != ST_F32 && o->dtype != ST_BF16 && o->dtype != ST_F16) {
        snprintf(err, errlen, "export dtype must be F32, BF16 or F16 (got %s)", st_dtype_name(o->dtype));
        return -1;
    }
    char tmp[DFU_DIR_MAX], path[DFU_PATH_MAX];
    if (dfu_begin_export(dir, tmp, err, errlen)) return -1;

    snprintf(path, sizeof path, "%s/model_index.json", tmp);
    int rc = dfu_write_json(path, model_index(o), err, errlen);
    snprintf(path, sizeof path, "%s/transformer/config.json", tmp);
    if (!rc) rc = dfu_write_json(path, transformer_config(c), err, errlen);
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", tmp);
    if (!rc) rc = dfu_write_json(path, dfu_scheduler_config(o, 0, DIFFUSERS_VERSION), err, errlen);

    /* weights: every dfm tensor, plus block 0's embedder copied into every other block */
    int n = m->table.n + (int)N_EMB * (c->num_layers - 1), k = 0;
    dfu_tensor *t = xcalloc((size_t)n, sizeof *t);
    char **names = xcalloc((size_t)n, sizeof *names);
    for (int i = 0; i < m->table.n; i++, k++) {
        const param_entry *e = &m->table.e[i];
        t[k] = (dfu_tensor){e->name, e->ndim, e->shape, e->numel, weights + e->offset};
    }
    for (int l = 1; l < c->num_layers; l++)
        for (size_t q = 0; q < N_EMB; q++, k++) {
            char src[256], name[256];
            snprintf(src, sizeof src, "transformer_blocks.0.norm1.emb.%s", emb_suffixes[q]);
            const param_entry *e = param_table_find(&m->table, src);
            if (!e) dfm_die("DiT parameter table has no '%s'", src);
            snprintf(name, sizeof name, "transformer_blocks.%d.norm1.emb.%s", l, emb_suffixes[q]);
            names[k] = xstrdup(name);
            t[k] = (dfu_tensor){names[k], e->ndim, e->shape, e->numel, weights + e->offset};
        }
    snprintf(path, sizeof path, "%s/transformer", tmp);
    if (!rc) rc = dfu_write_weights(path, t, n, o->dtype, o->max_shard_bytes, err, errlen);
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    free(t);
    if (rc) {
        rm_tree(tmp);
        return -1;
    }
    return dfu_finish_export(tmp, dir, err, errlen);
}

/* ---- import ----------------------------------------------------------------------------------- */

static int cfg_int(json_t *j, const char *path, const char *key, int *out, int required, char *err, size_t errlen) {
    json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v)) {
        if (!required) return 0;
        snprintf(err, errlen, "'%s': key '%s' is missing", path, key);
        return -1;
    }
    if (!json_is_integer(v)) {
        snprintf(err, errlen, "'%s': key '%s' must be an integer", path, key);
        return -1;
    }
    *out = (int)json_integer_value(v);
    return 0;
}

/* A key that must have one value (if present) for the model to be a DiT dfm can run. */
static int cfg_expect(json_t *j, const char *path, const char *key, json_t *want, char *err, size_t errlen) {
    json_t *v = json_object_get(j, key);
    int ok = !v || json_equal(v, want);
    if (!ok) {
        char *got = json_dumps(v, JSON_ENCODE_ANY), *exp = json_dumps(want, JSON_ENCODE_ANY);
        snprintf(err, errlen, "'%s': %s is %s; dfm's DiT supports only %s", path, key, got, exp);
        free(got), free(exp);
    }
    json_decref(want);
    return ok ? 0 : -1;
}

static int is_emb_copy(const char *name) {
    int l, off = 0;
    if (sscanf(name, "transformer_blocks.%d.norm1.emb.%n", &l, &off) != 1 || off == 0 || l < 1) return 0;
    for (size_t k = 0; k < N_EMB; k++)
        if (!strcmp(name + off, emb_suffixes[k])) return 1;
    return 0;
}

int dit_import_diffusers(dit_model *m, const char *dir, int max_batch, char *err, size_t errlen) {
    char tdir[DFU_DIR_MAX], path[DFU_PATH_MAX];
    if (dfu_transformer_dir(dir, tdir, err, errlen)) return -1;
    snprintf(path, sizeof path, "%s/config.json", tdir);
    json_t *j = dfu_load_json(path, err, errlen);
    if (!j) return -1;
    dit_config c;
    memset(&c, 0, sizeof c);
    int head_dim = 0, rc = 0;
    json_t *cls = json_object_get(j, "_class_name");
    if (cls && (!json_is_string(cls) || strcmp(json_string_value(cls), "DiTTransformer2DModel"))) {
        snprintf(err, errlen, "'%s': _class_name is not \"DiTTransformer2DModel\"", path);
        rc = -1;
    }
    if (!rc) rc = cfg_int(j, path, "num_attention_heads", &c.num_heads, 1, err, errlen);
    if (!rc) rc = cfg_int(j, path, "attention_head_dim", &head_dim, 1, err, errlen);
    if (!rc) rc = cfg_int(j, path, "in_channels", &c.in_channels, 1, err, errlen);
    if (!rc) rc = cfg_int(j, path, "out_channels", &c.out_channels, 0, err, errlen); /* null: = in_channels */
    if (!rc) rc = cfg_int(j, path, "num_layers", &c.num_layers, 1, err, errlen);
    if (!rc) rc = cfg_int(j, path, "sample_size", &c.image_size, 1, err, errlen);
    if (!rc) rc = cfg_int(j, path, "patch_size", &c.patch_size, 1, err, errlen);
    if (!rc) rc = cfg_int(j, path, "num_embeds_ada_norm", &c.num_classes, 1, err, errlen);
    if (!rc) rc = cfg_expect(j, path, "norm_type", json_string("ada_norm_zero"), err, errlen);
    if (!rc) rc = cfg_expect(j, path, "activation_fn", json_string("gelu-approximate"), err, errlen);
    if (!rc) rc = cfg_expect(j, path, "attention_bias", json_true(), err, errlen);
    if (!rc) rc = cfg_expect(j, path, "norm_elementwise_affine", json_false(), err, errlen);
    c.norm_eps = 1e-5f; /* diffusers' default when the key is absent */
    json_t *eps = json_object_get(j, "norm_eps");
    if (!rc && eps) {
        if (json_is_number(eps))
            c.norm_eps = (float)json_number_value(eps);
        else
            snprintf(err, errlen, "'%s': norm_eps must be a number", path), rc = -1;
    }
    json_decref(j);
    if (rc) return -1;
    if (head_dim < 1 || c.num_heads < 1) {
        snprintf(err, errlen, "'%s': num_attention_heads and attention_head_dim must be >= 1", path);
        return -1;
    }
    c.hidden_size = c.num_heads * head_dim;
    c.ffn_hidden_size = 4 * c.hidden_size;
    c.freq_dim = 256;
    char cerr[400];
    if (!dit_config_check(&c, cerr, sizeof cerr)) {
        snprintf(err, errlen, "'%s': %s", path, cerr);
        return -1;
    }

    dfu_shards sh;
    if (dfu_open_shards(&sh, tdir, err, errlen)) return -1;
    dit_create(m, &c, max_batch);
    for (int i = 0; i < m->table.n && !rc; i++) {
        const param_entry *e = &m->table.e[i];
        const st_file *f;
        const st_tensor *t = dfu_shards_find(&sh, e->name, &f);
        char want[160];
        dfu_shape_str(want, sizeof want, e->ndim, e->shape);
        if (!t)
            snprintf(err, errlen, "'%s': tensor '%s' %s is missing", tdir, e->name, want), rc = -1;
        else
            rc = dfu_read_checked(f, t, e, m->params + e->offset, err, errlen);
    }
    /* every stored tensor must be known: a parameter, a per-block embedder copy, or the fixed position table */
    for (int s = 0; s < sh.n && !rc; s++)
        for (int i = 0; i < sh.files[s]->n_tensors && !rc; i++) {
            const st_tensor *t = &sh.files[s]->tensors[i];
            if (!param_table_find(&m->table, t->name) && !is_emb_copy(t->name) &&
                strcmp(t->name, "pos_embed.pos_embed")) {
                char got[160];
                dfu_shape_str(got, sizeof got, t->ndim, t->shape);
                snprintf(err, errlen, "'%s': tensor '%s' %s is not part of a DiTTransformer2DModel", sh.files[s]->path,
                         t->name, got);
                rc = -1;
            }
        }
    /* the other blocks' embedder copies should equal block 0's: dfm keeps one */
    for (int l = 1; l < c.num_layers && !rc; l++) {
        for (size_t k = 0; k < N_EMB && !rc; k++) {
            char n0[256], nl[256];
            snprintf(n0, sizeof n0, "transformer_blocks.0.norm1.emb.%s", emb_suffixes[k]);
            snprintf(nl, sizeof nl, "transformer_blocks.%d.norm1.emb.%s", l, emb_suffixes[k]);
            const param_entry *e = param_table_find(&m->table, n0);
            const st_file *f;
            const st_tensor *t = dfu_shards_find(&sh, nl, &f);
            if (!t) {
                dfm_warn("'%s': '%s' is missing; dfm uses block 0's embedder for every block", tdir, nl);
                continue;
            }
            float *copy = xalloc_floats(e->numel);
            rc = dfu_read_checked(f, t, e, copy, err, errlen);
            double maxdiff = 0;
            for (size_t q = 0; !rc && q < e->numel; q++)
                maxdiff = fmax(maxdiff, fabs((double)copy[q] - (double)m->params[e->offset + q]));
            if (!rc && maxdiff > 0)
                dfm_warn("'%s': '%s' differs from block 0's copy (max |diff| %.3g); dfm uses block 0's embedder for "
                         "every block",
                         tdir, nl, maxdiff);
            free(copy);
        }
    }
    dfu_shards_close(&sh);
    if (rc) dit_free(m);
    return rc;
}
