/* The Automodel recipe: schema, file/override loading with renames and ${VAR} expansion, checks and the
 * bindings to the core's configs. See include/dfm/automodel.h. */
#include "dfm/automodel.h"
#include "dfm/common.h"
#include "dfm/yamltree.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int errf(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---------------------------------------------------------------- schema */

cfg *automodel_defaults(void) {
    cfg *c = cfg_new("automodel");
    cfg_def(c, "seed", CFG_INT, "42", "seed of every random draw (data order, noise, timesteps, init)");

    cfg_def(c, "model.pretrained_model_name_or_path", CFG_STR, NULL,
            "diffusers pipeline or transformer folder, hub id org/name[@rev] (offline cache), or dfm pretrain "
            "checkpoint; in pretrain mode only its config is used");
    cfg_def_enum(c, "model.mode", 0, "finetune", "finetune|pretrain",
                 "finetune loads the pretrained weights; pretrain initialises randomly from the config");
    cfg_def(c, "model.pipeline_spec.transformer_cls", CFG_STR, "WanTransformer3DModel",
            "the diffusers transformer class expected in the folder");
    cfg_def(c, "model.pipeline_spec.subfolder", CFG_STR, "transformer", "the transformer's folder in a pipeline");
    cfg_def(c, "model.pipeline_spec.load_full_pipeline", CFG_BOOL, "false", "accepted; dfm loads the transformer only");

    cfg_def(c, "step_scheduler.global_batch_size", CFG_INT, "8", "samples per optimizer step over all ranks");
    cfg_def(c, "step_scheduler.local_batch_size", CFG_INT, "1",
            "samples per micro-batch on one rank; accumulation = global / (local x dp)");
    cfg_def(c, "step_scheduler.ckpt_every_steps", CFG_INT, "1000", "save a checkpoint every N optimizer steps");
    cfg_def(c, "step_scheduler.num_epochs", CFG_INT, "100", "passes over the data (max_steps ends sooner)");
    cfg_def(c, "step_scheduler.max_steps", CFG_INT, NULL, "stop after N optimizer steps (null: num_epochs decides)");
    cfg_def(c, "step_scheduler.log_every", CFG_INT, "2", "log every N optimizer steps");
    cfg_def(c, "step_scheduler.val_every_steps", CFG_INT, NULL, "validate every N steps (null: never)");
    cfg_def(c, "validation.num_samples", CFG_INT, "0",
            "dfm: at each validation, generate this many clips from held-out captions into "
            "checkpoint_dir/val_samples/step_N/ (0: none)");
    cfg_def(c, "validation.sampling_steps", CFG_INT, "20", "dfm: sampling steps of those clips (Euler, no guidance)");

    cfg_def(c, "data.dataloader.meta_folder", CFG_STR, NULL, "folder of pre-encoded samples (*.meta)");
    cfg_def(c, "data.dataloader.cache_dir", CFG_STR, NULL,
            "newer Automodel spelling of the pre-encoded data folder (metadata.json + WxH/*.meta)");
    cfg_def(c, "data.dataloader.num_workers", CFG_INT, "2", "background loading threads");
    cfg_def(c, "data.dataloader.shuffle", CFG_BOOL, "true", "shuffle buckets and samples each epoch");
    cfg_def(c, "data.dataloader.drop_last", CFG_BOOL, "true",
            "drop each bucket's last short local batch (Automodel's builder default)");
    cfg_def(c, "data.dataloader.base_resolution", CFG_LIST, "[512, 512]", "reference [width, height] of buckets");
    cfg_def(c, "data.dataloader.dynamic_batch_size", CFG_BOOL, "false",
            "scale the batch size per bucket (unsupported)");
    cfg_def(c, "data.dataloader.model_type", CFG_STR, "wan", "the sample layout (wan)");
    cfg_def(c, "data.dataloader._target_", CFG_STR, NULL, "Automodel's Python builder; accepted and ignored");

    cfg_def(c, "optimizer.lr", CFG_FLOAT, "5e-6", "peak learning rate");
    cfg_def(c, "optimizer.weight_decay", CFG_FLOAT, "0.01", "AdamW decoupled weight decay");
    cfg_def(c, "optimizer.betas", CFG_LIST, "[0.9, 0.999]", "AdamW (beta1, beta2)");
    cfg_def(c, "optimizer.eps", CFG_FLOAT, "1e-8", "AdamW epsilon");
    cfg_def(c, "clip_grad_norm.max_norm", CFG_FLOAT, "1.0", "clip the global gradient norm (<= 0: off)");

    cfg_def_enum(c, "lr_scheduler.lr_decay_style", 0, "cosine", "constant|linear|cosine|inverse-square-root|WSD",
                 "decay after warmup");
    cfg_def(c, "lr_scheduler.lr_warmup_steps", CFG_INT, NULL, "linear warmup steps (null: min(1000, total / 10))");
    cfg_def(c, "lr_scheduler.lr_decay_steps", CFG_INT, NULL, "steps of decay (null: the whole run)");
    cfg_def(c, "lr_scheduler.min_lr", CFG_FLOAT, "1e-6", "learning rate at the end of the decay");

    cfg_def_enum(c, "flow_matching.timestep_sampling", 0, "uniform", "uniform|logit_normal|lognorm|mode|mix",
                 "how sigma is drawn");
    cfg_def(c, "flow_matching.logit_mean", CFG_FLOAT, "0.0", "logit-normal mean");
    cfg_def(c, "flow_matching.logit_std", CFG_FLOAT, "1.0", "logit-normal std");
    cfg_def(c, "flow_matching.flow_shift", CFG_FLOAT, "3.0", "sigma shift s' = shift s / (1 + (shift - 1) s)");
    cfg_def(c, "flow_matching.mix_uniform_ratio", CFG_FLOAT, "0.1", "mix: share of steps drawn uniformly");
    cfg_def(c, "flow_matching.sigma_min", CFG_FLOAT, "0.0", "clamp sigma from below");
    cfg_def(c, "flow_matching.sigma_max", CFG_FLOAT, "1.0", "clamp sigma from above");
    cfg_def(c, "flow_matching.num_train_timesteps", CFG_INT, "1000", "the model sees t = this x sigma");
    cfg_def(c, "flow_matching.use_loss_weighting", CFG_BOOL, "true", "weight the loss by 1 + flow_shift x sigma");
    cfg_def(c, "flow_matching.cfg_dropout_prob", CFG_FLOAT, "0.1",
            "drop the text condition (classifier-free guidance)");
    cfg_def(c, "flow_matching.use_sigma_noise", CFG_BOOL, "true", "accepted (Automodel); dfm always noises by sigma");
    cfg_def(c, "flow_matching.adapter_type", CFG_STR, "simple", "accepted (Automodel's model adapter)");
    cfg_def(c, "flow_matching.adapter_kwargs", CFG_MAP, "{}", "accepted (free-form)");

    cfg_def(c, "fsdp.tp_size", CFG_INT, "1", "tensor-parallel size");
    cfg_def(c, "fsdp.cp_size", CFG_INT, "1", "context-parallel size");
    cfg_def(c, "fsdp.pp_size", CFG_INT, "1", "pipeline-parallel size");
    cfg_def(c, "fsdp.sequence_parallel", CFG_BOOL, "false", "sequence parallelism in the tensor-parallel group");
    cfg_def(c, "fsdp.dp_size", CFG_INT, NULL, "data-parallel size (null: world / (tp x cp x pp))");
    cfg_def(c, "fsdp.dp_replicate_size", CFG_INT, "1", "> 1: HSDP, replicate across this many groups");
    cfg_def(c, "fsdp.activation_checkpointing", CFG_BOOL, "true", "recompute activations in the backward pass");
    cfg_def(c, "fsdp.cpu_offload", CFG_BOOL, "false", "keep parameters and optimizer state in host memory");
    cfg_def(c, "ddp", CFG_MAP, NULL, "plain DDP instead of FSDP2 when set (free-form map)");

    cfg_def(c, "checkpoint.enabled", CFG_BOOL, "true", "save checkpoints");
    cfg_def(c, "checkpoint.checkpoint_dir", CFG_STR, "checkpoints", "where epoch_E_step_S/ folders and LATEST go");
    cfg_def_enum(c, "checkpoint.save_consolidated", 0, "false", "false|final|every|true",
                 "also save a diffusers-compatible consolidated model (true = every)");
    cfg_def(c, "checkpoint.restore_from", CFG_STR, NULL,
            "null (latest in checkpoint_dir), LATEST, a step folder or a path");
    cfg_def(c, "checkpoint.max_recent_checkpoints", CFG_INT, NULL, "keep only the N newest (null: all)");
    cfg_def_enum(c, "checkpoint.model_save_format", 0, "safetensors", "safetensors|torch_save", "weights format");
    cfg_def(c, "checkpoint.diffusers_compatible", CFG_BOOL, "true", "consolidated model in diffusers' layout");

    cfg_def(c, "peft.dim", CFG_INT, "8", "LoRA rank");
    cfg_def(c, "peft.alpha", CFG_INT, "32", "LoRA alpha (scale alpha / dim)");
    cfg_def(c, "peft.dropout", CFG_FLOAT, "0.0", "dropout on the LoRA input");
    cfg_def(c, "peft.target_modules", CFG_LIST, "[]", "module globs to adapt, e.g. ['*.to_q', '*.to_v']");
    cfg_def(c, "peft.exclude_modules", CFG_LIST, "[]", "module globs never adapted");
    cfg_def(c, "peft.match_all_linear", CFG_BOOL, "false", "adapt every linear layer");
    cfg_def(c, "peft.merged_backward", CFG_BOOL, "false",
            "dfm: adapter gradients through the full weight gradients (slower; default: from the activations)");
    cfg_def(c, "peft._target_", CFG_STR, NULL, "Automodel's Python class; accepted and ignored");

    cfg_def(c, "wandb", CFG_MAP, NULL, "accepted (Automodel's Weights & Biases settings); unused");
    cfg_def(c, "dist_env", CFG_MAP, NULL, "accepted (backend, timeout_minutes); unused");
    return c;
}

/* ---------------------------------------------------------------- old spellings */

static const char *const renames[][2] = {
    {"optim.learning_rate", "optimizer.lr"},
    {"optim.lr", "optimizer.lr"},
    {"optim.optimizer.weight_decay", "optimizer.weight_decay"},
    {"optim.optimizer.betas", "optimizer.betas"},
    {"optim.optimizer.eps", "optimizer.eps"},
    {"optim.optimizer.lr", "optimizer.lr"},
    {"training.num_epochs", "step_scheduler.num_epochs"},
    {"logging.save_every", "step_scheduler.ckpt_every_steps"},
    {"logging.log_every", "step_scheduler.log_every"},
    {"checkpoint.output_dir", "checkpoint.checkpoint_dir"},
    {"checkpoint.resume", "checkpoint.restore_from"},
    {"data.meta_folder", "data.dataloader.meta_folder"},
};
enum { NRENAMES = sizeof renames / sizeof renames[0] };

static const char *renamed(const char *key) {
    for (int i = 0; i < NRENAMES; i++)
        if (!strcmp(key, renames[i][0])) return renames[i][1];
    return NULL;
}

static yt_node *yt_new_map(const yt_node *like) {
    yt_node *m = xcalloc(1, sizeof *m);
    m->kind = YT_MAP;
    m->file = like->file;
    m->line = like->line;
    return m;
}

static void yt_push(yt_node *m, const char *key, int line, yt_node *item) {
    m->items = xrealloc(m->items, (size_t)(m->n + 1) * sizeof *m->items);
    m->keys = xrealloc(m->keys, (size_t)(m->n + 1) * sizeof *m->keys);
    m->key_lines = xrealloc(m->key_lines, (size_t)(m->n + 1) * sizeof *m->key_lines);
    m->keys[m->n] = xstrdup(key);
    m->key_lines[m->n] = line;
    m->items[m->n++] = item;
}

static int key_line(const yt_node *m, int i) {
    return m->key_lines ? m->key_lines[i] : m->line;
}

/* Move the value at old path `from` (found in root) to `to`, creating maps on the way. -1 when `to` is set too. */
static int move_key(yt_node *root, const char *from, const char *to, FILE *notes, char *err, size_t errlen) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", from);
    yt_node *chain[16];
    int idx[16], depth = 0;
    yt_node *m = root;
    for (char *save = NULL, *comp = strtok_r(buf, ".", &save); comp; comp = strtok_r(NULL, ".", &save)) {
        if (!m || m->kind != YT_MAP || depth >= 16) return 0;
        int k = -1;
        for (int i = 0; i < m->n; i++)
            if (!strcmp(m->keys[i], comp)) k = i;
        if (k < 0) return 0;
        chain[depth] = m;
        idx[depth++] = k;
        m = m->items[k];
    }
    yt_node *parent = chain[depth - 1];
    int k = idx[depth - 1], line = key_line(parent, k);
    const char *file = parent->file; /* owned by the root; parent itself may be freed below */
    yt_node *val = parent->items[k];
    /* walk/create the new path */
    char nb[256];
    snprintf(nb, sizeof nb, "%s", to);
    yt_node *t = root;
    char *save = NULL, *comp = strtok_r(nb, ".", &save);
    for (char *next; comp; comp = next) {
        next = strtok_r(NULL, ".", &save);
        yt_node *child = yt_get(t, comp);
        if (!next) {
            if (child)
                return errf(err, errlen, "%s:%d: both '%s' and its new spelling '%s' (line %d) are given; keep '%s'",
                            parent->file, line, from, to, child->line, to);
            break;
        }
        if (!child) {
            child = yt_new_map(val);
            yt_push(t, comp, line, child);
        } else if (child->kind != YT_MAP) {
            return errf(err, errlen, "%s:%d: '%s' moves to '%s', but that is not a section here", parent->file, line,
                        from, to);
        }
        t = child;
    }
    /* detach from the old place (the pointer moves, nothing is freed), then drop maps left empty */
    char *oldkey = parent->keys[k];
    for (int i = k; i + 1 < parent->n; i++) {
        parent->items[i] = parent->items[i + 1];
        parent->keys[i] = parent->keys[i + 1];
        if (parent->key_lines) parent->key_lines[i] = parent->key_lines[i + 1];
    }
    parent->n--;
    free(oldkey);
    yt_push(t, comp, line, val);
    for (int d = depth - 1; d > 0; d--) {
        yt_node *p = chain[d - 1], *me = chain[d];
        if (me->n) break;
        int j = idx[d - 1];
        free(p->keys[j]);
        yt_free(me);
        for (int i = j; i + 1 < p->n; i++) {
            p->items[i] = p->items[i + 1];
            p->keys[i] = p->keys[i + 1];
            if (p->key_lines) p->key_lines[i] = p->key_lines[i + 1];
        }
        p->n--;
    }
    fprintf(notes ? notes : stderr, "dfm: note: %s:%d: '%s' is now spelled '%s'\n", file, line, from, to);
    return 0;
}

static int apply_renames(yt_node *root, FILE *notes, char *err, size_t errlen) {
    for (int i = 0; i < NRENAMES; i++)
        if (move_key(root, renames[i][0], renames[i][1], notes, err, errlen)) return -1;
    return 0;
}

/* ---------------------------------------------------------------- ${VAR} and none */

/* Expand ${VAR} / ${VAR,default} in s (malloc'ed result), or NULL with a message naming key and variable. */
static char *expand_env(const char *s, const char *key, const char *where, char *err, size_t errlen) {
    size_t cap = strlen(s) + 64, len = 0;
    char *out = xmalloc(cap);
    for (const char *p = s; *p;) {
        const char *add = p;
        size_t addlen = 1;
        if (p[0] == '$' && p[1] == '{') {
            const char *close = strchr(p + 2, '}');
            if (!close) {
                errf(err, errlen, "%s: %s: unterminated ${ in '%s'", where, key, s);
                free(out);
                return NULL;
            }
            const char *comma = memchr(p + 2, ',', (size_t)(close - p - 2));
            size_t nlen = (size_t)((comma ? comma : close) - (p + 2));
            char name[256];
            snprintf(name, sizeof name, "%.*s", (int)nlen, p + 2);
            const char *v = nlen ? getenv(name) : NULL;
            if (!nlen) {
                errf(err, errlen, "%s: %s: empty variable name in '%s'", where, key, s);
                free(out);
                return NULL;
            }
            if (v) {
                add = v;
                addlen = strlen(v);
            } else if (comma) {
                add = comma + 1;
                addlen = (size_t)(close - comma - 1);
            } else {
                errf(err, errlen,
                     "%s: %s: environment variable %s is not set and '%s' gives no default (write ${%s,default})",
                     where, key, name, s, name);
                free(out);
                return NULL;
            }
            p = close + 1;
        } else {
            p++;
        }
        if (len + addlen + 1 > cap) cap = (len + addlen + 1) * 2, out = xrealloc(out, cap);
        memcpy(out + len, add, addlen);
        len += addlen;
    }
    out[len] = 0;
    return out;
}

static int rewrite_scalars(yt_node *n, const char *path, const char *fixed_src, char *err, size_t errlen) {
    if (n->kind == YT_SCALAR) {
        if (strstr(n->str, "${")) {
            char where[512];
            if (fixed_src)
                snprintf(where, sizeof where, "%s", fixed_src);
            else
                snprintf(where, sizeof where, "%s:%d", n->file, n->line);
            char *x = expand_env(n->str, path[0] ? path : "(value)", where, err, errlen);
            if (!x) return -1;
            free(n->str);
            n->str = x;
        }
        if (!n->quoted && (!strcmp(n->str, "none") || !strcmp(n->str, "None"))) {
            free(n->str);
            n->str = xstrdup("null");
        }
        return 0;
    }
    for (int i = 0; i < n->n; i++) {
        char sub[512];
        if (n->kind == YT_MAP)
            snprintf(sub, sizeof sub, "%s%s%s", path, path[0] ? "." : "", n->keys[i]);
        else
            snprintf(sub, sizeof sub, "%s.%d", path, i);
        if (rewrite_scalars(n->items[i], sub, fixed_src, err, errlen)) return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- loading */

int automodel_merge_file(cfg *c, const char *path, FILE *notes, char *err, size_t errlen) {
    yt_node *y = yt_parse_file(path, err, errlen);
    if (!y) return -1;
    int rc;
    if (y->kind != YT_MAP)
        rc = errf(err, errlen, "%s:%d: a recipe is a map of sections (model:, step_scheduler:, ...), not a %s", path,
                  y->line, yt_kind_name(y->kind));
    else if (apply_renames(y, notes, err, errlen) || rewrite_scalars(y, "", NULL, err, errlen))
        rc = -1;
    else
        rc = cfg_merge_tree(c, y, NULL, err, errlen);
    yt_free(y);
    return rc;
}

int automodel_override(cfg *c, const char *key, const char *value, FILE *notes, char *err, size_t errlen) {
    char src[1024];
    if (value)
        snprintf(src, sizeof src, "command line '--%s %s'", key, value);
    else
        snprintf(src, sizeof src, "command line '--%s'", key);
    if (!*key || key[0] == '.' || key[strlen(key) - 1] == '.' || strstr(key, ".."))
        return errf(err, errlen, "%s: '%s' is not a dotted key", src, key);
    const char *nk = renamed(key);
    if (nk) {
        fprintf(notes ? notes : stderr, "dfm: note: %s: '%s' is now spelled '%s'\n", src, key, nk);
        key = nk;
    }
    /* the value as YAML; text YAML cannot read ("[1,", "a: b: c") is taken as a string, as Automodel does */
    char perr[256];
    yt_node *v = NULL;
    if (!value)
        v = yt_parse_string("true", "value", perr, sizeof perr);
    else if (!*value)
        v = yt_parse_string("''", "value", perr, sizeof perr);
    else
        v = yt_parse_string(value, "value", perr, sizeof perr);
    if (!v || (v->kind == YT_MAP && v->n == 0 && *value)) {
        if (v) yt_free(v);
        v = yt_parse_string("x", "value", perr, sizeof perr);
        free(v->str);
        v->str = xstrdup(value);
        v->quoted = 1;
    }
    if (rewrite_scalars(v, key, src, err, errlen)) {
        yt_free(v);
        return -1;
    }
    /* wrap the value in maps along the key: {a: {b: {c: v}}}, then merge like a file */
    char buf[512];
    snprintf(buf, sizeof buf, "%s", key);
    char *comps[32];
    int nc = 0;
    for (char *save = NULL, *comp = strtok_r(buf, ".", &save); comp && nc < 32; comp = strtok_r(NULL, ".", &save))
        comps[nc++] = comp;
    yt_node *tree = v;
    for (int i = nc - 1; i >= 0; i--) {
        yt_node *m = yt_new_map(v);
        yt_push(m, comps[i], 1, tree);
        tree = m;
    }
    /* the root owns the file name: hand it over from the parsed value */
    tree->owns_file = v->owns_file;
    if (tree != v) v->owns_file = 0;
    int rc = cfg_merge_tree(c, tree, src, err, errlen);
    yt_free(tree);
    return rc;
}

void automodel_usage(FILE *f) {
    fprintf(f, "  -c, --config FILE        the recipe (YAML; only what differs from the defaults)\n"
               "  --a.b.c VALUE, --a.b.c=VALUE\n"
               "                           override a key (YAML values: 3, 1e-4, true, none, [0.9, 0.95]); a bare\n"
               "                           --flag is true; ${VAR} and ${VAR,default} expand from the environment\n");
}

int automodel_from_args(int argc, char **argv, cfg **out, automodel_cli *opts, char *err, size_t errlen) {
    *out = NULL;
    FILE *notes = opts->notes;
    opts->config_file = NULL;
    opts->help = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            opts->help = 1;
        else if (!strcmp(a, "-c") || !strcmp(a, "--config")) {
            if (i + 1 >= argc) return errf(err, errlen, "%s needs a file name", a);
            opts->config_file = argv[++i];
        } else if (!strncmp(a, "--config=", 9))
            opts->config_file = a + 9;
    }
    cfg *c = automodel_defaults();
    if (opts->help) {
        *out = c;
        return 0;
    }
    if (opts->config_file && automodel_merge_file(c, opts->config_file, notes, err, errlen)) goto fail;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-c") || !strcmp(a, "--config")) {
            i++;
            continue;
        }
        if (!strncmp(a, "--config=", 9)) continue;
        if (strncmp(a, "--", 2) || !a[2]) {
            errf(err, errlen, "unexpected argument '%s': overrides are --a.b.c value or --a.b.c=value", a);
            goto fail;
        }
        const char *eq = strchr(a, '=');
        char key[512];
        const char *value;
        if (eq) {
            snprintf(key, sizeof key, "%.*s", (int)(eq - a - 2), a + 2);
            value = eq + 1;
        } else {
            snprintf(key, sizeof key, "%s", a + 2);
            /* the next argument is the value unless it is another option (a negative number is a value) */
            int next_is_opt =
                i + 1 >= argc ||
                (argv[i + 1][0] == '-' && (argv[i + 1][1] == '-' || argv[i + 1][1] == 'c' || argv[i + 1][1] == 'h'));
            value = next_is_opt ? NULL : argv[++i];
        }
        if (automodel_override(c, key, value, notes, err, errlen)) goto fail;
    }
    *out = c;
    return 0;
