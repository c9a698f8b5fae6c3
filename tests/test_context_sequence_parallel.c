/* Context parallelism together with sequence parallelism (model.context_parallel_size with
 * model.tensor_model_parallel_size and model.sequence_parallel) under mpirun --oversubscribe on 2 cores: a tiny DiT
 * and a tiny Wan trained with TP2+SP x CP2 on 4 ranks (ring attention and all-to-all for both, full and selective
 * recompute, token counts CP x TP does not divide: padded and masked, down to one token and a chunk of padding only;
 * resolution buckets of two token counts) and DP2 x TP2+SP x CP2 on 8, against one process at the same global batch;
 * the replicated parameters bit-identical across the TP ranks; a TP2+SP x CP2 checkpoint resumed as one process; the
 * layout still refused. */
#include "dfm/checkpoint.h"
#include "dfm/dit.h"
#include "dfm/wan.h"
#include "test.h"
#include "test_fs.h"
#include "test_run.h"

#include <math.h>

/* 28 x 28 images in 7 x 7 patches: 16 tokens (a CP chunk of 8, 4 per TP rank); patch_size=4 makes 49, padded to 52
 * (chunks of 26 = ceil(49 / 2) rounded up to a multiple of TP 2: 13 per TP rank; the second chunk's last 3 are
 * padding) */
static const char *DIT =
    "model.num_layers=2 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=128 "
    "train.global_batch_size=8 train.micro_batch_size=2 train.eval_interval=5 train.eval_iters=1 "
    "dataset.val_samples=16 dataset.num_workers=0 logger.log_interval=1 optimizer.lr=3e-3 scheduler.lr_warmup_iters=2 "
    "checkpoint.most_recent_k=4 train.train_iters=10 checkpoint.save_interval=5";
/* wan_tiny has 4 heads (2 per TP rank, so a2a over CP2 runs); 2 frames of 8 x 8 latents in 1 x 2 x 2 patches: 32
 * tokens (chunks of 16, 8 per TP rank); 3 frames of 10 x 10: 75, padded to 76 (chunks of 38, 19 per TP rank) */
static const char *WAN =
    "--recipe wan_tiny model.num_layers=2 dataset.max_samples=32 dataset.val_samples=4 train.global_batch_size=4 "
    "train.micro_batch_size=2 train.train_iters=10 train.eval_interval=5 train.eval_iters=1 logger.log_interval=1 "
    "dataset.num_workers=0 checkpoint.save_interval=5 optimizer.lr=3e-3 scheduler.lr_warmup_iters=2";
static const char *SPCP =
    "model.tensor_model_parallel_size=2 model.sequence_parallel=true model.context_parallel_size=2";
static const double TOL = 1e-5;
static char *dir;
static const char *bin;

static int train(int np, const char *model, const char *name, const char *extra) {
    return test_run_pretrain(dir, bin, np, model, name, extra);
}

static const char *ck(const char *run, int it) {
    return test_path("%s/%s/ck/iter_%07d", dir, run, it);
}

static double val_loss(const char *run, int step) {
    return test_run_val_loss(dir, run, step);
}

static int log_count(const char *run, const char *s) {
    return test_run_log_count(dir, run, s);
}

typedef struct {
    const char *np, *name, *ref, *extra;
    int chunk; /* the tokens of a rank's chunk the log must state */
} run_case;

/* One case against its one-process reference: losses, validation loss, final weights and EMA; the TP ranks' agreement
 * at both checkpoints; the chunk length. */
static void check_case(int wan, const char *model, const run_case *k) {
    char extra[1024];
    snprintf(extra, sizeof extra, "%s %s", SPCP, k->extra);
    int rc = train(atoi(k->np), model, k->name, extra);
    char run[1024], ref[1024], a[1024], b[1024], chunk[160];
    snprintf(run, sizeof run, "%s/%s", dir, k->name);
    snprintf(ref, sizeof ref, "%s/%s", dir, k->ref);
    snprintf(a, sizeof a, "%s", ck(k->name, 10));
    snprintf(b, sizeof b, "%s", ck(k->ref, 10));
    double dl = rc ? INFINITY : test_run_loss_diff(run, ref, 1, 10);
    double dw = rc    ? INFINITY
                : wan ? test_wan_weights_diff(a, "model", b, "model")
                      : test_dit_weights_diff(a, "model", b, "model");
    double de = rc    ? INFINITY
                : wan ? test_wan_weights_diff(a, "ema", b, "ema")
                      : test_dit_weights_diff(a, "ema", b, "ema");
    double vr = val_loss(k->ref, 10), dv = rc ? INFINITY : fabs(val_loss(k->name, 10) - vr) / fabs(vr);
    CHECK(dl <= TOL && dw <= TOL && de <= TOL && dv <= TOL,
          "%s %s (%s ranks) vs one process, 10 steps: worst loss rel %.2e, validation loss rel %.2e, final weights rel "
          "%.2e, EMA rel %.2e (tol %.0e)",
          wan ? "Wan" : "DiT", k->name, k->np, dl, dv, dw, de, TOL);
    snprintf(chunk, sizeof chunk, "each rank %d tokens of a sample", k->chunk);
    CHECK(!rc && log_count(k->name, "tensor-parallel ranks agree bit for bit") == 2 && log_count(k->name, chunk) == 1,
          "%s %s: replicated parameters and their EMA bit-identical across the TP ranks at steps 5 and 10; %s (%d a TP "
          "rank)",
          wan ? "Wan" : "DiT", k->name, chunk, k->chunk / 2);
}

static void dit_cases(void) {
    char dit7[2048], dit4[2048];
    snprintf(dit7, sizeof dit7, "%s model.patch_size=7", DIT);
    snprintf(dit4, sizeof dit4, "%s model.patch_size=4", DIT);
    CHECK(train(0, dit7, "one", "") == 0 && train(0, dit4, "one49", "") == 0,
          "DiT, one process trains (16 and 49 tokens)");
    const run_case cases[] = {
        {"4", "tp2_sp_cp2", "one", "", 8},
        {"4", "tp2_sp_cp2_49", "one49", "", 26},
        {"4", "tp2_sp_cp2_recompute", "one",
         "model.recompute_granularity=full model.recompute_method=uniform model.recompute_num_layers=2", 8},
        {"8", "dp2_tp2_sp_cp2_49_og", "one49", "ddp.data_parallel_sharding_strategy=optim_grads", 26},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
        check_case(0, strstr(cases[k].ref, "49") ? dit4 : dit7, &cases[k]);

    /* the extreme: one token (patch_size=28) padded to 4: CP rank 0's chunk holds it and a padding token, CP rank 1's
     * chunk is all padding (no valid key, a whole TP slice of padding on every rank but the first); 4 heads for a2a */
    char dit1[2048];
    snprintf(dit1, sizeof dit1, "%s model.patch_size=28 model.num_attention_heads=4", DIT);
    CHECK(train(0, dit1, "one1", "") == 0, "DiT with 1 token and 4 heads, one process trains");
    const run_case one_token[] = {{"4", "tp2_sp_cp2_1tok", "one1", "", 2},
                                  {"4", "tp2_sp_cp2_a2a_1tok", "one1", "model.cp_comm_type=a2a", 2}};
    for (int k = 0; k < 2; k++) check_case(0, dit1, &one_token[k]);

    /* saved under TP2+SP x CP2 at step 5, resumed as one process */
    char extra[2048];
    snprintf(extra, sizeof extra, "checkpoint.load=%s", ck("tp2_sp_cp2_49", 5));
    int rc = train(0, dit4, "resume_one", extra);
    double dl = rc ? INFINITY : test_run_loss_diff(test_path("%s/resume_one", dir), test_path("%s/one49", dir), 6, 10);
    CHECK(dl <= TOL,
          "DiT saved under TP2+SP x CP2 (49 tokens), resumed as one process: steps 6-10 losses rel %.2e "
          "(tol %.0e)",
          dl, TOL);
}

static void wan_cases(void) {
    char w32[2048], w75[2048];
    snprintf(w32, sizeof w32, "%s model.image_size=8 model.num_frames=2", WAN);
    snprintf(w75, sizeof w75, "%s model.image_size=10 model.num_frames=3", WAN);
    CHECK(train(0, w32, "wan_one", "") == 0 && train(0, w75, "wan_one75", "") == 0,
          "Wan, one process trains (32 and 75 tokens)");
    const run_case cases[] = {
        {"4", "wan_tp2_sp_cp2", "wan_one", "", 16},
        {"4", "wan_tp2_sp_cp2_a2a", "wan_one", "model.cp_comm_type=a2a", 16},
        {"4", "wan_tp2_sp_cp2_selective", "wan_one", "model.recompute_granularity=selective", 16},
        {"4", "wan_tp2_sp_cp2_a2a_75", "wan_one75", "model.cp_comm_type=a2a", 38},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
        check_case(1, strstr(cases[k].ref, "75") ? w75 : w32, &cases[k]);

    /* resolution buckets: 32- and 75-token samples in one folder (TP2+SP alone refuses the 75), a shape per
     * micro-batch, the chunk (16 or 38 tokens) redone per forward */
    int rc = test_wan_bucket_fixture(dir, bin);
    CHECK(rc == 0, "fixtures: 20 Wan samples of two latent shapes in one folder");
    char wb[2048];
    snprintf(wb, sizeof wb,
             "%s dataset.type=video_folder dataset.path=%s/mix dataset.max_samples=null train.eval_iters=2", WAN, dir);
    rc = rc ? rc : train(0, wb, "wan_bk_one", "");
    rc = rc ? rc : train(4, wb, "wan_bk_tp2_sp_cp2", SPCP);
    char a[1024], run[1024];
    snprintf(a, sizeof a, "%s", ck("wan_bk_tp2_sp_cp2", 10));
    snprintf(run, sizeof run, "%s/wan_bk_tp2_sp_cp2", dir);
    double dl = rc ? INFINITY : test_run_loss_diff(run, test_path("%s/wan_bk_one", dir), 1, 10);
    double dw = rc ? INFINITY : test_wan_weights_diff(a, "model", ck("wan_bk_one", 10), "model");
    double vo = val_loss("wan_bk_one", 10),
           dv = rc ? INFINITY : fabs(val_loss("wan_bk_tp2_sp_cp2", 10) - vo) / fabs(vo);
    CHECK(dl <= TOL && dw <= TOL && dv <= TOL &&
              log_count("wan_bk_tp2_sp_cp2", "tensor-parallel ranks agree bit for bit") == 2,
          "Wan TP2+SP x CP2 over resolution buckets (32 and 75 tokens, a shape per micro-batch) vs one process: worst "
          "loss rel %.2e, final weights rel %.2e, validation loss rel %.2e (tol %.0e); TP ranks bit-identical",
          dl, dw, dv, TOL);
}

int main(void) {
    bin = test_dfm_bin();
    test_mpi_env();
    if (!test_have_mpirun()) return 1;
    dir = test_mkdtemp();
    dit_cases();
    wan_cases();
    /* a2a under TP2+SP x CP2 with 2 heads: 1 head per TP rank, which CP 2 cannot split */
    char dit7[2048];
    snprintf(dit7, sizeof dit7, "%s model.patch_size=7", DIT);
    test_run_refused(dir, bin, 4, dit7,
                     "model.tensor_model_parallel_size=2 model.sequence_parallel=true "
                     "model.context_parallel_size=2 model.cp_comm_type=a2a",
                     "1 attention heads (per tensor-parallel rank) are not divisible by model.context_parallel_size 2",
                     "DiT TP2+SP x CP2 a2a with 2 heads");
    test_rmtree(dir);
    free(dir);
    return test_finish();
}
