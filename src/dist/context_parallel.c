/* Context-parallel self-attention: ring (p2p) and all-to-all (a2a); see context_parallel.h. */
#include "dfm/context_parallel.h"
#include "dfm/common.h"
#include "dfm/dist.h"
#include "dfm/kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cp_comm_type_parse(const char *s, cp_comm_type *out) {
    if (!strcmp(s, "p2p")) return *out = CP_P2P, 1;
    if (!strcmp(s, "a2a")) return *out = CP_A2A, 1;
    return 0;
}

const char *cp_comm_type_name(cp_comm_type t) {
    return t == CP_A2A ? "a2a" : "p2p";
}

int cp_chunk_len(int T, int C) {
    return cp_chunk_len_aligned(T, C, 1);
}

int cp_chunk_len_aligned(int T, int C, int align) {
    int n = (T + C - 1) / C;
    return (n + align - 1) / align * align;
}

int cp_chunk_valid(int T, int C, int r) {
    return cp_chunk_valid_len(T, cp_chunk_len(T, C), r);
}

int cp_chunk_valid_len(int T, int n, int r) {
    int v = T - r * n;
    return v < 0 ? 0 : (v > n ? n : v);
}

int cp_check(int heads, int cp, cp_comm_type t, char *err, size_t errlen) {
    if (cp < 1) return snprintf(err, errlen, "model.context_parallel_size must be >= 1 (got %d)", cp), 0;
    if (t == CP_A2A && heads % cp)
        return snprintf(err, errlen,
                        "model.cp_comm_type a2a: %d attention heads (per tensor-parallel rank) are not divisible by "
                        "model.context_parallel_size %d (the all-to-all splits the heads over the context-parallel "
                        "ranks; use p2p)",
                        heads, cp),
               0;
    return 1;
}

/* ---- scratch ------------------------------------------------------------------------------------ */

enum { S_A, S_B, S_C, S_D, S_E, S_F, S_G, NSCRATCH };
static float *scratch[NSCRATCH];
static size_t scratch_n[NSCRATCH];
static int *kvlen;
static int kvlen_n;

static float *buf(int k, size_t n) {
    if (scratch_n[k] < n) {
        free(scratch[k]);
        scratch[k] = xalloc_floats(scratch_n[k] = n);
    }
    return scratch[k];
}

static int *lens(int B, int v) {
    if (kvlen_n < B) {
        free(kvlen);
        kvlen = xcalloc((size_t)(kvlen_n = B), sizeof(int));
    }
    for (int b = 0; b < B; b++) kvlen[b] = v;
    return kvlen;
}

void cp_release(void) {
    for (int k = 0; k < NSCRATCH; k++) free(scratch[k]), scratch[k] = NULL, scratch_n[k] = 0;
    free(kvlen), kvlen = NULL, kvlen_n = 0;
}

/* Real keys among the n tokens of chunk src. */
static int chunk_valid(int t_valid, int n, int src) {
    int v = t_valid - src * n;
    return v < 0 ? 0 : (v > n ? n : v);
}

/* ---- ring (p2p) --------------------------------------------------------------------------------- */

/* rows [B n] of k and v (strided) packed as [k | v] rows of 2 HD floats */
static void pack_kv(float *dst, const float *k, const float *v, size_t rows, int HD, int kv_stride) {
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        memcpy(dst + r * 2 * HD, k + r * kv_stride, sizeof(float) * (size_t)HD);
        memcpy(dst + r * 2 * HD + HD, v + r * kv_stride, sizeof(float) * (size_t)HD);
    }
}

/* out, lse (the running result) merged with a partial result o2 [rows, HD], l2 [B, H, n] by log-sum-exp:
 * out = (e^l1 out + e^l2 o2) / (e^l1 + e^l2), lse = log(e^l1 + e^l2). A -inf side (no valid key) is ignored. */
