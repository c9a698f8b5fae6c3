/* Sharded checkpoint pieces must tile the flat layout exactly: overlaps and gaps are refused, naming the shard and
 * the tensor, and a correct set reads back into any range. */
#include "dfm/checkpoint.h"
#include "test.h"
#include "test_fs.h"

static int write_two(const char *dir, const param_table *t, const float *w, size_t a0, size_t a1, size_t b0,
                     size_t b1) {
    test_rmtree(dir);
    xmkdir_p(dir);
    const char *kinds[1] = {"model"};
    const float *bufa[1] = {w + a0}, *bufb[1] = {w + b0};
    ckpt_write_shard(dir, 0, 2, t, a0, a1, 1, kinds, bufa, NULL);
    ckpt_write_shard(dir, 1, 2, t, b0, b1, 1, kinds, bufb, NULL);
    return 0;
}

int main(void) {
    char *dir = test_mkdtemp();
    param_table t = {0};
    int64_t s1[2] = {6, 10}, s2[1] = {40};
    param_table_add(&t, "a.weight", 2, s1, 0); /* elements 0..59 */
    param_table_add(&t, "b.bias", 1, s2, 1);   /* 60..99 */
    float w[100], out[100];
    test_seed();
    test_fill_randn(w, 100, 1.0f);
    char err[1024];
    const char *d = test_path("%s/ck", dir);

    write_two(d, &t, w, 0, 50, 50, 100);
    int rc = ckpt_read_range(d, "model", &t, 0, 100, out, err, sizeof err);
    CHECK(rc == 0 && !memcmp(out, w, sizeof w), "two shards that tile the layout read back exactly: %s",
          rc ? err : "ok");
    rc = ckpt_read_range(d, "model", &t, 30, 70, out, err, sizeof err);
    CHECK(rc == 0 && !memcmp(out, w + 30, 40 * sizeof(float)), "and into a range across both: %s", rc ? err : "ok");

    write_two(d, &t, w, 0, 60, 40, 100);
    rc = ckpt_read_range(d, "model", &t, 0, 100, out, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "overlaps") && strstr(err, "shard 1"), "overlapping shards refused: %s", err);

    write_two(d, &t, w, 0, 40, 60, 100);
    rc = ckpt_read_range(d, "model", &t, 0, 100, out, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "gap") && strstr(err, "b.bias"), "a gap between shards refused: %s", err);

    param_table_free(&t);
    test_rmtree(dir);
    free(dir);
    return test_finish();
}
