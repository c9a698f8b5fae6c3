/* diffusers pipeline folders for dfm's DiT and Wan 2.1 transformers (REFERENCE.md §3):
 *   model_index.json                                 DiTPipeline or WanPipeline
 *   transformer/config.json                          DiTTransformer2DModel's or WanTransformer3DModel's config
 *   transformer/diffusion_pytorch_model.safetensors  (or shards + diffusion_pytorch_model.safetensors.index.json)
 *   scheduler/scheduler_config.json                  FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
 *                                                    (flow mode) or EDMEulerScheduler
 * dfm keeps one shared timestep/class embedder under block 0's names; diffusers stores a copy per block, so
 * export writes the copies and import reads block 0's (docs/ARCHITECTURE.md). Wan's tensors map one to one. */
#ifndef DFM_DIFFUSERS_H
#define DFM_DIFFUSERS_H

#include "dfm/diffusion.h"
#include "dfm/dit.h"
#include "dfm/safetensors.h"
#include "dfm/wan.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The scheduler of a flow-matching export. */
typedef enum {
    DIFFUSERS_SCHED_DEFAULT,    /* the model's usual one: DiT FlowMatchEulerDiscreteScheduler, Wan UniPC */
    DIFFUSERS_SCHED_FLOW_EULER, /* FlowMatchEulerDiscreteScheduler (shift) */
    DIFFUSERS_SCHED_UNIPC,      /* UniPCMultistepScheduler, flow_prediction with flow sigmas (flow_shift) */
} diffusers_scheduler;

typedef struct {
    st_dtype dtype;                         /* ST_F32, ST_BF16 or ST_F16 (round to nearest even) */
    objective_kind objective;               /* picks the scheduler */
    float flow_shift;                       /* the flow scheduler's shift (the sampling shift) */
    float sigma_min, sigma_max, sigma_data; /* EDMEulerScheduler (Karras schedule, rho 7) */
    diffusers_scheduler scheduler;          /* flow matching only */
    /* 0: one weights file. Else shards of at most this many bytes of tensor data each (a bigger tensor gets a
     * shard of its own) with diffusers' index, when the weights do not fit in one: 5e9 gives the layout of the
     * hub's Wan2.1-T2V-*-Diffusers transformers. */
    uint64_t max_shard_bytes;
} diffusers_export_opts;

/* Defaults: fp32, flow matching with shift 1 and the model's usual scheduler, EDM sigmas 0.002..80 and
 * sigma_data 0.5, one weights file. */
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

/* Write the WanPipeline folder `dir` for Wan model m with weights `weights` (laid out by m->table; only m->cfg
 * and m->table are read, so a weights-only model from wan_create_weights_only will do): model_index.json
 * naming WanPipeline with WanTransformer3DModel and the scheduler (the text encoder, tokenizer and VAE are not
 * dfm's and are listed as [null, null]: pass them to WanPipeline.from_pretrained), transformer/config.json in
 * WanTransformer3DModel's keys, the weights (one file or shards, opts->max_shard_bytes) and
 * scheduler/scheduler_config.json. Atomic and replacing like dit_export_diffusers. 0, or -1 + err. */
int wan_export_diffusers(const wan_model *m, const float *weights, const char *dir, const diffusers_export_opts *o,
                         char *err, size_t errlen);

/* Build m from a diffusers WanTransformer3DModel: `dir` is the pipeline folder or its transformer/ folder;
 * weights from one safetensors file or shards listed by the index, any float dtype (F32, F16, BF16, F64, F8)
 * converted to fp32. Every tensor of the config must be there with its shape, and every stored tensor must be
 * one of them: anything else is an error naming the file, the tensor and the shapes. max: the largest input
 * the model will run (as wan_create), or NULL for a weights-only model (wan_create_weights_only: conversion,
 * no forward). Returns 0, or -1 with a message. */
int wan_import_diffusers(wan_model *m, const char *dir, const wan_shape *max, char *err, size_t errlen);

/* The `_class_name` of a diffusers folder's transformer config (pipeline folder or transformer/ folder) into
 * cls, e.g. "DiTTransformer2DModel" or "WanTransformer3DModel" ("" when the key is absent). 0, or -1 + err. */
int diffusers_transformer_class(const char *dir, char *cls, size_t clslen, char *err, size_t errlen);

/* fp32 -> bf16 / fp16 bits, round to nearest even (NaN stays NaN, fp16 overflow becomes inf). */
uint16_t f32_to_bf16(float f);
uint16_t f32_to_f16(float f);

#ifdef __cplusplus
}
#endif
#endif
