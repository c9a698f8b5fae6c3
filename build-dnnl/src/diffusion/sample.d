build-dnnl/src/diffusion/sample.o: src/diffusion/sample.c \
 include/dfm/sample.h include/dfm/diffusion.h include/dfm/dit.h \
 include/dfm/model.h include/dfm/common.h include/dfm/rng.h
include/dfm/sample.h:
include/dfm/diffusion.h:
include/dfm/dit.h:
include/dfm/model.h:
include/dfm/common.h:
include/dfm/rng.h:
