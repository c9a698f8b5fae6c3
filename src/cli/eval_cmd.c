/* `dfm eval`: sample-quality measurement for Fashion-MNIST generation.
 *   dfm eval train-classifier --out clf.safetensors [--data DIR] [--epochs N] [--seed N] [--limit N]
 *   dfm eval samples --samples DIR/samples.json --classifier clf.safetensors [--data DIR] [--json out.json]
 * The classifier's penultimate features give a Frechet distance between generated and real images, and its
 * predictions give the agreement with the class each sample was asked for. */
#include "dfm/classifier.h"
#include "dfm/codec.h"
#include "dfm/common.h"
#include "dfm/fashion_mnist.h"
#include "dfm/frechet.h"
#include "dfm/kernels.h"
#include "dfm/rng.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FLOOR_DRAWS 5 /* real subsets drawn for the small-sample floor; their mean and spread are reported */

static void eval_usage(FILE *f) {
    fprintf(f,
            "usage:\n"
            "  dfm eval train-classifier --out FILE.safetensors [--data DIR] [--epochs N] [--seed N] [--limit N]\n"
            "      train the Fashion-MNIST feature classifier (MLP 784-512-256-10), print its test accuracy, save it\n"
            "      (--limit N: train on the first N training images only, for quick checks)\n"
            "  dfm eval samples --samples DIR/samples.json --classifier FILE.safetensors [--data DIR]\n"
            "                   [--json OUT.json] [--seed N]\n"
            "      Frechet distance of the samples' classifier features to the test set's, the same for real\n"
            "      subsets of the same size (the small-sample floor), and agreement with the asked classes\n"
            "  --data DIR defaults to %s\n",
            FMNIST_DEFAULT_DIR);
}

/* Parse a non-negative integer option value, dying with the option's name if it is not one. */
static long parse_long(const char *opt, const char *s, long lo, long hi) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        dfm_die("%s expects an integer in [%ld, %ld], got '%s'", opt, lo, hi, s);
    return v;
}

/* Options of both subcommands: "--name value" or "--name=value". */
typedef struct {
    const char *out, *data, *samples, *clf, *json;
    long epochs, seed, limit;
} eval_opts;

static int parse_opts(int argc, char **argv, eval_opts *o, const char *const *allowed) {
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        char name[64];
        if (strncmp(a, "--", 2)) {
            fprintf(stderr, "dfm: error: unexpected argument '%s'\n", a);
            return -1;
        }
        const char *eq = strchr(a, '=');
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        if (len >= sizeof name) len = sizeof name - 1;
        memcpy(name, a, len);
        name[len] = 0;
        int ok = 0;
        for (int k = 0; allowed[k]; k++) ok |= !strcmp(allowed[k], name);
        if (!ok) {
            fprintf(stderr, "dfm: error: unknown option '%s' for 'dfm eval %s'\n", name, argv[1]);
            return -1;
        }
        if (eq)
            val = eq + 1;
        else if (i + 1 < argc)
            val = argv[++i];
        else {
            fprintf(stderr, "dfm: error: option %s needs a value\n", name);
            return -1;
        }
        if (!strcmp(name, "--out"))
            o->out = val;
        else if (!strcmp(name, "--data"))
            o->data = val;
        else if (!strcmp(name, "--samples"))
            o->samples = val;
        else if (!strcmp(name, "--classifier"))
            o->clf = val;
        else if (!strcmp(name, "--json"))
            o->json = val;
        else if (!strcmp(name, "--epochs"))
            o->epochs = parse_long(name, val, 1, 1000);
        else if (!strcmp(name, "--seed"))
            o->seed = parse_long(name, val, 0, LONG_MAX);
        else if (!strcmp(name, "--limit"))
            o->limit = parse_long(name, val, 1, 10000000);
    }
    return 0;
}

static void load_set(const char *dir, int train, int limit, uint8_t **img, uint8_t **lab, int *n) {
    char err[512];
    if (fmnist_load(dir, train, limit, img, lab, n, err, sizeof err))
        dfm_die("%s (Fashion-MNIST is the Debian package dataset-fashion-mnist; or pass --data DIR)", err);
}

static int cmd_train_classifier(int argc, char **argv) {
    static const char *const allowed[] = {"--out", "--data", "--epochs", "--seed", "--limit", NULL};
    classifier_train_opts to = classifier_default_opts();
    eval_opts o = {.data = FMNIST_DEFAULT_DIR, .epochs = to.epochs, .seed = 0, .limit = 0};
    if (parse_opts(argc, argv, &o, allowed)) return 2;
    if (!o.out) {
        fprintf(stderr, "dfm: error: 'dfm eval train-classifier' needs --out FILE.safetensors\n");
        return 2;
    }
    kernels_init();
    uint8_t *trx, *try_, *tex, *tey;
    int ntr, nte;
    load_set(o.data, 1, (int)o.limit, &trx, &try_, &ntr);
    load_set(o.data, 0, 0, &tex, &tey, &nte);
    to.epochs = (int)o.epochs;
    to.seed = (uint64_t)o.seed;
    to.verbose = 1;
    classifier c;
    classifier_init(&c, 512, 256, to.seed);
    printf("training the Fashion-MNIST classifier (MLP 784-512-256-10) on %d images, %d epochs, seed %llu\n", ntr,
           to.epochs, (unsigned long long)to.seed);
    double t0 = dfm_time_s();
    classifier_train(&c, trx, try_, ntr, &to);
    double secs = dfm_time_s() - t0;
    double per[CLF_CLASSES];
    c.test_accuracy = classifier_accuracy(&c, tex, tey, nte, per);
    printf("test accuracy %.2f%% on %d test images (training took %.1f s)\n", 100 * c.test_accuracy, nte, secs);
    for (int j = 0; j < CLF_CLASSES; j++) printf("  %d %-12s %6.2f%%\n", j, fmnist_class_names[j], 100 * per[j]);
    classifier_save(&c, o.out);
    printf("saved %s\n", o.out);
    classifier_free(&c);
    free(trx), free(try_), free(tex), free(tey);
    return 0;
}

/* Indices of a random subset of a labelled set with the class histogram `want` [10] (drawn without
 * replacement within each class); if some class has too few images, a uniform subset of the same total.
 * Returns 0, or -1 if the set is smaller than the total. */
static int draw_subset(const uint8_t *labels, int n, const int *want, uint64_t seed, uint32_t draw, int *out) {
    int total = 0, avail[CLF_CLASSES] = {0}, matched = 1;
    for (int j = 0; j < CLF_CLASSES; j++) total += want[j];
    if (total > n) return -1;
    for (int i = 0; i < n; i++) avail[labels[i]]++;
    for (int j = 0; j < CLF_CLASSES; j++) matched &= want[j] <= avail[j];
    int *perm = xmalloc((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) perm[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(rng_uniform(seed, RNG_STREAM_SAMPLE, draw, (uint32_t)i, 0) * (i + 1));
        if (j > i) j = i;
        int t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    int taken[CLF_CLASSES] = {0}, k = 0;
    for (int i = 0; i < n && k < total; i++) {
        int c = labels[perm[i]];
        if (!matched || taken[c] < want[c]) out[k++] = perm[i], taken[c]++;
    }
    free(perm);
    return 0;
}

typedef struct {
    int ok;
    double mean, sd, lo, hi;
} floor_stat;

/* FD of FLOOR_DRAWS class-matched real subsets of `set` (n images) against the reference fit. */
static floor_stat real_floor(const classifier *c, const uint8_t *set, const uint8_t *labels, int n, const int *want,
                             int m, uint64_t seed, uint32_t stream_ofs, const gauss_fit *ref) {
    floor_stat s = {0, 0, 0, INFINITY, -INFINITY};
    int *idx = xmalloc((size_t)m * sizeof(int));
    uint8_t *u8 = xmalloc((size_t)m * CLF_IN);
    float *x = xalloc_floats((size_t)m * CLF_IN), *f = xalloc_floats((size_t)m * c->hidden2);
    double sum = 0, sq = 0;
    for (int d = 0; d < FLOOR_DRAWS; d++) {
        if (draw_subset(labels, n, want, seed, stream_ofs + (uint32_t)d, idx)) goto done;
        for (int i = 0; i < m; i++) memcpy(u8 + (size_t)i * CLF_IN, set + (size_t)idx[i] * CLF_IN, CLF_IN);
        classifier_images_to_f32(u8, (size_t)m, x);
        classifier_features(c, x, m, f);
        gauss_fit g;
        gauss_fit_features(&g, f, m, c->hidden2);
        double fd = frechet_distance(&g, ref);
        gauss_fit_free(&g);
        if (fd < 0) dfm_die("Frechet distance failed (non-finite features from the classifier?)");
        sum += fd, sq += fd * fd;
        s.lo = fd < s.lo ? fd : s.lo;
        s.hi = fd > s.hi ? fd : s.hi;
    }
    s.ok = 1;
    s.mean = sum / FLOOR_DRAWS;
    s.sd = sqrt(fmax(0, (sq - sum * sum / FLOOR_DRAWS) / (FLOOR_DRAWS - 1)));
done:
    free(idx), free(u8), free(x), free(f);
    return s;
}

static json_t *floor_json(const floor_stat *s) {
    if (!s->ok) return json_null();
    return json_pack("{s:f, s:f, s:f, s:f, s:i}", "mean", s->mean, "sd", s->sd, "min", s->lo, "max", s->hi, "draws",
                     FLOOR_DRAWS);
}

static int cmd_samples(int argc, char **argv) {
    static const char *const allowed[] = {"--samples", "--classifier", "--data", "--json", "--seed", NULL};
    eval_opts o = {.data = FMNIST_DEFAULT_DIR};
    if (parse_opts(argc, argv, &o, allowed)) return 2;
    if (!o.samples) {
        fprintf(stderr, "dfm: error: 'dfm eval samples' needs --samples DIR/samples.json (written by dfm generate)\n");
        return 2;
    }
    if (!o.clf) {
        fprintf(stderr, "dfm: error: 'dfm eval samples' needs --classifier FILE.safetensors (make one once with: "
                        "dfm eval train-classifier --out FILE.safetensors)\n");
        return 2;
    }
    kernels_init();
    classifier c;
    char err[1024];
    if (classifier_load(&c, o.clf, err, sizeof err))
        dfm_die("%s\n  (a classifier is made once with: dfm eval train-classifier --out FILE.safetensors)", err);
    float *sx;
    int *slab, ns;
    if (clf_manifest_load(o.samples, &sx, &slab, &ns, err, sizeof err) != 0) dfm_die("%s", err);
    if (ns < 2) dfm_die("manifest '%s' has %d sample; a Frechet distance needs at least 2", o.samples, ns);

    uint8_t *tex, *tey, *trx, *try_;
    int nte, ntr;
    load_set(o.data, 0, 0, &tex, &tey, &nte);
    load_set(o.data, 1, 0, &trx, &try_, &ntr);
    const int F = c.hidden2;

    /* Reference: all test images. Their predictions also give the per-class accuracy ceiling for agreement. */
    float *tx = xalloc_floats((size_t)nte * CLF_IN), *tf = xalloc_floats((size_t)nte * F);
    classifier_images_to_f32(tex, (size_t)nte, tx);
    classifier_features(&c, tx, nte, tf);
    int *tpred = xmalloc((size_t)nte * sizeof(int));
    classifier_predict(&c, tx, nte, tpred, NULL);
    long cls_n[CLF_CLASSES] = {0}, cls_ok[CLF_CLASSES] = {0}, test_ok = 0;
    for (int i = 0; i < nte; i++) cls_n[tey[i]]++, cls_ok[tey[i]] += tpred[i] == tey[i], test_ok += tpred[i] == tey[i];
    double test_acc_now = (double)test_ok / nte;
    gauss_fit ref;
    gauss_fit_features(&ref, tf, nte, F);

    float *sf = xalloc_floats((size_t)ns * F);
    classifier_features(&c, sx, ns, sf);
    int *spred = xmalloc((size_t)ns * sizeof(int));
    classifier_predict(&c, sx, ns, spred, NULL);
    int want[CLF_CLASSES] = {0}, agree[CLF_CLASSES] = {0}, agree_all = 0;
    for (int i = 0; i < ns; i++)
        want[slab[i]]++, agree[slab[i]] += spred[i] == slab[i], agree_all += spred[i] == slab[i];
    gauss_fit gs;
    gauss_fit_features(&gs, sf, ns, F);
    double fd = frechet_distance(&gs, &ref);
    if (fd < 0) dfm_die("Frechet distance failed: the samples' features are not finite");
    gauss_fit_free(&gs);

    floor_stat ftest = real_floor(&c, tex, tey, nte, want, ns, (uint64_t)o.seed, 0, &ref);
    floor_stat ftrain = real_floor(&c, trx, try_, ntr, want, ns, (uint64_t)o.seed, 1000, &ref);

    double clf_acc = c.test_accuracy >= 0 ? c.test_accuracy : test_acc_now;
    printf("dfm eval samples: %d samples from %s\n", ns, o.samples);
    printf("classifier %s: MLP 784-%d-%d-10, test accuracy %.2f%%%s\n", o.clf, c.hidden1, c.hidden2, 100 * clf_acc,
           c.test_accuracy >= 0 ? "" : " (measured now; the file records none)");
    printf("\nFrechet distance on classifier features (%d-d), against all %d test images:\n", F, nte);
    printf("  generated samples (%d)                        %10.4f\n", ns, fd);
    if (ftest.ok)
        printf("  real test subsets, same size and classes      %10.4f  (floor; sd %.4f over %d draws)\n", ftest.mean,
               ftest.sd, FLOOR_DRAWS);
    if (ftrain.ok)
        printf("  real training subsets, same size and classes  %10.4f  (sd %.4f over %d draws)\n", ftrain.mean,
               ftrain.sd, FLOOR_DRAWS);
    printf("\nagreement with the asked class: %.2f%% (%d of %d)\n", 100.0 * agree_all / ns, agree_all, ns);
    printf("  class            samples  agreement  classifier test accuracy\n");
    for (int j = 0; j < CLF_CLASSES; j++) {
        double cacc = cls_n[j] ? 100.0 * cls_ok[j] / cls_n[j] : 0;
        if (want[j])
            printf("  %d %-12s   %7d   %7.2f%%   %7.2f%%\n", j, fmnist_class_names[j], want[j],
                   100.0 * agree[j] / want[j], cacc);
        else
            printf("  %d %-12s   %7d         -    %7.2f%%\n", j, fmnist_class_names[j], 0, cacc);
    }

    if (o.json) {
        json_t *per = json_array();
        for (int j = 0; j < CLF_CLASSES; j++) {
            json_t *agr = want[j] ? json_real((double)agree[j] / want[j]) : json_null();
            json_array_append_new(per, json_pack("{s:i, s:s, s:i, s:o, s:f}", "class", j, "name", fmnist_class_names[j],
                                                 "samples", want[j], "agreement", agr, "classifier_test_accuracy",
                                                 cls_n[j] ? (double)cls_ok[j] / cls_n[j] : 0.0));
        }
        json_t *root =
            json_pack("{s:s, s:s, s:i, s:i, s:f, s:f, s:i, s:f, s:o, s:o, s:f, s:i, s:o}", "manifest", o.samples,
                      "classifier", o.clf, "samples", ns, "feature_dim", F, "classifier_test_accuracy", clf_acc,
                      "classifier_test_accuracy_measured", test_acc_now, "reference_images", nte, "fd", fd,
                      "fd_floor_test_subset", floor_json(&ftest), "fd_train_subset", floor_json(&ftrain), "agreement",
                      (double)agree_all / ns, "agreed", agree_all, "per_class", per);
        if (!root) dfm_die("internal error building the JSON report");
        char *text = json_dumps(root, JSON_INDENT(2));
        dfm_atomic_file af;
        atomic_open(&af, o.json);
        xfwrite(text, 1, strlen(text), af.f, o.json);
        xfwrite("\n", 1, 1, af.f, o.json);
        atomic_commit(&af);
        free(text);
        json_decref(root);
        printf("\nwrote %s\n", o.json);
    }
    gauss_fit_free(&ref);
    classifier_free(&c);
    free(sx), free(slab), free(tex), free(tey), free(trx), free(try_), free(tx), free(tf), free(tpred), free(sf);
    free(spred);
    return 0;
}

/* argv[0] is "eval", argv[1] the subcommand. */
int dfm_eval_main(int argc, char **argv) {
    if (argc < 2) {
        eval_usage(stderr);
        return 2;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "train-classifier")) return cmd_train_classifier(argc, argv);
    if (!strcmp(sub, "samples")) return cmd_samples(argc, argv);
    if (!strcmp(sub, "help") || !strcmp(sub, "--help") || !strcmp(sub, "-h")) {
        eval_usage(stdout);
        return 0;
    }
    fprintf(stderr, "dfm: error: unknown 'dfm eval' subcommand '%s'\n", sub);
    eval_usage(stderr);
    return 2;
}
