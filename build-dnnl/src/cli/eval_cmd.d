build-dnnl/src/cli/eval_cmd.o: src/cli/eval_cmd.c \
 include/dfm/classifier.h include/dfm/model.h include/dfm/codec.h \
 include/dfm/common.h include/dfm/fashion_mnist.h include/dfm/frechet.h \
 include/dfm/kernels.h include/dfm/rng.h
include/dfm/classifier.h:
include/dfm/model.h:
include/dfm/codec.h:
include/dfm/common.h:
include/dfm/fashion_mnist.h:
include/dfm/frechet.h:
include/dfm/kernels.h:
include/dfm/rng.h:
