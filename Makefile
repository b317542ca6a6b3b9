# Thin wrapper around CMake. The two commands of the README:
#   make demo   build, then run the embedded demo (simulated Cerner)
#   make test   build, then run every test (ctest)
# and the mutation harness (docs/testing.md):
#   make mutants [MUTANTS=id1,id2]   plant each listed bug in a scratch copy, expect the tests to fail
# and the fuzz targets (docs/testing.md, "Fuzzing"):
#   make fuzz [FUZZ_SECONDS=60] [FUZZ_TARGETS="job url"]   clang + libFuzzer, in build-fuzz/
BUILD ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=
MUTANTS ?=

.PHONY: all deps build demo test asan-test bench docs clean install mutants fuzz

all: build

deps:
	@.ci/install-deps

build: deps
	@cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)

demo: build
	@tests/demo/demo.sh $(BUILD)

test: build
	@cd $(BUILD) && ctest --output-on-failure -j$(JOBS) --timeout 600

asan-test: deps
	@cmake -S . -B $(ASAN_BUILD) -DFHIRX_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(ASAN_BUILD) -j$(JOBS)
	@cd $(ASAN_BUILD) && ctest --output-on-failure -j$(JOBS) --timeout 900

fuzz: deps
	@cmake -S . -B $(FUZZ_BUILD) -DFHIRX_FUZZ=ON -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(FUZZ_BUILD) -j$(JOBS)
	@tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

docs: build
	@$(BUILD)/worker/fhirx config reference > docs/configuration.md

install: build
	@cmake --install $(BUILD)

mutants: deps
	@/usr/bin/python3 tests/mutants/run.py --jobs $(JOBS) $(if $(MUTANTS),--only $(MUTANTS))

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD) build-mutants

bench: build
	@cmake --build $(BUILD) --target bench
