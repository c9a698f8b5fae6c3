build-dnnl/src/eval/frechet.o: src/eval/frechet.c include/dfm/frechet.h \
 include/dfm/common.h \
 /usr/include/x86_64-linux-gnu/openblas-openmp/cblas.h \
 /usr/include/x86_64-linux-gnu/openblas-openmp/openblas_config.h
include/dfm/frechet.h:
include/dfm/common.h:
/usr/include/x86_64-linux-gnu/openblas-openmp/cblas.h:
/usr/include/x86_64-linux-gnu/openblas-openmp/openblas_config.h:
