build-dnnl/src/core/recipes.o: src/core/recipes.c include/dfm/config.h \
 include/dfm/common.h
include/dfm/config.h:
include/dfm/common.h:
