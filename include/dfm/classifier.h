/* A small Fashion-MNIST classifier trained in C, used to measure sample quality: its penultimate-layer features
 * feed the Frechet distance (frechet.h) and its predictions give the agreement with the class a sample was
 * generated for. An MLP 784 -> h1 -> h2 (feature layer) -> 10 with ReLU, trained with softmax cross-entropy and
 * AdamW on images scaled to [-1, 1] (x / 127.5 - 1, the scaling the diffusion model's images use). */
#ifndef DFM_CLASSIFIER_H
#define DFM_CLASSIFIER_H

#include "dfm/model.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CLF_IN (28 * 28)
#define CLF_CLASSES 10

typedef struct {
    int hidden1, hidden2; /* hidden2 is the feature dimension */
    param_table table;    /* fc1.weight [h1, 784], fc1.bias, fc2.weight [h2, h1], fc2.bias, head.weight, head.bias */
    float *params;
    double test_accuracy; /* on the 10k test set, as measured after training or read from the file; -1 unknown */
    int train_images, epochs;
    uint64_t seed;
} classifier;

typedef struct {
    int epochs;         /* passes over the training images */
    int batch;          /* minibatch size */
    float lr;           /* peak learning rate (linear warmup over the first 1% of steps, cosine decay to 0) */
    float weight_decay; /* AdamW decoupled decay on weights (not biases) */
    int max_shift;      /* augmentation: random translation by up to this many pixels (0 = none) */
    uint64_t seed;      /* initialisation, shuffling and augmentation */
    int verbose;        /* print one line per epoch */
} classifier_train_opts;

/* Defaults: 12 epochs, batch 128, lr 1e-3, weight decay 0.01, no shift, seed 0, verbose 0 (89.8% test accuracy;
 * a +-1 or +-2 pixel shift underfits this MLP at 12 epochs: 89.2% and 88.1%). */
classifier_train_opts classifier_default_opts(void);

/* Allocate and initialise (He-normal weights from Philox draws, zero biases). */
void classifier_init(classifier *c, int hidden1, int hidden2, uint64_t seed);
void classifier_free(classifier *c);

/* uint8 images [n, 28*28] -> float in [-1, 1] */
void classifier_images_to_f32(const uint8_t *u8, size_t n_images, float *out);

/* Train on n uint8 images [n, 784] with labels 0-9. Deterministic for a given seed and thread count. */
void classifier_train(classifier *c, const uint8_t *images, const uint8_t *labels, int n,
                      const classifier_train_opts *o);

/* Feature-layer activations (post-ReLU) of n float images [n, 784] -> feats [n, hidden2]. */
void classifier_features(const classifier *c, const float *images, int n, float *feats);
/* Predicted class per image; probs [n, 10] optional (NULL). */
void classifier_predict(const classifier *c, const float *images, int n, int *pred, float *probs);
/* Fraction of n uint8 images classified as their label; per_class [10] (optional) gets per-class accuracy. */
double classifier_accuracy(const classifier *c, const uint8_t *images, const uint8_t *labels, int n, double *per_class);

/* Save as safetensors with metadata (format tag, sizes, test accuracy, training settings), atomically. */
void classifier_save(const classifier *c, const char *path);
/* Load a file written by classifier_save (sizes from the tensors' shapes). Returns 0, or -1 with err. */
int classifier_load(classifier *c, const char *path, char *err, size_t errlen);

/* `dfm eval samples`' manifest, samples.json as `dfm generate` writes it: a non-empty JSON array of {"file": PNG
 * path (relative to the manifest's folder, or absolute), "label": 0-9}. Every PNG must be a 28x28 gray (or gray
 * stored as RGB) image. On success *images [n, 784] in [-1, 1] and *labels [n] are malloc'ed; else -1 with a
 * message naming the manifest, the entry and the file. */
int clf_manifest_load(const char *path, float **images, int **labels, int *count, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
