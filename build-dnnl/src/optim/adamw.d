build-dnnl/src/optim/adamw.o: src/optim/adamw.c include/dfm/optim.h \
 include/dfm/model.h include/dfm/common.h include/dfm/kernels.h
include/dfm/optim.h:
include/dfm/model.h:
include/dfm/common.h:
include/dfm/kernels.h:
