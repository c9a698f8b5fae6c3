/* Patch embedding layout changes. Both maps are bijections between image pixels and token features, so
 * the backward of each is the inverse gather with +=, and splitting over (sample, patch row) is race-free.
 * H and W must be multiples of p. */
#include "dfm/kernels.h"

/* tokens[b, gi*gw + gj, (c*p + ph)*p + pw] = img[b, c, gi*p + ph, gj*p + pw] */
void patchify_forward(float *restrict tokens, const float *restrict img, int B, int C, int H, int W, int p) {
    const int gh = H / p, gw = W / p, F = C * p * p;
#pragma omp parallel for schedule(static)
    for (long bi = 0; bi < (long)B * gh; bi++) {
        const int b = (int)(bi / gh), gi = (int)(bi % gh);
        float *trow = tokens + ((size_t)b * gh * gw + (size_t)gi * gw) * F;
        for (int c = 0; c < C; c++)
            for (int ph = 0; ph < p; ph++) {
                const float *src = img + (((size_t)b * C + c) * H + (size_t)gi * p + ph) * W;
                float *dst = trow + ((size_t)c * p + ph) * p;
                for (int gj = 0; gj < gw; gj++)
                    for (int pw = 0; pw < p; pw++) dst[(size_t)gj * F + pw] = src[gj * p + pw];
            }
    }
}

void patchify_backward(float *restrict dimg, const float *restrict dtokens, int B, int C, int H, int W, int p) {
    const int gh = H / p, gw = W / p, F = C * p * p;
#pragma omp parallel for schedule(static)
    for (long bi = 0; bi < (long)B * gh; bi++) {
        const int b = (int)(bi / gh), gi = (int)(bi % gh);
        const float *trow = dtokens + ((size_t)b * gh * gw + (size_t)gi * gw) * F;
        for (int c = 0; c < C; c++)
            for (int ph = 0; ph < p; ph++) {
                float *dst = dimg + (((size_t)b * C + c) * H + (size_t)gi * p + ph) * W;
                const float *src = trow + ((size_t)c * p + ph) * p;
                for (int gj = 0; gj < gw; gj++)
                    for (int pw = 0; pw < p; pw++) dst[gj * p + pw] += src[(size_t)gj * F + pw];
            }
    }
}

/* img[b, c, gi*p + ph, gj*p + pw] = tokens[b, gi*gw + gj, (ph*p + pw)*C + c] */
void unpatchify_forward(float *restrict img, const float *restrict tokens, int B, int C, int H, int W, int p) {
    const int gh = H / p, gw = W / p, F = C * p * p;
#pragma omp parallel for schedule(static)
    for (long bi = 0; bi < (long)B * gh; bi++) {
        const int b = (int)(bi / gh), gi = (int)(bi % gh);
        const float *trow = tokens + ((size_t)b * gh * gw + (size_t)gi * gw) * F;
        for (int c = 0; c < C; c++)
            for (int ph = 0; ph < p; ph++) {
                float *dst = img + (((size_t)b * C + c) * H + (size_t)gi * p + ph) * W;
                const float *src = trow + (size_t)ph * p * C + c;
                for (int gj = 0; gj < gw; gj++)
                    for (int pw = 0; pw < p; pw++) dst[gj * p + pw] = src[(size_t)gj * F + (size_t)pw * C];
            }
    }
}

void unpatchify_backward(float *restrict dtokens, const float *restrict dimg, int B, int C, int H, int W, int p) {
    const int gh = H / p, gw = W / p, F = C * p * p;
#pragma omp parallel for schedule(static)
    for (long bi = 0; bi < (long)B * gh; bi++) {
        const int b = (int)(bi / gh), gi = (int)(bi % gh);
        float *trow = dtokens + ((size_t)b * gh * gw + (size_t)gi * gw) * F;
        for (int c = 0; c < C; c++)
            for (int ph = 0; ph < p; ph++) {
                const float *src = dimg + (((size_t)b * C + c) * H + (size_t)gi * p + ph) * W;
                float *dst = trow + (size_t)ph * p * C + c;
                for (int gj = 0; gj < gw; gj++)
                    for (int pw = 0; pw < p; pw++) dst[(size_t)gj * F + (size_t)pw * C] += src[gj * p + pw];
            }
    }
}
