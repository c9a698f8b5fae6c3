/* LoRA (peft.*) under tensor, pipeline and context parallelism (mpirun --oversubscribe on 2 cores), against one
 * process at the same global batch, tiny DiT and Wan of 4 blocks over a base trained for 2 steps, 10 LoRA steps:
 *  - TP2, PP2, CP2, TP2 x PP2 (4 ranks), DiT TP2 + SP, CP2 x TP2 + SP and PP2 x 2 model chunks: losses, final
 *    adapters and their EMA within 1e-5 relative (the pipeline alone within 1e-6: it does not change the
 *    arithmetic), the replicated adapters bit-identical across TP ranks at every checkpoint;
 *  - the PEFT file of a TP2 and a TP2 x PP2 run: one process's names and shapes, values within 1e-5;
 *  - the base untouched: its checkpoint files unchanged, and the merged export of the TP2 LoRA checkpoint equal to
 *    the base's export bit for bit outside the adapted weights;
 *  - a TP2 LoRA checkpoint resumed as one process, a one-process one as TP2 x PP2 (steps 6-10 as uninterrupted);
 *  - dfm export / export --merge-lora / generate --adapter read what TP2 wrote;
 *  - a pipeline stage without adapted modules is refused with the numbers. */
#include "dfm/checkpoint.h"
#include "dfm/common.h"
#include "dfm/dit.h"
#include "dfm/lora.h"
#include "dfm/safetensors.h"
#include "dfm/wan.h"
#include "test.h"
#include "test_fs.h"
#include "test_run.h"

#include <math.h>
#include <unistd.h>

static const char *DIT =
    "model.num_layers=4 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=128 "
    "model.patch_size=7 train.global_batch_size=8 train.micro_batch_size=2 train.eval_interval=5 "
    "train.eval_iters=1 dataset.val_samples=16 dataset.num_workers=0 logger.log_interval=1 optimizer.lr=3e-3 "
    "scheduler.lr_warmup_iters=2 checkpoint.save_interval=5";

static const char *WAN =
    "--recipe wan_tiny model.num_layers=4 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=64 "
    "model.image_size=8 model.num_frames=2 dataset.max_samples=32 dataset.val_samples=4 dataset.num_workers=0 "
    "train.global_batch_size=8 train.micro_batch_size=2 train.eval_interval=5 train.eval_iters=1 "
    "logger.log_interval=1 checkpoint.save_interval=5 optimizer.lr=3e-3 scheduler.lr_warmup_iters=1 "
    "diffusion.cfg_dropout_prob=0.2";

/* DiT: the attention, modulation and MLP linears of every block, an embedder's (stage 0) and the head's (last
 * stage): column-parallel (q, k, v, ff.net.0), row-parallel (to_out.0, ff.net.2) and whole ones */
