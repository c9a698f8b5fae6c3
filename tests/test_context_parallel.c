/* Context parallelism (model.context_parallel_size, model.cp_comm_type) under mpirun --oversubscribe on 2 cores: a
 * tiny DiT and a tiny Wan trained with CP2 (ring and all-to-all attention, with sharding, with recompute), CP4,
 * DP2 x CP2 and TP2 x CP2 on 4 ranks against
 * one process at the same global batch; token counts CP does not divide (padded and masked); a CP2 checkpoint resumed
 * as one process and a one-process checkpoint resumed under CP2; and the layouts that are refused. */
#include "dfm/checkpoint.h"
#include "dfm/context_parallel.h"
#include "dfm/dist.h"
#include "dfm/dit.h"
#include "dfm/kernels.h"
#include "dfm/rng.h"
#include "test.h"
#include "test_fs.h"
#include "test_run.h"

#include <math.h>

/* 28 x 28 images in 7 x 7 patches: 16 tokens; patch_size=4 makes 49 (odd: CP2 pads one) */
static const char *DIT =
    "model.num_layers=2 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=128 "
    "train.global_batch_size=8 train.micro_batch_size=2 train.eval_interval=5 "
    "train.eval_iters=1 dataset.val_samples=16 dataset.num_workers=0 logger.log_interval=1 optimizer.lr=3e-3 "
    "scheduler.lr_warmup_iters=2 checkpoint.most_recent_k=4 train.train_iters=10 checkpoint.save_interval=5";
/* 2 frames of 8 x 8 latents in 1 x 2 x 2 patches: 32 tokens; 3 frames of 10 x 10 make 75 (odd) */
static const char *WAN =
    "--recipe wan_tiny model.num_layers=2 dataset.max_samples=32 "
    "dataset.val_samples=4 train.global_batch_size=4 train.micro_batch_size=2 train.train_iters=10 "
    "train.eval_interval=100 train.eval_iters=1 logger.log_interval=1 dataset.num_workers=0 "
    "checkpoint.save_interval=5 optimizer.lr=3e-3 scheduler.lr_warmup_iters=2";
static const double TOL = 1e-5;
static char *dir;
static const char *bin;
static const char *test_self; /* this test's own binary, for the ranks of attention_cases */

static double loss_diff(const char *a, const char *b, int from, int to) {
    return test_run_loss_diff(a, b, from, to);
}

/* the model's shape comes from a's metadata */
static double dit_weights_diff(const char *a, const char *b, const char *kind) {
    return test_dit_weights_diff(a, kind, b, kind);
}

static int train(int np, const char *model, const char *name, const char *extra) {
    return test_run_pretrain(dir, bin, np, model, name, extra);
}

static const char *ck(const char *run, int it) {
    return test_path("%s/%s/ck/iter_%07d", dir, run, it);
}

static double val_loss(const char *run, int step) {
    return test_run_val_loss(dir, run, step);
}

typedef struct {
    const char *np, *name, *extra;
} run_case;

static void dit_cases(void) {
    char dit7[2048], dit4[2048];
    snprintf(dit7, sizeof dit7, "%s model.patch_size=7", DIT);
    snprintf(dit4, sizeof dit4, "%s model.patch_size=4", DIT);
    CHECK(train(0, dit7, "one", "") == 0 && train(0, dit4, "one49", "") == 0,
          "DiT, one process trains (16 and 49 tokens)");
    const run_case cases[] = {
        {"2", "cp2_p2p", "model.context_parallel_size=2"},
        {"2", "cp2_a2a", "model.context_parallel_size=2 model.cp_comm_type=a2a"},
        {"2", "cp2_p2p_ogp", "model.context_parallel_size=2 ddp.data_parallel_sharding_strategy=optim_grads_params"},
        {"2", "cp2_a2a_optim",
         "model.context_parallel_size=2 model.cp_comm_type=a2a ddp.data_parallel_sharding_strategy=optim"},
        {"2", "cp2_recompute",
         "model.context_parallel_size=2 model.recompute_granularity=full model.recompute_method=uniform "
         "model.recompute_num_layers=1"},
        {"4", "dp2_cp2", "model.context_parallel_size=2"},
        {"4", "dp2_cp2_a2a_og",
         "model.context_parallel_size=2 model.cp_comm_type=a2a "
         "ddp.data_parallel_sharding_strategy=optim_grads"},
        {"4", "cp4_p2p", "model.context_parallel_size=4"},
        {"4", "tp2_cp2", "model.tensor_model_parallel_size=2 model.context_parallel_size=2"},
        {"2", "cp2_p2p_49", "model.context_parallel_size=2"},
        {"2", "cp2_a2a_49", "model.context_parallel_size=2 model.cp_comm_type=a2a"},
        {"4", "cp4_p2p_49", "model.context_parallel_size=4"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int padded = strstr(cases[k].name, "_49") != NULL;
        const char *ref = padded ? "one49" : "one";
        int rc = train(atoi(cases[k].np), padded ? dit4 : dit7, cases[k].name, cases[k].extra);
        char runbuf[1024], refbuf[1024];
        snprintf(runbuf, sizeof runbuf, "%s/%s", dir, cases[k].name);
        snprintf(refbuf, sizeof refbuf, "%s/%s", dir, ref);
        char ckbuf[1024];
        snprintf(ckbuf, sizeof ckbuf, "%s", ck(cases[k].name, 10));
        double dl = rc ? INFINITY : loss_diff(runbuf, refbuf, 1, 10);
        double dw = rc ? INFINITY : dit_weights_diff(ckbuf, ck(ref, 10), "model");
        double de = rc ? INFINITY : dit_weights_diff(ckbuf, ck(ref, 10), "ema");
        double dv = rc ? INFINITY : fabs(val_loss(cases[k].name, 10) - val_loss(ref, 10)) / fabs(val_loss(ref, 10));
        CHECK(dl <= TOL && dw <= TOL && de <= TOL && dv <= TOL,
              "DiT %s (%s ranks%s) vs one process, 10 steps: worst loss rel %.2e, final weights rel %.2e, "
              "EMA rel %.2e, validation loss rel %.2e (tol %.0e)",
              cases[k].name, cases[k].np, padded ? ", 49 tokens padded to a multiple of CP" : "", dl, dw, de, dv, TOL);
    }
    /* saved under CP2 at step 5, resumed as one process; a one-process checkpoint resumed under CP2 a2a */
    const run_case resumes[] = {{"0", "resume_one", "cp2_p2p"}, {"2", "resume_cp2", "one"}};
    for (int k = 0; k < 2; k++) {
        char extra[2048];
        snprintf(extra, sizeof extra, "%s checkpoint.load=%s",
                 k ? "model.context_parallel_size=2 model.cp_comm_type=a2a" : "", ck(resumes[k].extra, 5));
        int rc = train(atoi(resumes[k].np), dit7, resumes[k].name, extra);
        char runbuf[1024];
        snprintf(runbuf, sizeof runbuf, "%s/%s", dir, resumes[k].name);
        double dl = rc ? INFINITY : loss_diff(runbuf, test_path("%s/one", dir), 6, 10);
        double dw = rc ? INFINITY : dit_weights_diff(ck(resumes[k].name, 10), ck("one", 10), "model");
        CHECK(dl <= TOL && dw <= TOL,
              "DiT saved %s, resumed %s: steps 6-10 losses rel %.2e, final weights rel %.2e vs the uninterrupted "
              "one-process run (tol %.0e)",
              k ? "by one process" : "under CP2", k ? "under CP2 a2a" : "as one process", dl, dw, TOL);
    }
}

static void wan_cases(void) {
    char w32[2048], w75[2048];
    snprintf(w32, sizeof w32, "%s model.image_size=8 model.num_frames=2", WAN);
    snprintf(w75, sizeof w75, "%s model.image_size=10 model.num_frames=3", WAN);
    CHECK(train(0, w32, "wan_one", "") == 0 && train(0, w75, "wan_one75", "") == 0,
          "Wan, one process trains (32 and 75 tokens)");
    const run_case cases[] = {
        {"2", "wan_cp2_p2p", "model.context_parallel_size=2"},
        {"2", "wan_cp2_a2a", "model.context_parallel_size=2 model.cp_comm_type=a2a"},
        {"4", "wan_dp2_cp2", "model.context_parallel_size=2 ddp.data_parallel_sharding_strategy=optim_grads"},
        {"4", "wan_tp2_cp2_a2a",
         "model.tensor_model_parallel_size=2 model.context_parallel_size=2 model.cp_comm_type=a2a"},
        {"2", "wan_cp2_p2p_75", "model.context_parallel_size=2"},
        {"2", "wan_cp2_a2a_75", "model.context_parallel_size=2 model.cp_comm_type=a2a"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int padded = strstr(cases[k].name, "_75") != NULL;
        const char *ref = padded ? "wan_one75" : "wan_one";
        int rc = train(atoi(cases[k].np), padded ? w75 : w32, cases[k].name, cases[k].extra);
        char runbuf[1024], refbuf[1024], a[1024];
        snprintf(runbuf, sizeof runbuf, "%s/%s", dir, cases[k].name);
        snprintf(refbuf, sizeof refbuf, "%s/%s", dir, ref);
        snprintf(a, sizeof a, "%s", ck(cases[k].name, 10));
        double dl = rc ? INFINITY : loss_diff(runbuf, refbuf, 1, 10);
        double dw = rc ? INFINITY : test_wan_weights_diff(a, "model", ck(ref, 10), "model");
        double de = rc ? INFINITY : test_wan_weights_diff(a, "ema", ck(ref, 10), "ema");
        CHECK(dl <= TOL && dw <= TOL && de <= TOL,
              "Wan %s (%s ranks%s) vs one process, 10 steps: worst loss rel %.2e, final weights rel %.2e, EMA rel %.2e "
              "(tol %.0e)",
              cases[k].name, cases[k].np, padded ? ", 75 tokens padded to a multiple of CP" : "", dl, dw, de, TOL);
    }
    /* resolution buckets: 32- and 75-token samples in one folder, a shape per micro-batch, validation per shape */
    int rc = test_wan_bucket_fixture(dir, bin);
    CHECK(rc == 0, "fixtures: 20 Wan samples of two latent shapes in one folder");
    char wb[2048];
    snprintf(wb, sizeof wb,
             "%s dataset.type=video_folder dataset.path=%s/mix dataset.max_samples=null train.eval_interval=5 "
             "train.eval_iters=2",
             WAN, dir);
    rc = rc ? rc : train(0, wb, "wan_bk_one", "");
    rc = rc ? rc : train(2, wb, "wan_bk_cp2", "model.context_parallel_size=2");
    {
        char a[1024];
        snprintf(a, sizeof a, "%s", ck("wan_bk_cp2", 10));
        char run[1024];
        snprintf(run, sizeof run, "%s/wan_bk_cp2", dir);
        double dl = rc ? INFINITY : loss_diff(run, test_path("%s/wan_bk_one", dir), 1, 10);
        double dw = rc ? INFINITY : test_wan_weights_diff(a, "model", ck("wan_bk_one", 10), "model");
        double vo = val_loss("wan_bk_one", 10), dv = rc ? INFINITY : fabs(val_loss("wan_bk_cp2", 10) - vo) / fabs(vo);
        CHECK(dl <= TOL && dw <= TOL && dv <= TOL,
              "Wan CP2 over resolution buckets (32 and 75 tokens, a shape per micro-batch) vs one process: worst loss "
              "rel %.2e, final weights rel %.2e, validation loss rel %.2e (tol %.0e)",
              dl, dw, dv, TOL);
    }
    char extra[2048];
    snprintf(extra, sizeof extra, "checkpoint.load=%s", ck("wan_cp2_p2p", 5));
    rc = train(0, w32, "wan_resume_one", extra);
    double dl = rc ? INFINITY : loss_diff(test_path("%s/wan_resume_one", dir), test_path("%s/wan_one", dir), 6, 10);
    CHECK(dl <= TOL, "Wan saved under CP2, resumed as one process: steps 6-10 losses rel %.2e (tol %.0e)", dl, TOL);
}

/* ---- the attention itself: run as `mpirun -np C test_context_parallel --attention T` -------------------------- */

/* Every rank draws the whole sequence (B samples of T tokens, fused [B, T, 3, H, D] q/k/v and dout) and runs the
 * one-process attention on it; then the CP attention on its chunk (padding rows zero), and compares its real rows.
 * Rank 0 prints the worst difference over every rank relative to the largest reference value, for out, lse, dq, dk
 * and dv, under p2p and a2a. */
static int attention_rank(int T) {
    dist_init(NULL, NULL);
    const dist_info *di = dist_get();
    char err[512];
    if (dist_setup_groups(1, di->size, 1, err, sizeof err) != 0) dfm_die("%s", err);
    kernels_init();
    const int B = 2, H = 4, D = 16, HD = H * D, C = di->cp, r = di->cp_rank;
    const int n = cp_chunk_len(T, C), valid = cp_chunk_valid(T, C, r), t0 = r * n;
    const float scale = 1.0f / sqrtf((float)D);
    size_t whole = (size_t)B * T, local = (size_t)B * n;
    float *qkv = xalloc_floats(whole * 3 * HD), *dout = xalloc_floats(whole * HD);
    rng_fill_normal(qkv, whole * 3 * HD, 7, 1, 0, 0);
    rng_fill_normal(dout, whole * HD, 7, 2, 0, 0);
    float *out = xalloc_floats(whole * HD), *lse = xalloc_floats((size_t)B * H * T);
    float *dqkv = xcalloc(whole * 3 * HD, sizeof(float)), *ws = xalloc_floats(attention_workspace_floats(B, H, T));
    attention_forward(out, lse, qkv, qkv + HD, qkv + 2 * HD, NULL, B, T, T, H, D, 3 * HD, 3 * HD, HD, scale);
    attention_backward(dqkv, dqkv + HD, dqkv + 2 * HD, ws, dout, out, lse, qkv, qkv + HD, qkv + 2 * HD, NULL, B, T, T,
                       H, D, 3 * HD, 3 * HD, HD, scale);
    double ref[5] = {0};
    for (size_t i = 0; i < whole * HD; i++) ref[0] = fmax(ref[0], fabs(out[i]));
    for (size_t i = 0; i < (size_t)B * H * T; i++) ref[1] = fmax(ref[1], fabs(lse[i]));
    for (size_t i = 0; i < whole; i++)
        for (int g = 0; g < 3; g++)
            for (int e = 0; e < HD; e++) ref[2 + g] = fmax(ref[2 + g], fabs(dqkv[i * 3 * HD + (size_t)g * HD + e]));
    float *lq = xcalloc(local * 3 * HD, sizeof(float)), *ld = xcalloc(local * HD, sizeof(float));
    for (int b = 0; b < B; b++)
        for (int i = 0; i < valid; i++) {
            memcpy(lq + ((size_t)b * n + i) * 3 * HD, qkv + ((size_t)b * T + t0 + i) * 3 * HD, sizeof(float) * 3 * HD);
            memcpy(ld + ((size_t)b * n + i) * HD, dout + ((size_t)b * T + t0 + i) * HD, sizeof(float) * HD);
        }
    float *lo = xalloc_floats(local * HD), *ll = xalloc_floats((size_t)B * H * n);
    float *lg = xalloc_floats(local * 3 * HD), *lws = xalloc_floats(attention_workspace_floats(B, H, n));
    for (int mode = 0; mode < 2; mode++) {
        memset(lg, 0, sizeof(float) * local * 3 * HD);
        cp_attention_forward((cp_comm_type)mode, lo, ll, lq, lq + HD, lq + 2 * HD, B, n, T, H, D, 3 * HD, 3 * HD, HD,
                             scale);
        cp_attention_backward((cp_comm_type)mode, lg, lg + HD, lg + 2 * HD, lws, ld, lo, ll, lq, lq + HD, lq + 2 * HD,
                              B, n, T, H, D, 3 * HD, 3 * HD, HD, scale);
        double worst[5] = {0};
        for (int b = 0; b < B; b++)
            for (int i = 0; i < valid; i++) {
                size_t lr = (size_t)b * n + i, gr = (size_t)b * T + t0 + i;
                for (int e = 0; e < HD; e++) worst[0] = fmax(worst[0], fabs(lo[lr * HD + e] - out[gr * HD + e]));
                for (int h = 0; h < H; h++)
                    worst[1] =
                        fmax(worst[1], fabs(ll[((size_t)b * H + h) * n + i] - lse[((size_t)b * H + h) * T + t0 + i]));
                for (int g = 0; g < 3; g++)
                    for (int e = 0; e < HD; e++)
                        worst[2 + g] = fmax(worst[2 + g], fabs(lg[lr * 3 * HD + (size_t)g * HD + e] -
                                                               dqkv[gr * 3 * HD + (size_t)g * HD + e]));
            }
        /* the worst over the ranks: each rank's values in its own slots, summed */
        double all[5 * 64] = {0};
        if (C > 64) dfm_die("at most 64 ranks");
        for (int k = 0; k < 5; k++) all[r * 5 + k] = worst[k] / (ref[k] > 0 ? ref[k] : 1);
        dist_allreduce_sum_f64_in(DIST_CP, all, 5 * C, "gather of the differences");
        for (int q = 1; q < C; q++)
            for (int k = 0; k < 5; k++) all[k] = fmax(all[k], all[q * 5 + k]);
        if (r == 0)
            printf("cp_attention %s C=%d T=%d: out %.3e lse %.3e dq %.3e dk %.3e dv %.3e\n", mode ? "a2a" : "p2p", C, T,
                   all[0], all[1], all[2], all[3], all[4]);
    }
    free(qkv), free(dout), free(out), free(lse), free(dqkv), free(ws), free(lq), free(ld), free(lo), free(ll), free(lg);
    free(lws);
    cp_release();
    dist_finalize();
    return 0;
}

static void attention_cases(void) {
    const int runs[][2] = {{2, 32}, {2, 37}, {4, 37}, {4, 5}, {2, 301}}; /* 301: several key blocks of the kernel */
    for (int k = 0; k < 5; k++) {
        char cmd[1024], *out = NULL;
        snprintf(cmd, sizeof cmd, "mpirun --oversubscribe -np %d %s --attention %d", runs[k][0], test_self, runs[k][1]);
        int rc = test_capture(cmd, &out);
        for (int mode = 0; mode < 2; mode++) {
            char want[64];
            snprintf(want, sizeof want, "cp_attention %s C=%d T=%d: ", mode ? "a2a" : "p2p", runs[k][0], runs[k][1]);
            const char *at = out ? strstr(out, want) : NULL;
            double v[5] = {INFINITY, INFINITY, INFINITY, INFINITY, INFINITY};
            if (at)
                sscanf(at + strlen(want), "out %lf lse %lf dq %lf dk %lf dv %lf", &v[0], &v[1], &v[2], &v[3], &v[4]);
            double w = 0;
            for (int i = 0; i < 5; i++) w = v[i] > w || isnan(v[i]) ? v[i] : w;
            CHECK(rc == 0 && w <= 1e-5,
                  "%s attention over %d CP ranks, %d tokens (%s) vs one process: worst rel out %.2e lse %.2e dq %.2e "
                  "dk %.2e dv %.2e",
                  mode ? "a2a" : "p2p (ring)", runs[k][0], runs[k][1], runs[k][1] % runs[k][0] ? "padded" : "divisible",
                  v[0], v[1], v[2], v[3], v[4]);
        }
        if (rc != 0 && out) printf("# %s\n", out);
        free(out);
    }
}

/* dfm finetune (the Automodel paradigm): fsdp.cp_size maps onto model.context_parallel_size */
static void finetune_cases(void) {
    static char abs_bin[2048], cwd[800];
    snprintf(abs_bin, sizeof abs_bin, "%s/%s", getcwd(cwd, sizeof cwd) ? cwd : ".", bin);
    int rc = test_tiny_wan_fixture(dir, abs_bin);
    CHECK(rc == 0, "fixtures: a tiny Wan as a diffusers folder and pre-encoded clips (256 tokens each)");
    const char *runs[][3] = {{"", "ft_one", ""}, {"mpirun --oversubscribe -np 2", "ft_cp2", "--fsdp.cp_size=2"}};
    for (int k = 0; k < 2 && rc == 0; k++) rc = test_finetune_tiny_wan(dir, bin, runs[k][0], runs[k][1], runs[k][2]);
    char *log = test_read_file(test_path("%s/ft_cp2.log", dir), NULL);
    int cp = log && strstr(log, "context 2") != NULL;
    free(log);
    char run[1024];
    snprintf(run, sizeof run, "%s/ft_cp2", dir);
    double dl = rc ? INFINITY : loss_diff(run, test_path("%s/ft_one", dir), 1, 6);
    CHECK(rc == 0 && cp && dl <= TOL,
          "dfm finetune with fsdp.cp_size=2 runs context-parallel and matches one process: 6 steps, worst loss rel "
          "%.2e (tol %.0e)",
          dl, TOL);
}

static void refused(int np, const char *model, const char *extra, const char *want, const char *what) {
    test_run_refused(dir, bin, np, model, extra, want, what);
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--attention")) return attention_rank(atoi(argv[2]));
    test_self = argv[0];
    bin = test_dfm_bin();
    test_mpi_env();
    if (!test_have_mpirun()) return 1;
    dir = test_mkdtemp();
    attention_cases();
    dit_cases();
    wan_cases();
    finetune_cases();
    char dit7[2048];
    snprintf(dit7, sizeof dit7, "%s model.patch_size=7", DIT);
    refused(2, dit7, "model.context_parallel_size=2 model.cp_comm_type=a2a model.num_attention_heads=1",
            "1 attention heads (per tensor-parallel rank) are not divisible by model.context_parallel_size 2",
            "DiT a2a with heads CP does not divide");
    refused(4, WAN, "model.context_parallel_size=4 model.cp_comm_type=a2a model.num_attention_heads=2",
            "2 attention heads (per tensor-parallel rank) are not divisible by model.context_parallel_size 4",
            "Wan a2a with heads CP does not divide");
    refused(3, dit7, "model.context_parallel_size=2",
            "world size 3 (mpirun -np) is not divisible by tensor x context x pipeline parallel = 1 x 2 x 1",
            "CP 2 on 3 ranks");
    refused(2, dit7, "model.context_parallel_size=2 model.cp_comm_type=ring", "model.cp_comm_type",
            "an unknown cp_comm_type");
    refused(2, dit7, "model.context_parallel_size=2 model.pipeline_model_parallel_size=2",
            "world size 2 (mpirun -np) is not divisible by tensor x context x pipeline parallel = 1 x 2 x 2",
            "CP2 x PP2 on 2 ranks");
    test_rmtree(dir);
    free(dir);
    return test_finish();
}
