/* Tests for the fused attention kernels against a naive double-precision reference that stores the
 * full score matrix: forward out and lse, backward dq/dk/dv (analytic gradients in double), strided
 * and fused-qkv layouts, key-padding masks (including a sample with no valid key), += semantics,
 * a finite-difference check of the backward, and bitwise reproducibility. */
#include "test.h"
#include "dfm/kernels.h"

#include <cblas.h>
#include <omp.h>
#include <string.h>

typedef struct {
    int B, H, Nq, Nk, D;
    int fused;       /* q, k, v (and dq, dk, dv) inside one [B, N, 3, H, D] buffer; needs Nq == Nk */
    int pad;         /* extra floats per token in the separate layouts (q, k/v and out strides) */
    int kv[2];       /* kv_len per sample (B <= 2); kv[0] < 0 means no mask */
    float magnitude; /* input scale; large values make the running max move a lot */
} attn_case;

typedef struct {
    int q_stride, kv_stride, out_stride;
    size_t q_floats, kv_floats, out_floats; /* buffer sizes; k and v share the q buffer when fused */
} attn_layout;

static attn_layout layout_of(const attn_case *c) {
    int C = c->H * c->D;
    attn_layout l;
    if (c->fused) {
        l.q_stride = l.kv_stride = 3 * C;
        l.out_stride = C + c->pad;
        l.q_floats = (size_t)c->B * c->Nq * 3 * C;
        l.kv_floats = 0;
    } else {
        l.q_stride = C + c->pad;
        l.kv_stride = C + 2 * c->pad;
        l.out_stride = C + 3 * c->pad;
        l.q_floats = (size_t)c->B * c->Nq * l.q_stride;
        l.kv_floats = (size_t)c->B * c->Nk * l.kv_stride;
    }
    l.out_floats = (size_t)c->B * c->Nq * l.out_stride;
    return l;
}

/* Buffers of one case: inputs, outputs, gradients, all in the case's layout. */
typedef struct {
    float *qbuf, *kbuf, *vbuf; /* owned storage (kbuf, vbuf NULL when fused) */
    const float *q, *k, *v;
    float *out, *lse, *dout, *ws;
    float *dqbuf, *dkbuf, *dvbuf;
    float *dq, *dk, *dv;
    int kv_len[2];
    const int *mask;
} attn_bufs;

static float *alloc_floats(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p) abort();
    return p;
}

static void bufs_init(attn_bufs *a, const attn_case *c, const attn_layout *l) {
    int C = c->H * c->D;
    memset(a, 0, sizeof *a);
    a->qbuf = alloc_floats(l->q_floats);
    test_fill_randn(a->qbuf, l->q_floats, c->magnitude);
    a->dqbuf = alloc_floats(l->q_floats);
    if (c->fused) {
        a->q = a->qbuf, a->k = a->qbuf + C, a->v = a->qbuf + 2 * C;
        a->dq = a->dqbuf, a->dk = a->dqbuf + C, a->dv = a->dqbuf + 2 * C;
    } else {
        a->kbuf = alloc_floats(l->kv_floats), a->vbuf = alloc_floats(l->kv_floats);
        test_fill_randn(a->kbuf, l->kv_floats, c->magnitude);
        test_fill_randn(a->vbuf, l->kv_floats, 1.0f);
        a->dkbuf = alloc_floats(l->kv_floats), a->dvbuf = alloc_floats(l->kv_floats);
        a->q = a->qbuf, a->k = a->kbuf, a->v = a->vbuf;
        a->dq = a->dqbuf, a->dk = a->dkbuf, a->dv = a->dvbuf;
    }
    a->out = alloc_floats(l->out_floats);
    a->dout = alloc_floats(l->out_floats);
    test_fill_randn(a->dout, l->out_floats, 1.0f);
    a->lse = alloc_floats((size_t)c->B * c->H * c->Nq);
    a->ws = alloc_floats(attention_workspace_floats(c->B, c->H, c->Nq));
    if (c->kv[0] >= 0) {
        a->kv_len[0] = c->kv[0], a->kv_len[1] = c->kv[1];
        a->mask = a->kv_len;
    }
}

static void bufs_free(attn_bufs *a) {
    free(a->qbuf), free(a->kbuf), free(a->vbuf), free(a->out), free(a->lse), free(a->dout), free(a->ws);
    free(a->dqbuf), free(a->dkbuf), free(a->dvbuf);
}

static void run_forward(attn_bufs *a, const attn_case *c, const attn_layout *l) {
    attention_forward(a->out, a->lse, a->q, a->k, a->v, a->mask, c->B, c->Nq, c->Nk, c->H, c->D, l->q_stride,
                      l->kv_stride, l->out_stride, 1.0f / sqrtf((float)c->D));
}

static void run_backward(attn_bufs *a, const attn_case *c, const attn_layout *l) {
    attention_backward(a->dq, a->dk, a->dv, a->ws, a->dout, a->out, a->lse, a->q, a->k, a->v, a->mask, c->B, c->Nq,
                       c->Nk, c->H, c->D, l->q_stride, l->kv_stride, l->out_stride, 1.0f / sqrtf((float)c->D));
}

static void zero_grads(attn_bufs *a, const attn_layout *l) {
    memset(a->dqbuf, 0, sizeof(float) * l->q_floats);
    if (a->dkbuf) memset(a->dkbuf, 0, sizeof(float) * l->kv_floats);
    if (a->dvbuf) memset(a->dvbuf, 0, sizeof(float) * l->kv_floats);
}

/* strided [B*N tokens, C of stride] -> contiguous [B*N, C] */
static float *gather(const float *src, size_t ntok, int C, int stride) {
    float *dst = alloc_floats(ntok * C);
    for (size_t t = 0; t < ntok; t++) memcpy(dst + t * C, src + t * stride, sizeof(float) * C);
    return dst;
}

/* test_rel_err with a floor on the reference scale: with a single valid key the exact dq and dk are 0
 * and the kernel's are rounding noise (~1e-8), which a purely relative measure would blow up. The
 * gradients in these tests are of order 0.1 to 1, so the floor makes that an absolute 1e-2 * err. */
static double grad_err(const float *a, const float *ref, size_t n) {
    double maxref = 0;
    for (size_t i = 0; i < n; i++) maxref = fmax(maxref, fabs(ref[i]));
    return test_rel_err(a, ref, n) * fmax(maxref, 1e-30) / fmax(maxref, 1e-2);
}

static float *to_float(const double *x, size_t n) {
    float *f = alloc_floats(n);
    for (size_t i = 0; i < n; i++) f[i] = (float)x[i];
    return f;
}

/* Naive attention with the full score row, in double. Outputs contiguous [B, N, H, D] and lse [B, H, Nq].
 * Gradients: P = softmax(scale Q K^T); dV = P^T dO; dP = dO V^T; dS = P (dP - rowsum(P dP));
 * dQ = scale dS K; dK = scale dS^T Q. */
static void reference(double *out, double *lse, double *dq, double *dk, double *dv, const attn_bufs *a,
                      const attn_case *c, const attn_layout *l) {
    int B = c->B, H = c->H, Nq = c->Nq, Nk = c->Nk, D = c->D, C = H * D;
    double scale = (double)(1.0f / sqrtf((float)D)); /* the float scale the kernel gets */
    double *p = calloc((size_t)Nk, sizeof(double)), *dp = calloc((size_t)Nk, sizeof(double));
    memset(dq, 0, sizeof(double) * B * Nq * C);
    memset(dk, 0, sizeof(double) * B * Nk * C);
    memset(dv, 0, sizeof(double) * B * Nk * C);
    for (int b = 0; b < B; b++) {
        int L = a->mask ? a->mask[b] : Nk;
        for (int h = 0; h < H; h++) {
            for (int i = 0; i < Nq; i++) {
                const float *qi = a->q + ((size_t)b * Nq + i) * l->q_stride + h * D;
                const float *doi = a->dout + ((size_t)b * Nq + i) * l->out_stride + h * D;
                double *oi = out + ((size_t)b * Nq + i) * C + h * D;
                double *dqi = dq + ((size_t)b * Nq + i) * C + h * D;
                for (int d = 0; d < D; d++) oi[d] = 0;
                if (L == 0) {
                    lse[((size_t)b * H + h) * Nq + i] = -INFINITY;
                    continue;
                }
                double m = -INFINITY, sum = 0, delta = 0;
                for (int j = 0; j < L; j++) {
                    const float *kj = a->k + ((size_t)b * Nk + j) * l->kv_stride + h * D;
                    double s = 0;
                    for (int d = 0; d < D; d++) s += (double)qi[d] * kj[d];
                    p[j] = s * scale;
                    if (p[j] > m) m = p[j];
                }
                for (int j = 0; j < L; j++) sum += (p[j] = exp(p[j] - m));
                lse[((size_t)b * H + h) * Nq + i] = m + log(sum);
                for (int j = 0; j < L; j++) {
                    const float *vj = a->v + ((size_t)b * Nk + j) * l->kv_stride + h * D;
                    p[j] /= sum;
                    double g = 0;
                    for (int d = 0; d < D; d++) oi[d] += p[j] * vj[d], g += (double)doi[d] * vj[d];
                    dp[j] = g;
                    delta += p[j] * g;
                }
                for (int j = 0; j < L; j++) {
                    const float *kj = a->k + ((size_t)b * Nk + j) * l->kv_stride + h * D;
                    double *dkj = dk + ((size_t)b * Nk + j) * C + h * D;
                    double *dvj = dv + ((size_t)b * Nk + j) * C + h * D;
                    double ds = p[j] * (dp[j] - delta) * scale;
                    for (int d = 0; d < D; d++) {
                        dqi[d] += ds * kj[d];
                        dkj[d] += ds * qi[d];
                        dvj[d] += p[j] * doi[d];
                    }
                }
            }
        }
    }
    free(p), free(dp);
}

/* Largest |x| over the entries of a strided buffer that lie outside the [C]-wide token slots
 * (which the kernels must not write), taking `slot_at` floats into each token. */
static double max_outside_slots(const float *buf, size_t ntok, int stride, int slot_at, int C, float expect) {
    double worst = 0;
    for (size_t t = 0; t < ntok; t++)
        for (int e = 0; e < stride; e++)
            if (e < slot_at || e >= slot_at + C) {
                double d = fabs((double)buf[t * stride + e] - expect);
                if (d > worst || d != d) worst = d;
            }
    return worst;
}

static void check_case(const attn_case *c) {
    attn_layout l = layout_of(c);
    attn_bufs a;
    bufs_init(&a, c, &l);
    int B = c->B, H = c->H, Nq = c->Nq, Nk = c->Nk, D = c->D, C = H * D;
    char name[160];
    snprintf(name, sizeof name, "B%d H%d Nq%d Nk%d D%d %s pad%d kv_len %d,%d mag %.1f", B, H, Nq, Nk, D,
             c->fused ? "fused-qkv" : "separate", c->pad, c->kv[0], B > 1 ? c->kv[1] : c->kv[0], c->magnitude);

    const float sentinel = 7.25f;
    for (size_t i = 0; i < l.out_floats; i++) a.out[i] = sentinel;
    run_forward(&a, c, &l);
    zero_grads(&a, &l);
    run_backward(&a, c, &l);

    size_t nq = (size_t)B * Nq * C, nk = (size_t)B * Nk * C, nl = (size_t)B * H * Nq;
    double *out_r = malloc(sizeof(double) * nq), *lse_r = malloc(sizeof(double) * nl);
    double *dq_r = malloc(sizeof(double) * nq), *dk_r = malloc(sizeof(double) * nk),
           *dv_r = malloc(sizeof(double) * nk);
    reference(out_r, lse_r, dq_r, dk_r, dv_r, &a, c, &l);

    float *out_k = gather(a.out, (size_t)B * Nq, C, l.out_stride);
    float *out_rf = to_float(out_r, nq);
    double e_out = test_rel_err(out_k, out_rf, nq);
    CHECK(e_out <= 1e-5, "attention forward out %s: rel err %.2e", name, e_out);
    CHECK(max_outside_slots(a.out, (size_t)B * Nq, l.out_stride, 0, C, sentinel) == 0,
          "attention forward %s: out padding untouched", name);

    /* lse over rows with valid keys; rows with none must give lse = -inf and out = 0 */
    float *lse_k = alloc_floats(nl), *lse_rf = alloc_floats(nl);
    size_t nvalid = 0;
    int empty_ok = 1;
    for (int b = 0; b < B; b++)
        for (size_t r = (size_t)b * H * Nq; r < (size_t)(b + 1) * H * Nq; r++) {
            if (a.mask && a.mask[b] == 0) {
                empty_ok &= a.lse[r] == -INFINITY;
            } else {
                lse_k[nvalid] = a.lse[r], lse_rf[nvalid] = (float)lse_r[r];
                nvalid++;
            }
        }
    for (int b = 0; b < B; b++)
        if (a.mask && a.mask[b] == 0)
            for (size_t e = (size_t)b * Nq * C; e < (size_t)(b + 1) * Nq * C; e++) empty_ok &= out_k[e] == 0.0f;
    double e_lse = test_rel_err(lse_k, lse_rf, nvalid);
    CHECK(e_lse <= 1e-5, "attention forward lse %s: rel err %.2e", name, e_lse);
    if (a.mask && (a.mask[0] == 0 || (B > 1 && a.mask[1] == 0)))
        CHECK(empty_ok, "attention forward %s: sample with kv_len 0 gives out 0, lse -inf", name);

    float *dq_k = gather(a.dq, (size_t)B * Nq, C, l.q_stride);
    float *dk_k = gather(a.dk, (size_t)B * Nk, C, l.kv_stride);
    float *dv_k = gather(a.dv, (size_t)B * Nk, C, l.kv_stride);
    float *dq_rf = to_float(dq_r, nq), *dk_rf = to_float(dk_r, nk), *dv_rf = to_float(dv_r, nk);
    double e_dq = grad_err(dq_k, dq_rf, nq), e_dk = grad_err(dk_k, dk_rf, nk), e_dv = grad_err(dv_k, dv_rf, nk);
    CHECK(e_dq <= 1e-4 && e_dk <= 1e-4 && e_dv <= 1e-4, "attention backward %s: rel err dq %.2e dk %.2e dv %.2e", name,
          e_dq, e_dk, e_dv);
    int all_finite = 1;
    for (size_t i = 0; i < nq; i++) all_finite &= isfinite(dq_k[i]) && isfinite(out_k[i]);
    for (size_t i = 0; i < nk; i++) all_finite &= isfinite(dk_k[i]) && isfinite(dv_k[i]);
    CHECK(all_finite, "attention %s: out and gradients finite", name);
    double outside = c->fused ? 0 : max_outside_slots(a.dqbuf, (size_t)B * Nq, l.q_stride, 0, C, 0.0f);
    if (!c->fused) {
        double o2 = max_outside_slots(a.dkbuf, (size_t)B * Nk, l.kv_stride, 0, C, 0.0f);
        double o3 = max_outside_slots(a.dvbuf, (size_t)B * Nk, l.kv_stride, 0, C, 0.0f);
        outside = fmax(outside, fmax(o2, o3));
    }
    CHECK(outside == 0, "attention backward %s: gradient padding untouched", name);

    free(out_r), free(lse_r), free(dq_r), free(dk_r), free(dv_r), free(out_k), free(out_rf), free(lse_k);
    free(lse_rf), free(dq_k), free(dk_k), free(dv_k), free(dq_rf), free(dk_rf), free(dv_rf);
    bufs_free(&a);
}

/* Backward twice into buffers pre-filled with random values must give prefill + 2 * gradient. */
static void check_accumulation(void) {
    attn_case c = {2, 3, 70, 70, 16, 1, 0, {70, 33}, 1.0f};
    attn_layout l = layout_of(&c);
    attn_bufs a;
    bufs_init(&a, &c, &l);
    run_forward(&a, &c, &l);
    zero_grads(&a, &l);
    run_backward(&a, &c, &l);
    float *grad = malloc(sizeof(float) * l.q_floats), *prefill = malloc(sizeof(float) * l.q_floats);
    float *expect = malloc(sizeof(float) * l.q_floats);
    memcpy(grad, a.dqbuf, sizeof(float) * l.q_floats);
    test_fill_randn(prefill, l.q_floats, 1.0f);
    memcpy(a.dqbuf, prefill, sizeof(float) * l.q_floats);
    run_backward(&a, &c, &l);
    run_backward(&a, &c, &l);
    for (size_t i = 0; i < l.q_floats; i++) expect[i] = prefill[i] + 2.0f * grad[i];
    double e = test_rel_err(a.dqbuf, expect, l.q_floats);
    CHECK(e <= 1e-6, "attention backward accumulates (+=) into dq, dk, dv: rel err %.2e", e);
    free(grad), free(prefill), free(expect);
    bufs_free(&a);
}

static double loss_of(attn_bufs *a, const attn_case *c, const attn_layout *l) {
    run_forward(a, c, l);
    double loss = 0;
    for (size_t i = 0; i < l->out_floats; i++) loss += (double)a->out[i] * a->dout[i];
    return loss;
}

/* Central differences of L = sum(out * R) with R = dout, against dq, dk, dv from the backward. */
static void check_finite_differences(void) {
    attn_case c = {2, 2, 5, 9, 8, 0, 0, {9, 4}, 1.0f};
    attn_layout l = layout_of(&c);
    attn_bufs a;
    bufs_init(&a, &c, &l);
    run_forward(&a, &c, &l);
    zero_grads(&a, &l);
    run_backward(&a, &c, &l);
    const char *names[3] = {"dq", "dk", "dv"};
    float *inputs[3] = {a.qbuf, a.kbuf, a.vbuf};
    const float *grads[3] = {a.dq, a.dk, a.dv};
    size_t sizes[3] = {l.q_floats, l.kv_floats, l.kv_floats};
    for (int w = 0; w < 3; w++) {
        double maxdiff = 0, maxgrad = 0;
        for (size_t i = 0; i < sizes[w]; i++) maxgrad = fmax(maxgrad, fabs(grads[w][i]));
        for (int trial = 0; trial < 12; trial++) {
            size_t i = (size_t)(test_uniform() * sizes[w]);
            float x = inputs[w][i], h = 1e-3f;
            float xp = x + h, xm = x - h;
            inputs[w][i] = xp;
            double lp = loss_of(&a, &c, &l);
            inputs[w][i] = xm;
            double lm = loss_of(&a, &c, &l);
            inputs[w][i] = x;
            double fd = (lp - lm) / ((double)xp - (double)xm);
            maxdiff = fmax(maxdiff, fabs(fd - grads[w][i]));
        }
        double e = maxdiff / fmax(maxgrad, 1e-30);
        CHECK(e <= 1e-2, "attention backward %s matches finite differences: rel err %.2e", names[w], e);
    }
    bufs_free(&a);
}

/* Two runs give the same bits; so does a single-threaded run (a different work split in the backward). */
static void check_determinism(int small) {
    attn_case c = {1, 3, small ? 70 : 200, small ? 90 : 300, 24, 0, 1, {small ? 77 : 290, 0}, 1.0f};
    attn_layout l = layout_of(&c);
    attn_bufs a;
    bufs_init(&a, &c, &l);
    size_t nl = (size_t)c.B * c.H * c.Nq;
    float *out1 = alloc_floats(l.out_floats), *lse1 = alloc_floats(nl), *dq1 = alloc_floats(l.q_floats);
    float *dk1 = alloc_floats(l.kv_floats), *dv1 = alloc_floats(l.kv_floats);
    run_forward(&a, &c, &l);
    zero_grads(&a, &l);
    run_backward(&a, &c, &l);
    memcpy(out1, a.out, sizeof(float) * l.out_floats), memcpy(lse1, a.lse, sizeof(float) * nl);
    memcpy(dq1, a.dqbuf, sizeof(float) * l.q_floats), memcpy(dk1, a.dkbuf, sizeof(float) * l.kv_floats);
    memcpy(dv1, a.dvbuf, sizeof(float) * l.kv_floats);
    for (int threads_pass = 0; threads_pass < 2; threads_pass++) {
        int saved = omp_get_max_threads();
        if (threads_pass) omp_set_num_threads(1), openblas_set_num_threads(1);
        run_forward(&a, &c, &l);
        zero_grads(&a, &l);
        run_backward(&a, &c, &l);
        if (threads_pass) omp_set_num_threads(saved), openblas_set_num_threads(saved);
        int same = !memcmp(out1, a.out, sizeof(float) * l.out_floats) && !memcmp(lse1, a.lse, sizeof(float) * nl);
        same &= !memcmp(dq1, a.dqbuf, sizeof(float) * l.q_floats);
        same &= !memcmp(dk1, a.dkbuf, sizeof(float) * l.kv_floats);
        same &= !memcmp(dv1, a.dvbuf, sizeof(float) * l.kv_floats);
        CHECK(same, "attention forward and backward bitwise reproducible (%s, %d threads vs %d)",
              threads_pass ? "1 thread" : "second run", threads_pass ? 1 : saved, saved);
    }
    free(out1), free(lse1), free(dq1), free(dk1), free(dv1);
    bufs_free(&a);
}

int main(void) {
    test_seed();
    int small = getenv("DFM_TEST_SANITIZER") != NULL;
    int big = small ? 131 : 257;
    const attn_case cases[] = {
        /* B, H, Nq, Nk, D, fused, pad, kv_len, magnitude */
        {1, 1, 1, 1, 8, 0, 0, {-1, -1}, 1.0f},
        {2, 3, 7, 65, 8, 0, 3, {65, 3}, 1.0f},
        {1, 3, 65, 130, 64, 0, 0, {-1, -1}, 1.0f},
        {2, 1, 130, 7, 72, 0, 1, {0, 5}, 1.0f},
        {2, 3, big, big, 64, 1, 0, {big - 57, big}, 1.0f},
        {1, 3, 129, 129, 72, 1, 5, {-1, -1}, 1.0f},
        {2, 3, big, big + 43, 72, 0, 2, {0, big + 33}, 1.0f},
        {2, 1, 65, 260, 8, 0, 0, {-1, -1}, 4.0f}, /* peaky scores: the running max changes often */
        {1, 2, 1, 300, 64, 0, 0, {-1, -1}, 2.0f},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_case(&cases[i]);
    check_accumulation();
    check_finite_differences();
    check_determinism(small);
    return test_finish();
}
