/* Fashion-MNIST MLP classifier for sample-quality measurement (see classifier.h). */
#include "dfm/classifier.h"
#include "dfm/codec.h"
#include "dfm/common.h"
#include "dfm/kernels.h"
#include "dfm/rng.h"
#include "dfm/safetensors.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CLF_FORMAT "dfm-fashion-mnist-classifier"
#define CLF_CHUNK 512 /* images per inference block: bounds the activation buffers */

classifier_train_opts classifier_default_opts(void) {
    classifier_train_opts o = {12, 128, 1e-3f, 0.01f, 0, 0, 0};
    return o;
}

static void build_table(classifier *c, int h1, int h2) {
    memset(c, 0, sizeof *c);
    c->hidden1 = h1;
    c->hidden2 = h2;
    c->test_accuracy = -1;
    int64_t s[2];
    s[0] = h1, s[1] = CLF_IN;
    param_table_add(&c->table, "fc1.weight", 2, s, 0);
    param_table_add(&c->table, "fc1.bias", 1, s, 1);
    s[0] = h2, s[1] = h1;
    param_table_add(&c->table, "fc2.weight", 2, s, 0);
    param_table_add(&c->table, "fc2.bias", 1, s, 1);
    s[0] = CLF_CLASSES, s[1] = h2;
    param_table_add(&c->table, "head.weight", 2, s, 0);
    param_table_add(&c->table, "head.bias", 1, s, 1);
    c->params = xalloc_floats(c->table.total);
}

void classifier_init(classifier *c, int hidden1, int hidden2, uint64_t seed) {
    if (hidden1 < 1 || hidden2 < 1)
        dfm_die("classifier_init: hidden sizes must be positive (%d, %d)", hidden1, hidden2);
    build_table(c, hidden1, hidden2);
    c->seed = seed;
    /* He-normal weights (std sqrt(2 / fan_in), right for ReLU); biases stay zero. */
    for (int i = 0; i < c->table.n; i++) {
        const param_entry *e = &c->table.e[i];
        if (e->ndim != 2) continue;
        float *w = c->params + e->offset;
        rng_fill_normal(w, e->numel, seed, RNG_STREAM_INIT, 0, (uint32_t)i);
        float std = sqrtf(2.0f / (float)e->shape[1]);
        for (size_t k = 0; k < e->numel; k++) w[k] *= std;
    }
}

void classifier_free(classifier *c) {
    param_table_free(&c->table);
    free(c->params);
    c->params = NULL;
}

void classifier_images_to_f32(const uint8_t *u8, size_t n_images, float *out) {
    size_t n = n_images * CLF_IN;
    for (size_t i = 0; i < n; i++) out[i] = (float)u8[i] / 127.5f - 1.0f;
}

typedef struct {
    const float *w1, *b1, *w2, *b2, *w3, *b3;
} clf_views;

static clf_views views_of(const param_table *t, const float *buf) {
    clf_views v = {buf + t->e[0].offset, buf + t->e[1].offset, buf + t->e[2].offset,
                   buf + t->e[3].offset, buf + t->e[4].offset, buf + t->e[5].offset};
    return v;
}

static void relu_inplace(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = x[i] > 0 ? x[i] : 0;
}

/* Forward m images: h1 [m, H1], h2 [m, H2] (post-ReLU), logits [m, 10] (optional). */
static void forward(const classifier *c, const float *x, int m, float *h1, float *h2, float *logits) {
    clf_views v = views_of(&c->table, c->params);
    matmul_forward(h1, x, v.w1, v.b1, m, c->hidden1, CLF_IN);
    relu_inplace(h1, (size_t)m * c->hidden1);
    matmul_forward(h2, h1, v.w2, v.b2, m, c->hidden2, c->hidden1);
    relu_inplace(h2, (size_t)m * c->hidden2);
    if (logits) matmul_forward(logits, h2, v.w3, v.b3, m, CLF_CLASSES, c->hidden2);
}

/* Copy one 28x28 image translated by (dx, dy), filling uncovered pixels with background (0). */
static void shifted_copy(uint8_t *dst, const uint8_t *src, int dx, int dy) {
    memset(dst, 0, CLF_IN);
    for (int y = 0; y < 28; y++) {
        int sy = y - dy;
        if (sy < 0 || sy >= 28) continue;
        for (int x = 0; x < 28; x++) {
            int sx = x - dx;
            if (sx >= 0 && sx < 28) dst[y * 28 + x] = src[sy * 28 + sx];
        }
    }
}

void classifier_train(classifier *c, const uint8_t *images, const uint8_t *labels, int n,
                      const classifier_train_opts *o) {
    if (n < 1 || o->batch < 1 || o->epochs < 1) dfm_die("classifier_train: need images, batch >= 1 and epochs >= 1");
    for (int i = 0; i < n; i++)
        if (labels[i] >= CLF_CLASSES)
            dfm_die("classifier_train: label %d of image %d is out of range 0-9", labels[i], i);
    const int B = o->batch, H1 = c->hidden1, H2 = c->hidden2;
    const long steps_per_epoch = (n + B - 1) / B, total_steps = steps_per_epoch * o->epochs;
    const long warmup = total_steps / 100 > 0 ? total_steps / 100 : 1;
    size_t P = c->table.total;
    float *grad = xalloc_floats(P), *mom = xalloc_floats(P), *var = xalloc_floats(P);
    float *x = xalloc_floats((size_t)B * CLF_IN), *h1 = xalloc_floats((size_t)B * H1),
          *h2 = xalloc_floats((size_t)B * H2);
    float *logits = xalloc_floats((size_t)B * CLF_CLASSES), *dh1 = xalloc_floats((size_t)B * H1);
    float *dh2 = xalloc_floats((size_t)B * H2);
    uint8_t *img = xmalloc((size_t)B * CLF_IN);
    int *perm = xmalloc((size_t)n * sizeof(int));
    long step = 0;
    double t0 = dfm_time_s();
    for (int ep = 0; ep < o->epochs; ep++) {
        /* Fisher-Yates from counter-based draws: the order is a pure function of (seed, epoch). */
        for (int i = 0; i < n; i++) perm[i] = i;
        for (int i = n - 1; i > 0; i--) {
            int j = (int)(rng_uniform(o->seed, RNG_STREAM_BATCH, (uint32_t)ep, (uint32_t)i, 0) * (i + 1));
            if (j > i) j = i;
            int t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        double loss_sum = 0;
        long correct = 0;
        for (long s = 0; s < steps_per_epoch; s++, step++) {
            int b0 = (int)(s * B), m = n - b0 < B ? n - b0 : B;
            for (int k = 0; k < m; k++) {
                const uint8_t *src = images + (size_t)perm[b0 + k] * CLF_IN;
                if (o->max_shift > 0) {
                    int span = 2 * o->max_shift + 1;
                    uint32_t idx = (uint32_t)(b0 + k);
                    int dx = (int)(rng_uniform(o->seed, RNG_STREAM_NOISE, (uint32_t)ep, idx, 0) * span) - o->max_shift;
                    int dy = (int)(rng_uniform(o->seed, RNG_STREAM_NOISE, (uint32_t)ep, idx, 1) * span) - o->max_shift;
                    shifted_copy(img + (size_t)k * CLF_IN, src, dx, dy);
                } else {
                    memcpy(img + (size_t)k * CLF_IN, src, CLF_IN);
                }
            }
            classifier_images_to_f32(img, (size_t)m, x);
            forward(c, x, m, h1, h2, logits);
            /* Softmax cross-entropy; dlogits = (softmax - onehot) / m, written over logits. */
            for (int k = 0; k < m; k++) {
                float *l = logits + (size_t)k * CLF_CLASSES;
                int y = labels[perm[b0 + k]], arg = 0;
                float mx = l[0];
                for (int j = 1; j < CLF_CLASSES; j++)
                    if (l[j] > mx) mx = l[j], arg = j;
                double z = 0;
                for (int j = 0; j < CLF_CLASSES; j++) z += exp((double)(l[j] - mx));
                loss_sum += log(z) - (double)(l[y] - mx);
                correct += arg == y;
                for (int j = 0; j < CLF_CLASSES; j++) l[j] = (float)((exp((double)(l[j] - mx)) / z - (j == y)) / m);
            }
            memset(grad, 0, P * sizeof(float));
            memset(dh2, 0, (size_t)m * H2 * sizeof(float));
            memset(dh1, 0, (size_t)m * H1 * sizeof(float));
            clf_views v = views_of(&c->table, c->params);
            const param_entry *e = c->table.e;
            matmul_backward(dh2, grad + e[4].offset, grad + e[5].offset, logits, h2, v.w3, m, CLF_CLASSES, H2);
            for (size_t i = 0; i < (size_t)m * H2; i++)
                if (h2[i] <= 0) dh2[i] = 0;
            matmul_backward(dh1, grad + e[2].offset, grad + e[3].offset, dh2, h1, v.w2, m, H2, H1);
            for (size_t i = 0; i < (size_t)m * H1; i++)
                if (h1[i] <= 0) dh1[i] = 0;
            matmul_backward(NULL, grad + e[0].offset, grad + e[1].offset, dh1, x, v.w1, m, H1, CLF_IN);
            double lr = step < warmup
                            ? o->lr * (double)(step + 1) / warmup
                            : 0.5 * o->lr * (1 + cos(M_PI * (double)(step - warmup) / (total_steps - warmup)));
            for (int i = 0; i < c->table.n; i++)
                adamw_step(c->params + e[i].offset, grad + e[i].offset, mom + e[i].offset, var + e[i].offset,
                           e[i].numel, (float)lr, 0.9f, 0.999f, 1e-8f, e[i].no_decay ? 0.0f : o->weight_decay,
                           step + 1);
        }
        if (o->verbose)
            printf("classifier epoch %d/%d: train loss %.4f, train accuracy %.2f%% (%.1f s)\n", ep + 1, o->epochs,
                   loss_sum / n, 100.0 * correct / n, dfm_time_s() - t0);
    }
    c->train_images = n;
    c->epochs = o->epochs;
    c->seed = o->seed;
    c->test_accuracy = -1; /* the weights changed: a stored figure no longer applies */
    free(grad), free(mom), free(var), free(x), free(h1), free(h2), free(logits), free(dh1), free(dh2), free(img);
    free(perm);
}

void classifier_features(const classifier *c, const float *images, int n, float *feats) {
    float *h1 = xalloc_floats((size_t)CLF_CHUNK * c->hidden1);
    for (int b0 = 0; b0 < n; b0 += CLF_CHUNK) {
        int m = n - b0 < CLF_CHUNK ? n - b0 : CLF_CHUNK;
        forward(c, images + (size_t)b0 * CLF_IN, m, h1, feats + (size_t)b0 * c->hidden2, NULL);
    }
    free(h1);
}

void classifier_predict(const classifier *c, const float *images, int n, int *pred, float *probs) {
    float *h1 = xalloc_floats((size_t)CLF_CHUNK * c->hidden1), *h2 = xalloc_floats((size_t)CLF_CHUNK * c->hidden2);
    float *logits = xalloc_floats((size_t)CLF_CHUNK * CLF_CLASSES);
    for (int b0 = 0; b0 < n; b0 += CLF_CHUNK) {
        int m = n - b0 < CLF_CHUNK ? n - b0 : CLF_CHUNK;
        forward(c, images + (size_t)b0 * CLF_IN, m, h1, h2, logits);
        for (int k = 0; k < m; k++) {
            const float *l = logits + (size_t)k * CLF_CLASSES;
            int arg = 0;
            for (int j = 1; j < CLF_CLASSES; j++)
                if (l[j] > l[arg]) arg = j;
            pred[b0 + k] = arg;
            if (probs) {
                double z = 0;
                for (int j = 0; j < CLF_CLASSES; j++) z += exp((double)(l[j] - l[arg]));
                for (int j = 0; j < CLF_CLASSES; j++)
                    probs[(size_t)(b0 + k) * CLF_CLASSES + j] = (float)(exp((double)(l[j] - l[arg])) / z);
            }
        }
    }
    free(h1), free(h2), free(logits);
}

double classifier_accuracy(const classifier *c, const uint8_t *images, const uint8_t *labels, int n,
                           double *per_class) {
    float *x = xalloc_floats((size_t)n * CLF_IN);
    int *pred = xmalloc((size_t)(n > 0 ? n : 1) * sizeof(int));
    classifier_images_to_f32(images, (size_t)n, x);
    classifier_predict(c, x, n, pred, NULL);
    long correct = 0, cls_n[CLF_CLASSES] = {0}, cls_ok[CLF_CLASSES] = {0};
    for (int i = 0; i < n; i++) {
        int ok = pred[i] == labels[i];
        correct += ok;
        if (labels[i] < CLF_CLASSES) cls_n[labels[i]]++, cls_ok[labels[i]] += ok;
    }
    if (per_class)
        for (int j = 0; j < CLF_CLASSES; j++) per_class[j] = cls_n[j] ? (double)cls_ok[j] / cls_n[j] : 0;
    free(x), free(pred);
    return n ? (double)correct / n : 0;
}

void classifier_save(const classifier *c, const char *path) {
    char h1[32], h2[32], acc[32], ep[32], ni[32], seed[32];
    snprintf(h1, sizeof h1, "%d", c->hidden1);
    snprintf(h2, sizeof h2, "%d", c->hidden2);
    if (c->test_accuracy >= 0)
        snprintf(acc, sizeof acc, "%.6f", c->test_accuracy);
    else
        snprintf(acc, sizeof acc, "unknown");
    snprintf(ep, sizeof ep, "%d", c->epochs);
    snprintf(ni, sizeof ni, "%d", c->train_images);
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)c->seed);
    const char *meta[] = {"format",
                          CLF_FORMAT,
                          "architecture",
                          "mlp relu 784-hidden1-hidden2-10",
                          "input_scaling",
                          "x/127.5-1",
                          "hidden1",
                          h1,
                          "hidden2",
                          h2,
                          "test_accuracy",
                          acc,
                          "epochs",
                          ep,
                          "train_images",
                          ni,
                          "seed",
                          seed,
                          NULL};
    param_table_save(&c->table, c->params, "", path, meta);
}

int classifier_load(classifier *c, const char *path, char *err, size_t errlen) {
    st_file *f = st_open(path, err, errlen);
    if (!f) return -1;
    const char *fmt = st_meta(f, "format");
    const st_tensor *w1 = st_find(f, "fc1.weight"), *w2 = st_find(f, "fc2.weight");
    if (!fmt || strcmp(fmt, CLF_FORMAT) || !w1 || !w2 || w1->ndim != 2 || w2->ndim != 2 || w1->shape[1] != CLF_IN ||
        w2->shape[1] != w1->shape[0] || w1->shape[0] > 1 << 20 || w2->shape[0] > 1 << 20) {
        snprintf(err, errlen,
                 "'%s' is not a dfm Fashion-MNIST classifier (expected metadata format=%s and tensors fc1.weight "
                 "[h1, 784], fc2.weight [h2, h1]); make one with `dfm eval train-classifier --out FILE`",
                 path, CLF_FORMAT);
        st_close(f);
        return -1;
    }
    build_table(c, (int)w1->shape[0], (int)w2->shape[0]);
    const char *acc = st_meta(f, "test_accuracy"), *ep = st_meta(f, "epochs"), *ni = st_meta(f, "train_images");
    const char *seed = st_meta(f, "seed");
    char *end = NULL;
    if (acc) {
        double a = strtod(acc, &end);
        if (end != acc && *end == 0 && a >= 0 && a <= 1) c->test_accuracy = a;
    }
    if (ep) c->epochs = atoi(ep);
    if (ni) c->train_images = atoi(ni);
    if (seed) c->seed = strtoull(seed, NULL, 10);
    st_close(f);
    if (param_table_load(&c->table, c->params, "", path, 0, err, errlen)) {
        classifier_free(c);
        return -1;
    }
    return 0;
}

