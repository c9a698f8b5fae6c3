/* The training job end to end through the dfm binary on a tiny config: kill -9 and resume gives the same
 * metrics as an uninterrupted run; broken checkpoints, datasets and configs give clear errors. */
#include "dfm/codec.h"
#include "dfm/common.h"
#include "test.h"
#include "test_fs.h"

#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <jpeglib.h>
#include <unistd.h>

static char dir[128], bin[512];

static const char *TINY =
    "model.num_layers=2 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=64 "
    "model.patch_size=7 train.train_iters=12 train.global_batch_size=8 train.micro_batch_size=4 "
    "train.eval_interval=6 train.eval_iters=1 dataset.val_samples=16 dataset.num_workers=1 logger.log_interval=1 "
    "checkpoint.save_interval=3 checkpoint.most_recent_k=2 optimizer.lr=3e-3 scheduler.lr_warmup_iters=2";

/* A text file's contents, or "" when it does not exist (yet). */
static char *slurp(const char *path) {
    char *s = test_read_file(path, NULL);
    return s ? s : xstrdup("");
}

/* The reproducible part of metrics.jsonl: each line without its timing fields. */
static char *losses_only(const char *metrics) {
    char *s = slurp(metrics), *out = xcalloc(strlen(s) + 1, 1);
    for (char *line = strtok(s, "\n"); line; line = strtok(NULL, "\n")) {
        char *cut = strstr(line, ", \"samples_per_s\"");
        if (cut) *cut = 0;
        strcat(out, line);
        strcat(out, "\n");
    }
    free(s);
    return out;
}

static int count_lines(const char *path) {
    char *s = slurp(path);
    int n = 0;
    for (char *p = s; *p; p++) n += *p == '\n';
    free(s);
    return n;
}

static void kill_and_resume(void) {
    char cmd[4096], *out = NULL;
    /* the uninterrupted run */
    snprintf(cmd, sizeof cmd, "%s pretrain %s logger.output_dir=%s/a checkpoint.save=%s/a/ckpt", bin, TINY, dir, dir);
    int rc = test_capture(cmd, &out);
    CHECK(rc == 0, "uninterrupted tiny run finishes (exit %d)%s%.300s", rc, rc ? ": " : "", rc ? out : "");
    free(out);
    char ma[256], mb[256];
    snprintf(ma, sizeof ma, "%s/a/metrics.jsonl", dir);
    snprintf(mb, sizeof mb, "%s/b/metrics.jsonl", dir);

    /* the same run killed with SIGKILL once it has logged 7 steps (a checkpoint exists at step 6) */
    snprintf(cmd, sizeof cmd, "%s/b", dir);
    mkdir(cmd, 0755);
    pid_t pid = fork();
    if (pid == 0) {
        char outdir[256], save[256];
        snprintf(outdir, sizeof outdir, "logger.output_dir=%s/b", dir);
        snprintf(save, sizeof save, "checkpoint.save=%s/b/ckpt", dir);
        char *argv[64];
        int argc = 0;
        argv[argc++] = bin;
        argv[argc++] = "pretrain";
        char *tiny = xstrdup(TINY);
        for (char *t = strtok(tiny, " "); t; t = strtok(NULL, " ")) argv[argc++] = t;
        argv[argc++] = outdir;
        argv[argc++] = save;
        argv[argc] = NULL;
        freopen("/dev/null", "w", stdout);
        execv(bin, argv);
        _exit(127);
    }
    double t0 = dfm_time_s();
    while (count_lines(mb) < 8 && dfm_time_s() - t0 < 120) usleep(2000);
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    int lines_at_kill = count_lines(mb);
    CHECK(WIFSIGNALED(st) && lines_at_kill < 14, "run killed with SIGKILL mid-training (%d metric lines written)",
          lines_at_kill);

    /* resume from whatever the killed run left */
    snprintf(cmd, sizeof cmd,
             "%s pretrain %s logger.output_dir=%s/b checkpoint.save=%s/b/ckpt checkpoint.load=%s/b/ckpt", bin, TINY,
             dir, dir, dir);
    rc = test_capture(cmd, &out);
    CHECK(rc == 0 && strstr(out, "resumed from"), "resumed run finishes (exit %d)%s%.300s", rc, rc ? ": " : "",
          rc ? out : "");
    free(out);
    char *a = losses_only(ma), *b = losses_only(mb);
    CHECK(strlen(a) > 100 && !strcmp(a, b), "resumed metrics.jsonl equals the uninterrupted run's (%zu bytes)%s",
          strlen(a), strcmp(a, b) ? "" : "");
    if (strcmp(a, b)) printf("# uninterrupted:\n%s# resumed:\n%s", a, b);
    free(a), free(b);

    /* final weights identical too */
    char pa[256], pb[256];
    snprintf(pa, sizeof pa, "%s/a/ckpt/iter_0000012/model.safetensors", dir);
    snprintf(pb, sizeof pb, "%s/b/ckpt/iter_0000012/model.safetensors", dir);
    size_t la = 0, lb = 0;
    char *wa = test_read_file(pa, &la), *wb = test_read_file(pb, &lb);
    int same = wa && wb && la == lb && la > 1000 && !memcmp(wa, wb, la);
    CHECK(same, "final model.safetensors of the resumed run is byte-identical");
    free(wa), free(wb);

    /* most_recent_k = 2: only the two newest checkpoints remain */
    snprintf(pa, sizeof pa, "%s/a/ckpt/iter_0000009", dir);
    snprintf(pb, sizeof pb, "%s/a/ckpt/iter_0000006", dir);
    struct stat sa, sb;
    CHECK(stat(pa, &sa) == 0 && stat(pb, &sb) != 0, "checkpoint.most_recent_k=2 keeps iter 9 and 12 only");
}

