/* dfm common utilities: checked allocation and I/O, error reporting, timing.
 * Every call that can fail goes through a checked wrapper that names what failed and exits. */
#ifndef DFM_COMMON_H
#define DFM_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Print "dfm: error: <msg>" to stderr and exit(1). */
void dfm_die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
/* Under several processes: a prefix for every message ("rank 3: ") and the way out instead of exit(1)
 * (MPI_Abort, so that one rank's error ends the whole job). */
void dfm_set_die_hook(const char *prefix, void (*exit_fn)(int code));
/* Seconds dfm_die waits before it prints and exits (0: none). Ranks other than 0 wait, so that an error every rank
 * meets (a bad key, a layout that does not divide) is printed once, by rank 0, whose abort ends the others first;
 * an error of one rank alone is still printed, that much later. */
void dfm_set_die_delay(double seconds);
/* Print "dfm: warning: <msg>" to stderr. */
void dfm_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

void *xmalloc(size_t n); /* dies naming the size on failure */
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
/* 64-byte aligned allocation, zero-filled; free with free(). */
float *xalloc_floats(size_t n);
char *xstrdup(const char *s);

FILE *xfopen(const char *path, const char *mode);
void xfread(void *buf, size_t size, size_t count, FILE *f, const char *path);
void xfwrite(const void *buf, size_t size, size_t count, FILE *f, const char *path);
void xfclose(FILE *f, const char *path);

/* Atomic file write: write to "<path>.tmp.<pid>", fsync, rename over path, fsync the folder. */
typedef struct {
    FILE *f;
    char *path;
    char *tmp_path;
} dfm_atomic_file;
void atomic_open(dfm_atomic_file *af, const char *path);
void atomic_commit(dfm_atomic_file *af); /* flush, fsync, close, rename */
void atomic_abort(dfm_atomic_file *af);  /* close and unlink the temporary file */

/* Small file-system helpers, each dying with a message that names the path (except read_file_err). */
void xmkdir_p(const char *path);                                 /* mkdir -p; the result must be a folder */
void rm_tree(const char *path);                                  /* rm -rf; missing paths are fine */
uint8_t *xread_file(const char *path, size_t *len);              /* whole file, NUL-terminated; *len excludes the NUL */
char *read_file_err(const char *path, char *err, size_t errlen); /* text, or NULL with the reason in err */
void write_text_atomic(const char *path, const char *text);      /* temporary file, fsync, rename */

double dfm_time_s(void);    /* monotonic seconds */
long dfm_peak_rss_kb(void); /* peak resident set size of this process */

#ifdef __cplusplus
}
#endif
#endif
