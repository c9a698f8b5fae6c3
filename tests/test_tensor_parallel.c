/* Tensor parallelism (model.tensor_model_parallel_size) under mpirun --oversubscribe on 2 cores: a tiny DiT and a
 * tiny Wan trained with TP2 (with sharding, with activation recompute, and DP2 x TP2) against one process at the same
 * global batch, the replicated parameters identical across the TP ranks, a TP2 checkpoint resumed as one process, dfm
 * export of a TP2 checkpoint, and the layouts that are refused. */
#include "dfm/checkpoint.h"
#include "dfm/dist.h"
#include "dfm/dit.h"
#include "dfm/safetensors.h"
#include "test.h"
#include "test_fs.h"
#include "test_run.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static const char *DIT =
    "model.num_layers=2 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=128 "
    "model.patch_size=7 train.global_batch_size=8 train.micro_batch_size=2 train.eval_interval=100 "
    "train.eval_iters=1 dataset.val_samples=16 dataset.num_workers=0 logger.log_interval=1 optimizer.lr=3e-3 "
    "scheduler.lr_warmup_iters=2 checkpoint.most_recent_k=4 train.train_iters=10 checkpoint.save_interval=5";
static const char *WAN =
    "--recipe wan_tiny model.num_layers=2 model.image_size=8 model.num_frames=2 dataset.max_samples=32 "
    "dataset.val_samples=4 train.global_batch_size=4 train.micro_batch_size=2 train.train_iters=10 "
    "train.eval_interval=100 train.eval_iters=1 logger.log_interval=1 dataset.num_workers=0 "
    "checkpoint.save_interval=5 optimizer.lr=3e-3 scheduler.lr_warmup_iters=2";
static const double TOL = 1e-5;
static char *dir;
static const char *bin;

static double loss_diff(const char *a, const char *b, int from, int to) {
    return test_run_loss_diff(a, b, from, to);
}

static double dit_weights_diff(const char *a, const char *b, const char *kind) {
    return test_dit_weights_diff(a, kind, b, kind);
}

static int train(int np, const char *model, const char *name, const char *extra) {
    return test_run_pretrain(dir, bin, np, model, name, extra);
}

static const char *ck(const char *run, int it) {
    return test_path("%s/%s/ck/iter_%07d", dir, run, it);
}

static int replicas_agree(const char *run, int saves) {
    return test_run_tp_agree(dir, run, saves);
}

static void dit_cases(void) {
    CHECK(train(0, DIT, "one", "") == 0, "DiT, one process trains");
    const char *cases[][3] = {
        {"2", "tp2", "model.tensor_model_parallel_size=2"},
        {"2", "tp2_ogp", "model.tensor_model_parallel_size=2 ddp.data_parallel_sharding_strategy=optim_grads_params"},
        {"4", "dp2_tp2", "model.tensor_model_parallel_size=2"},
        {"4", "dp2_tp2_optim", "model.tensor_model_parallel_size=2 ddp.data_parallel_sharding_strategy=optim"},
        {"2", "tp2_recompute",
         "model.tensor_model_parallel_size=2 model.recompute_granularity=full "
         "model.recompute_method=uniform model.recompute_num_layers=1"}};
    for (int k = 0; k < 5; k++) {
        int rc = train(atoi(cases[k][0]), DIT, cases[k][1], cases[k][2]);
        const char *run = test_path("%s/%s", dir, cases[k][1]);
        char runbuf[1024];
        snprintf(runbuf, sizeof runbuf, "%s", run);
        double dl = rc ? INFINITY : loss_diff(runbuf, test_path("%s/one", dir), 1, 10);
        double dw = rc ? INFINITY : dit_weights_diff(ck(cases[k][1], 10), ck("one", 10), "model");
        double de = rc ? INFINITY : dit_weights_diff(ck(cases[k][1], 10), ck("one", 10), "ema");
        CHECK(dl <= TOL && dw <= TOL && de <= TOL,
              "DiT %s (%s ranks) vs one process, 10 steps: worst loss rel %.2e, final weights rel %.2e, EMA rel %.2e "
              "(tol %.0e)",
              cases[k][1], cases[k][0], dl, dw, de, TOL);
        CHECK(!rc && replicas_agree(cases[k][1], 2),
              "DiT %s: the replicated parameters and their EMA are bit-identical across the TP ranks at steps 5 and 10",
              cases[k][1]);
    }
    struct stat sb;
    CHECK(stat(test_path("%s/shard_00001_of_00002.safetensors", ck("tp2", 5)), &sb) == 0 &&
              stat(test_path("%s/shard_00003_of_00004.safetensors", ck("dp2_tp2_optim", 5)), &sb) == 0,
          "TP2 writes one shard per TP rank; DP2 x TP2 optim one per rank");

    /* saved under TP2 at step 5, resumed as one process and as TP2 with another strategy */
    const char *resumes[][3] = {
        {"0", "resume_one", ""},
        {"2", "resume_tp2_ogp",
         "model.tensor_model_parallel_size=2 ddp.data_parallel_sharding_strategy=optim_grads_params"}};
    for (int k = 0; k < 2; k++) {
        char extra[2048];
        snprintf(extra, sizeof extra, "%s checkpoint.load=%s", resumes[k][2], ck("tp2", 5));
        int rc = train(atoi(resumes[k][0]), DIT, resumes[k][1], extra);
        char runbuf[1024];
        snprintf(runbuf, sizeof runbuf, "%s/%s", dir, resumes[k][1]);
        double dl = rc ? INFINITY : loss_diff(runbuf, test_path("%s/one", dir), 6, 10);
        double dw = rc ? INFINITY : dit_weights_diff(ck(resumes[k][1], 10), ck("one", 10), "model");
        CHECK(dl <= TOL && dw <= TOL,
              "DiT saved under TP2, resumed %s: steps 6-10 losses rel %.2e, final weights rel %.2e vs the "
              "uninterrupted one-process run (tol %.0e)",
              k ? "as TP2 optim_grads_params" : "as one process", dl, dw, TOL);
    }
    /* a one-process checkpoint resumed under TP2 */
    char extra[2048];
    snprintf(extra, sizeof extra, "model.tensor_model_parallel_size=2 checkpoint.load=%s", ck("one", 5));
    int rc = train(2, DIT, "resume_from_one", extra);
    double dl = rc ? INFINITY : loss_diff(test_path("%s/resume_from_one", dir), test_path("%s/one", dir), 6, 10);
    CHECK(dl <= TOL, "DiT saved by one process, resumed under TP2: steps 6-10 losses rel %.2e (tol %.0e)", dl, TOL);

    /* dfm export of a TP2 checkpoint: one diffusers folder, equal to the one-process export */
    rc = test_sh(
        "%s export --checkpoint %s/tp2/ck --out %s/exp_tp2 > %s/exp.log 2>&1 && %s export --checkpoint %s/one/ck "
        "--out %s/exp_one >> %s/exp.log 2>&1",
        bin, dir, dir, dir, bin, dir, dir, dir);
    double worst = INFINITY, maxdiff = 0, maxref = 0;
    int ntensors = 0;
    if (rc == 0) {
        char err[512];
        st_file *a =
            st_open(test_path("%s/exp_tp2/transformer/diffusion_pytorch_model.safetensors", dir), err, sizeof err);
        st_file *b =
            a ? st_open(test_path("%s/exp_one/transformer/diffusion_pytorch_model.safetensors", dir), err, sizeof err)
              : NULL;
        if (a && b && a->n_tensors == b->n_tensors) {
            worst = 0;
            for (int i = 0; i < b->n_tensors; i++) {
                const st_tensor *tb = &b->tensors[i], *ta = st_find(a, tb->name);
                size_t n = (size_t)st_numel(tb);
                if (!ta || (size_t)st_numel(ta) != n) {
                    worst = INFINITY;
                    break;
                }
                float *x = xalloc_floats(n ? n : 1), *y = xalloc_floats(n ? n : 1);
                st_read_f32(a, ta, x);
                st_read_f32(b, tb, y);
                for (size_t e = 0; e < n; e++) { /* over the whole model: max |a - b| / max |b| */
                    double d = fabs((double)x[e] - y[e]);
                    if (!(d <= maxdiff)) maxdiff = d;
                    if (fabs(y[e]) > maxref) maxref = fabs(y[e]);
                }
                ntensors++;
                free(x), free(y);
            }
        }
        if (worst == 0) worst = maxdiff / (maxref > 0 ? maxref : 1);
        if (a) st_close(a);
        if (b) st_close(b);
    }
    CHECK(worst <= TOL, "dfm export of a TP2 checkpoint equals the one-process export: %d tensors, worst rel %.2e",
          ntensors, worst);
}

static void wan_cases(void) {
    CHECK(train(0, WAN, "wan_one", "") == 0, "Wan, one process trains");
    const char *cases[][3] = {
        {"2", "wan_tp2", "model.tensor_model_parallel_size=2"},
        {"4", "wan_dp2_tp2", "model.tensor_model_parallel_size=2 ddp.data_parallel_sharding_strategy=optim_grads"},
        {"2", "wan_tp2_recompute",
         "model.tensor_model_parallel_size=2 model.recompute_granularity=full "
         "model.recompute_method=uniform model.recompute_num_layers=1"}};
    for (int k = 0; k < 3; k++) {
        int rc = train(atoi(cases[k][0]), WAN, cases[k][1], cases[k][2]);
        char runbuf[1024];
        snprintf(runbuf, sizeof runbuf, "%s/%s", dir, cases[k][1]);
        double dl = rc ? INFINITY : loss_diff(runbuf, test_path("%s/wan_one", dir), 1, 10);
        char a[1024];
        snprintf(a, sizeof a, "%s", ck(cases[k][1], 10));
        double dw = rc ? INFINITY : test_wan_weights_diff(a, "model", ck("wan_one", 10), "model");
        double de = rc ? INFINITY : test_wan_weights_diff(a, "ema", ck("wan_one", 10), "ema");
        CHECK(dl <= TOL && dw <= TOL && de <= TOL,
              "Wan %s (%s ranks) vs one process, 10 steps: worst loss rel %.2e, final weights rel %.2e, EMA rel %.2e "
              "(tol %.0e)",
              cases[k][1], cases[k][0], dl, dw, de, TOL);
        CHECK(!rc && replicas_agree(cases[k][1], 2),
              "Wan %s: the replicated parameters and their EMA are bit-identical across the TP ranks", cases[k][1]);
    }
    char extra[2048];
    snprintf(extra, sizeof extra, "checkpoint.load=%s", ck("wan_tp2", 5));
    int rc = train(0, WAN, "wan_resume_one", extra);
    double dl = rc ? INFINITY : loss_diff(test_path("%s/wan_resume_one", dir), test_path("%s/wan_one", dir), 6, 10);
    CHECK(dl <= TOL, "Wan saved under TP2, resumed as one process: steps 6-10 losses rel %.2e (tol %.0e)", dl, TOL);
}

static void refused(int np, const char *model, const char *extra, const char *want, const char *what) {
    test_run_refused(dir, bin, np, model, extra, want, what);
}

/* The value rank r holds at index i of case k (the same on every rank, so each can compute the whole sum) */
static float allreduce_value(int k, int r, size_t i) {
    uint64_t h = ((uint64_t)k * 1000003u + (uint64_t)r) * 0x9E3779B97F4A7C15ull + i * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 29, h *= 0x94D049BB133111EBull, h ^= h >> 32;
    return (float)((double)(h >> 11) / 9007199254740992.0 * 2.0 - 1.0) * (float)(1 + (i % 7)); /* mixed scales */
}

/* One rank of allreduce_cases: the ordered tensor-parallel all-reduce over every rank of the world (TP = world)
 * against the left-to-right float sum over ranks 0..T-1, which it must equal to the bit on every rank. */
static int allreduce_rank(int argc, char **argv) {
    dist_init(&argc, &argv);
    const dist_info *di = dist_get();
    char err[256];
    if (dist_setup_groups(di->size, 1, 1, err, sizeof err) != 0) dfm_die("%s", err);
    const size_t sizes[] = {1, 2, 3, 5, 7, 64, 1001, 65537};
    int bad = 0;
    for (int k = 0; k < (int)(sizeof sizes / sizeof *sizes); k++) {
        size_t n = sizes[k];
        float *buf = xalloc_floats(n), *want = xalloc_floats(n);
        for (size_t i = 0; i < n; i++) {
            buf[i] = allreduce_value(k, di->tp_rank, i);
            float acc = allreduce_value(k, 0, i);
            for (int t = 1; t < di->tp; t++) acc += allreduce_value(k, t, i);
            want[i] = acc;
        }
        dist_tp_allreduce_sum_f32(buf, n, "test all-reduce");
        if (memcmp(buf, want, n * sizeof(float))) bad++;
        free(buf), free(want);
    }
    double b = bad;
    dist_allreduce_sum_f64(&b, 1, "test mismatches");
    if (di->rank == 0) printf("allreduce T=%d mismatched cases: %d\n", di->tp, (int)b);
    dist_finalize();
    return 0;
}

static void allreduce_cases(const char *self) {
    for (int T = 2; T <= 4; T++) {
        char cmd[1024], *out = NULL, want[64];
        snprintf(cmd, sizeof cmd, "mpirun --oversubscribe -np %d %s --allreduce", T, self);
        int rc = test_capture(cmd, &out);
        snprintf(want, sizeof want, "allreduce T=%d mismatched cases: ", T);
        const char *at = out ? strstr(out, want) : NULL;
        int bad = at ? atoi(at + strlen(want)) : -1;
        CHECK(rc == 0 && bad == 0,
              "the tensor-parallel all-reduce over %d ranks (8 sizes, 1 to 65537 values) equals the rank-order sum "
              "to the bit on every rank (mismatched cases: %d)",
              T, bad);
        if (rc != 0 && out) printf("# %s\n", out);
        free(out);
    }
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "--allreduce")) return allreduce_rank(argc, argv);
    bin = test_dfm_bin();
    test_mpi_env();
    if (!test_have_mpirun()) return 1;
    dir = test_mkdtemp();
    allreduce_cases(argv[0]);
    dit_cases();
    wan_cases();
    refused(2, DIT, "model.tensor_model_parallel_size=2 model.num_attention_heads=1",
            "model.num_attention_heads 1 is not divisible by model.tensor_model_parallel_size 2",
            "DiT heads not divisible");
    refused(2, DIT, "model.tensor_model_parallel_size=2 model.ffn_hidden_size=129",
            "model.ffn_hidden_size 129 is not divisible by model.tensor_model_parallel_size 2",
            "DiT FFN not divisible");
    refused(2, WAN, "model.tensor_model_parallel_size=2 model.ffn_hidden_size=65",
            "model.ffn_hidden_size 65 is not divisible by model.tensor_model_parallel_size 2", "Wan FFN not divisible");
    refused(3, DIT, "model.tensor_model_parallel_size=2",
            "world size 3 (mpirun -np) is not divisible by tensor x context x pipeline parallel = 2 x 1 x 1",
            "TP 2 on 3 ranks");
    test_rmtree(dir);
    free(dir);
    return test_finish();
}
