build-dnnl/src/data/fashion_mnist.o: src/data/fashion_mnist.c \
 include/dfm/fashion_mnist.h include/dfm/common.h
include/dfm/fashion_mnist.h:
include/dfm/common.h:
