/* dfm command-line entry point: a table of sub-commands, each implemented in its own src/cli file. */
#include "dfm/common.h"
#include "dfm/kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int dfm_config_main(int argc, char **argv);   /* src/cli/config_cmd.c */
int dfm_data_main(int argc, char **argv);     /* src/cli/data_cmd.c */
int dfm_eval_main(int argc, char **argv);     /* src/cli/eval_cmd.c */
int dfm_export_main(int argc, char **argv);   /* src/cli/export_cmd.c */
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
    {"export", dfm_export_main, "write a DiT checkpoint as a diffusers folder (dfm export --help)"},
    {"generate", dfm_generate_main, "sample images from a DiT checkpoint (dfm generate --help)"},
    {"pretrain", dfm_pretrain_main, "train a DiT (Megatron-style recipe + YAML + overrides; dfm pretrain --help)"},
    {"version", version_main, "print version and BLAS information"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: dfm <command> [args]\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv) {
    /* OpenMP threads that spin at barriers steal the cores from each other and from any other process: with
     * another job on the machine, a 2-thread run slowed 2-6x (docs/PERFORMANCE.md), while sleeping waiters
     * cost nothing measurable alone. libgomp reads the policy when it loads, before main, so the binary
     * restarts itself once with it set. OMP_WAIT_POLICY=active in the environment keeps spinning. */
    if (!getenv("OMP_WAIT_POLICY")) {
        setenv("OMP_WAIT_POLICY", "passive", 1);
        execv("/proc/self/exe", argv);
        /* if the restart fails, carry on with the default policy */
    }
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
        if (!strcmp(cmd, commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "dfm: error: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
