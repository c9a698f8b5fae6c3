build-dnnl/src/train/dit_step.o: src/train/dit_step.c include/dfm/train.h \
 include/dfm/diffusion.h include/dfm/dit.h include/dfm/model.h \
 include/dfm/optim.h include/dfm/common.h
include/dfm/train.h:
include/dfm/diffusion.h:
include/dfm/dit.h:
include/dfm/model.h:
include/dfm/optim.h:
include/dfm/common.h:
