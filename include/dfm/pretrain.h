/* The training job: a resolved config tree in, a trained model with checkpoints, metrics and a loss curve
 * out. `dfm pretrain` is a thin wrapper around dfm_pretrain(); a user program can call it the same way. */
#ifndef DFM_PRETRAIN_H
#define DFM_PRETRAIN_H

#include "dfm/config.h"
#include "dfm/diffusion.h"
#include "dfm/dit.h"
#include "dfm/wan.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Learning rate at iteration `it` (0-based): linear warmup to lr over warmup iterations, then cosine, linear
 * or constant decay to min_lr at decay_iters, min_lr after. */
typedef enum { LR_COSINE, LR_LINEAR, LR_CONSTANT } lr_style;
double lr_schedule(long it, double lr, double min_lr, long warmup, long decay_iters, lr_style style);

/* Bind config sections to the structs the library uses; die with the key named on bad values. */
void config_to_dit(const cfg *c, dit_config *out);
void config_to_wan(const cfg *c, wan_config *out); /* model.kind = wan */
void config_to_objective(const cfg *c, objective_config *out);

/* Run the job described by c. Returns 0 on success. */
int dfm_pretrain(const cfg *c);

/* Resolve a checkpoint path: an iter_NNNNNNN folder, or a root holding latest_checkpointed_iteration.txt.
 * Returns the iter folder (malloc'ed) or NULL with a message. */
char *checkpoint_resolve(const char *path, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
