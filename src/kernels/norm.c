/* LayerNorm and RMSNorm over the last dimension, forward and backward. */
#include "dfm/kernels.h"

#include <math.h>

/* Column block for parameter-gradient reductions: each thread owns whole blocks of columns and walks
 * all rows in order, so dweight/dbias are deterministic and independent of the thread count. */
#define NORM_COLS 64

void layernorm_forward(float *restrict out, float *restrict mean, float *restrict rstd, const float *restrict inp,
                       const float *restrict weight, const float *restrict bias, int N, int C, float eps) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C;
        float *o = out + (size_t)i * C;
        /* two-pass statistics (no E[x^2] - E[x]^2 cancellation); the mean accumulates in double because
         * rows with a large offset lose digits in a float sum when the loop is not vectorised (-O1 builds);
         * the centred variance is safe in float over SIMD lanes; rstd itself in double */
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (int j = 0; j < C; j++) s += x[j];
        const float m = (float)(s / C);
        float v = 0;
#pragma omp simd reduction(+ : v)
        for (int j = 0; j < C; j++) v += (x[j] - m) * (x[j] - m);
        const float r = (float)(1.0 / sqrt((double)v / C + (double)eps));
        if (weight && bias) {
            for (int j = 0; j < C; j++) o[j] = (x[j] - m) * r * weight[j] + bias[j];
        } else if (weight) {
            for (int j = 0; j < C; j++) o[j] = (x[j] - m) * r * weight[j];
        } else if (bias) {
            for (int j = 0; j < C; j++) o[j] = (x[j] - m) * r + bias[j];
        } else {
            for (int j = 0; j < C; j++) o[j] = (x[j] - m) * r;
        }
        if (mean) mean[i] = m;
        if (rstd) rstd[i] = r;
    }
}

void layernorm_backward(float *restrict dinp, float *restrict dweight, float *restrict dbias,
                        const float *restrict dout, const float *restrict inp, const float *restrict weight,
                        const float *restrict mean, const float *restrict rstd, int N, int C) {
    if (kernels_grad_frozen(dweight)) dweight = NULL;
    if (kernels_grad_frozen(dbias)) dbias = NULL;
    if (dinp) {
#pragma omp parallel for schedule(static)
        for (int i = 0; i < N; i++) {
            const float *x = inp + (size_t)i * C, *g = dout + (size_t)i * C;
            float *dx = dinp + (size_t)i * C;
            const float m = mean[i], r = rstd[i];
            /* dx = r * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = g * weight */
            float s1 = 0, s2 = 0;
            if (weight) {
#pragma omp simd reduction(+ : s1, s2)
                for (int j = 0; j < C; j++) {
                    float dxh = g[j] * weight[j];
                    s1 += dxh;
                    s2 += dxh * ((x[j] - m) * r);
                }
            } else {
#pragma omp simd reduction(+ : s1, s2)
                for (int j = 0; j < C; j++) {
                    s1 += g[j];
                    s2 += g[j] * ((x[j] - m) * r);
                }
            }
            s1 /= C;
            s2 /= C;
            if (weight) {
                for (int j = 0; j < C; j++) dx[j] += r * (g[j] * weight[j] - s1 - (x[j] - m) * r * s2);
            } else {
                for (int j = 0; j < C; j++) dx[j] += r * (g[j] - s1 - (x[j] - m) * r * s2);
            }
        }
    }
    if (dweight || dbias) {
        const int nblk = (C + NORM_COLS - 1) / NORM_COLS;
#pragma omp parallel for schedule(static)
        for (int b = 0; b < nblk; b++) {
            const int j0 = b * NORM_COLS, nj = C - j0 < NORM_COLS ? C - j0 : NORM_COLS;
            float aw[NORM_COLS] = {0}, ab[NORM_COLS] = {0};
            for (int i = 0; i < N; i++) {
                const float *x = inp + (size_t)i * C + j0, *g = dout + (size_t)i * C + j0;
                const float m = mean[i], r = rstd[i];
                for (int j = 0; j < nj; j++) {
                    aw[j] += g[j] * ((x[j] - m) * r);
                    ab[j] += g[j];
                }
            }
            if (dweight)
                for (int j = 0; j < nj; j++) dweight[j0 + j] += aw[j];
            if (dbias)
                for (int j = 0; j < nj; j++) dbias[j0 + j] += ab[j];
        }
    }
}

/* RMSNorm over C features of rows that are inp_stride / out_stride floats apart (e.g. the q or k slice of a
 * fused [N, 3C] qkv buffer, normalised over all heads as Wan's qk-norm does). */
void rmsnorm_forward_strided(float *restrict out, float *restrict rstd, const float *restrict inp,
                             const float *restrict weight, int N, int C, int inp_stride, int out_stride, float eps) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * inp_stride;
        float *o = out + (size_t)i * out_stride;
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (int j = 0; j < C; j++) s += (double)x[j] * x[j];
        const float r = (float)(1.0 / sqrt(s / C + (double)eps));
        if (weight) {
            for (int j = 0; j < C; j++) o[j] = x[j] * r * weight[j];
        } else {
            for (int j = 0; j < C; j++) o[j] = x[j] * r;
        }
        if (rstd) rstd[i] = r;
    }
}

void rmsnorm_forward(float *restrict out, float *restrict rstd, const float *restrict inp, const float *restrict weight,
                     int N, int C, float eps) {
    rmsnorm_forward_strided(out, rstd, inp, weight, N, C, C, C, eps);
}

void rmsnorm_backward_strided(float *restrict dinp, float *restrict dweight, const float *restrict dout,
                              const float *restrict inp, const float *restrict weight, const float *restrict rstd,
                              int N, int C, int dinp_stride, int dout_stride, int inp_stride) {
    if (kernels_grad_frozen(dweight)) dweight = NULL;
    if (dinp) {
#pragma omp parallel for schedule(static)
        for (int i = 0; i < N; i++) {
            const float *x = inp + (size_t)i * inp_stride, *g = dout + (size_t)i * dout_stride;
            float *dx = dinp + (size_t)i * dinp_stride;
            const float r = rstd[i];
            /* dx = r * (g*w - x * r^2 * mean(g*w*x)) */
            float s = 0;
            if (weight) {
#pragma omp simd reduction(+ : s)
                for (int j = 0; j < C; j++) s += g[j] * weight[j] * x[j];
            } else {
#pragma omp simd reduction(+ : s)
                for (int j = 0; j < C; j++) s += g[j] * x[j];
            }
            const float k = r * r * s / C;
            if (weight) {
                for (int j = 0; j < C; j++) dx[j] += r * (g[j] * weight[j] - x[j] * k);
            } else {
                for (int j = 0; j < C; j++) dx[j] += r * (g[j] - x[j] * k);
            }
        }
    }
    if (dweight) {
        const int nblk = (C + NORM_COLS - 1) / NORM_COLS;
#pragma omp parallel for schedule(static)
        for (int b = 0; b < nblk; b++) {
            const int j0 = b * NORM_COLS, nj = C - j0 < NORM_COLS ? C - j0 : NORM_COLS;
            float aw[NORM_COLS] = {0};
            for (int i = 0; i < N; i++) {
                const float *x = inp + (size_t)i * inp_stride + j0, *g = dout + (size_t)i * dout_stride + j0;
                const float r = rstd[i];
                for (int j = 0; j < nj; j++) aw[j] += g[j] * (x[j] * r);
            }
            for (int j = 0; j < nj; j++) dweight[j0 + j] += aw[j];
        }
    }
}

void rmsnorm_backward(float *restrict dinp, float *restrict dweight, const float *restrict dout,
                      const float *restrict inp, const float *restrict weight, const float *restrict rstd, int N,
                      int C) {
    rmsnorm_backward_strided(dinp, dweight, dout, inp, weight, rstd, N, C, C, C, C);
}
