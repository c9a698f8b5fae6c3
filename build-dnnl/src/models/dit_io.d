build-dnnl/src/models/dit_io.o: src/models/dit_io.c include/dfm/dit.h \
 include/dfm/model.h include/dfm/common.h include/dfm/safetensors.h
include/dfm/dit.h:
include/dfm/model.h:
include/dfm/common.h:
include/dfm/safetensors.h:
