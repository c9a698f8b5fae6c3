/* Export and import of diffusers pipeline folders for the DiT (see diffusers.h). Config keys and class names
 * are diffusers' (DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler, EDMEulerScheduler). */
#include "dfm/diffusers.h"
#include "dfm/common.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DIFFUSERS_VERSION "0.30.0"
#define WEIGHTS_FILE "diffusion_pytorch_model.safetensors"
#define INDEX_FILE "diffusion_pytorch_model.safetensors.index.json"
/* Folder paths are limited to DIR_MAX bytes so that every file path below fits PATH_MAX_ bytes. */
#define DIR_MAX 3840
#define PATH_MAX_ (DIR_MAX + 512)

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

static int write_json(const char *path, json_t *j, char *err, size_t errlen) {
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    json_decref(j);
    if (!s) {
        snprintf(err, errlen, "'%s': cannot serialise JSON", path);
        return -1;
    }
    dfm_atomic_file af;
    atomic_open(&af, path);
    xfwrite(s, 1, strlen(s), af.f, af.tmp_path);
    xfwrite("\n", 1, 1, af.f, af.tmp_path);
    atomic_commit(&af);
    free(s);
    return 0;
}

static int xmkdir(const char *path, char *err, size_t errlen) {
    if (mkdir(path, 0755) != 0) {
        snprintf(err, errlen, "cannot create folder '%s': %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* A float as the shortest decimal that reads back as the same float (1e-05, not 9.99999975e-06). */
static json_t *json_float(float f) {
    char b[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(b, sizeof b, "%.*g", p, (double)f);
        if (strtof(b, NULL) == f) break;
    }
    return json_real(strtod(b, NULL));
}

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
    json_object_set_new(j, "norm_eps", json_float(c->norm_eps));
    return j;
}

static json_t *scheduler_config(const diffusers_export_opts *o) {
    json_t *j = json_object();
    if (o->objective == OBJ_EDM) {
        /* EDMEulerScheduler's "epsilon" preconditioning is dfm's: D = c_skip x + c_out F, c_noise = ln(s)/4 */
        json_object_set_new(j, "_class_name", json_string("EDMEulerScheduler"));
        json_object_set_new(j, "_diffusers_version", json_string(DIFFUSERS_VERSION));
        json_object_set_new(j, "sigma_min", json_float(o->sigma_min));
        json_object_set_new(j, "sigma_max", json_float(o->sigma_max));
        json_object_set_new(j, "sigma_data", json_float(o->sigma_data));
        json_object_set_new(j, "sigma_schedule", json_string("karras"));
        json_object_set_new(j, "num_train_timesteps", json_integer(1000));
        json_object_set_new(j, "prediction_type", json_string("epsilon"));
        json_object_set_new(j, "rho", json_real(7.0));
        json_object_set_new(j, "final_sigmas_type", json_string("zero"));
    } else {
        json_object_set_new(j, "_class_name", json_string("FlowMatchEulerDiscreteScheduler"));
        json_object_set_new(j, "_diffusers_version", json_string(DIFFUSERS_VERSION));
        json_object_set_new(j, "num_train_timesteps", json_integer(1000));
        json_object_set_new(j, "shift", json_float(o->flow_shift));
        json_object_set_new(j, "use_dynamic_shifting", json_false());
        json_object_set_new(j, "base_shift", json_real(0.5));
        json_object_set_new(j, "max_shift", json_real(1.15));
        json_object_set_new(j, "base_image_seq_len", json_integer(256));
        json_object_set_new(j, "max_image_seq_len", json_integer(4096));
    }
    return j;
}

static json_t *model_index(const diffusers_export_opts *o) {
    json_t *j = json_object();
    json_object_set_new(j, "_class_name", json_string("DiTPipeline"));
    json_object_set_new(j, "_diffusers_version", json_string(DIFFUSERS_VERSION));
    json_object_set_new(j, "transformer", json_pack("[ss]", "diffusers", "DiTTransformer2DModel"));
    json_object_set_new(j, "scheduler",
                        json_pack("[ss]", "diffusers",
                                  o->objective == OBJ_EDM ? "EDMEulerScheduler" : "FlowMatchEulerDiscreteScheduler"));
    /* dfm's DiT works in pixel space: there is no VAE (a [null, null] component loads as None) */
    json_object_set_new(j, "vae", json_pack("[nn]"));
    return j;
}

/* Add one tensor to the writer in the export dtype; converted copies are kept in *keep until the write. */
static void add_tensor(st_writer *w, const param_entry *e, const char *name, const float *data, st_dtype dt,
                       void ***keep, int *nkeep) {
    if (dt == ST_F32) {
        st_writer_add(w, name, ST_F32, e->ndim, e->shape, data);
        return;
    }
    uint16_t *h = xmalloc(sizeof(uint16_t) * (e->numel ? e->numel : 1));
    for (size_t i = 0; i < e->numel; i++) h[i] = dt == ST_BF16 ? f32_to_bf16(data[i]) : f32_to_f16(data[i]);
    *keep = xrealloc(*keep, sizeof(void *) * (size_t)(*nkeep + 1));
    (*keep)[(*nkeep)++] = h;
    st_writer_add(w, name, dt, e->ndim, e->shape, h);
}

/* Move the finished temporary folder to dir, replacing an earlier export there. */
static int install_folder(const char *tmp, const char *dir, char *err, size_t errlen) {
    struct stat st;
    if (stat(dir, &st) != 0) {
        if (rename(tmp, dir) == 0) return 0;
        snprintf(err, errlen, "cannot rename '%s' to '%s': %s", tmp, dir, strerror(errno));
        return -1;
    }
    if (rename(tmp, dir) == 0) return 0; /* dir was an empty folder */
    /* an earlier export: swap atomically, then delete the old one (now at tmp) */
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, dir, RENAME_EXCHANGE) == 0) {
        rm_tree(tmp);
        return 0;
    }
    /* file system without RENAME_EXCHANGE: move the old one aside first */
    size_t n = strlen(dir) + 48;
    char *old = xmalloc(n);
    snprintf(old, n, "%s.old.%ld", dir, (long)getpid());
    int rc = -1;
    if (rename(dir, old) != 0)
        snprintf(err, errlen, "cannot move '%s' aside: %s", dir, strerror(errno));
    else if (rename(tmp, dir) != 0)
        snprintf(err, errlen, "cannot rename '%s' to '%s': %s", tmp, dir, strerror(errno));
    else
        rm_tree(old), rc = 0;
    free(old);
    return rc;
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
    /* refuse to replace anything but an earlier export */
    if (strlen(dir) >= DIR_MAX - 64) {
        snprintf(err, errlen, "export folder path is too long (%zu bytes)", strlen(dir));
        return -1;
    }
    struct stat st;
    char path[PATH_MAX_];
    if (stat(dir, &st) == 0) {
        snprintf(path, sizeof path, "%s/model_index.json", dir);
        if (!S_ISDIR(st.st_mode)) {
            snprintf(err, errlen, "'%s' exists and is not a folder", dir);
            return -1;
        }
        if (rmdir(dir) != 0 && access(path, F_OK) != 0) {
            snprintf(err, errlen, "'%s' is a non-empty folder without model_index.json; refusing to replace it", dir);
            return -1;
        }
    }
    char tmp[DIR_MAX];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", dir, (long)getpid());
    rm_tree(tmp);
    if (xmkdir(tmp, err, errlen)) return -1;
    snprintf(path, sizeof path, "%s/transformer", tmp);
    if (xmkdir(path, err, errlen)) goto fail;
    snprintf(path, sizeof path, "%s/scheduler", tmp);
    if (xmkdir(path, err, errlen)) goto fail;

    snprintf(path, sizeof path, "%s/model_index.json", tmp);
    if (write_json(path, model_index(o), err, errlen)) goto fail;
    snprintf(path, sizeof path, "%s/transformer/config.json", tmp);
    if (write_json(path, transformer_config(c), err, errlen)) goto fail;
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", tmp);
    if (write_json(path, scheduler_config(o), err, errlen)) goto fail;

    /* weights: every dfm tensor, plus block 0's embedder copied into every other block */
    st_writer *w = st_writer_new();
    st_writer_meta(w, "format", "pt");
    void **keep = NULL;
    int nkeep = 0;
    char name[512];
    for (int i = 0; i < m->table.n; i++) {
        const param_entry *e = &m->table.e[i];
        add_tensor(w, e, e->name, weights + e->offset, o->dtype, &keep, &nkeep);
    }
    for (int l = 1; l < c->num_layers; l++)
        for (size_t k = 0; k < N_EMB; k++) {
            char src[256];
            snprintf(src, sizeof src, "transformer_blocks.0.norm1.emb.%s", emb_suffixes[k]);
            const param_entry *e = param_table_find(&m->table, src);
            if (!e) dfm_die("DiT parameter table has no '%s'", src);
            snprintf(name, sizeof name, "transformer_blocks.%d.norm1.emb.%s", l, emb_suffixes[k]);
            add_tensor(w, e, name, weights + e->offset, o->dtype, &keep, &nkeep);
        }
    snprintf(path, sizeof path, "%s/transformer/" WEIGHTS_FILE, tmp);
    st_writer_finish(w, path);
    for (int i = 0; i < nkeep; i++) free(keep[i]);
    free(keep);

    if (install_folder(tmp, dir, err, errlen)) goto fail;
    return 0;
fail:
    rm_tree(tmp);
    return -1;
}

/* ---- import ----------------------------------------------------------------------------------- */

static json_t *load_json(const char *path, char *err, size_t errlen) {
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j)
        snprintf(err, errlen, "'%s': %s (line %d)", path, je.text, je.line);
    else if (!json_is_object(j)) {
        snprintf(err, errlen, "'%s': not a JSON object", path);
        json_decref(j);
        j = NULL;
    }
    return j;
}

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

typedef struct {
    int n;
    st_file **files;
} shard_set;

static void shards_close(shard_set *s) {
    for (int i = 0; i < s->n; i++) st_close(s->files[i]);
    free(s->files);
    s->n = 0, s->files = NULL;
}

static const st_tensor *shards_find(const shard_set *s, const char *name, const st_file **in) {
    for (int i = 0; i < s->n; i++) {
        const st_tensor *t = st_find(s->files[i], name);
        if (t) return *in = s->files[i], t;
    }
    return NULL;
}

static int open_shards(shard_set *s, const char *tdir, char *err, size_t errlen) {
    char path[PATH_MAX_];
    s->n = 0, s->files = NULL;
    snprintf(path, sizeof path, "%s/" WEIGHTS_FILE, tdir);
    if (access(path, F_OK) == 0) {
        st_file *f = st_open(path, err, errlen);
        if (!f) return -1;
        s->files = xmalloc(sizeof *s->files);
        s->files[s->n++] = f;
        return 0;
    }
    snprintf(path, sizeof path, "%s/" INDEX_FILE, tdir);
    if (access(path, F_OK) != 0) {
        snprintf(err, errlen, "'%s': neither " WEIGHTS_FILE " nor " INDEX_FILE " is there", tdir);
        return -1;
    }
    json_t *idx = load_json(path, err, errlen);
    if (!idx) return -1;
    json_t *map = json_object_get(idx, "weight_map");
    if (!json_is_object(map)) {
        snprintf(err, errlen, "'%s': no \"weight_map\" object", path);
        json_decref(idx);
        return -1;
    }
    const char *name;
    json_t *v;
    char **opened = NULL;
    int rc = 0;
    json_object_foreach(map, name, v) {
        if (!json_is_string(v) || strchr(json_string_value(v), '/') || strlen(json_string_value(v)) > 255) {
            snprintf(err, errlen, "'%s': weight_map entry '%s' is not a file name", path, name);
            rc = -1;
            break;
        }
        const char *file = json_string_value(v);
        int k = 0;
        while (k < s->n && strcmp(opened[k], file)) k++;
        if (k == s->n) {
            char fp[PATH_MAX_ + 256];
            snprintf(fp, sizeof fp, "%s/%s", tdir, file);
            st_file *f = st_open(fp, err, errlen);
            if (!f) {
                rc = -1;
                break;
            }
            s->files = xrealloc(s->files, sizeof *s->files * (size_t)(s->n + 1));
            opened = xrealloc(opened, sizeof *opened * (size_t)(s->n + 1));
            opened[s->n] = xstrdup(file);
            s->files[s->n++] = f;
        }
        if (!st_find(s->files[k], name)) {
            snprintf(err, errlen, "'%s': weight_map puts '%s' in '%s', which does not hold it", path, name, file);
            rc = -1;
            break;
        }
    }
    for (int i = 0; i < s->n; i++) free(opened[i]);
    free(opened);
    json_decref(idx);
    if (rc) shards_close(s);
    return rc;
}

