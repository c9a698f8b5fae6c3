/* dfm configuration: one typed tree for every command, built in layers (Megatron's convention):
 *
 *     base recipe (C, src/core/recipes.c)  <  --training-mode preset  <  --config-file X.yaml  <  overrides
 *
 * The recipe is the schema: every valid key is declared in it with a type, a default and a one-line help.
 * A YAML file merges over it (maps merge recursively, scalars and lists replace); command-line overrides use
 * Hydra's grammar:
 *     a.b=v     set an existing key            +a.b=v    add a key (error if it exists)
 *     ++a.b=v   add or set                     ~a.b      delete       ~a.b=v   delete if the value is v
 *     a.0=v     set a list element; values are YAML flow: 3, 1e-4, true, null, 'x y', [1, 2], {k: v}
 * Every value remembers where it came from ("recipe dit_s2", "FILE:LINE", "command line override 'a.b=c'"),
 * and every error names the key, that source, and the nearest valid key. Loading never exits: errors come
 * back as text. The typed getters (cfg_int, ...) are for consumers and exit through dfm_die naming the key
 * and its source when the value is missing or of the wrong type. */
#ifndef DFM_CONFIG_H
#define DFM_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cfg cfg;

/* Declared types. CFG_NULLABLE may be or-ed in; a NULL default makes a key nullable by itself. A CFG_MAP
 * key is a free-form map: any sub-keys are accepted below it. */
typedef enum {
    CFG_NULL = 0, /* only as a value kind (cfg_kind_of), never declared */
    CFG_BOOL,
    CFG_INT,
    CFG_FLOAT,
    CFG_STR,
    CFG_LIST,
    CFG_MAP,
    CFG_NULLABLE = 0x100
} cfg_type;

/* ---- defining a recipe (programmer errors here die: recipes are code) ---- */

/* An empty tree whose declared defaults will carry the source "recipe <name>". */
cfg *cfg_new(const char *recipe_name);
void cfg_free(cfg *c);
/* Declare `key` (dotted; parents become sections) with a type, a default written as a YAML flow value
 * ("6", "1e-3", "true", "cosine", "[1, 2]", "{}"; NULL = null) and a one-line help. */
void cfg_def(cfg *c, const char *key, int type, const char *default_yaml, const char *help);
/* A string key restricted to `choices` ("cosine|linear|constant"); checked whenever a value is set. */
void cfg_def_enum(cfg *c, const char *key, int nullable, const char *default_yaml, const char *choices,
                  const char *help);
/* Change a declared key's default (recipe variants); dies if the key is unknown or the value mistyped. */
void cfg_set_default(cfg *c, const char *key, const char *default_yaml);

/* ---- the built-in recipes ---- */

int cfg_recipe_count(void);
const char *cfg_recipe_name(int i);
const char *cfg_recipe_summary(int i);
/* A fresh tree for a named recipe, or NULL with the list of recipes in err. */
cfg *cfg_recipe(const char *name, char *err, size_t errlen);

/* ---- layers: each returns 0, or -1 with a message in err (the tree may then be partly updated) ---- */

/* "pretrain" or "finetune": DFM's flow-matching presets for diffusion.* (REFERENCE.md §1). */
int cfg_apply_training_mode(cfg *c, const char *mode, char *err, size_t errlen);
int cfg_merge_file(cfg *c, const char *path, char *err, size_t errlen);
/* `name` is what sources and errors call the text (e.g. a file name). */
int cfg_merge_string(cfg *c, const char *yaml, const char *name, char *err, size_t errlen);
/* Merge an already parsed YAML tree (yamltree.h) like a file: for callers that rewrite the tree first (renamed
 * keys, expanded variables). source: every value's source, or NULL for each node's FILE:LINE. */
struct yt_node;
int cfg_merge_tree(cfg *c, const struct yt_node *y, const char *source, char *err, size_t errlen);
/* One Hydra override, e.g. "++train.train_iters=10". */
int cfg_override(cfg *c, const char *arg, char *err, size_t errlen);

/* ---- the command line: [--recipe NAME] [--config-file F] [--training-mode M] [--print-config] [overrides] ---- */

typedef struct {
    const char *default_recipe; /* in: used when --recipe is absent (NULL = "dit_fashion_mnist") */
    /* out: */
    const char *recipe;        /* the recipe used */
    const char *config_file;   /* NULL if none */
    const char *training_mode; /* NULL if none */
    int print_config;          /* --print-config was given */
    int help;                  /* --help / -h was given: *out is then the bare recipe, for cfg_help */
} cfg_cli;

/* The options and override grammar above plus the list of recipes, for a command's --help. */
void cfg_cli_usage(FILE *f);

/* argv[0] is the command name and is skipped. Every remaining argument that is not one of the flags above
 * must be an override (contains '=' or starts with '~'); unknown --flags are errors. On success *out is the
 * resolved tree (free with cfg_free); on error returns -1, *out = NULL and the message is in err. */
int cfg_from_args(int argc, char **argv, cfg **out, cfg_cli *opts, char *err, size_t errlen);

/* ---- reading (consumers). Keys are dotted paths; a numeric component indexes a list ("a.b.0"). ---- */

int cfg_has(const cfg *c, const char *key);      /* the key holds a value (null counts) */
int cfg_kind_of(const cfg *c, const char *key);  /* CFG_NULL..CFG_MAP of the value; -1 if absent */
int64_t cfg_int(const cfg *c, const char *key);  /* ints only: a float is an error */
double cfg_float(const cfg *c, const char *key); /* floats and ints */
int cfg_bool(const cfg *c, const char *key);
const char *cfg_str(const cfg *c, const char *key);           /* NULL when the value is null */
int cfg_is_null(const cfg *c, const char *key);               /* a deleted nullable key reads as null */
int cfg_len(const cfg *c, const char *key);                   /* items of a list or pairs of a map */
const char *cfg_key_at(const cfg *c, const char *key, int i); /* i-th key of a map */
int64_t cfg_list_int(const cfg *c, const char *key, int i);
double cfg_list_float(const cfg *c, const char *key, int i);
const char *cfg_list_str(const cfg *c, const char *key, int i);
/* Where the value came from; for a deleted key the override that deleted it; NULL if it never existed. */
const char *cfg_source(const cfg *c, const char *key);
const char *cfg_recipe_of(const cfg *c); /* the recipe name the tree was built from */

/* ---- output ---- */

/* The resolved tree as YAML (malloc'ed); the loader reads it back to the same tree. */
char *cfg_to_yaml(const cfg *c);
/* The same with each value's source as a trailing comment. */
char *cfg_to_yaml_annotated(const cfg *c);
/* Write cfg_to_yaml atomically (temporary file, fsync, rename), e.g. run_config.yaml. Dies on I/O errors. */
void cfg_write_yaml(const cfg *c, const char *path);
/* Every declared key with its type, default and help. */
void cfg_help(const cfg *c, FILE *f);
/* 1 if both trees hold the same keys, kinds and values (sources are not compared). */
int cfg_equal(const cfg *a, const cfg *b);

#ifdef __cplusplus
}
#endif
#endif
