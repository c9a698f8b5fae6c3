/* libFuzzer target: safetensors files (src/core/safetensors.c) and dfm's video samples stored as safetensors
 * (video_safetensors_read). The input is written to a file and opened; every tensor the header declares is
 * read back as float32, the way the importers use it, and the same file is decoded as a video sample. */
#include "dfm/safetensors.h"
#include "dfm/video.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("x.safetensors", data, size);
    char err[1024] = "";
    st_file *f = st_open(path, err, sizeof err);
    if (!f) {
        fuzz_check_err(err);
    } else {
        for (int i = 0; i < f->n_tensors; i++) {
            const st_tensor *t = &f->tensors[i];
            if (st_find(f, t->name) == NULL) abort(); /* a listed tensor must be found by its name */
            int64_t n = st_numel(t);
            /* The reader checked that the bytes are in the file, so numel is bounded by its size. */
            if (n < 0 || (uint64_t)n * st_dtype_size(t->dtype) != t->end - t->begin) abort();
            float *out = malloc((size_t)(n ? n : 1) * sizeof *out);
            st_read_f32(f, t, out);
            free(out);
        }
        for (int i = 0; i < f->n_meta; i++) (void)st_meta(f, f->meta_keys[i]);
        st_close(f);
    }
    video_sample s;
    err[0] = 0;
    if (video_safetensors_read(path, &s, err, sizeof err) == 0)
        video_sample_free(&s);
    else
        fuzz_check_err(err);
    return 0;
}
