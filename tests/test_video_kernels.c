/* Tests for the kernels the Wan model added: 3-D RoPE tables against their closed form, rope_forward against a
 * naive rotation, strided RMSNorm against the contiguous one and a double reference, 3-D (un)patchify layouts;
 * every backward against central finite differences of L = sum(out * R), the adjoint identity where the map is
 * linear, accumulation (+=) semantics, and bitwise determinism across thread counts. */
#include "dfm/common.h"
#include "dfm/kernels.h"
#include "test.h"

#include <omp.h>
#include <string.h>

static int sanitizer; /* DFM_TEST_SANITIZER=1: fewer finite-difference samples */

static float *randn(size_t n, float scale) {
    float *p = xalloc_floats(n ? n : 1);
    test_fill_randn(p, n, scale);
    return p;
}
static float *zeros(size_t n) {
    return xalloc_floats(n ? n : 1);
}
static float *copy(const float *x, size_t n) {
    float *p = xalloc_floats(n ? n : 1);
    memcpy(p, x, n * sizeof(float));
    return p;
}
static double dot(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}
static size_t rand_index(size_t n) {
    size_t i = (size_t)(test_uniform() * (double)n);
    return i < n ? i : n - 1;
}

/* ---- finite differences (as tests/test_kernels.c) --------------------------------------------- */
typedef double (*loss_fn)(void *ctx);

/* Worst |fd - g| / max|g| over random entries of x[idx] for idx in the list (NULL = all n entries). */
static double fd_check(float *x, size_t n, const float *g, const size_t *idx, size_t nidx, loss_fn f, void *ctx,
                       int samples, double h) {
    size_t cnt = idx ? nidx : n;
    double gmax = 0;
    for (size_t k = 0; k < cnt; k++) {
        size_t i = idx ? idx[k] : k;
        gmax = fabs(g[i]) > gmax ? fabs(g[i]) : gmax;
    }
    if (gmax < 1e-4) gmax = 1e-4;
    if (sanitizer && samples > 6) samples = 6;
    double worst = 0;
    for (int s = 0; s < samples; s++) {
        size_t k = s == 0 ? 0 : s == 1 ? cnt - 1 : rand_index(cnt);
        size_t i = idx ? idx[k] : k;
        float x0 = x[i], xp = (float)(x0 + h), xm = (float)(x0 - h);
        x[i] = xp;
        double lp = f(ctx);
        x[i] = xm;
        double lm = f(ctx);
        x[i] = x0;
        double fd = (lp - lm) / ((double)xp - (double)xm);
        double e = fabs(fd - g[i]) / gmax;
        if (e > worst || e != e) worst = e;
    }
    return worst;
}
#define FD_TOL 1e-2
#define FD_SAMPLES 24

/* after += into a buffer pre-filled with P, (acc - P) must match the gradient computed into zeros */
static double accum_err(const float *acc, const float *pre, const float *g0, size_t n) {
    double md = 0, mr = 0, mp = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(((double)acc[i] - pre[i]) - g0[i]);
        md = d > md || d != d ? d : md;
        mr = fabs(g0[i]) > mr ? fabs(g0[i]) : mr;
        mp = fabs(pre[i]) > mp ? fabs(pre[i]) : mp;
    }
    mr = mr > 1e-2 * mp ? mr : 1e-2 * mp;
    return md / (mr > 1e-30 ? mr : 1e-30);
}
#define ACC_TOL 1e-5

/* ---- RoPE tables ------------------------------------------------------------------------------ */
static void test_rope_table(int gt, int gh, int gw, int D, double theta, int et, int eh) {
    const int half = D / 2;
    const size_t n = (size_t)gt * gh * gw * half;
    float *c = zeros(n), *s = zeros(n);
    rope_table_3d(c, s, gt, gh, gw, D, theta);
    /* closed form: axis sizes from diffusers' split, pair j of an axis of `dim` features turns by pos * theta^(-2j/dim)
     */
    const int dh = 2 * (D / 6), dt = D - 2 * dh;
    double worst = 0;
    for (int f = 0; f < gt; f++)
        for (int y = 0; y < gh; y++)
            for (int x = 0; x < gw; x++) {
                const size_t tok = ((size_t)f * gh + y) * gw + x;
                for (int i = 0; i < half; i++) {
                    double pos, dim;
                    int j;
                    if (i < dt / 2)
                        pos = f, j = i, dim = dt;
                    else if (i < dt / 2 + dh / 2)
                        pos = y, j = i - dt / 2, dim = dh;
                    else
                        pos = x, j = i - dt / 2 - dh / 2, dim = dh;
                    const double a = pos * pow(theta, -2.0 * j / dim);
                    worst = fmax(worst, fabs(c[tok * half + i] - cos(a)));
                    worst = fmax(worst, fabs(s[tok * half + i] - sin(a)));
                }
            }
    CHECK(worst < 1e-6 && dt == et && dh == eh,
          "rope_table_3d grid %dx%dx%d head_dim %d: split %d/%d/%d (expected %d/%d/%d), max |table - closed form| %.1e",
          gt, gh, gw, D, dt, dh, dh, et, eh, eh, worst);
    free(c), free(s);
}

