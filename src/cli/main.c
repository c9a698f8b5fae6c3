/* dfm command-line entry point: a table of sub-commands, each implemented in its own src/cli file. */
#include "dfm/common.h"
#include "dfm/dist.h"
#include "dfm/kernels.h"

#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int dfm_config_main(int argc, char **argv);   /* src/cli/config_cmd.c */
int dfm_data_main(int argc, char **argv);     /* src/cli/data_cmd.c */
int dfm_eval_main(int argc, char **argv);     /* src/cli/eval_cmd.c */
int dfm_export_main(int argc, char **argv);   /* src/cli/export_cmd.c */
int dfm_finetune_main(int argc, char **argv); /* src/cli/finetune_cmd.c */
int dfm_forward_main(int argc, char **argv);  /* src/cli/forward_cmd.c */
int dfm_generate_main(int argc, char **argv); /* src/cli/generate_cmd.c */
int dfm_pretrain_main(int argc, char **argv); /* src/cli/pretrain_cmd.c */

static int version_main(int argc, char **argv) {
    (void)argc, (void)argv;
    kernels_init();
    printf("dfm 0.1.0\n%s\n", kernels_blas_info());
    return 0;
}

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} commands[] = {
    {"config", dfm_config_main, "print a resolved configuration (dfm config --help)"},
    {"data", dfm_data_main, "prepare and inspect Energon webdataset folders (dfm data --help)"},
    {"eval", dfm_eval_main, "train the sample-quality classifier and score generated samples (dfm eval --help)"},
    {"export", dfm_export_main, "write a DiT or Wan checkpoint as a diffusers folder (dfm export --help)"},
    {"forward", dfm_forward_main, "one forward pass on tensors from a file, for parity checks (dfm forward --help)"},
    {"finetune", dfm_finetune_main,
     "fine-tune a pretrained model from an Automodel recipe (dfm finetune -c recipe.yaml)"},
    {"generate", dfm_generate_main, "sample images from a DiT checkpoint (dfm generate --help)"},
    {"pretrain", dfm_pretrain_main, "train a DiT (Megatron-style recipe + YAML + overrides; dfm pretrain --help)"},
    {"version", version_main, "print version and BLAS information"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: dfm <command> [args]\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].help);
}

/* Settings that the OpenMP and BLAS runtimes read when they load, before main: set what the user left unset,
 * then restart once so that they take effect. Returns 1 if anything was set. */
static int runtime_environment(void) {
    int changed = 0;
    /* OpenMP threads that spin at barriers steal the cores from each other and from any other process: with
     * another job on the machine, a 2-thread run slowed 2-6x (docs/PERFORMANCE.md), while sleeping waiters
     * cost nothing measurable alone. OMP_WAIT_POLICY=active in the environment keeps spinning. */
    if (!getenv("OMP_WAIT_POLICY")) setenv("OMP_WAIT_POLICY", "passive", 1), changed = 1;
    /* OpenBLAS 0.3.21 does not know Zen 4/5 and picks its AVX2 kernels there; its AVX-512 (SkylakeX) kernels are
     * as fast on Zen 4 and much faster on Zen 5 (REFERENCE.md §7). */
    if (!getenv("OPENBLAS_CORETYPE") && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        setenv("OPENBLAS_CORETYPE", "SkylakeX", 1), changed = 1;
    /* several ranks on one machine (mpirun): share the cores between them instead of oversubscribing */
    const char *local = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    if (local && atoi(local) > 1 && !getenv("OMP_NUM_THREADS")) {
        cpu_set_t set;
        int cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
        int per = cpus / atoi(local);
        char buf[16];
        snprintf(buf, sizeof buf, "%d", per > 1 ? per : 1);
        setenv("OMP_NUM_THREADS", buf, 1), changed = 1;
    }
    return changed;
}

int main(int argc, char **argv) {
    if (!getenv("DFM_ENV_SET")) {
        setenv("DFM_ENV_SET", "1", 1);
        if (runtime_environment()) execv("/proc/self/exe", argv);
        /* if the restart fails, carry on with the defaults */
    }
    /* a file-size limit (ulimit -f) should fail the write with EFBIG, which dfm reports naming the file, rather
     * than kill the process with SIGXFSZ */
    signal(SIGXFSZ, SIG_IGN);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--version")) return version_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(cmd, commands[i].name)) {
            dist_init(&argc, &argv);
            int rc = commands[i].fn(argc - 1, argv + 1);
            dist_finalize();
            return rc;
        }
    fprintf(stderr, "dfm: error: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