static void broken_checkpoints(void) {
    char cmd[4096], path[512], *out;
    /* a half-written checkpoint folder (as a crash mid-save leaves it) is never picked up */
    snprintf(path, sizeof path, "%s/a/ckpt/iter_0000015.tmp.999", dir);
    mkdir(path, 0755);
    snprintf(
        cmd, sizeof cmd,
        "%s pretrain %s train.train_iters=13 logger.output_dir=%s/c checkpoint.save=null checkpoint.load=%s/a/ckpt",
        bin, TINY, dir, dir);
    int rc = test_capture(cmd, &out);
    CHECK(rc == 0 && strstr(out, "iter_0000012 at iteration 12"), "resume ignores a half-written iter_*.tmp.* folder");
    free(out);
    /* a tracker naming a missing iteration */
    snprintf(path, sizeof path, "%s/a/ckpt/latest_checkpointed_iteration.txt", dir);
    FILE *f = xfopen(path, "w");
    fputs("77\n", f);
    fclose(f);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "iter_0000077") && strstr(out, "does not exist"),
          "tracker naming a missing iteration is refused: %.200s", out);
    free(out);
    f = xfopen(path, "w");
    fputs("12\n", f);
    fclose(f);
    /* a checkpoint of another model shape */
    snprintf(cmd, sizeof cmd,
             "%s pretrain %s model.hidden_size=48 train.train_iters=13 logger.output_dir=%s/c checkpoint.save=null "
             "checkpoint.load=%s/a/ckpt",
             bin, TINY, dir, dir);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "pos_embed.proj.weight") && strstr(out, "[32, 1, 7, 7]") &&
              strstr(out, "[48, 1, 7, 7]"),
          "checkpoint of another shape refused, naming the tensor: %.300s", out);
    free(out);
    /* a truncated weights file */
    snprintf(path, sizeof path, "%s/a/ckpt/iter_0000012/model.safetensors", dir);
    struct stat sb;
    stat(path, &sb);
    if (truncate(path, sb.st_size - 100) != 0) dfm_die("truncate failed");
    snprintf(
        cmd, sizeof cmd,
        "%s pretrain %s train.train_iters=13 logger.output_dir=%s/c checkpoint.save=null checkpoint.load=%s/a/ckpt",
        bin, TINY, dir, dir);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "model.safetensors") && strstr(out, "truncated"),
          "truncated checkpoint weights refused: %.300s", out);
    free(out);
}

static void bad_inputs(void) {
    char cmd[4096], *out;
    snprintf(cmd, sizeof cmd, "%s pretrain %s dataset.path=%s/nowhere logger.output_dir=%s/d", bin, TINY, dir, dir);
    int rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "nowhere"), "missing dataset folder named: %.300s", out);
    free(out);
    /* a truncated copy of the Fashion-MNIST training images */
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s/fm && cp /usr/share/datasets/fashion-mnist/* %s/fm/ && "
             "head -c 100000 /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz > "
             "%s/fm/train-images-idx3-ubyte.gz",
             dir, dir, dir);
    test_capture(cmd, NULL);
    snprintf(cmd, sizeof cmd, "%s pretrain %s dataset.path=%s/fm logger.output_dir=%s/d", bin, TINY, dir, dir);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "train-images-idx3-ubyte.gz"), "truncated dataset file named: %.300s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s pretrain train.global_batch_sise=8", bin);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "train.global_batch_size"), "misspelt key gets a suggestion: %.300s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s pretrain %s train.global_batch_size=6 logger.output_dir=%s/d", bin, TINY, dir);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "does not divide into data-parallel size 1 x train.micro_batch_size 4"),
          "batch sizes checked: %.200s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s pretrain %s dist.timeout_s=0 logger.output_dir=%s/d", bin, TINY, dir);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "dist.timeout_s = 0"), "a zero collective timeout is refused: %.200s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s pretrain %s dataset.max_samples=10 logger.output_dir=%s/d", bin, TINY, dir);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "dataset.max_samples") && strstr(out, "video_clips"),
          "dataset.max_samples outside video_clips is refused: %.200s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s pretrain %s model.tensor_model_parallel_size=2 logger.output_dir=%s/d", bin, TINY,
             dir);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "world size 1 (mpirun -np) is not divisible by tensor x context x pipeline"),
          "a layout that does not fit the world is refused: %.200s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s pretrain %s model.recompute_num_layers=2 logger.output_dir=%s/d", bin, TINY, dir);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "recompute_num_layers") && strstr(out, "recompute_granularity is null"),
          "recompute_num_layers without a granularity refused, not ignored: %.200s", out);
    free(out);
    /* numerical faults: lr 1e30 makes step 2's gradient Inf/NaN; lr 3 makes step 2's loss jump */
    const char *blowup = "optimizer.lr=1e30 optimizer.clip_grad=0 scheduler.lr_warmup_iters=0 checkpoint.save=null";
    snprintf(cmd, sizeof cmd, "%s pretrain %s %s train.train_iters=4 logger.output_dir=%s/nan1", bin, TINY, blowup,
             dir);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "step 2: the gradient of 'pos_embed.proj.weight'") &&
              strstr(out, "train.on_nan: stop"),
          "a NaN/Inf gradient stops the run at its step, naming the first tensor holding it: %.300s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s pretrain %s %s train.train_iters=4 train.on_nan=skip_step logger.output_dir=%s/nan2",
             bin, TINY, blowup, dir);
    rc = test_capture(cmd, &out);
    char *m = test_read_file(test_path("%s/nan2/metrics.jsonl", dir), NULL);
    CHECK(rc == 0 && strstr(out, "step 4:") && strstr(out, "update skipped") && m && strstr(m, "\"loss\": null") &&
              strstr(m, "\"skipped_steps\": 3}"),
          "train.on_nan=skip_step skips the updates, logs them and keeps metrics.jsonl valid JSON: %.200s", out);
    free(m);
    free(out);
    snprintf(cmd, sizeof cmd,
             "%s pretrain %s optimizer.lr=3 optimizer.clip_grad=0 scheduler.lr_warmup_iters=0 "
             "checkpoint.save=null train.train_iters=3 logger.output_dir=%s/spike",
             bin, TINY, dir);
    rc = test_capture(cmd, &out);
    CHECK(strstr(out, "step 2: loss") && strstr(out, "x the recent mean"), "a loss spike is reported: %.300s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s pretrain %s model.hidden_size=33 logger.output_dir=%s/d", bin, TINY, dir);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "not divisible"), "invalid model shape refused: %.200s", out);
    free(out);
}

static void write_file(const char *path, const void *buf, size_t n) {
    FILE *f = xfopen(path, "wb");
    xfwrite(buf, 1, n, f, path);
    fclose(f);
}

static void write_jpeg(const char *path, const uint8_t *rgb, int w, int h) {
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e);
    jpeg_create_compress(&c);
    FILE *f = xfopen(path, "wb");
    jpeg_stdio_dest(&c, f);
    c.image_width = (JDIMENSION)w, c.image_height = (JDIMENSION)h, c.input_components = 3, c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(rgb + (size_t)c.next_scanline * w * 3);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    fclose(f);
}

