/* Whole-model outputs under model parallelism (mpirun --oversubscribe on 2 cores), against one process:
 *  - checkpoint.consolidated (layout automodel) under PP2, TP2, CP2, TP2 x PP2, TP2 + SP and DP2 x TP2 with
 *    optim_grads_params, TP2 + SP x CP2, PP2 x 2 model chunks (DiT; Wan PP2, TP2 and CP2): the
 *    folder model/consolidated/ equals, byte for byte, what dfm export --weights model writes from the same checkpoint,
 *    and matches the one-process run's consolidated folder tensor for tensor (the same names and shapes; values
 *    identical under PP, within 1e-5 relative to the largest weight under TP and CP, whose weights differ by rounding);
 *  - train.eval_samples under the same layouts: val_samples/step_N/samples.safetensors against the one-process run's.
 *    After training PP2 must be within 1e-6 (measured: 0), TP2, CP2 and TP2 x PP2 within 1e-5, the tolerance of their
 *    weights (measured: the weights within 1.1e-6, the samples within 7.1e-8: the 4-step sampler does not amplify
 *    the weights' rounding differences here). With equal weights (every run loads the one-process checkpoint and
 *    takes one step at learning rate 0) every layout must be within 1e-4 relative (measured: 0, the same bits);
 *  - LoRA over the one-process checkpoint under PP2, TP2 and CP2: the consolidated folder is the merged model (byte
 *    for byte dfm export's merge of the checkpoint, within 1e-5 of one process's), the samples likewise;
 *  - validation over resolution buckets (train.eval_iters, Wan with two latent shapes) under PP2: the validation
 *    losses equal one process's, and the samples (one per shape) too. */
#include "dfm/safetensors.h"
#include "test.h"
#include "test_fs.h"
#include "test_run.h"

#include <jansson.h>
#include <math.h>

static const char *DIT =
    "model.num_layers=2 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=128 "
    "model.patch_size=7 train.global_batch_size=8 train.micro_batch_size=2 dataset.val_samples=16 "
    "dataset.num_workers=0 logger.log_interval=1 optimizer.lr=3e-3 scheduler.lr_warmup_iters=2 train.eval_iters=1 "
    "train.eval_samples=2 train.eval_sample_steps=4 checkpoint.layout=automodel";
static const char *WAN =
    "--recipe wan_tiny model.num_layers=2 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=64 "
    "model.image_size=8 model.num_frames=2 dataset.max_samples=32 dataset.val_samples=4 dataset.num_workers=0 "
    "train.global_batch_size=4 train.micro_batch_size=2 logger.log_interval=1 optimizer.lr=3e-3 "
    "scheduler.lr_warmup_iters=1 train.eval_iters=1 train.eval_samples=2 train.eval_sample_steps=4 "
    "checkpoint.layout=automodel";
/* 4 steps, validation and a consolidated checkpoint at step 4 */
static const char *TRAIN4 =
    "train.train_iters=4 train.eval_interval=4 checkpoint.save_interval=4 checkpoint.consolidated=final";

static char *dir;
static const char *bin;

static int train(int np, const char *model, const char *name, const char *extra) {
    return test_run_pretrain(dir, bin, np, model, name, extra);
}

static const char *consolidated(const char *run) {
    return test_path("%s/%s/ck/LATEST/model/consolidated/diffusion_pytorch_model.safetensors", dir, run);
}

static const char *samples(const char *run, int step) {
    return test_path("%s/%s/val_samples/step_%07d/samples.safetensors", dir, run, step);
}

/* The run's consolidated folder against dfm export --weights model of its checkpoint (byte for byte) and against
 * the one-process run's (within tol); its samples at `step` against the one-process run's (within stol). */
static void outputs(const char *run, const char *ref, const char *what, double tol, double stol) {
    int rc = test_sh("%s export --checkpoint %s/%s/ck/LATEST --weights model --out %s/%s_exp > %s/%s_exp.log 2>&1", bin,
                     dir, run, dir, run, dir, run);
    int same = rc == 0 &&
               test_sh("cmp -s %s %s/%s_exp/transformer/diffusion_pytorch_model.safetensors", consolidated(run), dir,
                       run) == 0 &&
               test_sh("cmp -s %s/%s/ck/LATEST/model/consolidated/config.json %s/%s_exp/transformer/config.json", dir,
                       run, dir, run) == 0;
    CHECK(same, "%s: model/consolidated/ is byte-identical to dfm export --weights model of the checkpoint", what);
    int n = 0;
    double d = test_st_diff(consolidated(run), consolidated(ref), &n);
    printf("# %s: consolidated weights vs one process: %d tensors, worst difference %.3g (relative)\n", what, n, d);
    CHECK(n > 0 && d <= tol,
          "%s: model/consolidated/ has one process's %d tensors (names, shapes), values within %.3g "
          "(<= %.0e relative)",
          what, n, d, tol);
    d = test_st_diff(samples(run, 4), samples(ref, 4), &n);
    printf("# %s: validation samples vs one process: worst difference %.3g (relative)\n", what, d);
    CHECK(n == 2 && d <= stol, "%s: val_samples/step_0000004 within %.3g of one process's (<= %.0e relative)", what, d,
          stol);
}

/* Equal weights: every layout loads the one-process run's step-4 checkpoint and takes one step at learning rate 0,
 * so the samples at step 1 come from the same weights (gathered whole on rank 0). */
static void equal_weights(const char *model, const char *ref, const char *prefix, const char *const (*lay)[3], int n) {
    char extra[2048];
    snprintf(extra, sizeof extra,
             "checkpoint.pretrained_checkpoint=%s/%s/ck/LATEST optimizer.lr=0 train.train_iters=1 "
             "train.eval_interval=1 checkpoint.save=null",
             dir, ref);
    char one[256];
    snprintf(one, sizeof one, "%s_eq_one", prefix);
    if (train(0, model, one, extra) != 0) {
        CHECK(0, "%s: one process from the checkpoint at learning rate 0 runs", prefix);
        return;
    }
    for (int k = 0; k < n; k++) {
        char name[256], ex[4096];
        snprintf(name, sizeof name, "%s_eq_%s", prefix, lay[k][0]);
        snprintf(ex, sizeof ex, "%s %s", extra, lay[k][2]);
        if (train(atoi(lay[k][1]), model, name, ex) != 0) {
            CHECK(0, "%s runs", name);
            continue;
        }
        int nt;
        double d = test_st_diff(samples(name, 1), samples(one, 1), &nt);
        printf("# %s %s, equal weights: validation samples vs one process: worst difference %.3g (relative)\n", prefix,
               lay[k][0], d);
        CHECK(nt == 2 && d <= 1e-4,
              "%s %s with one process's weights: validation samples within %.3g (<= 1e-4 relative)", prefix, lay[k][0],
              d);
    }
}

static const char *const DIT_LAYOUTS[][3] = {
    {"pp2", "2", "model.pipeline_model_parallel_size=2"},
    {"tp2", "2", "model.tensor_model_parallel_size=2"},
    {"cp2", "2", "model.context_parallel_size=2"},
    {"tp2pp2", "4", "model.tensor_model_parallel_size=2 model.pipeline_model_parallel_size=2"},
    {"tp2sp", "2", "model.tensor_model_parallel_size=2 model.sequence_parallel=true"},
    {"dp2tp2_ogp", "4", "model.tensor_model_parallel_size=2 ddp.data_parallel_sharding_strategy=optim_grads_params"},
    {"tp2sp_cp2", "4", "model.tensor_model_parallel_size=2 model.sequence_parallel=true model.context_parallel_size=2"},
};

static void dit_cases(void) {
    if (train(0, DIT, "dit_one", TRAIN4) != 0) {
        CHECK(0, "DiT, one process trains");
        return;
    }
    for (int k = 0; k < 7; k++) {
        char name[64], extra[1024];
        snprintf(name, sizeof name, "dit_%s", DIT_LAYOUTS[k][0]);
        snprintf(extra, sizeof extra, "%s %s", TRAIN4, DIT_LAYOUTS[k][2]);
        if (train(atoi(DIT_LAYOUTS[k][1]), DIT, name, extra) != 0) {
            CHECK(0, "%s runs", name);
            continue;
        }
        int pp_only = k == 0;
        outputs(name, "dit_one", test_path("DiT %s", DIT_LAYOUTS[k][0]), pp_only ? 0 : 1e-5, pp_only ? 1e-6 : 1e-5);
    }
    equal_weights(DIT, "dit_one", "dit", DIT_LAYOUTS, 7);
}

/* The interleaved schedule (PP2 x 2 model chunks, 4 blocks): the stage's table holds both chunks' entries; the
 * consolidated folder and the samples are one process's, byte for byte. */
static void dit_vpp_case(void) {
    char four[1024], vpp[2048];
    snprintf(four, sizeof four, "%s model.num_layers=4", TRAIN4);
    snprintf(vpp, sizeof vpp, "%s model.pipeline_model_parallel_size=2 model.virtual_pipeline_model_parallel_size=2",
             four);
    int rc = train(0, DIT, "dit4_one", four) || train(2, DIT, "dit4_vpp", vpp);
    CHECK(rc == 0 && test_sh("cmp -s %s %s", consolidated("dit4_vpp"), consolidated("dit4_one")) == 0 &&
              test_sh("cmp -s %s %s", samples("dit4_vpp", 4), samples("dit4_one", 4)) == 0,
          "DiT PP2 x 2 model chunks: model/consolidated/ and the validation samples are one process's, byte for byte");
}

/* LoRA over the one-process DiT's step-4 checkpoint: the consolidated folder is the merged model (the checkpoint
 * holds the adapters only; dfm export merges them with the base the same way), the samples come from it. */
static void dit_lora_cases(void) {
    char lora[2048];
    snprintf(lora, sizeof lora,
             "%s peft.target_modules=\"['attn1.to_q', 'attn1.to_k', 'attn1.to_v', 'attn1.to_out.0', 'norm1.linear', "
             "'*.ff.net.*']\" peft.dim=2 peft.alpha=4 checkpoint.pretrained_checkpoint=%s/dit_one/ck",
             TRAIN4, dir);
    if (train(0, DIT, "lora_one", lora) != 0) {
        CHECK(0, "DiT LoRA, one process trains");
        return;
    }
    for (int k = 0; k < 3; k++) {
        char name[64], extra[4096];
        snprintf(name, sizeof name, "lora_%s", DIT_LAYOUTS[k][0]);
        snprintf(extra, sizeof extra, "%s %s", lora, DIT_LAYOUTS[k][2]);
        if (train(atoi(DIT_LAYOUTS[k][1]), DIT, name, extra) != 0) {
            CHECK(0, "%s runs", name);
            continue;
        }
        outputs(name, "lora_one", test_path("DiT LoRA %s", DIT_LAYOUTS[k][0]), k == 0 ? 0 : 1e-5, k == 0 ? 1e-6 : 1e-5);
    }
}

static void wan_cases(void) {
    static const char *const lay[][3] = {
        {"pp2", "2", "model.pipeline_model_parallel_size=2"},
        {"tp2", "2", "model.tensor_model_parallel_size=2"},
        {"cp2", "2", "model.context_parallel_size=2"},
    };
    if (train(0, WAN, "wan_one", TRAIN4) != 0) {
        CHECK(0, "Wan, one process trains");
        return;
    }
    for (int k = 0; k < 3; k++) {
        char name[64], extra[1024];
        snprintf(name, sizeof name, "wan_%s", lay[k][0]);
        snprintf(extra, sizeof extra, "%s %s", TRAIN4, lay[k][2]);
        if (train(atoi(lay[k][1]), WAN, name, extra) != 0) {
            CHECK(0, "%s runs", name);
            continue;
        }
        outputs(name, "wan_one", test_path("Wan %s", lay[k][0]), k == 0 ? 0 : 1e-5, k == 0 ? 1e-6 : 1e-5);
    }
    equal_weights(WAN, "wan_one", "wan", lay, 3);
}

