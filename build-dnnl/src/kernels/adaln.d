build-dnnl/src/kernels/adaln.o: src/kernels/adaln.c include/dfm/kernels.h
include/dfm/kernels.h:
