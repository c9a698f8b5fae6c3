/* Energon datasets end to end: dfm data prepare -> reader round trips (synthetic tensors and Fashion-MNIST),
 * datasets written by Python's tarfile (PAX and GNU) with a hand-written .nv-meta, error paths, blends, DP
 * sharding, TP peers, state save/restore and skipping of non-finite samples. */
#include "dfm/codec.h"
#include "dfm/energon.h"
#include "dfm/fashion_mnist.h"
#include "dfm/tar.h"
#include "test.h"
#include "test_fs.h"

#include <jpeglib.h>
#include <libgen.h>
#include <string.h>

#define NSYN 37
static char dfm_bin[1024];
static char *dir;

static void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    fwrite(data, 1, n, f);
    fclose(f);
}

/* Synthetic tensor folder: s000..s036, parts x.npy (float32 [3] = {i, 2i, -i}) and txt. */
static void make_tensor_source(const char *src_in, int n, int with_bad) {
    char src[1024];
    snprintf(src, sizeof src, "%s", src_in);
    test_sh("mkdir -p %s", src);
    for (int i = 0; i < n; i++) {
        float x[3] = {(float)i, 2.0f * i, -(float)i};
        if (with_bad && i == 1) x[1] = NAN;
        if (with_bad && i == 4) x[2] = 1e7f;
        int64_t shape[1] = {3};
        size_t len;
        uint8_t *b = npy_encode(x, "<f4", shape, 1, &len);
        write_file(test_path("%s/s%03d.x.npy", src, i), b, len);
        free(b);
        char t[32];
        snprintf(t, sizeof t, "sample %d", i);
        write_file(test_path("%s/s%03d.txt", src, i), t, strlen(t));
    }
}

static energon_reader *open_r(const char *path, int rank, int size, int workers, int buffer, int slice, char *err) {
    energon_options o;
    energon_options_default(&o);
    o.dp_rank = rank, o.dp_size = size, o.num_workers = workers, o.shuffle_buffer = buffer, o.slice_size = slice;
    o.seed = 77;
    o.quiet = 1;
    return energon_open(path, &o, err, 1024);
}

static int key_num(const energon_sample *s) {
    return atoi(s->key + 1);
}

static void test_roundtrip_synthetic(void) {
    const char *ds = test_path("%s/syn", dir);
    int rc = test_sh("%s data prepare --out %s --tensors %s/src --maxcount 10 >/dev/null", dfm_bin, ds, dir);
    CHECK(rc == 0, "dfm data prepare --tensors (37 samples, 10 per shard) exits 0");
    char err[1024];
    energon_reader *r = open_r(ds, 0, 1, 0, 0, 0, err);
    CHECK(r != NULL, "open prepared folder%s%s", r ? "" : ": ", r ? "" : err);
    if (!r) return;
    int bad = 0;
    for (int i = 0; i < NSYN; i++) {
        energon_sample *s;
        if (energon_next(r, &s) != 0) {
            bad++;
            break;
        }
        const energon_part *x = energon_sample_part(s, "x.npy"), *t = energon_sample_part(s, "txt");
        char want[32];
        snprintf(want, sizeof want, "sample %d", i);
        if (key_num(s) != i || !x || x->kind != EN_TENSOR || x->ndim != 1 || x->shape[0] != 3 ||
            ((float *)x->data)[1] != 2.0f * i || !t || strcmp(t->data, want))
            bad++;
        energon_sample_free(s);
    }
    CHECK(bad == 0, "round trip prepare -> read: 37 samples in order, keys, tensors and text equal (%d bad)", bad);
    energon_close(r);
}

static void test_roundtrip_fmnist(void) {
    const char *ds = test_path("%s/fm", dir);
    int rc = test_sh("%s data prepare --out %s --fashion-mnist --test-set --limit 200 --maxcount 64 --split 8,1,1 "
                     ">/dev/null",
                     dfm_bin, ds);
    CHECK(rc == 0, "dfm data prepare --fashion-mnist --test-set --limit 200 --split 8,1,1 exits 0");
    uint8_t *img, *lab;
    int n;
    char err[1024];
    if (fmnist_load(FMNIST_DEFAULT_DIR, 0, 200, &img, &lab, &n, err, sizeof err) != 0) {
        CHECK(0, "Fashion-MNIST test set loads: %s", err);
        return;
    }
    energon_dataset_info info;
    int ok = energon_dataset_info_load(ds, NULL, &info, err, sizeof err) == 0 && info.nsplits == 3 &&
             info.splits[0].samples == 160 && info.splits[1].samples == 20 && info.splits[2].samples == 20 &&
             !strcmp(info.dataset_class, "CrudeWebdataset");
    CHECK(ok, ".nv-meta: CrudeWebdataset, splits train/val/test with 160/20/20 samples");
    if (ok) energon_dataset_info_free(&info);
    static const char *splits[3] = {"train", "val", "test"};
    int idx = 0, bad = 0;
    for (int sp = 0; sp < 3; sp++) {
        energon_options o;
        energon_options_default(&o);
        o.split = splits[sp], o.num_workers = 2, o.shuffle_buffer = 0, o.slice_size = 0;
        energon_reader *r = energon_open(ds, &o, err, sizeof err);
        if (!r) {
            bad++;
            break;
        }
        int cnt = sp == 0 ? 160 : 20;
        for (int i = 0; i < cnt; i++, idx++) {
            energon_sample *s;
            if (energon_next(r, &s) != 0) {
                bad++;
                break;
            }
            const energon_part *p = energon_sample_part(s, "png"), *c = energon_sample_part(s, "cls");
            if (atoi(s->key) != idx || !p || p->shape[0] != 28 || p->shape[1] != 28 || p->shape[2] != 1 ||
                memcmp(p->data, img + (size_t)idx * 784, 784) || !c || c->ival != lab[idx])
                bad++;
            energon_sample_free(s);
        }
        energon_close(r);
    }
    CHECK(bad == 0 && idx == 200, "Fashion-MNIST round trip: 200 images and labels equal the idx files (%d bad)", bad);
    free(img);
    free(lab);
}

static void test_python_dataset(const char *flavour) {
    const char *ds = test_path("%s/py_%s", dir, flavour);
    CHECK(test_sh("/usr/bin/python3 tests/data/make_energon_fixture.py %s %s", ds, flavour) == 0,
          "%s: fixture written by Python's tarfile", flavour);
    char line[1024], err[1024];
    FILE *f = fopen(test_path("%s/expected.txt", ds), "r");
    energon_reader *r = open_r(ds, 0, 1, 2, 0, 0, err);
    CHECK(r != NULL, "%s: open hand-written .nv-meta with a brace range%s%s", flavour, r ? "" : ": ", r ? "" : err);
    int n = 0, bad = 0, longkeys = 0;
    while (r && f && fgets(line, sizeof line, f)) {
        char key[512];
        int cls;
        double sum;
        if (sscanf(line, "%511[^\t]\t%d\t%lf", key, &cls, &sum) != 3) break;
        energon_sample *s;
        if (energon_next(r, &s) != 0) {
            printf("# %s\n", energon_error(r));
            bad++;
            break;
        }
        const energon_part *x = energon_sample_part(s, "x.npy"), *c = energon_sample_part(s, "cls");
        double got = 0;
        for (int k = 0; x && k < 6; k++) got += ((float *)x->data)[k];
        if (strcmp(s->key, key) || !c || c->ival != cls || !x || x->shape[0] != 2 || x->shape[1] != 3 || got != sum)
            bad++;
        longkeys += strlen(s->key) > 100;
        energon_sample_free(s);
        n++;
    }
    if (f) fclose(f);
    CHECK(n == 15 && bad == 0 && longkeys == 7,
          "%s: 15 samples (7 with keys > 100 bytes) read as Python wrote them (%d bad)", flavour, bad);
    energon_close(r);
}

static int expect_open_error(const char *path, const char *must1, const char *must2, char *err) {
    energon_reader *r = open_r(path, 0, 1, 0, 0, 0, err);
    if (r) {
        energon_close(r);
        snprintf(err, 1024, "(opened without error)");
        return 0;
    }
    return strstr(err, must1) && (!must2 || strstr(err, must2));
}

/* Read until an error; returns 1 if the error contains both strings. */
static int expect_read_error(const char *path, const char *must1, const char *must2, char *err) {
    energon_reader *r = open_r(path, 0, 1, 1, 0, 0, err);
    if (!r) return 0;
    energon_sample *s;
    int rc = 0;
    for (int i = 0; i < 100 && rc == 0; i++) {
        rc = energon_next(r, &s);
        if (rc == 0) energon_sample_free(s);
    }
    snprintf(err, 1024, "%s", rc ? energon_error(r) : "(no error)");
    energon_close(r);
    return rc != 0 && strstr(err, must1) && (!must2 || strstr(err, must2));
}

static void test_errors(void) {
    char err[1024];
    char syn[1024], b[1024];
    snprintf(syn, sizeof syn, "%s/syn", dir);
    snprintf(b, sizeof b, "%s/broken", dir);
    /* truncated shard: the index promises more than the file holds */
    test_sh("rm -rf %s && cp -r %s %s && truncate -s 3000 %s/shards/shard_000001.tar", b, syn, b, b);
    CHECK(expect_open_error(b, "shard_000001.tar", "truncated", err), "truncated shard: %s", err);
    test_sh("rm -rf %s && cp -r %s %s && truncate -s 3000 %s/shards/shard_000001.tar", b, syn, b, b);
    int rc = test_sh("%s data inspect %s >/dev/null 2>%s/stderr.txt", dfm_bin, b, dir);
    char *se = test_read_file(test_path("%s/stderr.txt", dir), NULL);
    CHECK(rc != 0 && se && strstr(se, "dfm: error:") && strstr(se, "shard_000001.tar"),
          "dfm data inspect on a truncated shard exits %d: %s", rc, se ? se : "");
    free(se);
    /* corrupt header checksum in the middle of shard 2 (its 3rd sample's first header) */
    test_sh("rm -rf %s && cp -r %s %s", b, syn, b);
    uint64_t *off;
    size_t n1;
    tar_idx_read(test_path("%s/shards/shard_000002.tar.idx", b), &off, &n1, err, sizeof err);
    unsigned long long bad_off = off[2];
    free(off);
    FILE *f = fopen(test_path("%s/shards/shard_000002.tar", b), "r+b");
    fseek(f, (long)bad_off + 3, SEEK_SET);
    fputc('#', f);
    fclose(f);
    char want[64];
    snprintf(want, sizeof want, "checksum mismatch at offset %llu", bad_off);
    CHECK(expect_read_error(b, want, "shard_000002.tar", err), "corrupt header: %s", err);
    /* missing .tar.idx */
    test_sh("rm -rf %s && cp -r %s %s && rm %s/shards/shard_000003.tar.idx", b, syn, b, b);
    CHECK(expect_open_error(b, "shard_000003.tar.idx", "cannot open", err), "missing .tar.idx: %s", err);
    /* an index that disagrees with its shard: sample 3 moved one block into sample 2 */
    test_sh("rm -rf %s && cp -r %s %s", b, syn, b);
    tar_idx_read(test_path("%s/shards/shard_000001.tar.idx", b), &off, &n1, err, sizeof err);
    off[3] += 512;
    tar_idx_write(test_path("%s/shards/shard_000001.tar.idx", b), off, n1);
    free(off);
    rc = energon_check_shard(test_path("%s/shards/shard_000001.tar", b), 10, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "disagrees") && strstr(err, "shard_000001.tar.idx"),
          "full check of a disagreeing "
          ".tar.idx: %s",
          err);
    CHECK(expect_read_error(b, "shard_000001.tar", "offset", err), "reader on a disagreeing .tar.idx: %s", err);
    /* idx count differs from .info.json */
    test_sh("rm -rf %s && cp -r %s %s && cp %s/shards/shard_000003.tar.idx %s/shards/shard_000000.tar.idx", b, syn, b,
            b, b);
    CHECK(expect_open_error(b, "shard_000000.tar.idx", ".info.json", err), ".tar.idx count vs .info.json: %s", err);
    /* bad YAML: syntax, unknown key, missing dataset */
    const char *y = test_path("%s/bad.yaml", dir);
    FILE *yf = fopen(y, "w");
    fprintf(yf, "__module__: megatron.energon\n__class__: MetadatasetV2\nsplits:\n  train: {path: [unclosed\n");
    fclose(yf);
    CHECK(expect_open_error(y, "bad.yaml:", "syntax", err), "YAML syntax error: %s", err);
    yf = fopen(y, "w");
    fprintf(yf, "__module__: megatron.energon\n__class__: MetadatasetV2\nsplits:\n  train:\n    blend:\n"
                "      - {weight: 1, path: ./syn}\n      - {wieght: 1, path: ./syn}\n");
    fclose(yf);
    CHECK(expect_open_error(y, "bad.yaml:7", "unknown key 'wieght'", err), "unknown key: %s", err);
    yf = fopen(y, "w");
    fprintf(yf, "__module__: megatron.energon\n__class__: MetadatasetV2\nsplits:\n  train: {path: ./nonexistent}\n");
    fclose(yf);
    CHECK(expect_open_error(y, "bad.yaml:4", "does not exist", err), "missing dataset path: %s", err);
    test_sh("rm -rf %s", b);
}

/* Encode h x w x 3 RGB as a quality-95 JPEG with libjpeg's compressor. */
static uint8_t *jpeg_encode_test(const uint8_t *px, int w, int h, size_t *len) {
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    unsigned char *buf = NULL;
    unsigned long n = 0;
    c.err = jpeg_std_error(&e);
    jpeg_create_compress(&c);
    jpeg_mem_dest(&c, &buf, &n);
    c.image_width = (JDIMENSION)w, c.image_height = (JDIMENSION)h, c.input_components = 3, c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 95, TRUE);
    jpeg_start_compress(&c, TRUE);
    for (int y = 0; y < h; y++) {
        JSAMPROW row = (JSAMPROW)(px + (size_t)y * w * 3);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    *len = n;
    return buf;
}

/* JPEG parts decode to uint8 HWC like PNG; corrupt or truncated JPEGs are errors naming shard, sample, part. */
static void test_jpeg(void) {
    enum { W = 24, H = 16, NJ = 5 };
    uint8_t px[H * W * 3];
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            px[(y * W + x) * 3 + 0] = (uint8_t)(x * 10);
            px[(y * W + x) * 3 + 1] = (uint8_t)(y * 15);
            px[(y * W + x) * 3 + 2] = 128;
        }
    test_sh("rm -rf %s/jsrc && mkdir -p %s/jsrc", dir, dir);
    size_t jlen = 0;
    uint8_t *jpg = jpeg_encode_test(px, W, H, &jlen);
    for (int i = 0; i < NJ; i++) write_file(test_path("%s/jsrc/j%d.jpg", dir, i), jpg, jlen);
    const char *ds = test_path("%s/jpg", dir);
    int rc = test_sh("%s data prepare --out %s --images %s/jsrc >/dev/null", dfm_bin, ds, dir);
    CHECK(rc == 0, "dfm data prepare --images with .jpg files exits 0");
    char err[1024];
    energon_reader *r = open_r(ds, 0, 1, 0, 0, 0, err);
    CHECK(r != NULL, "open JPEG dataset%s%s", r ? "" : ": ", r ? "" : err);
    int bad = 0, got = 0;
    double mad = 0;
    for (int i = 0; r && i < NJ; i++) {
        energon_sample *s;
        if (energon_next(r, &s) != 0) {
            bad++;
            break;
        }
        const energon_part *p = energon_sample_part(s, "jpg");
        if (!p || p->kind != EN_TENSOR || p->dtype != EN_U8 || p->ndim != 3 || p->shape[0] != H || p->shape[1] != W ||
            p->shape[2] != 3)
            bad++;
        else {
            got++;
            const uint8_t *d = p->data;
            for (int k = 0; k < H * W * 3; k++) mad += abs((int)d[k] - (int)px[k]);
        }
        energon_sample_free(s);
    }
    if (r) energon_close(r);
    mad /= (double)(got ? got : 1) * H * W * 3;
    CHECK(bad == 0 && got == NJ && mad < 4.0,
          "JPEG parts decode to uint8 %dx%dx3 tensors close to the encoded pixels (%d bad, mean abs diff %.2f)", H, W,
          bad, mad);
    /* the decoder alone: truncated and non-JPEG buffers */
    uint8_t *out = NULL;
    int w, h, c;
    rc = jpeg_decode_mem(jpg, jlen - 40, &out, &w, &h, &c, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "truncated"), "truncated JPEG is an error: %s", rc ? err : "(decoded)");
    if (!rc) free(out);
    rc = jpeg_decode_mem((const uint8_t *)"hello world", 11, &out, &w, &h, &c, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "not a JPEG"), "non-JPEG buffer is an error: %s", rc ? err : "(decoded)");
    if (!rc) free(out);
    /* a corrupt JPEG inside a shard: overwrite the frame header (SOF0 marker) of the 3rd sample's image */
    const char *b = test_path("%s/jpg_bad", dir);
    test_sh("rm -rf %s && cp -r %s %s", b, ds, b);
    size_t tl;
    char *tar = test_read_file(test_path("%s/shards/shard_000000.tar", b), &tl);
    size_t hits = 0, at = 0;
    for (size_t k = 0; tar && k + 1 < tl; k++)
        if ((uint8_t)tar[k] == 0xFF && (uint8_t)tar[k + 1] == 0xC0 && ++hits == 3) at = k;
    free(tar);
    if (at) {
        FILE *f = fopen(test_path("%s/shards/shard_000000.tar", b), "r+b");
        fseek(f, (long)at + 1, SEEK_SET);
        fputc(0x01, f); /* TEM: not a frame marker, so the stream has no image */
        fclose(f);
    }
    CHECK(at && expect_read_error(b, "corrupt JPEG", "part 'jpg'", err) && strstr(err, "shard_000000.tar") &&
              strstr(err, "'j2'"),
          "corrupt JPEG in a shard: %s", err);
    test_sh("rm -rf %s", b);
    free(jpg);
}

