/* Pipeline parallelism (mpirun --oversubscribe on 2 cores): PP2 for the tiny DiT and the tiny Wan, and PP2 x DP2,
 * against one process at the same global batch (4 micro-batches per step, so the 1F1B schedule has a warm-up, a
 * steady phase and a cool-down): losses and final weights within 1e-6 relative; checkpoints saved under PP2 resume
 * as one process and back; invalid layouts are errors naming the numbers. (TP x PP and the interleaved schedule:
 * test_pipeline_tp.c.) */
#include "dfm/checkpoint.h"
#include "dfm/dit.h"
#include "test.h"
#include "test_fs.h"
#include "test_run.h"

#include <math.h>
#include <unistd.h>

static const char *DIT =
    "model.num_layers=2 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=128 "
    "model.patch_size=7 train.global_batch_size=8 train.micro_batch_size=2 train.eval_interval=5 "
    "train.eval_iters=1 dataset.val_samples=16 dataset.num_workers=0 logger.log_interval=1 optimizer.lr=3e-3 "
    "scheduler.lr_warmup_iters=2 checkpoint.most_recent_k=4 train.train_iters=10 checkpoint.save_interval=5";

static const char *WAN =
    "--recipe wan_tiny model.num_layers=2 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=64 "
    "model.image_size=16 model.num_frames=4 dataset.max_samples=64 dataset.val_samples=8 dataset.num_workers=0 "
    "train.global_batch_size=8 train.micro_batch_size=2 train.eval_interval=5 train.eval_iters=1 "
    "logger.log_interval=1 checkpoint.save_interval=5 optimizer.lr=3e-3 scheduler.lr_warmup_iters=1 "
    "train.train_iters=10 diffusion.cfg_dropout_prob=0.2";

static char *dir;
static const char *bin;

static int train(int np, const char *base, const char *name, const char *extra) {
    return test_run_pretrain(dir, bin, np, base, name, extra);
}

static double loss_diff(const char *a, const char *b, int from, int to) {
    char ra[1024];
    snprintf(ra, sizeof ra, "%s/%s", dir, a);
    return test_run_loss_diff(ra, test_path("%s/%s", dir, b), from, to);
}

static double weights_diff(int wan, const char *a, const char *b) {
    return test_run_final_weights_diff(dir, wan, a, b);
}

static void compare(int wan, const char *run, const char *ref, const char *what) {
    double dl = loss_diff(run, ref, 1, 10), dw = weights_diff(wan, run, ref);
    printf("# %s: worst loss difference %.3g, worst weight difference %.3g (relative)\n", what, dl, dw);
    CHECK(dl <= 1e-6 && dw <= 1e-6,
          "%s vs one process, 10 steps of 4 micro-batches: losses %.3g, weights and EMA %.3g "
          "(<= 1e-6 relative)",
          what, dl, dw);
}

int main(void) {
    bin = test_dfm_bin();
    dir = test_mkdtemp();
    test_mpi_env();
    if (!test_have_mpirun()) return test_finish();

    /* DiT: one process, PP2 (DDP within the stage), PP2 with sharded parameters, PP2 x DP2 */
    int ok = train(0, DIT, "dit1", "") == 0;
    if (ok && train(2, DIT, "dit_pp2", "model.pipeline_model_parallel_size=2") == 0) {
        compare(0, "dit_pp2", "dit1", "DiT PP2");
        char *log = test_read_file(test_path("%s/dit_pp2.log", dir), NULL);
        CHECK(log && strstr(log, "pipeline: 2 stages of 1 blocks") && strstr(log, "bubble (P-1)/(m+P-1) = 0.200"),
              "the start-up line shows the pipeline layout and its bubble (P-1)/(m+P-1) = 1/5 for 4 micro-batches");
        free(log);
        char *metrics = test_read_file(test_path("%s/dit_pp2/metrics.jsonl", dir), NULL);
        CHECK(metrics && strstr(metrics, "\"pp_bubble\": 0.2"), "metrics.jsonl reports the bubble (pp_bubble)");
        free(metrics);
    } else
        CHECK(0, "DiT one process and PP2 runs");
    if (ok && train(2, DIT, "dit_pp2_fsdp",
                    "model.pipeline_model_parallel_size=2 "
                    "ddp.data_parallel_sharding_strategy=optim_grads_params") == 0)
        compare(0, "dit_pp2_fsdp", "dit1", "DiT PP2 (optim_grads_params)");
    else
        CHECK(0, "DiT PP2 with optim_grads_params runs");
    if (ok && train(4, DIT, "dit_pp2_dp2",
                    "model.pipeline_model_parallel_size=2 "
                    "ddp.data_parallel_sharding_strategy=optim_grads") == 0)
        compare(0, "dit_pp2_dp2", "dit1", "DiT PP2 x DP2 (optim_grads)");
    else
        CHECK(0, "DiT PP2 x DP2 runs");
    if (ok && train(2, DIT, "dit_pp2_rc",
                    "model.pipeline_model_parallel_size=2 model.recompute_granularity=full "
                    "model.recompute_method=uniform model.recompute_num_layers=1") == 0)
        compare(0, "dit_pp2_rc", "dit1", "DiT PP2 with every block recomputed");
    else
        CHECK(0, "DiT PP2 with activation recomputation runs");

    /* resume across layouts: PP2's step-5 checkpoint as one process, one process's as PP2 */
    if (ok) {
        int rc = train(0, DIT, "dit_from_pp2", test_path("checkpoint.load=%s/dit_pp2/ck/iter_0000005", dir));
        double d = rc ? INFINITY : loss_diff("dit_from_pp2", "dit1", 6, 10);
        double dw = rc ? INFINITY : weights_diff(0, "dit_from_pp2", "dit1");
        printf("# resume PP2 -> one process: worst loss difference %.3g, weights %.3g\n", d, dw);
        CHECK(d <= 1e-6 && dw <= 1e-6,
              "a PP2 checkpoint (step 5) resumes as one process: steps 6-10 and the final "
              "weights match the uninterrupted run (%.3g, %.3g)",
              d, dw);
        rc = train(2, DIT, "dit_to_pp2",
                   test_path("model.pipeline_model_parallel_size=2 checkpoint.load=%s/dit1/ck/iter_0000005", dir));
        d = rc ? INFINITY : loss_diff("dit_to_pp2", "dit1", 6, 10);
        dw = rc ? INFINITY : weights_diff(0, "dit_to_pp2", "dit1");
        printf("# resume one process -> PP2: worst loss difference %.3g, weights %.3g\n", d, dw);
        CHECK(d <= 1e-6 && dw <= 1e-6,
              "a one-process checkpoint (step 5) resumes under PP2: steps 6-10 and the final "
              "weights match (%.3g, %.3g)",
              d, dw);
        rc = test_sh("%s export --checkpoint %s/dit_pp2/ck --out %s/dit_pp2_export > %s/export.log 2>&1", bin, dir, dir,
                     dir);
        CHECK(rc == 0 && access(test_path("%s/dit_pp2_export/transformer/config.json", dir), F_OK) == 0,
              "dfm export reads a PP2 checkpoint (its stages' shards) into one diffusers folder (rc %d)", rc);
    }

    /* Wan: one process and PP2 (the condition embedder's temb, time_proj and text context cross the stages) */
    if (train(0, WAN, "wan1", "") == 0 && train(2, WAN, "wan_pp2", "model.pipeline_model_parallel_size=2") == 0)
        compare(1, "wan_pp2", "wan1", "Wan PP2");
    else
        CHECK(0, "Wan one process and PP2 runs");

    /* invalid layouts */
    char *out = NULL;
    int rc = test_capture(test_path("mpirun --oversubscribe -np 2 %s pretrain %s model.num_layers=3 "
                                    "model.pipeline_model_parallel_size=2 logger.output_dir=%s/bad",
                                    bin, DIT, dir),
                          &out);
    CHECK(rc != 0 && strstr(out, "model.num_layers 3 is not divisible by model.pipeline_model_parallel_size 2"),
          "3 layers over 2 stages is refused naming both numbers");
    free(out);
    rc = test_capture(test_path("mpirun --oversubscribe -np 3 %s pretrain %s model.pipeline_model_parallel_size=2 "
                                "logger.output_dir=%s/bad",
                                bin, DIT, dir),
                      &out);
    CHECK(rc != 0 && strstr(out, "world size 3 (mpirun -np) is not divisible by tensor x context x pipeline"),
          "PP2 on 3 ranks is refused naming the world size");
    free(out);
    test_rmtree(dir);
    free(dir);
    return test_finish();
}
