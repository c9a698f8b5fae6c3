/* Sample-quality measurement: Frechet distance (closed forms and a numpy reference), the Fashion-MNIST feature
 * classifier (learns, deterministic, save/load round trip) and `dfm eval` end to end on real images written as
 * PNGs, plus its errors on bad input. */
#include "dfm/classifier.h"
#include "dfm/codec.h"
#include "dfm/common.h"
#include "dfm/fashion_mnist.h"
#include "dfm/frechet.h"
#include "dfm/kernels.h"
#include "dfm/safetensors.h"
#include "test.h"
#include "test_fs.h"

#include <jansson.h>
#include <string.h>
#include <sys/wait.h>

static char *tmp;
static int sanitizer;

/* ---- Frechet distance -------------------------------------------------------------------------------------- */

static double rel(double a, double b) {
    return fabs(a - b) / fmax(fabs(b), 1e-300);
}

static void test_frechet_closed_forms(void) {
    enum { D = 12 };
    double mu1[D], mu2[D], c1[D * D] = {0}, c2[D * D] = {0}, want = 0;
    for (int i = 0; i < D; i++) {
        mu1[i] = test_randn(), mu2[i] = test_randn();
        double a = 0.1 + 2 * test_uniform(), b = 0.1 + 2 * test_uniform();
        if (i == D - 1) b = 0; /* a singular covariance: sqrt of a zero eigenvalue */
        c1[i * D + i] = a, c2[i * D + i] = b;
        want += (mu1[i] - mu2[i]) * (mu1[i] - mu2[i]) + (sqrt(a) - sqrt(b)) * (sqrt(a) - sqrt(b));
    }
    double fd = frechet_distance_moments(mu1, c1, mu2, c2, D);
    CHECK(rel(fd, want) < 1e-10, "FD of diagonal Gaussians = |dmu|^2 + sum (sqrt a - sqrt b)^2: %.12g vs %.12g", fd,
          want);

    /* A rotated pair: the same closed form holds for covariances sharing eigenvectors, Q diag(a) Q^T. */
    double q[D * D], r1[D * D], r2[D * D];
    for (int i = 0; i < D * D; i++) q[i] = test_randn();
    double w[D];
    for (int i = 0; i < D; i++)
        for (int j = 0; j < i; j++) q[i * D + j] = q[j * D + i]; /* symmetric, so its eigenvectors are orthonormal */
    CHECK(sym_eigen(q, w, D) == 0, "sym_eigen succeeds on a random symmetric matrix");
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++) {
            double s1 = 0, s2 = 0;
            for (int k = 0; k < D; k++)
                s1 += q[i * D + k] * c1[k * D + k] * q[j * D + k], s2 += q[i * D + k] * c2[k * D + k] * q[j * D + k];
            r1[i * D + j] = s1, r2[i * D + j] = s2;
        }
    fd = frechet_distance_moments(mu1, r1, mu2, r2, D);
    /* A zero eigenvalue blurred by rotation round-off (~1e-16) costs sqrt(1e-16) in the trace: hence 1e-7. */
    CHECK(rel(fd, want) < 1e-7, "FD of co-rotated Gaussians matches the closed form: %.12g vs %.12g", fd, want);
    double fd_self = frechet_distance_moments(mu1, r1, mu1, r1, D);
    CHECK(fabs(fd_self) < 1e-9, "FD of a Gaussian with itself is 0 (%.3g)", fd_self);
}

static float *correlated(int n, int d, double shift, double mix) {
    float *x = xalloc_floats((size_t)n * d);
    float *z = xalloc_floats((size_t)d);
    for (int i = 0; i < n; i++) {
        test_fill_randn(z, d, 1.0f);
        for (int j = 0; j < d; j++) {
            double v = z[j] + shift * (j % 3);
            if (j) v += mix * z[j - 1] + 0.3 * mix * z[0]; /* correlated neighbours, a common factor */
            x[(size_t)i * d + j] = (float)(v * (1 + 0.1 * j));
        }
    }
    free(z);
    return x;
}

static void write_npy(const char *path, const float *x, int n, int d) {
    int64_t shape[2] = {n, d};
    size_t len;
    uint8_t *b = npy_encode(x, "<f4", shape, 2, &len);
    FILE *f = xfopen(path, "wb");
    xfwrite(b, 1, len, f, path);
    xfclose(f, path);
    free(b);
}

/* numpy reference: np.cov fits, FD via eigh (as dfm) and independently via eigvals(S1 S2). */
static const char *py_ref = "import sys, numpy as np\n"
                            "a = np.load(sys.argv[1]).astype(np.float64); b = np.load(sys.argv[2]).astype(np.float64)\n"
                            "m1, m2 = a.mean(0), b.mean(0); s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)\n"
                            "w, v = np.linalg.eigh(s1); h = (v * np.sqrt(np.clip(w, 0, None))) @ v.T\n"
                            "e = np.linalg.eigvalsh(h @ s2 @ h); t = np.sqrt(np.clip(e, 0, None)).sum()\n"
                            "fd = ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * t\n"
                            "ev = np.linalg.eigvals(s1 @ s2); t2 = np.sqrt(np.clip(ev.real, 0, None)).sum()\n"
                            "fd2 = ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * t2\n"
                            "print('%.17g %.17g %.17g' % (fd, fd2, np.abs(s1).max()))\n";

static void test_frechet_numpy(int *have_py) {
    const char *script = test_path("%s/fd_ref.py", tmp);
    FILE *f = xfopen(script, "w");
    fputs(py_ref, f);
    xfclose(f, script);
    struct {
        int na, nb, d;
        double shift, mix;
    } cases[] = {{400, 300, 16, 0.3, 0.8}, {600, 500, 64, 0.05, 0.5}, {40, 50, 64, 0.2, 0.7}};
    for (int c = 0; c < 3; c++) {
        int d = cases[c].d;
        float *a = correlated(cases[c].na, d, 0, cases[c].mix), *b = correlated(cases[c].nb, d, cases[c].shift, 0.6);
        gauss_fit ga, gb;
        gauss_fit_features(&ga, a, cases[c].na, d);
        gauss_fit_features(&gb, b, cases[c].nb, d);
        double fd = frechet_distance(&ga, &gb), fd_ba = frechet_distance(&gb, &ga);
        CHECK(rel(fd_ba, fd) < 1e-8, "FD is symmetric (n %d/%d, d %d): %.12g vs %.12g", cases[c].na, cases[c].nb, d, fd,
              fd_ba);
        gauss_fit ga2;
        gauss_fit_features(&ga2, a, cases[c].na, d);
        double fd0 = frechet_distance(&ga, &ga2);
        /* Relative to the trace: zero eigenvalues of a rank-deficient covariance come back as +-eps * max. */
        double tr = 0;
        for (int i = 0; i < d; i++) tr += ga.cov[(size_t)i * d + i];
        CHECK(fabs(fd0) < 1e-7 * tr, "FD of a feature set with itself is 0 (d %d, n %d%s): %.3g (trace %.3g)", d,
              cases[c].na, cases[c].na < d ? ", rank-deficient" : "", fd0, tr);
        gauss_fit_free(&ga2);
        if (*have_py) {
            const char *pa = test_path("%s/fa%d.npy", tmp, c), *pb = test_path("%s/fb%d.npy", tmp, c);
            write_npy(pa, a, cases[c].na, d);
            write_npy(pb, b, cases[c].nb, d);
            char cmd[1024];
            snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' '%s' '%s'", script, pa, pb);
            fflush(stdout);
            FILE *p = popen(cmd, "r");
            double ref = -1, ref2 = -1, smax = 0;
            int got = p ? fscanf(p, "%lf %lf %lf", &ref, &ref2, &smax) : 0;
            if (p) pclose(p);
            CHECK(got == 3, "numpy reference ran for case %d", c);
            /* A rank-deficient case (n < d) makes eigvals(S1 S2) ill-conditioned: only the eigh route compares. */
            CHECK(rel(fd, ref) < 1e-6, "FD matches numpy (eigh) on correlated data, n %d/%d, d %d: %.12g vs %.12g",
                  cases[c].na, cases[c].nb, d, fd, ref);
            if (cases[c].na > d)
                CHECK(rel(fd, ref2) < 1e-6, "FD matches numpy (eigvals of S1 S2), d %d: %.12g vs %.12g", d, fd, ref2);
        }
        gauss_fit_free(&ga), gauss_fit_free(&gb);
        free(a), free(b);
    }
}

/* ---- Classifier ------------------------------------------------------------------------------------------- */

static void test_classifier(const uint8_t *trx, const uint8_t *trl, int ntr, const uint8_t *tex, const uint8_t *tel,
                            int nte, const char *clf_path) {
    classifier_train_opts o = classifier_default_opts();
    o.epochs = 3;
    o.seed = 7;
    classifier c, c2;
    classifier_init(&c, 512, 256, o.seed);
    double t0 = dfm_time_s();
    classifier_train(&c, trx, trl, ntr, &o);
    double acc = classifier_accuracy(&c, tex, tel, nte, NULL);
    CHECK(acc > 0.6, "classifier on %d training images, %d epochs: %.1f%% on %d test images (> 60%%; %.2f s)", ntr,
          o.epochs, 100 * acc, nte, dfm_time_s() - t0);

    classifier_init(&c2, 512, 256, o.seed);
    classifier_train(&c2, trx, trl, ntr, &o);
    CHECK(!memcmp(c.params, c2.params, c.table.total * sizeof(float)),
          "classifier training is deterministic for a seed");
    classifier_free(&c2);

    /* Features: [n, 256], post-ReLU, and the head applied to them gives the predictions. */
    int n = nte < 300 ? nte : 300;
    float *x = xalloc_floats((size_t)n * CLF_IN), *f = xalloc_floats((size_t)n * 256),
          *probs = xalloc_floats((size_t)n * 10);
    int *pred = xmalloc((size_t)n * sizeof(int)), *pred2 = xmalloc((size_t)n * sizeof(int));
    classifier_images_to_f32(tex, (size_t)n, x);
    classifier_features(&c, x, n, f);
    classifier_predict(&c, x, n, pred, probs);
    const float *w3 = c.params + c.table.e[4].offset, *b3 = c.params + c.table.e[5].offset;
    int nonneg = 1, agree = 0, active = 0, probs_ok = 1;
    for (int i = 0; i < n; i++) {
        int arg = 0;
        double best = -1e30, psum = 0;
        for (int k = 0; k < 10; k++) {
            double l = b3[k];
            for (int j = 0; j < 256; j++) l += (double)w3[k * 256 + j] * f[(size_t)i * 256 + j];
            if (l > best) best = l, arg = k;
            psum += probs[i * 10 + k];
        }
        agree += arg == pred[i];
        probs_ok &= fabs(psum - 1) < 1e-5 && probs[i * 10 + pred[i]] >= 0.1f;
        for (int j = 0; j < 256; j++) nonneg &= f[(size_t)i * 256 + j] >= 0, active += f[(size_t)i * 256 + j] > 0;
    }
    CHECK(c.hidden2 == 256 && nonneg && active > n * 256 / 10, "features are [n, 256], non-negative, %.0f%% active",
          100.0 * active / (n * 256));
    CHECK(agree == n, "the head applied to the features reproduces classifier_predict (%d of %d)", agree, n);
    CHECK(probs_ok, "predicted probabilities sum to 1 and the argmax holds the most mass");

    c.test_accuracy = acc;
    classifier_save(&c, clf_path);
    char err[1024];
    int rc = classifier_load(&c2, clf_path, err, sizeof err);
    CHECK(rc == 0, "classifier_load reads what classifier_save wrote%s%s", rc ? ": " : "", rc ? err : "");
    if (rc == 0) {
        classifier_predict(&c2, x, n, pred2, NULL);
        CHECK(!memcmp(c.params, c2.params, c.table.total * sizeof(float)) && !memcmp(pred, pred2, n * sizeof(int)),
              "save/load round trip: identical weights and predictions");
        CHECK(fabs(c2.test_accuracy - acc) < 1e-6 && c2.epochs == 3 && c2.train_images == ntr && c2.seed == 7,
              "the file's metadata carries test accuracy %.4f, epochs, training images and seed", c2.test_accuracy);
        classifier_free(&c2);
    }
    rc = classifier_load(&c2, test_path("%s/missing.safetensors", tmp), err, sizeof err);
    CHECK(rc == -1 && strstr(err, "missing.safetensors"), "loading a missing file fails naming it: %s", err);
    /* A valid safetensors file that is not a classifier. */
    const char *other = test_path("%s/other.safetensors", tmp);
    st_writer *w = st_writer_new();
    int64_t shape[1] = {4};
    float data[4] = {0};
    st_writer_add(w, "x", ST_F32, 1, shape, data);
    st_writer_finish(w, other);
    rc = classifier_load(&c2, other, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "not a dfm Fashion-MNIST classifier") && strstr(err, "train-classifier"),
          "a safetensors file of something else is refused with a hint: %s", err);
    classifier_free(&c);
    free(x), free(f), free(probs), free(pred), free(pred2);
}

