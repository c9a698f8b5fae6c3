build-dnnl/src/core/safetensors.o: src/core/safetensors.c \
 include/dfm/safetensors.h include/dfm/common.h
include/dfm/safetensors.h:
include/dfm/common.h:
