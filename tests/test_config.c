/* Config system: recipes, the Hydra override grammar and its errors, YAML files (merge precedence, errors with
 * line numbers), --training-mode presets, --print-config round trips, and the typed getters' messages. */
#include "dfm/config.h"
#include "test.h"
#include "test_fs.h"

#include <string.h>
#include <sys/wait.h>

static char err[4096];
static char *tmpdir;

static cfg *recipe(const char *name) {
    cfg *c = cfg_recipe(name, err, sizeof err);
    if (!c) {
        printf("# %s\n", err);
        exit(1);
    }
    return c;
}

/* Apply one override; 1 on success. */
static int ov(cfg *c, const char *arg) {
    err[0] = 0;
    return cfg_override(c, arg, err, sizeof err) == 0;
}

static int has(const char *s, const char *sub) {
    return s && strstr(s, sub) != NULL;
}

/* Expect the override to fail with a message containing every one of the given pieces (NULL-terminated). */
static void ov_fails(cfg *c, const char *arg, ...) {
    int ok = !ov(c, arg);
    va_list ap;
    va_start(ap, arg);
    for (const char *piece; (piece = va_arg(ap, const char *));) ok = ok && has(err, piece);
    va_end(ap);
    CHECK(ok, "override '%s' is refused: %s", arg, err);
}

static const char *write_file(const char *name, const char *text) {
    const char *p = test_path("%s/%s", tmpdir, name);
    FILE *f = fopen(p, "w");
    fputs(text, f);
    fclose(f);
    return p;
}

/* Run fn(c, key) in a child; capture its stderr and exit status (the getters exit via dfm_die). */
typedef void (*getter_fn)(const cfg *c, const char *key);
static int run_dies(getter_fn fn, const cfg *c, const char *key, char *msg, size_t msglen) {
    int fd[2];
    if (pipe(fd) != 0) return -1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        dup2(fd[1], 2);
        fn(c, key);
        _exit(0);
    }
    close(fd[1]);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < msglen && (r = read(fd[0], msg + n, msglen - 1 - n)) > 0) n += (size_t)r;
    msg[n] = 0;
    close(fd[0]);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}
static void get_int(const cfg *c, const char *k) {
    (void)cfg_int(c, k);
}
static void get_str(const cfg *c, const char *k) {
    (void)cfg_str(c, k);
}
static void get_bool(const cfg *c, const char *k) {
    (void)cfg_bool(c, k);
}
static void get_float(const cfg *c, const char *k) {
    (void)cfg_float(c, k);
}

static void expect_death(getter_fn fn, const char *fname, const cfg *c, const char *key, const char *p1,
                         const char *p2) {
    char msg[2048];
    int rc = run_dies(fn, c, key, msg, sizeof msg);
    char *nl = strchr(msg, '\n');
    if (nl) *nl = 0;
    CHECK(rc == 1 && has(msg, key) && has(msg, p1) && (!p2 || has(msg, p2)), "%s('%s') dies: %s", fname, key, msg);
}

/* ------------------------------------------------------------------------------------------------ recipes */

static void test_recipes(void) {
    CHECK(cfg_recipe_count() == 8, "8 recipes (5 DiT, 3 Wan)");
    for (int i = 0; i < cfg_recipe_count(); i++) {
        const char *name = cfg_recipe_name(i);
        cfg *c = recipe(name);
        /* every section of the issue is there with its types */
        int ok = cfg_int(c, "model.num_layers") > 0 &&
                 cfg_int(c, "model.hidden_size") % cfg_int(c, "model.num_attention_heads") == 0 &&
                 (strncmp(name, "wan_", 4) ? cfg_int(c, "model.ffn_hidden_size") == 4 * cfg_int(c, "model.hidden_size")
                                           : !strcmp(cfg_str(c, "model.kind"), "wan")) &&
                 cfg_int(c, "model.patch_size") == 2 && cfg_float(c, "model.norm_eps") == 1e-6 &&
                 !cfg_bool(c, "model.sequence_parallel") && cfg_is_null(c, "model.recompute_granularity") &&
                 cfg_is_null(c, "model.recompute_num_layers") && cfg_int(c, "train.global_batch_size") > 0 &&
                 cfg_str(c, "train.device") && cfg_float(c, "optimizer.lr") > 0 &&
                 cfg_str(c, "scheduler.lr_decay_style") && cfg_is_null(c, "scheduler.lr_decay_iters") &&
                 cfg_str(c, "checkpoint.save") && cfg_str(c, "checkpoint.load") == NULL &&
                 cfg_bool(c, "checkpoint.load_optim") && cfg_int(c, "checkpoint.most_recent_k") == 2 &&
                 cfg_str(c, "dataset.type") && cfg_is_null(c, "dataset.image_size") &&
                 cfg_int(c, "logger.log_interval") > 0 && cfg_int(c, "rng.seed") == 1234 &&
                 !strcmp(cfg_str(c, "diffusion.objective"), "flow_matching") &&
                 cfg_float(c, "diffusion.edm_sigma_max") == 80.0 && cfg_bool(c, "diffusion.use_loss_weighting") &&
                 cfg_float(c, "diffusion.cfg_dropout_prob") == 0.1;
        char src[64];
        snprintf(src, sizeof src, "recipe %s", name);
        CHECK(ok && !strcmp(cfg_source(c, "model.num_layers"), src) && !strcmp(cfg_recipe_of(c), name),
              "recipe %s loads with every key typed (source '%s')", name, cfg_source(c, "model.num_layers"));
        /* what it prints loads back over the same recipe unchanged */
        char *y = cfg_to_yaml(c);
        cfg *d = recipe(name);
        int rc = cfg_merge_string(d, y, "printed", err, sizeof err);
        CHECK(rc == 0 && cfg_equal(c, d), "recipe %s: printed YAML reloads to the same tree %s", name, rc ? err : "");
        free(y);
        cfg_free(d);
        cfg_free(c);
    }
    cfg *c = recipe("dit_fashion_mnist");
    CHECK(cfg_int(c, "model.num_layers") == 6 && cfg_int(c, "model.hidden_size") == 128 &&
              cfg_int(c, "model.in_channels") == 1 && cfg_int(c, "model.image_size") == 28 &&
              cfg_int(c, "model.num_classes") == 10 && cfg_int(c, "train.train_iters") == 1000 &&
              cfg_float(c, "optimizer.lr") == 1e-3 && !strcmp(cfg_str(c, "dataset.type"), "fashion_mnist") &&
              !strcmp(cfg_str(c, "dataset.path"), "/usr/share/datasets/fashion-mnist") &&
              !strcmp(cfg_str(c, "checkpoint.save"), "runs/dit_fashion_mnist/checkpoints") &&
              cfg_float(c, "train.ema_decay") == 0.995,
          "dit_fashion_mnist defaults");
    cfg_free(c);
    const int shapes[4][3] = {{12, 384, 6}, {12, 768, 12}, {24, 1024, 16}, {28, 1152, 16}};
    const char *names[4] = {"dit_s2", "dit_b2", "dit_l2", "dit_xl2"};
    for (int i = 0; i < 4; i++) {
        c = recipe(names[i]);
        CHECK(cfg_int(c, "model.num_layers") == shapes[i][0] && cfg_int(c, "model.hidden_size") == shapes[i][1] &&
                  cfg_int(c, "model.num_attention_heads") == shapes[i][2] && cfg_int(c, "model.in_channels") == 4 &&
                  cfg_int(c, "model.image_size") == 32 && cfg_int(c, "model.num_classes") == 1000 &&
                  !strcmp(cfg_str(c, "dataset.type"), "image_folder") && cfg_int(c, "train.global_batch_size") == 256 &&
                  cfg_int(c, "train.micro_batch_size") == 32 && cfg_int(c, "train.train_iters") == 400000 &&
                  cfg_float(c, "optimizer.lr") == 1e-4,
              "%s: DiT shape %d x %d, %d heads, latents 32x32x4, 1000 classes", names[i], shapes[i][0], shapes[i][1],
              shapes[i][2]);
        cfg_free(c);
    }
    c = cfg_recipe("dit_xxl", err, sizeof err);
    CHECK(!c && has(err, "dit_xxl") && has(err, "dit_fashion_mnist") && has(err, "dit_xl2"),
          "unknown recipe lists the recipes: %s", err);
}

/* ------------------------------------------------------------------------------------------------ overrides */

static void test_override_set(void) {
    cfg *c = recipe("dit_fashion_mnist");
    CHECK(ov(c, "train.train_iters=10") && cfg_int(c, "train.train_iters") == 10 &&
              !strcmp(cfg_source(c, "train.train_iters"), "command line override 'train.train_iters=10'"),
          "a.b=v sets an int, source '%s'", cfg_source(c, "train.train_iters"));
    CHECK(ov(c, "optimizer.lr=5e-4") && cfg_float(c, "optimizer.lr") == 5e-4, "1e-4 style float");
    CHECK(ov(c, "optimizer.lr=.5") && cfg_float(c, "optimizer.lr") == 0.5, ".5 float");
    CHECK(ov(c, "optimizer.lr=3") && cfg_float(c, "optimizer.lr") == 3.0 && cfg_kind_of(c, "optimizer.lr") == CFG_FLOAT,
          "an int is accepted for a float key (and stored as a float)");
    CHECK(ov(c, "optimizer.lr=-2.5E+2") && cfg_float(c, "optimizer.lr") == -250.0, "signed float with exponent");
    ov_fails(c, "train.train_iters=1.5", "train.train_iters", "expected int", "float 1.5",
             "command line override 'train.train_iters=1.5'", NULL);
    ov_fails(c, "train.train_iters='10'", "expected int", "string '10'", NULL);
    ov_fails(c, "train.train_iters=ten", "expected int", "string 'ten'", NULL);
    ov_fails(c, "model.sequence_parallel=1", "expected bool", "int 1", NULL);
    CHECK(ov(c, "model.sequence_parallel=true") && cfg_bool(c, "model.sequence_parallel") == 1, "bool true");
    CHECK(ov(c, "model.sequence_parallel=False") && cfg_bool(c, "model.sequence_parallel") == 0, "bool False");
    CHECK(ov(c, "dataset.path='x y'") && !strcmp(cfg_str(c, "dataset.path"), "x y"), "single-quoted string");
    CHECK(ov(c, "dataset.path=\"a, b: c\"") && !strcmp(cfg_str(c, "dataset.path"), "a, b: c"), "double-quoted string");
    CHECK(ov(c, "dataset.path=123") && !strcmp(cfg_str(c, "dataset.path"), "123"),
          "an unquoted number for a string key is its text");
    CHECK(ov(c, "dataset.path=") && !strcmp(cfg_str(c, "dataset.path"), ""), "key= gives the empty string");
    CHECK(ov(c, "dataset.path=/data/my folder") && !strcmp(cfg_str(c, "dataset.path"), "/data/my folder"),
          "plain string with a space");
    CHECK(ov(c, "checkpoint.load=null") && cfg_is_null(c, "checkpoint.load") && !cfg_str(c, "checkpoint.load"),
          "null for a nullable key");
    CHECK(ov(c, "checkpoint.load=runs/x") && !strcmp(cfg_str(c, "checkpoint.load"), "runs/x"), "nullable string set");
    CHECK(ov(c, "checkpoint.load=~") && cfg_is_null(c, "checkpoint.load"), "~ as a value is null");
    CHECK(ov(c, "model.recompute_num_layers=2") && cfg_int(c, "model.recompute_num_layers") == 2, "int|null set");
    ov_fails(c, "model.num_layers=null", "model.num_layers", "expected int", "null", NULL);
    ov_fails(c, "checkpoint.load='null'=x", "cannot parse", NULL);
    ov_fails(c, "scheduler.lr_decay_style=cosin", "scheduler.lr_decay_style", "cosine|linear|constant",
             "did you mean 'cosine'", NULL);
    CHECK(ov(c, "scheduler.lr_decay_style=linear") && !strcmp(cfg_str(c, "scheduler.lr_decay_style"), "linear"),
          "enum value accepted");
    ov_fails(c, "model.recompute_granularity=partial", "full|selective", NULL);
    CHECK(ov(c, "model.recompute_granularity=null"), "nullable enum takes null");
    /* unknown keys: named, with the override, the nearest key and how to add one */
    ov_fails(c, "model.num_layer=3", "unknown key 'model.num_layer'", "did you mean 'model.num_layers'",
             "command line override 'model.num_layer=3'", "+model.num_layer=", NULL);
    ov_fails(c, "train.global_batch=32", "did you mean 'train.global_batch_size'", NULL);
    ov_fails(c, "global_batch_size=32", "did you mean 'train.global_batch_size'", NULL);
    ov_fails(c, "modle.num_layers=3", "did you mean 'model.num_layers'", NULL);
    ov_fails(c, "train.lr=0.1", "did you mean 'optimizer.lr'", NULL);
    ov_fails(c, "model.nmu_layers=3", "did you mean 'model.num_layers'", NULL);
    /* malformed */
    ov_fails(c, "model.num_layers", "expected key=value", NULL);
    ov_fails(c, "=3", "not a valid key", NULL);
    ov_fails(c, "model..num_layers=3", "not a valid key", NULL);
    ov_fails(c, "model.num_layers.=3", "not a valid key", NULL);
    ov_fails(c, "train.train_iters=[1,", "cannot parse the value '[1,'", NULL);
    ov_fails(c, "model.num_layers.x=3", "model.num_layers", "int 6", NULL);
    /* sections take maps (merged) */
    ov_fails(c, "model=5", "'model' is a section", NULL);
    CHECK(ov(c, "model={num_layers: 2, hidden_size: 64}") && cfg_int(c, "model.num_layers") == 2 &&
              cfg_int(c, "model.hidden_size") == 64 && cfg_int(c, "model.patch_size") == 2,
          "a dict for a section merges into it");
    ov_fails(c, "model={num_layer: 2}", "unknown key 'model.num_layer'", "did you mean 'model.num_layers'", NULL);
    ov_fails(c, "model={num_layers: 2.5}", "model.num_layers", "expected int", NULL);
    cfg_free(c);
}

