/* libFuzzer target: Energon datasets (src/data/energon.c). A fixed prepared dataset (one shard of three samples,
 * its .tar.idx and .nv-meta) is written once; the first input byte picks which file the rest of the input
 * replaces, and the reader is opened on it:
 *   0: a MetadatasetV2 .yaml (blends, subsets, subflavors, nested metadatasets) next to the dataset;
 *   1: .nv-meta/split.yaml   2: .nv-meta/.info.json   3: .nv-meta/dataset.yaml
 *   4: a saved reader state (energon_state_restore) for the fixed dataset;
 *   5: a brace pattern (energon_brace_expand).
 * An opened reader delivers a few samples (the stream loops over epochs), saves its state and restores it into a
 * fresh reader. */
#include "dfm/energon.h"
#include "dfm/tar.h"
#include "fuzz_common.h"

static char ds[512];

static void write_text(const char *name, const char *text) {
    fuzz_write(name, text, strlen(text));
}

static const char *split_yaml = "split_parts:\n  train:\n  - shards/data_{0..0}.tar\n  val: []\nexclude: []\n";
static const char *info_json = "{\"energon_version\": \"7.0.0\", \"shard_counts\": {\"shards/data_0.tar\": 3}}";
static const char *dataset_yaml = "__module__: megatron.energon\n__class__: CrudeWebdataset\n";

static void make_dataset(void) {
    snprintf(ds, sizeof ds, "%s", fuzz_path("ds"));
    char shard[600];
    snprintf(shard, sizeof shard, "%s/shards/data_0.tar", ds);
    xmkdir_p(fuzz_path("ds/shards"));
    tar_writer w;
    tar_writer_open(&w, shard);
    uint64_t off[4];
    off[0] = tar_writer_add(&w, "s0.cls", "1", 1);
    tar_writer_add(&w, "s0.txt", "a cat", 5);
    off[1] = tar_writer_add(&w, "s1.cls", "2", 1);
    tar_writer_add(&w, "s1.json", "{\"caption\": \"x\"}", 16);
    off[2] = tar_writer_add(&w, "s2.cls", "3", 1);
    off[3] = tar_writer_close(&w);
    char idx[620];
    snprintf(idx, sizeof idx, "%s.idx", shard);
    tar_idx_write(idx, off, 4);
}

static void restore_files(void) {
    write_text("ds/.nv-meta/split.yaml", split_yaml);
    write_text("ds/.nv-meta/.info.json", info_json);
    write_text("ds/.nv-meta/dataset.yaml", dataset_yaml);
}

static void exercise(const char *path, const char *state) {
    energon_options o;
    energon_options_default(&o);
    o.quiet = 1;
    o.num_workers = 0;
    o.shuffle_buffer = 2;
    o.slice_size = 2;
    char err[2048] = "";
    energon_reader *r = energon_open(path, &o, err, sizeof err);
    if (!r) {
        fuzz_check_err(err);
        return;
    }
    for (int i = 0; i < energon_num_sources(r); i++) (void)energon_source(r, i);
    if (state) {
        err[0] = 0;
        if (energon_state_restore(r, state, err, sizeof err) != 0) {
            fuzz_check_err(err);
            energon_close(r);
            return;
        }
    }
    for (int i = 0; i < 4; i++) {
        energon_sample *s;
        if (energon_next(r, &s) != 0) {
            fuzz_check_err(energon_error(r));
            break;
        }
        (void)energon_sample_part(s, "cls");
        energon_sample_free(s);
    }
    char *saved = energon_state_save(r);
    energon_close(r);
    r = energon_open(path, &o, err, sizeof err);
    if (!r) abort(); /* it opened a moment ago */
    if (energon_state_restore(r, saved, err, sizeof err) != 0) {
        fprintf(stderr, "a saved state does not restore: %s\n%s\n", err, saved);
        abort();
    }
    energon_sample *s;
    if (energon_next(r, &s) == 0) energon_sample_free(s);
    energon_close(r);
    free(saved);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    if (!ds[0]) make_dataset();
    restore_files();
    char *text = fuzz_text(data + 1, size - 1);
    switch (data[0] % 6) {
    case 0: {
        const char *p = fuzz_write("meta.yaml", text, strlen(text));
        char path[512];
        snprintf(path, sizeof path, "%s", p);
        exercise(path, NULL);
        break;
    }
    case 1:
    case 2:
    case 3: {
        static const char *names[] = {"ds/.nv-meta/split.yaml", "ds/.nv-meta/.info.json", "ds/.nv-meta/dataset.yaml"};
        write_text(names[data[0] % 6 - 1], text);
        energon_dataset_info info;
        char err[2048] = "";
        if (energon_dataset_info_load(ds, NULL, &info, err, sizeof err) == 0)
            energon_dataset_info_free(&info);
        else
            fuzz_check_err(err);
        exercise(ds, NULL);
        break;
    }
    case 4:
        exercise(ds, text);
        break;
    default: {
        if (strlen(text) > 64) break; /* a pattern expands to a product of ranges: keep it small */
        char **out = NULL;
        int n = energon_brace_expand(text, &out);
        for (int i = 0; i < n; i++) free(out[i]);
        free(out);
    }
    }
    free(text);
    return 0;
}
