build-dnnl/src/data/codec.o: src/data/codec.c include/dfm/codec.h \
 include/dfm/common.h /usr/include/libpng16/png.h \
 /usr/include/libpng16/pnglibconf.h /usr/include/libpng16/pngconf.h
include/dfm/codec.h:
include/dfm/common.h:
/usr/include/libpng16/png.h:
/usr/include/libpng16/pnglibconf.h:
/usr/include/libpng16/pngconf.h:
