/* The Automodel recipe: defaults, recipe files with old spellings, --a.b.c overrides, ${VAR} expansion, errors
 * with file/line/did-you-mean, the shipped recipes, the batch plan and the bindings to the core's configs. */
#include "dfm/automodel.h"
#include "test.h"

#include <math.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[256];

static const char *write_tmp(const char *name, const char *text) {
    static char p[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", dir, name);
    FILE *f = fopen(p[k], "w");
    fputs(text, f);
    fclose(f);
    return p[k];
}

/* Load like `dfm finetune`: argv built from a NULL-terminated list; notes captured in *notes. */
static cfg *load(char *err, size_t errlen, char **notes, const char *first, ...) {
    char *argv[64];
    int argc = 0;
    argv[argc++] = "finetune";
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && argc < 63; a = va_arg(ap, const char *)) argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    size_t nlen = 0;
    char *nbuf = NULL;
    FILE *nf = open_memstream(&nbuf, &nlen);
    automodel_cli opts = {.notes = nf};
    cfg *c = NULL;
    int rc = automodel_from_args(argc, argv, &c, &opts, err, errlen);
    fclose(nf);
    if (notes)
        *notes = nbuf;
    else
        free(nbuf);
    return rc ? NULL : c;
}

static const char *ref_example = "seed: 42\n"
                                 "model: {pretrained_model_name_or_path: /models/wan, mode: finetune}\n"
                                 "step_scheduler: {global_batch_size: 8, local_batch_size: 1, ckpt_every_steps: 1000, "
                                 "num_epochs: 100, log_every: 2}\n"
                                 "data:\n"
                                 "  dataloader: {meta_folder: /data/meta, num_workers: 2}\n"
                                 "optim: {learning_rate: 5e-6, optimizer: {weight_decay: 0.01, betas: [0.9, 0.999]}}\n"
                                 "lr_scheduler: {lr_decay_style: cosine, lr_warmup_steps: 0, min_lr: 1e-6}\n"
                                 "flow_matching:\n"
                                 "  timestep_sampling: uniform\n"
                                 "  logit_mean: 0.0\n"
                                 "  logit_std: 1.0\n"
                                 "  flow_shift: 3.0\n"
                                 "  mix_uniform_ratio: 0.1\n"
                                 "  sigma_min: 0.0\n"
                                 "  sigma_max: 1.0\n"
                                 "  num_train_timesteps: 1000\n"
                                 "  use_loss_weighting: true\n"
                                 "fsdp: {tp_size: 1, cp_size: 1, pp_size: 1, dp_replicate_size: 1, dp_size: 8}\n"
                                 "checkpoint: {enabled: true, checkpoint_dir: /ckpt, save_consolidated: false, "
                                 "restore_from: null}\n";

static void test_defaults_and_reference(void) {
    char err[2048], *notes = NULL;
    cfg *c = load(err, sizeof err, NULL, (const char *)NULL);
    CHECK(c && cfg_int(c, "seed") == 42 && fabs(cfg_float(c, "optimizer.lr") - 5e-6) < 1e-12 &&
              !strcmp(cfg_str(c, "model.mode"), "finetune") && cfg_is_null(c, "fsdp.dp_size") &&
              automodel_save_consolidated(c) == 0 && !automodel_peft_enabled(c),
          "defaults: seed 42, lr 5e-6, finetune, dp_size null, save_consolidated false, no LoRA");
    cfg_free(c);

    const char *f = write_tmp("ref.yaml", ref_example);
    c = load(err, sizeof err, &notes, "-c", f, (const char *)NULL);
    CHECK(c != NULL, "REFERENCE.md §1's example (old optim spelling) loads (%s)", c ? "ok" : err);
    if (c) {
        CHECK(fabs(cfg_float(c, "optimizer.lr") - 5e-6) < 1e-12 &&
                  fabs(cfg_float(c, "optimizer.weight_decay") - 0.01) < 1e-9 &&
                  fabs(cfg_list_float(c, "optimizer.betas", 1) - 0.999) < 1e-9 && !cfg_has(c, "optim"),
              "optim.* moved to optimizer.* and the old section is gone");
        CHECK(strstr(notes, "ref.yaml:6: 'optim.learning_rate' is now spelled 'optimizer.lr'") &&
                  strstr(notes, "'optim.optimizer.weight_decay' is now spelled 'optimizer.weight_decay'") &&
                  strstr(notes, "'optim.optimizer.betas' is now spelled 'optimizer.betas'"),
              "one note per old key, naming the new one");
        CHECK(strstr(cfg_source(c, "optimizer.lr"), "ref.yaml:6") != NULL, "the moved value keeps its source (%s)",
              cfg_source(c, "optimizer.lr"));
        automodel_plan p;
        int rc = automodel_check(c, 8, &p, err, sizeof err);
        CHECK(rc == 0 && p.dp == 8 && p.grad_accum == 1, "plan over 8 processes: dp 8, accumulation 1 (%s)",
              rc ? err : "ok");
        rc = automodel_check(c, 4, &p, err, sizeof err);
        CHECK(rc != 0 && strstr(err, "fsdp.dp_size 8"), "dp_size 8 on 4 processes is refused: %s", err);
        /* round trip through YAML */
        char *y = cfg_to_yaml(c);
        cfg *d = automodel_defaults();
        rc = cfg_merge_string(d, y, "roundtrip", err, sizeof err);
        CHECK(rc == 0 && cfg_equal(c, d), "the resolved recipe reloads to the same tree");
        free(y);
        cfg_free(d);
    }
    free(notes);
    cfg_free(c);
}

static void test_overrides(void) {
    char err[2048], *notes = NULL;
    const char *f = write_tmp("o.yaml", "optimizer:\n  lr: 1e-5\nstep_scheduler:\n  max_steps: 5\n");
    cfg *c = load(err, sizeof err, &notes, "-c", f, "--optimizer.lr", "3e-4", "--step_scheduler.max_steps=10",
                  "--optimizer.betas", "[0.8, 0.95]", "--fsdp.dp_size", "none", "--checkpoint.enabled",
                  "--model.pretrained_model_name_or_path", "org/name", "--lr_scheduler.min_lr=-0.0",
                  "--data.dataloader.meta_folder", "/d/x y", "--wandb.project", "p1", (const char *)NULL);
    CHECK(c != NULL, "overrides load (%s)", c ? "ok" : err);
    if (c) {
        CHECK(fabs(cfg_float(c, "optimizer.lr") - 3e-4) < 1e-12 && cfg_int(c, "step_scheduler.max_steps") == 10,
              "overrides beat the file (--k v and --k=v)");
        CHECK(fabs(cfg_list_float(c, "optimizer.betas", 0) - 0.8) < 1e-9 && cfg_is_null(c, "fsdp.dp_size") &&
                  cfg_bool(c, "checkpoint.enabled") && !strcmp(cfg_str(c, "data.dataloader.meta_folder"), "/d/x y") &&
                  !strcmp(cfg_str(c, "wandb.project"), "p1"),
              "values: a list, none = null, a bare flag = true, a string with a space, a free-form key");
        CHECK(strstr(cfg_source(c, "optimizer.lr"), "--optimizer.lr 3e-4") != NULL,
              "the source names the override (%s)", cfg_source(c, "optimizer.lr"));
    }
    cfg_free(c);
    free(notes);

    c = load(err, sizeof err, &notes, "--optim.learning_rate", "2e-4", (const char *)NULL);
    CHECK(c && fabs(cfg_float(c, "optimizer.lr") - 2e-4) < 1e-12 && strstr(notes, "is now spelled 'optimizer.lr'"),
          "an old spelling on the command line is accepted with a note: %s", notes);
    cfg_free(c);
    free(notes);

    c = load(err, sizeof err, NULL, "--step_scheduler.global_batch", "4", (const char *)NULL);
    CHECK(!c && strstr(err, "unknown key 'step_scheduler.global_batch'") &&
              strstr(err, "did you mean 'step_scheduler.global_batch_size'") && strstr(err, "command line"),
          "an unknown override key: %s", err);
    c = load(err, sizeof err, NULL, "--step_scheduler.max_steps", "1.5", (const char *)NULL);
    CHECK(!c && strstr(err, "expected int"), "a mistyped override: %s", err);
    c = load(err, sizeof err, NULL, "--model.mode", "pretrian", (const char *)NULL);
    CHECK(!c && strstr(err, "did you mean 'pretrain'"), "an enum typo: %s", err);
    c = load(err, sizeof err, NULL, "seed=3", (const char *)NULL);
    CHECK(!c && strstr(err, "--a.b.c value"), "a Hydra-style argument is refused with the right form: %s", err);
}

static void test_file_errors_and_env(void) {
    char err[2048];
    const char *f = write_tmp("bad.yaml", "seed: 1\nstep_scheduler:\n  global_batch: 4\n");
    cfg *c = load(err, sizeof err, NULL, "-c", f, (const char *)NULL);
    CHECK(!c && strstr(err, "bad.yaml:3: unknown key 'step_scheduler.global_batch'; did you mean "
                            "'step_scheduler.global_batch_size'?"),
          "an unknown key in a file names file, line and the nearest key: %s", err);
    f = write_tmp("both.yaml", "optimizer:\n  lr: 1e-4\noptim:\n  learning_rate: 2e-4\n");
    c = load(err, sizeof err, NULL, "-c", f, (const char *)NULL);
    CHECK(!c && strstr(err, "both 'optim.learning_rate' and its new spelling 'optimizer.lr'"),
          "both spellings at once: %s", err);

    setenv("DFM_TEST_DATA", "/data/set", 1);
    unsetenv("DFM_TEST_UNSET");
    f = write_tmp("env.yaml", "data:\n  dataloader:\n    meta_folder: ${DFM_TEST_DATA}/meta\n"
                              "optimizer:\n  lr: ${DFM_TEST_UNSET,2e-5}\n"
                              "checkpoint:\n  checkpoint_dir: '${DFM_TEST_UNSET,runs}/x'\n");
    c = load(err, sizeof err, NULL, "-c", f, (const char *)NULL);
    CHECK(c && !strcmp(cfg_str(c, "data.dataloader.meta_folder"), "/data/set/meta") &&
              cfg_kind_of(c, "optimizer.lr") == CFG_FLOAT && fabs(cfg_float(c, "optimizer.lr") - 2e-5) < 1e-12 &&
              !strcmp(cfg_str(c, "checkpoint.checkpoint_dir"), "runs/x"),
          "${VAR} expands, ${VAR,default} falls back and is typed after expansion (%s)", c ? "ok" : err);
    cfg_free(c);
    f = write_tmp("env2.yaml", "seed: 1\ndata:\n  dataloader:\n    meta_folder: ${DFM_TEST_UNSET}\n");
    c = load(err, sizeof err, NULL, "-c", f, (const char *)NULL);
    CHECK(!c && strstr(err, "env2.yaml:4") && strstr(err, "data.dataloader.meta_folder") &&
              strstr(err, "DFM_TEST_UNSET is not set"),
          "an unset variable without default names file:line, key and variable: %s", err);
    c = load(err, sizeof err, NULL, "--checkpoint.checkpoint_dir", "${DFM_TEST_DATA}/ck", (const char *)NULL);
    CHECK(c && !strcmp(cfg_str(c, "checkpoint.checkpoint_dir"), "/data/set/ck"), "overrides expand ${VAR} too");
    cfg_free(c);
}

static void test_upstream_recipe(void) {
    /* NeMo Automodel's own pretrain recipe layout: extra sections and keys that dfm accepts */
    char err[2048];
    const char *f = write_tmp(
        "upstream.yaml",
        "seed: 42\nwandb:\n  project: p\n  mode: online\ndist_env:\n  backend: nccl\n  timeout_minutes: 30\n"
        "model:\n  pretrained_model_name_or_path: Wan-AI/Wan2.1-T2V-1.3B-Diffusers\n  mode: pretrain\n"
        "  pipeline_spec:\n    transformer_cls: \"WanTransformer3DModel\"\n    subfolder: \"transformer\"\n"
        "    load_full_pipeline: false\n"
        "step_scheduler:\n  global_batch_size: 8\n  local_batch_size: 1\n  ckpt_every_steps: 1000\n  num_epochs: 100\n"
        "  log_every: 2\n"
        "data:\n  dataloader:\n    _target_: nemo_automodel.components.datasets.diffusion.build\n"
        "    cache_dir: PATH\n    model_type: wan\n    base_resolution: [512, 512]\n    dynamic_batch_size: false\n"
        "    shuffle: true\n    drop_last: false\n    num_workers: 2\n"
        "optim:\n  learning_rate: 5e-5\n  optimizer:\n    weight_decay: 0.1\n    betas: [0.9, 0.95]\n"
        "flow_matching:\n  adapter_type: \"simple\"\n  adapter_kwargs: {}\n  use_sigma_noise: true\n"
        "  timestep_sampling: logit_normal\n  logit_std: 1.5\n  flow_shift: 2.5\n  mix_uniform_ratio: 0.2\n"
        "fsdp:\n  tp_size: 1\n  cp_size: 1\n  pp_size: 1\n  dp_replicate_size: 1\n  dp_size: none\n"
        "checkpoint:\n  enabled: true\n  checkpoint_dir: PATH\n  model_save_format: safetensors\n"
        "  save_consolidated: true\n  diffusers_compatible: true\n  restore_from: null\n");
    cfg *c = load(err, sizeof err, NULL, "-c", f, (const char *)NULL);
    CHECK(c != NULL, "Automodel's own pretrain recipe layout loads (%s)", c ? "ok" : err);
    if (!c) return;
    objective_config o;
    adamw_config a;
    automodel_plan p;
    int rc = automodel_objective(c, &o, err, sizeof err) | automodel_adamw(c, &a, err, sizeof err) |
             automodel_check(c, 4, &p, err, sizeof err);
    CHECK(rc == 0 && o.sampling == TS_LOGIT_NORMAL && fabsf(o.logit_std - 1.5f) < 1e-6f &&
              fabsf(o.flow_shift - 2.5f) < 1e-6f && fabsf(o.cond_dropout_prob - 0.1f) < 1e-6f &&
              o.num_train_timesteps == 1000 && fabsf(a.lr - 5e-5f) < 1e-10f && fabsf(a.beta2 - 0.95f) < 1e-6f &&
              fabsf(a.weight_decay - 0.1f) < 1e-6f && fabsf(a.clip_grad - 1.0f) < 1e-6f,
          "bound to objective_config and adamw_config (%s)", rc ? err : "ok");
    CHECK(p.dp == 4 && p.grad_accum == 2 && automodel_save_consolidated(c) == 2,
          "dp none -> world 4, accumulation 8 / (1 x 4) = 2; save_consolidated true = every");
    cfg_free(c);
}

static void test_shipped(void) {
    static const char *names[] = {"wan_tiny_finetune", "wan2_1_t2v_1_3b_finetune", "wan2_1_t2v_14b_finetune",
                                  "wan2_1_t2v_1_3b_pretrain", "dit_fashion_mnist"};
    setenv("DFM_META_FOLDER", "/data/meta", 1);
    for (int i = 0; i < 5; i++) {
        char path[256], err[2048];
        snprintf(path, sizeof path, "recipes/automodel/%s.yaml", names[i]);
        if (access(path, R_OK) != 0) {
            CHECK(0, "%s is missing (run from the repository root)", path);
            continue;
        }
        cfg *c = load(err, sizeof err, NULL, "-c", path, (const char *)NULL);
        automodel_plan p;
        int world = strstr(names[i], "wan2_1") ? 8 : 1;
        int rc = c ? automodel_check(c, world, &p, err, sizeof err) : -1;
        CHECK(rc == 0, "shipped %s loads and checks over %d process(es) (%s)", names[i], world, rc ? err : "ok");
        cfg_free(c);
    }
    char err[2048];
    cfg *c = load(err, sizeof err, NULL, "-c", "recipes/automodel/wan2_1_t2v_1_3b_pretrain.yaml", (const char *)NULL);
    objective_config o;
    CHECK(c && !strcmp(cfg_str(c, "model.mode"), "pretrain") && automodel_objective(c, &o, err, sizeof err) == 0 &&
              o.sampling == TS_LOGIT_NORMAL && fabsf(o.mix_uniform_ratio - 0.2f) < 1e-6f,
          "the pretrain recipe carries DFM's pretraining flow-matching settings");
    cfg_free(c);
    unsetenv("DFM_META_FOLDER");
    c = load(err, sizeof err, NULL, "-c", "recipes/automodel/wan2_1_t2v_14b_finetune.yaml", (const char *)NULL);
    CHECK(!c && strstr(err, "DFM_META_FOLDER is not set"), "a recipe needing $DFM_META_FOLDER says so: %s", err);
    c = load(err, sizeof err, NULL, "-c", "recipes/automodel/wan_tiny_finetune.yaml",
             "--step_scheduler.global_batch_size", "3", (const char *)NULL);
    automodel_plan p;
    CHECK(c && automodel_check(c, 2, &p, err, sizeof err) != 0 && strstr(err, "multiple of local_batch_size"),
          "global 3 over 2 ranks is refused: %s", err);
    cfg_free(c);
    c = load(err, sizeof err, NULL, "--model.pretrained_model_name_or_path", "null", (const char *)NULL);
    CHECK(c && automodel_check(c, 1, &p, err, sizeof err) != 0 && strstr(err, "pretrained_model_name_or_path"),
          "finetune without a model is refused: %s", err);
    cfg_free(c);
    c = load(err, sizeof err, NULL, "--optimizer.betas", "[0.9]", (const char *)NULL);
    adamw_config a;
    CHECK(c && automodel_adamw(c, &a, err, sizeof err) != 0 && strstr(err, "pair"), "betas must be a pair: %s", err);
    cfg_free(c);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/dfm_test_automodel_%d", (int)getpid());
    mkdir(dir, 0755);
    test_defaults_and_reference();
    test_overrides();
    test_file_errors_and_env();
    test_upstream_recipe();
    test_shipped();
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("# could not remove %s\n", dir);
    return test_finish();
}
