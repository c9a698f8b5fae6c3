/* Rotary position embedding (RoPE) on interleaved pairs, and Wan's 3-D (frame, height, width) tables.
 *
 * A head of D features is D/2 pairs (2i, 2i+1), each rotated by the angle of its pair at the token's
 * position: out = (x0 cos - x1 sin, x0 sin + x1 cos), i.e. the complex product (x0 + i x1) e^{i angle}.
 * The rotation is orthogonal, so the backward is the rotation by -angle, accumulated. */
#include "dfm/kernels.h"

#include <math.h>

/* Pair i of a head covers axis 0 (frames) for i < dt/2, then axis 1 (height) for dh/2 pairs, then axis 2
 * (width): dh = dw = 2 * (head_dim / 6), dt = head_dim - dh - dw (128 -> 44/42/42), as diffusers'
 * WanRotaryPosEmbed splits it. Within an axis of `dim` features, pair j has frequency theta^(-2j/dim).
 * Computed in double and rounded once, as diffusers builds its float64 tables and casts them to float32. */
void rope_table_3d(float *restrict cos_out, float *restrict sin_out, int grid_t, int grid_h, int grid_w, int head_dim,
                   double theta) {
    const int half = head_dim / 2, dh = 2 * (head_dim / 6), dt = head_dim - 2 * dh;
    const long ntok = (long)grid_t * grid_h * grid_w;
#pragma omp parallel for schedule(static)
    for (long tok = 0; tok < ntok; tok++) {
        const int pos[3] = {(int)(tok / ((long)grid_h * grid_w)), (int)(tok / grid_w % grid_h), (int)(tok % grid_w)};
        float *c = cos_out + (size_t)tok * half, *s = sin_out + (size_t)tok * half;
        for (int i = 0; i < half; i++) {
            int axis, j, dim;
            if (i < dt / 2) {
                axis = 0, j = i, dim = dt;
            } else if (i < dt / 2 + dh / 2) {
                axis = 1, j = i - dt / 2, dim = dh;
            } else {
                axis = 2, j = i - dt / 2 - dh / 2, dim = dh;
            }
            const double freq = 1.0 / pow(theta, (double)(2 * j) / (double)dim);
            const double angle = (double)pos[axis] * freq;
            c[i] = (float)cos(angle);
            s[i] = (float)sin(angle);
        }
    }
}

/* Not restrict: out may alias inp (in-place rotation with equal strides); each pair is read before written. */
void rope_forward(float *out, const float *inp, const float *cos_tab, const float *sin_tab, int B, int N, int H, int D,
                  int inp_stride, int out_stride) {
    const int half = D / 2;
#pragma omp parallel for schedule(static)
    for (long r = 0; r < (long)B * N; r++) {
        const int n = (int)(r % N);
        const float *c = cos_tab + (size_t)n * half, *s = sin_tab + (size_t)n * half;
        const float *x = inp + (size_t)r * inp_stride;
        float *o = out + (size_t)r * out_stride;
        for (int h = 0; h < H; h++) {
            const float *xh = x + (size_t)h * D;
            float *oh = o + (size_t)h * D;
            for (int i = 0; i < half; i++) {
                const float x0 = xh[2 * i], x1 = xh[2 * i + 1];
                oh[2 * i] = x0 * c[i] - x1 * s[i];
                oh[2 * i + 1] = x0 * s[i] + x1 * c[i];
            }
        }
    }
}

void rope_backward(float *restrict dinp, const float *restrict dout, const float *restrict cos_tab,
                   const float *restrict sin_tab, int B, int N, int H, int D, int dinp_stride, int dout_stride) {
    const int half = D / 2;
#pragma omp parallel for schedule(static)
    for (long r = 0; r < (long)B * N; r++) {
        const int n = (int)(r % N);
        const float *c = cos_tab + (size_t)n * half, *s = sin_tab + (size_t)n * half;
        const float *g = dout + (size_t)r * dout_stride;
        float *dx = dinp + (size_t)r * dinp_stride;
        for (int h = 0; h < H; h++) {
            const float *gh = g + (size_t)h * D;
            float *dh = dx + (size_t)h * D;
            for (int i = 0; i < half; i++) {
                const float g0 = gh[2 * i], g1 = gh[2 * i + 1];
                dh[2 * i] += g0 * c[i] + g1 * s[i];
                dh[2 * i + 1] += g1 * c[i] - g0 * s[i];
            }
        }
    }
}
