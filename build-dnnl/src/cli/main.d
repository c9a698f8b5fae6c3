build-dnnl/src/cli/main.o: src/cli/main.c include/dfm/common.h \
 include/dfm/kernels.h
include/dfm/common.h:
include/dfm/kernels.h:
