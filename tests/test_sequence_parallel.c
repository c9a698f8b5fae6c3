/* Sequence parallelism (model.sequence_parallel with model.tensor_model_parallel_size) under mpirun --oversubscribe
 * on 2 cores: a tiny DiT and a tiny Wan trained with TP2+SP (also with sharding, activation recompute, and DP2 x
 * TP2+SP) against one process at the same global batch; the replicated parameters bit-identical across the TP
 * ranks; a TP2+SP checkpoint resumed as one process; the activation arena smaller than TP2 without SP; and the
 * layouts that are refused. */
#include "dfm/checkpoint.h"
#include "dfm/dit.h"
#include "dfm/wan.h"
#include "test.h"
#include "test_fs.h"
#include "test_run.h"

#include <math.h>
#include <unistd.h>

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

static void tiny_dit(dit_config *c, int patch) {
    dit_config_named(c, "tiny");
    c->num_layers = 2, c->hidden_size = 32, c->num_heads = 2, c->ffn_hidden_size = 128, c->patch_size = patch;
    c->in_channels = 1, c->out_channels = 1, c->image_size = 28, c->num_classes = 10;
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

static int replicas_agree(const char *run, int saves) {
    return test_run_tp_agree(dir, run, saves);
}

static void dit_cases(void) {
    CHECK(train(0, DIT, "one", "") == 0, "DiT, one process trains");
    const char *sp = "model.tensor_model_parallel_size=2 model.sequence_parallel=true";
    char ogp[512], rec[512];
    snprintf(ogp, sizeof ogp, "%s ddp.data_parallel_sharding_strategy=optim_grads_params", sp);
    snprintf(rec, sizeof rec,
             "%s model.recompute_granularity=full model.recompute_method=uniform model.recompute_num_layers=1", sp);
    const char *cases[][3] = {{"2", "tp2", "model.tensor_model_parallel_size=2"},
                              {"2", "tp2_sp", sp},
                              {"2", "tp2_sp_ogp", ogp},
                              {"2", "tp2_sp_recompute", rec},
                              {"4", "dp2_tp2_sp", sp}};
    for (int k = 0; k < 5; k++) {
        int rc = train(atoi(cases[k][0]), DIT, cases[k][1], cases[k][2]);
        char runbuf[1024];
        snprintf(runbuf, sizeof runbuf, "%s/%s", dir, cases[k][1]);
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
    /* TP4+SP (4 heads; 16 tokens, 4 per rank): four-way gathers and reduce-scatters, sums of four in rank order */
    const char *h4 = "model.num_attention_heads=4";
    char tp4[512];
    snprintf(tp4, sizeof tp4, "%s model.tensor_model_parallel_size=4 model.sequence_parallel=true", h4);
    int rc4 = train(0, DIT, "one_h4", h4) || train(4, DIT, "tp4_sp", tp4);
    double dl4 = rc4 ? INFINITY : loss_diff(test_path("%s/tp4_sp", dir), test_path("%s/one_h4", dir), 1, 10);
    double dw4 = rc4 ? INFINITY : dit_weights_diff(ck("tp4_sp", 10), ck("one_h4", 10), "model");
    CHECK(dl4 <= TOL && dw4 <= TOL && replicas_agree("tp4_sp", 2),
          "DiT TP4+SP (4 ranks, 4 heads) vs one process, 10 steps: worst loss rel %.2e, final weights rel %.2e (tol "
          "%.0e); replicated parameters bit-identical across the 4 TP ranks",
          dl4, dw4, TOL);

    /* with pipeline parallelism: TP2 x PP2 + SP (one block a stage; the stage boundary carries this rank's
     * tokens), and TP2 x PP2 x 2 model chunks + SP on a 4-block DiT */
    char tppp[512], four[512];
    snprintf(tppp, sizeof tppp, "%s model.pipeline_model_parallel_size=2", sp);
    snprintf(four, sizeof four,
             "model.num_layers=4 %s model.pipeline_model_parallel_size=2 model.virtual_pipeline_model_parallel_size=2",
             sp);
    int rcp = train(4, DIT, "tp2_pp2_sp", tppp);
    double dlp = rcp ? INFINITY : loss_diff(test_path("%s/tp2_pp2_sp", dir), test_path("%s/one", dir), 1, 10);
    double dwp = rcp ? INFINITY : dit_weights_diff(ck("tp2_pp2_sp", 10), ck("one", 10), "model");
    CHECK(dlp <= TOL && dwp <= TOL && replicas_agree("tp2_pp2_sp", 2),
          "DiT TP2 x PP2 + SP (4 ranks) vs one process, 10 steps: worst loss rel %.2e, final weights rel %.2e (tol "
          "%.0e); replicated parameters bit-identical across TP",
          dlp, dwp, TOL);
    int rcv = train(0, DIT, "one_l4", "model.num_layers=4") || train(4, DIT, "tp2_vpp_sp", four);
    double dlv = rcv ? INFINITY : loss_diff(test_path("%s/tp2_vpp_sp", dir), test_path("%s/one_l4", dir), 1, 10);
    double dwv = rcv ? INFINITY : dit_weights_diff(ck("tp2_vpp_sp", 10), ck("one_l4", 10), "model");
    CHECK(dlv <= TOL && dwv <= TOL && replicas_agree("tp2_vpp_sp", 2),
          "DiT (4 blocks) TP2 x PP2 x 2 chunks + SP (4 ranks) vs one process, 10 steps: worst loss rel %.2e, final "
          "weights rel %.2e (tol %.0e); replicated parameters bit-identical across TP",
          dlv, dwv, TOL);

    double dsp = dit_weights_diff(ck("tp2_sp", 10), ck("tp2", 10), "model");
    printf("# DiT TP2+SP vs TP2 without SP, final weights: worst rel %.2e\n", dsp);

    /* saved under TP2+SP at step 5, resumed as one process */
    char extra[2048];
    snprintf(extra, sizeof extra, "checkpoint.load=%s", ck("tp2_sp", 5));
    int rc = train(0, DIT, "resume_one", extra);
    double dl = rc ? INFINITY : loss_diff(test_path("%s/resume_one", dir), test_path("%s/one", dir), 6, 10);
    CHECK(dl <= TOL, "DiT saved under TP2+SP, resumed as one process: steps 6-10 losses rel %.2e (tol %.0e)", dl, TOL);
}

/* The arena of TP rank 0 of 2 with and without SP (no communication: creation only). */
static void dit_memory(void) {
    const char *names[] = {"tiny (28 x 28, patch 7: 16 tokens)", "S/2 (32 x 32, patch 2: 256 tokens)"};
    for (int k = 0; k < 2; k++) {
        dit_config c;
        if (k == 0)
            tiny_dit(&c, 7);
        else
            dit_config_named(&c, "S/2");
        dit_model one, tp;
        char err[512];
        dit_create(&one, &c, 4);
        dit_create_tp(&tp, &c, 4, 2, 0);
        size_t b1 = dit_activation_bytes(&one), b2 = dit_activation_bytes(&tp);
        int rc = dit_set_sequence_parallel(&tp, 1, err, sizeof err);
        size_t bsp = dit_activation_bytes(&tp);
        CHECK(rc == 0 && bsp < b2,
              "DiT %s, micro-batch 4: activations per rank %zu bytes with TP2+SP < %zu with TP2 (one process %zu; "
              "SP / TP2 = %.3f)",
              names[k], bsp, b2, b1, (double)bsp / (double)b2);
        dit_free(&one), dit_free(&tp);
    }
    dit_config c;
    tiny_dit(&c, 4); /* 7 x 7 = 49 tokens */
    dit_model m;
    char err[512] = "";
    dit_create_tp(&m, &c, 1, 2, 1);
    int rc = dit_set_sequence_parallel(&m, 1, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "49 tokens") && strstr(err, "model.tensor_model_parallel_size 2"),
          "DiT SP with 49 tokens over TP 2 is an error naming both: %s", err);
    dit_free(&m);
    dit_create(&m, &c, 1);
    err[0] = 0;
    rc = dit_set_sequence_parallel(&m, 1, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "needs tensor parallelism"), "DiT SP without TP is an error: %s", err);
    dit_free(&m);
}

