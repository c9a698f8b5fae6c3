build-dnnl/src/models/dit.o: src/models/dit.c include/dfm/dit.h \
 include/dfm/model.h include/dfm/common.h include/dfm/kernels.h \
 include/dfm/rng.h
include/dfm/dit.h:
include/dfm/model.h:
include/dfm/common.h:
include/dfm/kernels.h:
include/dfm/rng.h:
