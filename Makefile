# Thin wrapper around CMake. The two commands of the README:
#   make demo   build, then run the embedded demo (simulated Cerner)
#   make test   build, then run every test (ctest)
# and the mutation harness (docs/testing.md):
#   make mutants [MUTANTS=id1,id2]   plant each listed bug in a scratch copy, expect the tests to fail
BUILD ?= build
ASAN_BUILD ?= build-asan
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=
MUTANTS ?=

.PHONY: all deps build demo test asan-test bench docs clean install mutants

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

docs: build
	@$(BUILD)/worker/fhirx config reference > docs/configuration.md

install: build
	@cmake --install $(BUILD)

mutants: deps
	@/usr/bin/python3 tests/mutants/run.py --jobs $(JOBS) $(if $(MUTANTS),--only $(MUTANTS))

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) build-mutants

bench: build
	@cmake --build $(BUILD) --target bench
