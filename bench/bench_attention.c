/* Attention kernel benchmark: forward and backward time and GFLOP/s on DiT-like shapes.
 * Flops counted as 4 * B * H * Nq * Nk_valid * D forward (two block products) and 2.5x that backward.
 * Usage: bench_attention [repeats [name-filter]]  (each figure is the best of the repeats; with a
 * filter, only shapes whose name contains it).
 * On a shared machine wall-clock figures swing with other load; DFM_BENCH_CPU_TIME=1 times by process
 * CPU time instead, which with OMP_NUM_THREADS=1 gives a stable per-core figure. */
#include "dfm/common.h"
#include "dfm/kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const char *name;
    int B, H, Nq, Nk, D, kv_len; /* kv_len 0 = no mask */
} bench_shape;

static void fill(float *x, size_t n, unsigned *state) {
    for (size_t i = 0; i < n; i++) {
        *state = *state * 1664525u + 1013904223u;
        x[i] = (float)((*state >> 8) & 0xffff) / 32768.0f - 1.0f;
    }
}

static double process_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    int repeats = argc > 1 ? atoi(argv[1]) : 5;
    if (repeats < 1) repeats = 1;
    int nthreads = kernels_init();
    const char *cpu_env = getenv("DFM_BENCH_CPU_TIME");
    double (*clock_s)(void) = cpu_env && atoi(cpu_env) ? process_cpu_s : dfm_time_s;
    printf("# %s\n# best of %d runs, %d threads, %s time\n", kernels_blas_info(), repeats, nthreads,
           clock_s == process_cpu_s ? "process CPU" : "wall-clock");
    const bench_shape shapes[] = {
        {"DiT B8 H6 N256 D64", 8, 6, 256, 256, 64, 0},
        {"B2 H16 N1024 D72", 2, 16, 1024, 1024, 72, 0},
        {"B1 H12 N4096 D128", 1, 12, 4096, 4096, 128, 0},
        {"cross B1 H12 Nq4096 Nk512 D128 kv300", 1, 12, 4096, 512, 128, 300},
    };
    printf("%-40s %10s %10s %10s %10s\n", "shape", "fwd ms", "fwd GF/s", "bwd ms", "bwd GF/s");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const bench_shape *sh = &shapes[s];
        if (argc > 2 && !strstr(sh->name, argv[2])) continue;
        int B = sh->B, H = sh->H, Nq = sh->Nq, Nk = sh->Nk, D = sh->D, C = H * D;
        size_t nq = (size_t)B * Nq * C, nk = (size_t)B * Nk * C;
        float *q = xalloc_floats(nq), *k = xalloc_floats(nk), *v = xalloc_floats(nk);
        float *out = xalloc_floats(nq), *dout = xalloc_floats(nq), *lse = xalloc_floats((size_t)B * H * Nq);
        float *dq = xalloc_floats(nq), *dk = xalloc_floats(nk), *dv = xalloc_floats(nk);
        float *ws = xalloc_floats(attention_workspace_floats(B, H, Nq));
        int *kv_len = xcalloc((size_t)B, sizeof(int));
        unsigned st = 12345;
        fill(q, nq, &st), fill(k, nk, &st), fill(v, nk, &st), fill(dout, nq, &st);
        for (int b = 0; b < B; b++) kv_len[b] = sh->kv_len;
        const int *mask = sh->kv_len ? kv_len : NULL;
        int nvalid = sh->kv_len ? sh->kv_len : Nk;
        float scale = 1.0f / sqrtf((float)D);
        double flops = 4.0 * B * H * (double)Nq * nvalid * D;
        double best_f = 1e30, best_b = 1e30;
        for (int r = 0; r < repeats; r++) {
            double t0 = clock_s();
            attention_forward(out, lse, q, k, v, mask, B, Nq, Nk, H, D, C, C, C, scale);
            double t1 = clock_s();
            attention_backward(dq, dk, dv, ws, dout, out, lse, q, k, v, mask, B, Nq, Nk, H, D, C, C, C, scale);
            double t2 = clock_s();
            if (t1 - t0 < best_f) best_f = t1 - t0;
            if (t2 - t1 < best_b) best_b = t2 - t1;
        }
        printf("%-40s %10.2f %10.1f %10.2f %10.1f\n", sh->name, best_f * 1e3, flops / best_f * 1e-9, best_b * 1e3,
               2.5 * flops / best_b * 1e-9);
        free(q), free(k), free(v), free(out), free(dout), free(lse), free(dq), free(dk), free(dv), free(ws);
        free(kv_len);
    }
    return 0;
}
