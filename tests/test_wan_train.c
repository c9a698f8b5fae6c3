/* Wan 2.1 through the training job and generation: the built-in clips train (losses finite and falling), a
 * stopped run resumes bit-identically, two data-parallel ranks equal one process, and dfm generate writes a GIF,
 * a frame strip and a manifest per prompt, with and without guidance. */
#include "dfm/checkpoint.h"
#include "dfm/wan.h"
#include "test.h"
#include "test_fs.h"
#include "test_run.h"

#include <gif_lib.h>
#include <jansson.h>
#include <math.h>

static const char *SMALL =
    "--recipe wan_tiny model.num_layers=2 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=64 "
    "model.image_size=16 model.num_frames=4 dataset.max_samples=64 dataset.val_samples=8 dataset.num_workers=0 "
    "train.global_batch_size=4 train.micro_batch_size=2 train.eval_interval=3 train.eval_iters=1 "
    "logger.log_interval=1 checkpoint.save_interval=3 optimizer.lr=3e-3 scheduler.lr_warmup_iters=1 "
    "scheduler.lr_decay_iters=12";

static char *dir;
static const char *bin;

static int train(const char *launcher, const char *name, const char *extra) {
    return test_sh("%s %s pretrain %s logger.output_dir=%s/%s checkpoint.save=%s/%s/ck %s > %s/%s.log 2>&1", launcher,
                   bin, SMALL, dir, name, dir, name, extra, dir, name);
}

int main(void) {
    bin = test_dfm_bin();
    dir = test_mkdtemp();
    test_mpi_env();

    /* 1. train 12 steps */
    int rc = train("", "full", "train.train_iters=12");
    double full[16] = {0};
    int n = rc ? 0 : test_run_losses(test_path("%s/full", dir), full, 15);
    int finite = n == 12;
    for (int s = 1; s <= 12 && finite; s++) finite = isfinite(full[s]);
    CHECK(rc == 0 && finite, "wan_tiny trains on the built-in clips: %d finite losses logged (rc %d)", n, rc);
    double first = (full[1] + full[2] + full[3]) / 3, last = (full[10] + full[11] + full[12]) / 3;
    CHECK(last < first, "the loss falls: mean of steps 1-3 %.4f, of steps 10-12 %.4f", first, last);
    char *log = test_read_file(test_path("%s/full.log", dir), NULL);
    CHECK(log && strstr(log, "validation loss at step 12"), "validation loss is reported");
    free(log);

    /* 2. stop after 6 steps, resume to 12: the same losses and weights */
    rc = train("", "part", "train.train_iters=6");
    rc |= test_sh("%s pretrain %s logger.output_dir=%s/part checkpoint.save=%s/part/ck checkpoint.load=%s/part/ck "
                  "train.train_iters=12 > %s/resume.log 2>&1",
                  bin, SMALL, dir, dir, dir, dir);
    double part[16] = {0};
    test_run_losses(test_path("%s/part", dir), part, 15);
    double worst = 0;
    for (int s = 1; s <= 12; s++) worst = fmax(worst, fabs(part[s] - full[s]));
    double dw = rc ? INFINITY
                   : test_wan_weights_diff(test_path("%s/part/ck/iter_0000012", dir), "model",
                                           test_path("%s/full/ck/iter_0000012", dir), "model");
    CHECK(rc == 0 && worst == 0 && dw == 0,
          "stopped at 6 and resumed: losses differ by %.3g, weights by %.3g (bit-identical)", worst, dw);

    /* 3. two data-parallel ranks, sharded parameters: the same run */
    rc = train("mpirun --oversubscribe -np 2", "dp2",
               "train.train_iters=12 ddp.data_parallel_sharding_strategy=optim_grads_params");
    double dp2[16] = {0};
    test_run_losses(test_path("%s/dp2", dir), dp2, 15);
    worst = 0;
    for (int s = 1; s <= 12; s++) worst = fmax(worst, fabs(dp2[s] - full[s]));
    dw = rc ? INFINITY
            : test_wan_weights_diff(test_path("%s/dp2/ck/iter_0000012", dir), "model",
                                    test_path("%s/full/ck/iter_0000012", dir), "model");
    CHECK(rc == 0 && worst == 0 && dw == 0,
          "DP=2 optim_grads_params equals one process: losses differ by %.3g, weights by %.3g", worst, dw);

    /* 4. clips from prompts, with guidance, from the sharded checkpoint too */
    const char *srcs[2] = {"full", "dp2"};
    for (int k = 0; k < 2; k++) {
        char *out = NULL, cmd[2048];
        snprintf(cmd, sizeof cmd,
                 "%s generate --checkpoint %s/%s/ck --out %s/gen_%s --prompt 'a sneaker moving left' "
                 "--prompt 'a bag moving up' --per-prompt 2 --steps 4 --guidance 3",
                 bin, dir, srcs[k], dir, srcs[k]);
        rc = test_capture(cmd, &out);
        int gerr = 0;
        GifFileType *g = DGifOpenFileName(test_path("%s/gen_%s/clip_0003.gif", dir, srcs[k]), &gerr);
        int frames = g && DGifSlurp(g) == GIF_OK ? g->ImageCount : -1;
        if (g) DGifCloseFile(g, &gerr);
        char *man = test_read_file(test_path("%s/gen_%s/samples.json", dir, srcs[k]), NULL);
        json_t *m = man ? json_loads(man, 0, NULL) : NULL;
        const char *p3 = json_string_value(json_object_get(json_array_get(m, 3), "prompt"));
        CHECK(
            rc == 0 && frames == 4 && json_array_size(m) == 4 && p3 && !strcmp(p3, "a bag moving up"),
            "generate from the %s checkpoint: 4 clips, a 4-frame GIF each, prompts in samples.json (rc %d, frames %d): "
            "%.200s",
            srcs[k], rc, frames, out);
        json_decref(m);
        free(man), free(out);
    }
    char *a = test_read_file(test_path("%s/gen_full/samples.safetensors", dir), NULL);
    size_t la = 0, lb = 0;
    free(a);
    a = test_read_file(test_path("%s/gen_full/samples.safetensors", dir), &la);
    char *b = test_read_file(test_path("%s/gen_dp2/samples.safetensors", dir), &lb);
    CHECK(a && b && la == lb && memcmp(a, b, la) == 0,
          "clips from the one-process and the DP=2 sharded checkpoints are identical");
    free(a), free(b);

    /* 5. a diffusers folder (exported from the first run) as the initial weights of a new run: with lr 0 the
     * weights after one step are the folder's exactly */
    rc = test_sh("%s export --checkpoint %s/full/ck --out %s/exported > %s/export.log 2>&1", bin, dir, dir, dir);
    rc |= train("", "init",
                test_path("train.train_iters=1 optimizer.lr=0 optimizer.min_lr=0 checkpoint.save_interval=1 "
                          "checkpoint.pretrained_checkpoint=%s/exported",
                          dir));
    double di = rc ? INFINITY
                   : test_wan_weights_diff(test_path("%s/init/ck/iter_0000001", dir), "model",
                                           test_path("%s/full/ck/iter_0000012", dir), "ema");
    CHECK(rc == 0 && di == 0,
          "checkpoint.pretrained_checkpoint=<diffusers folder> starts from its weights (rel %.3g, rc %d)", di, rc);
    char *out0 = NULL, cmd0[2048];
    snprintf(cmd0, sizeof cmd0,
             "%s pretrain %s model.hidden_size=64 logger.output_dir=%s/z "
             "checkpoint.pretrained_checkpoint=%s/exported",
             bin, SMALL, dir, dir);
    rc = test_capture(cmd0, &out0);
    CHECK(rc != 0 && strstr(out0, "holds a different model"), "a pretrained model of another shape is refused: %.300s",
          out0);
    free(out0);

    /* 5. options that do not fit the model are refused */
    char *out = NULL, cmd[2048];
    snprintf(cmd, sizeof cmd, "%s generate --checkpoint %s/full/ck --out %s/x --classes 1", bin, dir, dir);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "DiT options"), "--classes on a Wan checkpoint is refused: %.200s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s pretrain %s dataset.type=fashion_mnist logger.output_dir=%s/y", bin, SMALL, dir);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "does not fit model.kind wan"), "an image dataset for Wan is refused: %.200s", out);
    free(out);

    test_rmtree(dir);
    free(dir);
    return test_finish();
}
