/* AdamW, gradient-norm clipping and the EMA of weights. */
#include "dfm/kernels.h"

#include <math.h>

/* Fixed number of chunks for norm reductions: the partial sums and their combination order depend only
 * on n, never on the thread count, so global_norm is bitwise reproducible. */
#define NORM_CHUNKS 64

/* torch.optim.AdamW, single-tensor path: scalar factors are computed in double (as Python does) and applied
 * in float (as the tensor ops do). Note: sqrtf keeps errno semantics under the default -fmath-errno, so this
 * loop stays scalar; building with -fno-math-errno vectorises it (no per-function switch works in GCC 12). */
void adamw_step(float *restrict param, const float *restrict grad, float *restrict m, float *restrict v, size_t n,
                float lr, float beta1, float beta2, float eps, float weight_decay, long step) {
    const float decay = (float)(1.0 - (double)lr * weight_decay);
    const float b1 = beta1, one_b1 = (float)(1.0 - (double)beta1);
    const float b2 = beta2, one_b2 = (float)(1.0 - (double)beta2);
    const double bc1 = 1.0 - pow((double)beta1, (double)step);
    const double bc2 = 1.0 - pow((double)beta2, (double)step);
    const float step_size = (float)((double)lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        const float g = grad[i];
        const float mi = b1 * m[i] + one_b1 * g;
        const float vi = b2 * v[i] + one_b2 * (g * g);
        m[i] = mi;
        v[i] = vi;
        const float denom = sqrtf(vi) / bc2_sqrt + eps;
        param[i] = param[i] * decay - step_size * (mi / denom);
    }
}

double global_norm(const float *restrict x, size_t n) {
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
    return sqrt(total);
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
