/* libFuzzer target: a checkpoint's train_state.json (ckpt_train_state_parse), and the loader state it carries
 * restored into an in-memory image loader and a video loader, as a resume does. */
#include "dfm/checkpoint.h"
#include "dfm/data.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_dir(); /* installs the die hook: dfm_die on bad input is a finding */
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = 0;
    long it;
    int64_t consumed, seed;
    char *ls = NULL, err[2048] = "";
    if (ckpt_train_state_parse(text, "train_state.json", &it, &consumed, &seed, &ls, err, sizeof err) == 0) {
        if (it < 0 || consumed < 0 || !ls) abort();
        /* the loader state goes to a loader of 4 samples, seed 7, as a resume would hand it over */
        static uint8_t px[4 * 4];
        static int lab[4] = {0, 1, 2, 3};
        image_dataset ds = {0};
        ds.n = 4, ds.c = 1, ds.h = 2, ds.w = 2, ds.num_classes = 4, ds.pixels = px, ds.labels = lab;
        int idx[4] = {0, 1, 2, 3};
        data_loader *l = loader_new(&ds, idx, 4, 7, 2, 0, 4);
        if (loader_state_restore(l, ls, err, sizeof err) == 0) {
            float x[2 * 4];
            int y[2];
            loader_next(l, x, y);
        } else
            fuzz_check_err(err);
        loader_free(l);
        free(ls);
    } else {
        fuzz_check_err(err);
    }
    free(text);
    return 0;
}
