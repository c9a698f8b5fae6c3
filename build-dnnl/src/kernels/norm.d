build-dnnl/src/kernels/norm.o: src/kernels/norm.c include/dfm/kernels.h
include/dfm/kernels.h:
