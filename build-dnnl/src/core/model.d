build-dnnl/src/core/model.o: src/core/model.c include/dfm/model.h \
 include/dfm/common.h include/dfm/safetensors.h
include/dfm/model.h:
include/dfm/common.h:
include/dfm/safetensors.h:
