/* Checkpoint tensors, consolidated or sharded, read back into any layout.
 *
 * A checkpoint folder (iter_NNNNNNN/) holds a model's flat buffers (the parameters "model", their EMA "ema", and
 * the AdamW moments "exp_avg", "exp_avg_sq") in one of two forms:
 *  - consolidated: model.safetensors, ema.safetensors and optimizer.safetensors ("exp_avg.<name>",
 *    "exp_avg_sq.<name>"), one tensor per parameter under its diffusers name (one process, or DDP's rank 0);
 *  - sharded: shard_RRRRR_of_WWWWW.safetensors, one per data-parallel rank, each holding that rank's contiguous
 *    range of the flat buffers as 1-D pieces "<kind>.<name>", with metadata "dfm_shard" (JSON) giving the
 *    writer's range and, for each piece, its tensor's global shape and the piece's element offset in it.
 * Either form reads into any range of the flat layout, so a run saved with one data-parallel size and
 * sharding resumes under any other, including one process.
 *
 * The Automodel layout (checkpoint.layout: automodel, `dfm finetune`) keeps the same files in an
 * epoch_E_step_S/ folder's subfolders: model/ (model and ema: model.safetensors + ema.safetensors, or the
 * shards with only those kinds) and optim/ (optimizer.safetensors, or shards with exp_avg and exp_avg_sq).
 * Every function below takes either kind of folder. */
#ifndef DFM_CHECKPOINT_H
#define DFM_CHECKPOINT_H

#include "dfm/model.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Write shard `rank` of `world` into dir: bufs[k] hold kind kinds[k] for the table range [begin, end) (bufs[k][0]
 * is element `begin`). meta: NULL-terminated key/value pairs copied into the file. Atomic (temporary + rename). */
void ckpt_write_shard(const char *dir, int rank, int world, const param_table *t, size_t begin, size_t end, int nkinds,
                      const char *const *kinds, const float *const *bufs, const char *const *meta);
/* The same for a tensor-parallel rank: its table holds slices (param_entry.split_*), written as pieces of the
 * whole tensors (metadata: the global shape and the slice, "split": [axis, start, length]); whole (replicated)
 * tensors are written only when with_whole is set (TP rank 0), so every element is stored once. */
void ckpt_write_shard_tp(const char *dir, int rank, int world, const param_table *t, size_t begin, size_t end,
                         int nkinds, const char *const *kinds, const float *const *bufs, const char *const *meta,
                         int with_whole);
/* 1 when dir is an Automodel step folder: no weights at its top, a model/ subfolder. */
int ckpt_is_automodel_step(const char *dir);
/* The folder holding kind's tensors ("model", "ema", "exp_avg", "exp_avg_sq"): dir itself, or for an Automodel
 * step folder its model/ or optim/. */
void ckpt_kind_dir(const char *dir, const char *kind, char *out, size_t outlen);
/* 1 if dir holds shard files, 0 if it holds consolidated files, -1 (err) if neither. */
int ckpt_is_sharded(const char *dir, char *err, size_t errlen);
/* Fill out[0 .. end-begin) with kind's elements [begin, end) of the flat layout of t, from either form. Every
 * tensor's shape is checked against the table; a missing shard, piece or tensor is an error naming it. */
int ckpt_read_range(const char *dir, const char *kind, const param_table *t, size_t begin, size_t end, float *out,
                    char *err, size_t errlen);
/* train_state.json of a checkpoint: {"iteration", "consumed_samples", "seed" (integers), "data_loader" (the
 * loader's state, any JSON)}. Fills the numbers and the loader state as compact JSON text (malloc'ed); 0, or -1
 * with a message naming `name` and what was expected. */
int ckpt_train_state_parse(const char *text, const char *name, long *iteration, int64_t *consumed, int64_t *seed,
                           char **loader_state, char *err, size_t errlen);
/* A metadata value of the checkpoint's weights (model.safetensors, or shard 0), malloc'ed, or NULL. */
char *ckpt_meta(const char *dir, const char *key);

#ifdef __cplusplus
}
#endif
#endif
