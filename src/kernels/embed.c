/* Sinusoidal timestep and 2-D position embeddings, and the embedding-table lookup. */
#include "dfm/kernels.h"

#include <math.h>
#include <string.h>

/* Column block for embedding_backward: rows with equal ids add into the same table row, so threads split
 * the columns and each walks all rows in order (deterministic, race-free). */
#define EMBED_COLS 256

/* Follows diffusers' get_timestep_embedding step by step in float32, as torch computes it: the exponent,
 * exp and t * freq are rounded to float exactly where torch rounds them (for t ~ 1000 the argument's float
 * rounding alone moves sin/cos by ~3e-5, so a double-precision argument would NOT match torch). Only sin and
 * cos are evaluated in double and rounded, i.e. correctly rounded where torch is within an ulp or so. */
void timestep_embedding(float *restrict out, const float *restrict t, int B, int dim, float max_period,
                        float freq_shift, int flip_sin_to_cos) {
    const int half = dim / 2;
    const float neg_log = (float)(-log((double)max_period));
    const float denom = (float)((double)half - (double)freq_shift);
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        float *o = out + (size_t)b * dim;
        float *first = o, *second = o + half; /* sin then cos, or swapped */
        if (flip_sin_to_cos) {
            first = o + half;
            second = o;
        }
        for (int i = 0; i < half; i++) {
            float e = neg_log * (float)i;
            e = e / denom;
            const float freq = (float)exp((double)e);
            const float arg = t[b] * freq;
            first[i] = (float)sin((double)arg);
            second[i] = (float)cos((double)arg);
        }
        if (dim & 1) o[dim - 1] = 0.0f;
    }
}

/* Follows diffusers' get_2d_sincos_pos_embed (numpy): grid coordinates are float32
 * (arange / (grid/base_size) / interp_scale), the outer product with omega and sin/cos are float64,
 * and the result is rounded to float32 once. */
void pos_embed_2d_sincos(float *restrict out, int dim, int grid_h, int grid_w, float base_size, float interp_scale) {
    const int half = dim / 2, quarter = dim / 4;
    const float sh = (float)((double)grid_h / (double)base_size);
    const float sw = (float)((double)grid_w / (double)base_size);
#pragma omp parallel for schedule(static)
    for (long tok = 0; tok < (long)grid_h * grid_w; tok++) {
        const int i = (int)(tok / grid_w), j = (int)(tok % grid_w);
        const float ph = (float)i / sh / interp_scale;
        const float pw = (float)j / sw / interp_scale;
        float *o = out + (size_t)tok * dim;
        for (int k = 0; k < quarter; k++) {
            const double omega = 1.0 / pow(10000.0, (double)k / ((double)half / 2.0));
            const double aw = (double)pw * omega, ah = (double)ph * omega;
            o[k] = (float)sin(aw);
            o[quarter + k] = (float)cos(aw);
            o[half + k] = (float)sin(ah);
            o[half + quarter + k] = (float)cos(ah);
        }
    }
}

void embedding_forward(float *restrict out, const float *restrict table, const int *restrict ids, int B, int C) {
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) memcpy(out + (size_t)b * C, table + (size_t)ids[b] * C, sizeof(float) * (size_t)C);
}

void embedding_backward(float *restrict dtable, const float *restrict dout, const int *restrict ids, int B, int C) {
    const int nblk = (C + EMBED_COLS - 1) / EMBED_COLS;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < nblk; blk++) {
        const int c0 = blk * EMBED_COLS, nc = C - c0 < EMBED_COLS ? C - c0 : EMBED_COLS;
        for (int b = 0; b < B; b++) {
            float *d = dtable + (size_t)ids[b] * C + c0;
            const float *g = dout + (size_t)b * C + c0;
            for (int c = 0; c < nc; c++) d[c] += g[c];
        }
    }
}
