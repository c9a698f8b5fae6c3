build-dnnl/src/models/dit_diffusers.o: src/models/dit_diffusers.c \
 include/dfm/diffusers.h include/dfm/diffusion.h include/dfm/dit.h \
 include/dfm/model.h include/dfm/safetensors.h include/dfm/common.h
include/dfm/diffusers.h:
include/dfm/diffusion.h:
include/dfm/dit.h:
include/dfm/model.h:
include/dfm/safetensors.h:
include/dfm/common.h:
