/* dfm finetune (the Automodel paradigm): a diffusers Wan folder fine-tuned from a recipe on pre-encoded samples;
 * the loss falls; checkpoints come in Automodel's layout (epoch_E_step_S/ with model/, optim/, dataloader/, rng/,
 * config.yaml; LATEST; max_recent_checkpoints; model/consolidated/ with save_consolidated final or every); the
 * consolidated folder gives the checkpoint's forward output; a killed run and restore_from null / LATEST / a step
 * name / a path continue bit-identically; DP=2 (FSDP) equals one process; checkpoints cross between the paradigms
 * and dfm generate / export read them; a folder of several latent shapes trains through the bucket sampler; a
 * LATEST naming a missing folder and what is not built are refused. */
#include "dfm/checkpoint.h"
#include "dfm/safetensors.h"
#include "dfm/wan.h"
#include "test.h"
#include "test_fs.h"
#include "test_run.h"

#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <sys/wait.h>

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
    double dw =
        rc ? INFINITY
           : test_wan_weights_diff(test_path("%s/mx2/LATEST", dir), "model", test_path("%s/mx1/LATEST", dir), "model");
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
            : test_wan_weights_diff(test_path("%s/mxr/LATEST", dir), "model", test_path("%s/mx1/LATEST", dir), "model");
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

/* The name of RUN's step folder for `step` (epoch_E_step_<step>), or "" when there is none. */
static const char *step_name(const char *run, long step) {
    static char names[4][64];
    static int k;
    char *out = names[k++ % 4];
    out[0] = 0;
    DIR *d = opendir(run);
    struct dirent *e;
    char want[32];
    snprintf(want, sizeof want, "_step_%ld", step);
    while (d && (e = readdir(d))) {
        size_t n = strlen(e->d_name), w = strlen(want);
        if (!strncmp(e->d_name, "epoch_", 6) && n > w && !strcmp(e->d_name + n - w, want))
            snprintf(out, 64, "%.60s", e->d_name);
    }
    if (d) closedir(d);
    return out;
}

/* How many entries of RUN start with `prefix` and contain `part` (NULL: any). */
static int count_entries(const char *run, const char *prefix, const char *part) {
    DIR *d = opendir(run);
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d)))
        n += !strncmp(e->d_name, prefix, strlen(prefix)) && (!part || strstr(e->d_name, part));
    if (d) closedir(d);
    return n;
}

static int exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* The largest difference between the losses of steps [from, to] of two runs. */
static double loss_gap(const double *a, const double *b, int from, int to) {
    double worst = 0;
    for (int s = from; s <= to; s++) worst = fmax(worst, fabs(a[s] - b[s]));
    return worst;
}

int main(void) {
    static char abs_bin[2048], cwd[800];
    snprintf(abs_bin, sizeof abs_bin, "%s/%s", getcwd(cwd, sizeof cwd) ? cwd : ".", test_dfm_bin());
    bin = abs_bin; /* some steps run in the temporary folder */
    dir = test_mkdtemp();
    test_mpi_env();

    /* a small Wan trained briefly in the Megatron paradigm, exported as a diffusers folder, and 24 pre-encoded
     * clips as dfm's safetensors samples */
    int rc = test_tiny_wan_fixture(dir, bin);
    CHECK(rc == 0, "fixtures: clips converted to safetensors samples, a tiny Wan exported as a diffusers folder");

    /* 1. fine-tune 16 steps with a checkpoint every 4 and a consolidated model in every one: the loss falls; the
     * layout is Automodel's */
    rc = finetune("", "ft",
                  "--step_scheduler.max_steps=16 --step_scheduler.ckpt_every_steps=4 "
                  "--checkpoint.save_consolidated=every");
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
    /* 24 samples, 4 a step: epoch E of step S is (4 S - 1) / 24 */
    char link[256] = "";
    ssize_t ln = readlink(test_path("%s/ft/LATEST", dir), link, sizeof link - 1);
    if (ln > 0) link[ln] = 0;
    CHECK(ln > 0 && !strcmp(link, "epoch_2_step_16"), "LATEST is a symlink to the newest step folder (-> %s)", link);
    const char *s16 = step_name(test_path("%s/ft", dir), 16);
    int layout = 1;
    char what[512] = "";
    for (long st = 4; st <= 16; st += 4) {
        char want[64];
        snprintf(want, sizeof want, "epoch_%ld_step_%ld", (4 * st - 1) / 24, st);
        const char *files[] = {"model/shard_00000_of_00001.safetensors",
                               "optim/shard_00000_of_00001.safetensors",
                               "dataloader/dataloader_dp_rank_0.json",
                               "rng/rng_dp_rank_0.json",
                               "step_scheduler.json",
                               "config.yaml",
                               "run_config.yaml",
                               "model/consolidated/config.json",
                               "model/consolidated/diffusion_pytorch_model.safetensors"};
        for (size_t f = 0; f < sizeof files / sizeof files[0]; f++)
            if (layout && !exists(test_path("%s/ft/%s/%s", dir, want, files[f]))) {
                snprintf(what, sizeof what, ": %s/%s is missing", want, files[f]);
                layout = 0;
            }
    }
    CHECK(layout && count_entries(test_path("%s/ft", dir), "epoch_", NULL) == 4 &&
              count_entries(test_path("%s/ft", dir), "iter_", NULL) == 0 &&
              count_entries(test_path("%s/ft", dir), "", ".tmp.") == 0 &&
              !exists(test_path("%s/ft/latest_checkpointed_iteration.txt", dir)),
          "epoch_E_step_{4,8,12,16}/ hold model/ and optim/ shards, dataloader/, rng/, step_scheduler.json, "
          "config.yaml and model/consolidated/ (save_consolidated: every); nothing else, no temporary folder left%s",
          what);
    char *y1 = test_read_file(test_path("%s/ft/config.yaml", dir), NULL);
    char *y2 = test_read_file(test_path("%s/ft/%s/config.yaml", dir, s16), NULL);
    CHECK(y1 && y2 && !strcmp(y1, y2) && strstr(y2, "save_consolidated"),
          "each step folder's config.yaml is the resolved Automodel recipe");
    free(y1), free(y2);

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
    w = st_writer_new();
    int64_t tshape[3] = {1, 5, 32}; /* the fine-tuning data's text length is 5, the Megatron run's 8 */
    st_writer_add(w, "text_embeddings", ST_F32, 3, tshape, e);
    st_writer_finish(w, test_path("%s/text.safetensors", dir));
    free(x), free(e);
    rc = test_sh("cd %s && %s forward --model ft/%s/model/consolidated --inputs in.safetensors --out o1.safetensors "
                 "> f1.log 2>&1 && %s forward --model ft/%s --weights model --inputs in.safetensors "
                 "--out o2.safetensors > f2.log 2>&1 && cmp -s o1.safetensors o2.safetensors",
                 dir, bin, s16, bin, s16);
    CHECK(rc == 0, "the consolidated folder reloads and gives the step folder's forward output bit for bit");

    /* 3. killed with SIGKILL after its first checkpoint, then restore_from: null continues on the same batches;
     * max_recent_checkpoints 2 keeps the newest two; save_consolidated final writes only into the last */
    const char *kill_args = "--step_scheduler.max_steps=16 --step_scheduler.ckpt_every_steps=4 "
                            "--checkpoint.max_recent_checkpoints=2 --checkpoint.save_consolidated=final";
    test_sh("rm -rf %s/kill && (%s finetune -c %s --model.pretrained_model_name_or_path=%s/hf "
            "--data.dataloader.meta_folder=%s/st --checkpoint.checkpoint_dir=%s/kill --optimizer.lr=2e-3 "
            "--lr_scheduler.lr_decay_steps=16 --step_scheduler.global_batch_size=4 --step_scheduler.local_batch_size=2 "
            "%s > %s/kill1.log 2>&1 & echo $! > %s/kill.pid)",
            dir, bin, RECIPE, dir, dir, dir, kill_args, dir, dir);
    char *pid_text = test_read_file(test_path("%s/kill.pid", dir), NULL);
    pid_t pid = pid_text ? (pid_t)atol(pid_text) : 0;
    free(pid_text);
    double t0 = dfm_time_s();
    while (pid > 0 && !exists(test_path("%s/kill/LATEST", dir)) && dfm_time_s() - t0 < 120) usleep(1000);
    int killed = pid > 0 && kill(pid, SIGKILL) == 0;
    int st;
    if (pid > 0) waitpid(pid, &st, 0); /* not our child: waitpid fails; wait for it to go instead */
    while (pid > 0 && kill(pid, 0) == 0 && dfm_time_s() - t0 < 130) usleep(1000);
    double part[20] = {0};
    int steps_at_kill = test_run_losses(test_path("%s/kill", dir), part, 19);
    CHECK(killed && steps_at_kill < 16, "the run is killed with SIGKILL after its first checkpoint (%d steps logged)",
          steps_at_kill);
    rc = finetune("", "kill", kill_args);
    memset(part, 0, sizeof part);
    test_run_losses(test_path("%s/kill", dir), part, 19);
    double worst = loss_gap(part, full, 1, 16);
    double dw = rc ? INFINITY
                   : test_wan_weights_diff(test_path("%s/kill/epoch_2_step_16", dir), "model",
                                           test_path("%s/ft/epoch_2_step_16", dir), "model");
    log = test_read_file(test_path("%s/kill.log", dir), NULL);
    CHECK(rc == 0 && log && strstr(log, "resumed from") && worst == 0 && dw == 0,
          "restore_from: null resumes the killed run from LATEST bit-identically (losses %.3g, weights %.3g)", worst,
          dw);
    free(log);
    CHECK(count_entries(test_path("%s/kill", dir), "epoch_", NULL) == 2 &&
              exists(test_path("%s/kill/epoch_1_step_12", dir)) &&
              exists(test_path("%s/kill/epoch_2_step_16/model/consolidated/config.json", dir)) &&
              !exists(test_path("%s/kill/epoch_1_step_12/model/consolidated", dir)) &&
              count_entries(test_path("%s/kill", dir), "", ".tmp.") == 0,
          "max_recent_checkpoints: 2 keeps steps 12 and 16; save_consolidated: final writes only the last");

    /* 4. restore_from LATEST, a step folder's name and a path: each continues bit-identically */
    rc = finetune("", "r", "--step_scheduler.max_steps=8 --step_scheduler.ckpt_every_steps=4");
    rc |= finetune("", "r",
                   "--step_scheduler.max_steps=16 --step_scheduler.ckpt_every_steps=4 "
                   "--checkpoint.restore_from=LATEST");
    memset(part, 0, sizeof part);
    test_run_losses(test_path("%s/r", dir), part, 19);
    worst = loss_gap(part, full, 1, 16);
    dw = rc ? INFINITY
            : test_wan_weights_diff(test_path("%s/r/epoch_2_step_16", dir), "model",
                                    test_path("%s/ft/epoch_2_step_16", dir), "model");
    CHECK(rc == 0 && worst == 0 && dw == 0, "restore_from: LATEST continues from step 8 (losses %.3g, weights %.3g)",
          worst, dw);
    rc = finetune("", "r",
                  "--step_scheduler.max_steps=16 --step_scheduler.ckpt_every_steps=4 "
                  "--checkpoint.restore_from=epoch_0_step_4");
    memset(part, 0, sizeof part);
    test_run_losses(test_path("%s/r", dir), part, 19);
    worst = loss_gap(part, full, 1, 16);
    dw = rc ? INFINITY
            : test_wan_weights_diff(test_path("%s/r/epoch_2_step_16", dir), "model",
                                    test_path("%s/ft/epoch_2_step_16", dir), "model");
    log = test_read_file(test_path("%s/r.log", dir), NULL);
    CHECK(rc == 0 && log && strstr(log, "epoch_0_step_4 at iteration 4") && worst == 0 && dw == 0,
          "restore_from: epoch_0_step_4 (a step folder's name) continues from step 4 over the newer ones (losses "
          "%.3g, weights %.3g)",
          worst, dw);
    free(log);
    rc = finetune("", "r2",
                  test_path("--step_scheduler.max_steps=16 --step_scheduler.ckpt_every_steps=4 "
                            "--checkpoint.restore_from=%s/r/epoch_1_step_8",
                            dir));
    memset(part, 0, sizeof part);
    test_run_losses(test_path("%s/r2", dir), part, 19);
    worst = loss_gap(part, full, 9, 16);
    dw = rc ? INFINITY
            : test_wan_weights_diff(test_path("%s/r2/epoch_2_step_16", dir), "model",
                                    test_path("%s/ft/epoch_2_step_16", dir), "model");
    CHECK(rc == 0 && worst == 0 && dw == 0,
          "restore_from: a path continues from that step folder into a new checkpoint_dir (losses %.3g, weights %.3g)",
          worst, dw);

    /* 5. two ranks (FSDP): the same run, one model/ and one optim/ shard per rank */
    rc = finetune("mpirun --oversubscribe -np 2", "dp2",
                  "--step_scheduler.max_steps=16 --step_scheduler.ckpt_every_steps=8");
    double dp2[20] = {0};
    test_run_losses(test_path("%s/dp2", dir), dp2, 19);
    worst = loss_gap(dp2, full, 1, 16);
    dw = rc ? INFINITY
            : test_wan_weights_diff(test_path("%s/dp2/epoch_2_step_16", dir), "model",
                                    test_path("%s/ft/epoch_2_step_16", dir), "model");
    CHECK(rc == 0 && worst == 0 && dw == 0 &&
              exists(test_path("%s/dp2/epoch_2_step_16/optim/shard_00001_of_00002.safetensors", dir)) &&
              exists(test_path("%s/dp2/epoch_2_step_16/dataloader/dataloader_dp_rank_1.json", dir)),
          "2 ranks (FSDP) equal one process (losses %.3g, weights %.3g)", worst, dw);

    /* 6. across paradigms: a Megatron iter_N checkpoint fine-tunes here; an Automodel step folder and root
     * initialise a Megatron run, and its root resumes one */
    rc = test_sh("%s finetune -c %s --model.pretrained_model_name_or_path=%s/base/ck/iter_0000004 "
                 "--data.dataloader.meta_folder=%s/st --checkpoint.checkpoint_dir=%s/fromiter "
                 "--step_scheduler.max_steps=2 > %s/fromiter.log 2>&1",
                 bin, RECIPE, dir, dir, dir, dir);
    CHECK(rc == 0, "a Megatron-paradigm iter_N checkpoint fine-tunes with dfm finetune");
    rc = test_sh("%s finetune -c %s --model.pretrained_model_name_or_path=%s/ft "
                 "--data.dataloader.meta_folder=%s/st --checkpoint.checkpoint_dir=%s/fromam "
                 "--step_scheduler.max_steps=2 > %s/fromam.log 2>&1",
                 bin, RECIPE, dir, dir, dir, dir);
    CHECK(rc == 0, "an Automodel checkpoint_dir (its LATEST) is a pretrained_model_name_or_path");
    const char *wan_args = "--recipe wan_tiny model.num_layers=2 model.hidden_size=32 model.num_attention_heads=2 "
                           "model.ffn_hidden_size=64 model.image_size=16 model.num_frames=4 dataset.type=video_folder "
                           "dataset.max_samples=null dataset.val_samples=4 train.global_batch_size=4 "
                           "train.micro_batch_size=2 train.train_iters=2";
    const char *inits[] = {"ft/epoch_1_step_8", "ft", "ft/epoch_2_step_16/model/consolidated"};
    for (int k = 0; k < 3; k++) {
        rc = test_sh("%s pretrain %s dataset.path=%s/st logger.output_dir=%s/mg%d checkpoint.save=null "
                     "checkpoint.pretrained_checkpoint=%s/%s > %s/mg%d.log 2>&1",
                     bin, wan_args, dir, dir, k, dir, inits[k], dir, k);
        char *mlog = test_read_file(test_path("%s/mg%d.log", dir, k), NULL);
        CHECK(rc == 0 && mlog && strstr(mlog, "initial weights from"),
              "the Automodel checkpoint %s initialises a Megatron-paradigm run", inits[k]);
        free(mlog);
    }
    rc = test_sh("%s pretrain --config-file %s/ft/run_config.yaml checkpoint.layout=megatron "
                 "checkpoint.consolidated=none checkpoint.config_yaml=null checkpoint.load=%s/ft "
                 "checkpoint.save=%s/mgc logger.output_dir=%s/mgc train.train_iters=18 > %s/mgc.log 2>&1",
                 bin, dir, dir, dir, dir, dir);
    log = test_read_file(test_path("%s/mgc.log", dir), NULL);
    CHECK(rc == 0 && log && strstr(log, "epoch_2_step_16 at iteration 16") &&
              exists(test_path("%s/mgc/iter_0000018/shard_00000_of_00001.safetensors", dir)),
          "dfm pretrain continues an Automodel checkpoint_dir (checkpoint.load) in the Megatron layout");
    free(log);

    /* 7. dfm export and dfm generate read both layouts */
    const char *ckpts[] = {"ft", "ft/epoch_1_step_8", "base/ck", "base/ck/iter_0000004"};
    for (int k = 0; k < 4; k++) {
        rc = test_sh("cd %s && %s export --checkpoint %s --out ex%d > ex%d.log 2>&1 && %s generate --checkpoint %s "
                     "--out gen%d --text-embeddings text.safetensors --per-prompt 1 --steps 2 > gen%d.log 2>&1",
                     dir, bin, ckpts[k], k, k, bin, ckpts[k], k, k);
        CHECK(rc == 0 && exists(test_path("%s/ex%d/transformer/diffusion_pytorch_model.safetensors", dir, k)) &&
                  exists(test_path("%s/gen%d/samples.json", dir, k)),
              "dfm export and dfm generate read %s", ckpts[k]);
        if (rc) test_sh("cat %s/ex%d.log %s/gen%d.log", dir, k, dir, k);
    }

    /* 8. a LATEST naming a missing folder is an error naming both */
    test_sh("mkdir -p %s/bad && ln -sfn epoch_0_step_99 %s/bad/LATEST", dir, dir);
    char cmd[2048], *out = NULL;
    snprintf(cmd, sizeof cmd,
             "%s finetune -c %s --model.pretrained_model_name_or_path=%s/hf --data.dataloader.meta_folder=%s/st "
             "--checkpoint.checkpoint_dir=%s/bad",
             bin, RECIPE, dir, dir, dir);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "bad/LATEST' points to 'epoch_0_step_99'") && strstr(out, "does not exist"),
          "restore_from: null with a LATEST naming a missing folder is refused: %.300s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s export --checkpoint %s/bad --out %s/exbad", bin, dir, dir);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "epoch_0_step_99"), "dfm export names the missing step folder: %.300s", out);
    free(out);

    /* 9. resolution buckets */
    test_buckets();

    /* 10. samples at validation: written per validation step */
    rc = finetune("", "vs",
                  "--step_scheduler.max_steps=4 --step_scheduler.val_every_steps=2 "
                  "--validation.num_samples=2 --validation.sampling_steps=3 --checkpoint.enabled=false");
    CHECK(rc == 0 && exists(test_path("%s/vs/val_samples/step_0000002/samples.safetensors", dir)) &&
              exists(test_path("%s/vs/val_samples/step_0000004/samples.png", dir)),
          "validation.num_samples: clips generated from held-out captions at each validation (safetensors + PNG)");

    /* 11. refused, never ignored: not built, or not meaningful here */
    const char *refused[][2] = {{"--fsdp.dp_replicate_size=2", "dp_replicate_size"},
                                {"--validation.num_samples=2", "val_every_steps"}};
    for (int k = 0; k < 2; k++) {
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
