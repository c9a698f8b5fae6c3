/* dfm pretrain [--recipe NAME] [--config-file X.yaml] [--training-mode pretrain|finetune] [--print-config]
 *              [Hydra overrides...] */
#include "dfm/common.h"
#include "dfm/config.h"
#include "dfm/pretrain.h"

#include <stdio.h>
#include <stdlib.h>

int dfm_pretrain_main(int argc, char **argv) {
    cfg_cli opts = {0};
    opts.default_recipe = "dit_fashion_mnist";
    cfg *c = NULL;
    char err[2048];
    if (cfg_from_args(argc, argv, &c, &opts, err, sizeof err) != 0) {
        fprintf(stderr, "dfm pretrain: error: %s\n", err);
        return 1;
    }
    if (opts.help) {
        printf("usage: dfm pretrain [--recipe NAME] [--config-file FILE.yaml] [--training-mode pretrain|finetune]\n"
               "                    [--print-config] [key=value ...]\n\n"
               "Trains a DiT: the base recipe, then the YAML file, then the overrides (highest precedence).\n\n");
        cfg_cli_usage(stdout);
        cfg_free(c);
        return 0;
    }
    if (opts.print_config) {
        char *y = cfg_to_yaml(c);
        fputs(y, stdout);
        free(y);
        cfg_free(c);
        return 0;
    }
    int rc = dfm_pretrain(c);
    cfg_free(c);
    return rc;
}
