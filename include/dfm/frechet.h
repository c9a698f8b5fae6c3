/* Frechet distance between Gaussian fits of two feature sets (the FID formula, on any feature extractor):
 *   FD = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2})
 * All arithmetic is in double; the matrix square roots come from symmetric eigen-decompositions (LAPACK
 * dsyev from OpenBLAS), with tiny negative eigenvalues (round-off on PSD matrices) clamped to 0. */
#ifndef DFM_FRECHET_H
#define DFM_FRECHET_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int dim;
    long n;      /* number of feature vectors fitted */
    double *mu;  /* [dim] */
    double *cov; /* [dim, dim], unbiased (divides by n - 1, as numpy.cov) */
} gauss_fit;

/* Fit mean and covariance of feats [n, dim] (n >= 2). */
void gauss_fit_features(gauss_fit *g, const float *feats, long n, int dim);
void gauss_fit_free(gauss_fit *g);

/* Frechet distance between two fits of the same dim. Returns -1 if an eigen-decomposition fails
 * (non-finite input); the result is otherwise >= 0 up to round-off. */
double frechet_distance(const gauss_fit *a, const gauss_fit *b);
/* The same on raw moments: mu [d], cov [d, d] row-major symmetric. */
double frechet_distance_moments(const double *mu1, const double *cov1, const double *mu2, const double *cov2, int d);

/* Eigen-decomposition of a symmetric d x d matrix a (overwritten by the eigenvectors, one per column of the
 * row-major result, i.e. a[i*d + k] is component i of vector k); w [d] ascending eigenvalues. Returns 0 or -1. */
int sym_eigen(double *a, double *w, int d);

#ifdef __cplusplus
}
#endif
#endif
