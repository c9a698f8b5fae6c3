/* libFuzzer target: diffusers' sharded weights index, diffusion_pytorch_model.safetensors.index.json
 * (dfu_open_shards in src/models/diffusers_io.c), as an import reads it: the input is the index of a transformer
 * folder that holds two valid shards; the shards it names are opened and every tensor of its weight_map is
 * looked up. */
#include "dfm/safetensors.h"
#include "fuzz_common.h"
#include "models/diffusers_io.h"

static void write_shard(const char *name, const char *tensor) {
    static const float v[4] = {1, 2, 3, 4};
    int64_t n = 4;
    st_writer *w = st_writer_new();
    st_writer_add(w, tensor, ST_F32, 1, &n, v);
    st_writer_finish(w, fuzz_path(name));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready;
    if (!ready) {
        xmkdir_p(fuzz_path("t"));
        write_shard("t/diffusion_pytorch_model-00001-of-00002.safetensors", "blocks.0.w");
        write_shard("t/diffusion_pytorch_model-00002-of-00002.safetensors", "proj_out.w");
        ready = 1;
    }
    fuzz_write("t/" DFU_INDEX_FILE, data, size);
    char tdir[512];
    snprintf(tdir, sizeof tdir, "%s", fuzz_path("t"));
    dfu_shards s;
    char err[2048] = "";
    if (dfu_open_shards(&s, tdir, err, sizeof err) == 0) {
        static const char *names[] = {"blocks.0.w", "proj_out.w", "missing"};
        for (int i = 0; i < 3; i++) {
            const st_file *in = NULL;
            const st_tensor *t = dfu_shards_find(&s, names[i], &in);
            if (t && (!in || st_find(in, names[i]) != t)) abort();
        }
        dfu_shards_close(&s);
    } else {
        fuzz_check_err(err);
    }
    return 0;
}
