/* libFuzzer target for the restricted unpickler and the torch.save containers (include/dfm/pickle.h): each input
 * is read from memory as whatever it looks like (a pickle, a torch.save zip archive or a legacy stream) and as a
 * plain pickle, and a loaded document is walked the way dfm uses it (printed, searched, converted to float32).
 *
 * Built and run by `make fuzz` (or FUZZ_TARGETS=pickle make fuzz); by hand from the repository root:
 *   clang -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
 *         -Iinclude -Isrc tests/fuzz/fuzz_pickle.c src/data/pickle.c src/data/torchload.c src/core/common.c \
 *         -lzip -lm -o build/fuzz_pickle
 *   mkdir -p build/fuzz-pickle && build/fuzz_pickle -max_total_time=120 build/fuzz-pickle tests/fuzz/corpus/pickle
 * The seeds in tests/fuzz/corpus/pickle/ come from tests/fuzz/make_seed_corpus.py (plus inputs that once crashed
 * the reader, kept as regression seeds). A crash leaves crash-<sha1> in the working folder: add it to the corpus. */
#include "dfm/pickle.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static void walk(const pk_value *v, int depth) {
    if (depth > PK_MAX_DEPTH + 1) abort(); /* the loader promised a bounded depth */
    if (v->kind == PK_TENSOR || v->kind == PK_NDARRAY) {
        const pk_array *a = v->arr;
        float *f = malloc((size_t)(a->numel ? a->numel : 1) * sizeof *f);
        char err[128];
        pk_array_to_f32(a, f, err, sizeof err);
        free(f);
        return;
    }
    if (v->kind != PK_LIST && v->kind != PK_TUPLE && v->kind != PK_SET && v->kind != PK_DICT) return;
    for (int i = 0; i < v->n; i++) {
        walk(v->items[i], depth + 1);
        if (v->kind == PK_DICT) walk(v->keys[i], depth + 1);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static FILE *null;
    if (!null) null = fopen("/dev/null", "w");
    static const pk_expect modes[2] = {PK_ANY, PK_PICKLE};
    for (int m = 0; m < 2; m++) {
        char err[1024];
        pk_doc *d = pk_load_mem(data, size, "fuzz", modes[m], err, sizeof err);
        if (!d) {
            if (!err[0]) abort(); /* every refusal says why */
            continue;
        }
        pk_print(null, d->root, 500);
        pk_find_array(d->root, "video_latents");
        pk_dict_get(d->root, "num_frames");
        walk(d->root, 0);
        pk_doc_free(d);
    }
    return 0;
}
