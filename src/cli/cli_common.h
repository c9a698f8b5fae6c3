/* Helpers shared by dfm's subcommands: strict number parsing and finding the weights file of a checkpoint. */
#ifndef DFM_CLI_COMMON_H
#define DFM_CLI_COMMON_H

#include <stddef.h>
#include <stdint.h>

/* Parse the whole string as a number in [lo, hi]; 0 (and *out unchanged) if it is not one. */
int cli_parse_int(const char *s, long lo, long hi, long *out);
int cli_parse_u64(const char *s, uint64_t *out);
int cli_parse_float(const char *s, double lo, double hi, double *out);

/* Option scanning: "--name value" or "--name=value". Returns 1 and sets *val (advancing *i) when argv[*i] is
 * option `name`; dies with a message when its value is missing. */
int cli_opt(int argc, char **argv, int *i, const char *name, const char **val);

/* The weights file a --checkpoint argument names:
 *   a file                                   -> itself
 *   a folder with latest_checkpointed_iteration.txt -> its iter_NNNNNNN/ folder, then as below
 *   a folder with Automodel's LATEST         -> the epoch_E_step_S/ folder it points to, then as below
 *   an epoch_E_step_S/ folder                -> its model/ folder, then as below
 *   an iter_NNNNNNN/ folder                  -> <which>.safetensors in it ("ema" or "model"); when `which`
 *                                               was not asked for explicitly and ema.safetensors is absent,
 *                                               model.safetensors with a warning.
 * Returns 0, or -1 with a message. */
int cli_resolve_weights(const char *checkpoint, const char *which, int which_explicit, char *out, size_t outlen,
                        char *err, size_t errlen);

/* A dfm DiT weights file with what generation and export need from its metadata. */
#include "dfm/dit.h"
#include "dfm/sample.h"
typedef struct {
    char path[4608];
    int has_objective;    /* metadata "dfm_objective" was present */
    stored_objective obj; /* its values (defaults when absent) */
    char **class_names; /* num_classes names: "dfm_class_names", else Fashion-MNIST's for 10 classes, else "class N" */
} cli_model_info;

/* Resolve the checkpoint (as cli_resolve_weights), check it is a dfm DiT weights file and build m from it
 * for micro-batches up to max_batch. Returns 0, or -1 with a message. */
int cli_open_dit(const char *checkpoint, const char *which, int which_explicit, int max_batch, dit_model *m,
                 cli_model_info *info, char *err, size_t errlen);
void cli_model_info_free(cli_model_info *info, int num_classes);

/* Fold a PEFT LoRA adapter folder (adapter_model.safetensors + adapter_config.json, lora.h) into a model's weights
 * (NULL adapter: nothing); dies with a message naming the file and tensor on a mismatch. */
#include "dfm/model.h"
void cli_apply_adapter(const char *adapter, const param_table *t, float *params);

/* Metadata `key` of the weights a checkpoint argument names (a weights file, an iter folder, a checkpoint root;
 * consolidated or sharded), malloc'ed, or NULL. */
char *cli_checkpoint_meta(const char *checkpoint, const char *which, const char *key);

/* 1 when a --checkpoint argument (a weights file, an iter_NNNNNNN/ folder or a checkpoint root, consolidated
 * or sharded) holds a dfm Wan model (metadata "dfm_wan_config"), else 0 (including when it cannot be read:
 * opening it as a DiT then reports why). Prints nothing. */
int cli_checkpoint_is_wan(const char *checkpoint, const char *which, int which_explicit);

/* A dfm Wan weights file or checkpoint (consolidated or sharded), resolved as cli_open_dit does. */
#include "dfm/wan.h"
typedef struct {
    char path[4608];
    int has_objective;    /* metadata "dfm_objective" was present */
    stored_objective obj; /* its values (defaults when absent) */
} cli_wan_info;
/* Build m from it: for inputs up to *max, or with max NULL weights only (wan_create_weights_only: export and
 * conversion, no forward). Returns 0, or -1 with a message. */
int cli_open_wan(const char *checkpoint, const char *which, int which_explicit, const wan_shape *max, wan_model *m,
                 cli_wan_info *info, char *err, size_t errlen);

#endif
