/* Many processes (mpirun --oversubscribe on 2 cores): DDP and every sharding strategy against one process,
 * hybrid sharding (HSDP: replica groups that each shard), checkpoints across layouts, dfm finetune's
 * fsdp.dp_replicate_size, and failures that end the whole job. */
#include "dfm/checkpoint.h"
#include "dfm/dit.h"
#include "test.h"
#include "test_fs.h"
#include "test_run.h"

#include <jansson.h>
#include <math.h>
#include <time.h>

static const char *TINY =
    "model.num_layers=2 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=128 "
    "model.patch_size=7 train.global_batch_size=8 train.micro_batch_size=2 train.eval_interval=100 "
    "train.eval_iters=1 dataset.val_samples=16 dataset.num_workers=0 logger.log_interval=1 optimizer.lr=3e-3 "
    "scheduler.lr_warmup_iters=2 checkpoint.most_recent_k=4 train.train_iters=10 checkpoint.save_interval=5";

static const char *strategies[] = {"no_shard", "optim", "optim_grads", "optim_grads_params"};
static char *dir;
static const char *bin;

/* Worst relative difference of the losses of steps [from, to] between two runs (inf if any is missing). */
static double loss_diff(const char *a, const char *b, int from, int to) {
    double la[64], lb[64];
    for (int i = 0; i < 64; i++) la[i] = lb[i] = NAN;
    test_run_losses(a, la, 63);
    test_run_losses(b, lb, 63);
    double worst = 0;
    for (int s = from; s <= to; s++) {
        double d = fabs(la[s] - lb[s]) / fabs(lb[s]);
        if (!(d <= worst)) worst = isnan(d) ? INFINITY : d;
    }
    return worst;
}

/* Worst relative difference of a kind of checkpoint tensor ("model", "ema") between two iteration folders,
 * each read whole from whatever form it was saved in. */
static double weights_diff(const char *a, const char *b, const char *kind) {
    dit_config c;
    dit_config_named(&c, "tiny");
    c.num_layers = 2, c.hidden_size = 32, c.num_heads = 2, c.ffn_hidden_size = 128, c.patch_size = 7;
    c.in_channels = 1, c.out_channels = 1, c.image_size = 28, c.num_classes = 10;
    dit_model m;
    dit_create(&m, &c, 1);
    size_t n = m.table.total;
    float *wa = xalloc_floats(n), *wb = xalloc_floats(n);
    char err[1024];
    double d = INFINITY;
    if (ckpt_read_range(a, kind, &m.table, 0, n, wa, err, sizeof err) == 0 &&
        ckpt_read_range(b, kind, &m.table, 0, n, wb, err, sizeof err) == 0)
        d = test_rel_err(wa, wb, n);
    else
        printf("# %s\n", err);
    free(wa), free(wb);
    dit_free(&m);
    return d;
}

static int train(int np, const char *name, const char *extra) {
    char cmd[4096];
    if (np > 0)
        snprintf(cmd, sizeof cmd,
                 "mpirun --oversubscribe -np %d %s pretrain %s logger.output_dir=%s/%s "
                 "checkpoint.save=%s/%s/ck %s > %s/%s.log 2>&1",
                 np, bin, TINY, dir, name, dir, name, extra, dir, name);
    else
        snprintf(cmd, sizeof cmd, "%s pretrain %s logger.output_dir=%s/%s checkpoint.save=%s/%s/ck %s > %s/%s.log 2>&1",
                 bin, TINY, dir, name, dir, name, extra, dir, name);
    int rc = test_sh("%s", cmd);
    if (rc != 0) {
        printf("# '%s' failed (%d); its log:\n", cmd, rc);
        test_sh("tail -20 %s/%s.log | sed 's/^/#   /'", dir, name);
    }
    return rc;
}

static void same_as_one_process(void) {
    const char *one = test_path("%s/one", dir);
    char one_run[1024];
    snprintf(one_run, sizeof one_run, "%s", one);
    CHECK(train(0, "one", "") == 0, "one process trains");
    int nps[] = {2, 4};
    for (int k = 0; k < 2; k++)
        for (int s = 0; s < 4; s++) {
            char name[64], extra[256];
            snprintf(name, sizeof name, "np%d_%s", nps[k], strategies[s]);
            snprintf(extra, sizeof extra, "ddp.data_parallel_sharding_strategy=%s", strategies[s]);
            int rc = train(nps[k], name, extra);
            char run[1024];
            snprintf(run, sizeof run, "%s/%s", dir, name);
            double dl = rc ? INFINITY : loss_diff(run, one_run, 1, 10);
            double dw = rc ? INFINITY
                           : weights_diff(test_path("%s/ck/iter_0000010", run),
                                          test_path("%s/ck/iter_0000010", one_run), "model");
            double de = rc ? INFINITY
                           : weights_diff(test_path("%s/ck/iter_0000010", run),
                                          test_path("%s/ck/iter_0000010", one_run), "ema");
            CHECK(dl <= 1e-6 && dw <= 1e-6 && de <= 1e-6,
                  "DP=%d %s vs one process, 10 steps: losses rel %.2e, weights rel %.2e, EMA rel %.2e (tol 1e-6)",
                  nps[k], strategies[s], dl, dw, de);
        }
    /* one process with each sharding strategy (DP = 1): the engine's paths under the leak checker */
    for (int s = 1; s < 4; s++) {
        char name[64], extra[256];
        snprintf(name, sizeof name, "np1_%s", strategies[s]);
        snprintf(extra, sizeof extra, "ddp.data_parallel_sharding_strategy=%s", strategies[s]);
        int rc = train(0, name, extra);
        double dl = rc ? INFINITY : loss_diff(test_path("%s/%s", dir, name), one_run, 1, 10);
        CHECK(dl == 0, "one process with sharding %s: losses bit-identical to no_shard (rel %.2e)", strategies[s], dl);
    }
}

static void resume_across_layouts(void) {
    const char *saved = test_path("%s/np4_optim_grads_params/ck/iter_0000005", dir);
    struct stat sb;
    CHECK(stat(test_path("%s/shard_00003_of_00004.safetensors", saved), &sb) == 0,
          "DP=4 optim_grads_params saves one shard per rank");
    const char *layouts[][2] = {
        {"2", "no_shard"}, {"2", "optim_grads"}, {"0", "no_shard"}, {"0", "optim_grads_params"}};
    for (int k = 0; k < 4; k++) {
        char name[64], extra[1024];
        snprintf(name, sizeof name, "resume_np%s_%s", layouts[k][0], layouts[k][1]);
        snprintf(extra, sizeof extra, "ddp.data_parallel_sharding_strategy=%s checkpoint.load=%s", layouts[k][1],
                 saved);
        int rc = train(atoi(layouts[k][0]), name, extra);
        char run[1024];
        snprintf(run, sizeof run, "%s/%s", dir, name);
        double dl = rc ? INFINITY : loss_diff(run, test_path("%s/one", dir), 6, 10);
        double dw =
            rc ? INFINITY
               : weights_diff(test_path("%s/ck/iter_0000010", run), test_path("%s/one/ck/iter_0000010", dir), "model");
        CHECK(dl <= 1e-6 && dw <= 1e-6,
              "saved with DP=4 optim_grads_params, resumed with %s %s: steps 6-10 losses rel %.2e, final weights rel "
              "%.2e vs the uninterrupted run",
              atoi(layouts[k][0]) ? "DP=2" : "one process,", layouts[k][1], dl, dw);
    }
    /* the sharded checkpoint feeds generate like a consolidated one */
    char *out = NULL;
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "%s generate --checkpoint %s/np4_optim_grads_params/ck --out %s/gen --per-class 1 --steps 2", bin, dir,
             dir);
    int rc = test_capture(cmd, &out);
    CHECK(rc == 0 && stat(test_path("%s/gen/grid.png", dir), &sb) == 0,
          "dfm generate reads a sharded checkpoint: %.200s", out);
    free(out);
    /* and export writes one consolidated diffusers folder, the same as from the one-process run */
    snprintf(cmd, sizeof cmd,
             "%s export --checkpoint %s/np4_optim_grads_params/ck --out %s/exp4 && %s export "
             "--checkpoint %s/one/ck --out %s/exp1",
             bin, dir, dir, bin, dir, dir);
    rc = test_capture(cmd, &out);
    CHECK(rc == 0 && test_sh("cmp -s %s/exp4/transformer/diffusion_pytorch_model.safetensors "
                             "%s/exp1/transformer/diffusion_pytorch_model.safetensors",
                             dir, dir) == 0,
          "dfm export of the DP=4 sharded checkpoint equals the one-process export byte for byte: %.300s", out);
    free(out);
}

/* Worst relative difference of the logged gradient norms of steps 1-10 between two runs (inf if any is missing). */
static double grad_norm_diff(const char *a, const char *b) {
    double v[2][11];
    const char *runs[2] = {a, b};
    for (int k = 0; k < 2; k++) {
        for (int s = 0; s < 11; s++) v[k][s] = NAN;
        char *text = test_read_file(test_path("%s/metrics.jsonl", runs[k]), NULL);
        for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n")) {
            json_t *o = json_loads(line, 0, NULL);
            json_t *st = json_object_get(o, "step"), *g = json_object_get(o, "grad_norm");
            if (json_is_integer(st) && json_is_number(g) && json_integer_value(st) >= 1 && json_integer_value(st) <= 10)
                v[k][json_integer_value(st)] = json_number_value(g);
            json_decref(o);
        }
        free(text);
    }
    double worst = 0;
    for (int s = 1; s <= 10; s++) {
        double d = fabs(v[0][s] - v[1][s]) / fabs(v[1][s]);
        if (!(d <= worst)) worst = isnan(d) ? INFINITY : d;
    }
    return worst;
}

/* HSDP: 4 ranks as 2 replica groups of 2 (ddp.num_distributed_optimizer_instances=2), each sharded strategy. */
static const char *HSDP = "ddp.num_distributed_optimizer_instances=2";

static void hybrid_same_as_one_process(void) {
    const char *one_run = test_path("%s/one", dir);
    char one[1024];
    snprintf(one, sizeof one, "%s", one_run);
    for (int s = 1; s < 4; s++) {
        char name[64], extra[256], run[1024];
        snprintf(name, sizeof name, "hsdp_%s", strategies[s]);
        snprintf(extra, sizeof extra, "ddp.data_parallel_sharding_strategy=%s %s", strategies[s], HSDP);
        int rc = train(4, name, extra);
        snprintf(run, sizeof run, "%s/%s", dir, name);
        double dl = rc ? INFINITY : loss_diff(run, one, 1, 10);
        const char *end = test_path("%s/ck/iter_0000010", run), *one_end = test_path("%s/ck/iter_0000010", one);
        double dw = rc ? INFINITY : weights_diff(end, one_end, "model");
        double de = rc ? INFINITY : weights_diff(end, one_end, "ema");
        double dg = rc ? INFINITY : grad_norm_diff(run, one); /* each shard counted once, not once per replica */
        CHECK(dl <= 1e-6 && dw <= 1e-6 && de <= 1e-6 && dg <= 1e-6,
              "HSDP 2 replicas x 2 shards (DP=4) %s vs one process, 10 steps: losses rel %.2e, weights rel %.2e, EMA "
              "rel %.2e, gradient norms rel %.2e (tol 1e-6)",
              strategies[s], dl, dw, de, dg);
    }
    /* two micro-batches per rank: every micro-batch reduce-scattered in its replica, the sum across replicas once */
    int rc = train(0, "one_gb16", "train.global_batch_size=16");
    rc |= train(4, "hsdp_gb16",
                "train.global_batch_size=16 ddp.data_parallel_sharding_strategy=optim_grads "
                "ddp.overlap_grad_reduce=false ddp.num_distributed_optimizer_instances=2");
    double dl = rc ? INFINITY : loss_diff(test_path("%s/hsdp_gb16", dir), test_path("%s/one_gb16", dir), 1, 10);
    double dw = rc ? INFINITY
                   : weights_diff(test_path("%s/hsdp_gb16/ck/iter_0000010", dir),
                                  test_path("%s/one_gb16/ck/iter_0000010", dir), "model");
    CHECK(dl <= 1e-6 && dw <= 1e-6,
          "HSDP 2 x 2 optim_grads, 2 micro-batches per rank, no overlap, vs one process: losses rel %.2e, weights rel "
          "%.2e (tol 1e-6)",
          dl, dw);
    /* one replica writes: shard files numbered within the shard group */
    const char *saved = test_path("%s/hsdp_optim_grads_params/ck/iter_0000005", dir);
    struct stat sb;
    int two = stat(test_path("%s/shard_00001_of_00002.safetensors", saved), &sb) == 0;
    int none_of4 = stat(test_path("%s/shard_00000_of_00004.safetensors", saved), &sb) != 0 &&
                   stat(test_path("%s/shard_00002_of_00002.safetensors", saved), &sb) != 0;
    CHECK(two && none_of4, "HSDP 2 x 2 saves one replica's 2 shards (shard_0000R_of_00002), not 4");
    /* per-rank parameters and optimizer state are those of sharding over the 2 ranks of a replica (FSDP over
     * DP=2; its gradients differ only by the second micro-batch's receive buffer) */
    const char *logs[2] = {"hsdp_optim_grads_params", "np2_optim_grads_params"};
    double mem[2][3] = {{-1, -1, -1}, {-2, -2, -2}};
    char *h = NULL;
    for (int k = 0; k < 2; k++) {
        char *text = test_read_file(test_path("%s/%s.log", dir, logs[k]), NULL);
        const char *m = text ? strstr(text, "memory per rank") : NULL;
        if (m)
            sscanf(m, "memory per rank: parameters %lf MB, gradients %lf MB, optimizer state + EMA %lf MB", &mem[k][0],
                   &mem[k][1], &mem[k][2]);
        if (k == 0)
            h = text;
        else
            free(text);
    }
    CHECK(h && strstr(h, "within 2 replica groups of 2 ranks") && mem[0][0] == mem[1][0] && mem[0][2] == mem[1][2],
          "the start-up lines name the replica groups; memory per rank as FSDP over 2 ranks: parameters %.1f / "
          "%.1f MB, optimizer state + EMA %.1f / %.1f MB",
          mem[0][0], mem[1][0], mem[0][2], mem[1][2]);
    free(h);
}

/* Saved under HSDP, resumed as one process and as FSDP over 2 ranks; saved under FSDP over 4, resumed under HSDP. */
static void hybrid_resume(void) {
    const char *cases[][4] = {
        {"hsdp_optim_grads_params", "0", "no_shard", ""},
        {"hsdp_optim_grads_params", "2", "optim_grads_params", ""},
        {"np4_optim_grads_params", "4", "optim", "ddp.num_distributed_optimizer_instances=2"},
    };
    for (int k = 0; k < 3; k++) {
        char name[64], extra[1024], run[1024];
        snprintf(name, sizeof name, "hresume_%d", k);
        snprintf(extra, sizeof extra, "ddp.data_parallel_sharding_strategy=%s %s checkpoint.load=%s/%s/ck/iter_0000005",
                 cases[k][2], cases[k][3], dir, cases[k][0]);
        int rc = train(atoi(cases[k][1]), name, extra);
        snprintf(run, sizeof run, "%s/%s", dir, name);
        double dl = rc ? INFINITY : loss_diff(run, test_path("%s/one", dir), 6, 10);
        const char *end = test_path("%s/ck/iter_0000010", run), *one_end = test_path("%s/one/ck/iter_0000010", dir);
        double dw = rc ? INFINITY : weights_diff(end, one_end, "model");
        double de = rc ? INFINITY : weights_diff(end, one_end, "ema");
        CHECK(dl <= 1e-6 && dw == 0 && de == 0,
              "saved with %s, resumed with %s %s: steps 6-10 losses rel %.2e, final weights rel %.2e, EMA rel %.2e "
              "vs the uninterrupted run (bit-identical)",
              k < 2 ? "HSDP 2 x 2 optim_grads_params" : "DP=4 optim_grads_params",
              !atoi(cases[k][1])       ? "one process,"
              : atoi(cases[k][1]) == 2 ? "DP=2"
                                       : "HSDP 2 x 2",
              cases[k][2], dl, dw, de);
    }
}

