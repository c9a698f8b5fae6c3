/* Core utilities: Philox known answers and counter-based draws, safetensors round trip and bad input. */
#include "dfm/common.h"
#include "dfm/rng.h"
#include "dfm/safetensors.h"
#include "test.h"

#include <string.h>
#include <unistd.h>

static void philox_known_answers(void) {
    /* Known-answer vectors of Philox4x32-10 (Random123's kat_vectors). */
    struct {
        uint32_t ctr[4], key[2], out[4];
    } kat[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
         {0xffffffff, 0xffffffff},
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
         {0xa4093822, 0x299f31d0},
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (int i = 0; i < 3; i++) {
        uint32_t out[4];
        philox4x32_10(out, kat[i].ctr, kat[i].key);
        CHECK(!memcmp(out, kat[i].out, sizeof out), "philox4x32-10 known answer %d: %08x %08x %08x %08x", i, out[0],
              out[1], out[2], out[3]);
    }
}

static void draws(void) {
    uint64_t seed = (uint64_t)(test_uniform() * 1e12);
    /* the same key gives the same numbers; a different step, index or stream gives others */
    float a[37], b[37], c[37];
    rng_fill_normal(a, 37, seed, RNG_STREAM_NOISE, 3, 11);
    rng_fill_normal(b, 37, seed, RNG_STREAM_NOISE, 3, 11);
    rng_fill_normal(c, 37, seed, RNG_STREAM_NOISE, 3, 12);
    int agree = 1;
    for (int i = 0; i < 37; i++) agree &= a[i] == (float)rng_normal(seed, RNG_STREAM_NOISE, 3, 11, (uint32_t)i);
    CHECK(!memcmp(a, b, sizeof a) && memcmp(a, c, sizeof a) && agree,
          "normals are a pure function of (seed, stream, step, index, element)");
    /* moments of 200k normals and uniforms */
    size_t n = 200000;
    float *z = xalloc_floats(n), *u = xalloc_floats(n);
    rng_fill_normal(z, n, seed, RNG_STREAM_NOISE, 0, 0);
    rng_fill_uniform(u, n, seed, RNG_STREAM_TIMESTEP, 0, 0);
    double m = 0, v = 0, um = 0, umin = 1, umax = 0;
    for (size_t i = 0; i < n; i++) {
        m += z[i], v += (double)z[i] * z[i], um += u[i];
        umin = fmin(umin, u[i]), umax = fmax(umax, u[i]);
    }
    m /= n, v = v / n - m * m, um /= n;
    CHECK(fabs(m) < 0.01 && fabs(v - 1) < 0.015, "normal mean %.4f var %.4f", m, v);
    CHECK(fabs(um - 0.5) < 0.005 && umin > 0 && umax < 1, "uniform mean %.4f in (%.2g, %.7f)", um, umin, umax);
    free(z), free(u);
}

static char dir[64];

static void write_raw(const char *path, const void *buf, size_t n) {
    FILE *f = xfopen(path, "wb");
    xfwrite(buf, 1, n, f, path);
    fclose(f);
}

static size_t read_raw(const char *path, unsigned char **buf) {
    FILE *f = xfopen(path, "rb");
    fseek(f, 0, SEEK_END);
    size_t n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    *buf = xmalloc(n);
    xfread(*buf, 1, n, f, path);
    fclose(f);
    return n;
}

static void safetensors_roundtrip(void) {
    char path[128];
    snprintf(path, sizeof path, "%s/a.safetensors", dir);
    float w[6];
    test_fill_randn(w, 6, 1.0f);
    int32_t ids[3] = {7, -1, 42};
    int64_t sw[2] = {2, 3}, si[1] = {3}, s0[1] = {0};
    st_writer *wr = st_writer_new();
    st_writer_add(wr, "layer.weight", ST_F32, 2, sw, w);
    st_writer_add(wr, "ids", ST_I32, 1, si, ids);
    st_writer_add(wr, "empty", ST_F32, 1, s0, w);
    st_writer_meta(wr, "format", "pt");
    st_writer_finish(wr, path);
    char err[512] = "";
    st_file *f = st_open(path, err, sizeof err);
    CHECK(f != NULL, "written file opens: %s", f ? "ok" : err);
    if (!f) return;
    CHECK(f->header_len % 8 == 0, "header padded to a multiple of 8 (%llu)", (unsigned long long)f->header_len);
    const st_tensor *t = st_find(f, "layer.weight");
    float back[6] = {0};
    if (t) st_read_f32(f, t, back);
    CHECK(t && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3 && !memcmp(back, w, sizeof w),
          "F32 tensor round trip");
    t = st_find(f, "ids");
    float idf[3] = {0};
    if (t) st_read_f32(f, t, idf);
    CHECK(t && idf[0] == 7 && idf[1] == -1 && idf[2] == 42, "I32 tensor read as float");
    CHECK(st_meta(f, "format") && !strcmp(st_meta(f, "format"), "pt"), "metadata round trip");
    st_close(f);

    /* corrupt variants: each must be refused with a message naming the problem */
    unsigned char *buf;
    size_t n = read_raw(path, &buf);
    char bad[128];
    snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
    struct {
        const char *what, *expect;
        size_t len;
        int edit; /* 0 none, 1 huge header length, 2 break JSON, 3 wrong offsets */
    } cases[] = {
        {"truncated data", "truncated", n - 4, 0},
        {"trailing bytes", "trailing", n, -1},
        {"header length beyond the file", "header length", n, 1},
        {"header not JSON", "not a JSON object", n, 2},
        {"size/offset mismatch", "data bytes", n, 3},
        {"file shorter than 8 bytes", "too short", 5, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unsigned char *c = xmalloc(n + 8);
        memcpy(c, buf, n);
        size_t len = cases[i].len;
        if (cases[i].edit == -1) memcpy(c + n, "xxxx", 4), len = n + 4;
        if (cases[i].edit == 1) c[3] = 0x7f;
        if (cases[i].edit == 2) c[8] = '[';
        if (cases[i].edit == 3) {
            char *p = memmem(c + 8, n - 8, "[0,24]", 6);
            if (p) memcpy(p, "[0,20]", 6);
        }
        write_raw(bad, c, len);
        err[0] = 0;
        st_file *g = st_open(bad, err, sizeof err);
        CHECK(!g && strstr(err, cases[i].expect) && strstr(err, "bad.safetensors"), "%s refused: %s", cases[i].what,
              err);
        if (g) st_close(g);
        free(c);
    }
    free(buf);
    unlink(bad);
    unlink(path);
}

int main(void) {
    test_seed();
    snprintf(dir, sizeof dir, "/tmp/dfm_test_core_XXXXXX");
    if (!mkdtemp(dir)) dfm_die("mkdtemp failed");
    philox_known_answers();
    draws();
    safetensors_roundtrip();
    rmdir(dir);
    return test_finish();
}
