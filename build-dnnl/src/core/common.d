build-dnnl/src/core/common.o: src/core/common.c include/dfm/common.h
include/dfm/common.h:
