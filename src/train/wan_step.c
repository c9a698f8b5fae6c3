/* The Wan 2.1 training step: flow matching (or EDM) over latents, text conditioning with dropout for CFG. */
#include "dfm/common.h"
#include "dfm/dist.h"
#include "dfm/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void wan_trainer_init(wan_trainer *tr, wan_model *m, const objective_config *obj, uint64_t seed, int frames, int height,
                      int width, int text_len) {
    memset(tr, 0, sizeof *tr);
    tr->model = m;
    tr->obj = *obj;
    tr->seed = seed;
    tr->frames = frames, tr->height = height, tr->width = width, tr->text_len = text_len;
    const wan_config *c = &m->cfg;
    int B = m->max.batch;
    size_t vox = (size_t)frames * height * width;
    diffusion_batch_alloc(&tr->db, B, (size_t)c->in_channels * vox);
    tr->out = xalloc_floats((size_t)B * c->out_channels * vox);
    tr->dout = xalloc_floats((size_t)B * c->out_channels * vox);
    tr->text = xalloc_floats((size_t)B * text_len * c->text_dim);
    tr->cond = xcalloc((size_t)B, sizeof(int));
    tr->lens = xcalloc((size_t)B, sizeof(int));
    if (m->cp > 1) tr->cp_mask = xcalloc((size_t)c->in_channels * vox, 1);
}

void wan_trainer_free(wan_trainer *tr) {
    diffusion_batch_free(&tr->db);
    free(tr->out), free(tr->dout), free(tr->text), free(tr->cond), free(tr->lens), free(tr->cp_mask);
}

void wan_trainer_prepare(wan_trainer *tr, const objective_config *o, uint64_t seed, const float *latents,
                         const float *text, const int *text_lens, int B, int frames, int height, int width,
                         uint32_t step, uint32_t first) {
    const wan_config *c = &tr->model->cfg;
    if ((size_t)frames * height * width > (size_t)tr->frames * tr->height * tr->width)
        dfm_die("internal: Wan micro-batch of %d x %d x %d latents exceeds the trainer's %d x %d x %d", frames, height,
                width, tr->frames, tr->height, tr->width);
    size_t vox = (size_t)frames * height * width, in_n = (size_t)c->in_channels * vox;
    size_t tl = (size_t)tr->text_len * c->text_dim;
    /* the dropout coin is the DiT's: a "label" 0 that diffusion_prepare may turn into the null class 1 */
    memset(tr->cond, 0, sizeof(int) * (size_t)B);
    diffusion_prepare(&tr->db, o, latents, tr->cond, B, in_n, 1, seed, step, first);
    for (int b = 0; b < B; b++) {
        float *dst = tr->text + (size_t)b * tl;
        if (tr->db.labels[b] == 1) { /* dropped: one zero token */
            memset(dst, 0, sizeof(float) * tl);
            tr->lens[b] = 1;
        } else {
            memcpy(dst, text + (size_t)b * tl, sizeof(float) * tl);
            tr->lens[b] = text_lens[b];
        }
    }
}

/* Noise, timesteps and dropout for B samples, then the model's forward; returns the micro-batch loss and leaves
 * dout = grad_scale * dloss/dout. */
static double forward_loss(wan_trainer *tr, const objective_config *o, uint64_t seed, const float *latents,
                           const float *text, const int *text_lens, int B, int frames, int height, int width,
                           uint32_t step, uint32_t first, float grad_scale, int want_grad) {
    wan_model *m = tr->model;
    const wan_config *c = &m->cfg;
    wan_trainer_prepare(tr, o, seed, latents, text, text_lens, B, frames, height, width, step, first);
    size_t vox = (size_t)frames * height * width;
    wan_shape s = {B, frames, height, width, tr->text_len};
    wan_forward(m, tr->out, tr->db.model_in, tr->db.timestep, tr->text, tr->lens, &s);
    size_t out_n = (size_t)c->out_channels * vox;
    if (!tr->cp_mask) return diffusion_loss(&tr->db, tr->out, want_grad ? tr->dout : NULL, out_n, grad_scale);
    /* context parallelism: this rank's share of each sample's mean (its tokens' elements over all of them) */
    wan_cp_owned(m, tr->cp_mask, c->in_channels);
    double part = diffusion_loss_masked(&tr->db, tr->out, want_grad ? tr->dout : NULL, out_n, grad_scale, tr->cp_mask);
    if (!want_grad) /* an evaluation: the whole loss on every rank (a training step sums its micro-batches first) */
        dist_allreduce_sum_f64_in(DIST_CP, &part, 1, "all-reduce of the loss over the context-parallel group");
    return part;
}

step_result wan_trainer_step_micro(wan_trainer *tr, dp_engine *e, const wan_micro *mb, int n_micro, int B_global,
                                   uint32_t step, float lr) {
    step_result r;
    dp_begin_step(e);
    const float *adapters = tr->lora ? lora_step_begin(tr->lora, tr->model->params) : NULL;
    double loss = 0;
    for (int k = 0; k < n_micro; k++) {
        dp_micro_begin(e, k + 1 >= n_micro);
        float share = (float)mb[k].count / (float)B_global;
        loss += share * forward_loss(tr, &tr->obj, tr->seed, mb[k].latents, mb[k].text, mb[k].text_lens, mb[k].count,
                                     mb[k].frames, mb[k].height, mb[k].width, step, mb[k].first, share, 1);
        if (tr->lora) lora_micro_backward_begin(tr->lora, adapters, tr->model->grads, 0, tr->model->table.total);
        wan_backward(tr->model, tr->dout);
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

step_result wan_trainer_step_dp(wan_trainer *tr, dp_engine *e, const float *latents, const float *text,
                                const int *text_lens, int n_local, int B_global, uint32_t first, uint32_t step,
                                float lr) {
    const wan_config *c = &tr->model->cfg;
    size_t in_n = (size_t)c->in_channels * tr->frames * tr->height * tr->width;
    size_t tl = (size_t)tr->text_len * c->text_dim;
    int mbs = tr->model->max.batch, n_micro = (n_local + mbs - 1) / mbs;
    wan_micro *mb = xcalloc((size_t)n_micro, sizeof *mb);
    for (int k = 0, off = 0; k < n_micro; k++, off += mbs) {
        int count = n_local - off < mbs ? n_local - off : mbs;
        mb[k] = (wan_micro){latents + (size_t)off * in_n,
                            text + (size_t)off * tl,
                            text_lens + off,
                            count,
                            tr->frames,
                            tr->height,
                            tr->width,
                            first + (uint32_t)off};
    }
    step_result r = wan_trainer_step_micro(tr, e, mb, n_micro, B_global, step, lr);
    free(mb);
    return r;
}

double wan_trainer_loss(wan_trainer *tr, const objective_config *o, uint64_t seed, const float *latents,
                        const float *text, const int *text_lens, int B, uint32_t step, uint32_t first) {
    return forward_loss(tr, o, seed, latents, text, text_lens, B, tr->frames, tr->height, tr->width, step, first, 1.0f,
                        0);
}

double wan_trainer_loss_shaped(wan_trainer *tr, const objective_config *o, uint64_t seed, const float *latents,
                               const float *text, const int *text_lens, int B, int frames, int height, int width,
                               uint32_t step, uint32_t first) {
    return forward_loss(tr, o, seed, latents, text, text_lens, B, frames, height, width, step, first, 1.0f, 0);
}