static void merge(float *out, float *lse, const float *o2, const float *l2, int B, int n, int H, int D,
                  int out_stride) {
    long rows = (long)B * n;
#pragma omp parallel for schedule(static)
    for (long row = 0; row < rows; row++) {
        int b = (int)(row / n), i = (int)(row % n);
        for (int h = 0; h < H; h++) {
            size_t li = ((size_t)b * H + h) * n + i;
            float L1 = lse[li], L2 = l2[li];
            float *o = out + (size_t)row * out_stride + (size_t)h * D;
            const float *p = o2 + (size_t)row * H * D + (size_t)h * D;
            if (L2 == -INFINITY) continue;
            if (L1 == -INFINITY) {
                memcpy(o, p, sizeof(float) * (size_t)D);
                lse[li] = L2;
                continue;
            }
            double m = L1 > L2 ? L1 : L2, w1 = exp((double)L1 - m), w2 = exp((double)L2 - m), s = w1 + w2;
            float a1 = (float)(w1 / s), a2 = (float)(w2 / s);
            for (int d = 0; d < D; d++) o[d] = a1 * o[d] + a2 * p[d];
            lse[li] = (float)(m + log(s));
        }
    }
}

static void ring_forward(float *out, float *lse, const float *q, const float *k, const float *v, int B, int n,
                         int t_valid, int H, int D, int q_stride, int kv_stride, int out_stride, float scale) {
    const dist_info *di = dist_get();
    int C = di->cp, r = di->cp_rank, next = (r + 1) % C, prev = (r + C - 1) % C, HD = H * D;
    size_t rows = (size_t)B * n, nkv = rows * 2 * HD;
    float *cur = buf(S_A, nkv), *nxt = buf(S_B, nkv), *o2 = buf(S_C, rows * HD), *l2 = buf(S_D, rows * H);
    pack_kv(cur, k, v, rows, HD, kv_stride);
    for (int s = 0; s < C; s++) {
        int src = (r - s + C) % C;
        dist_req *sq = NULL, *rq = NULL;
        if (s < C - 1) { /* the next chunk travels while this one is attended to */
            sq = dist_isend_f32_in(DIST_CP, cur, nkv, next, s, "context-parallel ring: send of keys and values");
            rq = dist_irecv_f32_in(DIST_CP, nxt, nkv, prev, s, "context-parallel ring: receive of keys and values");
        }
        const int *kl = lens(B, chunk_valid(t_valid, n, src));
        if (s == 0)
            attention_forward(out, lse, q, cur, cur + HD, kl, B, n, n, H, D, q_stride, 2 * HD, out_stride, scale);
        else {
            attention_forward(o2, l2, q, cur, cur + HD, kl, B, n, n, H, D, q_stride, 2 * HD, HD, scale);
            merge(out, lse, o2, l2, B, n, H, D, out_stride);
        }
        dist_wait(sq);
        dist_wait(rq);
        float *t = cur;
        cur = nxt, nxt = t;
    }
}

/* Each chunk's dK/dV are accumulated by every rank its keys visit and travel on behind them; after the last
 * visit they make one more hop, home. */
static void ring_backward(float *dq, float *dk, float *dv, float *ws, const float *dout, const float *out,
                          const float *lse, const float *q, const float *k, const float *v, int B, int n, int t_valid,
                          int H, int D, int q_stride, int kv_stride, int out_stride, float scale) {
    const dist_info *di = dist_get();
    int C = di->cp, r = di->cp_rank, next = (r + 1) % C, prev = (r + C - 1) % C, HD = H * D;
    size_t rows = (size_t)B * n, nkv = rows * 2 * HD;
    float *cur = buf(S_A, nkv), *nxt = buf(S_B, nkv), *dcur = buf(S_C, nkv), *dnxt = buf(S_D, nkv);
    pack_kv(cur, k, v, rows, HD, kv_stride);
    memset(dcur, 0, sizeof(float) * nkv);
    for (int s = 0; s < C; s++) {
        int src = (r - s + C) % C;
        dist_req *sq = NULL, *rq = NULL;
        if (s < C - 1) {
            sq = dist_isend_f32_in(DIST_CP, cur, nkv, next, 2 * s, "context-parallel ring: send of keys and values");
            rq = dist_irecv_f32_in(DIST_CP, nxt, nkv, prev, 2 * s, "context-parallel ring: receive of keys and values");
        }
        const int *kl = lens(B, chunk_valid(t_valid, n, src));
        attention_backward(dq, dcur, dcur + HD, ws, dout, out, lse, q, cur, cur + HD, kl, B, n, n, H, D, q_stride,
                           2 * HD, out_stride, scale);
        dist_req *dsq = dist_isend_f32_in(DIST_CP, dcur, nkv, next, 2 * s + 1,
                                          "context-parallel ring: send of key/value gradients");
        dist_req *drq = dist_irecv_f32_in(DIST_CP, dnxt, nkv, prev, 2 * s + 1,
                                          "context-parallel ring: receive of key/value gradients");
        dist_wait(sq);
        dist_wait(rq);
        dist_wait(dsq);
        dist_wait(drq);
        float *t = cur;
        cur = nxt, nxt = t;
        t = dcur, dcur = dnxt, dnxt = t;
    }
    /* after C hops dcur holds this rank's own chunk's gradients, summed over every rank's queries */
#pragma omp parallel for schedule(static)
    for (size_t row = 0; row < rows; row++) {
        const float *g = dcur + row * 2 * HD;
        float *a = dk + row * kv_stride, *b = dv + row * kv_stride;
        for (int i = 0; i < HD; i++) a[i] += g[i], b[i] += g[HD + i];
    }
}

/* ---- all-to-all (a2a) --------------------------------------------------------------------------- */

/* G tensors of this rank's tokens (src[g] rows src_stride[g] apart, H = C Hc heads) -> dst [B, C n, G Hc D]: all
 * tokens of this rank's Hc heads (head block cp_rank), global token order. */
static void tokens_to_heads(float *dst, const float *const *src, const int *src_stride, int G, int B, int n, int HcD) {
    const dist_info *di = dist_get();
    int C = di->cp;
    size_t blk = (size_t)B * n * G * HcD, row = (size_t)G * HcD;
    float *send = buf(S_E, blk * C), *recv = buf(S_F, blk * C);
#pragma omp parallel for schedule(static)
    for (long jr = 0; jr < (long)C * B * n; jr++) {
        int j = (int)(jr / ((long)B * n));
        size_t t = (size_t)(jr % ((long)B * n));
        for (int g = 0; g < G; g++)
            memcpy(send + j * blk + t * row + (size_t)g * HcD, src[g] + t * src_stride[g] + (size_t)j * HcD,
                   sizeof(float) * (size_t)HcD);
    }
    dist_alltoall_f32_in(DIST_CP, send, recv, blk, "context-parallel all-to-all to heads");
#pragma omp parallel for schedule(static)
    for (long jr = 0; jr < (long)C * B * n; jr++) {
        int j = (int)(jr / ((long)B * n));
        size_t t = (size_t)(jr % ((long)B * n)), b = t / (size_t)n, i = t % (size_t)n;
        memcpy(dst + (b * C * n + (size_t)j * n + i) * row, recv + j * blk + t * row, sizeof(float) * row);
    }
}

/* The reverse: src [B, C n, G Hc D] -> this rank's tokens of every head, written (add = 0) or added into dst[g]. */
static void heads_to_tokens(float *const *dst, const int *dst_stride, int add, const float *src, int G, int B, int n,
                            int HcD) {
    const dist_info *di = dist_get();
    int C = di->cp;
    size_t blk = (size_t)B * n * G * HcD, row = (size_t)G * HcD;
    float *send = buf(S_E, blk * C), *recv = buf(S_F, blk * C);
#pragma omp parallel for schedule(static)
    for (long jr = 0; jr < (long)C * B * n; jr++) {
        int j = (int)(jr / ((long)B * n));
        size_t t = (size_t)(jr % ((long)B * n)), b = t / (size_t)n, i = t % (size_t)n;
        memcpy(send + j * blk + t * row, src + (b * C * n + (size_t)j * n + i) * row, sizeof(float) * row);
    }
    dist_alltoall_f32_in(DIST_CP, send, recv, blk, "context-parallel all-to-all to tokens");
#pragma omp parallel for schedule(static)
    for (size_t t = 0; t < (size_t)B * n; t++)
        for (int j = 0; j < C; j++)
            for (int g = 0; g < G; g++) {
                const float *s = recv + j * blk + t * row + (size_t)g * HcD;
                float *d = dst[g] + t * dst_stride[g] + (size_t)j * HcD;
                if (add)
                    for (int e = 0; e < HcD; e++) d[e] += s[e];
                else
                    memcpy(d, s, sizeof(float) * (size_t)HcD);
            }
}

/* lse [B, H, n] of this rank's tokens <-> [B, Hc, C n] of its heads (to_heads: 1, back: 0) */
static void lse_exchange(float *local, float *heads, int to_heads, int B, int n, int H) {
    const dist_info *di = dist_get();
    int C = di->cp, Hc = H / C;
    size_t blk = (size_t)B * Hc * n;
    float *send = buf(S_E, blk * C), *recv = buf(S_F, blk * C);
    for (int j = 0; j < C; j++)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < Hc; h++)
                for (int i = 0; i < n; i++) {
                    size_t o = j * blk + ((size_t)b * Hc + h) * n + i;
                    if (to_heads)
                        send[o] = local[((size_t)b * H + (size_t)j * Hc + h) * n + i];
                    else
                        send[o] = heads[((size_t)b * Hc + h) * C * n + (size_t)j * n + i];
                }
    dist_alltoall_f32_in(DIST_CP, send, recv, blk, "context-parallel all-to-all of the log-sum-exp");
    for (int j = 0; j < C; j++)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < Hc; h++)
                for (int i = 0; i < n; i++) {
                    float x = recv[j * blk + ((size_t)b * Hc + h) * n + i];
                    if (to_heads)
                        heads[((size_t)b * Hc + h) * C * n + (size_t)j * n + i] = x;
                    else
                        local[((size_t)b * H + (size_t)j * Hc + h) * n + i] = x;
                }
}

static void a2a_forward(float *out, float *lse, const float *q, const float *k, const float *v, int B, int n,
                        int t_valid, int H, int D, int q_stride, int kv_stride, int out_stride, float scale) {
    int C = dist_get()->cp, Hc = H / C, HcD = Hc * D, N = C * n;
    size_t rows = (size_t)B * N;
    float *qkv = buf(S_A, rows * 3 * HcD), *oh = buf(S_B, rows * HcD), *lh = buf(S_C, rows * Hc);
    const float *src[3] = {q, k, v};
    int st[3] = {q_stride, kv_stride, kv_stride};
    tokens_to_heads(qkv, src, st, 3, B, n, HcD);
    attention_forward(oh, lh, qkv, qkv + HcD, qkv + 2 * HcD, lens(B, t_valid), B, N, N, Hc, D, 3 * HcD, 3 * HcD, HcD,
                      scale);
    float *dst[1] = {out};
    int ost[1] = {out_stride};
    heads_to_tokens(dst, ost, 0, oh, 1, B, n, HcD);
    lse_exchange(lse, lh, 0, B, n, H);
}

static void a2a_backward(float *dq, float *dk, float *dv, float *ws, const float *dout, const float *out,
                         const float *lse, const float *q, const float *k, const float *v, int B, int n, int t_valid,
                         int H, int D, int q_stride, int kv_stride, int out_stride, float scale) {
    int C = dist_get()->cp, Hc = H / C, HcD = Hc * D, N = C * n;
    size_t rows = (size_t)B * N;
    float *qkv = buf(S_A, rows * 3 * HcD), *od = buf(S_B, rows * 2 * HcD), *lh = buf(S_C, rows * Hc);
    float *dqkv = buf(S_D, rows * 3 * HcD);
    const float *src[3] = {q, k, v};
    int st[3] = {q_stride, kv_stride, kv_stride};
    tokens_to_heads(qkv, src, st, 3, B, n, HcD);
    const float *osrc[2] = {out, dout};
    int ost[2] = {out_stride, out_stride};
    tokens_to_heads(od, osrc, ost, 2, B, n, HcD);
    lse_exchange((float *)lse, lh, 1, B, n, H);
    memset(dqkv, 0, sizeof(float) * rows * 3 * HcD);
    attention_backward(dqkv, dqkv + HcD, dqkv + 2 * HcD, ws, od + HcD, od, lh, qkv, qkv + HcD, qkv + 2 * HcD,
                       lens(B, t_valid), B, N, N, Hc, D, 3 * HcD, 3 * HcD, 2 * HcD, scale);
    float *dst[3] = {dq, dk, dv};
    heads_to_tokens(dst, st, 1, dqkv, 3, B, n, HcD);
}

/* ---- entry points ------------------------------------------------------------------------------- */

void cp_attention_forward(cp_comm_type t, float *out, float *lse, const float *q, const float *k, const float *v, int B,
                          int n, int t_valid, int H, int D, int q_stride, int kv_stride, int out_stride, float scale) {
    const dist_info *di = dist_get();
    if (di->cp == 1 || t == CP_LOCAL) {
        attention_forward(out, lse, q, k, v, t_valid < n ? lens(B, t_valid) : NULL, B, n, n, H, D, q_stride, kv_stride,
                          out_stride, scale);
        return;
    }
    if (t == CP_A2A) {
        if (H % di->cp) dfm_die("internal: a2a attention with %d heads over %d context-parallel ranks", H, di->cp);
        a2a_forward(out, lse, q, k, v, B, n, t_valid, H, D, q_stride, kv_stride, out_stride, scale);
    } else
        ring_forward(out, lse, q, k, v, B, n, t_valid, H, D, q_stride, kv_stride, out_stride, scale);
}

void cp_attention_backward(cp_comm_type t, float *dq, float *dk, float *dv, float *ws, const float *dout,
                           const float *out, const float *lse, const float *q, const float *k, const float *v, int B,
                           int n, int t_valid, int H, int D, int q_stride, int kv_stride, int out_stride, float scale) {
    const dist_info *di = dist_get();
    if (di->cp == 1 || t == CP_LOCAL) {
        attention_backward(dq, dk, dv, ws, dout, out, lse, q, k, v, t_valid < n ? lens(B, t_valid) : NULL, B, n, n, H,
                           D, q_stride, kv_stride, out_stride, scale);
        return;
    }
    if (t == CP_A2A)
        a2a_backward(dq, dk, dv, ws, dout, out, lse, q, k, v, B, n, t_valid, H, D, q_stride, kv_stride, out_stride,
                     scale);
    else
        ring_backward(dq, dk, dv, ws, dout, out, lse, q, k, v, B, n, t_valid, H, D, q_stride, kv_stride, out_stride,
                      scale);
}

void cp_take_rows(float *local, const float *full, int B, int n, int tok0, int n_full, int w) {
    for (int b = 0; b < B; b++)
        for (int i = 0; i < n; i++) {
            int gi = tok0 + i;
            float *dst = local + ((size_t)b * n + i) * w;
            if (gi < n_full)
                memcpy(dst, full + ((size_t)b * n_full + gi) * w, sizeof(float) * (size_t)w);
            else
                memset(dst, 0, sizeof(float) * (size_t)w);
        }
}

void cp_put_rows(float *full, const float *local, int B, int n, int tok0, int n_full, int w) {
    memset(full, 0, sizeof(float) * (size_t)B * n_full * w);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < n && tok0 + i < n_full; i++)
            memcpy(full + ((size_t)b * n_full + tok0 + i) * w, local + ((size_t)b * n + i) * w,
                   sizeof(float) * (size_t)w);
}