static void test_override_add_delete(void) {
    cfg *c = recipe("dit_fashion_mnist");
    /* + adds, and refuses an existing key */
    ov_fails(c, "+model.num_layers=3", "'model.num_layers' already exists", "int 6", "recipe dit_fashion_mnist",
             "++model.num_layers", NULL);
    ov_fails(c, "+checkpoint.load=x", "already exists", "null", NULL);
    CHECK(ov(c, "+model.betas=[0.9, 0.95]") && cfg_len(c, "model.betas") == 2 &&
              cfg_list_float(c, "model.betas", 1) == 0.95,
          "+key=[list] adds a list");
    CHECK(ov(c, "model.betas.0=0.5") && cfg_list_float(c, "model.betas", 0) == 0.5 &&
              has(cfg_source(c, "model.betas.0"), "model.betas.0=0.5"),
          "a.0=x sets a list element");
    ov_fails(c, "model.betas.2=1", "index 2 is out of range", "model.betas", "length 2",
             "use +model.betas.2=... to append", NULL);
    ov_fails(c, "model.betas.x=1", "'model.betas' is a list", NULL);
    CHECK(ov(c, "+model.betas.2=0.1") && cfg_len(c, "model.betas") == 3, "+a.N=x appends at the end of a list");
    CHECK(ov(c, "++model.betas.0=0.7") && cfg_list_float(c, "model.betas", 0) == 0.7, "++ on a list element");
    CHECK(ov(c, "~model.betas.1") && cfg_len(c, "model.betas") == 2 && cfg_list_float(c, "model.betas", 1) == 0.1,
          "~a.N removes a list element");
    CHECK(ov(c, "+dict={k: v, n: [1, 2], q: 'x y', z: null}") && !strcmp(cfg_str(c, "dict.k"), "v") &&
              cfg_list_int(c, "dict.n", 1) == 2 && !strcmp(cfg_str(c, "dict.q"), "x y") && cfg_is_null(c, "dict.z") &&
              cfg_len(c, "dict") == 4 && !strcmp(cfg_key_at(c, "dict", 2), "q"),
          "+key={dict} adds a map (any keys: it is not in the recipe)");
    CHECK(ov(c, "dict.k=w") && !strcmp(cfg_str(c, "dict.k"), "w"), "set inside an added map");
    CHECK(ov(c, "+a.b.c=1") && cfg_int(c, "a.b.c") == 1, "+a.b.c creates the maps on the way");
    ov_fails(c, "a.b.d=1", "unknown key 'a.b.d'", "+a.b.d=", NULL);
    /* ++ both ways */
    CHECK(ov(c, "++model.num_layers=8") && cfg_int(c, "model.num_layers") == 8 &&
              has(cfg_source(c, "model.num_layers"), "++model.num_layers=8"),
          "++ overrides an existing key");
    CHECK(ov(c, "++model.new_key=true") && cfg_bool(c, "model.new_key"), "++ adds a missing key");
    ov_fails(c, "++model.num_layers=x", "expected int", NULL);
    /* ~ with and without a value */
    CHECK(ov(c, "~optimizer.lr=0.001") && !cfg_has(c, "optimizer.lr"), "~a.b=v deletes when the value matches");
    ov_fails(c, "~optimizer.adam_eps=1", "not deleting 'optimizer.adam_eps'", "float 1.0e-08",
             "recipe dit_fashion_mnist", NULL);
    CHECK(ov(c, "~checkpoint.save") && !cfg_has(c, "checkpoint.save") && cfg_is_null(c, "checkpoint.save") &&
              !cfg_str(c, "checkpoint.save") && has(cfg_source(c, "checkpoint.save"), "~checkpoint.save"),
          "~ on a nullable key: reads as null, source is the override");
    ov_fails(c, "~model.nothere", "unknown key 'model.nothere'", "nothing to delete", NULL);
    CHECK(ov(c, "~model.num_layers"), "~model.num_layers");
    ov_fails(c, "model.num_layers=3", "'model.num_layers' does not exist",
             "deleted by command line override '~model.num_layers'", "+model.num_layers=", NULL);
    expect_death(get_int, "cfg_int", c, "model.num_layers", "deleted by command line override '~model.num_layers'",
                 "int");
    CHECK(ov(c, "+model.num_layers=3") && cfg_int(c, "model.num_layers") == 3, "+ adds a deleted key back");
    ov_fails(c, "~model.num_layers=4", "its value is int 3", NULL);
    ov_fails(c, "++train.train_iters=x", "expected int", NULL);
    /* a deleted section */
    CHECK(ov(c, "~logger"), "~section");
    expect_death(get_int, "cfg_int", c, "logger.log_interval", "deleted by command line override '~logger'", NULL);
    CHECK(ov(c, "+logger={log_interval: 5}") && cfg_int(c, "logger.log_interval") == 5, "+section={...} re-adds it");
    ov_fails(c, "+logger.output_dir=[1]", "logger.output_dir", "expected string", NULL); /* typed when re-added */
    cfg_free(c);
}

/* ------------------------------------------------------------------------------------------------ YAML files */

