/* libFuzzer target: checkpoint tensors and their metadata (src/train/checkpoint.c). A model of two tensors
 * ("a" [2, 3] and "b" [4]) is read from a checkpoint folder; the first input byte picks what the rest is:
 *   0: the only shard file, shard_00000_of_00001.safetensors, whole;
 *   1: the "dfm_shard" metadata JSON of a valid shard file (pieces with offsets and shapes, the total);
 *   2: the consolidated model.safetensors, whole.
 * The whole model and a middle range are read (ckpt_read_range); a read that succeeds must have written every
 * element of the range (the output starts as a sentinel that the fixed shard's values never equal). */
#include "dfm/checkpoint.h"
#include "dfm/safetensors.h"
#include "fuzz_common.h"

static param_table table;

static void read_range(const char *dir, size_t begin, size_t end) {
    float out[16];
    for (int i = 0; i < 16; i++) out[i] = -12345.0f;
    char err[2048] = "";
    if (ckpt_read_range(dir, "model", &table, begin, end, out, err, sizeof err) == 0) {
        for (size_t i = 0; i < end - begin; i++)
            if (out[i] == -12345.0f) {
                fprintf(stderr, "ckpt_read_range succeeded but left element %zu of [%zu, %zu) unwritten\n", begin + i,
                        begin, end);
                abort();
            }
    } else {
        fuzz_check_err(err);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    if (!table.n) {
        int64_t sa[2] = {2, 3}, sb[1] = {4};
        param_table_add(&table, "a", 2, sa, 0);
        param_table_add(&table, "b", 1, sb, 1);
    }
    char dir[512];
    snprintf(dir, sizeof dir, "%s", fuzz_path("ckpt"));
    rm_tree(dir);
    xmkdir_p(dir);
    int mode = data[0] % 3;
    if (mode == 0) {
        fuzz_write("ckpt/shard_00000_of_00001.safetensors", data + 1, size - 1);
    } else if (mode == 2) {
        fuzz_write("ckpt/model.safetensors", data + 1, size - 1);
    } else {
        char *meta = fuzz_text(data + 1, size - 1);
        static const float va[6] = {1, 2, 3, 4, 5, 6}, vb[4] = {7, 8, 9, 10};
        int64_t na = 6, nb = 4;
        st_writer *w = st_writer_new();
        st_writer_add(w, "model.a", ST_F32, 1, &na, va);
        st_writer_add(w, "model.b", ST_F32, 1, &nb, vb);
        st_writer_meta(w, "dfm_shard", meta);
        char path[600];
        snprintf(path, sizeof path, "%s/shard_00000_of_00001.safetensors", dir);
        st_writer_finish(w, path);
        free(meta);
    }
    read_range(dir, 0, table.total);
    read_range(dir, 3, 8);
    char *m = ckpt_meta(dir, "dfm_shard");
    free(m);
    char err[256];
    (void)ckpt_is_sharded(dir, err, sizeof err);
    return 0;
}
