build-dnnl/src/kernels/blas.o: src/kernels/blas.c include/dfm/kernels.h \
 include/dfm/common.h \
 /usr/include/x86_64-linux-gnu/openblas-openmp/cblas.h \
 /usr/include/x86_64-linux-gnu/openblas-openmp/openblas_config.h
include/dfm/kernels.h:
include/dfm/common.h:
/usr/include/x86_64-linux-gnu/openblas-openmp/cblas.h:
/usr/include/x86_64-linux-gnu/openblas-openmp/openblas_config.h:
