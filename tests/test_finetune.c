/* dfm finetune (the Automodel paradigm): a diffusers Wan folder fine-tuned from a recipe on pre-encoded samples;
 * the loss falls, the consolidated folder gives the checkpoint's forward output, restore_from continues
 * bit-identically, DP=2 (FSDP) equals one process, checkpoints cross between the paradigms, a folder of several
 * latent shapes trains through the bucket sampler, and what is not built is refused. */
#include "dfm/checkpoint.h"
#include "dfm/safetensors.h"
#include "dfm/wan.h"
#include "test.h"
#include "test_fs.h"
#include "test_run.h"

#include <jansson.h>
#include <math.h>

static char *dir;
static const char *bin;

static const char *RECIPE = "recipes/automodel/wan_tiny_finetune.yaml";

/* dfm finetune with the shipped tiny recipe pointed at this test's model and the data in folder `data`. */
static int finetune_on(const char *data, const char *launcher, const char *run, const char *extra) {
    return test_sh(
        "%s %s finetune -c %s --model.pretrained_model_name_or_path=%s/hf --data.dataloader.meta_folder=%s/%s "
        "--checkpoint.checkpoint_dir=%s/%s --optimizer.lr=2e-3 --lr_scheduler.lr_decay_steps=16 "
        "--step_scheduler.global_batch_size=4 --step_scheduler.local_batch_size=2 %s > %s/%s.log 2>&1",
        launcher, bin, RECIPE, dir, dir, data, dir, run, extra, dir, run);
}

static int finetune(const char *launcher, const char *run, const char *extra) {
    return finetune_on("st", launcher, run, extra);
}

/* Resolution buckets: a folder of three latent shapes ([1, 4, 16, 16] x 24, [1, 2, 8, 8] x 12, [1, 4, 8, 8] x 8)
 * fine-tunes with one shape per batch; the loss falls; 2 ranks equal one; a stop and restore continues
 * bit-identically; shuffle false runs. (The loader-level checks of the order are in test_video.c.) */
static void test_buckets(void) {
    int rc = test_sh("cd %s && %s data prepare --video-clips --out en28 --n 12 --frames 2 --size 8 --text-dim 32 "
                     "--seed 5 > p28.log 2>&1 && %s data convert --from en28 --to st28 > c28.log 2>&1 && %s data "
                     "prepare --video-clips --out en48 --n 8 --frames 4 --size 8 --text-dim 32 --seed 7 > p48.log "
                     "2>&1 && %s data convert --from en48 --to st48 > c48.log 2>&1 && mkdir -p mix && for f in st/*; "
                     "do cp $f mix/a_${f#st/}; done && for f in st28/*; do cp $f mix/b_${f#st28/}; done && for f in "
                     "st48/*; do cp $f mix/c_${f#st48/}; done",
                     dir, bin, bin, bin, bin);
    CHECK(rc == 0, "fixtures: 44 samples of three latent shapes in one folder");
    const char *common = "--step_scheduler.max_steps=12 --step_scheduler.ckpt_every_steps=6 "
                         "--step_scheduler.val_every_steps=6 --step_scheduler.log_every=1";
    rc = finetune_on("mix", "", "mx1", common);
    double one[16] = {0};
    int n = test_run_losses(test_path("%s/mx1", dir), one, 15), finite = 1;
    for (int s = 1; s <= 12; s++) finite &= isfinite(one[s]);
    double first = (one[1] + one[2] + one[3] + one[4]) / 4, last = (one[9] + one[10] + one[11] + one[12]) / 4;
    char *log = test_read_file(test_path("%s/mx1.log", dir), NULL);
    CHECK(rc == 0 && n == 12 && finite && last < first && log && strstr(log, "bucketed batches: 3 latent shapes") &&
              strstr(log, "validation loss at step 12"),
          "three latent shapes fine-tune, one shape a batch: loss %.3f (steps 1-4) -> %.3f (9-12), validation per "
          "shape",
          first, last);
    free(log);
    rc = finetune_on("mix", "mpirun --oversubscribe -np 2", "mx2", common);
    double two[16] = {0};
    test_run_losses(test_path("%s/mx2", dir), two, 15);
    double worst = 0;
    for (int s = 1; s <= 12; s++) worst = fmax(worst, fabs(two[s] - one[s]));
    double dw = rc ? INFINITY
                   : test_wan_weights_diff(test_path("%s/mx2/iter_0000012", dir), "model",
                                           test_path("%s/mx1/iter_0000012", dir), "model");
    CHECK(rc == 0 && worst == 0 && dw == 0, "buckets: 2 ranks equal one process (losses %.3g, weights %.3g)", worst,
          dw);
    rc = finetune_on("mix", "", "mxr",
                     "--step_scheduler.max_steps=6 --step_scheduler.ckpt_every_steps=6 "
                     "--step_scheduler.val_every_steps=6 --step_scheduler.log_every=1");
    rc |= finetune_on("mix", "", "mxr", common);
    double res[16] = {0};
    test_run_losses(test_path("%s/mxr", dir), res, 15);
    worst = 0;
    for (int s = 1; s <= 12; s++) worst = fmax(worst, fabs(res[s] - one[s]));
    dw = rc ? INFINITY
            : test_wan_weights_diff(test_path("%s/mxr/iter_0000012", dir), "model",
                                    test_path("%s/mx1/iter_0000012", dir), "model");
    CHECK(rc == 0 && worst == 0 && dw == 0,
          "buckets: stopped at step 6 and restored, the run continues bit-identically (losses %.3g, weights %.3g)",
          worst, dw);
    const char *pre =
        "%s pretrain --recipe wan_tiny model.num_layers=2 model.hidden_size=32 model.num_attention_heads=2 "
        "model.ffn_hidden_size=64 dataset.type=video_folder dataset.path=%s/mix dataset.max_samples=null "
        "dataset.val_samples=4 train.global_batch_size=4 train.micro_batch_size=2 train.train_iters=2 "
        "logger.output_dir=%s/mxp checkpoint.save=null %s > %s/mxp.log 2>&1";
    rc = test_sh(pre, bin, dir, dir, "", dir);
    CHECK(rc == 0, "dfm pretrain on the folder of three shapes (video_folder) trains through the bucket sampler");
    rc = test_sh(pre, bin, dir, dir, "dataset.bucket_sampler=never", dir);
    log = test_read_file(test_path("%s/mxp.log", dir), NULL);
    CHECK(rc != 0 && log && strstr(log, "3 latent shapes"), "dataset.bucket_sampler=never refuses it: %.200s",
          log ? log : "");
    free(log);
    rc = finetune_on("mix", "", "mxs", "--step_scheduler.max_steps=3 --data.dataloader.shuffle=false");
    log = test_read_file(test_path("%s/mxs.log", dir), NULL);
    CHECK(rc == 0 && log && strstr(log, "shuffle false"), "data.dataloader.shuffle: false trains (buckets in order)");
    free(log);
}

int main(void) {
    static char abs_bin[2048], cwd[800];
    snprintf(abs_bin, sizeof abs_bin, "%s/%s", getcwd(cwd, sizeof cwd) ? cwd : ".", test_dfm_bin());
    bin = abs_bin; /* some steps run in the temporary folder */
    dir = test_mkdtemp();
    test_mpi_env();

    /* a small Wan trained briefly in the Megatron paradigm, exported as a diffusers folder, and 24 pre-encoded
     * clips as dfm's safetensors samples */
    int rc =
        test_sh("cd %s && %s data prepare --video-clips --out en --n 24 --frames 4 --size 16 --text-dim 32 > p.log "
                "2>&1 && %s data convert --from en --to st > c.log 2>&1 && %s pretrain --recipe wan_tiny "
                "model.num_layers=2 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=64 "
                "model.image_size=16 model.num_frames=4 dataset.max_samples=64 dataset.val_samples=8 "
                "train.global_batch_size=4 train.micro_batch_size=2 train.train_iters=4 logger.output_dir=base "
                "checkpoint.save=base/ck > b.log 2>&1 && %s export --checkpoint base/ck --out hf > e.log 2>&1",
                dir, bin, bin, bin, bin);
    CHECK(rc == 0, "fixtures: clips converted to safetensors samples, a tiny Wan exported as a diffusers folder");

    /* 1. fine-tune 16 steps: the loss falls; the consolidated folder is written */
    rc = finetune("", "ft", "--step_scheduler.max_steps=16 --step_scheduler.ckpt_every_steps=8");
    double full[20] = {0};
    int n = test_run_losses(test_path("%s/ft", dir), full, 19);
    double first = (full[1] + full[2] + full[3] + full[4]) / 4, last = (full[13] + full[14] + full[15] + full[16]) / 4;
    CHECK(rc == 0 && n == 16 && last < first, "dfm finetune -c %s: 16 steps, loss %.3f (steps 1-4) -> %.3f (13-16)",
          RECIPE, first, last);
    char *log = test_read_file(test_path("%s/ft.log", dir), NULL);
    CHECK(log && strstr(log, "initial weights from the diffusers folder"),
          "the pretrained diffusers weights are loaded");
    free(log);
    struct stat sb;
    CHECK(stat(test_path("%s/ft/config.yaml", dir), &sb) == 0, "the resolved Automodel recipe is saved beside the run");

    /* 2. the consolidated diffusers folder gives the final checkpoint's forward output */
    st_writer *w = st_writer_new();
    int64_t xs[5] = {1, 1, 4, 16, 16}, ts[1] = {1}, es[3] = {1, 8, 32};
    float *x = xalloc_floats(4 * 16 * 16), t = 500.0f, *e = xalloc_floats(8 * 32);
    test_seed();
    test_fill_randn(x, 4 * 16 * 16, 1.0f);
    test_fill_randn(e, 8 * 32, 1.0f);
    st_writer_add(w, "hidden_states", ST_F32, 5, xs, x);
    st_writer_add(w, "timestep", ST_F32, 1, ts, &t);
    st_writer_add(w, "encoder_hidden_states", ST_F32, 3, es, e);
    st_writer_finish(w, test_path("%s/in.safetensors", dir));
    free(x), free(e);
    rc = test_sh(
        "cd %s && %s forward --model ft/iter_0000016/model/consolidated --inputs in.safetensors --out o1.safetensors "
        "> f1.log 2>&1 && %s forward --model ft/iter_0000016 --weights model --inputs in.safetensors "
        "--out o2.safetensors > f2.log 2>&1 && cmp -s o1.safetensors o2.safetensors",
        dir, bin, bin);
    CHECK(rc == 0, "the consolidated folder reloads and gives the checkpoint's forward output bit for bit");

    /* 3. stop at 8, then restore_from: null continues to 16 on the same batches */
    rc = finetune("", "part", "--step_scheduler.max_steps=8 --step_scheduler.ckpt_every_steps=8");
    rc |= finetune("", "part", "--step_scheduler.max_steps=16 --step_scheduler.ckpt_every_steps=8");
    double part[20] = {0};
    test_run_losses(test_path("%s/part", dir), part, 19);
    double worst = 0;
    for (int s = 1; s <= 16; s++) worst = fmax(worst, fabs(part[s] - full[s]));
    double dw = rc ? INFINITY
                   : test_wan_weights_diff(test_path("%s/part/iter_0000016", dir), "model",
                                           test_path("%s/ft/iter_0000016", dir), "model");
    CHECK(rc == 0 && worst == 0 && dw == 0,
          "restore_from: null resumes at step 8 bit-identically (losses %.3g, weights %.3g)", worst, dw);

    /* 4. two ranks (FSDP): the same run */
    rc = finetune("mpirun --oversubscribe -np 2", "dp2",
                  "--step_scheduler.max_steps=16 --step_scheduler.ckpt_every_steps=8");
    double dp2[20] = {0};
    test_run_losses(test_path("%s/dp2", dir), dp2, 19);
    worst = 0;
    for (int s = 1; s <= 16; s++) worst = fmax(worst, fabs(dp2[s] - full[s]));
    dw = rc ? INFINITY
            : test_wan_weights_diff(test_path("%s/dp2/iter_0000016", dir), "model",
                                    test_path("%s/ft/iter_0000016", dir), "model");
    CHECK(rc == 0 && worst == 0 && dw == 0, "2 ranks (FSDP) equal one process (losses %.3g, weights %.3g)", worst, dw);

    /* 5. across paradigms: a Megatron iter_N checkpoint fine-tunes here; the Automodel consolidated folder starts a
     * Megatron run */
    rc = test_sh("%s finetune -c %s --model.pretrained_model_name_or_path=%s/base/ck/iter_0000004 "
                 "--data.dataloader.meta_folder=%s/st --checkpoint.checkpoint_dir=%s/fromiter "
                 "--step_scheduler.max_steps=2 > %s/fromiter.log 2>&1",
                 bin, RECIPE, dir, dir, dir, dir);
    CHECK(rc == 0, "a Megatron-paradigm iter_N checkpoint fine-tunes with dfm finetune");
    rc = test_sh("%s pretrain --recipe wan_tiny model.num_layers=2 model.hidden_size=32 model.num_attention_heads=2 "
                 "model.ffn_hidden_size=64 model.image_size=16 model.num_frames=4 dataset.type=video_folder "
                 "dataset.path=%s/st dataset.max_samples=null dataset.val_samples=4 train.global_batch_size=4 "
                 "train.micro_batch_size=2 train.train_iters=2 logger.output_dir=%s/mg checkpoint.save=null "
                 "checkpoint.pretrained_checkpoint=%s/ft/iter_0000016/model/consolidated > %s/mg.log 2>&1",
                 bin, dir, dir, dir, dir);
    CHECK(rc == 0, "the Automodel consolidated folder initialises a Megatron-paradigm run");

    /* 6. resolution buckets */
    test_buckets();

    /* 7. not built yet: refused, never ignored */
    const char *refused[][2] = {{"--peft.target_modules=[\"*.to_q\"]", "LoRA"},
                                {"--fsdp.dp_replicate_size=2", "dp_replicate_size"},
                                {"--checkpoint.save_consolidated=every", "every is not built"}};
    for (int k = 0; k < 3; k++) {
        char cmd[2048], *out = NULL;
        snprintf(cmd, sizeof cmd,
                 "%s finetune -c %s --model.pretrained_model_name_or_path=%s/hf "
                 "--data.dataloader.meta_folder=%s/st --checkpoint.checkpoint_dir=%s/no '%s'",
                 bin, RECIPE, dir, dir, dir, refused[k][0]);
        rc = test_capture(cmd, &out);
        CHECK(rc != 0 && strstr(out, refused[k][1]), "%s is refused: %.200s", refused[k][0], out);
        free(out);
    }

    test_rmtree(dir);
    free(dir);
    return test_finish();
}
