/* Animated GIF writer on giflib (see gif.h). The LZW encoding, the palette quantizer and the file structure are
 * giflib's; this file picks the palette, upscales, adds the loop and frame-delay extensions and writes atomically. */
#include "dfm/gif.h"
#include "dfm/common.h"

#include <gif_lib.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* giflib writes through this: to our temporary FILE, so that we can fsync it before the rename */
static int write_out(GifFileType *g, const GifByteType *buf, int len) {
    FILE *f = g->UserData;
    return (int)fwrite(buf, 1, (size_t)len, f);
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Palette and per-pixel indices of the RGB frames (n pixels). Exact when there are at most 256 distinct
 * colours; else GifQuantizeBuffer's median cut over all frames at once, so the animation shares one palette
 * and a colour does not flicker from frame to frame. Returns the palette size, or -1. */
static int rgb_palette(const uint8_t *px, size_t n, GifColorType *pal, uint8_t *idx, char *err, size_t errlen) {
    uint32_t *c = xmalloc(sizeof(uint32_t) * n);
    for (size_t i = 0; i < n; i++) c[i] = (uint32_t)px[3 * i] << 16 | (uint32_t)px[3 * i + 1] << 8 | px[3 * i + 2];
    qsort(c, n, sizeof *c, cmp_u32);
    size_t u = 0;
    for (size_t i = 0; i < n && u <= 256; i++)
        if (i == 0 || c[i] != c[i - 1]) c[u++] = c[i];
    if (u <= 256) {
        for (size_t k = 0; k < u; k++)
            pal[k] = (GifColorType){(GifByteType)(c[k] >> 16), (GifByteType)(c[k] >> 8), (GifByteType)c[k]};
        for (size_t i = 0; i < n; i++) {
            uint32_t v = (uint32_t)px[3 * i] << 16 | (uint32_t)px[3 * i + 1] << 8 | px[3 * i + 2];
            const uint32_t *hit = bsearch(&v, c, u, sizeof *c, cmp_u32);
            idx[i] = (uint8_t)(hit - c);
        }
        free(c);
        return (int)u;
    }
    free(c);
    if (n > 0xFFFFFFFFu) {
        snprintf(err, errlen, "%zu RGB pixels are too many to quantize at once", n);
        return -1;
    }
    GifByteType *r = xmalloc(n), *g = xmalloc(n), *b = xmalloc(n);
    for (size_t i = 0; i < n; i++) r[i] = px[3 * i], g[i] = px[3 * i + 1], b[i] = px[3 * i + 2];
    int size = 256;
    /* all frames as one image n pixels wide and 1 high: the quantizer only looks at the colours */
    int rc = GifQuantizeBuffer((unsigned)n, 1, &size, r, g, b, idx, pal);
    free(r), free(g), free(b);
    if (rc != GIF_OK) {
        snprintf(err, errlen, "giflib could not quantize the colours");
        return -1;
    }
    return size;
}

int gif_write(const char *path, const uint8_t *frames, int T, int H, int W, int channels, int delay_cs, int scale,
              char *err, size_t errlen) {
    if (T < 1 || H < 1 || W < 1) {
        snprintf(err, errlen, "'%s': need at least one frame of at least 1 x 1 pixels (got %d frames of %d x %d)", path,
                 T, H, W);
        return -1;
    }
    if (channels != 1 && channels != 3) {
        snprintf(err, errlen, "'%s': channels must be 1 (gray) or 3 (RGB), got %d", path, channels);
        return -1;
    }
    if (scale < 1 || delay_cs < 0 || delay_cs > 65535) {
        snprintf(err, errlen, "'%s': scale must be >= 1 (got %d) and delay_cs 0..65535 (got %d)", path, scale,
                 delay_cs);
        return -1;
    }
    if ((long long)H * scale > 65535 || (long long)W * scale > 65535) {
        snprintf(err, errlen, "'%s': %d x %d pixels at scale %d exceed GIF's 65535 x 65535", path, H, W, scale);
        return -1;
    }
    const size_t n = (size_t)T * H * W;
    const int OW = W * scale, OH = H * scale;

    /* palette and indices of every source pixel */
    GifColorType pal[256];
    memset(pal, 0, sizeof pal);
    uint8_t *idx = xmalloc(n);
    int ncolors;
    if (channels == 1) {
        for (int i = 0; i < 256; i++) pal[i] = (GifColorType){(GifByteType)i, (GifByteType)i, (GifByteType)i};
        memcpy(idx, frames, n);
        ncolors = 256;
    } else if ((ncolors = rgb_palette(frames, n, pal, idx, err, errlen)) < 0) {
        free(idx);
        return -1;
    }
    int mapsize = 2; /* GIF colour tables hold a power of two entries, at least 2 */
    while (mapsize < ncolors) mapsize *= 2;
    int bits = 1;
    while ((1 << bits) < mapsize) bits++;
    ColorMapObject *map = GifMakeMapObject(mapsize, pal);

    size_t tlen = strlen(path) + 32;
    char *tmp = xmalloc(tlen);
    snprintf(tmp, tlen, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    int gerr = 0, rc = -1;
    GifFileType *g = NULL;
    GifPixelType *line = xmalloc((size_t)OW);
    if (!f) {
        snprintf(err, errlen, "cannot create '%s': %s", tmp, strerror(errno));
        goto out;
    }
    g = EGifOpen(f, write_out, &gerr);
    if (!g) goto gif_error;
    EGifSetGifVersion(g, true); /* GIF89a: the loop and delay extensions need it */
    if (EGifPutScreenDesc(g, OW, OH, bits, 0, map) != GIF_OK) goto gif_error;
    /* NETSCAPE2.0 application extension: sub-block 1, loop count 0 = forever */
    static const GifByteType loop[3] = {1, 0, 0};
    if (EGifPutExtensionLeader(g, APPLICATION_EXT_FUNC_CODE) != GIF_OK ||
        EGifPutExtensionBlock(g, 11, "NETSCAPE2.0") != GIF_OK || EGifPutExtensionBlock(g, 3, loop) != GIF_OK ||
        EGifPutExtensionTrailer(g) != GIF_OK)
        goto gif_error;
    for (int t = 0; t < T; t++) {
        GraphicsControlBlock gcb = {.DisposalMode = DISPOSE_DO_NOT,
                                    .UserInputFlag = false,
                                    .DelayTime = delay_cs,
                                    .TransparentColor = NO_TRANSPARENT_COLOR};
        GifByteType ext[4];
        size_t elen = EGifGCBToExtension(&gcb, ext);
        if (EGifPutExtension(g, GRAPHICS_EXT_FUNC_CODE, (int)elen, ext) != GIF_OK ||
            EGifPutImageDesc(g, 0, 0, OW, OH, false, NULL) != GIF_OK)
            goto gif_error;
        for (int y = 0; y < OH; y++) {
            const uint8_t *row = idx + ((size_t)t * H + (size_t)(y / scale)) * W;
            for (int x = 0; x < OW; x++) line[x] = row[x / scale];
            if (EGifPutLine(g, line, OW) != GIF_OK) goto gif_error;
        }
    }
    if (EGifCloseFile(g, &gerr) != GIF_OK) {
        g = NULL;
        goto gif_error;
    }
    g = NULL;
    if (fflush(f) != 0 || fsync(fileno(f)) != 0 || ferror(f)) {
        snprintf(err, errlen, "cannot write '%s': %s", tmp, strerror(errno));
        goto out;
    }
    if (fclose(f) != 0) {
        f = NULL;
        snprintf(err, errlen, "cannot write '%s': %s", tmp, strerror(errno));
        goto out;
    }
    f = NULL;
    if (rename(tmp, path) != 0) {
        snprintf(err, errlen, "cannot rename '%s' to '%s': %s", tmp, path, strerror(errno));
        goto out;
    }
    /* the rename itself survives a crash only once the folder is on disk */
    char *slash = strrchr(tmp, '/');
    if (slash) *slash = 0;
    int dfd = open(slash ? (tmp[0] ? tmp : "/") : ".", O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) fsync(dfd), close(dfd);
    rc = 0;
    goto out;
gif_error:
    snprintf(err, errlen, "'%s': giflib: %s", path, GifErrorString(g ? g->Error : gerr));
out:
    if (g) EGifCloseFile(g, &gerr);
    if (f) fclose(f);
    if (rc) unlink(tmp);
    free(tmp), free(line), free(idx);
    GifFreeMapObject(map);
    return rc;
}
