/* Helpers for tests that run training jobs: the losses a run logged, and how far two Wan checkpoints' weights
 * are apart (either form, consolidated or sharded). */
#ifndef DFM_TEST_RUN_H
#define DFM_TEST_RUN_H

#include "dfm/checkpoint.h"
#include "dfm/dit.h"
#include "dfm/safetensors.h"
#include "dfm/wan.h"
#include "test.h"
#include "test_fs.h"

#include <jansson.h>
#include <math.h>

/* "loss" of each step of RUN/metrics.jsonl into loss[1..max]; returns how many were found. */
static inline int test_run_losses(const char *run, double *loss, int max) {
    char *text = test_read_file(test_path("%s/metrics.jsonl", run), NULL);
    int n = 0;
    for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n")) {
        json_t *o = json_loads(line, 0, NULL);
        json_t *st = json_object_get(o, "step"), *l = json_object_get(o, "loss");
        if (json_is_integer(st) && json_is_number(l) && json_integer_value(st) <= max)
            loss[json_integer_value(st)] = json_number_value(l), n++;
        json_decref(o);
    }
    free(text);
    return n;
}

/* Relative difference (test_rel_err) between kind_a of checkpoint folder a and kind_b of b, both read whole in the
 * layout of table t (either checkpoint form); INFINITY (with the reason as a comment) when either cannot be read. */
static inline double test_table_weights_diff(const param_table *t, const char *a, const char *kind_a, const char *b,
                                             const char *kind_b) {
    char err[1024];
    double d = INFINITY;
    float *wa = xalloc_floats(t->total), *wb = xalloc_floats(t->total);
    if (ckpt_read_range(a, kind_a, t, 0, t->total, wa, err, sizeof err) == 0 &&
        ckpt_read_range(b, kind_b, t, 0, t->total, wb, err, sizeof err) == 0)
        d = test_rel_err(wa, wb, t->total);
    else
        printf("# %s\n", err);
    free(wa), free(wb);
    return d;
}

/* The same between Wan checkpoint folders ("model" or "ema"); the model's shape from a's metadata. */
static inline double test_wan_weights_diff(const char *a, const char *kind_a, const char *b, const char *kind_b) {
    char *cfg = ckpt_meta(a, "dfm_wan_config");
    wan_config c;
    char err[512];
    double d = INFINITY;
    if (cfg && wan_config_from_json(&c, cfg, err, sizeof err) == 0) {
        param_table t = {0};
        wan_build_table(&t, &c);
        d = test_table_weights_diff(&t, a, kind_a, b, kind_b);
        param_table_free(&t);
    }
    free(cfg);
    return d;
}

/* Worst relative difference of the logged losses of steps [from, to] between two run folders (inf if any is
 * missing). */
static inline double test_run_loss_diff(const char *run_a, const char *run_b, int from, int to) {
    double la[64], lb[64];
    for (int i = 0; i < 64; i++) la[i] = lb[i] = NAN;
    test_run_losses(run_a, la, 63);
    test_run_losses(run_b, lb, 63);
    double worst = 0;
    for (int s = from; s <= to && s < 64; s++) {
        double d = fabs(la[s] - lb[s]) / fabs(lb[s]);
        if (!(d <= worst)) worst = isnan(d) ? INFINITY : d;
    }
    return worst;
}

/* The same as test_wan_weights_diff for DiT checkpoints (the model's shape from a's "dfm_dit_config"). */
static inline double test_dit_weights_diff(const char *a, const char *kind_a, const char *b, const char *kind_b) {
    char *cfg = ckpt_meta(a, "dfm_dit_config");
    dit_config c;
    char err[1024];
    double d = INFINITY;
    if (cfg && dit_config_from_json(&c, cfg, err, sizeof err) == 0) {
        dit_model m;
        dit_create(&m, &c, 1);
        d = test_table_weights_diff(&m.table, a, kind_a, b, kind_b);
        dit_free(&m);
    } else
        printf("# '%s': no readable dfm_dit_config\n", a);
    free(cfg);
    return d;
}

/* dfm pretrain MODEL EXTRA into dir/name (checkpoints in dir/name/ck, log dir/name.log), under mpirun -np np when
 * np > 0; on failure the log's tail is printed as comments. Returns the exit status. */
static inline int test_run_pretrain(const char *dir, const char *bin, int np, const char *model, const char *name,
                                    const char *extra) {
    char launch[64] = "";
    if (np > 0) snprintf(launch, sizeof launch, "mpirun --oversubscribe -np %d ", np);
    int rc = test_sh("%s%s pretrain %s logger.output_dir=%s/%s checkpoint.save=%s/%s/ck %s > %s/%s.log 2>&1", launch,
                     bin, model, dir, name, dir, name, extra, dir, name);
    if (rc != 0) {
        printf("# run %s failed (%d); its log:\n", name, rc);
        test_sh("tail -20 %s/%s.log | sed 's/^/#   /'", dir, name);
    }
    return rc;
}

/* The worst relative difference of the model and EMA weights in the step-10 checkpoints of runs DIR/a and DIR/b
 * (a NaN counts as infinite). */
static inline double test_run_final_weights_diff(const char *dir, int wan, const char *a, const char *b) {
    char pa[4096], pb[4096];
    snprintf(pa, sizeof pa, "%s/%s/ck/iter_0000010", dir, a);
    snprintf(pb, sizeof pb, "%s/%s/ck/iter_0000010", dir, b);
    double d = 0;
    const char *kinds[2] = {"model", "ema"};
    for (int k = 0; k < 2; k++) {
        double e =
            wan ? test_wan_weights_diff(pa, kinds[k], pb, kinds[k]) : test_dit_weights_diff(pa, kinds[k], pb, kinds[k]);
        if (!(e <= d)) d = isnan(e) ? INFINITY : e;
    }
    return d;
}

/* The validation loss DIR/RUN.log shows at `step` (NAN if absent). */
static inline double test_run_val_loss(const char *dir, const char *run, int step) {
    char *log = test_read_file(test_path("%s/%s.log", dir, run), NULL), want[64];
    snprintf(want, sizeof want, "validation loss at step %d: ", step);
    const char *at = log ? strstr(log, want) : NULL;
    double v = at ? atof(at + strlen(want)) : NAN;
    free(log);
    return v;
}

/* How many times DIR/RUN.log contains text. */
static inline int test_run_log_count(const char *dir, const char *run, const char *text) {
    char *log = test_read_file(test_path("%s/%s.log", dir, run), NULL);
    int n = 0;
    for (const char *p = log; p && (p = strstr(p, text)); p++) n++;
    free(log);
    return n;
}

/* The log of DIR/RUN says the TP ranks agreed on the replicated parameters at each of the run's `saves`
 * checkpoints. */
static inline int test_run_tp_agree(const char *dir, const char *run, int saves) {
    return test_run_log_count(dir, run, "tensor-parallel ranks agree bit for bit") == saves;
}

/* 1 when mpirun is on PATH; otherwise a FAIL line naming the packages, and 0. */
static inline int test_have_mpirun(void) {
    if (test_sh("command -v mpirun >/dev/null") == 0) return 1;
    printf("FAIL mpirun is missing (apt-get install openmpi-bin libopenmpi-dev)\n");
    return 0;
}

/* dfm pretrain MODEL EXTRA under mpirun -np np must fail with `want` in its output: one check line saying `what` is
 * refused, with the output's line from `want` on (or its first line). */
static inline void test_run_refused(const char *dir, const char *bin, int np, const char *model, const char *extra,
                                    const char *want, const char *what) {
    char cmd[4096], *out = NULL;
    snprintf(cmd, sizeof cmd, "mpirun --oversubscribe -np %d %s pretrain %s %s logger.output_dir=%s/refused", np, bin,
             model, extra, dir);
    int rc = test_capture(cmd, &out);
    const char *at = out ? strstr(out, want) : NULL;
    const char *shown = at ? at : out ? out : "";
    CHECK(rc != 0 && at, "%s is refused: %.*s", what, (int)strcspn(shown, "\n"), shown);
    free(out);
}

/* In folder dir: 24 demo clips as an Energon dataset (en/) converted to dfm's safetensors samples (st/), a tiny
 * Wan (2 layers, 32 wide) trained 4 steps in the Megatron paradigm (base/ck) and exported as a diffusers folder
 * (hf/, its EMA weights). Logs in dir. Returns the shell's status. */
static inline int test_tiny_wan_fixture(const char *dir, const char *bin) {
    return test_sh("cd %s && %s data prepare --video-clips --out en --n 24 --frames 4 --size 16 --text-dim 32 > p.log "
                   "2>&1 && %s data convert --from en --to st > c.log 2>&1 && %s pretrain --recipe wan_tiny "
                   "model.num_layers=2 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=64 "
                   "model.image_size=16 model.num_frames=4 dataset.max_samples=64 dataset.val_samples=8 "
                   "train.global_batch_size=4 train.micro_batch_size=2 train.train_iters=4 logger.output_dir=base "
                   "checkpoint.save=base/ck > b.log 2>&1 && %s export --checkpoint base/ck --out hf > e.log 2>&1",
                   dir, bin, bin, bin, bin);
}

/* max |a - b| / max |b| over every tensor of two safetensors files; INFINITY unless both hold the same tensor names
 * with the same shapes. *n: the tensors compared. */
static inline double test_st_diff(const char *a, const char *b, int *n) {
    char err[512];
    double maxdiff = 0, maxref = 0;
    *n = 0;
    st_file *fa = st_open(a, err, sizeof err), *fb = fa ? st_open(b, err, sizeof err) : NULL;
    int ok = fa && fb && fa->n_tensors == fb->n_tensors;
    if (!fa || !fb) printf("# %s\n", err);
    for (int i = 0; ok && i < fb->n_tensors; i++) {
        const st_tensor *tb = &fb->tensors[i], *ta = st_find(fa, tb->name);
        ok = ta && ta->ndim == tb->ndim;
        for (int d = 0; ok && d < tb->ndim; d++) ok = ta->shape[d] == tb->shape[d];
        if (!ok) {
            printf("# '%s': tensor '%s' missing or of another shape in '%s'\n", b, tb->name, a);
            break;
        }
        size_t k = (size_t)st_numel(tb);
        float *x = xalloc_floats(k ? k : 1), *y = xalloc_floats(k ? k : 1);
        st_read_f32(fa, ta, x);
        st_read_f32(fb, tb, y);
        for (size_t e = 0; e < k; e++) {
            double d = fabs((double)x[e] - y[e]);
            if (!(d <= maxdiff)) maxdiff = d;
            if (fabs(y[e]) > maxref) maxref = fabs(y[e]);
        }
        free(x), free(y);
        (*n)++;
    }
    if (fa) st_close(fa);
    if (fb) st_close(fb);
    return ok ? maxdiff / (maxref > 0 ? maxref : 1) : INFINITY;
}

/* In folder dir: Wan samples of two latent shapes in one folder, mix/ (12 of 2 frames of 8 x 8: 32 tokens; 8 of 3
 * frames of 10 x 10: 75 tokens), for resolution buckets. Logs in dir/bk.log. Returns the shell's status. */
static inline int test_wan_bucket_fixture(const char *dir, const char *bin) {
    return test_sh("D=%s && %s data prepare --video-clips --out $D/en32 --n 12 --frames 2 --size 8 --text-dim 32 "
                   "--seed 5 > $D/bk.log 2>&1 && %s data convert --from $D/en32 --to $D/st32 >> $D/bk.log 2>&1 && "
                   "%s data prepare --video-clips --out $D/en75 --n 8 --frames 3 --size 10 --text-dim 32 --seed 7 "
                   ">> $D/bk.log 2>&1 && %s data convert --from $D/en75 --to $D/st75 >> $D/bk.log 2>&1 && mkdir -p "
                   "$D/mix && for f in $D/st32/*; do cp $f $D/mix/a_${f##*/}; done && for f in $D/st75/*; do cp $f "
                   "$D/mix/b_${f##*/}; done",
                   dir, bin, bin, bin, bin);
}

/* dfm finetune of test_tiny_wan_fixture's model on its clips (recipes/automodel/wan_tiny_finetune.yaml, 6 steps of
 * global batch 4 in micro-batches of 2), launched by `launch` ("" or an mpirun prefix) with the extra options, into
 * dir/name (log dir/name.log). Returns the shell's status. */
static inline int test_finetune_tiny_wan(const char *dir, const char *bin, const char *launch, const char *name,
                                         const char *extra) {
    return test_sh("%s %s finetune -c recipes/automodel/wan_tiny_finetune.yaml "
                   "--model.pretrained_model_name_or_path=%s/hf --data.dataloader.meta_folder=%s/st "
                   "--checkpoint.checkpoint_dir=%s/%s --optimizer.lr=2e-3 "
                   "--step_scheduler.global_batch_size=4 --step_scheduler.local_batch_size=2 "
                   "--step_scheduler.max_steps=6 --step_scheduler.log_every=1 %s > %s/%s.log 2>&1",
                   launch, bin, dir, dir, dir, name, extra, dir, name);
}

#endif
