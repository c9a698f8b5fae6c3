build-dnnl/src/diffusion/objective.o: src/diffusion/objective.c \
 include/dfm/diffusion.h include/dfm/common.h include/dfm/rng.h
include/dfm/diffusion.h:
include/dfm/common.h:
include/dfm/rng.h:
