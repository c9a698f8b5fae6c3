/* dfm export: a DiT or Wan checkpoint as a diffusers pipeline folder (see dfm/diffusers.h). Which model it is
 * comes from the weights' metadata (dfm_dit_config or dfm_wan_config). */
#include "cli/cli_common.h"
#include "dfm/common.h"
#include "dfm/diffusers.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f, "usage: dfm export --checkpoint PATH --out DIR [options]\n"
               "  --checkpoint PATH   a dfm weights file, a checkpoint folder (iter_NNNNNNN/, epoch_E_step_S/) or the\n"
               "                      checkpoint root (DiT or Wan, consolidated or sharded)\n"
               "  --out DIR           the diffusers folder to write (an earlier export there is replaced)\n"
               "  --weights ema|model which weights of a checkpoint folder (default ema)\n"
               "  --merge-lora DIR    fold a LoRA adapter folder (PEFT's adapter_model.safetensors +\n"
               "                      adapter_config.json) into the weights before writing\n"
               "                      (a LoRA training checkpoint given as --checkpoint is merged by itself)\n"
               "  --dtype fp32|bf16|fp16   tensor dtype (default fp32)\n"
               "  --max-shard-size N  split the weights into files of at most N bytes (suffixes KB, MB, GB, KiB,\n"
               "                      MiB, GiB) with diffusers' index; 5GB matches the hub's Wan pipelines\n"
               "  --scheduler euler|unipc   flow scheduler: FlowMatchEulerDiscreteScheduler or\n"
               "                      UniPCMultistepScheduler (default: euler for DiT, unipc for Wan, as its hub)\n"
               "  --objective flow_matching|edm   when the weights file does not say (picks the scheduler)\n"
               "  --shift S           the flow scheduler's shift (default: the training shift, else 1 for DiT and\n"
               "                      3 for Wan)\n");
}

/* "5GB" -> 5e9, "512MiB" -> 2^29, "1000" -> 1000 (diffusers' max_shard_size spelling); 0 if malformed. */
static uint64_t parse_size(const char *s) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || !(v > 0)) return 0;
    static const struct {
        const char *suffix;
        double mult;
    } units[] = {{"", 1},      {"B", 1},        {"KB", 1e3},        {"MB", 1e6},          {"GB", 1e9},
                 {"TB", 1e12}, {"KIB", 1024.0}, {"MIB", 1048576.0}, {"GIB", 1073741824.0}};
    char up[8];
    if (strlen(end) >= sizeof up) return 0;
    snprintf(up, sizeof up, "%s", end);
    for (char *c = up; *c; c++) *c = (char)toupper((unsigned char)*c);
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (!strcmp(up, units[i].suffix)) {
            double b = v * units[i].mult;
            return b >= 1 && b < 1.8e19 ? (uint64_t)b : 0;
        }
    return 0;
}

/* A Wan checkpoint: the weights only (no gradients or activations), then the WanPipeline folder. */
static int export_wan(const char *checkpoint, const char *weights, int weights_explicit, const char *out_dir,
                      diffusers_export_opts *o, const char *objective, const char *shift_s, double shift,
                      const char *dtype, const char *adapter) {
    wan_model m;
    cli_wan_info info;
    char err[2048];
    if (cli_open_wan(checkpoint, weights, weights_explicit, NULL, &m, &info, err, sizeof err)) dfm_die("%s", err);
    cli_apply_adapter(adapter, &m.table, m.params);
    /* Wan is a flow-matching model; a checkpoint without objective metadata is taken as one */
    o->objective = objective            ? (strcmp(objective, "edm") ? OBJ_FLOW_MATCHING : OBJ_EDM)
                   : info.has_objective ? info.obj.kind
                                        : OBJ_FLOW_MATCHING;
    o->flow_shift = shift_s ? (float)shift : info.has_objective ? info.obj.flow_shift : 3.0f;
    o->sigma_data = info.obj.sigma_data;
    if (wan_export_diffusers(&m, m.params, out_dir, o, err, sizeof err)) dfm_die("%s", err);
    fprintf(stderr, "export: %s -> %s (WanTransformer3DModel, %d layers, %zu parameters, %s, %s, shift %g)\n",
            info.path, out_dir, m.cfg.num_layers, m.table.total, dtype,
            o->objective == OBJ_EDM                      ? "EDMEulerScheduler"
            : o->scheduler == DIFFUSERS_SCHED_FLOW_EULER ? "FlowMatchEulerDiscreteScheduler"
                                                         : "UniPCMultistepScheduler",
            (double)o->flow_shift);
    wan_free(&m);
    return 0;
}

int dfm_export_main(int argc, char **argv) {
    const char *checkpoint = NULL, *out_dir = NULL, *weights = "ema", *dtype = "fp32", *objective = NULL;
    const char *shift_s = NULL, *shard_s = NULL, *scheduler = NULL, *adapter = NULL;
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
        else if (cli_opt(argc, argv, &i, "--merge-lora", &v))
            adapter = v;
        else if (cli_opt(argc, argv, &i, "--dtype", &v))
            dtype = v;
        else if (cli_opt(argc, argv, &i, "--objective", &v))
            objective = v;
        else if (cli_opt(argc, argv, &i, "--shift", &v))
            shift_s = v;
        else if (cli_opt(argc, argv, &i, "--max-shard-size", &v))
            shard_s = v;
        else if (cli_opt(argc, argv, &i, "--scheduler", &v))
            scheduler = v;
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
    if (shard_s && !(o.max_shard_bytes = parse_size(shard_s)))
        dfm_die("--max-shard-size must be a size in bytes, e.g. 5GB, 500MB or 1000000 (got '%s')", shard_s);
    if (scheduler && !strcmp(scheduler, "euler"))
        o.scheduler = DIFFUSERS_SCHED_FLOW_EULER;
    else if (scheduler && !strcmp(scheduler, "unipc"))
        o.scheduler = DIFFUSERS_SCHED_UNIPC;
    else if (scheduler)
        dfm_die("--scheduler must be 'euler' or 'unipc' (got '%s')", scheduler);
    if (cli_checkpoint_is_wan(checkpoint, weights, weights_explicit))
        return export_wan(checkpoint, weights, weights_explicit, out_dir, &o, objective, shift_s, shift, dtype,
                          adapter);

    dit_model m;
    cli_model_info info;
    char err[2048];
    if (cli_open_dit(checkpoint, weights, weights_explicit, 1, &m, &info, err, sizeof err)) dfm_die("%s", err);
    cli_apply_adapter(adapter, &m.table, m.params);
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
            m.cfg.num_layers, dtype,
            o.objective == OBJ_EDM                 ? "EDMEulerScheduler"
            : o.scheduler == DIFFUSERS_SCHED_UNIPC ? "UniPCMultistepScheduler"
                                                   : "FlowMatchEulerDiscreteScheduler");
    cli_model_info_free(&info, m.cfg.num_classes);
    dit_free(&m);
    return 0;
}
