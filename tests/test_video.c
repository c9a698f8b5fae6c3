/* Video data for Wan training: the stand-in text encoder, the demo clips (deterministic, moving where the caption
 * says), the .safetensors folder reader (dtypes, [1, ...] shapes, text lengths, errors), the video loader's order
 * against data_loader's (permutation, state save/restore, data-parallel slices), and Energon video datasets:
 * `dfm data prepare --video-clips` read back, and DFM's .pth/.pickle parts written by PyTorch
 * (tests/data/make_video_pickles.py) read to the same values as .npy parts. */
#include "dfm/common.h"
#include "dfm/data.h"
#include "dfm/fashion_mnist.h"
#include "dfm/safetensors.h"
#include "dfm/video.h"
#include "test.h"
#include "test_fs.h"

#include <fcntl.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static uint64_t g_seed;
static const char *g_dir;

/* --------------------------------------------------------------------------------------------- text encoder */

static double row_rms(const float *r, int d) {
    double s = 0;
    for (int j = 0; j < d; j++) s += (double)r[j] * r[j];
    return sqrt(s / d);
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

static void test_text_encoder(void) {
    enum { D = 24, L = 8 };
    float a[L * D], b[L * D];
    int la, lb;
    char err[256];
    uint64_t seed = g_seed;
    CHECK(text_encoder_encode("a sneaker moving left", D, L, seed, a, &la, err, sizeof err) == 0 && la == 4,
          "text encoder: 'a sneaker moving left' is 4 words (got %d)", la);
    text_encoder_encode("a sneaker moving left", D, L, seed, b, &lb, err, sizeof err);
    CHECK(la == lb && !memcmp(a, b, sizeof a), "text encoder: the same caption gives the same embedding, bit for bit");
    int rms_ok = 1, pad_ok = 1;
    for (int r = 0; r < la; r++) rms_ok &= fabs(row_rms(a + r * D, D) - 1.0) < 1e-5;
    for (int e = la * D; e < L * D; e++) pad_ok &= a[e] == 0.0f;
    CHECK(rms_ok && pad_ok, "text encoder: word rows have unit RMS, rows past the length are zero");
    text_encoder_encode("  A Sneaker\tMOVING/left ", D, L, seed, b, &lb, err, sizeof err);
    CHECK(lb == 4 && !memcmp(a, b, sizeof a), "text encoder: case, repeated white space and '/' do not matter");
    text_encoder_encode("a sneaker moving right", D, L, seed, b, &lb, err, sizeof err);
    CHECK(lb == 4 && !memcmp(a, b, 3 * D * sizeof(float)) && max_abs_diff(a + 3 * D, b + 3 * D, D) > 0.1,
          "text encoder: another last word changes that row only (diff %.3g)", max_abs_diff(a + 3 * D, b + 3 * D, D));
    text_encoder_encode("a sneaker left moving", D, L, seed, b, &lb, err, sizeof err);
    CHECK(lb == 4 && max_abs_diff(a + 2 * D, b + 2 * D, 2 * D) > 0.1,
          "text encoder: word order matters (position codes)");
    text_encoder_encode("a sneaker moving left", D, L, seed + 1, b, &lb, err, sizeof err);
    CHECK(max_abs_diff(a, b, (size_t)la * D) > 0.1, "text encoder: another seed gives other embeddings");
    float t[2 * D];
    int lt;
    text_encoder_encode("a sneaker moving left", D, 2, seed, t, &lt, err, sizeof err);
    CHECK(lt == 2 && !memcmp(t, a, sizeof t), "text encoder: words past max_len are dropped (len %d)", lt);
    float e1[L * D], e2[L * D], e3[L * D];
    int l1, l2, l3;
    text_encoder_encode("", D, L, seed, e1, &l1, err, sizeof err);
    text_encoder_encode(" / \n", D, L, seed, e2, &l2, err, sizeof err);
    text_encoder_encode(NULL, D, L, seed, e3, &l3, err, sizeof err);
    CHECK(l1 == 1 && l2 == 1 && l3 == 1 && !memcmp(e1, e2, sizeof e1) && !memcmp(e1, e3, sizeof e1) &&
              fabs(row_rms(e1, D) - 1) < 1e-5,
          "text encoder: a caption without words is one unit-RMS row (the empty word), the same for '', ' / ', NULL");
    float odd[3 * 7];
    int lo;
    CHECK(text_encoder_encode("odd width", 7, 3, seed, odd, &lo, err, sizeof err) == 0 && lo == 2 &&
              fabs(row_rms(odd, 7) - 1) < 1e-5,
          "text encoder: odd widths work");
    CHECK(text_encoder_encode("x", 0, 3, seed, odd, &lo, err, sizeof err) != 0 && strstr(err, "dim"),
          "text encoder: dim 0 is refused: %s", err);
    /* every demo caption is told apart from every other */
    static float caps[40][L * D];
    int lens[40];
    for (int k = 0; k < 40; k++) {
        char cap[64];
        video_clip_caption(k / 4, k % 4, cap, sizeof cap);
        text_encoder_encode(cap, D, L, seed, caps[k], &lens[k], err, sizeof err);
    }
    double closest = 1e9;
    for (int i = 0; i < 40; i++)
        for (int j = i + 1; j < 40; j++) closest = fmin(closest, max_abs_diff(caps[i], caps[j], L * D));
    CHECK(closest > 0.1, "text encoder: the 40 demo captions are pairwise distinct (closest pair differs by %.3g)",
          closest);
}

/* --------------------------------------------------------------------------------------------- demo clips */

static int parse_direction(const char *caption) {
    const char *m = strstr(caption, " moving ");
    if (!m) return -1;
    for (int d = 0; d < 4; d++)
        if (!strcmp(m + 8, video_direction_names[d])) return d;
    return -1;
}

/* Centre of mass of a frame, weights x + 1 (the background is -1). */
static void centroid(const float *fr, int size, double *cx, double *cy) {
    double m = 0, sx = 0, sy = 0;
    for (int y = 0; y < size; y++)
        for (int x = 0; x < size; x++) {
            double v = fr[y * size + x] + 1.0;
            m += v, sx += v * x, sy += v * y;
        }
    *cx = m > 0 ? sx / m : -1, *cy = m > 0 ? sy / m : -1;
}

static void test_clips(void) {
    enum { N = 64, F = 8, S = 32, TL = 8, TD = 16 };
    video_dataset a, b, c;
    char err[1024];
    int rc = video_dataset_clips(&a, NULL, N, F, S, TL, TD, g_seed, err, sizeof err);
    CHECK(rc == 0, "clips: %d clips of %d frames %dx%d%s%s", N, F, S, S, rc ? ": " : "", rc ? err : "");
    if (rc) return;
    CHECK(a.n == N && a.c == 1 && a.t == F && a.h == S && a.w == S && a.text_len == TL && a.text_dim == TD,
          "clips: shape [%d, %d, %d, %d, %d], text [%d, %d]", a.n, a.c, a.t, a.h, a.w, a.text_len, a.text_dim);
    video_dataset_clips(&b, NULL, N, F, S, TL, TD, g_seed, err, sizeof err);
    size_t lat = (size_t)N * F * S * S, txt = (size_t)N * TL * TD;
    int same = !memcmp(a.latents, b.latents, lat * 4) && !memcmp(a.text, b.text, txt * 4) &&
               !memcmp(a.text_lens, b.text_lens, N * sizeof(int));
    for (int i = 0; i < N; i++) same &= !strcmp(a.captions[i], b.captions[i]);
    CHECK(same, "clips: the same seed gives the same clips, captions and embeddings");
    video_dataset_clips(&c, NULL, N, F, S, TL, TD, g_seed + 1, err, sizeof err);
    int ndiff = 0;
    for (int i = 0; i < N; i++)
        ndiff +=
            memcmp(a.latents + (size_t)i * F * S * S, c.latents + (size_t)i * F * S * S, (size_t)F * S * S * 4) != 0;
    CHECK(ndiff > N / 2, "clips: another seed moves the garments differently (%d of %d clips differ)", ndiff, N);
    video_dataset_free(&b);
    video_dataset_free(&c);

    uint8_t *img, *lab;
    int cnt;
    fmnist_load(FMNIST_DEFAULT_DIR, 1, N, &img, &lab, &cnt, err, sizeof err);
    int cap_ok = 1, range_ok = 1, moves_ok = 1, shift_ok = 1, text_ok = 1, mass_ok = 1, dirs[4] = {0};
    for (int i = 0; i < N; i++) {
        int d = parse_direction(a.captions[i]);
        char want[64];
        video_clip_caption(lab[i], d, want, sizeof want);
        if (d < 0 || strcmp(want, a.captions[i])) {
            if (cap_ok) printf("# clip %d: caption '%s', expected '%s'\n", i, a.captions[i], want);
            cap_ok = 0;
            continue;
        }
        dirs[d]++;
        const float *clip = a.latents + (size_t)i * F * S * S;
        for (size_t e = 0; e < (size_t)F * S * S; e++) range_ok &= clip[e] >= -1.0f && clip[e] <= 1.0f;
        /* each frame is the previous one shifted by a constant whole number of pixels in the captioned direction */
        int dx = d == VIDEO_DIR_LEFT    ? -1
                 : d == VIDEO_DIR_RIGHT ? 1
                                        : 0,
            dy = d == VIDEO_DIR_UP ? -1 : d == VIDEO_DIR_DOWN;
        double x0, y0, x1, y1;
        centroid(clip, S, &x0, &y0);
        int step = -1;
        for (int f = 1; f < F; f++) {
            centroid(clip + (size_t)f * S * S, S, &x1, &y1);
            double along = (x1 - x0) * dx + (y1 - y0) * dy, across = fabs((x1 - x0) * dy) + fabs((y1 - y0) * dx);
            if (!(along >= 0.99 && across < 1e-6)) moves_ok = 0;
            int st = (int)lround(along);
            if (step < 0) step = st;
            const float *p = clip + (size_t)(f - 1) * S * S, *q = clip + (size_t)f * S * S;
            for (int y = 0; y < S; y++)
                for (int x = 0; x < S; x++) {
                    int ys = y - dy * step, xs = x - dx * step;
                    float want_v = ys >= 0 && ys < S && xs >= 0 && xs < S ? p[ys * S + xs] : -1.0f;
                    if (q[y * S + x] != want_v) shift_ok = 0;
                }
            x0 = x1, y0 = y1;
        }
        /* area averaging keeps the garment's mass: frame sum = image sum x (16/28)^2, to 8-bit rounding */
        double fsum = 0, isum = 0;
        for (int e = 0; e < S * S; e++) fsum += (clip[e] + 1.0) * 127.5;
        for (int e = 0; e < 28 * 28; e++) isum += img[(size_t)i * 784 + e];
        if (fabs(fsum - isum * (16.0 * 16.0) / (28.0 * 28.0)) > 0.5 * 16 * 16 + 1) mass_ok = 0;
        float emb[TL * TD];
        int el;
        text_encoder_encode(a.captions[i], TD, TL, g_seed, emb, &el, err, sizeof err);
        text_ok &= el == a.text_lens[i] && !memcmp(emb, a.text + (size_t)i * TL * TD, sizeof emb);
    }
    CHECK(cap_ok, "clips: captions are 'a <class> moving <direction>' of each image's Fashion-MNIST label");
    CHECK(range_ok, "clips: pixels in [-1, 1]");
    CHECK(moves_ok, "clips: the garment's centre of mass moves >= 1 pixel a frame in the captioned direction, and "
                    "not across it");
    CHECK(shift_ok, "clips: every frame is the previous one shifted by a constant step (the garment stays inside)");
    CHECK(mass_ok, "clips: the 16x16 garment keeps the 28x28 image's mass (area averaging)");
    CHECK(text_ok, "clips: text embeddings are the text encoder's for the caption, with its length");
    CHECK(dirs[0] && dirs[1] && dirs[2] && dirs[3], "clips: all four directions occur (%d %d %d %d)", dirs[0], dirs[1],
          dirs[2], dirs[3]);
    video_dataset_free(&a);

    /* a canvas of 64: the garment keeps its 28 pixels; the first frame holds the image itself */
    rc = video_dataset_clips(&a, NULL, 3, 4, 64, 8, 8, g_seed, err, sizeof err);
    int exact = rc == 0;
    for (int i = 0; exact && i < 3; i++) {
        double fsum = 0, isum = 0;
        for (int e = 0; e < 64 * 64; e++) fsum += (a.latents[(size_t)i * 4 * 64 * 64 + e] + 1.0) * 127.5;
        for (int e = 0; e < 784; e++) isum += img[(size_t)i * 784 + e];
        exact &= fabs(fsum - isum) < 0.01;
    }
    CHECK(exact, "clips: on a 64x64 canvas the garment is the 28x28 image itself");
    video_dataset_free(&a);
    free(img), free(lab);

    CHECK(video_dataset_clips(&a, NULL, 4, 1, 32, 8, 8, 1, err, sizeof err) != 0 && strstr(err, "frames"),
          "clips: one frame is refused: %s", err);
    CHECK(video_dataset_clips(&a, NULL, 4, 40, 32, 8, 8, 1, err, sizeof err) != 0 && strstr(err, "too small"),
          "clips: 40 frames on a 32 canvas are refused: %s", err);
    CHECK(video_dataset_clips(&a, test_path("%s/nowhere", g_dir), 4, 4, 32, 8, 8, 1, err, sizeof err) != 0 &&
              strstr(err, "nowhere"),
          "clips: a missing Fashion-MNIST folder is named: %s", err);
}

/* ----------------------------------------------------------------------------------------- safetensors folder */

static uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16); /* truncation: the test keeps the truncated value as the reference */
}
static float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* Half floats for values that are exactly representable (multiples of 1/256 below 8 in magnitude, or 0): sign,
 * rebiased exponent, top 10 mantissa bits. */
static float f16_exact(float v) {
    v = (float)(round(v * 256.0) / 256.0);
    return v > 7.9f ? 7.9f : v < -7.9f ? -7.9f : v;
}
static uint16_t to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if (!(u & 0x7fffffffu)) return (uint16_t)(u >> 16);
    uint32_t exp = ((u >> 23) & 0xffu) - 127u + 15u;
    return (uint16_t)(((u >> 16) & 0x8000u) | exp << 10 | ((u >> 13) & 0x3ffu));
}
static float from_f16(uint16_t h) {
    if (!(h & 0x7fffu)) return h ? -0.0f : 0.0f;
    uint32_t u =
        (uint32_t)(h & 0x8000u) << 16 | (((h >> 10) & 0x1fu) - 15u + 127u) << 23 | (uint32_t)(h & 0x3ffu) << 13;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

typedef struct {
    const char *name;
    st_dtype ldt, tdt;
    int lat_lead, txt_lead;
    int rows, valid;      /* rows stored, rows non-zero */
    const char *text_len; /* metadata, or NULL */
    const char *caption;
    float lat[2 * 3 * 4 * 5], txt[9 * 8]; /* reference values (after the dtype's rounding) */
} folder_sample;

static void write_sample(const char *dir, folder_sample *s) {
    enum { C = 2, T = 3, H = 4, W = 5, D = 8 };
    size_t ln = C * T * H * W, tn = (size_t)s->rows * D;
    void *lbuf = malloc(ln * 8), *tbuf = malloc(tn * 8 + 8);
    for (size_t e = 0; e < ln; e++) {
        float v = test_randn();
        if (s->ldt == ST_BF16)
            ((uint16_t *)lbuf)[e] = to_bf16(v), v = from_bf16(((uint16_t *)lbuf)[e]);
        else if (s->ldt == ST_F16)
            ((uint16_t *)lbuf)[e] = to_f16(f16_exact(v)), v = from_f16(((uint16_t *)lbuf)[e]);
        else
            ((float *)lbuf)[e] = v;
        s->lat[e] = v;
    }
    for (size_t e = 0; e < tn; e++) {
        float v = (int)(e / D) < s->valid ? test_randn() : 0.0f;
        if (s->tdt == ST_BF16)
            ((uint16_t *)tbuf)[e] = to_bf16(v), v = from_bf16(((uint16_t *)tbuf)[e]);
        else if (s->tdt == ST_F64)
            ((double *)tbuf)[e] = v;
        else
            ((float *)tbuf)[e] = v;
        s->txt[e] = v;
    }
    int64_t ls[5] = {1, C, T, H, W}, ts[3] = {1, s->rows, D};
    st_writer *w = st_writer_new();
    st_writer_add(w, "video_latents", s->ldt, 4 + s->lat_lead, ls + !s->lat_lead, lbuf);
    st_writer_add(w, "text_embeddings", s->tdt, 2 + s->txt_lead, ts + !s->txt_lead, tbuf);
    if (s->text_len) st_writer_meta(w, "text_len", s->text_len);
    if (s->caption) st_writer_meta(w, "caption", s->caption);
    st_writer_finish(w, test_path("%s/%s.safetensors", dir, s->name));
    free(lbuf), free(tbuf);
}

/* Write one file with the given tensors (shapes and dtypes), F32 zero data. */
static void write_raw(const char *path, const char *n1, st_dtype d1, int nd1, const int64_t *s1, const char *n2,
                      st_dtype d2, int nd2, const int64_t *s2) {
    static double zeros[4096];
    st_writer *w = st_writer_new();
    if (n1) st_writer_add(w, n1, d1, nd1, s1, zeros);
    if (n2) st_writer_add(w, n2, d2, nd2, s2, zeros);
    st_writer_finish(w, path);
}

static void test_folder(void) {
    const char *dir = xstrdup(test_path("%s/folder", g_dir));
    test_sh("mkdir -p %s", dir);
    static folder_sample s[3] = {
        {"a_f32", ST_F32, ST_F32, 0, 0, 6, 4, NULL, NULL, {0}, {0}}, /* padded text, length from zeros */
        {"b_bf16", ST_BF16, ST_BF16, 1, 1, 3, 3, "2", "a dress moving up", {0}, {0}}, /* [1, ...], text_len 2 */
        {"c_f16", ST_F16, ST_F64, 0, 0, 9, 9, NULL, "nine words", {0}, {0}},          /* unpadded text, the longest */
    };
    for (int i = 0; i < 3; i++) write_sample(dir, &s[i]);
    video_dataset vd;
    char err[1024];
    int rc = video_dataset_folder(&vd, dir, 0, err, sizeof err);
    CHECK(rc == 0, "folder: 3 samples read%s%s", rc ? ": " : "", rc ? err : "");
    if (rc) return;
    CHECK(vd.n == 3 && vd.c == 2 && vd.t == 3 && vd.h == 4 && vd.w == 5 && vd.text_dim == 8 && vd.text_len == 9,
          "folder: latents [2, 3, 4, 5], text padded to the longest, 9 x 8 (got %d x %d)", vd.text_len, vd.text_dim);
    int want_len[3] = {4, 2, 9}, lat_ok = 1, txt_ok = 1, len_ok = 1;
    for (int i = 0; i < 3; i++) {
        lat_ok &= !memcmp(vd.latents + (size_t)i * 120, s[i].lat, 120 * 4);
        len_ok &= vd.text_lens[i] == want_len[i];
        const float *t = vd.text + (size_t)i * 9 * 8;
        for (int e = 0; e < 9 * 8; e++) txt_ok &= t[e] == (e / 8 < want_len[i] ? s[i].txt[e] : 0.0f);
    }
    CHECK(lat_ok, "folder: latents equal what was written (F32, BF16 [1, C, T, H, W], F16)");
    CHECK(len_ok, "folder: text lengths %d %d %d (last non-zero row + 1; metadata text_len; all rows)", vd.text_lens[0],
          vd.text_lens[1], vd.text_lens[2]);
    CHECK(txt_ok, "folder: text rows equal what was written (F32, BF16 [1, L, D], F64), zero past the length");
    CHECK(!vd.captions[0] && vd.captions[1] && !strcmp(vd.captions[1], "a dress moving up") &&
              !strcmp(vd.captions[2], "nine words"),
          "folder: captions from metadata, NULL where there is none");
    video_dataset_free(&vd);
    rc = video_dataset_folder(&vd, dir, 12, err, sizeof err);
    CHECK(rc == 0 && vd.text_len == 12 && vd.text_lens[2] == 9, "folder: text_len 12 pads every sample to 12 rows");
    video_dataset_free(&vd);
    rc = video_dataset_folder(&vd, dir, 5, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "c_f16.safetensors") && strstr(err, "9 valid rows"),
          "folder: text_len 5 with a 9-word sample is refused naming it: %s", err);

    /* errors name the file, the tensor and the shape */
    const char *bad = xstrdup(test_path("%s/bad", g_dir));
    int64_t l4[4] = {2, 3, 4, 5}, l3[3] = {2, 3, 4}, t2[2] = {3, 8}, t2w[2] = {3, 7}, l5[5] = {2, 2, 3, 4, 5};
    struct {
        const char *what, *n1;
        st_dtype d1;
        int nd1;
        const int64_t *s1;
        const char *n2;
        st_dtype d2;
        int nd2;
        const int64_t *s2;
        const char *needle1, *needle2;
    } cases[] = {
        {"a missing text tensor", "video_latents", ST_F32, 4, l4, NULL, ST_F32, 0, NULL, "text_embeddings",
         "it holds: video_latents"},
        {"latents of 3 dims", "video_latents", ST_F32, 3, l3, "text_embeddings", ST_F32, 2, t2, "[2, 3, 4]",
         "[C, T, H, W]"},
        {"latents [2, ...] of 5 dims", "video_latents", ST_F32, 5, l5, "text_embeddings", ST_F32, 2, t2,
         "[2, 2, 3, 4, 5]", "[1, C, T, H, W]"},
        {"integer latents", "video_latents", ST_I32, 4, l4, "text_embeddings", ST_F32, 2, t2, "I32", "float"},
        {"another text width", "video_latents", ST_F32, 4, l4, "text_embeddings", ST_F32, 2, t2w, "D = 7",
         "a_f32.safetensors"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        test_sh("rm -rf %s && mkdir -p %s && cp %s/a_f32.safetensors %s/", bad, bad, dir, bad);
        write_raw(test_path("%s/z.safetensors", bad), cases[k].n1, cases[k].d1, cases[k].nd1, cases[k].s1, cases[k].n2,
                  cases[k].d2, cases[k].nd2, cases[k].s2);
        rc = video_dataset_folder(&vd, bad, 0, err, sizeof err);
        CHECK(rc != 0 && strstr(err, "z.safetensors") && strstr(err, cases[k].needle1) && strstr(err, cases[k].needle2),
              "folder: %s is refused: %s", cases[k].what, err);
    }
    test_sh("rm -rf %s && mkdir -p %s && cp %s/a_f32.safetensors %s/", bad, bad, dir, bad);
    folder_sample m = {"m", ST_F32, ST_F32, 0, 0, 3, 3, "4", NULL, {0}, {0}};
    write_sample(bad, &m);
    rc = video_dataset_folder(&vd, bad, 0, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "m.safetensors") && strstr(err, "text_len '4'"),
          "folder: metadata text_len beyond the rows is refused: %s", err);
    test_sh("rm -rf %s && mkdir -p %s", bad, bad);
    rc = video_dataset_folder(&vd, bad, 0, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "no .safetensors"), "folder: an empty folder is refused: %s", err);
    rc = video_dataset_folder(&vd, test_path("%s/absent", g_dir), 0, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "absent"), "folder: a missing folder is named: %s", err);
    free((void *)bad);
    free((void *)dir);
}

/* ------------------------------------------------------------------------------------------------ loader order */

enum { ON = 23, OB = 6 };

/* A video dataset whose sample i is recognisable: latents (i, -i), text rows i, length 1 + i % 3. */
static void order_dataset(video_dataset *vd) {
    memset(vd, 0, sizeof *vd);
    vd->n = ON, vd->c = 1, vd->t = 1, vd->h = 1, vd->w = 2, vd->text_len = 3, vd->text_dim = 2;
    vd->latents = xalloc_floats(ON * 2);
    vd->text = xalloc_floats(ON * 6);
    vd->text_lens = xcalloc(ON, sizeof(int));
    for (int i = 0; i < ON; i++) {
        vd->latents[2 * i] = (float)i, vd->latents[2 * i + 1] = (float)-i;
        vd->text_lens[i] = 1 + i % 3;
        for (int r = 0; r < vd->text_lens[i]; r++)
            vd->text[i * 6 + 2 * r] = (float)i, vd->text[i * 6 + 2 * r + 1] = (float)r;
    }
}

/* Batches of sample ids (and a consistency check of each sample's text) from a video loader. */
static int video_ids(video_loader *l, const video_dataset *vd, int count, int nb, int *ids) {
    float lat[OB * 2], txt[OB * 6];
    int lens[OB], ok = 1;
    for (int it = 0; it < nb; it++) {
        video_loader_next(l, lat, txt, lens);
        for (int k = 0; k < count; k++) {
            int i = (int)lat[2 * k];
            ids[it * count + k] = i;
            ok &= i >= 0 && i < vd->n && lat[2 * k + 1] == -i && lens[k] == vd->text_lens[i] &&
                  !memcmp(txt + 6 * k, vd->text + 6 * i, 6 * sizeof(float));
        }
    }
    return ok;
}

static void test_loader_order(void) {
    video_dataset vd;
    order_dataset(&vd);
    image_dataset ds = {0};
    ds.n = ON, ds.c = 1, ds.h = 1, ds.w = 1;
    ds.pixels = calloc(ON, 1);
    ds.labels = malloc(sizeof(int) * ON);
    for (int i = 0; i < ON; i++) ds.labels[i] = i;
    int *idx, n_idx, *val;
    split_indices(ON, 4, g_seed, &idx, &n_idx, &val); /* a subset in a shuffled order, as the trainer passes */
    enum { NB = 14 };
    uint64_t seed = g_seed * 7 + 3;

    int want[NB * OB];
    data_loader *dl = loader_new(&ds, idx, n_idx, seed, OB, 0, 10);
    float x[OB];
    int lab[OB];
    for (int it = 0; it < NB; it++) {
        loader_next(dl, x, lab);
        memcpy(want + it * OB, lab, sizeof lab);
    }
    loader_free(dl);
    for (int workers = 0; workers < 2; workers++) {
        int got[NB * OB];
        video_loader *vl = video_loader_new(&vd, idx, n_idx, seed, OB, workers);
        int ok = video_ids(vl, &vd, OB, NB, got);
        CHECK(ok && !memcmp(got, want, sizeof got),
              "video loader (%d workers): the same samples in the same order as data_loader over %d batches (%d "
              "epochs), each with its own text",
              workers, NB, NB * OB / n_idx);
        video_loader_free(vl);
    }
    /* state: stop after 5 batches, resume in a fresh loader, threaded or not */
    for (int workers = 0; workers < 2; workers++) {
        video_loader *a = video_loader_new(&vd, idx, n_idx, seed, OB, workers);
        int got[NB * OB];
        video_ids(a, &vd, OB, 5, got);
        char *st = video_loader_state_save(a);
        video_loader_free(a);
        video_loader *b = video_loader_new(&vd, idx, n_idx, seed, OB, 1 - workers);
        char err[512];
        int rc = video_loader_state_restore(b, st, err, sizeof err);
        video_ids(b, &vd, OB, NB - 5, got + 5 * OB);
        CHECK(rc == 0 && !memcmp(got, want, sizeof got),
              "video loader: state %s saved after 5 batches (%d workers) resumes exactly (%d workers)", st, workers,
              1 - workers);
        video_loader_free(b);
        video_loader *c = video_loader_new(&vd, idx, n_idx, seed + 1, OB, 0);
        rc = video_loader_state_restore(c, st, err, sizeof err);
        CHECK(rc != 0 && strstr(err, "seed"), "video loader: a state of another seed is refused: %s", err);
        video_loader_free(c);
        free(st);
    }
    {
        data_loader *d = loader_new(&ds, idx, n_idx, seed, OB, 0, 10);
        char *st = loader_state_save(d), err[512];
        video_loader *v = video_loader_new(&vd, idx, n_idx, seed, OB, 0);
        int rc = video_loader_state_restore(v, st, err, sizeof err);
        CHECK(rc != 0 && strstr(err, "video"), "video loader: an image loader's state is refused: %s", err);
        free(st);
        loader_free(d);
        video_loader_free(v);
    }
    /* data-parallel ranks: their slices of every batch concatenate to the whole batch */
    for (int dp = 2; dp <= 3; dp++) {
        int got[NB * OB], per = OB / dp, ok = 1;
        for (int r = 0; r < dp; r++) {
            video_loader *l = video_loader_new(&vd, idx, n_idx, seed, OB, r % 2);
            video_loader_set_slice(l, r * per, per);
            int part[NB * OB];
            ok &= video_ids(l, &vd, per, NB, part);
            for (int it = 0; it < NB; it++) memcpy(got + it * OB + r * per, part + it * per, sizeof(int) * per);
            video_loader_free(l);
        }
        CHECK(ok && !memcmp(got, want, sizeof got),
              "video loader: %d data-parallel slices concatenate to the full "
              "batches",
              dp);
    }
    free(idx), free(val), free(ds.pixels), free(ds.labels);
    video_dataset_free(&vd);
}

/* ------------------------------------------------------------------------------------------------ buckets */

enum { BN = 17, BL = 2 };
static const int bshapes[3][4] = {{1, 1, 1, 2}, {1, 1, 2, 2}, {1, 2, 1, 2}}; /* sample i: bshapes[(i * 7) % 3] */

/* A dataset of three latent shapes; every value of sample i's latents is i, its text row 0 holds (i, 0). */
static void bucket_dataset(video_dataset *vd) {
    memset(vd, 0, sizeof *vd);
    vd->n = BN, vd->c = 1, vd->t = 2, vd->h = 1, vd->w = 2, vd->text_len = 3, vd->text_dim = 2;
    vd->shapes = xmalloc(sizeof(int) * 4 * BN);
    vd->offsets = xmalloc(sizeof(size_t) * BN);
    vd->text = xalloc_floats(BN * 6);
    vd->text_lens = xcalloc(BN, sizeof(int));
    size_t off = 0;
    for (int i = 0; i < BN; i++) {
        memcpy(vd->shapes + 4 * i, bshapes[(i * 7) % 3], sizeof(int) * 4);
        vd->offsets[i] = off;
        off += 4;
        vd->text[6 * i] = (float)i, vd->text_lens[i] = 1;
    }
    vd->latents = xalloc_floats(off);
    for (int i = 0; i < BN; i++) {
        int sh[4];
        float *p = (float *)video_dataset_sample(vd, i, sh);
        for (int k = 0; k < sh[0] * sh[1] * sh[2] * sh[3]; k++) p[k] = (float)i;
    }
}

/* One step of a bucketed loader: ids of its samples (slot after slot) and 1 when every sample has the returned
 * shape, its own latents and text. */
static int bucket_step(video_loader *l, const video_dataset *vd, int slots, int *ids, int *count, int shape[4]) {
    float lat[8 * BL * 4], txt[8 * BL * 6];
    int lens[8 * BL], ok = 1;
    video_loader_next_step(l, lat, txt, lens, count, shape, ids);
    size_t per = (size_t)shape[0] * shape[1] * shape[2] * shape[3];
    for (int k = 0; k < slots * *count; k++) {
        int sh[4];
        video_dataset_sample(vd, ids[k], sh);
        ok &= !memcmp(sh, shape, sizeof sh) && lat[k * per] == ids[k] && lat[k * per + per - 1] == ids[k] &&
              txt[6 * k] == ids[k];
    }
    return ok;
}

static void test_loader_buckets(void) {
    video_dataset vd;
    bucket_dataset(&vd);
    CHECK(video_dataset_nshapes(&vd) == 3, "a dataset of %d samples in %d latent shapes", BN,
          video_dataset_nshapes(&vd));
    int *idx, n_idx, *val;
    split_indices(BN, 3, g_seed, &idx, &n_idx, &val);
    uint64_t seed = g_seed * 5 + 1;
    char err[512];
    /* one slot, no drop: every training sample once an epoch, one shape a batch; the next epoch reshuffles */
    int order[2][BN], n_in[2] = {0, 0};
    for (int shuffle = 1; shuffle >= 0; shuffle--) {
        video_loader *l = video_loader_new_buckets(&vd, idx, n_idx, seed, BL, 0, 1, 1, shuffle, 0, err, sizeof err);
        int nb = video_loader_batches_per_epoch(l), ok = 1, seen[BN] = {0}, e1[BN], n1 = 0, changes = 0, prev[4] = {0};
        for (int e = 0; e < 2; e++)
            for (int b = 0; b < nb; b++) {
                int ids[BL], count, sh[4];
                ok &= bucket_step(l, &vd, 1, ids, &count, sh);
                if (b > 0 && memcmp(sh, prev, sizeof sh)) changes++;
                memcpy(prev, sh, sizeof sh);
                for (int k = 0; k < count; k++) {
                    if (e == 0)
                        seen[ids[k]]++, order[shuffle][n_in[shuffle]++] = ids[k];
                    else
                        e1[n1++] = ids[k];
                }
            }
        for (int i = 0; i < n_idx; i++) ok &= seen[idx[i]] == 1;
        CHECK(ok && n_in[shuffle] == n_idx && n1 == n_idx && changes == 2 * 2,
              "buckets (shuffle %d): %d batches an epoch of one shape each, buckets visited one after another, every "
              "training sample once",
              shuffle, nb);
        if (shuffle)
            CHECK(memcmp(order[1], e1, sizeof(int) * n_idx) != 0, "buckets: the second epoch is reshuffled");
        else {
            int sorted = 1;
            for (int k = 1; k < n_idx; k++) {
                const int *a = vd.shapes + 4 * order[0][k - 1], *b = vd.shapes + 4 * order[0][k];
                int c = memcmp(a, b, sizeof(int) * 4) ? 0 : 2;
                for (int d = 0; d < 4 && !c; d++) c = a[d] < b[d] ? 2 : a[d] > b[d] ? 1 : 0;
                sorted &= c == 2 && (memcmp(a, b, sizeof(int) * 4) || order[0][k - 1] < order[0][k]);
            }
            CHECK(sorted && !memcmp(order[0], e1, sizeof(int) * n_idx),
                  "buckets, shuffle false: shapes in order, samples in index order, the same every epoch");
        }
        video_loader_free(l);
    }
    /* 4 slots (2 ranks x 2 micro-batches) walk the same samples as 1 rank's 4 slots; a state saved after 3 steps
     * resumes exactly; another slot count or batch size is refused */
    enum { SL = 4, NS = 9 };
    int want[NS * SL * BL], got[NS * SL * BL], counts[NS], ok = 1;
    video_loader *all = video_loader_new_buckets(&vd, idx, n_idx, seed, BL, 0, SL, SL, 1, 1, err, sizeof err);
    for (int s = 0; s < NS; s++) {
        int sh[4];
        ok &= bucket_step(all, &vd, SL, want + s * SL * BL, &counts[s], sh) && counts[s] == BL;
    }
    video_loader_free(all);
    char *st = NULL;
    for (int r = 0; r < 2; r++) {
        video_loader *l = video_loader_new_buckets(&vd, idx, n_idx, seed, BL, r * 2, 2, SL, 1, 1, err, sizeof err);
        for (int s = 0; s < NS; s++) {
            if (s == 3 && r == 1) { /* rank 1 resumes from a saved state */
                char *mine = video_loader_state_save(l);
                video_loader_free(l);
                l = video_loader_new_buckets(&vd, idx, n_idx, seed, BL, r * 2, 2, SL, 1, 1, err, sizeof err);
                ok &= video_loader_state_restore(l, mine, err, sizeof err) == 0;
                if (!st)
                    st = mine;
                else
                    free(mine);
            }
            int ids[2 * BL], count, sh[4];
            ok &= bucket_step(l, &vd, 2, ids, &count, sh) && count == counts[s];
            memcpy(got + s * SL * BL + r * 2 * count, ids, sizeof(int) * 2 * count);
        }
        video_loader_free(l);
    }
    CHECK(ok && !memcmp(got, want, sizeof got),
          "buckets: 2 ranks x 2 slots deal the samples of 1 rank x 4 slots, step for step (drop_last; one resumed "
          "after 3 steps from %s)",
          st ? st : "?");
    video_loader *other = video_loader_new_buckets(&vd, idx, n_idx, seed, BL, 0, 2, 2, 1, 1, err, sizeof err);
    int rc = video_loader_state_restore(other, st, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "data-parallel size 4, now 2"), "buckets: a state of another slot count: %s", err);
    video_loader_free(other);
    other = video_loader_new_buckets(&vd, idx, n_idx, seed, 1, 0, 4, 4, 1, 1, err, sizeof err);
    rc = video_loader_state_restore(other, st, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "local batch size 2, now 1"), "buckets: a state of another batch size: %s", err);
    video_loader_free(other);
    other = video_loader_new(&vd, idx, n_idx, seed, BL, 0);
    rc = video_loader_state_restore(other, st, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "bucketed"), "buckets: a single-shape loader refuses a bucketed state: %s", err);
    video_loader_free(other);
    other = video_loader_new_buckets(&vd, idx, n_idx, seed, 8, 0, 4, 4, 1, 1, err, sizeof err);
    CHECK(!other && strstr(err, "no batch"), "buckets: a batch no bucket fills with drop_last: %s", err);
    free(st), free(idx), free(val);
    video_dataset_free(&vd);
}

/* ------------------------------------------------------------------------------------------------ energon */

/* Run fn in a child process whose dfm_die output lands in a file; 1 if the child failed with needle1 and needle2 in
 * its message (printed). */
static int dies_with(void (*fn)(void *), void *ctx, const char *needle1, const char *needle2) {
    const char *log = test_path("%s/die.txt", g_dir);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 2);
        close(fd);
        dfm_set_die_hook("", _exit); /* no atexit / leak report in the child */
        fn(ctx);
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    char *msg = test_read_file(log, NULL);
    int ok = WIFEXITED(st) && WEXITSTATUS(st) != 0 && msg && strstr(msg, needle1) && strstr(msg, needle2);
    if (msg) {
        char *nl = strchr(msg, '\n');
        if (nl) *nl = 0;
        printf("# child said: %s\n", msg);
    }
    free(msg);
    return ok;
}

typedef struct {
    const char *path;
    int c, text_len;
} open_args;

static void open_and_read(void *p) {
    open_args *a = p;
    char err[1024];
    video_loader *l =
        video_loader_new_energon(a->path, "train", 1, 4, 0, a->c, 4, 16, 16, a->text_len, 16, err, sizeof err);
    if (!l) dfm_die("%s", err);
    static float lat[4 * 2 * 4 * 16 * 16], txt[4 * 8 * 16];
    int lens[4];
    for (int i = 0; i < 20; i++) video_loader_next(l, lat, txt, lens);
}

static void open_pickles(void *p) { /* the shapes of make_video_pickles.py */
    open_args *a = p;
    char err[1024];
    video_loader *l =
        video_loader_new_energon(a->path, "train", 1, 1, 0, a->c, 3, 4, 4, a->text_len, 8, err, sizeof err);
    if (!l) dfm_die("%s", err);
    float lat[2 * 3 * 4 * 4], txt[6 * 8];
    int lens[1];
    video_loader_next(l, lat, txt, lens);
}

static void test_energon_clips(void) {
    enum { N = 30, F = 4, S = 16, TL = 8, TD = 16, B = 4 };
    const char *ds = xstrdup(test_path("%s/clips", g_dir));
    int rc = test_sh("%s data prepare --out %s --video-clips --n %d --frames %d --size %d --text-dim %d --seed %llu "
                     "--maxcount 8 --split 5,1 >/dev/null",
                     test_dfm_bin(), ds, N, F, S, TD, (unsigned long long)g_seed);
    CHECK(rc == 0, "dfm data prepare --video-clips (%d clips, 8 per shard, train/val 5:1) exits 0", N);
    char *out = NULL;
    rc = test_capture(test_path("%s data inspect %s", test_dfm_bin(), ds), &out);
    CHECK(rc == 0 && strstr(out, "latents.npy") && strstr(out, "[1, 4, 16, 16]") && strstr(out, "moving"),
          "dfm data inspect shows the latents [1, 4, 16, 16] and the caption");
    free(out);
    video_dataset vd;
    char err[1024];
    rc = video_dataset_clips(&vd, NULL, N, F, S, TL, TD, g_seed, err, sizeof err);
    video_loader *l = video_loader_new_energon(ds, "train", g_seed, B, 1, 1, F, S, S, TL, TD, err, sizeof err);
    CHECK(rc == 0 && l, "energon video loader opens the prepared clips%s%s", l ? "" : ": ", l ? "" : err);
    if (rc || !l) return;
    size_t ln = (size_t)F * S * S, tn = (size_t)TL * TD;
    float *lat = xalloc_floats(B * ln), *txt = xalloc_floats(B * tn);
    int lens[B], matched = 0, total = 0, seen[N] = {0};
    for (int it = 0; it < 30; it++) {
        video_loader_next(l, lat, txt, lens);
        for (int k = 0; k < B; k++, total++)
            for (int i = 0; i < N; i++)
                if (!memcmp(lat + k * ln, vd.latents + i * ln, ln * 4)) {
                    matched += lens[k] == vd.text_lens[i] && !memcmp(txt + k * tn, vd.text + i * tn, tn * 4);
                    seen[i] = 1;
                    break;
                }
    }
    int nseen = 0, val_seen = 0;
    for (int i = 0; i < N; i++) nseen += seen[i], val_seen += i >= 25 && seen[i];
    CHECK(matched == total && nseen >= 20 && !val_seen,
          "energon video loader: %d of %d samples equal an in-memory clip (latents, text, length); %d distinct "
          "training clips seen, none of validation",
          matched, total, nseen);
    /* state: save after 3 batches, resume in a fresh reader */
    char *st = video_loader_state_save(l);
    float *ref = xalloc_floats(3 * B * ln), *again = xalloc_floats(3 * B * ln);
    for (int it = 0; it < 3; it++) video_loader_next(l, ref + it * B * ln, txt, lens);
    video_loader *r = video_loader_new_energon(ds, "train", g_seed, B, 0, 1, F, S, S, TL, TD, err, sizeof err);
    rc = video_loader_state_restore(r, st, err, sizeof err);
    for (int it = 0; it < 3; it++) video_loader_next(r, again + it * B * ln, txt, lens);
    CHECK(rc == 0 && !memcmp(ref, again, 3 * B * ln * 4), "energon video loader: a saved state resumes exactly");
    video_loader_free(r);
    free(st);
    video_loader_free(l);
    /* data-parallel slices of an Energon stream */
    l = video_loader_new_energon(ds, "train", g_seed + 5, B, 0, 1, F, S, S, TL, TD, err, sizeof err);
    video_loader *r0 = video_loader_new_energon(ds, "train", g_seed + 5, B, 0, 1, F, S, S, TL, TD, err, sizeof err);
    video_loader *r1 = video_loader_new_energon(ds, "train", g_seed + 5, B, 1, 1, F, S, S, TL, TD, err, sizeof err);
    video_loader_set_slice(r0, 0, 1);
    video_loader_set_slice(r1, 1, 3);
    int slices_ok = 1;
    float *part = xalloc_floats(B * ln), *ptxt = xalloc_floats(B * tn);
    int plens[B];
    for (int it = 0; it < 8; it++) {
        video_loader_next(l, lat, txt, lens);
        video_loader_next(r0, part, ptxt, plens);
        slices_ok &= !memcmp(part, lat, ln * 4) && !memcmp(ptxt, txt, tn * 4) && plens[0] == lens[0];
        video_loader_next(r1, part, ptxt, plens);
        slices_ok &= !memcmp(part, lat + ln, 3 * ln * 4) && !memcmp(ptxt, txt + tn, 3 * tn * 4) &&
                     !memcmp(plens, lens + 1, 3 * sizeof(int));
    }
    CHECK(slices_ok, "energon video loader: slices [0, 1) and [1, 4) of two ranks are the full batches' samples");
    video_loader_free(l), video_loader_free(r0), video_loader_free(r1);
    free(lat), free(txt), free(ref), free(again), free(part), free(ptxt);
    video_dataset_free(&vd);

    open_args wrong_c = {ds, 2, TL}, short_text = {ds, 1, 3};
    CHECK(dies_with(open_and_read, &wrong_c, "has shape [1, 4, 16, 16]; expected [2, 4, 16, 16]", "in shard 'shards/"),
          "energon video loader: latents of another shape stop the run naming the sample, shard and shapes");
    CHECK(dies_with(open_and_read, &short_text, "more than the text length 3", "in shard 'shards/"),
          "energon video loader: a caption longer than text_len stops the run naming the sample and shard");
    free((void *)ds);
}

typedef struct {
    char key[16];
    int valid;
    double lat_sum, txt_sum;
} expected_sample;

static void test_energon_pickles(void) {
    if (test_sh("/usr/bin/python3 -c 'import torch, numpy' >/dev/null 2>&1") != 0) {
        printf("FAIL /usr/bin/python3 with torch and numpy is needed for the fixtures (scripts/install-deps.sh "
               "--test)\n");
        return;
    }
    const char *fx = xstrdup(test_path("%s/pk", g_dir));
    int rc = test_sh("/usr/bin/python3 tests/data/make_video_pickles.py %s", fx);
    CHECK(rc == 0, "tests/data/make_video_pickles.py wrote .pth/.pickle and .npy samples");
    /* Energon seeds its order with the dataset's path: both forms are read from the same path in turn */
    rc = test_sh("%s data prepare --out %s/ds --tensors %s/pth --maxcount 5 >/dev/null", test_dfm_bin(), fx, fx);
    CHECK(rc == 0,
          "dfm data prepare --tensors groups the .pth/.pickle/.json files into Energon samples (12, 5 a shard)");
    char *out = NULL;
    test_capture(test_path("%s data inspect %s/ds", test_dfm_bin(), fx), &out);
    CHECK(out && strstr(out, ".pth") && strstr(out, "torch.save (zip): tensor float32 [2, 3, 4, 4]") &&
              strstr(out, "pickle: tensor float32"),
          "dfm data inspect describes .pth and .pickle parts");
    free(out);
    expected_sample ex[12];
    int nex = 0;
    char *txt = test_read_file(test_path("%s/expected.txt", fx), NULL);
    for (char *p = txt; p && *p && nex < 12;) {
        if (sscanf(p, "%15s %d %lf %lf", ex[nex].key, &ex[nex].valid, &ex[nex].lat_sum, &ex[nex].txt_sum) == 4) nex++;
        p = strchr(p, '\n');
        if (!p) break;
        p++;
    }
    free(txt);
    CHECK(nex == 12, "expected.txt lists 12 samples (%d)", nex);
    enum { C = 2, T = 3, H = 4, W = 4, D = 8, TL = 6, B = 3, NB = 20 };
    size_t ln = C * T * H * W, tn = TL * D;
    static float lat[2][NB * B * C * T * H * W], tx[2][NB * B * TL * D];
    static int lens[2][NB * B];
    for (int form = 0; form < 2; form++) {
        if (form == 1) {
            rc = test_sh("rm -rf %s/ds && %s data prepare --out %s/ds --tensors %s/npy --maxcount 5 >/dev/null", fx,
                         test_dfm_bin(), fx, fx);
            CHECK(rc == 0, "dfm data prepare --tensors: the same samples as .npy parts");
        }
        char err[1024];
        video_loader *l = video_loader_new_energon(test_path("%s/ds", fx), "train", g_seed, B, 1 - form, C, T, H, W, TL,
                                                   D, err, sizeof err);
        CHECK(l != NULL, "energon video loader opens the %s dataset%s%s", form ? ".npy" : ".pth/.pickle", l ? "" : ": ",
              l ? "" : err);
        if (!l) return;
        for (int it = 0; it < NB; it++)
            video_loader_next(l, lat[form] + it * B * ln, tx[form] + it * B * tn, lens[form] + it * B);
        video_loader_free(l);
    }
    CHECK(!memcmp(lat[0], lat[1], sizeof lat[0]) && !memcmp(tx[0], tx[1], sizeof tx[0]) &&
              !memcmp(lens[0], lens[1], sizeof lens[0]),
          "energon video loader: .pth/.pickle parts (float32, bfloat16, float16; [1, ...]; legacy torch.save; a "
          "pickled numpy array) give exactly the .npy parts' batches");
    int known = 1, seen[12] = {0}, nseen = 0;
    for (int k = 0; k < NB * B && nex == 12; k++) {
        double ls = 0, ts = 0;
        for (size_t e = 0; e < ln; e++) ls += lat[0][k * ln + e];
        for (size_t e = 0; e < tn; e++) ts += tx[0][k * tn + e];
        int hit = -1;
        for (int i = 0; i < 12 && hit < 0; i++)
            if (fabs(ls - ex[i].lat_sum) < 1e-4 * (1 + fabs(ex[i].lat_sum))) hit = i;
        if (hit < 0 || lens[0][k] != ex[hit].valid || fabs(ts - ex[hit].txt_sum) > 1e-4 * (1 + fabs(ex[hit].txt_sum))) {
            if (known)
                printf("# sample: latents sum %.6g, text length %d, text sum %.6g: not as written\n", ls, lens[0][k],
                       ts);
            known = 0;
        } else
            seen[hit] = 1;
    }
    for (int i = 0; i < 12; i++) nseen += seen[i];
    CHECK(known && nseen >= 8,
          "energon video loader: every sample has PyTorch's sums and valid length (json "
          "text_len or last non-zero row); %d of 12 seen in %d draws",
          nseen, NB * B);

    /* a NaN in a .pth part: the sample is skipped (on every rank alike) and counted */
    rc = test_sh("%s data prepare --out %s/nan_ds --tensors %s/nan >/dev/null && %s data prepare --out %s/dict_ds "
                 "--tensors %s/dict >/dev/null",
                 test_dfm_bin(), fx, fx, test_dfm_bin(), fx, fx);
    char err[1024];
    video_loader *l = rc ? NULL
                         : video_loader_new_energon(test_path("%s/nan_ds", fx), "train", g_seed, 2, 0, C, T, H, W, TL,
                                                    D, err, sizeof err);
    int finite = 1;
    if (l) {
        fflush(stdout);
        int saved = dup(2), devnull = open("/dev/null", O_WRONLY); /* the skip warnings */
        dup2(devnull, 2);
        for (int it = 0; it < 12; it++) {
            video_loader_next(l, lat[0], tx[0], lens[0]);
            for (size_t e = 0; e < 2 * ln; e++) finite &= isfinite(lat[0][e]);
        }
        dup2(saved, 2);
        close(saved), close(devnull);
    }
    int64_t skipped = l ? video_loader_skipped(l) : 0;
    CHECK(l && finite && skipped >= 1,
          "energon video loader: a sample with a NaN in its .pth part is skipped (%lld "
          "times while 24 good ones, 8 epochs' worth, were delivered), never delivered",
          (long long)skipped);
    video_loader_free(l);
    open_args dict = {test_path("%s/dict_ds", fx), C, TL};
    dict.path = xstrdup(dict.path);
    CHECK(dies_with(open_pickles, &dict, "no latents part", "pth (a dict)"),
          "energon video loader: a .pth part holding a dict is not latents; the error lists the sample's parts");
    free((void *)dict.path);
    free((void *)fx);
}

int main(void) {
    g_seed = test_seed() % 1000000;
    char *dir = test_mkdtemp();
    g_dir = dir;
    test_text_encoder();
    test_clips();
    test_folder();
    test_loader_order();
    test_loader_buckets();
    test_energon_clips();
    test_energon_pickles();
    test_rmtree(dir);
    free(dir);
    return test_finish();
}
