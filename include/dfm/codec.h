/* In-memory codecs for dataset parts: PNG (libpng), JPEG (libjpeg) and NumPy .npy. Decoders return -1 with a message;
 * encoders exit on failure (they only fail when out of memory). */
#ifndef DFM_CODEC_H
#define DFM_CODEC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 8-bit PNG of h x w x channels (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA), row-major, channels fastest. */
uint8_t *png_encode_mem(const uint8_t *pixels, int w, int h, int channels, size_t *len);
/* Decode any PNG to 8-bit h x w x channels (palette expanded, 16-bit reduced). *pixels is malloc'ed. */
int png_decode_mem(const uint8_t *buf, size_t len, uint8_t **pixels, int *w, int *h, int *channels, char *err,
                   size_t errlen);
/* Decode a baseline or progressive JPEG to 8-bit h x w x channels (1 gray or 3 RGB; CMYK/YCCK are converted
 * to RGB by libjpeg where it can). A truncated or corrupt stream is an error. *pixels is malloc'ed. */
int jpeg_decode_mem(const uint8_t *buf, size_t len, uint8_t **pixels, int *w, int *h, int *channels, char *err,
                    size_t errlen);

#define NPY_MAX_DIMS 8
typedef struct {
    char descr[8]; /* e.g. "<f4", "|u1" */
    int ndim;
    int64_t shape[NPY_MAX_DIMS];
    int fortran_order;
    size_t elem_size;
    size_t count;        /* number of elements */
    const uint8_t *data; /* points into the decoded buffer */
} npy_view;

/* Encode C-order data with the given descr ("<f4", "|u1", "<i8", ...). */
uint8_t *npy_encode(const void *data, const char *descr, const int64_t *shape, int ndim, size_t *len);
/* Parse an .npy buffer (versions 1-3) without copying the data. */
int npy_parse(const uint8_t *buf, size_t len, npy_view *v, char *err, size_t errlen);
/* Convert a parsed array of any float or integer descr to float32 (half, float, double, ints). */
int npy_to_f32(const npy_view *v, float *out, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
