/* The DiT training step shared by every paradigm. */
#include "dfm/train.h"
#include "dfm/common.h"
#include "dfm/dist.h"

#include <math.h>
#include <stdlib.h>

void dit_trainer_init(dit_trainer *tr, dit_model *m, adamw_state *opt, const objective_config *obj, uint64_t seed) {
    tr->model = m;
    tr->opt = opt;
    tr->obj = *obj;
    tr->seed = seed;
    tr->lora = NULL;
    const dit_config *c = &m->cfg;
    size_t in_n = (size_t)c->in_channels * c->image_size * c->image_size;
    size_t out_n = (size_t)c->out_channels * c->image_size * c->image_size;
    diffusion_batch_alloc(&tr->db, m->max_batch, in_n);
    tr->out = xalloc_floats((size_t)m->max_batch * out_n);
    tr->dout = xalloc_floats((size_t)m->max_batch * out_n);
    tr->cp_mask = NULL;
    if (m->cp > 1) { /* the loss of this rank's pixels only; the context-parallel group sums the shares */
        tr->cp_mask = xcalloc(in_n, 1);
        dit_cp_owned(m, tr->cp_mask, c->in_channels);
    }
}

void dit_trainer_free(dit_trainer *tr) {
    diffusion_batch_free(&tr->db);
    free(tr->out);
    free(tr->dout);
    free(tr->cp_mask);
}

double dit_trainer_grads(dit_trainer *tr, const float *x0, const int *labels, int B, uint32_t step) {
    dit_model *m = tr->model;
    const dit_config *c = &m->cfg;
    size_t in_n = (size_t)c->in_channels * c->image_size * c->image_size;
    size_t out_n = (size_t)c->out_channels * c->image_size * c->image_size;
    double loss = 0;
    for (int first = 0; first < B; first += m->max_batch) {
        int mb = B - first < m->max_batch ? B - first : m->max_batch;
        diffusion_prepare(&tr->db, &tr->obj, x0 + (size_t)first * in_n, labels + first, mb, in_n, c->num_classes,
                          tr->seed, step, (uint32_t)first);
        dit_forward(m, tr->out, tr->db.model_in, tr->db.timestep, tr->db.labels, mb);
        /* each micro-batch's mean loss weighs mb / B in the global mean */
        float share = (float)mb / (float)B;
        loss += share * diffusion_loss(&tr->db, tr->out, tr->dout, out_n, share);
        dit_backward(m, tr->dout, mb);
    }
    return loss;
}

step_result dit_trainer_step(dit_trainer *tr, const float *x0, const int *labels, int B, uint32_t step, float lr) {
    step_result r = {0};
    dit_zero_grad(tr->model);
    r.loss = dit_trainer_grads(tr, x0, labels, B, step);
    r.grad_norm = adamw_update(tr->opt, tr->model->params, tr->model->grads, lr);
    return r;
}

step_result dit_trainer_step_dp(dit_trainer *tr, dp_engine *e, const float *x0, const int *labels, int n_local,
                                int B_global, uint32_t first, uint32_t step, float lr) {
    dit_model *m = tr->model;
    const dit_config *c = &m->cfg;
    size_t in_n = (size_t)c->in_channels * c->image_size * c->image_size;
    size_t out_n = (size_t)c->out_channels * c->image_size * c->image_size;
    step_result r;
    dp_begin_step(e);
    const float *adapters = tr->lora ? lora_step_begin(tr->lora, m->params) : NULL;
    double loss = 0;
    for (int off = 0; off < n_local; off += m->max_batch) {
        int mb = n_local - off < m->max_batch ? n_local - off : m->max_batch;
        dp_micro_begin(e, off + mb >= n_local);
        diffusion_prepare(&tr->db, &tr->obj, x0 + (size_t)off * in_n, labels + off, mb, in_n, c->num_classes, tr->seed,
                          step, first + (uint32_t)off);
        dit_forward(m, tr->out, tr->db.model_in, tr->db.timestep, tr->db.labels, mb);
        float share = (float)mb / (float)B_global;
        loss += share * diffusion_loss_masked(&tr->db, tr->out, tr->dout, out_n, share, tr->cp_mask);
        if (tr->lora) lora_micro_backward_begin(tr->lora, adapters, m->grads, 0, m->table.total);
        dit_backward(m, tr->dout, mb);
        if (tr->lora) lora_micro_backward_end(tr->lora);
        dp_micro_end(e);
    }
    dist_allreduce_sum_f64(&loss, 1, "all-reduce of the loss");
    dist_allreduce_sum_f64_in(DIST_CP, &loss, 1, "all-reduce of the loss over the context-parallel group");
    r.loss = loss;
    r.skipped = !isfinite(loss);
    r.grad_norm = dp_finish_step(e, lr, r.skipped, &r.bad_param);
    r.skipped |= !isfinite(r.grad_norm);
    return r;
}
