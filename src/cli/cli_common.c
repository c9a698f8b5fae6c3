/* Shared helpers of dfm's subcommands (see cli_common.h). */
#include "cli/cli_common.h"
#include "dfm/checkpoint.h"
#include "dfm/common.h"
#include "dfm/diffusers.h"
#include "dfm/fashion_mnist.h"
#include "dfm/lora.h"
#include "dfm/pretrain.h"
#include "dfm/safetensors.h"

#include <jansson.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int cli_parse_int(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

int cli_parse_u64(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    if (!*s || *s == '-') return 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno) return 0;
    *out = (uint64_t)v;
    return 1;
}

int cli_parse_float(const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v) || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

int cli_opt(int argc, char **argv, int *i, const char *name, const char **val) {
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n)) return 0;
    if (a[n] == '=') {
        *val = a + n + 1;
        return 1;
    }
    if (a[n]) return 0;
    if (*i + 1 >= argc) dfm_die("option %s needs a value", name);
    *val = argv[++*i];
    return 1;
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}
static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

int cli_resolve_weights(const char *checkpoint, const char *which, int which_explicit, char *out, size_t outlen,
                        char *err, size_t errlen) {
    struct stat st;
    if (stat(checkpoint, &st) != 0) {
        snprintf(err, errlen, "checkpoint '%s' does not exist", checkpoint);
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(out, outlen, "%s", checkpoint);
        return 0;
    }
    char dir[4096], p[4608];
    snprintf(dir, sizeof dir, "%s", checkpoint);
    snprintf(p, sizeof p, "%s/latest_checkpointed_iteration.txt", checkpoint);
    if (is_file(p)) { /* a checkpoint root: follow it to the newest iteration */
        FILE *f = fopen(p, "r");
        char line[64] = "";
        if (!f || !fgets(line, sizeof line, f)) {
            snprintf(err, errlen, "cannot read '%s'", p);
            if (f) fclose(f);
            return -1;
        }
        fclose(f);
        line[strcspn(line, " \r\n")] = 0;
        long it;
        if (!cli_parse_int(line, 0, 9999999, &it)) {
            snprintf(err, errlen, "'%s' holds '%s', not an iteration number", p, line);
            return -1;
        }
        snprintf(dir, sizeof dir, "%.4000s/iter_%07ld", checkpoint, it);
        if (!is_dir(dir)) {
            snprintf(err, errlen, "'%s' names iteration %ld, but '%s' is missing", p, it, dir);
            return -1;
        }
    } else {
        struct stat lst;
        snprintf(p, sizeof p, "%s/LATEST", checkpoint);
        if (lstat(p, &lst) == 0) { /* an Automodel checkpoint_dir: its LATEST step folder */
            char *step = checkpoint_resolve(checkpoint, err, errlen);
            if (!step) return -1;
            snprintf(dir, sizeof dir, "%.4000s", step);
            free(step);
        }
    }
    if (ckpt_is_automodel_step(dir)) { /* epoch_E_step_S/: the weights are in model/ */
        char top[4096];
        snprintf(top, sizeof top, "%s", dir);
        ckpt_kind_dir(top, which, dir, sizeof dir);
    }
    snprintf(p, sizeof p, "%s/%s.safetensors", dir, which);
    if (is_file(p)) {
        snprintf(out, outlen, "%s", p);
        return 0;
    }
    if (!which_explicit && !strcmp(which, "ema")) {
        snprintf(p, sizeof p, "%s/model.safetensors", dir);
        if (is_file(p)) {
            dfm_warn("'%s' has no ema.safetensors; using the raw weights model.safetensors", dir);
            snprintf(out, outlen, "%s", p);
            return 0;
        }
    }
    snprintf(err, errlen, "'%s' has no %s.safetensors: not a checkpoint folder (iter_NNNNNNN/) or root", dir, which);
    return -1;
}

/* The iteration folder a checkpoint argument names, if it is a sharded one (saved by several ranks), else NULL. */
static char *sharded_dir(const char *checkpoint) {
    char err[1024];
    if (!is_dir(checkpoint)) return NULL;
    char *dir = checkpoint_resolve(checkpoint, err, sizeof err);
    if (dir && ckpt_is_sharded(dir, err, sizeof err) == 1) return dir;
    free(dir);
    return NULL;
}

/* A sharded checkpoint: the config and metadata from shard 0, the weights gathered from every shard. */
static int open_sharded(const char *dir, const char *which, int max_batch, dit_model *m, char **objective, char **names,
                        char *err, size_t errlen) {
    char *cfg_text = ckpt_meta(dir, "dfm_dit_config");
    if (!cfg_text) {
        snprintf(err, errlen, "'%s': shard 0 has no 'dfm_dit_config' metadata: not a dfm DiT checkpoint", dir);
        return -1;
    }
    dit_config c;
    char cerr[400];
    int rc = dit_config_from_json(&c, cfg_text, cerr, sizeof cerr);
    free(cfg_text);
    if (rc != 0) {
        snprintf(err, errlen, "'%s': %s", dir, cerr);
        return -1;
    }
    dit_create(m, &c, max_batch);
    if (ckpt_read_range(dir, which, &m->table, 0, m->table.total, m->params, err, errlen) != 0) {
        dit_free(m);
        return -1;
    }
    *objective = ckpt_meta(dir, "dfm_objective");
    *names = ckpt_meta(dir, "dfm_class_names");
    return 0;
}

void cli_apply_adapter(const char *adapter, const param_table *t, float *params) {
    if (!adapter) return;
    char err[2048];
    int n = 0;
    if (lora_apply_peft(adapter, t, params, &n, err, sizeof err) != 0) dfm_die("LoRA adapter: %s", err);
    fprintf(stderr, "LoRA adapter %s merged into %d linear layers\n", adapter, n);
}

/* ---- LoRA checkpoints -------------------------------------------------------------------------------- */

/* A LoRA training checkpoint (metadata "dfm_lora": r, alpha, use_rslora, modules, base) holds adapters only. Its
 * base weights path, or NULL with a message. */
static char *lora_base_path(const char *lm, const char *checkpoint, char *err, size_t errlen) {
    json_t *j = json_loads(lm, 0, NULL);
    const char *b = json_string_value(json_object_get(j, "base"));
    char *out = b ? xstrdup(b) : NULL;
    if (!out) snprintf(err, errlen, "'%s': its 'dfm_lora' metadata names no base model", checkpoint);
    json_decref(j);
    return out;
}

/* Merge the checkpoint's adapters (`which`: model or EMA, with the usual EMA fallback) into a model's weights. */
static int apply_lora_checkpoint(const char *checkpoint, const char *which, int which_explicit, const char *lm,
                                 const param_table *t, float *params, char *err, size_t errlen) {
    json_t *j = json_loads(lm, 0, NULL), *mods = json_object_get(j, "modules");
    int n = json_is_array(mods) ? (int)json_array_size(mods) : 0;
    const char **names = xcalloc((size_t)n + 1, sizeof(char *));
    for (int i = 0; i < n; i++) names[i] = json_string_value(json_array_get(mods, (size_t)i));
    json_t *jr = json_object_get(j, "r"), *ja = json_object_get(j, "alpha");
    lora_spec spec = {json_is_integer(jr) ? (int)json_integer_value(jr) : 0,
                      (float)json_number_value(ja),
                      0,
                      json_is_true(json_object_get(j, "use_rslora")),
                      names,
                      n,
                      NULL,
                      0,
                      0};
    lora_model L;
    char e2[2048];
    int rc = -1;
    for (int i = 0; i < n; i++)
        if (!names[i]) n = 0;
    if (n == 0 || !json_is_number(ja)) {
        snprintf(err, errlen, "'%s': its 'dfm_lora' metadata is malformed (expected r, alpha and a list of modules)",
                 checkpoint);
    } else if (lora_create(&L, t, params, &spec, 0, e2, sizeof e2) != 0) {
        snprintf(err, errlen, "'%s': its adapters do not fit the base model: %s", checkpoint, e2);
    } else {
        if (L.n != n)
            snprintf(err, errlen, "'%s': %d adapted modules recorded, %d found in the base model", checkpoint, n, L.n);
        else {
            char *dir = sharded_dir(checkpoint), path[4608];
            const char *kind = which;
            if (!dir && cli_resolve_weights(checkpoint, which, which_explicit, path, sizeof path, err, errlen) == 0) {
                char *slash = strrchr(path, '/');
                kind = slash && !strcmp(slash + 1, "model.safetensors") ? "model" : which;
                if (slash) *slash = 0;
                dir = xstrdup(slash ? path : ".");
            }
            if (dir && ckpt_read_range(dir, kind, &L.table, 0, L.table.total, L.params, err, errlen) == 0) {
                lora_merge(&L, NULL, params);
                rc = 0;
            }
            free(dir);
        }
        lora_free(&L);
    }
    free(names);
    json_decref(j);
    return rc;
}

