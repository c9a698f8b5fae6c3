/* Fashion-MNIST idx.gz reader: big-endian idx headers behind gzip, decoded with zlib. */
#include "dfm/fashion_mnist.h"
#include "dfm/common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

const char *const fmnist_class_names[10] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                            "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

/* Read an idx file: magic 0x00000800 | ndim, then ndim big-endian uint32 dims, then uint8 data.
 * Reads at most `max_items` items along the first dimension (0 = all). */
static int read_idx(const char *path, int want_ndim, int max_items, uint8_t **data, uint32_t dims[3], char *err,
                    size_t errlen) {
    gzFile g = gzopen(path, "rb");
    if (!g) {
        snprintf(err, errlen, "cannot open '%s': %s", path, errno ? strerror(errno) : "gzopen failed");
        return -1;
    }
    unsigned char hdr[16];
    int hlen = 4 + 4 * want_ndim;
    int got = gzread(g, hdr, (unsigned)hlen);
    if (got != hlen) {
        snprintf(err, errlen, "'%s': truncated idx header (%d of %d bytes; not a gzip'ed idx file?)", path,
                 got < 0 ? 0 : got, hlen);
        gzclose(g);
        return -1;
    }
    if (hdr[0] || hdr[1] || hdr[2] != 0x08 || hdr[3] != want_ndim) {
        snprintf(err, errlen, "'%s': bad idx magic %02x%02x%02x%02x, expected 000008%02x (uint8, %d dims)", path,
                 hdr[0], hdr[1], hdr[2], hdr[3], want_ndim, want_ndim);
        gzclose(g);
        return -1;
    }
    size_t per = 1;
    for (int i = 0; i < want_ndim; i++) {
        dims[i] = (uint32_t)hdr[4 + 4 * i] << 24 | (uint32_t)hdr[5 + 4 * i] << 16 | (uint32_t)hdr[6 + 4 * i] << 8 |
                  hdr[7 + 4 * i];
        if (i) per *= dims[i];
    }
    if (dims[0] > 10000000u || per > 1u << 20) {
        snprintf(err, errlen, "'%s': implausible idx dimensions", path);
        gzclose(g);
        return -1;
    }
    if (max_items > 0 && (uint32_t)max_items < dims[0]) dims[0] = (uint32_t)max_items;
    size_t n = per * dims[0];
    /* the header's size is a claim: the buffer grows with the bytes actually read (at most 64 MB ahead of them),
     * so a file that declares gigabytes but holds little fails on its truncation, not on the allocation */
    size_t cap = n < ((size_t)1 << 26) ? n : (size_t)1 << 26;
    *data = xmalloc(cap ? cap : 1);
    size_t off = 0;
    while (off < n) {
        if (off == cap) {
            cap = n - cap < cap ? n : 2 * cap;
            *data = xrealloc(*data, cap);
        }
        unsigned chunk = (unsigned)((cap - off) > (1u << 30) ? (1u << 30) : (cap - off));
        int r = gzread(g, *data + off, chunk);
        if (r <= 0) {
            int zerr;
            const char *msg = gzerror(g, &zerr);
            snprintf(err, errlen, "'%s': truncated at byte %zu of %zu data bytes%s%s", path, off, n, zerr ? ": " : "",
                     zerr ? msg : "");
            free(*data);
            *data = NULL;
            gzclose(g);
            return -1;
        }
        off += (size_t)r;
    }
    gzclose(g);
    return 0;
}

int fmnist_load(const char *dir, int train, int limit, uint8_t **images, uint8_t **labels, int *count, char *err,
                size_t errlen) {
    char ip[4096], lp[4096];
    const char *pre = train ? "train" : "t10k";
    snprintf(ip, sizeof ip, "%s/%s-images-idx3-ubyte.gz", dir, pre);
    snprintf(lp, sizeof lp, "%s/%s-labels-idx1-ubyte.gz", dir, pre);
    uint32_t idim[3], ldim[3];
    uint8_t *im = NULL, *lb = NULL;
    if (read_idx(ip, 3, limit, &im, idim, err, errlen) != 0) return -1;
    if (read_idx(lp, 1, limit, &lb, ldim, err, errlen) != 0) {
        free(im);
        return -1;
    }
    if (idim[1] != FMNIST_SIDE || idim[2] != FMNIST_SIDE || idim[0] != ldim[0]) {
        snprintf(err, errlen, "'%s' has %u images of %ux%u but '%s' has %u labels (expected 28x28 and equal counts)",
                 ip, idim[0], idim[1], idim[2], lp, ldim[0]);
        free(im);
        free(lb);
        return -1;
    }
    for (uint32_t i = 0; i < ldim[0]; i++)
        if (lb[i] > 9) {
            snprintf(err, errlen, "'%s': label %u of sample %u is not in 0-9", lp, lb[i], i);
            free(im);
            free(lb);
            return -1;
        }
    *images = im;
    *labels = lb;
    *count = (int)idim[0];
    return 0;
}
