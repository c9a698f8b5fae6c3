/* In-memory video datasets: the demo clips (Fashion-MNIST garments moving across a canvas) and folders of
 * pre-encoded .safetensors samples. */
#include "data/video_impl.h"
#include "dfm/common.h"
#include "dfm/fashion_mnist.h"
#include "dfm/rng.h"
#include "dfm/safetensors.h"
#include "dfm/video.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const video_direction_names[4] = {"left", "right", "up", "down"};

void video_dataset_free(video_dataset *vd) {
    if (!vd) return;
    free(vd->latents), free(vd->text), free(vd->text_lens);
    if (vd->captions)
        for (int i = 0; i < vd->n; i++) free(vd->captions[i]);
    free(vd->captions);
    free(vd->shapes), free(vd->offsets);
    memset(vd, 0, sizeof *vd);
}

const float *video_dataset_sample(const video_dataset *vd, int i, int shape[4]) {
    if (!vd->shapes) {
        shape[0] = vd->c, shape[1] = vd->t, shape[2] = vd->h, shape[3] = vd->w;
        return vd->latents + (size_t)i * vd->c * vd->t * vd->h * vd->w;
    }
    memcpy(shape, vd->shapes + (size_t)i * 4, 4 * sizeof(int));
    return vd->latents + vd->offsets[i];
}

int video_dataset_nshapes(const video_dataset *vd) {
    if (!vd->shapes) return vd->n > 0;
    int k = 0;
    for (int i = 0; i < vd->n; i++) {
        int seen = 0;
        for (int j = 0; j < i && !seen; j++)
            seen = !memcmp(vd->shapes + 4 * (size_t)i, vd->shapes + 4 * (size_t)j, 4 * sizeof(int));
        k += !seen;
    }
    return k;
}

size_t video_dataset_layout(video_dataset *vd, const int64_t *shapes4) {
    int multi = 0, big = 0;
    for (int i = 1; i < vd->n; i++) {
        const int64_t *a = shapes4 + 4 * (size_t)i, *b = shapes4;
        multi |= a[1] != b[1] || a[2] != b[2] || a[3] != b[3];
        if (a[1] * a[2] * a[3] >
            shapes4[4 * (size_t)big + 1] * shapes4[4 * (size_t)big + 2] * shapes4[4 * (size_t)big + 3])
            big = i;
    }
    const int64_t *l = shapes4 + 4 * (size_t)big;
    vd->c = (int)l[0], vd->t = (int)l[1], vd->h = (int)l[2], vd->w = (int)l[3];
    if (!multi) return (size_t)vd->n * vd->c * vd->t * vd->h * vd->w;
    vd->shapes = xmalloc((size_t)vd->n * 4 * sizeof(int));
    vd->offsets = xmalloc((size_t)vd->n * sizeof(size_t));
    size_t off = 0;
    for (int i = 0; i < vd->n; i++) {
        for (int d = 0; d < 4; d++) vd->shapes[4 * (size_t)i + d] = (int)shapes4[4 * (size_t)i + d];
        vd->offsets[i] = off;
        off += (size_t)(shapes4[4 * (size_t)i] * shapes4[4 * (size_t)i + 1] * shapes4[4 * (size_t)i + 2] *
                        shapes4[4 * (size_t)i + 3]);
    }
    return off;
}

/* ------------------------------------------------------------------------------------------------ demo clips */

int video_clip_caption(int label, int direction, char *buf, size_t n) {
    if (label < 0 || label > 9 || direction < 0 || direction > 3) return snprintf(buf, n, "%s", "");
    char name[32];
    snprintf(name, sizeof name, "%s", fmnist_class_names[label]);
    for (char *p = name; *p; p++) *p = (char)tolower((unsigned char)*p);
    return snprintf(buf, n, "%s %s moving %s", strchr("aeiou", name[0]) ? "an" : "a", name,
                    video_direction_names[direction]);
}

/* Area-average a 28x28 image down to g x g (g <= 28): each output pixel is the mean of the source area it covers,
 * partial source pixels weighted by their overlap; rounded back to 8 bits like a resized video frame. */
static void downscale(const uint8_t *src, int g, uint8_t *dst) {
    const int S = FMNIST_SIDE;
    double wt[FMNIST_SIDE][FMNIST_SIDE]; /* wt[o][s]: share of source pixel s in output pixel o */
    double span = (double)S / g;
    for (int o = 0; o < g; o++)
        for (int s = 0; s < S; s++) {
            double lo = fmax(o * span, s), hi = fmin((o + 1) * span, s + 1.0);
            wt[o][s] = hi > lo ? (hi - lo) / span : 0.0;
        }
    for (int oy = 0; oy < g; oy++)
        for (int ox = 0; ox < g; ox++) {
            double acc = 0;
            for (int sy = 0; sy < S; sy++) {
                if (wt[oy][sy] == 0) continue;
                double row = 0;
                for (int sx = 0; sx < S; sx++) row += wt[ox][sx] * src[sy * S + sx];
                acc += wt[oy][sy] * row;
            }
            long v = lround(acc);
            dst[oy * g + ox] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
}

/* A draw in [0, m] from uniform k of (seed, clip i). */
static int draw_int(uint64_t seed, int i, int k, int m) {
    int v = (int)(rng_uniform(seed, RNG_STREAM_CLIP, 0, (uint32_t)i, (uint32_t)k) * (m + 1));
    return v > m ? m : v;
}

/* The garment's side and step for a canvas, or -1 with err when the garment cannot move a pixel a frame. */
static int clip_geometry(int frames, int size, int *side, int *step, char *err, size_t errlen) {
    if (frames < 2 || frames > 4096) {
        snprintf(err, errlen, "video clips: frames must be 2 to 4096 (a garment needs two frames to move), got %d",
                 frames);
        return -1;
    }
    *side = size >= 2 * FMNIST_SIDE ? FMNIST_SIDE : size / 2;
    if (size < 8 || size > 4096 || (size - *side) / (frames - 1) < 1) {
        snprintf(err, errlen,
                 "video clips: size %d is too small for %d frames: the %d-pixel garment must move at least one "
                 "pixel a frame inside the canvas (size >= 8 and size - %d >= frames - 1)",
                 size, frames, *side, *side);
        return -1;
    }
    *step = (size - *side) / (frames - 1);
    if (*step > *side / 4) *step = *side / 4; /* a garment, not a teleport: at most a quarter of its side a frame */
    return 0;
}

int video_clip_render(const uint8_t *image, int index, int frames, int size, uint64_t seed, float *out, char *err,
                      size_t errlen) {
    int side, step;
    if (clip_geometry(frames, size, &side, &step, err, errlen) != 0) return -1;
    uint8_t garment[FMNIST_SIDE * FMNIST_SIDE];
    if (side == FMNIST_SIDE)
        memcpy(garment, image, sizeof garment);
    else
        downscale(image, side, garment);
    int travel = step * (frames - 1), room = size - side;
    int dir = draw_int(seed, index, 0, 3);
    int along = draw_int(seed, index, 1, room - travel); /* start offset along the motion, from the near edge */
    int across = draw_int(seed, index, 2, room);         /* position across the motion */
    size_t frame_px = (size_t)size * size;
    for (size_t e = 0; e < frame_px * (size_t)frames; e++) out[e] = -1.0f;
    for (int f = 0; f < frames; f++) {
        int x0, y0;
        switch (dir) {
        case VIDEO_DIR_LEFT:
            x0 = room - along - step * f, y0 = across;
            break;
        case VIDEO_DIR_RIGHT:
            x0 = along + step * f, y0 = across;
            break;
        case VIDEO_DIR_UP:
            x0 = across, y0 = room - along - step * f;
            break;
        default:
            x0 = across, y0 = along + step * f;
            break;
        }
        float *fr = out + (size_t)f * frame_px;
        for (int y = 0; y < side; y++)
            for (int x = 0; x < side; x++)
                fr[(size_t)(y0 + y) * size + x0 + x] = garment[y * side + x] * (2.0f / 255.0f) - 1.0f;
    }
    return dir;
}

int video_dataset_clips(video_dataset *vd, const char *fmnist_dir, int n_max, int frames, int size, int text_len,
                        int text_dim, uint64_t seed, char *err, size_t errlen) {
    memset(vd, 0, sizeof *vd);
    int side, step;
    if (clip_geometry(frames, size, &side, &step, err, errlen) != 0) return -1;
    if (text_len < 1 || text_dim < 1) {
        snprintf(err, errlen, "video clips: text_len and text_dim must be positive (got %d, %d)", text_len, text_dim);
        return -1;
    }
    uint8_t *images, *labels;
    int count;
    if (fmnist_load(fmnist_dir ? fmnist_dir : FMNIST_DEFAULT_DIR, 1, n_max > 0 ? n_max : 0, &images, &labels, &count,
                    err, errlen) != 0)
        return -1;
    size_t clip_px = (size_t)size * size * (size_t)frames, txt_n = (size_t)text_len * text_dim;
    vd->n = count, vd->c = 1, vd->t = frames, vd->h = size, vd->w = size;
    vd->text_len = text_len, vd->text_dim = text_dim;
    vd->latents = xalloc_floats((size_t)count * clip_px);
    vd->text = xalloc_floats((size_t)count * txt_n);
    vd->text_lens = xcalloc((size_t)count, sizeof(int));
    vd->captions = xcalloc((size_t)count, sizeof(char *));
    /* 40 distinct captions: embed each once */
    float *cap_emb = xalloc_floats((size_t)40 * txt_n);
    int cap_len[40] = {0};
    for (int k = 0; k < 40; k++) {
        char cap[64];
        video_clip_caption(k / 4, k % 4, cap, sizeof cap);
        text_encoder_encode(cap, text_dim, text_len, seed, cap_emb + (size_t)k * txt_n, &cap_len[k], err, errlen);
    }
    for (int i = 0; i < count; i++) {
        int dir = video_clip_render(images + (size_t)i * FMNIST_SIDE * FMNIST_SIDE, i, frames, size, seed,
                                    vd->latents + (size_t)i * clip_px, err, errlen);
        int k = labels[i] * 4 + dir;
        memcpy(vd->text + (size_t)i * txt_n, cap_emb + (size_t)k * txt_n, sizeof(float) * txt_n);
        vd->text_lens[i] = cap_len[k];
        char cap[64];
        video_clip_caption(labels[i], dir, cap, sizeof cap);
        vd->captions[i] = xstrdup(cap);
    }
    free(cap_emb), free(images), free(labels);
    return 0;
}

/* ---------------------------------------------------------------------------------------- safetensors folder */

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void shape_str(const st_tensor *t, char *buf, size_t n) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < t->ndim && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* The tensor `name` of f with `ndim` dims, or ndim + 1 with a leading 1; its dims (without that 1) in dims. */
static const st_tensor *find_sample_tensor(const st_file *f, const char *name, int ndim, const char *layout,
                                           int64_t *dims, char *err, size_t errlen) {
    const st_tensor *t = st_find(f, name);
    if (!t) {
        size_t k = (size_t)snprintf(err, errlen, "'%s': no tensor '%s' %s (it holds:", f->path, name, layout);
        for (int i = 0; i < f->n_tensors && k < errlen; i++)
            k += (size_t)snprintf(err + k, errlen - k, " %s", f->tensors[i].name);
        if (k < errlen) snprintf(err + k, errlen - k, "%s)", f->n_tensors ? "" : " nothing");
        return NULL;
    }
    char sh[160];
    shape_str(t, sh, sizeof sh);
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16 && t->dtype != ST_F64) {
        snprintf(err, errlen, "'%s': tensor '%s' %s has dtype %s; expected a float type (F32, F16, BF16, F64)", f->path,
                 name, sh, st_dtype_name(t->dtype));
        return NULL;
    }
    int lead = t->ndim == ndim + 1 && t->shape[0] == 1;
    if (t->ndim != ndim && !lead) {
        snprintf(err, errlen, "'%s': tensor '%s' has shape %s; expected %s or [1, %s", f->path, name, sh, layout,
                 layout + 1);
        return NULL;
    }
    for (int d = 0; d < ndim; d++) {
        dims[d] = t->shape[d + lead];
        if (dims[d] < 1) {
            snprintf(err, errlen, "'%s': tensor '%s' has shape %s, with an empty dimension", f->path, name, sh);
            return NULL;
        }
    }
    return t;
}

/* Valid rows of a text embedding [L, D]: the last non-zero row + 1, at least 1. */
static int text_valid_rows(const float *x, int64_t L, int64_t D) {
    for (int64_t r = L - 1; r > 0; r--)
        for (int64_t j = 0; j < D; j++)
            if (x[r * D + j] != 0.0f) return (int)r + 1;
    return 1;
}

int video_dataset_folder(video_dataset *vd, const char *dir, int text_len, char *err, size_t errlen) {
    memset(vd, 0, sizeof *vd);
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, errlen, "cannot open folder '%s': %s", dir, strerror(errno));
        return -1;
    }
    char **names = NULL;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (e->d_name[0] == '.' || l <= 12 || strcmp(e->d_name + l - 12, ".safetensors")) continue;
        names = xrealloc(names, (size_t)(n + 1) * sizeof *names);
        names[n++] = xstrdup(e->d_name);
    }
    closedir(d);
    if (n == 0) {
        snprintf(err, errlen, "'%s': no .safetensors files (one per sample, with video_latents and text_embeddings)",
                 dir);
        return -1;
    }
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    st_file **files = xcalloc((size_t)n, sizeof *files);
    const st_tensor **lat = xcalloc((size_t)n, sizeof *lat), **txt = xcalloc((size_t)n, sizeof *txt);
    int64_t *rows = xcalloc((size_t)n, sizeof *rows);
    int64_t shape0[5] = {0}; /* C, T, H, W, D of the first sample */
    int64_t *shapes4 = xcalloc((size_t)n * 4, sizeof *shapes4);
    int64_t max_rows = 0;
    int rc = -1;
    float *tbuf = NULL;
    /* pass 1: open and check every header, so a bad file fails before any data is read */
    for (int i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (!(files[i] = st_open(path, err, errlen))) goto done;
        int64_t ld[4], td[2];
        if (!(lat[i] = find_sample_tensor(files[i], "video_latents", 4, "[C, T, H, W]", ld, err, errlen))) goto done;
        if (!(txt[i] = find_sample_tensor(files[i], "text_embeddings", 2, "[L, D]", td, err, errlen))) goto done;
        int64_t s5[5] = {ld[0], ld[1], ld[2], ld[3], td[1]};
        if (i == 0) memcpy(shape0, s5, sizeof s5);
        memcpy(shapes4 + 4 * (size_t)i, ld, sizeof ld);
        if (s5[0] != shape0[0] || s5[4] != shape0[4]) { /* T, H, W may differ: resolution buckets */
            snprintf(err, errlen,
                     "'%s': video_latents [C, T, H, W] = [%lld, %lld, %lld, %lld] with text width D = %lld, but the "
                     "first sample '%s' holds [%lld, %lld, %lld, %lld] with D = %lld; every sample must share C and D",
                     path, (long long)s5[0], (long long)s5[1], (long long)s5[2], (long long)s5[3], (long long)s5[4],
                     names[0], (long long)shape0[0], (long long)shape0[1], (long long)shape0[2], (long long)shape0[3],
                     (long long)shape0[4]);
            goto done;
        }
        if (s5[0] * s5[1] * s5[2] * s5[3] > (1ll << 31) || td[0] > (1 << 24) || td[1] > (1 << 20)) {
            snprintf(err, errlen, "'%s': tensors too large for an in-memory sample", path);
            goto done;
        }
        rows[i] = td[0];
        if (td[0] > max_rows) max_rows = td[0];
    }
    vd->n = n;
    vd->text_dim = (int)shape0[4];
    vd->text_len = text_len > 0 ? text_len : (int)max_rows;
    size_t txt_n = (size_t)vd->text_len * vd->text_dim;
    vd->latents = xalloc_floats(video_dataset_layout(vd, shapes4));
    vd->text = xalloc_floats((size_t)n * txt_n);
    vd->text_lens = xcalloc((size_t)n, sizeof(int));
    vd->captions = xcalloc((size_t)n, sizeof(char *));
    tbuf = xalloc_floats((size_t)max_rows * vd->text_dim);
    /* pass 2: the data */
    for (int i = 0; i < n; i++) {
        int sh[4];
        st_read_f32(files[i], lat[i], (float *)video_dataset_sample(vd, i, sh));
        st_read_f32(files[i], txt[i], tbuf);
        const char *cap = st_meta(files[i], "caption"), *tl = st_meta(files[i], "text_len");
        int len;
        if (tl) {
            char *end;
            long v = strtol(tl, &end, 10);
            if (end == tl || *end || v < 1 || v > rows[i]) {
                snprintf(err, errlen,
                         "'%s': metadata text_len '%s' must be a whole number from 1 to the %lld rows of "
                         "text_embeddings",
                         files[i]->path, tl, (long long)rows[i]);
                goto done;
            }
            len = (int)v;
        } else
            len = text_valid_rows(tbuf, rows[i], vd->text_dim);
        if (len > vd->text_len) {
            snprintf(err, errlen, "'%s': text_embeddings has %d valid rows, more than the text length %d",
                     files[i]->path, len, vd->text_len);
            goto done;
        }
        vd->text_lens[i] = len;
        memcpy(vd->text + (size_t)i * txt_n, tbuf, sizeof(float) * (size_t)len * vd->text_dim);
        if (cap) vd->captions[i] = xstrdup(cap);
    }
    rc = 0;
done:
    if (rc != 0) video_dataset_free(vd);
    for (int i = 0; i < n; i++) {
        st_close(files[i]);
        free(names[i]);
    }
    free(files), free(names), free(lat), free(txt), free(rows), free(tbuf), free(shapes4);
    return rc;
}
