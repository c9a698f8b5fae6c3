build-dnnl/src/cli/config_cmd.o: src/cli/config_cmd.c \
 include/dfm/config.h
include/dfm/config.h:
