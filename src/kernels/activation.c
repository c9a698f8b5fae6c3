/* Elementwise activations: GELU (tanh approximation) and SiLU.
 *
 * Both are written through the logistic function: 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)), so
 * gelu(x) = x / (1 + exp(-2u)) and silu(x) = x / (1 + exp(-x)). That form has no cancellation anywhere
 * (unlike 1 - 2 / (exp(2u) + 1) near u = 0), so a branch-free exp with ~1e-7 relative error gives
 * ~2e-7 relative error in the result and lets the compiler vectorise the loops. */
#include "dfm/kernels.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp(x), relative error < 2e-7; branch-free (selects only) so loops calling it vectorise.
 * Returns +inf above 88 and exp(-87) below -87: callers only need 1 + exp(.) and 1 / (1 + exp(.)). */
static inline float exp_approx(float x0) {
    /* a NaN input is replaced by 0 here, keeping the exponent bits below in range, and passed through at the end
     * (compares and blends: fminf/fmaxf would stop the loop from vectorising) */
    float x = x0 == x0 ? x0 : 0.0f;
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    /* x = n ln2 + r, |r| <= ln2 / 2; the 1.5 * 2^23 trick rounds to nearest without a libm call */
    const float shifter = 12582912.0f;
    float n = (x * 1.44269504088896341f + shifter) - shifter;
    float r = fmaf(n, -0.693145751953125f, x); /* ln2 split in two for an exact product */
    r = fmaf(n, -1.428606765330187e-06f, r);
    /* degree-6 Taylor polynomial of exp on |r| <= 0.347: truncation < 1.3e-7 */
    float p = 1.0f / 720.0f;
    p = fmaf(p, r, 1.0f / 120.0f);
    p = fmaf(p, r, 1.0f / 24.0f);
    p = fmaf(p, r, 1.0f / 6.0f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x0 != x0 ? x0 : x0 > 88.0f ? INFINITY : p * scale;
}

#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_C 0.044715f

void gelu_forward(float *restrict out, const float *restrict inp, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float u = GELU_K * (x + GELU_C * x * x * x);
        out[i] = x / (1.0f + exp_approx(-2.0f * u));
    }
}

void gelu_backward(float *restrict dinp, const float *restrict dout, const float *restrict inp, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float u = GELU_K * (x + GELU_C * x * x * x);
        float e = exp_approx(-2.0f * u);
        float s = 1.0f / (1.0f + e); /* 0.5 (1 + tanh u) */
        /* 1 - s without cancellation (and without inf * 0 when e overflows) */
        float oms = e < 1.0f ? e * s : 1.0f - s;
        /* d/dx = s + x * s (1 - s) * 2 u' */
        float du = 2.0f * GELU_K * (1.0f + 3.0f * GELU_C * x * x);
        dinp[i] += dout[i] * (s + x * s * oms * du);
    }
}

void silu_forward(float *restrict out, const float *restrict inp, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = x / (1.0f + exp_approx(-x));
    }
}

void silu_backward(float *restrict dinp, const float *restrict dout, const float *restrict inp, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float e = exp_approx(-x);
        float s = 1.0f / (1.0f + e);
        float oms = e < 1.0f ? e * s : 1.0f - s;
        dinp[i] += dout[i] * (s * (1.0f + x * oms));
    }
}
