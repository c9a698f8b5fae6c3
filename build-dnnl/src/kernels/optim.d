build-dnnl/src/kernels/optim.o: src/kernels/optim.c include/dfm/kernels.h
include/dfm/kernels.h:
