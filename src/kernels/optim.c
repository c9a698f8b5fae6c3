/* AdamW, gradient-norm clipping and the EMA of weights. */
#include "dfm/kernels.h"

#include <math.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif

/* Fixed number of chunks for norm reductions: the partial sums and their combination order depend only
 * on n, never on the thread count, so global_norm is bitwise reproducible. */
#define NORM_CHUNKS 64

#ifdef __clang__
/* clang would fuse the scalar tail's a*b + c into FMAs and break bitwise agreement with the vector body */
#pragma STDC FP_CONTRACT OFF
#endif

/* One AdamW element; the vector paths below perform exactly these IEEE operations in this order (no FMA),
 * so every path gives bitwise the same result. */
static inline float adamw_elem(float *m, float *v, float p, float g, float b1, float one_b1, float b2, float one_b2,
                               float bc2_sqrt, float eps, float decay, float step_size) {
    const float mi = b1 * *m + one_b1 * g;
    const float vi = b2 * *v + one_b2 * (g * g);
    *m = mi;
    *v = vi;
    const float denom = sqrtf(vi) / bc2_sqrt + eps;
    return p * decay - step_size * (mi / denom);
}

/* torch.optim.AdamW, single-tensor path: scalar factors are computed in double (as Python does) and applied
 * in float (as the tensor ops do). sqrtf keeps errno semantics under the default -fmath-errno, which stops
 * compilers from vectorising the plain loop, hence the explicit AVX-512 / AVX paths (3-4x faster). */
void adamw_step(float *restrict param, const float *restrict grad, float *restrict m, float *restrict v, size_t n,
                float lr, float beta1, float beta2, float eps, float weight_decay, long step) {
    const float decay = (float)(1.0 - (double)lr * weight_decay);
    const float b1 = beta1, one_b1 = (float)(1.0 - (double)beta1);
    const float b2 = beta2, one_b2 = (float)(1.0 - (double)beta2);
    const double bc1 = 1.0 - pow((double)beta1, (double)step);
    const double bc2 = 1.0 - pow((double)beta2, (double)step);
    const float step_size = (float)((double)lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
#if defined(__AVX512F__)
#define ADAMW_W 16
#elif defined(__AVX__)
#define ADAMW_W 8
#else
#define ADAMW_W 1
#endif
    const size_t nvec = n / ADAMW_W;
#pragma omp parallel for schedule(static)
    for (size_t k = 0; k < nvec; k++) {
        const size_t i = k * ADAMW_W;
#if defined(__AVX512F__)
        const __m512 g = _mm512_loadu_ps(grad + i);
        const __m512 mi = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(b1), _mm512_loadu_ps(m + i)),
                                        _mm512_mul_ps(_mm512_set1_ps(one_b1), g));
        const __m512 vi = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(b2), _mm512_loadu_ps(v + i)),
                                        _mm512_mul_ps(_mm512_set1_ps(one_b2), _mm512_mul_ps(g, g)));
        _mm512_storeu_ps(m + i, mi);
        _mm512_storeu_ps(v + i, vi);
        const __m512 denom =
            _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vi), _mm512_set1_ps(bc2_sqrt)), _mm512_set1_ps(eps));
        const __m512 upd = _mm512_mul_ps(_mm512_set1_ps(step_size), _mm512_div_ps(mi, denom));
        _mm512_storeu_ps(param + i,
                         _mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(param + i), _mm512_set1_ps(decay)), upd));
#elif defined(__AVX__)
        const __m256 g = _mm256_loadu_ps(grad + i);
        const __m256 mi = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(b1), _mm256_loadu_ps(m + i)),
                                        _mm256_mul_ps(_mm256_set1_ps(one_b1), g));
        const __m256 vi = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(b2), _mm256_loadu_ps(v + i)),
                                        _mm256_mul_ps(_mm256_set1_ps(one_b2), _mm256_mul_ps(g, g)));
        _mm256_storeu_ps(m + i, mi);
        _mm256_storeu_ps(v + i, vi);
        const __m256 denom =
            _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), _mm256_set1_ps(bc2_sqrt)), _mm256_set1_ps(eps));
        const __m256 upd = _mm256_mul_ps(_mm256_set1_ps(step_size), _mm256_div_ps(mi, denom));
        _mm256_storeu_ps(param + i,
                         _mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(param + i), _mm256_set1_ps(decay)), upd));
#else
        param[i] = adamw_elem(m + i, v + i, param[i], grad[i], b1, one_b1, b2, one_b2, bc2_sqrt, eps, decay, step_size);
#endif
    }
    for (size_t i = nvec * ADAMW_W; i < n; i++)
        param[i] = adamw_elem(m + i, v + i, param[i], grad[i], b1, one_b1, b2, one_b2, bc2_sqrt, eps, decay, step_size);
#undef ADAMW_W
}

double sum_squares(const float *restrict x, size_t n) {
    double part[NORM_CHUNKS];
    const size_t chunk = (n + NORM_CHUNKS - 1) / NORM_CHUNKS;
#pragma omp parallel for schedule(static)
    for (int k = 0; k < NORM_CHUNKS; k++) {
        const size_t i0 = (size_t)k * chunk < n ? (size_t)k * chunk : n;
        const size_t i1 = i0 + chunk < n ? i0 + chunk : n;
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (size_t i = i0; i < i1; i++) s += (double)x[i] * x[i];
        part[k] = s;
    }
    double total = 0;
    for (int k = 0; k < NORM_CHUNKS; k++) total += part[k];
    return total;
}

double global_norm(const float *restrict x, size_t n) {
    return sqrt(sum_squares(x, n));
}

double clip_grad_norm(float *restrict grad, size_t n, double max_norm) {
    const double total = global_norm(grad, n);
    const double coef = max_norm / (total + 1e-6);
    if (coef < 1.0) {
        const float c = (float)coef;
#pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < n; i++) grad[i] *= c;
    }
    return total;
}

void ema_update(float *restrict ema, const float *restrict param, size_t n, float decay) {
    const float one_d = (float)(1.0 - (double)decay);
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) ema[i] = decay * ema[i] + one_d * param[i];
}
