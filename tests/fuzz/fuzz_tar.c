/* libFuzzer target: webdataset tar shards and Energon's .tar.idx (src/data/tar.c, energon_check_shard).
 * The first input byte picks the mode:
 *   even: the rest is a tar archive: every member is listed and read, the shard is indexed into samples
 *         (wds_index_shard) and each sample is read back by its byte range (wds_read_sample);
 *   odd:  the rest is the .tar.idx of a fixed valid 3-sample shard: the index is read, checked against the shard
 *         (energon_check_shard) and every range it gives is read as a sample. */
#include "dfm/energon.h"
#include "dfm/tar.h"
#include "fuzz_common.h"

static void read_samples(const char *shard, const uint64_t *off, size_t count) {
    tar_reader r;
    if (tar_open(&r, shard) != 0) {
        fuzz_check_err(r.err);
        return;
    }
    for (size_t i = 0; i < count; i++) {
        wds_sample s;
        if (wds_read_sample(&r, off[i], off[i + 1], &s) == 0) {
            for (int p = 0; p < s.nparts; p++)
                if (s.parts[p].size && (s.parts[p].data[s.parts[p].size - 1] & 0)) abort();
            wds_sample_free(&s);
        } else {
            fuzz_check_err(r.err);
        }
    }
    tar_close(&r);
}

static const char *fixed_shard(void) {
    static char path[512];
    if (!path[0]) {
        snprintf(path, sizeof path, "%s", fuzz_path("fixed.tar"));
        tar_writer w;
        tar_writer_open(&w, path);
        static const char *names[] = {"a/0001.png", "a/0001.cls", "a/0002.txt", "b/0003.json", "b/0003.cls"};
        for (int i = 0; i < 5; i++) tar_writer_add(&w, names[i], "12", 2);
        tar_writer_close(&w);
    }
    return path;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    char err[1024] = "";
    if (!(data[0] & 1)) {
        const char *path = fuzz_write("x.tar", data + 1, size - 1);
        tar_reader r;
        if (tar_open(&r, path) != 0) {
            fuzz_check_err(r.err);
            return 0;
        }
        tar_member m;
        int rc;
        while ((rc = tar_next(&r, &m)) == 1) {
            /* a member the reader returns lies inside the file */
            if (m.data_offset + m.size > r.file_size || m.data_offset < m.header_offset) abort();
            uint8_t *buf = malloc(m.size ? m.size : 1);
            if (tar_read_data(&r, &m, buf) != 0) fuzz_check_err(r.err);
            free(buf);
        }
        if (rc < 0) fuzz_check_err(r.err);
        tar_close(&r);
        uint64_t *off = NULL;
        size_t count = 0;
        if (wds_index_shard(path, &off, &count, err, sizeof err) == 0) {
            read_samples(path, off, count);
            free(off);
        } else {
            fuzz_check_err(err);
        }
        return 0;
    }
    const char *shard = fixed_shard();
    char idx[600];
    snprintf(idx, sizeof idx, "%s.idx", shard);
    FILE *f = fopen(idx, "wb");
    if (!f || fwrite(data + 1, 1, size - 1, f) != size - 1 || fclose(f) != 0) abort();
    uint64_t *off = NULL;
    size_t n = 0;
    if (tar_idx_read(idx, &off, &n, err, sizeof err) == 0) {
        if (n < 1) abort();
        read_samples(shard, off, n - 1);
        free(off);
    } else {
        fuzz_check_err(err);
    }
    err[0] = 0;
    if (energon_check_shard(shard, 3, err, sizeof err) != 0) fuzz_check_err(err);
    return 0;
}
