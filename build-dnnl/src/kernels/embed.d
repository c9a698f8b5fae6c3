build-dnnl/src/kernels/embed.o: src/kernels/embed.c include/dfm/kernels.h
include/dfm/kernels.h:
