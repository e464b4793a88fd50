# psd — one entry point: build, deps, test, demo, bench, install.
#
#   make                 build build/bin/{psd,psw,psctl} and the libraries
#   make deps            install the missing Debian packages (idempotent)
#   make test            deps + build + every Check suite, and the cuda suite on the host
#                        emulator (tests/cuda_emu); ends "N passed, N failed[, N skipped]"
#   make demo            deps + build + a real 2-shard, 2-worker Fashion-MNIST run
#   make bench           deps + build + the benchmark table (BENCH_ARGS='--only train':
#                        one section; scripts/bench --list names them)
#   make SANITIZE=address,undefined test
#   make fuzz            the libFuzzer targets (tests/fuzz), FUZZ_SECONDS (600) each
#   make test-long       the long tests: crash-loop (the durability crash loop,
#                        CRASH_ITERS=60 kill-restart iterations), failover-long
#                        (PS_TEST_LONG=1: 4 workers, one killed every 10 s), fuzz
#
# Objects go to build/obj (build/obj-san-* with SANITIZE), generated code to
# build/gen, programs to build/bin.

SHELL := /bin/bash
CC ?= cc
PKGS := grpc libprotobuf-c libuv yaml-0.1 check zlib libsystemd libcrypto
DEB_PKGS := build-essential pkg-config libgrpc-dev libprotobuf-c-dev protobuf-c-compiler \
  libuv1-dev librocksdb-dev check libyaml-dev libopenblas-dev zlib1g-dev libsystemd-dev \
  systemd dataset-fashion-mnist iperf3 gnuplot-nox python3-numpy iproute2 libssl-dev openssl \
  python3-grpcio
BENCH_PKGS := python3-torch
# clang's fuzzer and sanitizer runtime is only a recommendation of clang,
# and deps installs without recommendations: both are named.
FUZZ_PKGS := clang libclang-rt-14-dev

comma := ,
B := build
GEN := $(B)/gen
ifeq ($(SANITIZE),)
OBJ := $(B)/obj
BIN := $(B)/bin
SANFLAGS :=
else
SANTAG := $(subst $(comma),-,$(SANITIZE))
OBJ := $(B)/obj-san-$(SANTAG)
BIN := $(B)/bin-san-$(SANTAG)
SANFLAGS := -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=undefined
endif
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
OPT ?= -O2
CFLAGS ?= $(OPT) -g
# At -O2, GCC 12's very-cheap vectoriser cost model leaves every loop of
# unknown length scalar (the optimizers, the shard's gradient checks, the
# CPU backend's elementwise ops), and errno-setting sqrtf keeps Adam's
# loop scalar; neither flag changes a result (float sums are never
# reordered without -ffast-math).
CFLAGS += -fvect-cost-model=dynamic -fno-math-errno
CFLAGS += -std=c11 -D_GNU_SOURCE -Wall -Wextra -pthread -MMD -MP \
  -Icommon -Iserver -Iworker -Igpu -Ipsctl -Itests -I$(GEN) $(PKG_CFLAGS) $(SANFLAGS)
LDFLAGS += -pthread $(SANFLAGS)
LDLIBS := $(PKG_LIBS) -lrocksdb -lopenblas -lm
HOST_LDLIBS := $(LDLIBS)

# CUDA backend: built when nvcc and cuBLAS exist (gpu/*.cu), else left out.
CUDA_HOME ?= /usr/local/cuda
NVCC := $(shell command -v nvcc 2>/dev/null || ( [ -x $(CUDA_HOME)/bin/nvcc ] && echo $(CUDA_HOME)/bin/nvcc ))
HAVE_CUDA := $(if $(and $(NVCC),$(wildcard $(CUDA_HOME)/include/cublas_v2.h)),1,)
CU_SRCS := $(wildcard gpu/*.cu)
ifeq ($(HAVE_CUDA)$(NO_CUDA),1)
CFLAGS += -DPS_HAVE_CUDA=1 -I$(CUDA_HOME)/include \
  $(if $(filter gpu/ps_gpu_cuda.cu,$(CU_SRCS)),-DPS_HAVE_CUDA_BACKEND=1)
CUDA_LIBDIR := $(firstword $(wildcard $(CUDA_HOME)/lib64 $(CUDA_HOME)/targets/x86_64-linux/lib))
# nvcc's host code is C++: its runtime (static-init guards, unwinding) is libstdc++.
LDLIBS += -L$(CUDA_LIBDIR) -Wl,-rpath,$(CUDA_LIBDIR) -lcublas -lcudart -lstdc++
NVCCFLAGS ?= -O3 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=sm_80 \
  -Xcompiler -fPIC,-Wall,-Wextra -MMD -MP -Icommon -Igpu
CU_OBJS := $(CU_SRCS:%.cu=$(OBJ)/%.cu.o)
else
CU_OBJS :=
endif

# The cuda backend on the host emulator (tests/cuda_emu): gpu/ps_gpu_cuda.cu
# rewritten line for line into C++ (each "kernel<<<cfg>>>(" becomes
# "ps_emu_launch(ps_emu_cfg(cfg), kernel, "), built against the emulated
# runtime and cuBLAS, and linked with the cuda test suite into its own test
# program.  Needs only a C++ compiler: built and run everywhere.
EMU_OBJ := $(OBJ)-emu
EMU_GEN := $(GEN)/cuda-emu
EMU_INC := -Itests/cuda_emu/include
EMU_CFLAGS = $(EMU_INC) $(CFLAGS) -DPS_HAVE_CUDA=1 -DPS_HAVE_CUDA_BACKEND=1 -iquote $(EMU_GEN)
EMU_CXXFLAGS := -std=c++17 $(OPT) -g -Wall -Wextra -pthread -MMD -MP $(EMU_INC) -Icommon -Igpu \
  $(SANFLAGS)
EMU_OBJS := $(EMU_OBJ)/tests/ps_tests.o $(EMU_OBJ)/tests/gpu/test_ps_gpu_cuda.o \
  $(OBJ)/tests/ps_test.o $(EMU_OBJ)/gpu/ps_gpu.o $(EMU_OBJ)/ps_gpu_cuda.o $(EMU_OBJ)/cuda_emu.o

PROTOS := $(wildcard proto/*.proto)
PB_C := $(PROTOS:proto/%.proto=$(GEN)/%.pb-c.c)
PB_H := $(PB_C:.c=.h)

lib_srcs = $(filter-out %_main.c,$(wildcard $(1)/*.c))
COMMON_OBJS := $(PB_C:$(GEN)/%.c=$(OBJ)/gen/%.o) $(patsubst %.c,$(OBJ)/%.o,$(call lib_srcs,common))
SERVER_OBJS := $(patsubst %.c,$(OBJ)/%.o,$(call lib_srcs,server))
WORKER_OBJS := $(patsubst %.c,$(OBJ)/%.o,$(call lib_srcs,worker))
GPU_OBJS := $(patsubst %.c,$(OBJ)/%.o,$(call lib_srcs,gpu)) $(CU_OBJS)
PSCTL_OBJS := $(patsubst %.c,$(OBJ)/%.o,$(call lib_srcs,psctl))

LIBS_A := $(OBJ)/libpsctl.a $(OBJ)/libpsw.a $(OBJ)/libpsd.a $(OBJ)/libps_gpu.a $(OBJ)/libps_common.a

PROGS := $(BIN)/psd $(BIN)/psw $(BIN)/psctl
# Not Check suites: the GPU, codec and durability benchmarks, the long crash loop, the test-only preload libraries, the fuzz targets.
TEST_SRCS ?= $(filter-out tests/gpu/bench_gpu.c tests/common/bench_codec.c tests/gpu/blas_shim.c tests/fuzz/% tests/long/% tests/server/bench_durability.c tests/server/fsync_shim.c,$(shell find tests -name '*.c' 2>/dev/null | sort))
TEST_OBJS := $(patsubst %.c,$(OBJ)/%.o,$(TEST_SRCS))

.PHONY: all deps test test-long crash-loop failover-long check demo bench install install-unit clean fuzz fuzz-build FORCE
FORCE:
# Generated protobuf-c sources are kept, not deleted as intermediates.
.SECONDARY: $(PB_C) $(PB_H)
.DEFAULT_GOAL := all
all: $(PROGS) $(BIN)/ps_tests $(BIN)/ps_tests_cuda_emu $(BIN)/psw_cuda_emu $(BIN)/ps_bench_gpu \
  $(BIN)/ps_bench_codec $(BIN)/ps_test_blas_shim.so $(BIN)/ps_test_crash_loop \
  $(BIN)/ps_bench_durability $(BIN)/ps_test_fsync_shim.so

deps:
	@missing=$$(for p in $(DEB_PKGS) $(FUZZ_PKGS) $(EXTRA_DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing $$missing"; \
	  SUDO=$$( [ $$(id -u) -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "deps: all installed"; fi

$(GEN)/%.pb-c.c $(GEN)/%.pb-c.h: proto/%.proto
	@mkdir -p $(GEN)
	protoc-c --proto_path=proto --c_out=$(GEN) $<

# The build string (common/ps_version.h), asked of git at every make but
# written only when it changed: ps_version.o alone is compiled again (and
# the programs linked) after a commit or a first uncommitted change.
# "unknown" outside a git checkout (a source tarball, or git refusing the
# directory's owner); never the network.
$(GEN)/ps_version_gen.h: FORCE
	@mkdir -p $(GEN)
	@v=unknown; if [ -e .git ] && d=$$(git describe --always --dirty 2>/dev/null) && \
	  t=$$(TZ=UTC git show -s --format=%cd --date=format-local:%Y-%m-%dT%H:%MZ HEAD 2>/dev/null); \
	  then v=$$(printf '%s (%s)' "$$d" "$$t" | tr -d '"\\'); fi; \
	printf '#define PS_VERSION_STRING "%s"\n' "$$v" > $@.tmp.$$$$; \
	if cmp -s $@.tmp.$$$$ $@; then rm -f $@.tmp.$$$$; else mv $@.tmp.$$$$ $@; fi
$(OBJ)/common/ps_version.o: $(GEN)/ps_version_gen.h

$(OBJ)/gen/%.o: $(GEN)/%.c $(PB_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -w -c -o $@ $<

$(OBJ)/%.o: %.c $(PB_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(OBJ)/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c -o $@ $<


$(OBJ)/libps_common.a: $(COMMON_OBJS)
$(OBJ)/libpsd.a: $(SERVER_OBJS)
$(OBJ)/libpsw.a: $(WORKER_OBJS)
$(OBJ)/libps_gpu.a: $(GPU_OBJS)
$(OBJ)/libpsctl.a: $(PSCTL_OBJS)
$(OBJ)/%.a:
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BIN)/psd: $(OBJ)/server/psd_main.o $(LIBS_A)
$(BIN)/psw: $(OBJ)/worker/psw_main.o $(LIBS_A)
$(BIN)/psctl: $(OBJ)/psctl/psctl_main.o $(LIBS_A)
$(BIN)/ps_tests: $(TEST_OBJS) $(LIBS_A)
$(BIN)/ps_bench_gpu: $(OBJ)/tests/gpu/bench_gpu.o $(LIBS_A)
$(BIN)/ps_test_crash_loop: $(OBJ)/tests/long/crash_loop.o $(OBJ)/tests/integration/test_durability.o \
  $(OBJ)/tests/ps_test.o $(LIBS_A)
$(BIN)/ps_bench_durability: $(OBJ)/tests/server/bench_durability.o $(LIBS_A)
$(BIN)/ps_bench_codec: $(OBJ)/tests/common/bench_codec.o $(LIBS_A)
$(PROGS) $(BIN)/ps_tests $(BIN)/ps_bench_gpu $(BIN)/ps_test_crash_loop $(BIN)/ps_bench_durability \
  $(BIN)/ps_bench_codec:
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) -Wl,--start-group $(LIBS_A) -Wl,--end-group $(LDLIBS)

# Test-only: LD_PRELOADed into psw to make OpenBLAS's kernel look generic,
# so the integration test sees psw's re-execution (tests/gpu/blas_shim.c).
# Never sanitized: it is loaded into programs that may not be.
$(BIN)/ps_test_blas_shim.so: tests/gpu/blas_shim.c
	@mkdir -p $(dir $@)
	$(CC) $(OPT) -g -std=c11 -D_GNU_SOURCE -Wall -Wextra -fPIC -shared -o $@ $< -ldl
# Test-only: LD_PRELOADed into psd by the durability crash loop to record
# what fdatasync made durable (tests/server/fsync_shim.c).
$(BIN)/ps_test_fsync_shim.so: tests/server/fsync_shim.c
	@mkdir -p $(dir $@)
	$(CC) $(OPT) -g -std=c11 -D_GNU_SOURCE -Wall -Wextra -fPIC -shared -o $@ $< -ldl

$(EMU_GEN)/ps_gpu_cuda.cc: gpu/ps_gpu_cuda.cu Makefile
	@mkdir -p $(dir $@)
	{ echo '#line 1 "$<"'; sed -E 's/([A-Za-z_][A-Za-z_0-9]*(<[A-Za-z_0-9]+>)?)<<<(.*)>>>\(/ps_emu_launch(ps_emu_cfg(\3), \1, /' $<; } > $@.tmp
	@! grep -n '<<<' $@.tmp || { echo "$<: a kernel launch the rewrite missed (one launch per line, config on that line)" >&2; rm -f $@.tmp; exit 1; }
	mv $@.tmp $@
$(EMU_GEN)/suites.inc:
	@mkdir -p $(dir $@)
	echo 'PS_SUITE(ps_gpu_cuda)' > $@
$(EMU_OBJ)/tests/ps_tests.o: $(EMU_GEN)/suites.inc
$(EMU_OBJ)/%.o: %.c $(PB_H)
	@mkdir -p $(dir $@)
	$(CC) $(EMU_CFLAGS) -c -o $@ $<
$(EMU_OBJ)/ps_gpu_cuda.o: $(EMU_GEN)/ps_gpu_cuda.cc
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -c -o $@ $<
$(EMU_OBJ)/cuda_emu.o: tests/cuda_emu/cuda_emu.cc
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -c -o $@ $<
# psw with the emulated cuda backend, for the integration test that trains
# on "cuda" in a real worker (tests/integration/test_train.c).
EMU_PSW_OBJS := $(OBJ)/worker/psw_main.o $(EMU_OBJ)/gpu/ps_gpu.o $(EMU_OBJ)/ps_gpu_cuda.o \
  $(EMU_OBJ)/cuda_emu.o
$(BIN)/ps_tests_cuda_emu: $(EMU_OBJS) $(LIBS_A)
$(BIN)/psw_cuda_emu: $(EMU_PSW_OBJS) $(LIBS_A)
$(BIN)/ps_tests_cuda_emu $(BIN)/psw_cuda_emu:
	@mkdir -p $(dir $@)
	$(CXX) $(LDFLAGS) -o $@ $(filter %.o,$^) -Wl,--start-group $(LIBS_A) -Wl,--end-group $(HOST_LDLIBS)

# The test runner's suite list is generated from the test sources, so a new
# suite needs no edit here: every "Suite *NAME_suite(void)" definition.
$(GEN)/suites.inc: $(TEST_SRCS) FORCE
	@mkdir -p $(GEN)
	@grep -ho '^Suite \*[a-z0-9_]*_suite(void)' $(TEST_SRCS) | sed 's/^Suite \*\([a-z0-9_]*\)_suite(void)/PS_SUITE(\1)/' | sort -u > $@.tmp
	@cmp -s $@.tmp $@ || mv $@.tmp $@; rm -f $@.tmp
$(OBJ)/tests/ps_tests.o: $(GEN)/suites.inc

# A sanitizer build runs 2-4 times slower: Check's per-test timeouts
# (there to catch hangs) are tripled for it, unless CK_TIMEOUT_MULTIPLIER
# is set.
TEST_ENV := $(if $(SANITIZE),CK_TIMEOUT_MULTIPLIER=$${CK_TIMEOUT_MULTIPLIER:-3})

# PS_TEST_FILTER=name runs the suites whose name contains it.  The fuzz
# targets run a few seconds each (scripts/fuzz_smoke), skipped where clang
# cannot build them.
test: deps
	$(MAKE) --no-print-directory all
	@if FUZZ_CC=$(FUZZ_CC) scripts/fuzz probe 2>/dev/null; then $(MAKE) --no-print-directory fuzz-build; fi
	$(TEST_ENV) PS_BIN=$(BIN) FUZZ_BIN=$(FUZZ_BIN) FUZZ_CC=$(FUZZ_CC) scripts/run_tests $(BIN)/ps_tests $(BIN)/ps_tests_cuda_emu \
	  scripts/fuzz_smoke

# Long runs: the durability crash loop (CRASH_ITERS kill-restart
# iterations), the longer fault tests (PS_TEST_LONG=1: the failover
# suite's MLP run with a kill every 10 s), then every fuzz target for
# FUZZ_SECONDS.
CRASH_ITERS ?= 60
test-long: crash-loop failover-long fuzz
crash-loop: deps
	$(MAKE) --no-print-directory all
	PS_BIN=$(BIN) PS_CRASH_ITERS=$(CRASH_ITERS) scripts/run_tests $(BIN)/ps_test_crash_loop
failover-long: deps
	$(MAKE) --no-print-directory all
	PS_TEST_LONG=1 PS_TEST_FILTER=psw_failover PS_BIN=$(BIN) scripts/run_tests $(BIN)/ps_tests

# ---- fuzzing ---------------------------------------------------------------
# One libFuzzer program per tests/fuzz/fuzz_NAME.c.  The project's code is
# compiled again by clang with coverage (fuzzer-no-link) and ASan+UBSan
# into build/obj-fuzz; gRPC, RocksDB and the other system libraries are
# linked as they are.  `make fuzz` runs each target for FUZZ_SECONDS on a
# copy of its seed corpus tests/fuzz/corpus/NAME (scripts/fuzz; work files
# in build/fuzz) and fails when one crashes.  FUZZ_TARGETS=npz,csv picks
# targets; FUZZ_JOBS=2 runs two at a time.
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 600
FUZZ_OBJ := $(B)/obj-fuzz
FUZZ_BIN := $(B)/bin-fuzz
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS := -O1 -g -std=c11 -D_GNU_SOURCE -Wall -Wextra -pthread -MMD -MP \
  -Icommon -Iserver -Iworker -Igpu -Itests/fuzz -I$(GEN) $(PKG_CFLAGS) \
  $(FUZZ_SAN) -fsanitize=fuzzer-no-link
FUZZ_NAMES := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_PROGS := $(FUZZ_NAMES:%=$(FUZZ_BIN)/fuzz_%)
FUZZ_LIB_OBJS := $(PB_C:$(GEN)/%.c=$(FUZZ_OBJ)/gen/%.o) \
  $(patsubst %.c,$(FUZZ_OBJ)/%.o,$(foreach d,common server worker gpu,$(call lib_srcs,$(d))))
FUZZ_TARGETS ?= $(FUZZ_NAMES)

fuzz-build: $(FUZZ_PROGS)
.SECONDARY: $(FUZZ_NAMES:%=$(FUZZ_OBJ)/tests/fuzz/fuzz_%.o)
fuzz: deps
	$(MAKE) --no-print-directory fuzz-build
	FUZZ_BIN=$(FUZZ_BIN) FUZZ_CC=$(FUZZ_CC) scripts/fuzz run $(FUZZ_SECONDS) $(subst $(comma), ,$(FUZZ_TARGETS))

$(FUZZ_OBJ)/common/ps_version.o: $(GEN)/ps_version_gen.h
$(FUZZ_OBJ)/gen/%.o: $(GEN)/%.c $(PB_H)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -w -c -o $@ $<
$(FUZZ_OBJ)/%.o: %.c $(PB_H)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c -o $@ $<
$(FUZZ_OBJ)/libps_fuzz.a: $(FUZZ_LIB_OBJS)
	rm -f $@ && ar rcs $@ $^
$(FUZZ_BIN)/fuzz_%: $(FUZZ_OBJ)/tests/fuzz/fuzz_%.o $(FUZZ_OBJ)/libps_fuzz.a
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -pthread -o $@ $< $(FUZZ_OBJ)/libps_fuzz.a $(HOST_LDLIBS)

check: test

demo: deps
	$(MAKE) --no-print-directory all
	PS_BIN=$(BIN) scripts/demo

bench: deps
	@for p in $(BENCH_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || $(MAKE) --no-print-directory deps DEB_PKGS=$$p; done
	$(MAKE) --no-print-directory all
	PS_BIN=$(BIN) scripts/bench $(BENCH_ARGS)

PREFIX ?= /usr/local
install: all install-unit
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/doc/psd
	install -m 755 $(PROGS) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 README.md $(DESTDIR)$(PREFIX)/share/doc/psd/  # the unit's Documentation=

# The unit in config/ names /usr/local (PREFIX's default) and stays a
# valid unit as it is; the one installed names PREFIX's psd and README.
# PREFIX must be an absolute path of plain characters (a sed replacement
# and a unit's ExecStart take it as written); trailing slashes are dropped.
install-unit:
	@p='$(PREFIX)'; case "$$p" in /*) ;; *) echo "install-unit: PREFIX must be an absolute path, not '$$p'" >&2; exit 2;; esac; \
	case "$$p" in *[!A-Za-z0-9._/+-]*) echo "install-unit: PREFIX '$$p' holds a character other than letters, digits and ._/+-" >&2; exit 2;; esac
	install -d $(DESTDIR)/etc/systemd/system
	p='$(PREFIX)'; while case "$$p" in */) true;; *) false;; esac; do p=$${p%/}; done; \
	sed "s#/usr/local/#$$p/#g" config/psd@.service > $(DESTDIR)/etc/systemd/system/psd@.service.tmp
	chmod 644 $(DESTDIR)/etc/systemd/system/psd@.service.tmp
	mv $(DESTDIR)/etc/systemd/system/psd@.service.tmp $(DESTDIR)/etc/systemd/system/psd@.service

clean:
	rm -rf $(B)

-include $(shell find $(B) -name '*.d' 2>/dev/null)
