/* Decode rate of video samples from DFM's .meta files, from an Energon dataset of .pth/.pickle parts and from the
 * same samples converted to dfm's safetensors form (docs/PERFORMANCE.md "Video data decoding"):
 *
 *   /usr/bin/python3 tests/data/make_meta.py --bench /tmp/vb 64
 *   build/dfm data prepare --tensors /tmp/vb/parts --out /tmp/vb/energon
 *   build/dfm data convert --from /tmp/vb/meta --to /tmp/vb/st
 *   build/bench/bench_video_data /tmp/vb/meta /tmp/vb/energon /tmp/vb/st [passes]
 *
 * Each pass decodes every sample to float32 (latents and all stored text rows) on one thread; the best pass of
 * each source is printed, one line each. The first pass also warms the page cache, so the figures are decode
 * cost, not disk speed. */
#include "dfm/common.h"
#include "dfm/video.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double bytes_of(const video_sample *s) {
    return 4.0 * (double)(s->c * s->t * s->h * s->w + s->rows * s->dim);
}

/* One pass over a source; returns samples decoded, float32 bytes in *mb. */
static int pass(int kind, const char *dir, double *mb) {
    char err[2048];
    int n = 0;
    *mb = 0;
    if (kind == 1) {
        energon_options o;
        energon_options_default(&o);
        o.shuffle_buffer = 0, o.slice_size = 0, o.num_workers = 0, o.max_abs = 1e30;
        energon_reader *r = energon_open(dir, &o, err, sizeof err);
        if (!r) dfm_die("%s", err);
        for (;;) {
            energon_sample *es;
            if (energon_next(r, &es) != 0) dfm_die("%s", energon_error(r));
            if (es->epoch > 0) {
                energon_sample_free(es);
                break;
            }
            video_sample s;
            if (video_energon_sample_read(es, &s, err, sizeof err) != 0) dfm_die("%s", err);
            *mb += bytes_of(&s) / 1e6;
            video_sample_free(&s);
            energon_sample_free(es);
            n++;
        }
        energon_close(r);
        return n;
    }
    char **paths;
    int np = 0;
    if (kind == 0) {
        if (video_meta_list(dir, &paths, &np, err, sizeof err) != 0) dfm_die("%s", err);
    } else { /* the converted folder: every <key>.safetensors */
        char cmd[4200];
        snprintf(cmd, sizeof cmd, "ls %s/*.safetensors", dir);
        FILE *p = popen(cmd, "r");
        char line[4200];
        paths = NULL;
        while (p && fgets(line, sizeof line, p)) {
            line[strcspn(line, "\n")] = 0;
            paths = xrealloc(paths, (size_t)(np + 1) * sizeof *paths);
            paths[np++] = xstrdup(line);
        }
        if (p) pclose(p);
    }
    for (int i = 0; i < np; i++) {
        video_sample s;
        if ((kind == 0 ? video_meta_read : video_safetensors_read)(paths[i], &s, err, sizeof err) != 0)
            dfm_die("%s", err);
        *mb += bytes_of(&s) / 1e6;
        video_sample_free(&s);
        free(paths[i]);
        n++;
    }
    free(paths);
    return n;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: bench_video_data META_DIR ENERGON_DIR SAFETENSORS_DIR [passes]\n");
        return 2;
    }
    int passes = argc > 4 ? atoi(argv[4]) : 3;
    if (passes < 1) passes = 1;
    static const char *const names[3] = {".meta (torch.save dicts)", "energon .pth/.pickle parts",
                                         "safetensors (converted)"};
    for (int k = 0; k < 3; k++) {
        double best = 1e30, mb = 0;
        int n = 0;
        for (int p = 0; p < passes; p++) {
            double t0 = dfm_time_s();
            n = pass(k, argv[1 + k], &mb);
            double dt = dfm_time_s() - t0;
            if (dt < best) best = dt;
        }
        printf("video_decode source=\"%s\" samples=%d seconds=%.3f samples_per_s=%.1f float32_mb_per_s=%.0f\n",
               names[k], n, best, n / best, mb / best);
    }
    return 0;
}
