/* adaLN helpers: per-sample shift/scale modulation and gated residual. */
#include "dfm/kernels.h"

/* Column block for the sums over tokens: one (sample, block) pair per work item, rows walked in order,
 * so dshift/dscale/dgate are deterministic and independent of the thread count. */
#define ADALN_COLS 64

void modulate_forward(float *restrict out, const float *restrict x, const float *restrict shift,
                      const float *restrict scale, int B, int T, int C, int mod_stride) {
#pragma omp parallel for schedule(static)
    for (long r = 0; r < (long)B * T; r++) {
        const int b = (int)(r / T);
        const float *sh = shift + (size_t)b * mod_stride, *sc = scale + (size_t)b * mod_stride;
        const float *xr = x + (size_t)r * C;
        float *o = out + (size_t)r * C;
        for (int c = 0; c < C; c++) o[c] = xr[c] * (1.0f + sc[c]) + sh[c];
    }
}

void modulate_backward(float *restrict dx, float *restrict dshift, float *restrict dscale, const float *restrict dout,
                       const float *restrict x, const float *restrict scale, int B, int T, int C, int mod_stride) {
    if (dx) {
#pragma omp parallel for schedule(static)
        for (long r = 0; r < (long)B * T; r++) {
            const float *sc = scale + (size_t)(r / T) * mod_stride;
            const float *g = dout + (size_t)r * C;
            float *d = dx + (size_t)r * C;
            for (int c = 0; c < C; c++) d[c] += g[c] * (1.0f + sc[c]);
        }
    }
    if (dshift || dscale) {
        const int nblk = (C + ADALN_COLS - 1) / ADALN_COLS;
#pragma omp parallel for schedule(static)
        for (long w = 0; w < (long)B * nblk; w++) {
            const int b = (int)(w / nblk), c0 = (int)(w % nblk) * ADALN_COLS;
            const int nc = C - c0 < ADALN_COLS ? C - c0 : ADALN_COLS;
            float ash[ADALN_COLS] = {0}, asc[ADALN_COLS] = {0};
            for (int t = 0; t < T; t++) {
                const size_t off = ((size_t)b * T + t) * C + c0;
                const float *g = dout + off, *xr = x + off;
                for (int c = 0; c < nc; c++) {
                    ash[c] += g[c];
                    asc[c] += g[c] * xr[c];
                }
            }
            if (dshift)
                for (int c = 0; c < nc; c++) dshift[(size_t)b * mod_stride + c0 + c] += ash[c];
            if (dscale)
                for (int c = 0; c < nc; c++) dscale[(size_t)b * mod_stride + c0 + c] += asc[c];
        }
    }
}

/* out may alias x (in-place residual add), so neither gets restrict; each element reads x[i] before writing out[i]. */
void gate_residual_forward(float *out, const float *x, const float *restrict y, const float *restrict gate, int B,
                           int T, int C, int mod_stride) {
#pragma omp parallel for schedule(static)
    for (long r = 0; r < (long)B * T; r++) {
        const float *gt = gate + (size_t)(r / T) * mod_stride;
        const float *xr = x + (size_t)r * C, *yr = y + (size_t)r * C;
        float *o = out + (size_t)r * C;
        for (int c = 0; c < C; c++) o[c] = xr[c] + gt[c] * yr[c];
    }
}

void gate_residual_backward(float *restrict dx, float *restrict dy, float *restrict dgate, const float *restrict dout,
                            const float *restrict y, const float *restrict gate, int B, int T, int C, int mod_stride) {
    if (dx || dy) {
#pragma omp parallel for schedule(static)
        for (long r = 0; r < (long)B * T; r++) {
            const float *gt = gate + (size_t)(r / T) * mod_stride;
            const float *g = dout + (size_t)r * C;
            if (dx) {
                float *d = dx + (size_t)r * C;
                for (int c = 0; c < C; c++) d[c] += g[c];
            }
            if (dy) {
                float *d = dy + (size_t)r * C;
                for (int c = 0; c < C; c++) d[c] += gt[c] * g[c];
            }
        }
    }
    if (dgate) {
        const int nblk = (C + ADALN_COLS - 1) / ADALN_COLS;
#pragma omp parallel for schedule(static)
        for (long w = 0; w < (long)B * nblk; w++) {
            const int b = (int)(w / nblk), c0 = (int)(w % nblk) * ADALN_COLS;
            const int nc = C - c0 < ADALN_COLS ? C - c0 : ADALN_COLS;
            float acc[ADALN_COLS] = {0};
            for (int t = 0; t < T; t++) {
                const size_t off = ((size_t)b * T + t) * C + c0;
                const float *g = dout + off, *yr = y + off;
                for (int c = 0; c < nc; c++) acc[c] += g[c] * yr[c];
            }
            for (int c = 0; c < nc; c++) dgate[(size_t)b * mod_stride + c0 + c] += acc[c];
        }
    }
}
