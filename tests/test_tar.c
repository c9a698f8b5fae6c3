/* Tar reader/writer, webdataset grouping and .tar.idx: round trips through dfm's writer, archives written
 * by Python's tarfile (PAX with global and per-file records, GNU long names), and the error paths. */
#include "dfm/tar.h"
#include "test.h"
#include "test_fs.h"

#include <string.h>

typedef struct {
    char name[1024];
    unsigned long long size, header, data;
} listed;

static int read_listing(const char *path, listed *out, int cap) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int n = 0;
    char line[1024];
    while (n < cap && fgets(line, sizeof line, f)) {
        char *tab = strchr(line, '\t');
        if (!tab) break;
        *tab = 0;
        snprintf(out[n].name, sizeof out[n].name, "%s", line);
        if (sscanf(tab + 1, "%llu %llu %llu", &out[n].size, &out[n].header, &out[n].data) != 3) break;
        n++;
    }
    fclose(f);
    return n;
}

/* Every regular member as Python lists it: same name, size, header offset (preamble included) and data. */
static void check_python_archive(const char *dir, const char *stem) {
    listed want[64];
    int n = read_listing(test_path("%s/%s.list", dir, stem), want, 64);
    CHECK(n == 15, "%s: Python listed %d regular members (15 expected)", stem, n);
    tar_reader r;
    CHECK(tar_open(&r, test_path("%s/%s.tar", dir, stem)) == 0, "%s: open", stem);
    int i = 0, bad = 0, rc;
    tar_member m;
    while ((rc = tar_next(&r, &m)) == 1) {
        if (i >= n || strcmp(m.name, want[i].name) || m.size != want[i].size || m.header_offset != want[i].header ||
            m.data_offset != want[i].data) {
            printf("# %s member %d: got '%s' size %llu header %llu data %llu\n", stem, i, m.name,
                   (unsigned long long)m.size, (unsigned long long)m.header_offset, (unsigned long long)m.data_offset);
            bad++;
        } else {
            /* payload bytes as the generator made them */
            unsigned char *buf = malloc(m.size + 1);
            tar_read_data(&r, &m, buf);
            if (strstr(m.name, ".bin")) {
                const char *b = strrchr(m.name, '/');
                int idx = atoi((b ? b + 1 : m.name) + 6);
                for (uint64_t k = 0; k < m.size; k++)
                    if (buf[k] != (unsigned char)((idx * 31 + (int)k * 7) % 256)) {
                        bad++;
                        break;
                    }
            }
            free(buf);
        }
        i++;
    }
    CHECK(rc == 0 && i == n && bad == 0,
          "%s: %d members read, names/sizes/offsets/data match Python's tarfile (%d bad)%s%s", stem, i, bad,
          rc < 0 ? ": " : "", rc < 0 ? r.err : "");
    tar_close(&r);

    /* sample index as Energon computes it */
    unsigned long long want_off[64];
    int ns = 0;
    FILE *f = fopen(test_path("%s/%s.samples", dir, stem), "r");
    while (f && ns < 64 && fscanf(f, "%llu", &want_off[ns]) == 1) ns++;
    if (f) fclose(f);
    uint64_t *off = NULL;
    size_t count = 0;
    char err[TAR_ERR_LEN];
    int ok = wds_index_shard(test_path("%s/%s.tar", dir, stem), &off, &count, err, sizeof err) == 0;
    int same = ok && (int)count + 1 == ns;
    for (int k = 0; same && k < ns; k++) same = off[k] == want_off[k];
    CHECK(same, "%s: sample index (%zu samples + end) equals Energon's offsets (%d entries)", stem, count, ns);
    /* random access: read sample 5 (sample0004, a long-name key in the PAX/GNU flavour) through the index */
    if (ok && count > 6) {
        tar_reader rr;
        wds_sample s;
        tar_open(&rr, test_path("%s/%s.tar", dir, stem));
        int rc2 = wds_read_sample(&rr, off[5], off[6], &s);
        CHECK(rc2 == 0 && s.nparts == 2 && strstr(s.key, "nested_again_") && !strcmp(s.parts[0].name, "bin") &&
                  s.parts[0].size == 513 && !strcmp(s.parts[1].name, "cls") && s.parts[1].data[0] == '4',
              "%s: random access to a sample with a long key by its index offset (%s)", stem, rc2 ? rr.err : s.key);
        if (rc2 == 0) wds_sample_free(&s);
        tar_close(&rr);
    }
    free(off);
}

static void test_names(void) {
    size_t kl;
    const char *part;
    int ok = wds_split_name("dir.v1/abc.seg.png", &kl, &part) && kl == 10 && !strcmp(part, "seg.png");
    ok = ok && !wds_split_name("__key__", &kl, &part) && !wds_split_name("__x__/a.png", &kl, &part);
    ok = ok && wds_split_name("__meta__.txt", &kl, &part) && kl == 8; /* as Energon: an ordinary part */
    ok = ok && !wds_split_name("noext", &kl, &part) && !wds_split_name("d/.hidden", &kl, &part);
    CHECK(ok, "webdataset key/part split (directory prefix kept, first dot of the base name, __x__ skipped)");
}

static void test_writer_roundtrip(const char *dir) {
    const char *path = test_path("%s/w.tar", dir);
    static const uint64_t sizes[] = {0, 1, 511, 512, 513, 10000};
    char longname[300];
    memset(longname, 'n', sizeof longname);
    memcpy(longname + 250, "/k.part", 8);
    tar_writer w;
    tar_writer_open(&w, path);
    uint64_t starts[8];
    unsigned char *buf = malloc(10000);
    for (int i = 0; i < 10000; i++) buf[i] = (unsigned char)(i * 13 + 5);
    char name[64];
    for (int i = 0; i < 6; i++) {
        snprintf(name, sizeof name, "s%02d.bin", i);
        starts[i] = tar_writer_add(&w, name, buf, sizes[i]);
    }
    starts[6] = tar_writer_add(&w, longname, "hello", 5);
    uint64_t end = tar_writer_close(&w);
    CHECK(access(path, F_OK) == 0 && access(test_path("%s.tmp.%ld", path, (long)getpid()), F_OK) != 0,
          "writer commits atomically (no temporary left)");

    tar_reader r;
    tar_open(&r, path);
    tar_member m;
    int i = 0, bad = 0, rc;
    while ((rc = tar_next(&r, &m)) == 1) {
        unsigned char *d = malloc(m.size + 1);
        if (tar_read_data(&r, &m, d) != 0) bad++;
        if (i < 6) {
            snprintf(name, sizeof name, "s%02d.bin", i);
            if (strcmp(m.name, name) || m.size != sizes[i] || memcmp(d, buf, m.size) || m.header_offset != starts[i])
                bad++;
        } else if (strcmp(m.name, longname) || m.size != 5 || memcmp(d, "hello", 5) || m.header_offset != starts[6])
            bad++;
        free(d);
        i++;
    }
    CHECK(rc == 0 && i == 7 && bad == 0 && r.data_end == end,
          "writer -> reader round trip: 7 members incl. a 257-byte PAX name, offsets and data equal (%d bad)", bad);
    tar_close(&r);
    if (test_sh("/usr/bin/python3 -c 'import tarfile,sys; t=tarfile.open(sys.argv[1]); "
                "n=[m.name for m in t]; sys.exit(0 if len(n)==7 and len(n[6])==257 else 1)' %s",
                path) == 0)
        CHECK(1, "Python's tarfile reads dfm's archive (PAX long name included)");
    else
        CHECK(0, "Python's tarfile reads dfm's archive (PAX long name included)");

    /* .tar.idx round trip */
    uint64_t *off;
    size_t n, n1;
    char err[TAR_ERR_LEN];
    wds_index_shard(path, &off, &n, err, sizeof err);
    tar_idx_write(test_path("%s/w.tar.idx", dir), off, n + 1);
    uint64_t *off2;
    int ok = tar_idx_read(test_path("%s/w.tar.idx", dir), &off2, &n1, err, sizeof err) == 0 && n1 == n + 1 &&
             !memcmp(off, off2, n1 * 8) && n == 7 && off[n] == end;
    size_t fsz = 0;
    free(test_read_file(test_path("%s/w.tar.idx", dir), &fsz));
    CHECK(ok && fsz == 8 * (n + 1), ".tar.idx written and read back: %zu samples + end, %zu bytes", n, fsz);
    free(off);
    if (ok) free(off2);
    free(buf);
}