static void refused(int np, const char *model, const char *extra, const char *want, const char *what);

static void wan_cases(void) {
    CHECK(train(0, WAN, "wan_one", "") == 0, "Wan, one process trains");
    const char *sp = "model.tensor_model_parallel_size=2 model.sequence_parallel=true";
    char og[512], rec[512], tppp[512];
    snprintf(og, sizeof og, "%s ddp.data_parallel_sharding_strategy=optim_grads", sp);
    snprintf(tppp, sizeof tppp, "%s model.pipeline_model_parallel_size=2", sp);
    snprintf(rec, sizeof rec,
             "%s model.recompute_granularity=full model.recompute_method=uniform model.recompute_num_layers=1", sp);
    const char *cases[][3] = {{"2", "wan_tp2", "model.tensor_model_parallel_size=2"},
                              {"2", "wan_tp2_sp", sp},
                              {"2", "wan_tp2_sp_recompute", rec},
                              {"4", "wan_dp2_tp2_sp", og},
                              {"4", "wan_tp2_pp2_sp", tppp}};
    for (int k = 0; k < 5; k++) {
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
    char a[1024];
    snprintf(a, sizeof a, "%s", ck("wan_tp2_sp", 10));
    printf("# Wan TP2+SP vs TP2 without SP, final weights: worst rel %.2e\n",
           test_wan_weights_diff(a, "model", ck("wan_tp2", 10), "model"));
    char extra[2048];
    snprintf(extra, sizeof extra, "checkpoint.load=%s", ck("wan_tp2_sp", 5));
    int rc = train(0, WAN, "wan_resume_one", extra);
    double dl = rc ? INFINITY : loss_diff(test_path("%s/wan_resume_one", dir), test_path("%s/wan_one", dir), 6, 10);
    CHECK(dl <= TOL, "Wan saved under TP2+SP, resumed as one process: steps 6-10 losses rel %.2e (tol %.0e)", dl, TOL);
}

/* Resolution buckets under SP: a folder of two latent shapes (2 x 8 x 8: 32 tokens, 4 x 8 x 8: 64) trains under
 * TP2+SP as one process does; a folder whose largest shape divides by TP but one bucket (3 x 10 x 10: 75 tokens)
 * does not is refused at start-up, naming the sample and both numbers. */
static void wan_bucket_cases(void) {
    int rc = test_sh("B=$(realpath %s) && cd %s && for s in '1 2 8 5' '2 4 8 7' '3 3 10 9' '4 4 16 11'; do set -- "
                     "$s; $B data prepare --video-clips --out e$1 --n $((12 - 2 * $1)) --frames $2 --size $3 "
                     "--text-dim 32 --seed $4 > p$1.log 2>&1 && $B data convert --from e$1 --to s$1 > c$1.log 2>&1 || "
                     "exit 1; done && mkdir mix odd && for f in s1/*; do cp $f mix/a_${f#s1/}; cp $f odd/a_${f#s1/}; "
                     "done && for f in s2/*; do cp $f mix/b_${f#s2/}; done && for f in s3/*; do cp $f odd/c_${f#s3/}; "
                     "done && for f in s4/*; do cp $f odd/d_${f#s4/}; done",
                     bin, dir);
    CHECK(rc == 0, "fixtures: folders of latent shapes for resolution buckets");
    char model[1024];
    snprintf(model, sizeof model,
             "--recipe wan_tiny model.num_layers=2 model.hidden_size=32 model.num_attention_heads=2 "
             "model.ffn_hidden_size=64 dataset.type=video_folder dataset.path=%s/mix dataset.max_samples=null "
             "dataset.val_samples=4 train.global_batch_size=4 train.micro_batch_size=2 train.train_iters=6 "
             "logger.log_interval=1 checkpoint.save_interval=6",
             dir);
    rc = train(0, model, "bk_one", "") ||
         train(2, model, "bk_sp", "model.tensor_model_parallel_size=2 model.sequence_parallel=true");
    double dl = rc ? INFINITY : loss_diff(test_path("%s/bk_sp", dir), test_path("%s/bk_one", dir), 1, 6);
    char a[1024];
    snprintf(a, sizeof a, "%s", ck("bk_sp", 6));
    double dw = rc ? INFINITY : test_wan_weights_diff(a, "model", ck("bk_one", 6), "model");
    CHECK(dl <= TOL && dw <= TOL,
          "Wan with 2 latent shapes (resolution buckets), TP2+SP vs one process, 6 steps: worst loss rel %.2e, final "
          "weights rel %.2e (tol %.0e)",
          dl, dw, TOL);
    char *odd = xstrdup(model), *at = strstr(odd, "/mix ");
    memcpy(at, "/odd ", 5);
    refused(2, odd, "model.tensor_model_parallel_size=2 model.sequence_parallel=true",
            "(latents [1, 3, 10, 10]): model.sequence_parallel: the 75 video tokens per sample (3 x 5 x 5 patches) are "
            "not divisible by model.tensor_model_parallel_size 2",
            "Wan SP with one bucket's tokens not divisible by TP");
    free(odd);
}

/* Wan's arena on TP rank 0 of 2, with and without SP, for the tiny test shape and a larger clip. */
static void wan_memory(void) {
    const wan_shape shapes[] = {{2, 2, 8, 8, 16}, {2, 4, 32, 32, 64}};
    for (int k = 0; k < 2; k++) {
        wan_config c;
        wan_config_named(&c, "wan_tiny");
        size_t bytes[3];
        char err[512] = "";
        int ok = 1;
        for (int v = 0; v < 3; v++) { /* one process, TP2, TP2+SP */
            wan_model m;
            wan_create_weights_only_tp(&m, &c, v ? 2 : 1, 0);
            ok &= wan_set_sequence_parallel(&m, v == 2, err, sizeof err) == 0;
            ok &= wan_prepare(&m, &shapes[k], err, sizeof err) == 0;
            bytes[v] = ok ? wan_activation_bytes(&m) : 0;
            wan_free(&m);
        }
        const wan_shape *s = &shapes[k];
        CHECK(ok && bytes[2] < bytes[1],
              "Wan tiny, %d clips of %d x %d x %d latents (%d tokens): activations per rank %zu bytes with TP2+SP < "
              "%zu with TP2 (one process %zu; SP / TP2 = %.3f) %s",
              s->batch, s->frames, s->height, s->width, s->frames * s->height * s->width / 4, bytes[2], bytes[1],
              bytes[0], bytes[1] ? (double)bytes[2] / (double)bytes[1] : 0.0, err);
    }
    wan_config c;
    wan_config_named(&c, "wan_tiny");
    wan_model m;
    char err[512] = "";
    wan_create_weights_only(&m, &c);
    int rc = wan_set_sequence_parallel(&m, 1, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "needs tensor parallelism"), "Wan SP without TP is an error: %s", err);
    wan_free(&m);
}

static void refused(int np, const char *model, const char *extra, const char *want, const char *what) {
    test_run_refused(dir, bin, np, model, extra, want, what);
}

/* dfm finetune (the Automodel paradigm): fsdp.tp_size with fsdp.sequence_parallel maps onto TP + SP */
static void finetune_case(void) {
    static char abs_bin[2048], cwd[800];
    snprintf(abs_bin, sizeof abs_bin, "%s/%s", getcwd(cwd, sizeof cwd) ? cwd : ".", bin);
    int rc = test_tiny_wan_fixture(dir, abs_bin);
    CHECK(rc == 0, "fixtures: a tiny Wan as a diffusers folder and pre-encoded clips (256 tokens each)");
    const char *runs[][3] = {
        {"", "ft_one", ""},
        {"mpirun --oversubscribe -np 2", "ft_sp", "--fsdp.tp_size=2 --fsdp.sequence_parallel=true"}};
    for (int k = 0; k < 2 && rc == 0; k++) rc = test_finetune_tiny_wan(dir, bin, runs[k][0], runs[k][1], runs[k][2]);
    int sp =
        test_run_log_count(dir, "ft_sp", "sequence parallel") > 0 && test_run_log_count(dir, "ft_sp", "tensor 2") > 0;
    char run[1024];
    snprintf(run, sizeof run, "%s/ft_sp", dir);
    double dl = rc ? INFINITY : test_run_loss_diff(run, test_path("%s/ft_one", dir), 1, 6);
    CHECK(rc == 0 && sp && dl <= 1e-5,
          "dfm finetune with fsdp.tp_size=2 and fsdp.sequence_parallel=true runs TP2 + SP and matches one process: "
          "6 steps, worst loss rel %.2e (tol 1e-5)",
          dl);
}

int main(void) {
    bin = test_dfm_bin();
    test_mpi_env();
    if (!test_have_mpirun()) return 1;
    dir = test_mkdtemp();
    dit_memory();
    dit_cases();
    refused(2, DIT, "model.sequence_parallel=true", "needs tensor parallelism: model.tensor_model_parallel_size is 1",
            "SP without TP (2 data-parallel ranks)");
    refused(2, DIT, "model.tensor_model_parallel_size=2 model.sequence_parallel=true model.patch_size=4",
            "the 49 tokens per sample ((model.image_size 28 / model.patch_size 4)^2) are not divisible by "
            "model.tensor_model_parallel_size 2",
            "DiT SP with tokens not divisible by TP");
    wan_memory();
    wan_cases();
    wan_bucket_cases();
    finetune_case();
    refused(2, WAN,
            "model.tensor_model_parallel_size=2 model.sequence_parallel=true model.image_size=10 model.num_frames=3",
            "the 75 video tokens per sample (3 x 5 x 5 patches) are not divisible by "
            "model.tensor_model_parallel_size 2",
            "Wan SP with tokens not divisible by TP");
    test_rmtree(dir);
    free(dir);
    return test_finish();
}
