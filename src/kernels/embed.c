/* Sinusoidal timestep and 2-D position embeddings, and the embedding-table lookup. */
#include "dfm/kernels.h"

#include <math.h>
#include <string.h>

/* Column block for embedding_backward: rows with equal ids add into the same table row, so threads split
 * the columns and each walks all rows in order (deterministic, race-free). */
#define EMBED_COLS 256

/* exp as torch computes it on CPU for float tensors (SLEEF's expf_u10 algorithm, which torch vectorises with):
 * round-to-nearest range reduction by ln 2 in two parts, a degree-5 polynomial of the same coefficients, all
 * steps fused-multiply-add in float. It is within 1 ulp of exp but not correctly rounded, and for the timestep
 * frequencies one ulp matters: at t ~ 1000 it moves t * freq by ~6e-5. With this, the frequencies are
 * bitwise those of torch (checked by tests/ref/kernels_ref.py). */
static float torch_expf(float d) {
    const float q = rintf(d * 1.44269504088896341f);
    float s = fmaf(q, -0.693145751953125f, d);
    s = fmaf(q, -1.428606765330187045e-06f, s);
    float u = 0.000198527617612853646278381f;
    u = fmaf(u, s, 0.00139304355252534151077271f);
    u = fmaf(u, s, 0.00833336077630519866943359f);
    u = fmaf(u, s, 0.0416664853692054748535156f);
    u = fmaf(u, s, 0.166666671633720397949219f);
    u = fmaf(u, s, 0.5f);
    u = 1.0f + fmaf(s * s, u, s);
    const int qi = (int)q;
    const int qh = qi >= 0 ? qi / 2 : -((1 - qi) / 2); /* floor(qi / 2) */
    u = ldexpf(ldexpf(u, qh), qi - qh);                /* two exact steps, as SLEEF scales */
    if (d < -104.0f) u = 0.0f;
    if (d > 100.0f) u = INFINITY;
    return u;
}

/* Follows diffusers' get_timestep_embedding step by step in float32, as torch computes it: the exponent,
 * exp and t * freq are rounded to float exactly where torch rounds them, and exp is torch's own (above), so
 * the sin/cos arguments are bitwise torch's. (For t ~ 1000 the argument's float rounding alone moves sin/cos
 * by ~3e-5, so neither a double-precision argument nor a correctly rounded exp would match torch to 1e-5.)
 * sin and cos are evaluated in double and rounded, i.e. within torch's own ~1 ulp. */
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
            const float freq = torch_expf(e);
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
    if (kernels_grad_frozen(dtable)) return;
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