/* ---- dfm eval ---------------------------------------------------------------------------------------------- */

static void write_png(const char *path, const uint8_t *px, int w, int h) {
    size_t len;
    uint8_t *b = png_encode_mem(px, w, h, 1, &len);
    FILE *f = xfopen(path, "wb");
    xfwrite(b, 1, len, f, path);
    xfclose(f, path);
    free(b);
}

/* Write n images as PNGs into dir with a manifest giving label (label_of[i] + shift) % 10. */
static void write_manifest(const char *dir_in, const uint8_t *img, const uint8_t *lab, int n, int shift) {
    char dir[512]; /* test_path buffers rotate: keep a copy */
    snprintf(dir, sizeof dir, "%s", dir_in);
    test_sh("mkdir -p '%s'", dir);
    json_t *arr = json_array();
    char name[64];
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "sample_%04d.png", i);
        write_png(test_path("%s/%s", dir, name), img + (size_t)i * CLF_IN, 28, 28);
        json_array_append_new(arr,
                              json_pack("{s:s, s:i, s:i}", "file", name, "label", (lab[i] + shift) % 10, "seed", i));
    }
    json_dump_file(arr, test_path("%s/samples.json", dir), JSON_INDENT(1));
    json_decref(arr);
}

/* Run dfm with args; returns the exit status, output (stdout + stderr) in out. */
static int run_dfm(char *out, size_t outlen, const char *args) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", test_dfm_bin(), args);
    fflush(stdout);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t got = fread(out, 1, outlen - 1, p);
    out[got] = 0;
    int rc = pclose(p);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static json_t *eval_json(const char *manifest, const char *clf, const char *jpath, char *out, size_t outlen) {
    char args[2048];
    snprintf(args, sizeof args, "eval samples --samples '%s' --classifier '%s' --json '%s'", manifest, clf, jpath);
    int rc = run_dfm(out, outlen, args);
    if (rc != 0) {
        printf("# dfm eval samples exited %d:\n%s\n", rc, out);
        return NULL;
    }
    return json_load_file(jpath, 0, NULL);
}

static void test_cli(const uint8_t *tex, const uint8_t *tel, const char *clf_path) {
    static char out[65536];
    int n = sanitizer ? 100 : 300;
    classifier c;
    char err[1024];
    if (classifier_load(&c, clf_path, err, sizeof err)) {
        CHECK(0, "classifier for the CLI test: %s", err);
        return;
    }
    double acc_here = classifier_accuracy(&c, tex, tel, n, NULL);
    classifier_free(&c);

    char real[512], wrong[512], nz[512], bad[512];
    snprintf(real, sizeof real, "%s/real", tmp);
    snprintf(wrong, sizeof wrong, "%s/wrong", tmp);
    snprintf(nz, sizeof nz, "%s/noise", tmp);
    snprintf(bad, sizeof bad, "%s/bad", tmp);
    write_manifest(real, tex, tel, n, 0);
    json_t *j =
        eval_json(test_path("%s/samples.json", real), clf_path, test_path("%s/real.json", tmp), out, sizeof out);
    CHECK(j != NULL, "dfm eval samples runs on %d real test images and writes its JSON", n);
    double fd_real = -1, floor_real = -1;
    if (j) {
        double agr = json_real_value(json_object_get(j, "agreement"));
        fd_real = json_real_value(json_object_get(j, "fd"));
        floor_real = json_real_value(json_object_get(json_object_get(j, "fd_floor_test_subset"), "mean"));
        double ftrain = json_real_value(json_object_get(json_object_get(j, "fd_train_subset"), "mean"));
        CHECK(fabs(agr - acc_here) < 1e-9,
              "agreement on real images with their true labels = the classifier's accuracy on them (%.4f vs %.4f)", agr,
              acc_here);
        CHECK(fd_real > 0 && floor_real > 0 && fd_real < 2 * floor_real && ftrain < 3 * floor_real,
              "FD of real images is at the small-sample floor: %.4f vs floor %.4f (training subsets %.4f)", fd_real,
              floor_real, ftrain);
        CHECK(json_integer_value(json_object_get(j, "samples")) == n &&
                  json_array_size(json_object_get(j, "per_class")) == 10 &&
                  fabs(json_real_value(json_object_get(j, "classifier_test_accuracy")) -
                       json_real_value(json_object_get(j, "classifier_test_accuracy_measured"))) < 0.02,
              "JSON report has the sample count, 10 per-class rows and the classifier's test accuracy");
        CHECK(strstr(out, "agreement with the asked class") && strstr(out, "Frechet distance") &&
                  strstr(out, "Ankle boot"),
              "the printed report has the FD, the agreement and a per-class table");
        json_decref(j);
    }

    write_manifest(wrong, tex, tel, n, 1);
    j = eval_json(test_path("%s/samples.json", wrong), clf_path, test_path("%s/wrong.json", tmp), out, sizeof out);
    if (j) {
        double agr = json_real_value(json_object_get(j, "agreement"));
        CHECK(agr < 0.25, "the same images asked as the wrong classes agree rarely: %.1f%%", 100 * agr);
        json_decref(j);
    } else
        CHECK(0, "dfm eval samples on mislabelled images");

    /* Noise images: far from the data in feature space. */
    uint8_t *noise = xmalloc((size_t)n * CLF_IN);
    for (size_t i = 0; i < (size_t)n * CLF_IN; i++) noise[i] = (uint8_t)(test_uniform() * 256);
    write_manifest(nz, noise, tel, n, 0);
    free(noise);
    j = eval_json(test_path("%s/samples.json", nz), clf_path, test_path("%s/noise.json", tmp), out, sizeof out);
    if (j) {
        double fd = json_real_value(json_object_get(j, "fd"));
        CHECK(fd > 10 * floor_real, "FD of noise images (%.3f) is far above the real floor (%.4f)", fd, floor_real);
        json_decref(j);
    } else
        CHECK(0, "dfm eval samples on noise images");

    /* Bad input. */
    test_sh("mkdir -p '%s'", bad);
    uint8_t big[32 * 32] = {0};
    write_png(test_path("%s/big.png", bad), big, 32, 32);
    write_png(test_path("%s/ok.png", bad), tex, 28, 28);
    struct {
        const char *manifest; /* NULL: no manifest written, the file name is used as is */
        const char *args_fmt; /* %s = manifest path, then classifier */
        int rc;
        const char *msg;
        const char *what;
    } cases[] = {
        {"[{\"file\": \"ok.png\", \"label\": 1}, {\"file\": \"big.png\", \"label\": 2}]",
         "--samples '%s' --classifier '%s'", 1, "must be 28x28", "a 32x32 image"},
        {"[{\"file\": \"ok.png\", \"label\": 10}]", "--samples '%s' --classifier '%s'", 1,
         "outside the Fashion-MNIST classes 0-9", "label 10"},
        {"[{\"file\": \"ok.png\", \"label\": -1}]", "--samples '%s' --classifier '%s'", 1, "outside", "label -1"},
        {"[{\"file\": \"ok.png\"}]", "--samples '%s' --classifier '%s'", 1, "has no integer \"label\"",
         "a missing label"},
        {"[{\"label\": 3}]", "--samples '%s' --classifier '%s'", 1, "has no \"file\"", "a missing file name"},
        {"[{\"file\": \"ok.png\", \"label\": 1},", "--samples '%s' --classifier '%s'", 1, "not valid JSON (line",
         "truncated JSON"},
        {"{\"file\": \"ok.png\"}", "--samples '%s' --classifier '%s'", 1, "non-empty JSON array",
         "an object instead of an array"},
        {"[{\"file\": \"nope.png\", \"label\": 1}, {\"file\": \"ok.png\", \"label\": 1}]",
         "--samples '%s' --classifier '%s'", 1, "nope.png", "a missing PNG"},
        {"[{\"file\": \"samples.json\", \"label\": 1}, {\"file\": \"ok.png\", \"label\": 1}]",
         "--samples '%s' --classifier '%s'", 1, "entry 0", "a file that is not a PNG"},
        {NULL, "--samples '%s/none.json' --classifier '%s'", 1, "cannot read manifest", "a missing manifest"},
        {NULL, "--samples '%s' --classifier '%s.none'", 1, ".none", "a missing classifier file"},
        {NULL, "--samples '%s'%.0s", 2, "dfm eval train-classifier --out", "no --classifier"},
        {NULL, "--samples '%s' --classifier '%s' --bogus 1", 2, "unknown option '--bogus'", "an unknown option"},
    };
    int nc = (int)(sizeof cases / sizeof cases[0]);
    for (int i = 0; i < nc; i++) {
        const char *mpath = cases[i].manifest ? test_path("%s/samples.json", bad) : test_path("%s", bad);
        if (cases[i].manifest) {
            FILE *f = xfopen(mpath, "w");
            fputs(cases[i].manifest, f);
            xfclose(f, mpath);
        } else if (strstr(cases[i].args_fmt, "none.json") == NULL) {
            mpath = test_path("%s/samples.json", real);
        }
        char args[2048], fmt[512];
        snprintf(fmt, sizeof fmt, "eval samples %s", cases[i].args_fmt);
        snprintf(args, sizeof args, fmt, mpath, clf_path);
        int rc = run_dfm(out, sizeof out, args);
        char *nl = strchr(out, '\n');
        if (nl) *nl = 0;
        CHECK(rc == cases[i].rc && strstr(out, cases[i].msg), "dfm eval samples with %s: exit %d, \"%.200s\"",
              cases[i].what, rc, out);
    }
    int rc = run_dfm(out, sizeof out, "eval frobnicate");
    CHECK(rc == 2 && strstr(out, "unknown 'dfm eval' subcommand"), "an unknown eval subcommand is refused (exit %d)",
          rc);
    rc = run_dfm(out, sizeof out, "eval train-classifier --epochs 0 --out x");
    CHECK(rc == 1 && strstr(out, "--epochs expects an integer"), "--epochs 0 is refused (exit %d)", rc);

    /* train-classifier end to end on a small subset. */
    const char *small = test_path("%s/small.safetensors", tmp);
    char args[1024];
    snprintf(args, sizeof args, "eval train-classifier --out '%s' --limit %d --epochs 1 --seed 3", small,
             sanitizer ? 300 : 1000);
    rc = run_dfm(out, sizeof out, args);
    classifier c3;
    int lrc = rc == 0 ? classifier_load(&c3, small, err, sizeof err) : -1;
    CHECK(rc == 0 && strstr(out, "test accuracy") && lrc == 0 && c3.test_accuracy > 0.3 && c3.epochs == 1,
          "dfm eval train-classifier trains, reports and saves a loadable classifier (exit %d, accuracy %.3f)", rc,
          lrc == 0 ? c3.test_accuracy : -1.0);
    if (lrc == 0) classifier_free(&c3);
}

int main(void) {
    test_seed();
    kernels_init();
    sanitizer = getenv("DFM_TEST_SANITIZER") != NULL;
    tmp = test_mkdtemp();
    int failed = 0, have_py = test_have_python(&failed);
    if (failed) test_failed_++;

    test_frechet_closed_forms();
    test_frechet_numpy(&have_py);

    uint8_t *trx, *trl, *tex, *tel;
    int ntr, nte;
    char err[512];
    int ntrain = sanitizer ? 1000 : 2000, ntest = 1000;
    if (fmnist_load(FMNIST_DEFAULT_DIR, 1, ntrain, &trx, &trl, &ntr, err, sizeof err) ||
        fmnist_load(FMNIST_DEFAULT_DIR, 0, ntest, &tex, &tel, &nte, err, sizeof err)) {
        CHECK(0, "Fashion-MNIST is needed for the classifier tests (Debian package dataset-fashion-mnist): %s", err);
    } else {
        char clf[512];
        snprintf(clf, sizeof clf, "%s/clf.safetensors", tmp);
        test_classifier(trx, trl, ntr, tex, tel, nte, clf);
        test_cli(tex, tel, clf);
        free(trx), free(trl), free(tex), free(tel);
    }
    test_rmtree(tmp);
    free(tmp);
    return test_finish();
}