/* ---- RoPE rotation ---------------------------------------------------------------------------- */
typedef struct {
    float *out, *x, *c, *s, *R;
    int B, N, H, D, in_stride, out_stride;
} rope_ctx;
static double rope_loss(void *p) {
    rope_ctx *c = p;
    rope_forward(c->out, c->x, c->c, c->s, c->B, c->N, c->H, c->D, c->in_stride, c->out_stride);
    return dot(c->out, c->R, (size_t)c->B * c->N * c->out_stride);
}

static void test_rope(int B, int gt, int gh, int gw, int H, int D, int in_extra, int out_extra) {
    const int N = gt * gh * gw, C = H * D, half = D / 2;
    const int is = C + in_extra, os = C + out_extra;
    const size_t nin = (size_t)B * N * is, nout = (size_t)B * N * os;
    rope_ctx c = {
        zeros(nout), randn(nin, 1), zeros((size_t)N * half), zeros((size_t)N * half), randn(nout, 1), B, N, H, D, is,
        os};
    rope_table_3d(c.c, c.s, gt, gh, gw, D, 10000.0);
    for (int r = 0; r < B * N; r++)
        for (int j = C; j < os; j++) c.R[(size_t)r * os + j] = 0; /* gap columns are not outputs */
    /* gaps between rows must stay untouched */
    for (size_t i = 0; i < nout; i++) c.out[i] = 7.0f;
    rope_forward(c.out, c.x, c.c, c.s, B, N, H, D, is, os);
    double worst = 0;
    int gaps = 1;
    for (int r = 0; r < B * N; r++) {
        const int n = r % N;
        for (int h = 0; h < H; h++)
            for (int i = 0; i < half; i++) {
                const float *x = c.x + (size_t)r * is + h * D + 2 * i;
                const float *o = c.out + (size_t)r * os + h * D + 2 * i;
                const double co = c.c[n * half + i], si = c.s[n * half + i];
                worst = fmax(worst, fabs(o[0] - (x[0] * co - x[1] * si)));
                worst = fmax(worst, fabs(o[1] - (x[0] * si + x[1] * co)));
            }
        for (int j = C; j < os; j++) gaps &= c.out[(size_t)r * os + j] == 7.0f;
    }
    /* in place */
    float *ip = zeros(nin);
    int inplace = 1;
    if (is == os) {
        memcpy(ip, c.x, nin * sizeof(float));
        rope_forward(ip, ip, c.c, c.s, B, N, H, D, is, is);
        for (int r = 0; r < B * N; r++)
            inplace &= !memcmp(ip + (size_t)r * is, c.out + (size_t)r * os, C * sizeof(float));
    }
    CHECK(worst < 1e-6 && gaps && inplace,
          "rope_forward B=%d grid %dx%dx%d H=%d D=%d strides %d/%d: max err %.1e, gaps %s, in place %s", B, gt, gh, gw,
          H, D, is, os, worst, gaps ? "untouched" : "WRITTEN", inplace ? "same" : "DIFFERENT");

    /* backward: finite differences over the data columns, adjoint identity, accumulation */
    float *dx = zeros(nin);
    rope_backward(dx, c.R, c.c, c.s, B, N, H, D, is, os);
    size_t *idx = xmalloc(sizeof(size_t) * (size_t)B * N * C);
    size_t nidx = 0;
    for (int r = 0; r < B * N; r++)
        for (int j = 0; j < C; j++) idx[nidx++] = (size_t)r * is + j;
    double e = fd_check(c.x, nin, dx, idx, nidx, rope_loss, &c, FD_SAMPLES, 1e-2);
    rope_loss(&c);
    double adj = fabs(dot(c.out, c.R, nout) - dot(c.x, dx, nin)) / sqrt(dot(c.R, c.R, nout) * dot(c.x, c.x, nin));
    float *pre = randn(nin, 1), *acc = copy(pre, nin);
    rope_backward(acc, c.R, c.c, c.s, B, N, H, D, is, os);
    double a = accum_err(acc, pre, dx, nin);
    int gap_zero = 1;
    for (int r = 0; r < B * N; r++)
        for (int j = C; j < is; j++) gap_zero &= dx[(size_t)r * is + j] == 0.0f;
    CHECK(e < FD_TOL && adj < 1e-6 && a < ACC_TOL && gap_zero,
          "rope_backward B=%d H=%d D=%d: finite differences %.2e, adjoint %.1e, accumulate %.1e, gaps %s", B, H, D, e,
          adj, a, gap_zero ? "untouched" : "WRITTEN");
    free(c.out), free(c.x), free(c.c), free(c.s), free(c.R), free(ip), free(dx), free(idx), free(pre), free(acc);
}

/* ---- strided RMSNorm -------------------------------------------------------------------------- */
typedef struct {
    float *out, *rstd, *x, *w, *R;
    int N, C, is, os;
    float eps;
} rms_ctx;
static double rms_loss(void *p) {
    rms_ctx *c = p;
    rmsnorm_forward_strided(c->out, c->rstd, c->x, c->w, c->N, c->C, c->is, c->os, c->eps);
    return dot(c->out, c->R, (size_t)c->N * c->os);
}

static void test_rmsnorm_strided(int N, int C, int is, int os, int affine) {
    const size_t nin = (size_t)N * is, nout = (size_t)N * os;
    rms_ctx c = {zeros(nout), zeros(N), randn(nin, 1.5f), affine ? randn(C, 1) : NULL, randn(nout, 1), N, C, is,
                 os,          1e-6f};
    for (int i = 0; i < N; i++)
        for (int j = C; j < os; j++) c.R[(size_t)i * os + j] = 0; /* gap columns are not outputs */
    for (size_t i = 0; i < nout; i++) c.out[i] = 7.0f;
    rms_loss(&c);
    double worst = 0, wmax = 0;
    int gaps = 1;
    for (int i = 0; i < N; i++) {
        const float *x = c.x + (size_t)i * is;
        double s = 0;
        for (int j = 0; j < C; j++) s += (double)x[j] * x[j];
        const double r = 1 / sqrt(s / C + c.eps);
        for (int j = 0; j < C; j++) {
            const double ref = x[j] * r * (affine ? c.w[j] : 1);
            worst = fmax(worst, fabs(c.out[(size_t)i * os + j] - ref));
            wmax = fmax(wmax, fabs(ref));
        }
        for (int j = C; j < os; j++) gaps &= c.out[(size_t)i * os + j] == 7.0f;
    }
    /* the contiguous kernel on a packed copy must give bitwise the same numbers */
    float *packed = zeros((size_t)N * C), *pout = zeros((size_t)N * C), *prstd = zeros(N);
    for (int i = 0; i < N; i++) memcpy(packed + (size_t)i * C, c.x + (size_t)i * is, C * sizeof(float));
    rmsnorm_forward(pout, prstd, packed, c.w, N, C, c.eps);
    int same = !memcmp(prstd, c.rstd, N * sizeof(float));
    for (int i = 0; i < N; i++) same &= !memcmp(pout + (size_t)i * C, c.out + (size_t)i * os, C * sizeof(float));
    CHECK(worst / wmax < 2e-6 && gaps && same,
          "rmsnorm_forward_strided N=%d C=%d strides %d/%d weight=%d: rel err %.2e, gaps %s, contiguous %s", N, C, is,
          os, affine, worst / wmax, gaps ? "untouched" : "WRITTEN", same ? "identical" : "DIFFERENT");

    const int gs = os + 3; /* dinp stride differs from inp's, dout's is os */
    float *dx = zeros((size_t)N * gs), *dw = zeros(C);
    rmsnorm_backward_strided(dx, affine ? dw : NULL, c.R, c.x, c.w, c.rstd, N, C, gs, os, is);
    /* finite differences: perturb x[i*is + j], compare with dx[i*gs + j] */
    float *dx_in = zeros(nin);
    size_t *idx = xmalloc(sizeof(size_t) * (size_t)N * C);
    size_t nidx = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < C; j++) {
            dx_in[(size_t)i * is + j] = dx[(size_t)i * gs + j];
            idx[nidx++] = (size_t)i * is + j;
        }
    double e1 = fd_check(c.x, nin, dx_in, idx, nidx, rms_loss, &c, FD_SAMPLES, 1e-2), e2 = 0;
    if (affine) e2 = fd_check(c.w, C, dw, NULL, 0, rms_loss, &c, FD_SAMPLES, 1e-2);
    rms_loss(&c);
    float *pre = randn((size_t)N * gs, 1), *acc = copy(pre, (size_t)N * gs);
    rmsnorm_backward_strided(acc, NULL, c.R, c.x, c.w, c.rstd, N, C, gs, os, is);
    double a = accum_err(acc, pre, dx, (size_t)N * gs);
    CHECK(e1 < FD_TOL && e2 < FD_TOL && a < ACC_TOL,
          "rmsnorm_backward_strided N=%d C=%d weight=%d: finite differences dinp %.2e dweight %.2e, accumulate %.1e", N,
          C, affine, e1, e2, a);
    free(c.out), free(c.rstd), free(c.x), free(c.w), free(c.R), free(packed), free(pout), free(prstd), free(dx);
    free(dw), free(dx_in), free(idx), free(pre), free(acc);
}

/* ---- 3-D patches ------------------------------------------------------------------------------ */
typedef struct {
    float *out, *in, *R;
    int B, C, T, H, W, pt, ph, pw, unpatch;
} patch_ctx;
static double patch_loss(void *q) {
    patch_ctx *c = q;
    if (c->unpatch)
        unpatchify3d_forward(c->out, c->in, c->B, c->C, c->T, c->H, c->W, c->pt, c->ph, c->pw);
    else
        patchify3d_forward(c->out, c->in, c->B, c->C, c->T, c->H, c->W, c->pt, c->ph, c->pw);
    return dot(c->out, c->R, (size_t)c->B * c->C * c->T * c->H * c->W);
}

static void test_patch3d(int B, int C, int T, int H, int W, int pt, int ph, int pw) {
    const int GT = T / pt, GH = H / ph, GW = W / pw, P = pt * ph * pw, F = C * P;
    const size_t n = (size_t)B * C * T * H * W, ntok = (size_t)B * GT * GH * GW;
    float *x = randn(n, 1), *tok = zeros(n), *tok2 = zeros(n), *x2 = zeros(n);
    patchify3d_forward(tok, x, B, C, T, H, W, pt, ph, pw);
    int ok = 1;
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int t = 0; t < T; t++)
                for (int y = 0; y < H; y++)
                    for (int z = 0; z < W; z++) {
                        size_t k = ((size_t)b * GT * GH + (size_t)(t / pt) * GH + y / ph) * GW + z / pw;
                        size_t f = (((size_t)c * pt + t % pt) * ph + y % ph) * pw + z % pw;
                        ok &= tok[k * F + f] == x[((((size_t)b * C + c) * T + t) * H + y) * W + z];
                    }
    /* (c, kt, kh, kw) -> (kt, kh, kw, c), then unpatchify must give x back */
    for (size_t k = 0; k < ntok; k++)
        for (int c = 0; c < C; c++)
            for (int q = 0; q < P; q++) tok2[k * F + (size_t)q * C + c] = tok[k * F + (size_t)c * P + q];
    unpatchify3d_forward(x2, tok2, B, C, T, H, W, pt, ph, pw);
    int rt = !memcmp(x, x2, n * sizeof(float));
    CHECK(ok && rt, "patchify3d_forward B=%d C=%d T=%d H=%d W=%d patch %dx%dx%d: layout %s, unpatchify round trip %s",
          B, C, T, H, W, pt, ph, pw, ok ? "ok" : "WRONG", rt ? "exact" : "WRONG");

    patch_ctx pc = {zeros(n), x, randn(n, 1), B, C, T, H, W, pt, ph, pw, 0};
    float *dx = zeros(n), *dtok = zeros(n);
    patchify3d_backward(dx, pc.R, B, C, T, H, W, pt, ph, pw);
    double e1 = fd_check(x, n, dx, NULL, 0, patch_loss, &pc, FD_SAMPLES, 1e-2);
    double adj1 = fabs(dot(tok, pc.R, n) - dot(x, dx, n)) / sqrt(dot(pc.R, pc.R, n) * dot(x, x, n));
    patch_ctx uc = {zeros(n), tok2, pc.R, B, C, T, H, W, pt, ph, pw, 1};
    unpatchify3d_backward(dtok, uc.R, B, C, T, H, W, pt, ph, pw);
    double e2 = fd_check(tok2, n, dtok, NULL, 0, patch_loss, &uc, FD_SAMPLES, 1e-2);
    double adj2 = fabs(dot(x2, uc.R, n) - dot(tok2, dtok, n)) / sqrt(dot(uc.R, uc.R, n) * dot(x, x, n));
    float *pre = randn(n, 1), *acc = copy(pre, n), *pre2 = randn(n, 1), *acc2 = copy(pre2, n);
    patchify3d_backward(acc, pc.R, B, C, T, H, W, pt, ph, pw);
    unpatchify3d_backward(acc2, uc.R, B, C, T, H, W, pt, ph, pw);
    double a1 = accum_err(acc, pre, dx, n), a2 = accum_err(acc2, pre2, dtok, n);
    CHECK(e1 < FD_TOL && e2 < FD_TOL && adj1 < 1e-6 && adj2 < 1e-6 && a1 < ACC_TOL && a2 < ACC_TOL,
          "patchify3d/unpatchify3d_backward patch %dx%dx%d: finite differences %.2e %.2e, adjoint %.1e %.1e, "
          "accumulate %.1e %.1e",
          pt, ph, pw, e1, e2, adj1, adj2, a1, a2);
    free(x), free(tok), free(tok2), free(x2), free(pc.out), free(pc.R), free(uc.out), free(dx), free(dtok);
    free(pre), free(acc), free(pre2), free(acc2);
}

/* ---- determinism across thread counts -------------------------------------------------------- */
static void test_determinism(void) {
    const int N = 300, C = 96, H = 4, D = 24;
    const size_t n = (size_t)N * 3 * C;
    float *x = randn(n, 1), *w = randn(C, 1), *g = randn(n, 1), *rstd = zeros(N), *out = zeros(n);
    float *cs = zeros((size_t)N * D / 2), *sn = zeros((size_t)N * D / 2);
    rope_table_3d(cs, sn, 3, 10, 10, D, 10000.0);
    rmsnorm_forward_strided(out, rstd, x, w, N, C, 3 * C, 3 * C, 1e-6f);
    float *r[2][3];
    const int saved = omp_get_max_threads();
    for (int k = 0; k < 2; k++) {
        omp_set_num_threads(k == 0 ? 1 : (saved > 1 ? saved : 2));
        for (int j = 0; j < 3; j++) r[k][j] = zeros(n);
        rmsnorm_backward_strided(r[k][0], r[k][1], g, x, w, rstd, N, C, 3 * C, 3 * C, 3 * C);
        rope_backward(r[k][2], g, cs, sn, 1, N, H, D, 3 * C, 3 * C);
    }
    omp_set_num_threads(saved);
    int same = 1;
    for (int j = 0; j < 3; j++) same &= !memcmp(r[0][j], r[1][j], n * sizeof(float));
    CHECK(same, "rmsnorm_backward_strided and rope_backward bitwise identical with 1 and %d threads",
          saved > 1 ? saved : 2);
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < 3; j++) free(r[k][j]);
    free(x), free(w), free(g), free(rstd), free(out), free(cs), free(sn);
}

int main(void) {
    test_seed();
    sanitizer = getenv("DFM_TEST_SANITIZER") && atoi(getenv("DFM_TEST_SANITIZER"));
    kernels_init();
    test_rope_table(21, 30, 52, 128, 10000.0, 44, 42); /* Wan 2.1 at 81 frames 480x832: 44/42/42 */
    test_rope_table(3, 5, 4, 16, 10000.0, 8, 4);       /* the tiny test model's head */
    test_rope_table(2, 3, 7, 64, 10000.0, 24, 20);
    test_rope_table(2, 2, 2, 4, 500.0, 4, 0); /* head_dim < 6: all pairs on the frame axis */
    test_rope(2, 3, 2, 5, 2, 16, 0, 0);
    test_rope(1, 2, 3, 4, 3, 12, 24, 7); /* q inside a [N, 3C] buffer, written into a padded one */
    test_rmsnorm_strided(37, 32, 32, 32, 1);
    test_rmsnorm_strided(37, 48, 3 * 48, 48 + 5, 1);
    test_rmsnorm_strided(5, 20, 40, 40, 0);
    test_patch3d(2, 3, 2, 4, 6, 1, 2, 2);
    test_patch3d(1, 2, 4, 6, 3, 2, 3, 1);
    test_patch3d(2, 1, 3, 2, 2, 1, 1, 1);
    test_determinism();
    return test_finish();
}