/* Count the samples of one split by reading one epoch's worth and checking keys fall in [lo, hi). */
static int split_keys_in(const char *ds, const char *split, int n, int lo, int hi) {
    energon_options o;
    energon_options_default(&o);
    o.split = split, o.num_workers = 0, o.shuffle_buffer = 0, o.slice_size = 0, o.quiet = 1;
    char err[1024];
    energon_reader *r = energon_open(ds, &o, err, sizeof err);
    if (!r) return 0;
    int ok = 1;
    for (int i = 0; i < n && ok; i++) {
        energon_sample *s;
        if (energon_next(r, &s) != 0)
            ok = 0;
        else {
            ok = key_num(s) >= lo && key_num(s) < hi;
            energon_sample_free(s);
        }
    }
    energon_close(r);
    return ok;
}

static int split_counts(const char *ds, long long tr, long long va, long long te) {
    energon_dataset_info info;
    char err[1024];
    if (energon_dataset_info_load(ds, NULL, &info, err, sizeof err) != 0) return 0;
    long long c[3] = {-1, -1, -1};
    static const char *nm[3] = {"train", "val", "test"};
    for (int i = 0; i < info.nsplits; i++)
        for (int k = 0; k < 3; k++)
            if (!strcmp(info.splits[i].name, nm[k])) c[k] = info.splits[i].samples;
    energon_dataset_info_free(&info);
    return c[0] == tr && c[1] == va && c[2] == te;
}

/* --split-parts NAME:REGEX in prepare and dfm data split: Energon's split assignment by shard-path patterns. */
static void test_split_patterns(void) {
    const char *ds = test_path("%s/pat", dir);
    /* 37 samples, 10 per shard: shard_000000..2 hold 10, shard_000003 holds 7 */
    int rc = test_sh("%s data prepare --out %s --tensors %s/src --maxcount 10 --split-parts "
                     "'train:shards/shard_00000[0-1]\\.tar' --split-parts val:shards/shard_000002.tar "
                     "--split-parts 'test:shards/shard_0+3\\.tar' >/dev/null",
                     dfm_bin, ds, dir);
    CHECK(rc == 0, "dfm data prepare --split-parts train/val/test exits 0");
    CHECK(split_counts(ds, 20, 10, 7), "--split-parts: the reader sees train 20, val 10, test 7 samples");
    CHECK(split_keys_in(ds, "val", 10, 20, 30) && split_keys_in(ds, "test", 7, 30, 37),
          "--split-parts: val reads samples 20-29, test 30-36");
    /* dfm data split rewrites split.yaml from new patterns */
    rc = test_sh("%s data split %s --split-parts 'train:shards/shard_00000[0-2].tar' --split-parts "
                 "'test:.*3.tar' >/dev/null",
                 dfm_bin, ds);
    CHECK(rc == 0 && split_counts(ds, 30, -1, 7) && split_keys_in(ds, "train", 30, 0, 30),
          "dfm data split: split.yaml rewritten to train 30, test 7, no val");
    char *before = test_read_file(test_path("%s/.nv-meta/split.yaml", ds), NULL);
    /* errors: unmatched shard, shard in two splits, bad regex, --split with --split-parts */
    rc = test_sh("%s data split %s --split-parts 'train:shards/shard_00000[0-1].tar' --split-parts "
                 "'val:shards/shard_000003.tar' 2>%s/stderr.txt",
                 dfm_bin, ds, dir);
    char *se = test_read_file(test_path("%s/stderr.txt", dir), NULL);
    CHECK(rc != 0 && se && strstr(se, "'shards/shard_000002.tar' matches no --split-parts pattern"),
          "unmatched shard is an error naming it: %s", se ? se : "");
    free(se);
    rc = test_sh("%s data split %s --split-parts 'train:shards/.*' --split-parts 'val:.*3.tar' 2>%s/stderr.txt",
                 dfm_bin, ds, dir);
    se = test_read_file(test_path("%s/stderr.txt", dir), NULL);
    CHECK(rc != 0 && se &&
              strstr(se, "'shards/shard_000003.tar' matches the patterns of both split 'train' and "
                         "split 'val'"),
          "shard matching two patterns is an error naming it: %s", se ? se : "");
    free(se);
    rc = test_sh("%s data split %s --split-parts 'train:shards/(shard' 2>%s/stderr.txt", dfm_bin, ds, dir);
    se = test_read_file(test_path("%s/stderr.txt", dir), NULL);
    CHECK(rc != 0 && se && strstr(se, "bad regular expression 'shards/(shard'"), "bad regex is an error: %s",
          se ? se : "");
    free(se);
    char *after = test_read_file(test_path("%s/.nv-meta/split.yaml", ds), NULL);
    CHECK(before && after && !strcmp(before, after), "failed dfm data split runs leave split.yaml as it was");
    free(before);
    free(after);
    rc = test_sh("%s data prepare --out %s/pat2 --tensors %s/src --split 8,2 --split-parts 'train:.*' "
                 "2>%s/stderr.txt",
                 dfm_bin, dir, dir, dir);
    se = test_read_file(test_path("%s/stderr.txt", dir), NULL);
    CHECK(rc != 0 && se && strstr(se, "not both"), "--split with --split-parts is an error: %s", se ? se : "");
    free(se);
    rc = test_sh("%s data prepare --out %s/pat2 --tensors %s/src --maxcount 10 --split-parts "
                 "'train:shards/shard_00000[0-2].tar' 2>%s/stderr.txt",
                 dfm_bin, dir, dir, dir);
    se = test_read_file(test_path("%s/stderr.txt", dir), NULL);
    CHECK(rc != 0 && se && strstr(se, "shard_000003.tar") && strstr(se, "matches no"),
          "prepare with a shard no pattern matches is an error naming it: %s", se ? se : "");
    free(se);
}

