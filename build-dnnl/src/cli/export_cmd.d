build-dnnl/src/cli/export_cmd.o: src/cli/export_cmd.c \
 src/cli/cli_common.h include/dfm/dit.h include/dfm/model.h \
 include/dfm/sample.h include/dfm/diffusion.h include/dfm/common.h \
 include/dfm/diffusers.h include/dfm/safetensors.h
src/cli/cli_common.h:
include/dfm/dit.h:
include/dfm/model.h:
include/dfm/sample.h:
include/dfm/diffusion.h:
include/dfm/common.h:
include/dfm/diffusers.h:
include/dfm/safetensors.h:
