build-dnnl/src/data/energon.o: src/data/energon.c include/dfm/energon.h \
 include/dfm/codec.h include/dfm/common.h include/dfm/tar.h \
 include/dfm/yamltree.h
include/dfm/energon.h:
include/dfm/codec.h:
include/dfm/common.h:
include/dfm/tar.h:
include/dfm/yamltree.h:
