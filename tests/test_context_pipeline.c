/* Context parallelism together with pipeline parallelism (model.context_parallel_size with
 * model.pipeline_model_parallel_size; mpirun --oversubscribe on 2 cores), against one process at the same global
 * batch, tiny DiT and Wan of 4 blocks, 10 steps of 4 micro-batches:
 *  - CP2 x PP2 (4 ranks): DiT and Wan with ring attention (p2p), Wan with all-to-all (a2a) and over resolution
 *    buckets (32- and 75-token micro-batches, validation over both shapes); DiT with 2 model chunks
 *    per stage (interleaved, the bubble in metrics.jsonl), with 49 tokens (CP2 pads one and masks it), with full
 *    recompute of one block per stage, with optim_grads_params sharding;
 *  - TP2 x CP2 x PP2, TP2+SP x CP2 x PP2 (DiT with 49 tokens; Wan) and DP2 x CP2 x PP2 (DiT), 8 ranks;
 *  - DiT CP2 x PP2 ends with the bits of CP2 alone (the pipeline adds no arithmetic); the stage-boundary tensors
 *    are the CP rank's chunk;
 *  - a CP2 x PP2 checkpoint (one file per stage, written by CP rank 0) resumed as one process, and a one-process
 *    checkpoint resumed as CP2 x PP2, continuing like the uninterrupted run;
 *  - DiT LoRA (every linear) under CP2 x PP2: losses and the PEFT adapter file;
 *  - all at once on 16 ranks: TP2+SP x CP2 x PP2 x DP2 with optim_grads (DiT with a2a, and with 2 model chunks and
 *    selective recompute; Wan), the DiT checkpoint resumed as one process and as TP2 x CP2, and exported; a
 *    one-process checkpoint resumed as TP2 x CP2.
 * Losses of every step, validation losses at steps 5 and 10, final weights and EMA within 1e-5 relative (CP changes
 * the order of the attention's and the gradients' sums); every case prints its worst differences and its time.
 * AdamW's eps is 1e-6 here: with the default 1e-8 the rounding noise of the key bias's gradient (mathematically zero:
 * softmax ignores a shift common to all keys) becomes updates that leave DiT's to_k.bias up to 1.5e-5 of the largest
 * weight apart from one process (49 tokens, the -O1 sanitizer build; 6.6e-6 in the release build; CP2 alone ends with
 * the same bits), which is CP's rounding, not the pipeline's; with 1e-6 the worst difference is about 2e-7, so the
 * tolerance has room to show a real error. */
#include "dfm/checkpoint.h"
#include "dfm/dit.h"
#include "dfm/safetensors.h"
#include "dfm/wan.h"
#include "test.h"
#include "test_fs.h"
#include "test_run.h"

#include <math.h>
#include <time.h>
#include <unistd.h>

/* 28 x 28 images in 7 x 7 patches: 16 tokens (8 a CP rank); patch_size=4 makes 49 (CP2: 25 and 24 + 1 padding) */
static const char *DIT =
    "model.num_layers=4 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=128 "
    "train.global_batch_size=8 train.micro_batch_size=2 train.eval_interval=5 "
    "train.eval_iters=1 dataset.val_samples=16 dataset.num_workers=0 logger.log_interval=1 optimizer.lr=3e-3 "
    "scheduler.lr_warmup_iters=2 checkpoint.most_recent_k=4 train.train_iters=10 checkpoint.save_interval=5 "
    "optimizer.adam_eps=1e-6";
/* 2 frames of 8 x 8 latents in 1 x 2 x 2 patches: 32 tokens */
static const char *WAN =
    "--recipe wan_tiny model.num_layers=4 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=64 "
    "model.image_size=8 model.num_frames=2 dataset.max_samples=32 dataset.val_samples=4 dataset.num_workers=0 "
    "train.global_batch_size=8 train.micro_batch_size=2 train.eval_interval=5 train.eval_iters=1 "
    "logger.log_interval=1 checkpoint.save_interval=5 optimizer.lr=3e-3 scheduler.lr_warmup_iters=1 "
    "train.train_iters=10 diffusion.cfg_dropout_prob=0.2 optimizer.adam_eps=1e-6";
static const char *CPPP = "model.context_parallel_size=2 model.pipeline_model_parallel_size=2";
static const double TOL = 1e-5;

static char *dir;
static const char *bin;
static char dit7[2048], dit4[2048], dith[2200];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A run, its wall time printed as a comment. */
static int train(int np, const char *model, const char *name, const char *extra) {
    double t0 = now();
    int rc = test_run_pretrain(dir, bin, np, model, name, extra);
    printf("# %s: %d rank%s, %.1f s\n", name, np ? np : 1, np > 1 ? "s" : "", now() - t0);
    return rc;
}

static const char *ck(const char *run, int it) {
    return test_path("%s/%s/ck/iter_%07d", dir, run, it);
}

static double val_loss(const char *run, int step) {
    return test_run_val_loss(dir, run, step);
}

static double worse(double a, double b) {
    return isnan(a) || isnan(b) ? INFINITY : a > b ? a : b;
}

/* run against ref: the losses of steps from..10, the validation losses (val) at 5 (when from is 1) and 10, the
 * final weights and EMA. */
static void compare_val(int wan, const char *run, const char *ref, int from, int val, const char *what) {
    char ra[1024], rb[1024], ca[1024], cb[1024];
    snprintf(ra, sizeof ra, "%s/%s", dir, run);
    snprintf(rb, sizeof rb, "%s/%s", dir, ref);
    snprintf(ca, sizeof ca, "%s", ck(run, 10));
    snprintf(cb, sizeof cb, "%s", ck(ref, 10));
    double dl = test_run_loss_diff(ra, rb, from, 10), dv = 0, dw = 0;
    for (int s = from == 1 ? 5 : 10; val && s <= 10; s += 5)
        dv = worse(dv, fabs(val_loss(run, s) - val_loss(ref, s)) / fabs(val_loss(ref, s)));
    const char *kinds[2] = {"model", "ema"};
    for (int k = 0; k < 2; k++)
        dw = worse(dw, wan ? test_wan_weights_diff(ca, kinds[k], cb, kinds[k])
                           : test_dit_weights_diff(ca, kinds[k], cb, kinds[k]));
    char vs[64] = "no validation";
    if (val) snprintf(vs, sizeof vs, "validation losses rel %.2e", dv);
    printf("# %s: worst loss difference %.3g, %s, weights/EMA %.3g (relative)\n", what, dl, vs, dw);
    CHECK(dl <= TOL && dv <= TOL && dw <= TOL,
          "%s vs one process: losses of steps %d-10 rel %.2e, %s, final weights and EMA rel %.2e (tol %.0e)", what,
          from, dl, vs, dw, TOL);
}

static void compare(int wan, const char *run, const char *ref, int from, const char *what) {
    compare_val(wan, run, ref, from, 1, what);
}

/* train and compare, or one failed check */
static void run_case(int wan, int np, const char *model, const char *name, const char *extra, const char *ref,
                     const char *what) {
    if (train(np, model, name, extra) == 0)
        compare(wan, name, ref, 1, what);
    else
        CHECK(0, "%s runs", what);
}

static int log_has(const char *run, const char *text) {
    return test_run_log_count(dir, run, text) > 0;
}

static void dit_cases(void) {
    if (train(0, dit7, "one", "") != 0 || train(0, dit4, "one49", "") != 0) {
        CHECK(0, "DiT, one process trains (16 and 49 tokens)");
        return;
    }
    run_case(0, 4, dit7, "cppp", CPPP, "one", "DiT CP2 x PP2 (p2p)");
    CHECK(log_has("cppp", "data parallel 1 x tensor 1 x context 2 x pipeline 2") &&
              log_has("cppp", "each rank 8 tokens of a sample"),
          "the start-up lines show the CP2 x PP2 layout and 8 tokens a rank");
    /* the pipeline does not change CP's arithmetic: CP2 x PP2 ends with CP2's bits */
    if (train(2, dit7, "cp2", "model.context_parallel_size=2") == 0) {
        char a[1024], b[1024];
        snprintf(a, sizeof a, "%s", ck("cppp", 10));
        snprintf(b, sizeof b, "%s", ck("cp2", 10));
        double dw = worse(test_dit_weights_diff(a, "model", b, "model"), test_dit_weights_diff(a, "ema", b, "ema"));
        CHECK(dw == 0, "DiT CP2 x PP2 and CP2 alone end with the same weights and EMA, bit for bit (rel %.2e)", dw);
    } else
        CHECK(0, "DiT CP2 runs");
    /* no_shard: data-parallel rank 0 of each stage writes its part, and of the CP ranks only CP rank 0 */
    CHECK(access(test_path("%s/shard_00001_of_00002.safetensors", ck("cppp", 5)), F_OK) == 0 &&
              access(test_path("%s/shard_00002_of_00004.safetensors", ck("cppp", 5)), F_OK) != 0,
          "a CP2 x PP2 checkpoint is one shard file per stage");
    if (train(0, dit7, "cppp_to_one", test_path("checkpoint.load=%s", ck("cppp", 5))) == 0)
        compare(0, "cppp_to_one", "one", 6, "DiT saved under CP2 x PP2 at step 5, resumed as one process");
    else
        CHECK(0, "a CP2 x PP2 checkpoint resumed as one process runs");
    if (train(4, dit7, "one_to_cppp", test_path("%s checkpoint.load=%s", CPPP, ck("one", 5))) == 0)
        compare(0, "one_to_cppp", "one", 6, "DiT saved by one process at step 5, resumed as CP2 x PP2");
    else
        CHECK(0, "a one-process checkpoint resumed as CP2 x PP2 runs");

    run_case(0, 4, dit7, "cppp_vpp", test_path("%s model.virtual_pipeline_model_parallel_size=2", CPPP), "one",
             "DiT CP2 x PP2 x 2 model chunks (interleaved)");
    char *metrics = test_read_file(test_path("%s/cppp_vpp/metrics.jsonl", dir), NULL);
    CHECK(metrics && strstr(metrics, "\"pp_bubble\": 0.1111"),
          "metrics.jsonl of CP2 x PP2 x 2 chunks reports the interleaved bubble 1/9 (4 micro-batches a rank)");
    free(metrics);
    run_case(0, 4, dit4, "cppp_49", CPPP, "one49", "DiT CP2 x PP2, 49 tokens (one padded and masked)");
    run_case(0, 4, dit7, "cppp_recompute",
             test_path("%s model.recompute_granularity=full model.recompute_method=uniform "
                       "model.recompute_num_layers=1",
                       CPPP),
             "one", "DiT CP2 x PP2 with full recompute");
    run_case(0, 4, dit7, "cppp_ogp", test_path("%s ddp.data_parallel_sharding_strategy=optim_grads_params", CPPP),
             "one", "DiT CP2 x PP2, optim_grads_params");
    run_case(0, 8, dit7, "tpcppp", test_path("%s model.tensor_model_parallel_size=2", CPPP), "one",
             "DiT TP2 x CP2 x PP2 (8 ranks)");
    CHECK(log_has("tpcppp", "tensor-parallel ranks agree bit for bit"),
          "TP2 x CP2 x PP2: the replicated parameters agree over each stage's TP ranks at the checkpoints");
    run_case(0, 8, dit4, "spcppp_49",
             test_path("%s model.tensor_model_parallel_size=2 model.sequence_parallel=true", CPPP), "one49",
             "DiT TP2+SP x CP2 x PP2, 49 tokens (padded to 52: 13 a rank; 8 ranks)");
    run_case(0, 8, dit7, "dpcppp_og", test_path("%s ddp.data_parallel_sharding_strategy=optim_grads", CPPP), "one",
             "DiT DP2 x CP2 x PP2, optim_grads (8 ranks)");
    CHECK(log_has("dpcppp_og", "data parallel 2 x tensor 1 x context 2 x pipeline 2"),
          "the 8-rank run without TP puts the rest of the world in DP: DP2 x CP2 x PP2");
}

/* What crosses a stage boundary under CP is this rank's chunk of the hidden states (in one process, no MPI): Wan of
 * 75 tokens (CP2: chunks of 38, the last one padded) and 32 tokens in the same model, DiT of 49 tokens. */
static void stage_tensor_sizes(void) {
    wan_config wc;
    wan_config_named(&wc, "wan_tiny");
    wc.num_layers = 4;
    const int d = wc.num_heads * wc.head_dim, Lt = 8;
    wan_shape mx = {2, 3, 10, 10, Lt}, small = {2, 2, 8, 8, Lt};
    for (int r = 0; r < 2; r++) {
        wan_model m;
        char err[512];
        wan_create_weights_only(&m, &wc);
        wan_set_context_parallel(&m, 2, r, 0);
        if (wan_prepare(&m, &mx, err, sizeof err) != 0) {
            CHECK(0, "Wan prepare: %s", err);
            wan_free(&m);
            return;
        }
        wan_set_stage(&m, 2, 4, 1);
        int ok = 1;
        for (int dir = 0; dir < 3; dir++)
            for (int k = 0; k < 2; k++) {
                stage_tensors io;
                const wan_shape *s = k ? &small : &mx;
                wan_stage_tensors(&m, s, (stage_dir)dir, &io);
                size_t want = (size_t)s->batch * (k ? 16 : 38) * d;
                if (io.len[0] != want) {
                    printf("# Wan CP rank %d, %s tokens, direction %d: %zu floats of hidden states, want %zu\n", r,
                           k ? "32" : "75", dir, io.len[0], want);
                    ok = 0;
                }
                ok &= io.len[1] == (size_t)s->batch * d && io.len[3] == (size_t)s->batch * Lt * d;
            }
        CHECK(ok,
              "Wan CP rank %d of 2: the hidden states crossing a stage boundary are the rank's chunk (75 tokens: "
              "38 a rank; 32: 16), the conditioning whole",
              r);
        wan_free(&m);
    }
    dit_config dc;
    dit_config_named(&dc, "tiny");
    dc.num_layers = 4, dc.image_size = 28, dc.patch_size = 4, dc.in_channels = dc.out_channels = 1;
    dit_model m;
    dit_create(&m, &dc, 2);
    dit_set_context_parallel(&m, 2, 1, 0);
    dit_set_stage(&m, 2, 4, 1);
    stage_tensors io;
    dit_stage_tensors(&m, 2, STAGE_FWD_IN, &io);
    CHECK(io.len[0] == (size_t)2 * 25 * dc.hidden_size && io.len[1] == (size_t)2 * dc.hidden_size,
          "DiT of 49 tokens, CP rank 1 of 2: %zu floats of hidden states cross a stage boundary (2 x 25 x %d)",
          io.len[0], dc.hidden_size);
    dit_free(&m);
}

/* The worst difference between two PEFT adapter files (max |a - b| over max |b|, every tensor of b found in a with its
 * shape; INFINITY otherwise), and their tensor count in *n. */
static double peft_diff(const char *a, const char *b, int *n) {
    char err[512];
    double dmax = 0, rmax = 0;
    *n = 0;
    st_file *fb = st_open(b, err, sizeof err), *fa = fb ? st_open(a, err, sizeof err) : NULL;
    int ok = fa && fb && fa->n_tensors == fb->n_tensors;
    for (int i = 0; ok && i < fb->n_tensors; i++) {
        const st_tensor *y = &fb->tensors[i], *x = st_find(fa, y->name);
        ok = x && st_numel(x) == st_numel(y);
        size_t k = ok ? (size_t)st_numel(y) : 0;
        float *vx = xalloc_floats(k + 1), *vy = xalloc_floats(k + 1);
        if (ok) st_read_f32(fa, x, vx), st_read_f32(fb, y, vy);
        for (size_t e = 0; e < k; e++) {
            if (!(fabs((double)vx[e] - vy[e]) <= dmax)) dmax = fabs((double)vx[e] - vy[e]);
            if (fabs(vy[e]) > rmax) rmax = fabs(vy[e]);
        }
        free(vx), free(vy);
        *n += ok;
    }
    if (!fb || (fb && !fa)) printf("# %s\n", err);
    if (fa) st_close(fa);
    if (fb) st_close(fb);
    return ok ? dmax / (rmax > 0 ? rmax : 1) : INFINITY;
}

/* LoRA (every linear, rank 2) over a base trained 2 steps: CP2 x PP2 against one process */
static void lora_case(void) {
    char lora[1024];
    snprintf(lora, sizeof lora,
             "peft.match_all_linear=true peft.dim=2 peft.alpha=4 checkpoint.pretrained_checkpoint=%s/lbase/ck", dir);
    if (train(0, dit7, "lbase", "train.train_iters=2") != 0 || train(0, dit7, "lora1", lora) != 0 ||
        train(4, dit7, "lora_cppp", test_path("%s %s", lora, CPPP)) != 0) {
        CHECK(0, "DiT LoRA: the base, one process and CP2 x PP2 run");
        return;
    }
    char ra[1024], rb[1024];
    snprintf(ra, sizeof ra, "%s/lora_cppp", dir);
    snprintf(rb, sizeof rb, "%s/lora1", dir);
    double dl = test_run_loss_diff(ra, rb, 1, 10), dv = 0;
    for (int st = 5; st <= 10; st += 5)
        dv = worse(dv, fabs(val_loss("lora_cppp", st) - val_loss("lora1", st)) / fabs(val_loss("lora1", st)));
    int n = 0;
    double da = peft_diff(test_path("%s/adapter/adapter_model.safetensors", ck("lora_cppp", 10)),
                          test_path("%s/adapter/adapter_model.safetensors", ck("lora1", 10)), &n);
    printf("# DiT LoRA CP2 x PP2: worst loss difference %.3g, validation losses %.3g, adapters %.3g (%d tensors)\n", dl,
           dv, da, n);
    CHECK(n > 0 && dl <= TOL && dv <= TOL && da <= TOL,
          "DiT LoRA under CP2 x PP2 vs one process: losses rel %.2e, validation losses rel %.2e, the %d tensors of the "
          "PEFT adapter file rel %.2e (tol %.0e)",
          dl, dv, n, da, TOL);
}

static void wan_cases(void) {
    if (train(0, WAN, "wan1", "") != 0) {
        CHECK(0, "Wan one process runs");
        return;
    }
    run_case(1, 4, WAN, "wan_cppp", CPPP, "wan1", "Wan CP2 x PP2 (p2p)");
    run_case(1, 4, WAN, "wan_cppp_a2a", test_path("%s model.cp_comm_type=a2a", CPPP), "wan1", "Wan CP2 x PP2 (a2a)");
    run_case(1, 8, WAN, "wan_tpcppp", test_path("%s model.tensor_model_parallel_size=2", CPPP), "wan1",
             "Wan TP2 x CP2 x PP2 (8 ranks)");
    run_case(1, 8, WAN, "wan_spcppp",
             test_path("%s model.tensor_model_parallel_size=2 model.sequence_parallel=true", CPPP), "wan1",
             "Wan TP2+SP x CP2 x PP2 (8 ranks)");
    /* resolution buckets: 32- and 75-token samples, a shape per micro-batch, so each micro-batch has its own chunk
     * length (16 or 38 tokens a CP rank) on every stage */
    int rc = test_wan_bucket_fixture(dir, bin);
    char wb[2048];
    snprintf(wb, sizeof wb,
             "%s dataset.type=video_folder dataset.path=%s/mix dataset.max_samples=null train.global_batch_size=4", WAN,
             dir);
    if (rc == 0 && train(0, wb, "wan_bk1", "") == 0)
        if (train(4, wb, "wan_bk_cppp", CPPP) == 0)
            compare_val(1, "wan_bk_cppp", "wan_bk1", 1, 1, "Wan CP2 x PP2 over resolution buckets (32 and 75 tokens)");
        else
            CHECK(0, "Wan CP2 x PP2 over resolution buckets runs");
    else
        CHECK(0, "fixtures and a one-process Wan run over two latent shapes");
    if (train(0, WAN, "wan_cppp_to_one", test_path("checkpoint.load=%s", ck("wan_cppp", 5))) == 0)
        compare(1, "wan_cppp_to_one", "wan1", 6, "Wan saved under CP2 x PP2 at step 5, resumed as one process");
    else
        CHECK(0, "a Wan CP2 x PP2 checkpoint resumed as one process runs");
}

/* Every parallelism at once, 16 ranks: TP2 with sequence parallelism x CP2 x PP2 x DP2 in Megatron's rank order, with
 * the sharded optimizer (optim_grads). DiT of 4 heads (2 a TP rank, so a2a can split them over CP) and 49 tokens
 * (padded to 52: chunks of 26, 13 a TP rank), also with 2 model chunks a stage and selective recompute; its step-5
 * checkpoint resumed as one process and as TP2 x CP2, and exported; Wan with condition dropout (the same samples
 * dropped whatever the layout). */
