/* Checked wrappers and small utilities shared by all of dfm. */
#include "dfm/common.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char die_prefix[64];
static void (*die_exit)(int);
static double die_delay;

void dfm_set_die_hook(const char *prefix, void (*exit_fn)(int code)) {
    snprintf(die_prefix, sizeof die_prefix, "%s", prefix ? prefix : "");
    die_exit = exit_fn;
}

void dfm_set_die_delay(double seconds) {
    die_delay = seconds > 0 ? seconds : 0;
}

void dfm_die(const char *fmt, ...) {
    va_list ap;
    fflush(stdout);
    if (die_delay > 0) {
        struct timespec ts = {(time_t)die_delay, (long)((die_delay - (double)(time_t)die_delay) * 1e9)};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
    }
    fprintf(stderr, "dfm: error: %s", die_prefix);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    if (die_exit) die_exit(1);
    exit(1);
}

void dfm_warn(const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "dfm: warning: %s", die_prefix);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) dfm_die("out of memory allocating %zu bytes", n);
    return p;
}

void *xcalloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) dfm_die("out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) dfm_die("out of memory reallocating to %zu bytes", n);
    return q;
}

float *xalloc_floats(size_t n) {
    size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) dfm_die("out of memory allocating %zu floats", n);
    memset(p, 0, bytes);
    return p;
}

char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = xmalloc(n);
    memcpy(p, s, n);
    return p;
}

FILE *xfopen(const char *path, const char *mode) {
    FILE *f = fopen(path, mode);
    if (!f) dfm_die("cannot open '%s' (mode %s): %s", path, mode, strerror(errno));
    return f;
}

void xfread(void *buf, size_t size, size_t count, FILE *f, const char *path) {
    long off = ftell(f);
    size_t got = fread(buf, size, count, f);
    if (got != count)
        dfm_die("'%s': short read at offset %ld: wanted %zu x %zu bytes, got %zu%s", path, off, count, size, got,
                feof(f) ? " (file truncated?)" : "");
}

void xfwrite(const void *buf, size_t size, size_t count, FILE *f, const char *path) {
    if (fwrite(buf, size, count, f) != count) dfm_die("'%s': write failed: %s", path, strerror(errno));
}

void xfclose(FILE *f, const char *path) {
    if (fclose(f) != 0) dfm_die("'%s': close failed: %s", path, strerror(errno));
}

void atomic_open(dfm_atomic_file *af, const char *path) {
    size_t n = strlen(path) + 32;
    af->path = xstrdup(path);
    af->tmp_path = xmalloc(n);
    snprintf(af->tmp_path, n, "%s.tmp.%ld", path, (long)getpid());
    af->f = xfopen(af->tmp_path, "wb");
}

static void fsync_dir_of(const char *path) {
    char *copy = xstrdup(path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(copy);
}

void atomic_commit(dfm_atomic_file *af) {
    if (fflush(af->f) != 0) dfm_die("'%s': flush failed: %s", af->tmp_path, strerror(errno));
    if (fsync(fileno(af->f)) != 0) dfm_die("'%s': fsync failed: %s", af->tmp_path, strerror(errno));
    xfclose(af->f, af->tmp_path);
    if (rename(af->tmp_path, af->path) != 0)
        dfm_die("cannot rename '%s' to '%s': %s", af->tmp_path, af->path, strerror(errno));
    fsync_dir_of(af->path);
    free(af->path);
    free(af->tmp_path);
    af->f = NULL;
}

void atomic_abort(dfm_atomic_file *af) {
    if (af->f) fclose(af->f);
    unlink(af->tmp_path);
    free(af->path);
    free(af->tmp_path);
    af->f = NULL;
}

void xmkdir_p(const char *path) {
    char *p = xstrdup(path);
    for (char *s = p + 1; *s; s++)
        if (*s == '/') {
            *s = 0;
            if (mkdir(p, 0755) != 0 && errno != EEXIST) dfm_die("cannot create folder '%s': %s", p, strerror(errno));
            *s = '/';
        }
    if (mkdir(p, 0755) != 0 && errno != EEXIST) dfm_die("cannot create folder '%s': %s", p, strerror(errno));
    struct stat st;
    if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) dfm_die("'%s' is not a folder", p);
    free(p);
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(p);
}

void rm_tree(const char *path) {
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static uint8_t *read_whole(FILE *f, const char *path, size_t *len) {
    if (fseeko(f, 0, SEEK_END) != 0) dfm_die("'%s': seek failed: %s", path, strerror(errno));
    off_t n = ftello(f);
    if (n < 0) dfm_die("'%s': cannot tell its size: %s", path, strerror(errno));
    fseeko(f, 0, SEEK_SET);
    uint8_t *b = xmalloc((size_t)n + 1);
    xfread(b, 1, (size_t)n, f, path);
    xfclose(f, path);
    b[n] = 0;
    if (len) *len = (size_t)n;
    return b;
}

uint8_t *xread_file(const char *path, size_t *len) {
    return read_whole(xfopen(path, "rb"), path, len);
}

char *read_file_err(const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    return (char *)read_whole(f, path, NULL);
}

void write_text_atomic(const char *path, const char *text) {
    dfm_atomic_file af;
    atomic_open(&af, path);
    xfwrite(text, 1, strlen(text), af.f, af.tmp_path);
    atomic_commit(&af);
}

double dfm_time_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

long dfm_peak_rss_kb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}
