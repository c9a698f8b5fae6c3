build-dnnl/src/data/images.o: src/data/images.c include/dfm/codec.h \
 include/dfm/common.h include/dfm/data.h include/dfm/fashion_mnist.h
include/dfm/codec.h:
include/dfm/common.h:
include/dfm/data.h:
include/dfm/fashion_mnist.h:
