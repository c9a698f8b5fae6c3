/* Euler and Heun samplers for flow matching and EDM, with classifier-free guidance (see sample.h). */
#include "dfm/sample.h"
#include "dfm/common.h"
#include "dfm/rng.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

void sampler_defaults(sampler_config *s, objective_kind objective) {
    memset(s, 0, sizeof *s);
    s->objective = objective;
    s->sampler = objective == OBJ_EDM ? SAMPLER_HEUN : SAMPLER_EULER;
    s->steps = objective == OBJ_EDM ? 35 : 50;
    s->guidance = 1.0f;
    s->shift = 1.0f;
    s->sigma_min = 0.002f;
    s->sigma_max = 80.0f;
    s->rho = 7.0f;
    s->sigma_data = 0.5f;
}

int sampler_check(const sampler_config *s, char *err, size_t errlen) {
#define BAD(...) return snprintf(err, errlen, __VA_ARGS__), 0
    if (s->objective != OBJ_FLOW_MATCHING && s->objective != OBJ_EDM) BAD("unknown objective %d", (int)s->objective);
    if (s->sampler != SAMPLER_EULER && s->sampler != SAMPLER_HEUN) BAD("unknown sampler %d", (int)s->sampler);
    if (s->steps < 1 || s->steps > 100000) BAD("steps must be in 1..100000 (got %d)", s->steps);
    if (!isfinite(s->guidance)) BAD("guidance scale must be finite (got %g)", (double)s->guidance);
    if (s->objective == OBJ_FLOW_MATCHING && !(s->shift > 0 && isfinite(s->shift)))
        BAD("flow shift must be > 0 (got %g)", (double)s->shift);
    if (s->objective == OBJ_EDM) {
        if (!(s->sigma_min > 0 && s->sigma_min < s->sigma_max && isfinite(s->sigma_max)))
            BAD("EDM needs 0 < sigma_min < sigma_max (got %g, %g)", (double)s->sigma_min, (double)s->sigma_max);
        if (!(s->rho > 0)) BAD("EDM rho must be > 0 (got %g)", (double)s->rho);
        if (!(s->sigma_data > 0)) BAD("EDM sigma_data must be > 0 (got %g)", (double)s->sigma_data);
    }
    return 1;
#undef BAD
}

const char *sampler_name(sampler_kind k) {
    return k == SAMPLER_HEUN ? "heun" : "euler";
}

int sampler_parse(const char *name, sampler_kind *out) {
    if (!strcmp(name, "euler"))
        *out = SAMPLER_EULER;
    else if (!strcmp(name, "heun"))
        *out = SAMPLER_HEUN;
    else
        return 0;
    return 1;
}

void sampler_sigmas(const sampler_config *s, double *sigmas) {
    int N = s->steps;
    if (s->objective == OBJ_FLOW_MATCHING) {
        double shift = s->shift;
        for (int i = 0; i <= N; i++) {
            double u = 1.0 - (double)i / N;
            sigmas[i] = shift * u / (1.0 + (shift - 1.0) * u);
        }
    } else {
        double inv_rho = 1.0 / s->rho;
        double a = pow(s->sigma_max, inv_rho), b = pow(s->sigma_min, inv_rho);
        for (int i = 0; i < N; i++) {
            double ramp = N > 1 ? (double)i / (N - 1) : 0.0; /* one step: straight from sigma_max to 0 */
            sigmas[i] = pow(a + ramp * (b - a), s->rho);
        }
    }
    sigmas[N] = 0.0;
}

uint64_t sample_seed(uint64_t seed, uint32_t index) {
    return seed + index;
}

void sample_initial_noise(float *x, size_t n, uint64_t seed, float scale) {
    rng_fill_normal(x, n, seed, RNG_STREAM_SAMPLE, 0, 0);
    if (scale != 1.0f)
        for (size_t i = 0; i < n; i++) x[i] *= scale;
}

/* Scratch for one chunk of up to `cap` samples (2 cap model rows with guidance). */
typedef struct {
    dit_model *m;  /* the DiT (class labels), or */
    wan_model *wm; /* Wan (text): the chunk's text [B, L, D] and lengths; the unconditional rows get one zero token */
    const sampler_config *s;
    int null_class, cfg;
    size_t per, out_per;      /* elements per sample: model input, model output */
    float *xin, *t, *out, *F; /* [rows * per], [rows], [rows * out_per], [cap * per] */
    int *labels;              /* [rows] (Wan: the text lengths) */
    const float *text;        /* Wan: the current chunk's text and lengths */
    const int *lens;
    float *wtext; /* Wan: [rows, L, D] */
    wan_shape shape;
} ode_ctx;

/* dx/ds of B samples x at sigma s (classes cls) into dx. */
static void ode_derivative(ode_ctx *c, float *dx, const float *x, double s, const int *cls, int B) {
    const sampler_config *sc = c->s;
    size_t per = c->per, n = (size_t)B * per;
    int rows = c->cfg ? 2 * B : B;
    float scale_in = 1.0f, timestep;
    if (sc->objective == OBJ_EDM) {
        double sd = sc->sigma_data;
        scale_in = (float)(1.0 / sqrt(s * s + sd * sd));
        timestep = (float)(0.25 * log(s));
    } else {
        timestep = (float)(1000.0 * s);
    }
    for (size_t i = 0; i < n; i++) c->xin[i] = x[i] * scale_in;
    for (int b = 0; b < B; b++) c->t[b] = timestep, c->labels[b] = cls ? cls[b] : c->lens[b];
    if (c->cfg) { /* second half: the same latents with the null class (Wan: one zero text token) */
        memcpy(c->xin + n, c->xin, n * sizeof(float));
        for (int b = 0; b < B; b++) c->t[B + b] = timestep, c->labels[B + b] = c->wm ? 1 : c->null_class;
    }
    if (c->wm) {
        size_t tl = (size_t)c->shape.text_len * c->wm->cfg.text_dim;
        memcpy(c->wtext, c->text, (size_t)B * tl * sizeof(float));
        if (c->cfg) memset(c->wtext + (size_t)B * tl, 0, (size_t)B * tl * sizeof(float));
        c->shape.batch = rows;
        wan_forward(c->wm, c->out, c->xin, c->t, c->wtext, c->labels, &c->shape);
    } else {
        dit_forward(c->m, c->out, c->xin, c->t, c->labels, rows);
    }

    /* guided model output, first in_channels channels of each sample */
    float g = sc->guidance;
    for (int b = 0; b < B; b++) {
        const float *cond = c->out + (size_t)b * c->out_per;
        float *F = c->F + (size_t)b * per;
        if (c->cfg) {
            const float *unc = c->out + (size_t)(B + b) * c->out_per;
            for (size_t i = 0; i < per; i++) F[i] = unc[i] + g * (cond[i] - unc[i]);
        } else {
            memcpy(F, cond, per * sizeof(float));
        }
    }

    if (sc->objective == OBJ_FLOW_MATCHING) {
        memcpy(dx, c->F, n * sizeof(float));
    } else { /* (x - D) / s with D = c_skip x + c_out F */
        double sd = sc->sigma_data, r = sqrt(s * s + sd * sd);
        float c_skip = (float)(sd * sd / (s * s + sd * sd)), c_out = (float)(s * sd / r), inv_s = (float)(1.0 / s);
        for (size_t i = 0; i < n; i++) dx[i] = (x[i] - (c_skip * x[i] + c_out * c->F[i])) * inv_s;
    }
}

static int sample_chunks(ode_ctx *c_, int cap, const int *labels, const uint64_t *seeds, int n, float *out,
                         void (*progress)(int done, int total, void *ctx), void *pctx);

int dit_sample(dit_model *m, const sampler_config *s, const int *labels, const uint64_t *seeds, int n, float *out,
               void (*progress)(int done, int total, void *ctx), void *pctx, char *err, size_t errlen) {
    if (!sampler_check(s, err, errlen)) return -1;
    const dit_config *mc = &m->cfg;
    for (int i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= mc->num_classes) {
            snprintf(err, errlen, "class %d of sample %d is outside 0..%d", labels[i], i, mc->num_classes - 1);
            return -1;
        }
    int cfg = s->guidance != 1.0f;
    int cap = cfg ? m->max_batch / 2 : m->max_batch;
    if (cap < 1) {
        snprintf(err, errlen, "guidance needs a model built for batches of >= 2 (max_batch %d)", m->max_batch);
        return -1;
    }
    ode_ctx c = {.m = m, .s = s, .null_class = mc->num_classes, .cfg = cfg};
    size_t hw = (size_t)mc->image_size * mc->image_size;
    c.per = (size_t)mc->in_channels * hw;
    c.out_per = (size_t)mc->out_channels * hw;
    return sample_chunks(&c, cap, labels, seeds, n, out, progress, pctx);
}

/* The chunk loop shared by both models: initial noise from each sample's seed, then the ODE steps. */
static int sample_chunks(ode_ctx *c_, int cap, const int *labels, const uint64_t *seeds, int n, float *out,
                         void (*progress)(int done, int total, void *ctx), void *pctx) {
    ode_ctx c = *c_;
    const sampler_config *s = c.s;
    int rows = c.cfg ? 2 * cap : cap;
    c.xin = xalloc_floats((size_t)rows * c.per);
    c.t = xalloc_floats((size_t)rows);
    c.out = xalloc_floats((size_t)rows * c.out_per);
    c.F = xalloc_floats((size_t)cap * c.per);
    c.labels = xcalloc((size_t)rows, sizeof(int));
    float *d1 = xalloc_floats((size_t)cap * c.per), *d2 = xalloc_floats((size_t)cap * c.per);
    float *x2 = xalloc_floats((size_t)cap * c.per);
    double *sig = xmalloc(sizeof(double) * ((size_t)s->steps + 1));
    sampler_sigmas(s, sig);

    for (int start = 0; start < n; start += cap) {
        int B = n - start < cap ? n - start : cap;
        float *x = out + (size_t)start * c.per;
        size_t nel = (size_t)B * c.per;
        for (int b = 0; b < B; b++) sample_initial_noise(x + (size_t)b * c.per, c.per, seeds[start + b], (float)sig[0]);
        const int *cls = labels ? labels + start : NULL;
        if (c.wm) {
            c.text = c_->text + (size_t)start * c.shape.text_len * c.wm->cfg.text_dim;
            c.lens = c_->lens + start;
        }
        for (int i = 0; i < s->steps; i++) {
            float h = (float)(sig[i + 1] - sig[i]);
            ode_derivative(&c, d1, x, sig[i], cls, B);
            if (s->sampler == SAMPLER_EULER || sig[i + 1] == 0.0) {
                for (size_t k = 0; k < nel; k++) x[k] += h * d1[k];
            } else { /* Heun: average the slopes at both ends of the interval */
                for (size_t k = 0; k < nel; k++) x2[k] = x[k] + h * d1[k];
                ode_derivative(&c, d2, x2, sig[i + 1], cls, B);
                for (size_t k = 0; k < nel; k++) x[k] += h * 0.5f * (d1[k] + d2[k]);
            }
        }
        if (progress) progress(start + B, n, pctx);
    }
    free(sig);
    free(x2);
    free(d2);
    free(d1);
    free(c.labels);
    free(c.F);
    free(c.out);
    free(c.t);
    free(c.xin);
    return 0;
}

int wan_sample(wan_model *m, const sampler_config *s, const float *text, const int *text_lens, const uint64_t *seeds,
               int n, int frames, int height, int width, int text_len, float *out,
               void (*progress)(int done, int total, void *ctx), void *pctx, char *err, size_t errlen) {
    if (!sampler_check(s, err, errlen)) return -1;
    const wan_config *mc = &m->cfg;
    for (int i = 0; i < n; i++)
        if (text_lens[i] < 1 || text_lens[i] > text_len) {
            snprintf(err, errlen, "text length %d of sample %d is outside 1..%d", text_lens[i], i, text_len);
            return -1;
        }
    int cfg = s->guidance != 1.0f;
    int cap = cfg ? m->max.batch / 2 : m->max.batch;
    if (cap < 1) {
        snprintf(err, errlen, "guidance needs a model built for batches of >= 2 (max batch %d)", m->max.batch);
        return -1;
    }
    ode_ctx c = {.wm = m, .s = s, .cfg = cfg, .text = text, .lens = text_lens};
    c.shape = (wan_shape){cfg ? 2 * cap : cap, frames, height, width, text_len};
    if (!wan_shape_check(m, &c.shape, err, errlen)) return -1;
    size_t vox = (size_t)frames * height * width;
    c.per = (size_t)mc->in_channels * vox;
    c.out_per = (size_t)mc->out_channels * vox;
    c.wtext = xalloc_floats((size_t)c.shape.batch * text_len * mc->text_dim);
    int rc = sample_chunks(&c, cap, NULL, seeds, n, out, progress, pctx);
    free(c.wtext);
    return rc;
}

int stored_objective_parse(const char *json_text, stored_objective *o, char *err, size_t errlen) {
    o->kind = OBJ_FLOW_MATCHING;
    o->flow_shift = 1.0f;
    o->sigma_data = 0.5f;
    o->cond_dropout_prob = 0.0f;
    if (!json_text) return 0;
    json_error_t je;
    json_t *j = json_loads(json_text, 0, &je);
    if (!j || !json_is_object(j)) {
        snprintf(err, errlen, "metadata 'dfm_objective' is not a JSON object%s%s", j ? "" : ": ", j ? "" : je.text);
        json_decref(j);
        return -1;
    }
    int rc = 1;
    json_t *kind = json_object_get(j, "kind");
    const char *k = json_is_string(kind) ? json_string_value(kind) : NULL;
    if (k && (!strcmp(k, "flow_matching") || !strcmp(k, "flow")))
        o->kind = OBJ_FLOW_MATCHING;
    else if (k && !strcmp(k, "edm"))
        o->kind = OBJ_EDM;
    else {
        snprintf(err, errlen, "metadata 'dfm_objective': \"kind\" must be \"flow_matching\" or \"edm\"");
        rc = -1;
    }
    struct {
        const char *key;
        float *dst;
    } nums[] = {
        {"flow_shift", &o->flow_shift}, {"sigma_data", &o->sigma_data}, {"cond_dropout_prob", &o->cond_dropout_prob}};
    for (size_t i = 0; rc == 1 && i < sizeof nums / sizeof nums[0]; i++) {
        json_t *v = json_object_get(j, nums[i].key);
        if (!v) continue;
        if (!json_is_number(v)) {
            snprintf(err, errlen, "metadata 'dfm_objective': \"%s\" is not a number", nums[i].key);
            rc = -1;
        } else {
            *nums[i].dst = (float)json_number_value(v);
        }
    }
    json_decref(j);
    return rc;
}