/* An image folder with PNG and JPEG files of other sizes, labelled by sub-folder, then by metadata.jsonl. */
static void image_folder(void) {
    char path[512], cmd[4096], *out;
    const char *classes[2] = {"boots", "shirts"};
    for (int k = 0; k < 2; k++) {
        snprintf(path, sizeof path, "%s/imgs/%s", dir, classes[k]);
        snprintf(cmd, sizeof cmd, "mkdir -p %s", path);
        test_capture(cmd, NULL);
        for (int i = 0; i < 12; i++) {
            int w = 40 + i, h = 36;
            uint8_t *px = xmalloc((size_t)w * h * 3);
            for (int p = 0; p < w * h * 3; p++) px[p] = (uint8_t)(test_uniform() * 255);
            if (i % 2) {
                size_t len;
                uint8_t *png = png_encode_mem(px, w, h, 3, &len);
                snprintf(path, sizeof path, "%s/imgs/%s/%02d.png", dir, classes[k], i);
                write_file(path, png, len);
                free(png);
            } else {
                snprintf(path, sizeof path, "%s/imgs/%s/%02d.jpg", dir, classes[k], i);
                write_jpeg(path, px, w, h);
            }
            free(px);
        }
    }
    const char *folder_run = "%s pretrain model.num_layers=1 model.hidden_size=32 model.num_attention_heads=2 "
                             "model.ffn_hidden_size=64 model.patch_size=7 model.num_classes=2 train.train_iters=3 "
                             "train.global_batch_size=4 train.micro_batch_size=4 dataset.type=image_folder "
                             "dataset.path=%s/imgs dataset.val_samples=4 logger.output_dir=%s/e checkpoint.save=null";
    snprintf(cmd, sizeof cmd, folder_run, bin, dir, dir);
    int rc = test_capture(cmd, &out);
    CHECK(rc == 0 && strstr(out, "20 training / 4 validation"),
          "image folder (PNG + JPEG, resized, labels from sub-folders) trains: %.300s", rc ? out : "ok");
    free(out);
    /* labels from metadata.jsonl, and a bad line in it */
    snprintf(path, sizeof path, "%s/imgs/metadata.jsonl", dir);
    const char *good =
        "{\"file_name\": \"boots/00.jpg\", \"label\": 1}\n{\"file_name\": \"shirts/01.png\", \"label\": 0}\n";
    write_file(path, good, strlen(good));
    rc = test_capture(cmd, &out);
    CHECK(rc == 0, "metadata.jsonl labels accepted: %.300s", rc ? out : "ok");
    free(out);
    const char *bad = "{\"file_name\": \"boots/00.jpg\", \"label\": 1}\n{\"file_name\": \"nope.png\"}\n";
    write_file(path, bad, strlen(bad));
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "metadata.jsonl' line 2") && strstr(out, "nope.png"),
          "metadata.jsonl naming a missing file refused with its line: %.300s", out);
    free(out);
    /* a corrupt image names the file */
    unlink(path);
    snprintf(path, sizeof path, "%s/imgs/boots/03.png", dir);
    write_file(path, "not a png", 9);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "boots/03.png"), "corrupt PNG named: %.300s", out);
    free(out);
}

/* Training from an Energon dataset prepared by dfm: validation from its val split, and a run stopped and
 * resumed (the reader's state in the checkpoint) matches an uninterrupted one. */
static void energon_training(void) {
    char cmd[4096], *out;
    snprintf(cmd, sizeof cmd, "%s data prepare --out %s/en --fashion-mnist --limit 300 --maxcount 64 --split 8,2", bin,
             dir);
    int rc = test_capture(cmd, &out);
    CHECK(rc == 0, "dfm data prepare from Fashion-MNIST: %.200s", rc ? out : "ok");
    free(out);
    const char *en_run = "%s pretrain %s dataset.type=energon dataset.path=%s/en train.eval_interval=3 "
                         "train.train_iters=%d logger.output_dir=%s/%s checkpoint.save=%s/%s/ckpt %s";
    snprintf(cmd, sizeof cmd, en_run, bin, TINY, dir, 6, dir, "ea", dir, "ea", "");
    rc = test_capture(cmd, &out);
    CHECK(rc == 0 && strstr(out, "train split + val split") && strstr(out, "validation loss at step 6"),
          "trains on an Energon folder with its val split: %.300s", rc ? out : "ok");
    free(out);
    snprintf(cmd, sizeof cmd, en_run, bin, TINY, dir, 3, dir, "eb", dir, "eb", "");
    rc = test_capture(cmd, &out);
    free(out);
    char load[300];
    snprintf(load, sizeof load, "checkpoint.load=%s/eb/ckpt", dir);
    snprintf(cmd, sizeof cmd, en_run, bin, TINY, dir, 6, dir, "eb", dir, "eb", load);
    int rc2 = test_capture(cmd, &out);
    free(out);
    char ma[256], mb[256];
    snprintf(ma, sizeof ma, "%s/ea/metrics.jsonl", dir);
    snprintf(mb, sizeof mb, "%s/eb/metrics.jsonl", dir);
    char *a = losses_only(ma), *b = losses_only(mb);
    CHECK(rc == 0 && rc2 == 0 && strlen(a) > 100 && !strcmp(a, b),
          "Energon run stopped at step 3 and resumed equals the uninterrupted run (reader state restored)");
    if (strcmp(a, b)) printf("# uninterrupted:\n%s# resumed:\n%s", a, b);
    free(a), free(b);
}

int main(void) {
    test_seed();
    snprintf(bin, sizeof bin, "%s", test_dfm_bin());
    snprintf(dir, sizeof dir, "/tmp/dfm_test_pretrain_XXXXXX");
    if (!mkdtemp(dir)) dfm_die("mkdtemp failed");
    kill_and_resume();
    broken_checkpoints();
    bad_inputs();
    image_folder();
    energon_training();
    rm_tree(dir);
    return test_finish();
}
