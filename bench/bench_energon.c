/* Energon loader throughput: PNG samples decoded per second with N worker threads.
 * usage: bench_energon [DATASET] [SAMPLES]; without DATASET, 5000 Fashion-MNIST training images are written
 * as a prepared folder under /tmp first (and removed afterwards). */
#include "dfm/codec.h"
#include "dfm/common.h"
#include "dfm/energon.h"
#include "dfm/fashion_mnist.h"
#include "dfm/tar.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void prepare(const char *dir, int n) {
    uint8_t *img, *lab;
    int count;
    char err[1024], p[4096];
    if (fmnist_load(FMNIST_DEFAULT_DIR, 1, n, &img, &lab, &count, err, sizeof err) != 0) dfm_die("%s", err);
    snprintf(p, sizeof p, "%s/shards", dir);
    mkdir(dir, 0755);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/.nv-meta", dir);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/shards/s.tar", dir);
    tar_writer w;
    tar_writer_open(&w, p);
    uint64_t *idx = xmalloc(((size_t)count + 1) * sizeof *idx);
    for (int i = 0; i < count; i++) {
        char name[64], cls[8];
        size_t len;
        uint8_t *png = png_encode_mem(img + (size_t)i * 784, 28, 28, 1, &len);
        snprintf(name, sizeof name, "%06d.png", i);
        idx[i] = tar_writer_add(&w, name, png, len);
        free(png);
        snprintf(name, sizeof name, "%06d.cls", i);
        snprintf(cls, sizeof cls, "%d", lab[i]);
        tar_writer_add(&w, name, cls, strlen(cls));
    }
    idx[count] = tar_writer_close(&w);
    snprintf(p, sizeof p, "%s/shards/s.tar.idx", dir);
    tar_idx_write(p, idx, (size_t)count + 1);
    snprintf(p, sizeof p, "%s/.nv-meta/split.yaml", dir);
    FILE *f = xfopen(p, "w");
    fprintf(f, "split_parts:\n  train:\n  - shards/s.tar\nexclude: []\n");
    xfclose(f, p);
    snprintf(p, sizeof p, "%s/.nv-meta/.info.json", dir);
    f = xfopen(p, "w");
    fprintf(f, "{\"energon_version\": \"dfm-0.1.0\", \"shard_counts\": {\"shards/s.tar\": %d}}\n", count);
    xfclose(f, p);
    free(idx);
    free(img);
    free(lab);
}

int main(int argc, char **argv) {
    char tmp[] = "/tmp/dfm_bench_XXXXXX";
    const char *ds = argc > 1 ? argv[1] : NULL;
    int n = argc > 2 ? atoi(argv[2]) : 5000;
    if (!ds) {
        if (!mkdtemp(tmp)) dfm_die("mkdtemp failed");
        prepare(tmp, n);
        ds = tmp;
    }
    static const int workers[] = {0, 1, 2, 4};
    for (size_t k = 0; k < sizeof workers / sizeof workers[0]; k++) {
        energon_options o;
        energon_options_default(&o);
        o.num_workers = workers[k];
        o.image_float = 1;
        char err[1024];
        energon_reader *r = energon_open(ds, &o, err, sizeof err);
        if (!r) dfm_die("%s", err);
        double t0 = dfm_time_s();
        for (int i = 0; i < n; i++) {
            energon_sample *s;
            if (energon_next(r, &s) != 0) dfm_die("%s", energon_error(r));
            energon_sample_free(s);
        }
        double dt = dfm_time_s() - t0;
        printf("energon loader: %d PNG samples (28x28, to float32) with %d worker(s): %.0f samples/s\n", n, workers[k],
               n / dt);
        energon_close(r);
    }
    if (ds == tmp) {
        char cmd[256];
        snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
        if (system(cmd) != 0) dfm_warn("could not remove %s", tmp);
    }
    return 0;
}
