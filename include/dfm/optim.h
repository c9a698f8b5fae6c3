/* AdamW over a named parameter table (weight decay skipped where the table says no_decay), with
 * global-norm gradient clipping, and an EMA of the weights. */
#ifndef DFM_OPTIM_H
#define DFM_OPTIM_H

#include "dfm/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
    float clip_grad; /* max global norm; <= 0 disables clipping */
} adamw_config;

typedef struct {
    adamw_config cfg;
    const param_table *table;
    size_t begin, end; /* the range of the table this state covers (all of it, or one rank's shard) */
    float *m, *v;      /* one buffer each, end - begin floats */
    long step;         /* updates taken */
} adamw_state;

void adamw_config_defaults(adamw_config *c); /* lr 1e-4, betas (0.9, 0.999), eps 1e-8, wd 0.01, clip 1.0 */
void adamw_init(adamw_state *s, const param_table *t, const adamw_config *cfg);
/* State for the table's range [begin, end) only: a data-parallel rank's shard of the optimizer. */
void adamw_init_range(adamw_state *s, const param_table *t, const adamw_config *cfg, size_t begin, size_t end);
void adamw_free(adamw_state *s);
/* One AdamW update of the state's range at learning rate lr, without clipping: params and grads point at the
 * range's first element (offset `begin` of the table). */
void adamw_step_range(adamw_state *s, float *params, const float *grads, float lr);
/* Clip grads, then one AdamW update at learning rate lr. Returns the gradient norm before clipping. */
double adamw_update(adamw_state *s, float *params, float *grads, float lr);

#ifdef __cplusplus
}
#endif
#endif
