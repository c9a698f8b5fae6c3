build-dnnl/src/cli/generate_cmd.o: src/cli/generate_cmd.c \
 src/cli/cli_common.h include/dfm/dit.h include/dfm/model.h \
 include/dfm/sample.h include/dfm/diffusion.h include/dfm/codec.h \
 include/dfm/common.h include/dfm/kernels.h include/dfm/plot.h
src/cli/cli_common.h:
include/dfm/dit.h:
include/dfm/model.h:
include/dfm/sample.h:
include/dfm/diffusion.h:
include/dfm/codec.h:
include/dfm/common.h:
include/dfm/kernels.h:
include/dfm/plot.h:
