/* File-system helpers for tests that write fixtures: a temporary folder (removed at the end), path joining,
 * running the fixture generators under /usr/bin/python3 (which has numpy) and the dfm binary. */
#ifndef DFM_TEST_FS_H
#define DFM_TEST_FS_H

#include "dfm/common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static inline void test_rmtree(const char *dir) {
    rm_tree(dir);
}

static inline char *test_mkdtemp(void) {
    char *d = malloc(64);
    snprintf(d, 64, "/tmp/dfm_test_XXXXXX");
    if (!mkdtemp(d)) {
        perror("mkdtemp");
        exit(1);
    }
    return d;
}

/* printf-style path into a static rotating buffer (64 slots: copy a result that must outlive 63 more calls). */
static inline const char *test_path(const char *fmt, ...) {
    static char bufs[64][1024];
    static int k;
    char *b = bufs[k++ & 63];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, 1024, fmt, ap);
    va_end(ap);
    return b;
}

/* Run a shell command; returns its exit status. */
static inline int test_sh(const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    return rc == -1 ? -1 : WEXITSTATUS(rc);
}

/* Run a shell command, capturing its combined output into *out (malloc'ed; NULL out discards it). Returns the
 * exit status (-1 if it did not exit normally). */
static inline int test_capture(const char *cmd, char **out) {
    char full[8192];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    fflush(stdout);
    FILE *p = popen(full, "r");
    size_t cap = 1 << 16, len = 0;
    char *buf = xmalloc(cap);
    size_t n;
    while (p && (n = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (len + 1 >= cap) buf = xrealloc(buf, cap *= 2);
    }
    buf[len] = 0;
    int st = p ? pclose(p) : -1;
    if (out)
        *out = buf;
    else
        free(buf);
    return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* 1 when /usr/bin/python3 with numpy is usable; otherwise prints a FAIL line saying so. */
static inline int test_have_python(int *failed) {
    if (test_sh("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0) return 1;
    printf("FAIL /usr/bin/python3 with numpy is needed to generate fixtures (apt-get install python3-numpy)\n");
    (*failed)++;
    return 0;
}

static inline char *test_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    size_t got = fread(b, 1, (size_t)n, f);
    b[got] = 0;
    fclose(f);
    if (len) *len = got;
    return b;
}

/* Environment for tests that launch mpirun: root allowed (CI runs as root), no cross-memory attach (containers
 * may forbid it), and under the sanitizer build OpenMPI's own allocations suppressed (with full unwinding, so
 * that frames inside its plugins are named) while dfm's are still checked. */
static inline void test_mpi_env(void) {
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", 1);
    if (getenv("DFM_TEST_SANITIZER")) {
        setenv("OMPI_MCA_mca_base_component_disable_dlclose", "1", 1);
        char supp[1024], cwd[800];
        snprintf(supp, sizeof supp, "suppressions=%s/tests/lsan-mpi.supp", getcwd(cwd, sizeof cwd) ? cwd : ".");
        setenv("LSAN_OPTIONS", supp, 1);
        setenv("ASAN_OPTIONS", "detect_leaks=1:fast_unwind_on_malloc=0", 1);
    }
}

/* The dfm binary of the build this test belongs to (tests/run.sh sets DFM_BUILD). */
static inline const char *test_dfm_bin(void) {
    static char p[512];
    const char *b = getenv("DFM_BUILD");
    snprintf(p, sizeof p, "%s/dfm", b ? b : "build");
    return p;
}

#endif
