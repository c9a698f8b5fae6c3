build-dnnl/src/cli/data_cmd.o: src/cli/data_cmd.c include/dfm/codec.h \
 include/dfm/common.h include/dfm/energon.h include/dfm/fashion_mnist.h \
 include/dfm/tar.h include/dfm/yamltree.h
include/dfm/codec.h:
include/dfm/common.h:
include/dfm/energon.h:
include/dfm/fashion_mnist.h:
include/dfm/tar.h:
include/dfm/yamltree.h:
