/* Energon-compatible dataset reader: prepared webdataset folders (shards/NAME.tar, <shard>.tar.idx, .nv-meta/) and
 * MetadatasetV2 YAML files (blend, blend_epochized, subset, subflavors, nested metadatasets).
 *
 * Sample order is a pure function of (dataset, seed, dp_rank, dp_size): per source and epoch, the samples are cut
 * into slices whose order is shuffled from the seed (the same on every rank), the shuffled sequence is split into
 * dp_size contiguous ranges (so the DP ranks together see each sample of an epoch exactly once, and TP/CP/PP peers
 * that pass the same dp_rank see the same samples), and each rank's range goes through a shuffle buffer. Blends
 * draw the source of each sample from the seeded RNG. Worker threads only decode; they never change the order.
 * The state (epoch, position, RNG, buffer contents, samples planned but not yet delivered) saves to JSON and
 * restores into a fresh reader, which then continues the exact same stream. */
#ifndef DFM_ENERGON_H
#define DFM_ENERGON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { EN_BYTES, EN_TENSOR, EN_INT, EN_STRING } energon_part_kind;
typedef enum { EN_U8, EN_F32 } energon_dtype;

typedef struct {
    char *name; /* part name after the key: "png", "cls", "latent.npy" */
    energon_part_kind kind;
    energon_dtype dtype; /* tensors: PNG/JPEG -> u8 HWC (or f32 in [0,1] with image_float), .npy -> f32 (u8 stays u8) */
    int ndim;
    int64_t shape[8];
    void *data; /* tensor elements; bytes; NUL-terminated string (.json, .txt) */
    size_t nbytes;
    int64_t ival; /* .cls */
} energon_part;

typedef struct {
    char *key;           /* sample key within its shard */
    const char *shard;   /* shard name relative to its dataset (owned by the reader) */
    const char *dataset; /* dataset folder (owned by the reader) */
    int source;          /* index of the source (leaf dataset) in the blend */
    int64_t index;       /* sample index within the source (after subset) */
    int64_t epoch;       /* the source's epoch this sample was drawn from */
    int nsubflavors;     /* subflavors of the source, as strings (owned by the reader) */
    char *const *subflavor_keys;
    char *const *subflavor_values;
    int nparts;
    energon_part *parts;
} energon_sample;

typedef struct {
    const char *split; /* "train" (default), "val", "test" */
    int dp_rank, dp_size;
    uint64_t seed;
    int num_workers;    /* decode threads; 0 decodes in the caller's thread */
    int prefetch;       /* samples planned/decoded ahead (default 2 x workers + 1) */
    int shuffle_buffer; /* per source; 0 = no buffer */
    int slice_size;     /* samples per shuffled slice; 0 = keep the shard order */
    int image_float;    /* decode PNG/JPEG to float32 in [0, 1] instead of uint8 */
    double max_abs;     /* samples with |x| > max_abs (or NaN/Inf) in a float tensor are skipped (default 1e6) */
    int quiet;          /* no warning per skipped sample */
} energon_options;

typedef struct energon_reader energon_reader;

void energon_options_default(energon_options *o);
/* path: a prepared dataset folder or a MetadatasetV2 .yaml. NULL on error with a message naming file, key/line or
 * offset in err. */
energon_reader *energon_open(const char *path, const energon_options *o, char *err, size_t errlen);
/* Next sample (the stream is infinite: sources loop over epochs). 0, or -1 with energon_error(). The sample
 * belongs to the caller: free it with energon_sample_free(). */
int energon_next(energon_reader *r, energon_sample **s);
const char *energon_error(const energon_reader *r);
void energon_sample_free(energon_sample *s);
const energon_part *energon_sample_part(const energon_sample *s, const char *name);

/* Sources after flattening blends. weight is normalised (nested blends multiply); repetitions is set for
 * blend_epochized (weight is then 0); rank_samples is this rank's share of one epoch of the source. */
typedef struct {
    const char *path;
    const char *split_part;
    double weight, repetitions;
    int64_t samples, rank_samples;
} energon_source_info;
int energon_num_sources(const energon_reader *r);
energon_source_info energon_source(const energon_reader *r, int i);
int64_t energon_skipped(const energon_reader *r); /* samples skipped for NaN/Inf/huge values */

/* Save the state as JSON text (malloc'ed); restore into a freshly opened reader with the same dataset and options,
 * before its first energon_next(). */
char *energon_state_save(const energon_reader *r);
int energon_state_restore(energon_reader *r, const char *json, char *err, size_t errlen);
void energon_close(energon_reader *r);

/* ----------------------------------------------------------------- prepared folder metadata (for inspect) */
typedef struct {
    char *name; /* "train" */
    int nshards;
    char **shards; /* names relative to the dataset folder, braces expanded, excludes removed */
    int64_t samples;
} energon_split_info;

typedef struct {
    char *root;
    char *dataset_class; /* dataset.yaml's __class__ (or sample_type), NULL if dataset.yaml is absent */
    int nsplits;
    energon_split_info *splits;
    int nshards; /* from .info.json */
    char **shard_names;
    int64_t *shard_counts;
    /* split.yaml exclude entries "<shard>/<sample key>" (Energon's sample excludes): the reader drops those
     * samples; split sample counts above do not subtract them (that needs a scan of the shard) */
    int nsample_excludes;
    char **sample_excludes;
} energon_dataset_info;

int energon_dataset_info_load(const char *dir, const char *split_config, energon_dataset_info *info, char *err,
                              size_t errlen);
void energon_dataset_info_free(energon_dataset_info *info);
/* Check a shard against its .tar.idx and expected count: the idx exists, has count+1 entries, and every entry is a
 * sample boundary of the shard (full scan). 0, or -1 with the message in err. */
int energon_check_shard(const char *shard_path, int64_t expected_count, char *err, size_t errlen);

/* Brace expansion as Energon applies it to split parts: "a_{0000..0003}.tar", "{x,y}". Returns the count; *out is
 * a malloc'ed array of malloc'ed strings, or -1 (*out = NULL) past ENERGON_BRACE_MAX. */
int energon_brace_expand(const char *pattern, char ***out);
/* More names than this from one pattern (or a range this wide) is refused: energon_brace_expand returns -1. */
#define ENERGON_BRACE_MAX 100000

#ifdef __cplusplus
}
#endif
#endif
