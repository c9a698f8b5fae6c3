/* Internal to src/data: shared by the in-memory video dataset readers (video.c, video_meta.c). */
#ifndef DFM_DATA_VIDEO_IMPL_H
#define DFM_DATA_VIDEO_IMPL_H

#include "dfm/video.h"

#include <stdint.h>

/* Lay out vd's latents for vd->n samples of shapes4 [n][4] (c, t, h, w; c equal): sets c, t, h, w (the largest
 * shape, first of the largest on ties) and, when T, H or W differ between samples, shapes and offsets. Returns
 * the floats the latents take. */
size_t video_dataset_layout(video_dataset *vd, const int64_t *shapes4);

#endif
