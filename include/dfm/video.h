/* Training data for video models (Wan 2.1): samples are latents [C, T, H, W] with text embeddings [L, D] and a
 * valid text length; everything float. Sources: the built-in demo clips (Fashion-MNIST garments moving across short
 * clips, captions embedded by a stand-in text encoder), a folder of one .safetensors file per sample, and Energon
 * webdataset folders (.npy, .pth or .pickle parts, DFM's Megatron layout). The batch loader walks samples in exactly
 * the order of data.h's loader (per-epoch permutations from (seed, epoch), state {epoch, pos}, data-parallel
 * slices), or, for folders of several latent shapes (resolution buckets) and dfm finetune, in Automodel's bucketed
 * order (one shape per batch; video_loader_new_buckets), see docs/ARCHITECTURE.md "Video data". */
#ifndef DFM_VIDEO_H
#define DFM_VIDEO_H

#include "dfm/energon.h" /* energon_sample */

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int n;                  /* samples */
    int c, t, h, w;         /* latent shape of every sample; with several shapes, the largest (most values) */
    int text_len, text_dim; /* max text tokens (padding length) and embedding width */
    float *latents;         /* [n, c, t, h, w]; with several shapes, sample i at offsets[i] */
    float *text;            /* [n, text_len, text_dim], zero past each sample's length */
    int *text_lens;         /* [n], 1..text_len */
    char **captions;        /* [n] (may be NULL entries when unknown) */
    /* Several latent shapes (resolution buckets; folders and .meta caches): NULL when every sample is
     * [c, t, h, w], which is the form every other source makes and the single-shape path reads. */
    int *shapes;     /* [n][4]: c, t, h, w of each sample (c is the same for all) */
    size_t *offsets; /* [n]: where each sample's latents start in `latents` (floats) */
} video_dataset;

/* Sample i's latents and shape (either form). */
const float *video_dataset_sample(const video_dataset *vd, int i, int shape[4]);
/* Distinct latent shapes among the samples (1 without `shapes`). */
int video_dataset_nshapes(const video_dataset *vd);

/* Directions of the demo clips; image rows grow downwards, so "up" is towards row 0. */
enum { VIDEO_DIR_LEFT, VIDEO_DIR_RIGHT, VIDEO_DIR_UP, VIDEO_DIR_DOWN };
extern const char *const video_direction_names[4]; /* "left", "right", "up", "down" */

/* The built-in demo set: Fashion-MNIST garments moving across short clips, captioned "a sneaker moving left",
 * captions embedded by the stand-in text encoder. One channel, pixels scaled to [-1, 1] (background -1).
 * n_max <= 0: one clip per Fashion-MNIST training image (60000); else the first n_max images. Deterministic from
 * seed (direction and start position of clip i are Philox draws keyed by (seed, i)). frames >= 2; the garment is
 * min(28, size / 2) pixels square (area-averaged from 28x28) and moves min((size - side) / (frames - 1), side / 4)
 * pixels a frame (at least 1), staying inside the canvas. The text encoder's seed is `seed` too. */
int video_dataset_clips(video_dataset *vd, const char *fmnist_dir, int n_max, int frames, int size, int text_len,
                        int text_dim, uint64_t seed, char *err, size_t errlen);
/* Clip `index` of the demo set from its 28x28 garment image: out [frames, size, size] in [-1, 1]. Returns the
 * direction (VIDEO_DIR_*), or -1 with err when frames and size leave the garment no room to move. */
int video_clip_render(const uint8_t *image, int index, int frames, int size, uint64_t seed, float *out, char *err,
                      size_t errlen);
/* The demo caption of a Fashion-MNIST class (0-9) and direction: "a sneaker moving left", "a t-shirt/top moving
 * up", "an ankle boot moving down". Returns snprintf's count. */
int video_clip_caption(int label, int direction, char *buf, size_t n);
/* A folder of pre-encoded samples in dfm's own form: one <key>.safetensors per sample with tensors
 * "video_latents" [C,T,H,W] (or [1,C,T,H,W]) and "text_embeddings" [L,D] (or [1,L,D]); optional metadata
 * "caption" and "text_len" (valid tokens; without it, the length is the index of the last non-zero row + 1).
 * Any float dtype. All samples must share C and D; T, H, W may differ (resolution buckets: `shapes` and `offsets`
 * are set and c, t, h, w name the largest shape). L is padded to the largest (or text_len if > 0). */
int video_dataset_folder(video_dataset *vd, const char *dir, int text_len, char *err, size_t errlen);
void video_dataset_free(video_dataset *vd);
/* DFM's Automodel caches (docs/ARCHITECTURE.md "Video data"): a flat folder of *.meta files, or a bucketed cache
 * (metadata.json listing metadata_shard_*.json, whose entries' "cache_file" name WxH/<hash>.meta files). Each file
 * is pickle.dump or torch.save of a dict with "video_latents" [1,C,T,H,W] or [C,T,H,W] and "text_embeddings"
 * [1,L,D] or [L,D] (any float dtype; read by the restricted unpickler, nothing in a file runs). Valid text length:
 * an integer "text_len" in the dict, else a "text_mask" array (last non-zero + 1), else the last non-zero row + 1.
 * Caption: a string "caption" or "prompt". Samples in sorted path order; all must share C and D (an error naming
 * two files otherwise); T, H, W may differ (resolution buckets, as video_dataset_folder). L is padded to the
 * largest stored L (or text_len if > 0). */
int video_dataset_meta(video_dataset *vd, const char *dir, int text_len, char *err, size_t errlen);

/* One sample of any on-disk video form, decoded to float32. */
typedef struct {
    int64_t c, t, h, w; /* latents [c, t, h, w] (a leading 1 dropped) */
    int64_t rows, dim;  /* text [rows, dim] as stored (padding rows included) */
    int text_len;       /* valid rows, 1..rows */
    float *latents, *text;
    char *caption; /* NULL when the sample has none */
} video_sample;
void video_sample_free(video_sample *s);
/* The .meta files of a folder or bucketed cache, sorted (malloc'ed paths; free each and the array). A folder with
 * neither metadata.json nor *.meta files is searched one level down (a cache without its index). */
int video_meta_list(const char *dir, char ***paths, int *n, char *err, size_t errlen);
/* Decode one .meta file (pickle or torch.save). Errors name the file and key. */
int video_meta_read(const char *path, video_sample *s, char *err, size_t errlen);
/* Decode one of dfm's <key>.safetensors samples (video_dataset_folder's form). */
int video_safetensors_read(const char *path, video_sample *s, char *err, size_t errlen);
/* Decode an Energon sample: the first float tensor part (.npy/.pth/.pt/.pickle/.pkl) of shape [C,T,H,W] or
 * [1,C,T,H,W] is the latents, the first of [L,D] or [1,L,D] the text; json "text_len" and "caption" (or a txt
 * part) when present. */
int video_energon_sample_read(const energon_sample *es, video_sample *s, char *err, size_t errlen);

/* Stand-in text encoder (docs/ARCHITECTURE.md "Video data"): the caption is lower-cased (ASCII) and split into
 * words at white space and '/'; each word is a fixed row of standard normals drawn from Philox keyed by (seed, a
 * 64-bit FNV-1a hash of the word), plus the sin-cos code of its position, and the sum is scaled to unit RMS.
 * out [max_len, dim] is zero past the words; *len = number of words, at most max_len (later words are dropped, as
 * a tokenizer truncates). A caption without words encodes as one row, the empty word at position 0 (so *len >= 1
 * and "" is a real, learnable null condition). Same words -> same embedding in every process. 0, or -1 with err
 * for dim or max_len < 1. */
int text_encoder_encode(const char *caption, int dim, int max_len, uint64_t seed, float *out, int *len, char *err,
                        size_t errlen);

typedef struct video_loader video_loader;
/* Batches of `batch` samples over vd's samples `indices`, shuffled per epoch from seed exactly like data_loader.
 * num_workers > 0 copies the next batch on a background thread. vd must outlive the loader. */
video_loader *video_loader_new(const video_dataset *vd, const int *indices, int n, uint64_t seed, int batch,
                               int num_workers);
/* An Energon/webdataset folder (or metadataset .yaml). Tensor parts: `.npy` (any float dtype), `.pth`/`.pt`
 * (torch.save of one tensor, DFM's Megatron layout) and `.pickle`/`.pkl` (pickle.dumps of one tensor or numpy
 * array); the latents are the first tensor part (in the sample's order) of shape [C,T,H,W] or [1,C,T,H,W], the
 * text the first of shape [L,D] or [1,L,D]; an optional `json` part may carry "text_len" (valid rows) and
 * "caption". Without "text_len" the valid length is the last non-zero row + 1. Shapes must match c,t,h,w and
 * text_dim; a valid length above text_len is an error naming the sample and shard (rows past the valid length are
 * padding and are dropped). Samples with NaN/Inf or |x| > 1e6 are skipped with a warning, on every rank alike. */
video_loader *video_loader_new_energon(const char *path, const char *split, uint64_t seed, int batch, int num_workers,
                                       int c, int t, int h, int w, int text_len, int text_dim, char *err,
                                       size_t errlen);
/* Bucketed batches (Automodel's SequentialBucketSampler, include/dfm/bucket_sampler.h) over vd's samples
 * `indices`, for datasets of one or several latent shapes: every batch holds one shape; bucket and sample order
 * reshuffled per epoch from seed + epoch (shuffle 0: buckets in shape order, samples in dataset index order, i.e.
 * sorted paths, whatever the order of `indices`); each bucket
 * padded by cycling and dealt slot::world_slots; drop_last drops each slot's short last batch of a bucket.
 * A slot is one micro-batch of a global step (world_slots = global batch / local batch = data-parallel size x
 * gradient accumulation); this rank reads slots [slot_first, slot_first + slots). Dealing per micro-batch slot
 * rather than per rank keeps a step's micro-batches the same under any data-parallel size (bit-identical runs,
 * and a checkpoint resumes under another layout with the same global and local batch). Every slot of a step
 * gets the same bucket and length. NULL with err when an epoch has no batch. vd must outlive the loader. */
video_loader *video_loader_new_buckets(const video_dataset *vd, const int *indices, int n, uint64_t seed,
                                       int local_batch, int slot_first, int slots, int world_slots, int shuffle,
                                       int drop_last, char *err, size_t errlen);
int video_loader_is_bucketed(const video_loader *l);
/* Batches each slot gets per epoch (bucketed loaders; 0 otherwise). */
int video_loader_batches_per_epoch(const video_loader *l);
/* The next step of a bucketed loader: one batch per slot, all of one latent shape (into shape: c, t, h, w) and
 * *count samples each; latents [slots * count, c, t, h, w] slot after slot, text [slots * count, text_len,
 * text_dim], text_lens; ids (NULL or room for slots * local_batch) the dataset indices. Returns seconds spent. */
double video_loader_next_step(video_loader *l, float *latents, float *text, int *text_lens, int *count, int shape[4],
                              int *ids);
/* Keep only samples [first, first + count) of every batch (a data-parallel rank's share), like loader_set_slice:
 * the position still advances by the whole batch, so every rank walks the same order. */
void video_loader_set_slice(video_loader *l, int first, int count);
/* Next batch (count samples): latents [count,c,t,h,w], text [count,text_len,text_dim], text_lens [count].
 * Returns seconds spent waiting for data. */
double video_loader_next(video_loader *l, float *latents, float *text, int *text_lens);
/* State as JSON text (malloc'ed) and restore (before the next video_loader_next). Bucketed loaders save
 * {"kind": "video_buckets", "sampler": bucket_sampler's state}; restoring checks the slot count, local batch,
 * samples, seed, shuffle and drop_last match, and that the saved state is of the same kind of loader. */
char *video_loader_state_save(video_loader *l);
int video_loader_state_restore(video_loader *l, const char *json, char *err, size_t errlen);
/* Samples an Energon loader skipped for NaN/Inf or huge values (0 for in-memory loaders). */
int64_t video_loader_skipped(const video_loader *l);
void video_loader_free(video_loader *l);

#ifdef __cplusplus
}
#endif
#endif