static int open_dit_lora(const char *checkpoint, const char *which, int which_explicit, const char *lm, int max_batch,
                         dit_model *m, cli_model_info *info, char *err, size_t errlen) {
    char *base = lora_base_path(lm, checkpoint, err, errlen);
    if (!base) return -1;
    char e2[1024];
    char *dir = checkpoint_resolve(base, e2, sizeof e2);
    int rc;
    if (dir)
        rc = cli_open_dit(base, "model", 1, max_batch, m, info, err, errlen);
    else {
        memset(info, 0, sizeof *info);
        rc = dit_import_diffusers(m, base, max_batch, err, errlen);
        if (rc == 0) {
            int K = m->cfg.num_classes;
            info->class_names = xcalloc((size_t)K, sizeof(char *));
            for (int k = 0; k < K; k++) {
                char buf[32];
                snprintf(buf, sizeof buf, "class %d", k);
                info->class_names[k] = xstrdup(K == 10 ? fmnist_class_names[k] : buf);
            }
        }
    }
    free(dir);
    if (rc == 0 && apply_lora_checkpoint(checkpoint, which, which_explicit, lm, &m->table, m->params, err, errlen)) {
        cli_model_info_free(info, m->cfg.num_classes);
        dit_free(m);
        rc = -1;
    }
    if (rc == 0) snprintf(info->path, sizeof info->path, "%.2000s (LoRA over %.2000s)", checkpoint, base);
    free(base);
    return rc;
}