static const char *ALL =
    "model.tensor_model_parallel_size=2 model.sequence_parallel=true model.context_parallel_size=2 "
    "model.pipeline_model_parallel_size=2 ddp.data_parallel_sharding_strategy=optim_grads";

static void all_at_once(void) {
    snprintf(dith, sizeof dith, "%s model.num_attention_heads=4", dit4);
    if (train(0, dith, "one49h4", "") != 0) {
        CHECK(0, "DiT of 4 heads, one process trains");
        return;
    }
    run_case(0, 16, dith, "all", test_path("%s model.cp_comm_type=a2a", ALL), "one49h4",
             "DiT TP2+SP x CP2 (a2a) x PP2 x DP2, optim_grads, 49 tokens (16 ranks)");
    CHECK(log_has("all", "16 processes: data parallel 2 x tensor 2 x context 2 x pipeline 2") &&
              log_has("all", "tensor-parallel ranks agree bit for bit"),
          "the 16-rank run's start-up line shows DP2 x TP2 x CP2 x PP2, and the replicated parameters agree over "
          "each stage's TP ranks at the checkpoints");
    run_case(0, 16, dith, "all_vpp",
             test_path("%s model.virtual_pipeline_model_parallel_size=2 model.recompute_granularity=selective", ALL),
             "one49h4", "DiT TP2+SP x CP2 (p2p) x PP2 x 2 chunks x DP2, selective recompute (16 ranks)");
    if (train(0, dith, "all_to_one", test_path("checkpoint.load=%s", ck("all", 5))) == 0)
        compare(0, "all_to_one", "one49h4", 6, "DiT saved by the 16-rank layout at step 5, resumed as one process");
    else
        CHECK(0, "the 16-rank checkpoint resumed as one process runs");
    if (train(4, dith, "all_to_tpcp",
              test_path("model.tensor_model_parallel_size=2 model.context_parallel_size=2 checkpoint.load=%s",
                        ck("all", 5))) == 0)
        compare(0, "all_to_tpcp", "one49h4", 6, "DiT saved by the 16-rank layout at step 5, resumed as TP2 x CP2");
    else
        CHECK(0, "the 16-rank checkpoint resumed as TP2 x CP2 runs");
    if (train(4, dith, "one_to_tpcp",
              test_path("model.tensor_model_parallel_size=2 model.context_parallel_size=2 checkpoint.load=%s",
                        ck("one49h4", 5))) == 0)
        compare(0, "one_to_tpcp", "one49h4", 6, "DiT saved by one process at step 5, resumed as TP2 x CP2");
    else
        CHECK(0, "a one-process checkpoint resumed as TP2 x CP2 runs");
    int rc = test_sh("%s export --checkpoint %s/all/ck --out %s/exp_all > %s/exp_all.log 2>&1 && %s export "
                     "--checkpoint %s/one49h4/ck --out %s/exp_one49h4 >> %s/exp_all.log 2>&1",
                     bin, dir, dir, dir, bin, dir, dir, dir);
    int nt = 0;
    double d = rc ? INFINITY
                  : test_st_diff(test_path("%s/exp_all/transformer/diffusion_pytorch_model.safetensors", dir),
                                 test_path("%s/exp_one49h4/transformer/diffusion_pytorch_model.safetensors", dir), &nt);
    printf("# export of the 16-rank checkpoint vs one process: %d tensors, worst %.3g\n", nt, d);
    CHECK(d <= TOL, "dfm export of the 16-rank checkpoint equals the one-process export: %d tensors, worst rel %.2e",
          nt, d);
    run_case(1, 16, WAN, "wan_all", ALL, "wan1", "Wan TP2+SP x CP2 (p2p) x PP2 x DP2, optim_grads (16 ranks)");
}

int main(void) {
    bin = test_dfm_bin();
    test_mpi_env();
    if (!test_have_mpirun()) return test_finish();
    dir = test_mkdtemp();
    snprintf(dit7, sizeof dit7, "%s model.patch_size=7", DIT);
    snprintf(dit4, sizeof dit4, "%s model.patch_size=4", DIT);
    stage_tensor_sizes();
    double t0 = now();
    dit_cases();
    lora_case();
    wan_cases();
    all_at_once();
    printf("# all runs: %.1f s\n", now() - t0);
    test_rmtree(dir);
    free(dir);
    return test_finish();
}
