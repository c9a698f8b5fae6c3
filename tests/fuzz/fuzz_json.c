/* libFuzzer target: the JSON that dfm reads back from its own checkpoints and samples' metadata: a DiT or Wan
 * model config ("dfm_config", transformer/config.json), the stored objective ("dfm_objective") and the diffusers
 * transformer class. The input is given as text to each parser; a config that parses must print back to JSON
 * that parses to the same config. */
#include "dfm/diffusers.h"
#include "dfm/dit.h"
#include "dfm/sample.h"
#include "dfm/wan.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = fuzz_text(data, size);
    char err[2048] = "";
    dit_config dc;
    if (dit_config_from_json(&dc, text, err, sizeof err) == 0) {
        char *a = dit_config_to_json(&dc), *b;
        if (dit_config_from_json(&dc, a, err, sizeof err) != 0 || strcmp(a, b = dit_config_to_json(&dc)) != 0) abort();
        free(a), free(b);
    } else {
        fuzz_check_err(err);
    }
    err[0] = 0;
    wan_config wc;
    if (wan_config_from_json(&wc, text, err, sizeof err) == 0) {
        char *a = wan_config_to_json(&wc), *b;
        if (wan_config_from_json(&wc, a, err, sizeof err) != 0 || strcmp(a, b = wan_config_to_json(&wc)) != 0) abort();
        free(a), free(b);
    } else {
        fuzz_check_err(err);
    }
    err[0] = 0;
    stored_objective so;
    if (stored_objective_parse(text, &so, err, sizeof err) < 0) fuzz_check_err(err);
    /* transformer/config.json of a diffusers folder */
    fuzz_write("dfu/transformer/config.json", data, size);
    char cls[256];
    err[0] = 0;
    if (diffusers_transformer_class(fuzz_path("dfu"), cls, sizeof cls, err, sizeof err) != 0) fuzz_check_err(err);
    free(text);
    return 0;
}
