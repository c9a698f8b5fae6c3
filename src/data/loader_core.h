/* Internal to src/data: what the image loader (loader.c) and the video loader (video_loader.c) share, so that both
 * walk samples in exactly the same order and save the same kind of state.
 *
 *   epoch_order   the per-epoch permutation of a sample list, drawn from (seed, epoch) with Philox, and the
 *                 {epoch, pos} state that says where the next batch starts;
 *   prefetcher    one background thread that fills the next batch (from a given state) into the owner's
 *                 buffers while the caller trains;
 *   energon_fill_batch  one batch from an Energon stream, every sample handed to a callback with its place in
 *                 the batch (the caller keeps its data-parallel slice). */
#ifndef DFM_DATA_LOADER_CORE_H
#define DFM_DATA_LOADER_CORE_H

#include "dfm/data.h"
#include "dfm/energon.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

/* Fisher-Yates over a[0..n) with the draws keyed by (seed, stream, step): any process computes the same order. */
void philox_shuffle(int *a, int n, uint64_t seed, uint32_t stream, uint32_t step);

typedef struct {
    int *indices, n; /* the samples walked (a copy) */
    uint64_t seed;
    int64_t perm_epoch; /* epoch whose permutation is in perm (-1: none) */
    int *perm;
} epoch_order;

void epoch_order_init(epoch_order *o, const int *indices, int n, uint64_t seed);
void epoch_order_free(epoch_order *o);
/* The sample at *st, then *st advanced by one (a finished epoch wraps to position 0 of the next). */
int epoch_order_take(epoch_order *o, loader_state *st);
/* Advance *st by count samples exactly as count calls of epoch_order_take would, without drawing permutations. */
void loader_state_advance(loader_state *st, int n, int count);
/* {"kind": kind, "epoch", "pos", "seed", "samples"} as JSON text (malloc'ed). */
char *epoch_order_state_save(const epoch_order *o, const loader_state *st, const char *kind);
/* Parse and check such a state (same kind, seed and sample count); 0 and *st set, or -1 with err. */
int epoch_order_state_restore(const epoch_order *o, loader_state *st, const char *kind, const char *json, char *err,
                              size_t errlen);

typedef void (*prefetch_fill_fn)(void *ctx, loader_state *st);

typedef struct {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ready, want, quit;
    loader_state pending_st; /* state the prefetched batch starts from */
    prefetch_fill_fn fill;   /* fills the owner's prefetch buffers with the batch starting at *st */
    void *ctx;
} prefetcher;

void prefetcher_start(prefetcher *p, prefetch_fill_fn fill, void *ctx, const char *what);
/* Block until the batch starting at *st is in the owner's prefetch buffers (asking for it if nothing is in
 * flight: the first call, or after prefetcher_drop). */
void prefetcher_wait(prefetcher *p, const loader_state *st);
/* Start filling the batch that starts at *st (call after the previous batch was copied out). */
void prefetcher_request(prefetcher *p, const loader_state *st);
/* Wait for any batch in flight and forget it (the position or the slice changed). */
void prefetcher_drop(prefetcher *p);
void prefetcher_stop(prefetcher *p);

/* What every batch loader holds: the batch and this rank's slice of it, the source's order and position (in-memory
 * sources) or Energon stream, and the prefetcher. The functions below are the loaders' common entry points. */
typedef struct {
    int batch;
    int slice_first, slice_count; /* the part of each batch this process keeps (data parallelism) */
    epoch_order order;            /* in-memory source */
    loader_state st;              /* the consumer's position: the next batch handed out starts here */
    energon_reader *en;           /* Energon source (instead) */
    int threaded;
    prefetcher pf;
} loader_base;

void loader_base_set_slice(loader_base *b, int first, int count, const char *what);
/* Threaded in-memory loaders: wait for the prefetched batch; the caller copies it out, then calls
 * loader_base_advance, which moves the position as the producer did and asks for the next batch. */
void loader_base_wait(loader_base *b);
void loader_base_advance(loader_base *b);
char *loader_base_state_save(loader_base *b, const char *kind);
int loader_base_state_restore(loader_base *b, const char *kind, const char *json, char *err, size_t errlen);
void loader_base_free(loader_base *b); /* stops the thread, closes the stream, frees the order */

/* take(ctx, s, b, err, errlen) for the samples b = 0..batch-1 of the next batch: 0 to go on, 1 to skip the sample
 * (a fresh one is read for the same b, on every rank alike), -1 on error with err set. The sample is freed after
 * take returns. 0, or -1 with err. */
typedef int (*energon_take_fn)(void *ctx, const energon_sample *s, int b, char *err, size_t errlen);
int energon_fill_batch(energon_reader *r, int batch, energon_take_fn take, void *ctx, char *err, size_t errlen);

#endif