int cli_open_dit(const char *checkpoint, const char *which, int which_explicit, int max_batch, dit_model *m,
                 cli_model_info *info, char *err, size_t errlen) {
    char *lm = cli_checkpoint_meta(checkpoint, "model", "dfm_lora");
    if (lm) {
        int rc = open_dit_lora(checkpoint, which, which_explicit, lm, max_batch, m, info, err, errlen);
        free(lm);
        return rc;
    }
    memset(info, 0, sizeof *info);
    char serr[1024];
    char *objective = NULL, *names_json = NULL;
    char *sdir = sharded_dir(checkpoint);
    if (sdir) {
        snprintf(info->path, sizeof info->path, "%.4000s (%s, from its shards)", sdir, which);
        int rc = open_sharded(sdir, which, max_batch, m, &objective, &names_json, err, errlen);
        free(sdir);
        if (rc) return -1;
    } else {
        if (cli_resolve_weights(checkpoint, which, which_explicit, info->path, sizeof info->path, err, errlen))
            return -1;
        st_file *f = st_open(info->path, serr, sizeof serr);
        if (!f) {
            snprintf(err, errlen, "'%s' is not a dfm weights file (safetensors): %s", info->path, serr);
            return -1;
        }
        if (!st_meta(f, "dfm_dit_config")) {
            snprintf(err, errlen, "'%s' is not a dfm DiT weights file: it has no 'dfm_dit_config' metadata",
                     info->path);
            st_close(f);
            return -1;
        }
        objective = st_meta(f, "dfm_objective") ? xstrdup(st_meta(f, "dfm_objective")) : NULL;
        names_json = st_meta(f, "dfm_class_names") ? xstrdup(st_meta(f, "dfm_class_names")) : NULL;
        st_close(f);
        if (dit_open_weights(m, info->path, max_batch, err, errlen)) {
            free(objective), free(names_json);
            return -1;
        }
    }
    int rc = stored_objective_parse(objective, &info->obj, serr, sizeof serr);
    free(objective);
    if (rc < 0) {
        snprintf(err, errlen, "'%s': %s", info->path, serr);
        free(names_json);
        dit_free(m);
        return -1;
    }
    info->has_objective = rc == 1;

    int K = m->cfg.num_classes;
    info->class_names = xcalloc((size_t)K, sizeof(char *));
    json_t *names = names_json ? json_loads(names_json, 0, NULL) : NULL;
    if (names_json && (!json_is_array(names) || (int)json_array_size(names) != K))
        dfm_warn("'%s': metadata 'dfm_class_names' is not a list of %d names; ignoring it", info->path, K);
    for (int k = 0; k < K; k++) {
        json_t *v = json_is_array(names) && (int)json_array_size(names) == K ? json_array_get(names, (size_t)k) : NULL;
        char buf[32];
        snprintf(buf, sizeof buf, "class %d", k);
        info->class_names[k] = xstrdup(json_is_string(v) ? json_string_value(v)
                                       : K == 10         ? fmnist_class_names[k]
                                                         : buf);
    }
    json_decref(names);
    free(names_json);
    return 0;
}

char *cli_checkpoint_meta(const char *checkpoint, const char *which, const char *key) {
    char *sdir = sharded_dir(checkpoint);
    if (sdir) {
        char *v = ckpt_meta(sdir, key);
        free(sdir);
        return v;
    }
    char path[4608], err[1024];
    if (cli_resolve_weights(checkpoint, which, 0, path, sizeof path, err, sizeof err)) return NULL;
    st_file *f = st_open(path, NULL, 0);
    if (!f) return NULL;
    char *v = st_meta(f, key) ? xstrdup(st_meta(f, key)) : NULL;
    st_close(f);
    return v;
}

void cli_model_info_free(cli_model_info *info, int num_classes) {
    for (int k = 0; info->class_names && k < num_classes; k++) free(info->class_names[k]);
    free(info->class_names);
    info->class_names = NULL;
}

/* ---- Wan ------------------------------------------------------------------------------------------ */

int cli_checkpoint_is_wan(const char *checkpoint, const char *which, int which_explicit) {
    char *sdir = sharded_dir(checkpoint);
    if (sdir) {
        char *cfg = ckpt_meta(sdir, "dfm_wan_config");
        free(sdir);
        free(cfg);
        return cfg != NULL;
    }
    /* resolve without cli_resolve_weights' warning about a missing EMA (the open that follows prints it) */
    char path[4608], err[1024];
    if (cli_resolve_weights(checkpoint, which, 1, path, sizeof path, err, sizeof err) != 0 &&
        (which_explicit || strcmp(which, "ema") ||
         cli_resolve_weights(checkpoint, "model", 1, path, sizeof path, err, sizeof err) != 0))
        return 0;
    st_file *f = st_open(path, NULL, 0);
    int wan = f && st_meta(f, "dfm_wan_config") != NULL;
    if (f) st_close(f);
    return wan;
}

static int open_wan_lora(const char *checkpoint, const char *which, int which_explicit, const char *lm,
                         const wan_shape *max, wan_model *m, cli_wan_info *info, char *err, size_t errlen) {
    char *base = lora_base_path(lm, checkpoint, err, errlen);
    if (!base) return -1;
    char e2[1024];
    char *dir = checkpoint_resolve(base, e2, sizeof e2);
    int rc;
    if (dir)
        rc = cli_open_wan(base, "model", 1, max, m, info, err, errlen);
    else {
        memset(info, 0, sizeof *info);
        rc = wan_import_diffusers(m, base, max, err, errlen);
    }
    free(dir);
    if (rc == 0 && apply_lora_checkpoint(checkpoint, which, which_explicit, lm, &m->table, m->params, err, errlen)) {
        wan_free(m);
        rc = -1;
    }
    if (rc == 0) { /* the objective the adapters were trained with */
        char *objective = cli_checkpoint_meta(checkpoint, "model", "dfm_objective"), serr[512];
        int orc = stored_objective_parse(objective, &info->obj, serr, sizeof serr);
        if (orc == 1) info->has_objective = 1;
        free(objective);
        snprintf(info->path, sizeof info->path, "%.2000s (LoRA over %.2000s)", checkpoint, base);
    }
    free(base);
    return rc;
}

int cli_open_wan(const char *checkpoint, const char *which, int which_explicit, const wan_shape *max, wan_model *m,
                 cli_wan_info *info, char *err, size_t errlen) {
    char *lm = cli_checkpoint_meta(checkpoint, "model", "dfm_lora");
    if (lm) {
        int rc = open_wan_lora(checkpoint, which, which_explicit, lm, max, m, info, err, errlen);
        free(lm);
        return rc;
    }
    memset(info, 0, sizeof *info);
    char serr[1024];
    char *objective = NULL;
    char *sdir = sharded_dir(checkpoint);
    if (sdir) { /* the config and metadata from shard 0, the weights gathered from every shard */
        snprintf(info->path, sizeof info->path, "%.4000s (%s, from its shards)", sdir, which);
        char *cfg_text = ckpt_meta(sdir, "dfm_wan_config");
        wan_config c;
        int rc = -1;
        if (!cfg_text)
            snprintf(err, errlen, "'%s': shard 0 has no 'dfm_wan_config' metadata: not a dfm Wan checkpoint", sdir);
        else if (wan_config_from_json(&c, cfg_text, serr, sizeof serr) != 0)
            snprintf(err, errlen, "'%s': %s", sdir, serr);
        else {
            wan_create_weights_only(m, &c);
            if (max && wan_prepare(m, max, serr, sizeof serr))
                snprintf(err, errlen, "'%s': %s", sdir, serr);
            else
                rc = ckpt_read_range(sdir, which, &m->table, 0, m->table.total, m->params, err, errlen);
            if (rc)
                wan_free(m);
            else
                objective = ckpt_meta(sdir, "dfm_objective");
        }
        free(cfg_text);
        free(sdir);
        if (rc) return -1;
    } else {
        if (cli_resolve_weights(checkpoint, which, which_explicit, info->path, sizeof info->path, err, errlen))
            return -1;
        st_file *f = st_open(info->path, serr, sizeof serr);
        if (!f) {
            snprintf(err, errlen, "'%s' is not a dfm weights file (safetensors): %s", info->path, serr);
            return -1;
        }
        const char *cfg_text = st_meta(f, "dfm_wan_config");
        wan_config c;
        int ok = cfg_text != NULL;
        if (!ok)
            snprintf(err, errlen, "'%s' is not a dfm Wan weights file: it has no 'dfm_wan_config' metadata",
                     info->path);
        else if (wan_config_from_json(&c, cfg_text, serr, sizeof serr) != 0)
            snprintf(err, errlen, "'%s': %s", info->path, serr), ok = 0;
        objective = ok && st_meta(f, "dfm_objective") ? xstrdup(st_meta(f, "dfm_objective")) : NULL;
        st_close(f);
        if (!ok || wan_open_weights(m, info->path, max, err, errlen)) {
            free(objective);
            return -1;
        }
    }
    int rc = stored_objective_parse(objective, &info->obj, serr, sizeof serr);
    free(objective);
    if (rc < 0) {
        snprintf(err, errlen, "'%s': %s", info->path, serr);
        wan_free(m);
        return -1;
    }
    info->has_objective = rc == 1;
    return 0;
}
