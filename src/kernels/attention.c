/* Fused multi-head attention (flash-attention style) on the CPU.
 *
 * Forward: for each (sample, head) and range of query blocks, the scores of one 64-query block
 * against one 128-key block at a time are computed with sgemm into a small stack tile, folded into
 * a running (max, sum) per query row (online softmax) and multiplied into the output, which itself
 * serves as the accumulator.
 * Backward: scores are recomputed block by block from the saved log-sum-exp, so nothing of size
 * Nq x Nk is ever stored.
 *
 * Scores are kept in base-2 units (scaled by scale * log2(e)) so the exponential is an exp2, which
 * a short polynomial evaluates exactly enough (about 1 ulp) and which vectorises.
 *
 * Masking: keys j >= kv_len[b] are never visited. A query row with no valid key (kv_len[b] == 0)
 * gets out = 0 and lse = -INFINITY; the backward skips such samples, so they add zero gradient.
 * kv_len values outside [0, Nk] are clamped to it.
 *
 * For D <= 128 each key block is copied transposed ([D, 128]) once and reused across query blocks:
 * OpenBLAS runs small no-transpose products about 25% faster than Q K^T with K in place.
 * Stack use per thread: about 100 KiB in the forward, 200 KiB in the backward.
 *
 * Threading: OpenMP static schedules over independent tasks; every output element is written by
 * one thread in a fixed order, so results are bitwise reproducible, and the same for any thread
 * count (the task split changes, the per-element sequence of operations does not). The sgemm calls
 * run inside the parallel region, where the OpenMP build of OpenBLAS stays single-threaded. */
#include "dfm/kernels.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

/* Query and key block sizes: a BQ x BK score tile (plus one more in the backward) lives on the
 * stack of each thread; big enough that sgemm call overhead is amortised, small enough for L1/L2. */
#ifndef ATT_BQ
#define ATT_BQ 64
#endif
#ifndef ATT_BK
#define ATT_BK 128
#endif

#define ATT_LOG2E 1.4426950408889634f
#define ATT_LN2 0.6931471805599453f

/* 2^x for x <= 0 (the only range used: scores minus their running max, or minus the lse).
 * Inputs below -126 (including -inf) clamp to 2^-126, negligible next to the row sum >= 1. */
static inline float exp2_nonpos(float x0) {
    /* a NaN input is replaced by 0 here, keeping the exponent arithmetic below defined, and passed through at the
     * end (compares and blends: fminf/fmaxf would stop the loop from vectorising) */
    float x = x0 == x0 ? x0 : 0.0f;
    x = x < -126.0f ? -126.0f : x;
    x = x > 0.0f ? 0.0f : x;
    /* n = round(x) via the 1.5 * 2^23 trick (exact here, and vectorises); f in [-0.5, 0.5] */
    float n = (x + 12582912.0f) - 12582912.0f;
    float f = x - n;
    /* Taylor series of 2^f = e^(f ln2) to degree 7: truncation error < 1e-8 relative on [-0.5, 0.5] */
    float p = 1.5252733804059841e-05f;
    p = p * f + 1.5403530393381606e-04f;
    p = p * f + 1.3333558146428443e-03f;
    p = p * f + 9.6181291076284772e-03f;
    p = p * f + 5.5504108664821580e-02f;
    p = p * f + 2.4022650695910071e-01f;
    p = p * f + 6.9314718055994531e-01f;
    p = p * f + 1.0f;
    union {
        int32_t i;
        float f;
    } two_n = {.i = ((int32_t)n + 127) * (1 << 23)};
    return x0 != x0 ? x0 : p * two_n.f;
}

static inline int min_int(int a, int b) {
    return a < b ? a : b;
}

/* max of x[0..n), n >= 1. Kept in 16 independent lanes because compilers will not vectorise a
 * float max reduction under strict IEEE semantics (clang refuses even with omp simd). */
static inline float row_max_of(const float *x, int n) {
    float lane[16];
    for (int l = 0; l < 16; l++) lane[l] = x[0];
    int j = 0;
    for (; j + 16 <= n; j += 16) {
#pragma omp simd
        for (int l = 0; l < 16; l++) lane[l] = x[j + l] > lane[l] ? x[j + l] : lane[l];
    }
    for (; j < n; j++) lane[0] = x[j] > lane[0] ? x[j] : lane[0];
    float m = lane[0];
    for (int l = 1; l < 16; l++) m = lane[l] > m ? lane[l] : m;
    return m;
}

static inline int valid_keys(const int *kv_len, int b, int Nk) {
    if (!kv_len) return Nk;
    int n = kv_len[b];
    return n < 0 ? 0 : (n > Nk ? Nk : n);
}

/* Largest head size for which a transposed copy of a key block (K, and in the backward V) is kept on the stack. */
#define ATT_TRANSPOSE_MAX_D 128

/* dst[d * ATT_BK + j] = src[j * stride + d] for j < nk, d < D: a key block laid out so that
 * Q K^T becomes a plain (no-transpose) product, which OpenBLAS runs faster on small tiles. */
static void transpose_key_block(float *dst, const float *src, int nk, int D, int stride) {
    for (int j0 = 0; j0 < nk; j0 += 16)
        for (int d = 0; d < D; d++) {
            int j1 = min_int(j0 + 16, nk);
            for (int j = j0; j < j1; j++) dst[(size_t)d * ATT_BK + j] = src[(size_t)j * stride + d];
        }
}

/* Most query blocks one forward task handles (they share each key block's transpose). */
#define ATT_MAX_GROUP 8

/* Rows [0, nrows) (nrows <= ATT_MAX_GROUP * ATT_BQ) of one (sample, head), keys [0, nkv); Q, O, lse_row
 * point at the first row. Key blocks outermost, so each is transposed once for all the query blocks;
 * every row sees the same operations in the same order whatever the grouping. */
static void forward_query_range(float *O, float *lse_row, const float *Q, const float *K, const float *V, int nrows,
                                int nkv, int D, int q_stride, int kv_stride, int out_stride, float scale2) {
    float S[ATT_BQ * ATT_BK];
    float KT[ATT_TRANSPOSE_MAX_D * ATT_BK];
    float row_max[ATT_MAX_GROUP * ATT_BQ], row_sum[ATT_MAX_GROUP * ATT_BQ];

    if (nkv == 0) {
        for (int r = 0; r < nrows; r++) {
            memset(O + (size_t)r * out_stride, 0, sizeof(float) * (size_t)D);
            lse_row[r] = -INFINITY;
        }
        return;
    }
    int transposed = D <= ATT_TRANSPOSE_MAX_D;
    for (int j0 = 0; j0 < nkv; j0 += ATT_BK) {
        int nk = min_int(ATT_BK, nkv - j0);
        int first = j0 == 0;
        const float *Kj = K + (size_t)j0 * kv_stride;
        if (transposed) transpose_key_block(KT, Kj, nk, D, kv_stride);
        for (int ib = 0; ib < nrows; ib += ATT_BQ) {
            int nq = min_int(ATT_BQ, nrows - ib);
            const float *Qi = Q + (size_t)ib * q_stride;
            float *Oi = O + (size_t)ib * out_stride;
            float *bmax = row_max + ib, *bsum = row_sum + ib;
            /* S = (Q K^T) * scale * log2(e) */
            if (transposed)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, nk, D, scale2, Qi, q_stride, KT, ATT_BK,
                            0.0f, S, ATT_BK);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, D, scale2, Qi, q_stride, Kj, kv_stride,
                            0.0f, S, ATT_BK);
            for (int r = 0; r < nq; r++) {
                float *s = S + (size_t)r * ATT_BK;
                float m = row_max_of(s, nk);
                float m_new = first || m > bmax[r] ? m : bmax[r];
                float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
                for (int j = 0; j < nk; j++) {
                    float p = exp2_nonpos(s[j] - m_new);
                    s[j] = p;
                    sum += p;
                }
                if (first) {
                    bsum[r] = sum;
                } else {
                    /* rescale what was accumulated under the old max */
                    float alpha = exp2_nonpos(bmax[r] - m_new);
                    bsum[r] = bsum[r] * alpha + sum;
                    if (alpha != 1.0f) {
                        float *o = Oi + (size_t)r * out_stride;
#pragma omp simd
                        for (int d = 0; d < D; d++) o[d] *= alpha;
                    }
                }
                bmax[r] = m_new;
            }
            /* O (+)= P V; the first key block overwrites whatever out held */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, D, nk, 1.0f, S, ATT_BK,
                        V + (size_t)j0 * kv_stride, kv_stride, first ? 0.0f : 1.0f, Oi, out_stride);
        }
    }
    for (int r = 0; r < nrows; r++) {
        float inv = 1.0f / row_sum[r];
        float *o = O + (size_t)r * out_stride;
#pragma omp simd
        for (int d = 0; d < D; d++) o[d] *= inv;
        lse_row[r] = row_max[r] * ATT_LN2 + logf(row_sum[r]);
    }
}

void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, const int *kv_len, int B,
                       int Nq, int Nk, int H, int D, int q_stride, int kv_stride, int out_stride, float scale) {
    kernels_count_flops(4.0 * B * H * Nq * Nk * D); /* Q K^T and P V, masked keys included */
    long nheads = (long)B * H;
    long nqb = (Nq + ATT_BQ - 1) / ATT_BQ;
    /* query blocks per task: as many as share a key-block transpose, while leaving about four
     * tasks per thread (the grouping does not change any result) */
    long group = (nheads * nqb) / (4L * omp_get_max_threads());
    group = group < 1 ? 1 : (group > ATT_MAX_GROUP ? ATT_MAX_GROUP : group);
    long ngroups = (nqb + group - 1) / group;
    float scale2 = scale * ATT_LOG2E;
    /* tasks ordered (b, h, query range): a thread's contiguous share mostly reuses one head's K, V */
#pragma omp parallel for schedule(static)
    for (long t = 0; t < nheads * ngroups; t++) {
        long bh = t / ngroups;
        int b = (int)(bh / H), h = (int)(bh % H);
        int i0 = (int)((t % ngroups) * group * ATT_BQ);
        int nrows = min_int((int)group * ATT_BQ, Nq - i0);
        const float *Q = q + ((size_t)b * Nq + i0) * q_stride + (size_t)h * D;
        const float *K = k + (size_t)b * Nk * kv_stride + (size_t)h * D;
        const float *V = v + (size_t)b * Nk * kv_stride + (size_t)h * D;
        float *O = out + ((size_t)b * Nq + i0) * out_stride + (size_t)h * D;
        float *L = lse + ((size_t)b * H + h) * Nq + i0;
        forward_query_range(O, L, Q, K, V, nrows, valid_keys(kv_len, b, Nk), D, q_stride, kv_stride, out_stride,
                            scale2);
    }
}

size_t attention_workspace_floats(int B, int H, int Nq) {
    return (size_t)B * H * Nq;
}

/* Pointers and sizes of one (sample, head) for the backward. */
typedef struct {
    const float *Q, *K, *V, *dO, *lse, *delta;
    float *dQ, *dK, *dV;
    int nq_total, nkv, D, q_stride, kv_stride, out_stride;
    float scale, scale2;
} head_slice;

static head_slice slice_of(float *dq, float *dk, float *dv, const float *delta, const float *dout, const float *lse,
                           const float *q, const float *k, const float *v, const int *kv_len, int b, int h, int Nq,
                           int Nk, int H, int D, int q_stride, int kv_stride, int out_stride, float scale) {
    size_t qoff = (size_t)b * Nq * q_stride + (size_t)h * D;
    size_t kvoff = (size_t)b * Nk * kv_stride + (size_t)h * D;
    size_t rowoff = ((size_t)b * H + h) * Nq;
    head_slice s = {.Q = q + qoff,
                    .K = k + kvoff,
                    .V = v + kvoff,
                    .dO = dout + (size_t)b * Nq * out_stride + (size_t)h * D,
                    .lse = lse + rowoff,
                    .delta = delta + rowoff,
                    .dQ = dq + qoff,
                    .dK = dk + kvoff,
                    .dV = dv + kvoff,
                    .nq_total = Nq,
                    .nkv = valid_keys(kv_len, b, Nk),
                    .D = D,
                    .q_stride = q_stride,
                    .kv_stride = kv_stride,
                    .out_stride = out_stride,
                    .scale = scale,
                    .scale2 = scale * ATT_LOG2E};
    return s;
}

/* Recompute one tile: P = exp(S*scale - lse) into P, and dS = P * (dO V^T - delta) into dS
 * (both BQ x BK, row stride ATT_BK) for queries [i0, i0+nq) and keys [j0, j0+nk).
 * KT, VT: the key block transposed ([D, ATT_BK]), or NULL to read K and V in place. */
static void tile_probs_and_dscores(float *P, float *dS, const head_slice *hs, int i0, int nq, int j0, int nk,
                                   const float *KT, const float *VT) {
    int D = hs->D;
    const float *Qi = hs->Q + (size_t)i0 * hs->q_stride;
    const float *Kj = hs->K + (size_t)j0 * hs->kv_stride;
    const float *Vj = hs->V + (size_t)j0 * hs->kv_stride;
    const float *dOi = hs->dO + (size_t)i0 * hs->out_stride;
    if (KT) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, nk, D, hs->scale2, Qi, hs->q_stride, KT, ATT_BK,
                    0.0f, P, ATT_BK);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, nk, D, 1.0f, dOi, hs->out_stride, VT, ATT_BK, 0.0f,
                    dS, ATT_BK);
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, D, hs->scale2, Qi, hs->q_stride, Kj, hs->kv_stride,
                    0.0f, P, ATT_BK);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, D, 1.0f, dOi, hs->out_stride, Vj, hs->kv_stride,
                    0.0f, dS, ATT_BK);
    }
    for (int r = 0; r < nq; r++) {
        float *p = P + (size_t)r * ATT_BK;
        float *ds = dS + (size_t)r * ATT_BK;
        float lse2 = hs->lse[i0 + r] * ATT_LOG2E;
        float delta = hs->delta[i0 + r];
#pragma omp simd
        for (int j = 0; j < nk; j++) {
            float pj = exp2_nonpos(p[j] - lse2);
            p[j] = pj;
            ds[j] = pj * (ds[j] - delta);
        }
    }
}

/* dK, dV of keys [j0, j0+nk) from all query blocks, in query-block order. With dq_too, also
 * dQ of every query block (used when one thread owns the whole (sample, head)). */
static void backward_key_block(const head_slice *hs, int j0, int nk, int dq_too) {
    float P[ATT_BQ * ATT_BK], dS[ATT_BQ * ATT_BK];
    float KT[ATT_TRANSPOSE_MAX_D * ATT_BK], VT[ATT_TRANSPOSE_MAX_D * ATT_BK];
    int D = hs->D;
    const float *Kj = hs->K + (size_t)j0 * hs->kv_stride;
    float *dKj = hs->dK + (size_t)j0 * hs->kv_stride;
    float *dVj = hs->dV + (size_t)j0 * hs->kv_stride;
    int transposed = D <= ATT_TRANSPOSE_MAX_D;
    if (transposed) {
        transpose_key_block(KT, Kj, nk, D, hs->kv_stride);
        transpose_key_block(VT, hs->V + (size_t)j0 * hs->kv_stride, nk, D, hs->kv_stride);
    }
    for (int i0 = 0; i0 < hs->nq_total; i0 += ATT_BQ) {
        int nq = min_int(ATT_BQ, hs->nq_total - i0);
        tile_probs_and_dscores(P, dS, hs, i0, nq, j0, nk, transposed ? KT : NULL, transposed ? VT : NULL);
        const float *Qi = hs->Q + (size_t)i0 * hs->q_stride;
        const float *dOi = hs->dO + (size_t)i0 * hs->out_stride;
        /* dV += P^T dO; dK += scale dS^T Q */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, D, nq, 1.0f, P, ATT_BK, dOi, hs->out_stride, 1.0f, dVj,
                    hs->kv_stride);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, D, nq, hs->scale, dS, ATT_BK, Qi, hs->q_stride, 1.0f,
                    dKj, hs->kv_stride);
        if (dq_too)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, D, nk, hs->scale, dS, ATT_BK, Kj, hs->kv_stride,
                        1.0f, hs->dQ + (size_t)i0 * hs->q_stride, hs->q_stride);
    }
}

/* dQ of queries [i0, i1) from all key blocks, in key-block order: per element the same products in
 * the same order as backward_key_block with dq_too, so both backward paths give bitwise equal dQ.
 * Each key block is transposed once for all the query blocks of the range. */
static void backward_query_range(const head_slice *hs, int i0, int i1) {
    float P[ATT_BQ * ATT_BK], dS[ATT_BQ * ATT_BK];
    float KT[ATT_TRANSPOSE_MAX_D * ATT_BK], VT[ATT_TRANSPOSE_MAX_D * ATT_BK];
    int transposed = hs->D <= ATT_TRANSPOSE_MAX_D;
    for (int j0 = 0; j0 < hs->nkv; j0 += ATT_BK) {
        int nk = min_int(ATT_BK, hs->nkv - j0);
        const float *Kj = hs->K + (size_t)j0 * hs->kv_stride;
        if (transposed) {
            transpose_key_block(KT, Kj, nk, hs->D, hs->kv_stride);
            transpose_key_block(VT, hs->V + (size_t)j0 * hs->kv_stride, nk, hs->D, hs->kv_stride);
        }
        for (int ib = i0; ib < i1; ib += ATT_BQ) {
            int nq = min_int(ATT_BQ, i1 - ib);
            tile_probs_and_dscores(P, dS, hs, ib, nq, j0, nk, transposed ? KT : NULL, transposed ? VT : NULL);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, hs->D, nk, hs->scale, dS, ATT_BK, Kj,
                        hs->kv_stride, 1.0f, hs->dQ + (size_t)ib * hs->q_stride, hs->q_stride);
        }
    }
}

void attention_backward(float *dq, float *dk, float *dv, float *workspace, const float *dout, const float *out,
                        const float *lse, const float *q, const float *k, const float *v, const int *kv_len, int B,
                        int Nq, int Nk, int H, int D, int q_stride, int kv_stride, int out_stride, float scale) {
    float *delta = workspace; /* [B, H, Nq]: rowsum(dO * O) */
    long nrows = (long)B * Nq;
#pragma omp parallel for schedule(static)
    for (long row = 0; row < nrows; row++) {
        int b = (int)(row / Nq), i = (int)(row % Nq);
        for (int h = 0; h < H; h++) {
            const float *o = out + (size_t)row * out_stride + (size_t)h * D;
            const float *g = dout + (size_t)row * out_stride + (size_t)h * D;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int d = 0; d < D; d++) acc += o[d] * g[d];
            delta[((size_t)b * H + h) * Nq + i] = acc;
        }
    }

    /* One thread per (sample, head) needs no synchronisation and does the least work, but with few
     * heads per thread the load is uneven. Then split instead into a dK/dV pass over key blocks and
     * a dQ pass over query blocks: more tasks to share, at the price of recomputing P and dS (7 block
     * products instead of 5). Both give the same bits. */
    int nthreads = omp_get_max_threads();
    long nheads = (long)B * H;
    long rounds = (nheads + nthreads - 1) / nthreads;
    int split = nthreads > 1 && (double)nheads / ((double)rounds * nthreads) < 0.75;

    if (!split) {
#pragma omp parallel for schedule(static)
        for (long bh = 0; bh < nheads; bh++) {
            head_slice hs = slice_of(dq, dk, dv, delta, dout, lse, q, k, v, kv_len, (int)(bh / H), (int)(bh % H), Nq,
                                     Nk, H, D, q_stride, kv_stride, out_stride, scale);
            for (int j0 = 0; j0 < hs.nkv; j0 += ATT_BK) backward_key_block(&hs, j0, min_int(ATT_BK, hs.nkv - j0), 1);
        }
        return;
    }
    int nkb = (Nk + ATT_BK - 1) / ATT_BK, nqb = (Nq + ATT_BQ - 1) / ATT_BQ;
    /* query blocks per dQ task: enough to amortise the key-block transposes, few enough for about
     * four tasks per thread (the grouping does not change any result) */
    long group = (nheads * nqb) / (4L * nthreads);
    group = group < 1 ? 1 : (group > 8 ? 8 : group);
    long ngroups = (nqb + group - 1) / group;
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (long t = 0; t < nheads * nkb; t++) {
            long bh = t / nkb;
            int j0 = (int)(t % nkb) * ATT_BK;
            head_slice hs = slice_of(dq, dk, dv, delta, dout, lse, q, k, v, kv_len, (int)(bh / H), (int)(bh % H), Nq,
                                     Nk, H, D, q_stride, kv_stride, out_stride, scale);
            if (j0 < hs.nkv) backward_key_block(&hs, j0, min_int(ATT_BK, hs.nkv - j0), 0);
        }
#pragma omp for schedule(static)
        for (long t = 0; t < nheads * ngroups; t++) {
            long bh = t / ngroups;
            int i0 = (int)((t % ngroups) * group * ATT_BQ);
            head_slice hs = slice_of(dq, dk, dv, delta, dout, lse, q, k, v, kv_len, (int)(bh / H), (int)(bh % H), Nq,
                                     Nk, H, D, q_stride, kv_stride, out_stride, scale);
            backward_query_range(&hs, i0, min_int(i0 + (int)group * ATT_BQ, Nq));
        }
    }
}