static void layout_errors(void) {
    char cmd[2048], *out = NULL;
    snprintf(cmd, sizeof cmd,
             "mpirun --oversubscribe -np 4 %s pretrain %s train.global_batch_size=6 logger.output_dir=%s/e", bin, TINY,
             dir);
    int rc = test_capture(cmd, &out), said = 0;
    for (const char *p = out; p && (p = strstr(p, "dfm: error:")); p++) said++;
    CHECK(rc != 0 &&
              strstr(out, "rank 0: train.global_batch_size 6 does not divide into data-parallel size 4 x "
                          "train.micro_batch_size 2") &&
              said == 1,
          "a global batch that DP x micro-batch does not divide is refused, naming the numbers, once (by rank 0; "
          "%d error lines from the 4 ranks)",
          said);
    free(out);
    snprintf(cmd, sizeof cmd,
             "mpirun --oversubscribe -np 3 %s pretrain %s model.tensor_model_parallel_size=2 "
             "logger.output_dir=%s/e",
             bin, TINY, dir);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "world size 3 (mpirun -np) is not divisible by tensor x context x pipeline parallel"),
          "a layout that does not divide the world is refused: %.300s", out);
    free(out);
    snprintf(cmd, sizeof cmd,
             "mpirun --oversubscribe -np 6 %s pretrain %s model.context_parallel_size=2 "
             "model.pipeline_model_parallel_size=2 logger.output_dir=%s/e",
             bin, TINY, dir);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "world size 6 (mpirun -np) is not divisible by tensor x context x pipeline parallel "
                                 "= 1 x 2 x 2 = 4"),
          "context x pipeline parallelism that does not divide the world is refused: %.300s", out);
    free(out);
    snprintf(cmd, sizeof cmd,
             "mpirun --oversubscribe -np 4 %s pretrain %s ddp.data_parallel_sharding_strategy=optim "
             "ddp.num_distributed_optimizer_instances=3 logger.output_dir=%s/e",
             bin, TINY, dir);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "ddp.num_distributed_optimizer_instances = 3") &&
              strstr(out, "does not divide the data-parallel size 4"),
          "HSDP replica groups that do not divide DP are refused, naming both: %.300s", out);
    free(out);
    snprintf(cmd, sizeof cmd,
             "mpirun --oversubscribe -np 2 %s pretrain %s ddp.num_distributed_optimizer_instances=2 "
             "logger.output_dir=%s/e",
             bin, TINY, dir);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "needs a sharded strategy"), "HSDP under no_shard is refused: %.300s", out);
    free(out);
}

/* dfm finetune with fsdp.dp_replicate_size 2 over 4 ranks (HSDP) equals one process: a tiny Wan exported as a
 * diffusers folder, fine-tuned on pre-encoded clips (as tests/test_finetune.c sets it up). */
static void finetune_hsdp(void) {
    int rc = test_sh("%s data prepare --video-clips --out %s/en --n 16 --frames 2 --size 8 --text-dim 32 > %s/p.log "
                     "2>&1 && %s data convert --from %s/en --to %s/st > %s/c.log 2>&1 && %s pretrain --recipe wan_tiny "
                     "model.num_layers=1 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=64 "
                     "model.image_size=8 model.num_frames=2 dataset.max_samples=32 dataset.val_samples=4 "
                     "train.global_batch_size=4 train.micro_batch_size=2 train.train_iters=1 logger.output_dir=%s/wb "
                     "checkpoint.save=%s/wb/ck > %s/b.log 2>&1 && %s export --checkpoint %s/wb/ck --out %s/hf > "
                     "%s/x.log 2>&1",
                     bin, dir, dir, bin, dir, dir, dir, bin, dir, dir, dir, bin, dir, dir, dir);
    CHECK(rc == 0, "finetune fixtures: pre-encoded clips and a tiny Wan diffusers folder");
    const char *runs[][2] = {{"", "ft1"}, {"mpirun --oversubscribe -np 4", "ft_hsdp"}};
    for (int k = 0; k < 2; k++)
        rc |= test_sh("%s %s finetune -c recipes/automodel/wan_tiny_finetune.yaml "
                      "--model.pretrained_model_name_or_path=%s/hf --data.dataloader.meta_folder=%s/st "
                      "--checkpoint.checkpoint_dir=%s/%s --optimizer.lr=2e-3 --step_scheduler.global_batch_size=8 "
                      "--step_scheduler.local_batch_size=1 --step_scheduler.max_steps=4 "
                      "--step_scheduler.ckpt_every_steps=4 --checkpoint.save_consolidated=false "
                      "--fsdp.dp_replicate_size %d > %s/%s.log 2>&1",
                      runs[k][0], bin, dir, dir, dir, runs[k][1], k ? 2 : 1, dir, runs[k][1]);
    double a[8] = {0}, b[8] = {0}, worst = 0;
    int n = test_run_losses(test_path("%s/ft1", dir), a, 7);
    test_run_losses(test_path("%s/ft_hsdp", dir), b, 7);
    for (int s = 1; s <= 4; s++) worst = fmax(worst, fabs(a[s] - b[s]) / fabs(a[s]));
    /* Automodel's layout: the newest step folder through LATEST */
    double dw = rc ? INFINITY
                   : test_wan_weights_diff(test_path("%s/ft_hsdp/LATEST", dir), "model",
                                           test_path("%s/ft1/LATEST", dir), "model");
    struct stat sb;
    int shards = stat(test_path("%s/ft_hsdp/LATEST/model/shard_00001_of_00002.safetensors", dir), &sb) == 0 &&
                 stat(test_path("%s/ft_hsdp/LATEST/optim/shard_00001_of_00002.safetensors", dir), &sb) == 0 &&
                 stat(test_path("%s/ft_hsdp/LATEST/model/shard_00000_of_00004.safetensors", dir), &sb) != 0;
    if (rc) test_sh("tail -5 %s/ft_hsdp.log | sed 's/^/#   /'", dir);
    char *log = test_read_file(test_path("%s/ft_hsdp.log", dir), NULL);
    int hybrid = log && strstr(log, "within 2 replica groups of 2 ranks");
    free(log);
    CHECK(rc == 0 && hybrid && shards && n == 4 && worst <= 1e-6 && dw <= 1e-6,
          "dfm finetune --fsdp.dp_replicate_size 2 under mpirun -np 4 (HSDP 2 x 2) vs one process, 4 steps: losses "
          "rel %.2e, weights rel %.2e (tol 1e-6); model/ and optim/ hold replica 0's 2 shards",
          worst, dw);
    char cmd[2048], *out = NULL;
    snprintf(cmd, sizeof cmd,
             "mpirun --oversubscribe -np 2 %s finetune -c recipes/automodel/wan_tiny_finetune.yaml "
             "--model.pretrained_model_name_or_path=%s/hf --data.dataloader.meta_folder=%s/st "
             "--checkpoint.checkpoint_dir=%s/ft_bad --fsdp.dp_replicate_size=4",
             bin, dir, dir, dir);
    rc = test_capture(cmd, &out);
    CHECK(rc != 0 && strstr(out, "fsdp.dp_replicate_size 4") && strstr(out, "data-parallel size 2"),
          "fsdp.dp_replicate_size that does not divide DP is refused, naming both: %.300s", out);
    free(out);
}

/* Start a long run under mpirun, wait for its first logged step, do `action` to one rank (a signal), and time how
 * long the job takes to end. */
static void fail_one_rank(const char *name, const char *signal, const char *extra, const char *expect) {
    const char *run = test_path("%s/%s", dir, name);
    char script[4096];
    snprintf(script, sizeof script,
             "mpirun --oversubscribe -np 2 %s pretrain %s train.train_iters=100000 %s logger.output_dir=%s "
             "checkpoint.save=null > %s.log 2>&1 & MP=$!; "
             "for i in $(seq 600); do [ -s %s/metrics.jsonl ] && break; sleep 0.1; done; "
             "P=$(pgrep -f '^[^ ]*dfm pretrain .*%s' | tail -1); kill -%s $P; S=$(date +%%s.%%N); "
             "wait $MP; RC=$?; E=$(date +%%s.%%N); echo $RC $S $E > %s.result; "
             "pkill -9 -f '^[^ ]*dfm pretrain .*%s' 2>/dev/null; true",
             bin, TINY, extra, run, run, run, run, signal, run, run);
    FILE *f = fopen(test_path("%s.sh", run), "w");
    if (f) fputs(script, f), fclose(f);
    test_sh("bash %s.sh", run);
    char *res = test_read_file(test_path("%s.result", run), NULL),
         *log = test_read_file(test_path("%s.log", run), NULL);
    int rc = -1;
    double t0 = 0, t1 = 1e9;
    if (res) sscanf(res, "%d %lf %lf", &rc, &t0, &t1);
    CHECK(rc > 0 && t1 - t0 < 30 && log && (!expect || strstr(log, expect)),
          "%s: the job ends with status %d %.1f s later%s%s", name, rc, t1 - t0, expect ? ", saying: " : "",
          expect && log && strstr(log, expect) ? strstr(log, expect) : "");
    free(res), free(log);
}

int main(void) {
    bin = test_dfm_bin();
    test_mpi_env();
    if (!test_have_mpirun()) return 1;
    dir = test_mkdtemp();
    same_as_one_process();
    resume_across_layouts();
    hybrid_same_as_one_process();
    hybrid_resume();
    layout_errors();
    finetune_hsdp();
    fail_one_rank("killed", "9", "", NULL);
    fail_one_rank("stalled", "STOP", "dist.timeout_s=3", "no answer from the other ranks");
    test_rmtree(dir);
    free(dir);
    return test_finish();
}
