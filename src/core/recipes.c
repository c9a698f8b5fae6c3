/* The built-in recipes: complete config trees (the schema of every valid key) in Megatron-Bridge's sections
 * plus DFM's diffusion keys. dit_fashion_mnist is the default; the dit_* recipes are the DiT paper's sizes. */
#include "dfm/config.h"
#include "dfm/common.h"

#include <stdio.h>
#include <string.h>

/* Every key, with the defaults of dit_fashion_mnist. */
static cfg *recipe_base(const char *name) {
    cfg *c = cfg_new(name);
    char buf[256];

    /* model: Megatron's shape keys plus the DiT and Wan ones */
    cfg_def_enum(c, "model.kind", 0, "dit", "dit|wan", "DiT (class-conditional images) or Wan 2.1 (text-to-video)");
    cfg_def(c, "model.num_layers", CFG_INT, "6", "transformer blocks");
    cfg_def(c, "model.hidden_size", CFG_INT, "128", "model width");
    cfg_def(c, "model.num_attention_heads", CFG_INT, "4", "attention heads (hidden_size must divide by it)");
    cfg_def(c, "model.ffn_hidden_size", CFG_INT, "512", "MLP width (4 x hidden_size in DiT)");
    cfg_def(c, "model.patch_size", CFG_INT, "2", "image patch side");
    cfg_def(c, "model.in_channels", CFG_INT, "1", "input channels (1 for Fashion-MNIST, 4 for VAE latents)");
    cfg_def(c, "model.out_channels", CFG_INT, "1", "output channels");
    cfg_def(c, "model.image_size", CFG_INT, "28", "input height = width");
    cfg_def(c, "model.num_classes", CFG_INT, "10", "class labels (one more row is the null class for CFG)");
    cfg_def(c, "model.freq_dim", CFG_INT, "256", "timestep sinusoid width");
    cfg_def(c, "model.norm_eps", CFG_FLOAT, "1e-6", "LayerNorm epsilon");
    cfg_def(c, "model.num_frames", CFG_INT, "8", "Wan: latent frames per sample");
    cfg_def(c, "model.patch_size_t", CFG_INT, "1", "Wan: patch length along time (diffusers patch_size[0])");
    cfg_def(c, "model.text_dim", CFG_INT, "32", "Wan: width of the text encoder's embeddings (4096 for UMT5)");
    cfg_def(c, "model.text_len", CFG_INT, "8", "Wan: text tokens per sample (padded length)");
    cfg_def(c, "model.tensor_model_parallel_size", CFG_INT, "1", "tensor-parallel ranks");
    cfg_def(c, "model.context_parallel_size", CFG_INT, "1", "context-parallel ranks");
    cfg_def_enum(c, "model.cp_comm_type", 0, "p2p", "p2p|a2a",
                 "context-parallel attention: p2p (ring, key/value chunks around the CP ranks) or a2a (all-to-all "
                 "over heads)");
    cfg_def(c, "model.pipeline_model_parallel_size", CFG_INT, "1", "pipeline stages");
    cfg_def(c, "model.virtual_pipeline_model_parallel_size", CFG_INT, NULL,
            "model chunks per pipeline stage (V > 1: interleaved 1F1B; null: plain 1F1B)");
    cfg_def(c, "model.num_layers_in_first_pipeline_stage", CFG_INT, NULL,
            "blocks of the first pipeline stage (the other stages split the rest evenly; null: all even)");
    cfg_def(c, "model.num_layers_in_last_pipeline_stage", CFG_INT, NULL,
            "blocks of the last pipeline stage (the other stages split the rest evenly; null: all even)");
    cfg_def(c, "model.pipeline_model_parallel_layout", CFG_STR, NULL,
            "Megatron's layout string, e.g. \"Et*3|(tt|)*2,t|tL\": P x V stages split by '|', E embedders, t a block, "
            "L head and loss (null: even, or the first/last keys)");
    cfg_def(c, "model.sequence_parallel", CFG_BOOL, "false", "shard norms/dropout over the sequence with TP");
    cfg_def_enum(c, "model.recompute_granularity", 1, NULL, "full|selective", "activation recomputation");
    cfg_def_enum(c, "model.recompute_method", 1, NULL, "uniform|block", "how recomputed layers are chosen");
    cfg_def(c, "model.recompute_num_layers", CFG_INT, NULL, "layers per recompute unit");

    /* train */
    cfg_def(c, "train.train_iters", CFG_INT, "1000", "optimizer steps");
    cfg_def(c, "train.global_batch_size", CFG_INT, "32", "samples per optimizer step");
    cfg_def(c, "train.micro_batch_size", CFG_INT, "32", "samples per forward/backward (gradient accumulation)");
    cfg_def(c, "train.eval_interval", CFG_INT, "500", "steps between validation losses");
    cfg_def(c, "train.eval_iters", CFG_INT, "4", "validation micro-batches per evaluation");
    cfg_def(c, "train.eval_samples", CFG_INT, "0",
            "at each validation, generate this many samples from held-out conditions into "
            "<output_dir>/val_samples/step_NNNNNNN/ (0 = none)");
    cfg_def(c, "train.eval_sample_steps", CFG_INT, "20", "sampling steps of those samples (Euler / Heun, no guidance)");
    cfg_def(c, "train.ema_decay", CFG_FLOAT, "0.995", "EMA decay of the weights used for sampling");
    cfg_def_enum(c, "train.device", 0, "cpu", "cpu", "where to train");
    cfg_def_enum(c, "train.on_nan", 0, "stop", "stop|skip_step",
                 "a step whose loss or gradient is NaN/Inf: end the run, or skip its update");
    cfg_def(c, "train.loss_spike_factor", CFG_FLOAT, "10.0",
            "report a loss above this factor x the recent mean (0 = off)");

    /* data parallelism (mpirun -np N: DP = N / (TP x CP x PP)) */
    cfg_def(c, "ddp.use_distributed_optimizer", CFG_BOOL, "false",
            "shard the optimizer state over data-parallel ranks (= data_parallel_sharding_strategy optim)");
    cfg_def_enum(c, "ddp.data_parallel_sharding_strategy", 0, "no_shard",
                 "no_shard|optim|optim_grads|optim_grads_params",
                 "what is sharded over data-parallel ranks besides the optimizer");
    cfg_def(c, "ddp.num_distributed_optimizer_instances", CFG_INT, "1",
            "hybrid sharding (HSDP): this many replica groups, each sharding over DP / N ranks, gradients "
            "all-reduced across them");
    cfg_def(c, "ddp.overlap_grad_reduce", CFG_BOOL, "true", "reduce gradient buckets during the backward");
    cfg_def(c, "ddp.overlap_param_gather", CFG_BOOL, "true", "gather the next segment's parameters during compute");
    cfg_def(c, "dist.timeout_s", CFG_FLOAT, "600", "seconds a rank waits for the others before ending the job");

    /* optimizer */
    cfg_def_enum(c, "optimizer.optimizer", 0, "adam", "adam", "optimizer (Adam with decoupled weight decay)");
    cfg_def(c, "optimizer.lr", CFG_FLOAT, "1e-3", "peak learning rate");
    cfg_def(c, "optimizer.min_lr", CFG_FLOAT, "1e-5", "learning rate at the end of the decay");
    cfg_def(c, "optimizer.weight_decay", CFG_FLOAT, "0.01", "decoupled weight decay");
    cfg_def(c, "optimizer.adam_beta1", CFG_FLOAT, "0.9", "Adam beta1");
    cfg_def(c, "optimizer.adam_beta2", CFG_FLOAT, "0.999", "Adam beta2");
    cfg_def(c, "optimizer.adam_eps", CFG_FLOAT, "1e-8", "Adam epsilon");
    cfg_def(c, "optimizer.clip_grad", CFG_FLOAT, "1.0", "gradient-norm clip (0 = off)");

    /* scheduler */
    cfg_def_enum(c, "scheduler.lr_decay_style", 0, "cosine", "cosine|linear|constant", "decay after warmup");
    cfg_def(c, "scheduler.lr_warmup_iters", CFG_INT, "100", "linear warmup steps");
    cfg_def(c, "scheduler.lr_decay_iters", CFG_INT, NULL, "steps of warmup + decay (null = train.train_iters)");

    /* checkpoint: Megatron's iter_%07d/ layout */
    snprintf(buf, sizeof buf, "runs/%s/checkpoints", name);
    cfg_def(c, "checkpoint.save", CFG_STR | CFG_NULLABLE, buf, "folder of iter_%07d/ checkpoints (null = none)");
    cfg_def(c, "checkpoint.load", CFG_STR, NULL, "folder to resume from (its latest checkpoint)");
    cfg_def(c, "checkpoint.pretrained_checkpoint", CFG_STR, NULL,
            "initial weights when not resuming: a dfm checkpoint (iter_N/ or its root) or a diffusers folder");
    cfg_def(c, "checkpoint.save_interval", CFG_INT, "1000", "steps between checkpoints");
    cfg_def(c, "checkpoint.load_optim", CFG_BOOL, "true", "restore the optimizer state on resume");
    cfg_def(c, "checkpoint.most_recent_k", CFG_INT, "2", "checkpoints kept (the oldest are removed)");
    cfg_def_enum(c, "checkpoint.layout", 0, "megatron", "megatron|automodel",
                 "megatron: iter_%07d/ + latest_checkpointed_iteration.txt; automodel (dfm finetune): "
                 "epoch_E_step_S/ with model/, optim/, dataloader/, rng/, config.yaml + a LATEST symlink");
    cfg_def_enum(c, "checkpoint.consolidated", 0, "none", "none|final|every",
                 "automodel layout: a diffusers model/consolidated/ folder in no, the last or every step folder");
    cfg_def(c, "checkpoint.config_yaml", CFG_STR, NULL,
            "automodel layout: a file copied into every step folder as config.yaml (null: this config)");

    /* LoRA (include/dfm/lora.h): on when target_modules is non-empty or match_all_linear */
    cfg_def(c, "peft.dim", CFG_INT, "8", "LoRA rank r");
    cfg_def(c, "peft.alpha", CFG_FLOAT, "32", "LoRA alpha (the adapter's scale is alpha / r)");
    cfg_def(c, "peft.dropout", CFG_FLOAT, "0.0", "dropout on the adapter input (only 0 is built)");
    cfg_def(c, "peft.use_rslora", CFG_BOOL, "false", "rank-stabilised scale alpha / sqrt(r)");
    cfg_def(c, "peft.target_modules", CFG_LIST, "[]",
            "diffusers module names or globs to adapt, e.g. ['*.to_q', '*.to_v'] or ['to_q', 'to_v']");
    cfg_def(c, "peft.exclude_modules", CFG_LIST, "[]", "module names or globs never adapted");
    cfg_def(c, "peft.match_all_linear", CFG_BOOL, "false", "adapt every linear layer");
    cfg_def(c, "peft.merged_backward", CFG_BOOL, "false",
            "adapter gradients through the model's full weight gradients (the slower way; default: from the "
            "activations, no weight gradient formed)");

    /* dataset */
    cfg_def_enum(c, "dataset.type", 0, "fashion_mnist",
                 "fashion_mnist|image_folder|energon|video_clips|video_folder|video_meta",
                 "data source (video_*: Wan; video_clips = Fashion-MNIST garments moving, captioned; video_meta = "
                 "DFM's .meta cache)");
    cfg_def(c, "dataset.path", CFG_STR, "/usr/share/datasets/fashion-mnist", "dataset folder");
    cfg_def(c, "dataset.num_workers", CFG_INT, "2", "loader threads");
    cfg_def(c, "dataset.val_samples", CFG_INT, "1000", "samples held out for validation");
    cfg_def(c, "dataset.max_samples", CFG_INT, NULL, "video_clips: clips made (null = one per Fashion-MNIST image)");
    cfg_def(c, "dataset.image_size", CFG_INT, NULL, "resize to this side (null = model.image_size)");
    cfg_def(c, "dataset.channels", CFG_INT, NULL, "convert to this many channels (null = model.in_channels)");
    cfg_def_enum(c, "dataset.bucket_sampler", 0, "auto", "auto|always|never",
                 "video_folder/video_meta: bucketed batches (one latent shape per batch, Automodel's sampler); auto = "
                 "when the folder holds several shapes");
    cfg_def(c, "dataset.shuffle", CFG_BOOL, "true", "bucketed batches: reshuffle buckets and samples every epoch");
    cfg_def(c, "dataset.drop_last", CFG_BOOL, "true", "bucketed batches: drop each bucket's short last batch");

    /* logger */
    cfg_def(c, "logger.log_interval", CFG_INT, "50", "steps between log lines");
    cfg_def(c, "logger.peak_tflops", CFG_FLOAT, NULL,
            "peak TFLOP/s of one process, for MFU in the log (null: from the CPU, see the start-up line; 0: no MFU)");
    snprintf(buf, sizeof buf, "runs/%s", name);
    cfg_def(c, "logger.output_dir", CFG_STR, buf, "run folder: metrics.jsonl, loss curve, run_config.yaml");

    cfg_def(c, "rng.seed", CFG_INT, "1234", "seed of every random draw (init, data order, noise)");

    /* diffusion: REFERENCE.md §2 */
    cfg_def_enum(c, "diffusion.objective", 0, "flow_matching", "flow_matching|edm", "training objective");
    cfg_def_enum(c, "diffusion.timestep_sampling", 0, "logit_normal", "uniform|logit_normal|lognorm|mode|mix",
                 "flow matching: how u in (0,1) is drawn");
    cfg_def(c, "diffusion.logit_mean", CFG_FLOAT, "0.0", "logit_normal mean");
    cfg_def(c, "diffusion.logit_std", CFG_FLOAT, "1.0", "logit_normal std");
    cfg_def(c, "diffusion.flow_shift", CFG_FLOAT, "1.0", "sigma shift s = shift/(shift + 1/u - 1)");
    cfg_def(c, "diffusion.mix_uniform_ratio", CFG_FLOAT, "0.1", "probability a batch uses uniform u");
    cfg_def(c, "diffusion.mode_scale", CFG_FLOAT, "1.29", "'mode' sampling scale");
    cfg_def(c, "diffusion.sigma_min", CFG_FLOAT, "0.0", "flow matching sigma clamp, low");
    cfg_def(c, "diffusion.sigma_max", CFG_FLOAT, "1.0", "flow matching sigma clamp, high");
    cfg_def(c, "diffusion.num_train_timesteps", CFG_INT, "1000", "the model sees t = num_train_timesteps * sigma");
    cfg_def(c, "diffusion.use_loss_weighting", CFG_BOOL, "true", "weight the loss by 1 + flow_shift * sigma");
    cfg_def(c, "diffusion.cfg_dropout_prob", CFG_FLOAT, "0.1", "probability a label is replaced by the null class");
    cfg_def(c, "diffusion.edm_p_mean", CFG_FLOAT, "-1.2", "EDM log-sigma mean");
    cfg_def(c, "diffusion.edm_p_std", CFG_FLOAT, "1.2", "EDM log-sigma std");
    cfg_def(c, "diffusion.edm_sigma_data", CFG_FLOAT, "0.5", "EDM data std");
    cfg_def(c, "diffusion.edm_sigma_min", CFG_FLOAT, "0.002", "EDM sigma range, low");
    cfg_def(c, "diffusion.edm_sigma_max", CFG_FLOAT, "80.0", "EDM sigma range, high");

    return c;
}

/* DiT-S/B/L/XL with patch 2 on 32x32x4 latents (256px images through the SD VAE), ImageNet-scale training as
 * in the DiT paper: constant LR 1e-4, no weight decay, EMA 0.9999. */
static cfg *recipe_dit(const char *name, int layers, int hidden, int heads) {
    cfg *c = recipe_base(name);
    char v[32];
    snprintf(v, sizeof v, "%d", layers);
    cfg_set_default(c, "model.num_layers", v);
    snprintf(v, sizeof v, "%d", hidden);
    cfg_set_default(c, "model.hidden_size", v);
    snprintf(v, sizeof v, "%d", heads);
    cfg_set_default(c, "model.num_attention_heads", v);
    snprintf(v, sizeof v, "%d", 4 * hidden);
    cfg_set_default(c, "model.ffn_hidden_size", v);
    cfg_set_default(c, "model.in_channels", "4");
    cfg_set_default(c, "model.out_channels", "4");
    cfg_set_default(c, "model.image_size", "32");
    cfg_set_default(c, "model.num_classes", "1000");
    cfg_set_default(c, "train.train_iters", "400000");
    cfg_set_default(c, "train.global_batch_size", "256");
    cfg_set_default(c, "train.micro_batch_size", "32");
    cfg_set_default(c, "train.eval_interval", "5000");
    cfg_set_default(c, "train.eval_iters", "32");
    cfg_set_default(c, "train.ema_decay", "0.9999");
    cfg_set_default(c, "optimizer.lr", "1e-4");
    cfg_set_default(c, "optimizer.min_lr", "1e-4");
    cfg_set_default(c, "optimizer.weight_decay", "0.0");
    cfg_set_default(c, "scheduler.lr_decay_style", "constant");
    cfg_set_default(c, "scheduler.lr_warmup_iters", "0");
    cfg_set_default(c, "checkpoint.save_interval", "10000");
    cfg_set_default(c, "dataset.type", "image_folder");
    cfg_set_default(c, "dataset.path", "data/imagenet");
    cfg_set_default(c, "dataset.num_workers", "8");
    cfg_set_default(c, "dataset.val_samples", "10000");
    cfg_set_default(c, "logger.log_interval", "100");
    return c;
}

/* Wan 2.1 text-to-video. wan_tiny learns the built-in clips of Fashion-MNIST garments moving across 8 frames
 * of 32x32 pixels from their captions (one channel: pixels stand in for VAE latents); wan_1_3b and wan_14b
 * are the published shapes over pre-encoded latents (16 channels; 21 latent frames = 81 video frames; 60x60
 * = 480x480 pixels through the Wan VAE) with UMT5-XXL embeddings, and DFM's pretraining defaults. */
static cfg *recipe_wan(const char *name, int layers, int hidden, int heads, int ffn) {
    cfg *c = recipe_base(name);
    char v[32];
    cfg_set_default(c, "model.kind", "wan");
    snprintf(v, sizeof v, "%d", layers);
    cfg_set_default(c, "model.num_layers", v);
    snprintf(v, sizeof v, "%d", hidden);
    cfg_set_default(c, "model.hidden_size", v);
    snprintf(v, sizeof v, "%d", heads);
    cfg_set_default(c, "model.num_attention_heads", v);
    snprintf(v, sizeof v, "%d", ffn);
    cfg_set_default(c, "model.ffn_hidden_size", v);
    cfg_set_default(c, "diffusion.cfg_dropout_prob", "0.1");
    if (!strcmp(name, "wan_tiny")) {
        /* 4 frames of 16x16 (256 tokens a clip) and uniform timesteps: about 8 minutes on 2 cores to clips with
         * the captioned garment's shape; 8 frames of 32x32 and logit-normal timesteps were 8x slower per clip
         * and gave noise after 600 steps (docs/PERFORMANCE.md) */
        cfg_set_default(c, "model.image_size", "16");
        cfg_set_default(c, "model.num_frames", "4");
        cfg_set_default(c, "model.text_dim", "32");
        cfg_set_default(c, "model.text_len", "8");
        cfg_set_default(c, "diffusion.timestep_sampling", "uniform");
        cfg_set_default(c, "dataset.type", "video_clips");
        cfg_set_default(c, "dataset.max_samples", "8000");
        cfg_set_default(c, "dataset.val_samples", "64");
        cfg_set_default(c, "train.train_iters", "2000");
        cfg_set_default(c, "train.global_batch_size", "16");
        cfg_set_default(c, "train.micro_batch_size", "16");
        cfg_set_default(c, "train.eval_interval", "1000");
        cfg_set_default(c, "train.eval_iters", "2");
        cfg_set_default(c, "scheduler.lr_warmup_iters", "50");
        cfg_set_default(c, "checkpoint.save_interval", "1000");
        return c;
    }
    cfg_set_default(c, "model.in_channels", "16");
    cfg_set_default(c, "model.out_channels", "16");
    cfg_set_default(c, "model.image_size", "60");
    cfg_set_default(c, "model.num_frames", "21");
    cfg_set_default(c, "model.text_dim", "4096");
    cfg_set_default(c, "model.text_len", "512");
    cfg_set_default(c, "dataset.type", "video_folder");
    cfg_set_default(c, "dataset.path", "data/wan");
    cfg_set_default(c, "dataset.val_samples", "8");
    cfg_set_default(c, "train.train_iters", "10000");
    cfg_set_default(c, "train.global_batch_size", "8");
    cfg_set_default(c, "train.micro_batch_size", "1");
    cfg_set_default(c, "train.eval_interval", "1000");
    cfg_set_default(c, "train.eval_iters", "8");
    cfg_set_default(c, "train.ema_decay", "0.9999");
    cfg_set_default(c, "optimizer.lr", "5e-5");
    cfg_set_default(c, "optimizer.min_lr", "5e-6");
    cfg_set_default(c, "optimizer.weight_decay", "0.1");
    cfg_set_default(c, "optimizer.adam_beta2", "0.95");
    cfg_set_default(c, "diffusion.logit_std", "1.5");
    cfg_set_default(c, "diffusion.flow_shift", "2.5");
    cfg_set_default(c, "diffusion.mix_uniform_ratio", "0.2");
    cfg_set_default(c, "scheduler.lr_warmup_iters", "1000");
    cfg_set_default(c, "checkpoint.save_interval", "1000");
    cfg_set_default(c, "logger.log_interval", "10");
    return c;
}

typedef struct {
    const char *name, *summary;
    int layers, hidden, heads; /* 0: the Fashion-MNIST base */
    int wan_ffn;               /* > 0: a Wan recipe */
} recipe_entry;

static const recipe_entry recipes[] = {
    {"dit_fashion_mnist",
     "DiT (6 x 128, 4 heads, patch 2) on Fashion-MNIST 28x28, sized for ~10 minutes on 2 cores (the default)", 0, 0, 0,
     0},
    {"dit_s2", "DiT-S/2 (12 layers x 384, 6 heads) on 32x32x4 latents, 1000 classes", 12, 384, 6, 0},
    {"dit_b2", "DiT-B/2 (12 layers x 768, 12 heads) on 32x32x4 latents, 1000 classes", 12, 768, 12, 0},
    {"dit_l2", "DiT-L/2 (24 layers x 1024, 16 heads) on 32x32x4 latents, 1000 classes", 24, 1024, 16, 0},
    {"dit_xl2", "DiT-XL/2 (28 layers x 1152, 16 heads) on 32x32x4 latents, 1000 classes", 28, 1152, 16, 0},
    {"wan_tiny", "Wan 2.1 (4 x 64, 4 heads) on built-in captioned clips of moving Fashion-MNIST garments (4 x 16x16)",
     4, 64, 4, 256},
    {"wan_1_3b", "Wan 2.1 T2V 1.3B (30 x 1536, 12 heads) on pre-encoded latents + UMT5 embeddings", 30, 1536, 12, 8960},
    {"wan_14b", "Wan 2.1 T2V 14B (40 x 5120, 40 heads) on pre-encoded latents + UMT5 embeddings", 40, 5120, 40, 13824},
};
#define NRECIPES ((int)(sizeof recipes / sizeof recipes[0]))

int cfg_recipe_count(void) {
    return NRECIPES;
}
const char *cfg_recipe_name(int i) {
    return i >= 0 && i < NRECIPES ? recipes[i].name : NULL;
}
const char *cfg_recipe_summary(int i) {
    return i >= 0 && i < NRECIPES ? recipes[i].summary : NULL;
}

cfg *cfg_recipe(const char *name, char *err, size_t errlen) {
    for (int i = 0; i < NRECIPES; i++) {
        const recipe_entry *r = &recipes[i];
        if (strcmp(name, r->name)) continue;
        if (r->wan_ffn) return recipe_wan(r->name, r->layers, r->hidden, r->heads, r->wan_ffn);
        return r->layers ? recipe_dit(r->name, r->layers, r->hidden, r->heads) : recipe_base(r->name);
    }
    size_t off = (size_t)snprintf(err, errlen, "unknown recipe '%s'; recipes:", name);
    for (int i = 0; i < NRECIPES && off < errlen; i++)
        off += (size_t)snprintf(err + off, errlen - off, "%s %s", i ? "," : "", recipes[i].name);
    return NULL;
}
