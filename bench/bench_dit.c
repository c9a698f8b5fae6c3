/* DiT training-step benchmark (dfm side): median step time, peak RSS and achieved GFLOP/s.
 * usage: bench_dit [config=S/2] [batch=8] [steps=6] [warmup=2] [image=32] [channels=4]
 * Prints one line: "dfm name=... ms=<median> rss_mb=<peak> gflops=<achieved> loss=<last>". */
#include "dfm/common.h"
#include "dfm/dit.h"
#include "dfm/kernels.h"
#include "dfm/train.h"

#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "S/2";
    int B = argc > 2 ? atoi(argv[2]) : 8, steps = argc > 3 ? atoi(argv[3]) : 6, warmup = argc > 4 ? atoi(argv[4]) : 2;
    dit_config cfg;
    if (!dit_config_named(&cfg, name)) dfm_die("unknown DiT config '%s'", name);
    if (argc > 5) cfg.image_size = atoi(argv[5]);
    if (argc > 6) cfg.in_channels = atoi(argv[6]);
    kernels_init();
    fprintf(stderr, "%s\n", kernels_blas_info());
    dit_model m;
    dit_create(&m, &cfg, B);
    dit_init(&m, 0);
    /* the paper's init (zero adaLN and output): dense kernels cost the same whatever the values */
    adamw_config oc;
    adamw_config_defaults(&oc);
    adamw_state opt;
    adamw_init(&opt, &m.table, &oc);
    objective_config obj;
    objective_defaults_flow(&obj, 1);
    dit_trainer tr;
    dit_trainer_init(&tr, &m, &opt, &obj, 0);
    size_t n = (size_t)B * cfg.in_channels * cfg.image_size * cfg.image_size;
    float *x0 = xalloc_floats(n);
    for (size_t i = 0; i < n; i++) x0[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
    int *labels = xcalloc((size_t)B, sizeof(int));
    for (int b = 0; b < B; b++) labels[b] = (b * 37) % cfg.num_classes;
    double *t = xcalloc((size_t)steps, sizeof(double));
    step_result r = {0};
    for (int k = 0; k < warmup + steps; k++) {
        double t0 = dfm_time_s();
        r = dit_trainer_step(&tr, x0, labels, B, (uint32_t)k, 1e-4f);
        double dt = dfm_time_s() - t0;
        if (k >= warmup) t[k - warmup] = dt;
        fprintf(stderr, "step %d: %.1f ms loss %.4f\n", k, dt * 1e3, r.loss);
    }
    qsort(t, (size_t)steps, sizeof(double), cmp_double);
    double med = t[steps / 2];
    double flops = 3.0 * dit_forward_flops(&m, B);
    printf("dfm name=%s params=%zu ms=%.1f rss_mb=%.0f gflops=%.1f step_gflop=%.1f act_mb=%.0f loss=%.5f\n", name,
           m.table.total, med * 1e3, dfm_peak_rss_kb() / 1024.0, flops / med * 1e-9, flops * 1e-9,
           dit_activation_bytes(&m) / 1048576.0, r.loss);
    free(t), free(x0), free(labels);
    dit_trainer_free(&tr);
    adamw_free(&opt);
    dit_free(&m);
    return 0;
}
