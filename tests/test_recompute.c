/* Activation recomputation (wan_set_recompute_mode / dit_set_recompute_mode; Megatron's model.recompute_*,
 * Automodel's fsdp.activation_checkpointing): the same outputs and bit-identical gradients with no block, every
 * block, the first blocks, checkpoints of k blocks (full/uniform/k, a short last one included) or only the core
 * attention (selective) recomputed, over two micro-batches of different shapes with masked text; smaller
 * activation arenas (bytes printed); bad counts refused; dfm pretrain and dfm finetune log exactly the losses of
 * runs without it, in one process and on 2 ranks under TP, TP+SP, PP and CP; bad config values refused with their
 * numbers. */
#include "dfm/common.h"
#include "dfm/dit.h"
#include "dfm/wan.h"
#include "test.h"
#include "test_fs.h"
#include "test_run.h"

#include <math.h>
#include <string.h>
#include <unistd.h>

static char *dir;
static const char *bin;
static uint64_t rng_start; /* every run_model draws the same parameters and inputs */

typedef struct {
    float *out1, *out2, *grads;
    size_t bytes;
} result;

/* Random parameters (norm weights around 1), then two forward+backward passes accumulating gradients: the max
 * shape with every text length full, and a smaller one with masked text (another patch grid: new RoPE tables). */
static result run_model_mode(const wan_config *c, int recompute, int chunk, int selective) {
    wan_model m;
    char err[256];
    wan_shape mx = {2, 2, 4, 6, 5}, s2 = {1, 1, 4, 4, 5};
    wan_create_weights_only(&m, c);
    if (wan_set_recompute_mode(&m, recompute, chunk, selective, err, sizeof err) != 0)
        dfm_die("wan_set_recompute_mode: %s", err);
    if (wan_prepare(&m, &mx, err, sizeof err) != 0) dfm_die("wan_prepare: %s", err);
    test_rng_state_ = rng_start;
    test_fill_randn(m.params, m.table.total, 0.3f);
    for (int i = 0; i < m.table.n; i++) {
        const param_entry *e = &m.table.e[i];
        if (strstr(e->name, "norm") && strstr(e->name, ".weight"))
            for (size_t j = 0; j < e->numel; j++) m.params[e->offset + j] += 1.0f;
    }
    wan_zero_grad(&m);
    result r;
    const wan_shape *shapes[2] = {&mx, &s2};
    for (int k = 0; k < 2; k++) {
        const wan_shape *s = shapes[k];
        size_t nx = (size_t)s->batch * c->in_channels * s->frames * s->height * s->width;
        size_t nt = (size_t)s->batch * s->text_len * c->text_dim;
        float *x = xalloc_floats(nx), *text = xalloc_floats(nt), *dout = xalloc_floats(nx), t[2] = {250.0f, 875.5f};
        float *out = xalloc_floats(nx);
        test_fill_randn(x, nx, 1.0f);
        test_fill_randn(text, nt, 1.0f);
        test_fill_randn(dout, nx, 1.0f);
        int lens[2] = {5, 5}, masked[1] = {3};
        wan_forward(&m, out, x, t, text, k ? masked : lens, s);
        wan_backward(&m, dout);
        if (k)
            r.out2 = out;
        else
            r.out1 = out;
        free(x), free(text), free(dout);
    }
    r.grads = xalloc_floats(m.table.total);
    memcpy(r.grads, m.grads, m.table.total * sizeof(float));
    r.bytes = wan_activation_bytes(&m);
    wan_free(&m);
    return r;
}

static result run_model(const wan_config *c, int recompute) {
    return run_model_mode(c, recompute, 1, 0);
}

static void free_result(result *r) {
    free(r->out1), free(r->out2), free(r->grads);
}

