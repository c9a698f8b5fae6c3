build-dnnl/src/kernels/activation.o: src/kernels/activation.c \
 include/dfm/kernels.h
include/dfm/kernels.h:
