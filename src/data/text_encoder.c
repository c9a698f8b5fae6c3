/* Stand-in text encoder for the video demo: gives captions fixed, distinct embeddings [L, D] without a language
 * model. Wan is conditioned on UMT5 embeddings; dfm cannot run UMT5 (no Python at run time, and the model is 5.7B
 * parameters), and the demo only needs the transformer to tell captions apart, so each word gets a fixed random
 * row and each position a sin-cos code (word order matters, as in a real encoder's output). Everything is a pure
 * function of (seed, caption), so every process and every run embeds a caption identically. */
#include "dfm/rng.h"
#include "dfm/video.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* FNV-1a, 64-bit, over the word's lower-cased bytes: a fixed, well-spread hash (collisions among a vocabulary of
 * a million words are unlikely: about n^2 / 2^65). */
#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

static int is_separator(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f' || c == '/';
}

/* One row: the word's normals plus the position code, scaled to unit RMS (so rows are on the scale of a
 * LayerNorm'd encoder output whatever dim is). */
static void encode_word(uint64_t h, int pos, int dim, uint64_t seed, float *row) {
    rng_fill_normal(row, (size_t)dim, seed, RNG_STREAM_TEXT, (uint32_t)h, (uint32_t)(h >> 32));
    double ss = 0;
    for (int j = 0; j < dim; j++) {
        /* sin on even, cos on odd channels, frequencies 10000^(-2i/dim) as in the Transformer's position code */
        double freq = exp(-log(10000.0) * (double)(2 * (j / 2)) / (double)dim);
        double v = row[j] + ((j & 1) ? cos(pos * freq) : sin(pos * freq));
        row[j] = (float)v;
        ss += v * v;
    }
    double scale = ss > 0 ? 1.0 / sqrt(ss / dim) : 1.0;
    for (int j = 0; j < dim; j++) row[j] = (float)(row[j] * scale);
}

int text_encoder_encode(const char *caption, int dim, int max_len, uint64_t seed, float *out, int *len, char *err,
                        size_t errlen) {
    if (dim < 1 || max_len < 1 || !out || !len) {
        snprintf(err, errlen, "text encoder: need dim >= 1 and max_len >= 1 (got dim %d, max_len %d)", dim, max_len);
        return -1;
    }
    memset(out, 0, sizeof(float) * (size_t)dim * (size_t)max_len);
    const unsigned char *s = (const unsigned char *)(caption ? caption : "");
    int count = 0;
    while (*s && count < max_len) {
        while (*s && is_separator(*s)) s++;
        if (!*s) break;
        uint64_t h = FNV_OFFSET;
        for (; *s && !is_separator(*s); s++) {
            unsigned char c = *s;
            if (c >= 'A' && c <= 'Z') c = (unsigned char)(c - 'A' + 'a'); /* ASCII only: UTF-8 bytes stay as they are */
            h = (h ^ c) * FNV_PRIME;
        }
        encode_word(h, count, dim, seed, out + (size_t)count * dim);
        count++;
    }
    if (count == 0) { /* no words: the empty word at position 0, a real null condition rather than zeros */
        encode_word(FNV_OFFSET, 0, dim, seed, out);
        count = 1;
    }
    *len = count;
    return 0;
}