fail:
    cfg_free(c);
    return -1;
}

/* ---------------------------------------------------------------- checks and bindings */

int automodel_check(const cfg *c, int world, automodel_plan *plan, char *err, size_t errlen) {
    automodel_plan p = {0};
    p.tp = (int)cfg_int(c, "fsdp.tp_size");
    p.cp = (int)cfg_int(c, "fsdp.cp_size");
    p.pp = (int)cfg_int(c, "fsdp.pp_size");
    p.dp_replicate = (int)cfg_int(c, "fsdp.dp_replicate_size");
    if (p.tp < 1 || p.cp < 1 || p.pp < 1 || p.dp_replicate < 1)
        return errf(err, errlen, "fsdp: tp_size %d, cp_size %d, pp_size %d and dp_replicate_size %d must be >= 1 (%s)",
                    p.tp, p.cp, p.pp, p.dp_replicate, cfg_source(c, "fsdp.tp_size"));
    int mp = p.tp * p.cp * p.pp;
    if (cfg_is_null(c, "fsdp.dp_size")) {
        if (world % mp) return errf(err, errlen, "fsdp: %d processes do not divide into tp x cp x pp = %d", world, mp);
        p.dp = world / mp;
    } else {
        p.dp = (int)cfg_int(c, "fsdp.dp_size");
        if (p.dp < 1 || (long)p.dp * mp != world)
            return errf(err, errlen, "fsdp.dp_size %d (%s) x tp x cp x pp (%d) must equal the %d processes", p.dp,
                        cfg_source(c, "fsdp.dp_size"), mp, world);
    }
    if (p.dp % p.dp_replicate)
        return errf(err, errlen, "fsdp.dp_replicate_size %d (%s) must divide the data-parallel size %d", p.dp_replicate,
                    cfg_source(c, "fsdp.dp_replicate_size"), p.dp);
    int64_t gb = cfg_int(c, "step_scheduler.global_batch_size"), lb = cfg_int(c, "step_scheduler.local_batch_size");
    if (gb < 1 || lb < 1)
        return errf(err, errlen, "step_scheduler: global_batch_size %lld and local_batch_size %lld must be >= 1",
                    (long long)gb, (long long)lb);
    if (gb % (lb * p.dp))
        return errf(err, errlen,
                    "step_scheduler.global_batch_size %lld (%s) must be a multiple of local_batch_size %lld x "
                    "data-parallel size %d",
                    (long long)gb, cfg_source(c, "step_scheduler.global_batch_size"), (long long)lb, p.dp);
    p.grad_accum = (int)(gb / (lb * p.dp));
    const char *pos[] = {"step_scheduler.ckpt_every_steps", "step_scheduler.num_epochs", "step_scheduler.log_every"};
    for (int i = 0; i < 3; i++)
        if (cfg_int(c, pos[i]) < 1) return errf(err, errlen, "%s: must be >= 1 (%s)", pos[i], cfg_source(c, pos[i]));
    if (!cfg_is_null(c, "step_scheduler.max_steps") && cfg_int(c, "step_scheduler.max_steps") < 1)
        return errf(err, errlen, "step_scheduler.max_steps must be >= 1 or null (%s)",
                    cfg_source(c, "step_scheduler.max_steps"));
    objective_config o;
    adamw_config a;
    if (automodel_objective(c, &o, err, errlen) || automodel_adamw(c, &a, err, errlen)) return -1;
    if (strcmp(cfg_str(c, "model.mode"), "finetune") == 0 && cfg_is_null(c, "model.pretrained_model_name_or_path"))
        return errf(err, errlen, "model.mode finetune needs model.pretrained_model_name_or_path (%s)",
                    cfg_source(c, "model.mode"));
    if (plan) *plan = p;
    return 0;
}

