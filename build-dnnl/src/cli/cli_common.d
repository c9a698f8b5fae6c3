build-dnnl/src/cli/cli_common.o: src/cli/cli_common.c \
 src/cli/cli_common.h include/dfm/dit.h include/dfm/model.h \
 include/dfm/sample.h include/dfm/diffusion.h include/dfm/common.h \
 include/dfm/fashion_mnist.h include/dfm/safetensors.h
src/cli/cli_common.h:
include/dfm/dit.h:
include/dfm/model.h:
include/dfm/sample.h:
include/dfm/diffusion.h:
include/dfm/common.h:
include/dfm/fashion_mnist.h:
include/dfm/safetensors.h:
