/* Internal: what the DiT and Wan diffusers exports and imports share (pipeline folders, JSON files, the
 * scheduler config, single-file or sharded weights with diffusers' index). Not part of the public API. */
#ifndef DFM_MODELS_DIFFUSERS_IO_H
#define DFM_MODELS_DIFFUSERS_IO_H

#include "dfm/diffusers.h"
#include "dfm/model.h"
#include "dfm/safetensors.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define DFU_WEIGHTS_FILE "diffusion_pytorch_model.safetensors"
#define DFU_INDEX_FILE "diffusion_pytorch_model.safetensors.index.json"
/* Folder paths are limited to DFU_DIR_MAX bytes so that every file path below fits DFU_PATH_MAX bytes. */
#define DFU_DIR_MAX 3840
#define DFU_PATH_MAX (DFU_DIR_MAX + 512)

/* Write j (consumed) as indented JSON, atomically. 0, or -1 + err. */
int dfu_write_json(const char *path, json_t *j, char *err, size_t errlen);
/* A JSON object from a file, or NULL + err. */
json_t *dfu_load_json(const char *path, char *err, size_t errlen);
/* A float as the shortest decimal that reads back as the same float (1e-05, not 9.99999975e-06). */
json_t *dfu_json_float(float f);

/* The scheduler a pipeline gets: its class name and scheduler_config.json. `wan` picks the default flow
 * scheduler (Wan's hub pipelines: UniPCMultistepScheduler in flow mode; DiT: FlowMatchEulerDiscreteScheduler). */
const char *dfu_scheduler_class(const diffusers_export_opts *o, int wan);
json_t *dfu_scheduler_config(const diffusers_export_opts *o, int wan, const char *version);

/* Check that `dir` may receive an export (absent, an empty folder, or an earlier export) and create the
 * temporary sibling folder "<dir>.tmp.<pid>" (written into tmp, DFU_DIR_MAX bytes) with transformer/ and
 * scheduler/ in it. 0, or -1 + err. */
int dfu_begin_export(const char *dir, char *tmp, char *err, size_t errlen);
/* Move the finished temporary folder to dir, replacing an earlier export atomically. On failure the temporary
 * folder is removed and -1 returned with err. */
int dfu_finish_export(const char *tmp, const char *dir, char *err, size_t errlen);

/* One tensor to write: fp32 data converted to the export dtype. */
typedef struct {
    const char *name;
    int ndim;
    const int64_t *shape;
    size_t numel;
    const float *data;
} dfu_tensor;
/* Write tensors into folder tdir as diffusion_pytorch_model.safetensors, or, when max_shard_bytes > 0 and they
 * do not fit in one file of that size, as diffusion_pytorch_model-0000K-of-0000N.safetensors (tensors in the
 * given order, each file at most max_shard_bytes of tensor data; a bigger tensor gets a file of its own) plus
 * diffusion_pytorch_model.safetensors.index.json, as diffusers' save_pretrained does. 0, or -1 + err. */
int dfu_write_weights(const char *tdir, const dfu_tensor *t, int n, st_dtype dtype, uint64_t max_shard_bytes, char *err,
                      size_t errlen);

/* The transformer folder of `dir` (dir/transformer when it holds config.json, else dir itself when it does)
 * into tdir (DFU_DIR_MAX bytes). 0, or -1 + err naming dir. */
int dfu_transformer_dir(const char *dir, char *tdir, char *err, size_t errlen);

/* The weights of a transformer folder: one safetensors file, or the shards its index lists. */
typedef struct {
    int n;
    st_file **files;
} dfu_shards;
int dfu_open_shards(dfu_shards *s, const char *tdir, char *err, size_t errlen);
const st_tensor *dfu_shards_find(const dfu_shards *s, const char *name, const st_file **in);
void dfu_shards_close(dfu_shards *s);
/* Read tensor t of file f into out (fp32) after checking its shape against e and that its dtype is a float.
 * 0, or -1 + err naming the file, the tensor and both shapes. */
int dfu_read_checked(const st_file *f, const st_tensor *t, const param_entry *e, float *out, char *err, size_t errlen);
/* "[a, b, c]" */
void dfu_shape_str(char *out, size_t n, int ndim, const int64_t *shape);

#endif