static const char *DIT_TARGETS[] = {"attn1.to_q",   "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                                    "norm1.linear", "*.ff.net.*", "linear_1",   "proj_out_2"};
#define DIT_NT 8

static char *dir;
static const char *bin;
static char dit_lora[1024], wan_lora[1024];

static int train(int np, const char *base, const char *name, const char *extra) {
    return test_run_pretrain(dir, bin, np, base, name, extra);
}

/* The adapters of the DiT or Wan the runs train, laid out as one process holds them (lora_create over a model of
 * the checkpoint's config), for reading checkpoints of any layout. */
static int adapter_table(int wan, const char *ck, lora_model *L) {
    char err[2048];
    char *cfg = ckpt_meta(ck, wan ? "dfm_wan_config" : "dfm_dit_config");
    int rc = -1;
    if (!cfg) {
        printf("# '%s': no model config\n", ck);
        return -1;
    }
    if (wan) {
        wan_config c;
        param_table t = {0};
        if (wan_config_from_json(&c, cfg, err, sizeof err) == 0) {
            wan_build_table(&t, &c);
            float *p = xalloc_floats(t.total);
            memset(p, 0, t.total * sizeof(float));
            lora_spec s = {2, 4.0f, 0.0f, 0, NULL, 0, NULL, 0, 1};
            rc = lora_create(L, &t, p, &s, 0, err, sizeof err);
            free(p);
            param_table_free(&t);
        }
    } else {
        dit_config c;
        if (dit_config_from_json(&c, cfg, err, sizeof err) == 0) {
            dit_model m;
            dit_create(&m, &c, 1);
            lora_spec s = {2, 4.0f, 0.0f, 0, DIT_TARGETS, DIT_NT, NULL, 0, 0};
            rc = lora_create(L, &m.table, m.params, &s, 0, err, sizeof err);
            dit_free(&m);
        }
    }
    if (rc) printf("# adapter table: %s\n", err);
    free(cfg);
    return rc;
}

/* The worst relative difference of the adapters and their EMA in the step-10 checkpoints of two runs. */
static double adapters_diff(int wan, const char *a, const char *b) {
    char pa[4096], pb[4096];
    snprintf(pa, sizeof pa, "%s/%s/ck/iter_0000010", dir, a);
    snprintf(pb, sizeof pb, "%s/%s/ck/iter_0000010", dir, b);
    lora_model L;
    if (adapter_table(wan, pb, &L)) return INFINITY;
    double d = 0;
    const char *kinds[2] = {"model", "ema"};
    for (int k = 0; k < 2; k++) {
        double e = test_table_weights_diff(&L.table, pa, kinds[k], pb, kinds[k]);
        if (!(e <= d)) d = isnan(e) ? INFINITY : e;
    }
    lora_free(&L);
    return d;
}

static double loss_diff(const char *a, const char *b, int from) {
    char ra[1024];
    snprintf(ra, sizeof ra, "%s/%s", dir, a);
    return test_run_loss_diff(ra, test_path("%s/%s", dir, b), from, 10);
}

static void compare(int wan, const char *run, const char *ref, int from, double tol, const char *what) {
    double dl = loss_diff(run, ref, from), dw = adapters_diff(wan, run, ref);
    printf("# %s: worst loss difference %.3g, worst adapter/EMA difference %.3g (relative)\n", what, dl, dw);
    CHECK(dl <= tol && dw <= tol,
          "%s vs the one-process run: losses of steps %d-10 %.3g, final adapters and their EMA %.3g (<= %.0e "
          "relative)",
          what, from, dl, dw, tol);
}

static int replicas_agree(const char *run, int saves) {
    return test_run_tp_agree(dir, run, saves);
}

/* Two PEFT adapter files: the same tensor names and shapes; *worst the largest relative difference of the values
 * (max |a - b| / max |b| over every tensor). Returns the number of tensors, -1 when they differ in names/shapes. */
static int peft_compare(const char *a, const char *b, double *worst) {
    int n = 0;
    *worst = test_st_diff(a, b, &n);
    return isinf(*worst) ? -1 : n;
}

/* An exported diffusers transformer against another: tensors bit-identical outside the adapted weights (*changed
 * counts the differing ones), and the largest relative difference over all of them. */
static double export_compare(const char *a, const char *b, int *ntensors, int *changed) {
    char err[512];
    double maxdiff = 0, maxref = 0;
    *ntensors = *changed = 0;
    st_file *fa = st_open(test_path("%s/transformer/diffusion_pytorch_model.safetensors", a), err, sizeof err);
    st_file *fb =
        fa ? st_open(test_path("%s/transformer/diffusion_pytorch_model.safetensors", b), err, sizeof err) : NULL;
    int ok = fa && fb && fa->n_tensors == fb->n_tensors;
    for (int i = 0; ok && i < fb->n_tensors; i++) {
        const st_tensor *tb = &fb->tensors[i], *ta = st_find(fa, tb->name);
        size_t n = (size_t)st_numel(tb);
        if (!ta || (size_t)st_numel(ta) != n) {
            ok = 0;
            break;
        }
        float *x = xalloc_floats(n ? n : 1), *y = xalloc_floats(n ? n : 1);
        st_read_f32(fa, ta, x);
        st_read_f32(fb, tb, y);
        *changed += memcmp(x, y, n * sizeof(float)) != 0;
        for (size_t e = 0; e < n; e++) {
            maxdiff = fmax(maxdiff, fabs((double)x[e] - y[e]));
            maxref = fmax(maxref, fabs((double)y[e]));
        }
        (*ntensors)++;
        free(x), free(y);
    }
    if (fa) st_close(fa);
    if (fb) st_close(fb);
    return ok ? maxdiff / (maxref > 0 ? maxref : 1) : INFINITY;
}

static const char *TP2 = "model.tensor_model_parallel_size=2";
static const char *PP2 = "model.pipeline_model_parallel_size=2";
static const char *CP2 = "model.context_parallel_size=2";
static const char *TPPP = "model.tensor_model_parallel_size=2 model.pipeline_model_parallel_size=2";
static const char *VPP = "model.pipeline_model_parallel_size=2 model.virtual_pipeline_model_parallel_size=2";

static void layout(int wan, int np, const char *name, const char *extra, double tol, const char *what) {
    const char *base = wan ? WAN : DIT, *lora = wan ? wan_lora : dit_lora;
    double t0 = dfm_time_s();
    if (train(np, base, name, test_path("%s %s", lora, extra)) != 0) {
        CHECK(0, "%s runs", what);
        return;
    }
    printf("# %s: %.1f s\n", what, dfm_time_s() - t0);
    compare(wan, name, wan ? "w1" : "d1", 1, tol, what);
}

static void dit_cases(void) {
    layout(0, 2, "d_tp2", TP2, 1e-5, "DiT LoRA TP2");
    CHECK(replicas_agree("d_tp2", 2), "DiT LoRA TP2: the replicated adapters (A of q/k/v/ff.net.0, B of to_out.0/"
                                      "ff.net.2, both of the whole linears) and their EMA bit-identical over TP");
    layout(0, 2, "d_pp2", PP2, 1e-6, "DiT LoRA PP2");
    layout(0, 2, "d_cp2", CP2, 1e-5, "DiT LoRA CP2");
    layout(0, 4, "d_tppp", TPPP, 1e-5, "DiT LoRA TP2 x PP2");
    CHECK(replicas_agree("d_tppp", 2), "DiT LoRA TP2 x PP2: replicated adapters bit-identical over TP at each save");
    layout(0, 2, "d_vpp", VPP, 1e-6, "DiT LoRA PP2 x 2 model chunks");
    layout(0, 2, "d_tpsp", "model.tensor_model_parallel_size=2 model.sequence_parallel=true", 1e-5,
           "DiT LoRA TP2 + sequence parallelism");
    layout(0, 4, "d_cptpsp",
           "model.context_parallel_size=2 model.tensor_model_parallel_size=2 model.sequence_parallel=true", 1e-5,
           "DiT LoRA CP2 x TP2 + SP");
    /* the fast backward (the default) under activation recomputation, and the merged-weight backward kept
     * selectable (peft.merged_backward) under one process and TP2: all the same training within 1e-5 */
    layout(0, 0, "d_rcfull",
           "model.recompute_granularity=full model.recompute_method=uniform model.recompute_num_layers=2", 1e-6,
           "DiT LoRA, full recompute (2-block checkpoints)");
    layout(0, 2, "d_tpsel",
           "model.tensor_model_parallel_size=2 model.sequence_parallel=true "
           "model.recompute_granularity=selective",
           1e-5, "DiT LoRA TP2 + SP, selective recompute");
    layout(0, 0, "d1m", "peft.merged_backward=true", 1e-5, "DiT LoRA, merged-weight backward (one process)");
    layout(0, 2, "d_tp2m", "peft.merged_backward=true model.tensor_model_parallel_size=2", 1e-5,
           "DiT LoRA TP2, merged-weight backward");
    char *l1 = test_read_file(test_path("%s/d1.log", dir), NULL),
         *lm = test_read_file(test_path("%s/d1m.log", dir), NULL);
    CHECK(l1 && lm && strstr(l1, "backward: adapter gradients from the activations") &&
              strstr(lm, "backward: merged (the model's weight gradients"),
          "the log states which LoRA backward runs (the fast one by default, the merged one with "
          "peft.merged_backward)");
    free(l1), free(lm);

    /* the PEFT files: one process's names and shapes, whatever the layout */
    const char *ref = test_path("%s/d1/ck/iter_0000010/adapter/adapter_model.safetensors", dir);
    const char *runs[2] = {"d_tp2", "d_tppp"};
    for (int k = 0; k < 2; k++) {
        double w;
        int n =
            peft_compare(test_path("%s/%s/ck/iter_0000010/adapter/adapter_model.safetensors", dir, runs[k]), ref, &w);
        printf("# PEFT file of %s: %d tensors, worst %.3g\n", runs[k], n, w);
        CHECK(n == 60 && w <= 1e-5,
              "the PEFT adapter file of %s has the one-process names and shapes (%d of 60 tensors), values within "
              "1e-5 (%.3g)",
              runs[k], n, w);
    }
    int rc = test_sh("cmp -s %s/d_tp2/ck/iter_0000010/adapter/adapter_config.json "
                     "%s/d1/ck/iter_0000010/adapter/adapter_config.json",
                     dir, dir);
    CHECK(rc == 0, "the TP2 run's adapter_config.json is the one-process run's (every adapted module, r, alpha)");

    /* resumed under another layout */
    if (train(0, DIT, "d_tp2_to_one", test_path("%s checkpoint.load=%s/d_tp2/ck/iter_0000005", dit_lora, dir)) == 0)
        compare(0, "d_tp2_to_one", "d1", 6, 1e-5, "DiT LoRA saved under TP2 at step 5, resumed as one process");
    else
        CHECK(0, "a TP2 LoRA checkpoint resumed as one process runs");
    if (train(4, DIT, "d_one_to_tppp", test_path("%s %s checkpoint.load=%s/d1/ck/iter_0000005", dit_lora, TPPP, dir)) ==
        0)
        compare(0, "d_one_to_tppp", "d1", 6, 1e-5, "DiT LoRA saved by one process, resumed as TP2 x PP2");
    else
        CHECK(0, "a one-process LoRA checkpoint resumed as TP2 x PP2 runs");

    /* the base untouched; the tools read what TP2 wrote */
    CHECK(test_sh("diff -r %s/dbase/ck %s/dbase_copy > /dev/null", dir, dir) == 0,
          "the base checkpoint's files are unchanged by the LoRA runs");
    rc = test_sh("cd %s && %s export --checkpoint dbase/ck --weights model --out x_base > x.log 2>&1 && %s export "
                 "--checkpoint d_tp2/ck --weights model --out x_tp2 >> x.log 2>&1 && %s export --checkpoint d1/ck "
                 "--weights model --out x_one >> x.log 2>&1 && %s export --checkpoint dbase/ck --weights model "
                 "--merge-lora d_tp2/ck/iter_0000010/adapter --out x_merge >> x.log 2>&1",
                 dir, bin, bin, bin, bin);
    int nt = 0, changed = 0, nt2 = 0, ch2 = 0, nt3 = 0, ch3 = 0;
    double d_base =
        rc ? INFINITY : export_compare(test_path("%s/x_tp2", dir), test_path("%s/x_base", dir), &nt, &changed);
    double d_one = rc ? INFINITY : export_compare(test_path("%s/x_tp2", dir), test_path("%s/x_one", dir), &nt2, &ch2);
    double d_merge =
        rc ? INFINITY : export_compare(test_path("%s/x_merge", dir), test_path("%s/x_tp2", dir), &nt3, &ch3);
    printf("# exports: TP2 LoRA vs base %d of %d tensors changed (worst %.3g); vs one-process LoRA worst %.3g; "
           "--merge-lora of the "
           "TP2 adapter folder vs the TP2 checkpoint's export worst %.3g (%d tensors differ)\n",
           changed, nt, d_base, d_one, d_merge, ch3);
    CHECK(rc == 0 && nt > 0 && changed == 33,
          "dfm export of the TP2 LoRA checkpoint: the base's tensors bit-identical except the 30 adapted weights (33 "
          "tensors: diffusers' DiT repeats the timestep embedder in each of the 4 blocks; %d of %d differ)",
          changed, nt);
    CHECK(rc == 0 && d_one <= 1e-5, "... and equal to the one-process LoRA export within 1e-5 (%.3g)", d_one);
    CHECK(rc == 0 && d_merge <= 1e-6,
          "dfm export --merge-lora of the TP2 PEFT folder over the base = the TP2 LoRA checkpoint's export (%.3g)",
          d_merge);
    rc = test_sh("cd %s && %s generate --checkpoint dbase/ck --adapter d_tp2/ck/iter_0000010/adapter --classes 0 "
                 "--per-class 1 --steps 2 --out g_tp2 > g.log 2>&1 && grep -q 'merged into 30 linear layers' g.log && "
                 "%s generate --checkpoint d_tp2/ck --classes 0 --per-class 1 --steps 2 --out g_ck >> g.log 2>&1",
                 dir, bin, bin);
    CHECK(rc == 0, "dfm generate applies the TP2 run's adapter folder (--adapter) and reads its LoRA checkpoint");
}

static void wan_cases(void) {
    layout(1, 2, "w_tp2", TP2, 1e-5, "Wan LoRA TP2");
    CHECK(replicas_agree("w_tp2", 2), "Wan LoRA TP2: replicated adapters bit-identical over TP at each save");
    layout(1, 2, "w_pp2", PP2, 1e-6, "Wan LoRA PP2");
    layout(1, 2, "w_cp2", CP2, 1e-5, "Wan LoRA CP2");
    layout(1, 4, "w_tppp", TPPP, 1e-5, "Wan LoRA TP2 x PP2");
    layout(1, 2, "w_sel",
           "model.tensor_model_parallel_size=2 model.sequence_parallel=true "
           "model.recompute_granularity=selective",
           1e-5, "Wan LoRA TP2 + SP, selective recompute");
    layout(1, 0, "w1m", "peft.merged_backward=true", 1e-5, "Wan LoRA, merged-weight backward (one process)");
    double w;
    int n = peft_compare(test_path("%s/w_tp2/ck/iter_0000010/adapter/adapter_model.safetensors", dir),
                         test_path("%s/w1/ck/iter_0000010/adapter/adapter_model.safetensors", dir), &w);
    printf("# Wan PEFT file of TP2: %d tensors, worst %.3g\n", n, w);
    CHECK(n == 92 && w <= 1e-5,
          "Wan: the TP2 run's PEFT file has the one-process names and shapes (%d of 92 tensors), "
          "values within 1e-5 (%.3g)",
          n, w);
    if (train(0, WAN, "w_tp2_to_one", test_path("%s checkpoint.load=%s/w_tp2/ck/iter_0000005", wan_lora, dir)) == 0)
        compare(1, "w_tp2_to_one", "w1", 6, 1e-5, "Wan LoRA saved under TP2 at step 5, resumed as one process");
    else
        CHECK(0, "a Wan TP2 LoRA checkpoint resumed as one process runs");
}

int main(void) {
    static char abs_bin[2048], cwd[800]; /* the export and generate checks run in the test folder */
    snprintf(abs_bin, sizeof abs_bin, "%s/%s", getcwd(cwd, sizeof cwd) ? cwd : ".", test_dfm_bin());
    bin = abs_bin;
    dir = test_mkdtemp();
    test_mpi_env();
    if (!test_have_mpirun()) return test_finish();
    snprintf(dit_lora, sizeof dit_lora,
             "peft.target_modules=\"['attn1.to_q', 'attn1.to_k', 'attn1.to_v', 'attn1.to_out.0', 'norm1.linear', "
             "'*.ff.net.*', 'linear_1', 'proj_out_2']\" peft.dim=2 peft.alpha=4 "
             "checkpoint.pretrained_checkpoint=%s/dbase/ck train.train_iters=10",
             dir);
    snprintf(wan_lora, sizeof wan_lora,
             "peft.match_all_linear=true peft.dim=2 peft.alpha=4 checkpoint.pretrained_checkpoint=%s/wbase/ck "
             "train.train_iters=10",
             dir);
    double t0 = dfm_time_s();
    if (train(0, DIT, "dbase", "train.train_iters=2") == 0 &&
        test_sh("cp -r %s/dbase/ck %s/dbase_copy", dir, dir) == 0 && train(0, DIT, "d1", dit_lora) == 0) {
        printf("# DiT base + one-process LoRA run: %.1f s\n", dfm_time_s() - t0);
        char *log = test_read_file(test_path("%s/d1.log", dir), NULL);
        CHECK(log && strstr(log, "on 30 linear layers"), "the DiT LoRA adapts 30 linear layers (4 blocks x 7, an "
                                                         "embedder's and the head's)");
        free(log);
        dit_cases();
    } else
        CHECK(0, "DiT base and one-process LoRA run");
    if (train(0, WAN, "wbase", "train.train_iters=2") == 0 && train(0, WAN, "w1", wan_lora) == 0)
        wan_cases();
    else
        CHECK(0, "Wan base and one-process LoRA run");
    test_run_refused(dir, bin, 2, DIT,
                     test_path("peft.target_modules=\"['transformer_blocks.0.attn1.to_q']\" peft.dim=2 "
                               "checkpoint.pretrained_checkpoint=%s/dbase/ck %s",
                               dir, PP2),
                     "pipeline stage 1 of model.pipeline_model_parallel_size 2 holds none of the 1 adapted modules",
                     "a pipeline stage without adapted modules");
    printf("# total %.1f s\n", dfm_time_s() - t0);
    test_rmtree(dir);
    free(dir);
    return test_finish();
}
