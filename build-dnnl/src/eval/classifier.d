build-dnnl/src/eval/classifier.o: src/eval/classifier.c \
 include/dfm/classifier.h include/dfm/model.h include/dfm/common.h \
 include/dfm/kernels.h include/dfm/rng.h include/dfm/safetensors.h
include/dfm/classifier.h:
include/dfm/model.h:
include/dfm/common.h:
include/dfm/kernels.h:
include/dfm/rng.h:
include/dfm/safetensors.h:
