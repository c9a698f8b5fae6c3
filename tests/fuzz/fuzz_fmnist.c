/* libFuzzer target: Fashion-MNIST idx files (src/data/fashion_mnist.c). The first input byte picks which of the
 * two files the rest of the input becomes (images or labels); the other is a valid 2-sample file. Plain (not
 * gzip'ed) bytes are read too, as zlib's gzread passes them through, so both forms are fuzzed. */
#include "dfm/fashion_mnist.h"
#include "fuzz_common.h"

static void write_valid(const char *name, int images) {
    uint8_t buf[16 + 2 * 784] = {0, 0, 8, 0};
    size_t n;
    if (images) {
        buf[3] = 3, buf[7] = 2, buf[11] = 28, buf[15] = 28;
        n = 16 + 2 * 784;
    } else {
        buf[3] = 1, buf[7] = 2, buf[8] = 3, buf[9] = 9;
        n = 10;
    }
    fuzz_write(name, buf, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int labels = data[0] & 1;
    write_valid("train-images-idx3-ubyte.gz", 1);
    write_valid("train-labels-idx1-ubyte.gz", 0);
    fuzz_write(labels ? "train-labels-idx1-ubyte.gz" : "train-images-idx3-ubyte.gz", data + 1, size - 1);
    uint8_t *im = NULL, *lb = NULL;
    int count = 0;
    char err[1024] = "";
    int limit = (data[0] >> 1) & 3; /* 0 = all samples, else a limit of 1-3 */
    if (fmnist_load(fuzz_dir(), 1, limit, &im, &lb, &count, err, sizeof err) == 0) {
        if (count < 0 || (limit && count > limit)) abort();
        for (int i = 0; i < count; i++)
            if (lb[i] > 9 || (im[(size_t)i * 784 + 783] & 0)) abort();
        free(im);
        free(lb);
    } else {
        fuzz_check_err(err);
    }
    return 0;
}
