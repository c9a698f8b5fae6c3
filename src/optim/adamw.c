/* AdamW over a parameter table. */
#include "dfm/optim.h"
#include "dfm/common.h"
#include "dfm/kernels.h"

#include <stdlib.h>

void adamw_config_defaults(adamw_config *c) {
    c->lr = 1e-4f;
    c->beta1 = 0.9f;
    c->beta2 = 0.999f;
    c->eps = 1e-8f;
    c->weight_decay = 0.01f;
    c->clip_grad = 1.0f;
}

void adamw_init(adamw_state *s, const param_table *t, const adamw_config *cfg) {
    s->cfg = *cfg;
    s->table = t;
    s->m = xalloc_floats(t->total);
    s->v = xalloc_floats(t->total);
    s->step = 0;
}

void adamw_free(adamw_state *s) {
    free(s->m);
    free(s->v);
    s->m = s->v = NULL;
}

double adamw_update(adamw_state *s, float *params, float *grads, float lr) {
    const param_table *t = s->table;
    double norm = s->cfg.clip_grad > 0 ? clip_grad_norm(grads, t->total, s->cfg.clip_grad)
                                       : global_norm(grads, t->total);
    s->step++;
    /* consecutive tensors with the same decay setting go to the kernel as one run */
    int i = 0;
    while (i < t->n) {
        int j = i;
        while (j + 1 < t->n && t->e[j + 1].no_decay == t->e[i].no_decay) j++;
        size_t off = t->e[i].offset, n = t->e[j].offset + t->e[j].numel - off;
        adamw_step(params + off, grads + off, s->m + off, s->v + off, n, lr, s->cfg.beta1, s->cfg.beta2, s->cfg.eps,
                   t->e[i].no_decay ? 0.0f : s->cfg.weight_decay, s->step);
        i = j + 1;
    }
    return norm;
}
