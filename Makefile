# dfm build. Entry points for users: `make demo`, `make test`, `make bench`.
# Everything below builds with plain make; dependencies come from Debian (scripts/install-deps.sh).

CC        ?= gcc
BUILD     ?= build
BLASDIR   := /usr/lib/x86_64-linux-gnu/openblas-openmp
BLASINC   := /usr/include/x86_64-linux-gnu/openblas-openmp
OPT       ?= -O3 -march=native
WARN      := -Wall -Wextra -Werror -Wno-unused-parameter
CFLAGS    += -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) -fopenmp -Iinclude -Isrc -I$(BLASINC) $(shell pkg-config --cflags cairo ompi-c) $(EXTRA_CFLAGS)
# Link the OpenMP build of OpenBLAS explicitly (a pthread BLAS under OpenMP halves GEMM speed).
LDLIBS    += -L$(BLASDIR) -Wl,-rpath,$(BLASDIR) -lopenblas -ldnnl -lyaml -ljansson $(shell pkg-config --libs ompi-c) -lcairo -lfontconfig -lpng -lgif -ljpeg -lzip -lz -lm -lpthread $(EXTRA_LDFLAGS)
LDFLAGS   += -fopenmp

LIB_SRCS  := $(filter-out src/cli/%,$(wildcard src/*/*.c))
CLI_SRCS  := $(wildcard src/cli/*.c)
TEST_SRCS := $(wildcard tests/test_*.c)
BENCH_SRCS:= $(wildcard bench/*.c)

LIB_OBJS  := $(LIB_SRCS:%.c=$(BUILD)/%.o)
CLI_OBJS  := $(CLI_SRCS:%.c=$(BUILD)/%.o)
TEST_BINS := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
BENCH_BINS:= $(BENCH_SRCS:bench/%.c=$(BUILD)/bench/%)
LIB       := $(BUILD)/libdfm.a
BIN       := $(BUILD)/dfm

.PHONY: all deps test-deps demo test test-fast bench reliability clean format fuzz fuzz-build fuzz-bins

all: $(BIN) $(TEST_BINS) $(BENCH_BINS)

deps:
	@bash scripts/install-deps.sh

test-deps:
	@bash scripts/install-deps.sh --test

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(LIB): $(LIB_OBJS)
	@mkdir -p $(dir $@)
	ar rcs $@ $^

$(BIN): $(CLI_OBJS) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $(CLI_OBJS) $(LIB) $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(LIB) $(wildcard tests/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -o $@ $< $(LIB) $(LDFLAGS) $(LDLIBS)

$(BUILD)/bench/%: bench/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LIB) $(LDFLAGS) $(LDLIBS)

# The main job: train the default recipe (DiT on Fashion-MNIST), sample a labelled grid of every class and
# score the samples (scripts/demo.sh; about 15 minutes on 2 cores).
demo: deps
	@$(MAKE) --no-print-directory $(BIN)
	@bash scripts/demo.sh

# Full test suite: release build with gcc, the same tests under ASan+UBSan, and a clang build check.
test: test-deps
	@bash tests/run.sh

# Release-build tests only (what a developer runs while iterating).
test-fast:
	@$(MAKE) --no-print-directory all
	@bash tests/run.sh --fast

bench: test-deps
	@$(MAKE) --no-print-directory all
	@bash bench/run.sh
	@bash bench/dp.sh
	@bash bench/paradigms.sh
	@bash bench/layouts.sh
	@bash bench/lora.sh

# Crash consistency with 20 random kills (CI's test suite runs 5): prints kills=, resumed_bit_exact=, corrupt_loaded=
reliability: test-deps
	@$(MAKE) --no-print-directory $(BIN)
	@bash tests/reliability.sh 20

# Fuzzing (docs/RELIABILITY.md): libFuzzer targets tests/fuzz/fuzz_*.c, built with clang, ASan and UBSan against
# a library compiled with the same sanitizers plus libFuzzer's coverage hooks (build-fuzz/), then each run for
# FUZZ_SECONDS over its seed corpus tests/fuzz/corpus/<name>/. FUZZ_TARGETS picks some ("safetensors tar").
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
FUZZ_OPT  := -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined,fuzzer-no-link \
             -fno-sanitize-recover=undefined -Wno-pass-failed
FUZZ_SRCS := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS := $(FUZZ_SRCS:tests/fuzz/%.c=$(BUILD)/fuzz/%)

fuzz: fuzz-build
	@bash tests/fuzz/run.sh --seconds $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-build:
	@$(MAKE) --no-print-directory CC=clang BUILD=build-fuzz OPT="$(FUZZ_OPT)" \
	    EXTRA_LDFLAGS="-fsanitize=address,undefined" fuzz-bins

fuzz-bins: $(FUZZ_BINS)

$(BUILD)/fuzz/%: tests/fuzz/%.c tests/fuzz/fuzz_common.h $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fsanitize=fuzzer -Itests/fuzz -o $@ $< $(LIB) $(LDFLAGS) $(LDLIBS)

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build build-asan build-clang build-fuzz

-include $(LIB_OBJS:.o=.d) $(CLI_OBJS:.o=.d)
