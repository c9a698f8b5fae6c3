/* A tiny test harness: each check prints one line starting with PASS or FAIL; the runner
 * (tests/run.sh) counts them. A test binary exits non-zero if any check failed. */
#ifndef DFM_TEST_H
#define DFM_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static int test_passed_, test_failed_;

#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        int ok_ = (cond) ? 1 : 0;                                                                                      \
        if (ok_)                                                                                                       \
            test_passed_++;                                                                                            \
        else                                                                                                           \
            test_failed_++;                                                                                            \
        printf("%s ", ok_ ? "PASS" : "FAIL");                                                                          \
        printf(__VA_ARGS__);                                                                                           \
        printf("\n");                                                                                                  \
        fflush(stdout);                                                                                                \
    } while (0)

static inline int test_finish(void) {
    printf("# %d checks passed, %d failed\n", test_passed_, test_failed_);
    return test_failed_ ? 1 : 0;
}

/* max |a - b| / max(max |b|, floor): a norm-wise relative error that does not blow up on tiny entries */
static inline double test_rel_err(const float *a, const float *b, size_t n) {
    double maxdiff = 0, maxref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > maxdiff || d != d) maxdiff = d;
        if (fabs((double)b[i]) > maxref) maxref = fabs((double)b[i]);
    }
    return maxdiff / (maxref > 1e-30 ? maxref : 1e-30);
}

/* Fresh random inputs each run unless DFM_TEST_SEED is set; the seed is printed so a failure can be replayed. */
static uint64_t test_rng_state_;
static inline uint64_t test_seed(void) {
    const char *s = getenv("DFM_TEST_SEED");
    uint64_t seed = s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 20);
    test_rng_state_ = seed * 0x9E3779B97F4A7C15ull + 1;
    printf("# DFM_TEST_SEED=%llu\n", (unsigned long long)seed);
    return seed;
}
static inline double test_uniform(void) { /* xorshift64*, in [0, 1) */
    test_rng_state_ ^= test_rng_state_ >> 12;
    test_rng_state_ ^= test_rng_state_ << 25;
    test_rng_state_ ^= test_rng_state_ >> 27;
    return (double)((test_rng_state_ * 0x2545F4914F6CDD1Dull) >> 11) * (1.0 / 9007199254740992.0);
}
static inline float test_randn(void) {
    double u1 = test_uniform(), u2 = test_uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
static inline void test_fill_randn(float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = scale * test_randn();
}

#endif
