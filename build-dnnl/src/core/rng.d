build-dnnl/src/core/rng.o: src/core/rng.c include/dfm/rng.h
include/dfm/rng.h:
