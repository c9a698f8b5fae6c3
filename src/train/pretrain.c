/* The training job (Megatron paradigm conventions): config in; iter_%07d/ checkpoints, metrics.jsonl and a
 * loss curve out. Resuming from a checkpoint continues bit-identically: the data order, the noise and the
 * timesteps are functions of (seed, step, sample index), and every piece of state is saved exactly. */
#include "dfm/pretrain.h"
#include "dfm/checkpoint.h"
#include "dfm/common.h"
#include "dfm/context_parallel.h"
#include "dfm/data.h"
#include "dfm/data_parallel.h"
#include "dfm/diffusers.h"
#include "dfm/dist.h"
#include "dfm/gather.h"
#include "dfm/kernels.h"
#include "dfm/lora.h"
#include "dfm/optim.h"
#include "dfm/pipeline.h"
#include "dfm/plot.h"
#include "dfm/safetensors.h"
#include "dfm/sample.h"
#include "dfm/codec.h"
#include "dfm/train.h"
#include "dfm/video.h"
#include "dfm/wan.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- configuration binding -------------------------------------------------------------------- */

static int int_key(const cfg *c, const char *key, int64_t lo, int64_t hi) {
    int64_t v = cfg_int(c, key);
    if (v < lo || v > hi)
        dfm_die("%s = %lld (from %s) is out of range [%lld, %lld]", key, (long long)v, cfg_source(c, key),
                (long long)lo, (long long)hi);
    return (int)v;
}

void config_to_dit(const cfg *c, dit_config *d) {
    memset(d, 0, sizeof *d);
    d->num_layers = int_key(c, "model.num_layers", 1, 1000);
    d->hidden_size = int_key(c, "model.hidden_size", 1, 1 << 16);
    d->num_heads = int_key(c, "model.num_attention_heads", 1, 1 << 12);
    d->ffn_hidden_size = int_key(c, "model.ffn_hidden_size", 0, 1 << 18);
    d->patch_size = int_key(c, "model.patch_size", 1, 64);
    d->in_channels = int_key(c, "model.in_channels", 1, 1024);
    d->out_channels = int_key(c, "model.out_channels", 0, 1024);
    d->image_size = int_key(c, "model.image_size", 1, 1 << 14);
    d->num_classes = int_key(c, "model.num_classes", 1, 1 << 24);
    d->freq_dim = int_key(c, "model.freq_dim", 2, 1 << 14);
    d->norm_eps = (float)cfg_float(c, "model.norm_eps");
    char err[512];
    if (!dit_config_check(d, err, sizeof err)) dfm_die("invalid model (recipe %s): %s", cfg_recipe_of(c), err);
}

void config_to_wan(const cfg *c, wan_config *w) {
    memset(w, 0, sizeof *w);
    int hidden = int_key(c, "model.hidden_size", 1, 1 << 16);
    w->num_layers = int_key(c, "model.num_layers", 1, 1000);
    w->num_heads = int_key(c, "model.num_attention_heads", 1, 1 << 12);
    if (hidden % w->num_heads)
        dfm_die("model.hidden_size %d is not divisible by model.num_attention_heads %d", hidden, w->num_heads);
    w->head_dim = hidden / w->num_heads;
    w->ffn_dim = int_key(c, "model.ffn_hidden_size", 1, 1 << 18);
    w->in_channels = int_key(c, "model.in_channels", 1, 1024);
    w->out_channels = int_key(c, "model.out_channels", 0, 1024);
    if (w->out_channels != 0 && w->out_channels != w->in_channels)
        dfm_die("model.out_channels %d (from %s) must equal model.in_channels %d (or be 0): Wan's training target has "
                "the latents' channels",
                w->out_channels, cfg_source(c, "model.out_channels"), w->in_channels);
    w->text_dim = int_key(c, "model.text_dim", 1, 1 << 16);
    w->freq_dim = int_key(c, "model.freq_dim", 2, 1 << 14);
    w->patch_t = int_key(c, "model.patch_size_t", 1, 64);
    w->patch_h = w->patch_w = int_key(c, "model.patch_size", 1, 64);
    w->eps = (float)cfg_float(c, "model.norm_eps");
    w->rope_max_seq_len = 1024;
    char err[512];
    if (!wan_config_check(w, err, sizeof err)) dfm_die("invalid model (recipe %s): %s", cfg_recipe_of(c), err);
}

void config_to_objective(const cfg *c, objective_config *o) {
    const char *kind = cfg_str(c, "diffusion.objective");
    if (!strcmp(kind, "edm"))
        objective_defaults_edm(o);
    else
        objective_defaults_flow(o, 0);
    if (!timestep_sampling_parse(cfg_str(c, "diffusion.timestep_sampling"), &o->sampling))
        dfm_die("diffusion.timestep_sampling: unknown value '%s'", cfg_str(c, "diffusion.timestep_sampling"));
    o->logit_mean = (float)cfg_float(c, "diffusion.logit_mean");
    o->logit_std = (float)cfg_float(c, "diffusion.logit_std");
    o->flow_shift = (float)cfg_float(c, "diffusion.flow_shift");
    o->mix_uniform_ratio = (float)cfg_float(c, "diffusion.mix_uniform_ratio");
    o->mode_scale = (float)cfg_float(c, "diffusion.mode_scale");
    o->sigma_min = (float)cfg_float(c, "diffusion.sigma_min");
    o->sigma_max = (float)cfg_float(c, "diffusion.sigma_max");
    o->num_train_timesteps = int_key(c, "diffusion.num_train_timesteps", 1, 1 << 20);
    o->use_loss_weighting = cfg_bool(c, "diffusion.use_loss_weighting");
    o->cond_dropout_prob = (float)cfg_float(c, "diffusion.cfg_dropout_prob");
    o->p_mean = (float)cfg_float(c, "diffusion.edm_p_mean");
    o->p_std = (float)cfg_float(c, "diffusion.edm_p_std");
    o->sigma_data = (float)cfg_float(c, "diffusion.edm_sigma_data");
    o->edm_sigma_min = (float)cfg_float(c, "diffusion.edm_sigma_min");
    o->edm_sigma_max = (float)cfg_float(c, "diffusion.edm_sigma_max");
    if (!(o->flow_shift > 0))
        dfm_die("diffusion.flow_shift must be > 0 (from %s)", cfg_source(c, "diffusion.flow_shift"));
    if (!(o->sigma_min >= 0 && o->sigma_min < o->sigma_max && o->sigma_max <= 1))
        dfm_die("diffusion.sigma_min/sigma_max must satisfy 0 <= min < max <= 1 (got %g, %g)", (double)o->sigma_min,
                (double)o->sigma_max);
    if (!(o->cond_dropout_prob >= 0 && o->cond_dropout_prob <= 1))
        dfm_die("diffusion.cfg_dropout_prob must be in [0, 1] (got %g)", (double)o->cond_dropout_prob);
    if (!(o->edm_sigma_min > 0 && o->edm_sigma_min < o->edm_sigma_max && o->sigma_data > 0))
        dfm_die("diffusion.edm_sigma_min/max/sigma_data must satisfy 0 < min < max and sigma_data > 0");
}

static char *objective_json(const objective_config *o) {
    json_t *j = json_pack("{s:s, s:f, s:i, s:f, s:f, s:f}", "kind", o->kind == OBJ_EDM ? "edm" : "flow_matching",
                          "flow_shift", (double)o->flow_shift, "num_train_timesteps", o->num_train_timesteps,
                          "sigma_data", (double)o->sigma_data, "edm_sigma_min", (double)o->edm_sigma_min,
                          "edm_sigma_max", (double)o->edm_sigma_max);
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    return s;
}

double lr_schedule(long it, double lr, double min_lr, long warmup, long decay_iters, lr_style style) {
    if (warmup > 0 && it < warmup) return lr * (double)(it + 1) / (double)warmup;
    if (style == LR_CONSTANT) return lr;
    if (it >= decay_iters) return min_lr;
    double span = (double)(decay_iters - warmup), ratio = span > 0 ? (double)(it - warmup) / span : 1.0;
    double coef = style == LR_COSINE ? 0.5 * (1.0 + cos(M_PI * ratio)) : 1.0 - ratio;
    return min_lr + (lr - min_lr) * coef;
}

/* ---- small file helpers ----------------------------------------------------------------------- */

static void fsync_path(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* ---- checkpoints ------------------------------------------------------------------------------ */

static int is_iter_name(const char *name, long *it) {
    if (strncmp(name, "iter_", 5) || strlen(name) != 12) return 0;
    for (int i = 5; i < 12; i++)
        if (name[i] < '0' || name[i] > '9') return 0;
    *it = atol(name + 5);
    return 1;
}

/* Automodel's step folder name, epoch_<E>_step_<S> (decimal digits only). */
static int is_step_name(const char *name, long *epoch, long *step) {
    const char *p = name;
    long v[2];
    for (int k = 0; k < 2; k++) {
        const char *tag = k ? "_step_" : "epoch_";
        size_t n = strlen(tag);
        if (strncmp(p, tag, n) || p[n] < '0' || p[n] > '9') return 0;
        char *end;
        v[k] = strtol(p + n, &end, 10);
        p = end;
    }
    if (*p) return 0;
    *epoch = v[0], *step = v[1];
    return 1;
}

/* Automodel's LATEST in root: a symlink to a step folder's name (as NeMo Automodel writes it), or a file holding
 * that name (a copy that flattened the link). 1 and *out (malloc'ed) the step folder; 0 when root has no LATEST;
 * -1 with a message naming LATEST and what was expected. */
static int latest_pointer(const char *root, char **out, char *err, size_t errlen) {
    char p[4200], name[1024];
    snprintf(p, sizeof p, "%s/LATEST", root);
    struct stat sb;
    if (lstat(p, &sb) != 0) return 0;
    if (S_ISLNK(sb.st_mode)) {
        ssize_t n = readlink(p, name, sizeof name - 1);
        if (n < 0) {
            snprintf(err, errlen, "cannot read the symlink '%s': %s", p, strerror(errno));
            return -1;
        }
        name[n] = 0;
    } else if (S_ISREG(sb.st_mode)) {
        char *text = read_file_err(p, err, errlen);
        if (!text) return -1;
        snprintf(name, sizeof name, "%s", text);
        free(text);
        name[strcspn(name, "\r\n")] = 0;
    } else {
        snprintf(err, errlen, "'%s' is neither a symlink nor a file naming a step folder (epoch_E_step_S)", p);
        return -1;
    }
    if (!name[0]) {
        snprintf(err, errlen, "'%s' is empty: expected the name of a step folder (epoch_E_step_S)", p);
        return -1;
    }
    char *dir = xmalloc(strlen(root) + strlen(name) + 2);
    if (name[0] == '/')
        strcpy(dir, name);
    else
        sprintf(dir, "%s/%s", root, name);
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        snprintf(err, errlen, "'%s' points to '%s', but '%s' does not exist (expected a step folder epoch_E_step_S/)",
                 p, name, dir);
        free(dir);
        return -1;
    }
    *out = dir;
    return 1;
}

char *checkpoint_resolve(const char *path, char *err, size_t errlen) {
    char tracker[4096];
    snprintf(tracker, sizeof tracker, "%s/latest_checkpointed_iteration.txt", path);
    struct stat sb;
    if (stat(tracker, &sb) == 0) {
        char *text = read_file_err(tracker, err, errlen);
        if (!text) return NULL;
        char *end;
        long it = strtol(text, &end, 10);
        while (*end == '\n' || *end == ' ' || *end == '\r') end++;
        if (end == text || *end || it < 0) {
            snprintf(err, errlen, "'%s': expected an iteration number, got '%.40s'", tracker, text);
            free(text);
            return NULL;
        }
        free(text);
        char *dir = xmalloc(strlen(path) + 32);
        sprintf(dir, "%s/iter_%07ld", path, it);
        if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
            snprintf(err, errlen, "'%s' names iteration %ld, but '%s' does not exist", tracker, it, dir);
            free(dir);
            return NULL;
        }
        return dir;
    }
    char *step = NULL;
    int rc = latest_pointer(path, &step, err, errlen); /* an Automodel checkpoint_dir */
    if (rc < 0) return NULL;
    if (rc > 0) {
        if (ckpt_is_automodel_step(step) || ckpt_is_sharded(step, err, errlen) >= 0) return step;
        snprintf(err, errlen, "'%s/LATEST' points to '%s', which holds no checkpoint (no model/ folder)", path, step);
        free(step);
        return NULL;
    }
    char model[4096];
    snprintf(model, sizeof model, "%s/model.safetensors", path);
    if (stat(model, &sb) == 0) return xstrdup(path);
    char e2[64];
    if (ckpt_is_sharded(path, e2, sizeof e2) == 1) return xstrdup(path);
    if (ckpt_is_automodel_step(path)) return xstrdup(path);
    snprintf(err, errlen,
             "'%s' is not a checkpoint: expected a checkpoint folder (latest_checkpointed_iteration.txt, or "
             "Automodel's LATEST), an iter_NNNNNNN folder (model.safetensors or shard_00000_of_NNNNN.safetensors) "
             "or an epoch_E_step_S folder (model/)",
             path);
    return NULL;
}

typedef struct {
    const cfg *c;
    dit_model model;
    dp_engine *dp;  /* data parallelism (one process: DP = 1, nothing sharded); holds the optimizer and EMA */
    int sharded;    /* checkpoints as one shard per rank */
    char token[32]; /* names this job's temporary checkpoint folders (the same on every rank) */
    dit_trainer tr;
    int wan; /* model.kind = wan: the fields below instead of model / tr / loader */
    wan_model wmodel;
    wan_trainer wtr;
    video_loader *vloader;
    const param_table *table; /* the model's parameter table, whichever it is */
    char *config_json;        /* the model config, stored with the weights under config_key */
    const char *config_key;
    char *sample_meta; /* Wan: the sample shape and text encoder, for dfm generate ("dfm_wan_sample") */
    objective_config obj;
    float ema_decay;
    data_loader *loader;
    long iteration; /* completed optimizer steps */
    int64_t consumed;
    char *objective_meta;
    char *class_names_meta; /* JSON list, or NULL */
    int lora_on;            /* peft: the engine, the optimizer and checkpoints hold the adapters (j.lora) */
    lora_model lora;
    char *lora_meta;  /* "dfm_lora": rank, alpha, modules and the base weights' path */
    int automodel;    /* checkpoint.layout: automodel */
    int consolidated; /* checkpoint.consolidated: 0 none, 1 final, 2 every */
    long train_iters;
    char saved[64];  /* the name of the last checkpoint folder written */
    pp_stage *pp;    /* pipeline parallelism (model.pipeline_model_parallel_size > 1): this rank's stage */
    int vpp;         /* model chunks per stage (model.virtual_pipeline_model_parallel_size; 1: plain) */
    dit_model *xdit; /* the interleaved schedule: this stage's chunks 1..vpp-1 (chunk 0 is model / wmodel) */
    wan_model *xwan;
    full_model *full; /* under tensor, pipeline or context parallelism: the whole model on rank 0 (dfm/gather.h) */
} job;

static void lora_refresh(job *j);

static void save_weights(job *j, const float *buf, const char *path, const char *const *meta) {
    if (j->lora_on) { /* the adapters, with the model's config and what the base is */
        const char *m[16] = {j->config_key, j->config_json, "dfm_lora", j->lora_meta};
        int n = 4;
        for (int i = 0; meta && meta[i] && n < 14; i += 2) m[n++] = meta[i], m[n++] = meta[i + 1];
        param_table_save(j->table, buf, "", path, m);
    } else if (j->wan)
        wan_save_weights(&j->wmodel, buf, path, meta);
    else
        dit_save_weights(&j->model, buf, path, meta);
}

/* The weights, EMA and Adam moments: one shard per rank (sharded strategies), or consolidated files from rank 0.
 * mdir == odir: Megatron's iter folder holds them all; else the model and EMA go to mdir, the moments to odir. */
static void write_state_tensors(job *j, const char *mdir, const char *odir) {
    int lead = dist_get()->rank == 0;
    char path[4200];
    char step[32];
    snprintf(step, sizeof step, "%ld", dp_optimizer_step(j->dp));
    if (j->sharded) { /* every rank writes its own range of parameters, EMA and moments */
        const char *smeta[] = {
            j->config_key, j->config_json,    "dfm_objective",     j->objective_meta, "step",         step, "dfm_lora",
            j->lora_meta,  "dfm_class_names", j->class_names_meta, "dfm_wan_sample",  j->sample_meta, NULL};
        if (!strcmp(mdir, odir))
            dp_save_shard(j->dp, mdir, smeta);
        else
            dp_save_shard_split(j->dp, mdir, odir, smeta);
    } else if (lead) {
        /* optional entries only when present: the list ends at the first NULL key */
        const char *meta[8] = {"dfm_objective", j->objective_meta};
        int nm = 2;
        if (j->class_names_meta) meta[nm++] = "dfm_class_names", meta[nm++] = j->class_names_meta;
        if (j->sample_meta) meta[nm++] = "dfm_wan_sample", meta[nm++] = j->sample_meta;
        snprintf(path, sizeof path, "%s/model.safetensors", mdir);
        save_weights(j, j->lora_on ? j->lora.params : j->wan ? j->wmodel.params : j->model.params, path, meta);
        snprintf(path, sizeof path, "%s/ema.safetensors", mdir);
        save_weights(j, dp_full_ema(j->dp), path, meta);
        const adamw_state *opt = dp_optimizer(j->dp);
        st_writer *w = st_writer_new();
        char name[600];
        for (int i = 0; i < j->table->n; i++) {
            const param_entry *e = &j->table->e[i];
            snprintf(name, sizeof name, "exp_avg.%s", e->name);
            st_writer_add(w, name, ST_F32, e->ndim, e->shape, opt->m + e->offset);
            snprintf(name, sizeof name, "exp_avg_sq.%s", e->name);
            st_writer_add(w, name, ST_F32, e->ndim, e->shape, opt->v + e->offset);
        }
        st_writer_meta(w, "step", step);
        snprintf(path, sizeof path, "%s/optimizer.safetensors", odir);
        st_writer_finish(w, path);
    }
    if (j->lora_on) { /* the adapters as PEFT writes them, for diffusers / PEFT users: Megatron's iter folder
                       * gets adapter/, Automodel's step folder has them in model/ */
        const dist_info *di = dist_get();
        float *ad = j->lora.params;
        char perr[1024];
        if (di->tp > 1 || di->pp > 1) {
            /* every stage's and TP rank's pieces are in the shard files: once all are written, the lead reads the
             * whole adapters back from them (one process's names and shapes) */
            dist_barrier_world();
            ad = NULL;
            if (lead) {
                ad = xalloc_floats(j->lora.global.total);
                if (ckpt_read_range(mdir, "model", &j->lora.global, 0, j->lora.global.total, ad, perr, sizeof perr))
                    dfm_die("gathering the LoRA adapters for the PEFT files: %s", perr);
            }
        } else if (!ad)
            dp_gather_full(j->dp, 0, ad = xalloc_floats(j->table->total));
        if (!strcmp(mdir, odir))
            snprintf(path, sizeof path, "%s/adapter", mdir);
        else
            snprintf(path, sizeof path, "%s", mdir);
        if (lead && lora_save_peft(&j->lora, ad, path, cfg_str(j->c, "checkpoint.pretrained_checkpoint"), perr,
                                   sizeof perr) != 0)
            dfm_die("saving the LoRA adapter: %s", perr);
        if (ad != j->lora.params) free(ad);
    }
}

/* Tensor parallelism: the parameters that are not split (norms, modulation, embedders, head) and their EMA must be
 * the same bits on every TP rank. Checked at every checkpoint by a checksum compared over the TP group; a
 * difference is a bug, and ends the run rather than saving diverged replicas. */
static void tp_check_replicated(job *j) {
    const dist_info *di = dist_get();
    if (di->tp == 1) return;
    const param_table *t = j->pp && !j->lora_on ? pp_stage_table(j->pp) : j->table; /* what the engine holds */
    float *full = xalloc_floats(t->total);
    uint64_t h = 1469598103934665603ull; /* FNV-1a over the bytes */
    size_t n = 0;
    for (int ema = 0; ema < 2; ema++) {
        dp_gather_full(j->dp, ema, full); /* every rank takes part */
        for (int i = 0; i < t->n; i++) {
            if (t->e[i].split_axis >= 0) continue;
            const unsigned char *b = (const unsigned char *)(full + t->e[i].offset);
            for (size_t k = 0; k < t->e[i].numel * sizeof(float); k++) h = (h ^ b[k]) * 1099511628211ull;
            n += ema ? 0 : t->e[i].numel;
        }
    }
    free(full);
    double mine, *all = xcalloc((size_t)di->tp, sizeof(double));
    memcpy(&mine, &h, sizeof mine);
    dist_tp_allgather_f64(&mine, all, 1, "tensor-parallel all-gather of the replicated parameters' checksum");
    for (int r = 1; r < di->tp; r++)
        if (memcmp(&all[r], &all[0], sizeof(double)))
            dfm_die("tensor parallelism: the %zu replicated parameters (or their EMA) differ between TP rank 0 and TP "
                    "rank %d at iteration %ld",
                    n, r, j->iteration);
    free(all);
    if (di->rank == 0)
        printf("  tensor-parallel ranks agree bit for bit on the %zu replicated parameters and their EMA (checksum "
               "%016llx)%s\n",
               n, (unsigned long long)h, di->pp > 1 ? "; those of stage 0 (every stage checks its own)" : "");
}

static void save_checkpoint(job *j, const char *root) {
    int lead = dist_get()->rank == 0;
    tp_check_replicated(j);
    char final[4096], tmp[4096], path[4200];
    snprintf(final, sizeof final, "%s/iter_%07ld", root, j->iteration);
    snprintf(tmp, sizeof tmp, "%s/iter_%07ld.tmp.%s", root, j->iteration, j->token);
    snprintf(j->saved, sizeof j->saved, "iter_%07ld", j->iteration);
    if (lead) {
        xmkdir_p(root);
        rm_tree(tmp);
        xmkdir_p(tmp);
    }
    dist_barrier_world();
    write_state_tensors(j, tmp, tmp);
    /* every rank's files are complete before the folder gets its final name */
    dist_barrier_world();
    if (!lead) {
        dist_barrier_world();
        return;
    }
    char *loader_state = j->wan ? video_loader_state_save(j->vloader) : loader_state_save(j->loader);
    json_error_t je;
    json_t *ls = json_loads(loader_state, 0, &je);
    json_t *st = json_pack("{s:I, s:I, s:I, s:o}", "iteration", (json_int_t)j->iteration, "consumed_samples",
                           (json_int_t)j->consumed, "seed", (json_int_t)cfg_int(j->c, "rng.seed"), "data_loader",
                           ls ? ls : json_null());
    char *text = json_dumps(st, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    snprintf(path, sizeof path, "%s/train_state.json", tmp);
    write_text_atomic(path, text);
    free(text);
    json_decref(st);
    free(loader_state);
    snprintf(path, sizeof path, "%s/run_config.yaml", tmp);
    cfg_write_yaml(j->c, path);
    fsync_path(tmp);
    /* the folder appears under its final name only when complete; a re-save of the same iteration (a run
     * resumed at its last step) moves the old folder aside first and deletes it only after the swap */
    struct stat sb;
    char old[4200];
    snprintf(old, sizeof old, "%s/iter_%07ld.tmp.%s.old", root, j->iteration, j->token);
    int had_old = stat(final, &sb) == 0 && rename(final, old) == 0;
    if (rename(tmp, final) != 0) dfm_die("cannot rename '%s' to '%s': %s", tmp, final, strerror(errno));
    if (had_old) rm_tree(old);
    fsync_path(root);
    snprintf(path, sizeof path, "%s/latest_checkpointed_iteration.txt", root);
    char it_text[32];
    snprintf(it_text, sizeof it_text, "%ld\n", j->iteration);
    write_text_atomic(path, it_text);
    /* keep the most recent k; also clear temporary folders left by killed runs */
    int keep = (int)cfg_int(j->c, "checkpoint.most_recent_k");
    DIR *d = opendir(root);
    long iters[4096];
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        long it;
        if (is_iter_name(e->d_name, &it) && n < 4096)
            iters[n++] = it;
        else if (!strncmp(e->d_name, "iter_", 5) && strstr(e->d_name, ".tmp.")) {
            snprintf(path, sizeof path, "%s/%s", root, e->d_name);
            rm_tree(path);
        }
    }
    if (d) closedir(d);
    if (keep > 0)
        for (int a = 0; a < n; a++) {
            int newer = 0;
            for (int b = 0; b < n; b++) newer += iters[b] > iters[a];
            if (newer >= keep && iters[a] != j->iteration) {
                snprintf(path, sizeof path, "%s/iter_%07ld", root, iters[a]);
                rm_tree(path);
            }
        }
    dist_barrier_world();
}

/* ---- the Automodel layout (checkpoint.layout: automodel) --------------------------------------------------- */

/* The epoch of the last sample a loader handed out: its state's "epoch" (or its bucket sampler's; the loaders
 * advance it lazily, on the first sample of the next epoch), 0 for a state without one. */
static long state_epoch(const char *loader_state) {
    json_t *o = json_loads(loader_state, 0, NULL);
    json_t *e = o ? json_object_get(o, "epoch") : NULL;
    if (!e && o) e = json_object_get(json_object_get(o, "sampler"), "epoch"); /* the bucketed loader's */
    long epoch = json_is_integer(e) && json_integer_value(e) >= 0 ? (long)json_integer_value(e) : 0;
    if (o) json_decref(o);
    return epoch;
}

/* model/consolidated/: the full weights as a diffusers transformer folder (config.json and
 * diffusion_pytorch_model.safetensors), written by the lead into the step folder before it gets its name. */
static void write_consolidated(job *j, const dit_model *dm, const wan_model *wm, const float *full, const char *mdir) {
    char scratch[4500], from[4600], to[4600], err[1024];
    diffusers_export_opts eo;
    diffusers_export_defaults(&eo);
    eo.objective = j->obj.kind;
    eo.flow_shift = j->obj.flow_shift;
    eo.sigma_data = j->obj.sigma_data;
    snprintf(scratch, sizeof scratch, "%s/.consolidated.export", mdir);
    int rc = j->wan ? wan_export_diffusers(wm, full, scratch, &eo, err, sizeof err)
                    : dit_export_diffusers(dm, full, scratch, &eo, err, sizeof err);
    if (rc) dfm_die("checkpoint.consolidated: %s", err);
    snprintf(from, sizeof from, "%s/transformer", scratch);
    snprintf(to, sizeof to, "%s/consolidated", mdir);
    if (rename(from, to) != 0) dfm_die("cannot rename '%s' to '%s': %s", from, to, strerror(errno));
    rm_tree(scratch);
}

/* Rank 0's one-process model of this run's config (dfm/gather.h), made on first use: for sampling (Wan: sized for
 * one sample of the run's largest shape) and for the consolidated folder. NULL on the other ranks. */
static full_model *lead_model(job *j) {
    if (dist_get()->rank != 0) return NULL;
    if (!j->full) {
        j->full = xcalloc(1, sizeof *j->full);
        if (j->wan)
            full_model_init_wan(j->full, &j->wmodel.cfg, &j->wmodel.max);
        else
            full_model_init_dit(j->full, &j->model.cfg);
    }
    return j->full;
}

/* Tensor or pipeline parallelism: no rank holds the whole model. Once every rank's shard files are in mdir, rank 0
 * reads the weights back from them whole (dfm export's reading path, so the folder equals dfm export --weights model
 * of the checkpoint) and writes model/consolidated/ as the one-process path does. */
static void consolidated_from_shards(job *j, const char *mdir) {
    dist_barrier_world(); /* every shard file is complete */
    full_model *f = lead_model(j);
    if (f) {
        char err[1024];
        if (full_model_read(f, mdir, "model", err, sizeof err) != 0)
            dfm_die("checkpoint.consolidated: reading back the shards: %s", err);
        write_consolidated(j, &f->dit, &f->wm, full_model_params(f), mdir);
    }
}

/* The current weights of a run under tensor, pipeline or context parallelism, whole on rank 0 (every rank takes
 * part: the data-parallel engine gathers each rank's part, the ranks of data- and context-parallel rank 0 send theirs
 * to rank 0; LoRA: the merged weights, after lora_refresh). Returns rank 0's whole model, NULL on the other ranks. */
static full_model *current_weights_on_lead(job *j) {
    if (j->lora_on) { /* the engine holds the adapters; the model (a TP slice, a stage) holds the merged weights, the
                       * same on every data- and context-parallel rank (lora_refresh has run) */
        const param_table *t = j->pp ? pp_stage_table(j->pp) : j->wan ? &j->wmodel.table : &j->model.table;
        const float *w = j->pp ? pp_stage_params(j->pp) : j->wan ? j->wmodel.params : j->model.params;
        full_model *f = lead_model(j);
        gather_to_lead(t, w, f ? full_model_table(f) : NULL, f ? full_model_params(f) : NULL);
        return f;
    }
    const param_table *t = j->pp ? pp_stage_table(j->pp) : j->table; /* what the engine holds */
    float *part = xalloc_floats(t->total);
    dp_gather_full(j->dp, 0, part);
    full_model *f = lead_model(j);
    gather_to_lead(t, part, f ? full_model_table(f) : NULL, f ? full_model_params(f) : NULL);
    free(part);
    return f;
}

/* A file of the step folder: this data-parallel rank's own (<stem>_dp_rank_R.json), else rank 0's (a checkpoint
 * saved by fewer ranks: every rank's loader walks the same global stream, so the states agree). */
static char *read_rank_file(const char *dir, const char *sub, int dp_rank, char *path, size_t n, char *err,
                            size_t errlen) {
    snprintf(path, n, "%s/%s/%s_dp_rank_%d.json", dir, sub, sub, dp_rank);
    struct stat sb;
    if (dp_rank > 0 && stat(path, &sb) != 0) snprintf(path, n, "%s/%s/%s_dp_rank_0.json", dir, sub, sub);
    return read_file_err(path, err, errlen);
}

/* epoch_E_step_S/ (E the epoch of step S, S the optimizer steps done) holding model/ (weights and EMA, sharded
 * per rank or consolidated; model/consolidated/ as asked), optim/ (the Adam moments), dataloader/ and rng/ (one
 * file per data-parallel rank), step_scheduler.json, config.yaml and run_config.yaml. Filled as
 * <name>.tmp.<token>/, fsynced and renamed; only then does the LATEST symlink move to it. */
static void save_checkpoint_automodel(job *j, const char *root) {
    const dist_info *di = dist_get();
    int lead = di->rank == 0;
    tp_check_replicated(j);
    char *ls_text = j->wan ? video_loader_state_save(j->vloader) : loader_state_save(j->loader);
    long epoch = state_epoch(ls_text);
    dist_bcast_world_bytes(&epoch, sizeof epoch, "broadcast of the checkpoint's epoch");
    char final[4200], tmp[4300], path[4500], mdir[4400], odir[4400], old[4400];
    snprintf(j->saved, sizeof j->saved, "epoch_%ld_step_%ld", epoch, j->iteration);
    snprintf(final, sizeof final, "%s/%s", root, j->saved);
    snprintf(tmp, sizeof tmp, "%s/%s.tmp.%s", root, j->saved, j->token);
    snprintf(mdir, sizeof mdir, "%s/model", tmp);
    snprintf(odir, sizeof odir, "%s/optim", tmp);
    if (lead) {
        rm_tree(tmp);
        const char *subs[] = {"model", "optim", "dataloader", "rng"};
        for (int k = 0; k < 4; k++) {
            snprintf(path, sizeof path, "%s/%s", tmp, subs[k]);
            xmkdir_p(path);
        }
    }
    dist_barrier_world();
    write_state_tensors(j, mdir, odir);
    /* this rank's loader position and random state, under Automodel's per-rank names; dfm's noise, timesteps and
     * condition dropout are drawn from (seed, step, sample index), so the seed and the step are the whole state */
    snprintf(path, sizeof path, "%s/dataloader/dataloader_dp_rank_%d.json", tmp, di->dp_rank);
    if (di->pp_rank == 0 && di->tp_rank == 0 && di->cp_rank == 0) /* the stages, TP and CP ranks of a DP rank share
                                                                   * its loader */
        write_text_atomic(path, ls_text);
    free(ls_text);
    json_t *rng = json_pack("{s:s, s:I, s:I}", "generator", "philox4x32-10 keyed by (seed, step, sample index)", "seed",
                            (json_int_t)cfg_int(j->c, "rng.seed"), "step", (json_int_t)j->iteration);
    char *text = json_dumps(rng, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    snprintf(path, sizeof path, "%s/rng/rng_dp_rank_%d.json", tmp, di->dp_rank);
    if (di->pp_rank == 0 && di->tp_rank == 0 && di->cp_rank == 0) write_text_atomic(path, text);
    free(text);
    json_decref(rng);
    int cons = j->consolidated == 2 || (j->consolidated == 1 && j->iteration >= j->train_iters);
    if (cons && j->lora_on && (di->tp > 1 || di->pp > 1)) {
        /* the checkpoint holds the adapters only: the merged model is gathered over MPI instead */
        lora_refresh(j);
        full_model *f = current_weights_on_lead(j);
        if (f) write_consolidated(j, &f->dit, &f->wm, full_model_params(f), mdir);
    } else if (cons && (di->tp > 1 || di->pp > 1)) {
        consolidated_from_shards(j, mdir);
    } else if (cons && j->lora_on) {
        lora_refresh(j); /* the base merged with the adapters: a full model for inference */
        if (lead) write_consolidated(j, &j->model, &j->wmodel, j->wan ? j->wmodel.params : j->model.params, mdir);
    } else if (cons) {
        float *full = xalloc_floats(j->table->total);
        dp_gather_full(j->dp, 0, full); /* every rank takes part */
        if (lead) write_consolidated(j, &j->model, &j->wmodel, full, mdir);
        free(full);
    }
    /* every rank's files are complete before the folder gets its final name */
    dist_barrier_world();
    if (!lead) {
        dist_barrier_world();
        return;
    }
    json_t *st = json_pack("{s:I, s:I, s:I}", "step", (json_int_t)j->iteration, "epoch", (json_int_t)epoch,
                           "consumed_samples", (json_int_t)j->consumed);
    text = json_dumps(st, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    snprintf(path, sizeof path, "%s/step_scheduler.json", tmp);
    write_text_atomic(path, text);
    free(text);
    json_decref(st);
    snprintf(path, sizeof path, "%s/config.yaml", tmp);
    const char *recipe = cfg_str(j->c, "checkpoint.config_yaml");
    if (recipe) { /* the Automodel recipe as resolved (dfm finetune) */
        char err[1024];
        char *y = read_file_err(recipe, err, sizeof err);
        if (!y) dfm_die("checkpoint.config_yaml: %s", err);
        write_text_atomic(path, y);
        free(y);
    } else
        cfg_write_yaml(j->c, path);
    snprintf(path, sizeof path, "%s/run_config.yaml", tmp);
    cfg_write_yaml(j->c, path);
    const char *subs[] = {"model", "optim", "dataloader", "rng"};
    for (int k = 0; k < 4; k++) {
        snprintf(path, sizeof path, "%s/%s", tmp, subs[k]);
        fsync_path(path);
    }
    fsync_path(tmp);
    /* a re-save of the same step (a run resumed at its last step) swaps the old folder out first */
    struct stat sb;
    snprintf(old, sizeof old, "%s.old", tmp);
    int had_old = stat(final, &sb) == 0 && rename(final, old) == 0;
    if (rename(tmp, final) != 0) dfm_die("cannot rename '%s' to '%s': %s", tmp, final, strerror(errno));
    if (had_old) rm_tree(old);
    fsync_path(root);
    /* LATEST -> epoch_E_step_S, replaced atomically (a new link renamed over the old) */
    char link[4400], latest[4300];
    snprintf(link, sizeof link, "%s/LATEST.tmp.%s", root, j->token);
    snprintf(latest, sizeof latest, "%s/LATEST", root);
    unlink(link);
    if (symlink(j->saved, link) != 0) dfm_die("cannot create the symlink '%s': %s", link, strerror(errno));
    if (rename(link, latest) != 0) dfm_die("cannot rename '%s' to '%s': %s", link, latest, strerror(errno));
    fsync_path(root);
    /* keep the newest k step folders (never this one); clear temporary folders and links of killed runs */
    int keep = (int)cfg_int(j->c, "checkpoint.most_recent_k");
    DIR *d = opendir(root);
    long steps[4096];
    char *names[4096];
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        long ep, sp;
        if (is_step_name(e->d_name, &ep, &sp) && n < 4096)
            steps[n] = sp, names[n++] = xstrdup(e->d_name);
        else if ((!strncmp(e->d_name, "epoch_", 6) || !strncmp(e->d_name, "LATEST.", 7)) &&
                 strstr(e->d_name, ".tmp.")) {
            snprintf(path, sizeof path, "%s/%s", root, e->d_name);
            rm_tree(path);
        }
    }
    if (d) closedir(d);
    for (int a = 0; a < n; a++) {
        int newer = 0;
        for (int b = 0; b < n; b++) newer += steps[b] > steps[a];
        if (keep > 0 && newer >= keep && strcmp(names[a], j->saved)) {
            snprintf(path, sizeof path, "%s/%s", root, names[a]);
            rm_tree(path);
        }
        free(names[a]);
    }
    dist_barrier_world();
}

static void load_checkpoint(job *j, const char *where) {
    char err[1024];
    char *dir = checkpoint_resolve(where, err, sizeof err);
    if (!dir) dfm_die("checkpoint.load: %s", err);
    char path[4200];
    if (dp_load(j->dp, dir, cfg_bool(j->c, "checkpoint.load_optim"), err, sizeof err) != 0)
        dfm_die("cannot resume: %s", err);
    long it;
    int64_t consumed, seed;
    char *ls_text = NULL;
    if (ckpt_is_automodel_step(dir)) { /* step_scheduler.json, rng/ and dataloader/ */
        snprintf(path, sizeof path, "%s/step_scheduler.json", dir);
        char *text = read_file_err(path, err, sizeof err);
        if (!text) dfm_die("cannot resume: %s", err);
        json_t *o = json_loads(text, 0, NULL);
        json_int_t s = -1, cs = -1, sd = 0;
        if (!o || json_unpack(o, "{s:I, s:I}", "step", &s, "consumed_samples", &cs) != 0 || s < 0 || cs < 0)
            dfm_die("cannot resume: '%s': expected {\"step\", \"consumed_samples\"} (non-negative integers)", path);
        json_decref(o);
        free(text);
        text = read_rank_file(dir, "rng", dist_get()->dp_rank, path, sizeof path, err, sizeof err);
        if (!text) dfm_die("cannot resume: %s", err);
        o = json_loads(text, 0, NULL);
        if (!o || json_unpack(o, "{s:I}", "seed", &sd) != 0)
            dfm_die("cannot resume: '%s': expected {\"seed\": integer, ...}", path);
        json_decref(o);
        free(text);
        ls_text = read_rank_file(dir, "dataloader", dist_get()->dp_rank, path, sizeof path, err, sizeof err);
        if (!ls_text) dfm_die("cannot resume: %s", err);
        it = (long)s, consumed = cs, seed = sd;
    } else {
        snprintf(path, sizeof path, "%s/train_state.json", dir);
        char *text = read_file_err(path, err, sizeof err);
        if (!text) dfm_die("cannot resume: %s", err);
        if (ckpt_train_state_parse(text, path, &it, &consumed, &seed, &ls_text, err, sizeof err) != 0)
            dfm_die("cannot resume: %s", err);
        free(text);
    }
    if (seed != cfg_int(j->c, "rng.seed"))
        dfm_die("cannot resume from '%s': it was trained with rng.seed %lld, this run has %lld", dir, (long long)seed,
                (long long)cfg_int(j->c, "rng.seed"));
    if ((j->wan ? video_loader_state_restore(j->vloader, ls_text, err, sizeof err)
                : loader_state_restore(j->loader, ls_text, err, sizeof err)) != 0)
        dfm_die("cannot resume from '%s': %s", dir, err);
    free(ls_text);
    j->iteration = it;
    j->consumed = consumed;
    if (dist_get()->rank == 0) printf("resumed from %s at iteration %ld\n", dir, j->iteration);
    free(dir);
}

/* Initial weights from elsewhere (checkpoint.pretrained_checkpoint), before the engine shards them: a dfm
 * checkpoint of either paradigm's model form (consolidated or sharded), or a diffusers folder whose model must
 * have this run's shape. The optimizer starts fresh at iteration 0. */
static void load_pretrained(job *j, const char *path) {
    char err[1024], e2[1024];
    const param_table *t = j->table;
    float *dst = j->wan ? j->wmodel.params : j->model.params;
    char *dir = checkpoint_resolve(path, e2, sizeof e2);
    if (dir) {
        if (ckpt_read_range(dir, "model", t, 0, t->total, dst, err, sizeof err) != 0)
            dfm_die("checkpoint.pretrained_checkpoint: %s", err);
        if (dist_get()->rank == 0) printf("initial weights from %s\n", dir);
        free(dir);
        return;
    }
    wan_model wm;
    dit_model dm;
    const param_table *src;
    const float *w;
    if (j->wan) {
        if (wan_import_diffusers(&wm, path, NULL, err, sizeof err) != 0)
            dfm_die("checkpoint.pretrained_checkpoint: %s (and not a dfm checkpoint: %s)", err, e2);
        src = &wm.table, w = wm.params;
    } else {
        if (dit_import_diffusers(&dm, path, 1, err, sizeof err) != 0)
            dfm_die("checkpoint.pretrained_checkpoint: %s (and not a dfm checkpoint: %s)", err, e2);
        src = &dm.table, w = dm.params;
    }
    for (int i = 0; i < t->n || i < src->n; i++) {
        const param_entry *a = i < t->n ? &t->e[i] : NULL, *b = i < src->n ? &src->e[i] : NULL;
        int same = a && b && !strcmp(a->name, b->name) && a->ndim == b->ndim;
        for (int d = 0; same && d < a->ndim; d++) same = a->global_shape[d] == b->shape[d];
        if (!same)
            dfm_die("checkpoint.pretrained_checkpoint '%s' holds a different model: tensor %d is %s there, %s here "
                    "(set the model.* keys to the pretrained model's shape)",
                    path, i, b ? b->name : "missing", a ? a->name : "missing");
        param_entry_take_slice(a, w + b->offset, dst + a->offset); /* a TP rank keeps its slice */
    }
    if (j->wan)
        wan_free(&wm);
    else
        dit_free(&dm);
    if (dist_get()->rank == 0) printf("initial weights from the diffusers folder %s\n", path);
}

/* metrics.jsonl after a resume: drop lines of steps the checkpoint does not contain, so the file reads as if
 * the run had never been interrupted. */
static void trim_metrics(const char *path, long iteration) {
    FILE *f = fopen(path, "r");
    if (!f) return;
    size_t cap = 0, len = 0, lcap = 0;
    char *out = NULL, *line = NULL;
    ssize_t n;
    while ((n = getline(&line, &lcap, f)) > 0) {
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        json_t *st = o ? json_object_get(o, "step") : NULL;
        int keep = st && json_is_integer(st) && json_integer_value(st) <= iteration;
        if (o) json_decref(o);
        if (!keep) continue;
        if (len + (size_t)n + 1 > cap) out = xrealloc(out, cap = 2 * (len + (size_t)n + 1));
        memcpy(out + len, line, (size_t)n);
        len += (size_t)n;
    }
    free(line);
    fclose(f);
    if (!out)
        out = xstrdup("");
    else
        out[len] = 0;
    write_text_atomic(path, out);
    free(out);
}

/* ---- validation ------------------------------------------------------------------------------- */

/* Deterministic validation loss: the same samples, noise and timesteps at every evaluation. The samples are
 * the first iters x micro-batch of the held-out split (in-memory sources: val_idx; Energon: a fresh reader over
 * the dataset's "val" split, so every evaluation reads the same stream). */
static double validate(job *j, const image_dataset *ds, const int *val_idx, int n_val, const char *energon_path,
                       int iters, float *x, int *labels) {
    if (iters <= 0 || (ds && n_val == 0) || (!ds && !energon_path)) return NAN;
    objective_config o = j->obj;
    o.cond_dropout_prob = 0.0f;
    diffusion_batch *db = &j->tr.db; /* the trainer's buffers are free between steps */
    const dit_config *dc = &j->model.cfg;
    int mb = j->model.max_batch;
    size_t per = (size_t)dc->in_channels * dc->image_size * dc->image_size;
    data_loader *vl = NULL;
    if (!ds) {
        char err[1024];
        vl = loader_new_energon(energon_path, "val", j->tr.seed, mb, 0, dc->in_channels, dc->image_size, dc->image_size,
                                dc->num_classes, err, sizeof err);
        if (!vl) return NAN;
    }
    double total = 0;
    for (int k = 0; k < iters; k++) {
        if (vl)
            loader_next(vl, x, labels);
        else
            for (int b = 0; b < mb; b++) {
                int i = val_idx[(k * mb + b) % n_val];
                for (size_t e = 0; e < per; e++)
                    x[b * per + e] = ds->pixels[(size_t)i * per + e] * (2.0f / 255.0f) - 1.0f;
                labels[b] = ds->labels[i] >= 0 ? ds->labels[i] : dc->num_classes;
            }
        diffusion_prepare(db, &o, x, labels, mb, per, dc->num_classes, j->tr.seed ^ 0x76616cull,
                          0xFFFFFFFFu - (uint32_t)k, 0);
        if (j->pp) { /* through the pipeline: every stage gets the last stage's loss */
            total += pp_dit_loss(j->pp, &j->tr, &o, j->tr.seed ^ 0x76616cull, x, labels, mb, 0xFFFFFFFFu - (uint32_t)k);
            continue;
        }
        dit_forward(&j->model, j->tr.out, db->model_in, db->timestep, db->labels, mb);
        size_t out_n = (size_t)dc->out_channels * dc->image_size * dc->image_size;
        /* context parallelism: this rank's pixels only, summed over the group (every rank gets the whole loss) */
        double part = diffusion_loss_masked(db, j->tr.out, NULL, out_n, 1.0f, j->tr.cp_mask);
        if (j->tr.cp_mask) dist_allreduce_sum_f64_in(DIST_CP, &part, 1, "all-reduce of the validation loss");
        total += part;
    }
    loader_free(vl);
    return total / iters;
}

/* Held-out samples of several latent shapes: grouped by shape (shapes in order, samples in index order within
 * each), each group cut into batches of at most the micro-batch; max(iters, batches) batches are evaluated, so
 * every held-out sample counts at least once, batch k with the draws of validation step k as below. The mean is
 * over samples (a short batch weighs less). */
/* Whether sample a comes after sample b in (shape, index) order. */
static int shape_index_after(const video_dataset *vd, int a, int b) {
    const int *p = vd->shapes + 4 * (size_t)a, *q = vd->shapes + 4 * (size_t)b;
    for (int d = 0; d < 4; d++)
        if (p[d] != q[d]) return p[d] > q[d];
    return a > b;
}

static double validate_wan_shapes(job *j, const video_dataset *vd, const int *val_idx, int n_val, int iters, float *lat,
                                  float *text, int *lens) {
    objective_config o = j->obj;
    o.cond_dropout_prob = 0.0f;
    wan_trainer *tr = &j->wtr;
    int mb = j->wmodel.max.batch;
    size_t tl = (size_t)tr->text_len * j->wmodel.cfg.text_dim;
    int *order = xmalloc((size_t)n_val * sizeof *order), *start = xmalloc((size_t)(n_val + 1) * sizeof *start);
    memcpy(order, val_idx, (size_t)n_val * sizeof *order);
    for (int a = 1; a < n_val; a++) /* insertion sort by (shape, index): held-out sets are small */
        for (int b = a; b > 0 && shape_index_after(vd, order[b - 1], order[b]); b--) {
            int t = order[b - 1];
            order[b - 1] = order[b], order[b] = t;
        }
    int nb = 0;
    for (int i = 0; i < n_val;) {
        start[nb++] = i;
        int k = i + 1;
        while (k < n_val && k - i < mb &&
               !memcmp(vd->shapes + 4 * (size_t)order[k], vd->shapes + 4 * (size_t)order[i], 4 * sizeof(int)))
            k++;
        i = k;
    }
    start[nb] = n_val;
    int total_batches = iters > nb ? iters : nb;
    double total = 0, count = 0;
    for (int k = 0; k < total_batches; k++) {
        int b0 = start[k % nb], len = start[k % nb + 1] - b0, sh[4];
        for (int b = 0; b < len; b++) {
            int i = order[b0 + b];
            const float *src = video_dataset_sample(vd, i, sh);
            size_t per = (size_t)sh[0] * sh[1] * sh[2] * sh[3];
            memcpy(lat + b * per, src, per * sizeof(float));
            memcpy(text + b * tl, vd->text + (size_t)i * tl, tl * sizeof(float));
            lens[b] = vd->text_lens[i];
        }
        total += len * (j->pp ? pp_wan_loss_shaped(j->pp, tr, &o, tr->seed ^ 0x76616cull, lat, text, lens, len, sh[1],
                                                   sh[2], sh[3], 0xFFFFFFFFu - (uint32_t)k)
                              : wan_trainer_loss_shaped(tr, &o, tr->seed ^ 0x76616cull, lat, text, lens, len, sh[1],
                                                        sh[2], sh[3], 0xFFFFFFFFu - (uint32_t)k, 0));
        count += len;
    }
    free(order), free(start);
    return total / count;
}

/* The same for Wan: the held-out clips (in memory: val_idx of vd; Energon: the "val" split), conditioned. */
static double validate_wan(job *j, const video_dataset *vd, const int *val_idx, int n_val, const char *energon_path,
                           int iters, float *lat, float *text, int *lens) {
    if (iters <= 0 || (vd && n_val == 0) || (!vd && !energon_path)) return NAN;
    if (vd && vd->shapes) return validate_wan_shapes(j, vd, val_idx, n_val, iters, lat, text, lens);
    objective_config o = j->obj;
    o.cond_dropout_prob = 0.0f;
    wan_trainer *tr = &j->wtr;
    const wan_config *wc = &j->wmodel.cfg;
    int mb = j->wmodel.max.batch;
    size_t per = (size_t)wc->in_channels * tr->frames * tr->height * tr->width;
    size_t tl = (size_t)tr->text_len * wc->text_dim;
    video_loader *vl = NULL;
    if (!vd) {
        char err[1024];
        vl = video_loader_new_energon(energon_path, "val", tr->seed, mb, 0, wc->in_channels, tr->frames, tr->height,
                                      tr->width, tr->text_len, wc->text_dim, err, sizeof err);
        if (!vl) return NAN;
    }
    double total = 0;
    for (int k = 0; k < iters; k++) {
        if (vl)
            video_loader_next(vl, lat, text, lens);
        else
            for (int b = 0; b < mb; b++) {
                int i = val_idx[(k * mb + b) % n_val];
                memcpy(lat + b * per, vd->latents + (size_t)i * per, per * sizeof(float));
                memcpy(text + b * tl, vd->text + (size_t)i * tl, tl * sizeof(float));
                lens[b] = vd->text_lens[i];
            }
        total +=
            j->pp ? pp_wan_loss(j->pp, tr, &o, tr->seed ^ 0x76616cull, lat, text, lens, mb, 0xFFFFFFFFu - (uint32_t)k)
                  : wan_trainer_loss(tr, &o, tr->seed ^ 0x76616cull, lat, text, lens, mb, 0xFFFFFFFFu - (uint32_t)k, 0);
    }
    video_loader_free(vl);
    return total / iters;
}

/* ---- LoRA ----------------------------------------------------------------------------------------- */

/* peft.*: adapters over the loaded base weights; from here on the engine, the optimizer, the EMA and the
 * checkpoints see the adapters (dm and j->table), the model keeps its full (merged) weights outside the engine. */
static void setup_lora(job *j, dp_model *dm, uint64_t seed) {
    const cfg *c = j->c;
    int nt = cfg_len(c, "peft.target_modules"), ne = cfg_len(c, "peft.exclude_modules");
    const char **targets = xcalloc((size_t)nt + 1, sizeof(char *)),
               **excludes = xcalloc((size_t)ne + 1, sizeof(char *));
    for (int i = 0; i < nt; i++) targets[i] = cfg_list_str(c, "peft.target_modules", i);
    for (int i = 0; i < ne; i++) excludes[i] = cfg_list_str(c, "peft.exclude_modules", i);
    lora_spec spec = {int_key(c, "peft.dim", 1, 1 << 16),
                      (float)cfg_float(c, "peft.alpha"),
                      (float)cfg_float(c, "peft.dropout"),
                      cfg_bool(c, "peft.use_rslora"),
                      targets,
                      nt,
                      excludes,
                      ne,
                      cfg_bool(c, "peft.match_all_linear")};
    char err[2048];
    const param_table *base = j->table;
    float *params = j->wan ? j->wmodel.params : j->model.params;
    if (lora_create(&j->lora, base, params, &spec, seed, err, sizeof err) != 0) dfm_die("%s", err);
    free(targets), free(excludes);
    j->lora.merged_backward = cfg_bool(c, "peft.merged_backward");
    *dm = (dp_model){
        &j->lora.table, j->lora.nseg, j->lora.seg_begin, &j->lora.params, &j->lora.grads, &j->lora.hooks, NULL, 0};
    j->table = &j->lora.table;
    /* what reading the checkpoint back needs: the adapted modules and where the base weights are */
    const char *bp = cfg_str(c, "checkpoint.pretrained_checkpoint");
    char *abs = realpath(bp, NULL);
    json_t *mods = json_array();
    for (int k = 0; k < j->lora.n; k++) json_array_append_new(mods, json_string(j->lora.t[k].module));
    json_t *meta = json_pack("{s:i, s:f, s:b, s:o, s:s}", "r", j->lora.r, "alpha", (double)j->lora.alpha, "use_rslora",
                             j->lora.use_rslora, "modules", mods, "base", abs ? abs : bp);
    j->lora_meta = json_dumps(meta, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(meta);
    free(abs);
    if (dist_get()->rank == 0) {
        size_t frozen = base->total, copies = 0;
        for (int k = 0; k < j->lora.n; k++) copies += (size_t)j->lora.t[k].out * j->lora.t[k].in;
        printf("LoRA: r %d, alpha %g (scale %g) on %d linear layers: %zu trainable parameters; the %zu base "
               "parameters frozen (weights, their gradients and %.1f MB of base copies of the adapted layers kept "
               "outside the optimizer); backward: %s\n",
               j->lora.r, (double)j->lora.alpha, (double)j->lora.scale, j->lora.n, j->lora.table.total, frozen,
               copies * 4 / 1e6,
               j->lora.merged_backward ? "merged (the model's weight gradients, then the chain rule; "
                                         "peft.merged_backward)"
                                       : "adapter gradients from the activations, no frozen weight gradient");
    }
}

/* Before validation or export: the model's weights merged with the current adapters (after the last update). */
static void lora_refresh(job *j) {
    float *ad = j->lora.params;
    if (!ad) dp_gather_full(j->dp, 0, ad = xalloc_floats(j->table->total));
    lora_merge(&j->lora, ad, j->pp ? pp_stage_params(j->pp) : j->wan ? j->wmodel.params : j->model.params);
    if (ad != j->lora.params) free(ad);
}

/* ---- samples at validation (train.eval_samples) ---------------------------------------------------------- */

/* Rows of images (or of clips' frames side by side) as one PNG: k items of [C, T, H, W] in [-1, 1], C 1 or 3. */
static void write_strip_png(const char *path, const float *const *items, const int (*shape)[4], int k) {
    int C = shape[0][0], W = 0, H = 0;
    for (int i = 0; i < k; i++) {
        W = shape[i][1] * shape[i][3] > W ? shape[i][1] * shape[i][3] : W;
        H += shape[i][2] + 2;
    }
    uint8_t *img = xcalloc((size_t)W * H * C, 1);
    int y0 = 0;
    for (int i = 0; i < k; i++) {
        int T = shape[i][1], h = shape[i][2], w = shape[i][3];
        for (int t = 0; t < T; t++)
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    for (int c = 0; c < C; c++) {
                        float v = items[i][(((size_t)c * T + t) * h + y) * w + x];
                        v = v < -1 ? -1 : v > 1 ? 1 : v;
                        img[(((size_t)(y0 + y)) * W + t * w + x) * C + c] = (uint8_t)lrintf((v + 1) * 127.5f);
                    }
        y0 += h + 2;
    }
    size_t len;
    uint8_t *png = png_encode_mem(img, W, H, C, &len);
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%.4200s.tmp", path);
    FILE *f = xfopen(tmp, "wb");
    fwrite(png, 1, len, f);
    xfclose(f, tmp);
    if (rename(tmp, path) != 0) dfm_die("cannot rename '%s' to '%s': %s", tmp, path, strerror(errno));
    free(png), free(img);
}

/* A look at the model during training: k samples generated by dm / wm (every rank takes part: the model may be
 * sharded over data parallelism; under tensor, pipeline or context parallelism rank 0 alone, on the whole model)
 * from the first k held-out conditions (Wan: their text, at their own latent shape; DiT: their classes), the
 * noise from the run's seed, no guidance; rank 0 writes samples.safetensors (and a PNG of the samples when they
 * have 1 or 3 channels: pixels, not VAE latents) into <output_dir>/val_samples/step_NNNNNNN/. */
static void validation_samples(job *j, dit_model *dm, wan_model *wm, const video_dataset *vd, const image_dataset *ds,
                               const int *val_idx, int n_val, int k, int steps, const char *outdir) {
    if (k > n_val) k = n_val;
    if (k <= 0) return;
    sampler_config sc;
    sampler_defaults(&sc, j->obj.kind);
    sc.steps = steps;
    sc.shift = j->obj.flow_shift;
    sc.sigma_data = j->obj.sigma_data;
    char err[1024], dir[4400], path[4500];
    snprintf(dir, sizeof dir, "%s/val_samples/step_%07ld", outdir, j->iteration);
    int lead = dist_get()->rank == 0;
    float **items = xcalloc((size_t)k, sizeof(float *));
    int(*shape)[4] = xcalloc((size_t)k, sizeof *shape);
    st_writer *w = st_writer_new();
    char(*names)[32] = xcalloc((size_t)k, sizeof *names);
    for (int i = 0; i < k; i++) {
        uint64_t seed = sample_seed((uint64_t)cfg_int(j->c, "rng.seed") ^ 0x76616c73ull, (uint32_t)i);
        int idx = val_idx[i];
        if (j->wan) {
            int sh[4];
            video_dataset_sample(vd, idx, sh);
            const float *text = vd->text + (size_t)idx * vd->text_len * vd->text_dim;
            items[i] = xalloc_floats((size_t)sh[0] * sh[1] * sh[2] * sh[3]);
            if (wan_sample(wm, &sc, text, vd->text_lens + idx, &seed, 1, sh[1], sh[2], sh[3], vd->text_len, items[i],
                           NULL, NULL, err, sizeof err) != 0)
                dfm_die("train.eval_samples: %s", err);
            memcpy(shape[i], sh, sizeof sh);
        } else {
            const dit_config *dc = &dm->cfg;
            int label = ds->labels[idx] >= 0 ? ds->labels[idx] : 0;
            items[i] = xalloc_floats((size_t)dc->in_channels * dc->image_size * dc->image_size);
            if (dit_sample(dm, &sc, &label, &seed, 1, items[i], NULL, NULL, err, sizeof err) != 0)
                dfm_die("train.eval_samples: %s", err);
            shape[i][0] = dc->in_channels, shape[i][1] = 1, shape[i][2] = shape[i][3] = dc->image_size;
        }
        int64_t s5[4] = {shape[i][0], shape[i][1], shape[i][2], shape[i][3]};
        snprintf(names[i], sizeof names[i], "sample_%03d", i);
        st_writer_add(w, names[i], ST_F32, j->wan ? 4 : 3, j->wan ? s5 : (int64_t[3]){s5[0], s5[2], s5[3]}, items[i]);
    }
    if (lead) {
        xmkdir_p(dir);
        char caption[64];
        snprintf(caption, sizeof caption, "held-out samples %d..%d of the validation split", 0, k - 1);
        st_writer_meta(w, "conditions", caption);
        snprintf(path, sizeof path, "%s/samples.safetensors", dir);
        st_writer_finish(w, path);
        if (shape[0][0] == 1 || shape[0][0] == 3) {
            snprintf(path, sizeof path, "%s/samples.png", dir);
            write_strip_png(path, (const float *const *)items, (const int(*)[4])shape, k);
        }
        printf("  %d samples (%d steps) in %s\n", k, steps, dir);
    } else
        st_writer_discard(w);
    for (int i = 0; i < k; i++) free(items[i]);
    free(items), free(shape), free(names);
}

/* ---- the loop --------------------------------------------------------------------------------- */

static void fmt_eta(char *buf, size_t n, double s) {
    if (!(s >= 0) || s > 1e7)
        snprintf(buf, n, "?");
    else if (s >= 3600)
        snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
    else
        snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
}

/* Megatron's activation recomputation: which blocks, in checkpoints of how many, or only the core attention. */
typedef struct {
    int blocks;    /* full: the first `blocks` blocks are recomputed (0: none) */
    int chunk;     /* ... in checkpoints of `chunk` consecutive blocks */
    int selective; /* only the core attention's outputs are recomputed, in every block */
} recompute_plan;

/* Megatron's activation recomputation keys -> the plan. Built: granularity full with method uniform and num_layers
 * k (every block recomputed, in checkpoints of k consecutive blocks, the last one shorter when k does not divide
 * the layers) or method block with num_layers N (the first N blocks, each its own checkpoint); granularity
 * selective alone (Megatron ignores method and num_layers with it: here they are refused rather than parsed and
 * ignored). Refused with the values otherwise. */
static recompute_plan recompute_blocks(const cfg *c, int num_layers) {
    const char *G = "model.recompute_granularity", *M = "model.recompute_method", *N = "model.recompute_num_layers";
    recompute_plan r = {0, 1, 0};
    if (cfg_is_null(c, G)) {
        if (!cfg_is_null(c, M) || !cfg_is_null(c, N))
            dfm_die("%s / %s are set (from %s) but %s is null: set %s=full to recompute, or null them", M, N,
                    cfg_source(c, cfg_is_null(c, M) ? N : M), G, G);
        return r;
    }
    const char *g = cfg_str(c, G);
    if (!strcmp(g, "selective")) {
        if (!cfg_is_null(c, M) || !cfg_is_null(c, N))
            dfm_die("%s = selective (from %s) recomputes the core attention of every block: %s / %s (set from %s) do "
                    "not apply to it (Megatron ignores them); null them, or use %s=full",
                    G, cfg_source(c, G), M, N, cfg_source(c, cfg_is_null(c, M) ? N : M), G);
        r.selective = 1;
        return r;
    }
    if (strcmp(g, "full")) dfm_die("%s = %s (from %s): full or selective", G, g, cfg_source(c, G));
    if (cfg_is_null(c, M)) dfm_die("%s = full needs %s: uniform (with %s k) or block (with %s N)", G, M, N, N);
    if (cfg_is_null(c, N))
        dfm_die("%s = full needs %s (uniform: 1..%d, the blocks per checkpoint; block: 1..%d, the blocks recomputed)",
                G, N, num_layers, num_layers);
    const char *meth = cfg_str(c, M);
    int64_t n = cfg_int(c, N);
    if (n < 1 || n > num_layers)
        dfm_die("%s = %lld (from %s) is outside 1..%d (model.num_layers = %d)", N, (long long)n, cfg_source(c, N),
                num_layers, num_layers);
    if (!strcmp(meth, "uniform")) { /* every block, in checkpoints of n (the last one shorter if n does not divide) */
        r.blocks = num_layers;
        r.chunk = (int)n;
        return r;
    }
    r.blocks = (int)n; /* block: the first n */
    return r;
}

int dfm_pretrain(const cfg *c) {
    int nth = kernels_init();
    const dist_info *di = dist_get();
    int lead = di->rank == 0;
    char err[1024];
    double timeout = cfg_float(c, "dist.timeout_s");
    if (!(timeout > 0 && timeout <= 1e7))
        dfm_die("dist.timeout_s = %g (from %s): must be a number of seconds in (0, 1e7]", timeout,
                cfg_source(c, "dist.timeout_s"));
    dist_set_timeout(timeout);
    if (dist_setup_groups(int_key(c, "model.tensor_model_parallel_size", 1, 1 << 16),
                          int_key(c, "model.context_parallel_size", 1, 1 << 16),
                          int_key(c, "model.pipeline_model_parallel_size", 1, 1 << 16), err, sizeof err) != 0)
        dfm_die("%s", err);
    /* what is not built yet is refused rather than ignored */
    cp_comm_type cp_comm = CP_P2P;
    if (!cp_comm_type_parse(cfg_str(c, "model.cp_comm_type"), &cp_comm))
        dfm_die("model.cp_comm_type = '%s' (from %s): use p2p (ring attention) or a2a (all-to-all over heads)",
                cfg_str(c, "model.cp_comm_type"), cfg_source(c, "model.cp_comm_type"));
    int vpp = cfg_is_null(c, "model.virtual_pipeline_model_parallel_size")
                  ? 1
                  : int_key(c, "model.virtual_pipeline_model_parallel_size", 1, PP_MAX_CHUNKS);
    if (vpp > 1 && di->pp == 1)
        dfm_die("model.virtual_pipeline_model_parallel_size = %d (from %s) needs pipeline parallelism "
                "(model.pipeline_model_parallel_size > 1): virtual stages are model chunks of the pipeline's stages",
                vpp, cfg_source(c, "model.virtual_pipeline_model_parallel_size"));
    int seqpar = cfg_bool(c, "model.sequence_parallel");
    if (seqpar && di->tp < 2)
        dfm_die("model.sequence_parallel = true (from %s) needs tensor parallelism: model.tensor_model_parallel_size "
                "is %d (sequence parallelism splits the tokens over the tensor-parallel group)",
                cfg_source(c, "model.sequence_parallel"), di->tp);

    job j;
    memset(&j, 0, sizeof j);
    j.c = c;
    j.wan = !strcmp(cfg_str(c, "model.kind"), "wan");
    dit_config dc;
    wan_config wc;
    if (j.wan)
        config_to_wan(c, &wc);
    else
        config_to_dit(c, &dc);
    recompute_plan recompute = recompute_blocks(c, j.wan ? wc.num_layers : dc.num_layers);
    /* how the blocks are split over the pipeline: evenly, or Megatron's uneven first / last stage, or its layout */
    pp_plan plan;
    {
        static const char *const pk[3] = {"model.num_layers_in_first_pipeline_stage",
                                          "model.num_layers_in_last_pipeline_stage",
                                          "model.pipeline_model_parallel_layout"};
        for (int i = 0; i < 3; i++)
            if (!cfg_is_null(c, pk[i]) && di->pp == 1)
                dfm_die("%s is set (from %s) without pipeline parallelism (model.pipeline_model_parallel_size is 1): "
                        "it places blocks on pipeline stages",
                        pk[i], cfg_source(c, pk[i]));
        int first = cfg_is_null(c, pk[0]) ? -1 : int_key(c, pk[0], 0, 1000);
        int last = cfg_is_null(c, pk[1]) ? -1 : int_key(c, pk[1], 0, 1000);
        const char *lay = cfg_is_null(c, pk[2]) ? NULL : cfg_str(c, pk[2]);
        if (pp_plan_make(&plan, j.wan ? wc.num_layers : dc.num_layers, di->pp, &vpp,
                         !cfg_is_null(c, "model.virtual_pipeline_model_parallel_size"), first, last, lay, err,
                         sizeof err) != 0)
            dfm_die("%s", err);
    }
    if (di->tp > 1) { /* heads and FFN columns split over the TP group: sizes it does not divide are refused */
        if (!(j.wan ? wan_tp_check(&wc, di->tp, err, sizeof err) : dit_tp_check(&dc, di->tp, err, sizeof err)))
            dfm_die("%s (from %s)", err, cfg_source(c, "model.tensor_model_parallel_size"));
    }
    if (di->cp > 1 && !cp_check((j.wan ? wc.num_heads : dc.num_heads) / di->tp, di->cp, cp_comm, err, sizeof err))
        dfm_die("%s (from %s)", err, cfg_source(c, "model.cp_comm_type"));
    config_to_objective(c, &j.obj);
    j.objective_meta = objective_json(&j.obj);
    long train_iters = int_key(c, "train.train_iters", 0, 1L << 30);
    int gbs = int_key(c, "train.global_batch_size", 1, 1 << 20), mbs = int_key(c, "train.micro_batch_size", 1, 1 << 20);
    if (gbs % ((long)mbs * di->dp)) {
        char hint[160];
        if (gbs % di->dp == 0)
            snprintf(hint, sizeof hint, "set train.micro_batch_size to a divisor of %d", gbs / di->dp);
        else
            snprintf(hint, sizeof hint, "set train.global_batch_size to a multiple of %ld", (long)mbs * di->dp);
        dfm_die("train.global_batch_size %d does not divide into data-parallel size %d x train.micro_batch_size %d "
                "(every rank takes %d / %d samples in micro-batches of %d): %s",
                gbs, di->dp, mbs, gbs, di->dp, mbs, hint);
    }
    int n_local = gbs / di->dp;
    dp_sharding strategy;
    if (!dp_sharding_parse(cfg_str(c, "ddp.data_parallel_sharding_strategy"), &strategy))
        dfm_die("ddp.data_parallel_sharding_strategy: unknown value '%s'",
                cfg_str(c, "ddp.data_parallel_sharding_strategy"));
    if (cfg_bool(c, "ddp.use_distributed_optimizer") && strategy == DP_NO_SHARD) strategy = DP_OPTIM;
    /* hybrid sharding: replica groups, each sharding over DP / N ranks (Automodel's fsdp.dp_replicate_size) */
    int replicas = int_key(c, "ddp.num_distributed_optimizer_instances", 1, 1 << 20);
    if (replicas > 1 && strategy == DP_NO_SHARD)
        dfm_die("ddp.num_distributed_optimizer_instances = %d (from %s) needs a sharded strategy "
                "(ddp.data_parallel_sharding_strategy optim, optim_grads or optim_grads_params): under no_shard every "
                "rank holds everything already",
                replicas, cfg_source(c, "ddp.num_distributed_optimizer_instances"));
    if (di->dp % replicas)
        dfm_die("ddp.num_distributed_optimizer_instances = %d (from %s) does not divide the data-parallel size %d",
                replicas, cfg_source(c, "ddp.num_distributed_optimizer_instances"), di->dp);
    if (dist_setup_dp_replicas(replicas, err, sizeof err) != 0) dfm_die("%s", err);
    uint64_t seed = (uint64_t)cfg_int(c, "rng.seed");
    int workers = int_key(c, "dataset.num_workers", 0, 256);
    int model_size = int_key(c, "model.image_size", 1, 1 << 14);
    int model_chans = int_key(c, "model.in_channels", 1, 1024);
    int size = cfg_is_null(c, "dataset.image_size") ? model_size : int_key(c, "dataset.image_size", 1, 1 << 14);
    int chans = cfg_is_null(c, "dataset.channels") ? model_chans : int_key(c, "dataset.channels", 1, 4);
    if (size != model_size || chans != model_chans)
        dfm_die("dataset.image_size/channels (%d, %d) must match model.image_size/in_channels (%d, %d): dfm trains "
                "on pixels directly",
                size, chans, model_size, model_chans);
    int frames = j.wan ? int_key(c, "model.num_frames", 1, 1 << 12) : 1;
    int text_len = j.wan ? int_key(c, "model.text_len", 1, 1 << 16) : 0;
    int vh = size, vw = size; /* latent height and width (Wan: from the data's largest shape when it has several) */
    int acc = n_local / mbs;  /* micro-batches per rank and step */
    int bucketed = 0;         /* Wan in-memory data through the bucket sampler (video_loader_new_buckets) */

    /* data */
    const char *dtype = cfg_str(c, "dataset.type"), *dpath = cfg_str(c, "dataset.path"), *energon_val = NULL;
    image_dataset ds = {0};
    video_dataset vd = {0};
    int *train_idx = NULL, *val_idx = NULL, n_train = 0, n_val = 0;
    int video_type = !strcmp(dtype, "video_clips") || !strcmp(dtype, "video_folder") || !strcmp(dtype, "video_meta");
    if (j.wan ? !video_type && strcmp(dtype, "energon") : video_type)
        dfm_die("dataset.type %s does not fit model.kind %s (Wan trains on video_clips, video_folder, video_meta or "
                "energon; DiT on fashion_mnist, image_folder or energon)",
                dtype, cfg_str(c, "model.kind"));
    if (!cfg_is_null(c, "dataset.max_samples") && strcmp(dtype, "video_clips"))
        dfm_die("dataset.max_samples (from %s) applies to dataset.type video_clips only",
                cfg_source(c, "dataset.max_samples"));
    if (j.wan && !strcmp(dtype, "energon")) {
        j.vloader = video_loader_new_energon(dpath, "train", seed, gbs, workers, chans, frames, size, size, text_len,
                                             wc.text_dim, err, sizeof err);
        if (!j.vloader) dfm_die("dataset.path: %s", err);
        video_loader *probe = video_loader_new_energon(dpath, "val", seed, mbs, 0, chans, frames, size, size, text_len,
                                                       wc.text_dim, err, sizeof err);
        if (probe)
            energon_val = dpath;
        else
            dfm_warn("no validation split in '%s' (%s): validation loss is skipped", dpath, err);
        video_loader_free(probe);
    } else if (j.wan) {
        int rc = !strcmp(dtype, "video_clips")
                     ? video_dataset_clips(
                           &vd, dpath,
                           cfg_is_null(c, "dataset.max_samples") ? 0 : int_key(c, "dataset.max_samples", 1, 1 << 24),
                           frames, size, text_len, wc.text_dim, seed, err, sizeof err)
                 : !strcmp(dtype, "video_meta") ? video_dataset_meta(&vd, dpath, text_len, err, sizeof err)
                                                : video_dataset_folder(&vd, dpath, text_len, err, sizeof err);
        if (rc != 0) dfm_die("dataset (%s, from %s): %s", dtype, cfg_source(c, "dataset.path"), err);
        const char *bs = cfg_str(c, "dataset.bucket_sampler");
        bucketed = !strcmp(bs, "always") || (vd.shapes && strcmp(bs, "never"));
        if (vd.shapes && !bucketed)
            dfm_die("dataset '%s' holds %d latent shapes; dataset.bucket_sampler = never (from %s) cannot batch them "
                    "(auto or always builds one shape per batch)",
                    dpath, video_dataset_nshapes(&vd), cfg_source(c, "dataset.bucket_sampler"));
        if (vd.shapes) { /* resolution buckets: the model takes the largest; model.num_frames / image_size unused */
            if (vd.c != chans || vd.text_dim != wc.text_dim || vd.text_len != text_len)
                dfm_die("dataset '%s' holds latents of %d channels with text [%d, %d]; the model expects %d channels "
                        "(model.in_channels) with text [%d, %d] (model.text_len, text_dim)",
                        dpath, vd.c, vd.text_len, vd.text_dim, chans, text_len, wc.text_dim);
            frames = vd.t, vh = vd.h, vw = vd.w;
        } else if (vd.c != chans || vd.t != frames || vd.h != size || vd.w != size || vd.text_dim != wc.text_dim ||
                   vd.text_len != text_len)
            dfm_die(
                "dataset '%s' holds latents [%d, %d, %d, %d] with text [%d, %d]; the model expects [%d, %d, %d, %d] "
                "(model.in_channels, num_frames, image_size x2) with text [%d, %d] (model.text_len, text_dim)",
                dpath, vd.c, vd.t, vd.h, vd.w, vd.text_len, vd.text_dim, chans, frames, size, size, text_len,
                wc.text_dim);
        n_val = int_key(c, "dataset.val_samples", 0, vd.n - 1);
        split_indices(vd.n, n_val, seed, &train_idx, &n_train, &val_idx);
        if (bucketed) { /* one sampler slot per micro-batch of the global step: rank r reads slots r*acc.. */
            j.vloader = video_loader_new_buckets(&vd, train_idx, n_train, seed, mbs, di->dp_rank * acc, acc, gbs / mbs,
                                                 cfg_bool(c, "dataset.shuffle"), cfg_bool(c, "dataset.drop_last"), err,
                                                 sizeof err);
            if (!j.vloader) dfm_die("dataset '%s': %s", dpath, err);
        } else
            j.vloader = video_loader_new(&vd, train_idx, n_train, seed, gbs, workers);
    } else if (!strcmp(dtype, "energon")) {
        j.loader =
            loader_new_energon(dpath, "train", seed, gbs, workers, chans, size, size, dc.num_classes, err, sizeof err);
        if (!j.loader) dfm_die("dataset.path: %s", err);
        data_loader *probe =
            loader_new_energon(dpath, "val", seed, mbs, 0, chans, size, size, dc.num_classes, err, sizeof err);
        if (probe)
            energon_val = dpath;
        else
            dfm_warn("no validation split in '%s' (%s): validation loss is skipped", dpath, err);
        loader_free(probe);
    } else {
        if (image_dataset_load(&ds, dtype, dpath, 1, size, chans, workers, err, sizeof err) != 0)
            dfm_die("dataset (%s, from %s): %s", dtype, cfg_source(c, "dataset.path"), err);
        if (ds.num_classes > dc.num_classes)
            dfm_die("the dataset has %d classes but model.num_classes is %d", ds.num_classes, dc.num_classes);
        if (ds.class_names) {
            json_t *names = json_array();
            for (int i = 0; i < ds.num_classes; i++) json_array_append_new(names, json_string(ds.class_names[i]));
            j.class_names_meta = json_dumps(names, JSON_COMPACT);
            json_decref(names);
        }
        n_val = int_key(c, "dataset.val_samples", 0, ds.n - 1);
        split_indices(ds.n, n_val, seed, &train_idx, &n_train, &val_idx);
        j.loader = loader_new(&ds, train_idx, n_train, seed, gbs, workers, dc.num_classes);
    }

    if (j.wan) {
        if (!bucketed) video_loader_set_slice(j.vloader, di->dp_rank * n_local, n_local);
    } else
        loader_set_slice(j.loader, di->dp_rank * n_local, n_local);

    /* model, EMA, optimiser (every rank initialises the same weights from the seed, then keeps its share) */
    dp_model dm;
    if (j.wan) {
        wan_shape mx = {mbs, frames, vh, vw, text_len};
        wan_create_weights_only_tp(&j.wmodel, &wc, di->tp, di->tp_rank);
        if (di->cp > 1) wan_set_context_parallel(&j.wmodel, di->cp, di->cp_rank, cp_comm);
        if (wan_set_recompute_mode(&j.wmodel, recompute.blocks, recompute.chunk, recompute.selective, err,
                                   sizeof err) != 0 ||
            wan_set_sequence_parallel(&j.wmodel, seqpar, err, sizeof err) != 0 ||
            wan_prepare(&j.wmodel, &mx, err, sizeof err) != 0)
            dfm_die("Wan: %s", err);
        for (int i = 0; seqpar && vd.shapes && i < vd.n; i++) { /* every bucket's token count, before training */
            int sh[4];
            video_dataset_sample(&vd, i, sh);
            wan_shape si = {1, sh[1], sh[2], sh[3], text_len};
            if (!wan_shape_check(&j.wmodel, &si, err, sizeof err))
                dfm_die("dataset '%s', sample %d (latents [%d, %d, %d, %d]): %s", dpath, i, sh[0], sh[1], sh[2], sh[3],
                        err);
        }
        wan_init(&j.wmodel, seed);
        dm = (dp_model){&j.wmodel.table,
                        j.wmodel.nseg,
                        j.wmodel.seg_begin,
                        &j.wmodel.params,
                        &j.wmodel.grads,
                        &j.wmodel.hooks,
                        NULL,
                        0};
        j.config_json = wan_config_to_json(&j.wmodel.cfg);
        j.config_key = "dfm_wan_config";
        /* what generation needs besides the model: the clip shape, and how captions became embeddings */
        json_t *sm = json_pack("{s:i, s:i, s:i, s:i, s:i}", "channels", chans, "frames", frames, "height", vh, "width",
                               vw, "text_len", text_len);
        if (vd.shapes) { /* several shapes: the shape above is the largest (the model's max); all of them listed */
            json_t *all = json_array();
            for (int i = 0; i < vd.n; i++) {
                int sh[4], seen = 0;
                video_dataset_sample(&vd, i, sh);
                for (size_t k = 0; k < json_array_size(all) && !seen; k++) {
                    json_t *e = json_array_get(all, k);
                    seen = 1;
                    for (int d = 0; d < 4; d++) seen &= json_integer_value(json_array_get(e, (size_t)d)) == sh[d];
                }
                if (!seen) json_array_append_new(all, json_pack("[i, i, i, i]", sh[0], sh[1], sh[2], sh[3]));
            }
            json_object_set_new(sm, "shape_of", json_string("largest"));
            json_object_set_new(sm, "buckets", all);
        }
        if (!strcmp(dtype, "video_clips"))
            json_object_set_new(sm, "text_encoder",
                                json_pack("{s:s, s:I}", "kind", "stand_in", "seed", (json_int_t)seed));
        j.sample_meta = json_dumps(sm, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(sm);
    } else {
        dit_create_tp(&j.model, &dc, mbs, di->tp, di->tp_rank);
        if (di->cp > 1) dit_set_context_parallel(&j.model, di->cp, di->cp_rank, cp_comm);
        if (dit_set_recompute_mode(&j.model, recompute.blocks, recompute.chunk, recompute.selective, err, sizeof err) !=
            0)
            dfm_die("DiT: %s", err);
        if (dit_set_sequence_parallel(&j.model, seqpar, err, sizeof err) != 0)
            dfm_die("%s (from %s)", err, cfg_source(c, "model.sequence_parallel"));
        dit_init(&j.model, seed);
        dm = (dp_model){
            &j.model.table, j.model.nseg, j.model.seg_begin, &j.model.params, &j.model.grads, &j.model.hooks, NULL, 0};
        j.config_json = dit_config_to_json(&j.model.cfg);
        j.config_key = "dfm_dit_config";
    }
    j.table = dm.table;
    j.lora_on = cfg_len(c, "peft.target_modules") > 0 || cfg_bool(c, "peft.match_all_linear");
    if (j.lora_on && cfg_is_null(c, "checkpoint.pretrained_checkpoint"))
        dfm_die("peft: LoRA adapts pretrained weights; set checkpoint.pretrained_checkpoint (dfm finetune: "
                "model.mode finetune)");
    j.train_iters = train_iters;
    j.automodel = !strcmp(cfg_str(c, "checkpoint.layout"), "automodel");
    const char *cons = cfg_str(c, "checkpoint.consolidated");
    j.consolidated = !strcmp(cons, "every") ? 2 : !strcmp(cons, "final") ? 1 : 0;
    if (j.consolidated && !j.automodel)
        dfm_die("checkpoint.consolidated = %s (from %s) needs checkpoint.layout: automodel (dfm export writes a "
                "diffusers folder from a Megatron-layout checkpoint)",
                cons, cfg_source(c, "checkpoint.consolidated"));
    if (!cfg_is_null(c, "checkpoint.pretrained_checkpoint")) {
        /* LoRA checkpoints hold the adapters only: the frozen base is read on resume too */
        if (cfg_is_null(c, "checkpoint.load") || j.lora_on)
            load_pretrained(&j, cfg_str(c, "checkpoint.pretrained_checkpoint"));
        else if (lead) /* Megatron's rule: a run that resumes continues from its own checkpoint */
            printf("checkpoint.load is set: resuming from it; checkpoint.pretrained_checkpoint is not read\n");
    }
    if (j.lora_on) setup_lora(&j, &dm, seed);
    int n_micro = n_local / mbs, pp_arenas = 1;
    if (di->pp >
        1) { /* this rank's stage: its blocks, its part of the parameters, an arena per micro-batch in flight */
        if (pp_check_micro(di->pp, vpp, n_micro, err, sizeof err) != 0) dfm_die("%s", err);
        j.vpp = vpp;
        if (vpp > 1) { /* the chunks after the first: models of their own, with chunk 0's initial weights */
            if (j.wan)
                j.xwan = xcalloc((size_t)vpp - 1, sizeof *j.xwan);
            else
                j.xdit = xcalloc((size_t)vpp - 1, sizeof *j.xdit);
        }
        pp_chunk_model cm[PP_MAX_CHUNKS];
        pp_arenas = 0;
        for (int v = 0; v < vpp; v++) {
            int b0, b1;
            pp_layout(&plan, di->pp_rank, v, &b0, &b1);
            int na = pp_chunk_arenas(di->pp, di->pp_rank, vpp, n_micro, v);
            pp_arenas += na;
            if (j.wan) {
                wan_model *m = v ? &j.xwan[v - 1] : &j.wmodel;
                if (v) {
                    wan_shape mx = {mbs, frames, vh, vw, text_len};
                    wan_create_weights_only_tp(m, &wc, di->tp, di->tp_rank);
                    if (di->cp > 1) wan_set_context_parallel(m, di->cp, di->cp_rank, cp_comm);
                    if (wan_set_recompute_mode(m, recompute.blocks, recompute.chunk, recompute.selective, err,
                                               sizeof err) != 0 ||
                        wan_set_sequence_parallel(m, seqpar, err, sizeof err) != 0 ||
                        wan_prepare(m, &mx, err, sizeof err) != 0)
                        dfm_die("Wan: %s", err);
                    memcpy(m->params, j.wmodel.params, m->table.total * sizeof(float));
                }
                wan_set_stage(m, b0, b1, na);
                cm[v] = (pp_chunk_model){m, &m->params, &m->grads, &m->hooks, b0, b1, na};
            } else {
                dit_model *m = v ? &j.xdit[v - 1] : &j.model;
                if (v) {
                    dit_create_tp(m, &dc, mbs, di->tp, di->tp_rank);
                    if (di->cp > 1) dit_set_context_parallel(m, di->cp, di->cp_rank, cp_comm);
                    if (dit_set_recompute_mode(m, recompute.blocks, recompute.chunk, recompute.selective, err,
                                               sizeof err) != 0)
                        dfm_die("DiT: %s", err);
                    if (dit_set_sequence_parallel(m, seqpar, err, sizeof err) != 0) dfm_die("DiT: %s", err);
                    memcpy(m->params, j.model.params, m->table.total * sizeof(float));
                }
                dit_set_stage(m, b0, b1, na);
                cm[v] = (pp_chunk_model){m, &m->params, &m->grads, &m->hooks, b0, b1, na};
            }
        }
        dp_model sdm; /* the stage's part of the model; with LoRA the engine holds the stage's adapters instead */
        j.pp = j.wan ? pp_stage_new(&j.wmodel.table, j.wmodel.nseg, j.wmodel.seg_begin, vpp, cm, n_micro, &sdm)
                     : pp_stage_new(&j.model.table, j.model.nseg, j.model.seg_begin, vpp, cm, n_micro, &sdm);
        if (j.lora_on) {
            if (lora_restrict(&j.lora, pp_stage_table(j.pp)) == 0)
                dfm_die("peft: pipeline stage %d of model.pipeline_model_parallel_size %d holds none of the %d adapted "
                        "modules: every stage needs adapters of its own (widen peft.target_modules, or use fewer "
                        "stages)",
                        di->pp_rank, di->pp, j.lora.n_all);
            dm.table = &j.lora.table; /* the same adapters' buffers, the stage's modules only */
        } else
            dm = sdm;
    }
    j.ema_decay = (float)cfg_float(c, "train.ema_decay");
    adamw_config oc;
    oc.lr = (float)cfg_float(c, "optimizer.lr");
    oc.beta1 = (float)cfg_float(c, "optimizer.adam_beta1");
    oc.beta2 = (float)cfg_float(c, "optimizer.adam_beta2");
    oc.eps = (float)cfg_float(c, "optimizer.adam_eps");
    oc.weight_decay = (float)cfg_float(c, "optimizer.weight_decay");
    oc.clip_grad = (float)cfg_float(c, "optimizer.clip_grad");
    /* the engine counts backwards: one per micro-batch and model chunk (the interleaved pipeline: V per micro-batch) */
    j.dp = dp_engine_new(dm, strategy, &oc, n_local / mbs * (j.vpp > 1 ? j.vpp : 1),
                         cfg_bool(c, "ddp.overlap_grad_reduce"), cfg_bool(c, "ddp.overlap_param_gather"));
    /* under pipeline parallelism every stage, under tensor parallelism every TP rank writes its own part */
    j.sharded = strategy != DP_NO_SHARD || di->pp > 1 || di->tp > 1;
    long token = (long)getpid();
    dist_bcast_world_bytes(&token, sizeof token, "broadcast of the job token"); /* every rank writes there */
    snprintf(j.token, sizeof j.token, "%ld", token);
    if (j.wan)
        wan_trainer_init(&j.wtr, &j.wmodel, &j.obj, seed, frames, vh, vw, text_len);
    else
        dit_trainer_init(&j.tr, &j.model, dp_optimizer(j.dp), &j.obj, seed);
    if (j.lora_on) j.wtr.lora = j.tr.lora = &j.lora;
    const char *style_s = cfg_str(c, "scheduler.lr_decay_style");
    lr_style style = !strcmp(style_s, "cosine") ? LR_COSINE : !strcmp(style_s, "linear") ? LR_LINEAR : LR_CONSTANT;
    long warmup = int_key(c, "scheduler.lr_warmup_iters", 0, 1L << 30);
    long decay_iters =
        cfg_is_null(c, "scheduler.lr_decay_iters") ? train_iters : int_key(c, "scheduler.lr_decay_iters", 0, 1L << 30);
    double min_lr = cfg_float(c, "optimizer.min_lr");

    if (!cfg_is_null(c, "checkpoint.load")) load_checkpoint(&j, cfg_str(c, "checkpoint.load"));

    /* run folder: rank 0 writes the metrics, plots and config; every rank computes the same losses */
    const char *outdir = cfg_str(c, "logger.output_dir");
    char metrics[4200], curve[4200], runcfg[4200];
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", outdir);
    snprintf(curve, sizeof curve, "%s/loss_curve.png", outdir);
    snprintf(runcfg, sizeof runcfg, "%s/run_config.yaml", outdir);
    FILE *mf = NULL;
    if (lead) {
        xmkdir_p(outdir);
        cfg_write_yaml(c, runcfg);
        if (j.iteration > 0)
            trim_metrics(metrics, j.iteration);
        else
            unlink(metrics);
        mf = xfopen(metrics, "a");
    }

    const char *save = cfg_is_null(c, "checkpoint.save") ? NULL : cfg_str(c, "checkpoint.save");
    long save_interval = int_key(c, "checkpoint.save_interval", 1, 1L << 30);
    long log_interval = int_key(c, "logger.log_interval", 1, 1L << 30);
    long eval_interval = int_key(c, "train.eval_interval", 1, 1L << 30);
    int eval_iters = int_key(c, "train.eval_iters", 0, 1 << 20);
    int eval_samples = int_key(c, "train.eval_samples", 0, 1024);
    int eval_sample_steps = int_key(c, "train.eval_sample_steps", 1, 10000);
    if (eval_samples > 0 && !(j.wan ? vd.latents != NULL : ds.pixels != NULL))
        dfm_die("train.eval_samples = %d (from %s): samples at validation come from held-out samples in memory; "
                "dataset.type %s streams (set it to 0)",
                eval_samples, cfg_source(c, "train.eval_samples"), dtype);
    if (eval_samples > 0 && n_val == 0)
        dfm_die("train.eval_samples = %d: there are no held-out samples (dataset.val_samples is 0)", eval_samples);
    /* one updating status line on a terminal; a line per log step otherwise. Under mpirun the ranks' output goes
     * through a pseudo-terminal even when the job's is a file, so MPI runs always write lines. */
    int tty = lead && !di->active && isatty(fileno(stdout));

    /* this rank's batch: samples (images or latents) with labels, or with text embeddings and their lengths */
    size_t per = (size_t)chans * frames * vh * vw;
    size_t text_per = j.wan ? (size_t)text_len * wc.text_dim : 0;
    float *x = xalloc_floats((size_t)n_local * per);
    float *text = j.wan ? xalloc_floats((size_t)n_local * text_per) : NULL;
    int *labels = xcalloc((size_t)n_local, sizeof(int));    /* Wan: the text lengths */
    wan_micro *micro = xcalloc((size_t)acc, sizeof *micro); /* bucketed steps: this rank's micro-batches */
    size_t pbytes, gbytes, obytes;
    dp_memory(j.dp, &pbytes, &gbytes, &obytes);
    if (j.lora_on) { /* the frozen model outside the engine: its (merged) weights, gradients and the base copies */
        size_t total = j.pp ? pp_stage_table(j.pp)->total : j.wan ? j.wmodel.table.total : j.model.table.total;
        size_t copies = 0;
        for (int k = 0; k < j.lora.n; k++) copies += (size_t)j.lora.t[k].out * j.lora.t[k].in;
        pbytes += (total + copies) * sizeof(float);
        gbytes += total * sizeof(float);
    }
    size_t act_bytes = j.wan ? wan_activation_bytes(&j.wmodel) : dit_activation_bytes(&j.model);
    for (int v = 1; v < j.vpp; v++)
        act_bytes += j.wan ? wan_activation_bytes(&j.xwan[v - 1]) : dit_activation_bytes(&j.xdit[v - 1]);
    if (lead) {
        if (j.wan)
            printf("dfm pretrain: recipe %s, Wan 2.1 %d x %d (%d heads, latents [%d, %d, %d, %d], %d tokens, text %d x "
                   "%d), %zu parameters, %s objective\n",
                   cfg_recipe_of(c), wc.num_layers, wc.num_heads * wc.head_dim, wc.num_heads, chans, frames, vh, vw,
                   (frames / wc.patch_t) * (vh / wc.patch_h) * (vw / wc.patch_w), text_len, wc.text_dim,
                   param_table_global_total(j.table), j.obj.kind == OBJ_EDM ? "EDM" : "flow-matching");
        else
            printf(
                "dfm pretrain: recipe %s, DiT %d x %d (%d heads, patch %d, %d tokens), %zu parameters, %s objective\n",
                cfg_recipe_of(c), dc.num_layers, dc.hidden_size, dc.num_heads, dc.patch_size, j.model.T_full,
                param_table_global_total(&j.model.table), j.obj.kind == OBJ_EDM ? "EDM" : "flow-matching");
        if (ds.pixels || vd.latents)
            printf("  data %s (%s): %d training / %d validation samples; batch %d (micro %d); %ld steps; %d threads\n",
                   dtype, dpath, n_train, n_val, gbs, mbs, train_iters, nth);
        else
            printf("  data %s (%s): train split%s; batch %d (micro %d); %ld steps; %d threads\n", dtype, dpath,
                   energon_val ? " + val split" : "", gbs, mbs, train_iters, nth);
        if (bucketed)
            printf(
                "  bucketed batches: %d latent shape%s%s, %d steps an epoch (micro-batch %d x %d slots), shuffle %s, "
                "drop_last %s\n",
                video_dataset_nshapes(&vd), vd.shapes ? "s" : "", vd.shapes ? " (the model sized for the largest)" : "",
                video_loader_batches_per_epoch(j.vloader), mbs, gbs / mbs,
                cfg_bool(c, "dataset.shuffle") ? "true" : "false", cfg_bool(c, "dataset.drop_last") ? "true" : "false");
        if (di->size > 1)
            printf("  %d processes: data parallel %d x tensor %d x context %d x pipeline %d; %d samples per rank; "
                   "sharding %s",
                   di->size, di->dp, di->tp, di->cp, di->pp, n_local, dp_sharding_name(strategy));
        if (di->size > 1 && di->dp_replicate > 1)
            printf(" within %d replica groups of %d ranks (hybrid), gradient shards all-reduced across them",
                   di->dp_replicate, di->dp_shard);
        if (di->size > 1) printf("\n");
        if (di->cp > 1)
            printf("  context parallel: %s attention, each rank %d tokens of a sample (the last ones padded and masked "
                   "where %s%d does not divide the tokens)\n",
                   cp_comm_type_name(cp_comm), j.wan ? j.wmodel.max_tokens : j.model.T,
                   seqpar ? "context x tensor parallel = " : "", di->cp * (seqpar ? di->tp : 1));
        char rc_note[96] = "";
        if (recompute.selective)
            snprintf(rc_note, sizeof rc_note, " (selective: every block's core attention recomputed in the backward)");
        else if (recompute.blocks && recompute.chunk > 1)
            snprintf(rc_note, sizeof rc_note, " (%d of %d blocks recomputed in the backward, in checkpoints of %d)",
                     recompute.blocks, j.wan ? wc.num_layers : dc.num_layers, recompute.chunk);
        else if (recompute.blocks)
            snprintf(rc_note, sizeof rc_note, " (%d of %d blocks recomputed in the backward)", recompute.blocks,
                     j.wan ? wc.num_layers : dc.num_layers);
        const char *sp_note = seqpar ? " (sequence parallel: 1/TP of the tokens outside attention and the MLP)" : "";
        printf("  memory per rank: parameters %.1f MB, gradients %.1f MB, optimizer state + EMA %.1f MB, "
               "activations %.1f MB%s%s\n",
               pbytes / 1e6, gbytes / 1e6, obytes / 1e6, act_bytes / 1e6, rc_note, sp_note);
        char pp_counts[4 * PP_MAX_STAGES + 16] = ""; /* even: the blocks of each; else of every stage or chunk */
        for (int k = 0; di->pp > 1 && k < (plan.even ? 1 : di->pp * vpp); k++)
            snprintf(pp_counts + strlen(pp_counts), sizeof pp_counts - strlen(pp_counts), "%s%d", k ? ", " : "",
                     plan.n[k]);
        if (di->pp > 1 && vpp == 1)
            printf("  pipeline: %d stages of %s blocks (stage 0 + embedders, stage %d + head and loss), 1F1B over %d "
                   "micro-batches, bubble (P-1)/(m+P-1) = %.3f; rank 0 keeps %d activation arena%s (one per "
                   "micro-batch in flight)\n",
                   di->pp, pp_counts, di->pp - 1, n_micro, pp_bubble(di->pp, n_micro, 1), pp_arenas,
                   pp_arenas == 1 ? "" : "s");
        else if (di->pp > 1)
            printf("  pipeline: %d stages x %d model chunks of %s blocks (chunk k on stage k mod %d; embedders on "
                   "stage 0, head and loss on stage %d), interleaved 1F1B over %d micro-batches, bubble "
                   "(P-1)/(V*m+P-1) = %.3f (Megatron's bubble/ideal (P-1)/(V*m) = %.3f); rank 0 keeps %d activation "
                   "arenas over its chunks\n",
                   di->pp, vpp, pp_counts, di->pp, di->pp - 1, n_micro, pp_bubble(di->pp, n_micro, vpp),
                   (double)(di->pp - 1) / ((double)vpp * n_micro), pp_arenas);
        printf("  %s\n", kernels_blas_info());
        fflush(stdout);
    }

    /* throughput in the model's terms: 3 x the forward FLOPs of this rank's samples (wan_forward_flops /
     * dit_forward_flops: matrix products and attention), per second; MFU against the process's peak. The TP ranks
     * of a DP rank share its samples' FLOPs: each is credited 1/TP of them (Megatron's model FLOPs per GPU). */
    char peak_desc[600] = "";
    double peak_tflops = 0;
    if (cfg_is_null(c, "logger.peak_tflops")) {
        peak_tflops = kernels_peak_gflops_per_thread(peak_desc, sizeof peak_desc) * nth / 1e3;
    } else {
        peak_tflops = cfg_float(c, "logger.peak_tflops");
        if (!(peak_tflops >= 0)) dfm_die("logger.peak_tflops must be >= 0 (got %g)", peak_tflops);
        snprintf(peak_desc, sizeof peak_desc, "logger.peak_tflops (from %s)", cfg_source(c, "logger.peak_tflops"));
    }
    if (lead) {
        if (peak_tflops > 0)
            printf("  MFU against %.3f TFLOP/s per process (%d threads; %s)\n", peak_tflops, nth, peak_desc);
        else
            printf("  model TFLOP/s logged without MFU (no peak: %s)\n", peak_desc);
    }
    double flops_window = 0;
    int skip_nan = !strcmp(cfg_str(c, "train.on_nan"), "skip_step");
    double spike_factor = cfg_float(c, "train.loss_spike_factor"), loss_mean = 0;
    long skipped = 0;
    double t_window = dfm_time_s(), wait_window = 0, t_start = t_window;
    long steps_window = 0, start_it = j.iteration;
    dist_take_wait_time();
    while (j.iteration < train_iters) {
        long it = j.iteration;
        double lr = lr_schedule(it, oc.lr, min_lr, warmup, decay_iters, style);
        uint32_t first = (uint32_t)(di->dp_rank * n_local);
        step_result r;
        long step_samples = gbs;
        if (j.wan && bucketed) { /* one shape per step: every slot's batch comes from the same bucket */
            int count, sh[4];
            wait_window += video_loader_next_step(j.vloader, x, text, labels, &count, sh, NULL);
            size_t lat_n = (size_t)sh[0] * sh[1] * sh[2] * sh[3];
            for (int k = 0; k < acc; k++)
                micro[k] = (wan_micro){x + (size_t)k * count * lat_n,
                                       text + (size_t)k * count * text_per,
                                       labels + (size_t)k * count,
                                       count,
                                       sh[1],
                                       sh[2],
                                       sh[3],
                                       (uint32_t)((di->dp_rank * acc + k) * mbs)};
            step_samples = (long)count * (gbs / mbs);
            wan_shape fs = {count * acc, sh[1], sh[2], sh[3], text_len};
            flops_window += 3 * wan_forward_flops(&j.wmodel, &fs) / di->pp;
            r = j.pp ? pp_wan_step(j.pp, &j.wtr, j.dp, micro, acc, (int)step_samples, (uint32_t)it, (float)lr)
                     : wan_trainer_step_micro(&j.wtr, j.dp, micro, acc, (int)step_samples, (uint32_t)it, (float)lr);
        } else if (j.wan) {
            wait_window += video_loader_next(j.vloader, x, text, labels);
            if (j.pp) { /* this rank's micro-batches through the pipeline */
                size_t lat_n = (size_t)chans * frames * vh * vw;
                for (int k = 0; k < acc; k++)
                    micro[k] = (wan_micro){x + (size_t)k * mbs * lat_n,
                                           text + (size_t)k * mbs * text_per,
                                           labels + (size_t)k * mbs,
                                           mbs,
                                           frames,
                                           vh,
                                           vw,
                                           first + (uint32_t)(k * mbs)};
                r = pp_wan_step(j.pp, &j.wtr, j.dp, micro, acc, gbs, (uint32_t)it, (float)lr);
            } else
                r = wan_trainer_step_dp(&j.wtr, j.dp, x, text, labels, n_local, gbs, first, (uint32_t)it, (float)lr);
            wan_shape fs = {n_local, frames, vh, vw, text_len};
            flops_window += 3 * wan_forward_flops(&j.wmodel, &fs) / di->pp;
        } else {
            wait_window += loader_next(j.loader, x, labels);
            r = j.pp ? pp_dit_step(j.pp, &j.tr, j.dp, x, labels, n_local, gbs, first, (uint32_t)it, (float)lr)
                     : dit_trainer_step_dp(&j.tr, j.dp, x, labels, n_local, gbs, first, (uint32_t)it, (float)lr);
            flops_window += 3 * dit_forward_flops(&j.model, n_local) / di->pp;
        }
        if (r.skipped) {
            char what[700];
            if (r.bad_param >= 0)
                snprintf(what, sizeof what, "the gradient of '%s' (the first parameter holding NaN/Inf)",
                         (j.pp && !j.lora_on ? pp_stage_table(j.pp) : j.table)->e[r.bad_param].name);
            else
                snprintf(what, sizeof what, "the loss (%g)", r.loss);
            if (skip_nan) {
                skipped++;
                if (lead)
                    dfm_warn("step %ld: %s is not finite: update skipped (train.on_nan: skip_step)", it + 1, what);
            } else
                dfm_die("step %ld: %s is not finite (train.on_nan: stop; skip_step would skip the update): lower "
                        "optimizer.lr or check the data",
                        it + 1, what);
        } else {
            dp_ema_update(j.dp, j.ema_decay);
            /* a loss far above its recent level is worth a look, not a stop */
            if (spike_factor > 0 && loss_mean > 0 && r.loss > spike_factor * loss_mean && lead)
                dfm_warn("step %ld: loss %.4g is %.1f x the recent mean %.4g (train.loss_spike_factor %g)", it + 1,
                         r.loss, r.loss / loss_mean, loss_mean, spike_factor);
            loss_mean = loss_mean > 0 ? 0.9 * loss_mean + 0.1 * r.loss : r.loss;
        }
        j.iteration++;
        j.consumed += step_samples;
        steps_window++;
        if (j.iteration % log_interval == 0 || j.iteration == train_iters) {
            double now = dfm_time_s(), dt = now - t_window;
            double sps = steps_window * gbs / dt, wait_frac = wait_window / dt, comm_frac = dist_take_wait_time() / dt;
            double tflops = flops_window / di->tp / di->cp / dt / 1e12;
            double mfu = peak_tflops > 0 ? tflops / peak_tflops : NAN;
            char mfu_s[48] = "", mfu_j[48] = "";
            if (isfinite(mfu)) {
                snprintf(mfu_s, sizeof mfu_s, " (MFU %.1f%%)", 100 * mfu);
                snprintf(mfu_j, sizeof mfu_j, ", \"mfu\": %.4g", mfu);
            }
            if (lead) {
                char loss_s[32], norm_s[32]; /* JSON has no NaN: a skipped step's values are null */
                snprintf(loss_s, sizeof loss_s, isfinite(r.loss) ? "%.7g" : "null", r.loss);
                snprintf(norm_s, sizeof norm_s, isfinite(r.grad_norm) ? "%.6g" : "null", r.grad_norm);
                fprintf(mf,
                        "{\"step\": %ld, \"loss\": %s, \"lr\": %.6g, \"grad_norm\": %s, \"samples_per_s\": %.4g, "
                        "\"model_tflops\": %.4g%s, \"data_wait_frac\": %.4g%s",
                        j.iteration, loss_s, lr, norm_s, sps, tflops, mfu_j, wait_frac,
                        di->size > 1 || skipped ? "" : "}\n");
                if (di->size > 1) {
                    fprintf(mf, ", \"comm_wait_frac\": %.4g", comm_frac);
                    if (di->pp > 1) fprintf(mf, ", \"pp_bubble\": %.4g", pp_bubble(di->pp, n_micro, vpp));
                    fprintf(mf, "%s", skipped ? "" : "}\n");
                }
                if (skipped) fprintf(mf, ", \"skipped_steps\": %ld}\n", skipped);
                fflush(mf);
                char eta[32];
                fmt_eta(eta, sizeof eta, (double)(train_iters - j.iteration) * dt / steps_window);
                if (tty)
                    printf("\r\033[K  step %ld/%ld | loss %.4f | lr %.2e | grad norm %.3f | %.1f samples/s | %.3g "
                           "TFLOP/s%s "
                           "| data wait %.1f%% | ETA %s",
                           j.iteration, train_iters, r.loss, lr, r.grad_norm, sps, tflops, mfu_s, 100 * wait_frac, eta);
                else
                    printf(
                        "  step %ld/%ld loss %.4f lr %.3e grad_norm %.4f samples/s %.1f tflops %.4g%s data_wait %.1f%% "
                        "eta %s\n",
                        j.iteration, train_iters, r.loss, lr, r.grad_norm, sps, tflops, mfu_s, 100 * wait_frac, eta);
                fflush(stdout);
                if (plot_loss_curve(metrics, curve, err, sizeof err) != 0) dfm_warn("loss curve: %s", err);
            }
            t_window = dfm_time_s(), wait_window = 0, steps_window = 0, flops_window = 0;
        }
        if (j.iteration % eval_interval == 0 || j.iteration == train_iters) {
            if (j.lora_on && (eval_iters > 0 || eval_samples > 0)) lora_refresh(&j);
            double v = j.wan ? validate_wan(&j, vd.latents ? &vd : NULL, val_idx, n_val, energon_val, eval_iters, x,
                                            text, labels)
                             : validate(&j, ds.pixels ? &ds : NULL, val_idx, n_val, energon_val, eval_iters, x, labels);
            if (isfinite(v) && lead) {
                fprintf(mf, "{\"step\": %ld, \"val_loss\": %.7g}\n", j.iteration, v);
                fflush(mf);
                printf("%s  validation loss at step %ld: %.5f\n", tty ? "\n" : "", j.iteration, v);
            }
            if (eval_samples > 0 && (di->tp > 1 || di->pp > 1 || di->cp > 1)) {
                /* the one-process sampler on rank 0's whole model; the other ranks go on to the next step and wait
                 * there (within dist.timeout_s) */
                full_model *f = current_weights_on_lead(&j);
                if (f)
                    validation_samples(&j, &f->dit, &f->wm, vd.latents ? &vd : NULL, ds.pixels ? &ds : NULL, val_idx,
                                       n_val, eval_samples, eval_sample_steps, outdir);
            } else if (eval_samples > 0)
                validation_samples(&j, &j.model, &j.wmodel, vd.latents ? &vd : NULL, ds.pixels ? &ds : NULL, val_idx,
                                   n_val, eval_samples, eval_sample_steps, outdir);
        }
        if (save && (j.iteration % save_interval == 0 || j.iteration == train_iters)) {
            if (j.automodel)
                save_checkpoint_automodel(&j, save);
            else
                save_checkpoint(&j, save);
            if (tty) printf("\n");
            if (lead) printf("  saved checkpoint %s/%s\n", save, j.saved);
        }
        fflush(stdout);
    }
    if (lead) {
        xfclose(mf, metrics);
        if (plot_loss_curve(metrics, curve, err, sizeof err) != 0) dfm_warn("loss curve: %s", err);
        double total = dfm_time_s() - t_start;
        printf("%sdone: %ld steps in %.1f s (%.1f samples/s); metrics in %s, loss curve in %s\n", tty ? "\n" : "",
               j.iteration - start_it, total, total > 0 ? (j.iteration - start_it) * gbs / total : 0.0, metrics, curve);
    }

    free(x), free(text), free(labels), free(micro), free(train_idx), free(val_idx), free(j.objective_meta),
        free(j.class_names_meta);
    free(j.config_json), free(j.sample_meta), free(j.lora_meta);
    dp_engine_free(j.dp);
    pp_stage_free(j.pp);
    if (j.full) full_model_free(j.full);
    free(j.full);
    if (j.lora_on) lora_free(&j.lora);
    if (j.wan) {
        video_loader_free(j.vloader);
        video_dataset_free(&vd);
        wan_trainer_free(&j.wtr);
        wan_free(&j.wmodel);
        for (int v = 1; v < j.vpp; v++) wan_free(&j.xwan[v - 1]);
        free(j.xwan);
    } else {
        loader_free(j.loader);
        image_dataset_free(&ds);
        dit_trainer_free(&j.tr);
        dit_free(&j.model);
        for (int v = 1; v < j.vpp; v++) dit_free(&j.xdit[v - 1]);
        free(j.xdit);
    }
    cp_release();
    return 0;
}
