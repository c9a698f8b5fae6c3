/* sgemm throughput on the GEMM shapes of a DiT-S/2 training step (batch 8, 256 tokens: M = 2048 rows),
 * OpenBLAS (cblas_sgemm) against oneDNN (dnnl_sgemm), both row-major with beta = 1 as dfm calls them.
 * usage: bench_gemm [repeats=10]. Prints ms and GFLOP/s per shape and library, and the overall rate. */
#include "dfm/common.h"
#include "dfm/kernels.h"

#include <cblas.h>
#include <dnnl.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 10;
    kernels_init();
    /* M N K transA transB: forward (x W^T), input gradient (dY W), weight gradient (dY^T X) */
    const int shapes[][5] = {{2048, 1152, 384, 0, 1}, {2048, 384, 384, 0, 1},  {2048, 1536, 384, 0, 1},
                             {2048, 384, 1536, 0, 1}, {2048, 384, 1152, 0, 0}, {2048, 384, 1536, 0, 0},
                             {2048, 1536, 384, 0, 0}, {1152, 384, 2048, 1, 0}, {1536, 384, 2048, 1, 0},
                             {384, 1536, 2048, 1, 0}, {384, 384, 2048, 1, 0}};
    const int nshape = sizeof shapes / sizeof shapes[0];
    size_t big = 2048 * 1536;
    float *A = xalloc_floats(big), *B = xalloc_floats(big), *C = xalloc_floats(big);
    for (size_t i = 0; i < big; i++) A[i] = (float)(i % 97) / 97.0f, B[i] = (float)(i % 89) / 178.0f;
    double total_t[2] = {0, 0}, total_f = 0;
    printf("%5s %5s %5s %2s %22s %22s\n", "M", "N", "K", "op", "OpenBLAS ms  GFLOP/s", "oneDNN ms  GFLOP/s");
    for (int s = 0; s < nshape; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], ta = shapes[s][3], tb = shapes[s][4];
        int lda = ta ? M : K, ldb = tb ? K : N;
        double f = 2.0 * M * N * K, dt[2];
        for (int lib = 0; lib < 2; lib++) {
            double t0 = 0;
            for (int r = -2; r < reps; r++) { /* two untimed warm-up calls */
                if (r == 0) t0 = dfm_time_s();
                if (lib == 0)
                    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K,
                                1.0f, A, lda, B, ldb, 1.0f, C, N);
                else
                    dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, 1.0f, A, lda, B, ldb, 1.0f, C, N);
            }
            dt[lib] = (dfm_time_s() - t0) / reps;
            total_t[lib] += dt[lib];
        }
        total_f += f;
        printf("%5d %5d %5d %c%c %9.2f %10.1f %11.2f %10.1f\n", M, N, K, ta ? 'T' : 'N', tb ? 'T' : 'N', dt[0] * 1e3,
               f / dt[0] * 1e-9, dt[1] * 1e3, f / dt[1] * 1e-9);
    }
    printf("overall: OpenBLAS %.1f GFLOP/s, oneDNN %.1f GFLOP/s\n", total_f / total_t[0] * 1e-9,
           total_f / total_t[1] * 1e-9);
    free(A), free(B), free(C);
    return 0;
}
