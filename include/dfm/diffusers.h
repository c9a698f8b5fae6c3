/* diffusers pipeline folders for dfm's DiT (REFERENCE.md §3):
 *   model_index.json
 *   transformer/config.json                          DiTTransformer2DModel's config
 *   transformer/diffusion_pytorch_model.safetensors  (or shards + diffusion_pytorch_model.safetensors.index.json)
 *   scheduler/scheduler_config.json                  FlowMatchEulerDiscreteScheduler or EDMEulerScheduler
 * dfm keeps one shared timestep/class embedder under block 0's names; diffusers stores a copy per block, so
 * export writes the copies and import reads block 0's (docs/ARCHITECTURE.md). */
#ifndef DFM_DIFFUSERS_H
#define DFM_DIFFUSERS_H

#include "dfm/diffusion.h"
#include "dfm/dit.h"
#include "dfm/safetensors.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    st_dtype dtype;                         /* ST_F32, ST_BF16 or ST_F16 (round to nearest even) */
    objective_kind objective;               /* picks the scheduler */
    float flow_shift;                       /* FlowMatchEulerDiscreteScheduler's shift (the sampling shift) */
    float sigma_min, sigma_max, sigma_data; /* EDMEulerScheduler (Karras schedule, rho 7) */
} diffusers_export_opts;

/* Defaults: fp32, flow matching with shift 1, EDM sigmas 0.002..80 and sigma_data 0.5. */
void diffusers_export_defaults(diffusers_export_opts *o);

/* Write the pipeline folder `dir` for model m with weights `weights` (laid out by m->table: m->params or an
 * EMA copy). Everything is written into a temporary sibling folder that is renamed into place at the end; an
 * existing export at `dir` (a folder holding model_index.json) is replaced, any other non-empty folder is
 * refused. Returns 0, or -1 with a message (a config diffusers cannot express, I/O failure). */
int dit_export_diffusers(const dit_model *m, const float *weights, const char *dir, const diffusers_export_opts *o,
                         char *err, size_t errlen);

/* Build m (for micro-batches up to max_batch) from a diffusers DiTTransformer2DModel: `dir` is the pipeline
 * folder or its transformer/ folder; weights from one safetensors file or shards listed in
 * diffusion_pytorch_model.safetensors.index.json. Block 0's embedder is loaded; a warning names any block
 * whose copy differs. Returns 0, or -1 with a message naming the file, key or tensor. */
int dit_import_diffusers(dit_model *m, const char *dir, int max_batch, char *err, size_t errlen);

/* fp32 -> bf16 / fp16 bits, round to nearest even (NaN stays NaN, fp16 overflow becomes inf). */
uint16_t f32_to_bf16(float f);
uint16_t f32_to_f16(float f);

#ifdef __cplusplus
}
#endif
#endif