int automodel_objective(const cfg *c, objective_config *o, char *err, size_t errlen) {
    objective_defaults_flow(o, !strcmp(cfg_str(c, "model.mode"), "pretrain"));
    timestep_sampling ts;
    if (!timestep_sampling_parse(cfg_str(c, "flow_matching.timestep_sampling"), &ts))
        return errf(err, errlen, "flow_matching.timestep_sampling: unknown '%s'",
                    cfg_str(c, "flow_matching.timestep_sampling"));
    o->sampling = ts;
    o->logit_mean = (float)cfg_float(c, "flow_matching.logit_mean");
    o->logit_std = (float)cfg_float(c, "flow_matching.logit_std");
    o->flow_shift = (float)cfg_float(c, "flow_matching.flow_shift");
    o->mix_uniform_ratio = (float)cfg_float(c, "flow_matching.mix_uniform_ratio");
    o->sigma_min = (float)cfg_float(c, "flow_matching.sigma_min");
    o->sigma_max = (float)cfg_float(c, "flow_matching.sigma_max");
    o->num_train_timesteps = (int)cfg_int(c, "flow_matching.num_train_timesteps");
    o->use_loss_weighting = cfg_bool(c, "flow_matching.use_loss_weighting");
    o->cond_dropout_prob = (float)cfg_float(c, "flow_matching.cfg_dropout_prob");
    if (!(o->sigma_min >= 0 && o->sigma_min <= o->sigma_max && o->sigma_max <= 1))
        return errf(err, errlen, "flow_matching: need 0 <= sigma_min (%g) <= sigma_max (%g) <= 1 (%s)", o->sigma_min,
                    o->sigma_max, cfg_source(c, "flow_matching.sigma_max"));
    if (!(o->logit_std > 0) || !(o->flow_shift > 0) || o->num_train_timesteps < 1)
        return errf(err, errlen, "flow_matching: logit_std, flow_shift and num_train_timesteps must be > 0");
    if (!(o->mix_uniform_ratio >= 0 && o->mix_uniform_ratio <= 1) ||
        !(o->cond_dropout_prob >= 0 && o->cond_dropout_prob <= 1))
        return errf(err, errlen, "flow_matching: mix_uniform_ratio and cfg_dropout_prob must lie in [0, 1]");
    return 0;
}

int automodel_adamw(const cfg *c, adamw_config *a, char *err, size_t errlen) {
    adamw_config_defaults(a);
    a->lr = (float)cfg_float(c, "optimizer.lr");
    a->weight_decay = (float)cfg_float(c, "optimizer.weight_decay");
    a->eps = (float)cfg_float(c, "optimizer.eps");
    a->clip_grad = (float)cfg_float(c, "clip_grad_norm.max_norm");
    if (cfg_len(c, "optimizer.betas") != 2)
        return errf(err, errlen, "optimizer.betas: expected a pair [beta1, beta2], got %d values (%s)",
                    cfg_len(c, "optimizer.betas"), cfg_source(c, "optimizer.betas"));
    for (int i = 0; i < 2; i++) {
        int k = cfg_kind_of(c, i ? "optimizer.betas.1" : "optimizer.betas.0");
        if (k != CFG_FLOAT && k != CFG_INT)
            return errf(err, errlen, "optimizer.betas: expected numbers (%s)", cfg_source(c, "optimizer.betas"));
    }
    a->beta1 = (float)cfg_list_float(c, "optimizer.betas", 0);
    a->beta2 = (float)cfg_list_float(c, "optimizer.betas", 1);
    if (!(a->beta1 >= 0 && a->beta1 < 1 && a->beta2 >= 0 && a->beta2 < 1))
        return errf(err, errlen, "optimizer.betas: each must lie in [0, 1), got [%g, %g] (%s)", a->beta1, a->beta2,
                    cfg_source(c, "optimizer.betas"));
    if (!(a->lr > 0) || !(a->weight_decay >= 0) || !(a->eps > 0))
        return errf(err, errlen, "optimizer: lr (%g) and eps must be > 0, weight_decay >= 0 (%s)", a->lr,
                    cfg_source(c, "optimizer.lr"));
    return 0;
}

int automodel_save_consolidated(const cfg *c) {
    const char *s = cfg_str(c, "checkpoint.save_consolidated");
    if (!strcmp(s, "final")) return 1;
    if (!strcmp(s, "every") || !strcmp(s, "true")) return 2;
    return 0;
}

int automodel_peft_enabled(const cfg *c) {
    return cfg_len(c, "peft.target_modules") > 0 || cfg_bool(c, "peft.match_all_linear");
}
