/* Training data for image models: sources (Fashion-MNIST idx files, image folders, Energon webdataset
 * folders) and the batch loader the training loop pulls from.
 *
 * In-memory sources (Fashion-MNIST, image folders) are decoded once at start-up into uint8 CHW images; the
 * loader walks a per-epoch permutation drawn from (seed, epoch), so its whole state is (epoch, position).
 * Energon sources stream through the Energon reader, whose state is its own JSON. Every batch is float
 * [B, C, H, W] in [-1, 1] plus class labels (the null class for unlabelled samples). */
#ifndef DFM_DATA_H
#define DFM_DATA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int n, c, h, w;
    uint8_t *pixels; /* n x c x h x w */
    int *labels;     /* n; -1 = unlabelled */
    int num_classes; /* 0 when no sample is labelled */
    char **class_names;
} image_dataset;

/* Load "fashion_mnist" (path = folder of idx.gz files; train = 1 for the 60k training set) or "image_folder"
 * (PNG/JPEG files, labels from metadata.jsonl {"file_name", "label"} or from sub-folder names), resized
 * (centre crop + area/bilinear) to size x size with `channels` channels. Decoding uses num_workers threads.
 * 0, or -1 with a message naming the file in err. */
int image_dataset_load(image_dataset *ds, const char *type, const char *path, int train, int size, int channels,
                       int num_workers, char *err, size_t errlen);
void image_dataset_free(image_dataset *ds);

typedef struct {
    int64_t epoch, pos; /* next sample: position `pos` of epoch `epoch`'s permutation */
} loader_state;

typedef struct data_loader data_loader;

/* A loader over the samples `indices` (n of them) of ds, batches of `batch`, shuffled per epoch from seed.
 * num_workers > 0 prepares the next batch on a background thread while the caller trains. */
data_loader *loader_new(const image_dataset *ds, const int *indices, int n, uint64_t seed, int batch, int num_workers,
                        int null_class);
/* Energon source (dataset folder or metadataset YAML): samples need an image part (png) and optionally a
 * class part (cls). NULL with a message on error. */
data_loader *loader_new_energon(const char *path, const char *split, uint64_t seed, int batch, int num_workers, int c,
                                int h, int w, int null_class, char *err, size_t errlen);
/* The next batch: x [batch, C, H, W] in [-1, 1], labels [batch]. Returns seconds spent waiting for data. */
double loader_next(data_loader *l, float *x, int *labels);
/* Keep only samples [first, first + count) of every batch (this data-parallel rank's share): loader_next then
 * writes count samples; the position still advances by the whole batch, so every rank walks the same order. */
void loader_set_slice(data_loader *l, int first, int count);
/* State as JSON text (malloc'ed) and restore (before the first loader_next). */
char *loader_state_save(data_loader *l);
int loader_state_restore(data_loader *l, const char *json, char *err, size_t errlen);
void loader_free(data_loader *l);

/* Deterministic split of n samples into validation (the first n_val of a seed-fixed permutation) and
 * training (the rest). Arrays are malloc'ed. */
void split_indices(int n, int n_val, uint64_t seed, int **train_idx, int *n_train, int **val_idx);

#ifdef __cplusplus
}
#endif
#endif
