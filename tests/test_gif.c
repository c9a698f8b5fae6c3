/* Animated GIFs (gif_write) read back with giflib's decoder (DGifSlurp): frame count, size, the NETSCAPE2.0 loop
 * extension, frame delays, exact gray values through the upscaling, exact RGB colours when they fit a palette and
 * close ones when they are quantized, atomic replacement, and refused arguments. */
#include "dfm/common.h"
#include "dfm/gif.h"
#include "test.h"
#include "test_fs.h"

#include <gif_lib.h>
#include <string.h>

static char *tmp;

typedef struct {
    GifFileType *g;
    int ok;
} slurped;

static slurped slurp(const char *path) {
    int e = 0;
    slurped s = {DGifOpenFileName(path, &e), 0};
    if (s.g) s.ok = DGifSlurp(s.g) == GIF_OK;
    return s;
}
static void unslurp(slurped *s) {
    int e;
    if (s->g) DGifCloseFile(s->g, &e);
}

/* The NETSCAPE2.0 block (loop count 0 = forever) among the first image's extension blocks, where DGifSlurp puts
 * what precedes it. */
static int has_loop(const GifFileType *g) {
    if (g->ImageCount < 1) return 0;
    const SavedImage *im = &g->SavedImages[0];
    for (int i = 0; i + 1 < im->ExtensionBlockCount; i++) {
        const ExtensionBlock *a = &im->ExtensionBlocks[i], *b = &im->ExtensionBlocks[i + 1];
        if (a->Function == APPLICATION_EXT_FUNC_CODE && a->ByteCount == 11 && !memcmp(a->Bytes, "NETSCAPE2.0", 11) &&
            b->Function == CONTINUE_EXT_FUNC_CODE && b->ByteCount == 3 && b->Bytes[0] == 1 && b->Bytes[1] == 0 &&
            b->Bytes[2] == 0)
            return 1;
    }
    return 0;
}

/* The colour of output pixel (x, y) of frame t. */
static GifColorType pixel(const GifFileType *g, int t, int x, int y) {
    const SavedImage *im = &g->SavedImages[t];
    const ColorMapObject *map = im->ImageDesc.ColorMap ? im->ImageDesc.ColorMap : g->SColorMap;
    return map->Colors[im->RasterBits[(size_t)y * im->ImageDesc.Width + x]];
}

static void test_gray(void) {
    const int T = 4, H = 5, W = 7, S = 3;
    uint8_t *px = xmalloc((size_t)T * H * W);
    for (int i = 0; i < T * H * W; i++) px[i] = (uint8_t)((i * 37 + (i / 13)) & 255);
    px[0] = 0, px[1] = 255, px[2] = 128; /* the ends of the range */
    const char *path = test_path("%s/gray.gif", tmp);
    char err[512];
    int rc = gif_write(path, px, T, H, W, 1, 12, S, err, sizeof err);
    CHECK(rc == 0, "gray: gif_write returns 0%s%s", rc ? ": " : "", rc ? err : "");
    slurped s = slurp(path);
    CHECK(s.ok && s.g->ImageCount == T && s.g->SWidth == W * S && s.g->SHeight == H * S,
          "gray: DGifSlurp reads %d frames of %d x %d (want %d of %d x %d)", s.ok ? s.g->ImageCount : -1,
          s.ok ? s.g->SWidth : -1, s.ok ? s.g->SHeight : -1, T, W * S, H * S);
    CHECK(s.ok && has_loop(s.g), "gray: NETSCAPE2.0 application extension with loop count 0 (forever)");
    int delays = s.ok;
    for (int t = 0; delays && t < T; t++) {
        GraphicsControlBlock gcb;
        delays = DGifSavedExtensionToGCB(s.g, t, &gcb) == GIF_OK && gcb.DelayTime == 12 &&
                 gcb.TransparentColor == NO_TRANSPARENT_COLOR;
    }
    CHECK(delays, "gray: every frame has a graphics control block with delay 12 cs and no transparency");
    int exact = s.ok && s.g->ImageCount == T, bad = 0;
    for (int t = 0; exact && t < T; t++)
        for (int y = 0; y < H * S; y++)
            for (int x = 0; x < W * S; x++) {
                GifColorType c = pixel(s.g, t, x, y);
                uint8_t want = px[((size_t)t * H + y / S) * W + x / S];
                if (c.Red != want || c.Green != want || c.Blue != want) bad++;
            }
    CHECK(exact && bad == 0, "gray: every upscaled pixel of every frame has its exact gray value (%d wrong)", bad);
    unslurp(&s);
    CHECK(test_sh("ls %s/gray.gif.tmp.* >/dev/null 2>&1", tmp) != 0, "gray: no temporary file left");

    /* rewriting replaces the file whole */
    memset(px, 200, (size_t)T * H * W);
    rc = gif_write(path, px, 1, H, W, 1, 0, 1, err, sizeof err);
    s = slurp(path);
    GifColorType c0 = s.ok ? pixel(s.g, 0, 3, 2) : (GifColorType){0, 0, 0};
    CHECK(rc == 0 && s.ok && s.g->ImageCount == 1 && s.g->SWidth == W && c0.Red == 200,
          "rewriting the same path: 1 frame of %d x %d, value 200", W, H);
    unslurp(&s);
    free(px);
}

static void test_rgb(void) {
    /* few colours: kept exactly */
    const int T = 3, H = 6, W = 8, S = 2;
    static const uint8_t colours[6][3] = {{0, 0, 0}, {255, 255, 255}, {255, 0, 0},
                                          {1, 2, 3}, {17, 200, 99},   {250, 251, 252}};
    uint8_t *px = xmalloc((size_t)T * H * W * 3);
    for (int i = 0; i < T * H * W; i++) memcpy(px + 3 * i, colours[(i * 7 + i / 5) % 6], 3);
    const char *path = test_path("%s/rgb.gif", tmp);
    char err[512];
    int rc = gif_write(path, px, T, H, W, 3, 5, S, err, sizeof err);
    slurped s = slurp(path);
    int bad = 0;
    for (int t = 0; s.ok && t < T; t++)
        for (int y = 0; y < H * S; y++)
            for (int x = 0; x < W * S; x++) {
                GifColorType c = pixel(s.g, t, x, y);
                const uint8_t *w = px + (((size_t)t * H + y / S) * W + x / S) * 3;
                bad += c.Red != w[0] || c.Green != w[1] || c.Blue != w[2];
            }
    CHECK(rc == 0 && s.ok && s.g->ImageCount == T && has_loop(s.g) && bad == 0 && s.g->SColorMap->ColorCount == 8,
          "RGB with 6 colours: exact colours in an 8-entry palette, %d frames, looping (%d wrong pixels)", T, bad);
    unslurp(&s);

    /* a smooth gradient with thousands of colours: quantized to one shared palette, close to the original */
    const int T2 = 2, H2 = 32, W2 = 48;
    uint8_t *g = xmalloc((size_t)T2 * H2 * W2 * 3);
    for (int t = 0; t < T2; t++)
        for (int y = 0; y < H2; y++)
            for (int x = 0; x < W2; x++) {
                uint8_t *p = g + (((size_t)t * H2 + y) * W2 + x) * 3;
                p[0] = (uint8_t)(x * 255 / (W2 - 1)), p[1] = (uint8_t)(y * 255 / (H2 - 1)), p[2] = (uint8_t)(t * 200);
            }
    path = test_path("%s/grad.gif", tmp);
    rc = gif_write(path, g, T2, H2, W2, 3, 10, 1, err, sizeof err);
    s = slurp(path);
    double sum = 0;
    int worst = 0;
    for (int t = 0; s.ok && t < T2; t++)
        for (int y = 0; y < H2; y++)
            for (int x = 0; x < W2; x++) {
                GifColorType c = pixel(s.g, t, x, y);
                const uint8_t *w = g + (((size_t)t * H2 + y) * W2 + x) * 3;
                int d[3] = {abs(c.Red - w[0]), abs(c.Green - w[1]), abs(c.Blue - w[2])};
                for (int k = 0; k < 3; k++) sum += d[k], worst = d[k] > worst ? d[k] : worst;
            }
    double mean = sum / (3.0 * T2 * H2 * W2);
    CHECK(rc == 0 && s.ok && s.g->ImageCount == T2 && s.g->SColorMap->ColorCount <= 256 && mean < 12 && worst < 64,
          "RGB gradient (%d colours) quantized to one palette of %d: mean error %.2f levels, worst %d", W2 * H2 * T2,
          s.ok ? s.g->SColorMap->ColorCount : -1, mean, worst);
    unslurp(&s);
    free(g), free(px);
}

static void test_errors(void) {
    uint8_t px[4] = {1, 2, 3, 4};
    char err[512];
    int rc = gif_write(test_path("%s/no/such/dir/x.gif", tmp), px, 1, 2, 2, 1, 0, 1, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "no/such/dir/x.gif"), "a folder that does not exist: %s", err);
    rc = gif_write(test_path("%s/x.gif", tmp), px, 1, 2, 2, 2, 0, 1, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "channels must be 1 (gray) or 3 (RGB), got 2"), "2 channels: %s", err);
    rc = gif_write(test_path("%s/x.gif", tmp), px, 1, 2, 2, 1, 0, 0, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "scale must be >= 1"), "scale 0: %s", err);
    rc = gif_write(test_path("%s/x.gif", tmp), px, 0, 2, 2, 1, 0, 1, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "at least one frame"), "no frames: %s", err);
    rc = gif_write(test_path("%s/x.gif", tmp), px, 1, 2, 2, 1, 70000, 1, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "delay_cs"), "delay 70000 cs: %s", err);
    rc = gif_write(test_path("%s/x.gif", tmp), px, 1, 1, 4, 1, 0, 20000, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "65535"), "80000 pixels wide: %s", err);
    CHECK(test_sh("ls %s/*.tmp.* >/dev/null 2>&1", tmp) != 0, "no temporary file left behind by any of them");
}

int main(void) {
    test_seed();
    tmp = test_mkdtemp();
    test_gray();
    test_rgb();
    test_errors();
    test_rmtree(tmp);
    free(tmp);
    return test_finish();
}
