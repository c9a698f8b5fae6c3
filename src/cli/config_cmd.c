/* `dfm config`: resolve a configuration (recipe < --training-mode < --config-file < overrides) and print it
 * as YAML, the same text `--print-config` gives and run_config.yaml holds. */
#include "dfm/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void config_usage(FILE *f) {
    fprintf(f, "usage: dfm config [--recipe NAME] [--config-file FILE.yaml] [--training-mode pretrain|finetune]\n"
               "                  [--sources] [overrides...]\n"
               "Prints the resolved configuration as YAML (what --print-config prints and run_config.yaml holds);\n"
               "--sources adds where each value came from as a comment.\n\n");
    cfg_cli_usage(f);
}

int dfm_config_main(int argc, char **argv) {
    /* --sources is this command's own flag; everything else is cfg_from_args's */
    char **args = calloc((size_t)argc + 1, sizeof *args);
    if (!args) return 1;
    int n = 0, sources = 0;
    for (int i = 0; i < argc; i++) {
        if (i > 0 && !strcmp(argv[i], "--sources"))
            sources = 1;
        else
            args[n++] = argv[i];
    }
    cfg *c = NULL;
    cfg_cli opts = {.default_recipe = "dit_fashion_mnist"};
    char err[2048];
    int rc = cfg_from_args(n, args, &c, &opts, err, sizeof err);
    free(args);
    if (rc != 0) {
        fprintf(stderr, "dfm config: error: %s\n", err);
        return 1;
    }
    if (opts.help) {
        config_usage(stdout);
        printf("\n");
        cfg_help(c, stdout);
        cfg_free(c);
        return 0;
    }
    char *text = sources ? cfg_to_yaml_annotated(c) : cfg_to_yaml(c);
    fputs(text, stdout);
    free(text);
    cfg_free(c);
    return 0;
}
