/* Fashion-MNIST (and MNIST) idx.gz files, as Debian's dataset-fashion-mnist installs them in
 * /usr/share/datasets/fashion-mnist: {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz. */
#ifndef DFM_FASHION_MNIST_H
#define DFM_FASHION_MNIST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FMNIST_DEFAULT_DIR "/usr/share/datasets/fashion-mnist"
#define FMNIST_SIDE 28

/* Load the training (train = 1) or test set from dir: *images count x 28 x 28 uint8, *labels count uint8
 * (0-9). limit > 0 keeps only the first `limit` samples. Returns 0, or -1 with a message naming the file
 * (missing, truncated, wrong magic or sizes) in err. */
int fmnist_load(const char *dir, int train, int limit, uint8_t **images, uint8_t **labels, int *count, char *err,
                size_t errlen);

/* Class names, index 0-9. */
extern const char *const fmnist_class_names[10];

#ifdef __cplusplus
}
#endif
#endif