static void test_yaml_files(void) {
    /* precedence recipe < file < CLI */
    const char *f = write_file("over.yaml", "# an override file\n"
                                            "train:\n"
                                            "  train_iters: 50\n"
                                            "  global_batch_size: 16\n"
                                            "optimizer: {lr: 2e-4}\n"
                                            "checkpoint:\n"
                                            "  load: runs/old\n"
                                            "model:\n");
    char *argv[] = {"pretrain", "--config-file", (char *)f, "train.train_iters=60", "rng.seed=7", NULL};
    cfg *c = NULL;
    cfg_cli o = {0};
    int rc = cfg_from_args(5, argv, &c, &o, err, sizeof err);
    CHECK(rc == 0, "cfg_from_args with a file and overrides %s", rc ? err : "");
    if (!c) return;
    char want[512];
    snprintf(want, sizeof want, "%s:4", f);
    CHECK(cfg_int(c, "train.train_iters") == 60 && has(cfg_source(c, "train.train_iters"), "override") &&
              cfg_int(c, "train.global_batch_size") == 16 && !strcmp(cfg_source(c, "train.global_batch_size"), want) &&
              cfg_float(c, "optimizer.lr") == 2e-4 && cfg_float(c, "optimizer.min_lr") == 1e-5 &&
              !strcmp(cfg_str(c, "checkpoint.load"), "runs/old") && cfg_int(c, "rng.seed") == 7 &&
              cfg_int(c, "model.num_layers") == 6 &&
              !strcmp(cfg_source(c, "model.num_layers"), "recipe dit_fashion_mnist"),
          "precedence recipe < file < CLI; file values carry FILE:LINE ('%s')",
          cfg_source(c, "train.global_batch_size"));
    CHECK(!strcmp(o.recipe, "dit_fashion_mnist") && o.config_file == f && !o.print_config,
          "cfg_cli reports the inputs");
    cfg_free(c);

    /* errors with line numbers */
    struct {
        const char *name, *text, *pieces[4];
    } bad[] = {
        {"syntax.yaml",
         "train:\n  train_iters: 5\n  eval_iters: [1, 2\nmodel:\n  num_layers: 3\n",
         {":4:", "YAML syntax error"}},
        {"syntax2.yaml", "train:\n  train_iters: 5\n eval_iters: 3\n", {"syntax2.yaml:3:", "syntax error"}},
        {"unknown.yaml",
         "train:\n  train_iters: 5\n\n  global_batch: 8\n",
         {"unknown.yaml:4", "unknown key 'train.global_batch'", "did you mean 'train.global_batch_size'"}},
        {"unknown_section.yaml",
         "# top\nmodle:\n  num_layers: 3\n",
         {"unknown_section.yaml:2", "unknown key 'modle'", "did you mean 'model'"}},
        {"type.yaml",
         "model:\n  hidden_size: 64\n  num_layers: six\n",
         {"type.yaml:3", "model.num_layers", "expected int", "string 'six'"}},
        {"type2.yaml",
         "optimizer:\n  lr: \"1e-3\"\n",
         {"type2.yaml:2", "optimizer.lr", "expected float", "string '1e-3'"}},
        {"type3.yaml", "train:\n  train_iters: 1.5e3\n", {"type3.yaml:2", "expected int", "float 1500"}},
        {"enum.yaml",
         "scheduler:\n  lr_decay_style: cosine\ndiffusion:\n  timestep_sampling: logit-normal\n",
         {"enum.yaml:4", "diffusion.timestep_sampling", "uniform|logit_normal", "did you mean 'logit_normal'"}},
        {"section.yaml", "train: 5\n", {"section.yaml:1", "'train' is a section"}},
        {"toplist.yaml", "- a\n- b\n", {"toplist.yaml:1", "top level must be a map"}},
        {"dup.yaml", "train:\n  train_iters: 1\n  train_iters: 2\n", {"dup.yaml:3", "duplicate key 'train_iters'"}},
        {"null.yaml", "rng:\n  seed: null\n", {"null.yaml:2", "rng.seed", "expected int"}},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *p = write_file(bad[i].name, bad[i].text);
        c = recipe("dit_fashion_mnist");
        err[0] = 0;
        rc = cfg_merge_file(c, p, err, sizeof err);
        int ok = rc != 0;
        for (int k = 0; k < 4 && bad[i].pieces[k]; k++) ok = ok && has(err, bad[i].pieces[k]);
        CHECK(ok, "%s refused: %s", bad[i].name, err);
        cfg_free(c);
    }
    c = recipe("dit_fashion_mnist");
    rc = cfg_merge_file(c, test_path("%s/missing.yaml", tmpdir), err, sizeof err);
    CHECK(rc != 0 && has(err, "missing.yaml") && has(err, "cannot open"), "missing file: %s", err);
    rc = cfg_merge_file(c, write_file("empty.yaml", "# nothing\n"), err, sizeof err);
    CHECK(rc == 0, "an empty file merges as nothing");
    cfg_free(c);

    /* free-form maps merge recursively; lists replace; scalars replace */
    c = cfg_new("test");
    cfg_def(c, "opt.extra", CFG_MAP, "{a: 1, b: {c: 2}}", "free-form");
    cfg_def(c, "opt.betas", CFG_LIST, "[0.9, 0.95]", "a list");
    cfg_def(c, "opt.name", CFG_STR, "x", "a string");
    rc = cfg_merge_string(c, "opt:\n  extra:\n    b: {d: 3}\n    z: [4]\n  betas: [0.5]\n", "ff.yaml", err, sizeof err);
    CHECK(rc == 0 && cfg_int(c, "opt.extra.a") == 1 && cfg_int(c, "opt.extra.b.c") == 2 &&
              cfg_int(c, "opt.extra.b.d") == 3 && cfg_list_int(c, "opt.extra.z", 0) == 4 &&
              cfg_len(c, "opt.betas") == 1 && cfg_list_float(c, "opt.betas", 0) == 0.5 &&
              !strcmp(cfg_source(c, "opt.extra.b.d"), "ff.yaml:3"),
          "free-form maps merge recursively, lists replace %s", rc ? err : "");
    CHECK(ov(c, "opt.extra.new=5") && cfg_int(c, "opt.extra.new") == 5, "a free-form map takes new keys from a.b=v");
    ov_fails(c, "opt.betas=5", "opt.betas", "expected list", NULL);
    rc = cfg_merge_string(c, "opt:\n  nme: y\n", "ff2.yaml", err, sizeof err);
    CHECK(rc != 0 && has(err, "ff2.yaml:2") && has(err, "did you mean 'opt.name'"), "custom schema: %s", err);
    cfg_free(c);
}

/* ------------------------------------------------------------------------------------------------ training mode */

static void test_training_mode(void) {
    char *a1[] = {"pretrain", "--training-mode", "pretrain", NULL};
    cfg *c = NULL;
    int rc = cfg_from_args(3, a1, &c, NULL, err, sizeof err);
    CHECK(rc == 0 && !strcmp(cfg_str(c, "diffusion.timestep_sampling"), "logit_normal") &&
              cfg_float(c, "diffusion.logit_std") == 1.5 && cfg_float(c, "diffusion.flow_shift") == 2.5 &&
              cfg_float(c, "diffusion.mix_uniform_ratio") == 0.2 &&
              !strcmp(cfg_source(c, "diffusion.flow_shift"), "--training-mode pretrain"),
          "--training-mode pretrain: logit_normal, 1.5, 2.5, 0.2");
    cfg_free(c);
    char *a2[] = {"pretrain", "--training-mode=finetune", NULL};
    rc = cfg_from_args(2, a2, &c, NULL, err, sizeof err);
    CHECK(rc == 0 && !strcmp(cfg_str(c, "diffusion.timestep_sampling"), "uniform") &&
              cfg_float(c, "diffusion.logit_std") == 1.0 && cfg_float(c, "diffusion.flow_shift") == 3.0 &&
              cfg_float(c, "diffusion.mix_uniform_ratio") == 0.1,
          "--training-mode finetune: uniform, 1.0, 3.0, 0.1");
    cfg_free(c);
    /* the preset sits below the file and the overrides, wherever it is written */
    const char *f = write_file("mode.yaml", "diffusion:\n  flow_shift: 4.0\n  logit_std: 2.0\n");
    char *a3[] = {"pretrain", "diffusion.logit_std=0.7", "--config-file", (char *)f, "--training-mode", "pretrain",
                  NULL};
    rc = cfg_from_args(6, a3, &c, NULL, err, sizeof err);
    CHECK(rc == 0 && cfg_float(c, "diffusion.flow_shift") == 4.0 && cfg_float(c, "diffusion.logit_std") == 0.7 &&
              cfg_float(c, "diffusion.mix_uniform_ratio") == 0.2 &&
              !strcmp(cfg_str(c, "diffusion.timestep_sampling"), "logit_normal"),
          "preset < file < override");
    cfg_free(c);
    char *a4[] = {"pretrain", "--training-mode", "pretraining", NULL};
    rc = cfg_from_args(3, a4, &c, NULL, err, sizeof err);
    CHECK(rc != 0 && !c && has(err, "pretraining") && has(err, "pretrain or finetune"), "bad mode: %s", err);
}

/* ------------------------------------------------------------------------------------------------ command line */

static void test_cli(void) {
    cfg *c = NULL;
    cfg_cli o = {.default_recipe = "dit_s2"};
    /* --peak-tflops X is the override logger.peak_tflops=X, in its place among the overrides */
    char *p1[] = {"pretrain", "--peak-tflops", "2.5", NULL},
         *p2[] = {"pretrain", "logger.peak_tflops=1", "--peak-tflops=3", NULL};
    char *p3[] = {"pretrain", "--peak-tflops=3", "logger.peak_tflops=1", NULL},
         *p4[] = {"pretrain", "--peak-tflops", NULL};
    int ok = cfg_from_args(3, p1, &c, NULL, err, sizeof err) == 0 && cfg_float(c, "logger.peak_tflops") == 2.5;
    cfg_free(c);
    ok = ok && cfg_from_args(3, p2, &c, NULL, err, sizeof err) == 0 && cfg_float(c, "logger.peak_tflops") == 3.0;
    cfg_free(c);
    ok = ok && cfg_from_args(3, p3, &c, NULL, err, sizeof err) == 0 && cfg_float(c, "logger.peak_tflops") == 1.0;
    cfg_free(c);
    c = NULL;
    int refused = cfg_from_args(2, p4, &c, NULL, err, sizeof err) != 0 && !c && has(err, "--peak-tflops needs a value");
    CHECK(ok && refused, "--peak-tflops X sets logger.peak_tflops in command-line order; without a value: %s", err);
    char *a1[] = {"pretrain", "--print-config", NULL};
    int rc = cfg_from_args(2, a1, &c, &o, err, sizeof err);
    CHECK(rc == 0 && o.print_config && !strcmp(cfg_recipe_of(c), "dit_s2") && !strcmp(o.recipe, "dit_s2"),
          "default recipe from the caller, --print-config flag");
    cfg_free(c);
    char *a2[] = {"pretrain", "--recipe", "dit_b2", NULL};
    rc = cfg_from_args(3, a2, &c, &o, err, sizeof err);
    CHECK(rc == 0 && cfg_int(c, "model.hidden_size") == 768, "--recipe NAME");
    cfg_free(c);
    char *a3[] = {"pretrain", "--recipe=dit_l2", NULL};
    rc = cfg_from_args(2, a3, &c, &o, err, sizeof err);
    CHECK(rc == 0 && cfg_int(c, "model.hidden_size") == 1024, "--recipe=NAME");
    cfg_free(c);
    struct {
        int argc;
        char *argv[4];
        const char *piece;
    } bad[] = {
        {2, {"pretrain", "--config-file"}, "--config-file needs a value"},
        {2, {"pretrain", "--lr=3"}, "unknown option '--lr=3'"},
        {2, {"pretrain", "train_iters"}, "unexpected argument 'train_iters'"},
        {3, {"pretrain", "--recipe", "nope"}, "unknown recipe 'nope'"},
        {3, {"pretrain", "--config-file", "/nonexistent/x.yaml"}, "/nonexistent/x.yaml"},
        {3, {"pretrain", "rng.seed=1", "rng.sed=2"}, "did you mean 'rng.seed'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        c = (cfg *)1;
        rc = cfg_from_args(bad[i].argc, bad[i].argv, &c, NULL, err, sizeof err);
        CHECK(rc != 0 && c == NULL && has(err, bad[i].piece), "command line refused: %s", err);
    }
    char *a4[] = {"pretrain", "--help", "model.num_layers=3", NULL};
    rc = cfg_from_args(3, a4, &c, &o, err, sizeof err);
    CHECK(rc == 0 && o.help && c && cfg_int(c, "model.num_layers") == 12, "--help gives the bare recipe");
    FILE *hf = tmpfile();
    cfg_help(c, hf);
    long len = ftell(hf);
    rewind(hf);
    char *text = calloc(1, (size_t)len + 1);
    CHECK(fread(text, 1, (size_t)len, hf) == (size_t)len && has(text, "model.num_layers") && has(text, "int") &&
              has(text, "transformer blocks") && has(text, "cosine|linear|constant") && has(text, "string|null"),
          "cfg_help lists keys with type, default and help");
    free(text);
    fclose(hf);
    cfg_free(c);
}

/* ------------------------------------------------------------------------------------------------ round trips */

static void test_round_trip(void) {
    /* declared keys only: printed YAML loads over the same recipe to the same tree */
    cfg *c = recipe("dit_b2");
    const char *ovs[] = {"optimizer.lr=0.1",           "optimizer.min_lr=3.3333333333333335e-05",
                         "train.ema_decay=1e20",       "diffusion.logit_mean=-0.0",
                         "dataset.path='123'",         "logger.output_dir='x: #y'",
                         "checkpoint.load=\"true\"",   "checkpoint.save=null",
                         "diffusion.sigma_min=1e-300", "diffusion.flow_shift=7"};
    int ok = 1;
    for (size_t i = 0; i < sizeof ovs / sizeof ovs[0]; i++) ok = ok && ov(c, ovs[i]);
    CHECK(ok, "round-trip overrides apply %s", err);
    char *y = cfg_to_yaml(c);
    const char *f = write_file("printed.yaml", y);
    cfg *d = recipe("dit_b2");
    int rc = cfg_merge_file(d, f, err, sizeof err);
    CHECK(rc == 0 && cfg_equal(c, d) && !strcmp(cfg_str(d, "checkpoint.load"), "true") &&
              !strcmp(cfg_str(d, "dataset.path"), "123") && cfg_float(d, "optimizer.lr") == 0.1,
          "--print-config output reloads over the recipe to the identical tree %s", rc ? err : "");
    CHECK(has(y, "lr: 0.1\n") && has(y, "min_lr: 3.3333333333333335e-05\n") && has(y, "ema_decay: 1.0e+20\n") &&
              has(y, "flow_shift: 7.0\n") && has(y, "load: \"true\"\n") && has(y, "path: \"123\"\n"),
          "floats print short and stay floats, strings that look like other types are quoted");
    char *y2 = cfg_to_yaml(d);
    CHECK(!strcmp(y, y2), "printing the reloaded tree gives the same text");
    free(y2);
    free(y);
    cfg_free(d);
    /* the annotated form is valid YAML too */
    y = cfg_to_yaml_annotated(c);
    d = recipe("dit_b2");
    rc = cfg_merge_string(d, y, "annotated", err, sizeof err);
    CHECK(rc == 0 && cfg_equal(c, d) && has(y, "# command line override 'optimizer.lr=0.1'"),
          "annotated YAML (sources as comments) reloads identically");
    free(y);
    cfg_free(d);

    /* added keys, nested collections, awkward strings: the printed text parses back to the same tree */
    const char *more[] = {"+extra.list=[1, 2.5, 'a b', null, true, [3, {k: v}], {}]",
                          "+extra.map={'key with space': 1, '123': two, 'a:b': '#c', empty: ''}",
                          "+extra.strs=['null', 'yes', '~', '-1', '.5', ' lead', 'tab\there', \"quote\\\"d\", 'ü']",
                          "+extra.big=9223372036854775807",
                          "+extra.neg=-9223372036854775808",
                          "+extra.inf=-.inf",
                          "+extra.nan=.nan",
                          "+extra.emptylist=[]",
                          "+extra.emptymap={}",
                          "~model.num_layers"};
    ok = 1;
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++) {
        int r = ov(c, more[i]);
        if (!r) printf("# %s: %s\n", more[i], err);
        ok = ok && r;
    }
    CHECK(ok, "overrides with awkward values apply");
    y = cfg_to_yaml(c);
    d = cfg_new("raw"); /* no declarations: a schema-less tree */
    rc = cfg_merge_string(d, y, "printed", err, sizeof err);
    CHECK(rc == 0 && cfg_equal(c, d) && cfg_equal(d, c), "printed YAML parses back to the identical tree %s",
          rc ? err : "");
    if (rc == 0 && !cfg_equal(c, d)) printf("%s", y);
    CHECK(cfg_kind_of(d, "extra.big") == CFG_INT && cfg_int(d, "extra.big") == INT64_MAX &&
              cfg_int(d, "extra.neg") == INT64_MIN && !strcmp(cfg_list_str(d, "extra.strs", 5), " lead") &&
              !strcmp(cfg_list_str(d, "extra.strs", 8), "ü") && !strcmp(cfg_str(d, "extra.map.a:b"), "#c"),
          "int64 limits, leading spaces, UTF-8, ':' and '#' survive");
    ov_fails(c, "+extra.huge=9223372036854775808", "out of range", NULL);
    free(y);
    cfg_free(d);

    /* cfg_write_yaml: atomic file, same text */
    const char *rcpath = test_path("%s/run_config.yaml", tmpdir);
    cfg_write_yaml(c, rcpath);
    d = cfg_new("raw");
    rc = cfg_merge_file(d, rcpath, err, sizeof err);
    CHECK(rc == 0 && cfg_equal(c, d), "cfg_write_yaml writes run_config.yaml that reads back identically");
    cfg_free(d);
    cfg_free(c);
}

/* `dfm config` prints what cfg_from_args resolves; errors go to stderr with exit status 1. */
static void test_dfm_config_cmd(void) {
    const char *out = test_path("%s/dfm_config.yaml", tmpdir), *errf = test_path("%s/dfm_config.err", tmpdir);
    const char *f = write_file("cmd.yaml", "train:\n  eval_iters: 9\n");
    int rc = test_sh("%s config --recipe dit_s2 --training-mode finetune --config-file %s 'model.num_layers=3' "
                     "'+extra={a: [1, x]}' >%s 2>%s",
                     test_dfm_bin(), f, out, errf);
    char *argv[] = {"config",
                    "--recipe",
                    "dit_s2",
                    "--training-mode",
                    "finetune",
                    "--config-file",
                    (char *)f,
                    "model.num_layers=3",
                    "+extra={a: [1, x]}",
                    NULL};
    cfg *want = NULL;
    CHECK(cfg_from_args(9, argv, &want, NULL, err, sizeof err) == 0, "in-process resolution %s", err);
    cfg *got = cfg_new("raw");
    int lrc = rc == 0 ? cfg_merge_file(got, out, err, sizeof err) : -1;
    CHECK(rc == 0 && lrc == 0 && want && cfg_equal(got, want) && cfg_int(got, "model.num_layers") == 3 &&
              cfg_int(got, "train.eval_iters") == 9 && cfg_float(got, "diffusion.flow_shift") == 3.0,
          "dfm config (exit %d) prints the tree cfg_from_args resolves %s", rc, lrc ? err : "");
    cfg_free(got);
    cfg_free(want);
    rc = test_sh("%s config model.num_layer=3 >%s 2>%s", test_dfm_bin(), out, errf);
    char *msg = test_read_file(errf, NULL);
    if (msg && strchr(msg, '\n')) *strchr(msg, '\n') = 0;
    CHECK(rc == 1 && has(msg, "unknown key 'model.num_layer'") && has(msg, "did you mean 'model.num_layers'"),
          "dfm config with a bad key exits 1: %s", msg ? msg : "(no stderr)");
    free(msg);
    rc = test_sh("%s config --help >%s 2>%s", test_dfm_bin(), out, errf);
    msg = test_read_file(out, NULL);
    CHECK(rc == 0 && has(msg, "dit_xl2") && has(msg, "--config-file") && has(msg, "model.num_layers"),
          "dfm config --help lists recipes, options and keys");
    free(msg);
}

/* ------------------------------------------------------------------------------------------------ getters */

static void test_getters(void) {
    cfg *c = recipe("dit_fashion_mnist");
    const char *f = write_file("g.yaml", "optimizer:\n  weight_decay: 0.05\n");
    CHECK(cfg_merge_file(c, f, err, sizeof err) == 0 && ov(c, "train.ema_decay=0.99"), "getter fixture");
    expect_death(get_int, "cfg_int", c, "optimizer.weight_decay", "float 0.05", "g.yaml:2");
    expect_death(get_int, "cfg_int", c, "train.ema_decay", "float 0.99",
                 "command line override 'train.ema_decay=0.99'");
    expect_death(get_str, "cfg_str", c, "model.num_layers", "must be a string", "recipe dit_fashion_mnist");
    expect_death(get_bool, "cfg_bool", c, "train.device", "must be a bool", "string 'cpu'");
    expect_death(get_float, "cfg_float", c, "model.recompute_num_layers", "null", "recipe dit_fashion_mnist");
    expect_death(get_int, "cfg_int", c, "model.num_layer", "does not exist", "did you mean 'model.num_layers'");
    expect_death(get_int, "cfg_int", c, "model.num_layers.0", "does not exist", NULL);
    CHECK(cfg_float(c, "model.num_layers") == 6.0, "cfg_float reads an int");
    CHECK(!cfg_has(c, "nope") && cfg_kind_of(c, "nope") == -1 && cfg_source(c, "nope") == NULL, "absent key");
    CHECK(cfg_len(c, "model") == 28 && !strcmp(cfg_key_at(c, "model", 0), "kind") &&
              !strcmp(cfg_key_at(c, "", 0), "model"),
          "map iteration");
    CHECK(cfg_len(c, "peft") == 8 && !cfg_bool(c, "peft.merged_backward") && ov(c, "peft.merged_backward=true") &&
              cfg_bool(c, "peft.merged_backward"),
          "peft: 8 keys (dim, alpha, dropout, use_rslora, target_modules, exclude_modules, match_all_linear, "
          "merged_backward, default false)");
    cfg_free(c);
}

int main(void) {
    tmpdir = test_mkdtemp();
    test_recipes();
    test_override_set();
    test_override_add_delete();
    test_yaml_files();
    test_training_mode();
    test_cli();
    test_round_trip();
    test_dfm_config_cmd();
    test_getters();
    test_rmtree(tmpdir);
    free(tmpdir);
    return test_finish();
}
