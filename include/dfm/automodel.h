/* The Automodel paradigm's recipe: `dfm finetune -c recipe.yaml [--a.b.c value | --a.b.c=value ...]`
 * (NeMo Automodel's diffusion recipes, REFERENCE.md §1 and §6), built on the config tree (config.h).
 *
 *     defaults (C, automodel_defaults)  <  -c recipe.yaml  <  --a.b.c value overrides
 *
 * Sections: seed, model, step_scheduler, data.dataloader, optimizer, clip_grad_norm, lr_scheduler,
 * flow_matching, fsdp, ddp, checkpoint, peft (and wandb, dist_env, accepted as free-form maps and unused).
 * A recipe file holds only what differs from the defaults; every key must be declared (errors name the file,
 * line and the nearest key). Loading rewrites the parsed YAML first:
 *  - DFM's and older Automodel spellings are accepted with one note each naming the new key
 *    (optim.learning_rate -> optimizer.lr, optim.optimizer.weight_decay -> optimizer.weight_decay, ...);
 *  - ${VAR} and ${VAR,default} in scalars expand from the environment (an unset VAR without a default is an
 *    error naming the key and the variable); the expanded text is then typed as YAML (${LR,1e-4} is a float);
 *  - an unquoted none / None is null (Automodel's recipes write `dp_size: none`).
 * Override values are YAML flow values (3, 1e-4, true, null, none, [0.9, 0.95], 'x y'); text that does not
 * parse as YAML is taken as a string; a bare --flag (no value follows) is true.
 *
 * Model-mode defaults: the C defaults are the finetune ones (lr 5e-6, wd 0.01, betas [0.9, 0.999], uniform
 * sampling, flow_shift 3.0, mix 0.1); pretraining recipes state theirs (the shipped pretrain recipes), as
 * Automodel's do. LoRA is on when peft.target_modules is non-empty or peft.match_all_linear is true. */
#ifndef DFM_AUTOMODEL_H
#define DFM_AUTOMODEL_H

#include "dfm/config.h"
#include "dfm/diffusion.h"
#include "dfm/optim.h"

#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A fresh tree holding every declared key at its default (recipe name "automodel"). */
cfg *automodel_defaults(void);

typedef struct {
    FILE *notes; /* in: where the one-line notes about old spellings go (NULL = stderr) */
    /* out: */
    const char *config_file; /* the -c file (NULL if none) */
    int help;                /* -h / --help was given */
} automodel_cli;

/* Merge a recipe file: renames, ${VAR} expansion and none -> null, then the typed merge. 0 or -1 (err). */
int automodel_merge_file(cfg *c, const char *path, FILE *notes, char *err, size_t errlen);
/* One override: key is dotted without the leading "--"; value as typed (NULL = a bare flag = true). */
int automodel_override(cfg *c, const char *key, const char *value, FILE *notes, char *err, size_t errlen);
/* argv[0] is skipped. -c FILE / --config FILE / --config=FILE, -h/--help, then --a.b.c value | --a.b.c=value.
 * On success *out is the resolved tree; on error -1, *out = NULL, message in err. */
int automodel_from_args(int argc, char **argv, cfg **out, automodel_cli *opts, char *err, size_t errlen);
void automodel_usage(FILE *f);

/* Consistency for a run over `world` processes: tp*cp*pp*dp = world (dp = fsdp.dp_size, or what is left),
 * global_batch_size divisible by local_batch_size x dp, betas a pair, sigma_min <= sigma_max, ... . Fills the
 * data-parallel size and the gradient-accumulation steps (global / (local x dp)). */
typedef struct {
    int dp, tp, cp, pp, dp_replicate;
    int grad_accum;
} automodel_plan;
int automodel_check(const cfg *c, int world, automodel_plan *plan, char *err, size_t errlen);

/* The core's configs from the recipe: flow matching (objective_defaults_flow, then flow_matching.*, with
 * cfg_dropout_prob as cond_dropout_prob) and AdamW (optimizer.*, clip_grad_norm.max_norm). */
int automodel_objective(const cfg *c, objective_config *o, char *err, size_t errlen);
int automodel_adamw(const cfg *c, adamw_config *a, char *err, size_t errlen);

/* checkpoint.save_consolidated normalised: 0 = false, 1 = final, 2 = every (true is every). */
int automodel_save_consolidated(const cfg *c);
/* 1 when peft enables LoRA (see above). */
int automodel_peft_enabled(const cfg *c);

#ifdef __cplusplus
}
#endif
#endif
