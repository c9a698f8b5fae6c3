/* Shared helpers of the libFuzzer targets in tests/fuzz/ (built by `make fuzz`, see docs/RELIABILITY.md).
 *
 * Many of dfm's readers take a path (safetensors, tar shards, idx.gz, dataset folders), so a target writes its
 * input into a private folder under /dev/shm (RAM: no disk wear at tens of thousands of runs a second) and
 * calls the reader on it. The folder is made once per process and removed at exit.
 *
 * A reader that calls dfm_die on bad input is a bug (loaders must be able to report or skip): the die hook
 * turns every dfm_die into abort(), so libFuzzer reports it as a crash with the input that caused it. */
#ifndef DFM_FUZZ_COMMON_H
#define DFM_FUZZ_COMMON_H

#include "dfm/common.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char fuzz_dir_[256];

static inline void fuzz_die_abort_(int code) {
    (void)code;
    abort();
}

static inline void fuzz_cleanup_(void) {
    if (fuzz_dir_[0]) rm_tree(fuzz_dir_);
}

/* The private scratch folder of this process (created on first use); also installs the die hook. */
static inline const char *fuzz_dir(void) {
    if (!fuzz_dir_[0]) {
        snprintf(fuzz_dir_, sizeof fuzz_dir_, "/dev/shm/dfm-fuzz-%ld", (long)getpid());
        rm_tree(fuzz_dir_);
        xmkdir_p(fuzz_dir_);
        atexit(fuzz_cleanup_);
        dfm_set_die_hook(NULL, fuzz_die_abort_);
    }
    return fuzz_dir_;
}

/* "<scratch>/<name>" in a static buffer (one at a time: copy it if two are needed). */
static inline const char *fuzz_path(const char *name) {
    static char p[512];
    snprintf(p, sizeof p, "%s/%s", fuzz_dir(), name);
    return p;
}

/* Write bytes to "<scratch>/<name>" (parent folders created) and return the path. */
static inline const char *fuzz_write(const char *name, const void *data, size_t size) {
    static char p[512];
    snprintf(p, sizeof p, "%s/%s", fuzz_dir(), name);
    char parent[512];
    snprintf(parent, sizeof parent, "%s", p);
    char *slash = strrchr(parent, '/');
    if (slash) {
        *slash = 0;
        xmkdir_p(parent);
    }
    FILE *f = fopen(p, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    if (fclose(f) != 0) abort();
    return p;
}

/* The input as a NUL-terminated string (malloc'ed); embedded NULs end it early, as they would in a file read
 * as text. */
static inline char *fuzz_text(const uint8_t *data, size_t size) {
    char *s = malloc(size + 1);
    if (!s) abort();
    memcpy(s, data, size);
    s[size] = 0;
    return s;
}

/* A message must say why (an empty err on failure would leave a user with nothing). */
static inline void fuzz_check_err(const char *err) {
    if (!err[0]) abort();
}

#endif
