/* In-memory image datasets: Fashion-MNIST idx files and Hugging Face style image folders. */
#include "dfm/codec.h"
#include "dfm/common.h"
#include "dfm/data.h"
#include "dfm/fashion_mnist.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void seterr(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void image_dataset_free(image_dataset *ds) {
    free(ds->pixels);
    free(ds->labels);
    for (int i = 0; ds->class_names && i < ds->num_classes; i++) free(ds->class_names[i]);
    free(ds->class_names);
    memset(ds, 0, sizeof *ds);
}

/* ---- resize and channel conversion -------------------------------------------------------------- */

/* HWC uint8 (any of 1-4 channels) -> CHW uint8 size x size x out_c: centre crop to a square, then
 * resample with a box filter (downscaling) or bilinear interpolation (upscaling). */
static void to_chw(uint8_t *dst, const uint8_t *src, int w, int h, int c, int size, int out_c) {
    int side = w < h ? w : h, x0 = (w - side) / 2, y0 = (h - side) / 2;
    double scale = (double)side / size;
    for (int y = 0; y < size; y++)
        for (int x = 0; x < size; x++) {
            double acc[4] = {0};
            if (scale > 1.0) { /* box filter over the source footprint */
                int sy0 = (int)(y * scale), sy1 = (int)((y + 1) * scale), sx0 = (int)(x * scale),
                    sx1 = (int)((x + 1) * scale);
                if (sy1 <= sy0) sy1 = sy0 + 1;
                if (sx1 <= sx0) sx1 = sx0 + 1;
                for (int sy = sy0; sy < sy1; sy++)
                    for (int sx = sx0; sx < sx1; sx++)
                        for (int k = 0; k < c; k++) acc[k] += src[((size_t)(y0 + sy) * w + x0 + sx) * c + k];
                for (int k = 0; k < c; k++) acc[k] /= (double)(sy1 - sy0) * (sx1 - sx0);
            } else { /* bilinear at pixel centres */
                double fy = (y + 0.5) * scale - 0.5, fx = (x + 0.5) * scale - 0.5;
                fy = fy < 0 ? 0 : fy, fx = fx < 0 ? 0 : fx;
                int iy = (int)fy, ix = (int)fx;
                int iy1 = iy + 1 < side ? iy + 1 : side - 1, ix1 = ix + 1 < side ? ix + 1 : side - 1;
                double ty = fy - iy, tx = fx - ix;
                for (int k = 0; k < c; k++) {
                    double a = src[((size_t)(y0 + iy) * w + x0 + ix) * c + k],
                           b = src[((size_t)(y0 + iy) * w + x0 + ix1) * c + k],
                           d = src[((size_t)(y0 + iy1) * w + x0 + ix) * c + k],
                           e = src[((size_t)(y0 + iy1) * w + x0 + ix1) * c + k];
                    acc[k] = (1 - ty) * ((1 - tx) * a + tx * b) + ty * ((1 - tx) * d + tx * e);
                }
            }
            /* drop alpha; gray <-> RGB by replication or luma */
            int colour = c >= 3;
            double gray = colour ? 0.299 * acc[0] + 0.587 * acc[1] + 0.114 * acc[2] : acc[0];
            for (int k = 0; k < out_c; k++) {
                double v = out_c == 1 ? gray : (colour ? acc[k] : acc[0]);
                dst[((size_t)k * size + y) * size + x] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v + 0.5);
            }
        }
}

/* ---- Fashion-MNIST ----------------------------------------------------------------------------- */

static int load_fashion(image_dataset *ds, const char *path, int train, int size, int channels, char *err,
                        size_t errlen) {
    uint8_t *img = NULL, *lab = NULL;
    int n = 0;
    if (fmnist_load(path, train, 0, &img, &lab, &n, err, errlen) != 0) return -1;
    ds->n = n, ds->c = channels, ds->h = ds->w = size;
    ds->pixels = xmalloc((size_t)n * channels * size * size);
    ds->labels = xmalloc(sizeof(int) * (size_t)n);
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        uint8_t *dst = ds->pixels + (size_t)i * channels * size * size;
        if (size == FMNIST_SIDE && channels == 1)
            memcpy(dst, img + (size_t)i * 784, 784);
        else
            to_chw(dst, img + (size_t)i * 784, FMNIST_SIDE, FMNIST_SIDE, 1, size, channels);
        ds->labels[i] = lab[i];
    }
    ds->num_classes = 10;
    ds->class_names = xmalloc(sizeof(char *) * 10);
    for (int i = 0; i < 10; i++) ds->class_names[i] = xstrdup(fmnist_class_names[i]);
    free(img);
    free(lab);
    return 0;
}

/* ---- image folders ----------------------------------------------------------------------------- */

typedef struct {
    char **files; /* paths relative to the root */
    int *labels;
    int n, cap;
} file_list;

static int has_ext(const char *name, const char *ext) {
    size_t n = strlen(name), e = strlen(ext);
    return n > e && !strcasecmp(name + n - e, ext);
}

static int is_image(const char *name) {
    return has_ext(name, ".png") || has_ext(name, ".jpg") || has_ext(name, ".jpeg");
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* All image files under root (recursively), sorted so the dataset order does not depend on the file system. */
static void list_images(const char *root, const char *rel, file_list *fl) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s%s%s", root, *rel ? "/" : "", rel);
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char sub[4096], full[8192];
        snprintf(sub, sizeof sub, "%s%s%s", rel, *rel ? "/" : "", e->d_name);
        snprintf(full, sizeof full, "%s/%s", root, sub);
        struct stat sb;
        if (stat(full, &sb) != 0) continue;
        if (S_ISDIR(sb.st_mode))
            list_images(root, sub, fl);
        else if (S_ISREG(sb.st_mode) && is_image(e->d_name)) {
            if (fl->n == fl->cap) {
                fl->cap = fl->cap ? 2 * fl->cap : 256;
                fl->files = xrealloc(fl->files, sizeof(char *) * (size_t)fl->cap);
            }
            fl->files[fl->n++] = xstrdup(sub);
        }
    }
    closedir(d);
}

static int find_file(const file_list *fl, const char *name) {
    const char *key = name;
    char *const *hit = bsearch(&key, fl->files, (size_t)fl->n, sizeof(char *), cmp_str);
    return hit ? (int)(hit - fl->files) : -1;
}

/* metadata.jsonl: one object per line with "file_name" and optionally "label" (integer class). */
static int read_metadata(const char *root, file_list *fl, int *has_labels, int *has_captions, char *err,
                         size_t errlen) {
    char path[4096];
    snprintf(path, sizeof path, "%s/metadata.jsonl", root);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, rc = 0;
    while (getline(&line, &cap, f) > 0) {
        lineno++;
        if (strspn(line, " \t\r\n") == strlen(line)) continue;
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        json_t *fn = o ? json_object_get(o, "file_name") : NULL;
        if (!o || !json_is_object(o) || !json_is_string(fn)) {
            seterr(err, errlen, "'%s' line %d: expected a JSON object with a \"file_name\" string%s%s", path, lineno,
                   o ? "" : ": ", o ? "" : je.text);
            if (o) json_decref(o);
            rc = -1;
            break;
        }
        int idx = find_file(fl, json_string_value(fn));
        if (idx < 0) {
            seterr(err, errlen, "'%s' line %d: file_name '%s' is not an image in the folder", path, lineno,
                   json_string_value(fn));
            json_decref(o);
            rc = -1;
            break;
        }
        json_t *lab = json_object_get(o, "label");
        if (lab && !json_is_null(lab)) {
            if (!json_is_integer(lab) || json_integer_value(lab) < 0) {
                seterr(err, errlen, "'%s' line %d: \"label\" must be a non-negative integer class", path, lineno);
                json_decref(o);
                rc = -1;
                break;
            }
            fl->labels[idx] = (int)json_integer_value(lab);
            *has_labels = 1;
        }
        if (json_object_get(o, "text") || json_object_get(o, "caption")) *has_captions = 1;
        json_decref(o);
    }
    free(line);
    fclose(f);
    return rc;
}

typedef struct {
    const char *root;
    const file_list *fl;
    image_dataset *ds;
    int size, channels;
    int next, failed;
    char *err;
    size_t errlen;
} decode_job;

static int decode_one(const char *path, uint8_t *dst, int size, int channels, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) return seterr(err, errlen, "cannot open '%s': %s", path, strerror(errno)), -1;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = xmalloc((size_t)(len > 0 ? len : 1));
    size_t got = fread(buf, 1, (size_t)len, f);
    fclose(f);
    uint8_t *px = NULL;
    int w, h, c, rc;
    char derr[300];
    if (got != (size_t)len)
        rc = (snprintf(derr, sizeof derr, "short read"), -1);
    else if (has_ext(path, ".png"))
        rc = png_decode_mem(buf, (size_t)len, &px, &w, &h, &c, derr, sizeof derr);
    else
        rc = jpeg_decode_mem(buf, (size_t)len, &px, &w, &h, &c, derr, sizeof derr);
    free(buf);
    if (rc != 0) return seterr(err, errlen, "'%s': %s", path, derr), -1;
    to_chw(dst, px, w, h, c, size, channels);
    free(px);
    return 0;
}

static int load_folder(image_dataset *ds, const char *root, int size, int channels, int num_workers, char *err,
                       size_t errlen) {
    struct stat sb;
    if (stat(root, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return seterr(err, errlen, "image folder '%s' does not exist or is not a folder", root), -1;
    file_list fl = {0};
    list_images(root, "", &fl);
    if (fl.n == 0) return seterr(err, errlen, "image folder '%s' holds no .png/.jpg/.jpeg files", root), -1;
    qsort(fl.files, (size_t)fl.n, sizeof(char *), cmp_str);
    fl.labels = xmalloc(sizeof(int) * (size_t)fl.n);
    for (int i = 0; i < fl.n; i++) fl.labels[i] = -1;
    int has_labels = 0, has_captions = 0, rc = 0;
    rc = read_metadata(root, &fl, &has_labels, &has_captions, err, errlen);
    if (rc == 0 && !has_labels) {
        /* no labels in metadata: sub-folder names are the classes when every image sits in one */
        int all_nested = 1;
        for (int i = 0; i < fl.n && all_nested; i++) all_nested = strchr(fl.files[i], '/') != NULL;
        if (all_nested) {
            char **names = NULL;
            int nn = 0;
            for (int i = 0; i < fl.n; i++) {
                size_t len = (size_t)(strchr(fl.files[i], '/') - fl.files[i]);
                if (nn && strlen(names[nn - 1]) == len && !strncmp(names[nn - 1], fl.files[i], len)) {
                    fl.labels[i] = nn - 1;
                    continue;
                }
                names = xrealloc(names, sizeof(char *) * (size_t)(nn + 1));
                names[nn] = xmalloc(len + 1);
                memcpy(names[nn], fl.files[i], len);
                names[nn][len] = 0;
                fl.labels[i] = nn++;
            }
            ds->class_names = names;
            ds->num_classes = nn;
        }
    } else if (rc == 0) {
        int mx = -1;
        for (int i = 0; i < fl.n; i++) mx = fl.labels[i] > mx ? fl.labels[i] : mx;
        ds->num_classes = mx + 1;
    }
    if (rc == 0 && has_captions)
        dfm_warn("'%s/metadata.jsonl' has captions; the DiT is class-conditional, so captions are not used", root);
    if (rc == 0) {
        ds->n = fl.n, ds->c = channels, ds->h = ds->w = size;
        ds->pixels = xmalloc((size_t)fl.n * channels * size * size);
        ds->labels = fl.labels;
        fl.labels = NULL;
        int failed = -1;
        char *errs = xcalloc((size_t)fl.n, 1);
        int nth = num_workers > 0 ? num_workers : 1;
#pragma omp parallel for schedule(dynamic, 16) num_threads(nth)
        for (int i = 0; i < fl.n; i++) {
            char path[8192], e[600];
            snprintf(path, sizeof path, "%s/%s", root, fl.files[i]);
            if (decode_one(path, ds->pixels + (size_t)i * channels * size * size, size, channels, e, sizeof e) != 0) {
                errs[i] = 1;
#pragma omp critical
                if (failed < 0 || i < failed) failed = i, seterr(err, errlen, "%s", e);
            }
        }
        free(errs);
        if (failed >= 0) rc = -1;
    }
    for (int i = 0; i < fl.n; i++) free(fl.files[i]);
    free(fl.files);
    free(fl.labels);
    return rc;
}

int image_dataset_load(image_dataset *ds, const char *type, const char *path, int train, int size, int channels,
                       int num_workers, char *err, size_t errlen) {
    memset(ds, 0, sizeof *ds);
    if (size < 1 || channels < 1 || channels > 4)
        return seterr(err, errlen, "image size %d / channels %d out of range", size, channels), -1;
    int rc;
    if (!strcmp(type, "fashion_mnist"))
        rc = load_fashion(ds, path, train, size, channels, err, errlen);
    else if (!strcmp(type, "image_folder"))
        rc = load_folder(ds, path, size, channels, num_workers, err, errlen);
    else
        rc = (seterr(err, errlen, "unknown in-memory dataset type '%s'", type), -1);
    if (rc != 0) image_dataset_free(ds);
    return rc;
}