/* A whole binary file (malloc'ed), or NULL with err. Not xread_file: a manifest may name a file that is missing,
 * and that is the user's error to report, not a reason to exit. */
static uint8_t *read_binary(const char *path, size_t *len, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = xmalloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) buf = xrealloc(buf, cap *= 2);
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        snprintf(err, errlen, "cannot read '%s'", path);
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

int clf_manifest_load(const char *path, float **images, int **labels, int *count, char *err, size_t errlen) {
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) {
        if (je.line < 0)
            snprintf(err, errlen, "cannot read manifest '%s': %s", path, je.text);
        else
            snprintf(err, errlen, "manifest '%s' is not valid JSON (line %d, column %d): %s", path, je.line, je.column,
                     je.text);
        return -1;
    }
    if (!json_is_array(root) || json_array_size(root) == 0) {
        snprintf(err, errlen, "manifest '%s' must be a non-empty JSON array of {\"file\": ..., \"label\": ...} objects",
                 path);
        json_decref(root);
        return -1;
    }
    size_t n = json_array_size(root);
    if (n > 1000000) {
        snprintf(err, errlen, "manifest '%s' lists %zu samples; at most 1000000 are supported", path, n);
        json_decref(root);
        return -1;
    }
    char *dir = xstrdup(path);
    char *slash = strrchr(dir, '/');
    if (slash)
        slash[1] = 0;
    else
        dir[0] = 0;
    float *x = xalloc_floats(n * CLF_IN);
    int *lab = xmalloc(n * sizeof(int));
    char file[4096], e2[4700];
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        json_t *e = json_array_get(root, i);
        json_t *jf = json_object_get(e, "file"), *jl = json_object_get(e, "label");
        if (!json_is_object(e) || !json_is_string(jf)) {
            snprintf(err, errlen, "manifest '%s': entry %zu has no \"file\" string", path, i);
            rc = -1;
            break;
        }
        const char *name = json_string_value(jf);
        if (!json_is_integer(jl)) {
            snprintf(err, errlen, "manifest '%s': entry %zu (%s) has no integer \"label\"", path, i, name);
            rc = -1;
            break;
        }
        json_int_t l = json_integer_value(jl);
        if (l < 0 || l >= CLF_CLASSES) {
            snprintf(err, errlen, "manifest '%s': entry %zu (%s) has label %lld, outside the Fashion-MNIST classes 0-9",
                     path, i, name, (long long)l);
            rc = -1;
            break;
        }
        lab[i] = (int)l;
        if (name[0] == '/')
            snprintf(file, sizeof file, "%s", name);
        else
            snprintf(file, sizeof file, "%s%s", dir, name);
        size_t len = 0;
        uint8_t *buf = read_binary(file, &len, e2, sizeof e2), *px = NULL;
        int w, h, ch;
        if (!buf) {
            snprintf(err, errlen, "manifest '%s' entry %zu: %s", path, i, e2);
            rc = -1;
            break;
        }
        rc = png_decode_mem(buf, len, &px, &w, &h, &ch, e2, sizeof e2);
        free(buf);
        if (rc) {
            snprintf(err, errlen, "manifest '%s' entry %zu: '%s': %s", path, i, file, e2);
            break;
        }
        if (w != 28 || h != 28) {
            snprintf(err, errlen, "'%s' is %dx%d; Fashion-MNIST samples must be 28x28 (manifest '%s' entry %zu)", file,
                     w, h, path, i);
            rc = -1;
        }
        for (int p = 0; p < CLF_IN && !rc; p++) {
            const uint8_t *q = px + (size_t)p * ch;
            /* Gray (+alpha) uses channel 0; colour is accepted only when it is gray (R = G = B). */
            if (ch >= 3 && (q[0] != q[1] || q[0] != q[2])) {
                snprintf(err, errlen,
                         "'%s' is a colour image; Fashion-MNIST samples must be grayscale (manifest '%s' "
                         "entry %zu)",
                         file, path, i);
                rc = -1;
                break;
            }
            x[i * CLF_IN + (size_t)p] = (float)q[0] / 127.5f - 1.0f;
        }
        free(px);
    }
    free(dir);
    json_decref(root);
    if (rc) {
        free(x);
        free(lab);
        return -1;
    }
    *images = x;
    *labels = lab;
    *count = (int)n;
    return 0;
}
