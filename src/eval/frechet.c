/* Frechet distance between Gaussian fits of feature sets, in double. */
#include "dfm/frechet.h"
#include "dfm/common.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* LAPACK from the OpenBLAS library (Fortran symbol; the trailing size_t are gfortran's hidden string lengths). */
extern void dsyev_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda, double *w, double *work,
                   const int *lwork, int *info, size_t jobz_len, size_t uplo_len);

void gauss_fit_features(gauss_fit *g, const float *feats, long n, int dim) {
    if (n < 2) dfm_die("gauss_fit_features: need at least 2 feature vectors, got %ld", n);
    g->dim = dim;
    g->n = n;
    g->mu = xcalloc((size_t)dim, sizeof(double));
    g->cov = xcalloc((size_t)dim * dim, sizeof(double));
    for (long i = 0; i < n; i++)
        for (int j = 0; j < dim; j++) g->mu[j] += feats[(size_t)i * dim + j];
    for (int j = 0; j < dim; j++) g->mu[j] /= (double)n;
    /* Centre in double first: E[xx^T] - mu mu^T would lose digits to cancellation. */
    double *xc = xmalloc((size_t)n * dim * sizeof(double));
    for (long i = 0; i < n; i++)
        for (int j = 0; j < dim; j++) xc[(size_t)i * dim + j] = feats[(size_t)i * dim + j] - g->mu[j];
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, dim, (int)n, 1.0 / (double)(n - 1), xc, dim, 0.0, g->cov, dim);
    for (int i = 0; i < dim; i++)
        for (int j = 0; j < i; j++) g->cov[(size_t)i * dim + j] = g->cov[(size_t)j * dim + i];
    free(xc);
}

void gauss_fit_free(gauss_fit *g) {
    free(g->mu);
    free(g->cov);
    g->mu = g->cov = NULL;
}

int sym_eigen(double *a, double *w, int d) {
    /* LAPACK is column-major: a symmetric matrix is its own transpose, and the column-major eigenvector
     * matrix read row-major is V^T, so transpose back to give column k = eigenvector k row-major. */
    int n = d, lwork = -1, info = 0;
    double wq;
    dsyev_("V", "U", &n, a, &n, w, &wq, &lwork, &info, 1, 1);
    if (info != 0) return -1;
    lwork = (int)wq;
    double *work = xmalloc((size_t)lwork * sizeof(double));
    dsyev_("V", "U", &n, a, &n, w, work, &lwork, &info, 1, 1);
    free(work);
    if (info != 0) return -1;
    for (int i = 0; i < d; i++)
        for (int j = 0; j < i; j++) {
            double t = a[(size_t)i * d + j];
            a[(size_t)i * d + j] = a[(size_t)j * d + i];
            a[(size_t)j * d + i] = t;
        }
    return 0;
}

static int finite_all(const double *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

double frechet_distance_moments(const double *mu1, const double *cov1, const double *mu2, const double *cov2, int d) {
    size_t dd = (size_t)d * d;
    if (!finite_all(mu1, d) || !finite_all(mu2, d) || !finite_all(cov1, dd) || !finite_all(cov2, dd)) return -1;
    double dmu = 0, tr1 = 0, tr2 = 0;
    for (int i = 0; i < d; i++) {
        dmu += (mu1[i] - mu2[i]) * (mu1[i] - mu2[i]);
        tr1 += cov1[(size_t)i * d + i];
        tr2 += cov2[(size_t)i * d + i];
    }
    double *v = xmalloc(dd * sizeof(double)), *w = xmalloc((size_t)d * sizeof(double));
    double *h = xmalloc(dd * sizeof(double)), *t = xmalloc(dd * sizeof(double));
    memcpy(v, cov1, dd * sizeof(double));
    double tr_sqrt = -1;
    if (sym_eigen(v, w, d) == 0) {
        /* S1^{1/2} = V diag(sqrt(max(w, 0))) V^T: scale V's columns by w^{1/4}, then H = (V D^{1/4})(V D^{1/4})^T. */
        for (int k = 0; k < d; k++) {
            double s = sqrt(sqrt(w[k] > 0 ? w[k] : 0));
            for (int i = 0; i < d; i++) v[(size_t)i * d + k] *= s;
        }
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, d, d, 1.0, v, d, 0.0, h, d);
        for (int i = 0; i < d; i++)
            for (int j = 0; j < i; j++) h[(size_t)i * d + j] = h[(size_t)j * d + i];
        /* M = H S2 H is symmetric PSD; tr M^{1/2} = sum sqrt(eig M). */
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d, d, d, 1.0, h, d, cov2, d, 0.0, t, d);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d, d, d, 1.0, t, d, h, d, 0.0, v, d);
        for (int i = 0; i < d; i++) /* symmetrise away round-off before the symmetric solver */
            for (int j = 0; j < i; j++) {
                double m = 0.5 * (v[(size_t)i * d + j] + v[(size_t)j * d + i]);
                v[(size_t)i * d + j] = v[(size_t)j * d + i] = m;
            }
        if (sym_eigen(v, w, d) == 0) {
            tr_sqrt = 0;
            for (int k = 0; k < d; k++) tr_sqrt += sqrt(w[k] > 0 ? w[k] : 0);
        }
    }
    free(v), free(w), free(h), free(t);
    if (tr_sqrt < 0) return -1;
    double fd = dmu + tr1 + tr2 - 2 * tr_sqrt;
    return fd;
}

double frechet_distance(const gauss_fit *a, const gauss_fit *b) {
    if (a->dim != b->dim) dfm_die("frechet_distance: feature dims differ (%d vs %d)", a->dim, b->dim);
    return frechet_distance_moments(a->mu, a->cov, b->mu, b->cov, a->dim);
}