static int is_emb_copy(const char *name) {
    int l, off = 0;
    if (sscanf(name, "transformer_blocks.%d.norm1.emb.%n", &l, &off) != 1 || off == 0 || l < 1) return 0;
    for (size_t k = 0; k < N_EMB; k++)
        if (!strcmp(name + off, emb_suffixes[k])) return 1;
    return 0;
}

static int read_checked(const st_file *f, const st_tensor *t, const param_entry *e, float *out, char *err,
                        size_t errlen) {
    int same = t->ndim == e->ndim;
    for (int d = 0; same && d < e->ndim; d++) same = t->shape[d] == e->shape[d];
    if (!same) {
        char got[128] = "", want[128] = "";
        for (int d = 0; d < t->ndim; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "[", (long long)t->shape[d]);
        for (int d = 0; d < e->ndim; d++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", d ? ", " : "[", (long long)e->shape[d]);
        snprintf(err, errlen, "'%s': tensor '%s' has shape %s], but the config implies %s]", f->path, t->name, got,
                 want);
        return -1;
    }
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16 && t->dtype != ST_F64) {
        snprintf(err, errlen, "'%s': tensor '%s' has dtype %s; expected a floating-point dtype", f->path, t->name,
                 st_dtype_name(t->dtype));
        return -1;
    }
    st_read_f32(f, t, out);
    return 0;
}

int dit_import_diffusers(dit_model *m, const char *dir, int max_batch, char *err, size_t errlen) {
    if (strlen(dir) >= DIR_MAX - 64) {
        snprintf(err, errlen, "folder path is too long (%zu bytes)", strlen(dir));
        return -1;
    }
    char tdir[DIR_MAX], path[PATH_MAX_];
    snprintf(tdir, sizeof tdir, "%s/transformer", dir);
    snprintf(path, sizeof path, "%s/config.json", tdir);
    if (access(path, F_OK) != 0) { /* maybe dir is the transformer folder itself */
        snprintf(tdir, sizeof tdir, "%s", dir);
        snprintf(path, sizeof path, "%s/config.json", tdir);
        if (access(path, F_OK) != 0) {
            snprintf(err, errlen, "'%s': no transformer/config.json (or config.json): not a diffusers folder", dir);
            return -1;
        }
    }
    json_t *j = load_json(path, err, errlen);
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

    shard_set sh;
    if (open_shards(&sh, tdir, err, errlen)) return -1;
    dit_create(m, &c, max_batch);
    for (int i = 0; i < m->table.n && !rc; i++) {
        const param_entry *e = &m->table.e[i];
        const st_file *f;
        const st_tensor *t = shards_find(&sh, e->name, &f);
        if (!t)
            snprintf(err, errlen, "'%s': tensor '%s' is missing", tdir, e->name), rc = -1;
        else
            rc = read_checked(f, t, e, m->params + e->offset, err, errlen);
    }
    /* every stored tensor must be known: a parameter, a per-block embedder copy, or the fixed position table */
    for (int s = 0; s < sh.n && !rc; s++)
        for (int i = 0; i < sh.files[s]->n_tensors && !rc; i++) {
            const char *n = sh.files[s]->tensors[i].name;
            if (!param_table_find(&m->table, n) && !is_emb_copy(n) && strcmp(n, "pos_embed.pos_embed"))
                snprintf(err, errlen, "'%s': tensor '%s' is not part of a DiTTransformer2DModel", sh.files[s]->path, n),
                    rc = -1;
        }
    /* the other blocks' embedder copies should equal block 0's: dfm keeps one */
    for (int l = 1; l < c.num_layers && !rc; l++) {
        for (size_t k = 0; k < N_EMB && !rc; k++) {
            char n0[256], nl[256];
            snprintf(n0, sizeof n0, "transformer_blocks.0.norm1.emb.%s", emb_suffixes[k]);
            snprintf(nl, sizeof nl, "transformer_blocks.%d.norm1.emb.%s", l, emb_suffixes[k]);
            const param_entry *e = param_table_find(&m->table, n0);
            const st_file *f;
            const st_tensor *t = shards_find(&sh, nl, &f);
            if (!t) {
                dfm_warn("'%s': '%s' is missing; dfm uses block 0's embedder for every block", tdir, nl);
                continue;
            }
            float *copy = xalloc_floats(e->numel);
            rc = read_checked(f, t, e, copy, err, errlen);
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
    shards_close(&sh);
    if (rc) dit_free(m);
    return rc;
}
