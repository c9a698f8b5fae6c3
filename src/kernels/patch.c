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

/* ---- 3-D patches (video latents [B, C, T, H, W], patch pt x ph x pw, the layout of a Conv3d with
 * kernel = stride = patch) ---------------------------------------------------------------------------------
 * Tokens run over the patch grid (gt, gh, gw) row-major. Work items are (sample, gt, gh) rows of the grid:
 * each touches a disjoint set of pixels and tokens, so the backward scatters are race-free too. */

/* tokens[b, (gt*GH + gh)*GW + gw, ((c*pt + kt)*ph + kh)*pw + kw] = x[b, c, gt*pt + kt, gh*ph + kh, gw*pw + kw] */
void patchify3d_forward(float *restrict tokens, const float *restrict x, int B, int C, int T, int H, int W, int pt,
                        int ph, int pw) {
    const int GT = T / pt, GH = H / ph, GW = W / pw, F = C * pt * ph * pw;
#pragma omp parallel for schedule(static)
    for (long r = 0; r < (long)B * GT * GH; r++) {
        const int b = (int)(r / ((long)GT * GH)), gt = (int)(r / GH % GT), gh = (int)(r % GH);
        float *trow = tokens + (size_t)r * GW * F;
        for (int c = 0; c < C; c++)
            for (int kt = 0; kt < pt; kt++)
                for (int kh = 0; kh < ph; kh++) {
                    const float *src =
                        x + ((((size_t)b * C + c) * T + (size_t)gt * pt + kt) * H + (size_t)gh * ph + kh) * W;
                    float *dst = trow + (((size_t)c * pt + kt) * ph + kh) * pw;
                    for (int gw = 0; gw < GW; gw++)
                        for (int kw = 0; kw < pw; kw++) dst[(size_t)gw * F + kw] = src[(size_t)gw * pw + kw];
                }
    }
}

void patchify3d_backward(float *restrict dx, const float *restrict dtokens, int B, int C, int T, int H, int W, int pt,
                         int ph, int pw) {
    const int GT = T / pt, GH = H / ph, GW = W / pw, F = C * pt * ph * pw;
#pragma omp parallel for schedule(static)
    for (long r = 0; r < (long)B * GT * GH; r++) {
        const int b = (int)(r / ((long)GT * GH)), gt = (int)(r / GH % GT), gh = (int)(r % GH);
        const float *trow = dtokens + (size_t)r * GW * F;
        for (int c = 0; c < C; c++)
            for (int kt = 0; kt < pt; kt++)
                for (int kh = 0; kh < ph; kh++) {
                    float *dst = dx + ((((size_t)b * C + c) * T + (size_t)gt * pt + kt) * H + (size_t)gh * ph + kh) * W;
                    const float *src = trow + (((size_t)c * pt + kt) * ph + kh) * pw;
                    for (int gw = 0; gw < GW; gw++)
                        for (int kw = 0; kw < pw; kw++) dst[(size_t)gw * pw + kw] += src[(size_t)gw * F + kw];
                }
    }
}

/* x[b, c, gt*pt + kt, gh*ph + kh, gw*pw + kw] = tokens[b, (gt*GH + gh)*GW + gw, ((kt*ph + kh)*pw + kw)*C + c] */
void unpatchify3d_forward(float *restrict x, const float *restrict tokens, int B, int C, int T, int H, int W, int pt,
                          int ph, int pw) {
    const int GT = T / pt, GH = H / ph, GW = W / pw, F = C * pt * ph * pw;
#pragma omp parallel for schedule(static)
    for (long r = 0; r < (long)B * GT * GH; r++) {
        const int b = (int)(r / ((long)GT * GH)), gt = (int)(r / GH % GT), gh = (int)(r % GH);
        const float *trow = tokens + (size_t)r * GW * F;
        for (int c = 0; c < C; c++)
            for (int kt = 0; kt < pt; kt++)
                for (int kh = 0; kh < ph; kh++) {
                    float *dst = x + ((((size_t)b * C + c) * T + (size_t)gt * pt + kt) * H + (size_t)gh * ph + kh) * W;
                    const float *src = trow + (((size_t)kt * ph + kh) * pw) * C + c;
                    for (int gw = 0; gw < GW; gw++)
                        for (int kw = 0; kw < pw; kw++)
                            dst[(size_t)gw * pw + kw] = src[(size_t)gw * F + (size_t)kw * C];
                }
    }
}

void unpatchify3d_backward(float *restrict dtokens, const float *restrict dx, int B, int C, int T, int H, int W, int pt,
                           int ph, int pw) {
    const int GT = T / pt, GH = H / ph, GW = W / pw, F = C * pt * ph * pw;
#pragma omp parallel for schedule(static)
    for (long r = 0; r < (long)B * GT * GH; r++) {
        const int b = (int)(r / ((long)GT * GH)), gt = (int)(r / GH % GT), gh = (int)(r % GH);
        float *trow = dtokens + (size_t)r * GW * F;
        for (int c = 0; c < C; c++)
            for (int kt = 0; kt < pt; kt++)
                for (int kh = 0; kh < ph; kh++) {
                    const float *src =
                        dx + ((((size_t)b * C + c) * T + (size_t)gt * pt + kt) * H + (size_t)gh * ph + kh) * W;
                    float *dst = trow + (((size_t)kt * ph + kh) * pw) * C + c;
                    for (int gw = 0; gw < GW; gw++)
                        for (int kw = 0; kw < pw; kw++)
                            dst[(size_t)gw * F + (size_t)kw * C] += src[(size_t)gw * pw + kw];
                }
    }
}