/* split.yaml sample excludes "<shard>/<key>" next to a shard exclude: those samples never appear, counts,
 * DP sharding and resume stay consistent; unknown samples warn (Energon ignores them), unknown shards fail. */
static void test_sample_excludes(void) {
    const char *ds = test_path("%s/excl", dir);
    test_sh("rm -rf %s && cp -r %s/syn %s", ds, dir, ds);
    FILE *f = fopen(test_path("%s/.nv-meta/split.yaml", ds), "w");
    fprintf(f, "split_parts:\n  train:\n  - shards/shard_{000000..000003}.tar\nexclude:\n"
               "  - shards/shard_000001.tar/s012\n  - shards/shard_000002.tar\n  - shards/shard_000003.tar/s035\n"
               "  - shards/shard_000000.tar/s000\n");
    fclose(f);
    char err[1024];
    energon_reader *r = open_r(ds, 0, 1, 2, 0, 0, err);
    CHECK(r != NULL, "open with sample excludes%s%s", r ? "" : ": ", r ? "" : err);
    if (!r) return;
    /* one epoch is 10 + 10 + 7 - 3 (samples) - 10 (shard 2) = 24 samples, in order, then it starts again */
    int want[24], nw = 0, bad = 0;
    for (int i = 0; i < NSYN; i++)
        if (i != 0 && i != 12 && i != 35 && (i < 20 || i >= 30)) want[nw++] = i;
    for (int i = 0; i < 2 * nw; i++) {
        energon_sample *s;
        if (energon_next(r, &s) != 0) {
            bad++;
            break;
        }
        if (key_num(s) != want[i % nw] || s->epoch != i / nw) bad++;
        energon_sample_free(s);
    }
    energon_close(r);
    CHECK(nw == 24 && bad == 0,
          "sample excludes: 24 samples per epoch, s000, s012, s035 and shard 2 never read (%d bad)", bad);
    /* DP ranks: disjoint, none excluded, together one epoch */
    int seen[NSYN] = {0}, dup = 0, excl = 0, tot = 0;
    for (int rank = 0; rank < 2; rank++) {
        energon_reader *rr = open_r(ds, rank, 2, 0, 0, 0, err);
        for (int i = 0; rr && i < 12; i++) {
            energon_sample *s;
            if (energon_next(rr, &s) != 0) break;
            int k = key_num(s);
            dup += seen[k]++ > 0;
            excl += k == 0 || k == 12 || k == 35 || (k >= 20 && k < 30);
            tot++;
            energon_sample_free(s);
        }
        if (rr) energon_close(rr);
    }
    CHECK(tot == 24 && dup == 0 && excl == 0,
          "sample excludes with 2 DP ranks: 24 distinct samples, %d duplicated, %d excluded", dup, excl);
    /* resume: shuffled, save after 9, restore, the next 30 equal the uninterrupted stream */
    energon_reader *a = open_r(ds, 0, 1, 1, 8, 4, err), *b = open_r(ds, 0, 1, 1, 8, 4, err);
    int same = a && b;
    char *st = NULL;
    for (int i = 0; same && i < 39; i++) {
        energon_sample *s;
        if (energon_next(a, &s) != 0)
            same = 0;
        else {
            int ka = key_num(s);
            energon_sample_free(s);
            if (i == 9 - 1) {
                st = energon_state_save(a);
                energon_close(b);
                b = open_r(ds, 0, 1, 1, 8, 4, err);
                same = b && energon_state_restore(b, st, err, sizeof err) == 0;
            } else if (i >= 9) {
                same = energon_next(b, &s) == 0 && key_num(s) == ka && ka != 12 && ka != 35 && ka != 0;
                if (same) energon_sample_free(s);
            }
        }
    }
    free(st);
    if (a) energon_close(a);
    if (b) energon_close(b);
    CHECK(same, "sample excludes: save after 9, restore, next 30 equal the uninterrupted shuffled stream");
    /* an exclude naming no sample: a warning (Energon silently ignores it), the rest still applies */
    f = fopen(test_path("%s/.nv-meta/split.yaml", ds), "w");
    fprintf(f, "split_parts:\n  train:\n  - shards/shard_{000000..000003}.tar\nexclude:\n"
               "  - shards/shard_000001.tar/nope\n");
    fclose(f);
    int rc = test_sh("%s data inspect %s >/dev/null 2>%s/stderr.txt", dfm_bin, ds, dir);
    char *se = test_read_file(test_path("%s/stderr.txt", dir), NULL);
    CHECK(rc == 0 && se && strstr(se, "exclude entry 'shards/shard_000001.tar/nope' names no sample"),
          "exclude of a missing sample warns: rc %d, %s", rc, se ? se : "");
    free(se);
    /* an exclude whose shard is not in .info.json is an error naming it */
    f = fopen(test_path("%s/.nv-meta/split.yaml", ds), "w");
    fprintf(f, "split_parts:\n  train:\n  - shards/shard_{000000..000003}.tar\nexclude:\n"
               "  - shards/shard_000009.tar/s001\n");
    fclose(f);
    CHECK(expect_open_error(ds, "split.yaml", "'shards/shard_000009.tar/s001' is neither a shard", err),
          "exclude of an unknown shard's sample: %s", err);
    test_sh("rm -rf %s", ds);
}

static void write_yaml(const char *name, const char *text) {
    FILE *f = fopen(test_path("%s/%s", dir, name), "w");
    fputs(text, f);
    fclose(f);
}

static void test_blend(void) {
    write_yaml("blend.yaml", "__module__: megatron.energon\n__class__: MetadatasetV2\nsplits:\n  train:\n    blend:\n"
                             "      - {weight: 5, path: ./syn, subflavors: {src: a}}\n"
                             "      - weight: 5\n        subflavors: {group: inner}\n        blend:\n"
                             "          - {weight: 2, path: syn, subflavors: {src: b}}\n"
                             "          - {weight: 3, path: ./sub.yaml, subflavors: {src: c}}\n");
    write_yaml("sub.yaml", "__module__: megatron.energon\n__class__: MetadatasetV2\nsplits:\n"
                           "  train: {path: ./syn, subset: {range: [10, 50%]}}\n");
    char err[1024];
    energon_reader *r = open_r(test_path("%s/blend.yaml", dir), 0, 1, 2, 16, 4, err);
    CHECK(r != NULL, "open nested blend metadataset%s%s", r ? "" : ": ", r ? "" : err);
    if (!r) return;
    double w[3] = {energon_source(r, 0).weight, energon_source(r, 1).weight, energon_source(r, 2).weight};
    CHECK(energon_num_sources(r) == 3 && fabs(w[0] - 0.5) < 1e-12 && fabs(w[1] - 0.2) < 1e-12 &&
              fabs(w[2] - 0.3) < 1e-12 && energon_source(r, 2).samples == 9,
          "weights normalised, nested blends multiply: %.3f %.3f %.3f; subset [10, 50%%) has %lld samples", w[0], w[1],
          w[2], (long long)energon_source(r, 2).samples);
    int N = 6000, cnt[3] = {0}, subok = 1, rangeok = 1;
    static const char *want_src[3] = {"a", "b", "c"};
    for (int i = 0; i < N; i++) {
        energon_sample *s;
        if (energon_next(r, &s) != 0) break;
        cnt[s->source]++;
        const char *src = NULL, *grp = NULL;
        for (int k = 0; k < s->nsubflavors; k++) {
            if (!strcmp(s->subflavor_keys[k], "src")) src = s->subflavor_values[k];
            if (!strcmp(s->subflavor_keys[k], "group")) grp = s->subflavor_values[k];
        }
        if (!src || strcmp(src, want_src[s->source]) || (s->source > 0) != (grp != NULL)) subok = 0;
        if (s->source == 2 && (key_num(s) < 10 || key_num(s) >= 19)) rangeok = 0;
        energon_sample_free(s);
    }
    double chi2 = 0;
    for (int k = 0; k < 3; k++) chi2 += (cnt[k] - N * w[k]) * (cnt[k] - N * w[k]) / (N * w[k]);
    CHECK(chi2 < 13.8, "blend frequencies %d/%d/%d of %d match weights 0.5/0.2/0.3: chi2 = %.2f (< 13.8, p = 0.001)",
          cnt[0], cnt[1], cnt[2], N, chi2);
    CHECK(subok, "subflavors delivered with each sample (inner blend's merged with the entry's)");
    CHECK(rangeok, "subset samples come from keys 10..18 only");
    energon_close(r);

    write_yaml("epo.yaml", "__module__: megatron.energon\n__class__: MetadatasetV2\nsplits:\n  train:\n"
                           "    blend_epochized:\n      - {repetitions: 2, path: ./syn, subset: {range: [0, 10]}}\n"
                           "      - {repetitions: 1, path: ./syn, subset: {range: [50%, 100%]}}\n");
    r = open_r(test_path("%s/epo.yaml", dir), 0, 1, 2, 0, 4, err); /* no buffer: per-key counts exact */
    CHECK(r != NULL, "open blend_epochized%s%s", r ? "" : ": ", r ? "" : err);
    if (!r) return;
    int64_t n1 = energon_source(r, 1).samples;
    int per_key[NSYN] = {0}, c0 = 0, c1 = 0, total = (int)(20 + n1);
    for (int e = 0; e < 2; e++)
        for (int i = 0; i < total; i++) {
            energon_sample *s;
            if (energon_next(r, &s) != 0) break;
            if (s->source == 0) {
                c0++;
                if (key_num(s) < 10) per_key[key_num(s)]++;
            } else
                c1++;
            energon_sample_free(s);
        }
    int exact = c0 == 40 && c1 == 2 * n1;
    for (int k = 0; k < 10; k++) exact &= per_key[k] == 4;
    CHECK(exact, "blend_epochized over 2 epochs: %d + %d samples (want 40 + %lld), each of the 10 keys 4 times", c0, c1,
          (long long)(2 * n1));
    energon_close(r);
}

/* Keys of the first n samples (no shuffle) of a metadataset; -1 marks a read error. */
static void read_keys(const char *path, int n, int *keys, char *err) {
    energon_reader *r = open_r(path, 0, 1, 0, 0, 0, err);
    for (int i = 0; i < n; i++) {
        energon_sample *s;
        keys[i] = -1;
        if (!r || energon_next(r, &s) != 0) continue;
        keys[i] = key_num(s);
        energon_sample_free(s);
    }
    if (r) energon_close(r);
}

/* subset on a nested metadataset and on a blend: the inner range first, then the outer percentage of it. */
static void test_nested_subset(void) {
    write_yaml("ns_inner.yaml", "__module__: megatron.energon\n__class__: MetadatasetV2\nsplits:\n"
                                "  train: {path: ./syn, subset: {range: [10, 30]}}\n");
    write_yaml("ns_outer.yaml", "__module__: megatron.energon\n__class__: MetadatasetV2\nsplits:\n"
                                "  train: {path: ./ns_inner.yaml, subset: {range: [50%, 100%]}}\n");
    char err[1024];
    int keys[20], bad = 0;
    read_keys(test_path("%s/ns_outer.yaml", dir), 20, keys, err);
    for (int i = 0; i < 20; i++) bad += keys[i] != 20 + i % 10;
    CHECK(bad == 0, "subset 50%%-100%% of a nested metadataset's [10, 30): samples 20-29 (%d bad, first %d)", bad,
          keys[0]);
    write_yaml("ns_blend.yaml", "__module__: megatron.energon\n__class__: MetadatasetV2\nsplits:\n"
                                "  train:\n    subset: {range: [0%, 25%]}\n    blend:\n"
                                "      - {weight: 1, path: ./ns_outer.yaml}\n");
    read_keys(test_path("%s/ns_blend.yaml", dir), 10, keys, err);
    bad = 0;
    for (int i = 0; i < 10; i++) bad += keys[i] != 20 + i % 3; /* 25% of [20, 30) = [20, 22.5) -> 3 */
    CHECK(bad == 0, "subset 0%%-25%% on a blend over that: samples 20-22 (%d bad, first %d)", bad, keys[0]);
    write_yaml("ns_abs.yaml", "__module__: megatron.energon\n__class__: MetadatasetV2\nsplits:\n"
                              "  train: {path: ./ns_inner.yaml, subset: {range: [0, 5]}}\n");
    CHECK(expect_open_error(test_path("%s/ns_abs.yaml", dir), "ns_abs.yaml:4", "must be a percentage", err),
          "absolute subset on a nested metadataset: %s", err);
}

static void test_sharding(void) {
    const char *syn = test_path("%s/syn", dir);
    char err[1024];
    for (int D = 1; D <= 4; D++) {
        int seen[NSYN] = {0}, dup = 0, total = 0;
        for (int rk = 0; rk < D; rk++) {
            energon_reader *r = open_r(syn, rk, D, 1, 8, 4, err);
            if (!r) break;
            int64_t want = energon_source(r, 0).rank_samples, got = 0;
            for (int i = 0; i < 200 && got < want; i++) {
                energon_sample *s;
                if (energon_next(r, &s) != 0) break;
                if (s->epoch == 0) {
                    if (seen[key_num(s)]++) dup++;
                    got++;
                }
                energon_sample_free(s);
            }
            total += (int)got;
            energon_close(r);
        }
        int all = 1;
        for (int k = 0; k < NSYN; k++) all &= seen[k] == 1;
        CHECK(all && dup == 0 && total == NSYN,
              "%d DP rank(s): epoch 0 split disjoint and complete (%d samples, %d dup)", D, total, dup);
    }
    /* TP/CP peers pass the same dp_rank: identical streams whatever their worker counts */
    energon_reader *a = open_r(test_path("%s/blend.yaml", dir), 1, 3, 0, 16, 4, err);
    energon_reader *b = open_r(test_path("%s/blend.yaml", dir), 1, 3, 3, 16, 4, err);
    int same = a && b;
    for (int i = 0; same && i < 150; i++) {
        energon_sample *x, *y;
        if (energon_next(a, &x) || energon_next(b, &y)) {
            same = 0;
            break;
        }
        same = x->source == y->source && !strcmp(x->key, y->key) && x->epoch == y->epoch;
        energon_sample_free(x);
        energon_sample_free(y);
    }
    CHECK(same, "two readers with the same dp_rank (0 and 3 workers) give identical samples (150 compared)");
    energon_close(a);
    energon_close(b);
}

static void test_resume(void) {
    char err[1024];
    const char *y = test_path("%s/blend.yaml", dir);
    enum { TOTAL = 120, CUT = 47 };
    int ref_src[TOTAL], ref_key[TOTAL];
    energon_reader *r = open_r(y, 1, 2, 2, 16, 4, err);
    for (int i = 0; r && i < TOTAL; i++) {
        energon_sample *s;
        if (energon_next(r, &s) != 0) break;
        ref_src[i] = s->source, ref_key[i] = key_num(s);
        energon_sample_free(s);
    }
    energon_close(r);
    r = open_r(y, 1, 2, 3, 16, 4, err);
    int same = r != NULL;
    for (int i = 0; same && i < CUT; i++) {
        energon_sample *s;
        if (energon_next(r, &s) != 0)
            same = 0;
        else {
            same = s->source == ref_src[i] && key_num(s) == ref_key[i];
            energon_sample_free(s);
        }
    }
    char *state = r ? energon_state_save(r) : NULL;
    energon_close(r);
    energon_reader *c = open_r(y, 1, 2, 1, 16, 4, err);
    int rc = c ? energon_state_restore(c, state, err, sizeof err) : -1;
    CHECK(rc == 0, "state (%zu bytes of JSON) restores into a fresh reader%s%s", state ? strlen(state) : 0,
          rc ? ": " : "", rc ? err : "");
    for (int i = CUT; same && rc == 0 && i < TOTAL; i++) {
        energon_sample *s;
        if (energon_next(c, &s) != 0)
            same = 0;
        else {
            same = s->source == ref_src[i] && key_num(s) == ref_key[i];
            energon_sample_free(s);
        }
    }
    CHECK(same && rc == 0, "save at %d, restore, continue to %d: identical to the uninterrupted stream", CUT, TOTAL);
    energon_close(c);
    /* a state from another rank is refused */
    c = open_r(y, 0, 2, 1, 16, 4, err);
    rc = energon_state_restore(c, state, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "rank"), "state of another DP rank refused: %s", err);
    energon_close(c);
    free(state);
}

static void test_skip_bad(void) {
    const char *src = test_path("%s/badsrc", dir), *ds = test_path("%s/bad", dir);
    make_tensor_source(src, 6, 1);
    test_sh("%s data prepare --out %s --tensors %s >/dev/null", dfm_bin, ds, src);
    char err[1024];
    energon_reader *r = open_r(ds, 0, 1, 2, 0, 0, err);
    int ok = r != NULL;
    for (int i = 0; ok && i < 8; i++) {
        energon_sample *s;
        if (energon_next(r, &s) != 0)
            ok = 0;
        else {
            ok = key_num(s) != 1 && key_num(s) != 4;
            energon_sample_free(s);
        }
    }
    CHECK(ok && energon_skipped(r) == 4, "NaN and 1e7 samples skipped and counted: %lld skipped over 2 epochs",
          r ? (long long)energon_skipped(r) : -1LL);
    energon_close(r);
}

static void test_fmnist_errors(void) {
    char err[1024], d[1024];
    uint8_t *img, *lab;
    int n;
    snprintf(d, sizeof d, "%s/fmbad", dir);
    test_sh("mkdir -p %s && cp %s/t10k-labels-idx1-ubyte.gz %s/", d, FMNIST_DEFAULT_DIR, d);
    int rc = fmnist_load(d, 0, 0, &img, &lab, &n, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "t10k-images-idx3-ubyte.gz"), "Fashion-MNIST missing file named: %s", err);
    /* a gzip stream cut in the middle: the error names the file and the byte where data ran out */
    test_sh("head -c 20000 %s/t10k-images-idx3-ubyte.gz > %s/t10k-images-idx3-ubyte.gz", FMNIST_DEFAULT_DIR, d);
    rc = fmnist_load(d, 0, 0, &img, &lab, &n, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "t10k-images-idx3-ubyte.gz") && strstr(err, "truncated"),
          "Fashion-MNIST truncated file: %s", err);
    rc = test_sh("%s data prepare --out %s/x --fashion-mnist %s --test-set >/dev/null 2>&1", dfm_bin, dir, d);
    CHECK(rc == 1, "dfm data prepare on a truncated idx.gz exits 1 (got %d)", rc);
}

static void test_brace(void) {
    char **v;
    int n = energon_brace_expand("shards/s_{0008..0011}_{a,b}.tar", &v);
    int ok = n == 8 && !strcmp(v[0], "shards/s_0008_a.tar") && !strcmp(v[7], "shards/s_0011_b.tar");
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
    CHECK(ok, "brace expansion: zero-padded ranges and lists (%d names)", n);
}

int main(int argc, char **argv) {
    (void)argc;
    char *exe = strdup(argv[0]);
    snprintf(dfm_bin, sizeof dfm_bin, "%s/../dfm", dirname(exe));
    free(exe);
    dir = test_mkdtemp();
    int failed = 0;
    test_brace();
    test_fmnist_errors();
    make_tensor_source(test_path("%s/src", dir), NSYN, 0);
    test_roundtrip_synthetic();
    test_roundtrip_fmnist();
    if (test_have_python(&failed)) {
        test_python_dataset("pax");
        test_python_dataset("gnu");
    }
    test_errors();
    test_jpeg();
    test_split_patterns();
    test_sample_excludes();
    test_blend();
    test_nested_subset();
    test_sharding();
    test_resume();
    test_skip_bad();
    test_failed_ += failed;
    test_rmtree(dir);
    free(dir);
    return test_finish();
}
