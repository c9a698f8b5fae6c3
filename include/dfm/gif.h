/* Animated GIFs of generated frames (video samples, denoising sequences), written with giflib. */
#ifndef DFM_GIF_H
#define DFM_GIF_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Write T frames of H x W pixels, frames[t][y][x][c] (channels 1 = gray or 3 = RGB, 8 bits each), as a looping
 * animated GIF (NETSCAPE2.0 loop extension, loop forever) with delay_cs hundredths of a second per frame
 * (0..65535), each pixel upscaled to a scale x scale block (nearest neighbour, scale >= 1).
 * Colours: gray uses a 256-level gray palette, so every value is kept exactly; RGB keeps the colours exactly when
 * all frames together hold at most 256 distinct ones, else one palette for all frames from giflib's median-cut
 * quantizer (GifQuantizeBuffer; 5 bits per channel before the cut).
 * The file is written to a temporary sibling, fsynced and renamed over path. Returns 0, or -1 with a message in
 * err naming the path or the bad argument. */
int gif_write(const char *path, const uint8_t *frames, int T, int H, int W, int channels, int delay_cs, int scale,
              char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