static void model_level(void) {
    wan_config c;
    wan_config_named(&c, "wan_tiny");
    for (int layers = 2; layers <= 3; layers++) {
        c.num_layers = layers;
        param_table t = {0};
        wan_build_table(&t, &c);
        const size_t np = t.total, nx1 = 2 * 4 * 2 * 4 * 6, nx2 = 1 * 4 * 1 * 4 * 4;
        param_table_free(&t);
        result base = run_model(&c, 0);
        const int cases[] = {layers, 1, layers - 1};
        size_t prev = base.bytes;
        for (int k = 0; k < 3; k++) {
            result r = run_model(&c, cases[k]);
            CHECK(memcmp(r.out1, base.out1, nx1 * sizeof(float)) == 0 &&
                      memcmp(r.out2, base.out2, nx2 * sizeof(float)) == 0,
                  "%d blocks, %d recomputed: outputs equal those without recompute", layers, cases[k]);
            CHECK(memcmp(r.grads, base.grads, np * sizeof(float)) == 0,
                  "%d blocks, %d recomputed: gradients over two micro-batches bit-identical (rel %.3g)", layers,
                  cases[k], test_rel_err(r.grads, base.grads, np));
            if (k == 0)
                CHECK(r.bytes < base.bytes, "%d blocks, all recomputed: activations %zu bytes < %zu without", layers,
                      r.bytes, base.bytes);
            else if (cases[k] > 1)
                CHECK(r.bytes < base.bytes && r.bytes > prev,
                      "%d blocks, %d recomputed: activations %zu bytes, between all (%zu) and none (%zu)", layers,
                      cases[k], r.bytes, prev, base.bytes);
            else
                CHECK(r.bytes == base.bytes, "one block recomputed holds the same arena (its own slot): %zu bytes",
                      r.bytes);
            if (k == 0) prev = r.bytes;
            free_result(&r);
        }
        free_result(&base);
    }

    /* bad counts, and a count after the arena is sized, are refused */
    c.num_layers = 2;
    wan_model m;
    char err[256];
    wan_create_weights_only(&m, &c);
    CHECK(wan_set_recompute(&m, 3, err, sizeof err) != 0 && strstr(err, "3 blocks") && strstr(err, "0..2"),
          "3 of 2 blocks refused: %s", err);
    CHECK(wan_set_recompute(&m, -1, err, sizeof err) != 0 && strstr(err, "-1"), "-1 blocks refused: %s", err);
    wan_shape mx = {1, 1, 2, 2, 2};
    CHECK(wan_prepare(&m, &mx, err, sizeof err) == 0 && wan_set_recompute(&m, 1, err, sizeof err) != 0 &&
              strstr(err, "wan_prepare"),
          "recompute set after wan_prepare refused: %s", err);
    wan_free(&m);
}

/* Selective recomputation (the core attention's outputs shared, the attention kernels run again on the kept
 * inputs) and full/uniform checkpoints of k blocks (k shared slots, a checkpoint's first input kept): the same
 * outputs, bit-identical gradients, and the activation bytes of each, on a 3-block Wan. */
static void wan_modes(void) {
    wan_config c;
    wan_config_named(&c, "wan_tiny");
    c.num_layers = 3;
    param_table t = {0};
    wan_build_table(&t, &c);
    const size_t np = t.total, nx1 = 2 * 4 * 2 * 4 * 6, nx2 = 1 * 4 * 1 * 4 * 4;
    param_table_free(&t);
    result base = run_model_mode(&c, 0, 1, 0);
    const struct {
        int blocks, chunk, sel;
        const char *what;
    } cases[] = {{0, 1, 1, "selective"},
                 {3, 1, 0, "full/uniform/1"},
                 {3, 2, 0, "full/uniform/2 (checkpoints of 2 + 1 blocks)"},
                 {3, 3, 0, "full/uniform/3 (one checkpoint of every block)"}};
    size_t bytes[4];
    for (int k = 0; k < 4; k++) {
        result r = run_model_mode(&c, cases[k].blocks, cases[k].chunk, cases[k].sel);
        CHECK(memcmp(r.out1, base.out1, nx1 * sizeof(float)) == 0 &&
                  memcmp(r.out2, base.out2, nx2 * sizeof(float)) == 0 &&
                  memcmp(r.grads, base.grads, np * sizeof(float)) == 0,
              "Wan, 3 blocks, %s: outputs equal, gradients over two micro-batches bit-identical (rel %.3g)",
              cases[k].what, test_rel_err(r.grads, base.grads, np));
        bytes[k] = r.bytes;
        free_result(&r);
    }
    printf("# Wan 3 blocks activation bytes: none %zu, selective %zu, uniform/1 %zu, uniform/2 %zu, uniform/3 %zu\n",
           base.bytes, bytes[0], bytes[1], bytes[2], bytes[3]);
    CHECK(bytes[0] < base.bytes, "Wan selective: %zu activation bytes < %zu without", bytes[0], base.bytes);
    CHECK(bytes[1] < bytes[2] && bytes[2] < base.bytes,
          "Wan uniform/2: %zu activation bytes, between uniform/1 (%zu) and none (%zu)", bytes[2], bytes[1],
          base.bytes);
    CHECK(bytes[3] == base.bytes, "Wan uniform/3 over 3 blocks: 3 slots hold every block (%zu = %zu bytes)", bytes[3],
          base.bytes);
    free_result(&base);

    wan_model m;
    char err[256];
    wan_create_weights_only(&m, &c);
    CHECK(wan_set_recompute_mode(&m, 3, 4, 0, err, sizeof err) != 0 && strstr(err, "4 blocks") && strstr(err, "1..3"),
          "Wan checkpoints of 4 of 3 blocks refused: %s", err);
    CHECK(wan_set_recompute_mode(&m, 1, 1, 1, err, sizeof err) != 0 && strstr(err, "selective"),
          "Wan selective with blocks fully recomputed refused: %s", err);
    wan_free(&m);
}

/* One DiT over two micro-batches (the second smaller) with the given recomputation. */
static result run_dit(const dit_config *c, int blocks, int chunk, int selective) {
    dit_model m;
    char err[256];
    dit_create(&m, c, 3);
    if (dit_set_recompute_mode(&m, blocks, chunk, selective, err, sizeof err) != 0)
        dfm_die("dit_set_recompute_mode: %s", err);
    test_rng_state_ = rng_start;
    test_fill_randn(m.params, m.table.total, 0.3f);
    dit_zero_grad(&m);
    size_t nx = (size_t)3 * c->in_channels * c->image_size * c->image_size;
    float *x = xalloc_floats(nx), *dout = xalloc_floats(nx), t[3] = {10.0f, 500.0f, 990.0f};
    int labels[3] = {1, c->num_classes, 0};
    result r;
    r.out1 = xalloc_floats(2 * nx);
    r.out2 = NULL;
    for (int pass = 0; pass < 2; pass++) {
        const int B = pass ? 2 : 3;
        test_fill_randn(x, nx, 1.0f);
        test_fill_randn(dout, nx, 1.0f);
        dit_forward(&m, r.out1 + pass * nx, x, t, labels, B);
        dit_backward(&m, dout, B);
    }
    r.grads = xalloc_floats(m.table.total);
    memcpy(r.grads, m.grads, m.table.total * sizeof(float));
    r.bytes = dit_activation_bytes(&m);
    free(x), free(dout);
    dit_free(&m);
    return r;
}

/* DiT, 4 and 3 blocks: selective and full/uniform/2 (3 blocks: checkpoints of 2 + 1) against no recompute. */
static void dit_modes(void) {
    for (int layers = 4; layers >= 3; layers--) {
        dit_config c;
        dit_config_named(&c, "tiny");
        c.num_layers = layers;
        dit_model probe;
        dit_create(&probe, &c, 3);
        const size_t np = probe.table.total, nx = (size_t)3 * c.in_channels * c.image_size * c.image_size;
        char err[256];
        CHECK(dit_set_recompute_mode(&probe, layers, layers + 1, 0, err, sizeof err) != 0 && strstr(err, "blocks"),
              "DiT checkpoints of %d of %d blocks refused: %s", layers + 1, layers, err);
        CHECK(dit_set_recompute_mode(&probe, 2, 1, 1, err, sizeof err) != 0 && strstr(err, "selective"),
              "DiT selective with 2 blocks fully recomputed refused: %s", err);
        dit_free(&probe);
        result base = run_dit(&c, 0, 1, 0), sel = run_dit(&c, 0, 1, 1), u1 = run_dit(&c, layers, 1, 0),
               u2 = run_dit(&c, layers, 2, 0);
        const result *rs[3] = {&sel, &u1, &u2};
        const char *what[3] = {"selective", "full/uniform/1", "full/uniform/2"};
        for (int k = 0; k < 3; k++)
            CHECK(memcmp(rs[k]->out1, base.out1, (nx + nx / 3 * 2) * sizeof(float)) == 0 &&
                      memcmp(rs[k]->grads, base.grads, np * sizeof(float)) == 0,
                  "DiT, %d blocks, %s: outputs equal, gradients bit-identical (rel %.3g)", layers, what[k],
                  test_rel_err(rs[k]->grads, base.grads, np));
        printf("# DiT %d blocks activation bytes: none %zu, selective %zu, uniform/1 %zu, uniform/2 %zu\n", layers,
               base.bytes, sel.bytes, u1.bytes, u2.bytes);
        CHECK(sel.bytes < base.bytes && u1.bytes < u2.bytes && u2.bytes < base.bytes,
              "DiT %d blocks: selective %zu < none %zu; uniform/1 %zu < uniform/2 %zu < none", layers, sel.bytes,
              base.bytes, u1.bytes, u2.bytes);
        free_result(&base), free_result(&sel), free_result(&u1), free_result(&u2);
    }
}

/* DiT: the same over two micro-batches (the second smaller), every block, the first one or two of three. The arena
 * is reallocated by dit_set_recompute on a created model. */
static void dit_level(void) {
    dit_config c;
    dit_config_named(&c, "tiny");
    c.num_layers = 3;
    size_t bytes[4] = {0}, np = 0, nx = 0;
    float *grads[4] = {0}, *outs[4] = {0};
    const int cases[4] = {0, 3, 1, 2};
    for (int k = 0; k < 4; k++) {
        dit_model m;
        char err[256];
        dit_create(&m, &c, 3);
        if (dit_set_recompute(&m, cases[k], err, sizeof err) != 0) dfm_die("dit_set_recompute: %s", err);
        test_rng_state_ = rng_start;
        test_fill_randn(m.params, m.table.total, 0.3f);
        dit_zero_grad(&m);
        np = m.table.total;
        nx = (size_t)3 * c.in_channels * c.image_size * c.image_size;
        float *x = xalloc_floats(nx), *dout = xalloc_floats(nx), t[3] = {10.0f, 500.0f, 990.0f};
        int labels[3] = {1, c.num_classes, 0};
        outs[k] = xalloc_floats(2 * nx);
        for (int pass = 0; pass < 2; pass++) {
            const int B = pass ? 2 : 3;
            test_fill_randn(x, nx, 1.0f);
            test_fill_randn(dout, nx, 1.0f);
            dit_forward(&m, outs[k] + pass * nx, x, t, labels, B);
            dit_backward(&m, dout, B);
        }
        grads[k] = xalloc_floats(np);
        memcpy(grads[k], m.grads, np * sizeof(float));
        bytes[k] = dit_activation_bytes(&m);
        if (k == 1)
            CHECK(dit_set_recompute(&m, 4, err, sizeof err) != 0 && strstr(err, "4 blocks") && strstr(err, "0..3"),
                  "DiT: 4 of 3 blocks refused: %s", err);
        free(x), free(dout);
        dit_free(&m);
    }
    for (int k = 1; k < 4; k++) {
        CHECK(memcmp(outs[k], outs[0], (nx + nx / 3 * 2) * sizeof(float)) == 0 &&
                  memcmp(grads[k], grads[0], np * sizeof(float)) == 0,
              "DiT, %d of 3 blocks recomputed: outputs equal, gradients bit-identical (rel %.3g)", cases[k],
              test_rel_err(grads[k], grads[0], np));
    }
    CHECK(bytes[1] < bytes[3] && bytes[3] < bytes[0] && bytes[2] == bytes[0],
          "DiT activations: %zu bytes with 3 recomputed < %zu with 2 < %zu without (= %zu with 1)", bytes[1], bytes[3],
          bytes[0], bytes[2]);
    for (int k = 0; k < 4; k++) free(grads[k]), free(outs[k]);
}

static const char *SMALL =
    "--recipe wan_tiny model.num_layers=2 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=64 "
    "model.image_size=8 model.num_frames=2 dataset.max_samples=16 dataset.val_samples=4 dataset.num_workers=0 "
    "train.global_batch_size=4 train.micro_batch_size=2 train.train_iters=3 train.eval_interval=3 "
    "train.eval_iters=1 logger.log_interval=1 checkpoint.save=null optimizer.lr=3e-3 scheduler.lr_warmup_iters=1";

/* Activation MB from the start-up memory line of a run's log (-1 if absent). */
static double activation_mb(const char *run) {
    char *log = test_read_file(test_path("%s/%s.log", dir, run), NULL);
    const char *p = log ? strstr(log, "activations ") : NULL;
    double mb = p ? atof(p + strlen("activations ")) : -1;
    free(log);
    return mb;
}

static int pretrain(const char *run, const char *extra) {
    return test_sh("%s pretrain %s logger.output_dir=%s/%s %s > %s/%s.log 2>&1", bin, SMALL, dir, run, extra, dir, run);
}

static void same_losses(const char *run, const char *base, const char *what) {
    double a[8] = {0}, b[8] = {0};
    int na = test_run_losses(test_path("%s/%s", dir, run), a, 7);
    int nb = test_run_losses(test_path("%s/%s", dir, base), b, 7);
    double worst = 0;
    for (int s = 1; s <= 3; s++) worst = fmax(worst, fabs(a[s] - b[s]));
    CHECK(na == 3 && nb == 3 && worst == 0, "%s: the 3 logged losses equal the run's without (worst %.3g; %d, %d)",
          what, worst, na, nb);
}

static void pretrain_runs(void) {
    int rc = pretrain("none", "");
    rc |= pretrain("uniform",
                   "model.recompute_granularity=full model.recompute_method=uniform model.recompute_num_layers=1");
    rc |=
        pretrain("block", "model.recompute_granularity=full model.recompute_method=block model.recompute_num_layers=1");
    rc |= test_sh("mpirun --oversubscribe -np 2 %s pretrain %s logger.output_dir=%s/dp2 "
                  "ddp.data_parallel_sharding_strategy=optim_grads_params model.recompute_granularity=full "
                  "model.recompute_method=block model.recompute_num_layers=2 > %s/dp2.log 2>&1",
                  bin, SMALL, dir, dir);
    CHECK(rc == 0, "dfm pretrain runs without recompute, full/uniform/1, full/block/1 and DP=2 sharded full/block/2");
    same_losses("uniform", "none", "full/uniform/1 (every block recomputed)");
    same_losses("block", "none", "full/block/1 (the first block recomputed)");
    same_losses("dp2", "none", "2 ranks, parameters sharded (gathered again for the recompute), full/block/2");
    rc = pretrain("sel", "model.recompute_granularity=selective");
    rc |= pretrain("none3", "model.num_layers=3");
    rc |= pretrain("u2", "model.num_layers=3 model.recompute_granularity=full model.recompute_method=uniform "
                         "model.recompute_num_layers=2");
    rc |= test_sh("mpirun --oversubscribe -np 2 %s pretrain %s logger.output_dir=%s/dp2u2 model.num_layers=3 "
                  "ddp.data_parallel_sharding_strategy=optim_grads_params model.recompute_granularity=full "
                  "model.recompute_method=uniform model.recompute_num_layers=2 > %s/dp2u2.log 2>&1",
                  bin, SMALL, dir, dir);
    CHECK(rc == 0, "dfm pretrain runs with selective, 3 layers without and with full/uniform/2, DP=2 sharded "
                   "full/uniform/2");
    same_losses("sel", "none", "selective (core attention recomputed)");
    same_losses("u2", "none3", "3 layers, full/uniform/2 (checkpoints of 2 + 1 blocks)");
    same_losses("dp2u2", "none3", "2 ranks, parameters sharded (gathered again per recomputed block), uniform/2");
    /* the start-up line's 0.1 MB steps are coarser than selective's saving on this model (the exact bytes are
     * compared at model level above): no more MB than without, and the line says what is recomputed */
    double as = activation_mb("sel"), a3 = activation_mb("none3"), au2 = activation_mb("u2");
    char *sel_log = test_read_file(test_path("%s/sel.log", dir), NULL);
    CHECK(as > 0 && as <= activation_mb("none") && sel_log &&
              strstr(sel_log, "selective: every block's core attention"),
          "activation MB: selective %.1f <= %.1f without, and the start-up line says so", as, activation_mb("none"));
    free(sel_log);
    CHECK(au2 > 0 && au2 < a3, "activation MB: uniform/2 %.1f < %.1f without (3 layers)", au2, a3);
    /* the same block forward under every layout: the recompute re-issues its collectives on every rank */
    const struct {
        const char *name, *layout;
    } multi[] = {{"tp2", "model.tensor_model_parallel_size=2"},
                 {"pp2", "model.pipeline_model_parallel_size=2 model.num_layers=4"},
                 {"cp2", "model.context_parallel_size=2"},
                 {"sp2", "model.tensor_model_parallel_size=2 model.sequence_parallel=true"}};
    const char *modes[][2] = {
        {"u2", "model.recompute_granularity=full model.recompute_method=uniform model.recompute_num_layers=2"},
        {"sel", "model.recompute_granularity=selective"}};
    for (size_t k = 0; k < sizeof multi / sizeof multi[0]; k++) {
        char base[64];
        snprintf(base, sizeof base, "%s_none", multi[k].name);
        rc = test_sh("mpirun --oversubscribe -np 2 %s pretrain %s logger.output_dir=%s/%s model.num_layers=3 %s "
                     "> %s/%s.log 2>&1",
                     bin, SMALL, dir, base, multi[k].layout, dir, base);
        for (size_t md = 0; md < 2; md++) {
            char run[64];
            snprintf(run, sizeof run, "%s_%s", multi[k].name, modes[md][0]);
            rc |= test_sh("mpirun --oversubscribe -np 2 %s pretrain %s logger.output_dir=%s/%s model.num_layers=3 %s "
                          "%s > %s/%s.log 2>&1",
                          bin, SMALL, dir, run, multi[k].layout, modes[md][1], dir, run);
            CHECK(rc == 0, "2 ranks, %s: runs without and with %s", multi[k].layout, modes[md][1]);
            char what[160];
            snprintf(what, sizeof what, "2 ranks, %s, %s", multi[k].layout, modes[md][0]);
            same_losses(run, base, what);
        }
    }
    double a0 = activation_mb("none"), a1 = activation_mb("uniform");
    CHECK(a0 > 0 && a1 > 0 && a1 < a0, "the start-up line reports fewer activation MB: %.2f with, %.2f without", a1,
          a0);
    const char *dit = "--recipe dit_fashion_mnist model.num_layers=2 model.hidden_size=32 model.num_attention_heads=2 "
                      "model.ffn_hidden_size=64 model.patch_size=4 train.train_iters=3 train.global_batch_size=8 "
                      "train.micro_batch_size=4 train.eval_interval=3 train.eval_iters=1 dataset.val_samples=16 "
                      "dataset.num_workers=0 logger.log_interval=1 checkpoint.save=null";
    rc = test_sh("%s pretrain %s logger.output_dir=%s/dit0 > %s/dit0.log 2>&1", bin, dit, dir, dir);
    rc |= test_sh("%s pretrain %s logger.output_dir=%s/dit1 model.recompute_granularity=full "
                  "model.recompute_method=uniform model.recompute_num_layers=1 > %s/dit1.log 2>&1",
                  bin, dit, dir, dir);
    CHECK(rc == 0, "dfm pretrain --recipe dit_fashion_mnist runs with and without full/uniform/1");
    same_losses("dit1", "dit0", "DiT full/uniform/1");
    a0 = activation_mb("dit0"), a1 = activation_mb("dit1");
    CHECK(a0 > 0 && a1 > 0 && a1 < a0, "DiT: %.2f activation MB with recompute, %.2f without", a1, a0);
    /* DiT on 2 ranks, 3 blocks: TP2 with checkpoints of 2 + 1 blocks, CP2 with selective (the ring's passes re-run) */
    const char *dit2[][3] = {
        {"dtp2", "model.tensor_model_parallel_size=2",
         "model.recompute_granularity=full model.recompute_method=uniform model.recompute_num_layers=2"},
        {"dcp2", "model.context_parallel_size=2", "model.recompute_granularity=selective"}};
    for (int k = 0; k < 2; k++) {
        rc = test_sh("mpirun --oversubscribe -np 2 %s pretrain %s model.num_layers=3 %s logger.output_dir=%s/%s_0 > "
                     "%s/%s_0.log 2>&1",
                     bin, dit, dit2[k][1], dir, dit2[k][0], dir, dit2[k][0]);
        rc |= test_sh("mpirun --oversubscribe -np 2 %s pretrain %s model.num_layers=3 %s %s logger.output_dir=%s/%s_1 "
                      "> %s/%s_1.log 2>&1",
                      bin, dit, dit2[k][1], dit2[k][2], dir, dit2[k][0], dir, dit2[k][0]);
        CHECK(rc == 0, "DiT, 2 ranks, %s: runs without and with %s", dit2[k][1], dit2[k][2]);
        char run[64], base[64], what[200];
        snprintf(run, sizeof run, "%s_1", dit2[k][0]);
        snprintf(base, sizeof base, "%s_0", dit2[k][0]);
        snprintf(what, sizeof what, "DiT, 2 ranks, %s, %s", dit2[k][1], dit2[k][2]);
        same_losses(run, base, what);
    }

    /* refused, naming the values */
    const char *bad[][2] = {
        {"model.recompute_granularity=selective model.recompute_method=uniform", "selective"},
        {"model.recompute_granularity=selective model.recompute_num_layers=1", "recompute_num_layers"},
        {"model.recompute_granularity=full model.recompute_method=uniform model.recompute_num_layers=3",
         "recompute_num_layers = 3"},
        {"model.recompute_granularity=full model.recompute_method=block model.recompute_num_layers=3", "3"},
        {"model.recompute_granularity=full model.recompute_method=block model.recompute_num_layers=0", "0"},
        {"model.recompute_granularity=full model.recompute_method=uniform model.recompute_num_layers=0", "0"},
        {"model.recompute_granularity=full", "recompute_method"},
        {"model.recompute_granularity=full model.recompute_method=block", "recompute_num_layers"},
        {"model.recompute_method=block model.recompute_num_layers=1", "recompute_granularity"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        char *out = NULL, cmd[2048];
        snprintf(cmd, sizeof cmd, "%s pretrain %s logger.output_dir=%s/bad %s", bin, SMALL, dir, bad[k][0]);
        rc = test_capture(cmd, &out);
        CHECK(rc != 0 && out && strstr(out, bad[k][1]) && strstr(out, "recompute"), "%s is refused: %.300s", bad[k][0],
              out ? out : "");
        free(out);
    }
    char *out = NULL, cmd[2048];
    snprintf(cmd, sizeof cmd,
             "%s pretrain %s logger.output_dir=%s/bad model.recompute_num_layers=3 "
             "model.recompute_granularity=full model.recompute_method=block",
             bin, SMALL, dir);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && out && strstr(out, "3") && strstr(out, "2"), "block with 3 of 2 layers names both numbers: %.300s",
          out ? out : "");
    free(out);
}

static void finetune_runs(void) {
    int rc = test_sh("cd %s && %s data prepare --video-clips --out en --n 8 --frames 2 --size 8 --text-dim 32 > p.log "
                     "2>&1 && %s data convert --from en --to st > c.log 2>&1 && %s pretrain %s train.train_iters=1 "
                     "logger.output_dir=base checkpoint.save=base/ck > b.log 2>&1 && %s export --checkpoint base/ck "
                     "--out hf > e.log 2>&1",
                     dir, bin, bin, bin, SMALL, bin);
    CHECK(rc == 0, "fixtures: 8 pre-encoded clips, a tiny Wan exported as a diffusers folder");
    const char *ft = "%s finetune -c recipes/automodel/wan_tiny_finetune.yaml "
                     "--model.pretrained_model_name_or_path=%s/hf --data.dataloader.meta_folder=%s/st "
                     "--checkpoint.checkpoint_dir=%s/%s --checkpoint.enabled=false --step_scheduler.max_steps=3 "
                     "--step_scheduler.global_batch_size=4 --step_scheduler.local_batch_size=2 "
                     "--step_scheduler.log_every=1 --fsdp.activation_checkpointing=%s > %s/%s.log 2>&1";
    rc = test_sh(ft, bin, dir, dir, dir, "ftoff", "false", dir, "ftoff");
    rc |= test_sh(ft, bin, dir, dir, dir, "fton", "true", dir, "fton");
    CHECK(rc == 0, "dfm finetune runs with fsdp.activation_checkpointing false and true");
    same_losses("fton", "ftoff", "dfm finetune --fsdp.activation_checkpointing=true");
    double a0 = activation_mb("ftoff"), a1 = activation_mb("fton");
    CHECK(a0 > 0 && a1 > 0 && a1 < a0, "fsdp.activation_checkpointing: %.2f activation MB, %.2f without", a1, a0);
    char *out = NULL, cmd[2048];
    snprintf(cmd, sizeof cmd,
             "%s finetune -c recipes/automodel/wan_tiny_finetune.yaml --model.pretrained_model_name_or_path=%s/hf "
             "--data.dataloader.meta_folder=%s/st --checkpoint.checkpoint_dir=%s/no --fsdp.cpu_offload=true",
             bin, dir, dir, dir);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && out && strstr(out, "cpu_offload") && strstr(out, "no device memory"),
          "fsdp.cpu_offload is refused with the reason: %.300s", out ? out : "");
    free(out);
}

int main(void) {
    static char abs_bin[2048], cwd[800];
    snprintf(abs_bin, sizeof abs_bin, "%s/%s", getcwd(cwd, sizeof cwd) ? cwd : ".", test_dfm_bin());
    bin = abs_bin; /* the fixtures are made in the temporary folder */
    dir = test_mkdtemp();
    test_mpi_env();
    test_seed();
    rng_start = test_rng_state_;
    model_level();
    wan_modes();
    dit_level();
    dit_modes();
    pretrain_runs();
    finetune_runs();
    test_rmtree(dir);
    free(dir);
    return test_finish();
}
