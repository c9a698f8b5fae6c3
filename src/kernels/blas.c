/* BLAS set-up and the linear layer (sgemm through OpenBLAS's OpenMP build). */
#include "dfm/kernels.h"
#include "dfm/common.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

/* OpenBLAS extensions (declared in its cblas.h, repeated here for clarity of what we rely on). */
int openblas_get_parallel(void);
char *openblas_get_corename(void);
char *openblas_get_config(void);
void openblas_set_num_threads(int num_threads);

static char blas_info[256];

int kernels_init(void) {
    int nth = omp_get_max_threads();
    openblas_set_num_threads(nth);
    /* 2 = OpenMP threading. A pthread BLAS (1) would spin its own pool against ours. */
    if (openblas_get_parallel() != 2)
        dfm_warn("OpenBLAS is not the OpenMP build (openblas_get_parallel() = %d): expect slow GEMMs",
                 openblas_get_parallel());
    snprintf(blas_info, sizeof blas_info, "BLAS: OpenBLAS (%s), core %s, threading %s, %d threads",
             openblas_get_config(), openblas_get_corename(),
             openblas_get_parallel() == 2 ? "OpenMP" : (openblas_get_parallel() == 1 ? "pthreads" : "none"), nth);
    return nth;
}

const char *kernels_blas_info(void) {
    if (!blas_info[0]) kernels_init();
    return blas_info;
}

void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int M, int N, int K) {
    if (bias) {
#pragma omp parallel for schedule(static)
        for (int i = 0; i < M; i++) memcpy(out + (size_t)i * N, bias, sizeof(float) * (size_t)N);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, inp, K, weight, K, bias ? 1.0f : 0.0f, out,
                N);
}

void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                     const float *weight, int M, int N, int K) {
    if (dinp) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, N, 1.0f, dout, N, weight, K, 1.0f, dinp, K);
    if (dweight)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, K, M, 1.0f, dout, N, inp, K, 1.0f, dweight, K);
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
