build-dnnl/src/data/loader.o: src/data/loader.c include/dfm/common.h \
 include/dfm/data.h include/dfm/energon.h include/dfm/rng.h
include/dfm/common.h:
include/dfm/data.h:
include/dfm/energon.h:
include/dfm/rng.h:
