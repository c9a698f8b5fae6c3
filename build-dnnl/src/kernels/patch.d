build-dnnl/src/kernels/patch.o: src/kernels/patch.c include/dfm/kernels.h
include/dfm/kernels.h:
