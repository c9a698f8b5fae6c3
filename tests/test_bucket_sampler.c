/* Bucketed sampler: coverage per epoch over 1, 2 and 3 ranks, one shape per batch, identical order on every
 * rank, reshuffle per epoch, exact resume mid-epoch from the saved state. */
#include "dfm/bucket_sampler.h"
#include "test.h"

#include <string.h>

enum { N = 47, NDIM = 4 };

static void make_shapes(int64_t *shapes) {
    /* three buckets of uneven sizes (17, 16, 14 samples), the first two interleaved in the dataset */
    static const int64_t kinds[3][NDIM] = {{16, 5, 30, 52}, {16, 3, 60, 104}, {16, 5, 52, 30}};
    for (int i = 0; i < N; i++) {
        int k = i >= 33 ? 2 : i % 2;
        memcpy(shapes + (size_t)i * NDIM, kinds[k], sizeof kinds[k]);
    }
}

static int same_shape(const int64_t *shapes, const int *idx, int len) {
    for (int i = 1; i < len; i++)
        if (memcmp(shapes + (size_t)idx[i] * NDIM, shapes + (size_t)idx[0] * NDIM, NDIM * sizeof(int64_t))) return 0;
    return 1;
}

static void coverage(const int64_t *shapes, int world, int lb, int drop_last) {
    char err[512];
    bucket_sampler s[3];
    int ok = 1;
    for (int r = 0; r < world; r++)
        ok &= bucket_sampler_init(&s[r], N, shapes, NDIM, lb, r, world, 1234, 1, drop_last, err, sizeof err) == 0;
    CHECK(ok, "world %d lb %d drop_last %d: init (%s)", world, lb, drop_last, ok ? "" : err);
    if (!ok) return;
    int nb = bucket_sampler_batches_per_epoch(&s[0]);
    int same_count = 1;
    for (int r = 1; r < world; r++) same_count &= bucket_sampler_batches_per_epoch(&s[r]) == nb;
    CHECK(same_count, "world %d: every rank has %d batches per epoch", world, nb);
    for (int epoch = 0; epoch < 2; epoch++) {
        int seen[N] = {0}, one_shape = 1, lens_agree = 1, bucket_agree = 1, total = 0;
        for (int k = 0; k < nb; k++) {
            int len0 = -1, b0 = -1;
            for (int r = 0; r < world; r++) {
                int idx[16], b;
                int len = bucket_sampler_next(&s[r], idx, &b);
                if (r == 0) len0 = len, b0 = b;
                lens_agree &= len == len0;
                bucket_agree &= b == b0;
                one_shape &= same_shape(shapes, idx, len);
                for (int i = 0; i < len; i++) seen[idx[i]]++;
                total += len;
            }
        }
        int missing = 0, dup = 0;
        for (int i = 0; i < N; i++) missing += seen[i] == 0, dup += seen[i] > 1;
        CHECK(one_shape, "world %d epoch %d: every batch holds one shape", world, epoch);
        CHECK(lens_agree && bucket_agree, "world %d epoch %d: ranks step through the same buckets and lengths", world,
              epoch);
        if (!drop_last) {
            /* padding repeats at most world-1 samples per bucket (3 buckets) */
            CHECK(missing == 0 && dup <= 3 * (world - 1) && total - N <= 3 * (world - 1),
                  "world %d epoch %d: every sample once (%d missing, %d repeated, %d padded)", world, epoch, missing,
                  dup, total - N);
        } else {
            CHECK(dup <= 3 * (world - 1) && total + missing - dup <= N + 3 * (world - 1) &&
                      missing <= 3 * (world * lb - 1),
                  "world %d epoch %d drop_last: no sample twice beyond padding, only bucket tails dropped (%d missing)",
                  world, epoch, missing);
        }
    }
    for (int r = 0; r < world; r++) bucket_sampler_free(&s[r]);
}

static void order_and_resume(const int64_t *shapes) {
    char err[512];
    bucket_sampler a, b;
    bucket_sampler_init(&a, N, shapes, NDIM, 2, 1, 2, 7, 1, 0, err, sizeof err);
    int nb = bucket_sampler_batches_per_epoch(&a);
    /* record two epochs */
    int rec[200][16], lens[200];
    for (int k = 0; k < 2 * nb; k++) lens[k] = bucket_sampler_next(&a, rec[k], NULL);
    int differ = lens[0] != lens[nb] || memcmp(rec[0], rec[nb], sizeof rec[0]);
    for (int k = 1; k < nb && !differ; k++) differ = memcmp(rec[k], rec[nb + k], (size_t)lens[k] * sizeof(int)) != 0;
    CHECK(differ, "epoch 1's order differs from epoch 0's (reshuffled from seed + epoch)");
    bucket_sampler_free(&a);

    /* stop mid-epoch 1, save, restore into a fresh sampler */
    bucket_sampler_init(&a, N, shapes, NDIM, 2, 1, 2, 7, 1, 0, err, sizeof err);
    int stop = nb + nb / 2, idx[16];
    for (int k = 0; k < stop; k++) bucket_sampler_next(&a, idx, NULL);
    char *state = bucket_sampler_state_save(&a);
    bucket_sampler_init(&b, N, shapes, NDIM, 2, 1, 2, 7, 1, 0, err, sizeof err);
    int rc = bucket_sampler_state_restore(&b, state, err, sizeof err);
    CHECK(rc == 0, "restore %s (%s)", state, rc ? err : "ok");
    int same = 1;
    for (int k = stop; k < 2 * nb; k++) {
        int len = bucket_sampler_next(&b, idx, NULL);
        same &= len == lens[k] && !memcmp(idx, rec[k], (size_t)len * sizeof(int));
    }
    CHECK(same, "resumed mid-epoch at batch %d: the rest of the epoch is the same batches", stop - nb);
    /* and the next epoch goes on from the right place */
    int len = bucket_sampler_next(&b, idx, NULL);
    CHECK(b.epoch == 2 && b.yielded == 1 && len >= 1, "after the epoch ends the next begins (epoch %lld)",
          (long long)b.epoch);
    bucket_sampler_free(&b);

    /* a state from another world size is refused */
    bucket_sampler_init(&b, N, shapes, NDIM, 2, 0, 3, 7, 1, 0, err, sizeof err);
    rc = bucket_sampler_state_restore(&b, state, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "data-parallel size 2, now 3"), "state from 2 ranks refused on 3: %s", err);
    bucket_sampler_free(&b);
    rc = bucket_sampler_state_restore(&a, "{\"epoch\": 1}", err, sizeof err);
    CHECK(rc != 0, "an incomplete state is refused: %s", err);
    free(state);
    bucket_sampler_free(&a);

    /* shuffle off: buckets in shape order, members ascending */
    bucket_sampler_init(&a, N, shapes, NDIM, 4, 0, 1, 7, 0, 0, err, sizeof err);
    int prev = -1, asc = 1, bprev = -1, border = 1;
    for (int k = 0; k < bucket_sampler_batches_per_epoch(&a); k++) {
        int bk;
        int l = bucket_sampler_next(&a, idx, &bk);
        if (bk != bprev) prev = -1, border &= bk > bprev, bprev = bk;
        for (int i = 0; i < l; i++) asc &= idx[i] > prev, prev = idx[i];
    }
    CHECK(asc && border, "shuffle off: buckets in shape order, samples ascending");
    bucket_sampler_free(&a);

    /* a bucket smaller than the world: padded by cycling, every rank still gets a batch */
    int64_t tiny[2 * NDIM] = {1, 1, 1, 1, 1, 1, 1, 2};
    bucket_sampler t[3];
    int okk = 1;
    for (int r = 0; r < 3; r++) {
        okk &= bucket_sampler_init(&t[r], 2, tiny, NDIM, 1, r, 3, 1, 1, 1, err, sizeof err) == 0;
        okk &= bucket_sampler_batches_per_epoch(&t[r]) == 2;
    }
    CHECK(okk, "two one-sample buckets over 3 ranks: 2 batches each");
    for (int r = 0; r < 3; r++) bucket_sampler_free(&t[r]);
    rc = bucket_sampler_init(&a, 2, tiny, NDIM, 4, 0, 1, 1, 1, 1, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "no batch"), "drop_last with buckets smaller than a batch: %s", err);
}

int main(void) {
    int64_t shapes[N * NDIM];
    make_shapes(shapes);
    for (int world = 1; world <= 3; world++)
        for (int lb = 1; lb <= 3; lb += 2)
            for (int dl = 0; dl <= 1; dl++) coverage(shapes, world, lb, dl);
    order_and_resume(shapes);
    return test_finish();
}
