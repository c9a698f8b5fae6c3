/* dfm finetune: the Automodel paradigm's entry. One YAML recipe with NeMo Automodel's sections (defaults in C,
 * include/dfm/automodel.h) is resolved against the pretrained model and the pre-encoded data, then mapped onto
 * the shared training job (dfm_pretrain): the same model, loss, data parallelism and checkpoint writer as the
 * Megatron paradigm, with checkpoints in Automodel's layout (checkpoint.layout: automodel): checkpoint_dir/
 * epoch_E_step_S/ with model/, optim/, dataloader/, rng/, config.yaml (this recipe) and model/consolidated/ as
 * save_consolidated asks, a LATEST symlink, max_recent_checkpoints kept. Batches come from Automodel's bucket
 * sampler (include/dfm/bucket_sampler.h: one latent shape per batch, so folders of several resolution buckets
 * train; data.dataloader.shuffle and drop_last as Automodel). peft (LoRA, include/dfm/lora.h) maps onto the job's
 * peft.* keys; fsdp.dp_replicate_size onto hybrid sharding, fsdp.tp_size / cp_size / pp_size onto tensor, context
 * and pipeline parallelism. What is not built is refused or stated, never silently ignored. */
#include "cli/cli_common.h"
#include "dfm/automodel.h"
#include "dfm/bucket_sampler.h"
#include "dfm/checkpoint.h"
#include "dfm/common.h"
#include "dfm/data.h"
#include "dfm/diffusers.h"
#include "dfm/dist.h"
#include "dfm/hf_resolve.h"
#include "dfm/pretrain.h"
#include "dfm/video.h"
#include "dfm/wan.h"

#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Set a dotted key in a nested JSON object (the Megatron tree is merged from it: JSON is YAML). */
static void put(json_t *root, const char *key, json_t *v) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", key);
    json_t *o = root;
    char *s = buf, *dot;
    while ((dot = strchr(s, '.'))) {
        *dot = 0;
        json_t *next = json_object_get(o, s);
        if (!next) json_object_set_new(o, s, next = json_object());
        o = next;
        s = dot + 1;
    }
    json_object_set_new(o, s, v);
}

static json_t *num_or_null(const cfg *a, const char *key, int integer) {
    if (cfg_is_null(a, key)) return json_null();
    return integer ? json_integer((json_int_t)cfg_int(a, key)) : json_real(cfg_float(a, key));
}

static int has_safetensors(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    int found = 0;
    while (d && !found && (e = readdir(d))) {
        size_t n = strlen(e->d_name);
        found = n > 12 && !strcmp(e->d_name + n - 12, ".safetensors");
    }
    if (d) closedir(d);
    return found;
}

static int is_file(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* The model's config: from the diffusers folder's config.json, or a Megatron-paradigm checkpoint's metadata. */
static void pretrained_config(const pretrained_source *src, wan_config *wc) {
    char err[1024], path[4200];
    char *text = NULL;
    if (src->kind == PRETRAINED_MEGATRON) {
        text = ckpt_meta(src->path, "dfm_wan_config");
        if (!text)
            dfm_die("model.pretrained_model_name_or_path: '%s' is not a Wan checkpoint (no dfm_wan_config)", src->path);
    } else {
        snprintf(path, sizeof path, "%s/config.json", src->model_dir);
        text = read_file_err(path, err, sizeof err);
        if (!text) dfm_die("model.pretrained_model_name_or_path: %s", err);
    }
    if (wan_config_from_json(wc, text, err, sizeof err) != 0)
        dfm_die("model.pretrained_model_name_or_path '%s': %s (dfm finetune trains Wan 2.1 T2V models)", src->path,
                err);
    free(text);
    if (!wan_config_check(wc, err, sizeof err)) dfm_die("model.pretrained_model_name_or_path '%s': %s", src->path, err);
}

static void usage(FILE *f) {
    fprintf(f, "usage: dfm finetune -c recipe.yaml [--a.b.c VALUE | --a.b.c=VALUE ...]\n\n"
               "The Automodel paradigm: fine-tunes (model.mode: finetune) or pretrains (pretrain) a Wan 2.1 model\n"
               "from model.pretrained_model_name_or_path (a diffusers folder, a hub id in the local Hugging Face\n"
               "cache, or a dfm pretrain checkpoint) on pre-encoded samples in data.dataloader.meta_folder (.meta\n"
               "files or dfm's .safetensors samples). Recipes: recipes/automodel/*.yaml. Keys: docs/CONFIG.md.\n\n");
    automodel_usage(f);
}

int dfm_finetune_main(int argc, char **argv) {
    char err[2048];
    automodel_cli opts = {0};
    cfg *a = NULL;
    int lead = dist_get()->rank == 0;
    opts.notes = lead ? stderr : NULL;
    if (automodel_from_args(argc, argv, &a, &opts, err, sizeof err) != 0) {
        fprintf(stderr, "dfm finetune: error: %s\n", err);
        return 1;
    }
    if (opts.help) {
        usage(stdout);
        cfg_free(a);
        return 0;
    }
    automodel_plan plan;
    if (automodel_check(a, dist_get()->size, &plan, err, sizeof err) != 0) dfm_die("%s", err);
    if (automodel_peft_enabled(a) && strcmp(cfg_str(a, "model.mode"), "finetune"))
        dfm_die("peft: LoRA adapts pretrained weights; it needs model.mode: finetune (not %s)",
                cfg_str(a, "model.mode"));
    if (cfg_bool(a, "fsdp.cpu_offload"))
        dfm_die("fsdp.cpu_offload = true: dfm trains on the CPU, in host memory already; there is no device memory "
                "to offload from. Set it to false");
    int consolidated = automodel_save_consolidated(a);

    /* the model */
    const char *name = cfg_str(a, "model.pretrained_model_name_or_path");
    if (!name) dfm_die("model.pretrained_model_name_or_path: needed (the model, or its config for mode pretrain)");
    pretrained_source src;
    if (pretrained_resolve(name, cfg_str(a, "model.pipeline_spec.subfolder"), &src, err, sizeof err) != 0)
        dfm_die("model.pretrained_model_name_or_path: %s", err);
    wan_config wc;
    pretrained_config(&src, &wc);
    if (wc.patch_h != wc.patch_w)
        dfm_die("'%s': non-square patches (%d x %d) are not built", src.path, wc.patch_h, wc.patch_w);
    int finetune = !strcmp(cfg_str(a, "model.mode"), "finetune");

    /* the data: its shape sizes the model's inputs */
    const char *meta = cfg_str(a, "data.dataloader.meta_folder");
    if (!meta) dfm_die("data.dataloader.meta_folder: needed (pre-encoded samples)");
    const char *dtype = has_safetensors(meta) ? "video_folder" : "video_meta";
    video_dataset vd;
    int rc = !strcmp(dtype, "video_folder") ? video_dataset_folder(&vd, meta, 0, err, sizeof err)
                                            : video_dataset_meta(&vd, meta, 0, err, sizeof err);
    if (rc != 0) dfm_die("data.dataloader.meta_folder: %s", err);
    int n = vd.n, C = vd.c, T = vd.t, H = vd.h, W = vd.w, L = vd.text_len, D = vd.text_dim;
    int nshapes = video_dataset_nshapes(&vd);
    int64_t *shapes = xmalloc((size_t)n * 4 * sizeof *shapes);
    for (int i = 0; i < n; i++) {
        int sh[4];
        video_dataset_sample(&vd, i, sh);
        for (int d = 0; d < 4; d++) shapes[4 * (size_t)i + d] = sh[d];
    }
    video_dataset_free(&vd);
    /* one shape: it is the model's input (model.image_size is square); several: each batch's own, any H x W */
    if (nshapes == 1 && H != W) dfm_die("'%s': latents of %d x %d; non-square latents are not built yet", meta, H, W);
    if (C != wc.in_channels || D != wc.text_dim)
        dfm_die("'%s' holds latents with %d channels and text of width %d; the model takes %d and %d", meta, C, D,
                wc.in_channels, wc.text_dim);

    /* the schedule: max_steps, else num_epochs over the training samples */
    int gbs = (int)cfg_int(a, "step_scheduler.global_batch_size");
    int val_every =
        cfg_is_null(a, "step_scheduler.val_every_steps") ? 0 : (int)cfg_int(a, "step_scheduler.val_every_steps");
    int mbs = (int)cfg_int(a, "step_scheduler.local_batch_size");
    int n_val = val_every > 0 ? (n / 10 > mbs ? n / 10 : mbs) : 0;
    if (n_val >= n)
        dfm_die("'%s' holds %d samples: too few to hold %d out for step_scheduler.val_every_steps", meta, n, n_val);
    long steps = cfg_is_null(a, "step_scheduler.max_steps") ? 0 : (long)cfg_int(a, "step_scheduler.max_steps");
    int shuffle = cfg_bool(a, "data.dataloader.shuffle"), drop_last = cfg_bool(a, "data.dataloader.drop_last");
    if (!steps) { /* an epoch: the steps the bucket sampler makes of the training samples (pretrain's split) */
        if (mbs < 1 || gbs < mbs || gbs % mbs)
            dfm_die("step_scheduler.global_batch_size %d is not a multiple of local_batch_size %d", gbs, mbs);
        int *train_idx, *val_idx, n_train;
        split_indices(n, n_val, (uint64_t)cfg_int(a, "seed"), &train_idx, &n_train, &val_idx);
        int64_t *ts = xmalloc((size_t)n_train * 4 * sizeof *ts);
        for (int i = 0; i < n_train; i++) memcpy(ts + 4 * (size_t)i, shapes + 4 * (size_t)train_idx[i], 4 * sizeof *ts);
        bucket_sampler bs;
        if (bucket_sampler_init(&bs, n_train, ts, 4, mbs, 0, gbs / mbs, (uint64_t)cfg_int(a, "seed"), shuffle,
                                drop_last, err, sizeof err) != 0)
            dfm_die("data.dataloader.meta_folder '%s': %s", meta, err);
        steps = (long)cfg_int(a, "step_scheduler.num_epochs") * bucket_sampler_batches_per_epoch(&bs);
        bucket_sampler_free(&bs);
        free(ts), free(train_idx), free(val_idx);
    }
    free(shapes);

    /* the Megatron tree the shared job reads */
    json_t *m = json_object();
    put(m, "rng.seed", json_integer((json_int_t)cfg_int(a, "seed")));
    put(m, "model.kind", json_string("wan"));
    put(m, "model.num_layers", json_integer(wc.num_layers));
    put(m, "model.hidden_size", json_integer(wc.num_heads * wc.head_dim));
    put(m, "model.num_attention_heads", json_integer(wc.num_heads));
    put(m, "model.ffn_hidden_size", json_integer(wc.ffn_dim));
    put(m, "model.in_channels", json_integer(wc.in_channels));
    put(m, "model.out_channels", json_integer(wc.out_channels));
    put(m, "model.text_dim", json_integer(wc.text_dim));
    put(m, "model.freq_dim", json_integer(wc.freq_dim));
    put(m, "model.patch_size", json_integer(wc.patch_h));
    put(m, "model.patch_size_t", json_integer(wc.patch_t));
    put(m, "model.norm_eps", json_real(wc.eps));
    put(m, "model.num_frames", json_integer(T));
    put(m, "model.image_size", json_integer(H));
    put(m, "model.text_len", json_integer(L));
    put(m, "train.train_iters", json_integer(steps));
    put(m, "train.global_batch_size", json_integer(gbs));
    put(m, "train.micro_batch_size", json_integer(mbs));
    put(m, "train.eval_interval", json_integer(val_every > 0 ? val_every : 1 << 30));
    put(m, "train.eval_iters", json_integer(val_every > 0 ? (n_val + mbs - 1) / mbs : 0));
    put(m, "train.eval_samples", json_integer(val_every > 0 ? (json_int_t)cfg_int(a, "validation.num_samples") : 0));
    put(m, "train.eval_sample_steps", json_integer((json_int_t)cfg_int(a, "validation.sampling_steps")));
    if (val_every <= 0 && cfg_int(a, "validation.num_samples") > 0)
        dfm_die("validation.num_samples = %lld: samples are generated at validation; set "
                "step_scheduler.val_every_steps",
                (long long)cfg_int(a, "validation.num_samples"));
    put(m, "logger.log_interval", json_integer((json_int_t)cfg_int(a, "step_scheduler.log_every")));
    /* activation checkpointing: every block its own checkpoint (Megatron's full / uniform / 1) */
    int ckpt_acts = cfg_bool(a, "fsdp.activation_checkpointing");
    put(m, "model.recompute_granularity", ckpt_acts ? json_string("full") : json_null());
    put(m, "model.recompute_method", ckpt_acts ? json_string("uniform") : json_null());
    put(m, "model.recompute_num_layers", ckpt_acts ? json_integer(1) : json_null());
    /* Automodel shards parameters, gradients and optimizer state over the data-parallel ranks (FSDP; over one rank
     * too, so its checkpoints always hold model/ and optim/ shards); with fsdp.dp_replicate_size > 1 over each of
     * that many replica groups (HSDP), Megatron's distributed-optimizer instances */
    put(m, "ddp.data_parallel_sharding_strategy", json_string("optim_grads_params"));
    put(m, "ddp.num_distributed_optimizer_instances", json_integer(plan.dp_replicate));
    put(m, "model.pipeline_model_parallel_size", json_integer(plan.pp)); /* fsdp.pp_size: the same 1F1B pipeline */
    /* fsdp.tp_size: Megatron's tensor parallelism (heads and FFN columns split over tp_size ranks) */
    put(m, "model.tensor_model_parallel_size", json_integer(plan.tp));
    /* fsdp.sequence_parallel: Megatron's sequence parallelism over the TP group (the job refuses it without TP) */
    put(m, "model.sequence_parallel", json_boolean(cfg_bool(a, "fsdp.sequence_parallel")));
    /* fsdp.cp_size: context parallelism (ring attention; the sequence padded where cp_size does not divide it) */
    put(m, "model.context_parallel_size", json_integer(plan.cp));
    put(m, "dataset.type", json_string(dtype));
    put(m, "dataset.path", json_string(meta));
    put(m, "dataset.max_samples", json_null());
    put(m, "dataset.val_samples", json_integer(n_val));
    put(m, "dataset.num_workers", json_integer((json_int_t)cfg_int(a, "data.dataloader.num_workers")));
    /* Automodel's SequentialBucketSampler for every folder, one shape or several */
    put(m, "dataset.bucket_sampler", json_string("always"));
    put(m, "dataset.shuffle", json_boolean(shuffle));
    put(m, "dataset.drop_last", json_boolean(drop_last));
    put(m, "optimizer.lr", num_or_null(a, "optimizer.lr", 0));
    put(m, "optimizer.weight_decay", num_or_null(a, "optimizer.weight_decay", 0));
    put(m, "optimizer.adam_beta1", json_real(cfg_list_float(a, "optimizer.betas", 0)));
    put(m, "optimizer.adam_beta2", json_real(cfg_list_float(a, "optimizer.betas", 1)));
    put(m, "optimizer.adam_eps", num_or_null(a, "optimizer.eps", 0));
    put(m, "optimizer.clip_grad",
        cfg_is_null(a, "clip_grad_norm.max_norm") ? json_real(0) : num_or_null(a, "clip_grad_norm.max_norm", 0));
    put(m, "optimizer.min_lr", num_or_null(a, "lr_scheduler.min_lr", 0));
    put(m, "scheduler.lr_decay_style", json_string(cfg_str(a, "lr_scheduler.lr_decay_style")));
    put(m, "scheduler.lr_warmup_iters", num_or_null(a, "lr_scheduler.lr_warmup_steps", 1));
    put(m, "scheduler.lr_decay_iters", num_or_null(a, "lr_scheduler.lr_decay_steps", 1));
    put(m, "diffusion.objective", json_string("flow_matching"));
    static const char *fm[][2] = {{"timestep_sampling", "s"}, {"logit_mean", "f"},          {"logit_std", "f"},
                                  {"flow_shift", "f"},        {"mix_uniform_ratio", "f"},   {"sigma_min", "f"},
                                  {"sigma_max", "f"},         {"num_train_timesteps", "i"}, {"use_loss_weighting", "b"},
                                  {"cfg_dropout_prob", "f"}};
    for (size_t i = 0; i < sizeof fm / sizeof fm[0]; i++) {
        char from[96], to[96];
        snprintf(from, sizeof from, "flow_matching.%s", fm[i][0]);
        snprintf(to, sizeof to, "diffusion.%s", fm[i][0]);
        json_t *v = fm[i][1][0] == 's'   ? json_string(cfg_str(a, from))
                    : fm[i][1][0] == 'b' ? json_boolean(cfg_bool(a, from))
                                         : num_or_null(a, from, fm[i][1][0] == 'i');
        put(m, to, v);
    }
    /* LoRA: the same keys in the shared job's tree (lora.h) */
    put(m, "peft.dim", json_integer((json_int_t)cfg_int(a, "peft.dim")));
    put(m, "peft.alpha", json_real(cfg_float(a, "peft.alpha")));
    put(m, "peft.dropout", json_real(cfg_float(a, "peft.dropout")));
    put(m, "peft.match_all_linear", json_boolean(cfg_bool(a, "peft.match_all_linear")));
    put(m, "peft.merged_backward", json_boolean(cfg_bool(a, "peft.merged_backward")));
    static const char *lists[] = {"peft.target_modules", "peft.exclude_modules"};
    for (int k = 0; k < 2; k++) {
        json_t *l = json_array();
        for (int i = 0; i < cfg_len(a, lists[k]); i++)
            json_array_append_new(l, json_string(cfg_list_str(a, lists[k], i)));
        put(m, lists[k], l);
    }
    /* checkpoints: Automodel's layout in checkpoint_dir (epoch_E_step_S/ + LATEST), written by the shared job */
    const char *ckdir = cfg_str(a, "checkpoint.checkpoint_dir");
    if (!ckdir) dfm_die("checkpoint.checkpoint_dir: needed (checkpoints, metrics and the consolidated model go there)");
    char recipe_yaml[4200];
    snprintf(recipe_yaml, sizeof recipe_yaml, "%s/config.yaml", ckdir);
    put(m, "logger.output_dir", json_string(ckdir));
    put(m, "checkpoint.save", cfg_bool(a, "checkpoint.enabled") ? json_string(ckdir) : json_null());
    put(m, "checkpoint.layout", json_string("automodel"));
    put(m, "checkpoint.consolidated", json_string(consolidated == 2 ? "every" : consolidated == 1 ? "final" : "none"));
    put(m, "checkpoint.config_yaml", json_string(recipe_yaml));
    put(m, "checkpoint.save_interval", json_integer((json_int_t)cfg_int(a, "step_scheduler.ckpt_every_steps")));
    put(m, "checkpoint.most_recent_k",
        cfg_is_null(a, "checkpoint.max_recent_checkpoints")
            ? json_integer(0)
            : json_integer((json_int_t)cfg_int(a, "checkpoint.max_recent_checkpoints")));
    char load[4200] = "";
    const char *restore = cfg_str(a, "checkpoint.restore_from");
    if (!restore || !strcmp(restore, "LATEST")) { /* the newest checkpoint of this run, if any */
        char latest[4200], tracker[4200];
        struct stat sb;
        snprintf(latest, sizeof latest, "%s/LATEST", ckdir);
        snprintf(tracker, sizeof tracker, "%s/latest_checkpointed_iteration.txt", ckdir); /* an older dfm's layout */
        if (lstat(latest, &sb) == 0 || is_file(tracker))
            snprintf(load, sizeof load, "%s", ckdir);
        else if (restore)
            dfm_die("checkpoint.restore_from: LATEST, but '%s' holds no LATEST", ckdir);
    } else if (strchr(restore, '/'))
        snprintf(load, sizeof load, "%s", restore);
    else
        snprintf(load, sizeof load, "%s/%s", ckdir, restore); /* a step folder's name */
    put(m, "checkpoint.load", load[0] ? json_string(load) : json_null());
    put(m, "checkpoint.pretrained_checkpoint",
        finetune ? json_string(src.kind == PRETRAINED_MEGATRON ? src.path : src.model_dir) : json_null());

    cfg *c = cfg_recipe("wan_tiny", err, sizeof err);
    char *text = json_dumps(m, JSON_COMPACT);
    char source[600];
    snprintf(source, sizeof source, "automodel recipe %s", opts.config_file ? opts.config_file : "(defaults)");
    if (!c || cfg_merge_string(c, text, source, err, sizeof err) != 0) dfm_die("dfm finetune: %s", err);
    free(text);
    json_decref(m);
    if (lead) {
        fprintf(stderr, "finetune: %s %s (%s), %s on %d pre-encoded samples [%d, %d, %d, %d]%s from %s, %ld steps\n",
                finetune ? "fine-tuning" : "pretraining", src.path, pretrained_kind_name(src.kind),
                finetune ? "weights loaded" : "weights initialised from its config", n, C, T, H, W,
                nshapes > 1 ? " (the largest of several latent shapes: resolution buckets)" : "", meta, steps);
        xmkdir_p(ckdir);
        char path[4200];
        snprintf(path, sizeof path, "%s/config.yaml", ckdir);
        cfg_write_yaml(a, path); /* the Automodel recipe as resolved (copied into every step folder) */
    }
    rc = dfm_pretrain(c);
    cfg_free(c);

    cfg_free(a);
    return rc;
}
