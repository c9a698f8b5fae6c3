/* dfm export: a DiT checkpoint as a diffusers pipeline folder (see dfm/diffusers.h). */
#include "cli/cli_common.h"
#include "dfm/common.h"
#include "dfm/diffusers.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f, "usage: dfm export --checkpoint PATH --out DIR [options]\n"
               "  --checkpoint PATH   a dfm weights file, a checkpoint folder iter_NNNNNNN/, or the checkpoint root\n"
               "  --out DIR           the diffusers folder to write (an earlier export there is replaced)\n"
               "  --weights ema|model which weights of a checkpoint folder (default ema)\n"
               "  --dtype fp32|bf16|fp16   tensor dtype (default fp32)\n"
               "  --objective flow_matching|edm   when the weights file does not say (picks the scheduler)\n"
               "  --shift S           FlowMatchEulerDiscreteScheduler shift (default: the training shift, else 1)\n");
}

int dfm_export_main(int argc, char **argv) {
    const char *checkpoint = NULL, *out_dir = NULL, *weights = "ema", *dtype = "fp32", *objective = NULL;
    const char *shift_s = NULL;
    int weights_explicit = 0;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (cli_opt(argc, argv, &i, "--checkpoint", &v))
            checkpoint = v;
        else if (cli_opt(argc, argv, &i, "--out", &v))
            out_dir = v;
        else if (cli_opt(argc, argv, &i, "--weights", &v))
            weights = v, weights_explicit = 1;
        else if (cli_opt(argc, argv, &i, "--dtype", &v))
            dtype = v;
        else if (cli_opt(argc, argv, &i, "--objective", &v))
            objective = v;
        else if (cli_opt(argc, argv, &i, "--shift", &v))
            shift_s = v;
        else {
            fprintf(stderr, "dfm: error: export: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (!checkpoint || !out_dir) {
        fprintf(stderr, "dfm: error: export needs --checkpoint and --out\n");
        usage(stderr);
        return 2;
    }
    if (strcmp(weights, "ema") && strcmp(weights, "model"))
        dfm_die("--weights must be 'ema' or 'model' (got '%s')", weights);
    diffusers_export_opts o;
    diffusers_export_defaults(&o);
    if (!strcmp(dtype, "fp32"))
        o.dtype = ST_F32;
    else if (!strcmp(dtype, "bf16"))
        o.dtype = ST_BF16;
    else if (!strcmp(dtype, "fp16"))
        o.dtype = ST_F16;
    else
        dfm_die("--dtype must be fp32, bf16 or fp16 (got '%s')", dtype);
    double shift = 0;
    if (shift_s && !cli_parse_float(shift_s, 1e-6, 1e6, &shift))
        dfm_die("--shift must be a positive number (got '%s')", shift_s);
    if (objective && strcmp(objective, "flow_matching") && strcmp(objective, "flow") && strcmp(objective, "edm"))
        dfm_die("--objective must be 'flow_matching' or 'edm' (got '%s')", objective);

    dit_model m;
    cli_model_info info;
    char err[2048];
    if (cli_open_dit(checkpoint, weights, weights_explicit, 1, &m, &info, err, sizeof err)) dfm_die("%s", err);
    if (objective)
        o.objective = strcmp(objective, "edm") ? OBJ_FLOW_MATCHING : OBJ_EDM;
    else if (info.has_objective)
        o.objective = info.obj.kind;
    else
        dfm_die("'%s' does not say which objective trained it (no 'dfm_objective' metadata): pass --objective "
                "flow_matching or --objective edm",
                info.path);
    o.flow_shift = shift_s ? (float)shift : info.obj.flow_shift;
    o.sigma_data = info.obj.sigma_data;
    if (dit_export_diffusers(&m, m.params, out_dir, &o, err, sizeof err)) dfm_die("%s", err);
    fprintf(stderr, "export: %s -> %s (DiTTransformer2DModel, %d layers, %s, %s)\n", info.path, out_dir,
            m.cfg.num_layers, dtype, o.objective == OBJ_EDM ? "EDMEulerScheduler" : "FlowMatchEulerDiscreteScheduler");
    cli_model_info_free(&info, m.cfg.num_classes);
    dit_free(&m);
    return 0;
}
