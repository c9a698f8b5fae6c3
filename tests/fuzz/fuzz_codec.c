/* libFuzzer target: the in-memory decoders of dataset parts (src/data/codec.c): PNG (libpng), JPEG (libjpeg) and
 * NumPy .npy, as a webdataset sample's "png", "jpg" or "npy" part reaches them. Each input is offered to all three
 * decoders (each must refuse what is not its format with a message), and a parsed .npy is converted to float32. */
#include "dfm/codec.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[1024];
    uint8_t *px = NULL;
    int w = 0, h = 0, c = 0;
    err[0] = 0;
    if (png_decode_mem(data, size, &px, &w, &h, &c, err, sizeof err) == 0) {
        if (w <= 0 || h <= 0 || c < 1 || c > 4) abort();
        px[(size_t)w * h * c - 1] ^= 1; /* the whole image is there (ASan checks the last byte) */
        free(px);
    } else {
        fuzz_check_err(err);
    }
    err[0] = 0;
    if (jpeg_decode_mem(data, size, &px, &w, &h, &c, err, sizeof err) == 0) {
        if (w <= 0 || h <= 0 || (c != 1 && c != 3)) abort();
        px[(size_t)w * h * c - 1] ^= 1;
        free(px);
    } else {
        fuzz_check_err(err);
    }
    npy_view v;
    err[0] = 0;
    if (npy_parse(data, size, &v, err, sizeof err) == 0) {
        if (v.data < data || v.data + v.count * v.elem_size > data + size) abort(); /* the data lies in the buffer */
        float *f = malloc((v.count ? v.count : 1) * sizeof *f);
        err[0] = 0;
        if (npy_to_f32(&v, f, err, sizeof err) != 0) fuzz_check_err(err);
        free(f);
    } else {
        fuzz_check_err(err);
    }
    return 0;
}
