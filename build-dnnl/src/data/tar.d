build-dnnl/src/data/tar.o: src/data/tar.c include/dfm/tar.h \
 include/dfm/common.h
include/dfm/tar.h:
include/dfm/common.h:
