/* Pictures a run produces, drawn with cairo and written atomically: the loss curve of a metrics.jsonl and
 * labelled grids of generated samples. */
#ifndef DFM_PLOT_H
#define DFM_PLOT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Line chart of "loss" (train) and "val_loss" (validation) against "step" from a metrics.jsonl (one JSON
 * object per line; lines without those keys are skipped, non-finite values too), with axes, tick labels, a
 * legend and a title; the y axis is logarithmic when the losses span more than a decade. A file with no
 * points yet gives an empty chart saying so. Returns 0, or -1 with a message naming the file (and line). */
int plot_loss_curve(const char *metrics_jsonl_path, const char *png_path, char *err, size_t errlen);

/* Sample grid: rows x cols images (row-major, each size x size x channels 8-bit, channels 1 or 3; NULL
 * leaves a cell empty), upscaled `scale` times (nearest) with row_labels[r] drawn left of row r and an
 * optional title line above. */
typedef struct {
    int rows, cols, size, channels, scale;
    const uint8_t *const *images;  /* [rows * cols] */
    const char *const *row_labels; /* [rows] */
    const char *title;             /* may be NULL */
} sample_grid;

/* Integer upscale that makes a size-pixel image about 84 pixels (3x for 28), at least 1. */
int sample_grid_scale(int size);
/* Pixel size of the grid picture (fixed layout: a 120-pixel label column, 4-pixel gaps, 10-pixel margins,
 * a 24-pixel title band when there is a title). */
void sample_grid_dims(const sample_grid *g, int *width, int *height);
int plot_sample_grid(const sample_grid *g, const char *png_path, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
