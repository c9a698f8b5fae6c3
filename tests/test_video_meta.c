/* DFM's .meta video caches (tests/data/make_meta.py writes them with Debian's PyTorch): flat folders in every
 * pickle and torch.save form and Automodel's bucketed cache read back bit for bit; hostile and mismatched files
 * refused with the file named; `dfm data convert` round trips .meta -> safetensors -> Energon -> safetensors and
 * reads an Energon dataset of .pth/.pickle parts; a tiny .meta folder trains wan_tiny for 3 steps. */
#include "dfm/video.h"
#include "test.h"
#include "test_fs.h"

#include <string.h>

static char *dir;
static const char *bin;

/* Raw float32 file into a malloc'ed buffer; *n floats. */
static float *read_f32(const char *path, size_t *n) {
    size_t len;
    uint8_t *b = xread_file(path, &len);
    *n = len / 4;
    return (float *)b;
}

/* Compare a decoded sample with make_meta.py's expect/<name>.* files: shapes, length, caption, bits. */
static int matches_expect(const video_sample *s, const char *name, char *why, size_t wl) {
    char *info = test_read_file(test_path("%s/expect/%s.info", dir, name), NULL);
    if (!info) return snprintf(why, wl, "no expect file for %s", name), 0;
    long long c, t, h, w, rows, d;
    int len, off = 0;
    int ok = sscanf(info, "%lld %lld %lld %lld %lld %lld %d %n", &c, &t, &h, &w, &rows, &d, &len, &off) == 7;
    char cap[256] = "";
    if (ok) {
        snprintf(cap, sizeof cap, "%s", info + off);
        cap[strcspn(cap, "\n")] = 0;
    }
    free(info);
    if (!ok || s->c != c || s->t != t || s->h != h || s->w != w || s->rows != rows || s->dim != d)
        return snprintf(why, wl, "%s: shape differs", name), 0;
    if (s->text_len != len) return snprintf(why, wl, "%s: text_len %d, expected %d", name, s->text_len, len), 0;
    if (!s->caption || strcmp(s->caption, cap))
        return snprintf(why, wl, "%s: caption '%s', expected '%s'", name, s->caption ? s->caption : "(none)", cap), 0;
    size_t nl, nt;
    float *el = read_f32(test_path("%s/expect/%s.lat.f32", dir, name), &nl);
    float *et = read_f32(test_path("%s/expect/%s.txt.f32", dir, name), &nt);
    int same = nl == (size_t)(c * t * h * w) && nt == (size_t)(rows * d) &&
               !memcmp(el, s->latents, nl * sizeof(float)) && !memcmp(et, s->text, nt * sizeof(float));
    free(el), free(et);
    if (!same) snprintf(why, wl, "%s: values differ", name);
    return same;
}

/* The expect name of a listed path: its path under dir with '/' -> '_' and no extension. */
static void expect_name(const char *path, char *name, size_t cap) {
    const char *rel = path + strlen(dir) + 1;
    snprintf(name, cap, "%s", rel);
    char *dot = strrchr(name, '.');
    if (dot) *dot = 0;
    for (char *p = name; *p; p++)
        if (*p == '/') *p = '_';
}

static void test_read_back(const char *sub, int want_n) {
    char **paths, err[2048];
    int n;
    int rc = video_meta_list(test_path("%s/%s", dir, sub), &paths, &n, err, sizeof err);
    CHECK(rc == 0 && n == want_n, "%s: video_meta_list finds %d files (%d; %s)", sub, want_n, n, rc ? err : "ok");
    int good = 0;
    for (int i = 0; rc == 0 && i < n; i++) {
        video_sample s;
        char name[512], why[2048] = "";
        expect_name(paths[i], name, sizeof name);
        if (video_meta_read(paths[i], &s, err, sizeof err) != 0)
            snprintf(why, sizeof why, "%s", err);
        else {
            good += matches_expect(&s, name, why, sizeof why);
            video_sample_free(&s);
        }
        if (why[0]) printf("# %s\n", why);
        free(paths[i]);
    }
    if (rc == 0) free(paths);
    CHECK(good == want_n, "%s: %d of %d samples read back exactly (shapes, valid length, caption, float32 bits)", sub,
          good, want_n);
}

static void test_dataset(void) {
    video_dataset vd;
    char err[2048];
    int rc = video_dataset_meta(&vd, test_path("%s/flat", dir), 0, err, sizeof err);
    CHECK(rc == 0 && vd.n == 6 && vd.c == 2 && vd.t == 3 && vd.h == 4 && vd.w == 6 && vd.text_dim == 8 &&
              vd.text_len == 10,
          "video_dataset_meta(flat): 6 samples [2, 3, 4, 6], text [10, 8] (%s)", rc ? err : "ok");
    if (rc == 0) {
        int ok = 1;
        for (int i = 0; i < vd.n; i++) {
            int want = 1 + (i * 3) % 10;
            ok &= vd.text_lens[i] == want && vd.captions[i] != NULL;
            for (int r = vd.text_lens[i]; r < vd.text_len; r++)
                for (int j = 0; j < vd.text_dim; j++)
                    ok &= vd.text[((size_t)i * vd.text_len + r) * vd.text_dim + j] == 0;
        }
        CHECK(ok, "lengths from text_len, text_mask and the zero padding; zeros past each length; captions kept");
        video_dataset_free(&vd);
    }
    rc = video_dataset_meta(&vd, test_path("%s/cache", dir), 12, err, sizeof err);
    CHECK(rc == 0 && vd.n == 5 && vd.text_len == 12, "video_dataset_meta(bucketed cache) with text_len 12: 5 samples");
    if (rc == 0) video_dataset_free(&vd);

    rc = video_dataset_meta(&vd, test_path("%s/hostile", dir), 0, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "evil.meta") && strstr(err, "system"), "a .meta calling os.system is refused: %s",
          err);
    CHECK(access(test_path("%s/pwned", dir), F_OK) != 0, "and nothing ran");
    rc = video_dataset_meta(&vd, test_path("%s/mismatch", dir), 0, err, sizeof err);
    if (rc == 0) {
        int s0[4], s1[4];
        video_dataset_sample(&vd, 0, s0);
        video_dataset_sample(&vd, 1, s1);
        CHECK(vd.n == 2 && vd.shapes && video_dataset_nshapes(&vd) == 2 && s0[2] == 4 && s1[2] == 6 && vd.h == 6 &&
                  vd.offsets[1] == (size_t)2 * 3 * 4 * 6,
              "two latent shapes load as resolution buckets: [2, 3, %d, 6] and [2, 3, %d, 6], the largest [%d, %d, "
              "%d, %d]",
              s0[2], s1[2], vd.c, vd.t, vd.h, vd.w);
        video_dataset_free(&vd);
    } else
        CHECK(0, "two latent shapes load as resolution buckets: %s", err);
    rc = video_dataset_meta(&vd, test_path("%s/channels", dir), 0, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "k0.meta") && strstr(err, "k1.meta") && strstr(err, "[3, 3, 4, 6]") &&
              strstr(err, "channels"),
          "latents of different channels are refused naming both files and shapes: %s", err);
    rc = video_dataset_meta(&vd, test_path("%s/flat", dir), 4, err, sizeof err);
    CHECK(rc != 0 && strstr(err, ".meta") && strstr(err, "more than the text length 4"),
          "a valid length above text_len is refused naming the file: %s", err);
    rc = video_dataset_meta(&vd, test_path("%s/expect", dir), 0, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "no .meta files"), "a folder without .meta files: %s", err);
}

/* Every <key>.safetensors of folder a equals folder b's (shapes, length, caption, bits); returns how many. */
static int same_folders(const char *a, const char *b, int *total) {
    char err[2048];
    int same = 0;
    *total = 0;
    if (test_sh("test \"$(ls %s | wc -l)\" = \"$(ls %s | wc -l)\"", a, b) != 0) return -1;
    char *list = NULL;
    test_capture(test_path("ls %s", a), &list);
    for (char *f = list ? strtok(list, "\n") : NULL; f; f = strtok(NULL, "\n")) {
        video_sample x, y;
        (*total)++;
        if (video_safetensors_read(test_path("%s/%s", a, f), &x, err, sizeof err) != 0) {
            printf("# %s\n", err);
            continue;
        }
        if (video_safetensors_read(test_path("%s/%s", b, f), &y, err, sizeof err) != 0) {
            printf("# %s\n", err);
            video_sample_free(&x);
            continue;
        }
        same += x.c == y.c && x.t == y.t && x.h == y.h && x.w == y.w && x.rows == y.rows && x.dim == y.dim &&
                x.text_len == y.text_len && x.caption && y.caption && !strcmp(x.caption, y.caption) &&
                !memcmp(x.latents, y.latents, sizeof(float) * (size_t)(x.c * x.t * x.h * x.w)) &&
                !memcmp(x.text, y.text, sizeof(float) * (size_t)(x.rows * x.dim));
        video_sample_free(&x), video_sample_free(&y);
    }
    free(list);
    return same;
}

