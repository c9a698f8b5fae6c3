/* Throughput in the model's terms: the closed-form forward FLOPs of DiT and Wan (dit_forward_flops,
 * wan_forward_flops: matrix products 2 M N K and attention 4 B H Nq Nk D) equal what a forward actually runs
 * through the kernels (counted by matmul_forward and attention_forward), over several shapes; and the training
 * log reports model TFLOP/s and MFU = TFLOP/s / logger.peak_tflops. */
#include "dfm/common.h"
#include "dfm/dit.h"
#include "dfm/kernels.h"
#include "dfm/wan.h"
#include "test.h"
#include "test_fs.h"

#include <jansson.h>
#include <math.h>
#include <string.h>

static void dit_case(const char *name, int layers, int hidden, int heads, int ffn, int patch, int size, int B) {
    dit_config c;
    dit_config_named(&c, "tiny");
    c.num_layers = layers, c.hidden_size = hidden, c.num_heads = heads, c.ffn_hidden_size = ffn;
    c.patch_size = patch, c.image_size = size;
    char err[256];
    if (!dit_config_check(&c, err, sizeof err)) {
        CHECK(0, "%s: %s", name, err);
        return;
    }
    dit_model m;
    dit_create(&m, &c, B);
    dit_init(&m, 1);
    size_t n = (size_t)B * c.in_channels * size * size;
    float *x = xalloc_floats(n), *out = xalloc_floats((size_t)B * c.out_channels * size * size), t[8];
    int labels[8];
    test_fill_randn(x, n, 1.0f);
    for (int b = 0; b < B; b++) t[b] = (float)(100 * b + 10), labels[b] = b % c.num_classes;
    double before = kernels_forward_flops();
    dit_forward(&m, out, x, t, labels, B);
    double ran = kernels_forward_flops() - before, formula = dit_forward_flops(&m, B);
    CHECK(fabs(ran - formula) <= 1e-9 * formula, "DiT %s, batch %d: closed form %.6g FLOPs = %.6g run by the kernels",
          name, B, formula, ran);
    free(x), free(out);
    dit_free(&m);
}

static void wan_case(const char *name, const wan_config *c, wan_shape s, int masked) {
    wan_model m;
    wan_create(&m, c, &s);
    wan_init(&m, 2);
    size_t n = (size_t)s.batch * c->in_channels * s.frames * s.height * s.width;
    float *x = xalloc_floats(n), *out = xalloc_floats(n),
          *text = xalloc_floats((size_t)s.batch * s.text_len * c->text_dim);
    float t[8];
    int lens[8];
    test_fill_randn(x, n, 1.0f);
    test_fill_randn(text, (size_t)s.batch * s.text_len * c->text_dim, 1.0f);
    for (int b = 0; b < s.batch; b++) t[b] = (float)(200 * b + 5), lens[b] = masked ? 1 + b % s.text_len : s.text_len;
    double before = kernels_forward_flops();
    wan_forward(&m, out, x, t, text, lens, &s);
    double ran = kernels_forward_flops() - before, formula = wan_forward_flops(&m, &s);
    CHECK(fabs(ran - formula) <= 1e-9 * formula,
          "Wan %s, [%d, %d, %d, %d] text %d%s: closed form %.6g FLOPs = %.6g run by the kernels", name, s.batch,
          s.frames, s.height, s.width, s.text_len, masked ? " (masked)" : "", formula, ran);
    free(x), free(out), free(text);
    wan_free(&m);
}

int main(void) {
    test_seed();
    kernels_init();
    dit_case("tiny", 2, 32, 2, 128, 2, 8, 3);
    dit_case("patch 4, 3 layers", 3, 48, 3, 96, 4, 16, 2);
    wan_config c;
    wan_config_named(&c, "wan_tiny");
    wan_case("tiny", &c, (wan_shape){2, 2, 4, 4, 5}, 0);
    wan_case("tiny", &c, (wan_shape){3, 4, 8, 6, 7}, 1);
    wan_config o = c;
    o.num_heads = 3, o.head_dim = 14, o.ffn_dim = 48, o.text_dim = 24, o.patch_t = 2, o.patch_h = 2, o.patch_w = 1;
    o.in_channels = o.out_channels = 3;
    wan_case("3 heads x 14, patch [2, 2, 1]", &o, (wan_shape){2, 4, 4, 6, 3}, 1);

    /* the log: model_tflops, and mfu = model_tflops / logger.peak_tflops */
    char *dir = test_mkdtemp();
    int rc = test_sh("%s pretrain model.num_layers=2 model.hidden_size=32 model.num_attention_heads=2 "
                     "model.ffn_hidden_size=64 model.patch_size=7 train.train_iters=3 train.global_batch_size=8 "
                     "train.micro_batch_size=4 train.eval_iters=0 dataset.val_samples=16 dataset.num_workers=1 "
                     "logger.log_interval=1 logger.peak_tflops=0.02 logger.output_dir=%s checkpoint.save=null "
                     "> %s/log 2>&1",
                     test_dfm_bin(), dir, dir);
    char *text = test_read_file(test_path("%s/metrics.jsonl", dir), NULL);
    int ok = rc == 0 && text, lines = 0;
    for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n")) {
        json_t *j = json_loads(line, 0, NULL);
        double tf = json_number_value(json_object_get(j, "model_tflops")),
               mfu = json_number_value(json_object_get(j, "mfu"));
        if (json_object_get(j, "loss")) {
            lines++;
            ok &= tf > 0 && fabs(mfu - tf / 0.02) <= 1e-3 * mfu + 1e-9;
        }
        json_decref(j);
    }
    free(text);
    char *log = test_read_file(test_path("%s/log", dir), NULL);
    CHECK(ok && lines == 3 && log && strstr(log, "MFU against 0.020 TFLOP/s per process"),
          "metrics.jsonl: model_tflops and mfu = model_tflops / logger.peak_tflops on every step line");
    free(log);
    rc = test_sh("%s pretrain logger.peak_tflops=-1 train.train_iters=1 logger.output_dir=%s/x > %s/log2 2>&1",
                 test_dfm_bin(), dir, dir);
    log = test_read_file(test_path("%s/log2", dir), NULL);
    CHECK(rc != 0 && log && strstr(log, "logger.peak_tflops"), "a negative peak is refused");
    free(log);
    test_rmtree(dir);
    free(dir);
    return test_finish();
}
