/* PNG, JPEG and .npy codecs over memory buffers. */
#include "dfm/codec.h"
#include "dfm/common.h"

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>
#include <stdio.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

/* --------------------------------------------------------------------------------------------- PNG */

typedef struct {
    uint8_t *buf;
    size_t len, cap;
} membuf;

static void png_write_mem(png_structp png, png_bytep data, png_size_t n) {
    membuf *m = png_get_io_ptr(png);
    if (m->len + n > m->cap) {
        m->cap = (m->len + n) * 2;
        m->buf = xrealloc(m->buf, m->cap);
    }
    memcpy(m->buf + m->len, data, n);
    m->len += n;
}

static void png_flush_mem(png_structp png) {
    (void)png;
}

uint8_t *png_encode_mem(const uint8_t *pixels, int w, int h, int channels, size_t *len) {
    static const int types[5] = {0, PNG_COLOR_TYPE_GRAY, PNG_COLOR_TYPE_GRAY_ALPHA, PNG_COLOR_TYPE_RGB,
                                 PNG_COLOR_TYPE_RGB_ALPHA};
    if (channels < 1 || channels > 4) dfm_die("png_encode_mem: %d channels (1-4 supported)", channels);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) dfm_die("png_encode_mem: libpng initialisation failed");
    membuf m = {xmalloc(1024 + (size_t)w * (size_t)h * (size_t)channels), 0,
                1024 + (size_t)w * (size_t)h * (size_t)channels};
    if (setjmp(png_jmpbuf(png))) dfm_die("png_encode_mem: libpng failed encoding a %dx%dx%d image", h, w, channels);
    png_set_write_fn(png, &m, png_write_mem, png_flush_mem);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, types[channels], PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < h; y++)
        png_write_row(png, (png_const_bytep)(pixels + (size_t)y * (size_t)w * (size_t)channels));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    *len = m.len;
    return m.buf;
}

typedef struct {
    const uint8_t *buf;
    size_t len, pos;
} memsrc;

static void png_read_mem(png_structp png, png_bytep out, png_size_t n) {
    memsrc *s = png_get_io_ptr(png);
    if (s->pos + n > s->len) png_error(png, "PNG data ends early");
    memcpy(out, s->buf + s->pos, n);
    s->pos += n;
}

static void png_err_fn(png_structp png, png_const_charp msg) {
    char *err = png_get_error_ptr(png);
    snprintf(err, 200, "%s", msg);
    png_longjmp(png, 1);
}
static void png_warn_fn(png_structp png, png_const_charp msg) {
    (void)png, (void)msg;
}

int png_decode_mem(const uint8_t *buf, size_t len, uint8_t **pixels, int *w, int *h, int *channels, char *err,
                   size_t errlen) {
    char pngmsg[200] = "";
    if (len < 8 || png_sig_cmp((png_const_bytep)buf, 0, 8)) {
        snprintf(err, errlen, "not a PNG (bad signature, %zu bytes)", len);
        return -1;
    }
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, pngmsg, png_err_fn, png_warn_fn);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) dfm_die("png_decode_mem: libpng initialisation failed");
    memsrc src = {buf, len, 0};
    uint8_t *volatile out = NULL;
    png_bytep *volatile rows = NULL;
    if (setjmp(png_jmpbuf(png))) {
        snprintf(err, errlen, "corrupt PNG: %s", pngmsg);
        free(out);
        free(rows);
        png_destroy_read_struct(&png, &info, NULL);
        return -1;
    }
    png_set_read_fn(png, &src, png_read_mem);
    png_read_info(png, info);
    png_uint_32 pw = png_get_image_width(png, info), ph = png_get_image_height(png, info);
    if ((uint64_t)pw * ph > (1u << 28)) png_error(png, "image too large");
    png_set_expand(png); /* palette -> RGB, low-bit gray -> 8 bit, tRNS -> alpha */
    png_set_strip_16(png);
    png_read_update_info(png, info);
    int c = png_get_channels(png, info);
    out = xmalloc((size_t)pw * ph * (size_t)c);
    rows = xmalloc(ph * sizeof(png_bytep));
    for (png_uint_32 y = 0; y < ph; y++) rows[y] = out + (size_t)y * pw * (size_t)c;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    *pixels = out;
    *w = (int)pw;
    *h = (int)ph;
    *channels = c;
    return 0;
}

/* -------------------------------------------------------------------------------------------- JPEG */

struct jpeg_fail {
    struct jpeg_error_mgr mgr;
    jmp_buf jump;
    char msg[JMSG_LENGTH_MAX];
    int truncated;
};

static void jpeg_fail_exit(j_common_ptr cinfo) {
    struct jpeg_fail *f = (struct jpeg_fail *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, f->msg);
    longjmp(f->jump, 1);
}

/* Warnings stay quiet; a premature end of the data (which libjpeg pads with gray and only warns about) is
 * remembered so that it can be reported as an error, as PIL does for a truncated file. */
static void jpeg_quiet(j_common_ptr cinfo, int level) {
    struct jpeg_fail *f = (struct jpeg_fail *)cinfo->err;
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) f->truncated = 1;
}

int jpeg_decode_mem(const uint8_t *buf, size_t len, uint8_t **pixels, int *w, int *h, int *channels, char *err,
                    size_t errlen) {
    struct jpeg_decompress_struct cinfo;
    struct jpeg_fail fail;
    uint8_t *volatile out = NULL;
    if (len < 3 || buf[0] != 0xFF || buf[1] != 0xD8) {
        snprintf(err, errlen, "not a JPEG (no SOI marker, %zu bytes)", len);
        return -1;
    }
    cinfo.err = jpeg_std_error(&fail.mgr);
    fail.mgr.error_exit = jpeg_fail_exit;
    fail.mgr.emit_message = jpeg_quiet;
    fail.truncated = 0;
    if (setjmp(fail.jump)) {
        snprintf(err, errlen, "corrupt JPEG: %s", fail.msg);
        jpeg_destroy_decompress(&cinfo);
        free(out);
        return -1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, buf, (unsigned long)len);
    jpeg_read_header(&cinfo, TRUE);
    if ((uint64_t)cinfo.image_width * cinfo.image_height > (1u << 28)) {
        snprintf(fail.msg, sizeof fail.msg, "image too large (%ux%u)", cinfo.image_width, cinfo.image_height);
        longjmp(fail.jump, 1);
    }
    if (cinfo.num_components != 1) cinfo.out_color_space = JCS_RGB;
    jpeg_start_decompress(&cinfo);
    int ww = (int)cinfo.output_width, hh = (int)cinfo.output_height, cc = cinfo.output_components;
    out = xmalloc((size_t)ww * hh * cc);
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = out + (size_t)cinfo.output_scanline * ww * cc;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    if (fail.truncated) {
        snprintf(fail.msg, sizeof fail.msg, "data ends early (truncated after %zu bytes)", len);
        longjmp(fail.jump, 1);
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    *pixels = out, *w = ww, *h = hh, *channels = cc;
    return 0;
}

/* --------------------------------------------------------------------------------------------- NPY */

static size_t descr_size(const char *d) {
    if (strlen(d) < 3 || (d[0] != '<' && d[0] != '|' && d[0] != '>' && d[0] != '=')) return 0;
    if (!strchr("fiub", d[1])) return 0;
    return (size_t)atoi(d + 2);
}

uint8_t *npy_encode(const void *data, const char *descr, const int64_t *shape, int ndim, size_t *len) {
    char hdr[512];
    char shp[256] = "";
    size_t count = 1, es = descr_size(descr);
    if (!es) dfm_die("npy_encode: unsupported dtype '%s'", descr);
    /* Python tuple syntax: (), (5,), (2, 3) */
    for (int i = 0; i < ndim; i++) {
        char t[32];
        snprintf(t, sizeof t, "%s%lld%s", i ? " " : "", (long long)shape[i], (ndim == 1 || i < ndim - 1) ? "," : "");
        strncat(shp, t, sizeof shp - strlen(shp) - 1);
        count *= (size_t)shape[i];
    }
    int n = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, shp);
    /* pad with spaces so that magic(6)+version(2)+len(2)+header+'\n' is a multiple of 64 */
    size_t total = 10 + (size_t)n + 1;
    size_t pad = (64 - total % 64) % 64;
    size_t hlen = (size_t)n + pad + 1;
    *len = 10 + hlen + count * es;
    uint8_t *b = xmalloc(*len);
    memcpy(b, "\x93NUMPY\x01\x00", 8);
    b[8] = (uint8_t)(hlen & 0xff);
    b[9] = (uint8_t)(hlen >> 8);
    memcpy(b + 10, hdr, (size_t)n);
    memset(b + 10 + n, ' ', pad);
    b[10 + hlen - 1] = '\n';
    if (count > 0) memcpy(b + 10 + hlen, data, count * es);
    return b;
}

int npy_parse(const uint8_t *buf, size_t len, npy_view *v, char *err, size_t errlen) {
    memset(v, 0, sizeof *v);
    if (len < 10 || memcmp(buf, "\x93NUMPY", 6)) {
        snprintf(err, errlen, "not an .npy array (bad magic, %zu bytes)", len);
        return -1;
    }
    size_t hlen, off;
    if (buf[6] == 1) {
        hlen = buf[8] | (size_t)buf[9] << 8;
        off = 10;
    } else if (buf[6] == 2 || buf[6] == 3) {
        if (len < 12) goto trunc;
        hlen = buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 | (size_t)buf[11] << 24;
        off = 12;
    } else {
        snprintf(err, errlen, ".npy version %d is not supported", buf[6]);
        return -1;
    }
    if (off + hlen > len) goto trunc;
    char *h = xmalloc(hlen + 1);
    memcpy(h, buf + off, hlen);
    h[hlen] = 0;
    const char *d = strstr(h, "'descr'"), *fo = strstr(h, "'fortran_order'"), *sh = strstr(h, "'shape'");
    int ok = d && fo && sh;
    if (ok) {
        d = strchr(d + 7, '\'');
        ok = d && sscanf(d, "'%7[^']'", v->descr) == 1;
    }
    if (ok) v->fortran_order = strstr(fo, "True") && strstr(fo, "True") < strchr(fo + 15, ',') ? 1 : 0;
    if (ok) {
        const char *p = strchr(sh, '(');
        ok = p != NULL;
        v->count = 1;
        while (ok && *++p && *p != ')') {
            if (*p == ' ' || *p == ',') continue;
            if (v->ndim == NPY_MAX_DIMS)
                ok = 0;
            else {
                char *e;
                long long x = strtoll(p, &e, 10);
                /* a shape whose element count overflows size_t would pass the size check below */
                if (e == p || x < 0 || (x > 0 && v->count > SIZE_MAX / (size_t)x))
                    ok = 0;
                else {
                    v->shape[v->ndim++] = x;
                    v->count *= (size_t)x;
                    p = e - 1;
                }
            }
        }
    }
    free(h);
    if (!ok) {
        snprintf(err, errlen, "malformed .npy header");
        return -1;
    }
    v->elem_size = descr_size(v->descr);
    if (!v->elem_size || v->descr[0] == '>') {
        snprintf(err, errlen, ".npy dtype '%s' is not supported (little-endian bool/int/uint/float only)", v->descr);
        return -1;
    }
    if (v->fortran_order && v->ndim > 1) {
        snprintf(err, errlen, ".npy arrays in Fortran order are not supported");
        return -1;
    }
    if (off + hlen > len || v->count > (len - off - hlen) / v->elem_size) goto trunc;
    v->data = buf + off + hlen;
    return 0;
trunc:
    snprintf(err, errlen, ".npy array truncated (%zu bytes)", len);
    return -1;
}

static float half_to_float(uint16_t h) {
    uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1f, m = h & 0x3ff, bits;
    if (e == 0) {
        if (!m)
            bits = s;
        else { /* subnormal */
            e = 127 - 15 + 1;
            while (!(m & 0x400)) {
                m <<= 1;
                e--;
            }
            bits = s | (e << 23) | ((m & 0x3ff) << 13);
        }
    } else if (e == 31)
        bits = s | 0x7f800000u | (m << 13);
    else
        bits = s | ((e + 127 - 15) << 23) | (m << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

int npy_to_f32(const npy_view *v, float *out, char *err, size_t errlen) {
    char k = v->descr[1];
    size_t es = v->elem_size;
    const uint8_t *p = v->data;
    for (size_t i = 0; i < v->count; i++, p += es) {
        if (k == 'f' && es == 4)
            memcpy(&out[i], p, 4);
        else if (k == 'f' && es == 8) {
            double d;
            memcpy(&d, p, 8);
            out[i] = (float)d;
        } else if (k == 'f' && es == 2) {
            uint16_t hb;
            memcpy(&hb, p, 2);
            out[i] = half_to_float(hb);
        } else if ((k == 'u' || k == 'b') && es == 1)
            out[i] = p[0];
        else if (k == 'i' && es == 1)
            out[i] = (int8_t)p[0];
        else if (k == 'i' && es == 4) {
            int32_t x;
            memcpy(&x, p, 4);
            out[i] = (float)x;
        } else if (k == 'i' && es == 8) {
            int64_t x;
            memcpy(&x, p, 8);
            out[i] = (float)x;
        } else if (k == 'u' && es == 2) {
            uint16_t x;
            memcpy(&x, p, 2);
            out[i] = x;
        } else if (k == 'i' && es == 2) {
            int16_t x;
            memcpy(&x, p, 2);
            out[i] = x;
        } else {
            snprintf(err, errlen, "cannot convert .npy dtype '%s' to float32", v->descr);
            return -1;
        }
    }
    return 0;
}
