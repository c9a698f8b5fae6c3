build-dnnl/src/core/yamltree.o: src/core/yamltree.c \
 include/dfm/yamltree.h include/dfm/common.h
include/dfm/yamltree.h:
include/dfm/common.h:
