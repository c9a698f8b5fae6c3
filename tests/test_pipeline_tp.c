/* Pipeline parallelism with tensor parallelism, and the interleaved pipeline schedule (mpirun --oversubscribe on
 * 2 cores), against one process at the same global batch, tiny DiT and Wan of 4 blocks:
 *  - TP2 x PP2 (4 ranks): losses, final weights and EMA within 1e-5 relative (TP changes the order of sums), the
 *    replicated parameters bit-identical across the TP ranks of each stage at every checkpoint; its step-5
 *    checkpoint resumed as one process, as PP2, as TP2 and as CP2, a one-process checkpoint resumed as TP2 x PP2 (steps
 *    6-10 and the final weights within 1e-5); dfm export of a TP2 x PP2 checkpoint equals the one-process export;
 *  - PP2 with 2 model chunks per stage (model.virtual_pipeline_model_parallel_size = 2; 4 micro-batches, and with
 *    DP2 2 = P micro-batches per rank), PP4 x 2 chunks of an 8-block DiT: losses and weights within 1e-6 (the
 *    pipeline does not change the arithmetic); TP2 x PP2 x 2 chunks within 1e-5; the bubble (P-1)/(V m+P-1) on
 *    the start-up line and in metrics.jsonl, its checkpoint resumed as one process;
 *  - the layouts the interleaved schedule refuses, with the numbers. */
#include "dfm/checkpoint.h"
#include "dfm/dit.h"
#include "dfm/safetensors.h"
#include "test.h"
#include "test_fs.h"
#include "test_run.h"

#include <math.h>
#include <unistd.h>

static const char *DIT =
    "model.num_layers=4 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=128 "
    "model.patch_size=7 train.global_batch_size=8 train.micro_batch_size=2 train.eval_interval=5 "
    "train.eval_iters=1 dataset.val_samples=16 dataset.num_workers=0 logger.log_interval=1 optimizer.lr=3e-3 "
    "scheduler.lr_warmup_iters=2 checkpoint.most_recent_k=4 train.train_iters=10 checkpoint.save_interval=5";

static const char *WAN =
    "--recipe wan_tiny model.num_layers=4 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=64 "
    "model.image_size=8 model.num_frames=2 dataset.max_samples=32 dataset.val_samples=4 dataset.num_workers=0 "
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

/* The worst of the model and EMA differences of the step-10 checkpoints of two runs. */
static double weights_diff(int wan, const char *a, const char *b) {
    return test_run_final_weights_diff(dir, wan, a, b);
}

static void compare(int wan, const char *run, const char *ref, int from, double tol, const char *what) {
    double dl = loss_diff(run, ref, from, 10), dw = weights_diff(wan, run, ref);
    printf("# %s: worst loss difference %.3g, worst weight/EMA difference %.3g (relative)\n", what, dl, dw);
    CHECK(dl <= tol && dw <= tol,
          "%s vs the one-process run: losses of steps %d-10 %.3g, final weights and EMA %.3g "
          "(<= %.0e relative)",
          what, from, dl, dw, tol);
}

static int replicas_agree(const char *run, int saves) {
    return test_run_tp_agree(dir, run, saves);
}

static const char *TPPP = "model.tensor_model_parallel_size=2 model.pipeline_model_parallel_size=2";
static const char *VPP = "model.pipeline_model_parallel_size=2 model.virtual_pipeline_model_parallel_size=2";

static void dit_tp_pp(void) {
    if (train(4, DIT, "dit_tppp", TPPP) != 0) {
        CHECK(0, "DiT TP2 x PP2 runs");
        return;
    }
    compare(0, "dit_tppp", "dit1", 1, 1e-5, "DiT TP2 x PP2");
    CHECK(replicas_agree("dit_tppp", 2), "DiT TP2 x PP2: the replicated parameters and their EMA are bit-identical "
                                         "across the TP ranks of each stage at steps 5 and 10");
    CHECK(access(test_path("%s/dit_tppp/ck/iter_0000005/shard_00003_of_00004.safetensors", dir), F_OK) == 0,
          "TP2 x PP2 writes one shard file per (stage, TP rank)");
    /* saved under TP2 x PP2 at step 5: resumed as one process, as PP2, as TP2, as CP2 */
    const char *to[][3] = {{"0", "dit_tppp_to_one", ""},
                           {"2", "dit_tppp_to_pp2", "model.pipeline_model_parallel_size=2"},
                           {"2", "dit_tppp_to_tp2", "model.tensor_model_parallel_size=2"},
                           {"2", "dit_tppp_to_cp2", "model.context_parallel_size=2"}};
    for (int k = 0; k < 4; k++) {
        int rc = train(atoi(to[k][0]), DIT, to[k][1],
                       test_path("%s checkpoint.load=%s/dit_tppp/ck/iter_0000005", to[k][2], dir));
        if (rc == 0)
            compare(0, to[k][1], "dit1", 6, 1e-5,
                    test_path("DiT saved under TP2 x PP2, resumed as %s", k == 0   ? "one process"
                                                                          : k == 1 ? "PP2"
                                                                          : k == 2 ? "TP2"
                                                                                   : "CP2"));
        else
            CHECK(0, "%s runs", to[k][1]);
    }
    int rc = train(4, DIT, "dit_one_to_tppp", test_path("%s checkpoint.load=%s/dit1/ck/iter_0000005", TPPP, dir));
    if (rc == 0)
        compare(0, "dit_one_to_tppp", "dit1", 6, 1e-5, "DiT saved by one process, resumed as TP2 x PP2");
    else
        CHECK(0, "a one-process checkpoint resumed as TP2 x PP2 runs");
    /* dfm export reads the (stage, TP rank) shards into one diffusers folder */
    rc = test_sh("%s export --checkpoint %s/dit_tppp/ck --out %s/exp_tppp > %s/exp.log 2>&1 && %s export --checkpoint "
                 "%s/dit1/ck --out %s/exp_one >> %s/exp.log 2>&1",
                 bin, dir, dir, dir, bin, dir, dir, dir);
    int nt = 0;
    double d = rc ? INFINITY
                  : test_st_diff(test_path("%s/exp_tppp/transformer/diffusion_pytorch_model.safetensors", dir),
                                 test_path("%s/exp_one/transformer/diffusion_pytorch_model.safetensors", dir), &nt);
    printf("# export of TP2 x PP2 vs one process: %d tensors, worst %.3g\n", nt, d);
    CHECK(d <= 1e-5, "dfm export of a TP2 x PP2 checkpoint equals the one-process export: %d tensors, worst rel %.2e",
          nt, d);
}

static void dit_interleaved(void) {
    if (train(2, DIT, "dit_vpp", VPP) == 0) {
        compare(0, "dit_vpp", "dit1", 1, 1e-6, "DiT PP2 x 2 model chunks (interleaved 1F1B)");
        char *log = test_read_file(test_path("%s/dit_vpp.log", dir), NULL);
        CHECK(log && strstr(log, "2 stages x 2 model chunks of 1 blocks") &&
                  strstr(log, "bubble (P-1)/(V*m+P-1) = 0.111") && strstr(log, "(P-1)/(V*m) = 0.125"),
              "the start-up line shows the interleaved layout and its bubble (P-1)/(V m+P-1) = 1/9 for P 2, V 2, m 4");
        free(log);
        char *metrics = test_read_file(test_path("%s/dit_vpp/metrics.jsonl", dir), NULL);
        CHECK(metrics && strstr(metrics, "\"pp_bubble\": 0.1111"), "metrics.jsonl reports the interleaved bubble");
        free(metrics);
        int rc = train(0, DIT, "dit_vpp_to_one", test_path("checkpoint.load=%s/dit_vpp/ck/iter_0000005", dir));
        if (rc == 0)
            compare(0, "dit_vpp_to_one", "dit1", 6, 1e-6, "DiT saved under PP2 x 2 chunks, resumed as one process");
        else
            CHECK(0, "an interleaved checkpoint resumed as one process runs");
        rc = train(2, DIT, "dit_one_to_vpp", test_path("%s checkpoint.load=%s/dit1/ck/iter_0000005", VPP, dir));
        if (rc == 0) /* the stage's table is two separate ranges of the whole model's: read by piece names */
            compare(0, "dit_one_to_vpp", "dit1", 6, 1e-6, "DiT saved by one process, resumed as PP2 x 2 chunks");
        else
            CHECK(0, "a one-process checkpoint resumed as PP2 x 2 chunks runs");
    } else
        CHECK(0, "DiT PP2 with 2 model chunks runs");
    if (train(2, DIT, "dit_vpp_ogp", test_path("%s ddp.data_parallel_sharding_strategy=optim_grads_params", VPP)) == 0)
        compare(0, "dit_vpp_ogp", "dit1", 1, 1e-6, "DiT PP2 x 2 chunks, optim_grads_params");
    else
        CHECK(0, "DiT PP2 x 2 chunks with optim_grads_params runs");
    /* everything together: TP2 x PP2 x 2 chunks on 4 ranks (TP's tolerance) */
    if (train(4, DIT, "dit_tppp_vpp", test_path("%s model.tensor_model_parallel_size=2", VPP)) == 0) {
        compare(0, "dit_tppp_vpp", "dit1", 1, 1e-5, "DiT TP2 x PP2 x 2 chunks");
        CHECK(replicas_agree("dit_tppp_vpp", 2),
              "DiT TP2 x PP2 x 2 chunks: replicated parameters bit-identical over TP");
    } else
        CHECK(0, "DiT TP2 x PP2 x 2 chunks runs");
    /* PP4 x 2 chunks: 8 blocks, 8 micro-batches, the warm-up differs per stage; against its own one-process run */
    const char *eight = "model.num_layers=8 train.global_batch_size=16";
    if (train(0, DIT, "dit8", eight) == 0 && train(4, DIT, "dit8_pp4_vpp",
                                                   test_path("%s model.pipeline_model_parallel_size=4 "
                                                             "model.virtual_pipeline_model_parallel_size=2",
                                                             eight)) == 0)
        compare(0, "dit8_pp4_vpp", "dit8", 1, 1e-6, "DiT (8 blocks) PP4 x 2 chunks, 8 micro-batches");
    else
        CHECK(0, "DiT 8 blocks one process and PP4 x 2 chunks run");
    /* DP2: 2 micro-batches per rank = P (Megatron's all-forwards-first case), gradients sharded */
    if (train(4, DIT, "dit_vpp_dp2", test_path("%s ddp.data_parallel_sharding_strategy=optim_grads", VPP)) == 0)
        compare(0, "dit_vpp_dp2", "dit1", 1, 1e-6, "DiT PP2 x 2 chunks x DP2 (optim_grads, m = P)");
    else
        CHECK(0, "DiT PP2 x 2 chunks x DP2 runs");
}

static void wan_cases(void) {
    if (train(0, WAN, "wan1", "") != 0) {
        CHECK(0, "Wan one process runs");
        return;
    }
    if (train(4, WAN, "wan_tppp", TPPP) == 0) {
        compare(1, "wan_tppp", "wan1", 1, 1e-5, "Wan TP2 x PP2");
        CHECK(replicas_agree("wan_tppp", 2),
              "Wan TP2 x PP2: the replicated parameters are bit-identical across the TP ranks of each stage");
        if (train(0, WAN, "wan_tppp_to_one", test_path("checkpoint.load=%s/wan_tppp/ck/iter_0000005", dir)) == 0)
            compare(1, "wan_tppp_to_one", "wan1", 6, 1e-5, "Wan saved under TP2 x PP2, resumed as one process");
        else
            CHECK(0, "Wan TP2 x PP2 checkpoint resumed as one process runs");
    } else
        CHECK(0, "Wan TP2 x PP2 runs");
    if (train(2, WAN, "wan_vpp", VPP) == 0)
        compare(1, "wan_vpp", "wan1", 1, 1e-6, "Wan PP2 x 2 chunks (interleaved)");
    else
        CHECK(0, "Wan PP2 x 2 chunks runs");
}

static void refused(int np, const char *extra, const char *want, const char *what) {
    test_run_refused(dir, bin, np, DIT, extra, want, what);
}

int main(void) {
    bin = test_dfm_bin();
    dir = test_mkdtemp();
    test_mpi_env();
    if (!test_have_mpirun()) return test_finish();
    if (train(0, DIT, "dit1", "") == 0) {
        dit_tp_pp();
        dit_interleaved();
    } else
        CHECK(0, "DiT one process runs");
    wan_cases();
    refused(2, "model.num_layers=6 model.pipeline_model_parallel_size=2 model.virtual_pipeline_model_parallel_size=2",
            "model.num_layers 6 is not divisible by model.pipeline_model_parallel_size 2 x "
            "model.virtual_pipeline_model_parallel_size 2 = 4",
            "6 layers in 2 stages x 2 chunks");
    refused(2,
            "train.global_batch_size=6 model.pipeline_model_parallel_size=2 "
            "model.virtual_pipeline_model_parallel_size=2",
            "3 micro-batches per step and rank", "3 micro-batches under the interleaved schedule of 2 stages");
    refused(1, "model.virtual_pipeline_model_parallel_size=2", "model.virtual_pipeline_model_parallel_size = 2 (from",
            "virtual stages without pipeline parallelism");
    test_rmtree(dir);
    free(dir);
    return test_finish();
}