static void corrupt(const char *path, long off, unsigned char val) {
    FILE *f = fopen(path, "r+b");
    fseek(f, off, SEEK_SET);
    fputc(val, f);
    fclose(f);
}

static int iterate_all(const char *path, char *err, size_t errlen) {
    tar_reader r;
    int rc = tar_open(&r, path);
    tar_member m;
    if (rc == 0)
        while ((rc = tar_next(&r, &m)) == 1) {
        }
    snprintf(err, errlen, "%s", r.err);
    tar_close(&r);
    return rc;
}

static void test_errors(const char *dir) {
    const char *path = test_path("%s/e.tar", dir);
    char err[TAR_ERR_LEN];
    unsigned char data[3000];
    memset(data, 7, sizeof data);
    tar_writer w;
    tar_writer_open(&w, path);
    tar_writer_add(&w, "a.bin", data, 3000);
    tar_writer_add(&w, "b.bin", data, 100);
    tar_writer_close(&w);

    CHECK(truncate(path, 2000) == 0 && iterate_all(path, err, sizeof err) < 0 && strstr(err, "truncated at offset 0") &&
              strstr(err, path) && strstr(err, "a.bin"),
          "truncated member: error names file, offset and member: %s", err);
    tar_writer_open(&w, path);
    tar_writer_add(&w, "a.bin", data, 3000);
    tar_writer_add(&w, "b.bin", data, 100);
    tar_writer_close(&w);
    CHECK(truncate(path, 3584 + 100) == 0 && iterate_all(path, err, sizeof err) < 0 &&
              strstr(err, "truncated at offset 3584"),
          "header block cut short: %s", err);

    tar_writer_open(&w, path);
    tar_writer_add(&w, "a.bin", data, 3000);
    tar_writer_add(&w, "b.bin", data, 100);
    tar_writer_close(&w);
    corrupt(path, 3584 + 10, 'Z'); /* inside the second header's name */
    CHECK(iterate_all(path, err, sizeof err) < 0 && strstr(err, "checksum mismatch at offset 3584") &&
              strstr(err, path),
          "corrupt header checksum: %s", err);
    CHECK(iterate_all(test_path("%s/missing.tar", dir), err, sizeof err) < 0 && strstr(err, "cannot open"),
          "missing file: %s", err);
    uint64_t *o;
    size_t n;
    FILE *f = fopen(test_path("%s/bad.tar.idx", dir), "wb");
    fwrite("12345", 1, 5, f);
    fclose(f);
    CHECK(tar_idx_read(test_path("%s/bad.tar.idx", dir), &o, &n, err, sizeof err) < 0 && strstr(err, "bad.tar.idx"),
          "malformed .tar.idx: %s", err);
}

int main(void) {
    char *dir = test_mkdtemp();
    test_names();
    test_writer_roundtrip(dir);
    test_errors(dir);
    int failed = 0;
    if (test_have_python(&failed)) {
        CHECK(test_sh("/usr/bin/python3 tests/data/make_tar_fixtures.py %s", dir) == 0,
              "fixture generator tests/data/make_tar_fixtures.py ran");
        check_python_archive(dir, "pax");
        check_python_archive(dir, "gnu");
    }
    test_failed_ += failed;
    test_rmtree(dir);
    free(dir);
    return test_finish();
}
