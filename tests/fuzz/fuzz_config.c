/* libFuzzer target: YAML config trees (src/core/yamltree.c, src/core/config.c). The input is a config file: it is
 * parsed into a yamltree (every node is walked and every scalar typed) and merged over the default recipe
 * (dit_fashion_mnist) and over wan_tiny, the way `--config-file` does. A tree that merged must print to YAML that
 * reads back to an equal tree (cfg_to_yaml's promise). */
#include "dfm/config.h"
#include "dfm/yamltree.h"
#include "fuzz_common.h"

static void walk(const yt_node *n, int depth) {
    if (depth > 10000) abort();
    double d;
    int64_t i;
    int b;
    if (n->kind == YT_SCALAR) {
        (void)yt_is_null(n), (void)yt_as_double(n, &d), (void)yt_as_int64(n, &i), (void)yt_as_bool(n, &b);
        return;
    }
    for (int k = 0; k < n->n; k++) {
        if (n->kind == YT_MAP && yt_get(n, n->keys[k]) == NULL) abort();
        walk(n->items[k], depth + 1);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    (void)fuzz_dir(); /* the die hook */
    char *text = fuzz_text(data, size);
    char err[2048] = "";
    yt_node *y = yt_parse_string(text, "fuzz.yaml", err, sizeof err);
    if (y) {
        walk(y, 0);
        yt_free(y);
    } else {
        fuzz_check_err(err);
    }
    static const char *recipes[] = {"dit_fashion_mnist", "wan_tiny"};
    for (int r = 0; r < 2; r++) {
        cfg *c = cfg_recipe(recipes[r], err, sizeof err);
        if (!c) abort();
        err[0] = 0;
        if (cfg_merge_string(c, text, "fuzz.yaml", err, sizeof err) == 0) {
            char *out = cfg_to_yaml(c);
            cfg *back = cfg_recipe(recipes[r], err, sizeof err);
            if (cfg_merge_string(back, out, "printed", err, sizeof err) != 0 || !cfg_equal(c, back)) {
                fprintf(stderr, "printed tree does not read back: %s\n%s\n", err, out);
                abort();
            }
            free(cfg_to_yaml_annotated(c));
            cfg_free(back);
            free(out);
        } else {
            fuzz_check_err(err);
        }
        cfg_free(c);
    }
    free(text);
    return 0;
}
