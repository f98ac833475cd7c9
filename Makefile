# moptd — one non-recursive Makefile.
#
# Dependency direction is enforced by per-directory include paths: core/ sees only itself and
# the generated ONNX code; storage/ sees core's error table; api/ sees core and storage;
# server/ sees api, core and storage; cli/ sees core (and api/job_spec.h, the shared spec parser).
# A wrong include fails the build.

BUILD   ?= build
CC      ?= cc
OPT     ?= -O2 -g
SAN     ?=
CFLAGS_COMMON := -std=c11 -D_GNU_SOURCE $(OPT) $(SAN) -Wall -Wextra -Werror -Wshadow \
                 -Wpointer-arith -Wstrict-prototypes -Wmissing-prototypes -Wvla \
                 -fno-strict-aliasing -pthread -MMD -MP
LDFLAGS ?=
LDFLAGS += $(SAN) -pthread

PROTO   := /usr/include/onnx/onnx.proto
GEN     := $(BUILD)/gen

PKGS_CORE   := libprotobuf-c libzstd libsodium
PKGS_DAEMON := libmicrohttpd jansson libuv sqlite3 libcrypto
CORE_LIBS   := $(shell pkg-config --libs $(PKGS_CORE) 2>/dev/null) -llapacke -llapack -lblas -lm
DAEMON_LIBS := $(shell pkg-config --libs $(PKGS_DAEMON) 2>/dev/null)

INC_core    := -Icore -I$(GEN)
INC_storage := -Istorage -Icore
INC_api     := -Iapi -Icore -Istorage
INC_server  := -Iserver -Iapi -Icore -Istorage
INC_cli     := -Icli -Icore -Iapi -I$(GEN)

CORE_SRC    := $(wildcard core/*.c)
STORAGE_SRC := $(wildcard storage/*.c)
API_SRC     := $(wildcard api/*.c)
SERVER_SRC  := $(wildcard server/*.c)
CLI_SRC     := $(wildcard cli/*.c)

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))

CORE_OBJ    := $(call obj,$(CORE_SRC)) $(BUILD)/obj/gen/onnx.pb-c.o
STORAGE_OBJ := $(call obj,$(STORAGE_SRC))
API_OBJ     := $(call obj,$(API_SRC))
SERVER_OBJ  := $(call obj,$(SERVER_SRC))
CLI_OBJ     := $(call obj,$(CLI_SRC)) $(BUILD)/obj/api/job_spec.o

LIBMOPT  := $(BUILD)/libmopt.a
LIBSTORE := $(BUILD)/libmoptstore.a
LIBAPI   := $(BUILD)/libmoptapi.a

.PHONY: all help deps deps-test deps-bench run test unit asan bench bench-ota fuzz clean
all: $(BUILD)/moptd $(BUILD)/mopt

help:
	@echo "make            build build/moptd and build/mopt"
	@echo "make run        install missing Debian packages, build, start moptd on 127.0.0.1:8080 (data in ./data)"
	@echo "make test       install what the tests need, build, run every test (unit, api, http, e2e)"
	@echo "make unit       build and run the C unit tests only"
	@echo "make asan       the whole suite under AddressSanitizer + UndefinedBehaviorSanitizer"
	@echo "make bench      benchmarks (wrk, nginx, 1 GiB transfers, optimizer speed)"
	@echo "make bench-ota  OTA payload sizes and speed vs bsdiff, xdelta3, zstd; anchored vs plain deltas"
	@echo "                (BASELINE_TIMEOUT_S=0: no time limit for the baselines; bsdiff needs ~2 h on the 400 MB pair)"
	@echo "make fuzz       run the model-loader fuzzer for FUZZ_SECONDS (default 60)"
	@echo "make clean      remove build/"

# ---- dependencies (Debian packages, npm packages for tests) ----
deps:
	@sh deploy/install-deps.sh build
deps-test:
	@sh deploy/install-deps.sh test
deps-bench:
	@sh deploy/install-deps.sh bench

# ---- generated ONNX protobuf code (never committed) ----
$(GEN)/onnx.pb-c.c $(GEN)/onnx.pb-c.h: $(PROTO)
	@mkdir -p $(GEN)
	cp $(PROTO) $(GEN)/onnx.proto
	cd $(GEN) && protoc-c --c_out=. onnx.proto

$(BUILD)/obj/gen/onnx.pb-c.o: $(GEN)/onnx.pb-c.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 $(OPT) $(SAN) -fPIC -w -I$(GEN) -c $< -o $@

# ---- per-directory compile rules ----
# The quantization kernels are written as plain loops for the vectorizer; -O2's very cheap cost
# model leaves most of them scalar.
$(BUILD)/obj/core/quantize.o: CFLAGS_COMMON += -fvect-cost-model=dynamic

$(BUILD)/obj/core/%.o: core/%.c $(GEN)/onnx.pb-c.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(INC_core) -c $< -o $@
$(BUILD)/obj/storage/%.o: storage/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(INC_storage) -c $< -o $@
$(BUILD)/obj/api/%.o: api/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(INC_api) -c $< -o $@
$(BUILD)/obj/server/%.o: server/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(INC_server) -c $< -o $@
$(BUILD)/obj/cli/%.o: cli/%.c $(GEN)/onnx.pb-c.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(INC_cli) -c $< -o $@

$(LIBMOPT): $(CORE_OBJ)
	@rm -f $@; ar rcs $@ $^
$(LIBSTORE): $(STORAGE_OBJ)
	@rm -f $@; ar rcs $@ $^
$(LIBAPI): $(API_OBJ)
	@rm -f $@; ar rcs $@ $^

$(BUILD)/moptd: $(SERVER_OBJ) $(LIBAPI) $(LIBSTORE) $(LIBMOPT)
	$(CC) $(LDFLAGS) -o $@ $(SERVER_OBJ) $(LIBAPI) $(LIBSTORE) $(LIBMOPT) $(DAEMON_LIBS) $(CORE_LIBS)
$(BUILD)/mopt: $(CLI_OBJ) $(LIBMOPT)
	$(CC) $(LDFLAGS) -o $@ $(CLI_OBJ) $(LIBMOPT) $(shell pkg-config --libs jansson) $(CORE_LIBS)

# ---- unit tests: tests/unit/<module>/<file>.c, one cmocka program per file ----
UNIT_SRC := $(wildcard tests/unit/*/*.c)
UNIT_BIN := $(patsubst tests/unit/%.c,$(BUILD)/tests/unit/%,$(UNIT_SRC))
INC_tests := -Icore -Istorage -Iapi -Iserver -I$(GEN) -Itests/unit
TEST_LIBS := $(LIBAPI) $(LIBSTORE) $(LIBMOPT) -lcmocka $(DAEMON_LIBS) $(CORE_LIBS)
SERVER_LIBOBJ := $(filter-out $(BUILD)/obj/server/main.o,$(SERVER_OBJ))

