/* libFuzzer target: samples.json, the manifest `dfm generate` writes and `dfm eval samples` reads
 * (clf_manifest_load in src/eval/classifier.c). The input is the manifest, in a folder that also holds a valid
 * 28x28 gray PNG "g.png", a colour PNG "c.png" and a 4x4 PNG "s.png" that entries may name. */
#include "dfm/classifier.h"
#include "dfm/codec.h"
#include "fuzz_common.h"

static void write_png(const char *name, int w, int h, int ch, int colour) {
    uint8_t px[28 * 28 * 3];
    for (int i = 0; i < w * h * ch; i++) px[i] = (uint8_t)(colour ? i * 7 : (i / ch) * 3);
    size_t len;
    uint8_t *png = png_encode_mem(px, w, h, ch, &len);
    fuzz_write(name, png, len);
    free(png);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready;
    if (!ready) {
        write_png("m/g.png", 28, 28, 1, 0);
        write_png("m/c.png", 28, 28, 3, 1);
        write_png("m/s.png", 4, 4, 1, 0);
        ready = 1;
    }
    const char *path = fuzz_write("m/samples.json", data, size);
    float *x = NULL;
    int *lab = NULL, n = 0;
    char err[2048] = "";
    if (clf_manifest_load(path, &x, &lab, &n, err, sizeof err) == 0) {
        if (n < 1) abort();
        for (int i = 0; i < n; i++)
            if (lab[i] < 0 || lab[i] > 9 || !(x[(size_t)i * 784 + 783] >= -1.0f && x[(size_t)i * 784 + 783] <= 1.0f))
                abort();
        free(x);
        free(lab);
    } else {
        fuzz_check_err(err);
    }
    return 0;
}
