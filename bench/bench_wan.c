/* Wan training-step benchmark (dfm side): median step time, peak RSS and achieved GFLOP/s on a small Wan.
 * usage: bench_wan [steps=6] [warmup=2] [batch=2] [frames=4] [height=32] [width=32] [text_len=64]
 * Model: 4 layers, 4 heads x 64, ffn 1024, text_dim 512, 16 latent channels, patch [1, 2, 2] (bench/wan_torch.py
 * builds the same). One step: flow matching (logit-normal sigma, shift 2.5, loss weighting), forward, backward,
 * clip + AdamW. Prints one line: "dfm name=wan_small ms=<median> rss_mb=<peak> gflops=<achieved> loss=<last>". */
#include "dfm/common.h"
#include "dfm/diffusion.h"
#include "dfm/kernels.h"
#include "dfm/optim.h"
#include "dfm/wan.h"

#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    int steps = argc > 1 ? atoi(argv[1]) : 6, warmup = argc > 2 ? atoi(argv[2]) : 2;
    wan_shape s = {argc > 3 ? atoi(argv[3]) : 2, argc > 4 ? atoi(argv[4]) : 4, argc > 5 ? atoi(argv[5]) : 32,
                   argc > 6 ? atoi(argv[6]) : 32, argc > 7 ? atoi(argv[7]) : 64};
    if (steps < 1 || warmup < 0)
        dfm_die("usage: bench_wan [steps>=1] [warmup>=0] [batch] [frames] [height] [width] [L]");
    wan_config cfg;
    wan_config_named(&cfg, "wan_1_3b");
    cfg.num_layers = 4, cfg.num_heads = 4, cfg.head_dim = 64, cfg.ffn_dim = 1024, cfg.text_dim = 512;
    kernels_init();
    fprintf(stderr, "%s\n", kernels_blas_info());
    wan_model m;
    wan_create(&m, &cfg, &s);
    wan_init(&m, 0); /* zero proj_out: dense kernels cost the same whatever the values */
    adamw_config oc;
    adamw_config_defaults(&oc);
    adamw_state opt;
    adamw_init(&opt, &m.table, &oc);
    objective_config obj;
    objective_defaults_flow(&obj, 1);
    obj.cond_dropout_prob = 0.0f;

    const int B = s.batch;
    const size_t per = (size_t)cfg.in_channels * s.frames * s.height * s.width;
    const size_t tn = (size_t)B * s.text_len * cfg.text_dim;
    float *x0 = xalloc_floats((size_t)B * per), *text = xalloc_floats(tn);
    float *out = xalloc_floats((size_t)B * per), *dout = xalloc_floats((size_t)B * per);
    for (size_t i = 0; i < (size_t)B * per; i++) x0[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
    for (size_t i = 0; i < tn; i++) text[i] = (float)((i * 40503u) % 1000) / 1000.0f - 0.5f;
    int *labels = xcalloc((size_t)B, sizeof(int));
    diffusion_batch db;
    diffusion_batch_alloc(&db, B, per);

    double *t = xcalloc((size_t)steps, sizeof(double));
    double loss = 0;
    for (int k = 0; k < warmup + steps; k++) {
        double t0 = dfm_time_s();
        diffusion_prepare(&db, &obj, x0, labels, B, per, 1, 0, (uint32_t)k, 0);
        wan_zero_grad(&m);
        wan_forward(&m, out, db.model_in, db.timestep, text, NULL, &s);
        loss = diffusion_loss(&db, out, dout, per, 1.0f);
        wan_backward(&m, dout);
        adamw_update(&opt, m.params, m.grads, 1e-4f);
        double dt = dfm_time_s() - t0;
        if (k >= warmup) t[k - warmup] = dt;
        fprintf(stderr, "step %d: %.1f ms loss %.4f\n", k, dt * 1e3, loss);
    }
    qsort(t, (size_t)steps, sizeof(double), cmp_double);
    const double med = t[steps / 2], flops = 3.0 * wan_forward_flops(&m, &s);
    printf("dfm name=wan_small params=%zu ms=%.1f rss_mb=%.0f gflops=%.1f step_gflop=%.1f act_mb=%.0f loss=%.5f\n",
           m.table.total, med * 1e3, dfm_peak_rss_kb() / 1024.0, flops / med * 1e-9, flops * 1e-9,
           wan_activation_bytes(&m) / 1048576.0, loss);
    free(t), free(x0), free(text), free(out), free(dout), free(labels);
    diffusion_batch_free(&db);
    adamw_free(&opt);
    wan_free(&m);
    return 0;
}