$(BUILD)/tests/unit/%: tests/unit/%.c $(LIBAPI) $(LIBSTORE) $(LIBMOPT) $(SERVER_LIBOBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) -Wno-missing-prototypes $(INC_tests) -o $@ $< \
	  $(if $(findstring /server/,$@),$(SERVER_LIBOBJ)) $(TEST_LIBS) $(LDFLAGS)

unit: all $(UNIT_BIN)
	@sh tests/run_all.sh --only unit

test: deps-test
	@$(MAKE) --no-print-directory all $(UNIT_BIN)
	@sh tests/run_all.sh

asan:
	@$(MAKE) --no-print-directory BUILD=build-asan OPT="-O1 -g -fno-omit-frame-pointer" \
	  SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" all \
	  $(patsubst $(BUILD)/%,build-asan/%,$(UNIT_BIN))
	@MOPT_BUILD=build-asan ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 sh tests/run_all.sh

run: deps all
	@mkdir -p data
	./$(BUILD)/moptd --listen 127.0.0.1:8080 --data ./data

BENCH_BIN := $(BUILD)/bench/kmeans_bench
$(BUILD)/bench/%: tests/bench/%.c $(LIBMOPT)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) -Wno-missing-prototypes -Icore -o $@ $< $(LIBMOPT) $(CORE_LIBS) $(LDFLAGS)

bench: deps-bench deps-test all $(BENCH_BIN)
	@sh tests/bench/run.sh

bench-ota: deps-bench deps-test $(BUILD)/mopt
	@/usr/bin/python3 tests/ota/bench_anchor.py --mopt $(BUILD)/mopt --work $(BUILD)/anchor-bench
	@/usr/bin/python3 tests/ota/bench_ota.py --mopt $(BUILD)/mopt --work $(BUILD)/ota-bench \
	  --timeout $${BASELINE_TIMEOUT_S:-900}

fuzz: all
	@sh tests/fuzz/run.sh $${FUZZ_SECONDS:-60}

clean:
	rm -rf $(BUILD) build-asan

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