static void test_convert(void) {
    int rc = test_sh("%s data convert --from %s/flat --to %s/st1 > %s/conv1.log 2>&1", bin, dir, dir, dir);
    CHECK(rc == 0, "dfm data convert .meta folder -> safetensors");
    rc = test_sh("%s data convert --from %s/st1 --to %s/en --to-format energon --maxcount 4 > %s/conv2.log 2>&1", bin,
                 dir, dir, dir);
    CHECK(rc == 0, "safetensors -> Energon shards with .npy parts (--maxcount 4: two shards)");
    rc = test_sh("%s data inspect %s/en > %s/insp.log 2>&1", bin, dir, dir);
    CHECK(rc == 0, "dfm data inspect accepts the written Energon dataset");
    rc = test_sh("%s data convert --from %s/en --to %s/st2 > %s/conv3.log 2>&1", bin, dir, dir, dir);
    CHECK(rc == 0, "Energon -> safetensors");
    int total, same = same_folders(test_path("%s/st1", dir), test_path("%s/st2", dir), &total);
    CHECK(same == 6 && total == 6, "round trip .meta -> safetensors -> Energon -> safetensors: %d of %d samples equal",
          same, total);
    /* the converted folder holds the .meta values exactly */
    char err[2048];
    int good = 0;
    for (int i = 0; i < 6; i++) {
        video_sample s;
        char why[1024] = "";
        if (video_safetensors_read(test_path("%s/st1/a%03d.safetensors", dir, i), &s, err, sizeof err) == 0) {
            good += matches_expect(&s, test_path("flat_a%03d", i), why, sizeof why);
            video_sample_free(&s);
        } else
            printf("# %s\n", err);
        if (why[0]) printf("# %s\n", why);
    }
    CHECK(good == 6, "converted safetensors equal the PyTorch values bit for bit (%d of 6)", good);
    rc = test_sh("%s data convert --from %s/cache --to %s/stc > %s/conv4.log 2>&1", bin, dir, dir, dir);
    CHECK(rc == 0 && test_sh("test $(ls %s/stc | wc -l) = 5", dir) == 0,
          "the bucketed cache converts: 5 samples keyed <WxH>_<hash>");
    video_dataset a, b;
    int ra = video_dataset_meta(&a, test_path("%s/cache", dir), 0, err, sizeof err);
    int rb = video_dataset_folder(&b, test_path("%s/stc", dir), 0, err, sizeof err);
    CHECK(ra == 0 && rb == 0 && a.n == b.n && a.text_len == b.text_len &&
              !memcmp(a.latents, b.latents, sizeof(float) * (size_t)a.n * a.c * a.t * a.h * a.w) &&
              !memcmp(a.text, b.text, sizeof(float) * (size_t)a.n * a.text_len * a.text_dim) &&
              !memcmp(a.text_lens, b.text_lens, sizeof(int) * (size_t)a.n),
          "video_dataset_meta(cache) equals video_dataset_folder(converted) in order, values and lengths");
    if (ra == 0) video_dataset_free(&a);
    if (rb == 0) video_dataset_free(&b);
    rc = test_sh("%s data convert --from %s/hostile --to %s/sth > %s/conv5.log 2>&1", bin, dir, dir, dir);
    CHECK(rc != 0 && test_sh("grep -q 'evil.meta' %s/conv5.log", dir) == 0, "convert refuses the hostile .meta");

    /* DFM's Megatron layout: .pth latents, .pickle text, json (tests/data/make_video_pickles.py) */
    rc =
        test_sh("/usr/bin/python3 tests/data/make_video_pickles.py %s/vp > /dev/null 2>&1 && %s data prepare --tensors "
                "%s/vp/pth --out %s/vpe --maxcount 5 > /dev/null 2>&1 && %s data convert --from %s/vpe --to %s/vps > "
                "%s/conv6.log 2>&1",
                dir, bin, dir, dir, bin, dir, dir, dir);
    CHECK(rc == 0, "an Energon dataset of .pth/.pickle parts converts to safetensors");
    char *exp = test_read_file(test_path("%s/vp/expected.txt", dir), NULL);
    int ok = 0, lines = 0;
    for (char *line = exp ? strtok(exp, "\n") : NULL; line; line = strtok(NULL, "\n")) {
        char key[32];
        int valid;
        double ls, ts;
        if (sscanf(line, "%31s %d %lf %lf", key, &valid, &ls, &ts) != 4) continue;
        lines++;
        video_sample s;
        if (video_safetensors_read(test_path("%s/vps/%s.safetensors", dir, key), &s, err, sizeof err) != 0) continue;
        double sl = 0, st = 0;
        for (int64_t i = 0; i < s.c * s.t * s.h * s.w; i++) sl += s.latents[i];
        for (int64_t i = 0; i < (int64_t)s.text_len * s.dim; i++) st += s.text[i];
        ok += s.text_len == valid && fabs(sl - ls) < 1e-4 * (1 + fabs(ls)) && fabs(st - ts) < 1e-4 * (1 + fabs(ts));
        video_sample_free(&s);
    }
    free(exp);
    CHECK(lines == 12 && ok == 12, ".pth/.pickle samples converted with their values and valid lengths (%d of %d)", ok,
          lines);
}

static void test_train(void) {
    int rc =
        test_sh("%s pretrain --recipe wan_tiny model.num_layers=2 model.hidden_size=32 model.num_attention_heads=2 "
                "model.ffn_hidden_size=64 model.image_size=16 model.num_frames=4 model.in_channels=2 "
                "model.out_channels=2 dataset.type=video_meta dataset.path=%s/train dataset.max_samples=null "
                "dataset.val_samples=2 dataset.num_workers=0 train.global_batch_size=2 train.micro_batch_size=2 "
                "train.train_iters=3 train.eval_interval=3 train.eval_iters=1 logger.log_interval=1 "
                "checkpoint.save_interval=3 scheduler.lr_warmup_iters=1 logger.output_dir=%s/run "
                "checkpoint.save=%s/run/ck > %s/train.log 2>&1",
                bin, dir, dir, dir, dir);
    if (rc != 0) test_sh("tail -5 %s/train.log", dir);
    CHECK(rc == 0, "dfm pretrain --recipe wan_tiny dataset.type=video_meta trains on 12 .meta files");
    CHECK(test_sh("test $(grep -c '\"loss\"' %s/run/metrics.jsonl) -ge 3", dir) == 0, "3 steps logged with a loss");
    /* the Automodel paradigm on the same .meta folder, starting from that Megatron-paradigm checkpoint */
    rc = test_sh(
        "%s finetune -c recipes/automodel/wan_tiny_finetune.yaml --model.pretrained_model_name_or_path=%s/run/ck "
        "--data.dataloader.meta_folder=%s/train --data.dataloader.num_workers=0 "
        "--checkpoint.checkpoint_dir=%s/ft --step_scheduler.max_steps=3 > %s/ft.log 2>&1",
        bin, dir, dir, dir, dir);
    if (rc != 0) test_sh("tail -5 %s/ft.log", dir);
    CHECK(rc == 0 && test_sh("test $(grep -c '\"loss\"' %s/ft/metrics.jsonl) -ge 3", dir) == 0,
          "dfm finetune trains 3 steps on the .meta folder (meta_folder) from the Megatron-paradigm checkpoint");
    /* DFM's Megatron-path layout (.pth latents, .pickle text, json) straight from its Energon shards */
    rc = test_sh("%s pretrain --recipe wan_tiny model.num_layers=1 model.hidden_size=32 model.num_attention_heads=2 "
                 "model.ffn_hidden_size=64 model.image_size=4 model.num_frames=3 model.in_channels=2 "
                 "model.out_channels=2 model.text_dim=8 model.text_len=16 dataset.type=energon dataset.path=%s/vpe "
                 "dataset.max_samples=null dataset.num_workers=0 train.global_batch_size=2 train.micro_batch_size=1 "
                 "train.train_iters=3 train.eval_iters=0 logger.log_interval=1 checkpoint.save=null "
                 "scheduler.lr_warmup_iters=1 logger.output_dir=%s/run_pth > %s/train_pth.log 2>&1",
                 bin, dir, dir, dir);
    if (rc != 0) test_sh("tail -5 %s/train_pth.log", dir);
    CHECK(rc == 0 && test_sh("test $(grep -c '\"loss\"' %s/run_pth/metrics.jsonl) -ge 3", dir) == 0,
          "dfm pretrain --recipe wan_tiny trains 3 steps on Energon shards of .pth / .pickle parts");
}

int main(void) {
    bin = test_dfm_bin();
    if (test_sh("/usr/bin/python3 -c 'import torch, numpy' >/dev/null 2>&1") != 0) {
        printf("FAIL /usr/bin/python3 with torch and numpy is needed for the fixtures (scripts/install-deps.sh "
               "--test)\n");
        return 1;
    }
    dir = test_mkdtemp();
    int rc = test_sh("/usr/bin/python3 tests/data/make_meta.py %s", dir);
    CHECK(rc == 0, "tests/data/make_meta.py wrote the .meta fixtures");
    if (rc == 0) {
        test_read_back("flat", 6);
        test_read_back("cache", 5);
        test_dataset();
        test_convert();
        test_train();
    }
    test_rmtree(dir);
    free(dir);
    return test_finish();
}
