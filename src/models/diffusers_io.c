/* What the DiT and Wan diffusers exports and imports share (see diffusers_io.h). Layout facts are diffusers'
 * (REFERENCE.md §3): model_index.json, transformer/config.json, the weights as one safetensors file or shards
 * listed by diffusion_pytorch_model.safetensors.index.json, scheduler/scheduler_config.json. */
#include "models/diffusers_io.h"
#include "dfm/common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- JSON ---------------------------------------------------------------------------------------- */

int dfu_write_json(const char *path, json_t *j, char *err, size_t errlen) {
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

json_t *dfu_load_json(const char *path, char *err, size_t errlen) {
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

json_t *dfu_json_float(float f) {
    char b[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(b, sizeof b, "%.*g", p, (double)f);
        if (strtof(b, NULL) == f) break;
    }
    return json_real(strtod(b, NULL));
}

/* ---- scheduler ----------------------------------------------------------------------------------- */

static diffusers_scheduler flow_scheduler(const diffusers_export_opts *o, int wan) {
    if (o->scheduler != DIFFUSERS_SCHED_DEFAULT) return o->scheduler;
    return wan ? DIFFUSERS_SCHED_UNIPC : DIFFUSERS_SCHED_FLOW_EULER;
}

const char *dfu_scheduler_class(const diffusers_export_opts *o, int wan) {
    if (o->objective == OBJ_EDM) return "EDMEulerScheduler";
    return flow_scheduler(o, wan) == DIFFUSERS_SCHED_UNIPC ? "UniPCMultistepScheduler"
                                                           : "FlowMatchEulerDiscreteScheduler";
}

json_t *dfu_scheduler_config(const diffusers_export_opts *o, int wan, const char *version) {
    json_t *j = json_object();
    json_object_set_new(j, "_class_name", json_string(dfu_scheduler_class(o, wan)));
    json_object_set_new(j, "_diffusers_version", json_string(version));
    if (o->objective == OBJ_EDM) {
        /* EDMEulerScheduler's "epsilon" preconditioning is dfm's: D = c_skip x + c_out F, c_noise = ln(s)/4 */
        json_object_set_new(j, "sigma_min", dfu_json_float(o->sigma_min));
        json_object_set_new(j, "sigma_max", dfu_json_float(o->sigma_max));
        json_object_set_new(j, "sigma_data", dfu_json_float(o->sigma_data));
        json_object_set_new(j, "sigma_schedule", json_string("karras"));
        json_object_set_new(j, "num_train_timesteps", json_integer(1000));
        json_object_set_new(j, "prediction_type", json_string("epsilon"));
        json_object_set_new(j, "rho", json_real(7.0));
        json_object_set_new(j, "final_sigmas_type", json_string("zero"));
    } else if (flow_scheduler(o, wan) == DIFFUSERS_SCHED_UNIPC) {
        /* What Wan's diffusers pipelines ship: UniPC in flow mode (prediction_type flow_prediction and flow sigmas
         * shifted by flow_shift, s' = shift s / (1 + (shift - 1) s), the same schedule as dfm's sampler). The beta
         * keys are UniPC's constructor defaults; in flow mode they are unused. */
        json_object_set_new(j, "beta_end", json_real(0.02));
        json_object_set_new(j, "beta_schedule", json_string("linear"));
        json_object_set_new(j, "beta_start", json_real(0.0001));
        json_object_set_new(j, "disable_corrector", json_array());
        json_object_set_new(j, "dynamic_thresholding_ratio", json_real(0.995));
        json_object_set_new(j, "final_sigmas_type", json_string("zero"));
        json_object_set_new(j, "flow_shift", dfu_json_float(o->flow_shift));
        json_object_set_new(j, "lower_order_final", json_true());
        json_object_set_new(j, "num_train_timesteps", json_integer(1000));
        json_object_set_new(j, "predict_x0", json_true());
        json_object_set_new(j, "prediction_type", json_string("flow_prediction"));
        json_object_set_new(j, "rescale_betas_zero_snr", json_false());
        json_object_set_new(j, "sample_max_value", json_real(1.0));
        json_object_set_new(j, "solver_order", json_integer(2));
        json_object_set_new(j, "solver_p", json_null());
        json_object_set_new(j, "solver_type", json_string("bh2"));
        json_object_set_new(j, "steps_offset", json_integer(0));
        json_object_set_new(j, "thresholding", json_false());
        json_object_set_new(j, "timestep_spacing", json_string("linspace"));
        json_object_set_new(j, "trained_betas", json_null());
        json_object_set_new(j, "use_beta_sigmas", json_false());
        json_object_set_new(j, "use_exponential_sigmas", json_false());
        json_object_set_new(j, "use_flow_sigmas", json_true());
        json_object_set_new(j, "use_karras_sigmas", json_false());
    } else {
        json_object_set_new(j, "num_train_timesteps", json_integer(1000));
        json_object_set_new(j, "shift", dfu_json_float(o->flow_shift));
        json_object_set_new(j, "use_dynamic_shifting", json_false());
        json_object_set_new(j, "base_shift", json_real(0.5));
        json_object_set_new(j, "max_shift", json_real(1.15));
        json_object_set_new(j, "base_image_seq_len", json_integer(256));
        json_object_set_new(j, "max_image_seq_len", json_integer(4096));
    }
    return j;
}

/* ---- the folder ---------------------------------------------------------------------------------- */

static int xmkdir(const char *path, char *err, size_t errlen) {
    if (mkdir(path, 0755) != 0) {
        snprintf(err, errlen, "cannot create folder '%s': %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

int dfu_begin_export(const char *dir, char *tmp, char *err, size_t errlen) {
    if (strlen(dir) >= DFU_DIR_MAX - 64) {
        snprintf(err, errlen, "export folder path is too long (%zu bytes)", strlen(dir));
        return -1;
    }
    /* refuse to replace anything but an earlier export */
    struct stat st;
    char path[DFU_PATH_MAX];
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
    snprintf(tmp, DFU_DIR_MAX, "%s.tmp.%ld", dir, (long)getpid());
    rm_tree(tmp);
    if (xmkdir(tmp, err, errlen)) return -1;
    snprintf(path, sizeof path, "%s/transformer", tmp);
    int rc = xmkdir(path, err, errlen);
    snprintf(path, sizeof path, "%s/scheduler", tmp);
    if (!rc) rc = xmkdir(path, err, errlen);
    if (rc) rm_tree(tmp);
    return rc;
}

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

int dfu_finish_export(const char *tmp, const char *dir, char *err, size_t errlen) {
    if (install_folder(tmp, dir, err, errlen) == 0) return 0;
    rm_tree(tmp);
    return -1;
}

/* ---- weights out --------------------------------------------------------------------------------- */

/* Add tensors [lo, hi) to one safetensors file; converted copies live until the file is written, so memory
 * for conversions is bounded by one shard. */
static void write_one(const char *path, const dfu_tensor *t, int lo, int hi, st_dtype dt) {
    st_writer *w = st_writer_new();
    st_writer_meta(w, "format", "pt");
    uint16_t **keep = dt == ST_F32 ? NULL : xcalloc((size_t)(hi - lo), sizeof(uint16_t *));
    for (int i = lo; i < hi; i++) {
        if (dt == ST_F32) {
            st_writer_add(w, t[i].name, ST_F32, t[i].ndim, t[i].shape, t[i].data);
            continue;
        }
        uint16_t *h = xmalloc(sizeof(uint16_t) * (t[i].numel ? t[i].numel : 1));
        for (size_t k = 0; k < t[i].numel; k++)
            h[k] = dt == ST_BF16 ? f32_to_bf16(t[i].data[k]) : f32_to_f16(t[i].data[k]);
        keep[i - lo] = h;
        st_writer_add(w, t[i].name, dt, t[i].ndim, t[i].shape, h);
    }
    st_writer_finish(w, path);
    for (int i = 0; keep && i < hi - lo; i++) free(keep[i]);
    free(keep);
}

int dfu_write_weights(const char *tdir, const dfu_tensor *t, int n, st_dtype dtype, uint64_t max_shard_bytes, char *err,
                      size_t errlen) {
    if (dtype != ST_F32 && dtype != ST_BF16 && dtype != ST_F16) {
        snprintf(err, errlen, "export dtype must be F32, BF16 or F16 (got %s)", st_dtype_name(dtype));
        return -1;
    }
    const uint64_t esize = st_dtype_size(dtype);
    /* cut the list into shards: start[k] is the first tensor of shard k */
    int *start = xmalloc(sizeof(int) * (size_t)(n + 2));
    int nshards = 0;
    uint64_t cur = 0, total = 0;
    for (int i = 0; i < n; i++) {
        uint64_t b = (uint64_t)t[i].numel * esize;
        total += b;
        if (i == 0 || (max_shard_bytes > 0 && cur > 0 && (cur + b > max_shard_bytes || cur >= max_shard_bytes))) {
            start[nshards++] = i;
            cur = 0;
        }
        cur += b;
    }
    if (n == 0) start[nshards++] = 0;
    start[nshards] = n;

    char path[DFU_PATH_MAX];
    if (nshards == 1) { /* everything fits: one file and no index, as diffusers writes it */
        snprintf(path, sizeof path, "%s/" DFU_WEIGHTS_FILE, tdir);
        write_one(path, t, 0, n, dtype);
        free(start);
        return 0;
    }
    if (nshards > 99999) {
        snprintf(err, errlen, "max shard size %llu bytes would make %d shards (at most 99999)",
                 (unsigned long long)max_shard_bytes, nshards);
        free(start);
        return -1;
    }
    json_t *map = json_object();
    for (int k = 0; k < nshards; k++) {
        char file[96];
        snprintf(file, sizeof file, "diffusion_pytorch_model-%05d-of-%05d.safetensors", k + 1, nshards);
        snprintf(path, sizeof path, "%s/%s", tdir, file);
        write_one(path, t, start[k], start[k + 1], dtype);
        for (int i = start[k]; i < start[k + 1]; i++) json_object_set_new(map, t[i].name, json_string(file));
    }
    free(start);
    json_t *index = json_object();
    json_t *meta = json_object();
    json_object_set_new(meta, "total_size", json_integer((json_int_t)total));
    json_object_set_new(index, "metadata", meta);
    json_object_set_new(index, "weight_map", map);
    char *s = json_dumps(index, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(index);
    snprintf(path, sizeof path, "%s/" DFU_INDEX_FILE, tdir);
    dfm_atomic_file af;
    atomic_open(&af, path);
    xfwrite(s, 1, strlen(s), af.f, af.tmp_path);
    xfwrite("\n", 1, 1, af.f, af.tmp_path);
    atomic_commit(&af);
    free(s);
    return 0;
}

/* ---- weights in ---------------------------------------------------------------------------------- */

int dfu_transformer_dir(const char *dir, char *tdir, char *err, size_t errlen) {
    if (strlen(dir) >= DFU_DIR_MAX - 64) {
        snprintf(err, errlen, "folder path is too long (%zu bytes)", strlen(dir));
        return -1;
    }
    char path[DFU_PATH_MAX];
    snprintf(tdir, DFU_DIR_MAX, "%s/transformer", dir);
    snprintf(path, sizeof path, "%s/config.json", tdir);
    if (access(path, F_OK) == 0) return 0;
    snprintf(tdir, DFU_DIR_MAX, "%s", dir); /* maybe dir is the transformer folder itself */
    snprintf(path, sizeof path, "%s/config.json", tdir);
    if (access(path, F_OK) == 0) return 0;
    snprintf(err, errlen, "'%s': no transformer/config.json (or config.json): not a diffusers folder", dir);
    return -1;
}

void dfu_shards_close(dfu_shards *s) {
    for (int i = 0; i < s->n; i++) st_close(s->files[i]);
    free(s->files);
    s->n = 0, s->files = NULL;
}

const st_tensor *dfu_shards_find(const dfu_shards *s, const char *name, const st_file **in) {
    for (int i = 0; i < s->n; i++) {
        const st_tensor *t = st_find(s->files[i], name);
        if (t) return *in = s->files[i], t;
    }
    return NULL;
}

int dfu_open_shards(dfu_shards *s, const char *tdir, char *err, size_t errlen) {
    char path[DFU_PATH_MAX];
    s->n = 0, s->files = NULL;
    snprintf(path, sizeof path, "%s/" DFU_WEIGHTS_FILE, tdir);
    if (access(path, F_OK) == 0) {
        st_file *f = st_open(path, err, errlen);
        if (!f) return -1;
        s->files = xmalloc(sizeof *s->files);
        s->files[s->n++] = f;
        return 0;
    }
    snprintf(path, sizeof path, "%s/" DFU_INDEX_FILE, tdir);
    if (access(path, F_OK) != 0) {
        snprintf(err, errlen, "'%s': neither " DFU_WEIGHTS_FILE " nor " DFU_INDEX_FILE " is there", tdir);
        return -1;
    }
    json_t *idx = dfu_load_json(path, err, errlen);
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
        if (!json_is_string(v) || strchr(json_string_value(v), '/') || strlen(json_string_value(v)) > 255 ||
            !strcmp(json_string_value(v), "..")) {
            snprintf(err, errlen, "'%s': weight_map entry '%s' is not a file name", path, name);
            rc = -1;
            break;
        }
        const char *file = json_string_value(v);
        int k = 0;
        while (k < s->n && strcmp(opened[k], file)) k++;
        if (k == s->n) {
            char fp[DFU_PATH_MAX + 256];
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
    /* every tensor of a shard must be the one the index names (a tensor in two shards would be ambiguous) */
    for (int k = 0; !rc && k < s->n; k++)
        for (int i = 0; !rc && i < s->files[k]->n_tensors; i++) {
            const char *tn = s->files[k]->tensors[i].name;
            json_t *f = json_object_get(map, tn);
            if (!f || strcmp(json_string_value(f), opened[k])) {
                snprintf(err, errlen, "'%s': tensor '%s' is not listed for this file in '%s'", s->files[k]->path, tn,
                         path);
                rc = -1;
            }
        }
    if (!rc && s->n == 0) {
        snprintf(err, errlen, "'%s': the weight_map is empty", path);
        rc = -1;
    }
    for (int i = 0; i < s->n; i++) free(opened[i]);
    free(opened);
    json_decref(idx);
    if (rc) dfu_shards_close(s);
    return rc;
}

void dfu_shape_str(char *out, size_t n, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(out, n, "[");
    for (int d = 0; d < ndim && k < n; d++)
        k += (size_t)snprintf(out + k, n - k, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (k < n) snprintf(out + k, n - k, "]");
}

int dfu_read_checked(const st_file *f, const st_tensor *t, const param_entry *e, float *out, char *err, size_t errlen) {
    int same = t->ndim == e->ndim;
    for (int d = 0; same && d < e->ndim; d++) same = t->shape[d] == e->shape[d];
    if (!same) {
        char got[160], want[160];
        dfu_shape_str(got, sizeof got, t->ndim, t->shape);
        dfu_shape_str(want, sizeof want, e->ndim, e->shape);
        snprintf(err, errlen, "'%s': tensor '%s' has shape %s, but the config implies %s", f->path, t->name, got, want);
        return -1;
    }
    switch (t->dtype) {
    case ST_F32:
    case ST_F16:
    case ST_BF16:
    case ST_F64:
    case ST_F8_E4M3:
    case ST_F8_E5M2:
        break;
    default:
        snprintf(err, errlen, "'%s': tensor '%s' has dtype %s; expected a floating-point dtype", f->path, t->name,
                 st_dtype_name(t->dtype));
        return -1;
    }
    st_read_f32(f, t, out);
    return 0;
}

int diffusers_transformer_class(const char *dir, char *cls, size_t clslen, char *err, size_t errlen) {
    char tdir[DFU_DIR_MAX], path[DFU_PATH_MAX];
    if (dfu_transformer_dir(dir, tdir, err, errlen)) return -1;
    snprintf(path, sizeof path, "%s/config.json", tdir);
    json_t *j = dfu_load_json(path, err, errlen);
    if (!j) return -1;
    json_t *c = json_object_get(j, "_class_name");
    int rc = 0;
    if (c && !json_is_string(c)) {
        snprintf(err, errlen, "'%s': _class_name is not a string", path);
        rc = -1;
    } else
        snprintf(cls, clslen, "%s", c ? json_string_value(c) : "");
    json_decref(j);
    return rc;
}
