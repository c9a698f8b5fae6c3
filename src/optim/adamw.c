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
    adamw_init_range(s, t, cfg, 0, t->total);
}

void adamw_init_range(adamw_state *s, const param_table *t, const adamw_config *cfg, size_t begin, size_t end) {
    if (begin > end || end > t->total)
        dfm_die("internal: optimizer range [%zu, %zu) outside the table (%zu)", begin, end, t->total);
    s->cfg = *cfg;
    s->table = t;
    s->begin = begin, s->end = end;
    s->m = xalloc_floats(end - begin);
    s->v = xalloc_floats(end - begin);
    s->step = 0;
}

void adamw_free(adamw_state *s) {
    free(s->m);
    free(s->v);
    s->m = s->v = NULL;
}

void adamw_step_range(adamw_state *s, float *params, const float *grads, float lr) {
    const param_table *t = s->table;
    s->step++;
    /* consecutive tensors with the same decay setting go to the kernel as one run, clipped to the range */
    int i = 0;
    while (i < t->n) {
        int j = i;
        while (j + 1 < t->n && t->e[j + 1].no_decay == t->e[i].no_decay) j++;
        size_t lo = t->e[i].offset, hi = t->e[j].offset + t->e[j].numel;
        if (lo < s->begin) lo = s->begin;
        if (hi > s->end) hi = s->end;
        if (lo < hi) {
            size_t o = lo - s->begin;
            adamw_step(params + o, grads + o, s->m + o, s->v + o, hi - lo, lr, s->cfg.beta1, s->cfg.beta2, s->cfg.eps,
                       t->e[i].no_decay ? 0.0f : s->cfg.weight_decay, s->step);
        }
        i = j + 1;
    }
}

double adamw_update(adamw_state *s, float *params, float *grads, float lr) {
    const param_table *t = s->table;
    if (s->begin != 0 || s->end != t->total) dfm_die("internal: adamw_update needs the whole table's state");
    double norm =
        s->cfg.clip_grad > 0 ? clip_grad_norm(grads, t->total, s->cfg.clip_grad) : global_norm(grads, t->total);
    adamw_step_range(s, params, grads, lr);
    return norm;
}
