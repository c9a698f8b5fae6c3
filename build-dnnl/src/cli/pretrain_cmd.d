build-dnnl/src/cli/pretrain_cmd.o: src/cli/pretrain_cmd.c \
 include/dfm/common.h include/dfm/config.h include/dfm/pretrain.h \
 include/dfm/diffusion.h include/dfm/dit.h include/dfm/model.h
include/dfm/common.h:
include/dfm/config.h:
include/dfm/pretrain.h:
include/dfm/diffusion.h:
include/dfm/dit.h:
include/dfm/model.h:
