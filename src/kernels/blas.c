/* BLAS set-up and the linear layer.
 *
 * The linear layers' GEMMs go through oneDNN's sgemm: on this project's Zen 4 machines it made the DiT-S/2
 * training step 13% faster and the default recipe 20% faster than OpenBLAS's sgemm (docs/PERFORMANCE.md),
 * mostly on the packing of small-K operands. OpenBLAS (OpenMP build) stays for the small block products
 * inside the attention kernel, which run single-threaded inside its own parallel region, and for LAPACK. */
#include "dfm/kernels.h"
#include "dfm/common.h"

#include <cblas.h>
#include <dnnl.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

/* OpenBLAS extensions (declared in its cblas.h, repeated here for clarity of what we rely on). */
int openblas_get_parallel(void);
char *openblas_get_corename(void);
char *openblas_get_config(void);
void openblas_set_num_threads(int num_threads);

static char blas_info[384];

/* C = alpha op(A) op(B) + beta C, row-major, through oneDNN; a failure is a bug or an absurd size: stop. */
static void gemm(char ta, char tb, int M, int N, int K, const float *A, int lda, const float *B, int ldb, float beta,
                 float *C, int ldc) {
    dnnl_status_t st = dnnl_sgemm(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
    if (st != dnnl_success)
        dfm_die("oneDNN sgemm failed (status %d) for %c%c M=%d N=%d K=%d", (int)st, ta, tb, M, N, K);
}

int kernels_init(void) {
    int nth = omp_get_max_threads();
    openblas_set_num_threads(nth);
    /* 2 = OpenMP threading. A pthread BLAS (1) would spin its own pool against ours. */
    if (openblas_get_parallel() != 2)
        dfm_warn("OpenBLAS is not the OpenMP build (openblas_get_parallel() = %d): expect slow GEMMs",
                 openblas_get_parallel());
    const dnnl_version_t *dv = dnnl_version();
    snprintf(blas_info, sizeof blas_info,
             "GEMM: oneDNN %d.%d.%d sgemm (linear layers) + OpenBLAS (%s), core %s, threading %s (attention "
             "blocks); %d threads",
             dv->major, dv->minor, dv->patch, openblas_get_config(), openblas_get_corename(),
             openblas_get_parallel() == 2 ? "OpenMP" : (openblas_get_parallel() == 1 ? "pthreads" : "none"), nth);
    return nth;
}

const char *kernels_blas_info(void) {
    if (!blas_info[0]) kernels_init();
    return blas_info;
}

static double forward_flops_done; /* matrix-product and attention FLOPs of the forward kernels so far */

double kernels_forward_flops(void) {
    return forward_flops_done;
}
void kernels_count_flops(double flops) {
    forward_flops_done += flops;
}

void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int M, int N, int K) {
    forward_flops_done += 2.0 * M * N * K;
    if (bias) {
#pragma omp parallel for schedule(static)
        for (int i = 0; i < M; i++) memcpy(out + (size_t)i * N, bias, sizeof(float) * (size_t)N);
    }
    gemm('N', 'T', M, N, K, inp, K, weight, K, bias ? 1.0f : 0.0f, out, N);
}

void kernels_sgemm(char ta, char tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                   float beta, float *C, int ldc) {
    dnnl_status_t st = dnnl_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    if (st != dnnl_success)
        dfm_die("oneDNN sgemm failed (status %d) for %c%c M=%d N=%d K=%d", (int)st, ta, tb, M, N, K);
}

static struct {
    const float *lo, *hi;
    kernels_frozen_linear_fn fn;
    void *ctx;
} frozen;

void kernels_set_frozen(float *lo, size_t n, kernels_frozen_linear_fn fn, void *ctx) {
    frozen.lo = n ? lo : NULL;
    frozen.hi = n ? lo + n : NULL;
    frozen.fn = n ? fn : NULL;
    frozen.ctx = n ? ctx : NULL;
}

int kernels_grad_frozen(const float *p) {
    return p && frozen.lo && p >= frozen.lo && p < frozen.hi;
}

void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                     const float *weight, int M, int N, int K) {
    if (kernels_grad_frozen(dweight)) { /* a frozen weight: what its owner wants instead (LoRA), no G^T X */
        if (frozen.fn) frozen.fn(frozen.ctx, dweight, dout, inp, M, N, K);
        dweight = NULL;
    }
    if (kernels_grad_frozen(dbias)) dbias = NULL;
    if (dinp) gemm('N', 'N', M, K, N, dout, N, weight, K, 1.0f, dinp, K);
    if (dweight) gemm('T', 'N', N, K, M, dout, N, inp, K, 1.0f, dweight, K);
    if (dbias) {
        /* column sums; split over columns so each thread owns its outputs */
#pragma omp parallel for schedule(static)
        for (int j0 = 0; j0 < N; j0 += 64) {
            int j1 = j0 + 64 < N ? j0 + 64 : N;
            float acc[64] = {0};
            for (int i = 0; i < M; i++) {
                const float *row = dout + (size_t)i * N;
                for (int j = j0; j < j1; j++) acc[j - j0] += row[j];
            }
            for (int j = j0; j < j1; j++) dbias[j] += acc[j - j0];
        }
    }
}
