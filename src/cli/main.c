/* dfm command-line entry point. */
#include "dfm/common.h"
#include "dfm/kernels.h"

#include <stdio.h>
#include <string.h>

int dfm_eval_main(int argc, char **argv); /* src/cli/eval_cmd.c */

static void usage(FILE *f) {
    fprintf(f, "usage: dfm <command> [args]\n"
               "commands:\n"
               "  version      print version and BLAS information\n"
               "  eval         sample quality: train the feature classifier, score generated samples\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        kernels_init();
        printf("dfm 0.1.0\n%s\n", kernels_blas_info());
        return 0;
    }
    if (!strcmp(cmd, "eval")) return dfm_eval_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "dfm: error: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
