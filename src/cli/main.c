/* dfm command-line entry point. */
#include "dfm/common.h"
#include "dfm/kernels.h"

int dfm_generate_main(int argc, char **argv);
int dfm_export_main(int argc, char **argv);

#include <stdio.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f, "usage: dfm <command> [args]\n"
               "commands:\n"
               "  version      print version and BLAS information\n"
               "  generate     sample images from a DiT checkpoint (dfm generate --help)\n"
               "  export       write a DiT checkpoint as a diffusers folder (dfm export --help)\n");
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
    if (!strcmp(cmd, "generate")) return dfm_generate_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "export")) return dfm_export_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "dfm: error: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
