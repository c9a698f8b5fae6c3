/* Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11). */
#include "dfm/rng.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

void philox4x32_10(uint32_t out[4], const uint32_t counter[4], const uint32_t key[2]) {
    uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n1 = (uint32_t)p1;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        uint32_t n3 = (uint32_t)p0;
        c0 = n0, c1 = n1, c2 = n2, c3 = n3;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

/* Counter layout: (element block, stream, sample index, step); key: the 64-bit seed. */
static void block(uint32_t out[4], uint64_t seed, uint32_t stream, uint32_t step, uint32_t index, uint32_t blk) {
    uint32_t ctr[4] = {blk, stream, index, step};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    philox4x32_10(out, ctr, key);
}

/* uint32 -> uniform in the open interval (0, 1) */
static inline double to_open01(uint32_t x) {
    return ((double)x + 0.5) * (1.0 / 4294967296.0);
}

double rng_uniform(uint64_t seed, uint32_t stream, uint32_t step, uint32_t index, uint32_t k) {
    uint32_t r[4];
    block(r, seed, stream, step, index, k / 4);
    return to_open01(r[k % 4]);
}

/* Box-Muller on words (0,1) -> normals (0,1) and on words (2,3) -> normals (2,3). */
static inline void box_muller(double z[4], const uint32_t r[4]) {
    for (int i = 0; i < 4; i += 2) {
        double rad = sqrt(-2.0 * log(to_open01(r[i])));
        double ang = 6.283185307179586 * to_open01(r[i + 1]);
        z[i] = rad * cos(ang);
        z[i + 1] = rad * sin(ang);
    }
}

double rng_normal(uint64_t seed, uint32_t stream, uint32_t step, uint32_t index, uint32_t k) {
    uint32_t r[4];
    double z[4];
    block(r, seed, stream, step, index, k / 4);
    box_muller(z, r);
    return z[k % 4];
}

void rng_fill_normal(float *out, size_t n, uint64_t seed, uint32_t stream, uint32_t step, uint32_t index) {
    size_t nblk = (n + 3) / 4;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t b = 0; b < nblk; b++) {
        uint32_t r[4];
        double z[4];
        block(r, seed, stream, step, index, (uint32_t)b);
        box_muller(z, r);
        for (size_t j = 0; j < 4 && 4 * b + j < n; j++) out[4 * b + j] = (float)z[j];
    }
}

void rng_fill_uniform(float *out, size_t n, uint64_t seed, uint32_t stream, uint32_t step, uint32_t index) {
    for (size_t b = 0; b < (n + 3) / 4; b++) {
        uint32_t r[4];
        block(r, seed, stream, step, index, (uint32_t)b);
        /* 23 bits, so the largest value, 1 - 2^-24, is a float below 1: rounding the 32-bit double to float
         * would give exactly 1 for the top 128 words */
        for (size_t j = 0; j < 4 && 4 * b + j < n; j++)
            out[4 * b + j] = ((float)(r[j] >> 9) + 0.5f) * (1.0f / 8388608.0f);
    }
}
