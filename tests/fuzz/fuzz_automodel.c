/* libFuzzer target: Automodel recipes (src/core/automodel_config.c): the input is a recipe file given with -c; it
 * is renamed (old spellings), ${VAR} / ${VAR,default} expanded from the environment (two variables are set so
 * that both the set and unset paths run) and merged over the defaults, then checked for a 1- and a 2-process run
 * and turned into the core's objective and AdamW configs. */
#include "dfm/automodel.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static FILE *null;
    if (!null) {
        null = fopen("/dev/null", "w");
        setenv("DFM_FUZZ_LR", "1e-4", 1);
        setenv("DFM_FUZZ_EMPTY", "", 1);
    }
    const char *path = fuzz_write("recipe.yaml", data, size);
    char err[2048] = "";
    cfg *c = automodel_defaults();
    if (automodel_merge_file(c, path, null, err, sizeof err) == 0) {
        for (int world = 1; world <= 2; world++) {
            automodel_plan plan;
            objective_config o;
            adamw_config a;
            err[0] = 0;
            if (automodel_check(c, world, &plan, err, sizeof err) != 0) {
                fuzz_check_err(err);
                continue;
            }
            if (automodel_objective(c, &o, err, sizeof err) != 0) fuzz_check_err(err);
            if (automodel_adamw(c, &a, err, sizeof err) != 0) fuzz_check_err(err);
            (void)automodel_save_consolidated(c);
            (void)automodel_peft_enabled(c);
        }
        free(cfg_to_yaml(c));
    } else {
        fuzz_check_err(err);
    }
    cfg_free(c);
    return 0;
}
