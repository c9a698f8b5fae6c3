build-dnnl/src/core/config.o: src/core/config.c include/dfm/config.h \
 include/dfm/common.h include/dfm/yamltree.h
include/dfm/config.h:
include/dfm/common.h:
include/dfm/yamltree.h:
