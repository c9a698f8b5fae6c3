/* Bucketed batch sampler, NeMo Automodel's semantics for multi-resolution diffusion data
 * (nemo_automodel/components/datasets/diffusion/sampler.py, SequentialBucketSampler):
 *
 *   - samples are grouped by latent shape into buckets; buckets are ordered by shape (lexicographic);
 *   - each epoch draws from seed + epoch, identically on every rank: the bucket order is shuffled, and each
 *     bucket's samples (Automodel draws both from one generator; dfm keys each permutation by the bucket, so a
 *     bucket's order does not depend on which buckets came before it);
 *   - buckets are visited one after another (all of bucket A, then all of bucket B: no interleaving), so every
 *     batch holds one shape;
 *   - each shuffled bucket is padded by cycling from its start to a multiple of the data-parallel size and dealt
 *     indices[rank::world]; each rank cuts its share into local batches of local_batch; with drop_last a short
 *     last batch of a bucket is dropped, otherwise it is yielded short. Every rank gets the same number of
 *     batches of the same lengths (no collective hangs).
 *   - state = (epoch, batches yielded this epoch), as JSON: a resumed run yields exactly the next batch.
 *
 * Differences from Automodel, on purpose: the permutations come from dfm's Philox stream (rng.h), not
 * torch.randperm, so the order differs from a PyTorch run with the same seed; a bucket smaller than the world
 * size is padded by cycling as often as needed (Automodel pads once from the start, which leaves the last ranks
 * short when a bucket has fewer samples than ranks). */
#ifndef DFM_BUCKET_SAMPLER_H
#define DFM_BUCKET_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BUCKET_MAX_DIMS 8

typedef struct {
    int ndim;
    int64_t dims[BUCKET_MAX_DIMS]; /* the bucket's shape, e.g. latent c, t, h, w */
    int count;                     /* samples in the bucket */
    int *members;                  /* their dataset indices, ascending */
} bucket_info;

typedef struct {
    /* fixed at init */
    int n, nbuckets;
    bucket_info *buckets; /* in shape order */
    int local_batch, rank, world, shuffle, drop_last;
    uint64_t seed;
    /* state */
    int64_t epoch;   /* current epoch */
    int64_t yielded; /* batches of this epoch already returned */
    /* this rank's plan for `plan_epoch` (rebuilt lazily) */
    int64_t plan_epoch;
    int nbatches;
    int *plan;         /* this rank's indices for the epoch, batch after batch */
    int *batch_start;  /* [nbatches + 1] offsets into plan */
    int *batch_bucket; /* [nbatches] bucket of each batch */
} bucket_sampler;

/* shapes: n rows of ndim int64 (1 <= ndim <= BUCKET_MAX_DIMS). 0, or -1 with a message in err. */
int bucket_sampler_init(bucket_sampler *s, int n, const int64_t *shapes, int ndim, int local_batch, int rank, int world,
                        uint64_t seed, int shuffle, int drop_last, char *err, size_t errlen);
void bucket_sampler_free(bucket_sampler *s);

/* Batches each rank gets per epoch (the same on every rank). */
int bucket_sampler_batches_per_epoch(const bucket_sampler *s);

/* The next batch: dataset indices into idx (room for local_batch), its bucket into *bucket (may be NULL).
 * Returns the batch length (>= 1). At the end of an epoch moves on to the next one. */
int bucket_sampler_next(bucket_sampler *s, int *idx, int *bucket);

/* Jump to the start of `epoch` (like set_epoch). */
void bucket_sampler_set_epoch(bucket_sampler *s, int64_t epoch);

/* State as JSON (malloc'ed): {"epoch":E,"batches_yielded":B,"seed":..,"world":..,"local_batch":..,"samples":..,
 * "buckets":..,"drop_last":..,"shuffle":..}. Restoring checks the fixed fields match (a different world size or
 * batch size would make the position mean other batches) and returns -1 with a message otherwise. */
char *bucket_sampler_state_save(const bucket_sampler *s);
int bucket_sampler_state_restore(bucket_sampler *s, const char *json, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
