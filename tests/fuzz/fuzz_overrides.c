/* libFuzzer target: Hydra command-line overrides (cfg_override, cfg_from_args) and Automodel's --a.b.c value
 * overrides (automodel_override). Each input line is one argument. The lines are applied one by one to the default
 * recipe (errors are expected outcomes), then given together as a command line to cfg_from_args (which also
 * parses --recipe, --config-file, --training-mode), and as key/value pairs to an Automodel recipe tree. */
#include "dfm/automodel.h"
#include "dfm/config.h"
#include "fuzz_common.h"

#define MAX_ARGS 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    (void)fuzz_dir();
    static FILE *null;
    if (!null) null = fopen("/dev/null", "w");
    char *text = fuzz_text(data, size);
    char *argv[MAX_ARGS + 1];
    int argc = 0;
    argv[argc++] = "pretrain";
    for (char *s = text, *nl; argc < MAX_ARGS && s; s = nl) {
        nl = strchr(s, '\n');
        if (nl) *nl++ = 0;
        argv[argc++] = s;
    }
    argv[argc] = NULL;
    char err[2048];
    cfg *c = cfg_recipe("dit_fashion_mnist", err, sizeof err);
    for (int i = 1; i < argc; i++) {
        err[0] = 0;
        if (cfg_override(c, argv[i], err, sizeof err) != 0) fuzz_check_err(err);
    }
    free(cfg_to_yaml(c));
    cfg_free(c);
    /* --config-file would read a file named by the input: keep it to files that do not exist */
    int has_file = 0;
    for (int i = 1; i < argc; i++) has_file |= strstr(argv[i], "config") != NULL;
    if (!has_file) {
        cfg_cli opts = {0};
        cfg *out = NULL;
        err[0] = 0;
        if (cfg_from_args(argc, argv, &out, &opts, err, sizeof err) == 0) {
            if (!out) abort();
            cfg_free(out);
        } else if (out) {
            abort();
        }
    }
    cfg *a = automodel_defaults();
    for (int i = 1; i + 1 < argc; i += 2) {
        err[0] = 0;
        const char *key = argv[i][0] == '-' && argv[i][1] == '-' ? argv[i] + 2 : argv[i];
        const char *val = argv[i + 1][0] ? argv[i + 1] : NULL; /* an empty line: a bare flag */
        if (automodel_override(a, key, val, null, err, sizeof err) != 0) fuzz_check_err(err);
    }
    cfg_free(a);
    free(text);
    return 0;
}
