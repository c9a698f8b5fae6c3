/* Flow-matching and EDM training objectives. */
#include "dfm/diffusion.h"
#include "dfm/common.h"
#include "dfm/rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void objective_defaults_flow(objective_config *o, int pretrain) {
    memset(o, 0, sizeof *o);
    o->kind = OBJ_FLOW_MATCHING;
    o->sampling = pretrain ? TS_LOGIT_NORMAL : TS_UNIFORM;
    o->logit_mean = 0.0f;
    o->logit_std = pretrain ? 1.5f : 1.0f;
    o->flow_shift = pretrain ? 2.5f : 3.0f;
    o->mix_uniform_ratio = pretrain ? 0.2f : 0.1f;
    o->mode_scale = 1.29f;
    o->sigma_min = 0.0f;
    o->sigma_max = 1.0f;
    o->num_train_timesteps = 1000;
    o->use_loss_weighting = 1;
    o->p_mean = 0.0f, o->p_std = 1.0f, o->sigma_data = 0.5f, o->edm_sigma_min = 0.0002f, o->edm_sigma_max = 80.0f;
    o->cond_dropout_prob = 0.1f;
}

void objective_defaults_edm(objective_config *o) {
    objective_defaults_flow(o, 0);
    o->kind = OBJ_EDM;
    o->cond_dropout_prob = 0.2f;
}

static const char *sampling_names[] = {"uniform", "logit_normal", "lognorm", "mode", "mix"};

const char *timestep_sampling_name(timestep_sampling s) {
    return sampling_names[s];
}

int timestep_sampling_parse(const char *name, timestep_sampling *out) {
    for (int i = 0; i < 5; i++)
        if (!strcmp(name, sampling_names[i])) {
            *out = (timestep_sampling)i;
            return 1;
        }
    return 0;
}

void diffusion_batch_alloc(diffusion_batch *db, int max_B, size_t per_sample) {
    memset(db, 0, sizeof *db);
    size_t n = (size_t)max_B * per_sample;
    db->noise = xalloc_floats(n);
    db->x_t = xalloc_floats(n);
    db->model_in = xalloc_floats(n);
    db->target = xalloc_floats(n);
    float **vecs[] = {&db->sigma,     &db->timestep, &db->weight,      &db->c_skip,
                      &db->c_skip_m1, &db->c_out,    &db->draw_normal, &db->draw_uniform};
    for (size_t i = 0; i < sizeof vecs / sizeof vecs[0]; i++) *vecs[i] = xalloc_floats((size_t)max_B);
    db->labels = xcalloc((size_t)max_B, sizeof(int));
}

void diffusion_batch_free(diffusion_batch *db) {
    free(db->noise), free(db->x_t), free(db->model_in), free(db->target);
    free(db->sigma), free(db->timestep), free(db->weight), free(db->c_skip), free(db->c_skip_m1), free(db->c_out);
    free(db->draw_normal), free(db->draw_uniform), free(db->labels);
    memset(db, 0, sizeof *db);
}

static double sigmoid(double x) {
    return 1.0 / (1.0 + exp(-x));
}

double objective_sigma(const objective_config *o, double normal, double uniform, double batch_coin) {
    if (o->kind == OBJ_EDM) {
        double s = exp(o->p_mean + o->p_std * normal);
        return fmin(fmax(s, o->edm_sigma_min), o->edm_sigma_max);
    }
    double u;
    switch (o->sampling) {
    case TS_UNIFORM:
        u = uniform;
        break;
    case TS_LOGIT_NORMAL:
        u = sigmoid(o->logit_mean + o->logit_std * normal);
        break;
    case TS_LOGNORM:
        u = sigmoid(normal);
        break;
    case TS_MODE: {
        double c = cos(M_PI * uniform / 2);
        u = 1.0 - uniform - o->mode_scale * (c * c - 1.0 + uniform);
        break;
    }
    case TS_MIX:
        /* the whole batch draws uniformly with probability mix_uniform_ratio, else logit-normal */
        u = batch_coin < o->mix_uniform_ratio ? uniform : sigmoid(o->logit_mean + o->logit_std * normal);
        break;
    default:
        dfm_die("internal: unknown timestep sampling %d", (int)o->sampling);
    }
    /* keep u inside (0, 1) so the shift below stays finite */
    u = fmin(fmax(u, 1e-7), 1.0 - 1e-7);
    double shift = o->flow_shift, s = shift / (shift + (1.0 / u - 1.0));
    return fmin(fmax(s, o->sigma_min), o->sigma_max);
}

void diffusion_prepare(diffusion_batch *db, const objective_config *o, const float *x0, const int *labels, int B,
                       size_t per_sample, int null_class, uint64_t seed, uint32_t step, uint32_t first_index) {
    db->B = B;
    db->per_sample = per_sample;
    db->batch_coin = (float)rng_uniform(seed, RNG_STREAM_BATCH, step, 0, 0);
    for (int b = 0; b < B; b++) {
        uint32_t gi = first_index + (uint32_t)b;
        double nrm = rng_normal(seed, RNG_STREAM_TIMESTEP, step, gi, 0);
        double uni = rng_uniform(seed, RNG_STREAM_TIMESTEP, step, gi, 4);
        db->draw_normal[b] = (float)nrm;
        db->draw_uniform[b] = (float)uni;
        /* everything below derives from the fp32 sigma that is stored, so a consumer of db->sigma (or a
         * reference implementation) recomputes exactly the same timesteps and coefficients */
        double s = (float)objective_sigma(o, nrm, uni, db->batch_coin);
        double drop = rng_uniform(seed, RNG_STREAM_DROPOUT, step, gi, 0);
        db->labels[b] = drop < o->cond_dropout_prob ? null_class : labels[b];
        db->sigma[b] = (float)s;
        float *noise = db->noise + (size_t)b * per_sample;
        rng_fill_normal(noise, per_sample, seed, RNG_STREAM_NOISE, step, gi);
        const float *x = x0 + (size_t)b * per_sample;
        float *xt = db->x_t + (size_t)b * per_sample, *in = db->model_in + (size_t)b * per_sample,
              *tg = db->target + (size_t)b * per_sample;
        if (o->kind == OBJ_FLOW_MATCHING) {
            float sf = (float)s;
            for (size_t i = 0; i < per_sample; i++) {
                xt[i] = (1.0f - sf) * x[i] + sf * noise[i];
                in[i] = xt[i];
                tg[i] = noise[i] - x[i];
            }
            db->timestep[b] = (float)o->num_train_timesteps * (float)s;
            db->c_skip[b] = 0.0f;
            db->c_skip_m1[b] = -1.0f;
            db->c_out[b] = 1.0f;
            db->weight[b] = o->use_loss_weighting ? (float)(1.0 + o->flow_shift * s) : 1.0f;
        } else {
            double sd = o->sigma_data, s2 = s * s + sd * sd;
            float c_in = (float)(1.0 / sqrt(s2)), sf = (float)s;
            for (size_t i = 0; i < per_sample; i++) {
                xt[i] = x[i] + sf * noise[i];
                in[i] = c_in * xt[i];
                tg[i] = x[i];
            }
            db->timestep[b] = (float)(0.25 * log(s));
            db->c_skip[b] = (float)(sd * sd / s2);
            db->c_skip_m1[b] = (float)(-s * s / s2);
            db->c_out[b] = (float)(s * sd / sqrt(s2));
            db->weight[b] = (float)(s2 / (s * sd * s * sd));
        }
    }
}

double diffusion_loss(const diffusion_batch *db, const float *F, float *dF, size_t out_stride, float grad_scale) {
    return diffusion_loss_masked(db, F, dF, out_stride, grad_scale, NULL);
}

double diffusion_loss_masked(const diffusion_batch *db, const float *F, float *dF, size_t out_stride, float grad_scale,
                             const unsigned char *mask) {
    int B = db->B;
    size_t n = db->per_sample;
    double total = 0;
    for (int b = 0; b < B; b++) {
        const float *f = F + (size_t)b * out_stride, *xt = db->x_t + (size_t)b * n, *tg = db->target + (size_t)b * n;
        const float *nz = db->noise + (size_t)b * n;
        float cs = db->c_skip[b], co = db->c_out[b], w = db->weight[b], cm1 = db->c_skip_m1[b], sg = db->sigma[b];
        float g = grad_scale * 2.0f * w * co / (float)(n * (size_t)B);
        float *df = dF ? dF + (size_t)b * out_stride : NULL;
        double acc = 0;
        for (size_t i = 0; i < n; i++) {
            /* EDM: c_skip x_t - x0 = (c_skip - 1) x0 + c_skip sigma n, written so that nothing cancels when sigma
             * is tiny (c_skip ~ 1, x_t ~ x0, and the weight ~ 1/sigma^2 magnifies any rounding) */
            if (mask && !mask[i]) {
                if (df) df[i] = 0.0f;
                continue;
            }
            float e = cs == 0.0f ? co * f[i] - tg[i] : cm1 * tg[i] + cs * sg * nz[i] + co * f[i];
            (void)xt;
            acc += (double)e * e;
            if (df) df[i] = g * e;
        }
        if (df)
            for (size_t i = n; i < out_stride; i++) df[i] = 0.0f;
        total += w * acc / (double)n;
    }
    return total / B;
}