/* "val_loss" of each validation step of RUN/metrics.jsonl into v[step]; the count. */
static int val_losses(const char *run, double *v, int max) {
    char *text = test_read_file(test_path("%s/%s/metrics.jsonl", dir, run), NULL);
    int n = 0;
    for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n")) {
        json_t *o = json_loads(line, 0, NULL);
        json_t *st = json_object_get(o, "step"), *l = json_object_get(o, "val_loss");
        if (json_is_integer(st) && json_is_number(l) && json_integer_value(st) <= max)
            v[json_integer_value(st)] = json_number_value(l), n++;
        json_decref(o);
    }
    free(text);
    return n;
}

/* Two latent shapes (2 x 8 x 8 and 4 x 8 x 8) through the bucket sampler: validation losses (every held-out sample,
 * grouped by shape) and samples under PP2 equal one process's. */
static void wan_bucket_cases(void) {
    int rc = test_sh("B=$(realpath %s) && cd %s && for s in '1 2 8 5' '2 4 8 7'; do set -- $s; $B data prepare "
                     "--video-clips --out e$1 --n $((12 - 2 * $1)) --frames $2 --size $3 --text-dim 32 --seed $4 > "
                     "p$1.log 2>&1 && $B data convert --from e$1 --to s$1 > c$1.log 2>&1 || exit 1; done && mkdir mix "
                     "&& for f in s1/*; do cp $f mix/a_${f#s1/}; done && for f in s2/*; do cp $f mix/b_${f#s2/}; done",
                     bin, dir);
    CHECK(rc == 0, "fixtures: a folder of two latent shapes");
    char model[1024];
    snprintf(model, sizeof model,
             "--recipe wan_tiny model.num_layers=2 model.hidden_size=32 model.num_attention_heads=2 "
             "model.ffn_hidden_size=64 dataset.type=video_folder dataset.path=%s/mix dataset.max_samples=null "
             "dataset.val_samples=4 train.global_batch_size=4 train.micro_batch_size=2 train.train_iters=4 "
             "train.eval_interval=2 train.eval_iters=2 train.eval_samples=4 train.eval_sample_steps=3 "
             "logger.log_interval=1",
             dir);
    rc = train(0, model, "bk_one", "") || train(2, model, "bk_pp2", "model.pipeline_model_parallel_size=2");
    double va[8], vb[8], worst = rc ? INFINITY : 0;
    for (int i = 0; i < 8; i++) va[i] = vb[i] = NAN;
    int na = rc ? 0 : val_losses("bk_pp2", va, 7), nb = rc ? 0 : val_losses("bk_one", vb, 7);
    for (int s = 2; s <= 4 && !rc; s += 2) {
        double d = fabs(va[s] - vb[s]) / fabs(vb[s]);
        if (!(d <= worst)) worst = isnan(d) ? INFINITY : d;
    }
    printf("# Wan buckets PP2: validation losses vs one process: worst difference %.3g (relative)\n", worst);
    CHECK(na == 2 && nb == 2 && worst == 0,
          "Wan over 2 resolution buckets, PP2: the validation losses at steps 2 and 4 equal one process's (%.3g)",
          worst);
    int n = 0;
    double d = rc ? INFINITY : test_st_diff(samples("bk_pp2", 4), samples("bk_one", 4), &n);
    printf("# Wan buckets PP2: validation samples vs one process: worst difference %.3g (relative)\n", d);
    CHECK(n == 4 && d <= 1e-6,
          "Wan over 2 buckets, PP2: 4 validation samples of both shapes within %.3g of one "
          "process's (<= 1e-6 relative)",
          d);
}

int main(void) {
    bin = test_dfm_bin();
    test_mpi_env();
    if (!test_have_mpirun()) return 1;
    dir = test_mkdtemp();
    dit_cases();
    dit_vpp_case();
    dit_lora_cases();
    wan_cases();
    wan_bucket_cases();
    test_rmtree(dir);
    free(dir);
    return test_finish();
}
