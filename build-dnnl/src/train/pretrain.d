build-dnnl/src/train/pretrain.o: src/train/pretrain.c \
 include/dfm/pretrain.h include/dfm/config.h include/dfm/diffusion.h \
 include/dfm/dit.h include/dfm/model.h include/dfm/common.h \
 include/dfm/data.h include/dfm/kernels.h include/dfm/optim.h \
 include/dfm/plot.h include/dfm/safetensors.h include/dfm/train.h
include/dfm/pretrain.h:
include/dfm/config.h:
include/dfm/diffusion.h:
include/dfm/dit.h:
include/dfm/model.h:
include/dfm/common.h:
include/dfm/data.h:
include/dfm/kernels.h:
include/dfm/optim.h:
include/dfm/plot.h:
include/dfm/safetensors.h:
include/dfm/train.h:
