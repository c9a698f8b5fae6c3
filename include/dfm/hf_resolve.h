/* Resolving Automodel's `model.pretrained_model_name_or_path` to a local folder, offline.
 *
 * Accepted, in this order:
 *  1. an existing folder:
 *     - a diffusers pipeline (model_index.json; the transformer is in <subfolder>/, "transformer" by default),
 *     - a transformer folder (config.json + diffusion_pytorch_model.safetensors, or its shards' .index.json),
 *     - a dfm checkpoint: an iter_NNNNNNN/ folder or the root holding latest_checkpointed_iteration.txt
 *       (resolved to its iter folder), or an Automodel-layout epoch_E_step_S/ folder or the root holding
 *       LATEST (resolved to the step folder it points to);
 *  2. a Hugging Face hub id "org/name" or "org/name@revision", looked up in the local hub cache: $HF_HUB_CACHE,
 *     else $HF_HOME/hub, else ~/.cache/huggingface/hub; layout models--org--name/refs/<revision> (a file holding
 *     the commit hash; revision "main" by default) and snapshots/<hash>/. A revision may also be a commit hash
 *     naming a snapshot folder directly. The snapshot is then classified as in 1.
 * Nothing is downloaded: an id missing from the cache is an error that says how to fetch it elsewhere. */
#ifndef DFM_HF_RESOLVE_H
#define DFM_HF_RESOLVE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    PRETRAINED_PIPELINE = 0,    /* diffusers pipeline folder */
    PRETRAINED_TRANSFORMER = 1, /* diffusers transformer folder */
    PRETRAINED_MEGATRON = 2,    /* dfm checkpoint: an iter folder, or an Automodel-layout step folder */
} pretrained_kind;

typedef struct {
    pretrained_kind kind;
    char path[4096];      /* the resolved folder: the pipeline root, the transformer folder or the iter folder */
    char model_dir[4096]; /* diffusers kinds: the folder holding config.json and the weights; else = path */
    int from_cache;       /* 1 when found through the hub cache */
    char cache_dir[4096]; /* the hub cache consulted (when name_or_path looked like a hub id) */
    char revision[256];   /* the revision asked for (from_cache) */
    char commit[128];     /* the snapshot's commit hash (from_cache) */
} pretrained_source;

/* The hub cache folder from the environment (see above) into out. */
void hf_hub_cache_dir(char *out, size_t outlen);

/* subfolder: the pipeline's transformer folder name (pipeline_spec.subfolder); NULL = "transformer".
 * 0, or -1 with a message in err. */
int pretrained_resolve(const char *name_or_path, const char *subfolder, pretrained_source *out, char *err,
                       size_t errlen);

const char *pretrained_kind_name(pretrained_kind k); /* "diffusers pipeline", ... */

#ifdef __cplusplus
}
#endif
#endif
