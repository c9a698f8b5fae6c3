/* Uneven and explicit pipeline layouts (model.num_layers_in_first/last_pipeline_stage,
 * model.pipeline_model_parallel_layout):
 *  - pp_plan_make / pp_layout: the blocks of every model chunk (even, first / last with and without virtual
 *    stages, layout strings with repetition and with virtual stages in Megatron's chunk-major order) and every
 *    refusal with its message;
 *  - runs under mpirun --oversubscribe on 2 cores against one process at the same global batch (the pipeline does
 *    not change the arithmetic: losses and final weights within 1e-6 relative): a 6-block DiT with first = 1 on PP2
 *    (also with checkpoints of 2 blocks recomputed) and first = 1, last = 3 on PP3, first = 2 on PP2 x 2 chunks, the
 *    layout "Et|t*5L" on PP2 and "Et|tt|tt|tL" on PP2 x 2 chunks, a 3-block Wan with first = 1 on PP2; the start-up
 * line shows the blocks of each stage or chunk; the uneven PP2 checkpoint (step 5) resumed as one process and as an
 * even PP2. */
#include "dfm/pipeline.h"
#include "test.h"
#include "test_fs.h"
#include "test_run.h"

#include <math.h>
#include <unistd.h>

static const char *DIT =
    "model.num_layers=6 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=128 "
    "model.patch_size=7 train.global_batch_size=8 train.micro_batch_size=2 train.eval_interval=5 "
    "train.eval_iters=1 dataset.val_samples=16 dataset.num_workers=0 logger.log_interval=1 optimizer.lr=3e-3 "
    "scheduler.lr_warmup_iters=2 checkpoint.most_recent_k=4 train.train_iters=10 checkpoint.save_interval=5";

static const char *WAN =
    "--recipe wan_tiny model.num_layers=3 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=64 "
    "model.image_size=8 model.num_frames=2 dataset.max_samples=32 dataset.val_samples=4 dataset.num_workers=0 "
    "train.global_batch_size=8 train.micro_batch_size=2 train.eval_interval=5 train.eval_iters=1 "
    "logger.log_interval=1 checkpoint.save_interval=5 optimizer.lr=3e-3 scheduler.lr_warmup_iters=1 "
    "train.train_iters=10 diffusion.cfg_dropout_prob=0.2";

static char *dir;
static const char *bin;

/* ---- pp_plan_make ------------------------------------------------------------------------------------------ */

/* The plan's chunk counts as "a,b,c" (empty on a refusal, with err) */
static int plan(char *out, size_t n, int L, int P, int V, int V_set, int first, int last, const char *layout, char *err,
                size_t errlen) {
    pp_plan pl;
    int v = V;
    out[0] = 0;
    err[0] = 0;
    if (pp_plan_make(&pl, L, P, &v, V_set, first, last, layout, err, errlen) != 0) return -1;
    for (int k = 0; k < P * v; k++) snprintf(out + strlen(out), n - strlen(out), "%s%d", k ? "," : "", pl.n[k]);
    /* the chunks cover the blocks in order: chunk k = model chunk k / P of stage k mod P */
    int at = 0;
    for (int k = 0; k < P * v; k++) {
        int b0, b1;
        pp_layout(&pl, k % P, k / P, &b0, &b1);
        if (b0 != at || b1 - b0 != pl.n[k]) return -2;
        at = b1;
    }
    return at == L ? v : -2;
}

static void accepts(int L, int P, int V, int V_set, int first, int last, const char *layout, const char *want,
                    int want_V) {
    char got[512], err[1024];
    int v = plan(got, sizeof got, L, P, V, V_set, first, last, layout, err, sizeof err);
    CHECK(v == want_V && !strcmp(got, want),
          "L %d, P %d, V %d, first %d, last %d, layout %s: chunks of %s blocks, V %d (got %s, V %d%s%s)", L, P, V,
          first, last, layout ? layout : "null", want, want_V, got, v, err[0] ? ": " : "", err);
}

static void refuses(int L, int P, int V, int V_set, int first, int last, const char *layout, const char *want) {
    char got[512], err[1024];
    int v = plan(got, sizeof got, L, P, V, V_set, first, last, layout, err, sizeof err);
    CHECK(v == -1 && strstr(err, want), "L %d, P %d, V %d, first %d, last %d, layout %s is refused: %s", L, P, V, first,
          last, layout ? layout : "null", err);
}

static void unit(void) {
    /* even */
    accepts(6, 2, 1, 0, -1, -1, NULL, "3,3", 1);
    accepts(8, 2, 2, 1, -1, -1, NULL, "2,2,2,2", 2);
    refuses(6, 4, 1, 0, -1, -1, NULL, "model.num_layers 6 is not divisible by model.pipeline_model_parallel_size 4");
    refuses(6, 2, 2, 1, -1, -1, NULL,
            "model.num_layers 6 is not divisible by model.pipeline_model_parallel_size 2 x "
            "model.virtual_pipeline_model_parallel_size 2 = 4");
    /* first / last */
    accepts(6, 2, 1, 0, 1, -1, NULL, "1,5", 1);
    accepts(6, 2, 1, 0, -1, 2, NULL, "4,2", 1);
    accepts(6, 2, 1, 0, 2, 4, NULL, "2,4", 1);
    accepts(6, 3, 1, 0, 1, 3, NULL, "1,2,3", 1);
    accepts(7, 4, 1, 0, 1, -1, NULL, "1,2,2,2", 1);
    /* virtual stages: each stage's count cut into V chunks (Megatron: first, last and the middle count divide by V) */
    accepts(8, 3, 2, 1, 2, 2, NULL, "1,2,1,1,2,1", 2);
    accepts(10, 2, 2, 1, 4, -1, NULL, "2,3,2,3", 2);
    refuses(6, 2, 2, 1, 1, -1, NULL,
            "model.num_layers_in_first_pipeline_stage 1 is not divisible by model.virtual_pipeline_model_parallel_size "
            "2");
    refuses(8, 2, 2, 1, -1, 3, NULL,
            "model.num_layers_in_last_pipeline_stage 3 is not divisible by model.virtual_pipeline_model_parallel_size "
            "2");
    refuses(8, 3, 2, 1, 2, -1, NULL,
            "model.num_layers_in_first_pipeline_stage 2 leaves 3 blocks to each of the other 2 pipeline stages, not "
            "divisible by model.virtual_pipeline_model_parallel_size 2");
    refuses(6, 3, 1, 0, 1, -1, NULL,
            "model.num_layers_in_first_pipeline_stage 1 leaves 5 of model.num_layers 6, not divisible by the other 2 "
            "pipeline stages");
    refuses(6, 2, 1, 0, 1, 1, NULL,
            "model.num_layers_in_first_pipeline_stage 1 + model.num_layers_in_last_pipeline_stage 1 = 2, not "
            "model.num_layers 6: with model.pipeline_model_parallel_size 2 there is no other stage");
    refuses(6, 2, 1, 0, 6, -1, NULL,
            "model.num_layers_in_first_pipeline_stage 6 leaves 0 of model.num_layers 6 for the other 1 pipeline "
            "stages: a stage without blocks is not built");
    refuses(6, 3, 1, 0, 3, 3, NULL, "leaves 0 of model.num_layers 6 for the other 1 pipeline stages");
    refuses(6, 2, 1, 0, 0, -1, NULL, "model.num_layers_in_first_pipeline_stage is 0: a stage without blocks");
    refuses(6, 2, 1, 0, 1, -1, "Et|t*5L",
            "model.pipeline_model_parallel_layout and "
            "model.num_layers_in_first_pipeline_stage are both set");
    /* layout strings */
    accepts(4, 2, 1, 0, -1, -1, "Et|tttL", "1,3", 1);
    accepts(9, 5, 1, 0, -1, -1, "Et*3|(tt|)*2,t|tL", "3,2,2,1,1", 1);
    accepts(6, 2, 1, 0, -1, -1, " E t , | t*5 L", "1,5", 1);
    accepts(6, 3, 1, 0, -1, -1, "E(t|t)*2,ttL", "1,2,3", 1); /* (t|t)*2 = t|tt|t */
    accepts(6, 2, 1, 0, -1, -1, "E((t)*2|)*1tttt,L", "2,4", 1);
    /* virtual stages: the string's stage k is model chunk k / P of pipeline stage k mod P */
    accepts(6, 2, 1, 0, -1, -1, "Et|tt|tt|tL", "1,2,2,1", 2);
    accepts(6, 2, 2, 1, -1, -1, "Et|tt|tt|tL", "1,2,2,1", 2);
    {
        pp_plan pl;
        char err[512];
        int v = 1;
        int rc = pp_plan_make(&pl, 8, 3, &v, 0, -1, -1, "Et|tt|t|tt|t|tL", err, sizeof err);
        CHECK(rc == 0 && v == 2 && pp_stage_blocks(&pl, 0) == 3 && pp_stage_blocks(&pl, 1) == 3 &&
                  pp_stage_blocks(&pl, 2) == 2 && !pl.even,
              "layout Et|tt|t|tt|t|tL on PP3: 2 chunks per stage, stages of 3, 3, 2 blocks (pp_stage_blocks)");
    }
    refuses(6, 2, 3, 1, -1, -1, "Et|tt|tt|tL",
            "has 4 stages = model.pipeline_model_parallel_size 2 x 2 model chunks, but "
            "model.virtual_pipeline_model_parallel_size is 3");
    refuses(6, 2, 1, 0, -1, -1, "Et|tt|ttL", "has 3 stages, not a multiple of model.pipeline_model_parallel_size 2");
    refuses(6, 2, 1, 0, -1, -1, "Ett|tttL", "has 5 transformer blocks ('t'), model.num_layers is 6");
    refuses(6, 2, 1, 0, -1, -1, "tEt|ttttL", "'E' (the embedders) at symbol 1 of stage 0");
    refuses(6, 2, 1, 0, -1, -1, "ttt|EtttL", "'E' (the embedders) at symbol 0 of stage 1");
    refuses(6, 2, 1, 0, -1, -1, "Ettt|tLtt", "'L' (the head and the loss) at symbol 1 of stage 1");
    refuses(6, 2, 1, 0, -1, -1, "EtttL|ttt", "'L' (the head and the loss) at symbol 4 of stage 0");
    refuses(6, 2, 1, 0, -1, -1, "EEttt|tttL", "'E' (the embedders) at symbol 1 of stage 0");
    refuses(6, 2, 1, 0, -1, -1, "Ettt|ttt", "has no 'L'");
    refuses(6, 2, 1, 0, -1, -1, "ttt|tttL", "has no 'E'");
    refuses(6, 3, 1, 0, -1, -1, "Etttttt||L",
            "stage 1 of the layout (model chunk 0 of pipeline stage 1) has no transformer block: a stage without "
            "blocks is not built");
    refuses(6, 2, 1, 0, -1, -1, "E|ttttttL", "stage 0 of the layout (model chunk 0 of pipeline stage 0) has no");
    refuses(6, 2, 1, 0, -1, -1, "Ettt|tttx", "'x' at position 8 is not a layout symbol");
    refuses(6, 2, 1, 0, -1, -1, "Ettt|tttmL", "'m' (multi-token prediction) has no counterpart");
    refuses(6, 2, 1, 0, -1, -1, "Et*|tttttL", "'*' at position 2 is not followed by a count");
    refuses(6, 2, 1, 0, -1, -1, "*Et|tttttL", "'*' at position 0 repeats nothing");
    refuses(6, 2, 1, 0, -1, -1, "E(tt|ttttL", "a '(' is not closed");
    refuses(6, 2, 1, 0, -1, -1, "Ett)|ttttL", "')' at position 3 closes nothing");
    refuses(6, 2, 1, 0, -1, -1, "E(t*100000)*100000|L", "the count at position");
    refuses(6, 2, 1, 0, -1, -1, "E(t*1000)*1000|L", "expands to more than 65536 symbols");
    refuses(6, 2, 1, 0, -1, -1, "E(t|)*41tttttL", "has 42 stages, 21 model chunks per pipeline stage: at most 16");
}

/* ---- runs against one process ------------------------------------------------------------------------------- */

static int train(int np, const char *base, const char *name, const char *extra) {
    return test_run_pretrain(dir, bin, np, base, name, extra);
}

static double weights_diff(int wan, const char *a, const char *b) {
    return test_run_final_weights_diff(dir, wan, a, b);
}

static void compare(int wan, const char *run, const char *ref, int from, const char *what) {
    char ra[1024];
    snprintf(ra, sizeof ra, "%s/%s", dir, run);
    double dl = test_run_loss_diff(ra, test_path("%s/%s", dir, ref), from, 10), dw = weights_diff(wan, run, ref);
    printf("# %s: worst loss difference %.3g, worst weight difference %.3g (relative)\n", what, dl, dw);
    CHECK(dl <= 1e-6 && dw <= 1e-6, "%s vs one process: losses (steps %d-10) %.3g, weights and EMA %.3g (<= 1e-6)",
          what, from, dl, dw);
}

static void startup_line(const char *run, const char *want) {
    char *log = test_read_file(test_path("%s/%s.log", dir, run), NULL);
    CHECK(log && strstr(log, want), "%s: the start-up line says '%s'", run, want);
    free(log);
}

int main(void) {
    unit();
    bin = test_dfm_bin();
    dir = test_mkdtemp();
    test_mpi_env();
    if (!test_have_mpirun()) return test_finish();

    int ok = train(0, DIT, "dit1", "") == 0;
    CHECK(ok, "DiT one process runs");
    const char *PP2 = "model.pipeline_model_parallel_size=2";
    if (ok && train(2, DIT, "dit_first1",
                    "model.pipeline_model_parallel_size=2 "
                    "model.num_layers_in_first_pipeline_stage=1") == 0) {
        compare(0, "dit_first1", "dit1", 1, "DiT PP2, first stage 1 block (1 + 5)");
        startup_line("dit_first1", "pipeline: 2 stages of 1, 5 blocks");
    } else
        CHECK(0, "DiT PP2 with model.num_layers_in_first_pipeline_stage=1 runs");
    if (ok && train(3, DIT, "dit_pp3",
                    "model.pipeline_model_parallel_size=3 model.num_layers_in_first_pipeline_stage=1 "
                    "model.num_layers_in_last_pipeline_stage=3") == 0) {
        compare(0, "dit_pp3", "dit1", 1, "DiT PP3, first 1 and last 3 blocks (1 + 2 + 3)");
        startup_line("dit_pp3", "pipeline: 3 stages of 1, 2, 3 blocks");
    } else
        CHECK(0, "DiT PP3 with first 1 and last 3 runs");
    if (ok && train(2, DIT, "dit_layout",
                    "model.pipeline_model_parallel_size=2 "
                    "model.pipeline_model_parallel_layout='Et|t*5L'") == 0) {
        compare(0, "dit_layout", "dit1", 1, "DiT PP2, layout Et|t*5L");
        startup_line("dit_layout", "pipeline: 2 stages of 1, 5 blocks");
    } else
        CHECK(0, "DiT PP2 with a layout string runs");
    if (ok && train(2, DIT, "dit_vlayout",
                    "model.pipeline_model_parallel_size=2 "
                    "model.pipeline_model_parallel_layout='Et|tt|tt|tL'") == 0) {
        compare(0, "dit_vlayout", "dit1", 1, "DiT PP2 x 2 chunks, layout Et|tt|tt|tL");
        startup_line("dit_vlayout", "pipeline: 2 stages x 2 model chunks of 1, 2, 2, 1 blocks");
    } else
        CHECK(0, "DiT PP2 x 2 chunks with a layout string runs");

    if (ok && train(2, DIT, "dit_vfirst",
                    "model.pipeline_model_parallel_size=2 "
                    "model.virtual_pipeline_model_parallel_size=2 "
                    "model.num_layers_in_first_pipeline_stage=2") == 0) {
        compare(0, "dit_vfirst", "dit1", 1, "DiT PP2 x 2 chunks, first stage 2 blocks (chunks 1, 2, 1, 2)");
        startup_line("dit_vfirst", "pipeline: 2 stages x 2 model chunks of 1, 2, 1, 2 blocks");
    } else
        CHECK(0, "DiT PP2 x 2 chunks with model.num_layers_in_first_pipeline_stage=2 runs");
    if (ok && train(2, DIT, "dit_first1_rc",
                    "model.pipeline_model_parallel_size=2 "
                    "model.num_layers_in_first_pipeline_stage=1 model.recompute_granularity=full "
                    "model.recompute_method=uniform model.recompute_num_layers=2") == 0)
        compare(0, "dit_first1_rc", "dit1", 1, "DiT PP2 1 + 5 with checkpoints of 2 blocks recomputed");
    else
        CHECK(0, "DiT PP2 1 + 5 with uniform recompute of 2 runs");

    /* the uneven PP2 checkpoint (step 5) resumed as one process and as an even PP2 (3 + 3) */
    if (ok) {
        int rc = train(0, DIT, "dit_from_first1", test_path("checkpoint.load=%s/dit_first1/ck/iter_0000005", dir));
        if (rc == 0)
            compare(0, "dit_from_first1", "dit1", 6, "uneven PP2 (1 + 5) checkpoint resumed as one process");
        else
            CHECK(0, "the uneven PP2 checkpoint resumes as one process");
        rc = train(2, DIT, "dit_first1_to_even",
                   test_path("%s checkpoint.load=%s/dit_first1/ck/iter_0000005", PP2, dir));
        if (rc == 0)
            compare(0, "dit_first1_to_even", "dit1", 6, "uneven PP2 (1 + 5) checkpoint resumed as an even PP2 (3 + 3)");
        else
            CHECK(0, "the uneven PP2 checkpoint resumes as an even PP2");
    }

    /* Wan of 3 blocks: first stage 1 block */
    if (train(0, WAN, "wan1", "") == 0 &&
        train(2, WAN, "wan_first1",
              "model.pipeline_model_parallel_size=2 model.num_layers_in_first_pipeline_stage=1") == 0) {
        compare(1, "wan_first1", "wan1", 1, "Wan PP2, first stage 1 block (1 + 2)");
        startup_line("wan_first1", "pipeline: 2 stages of 1, 2 blocks");
    } else
        CHECK(0, "Wan one process and PP2 with first 1 run");

    /* the job refuses what pp_plan_make refuses, and the keys without pipeline parallelism */
    test_run_refused(dir, bin, 2, DIT,
                     "model.pipeline_model_parallel_size=2 model.num_layers_in_first_pipeline_stage=1 "
                     "model.num_layers_in_last_pipeline_stage=1",
                     "model.num_layers_in_first_pipeline_stage 1 + model.num_layers_in_last_pipeline_stage 1 = 2, not "
                     "model.num_layers 6",
                     "first 1 + last 1 of 6 blocks on PP2");
    test_run_refused(
        dir, bin, 2, DIT, "model.pipeline_model_parallel_size=2 model.pipeline_model_parallel_layout='Et|tt|tL'",
        "has 3 stages, not a multiple of model.pipeline_model_parallel_size 2", "a layout of 3 stages on PP2");
    test_run_refused(dir, bin, 1, DIT, "model.num_layers_in_last_pipeline_stage=2",
                     "model.num_layers_in_last_pipeline_stage is set (from",
                     "model.num_layers_in_last_pipeline_stage without pipeline parallelism");
    test_run_refused(dir, bin, 2, DIT,
                     "model.pipeline_model_parallel_size=2 model.pipeline_model_parallel_layout=[[E,t]]",
                     "model.pipeline_model_parallel_layout", "a layout given as a list (not a string)");
    test_rmtree(dir);
    free(dir);
    return test_finish();
}
