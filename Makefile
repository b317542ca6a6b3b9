# Thin wrapper around CMake. The two commands of the README:
#   make demo   build, then run the embedded demo (simulated Cerner)
#   make test   build, then run every test (ctest)
# and the mutation harness (docs/testing.md):
#   make mutants [MUTANTS=id1,id2]   plant each listed bug in a scratch copy, expect the tests to fail
# and the sanitizer runs (docs/testing.md), each in its own build tree:
#   make asan-test   the whole suite under AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/)
#   make tsan-test   the whole suite under ThreadSanitizer (build-tsan/; tests/tsan.supp holds the
#                    suppressions, for library internals only; the embedded Kafka helper is not sanitized;
#                    any report of any process fails it; CTEST_ARGS="-R name" runs a part)
BUILD ?= build
ASAN_BUILD ?= build-asan
TSAN_BUILD ?= build-tsan
# and the fuzz targets (docs/testing.md, "Fuzzing"):
#   make fuzz [FUZZ_SECONDS=60] [FUZZ_TARGETS="job url"]   clang + libFuzzer, in build-fuzz/
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=
MUTANTS ?=
CTEST_ARGS ?=

.PHONY: all deps build demo test asan-test tsan-test bench docs clean install mutants fuzz

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

# TSAN_OPTIONS from the environment wins (.ci/run adds halt_on_error=1); by default the
# suppressions file. Every sanitized process writes its reports to $(TSAN_BUILD)/tsan-reports/
# (log_path): a worker an e2e test runs has its stderr in a temporary directory and may be
# killed, so a report there would otherwise go unseen. Any report fails the target.
TSAN_OPTIONS ?= suppressions=$(CURDIR)/tests/tsan.supp:second_deadlock_stack=1
TSAN_REPORTS = $(CURDIR)/$(TSAN_BUILD)/tsan-reports
tsan-test: deps
	@cmake -S . -B $(TSAN_BUILD) -DFHIRX_TSAN=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(TSAN_BUILD) -j$(JOBS)
	@rm -rf $(TSAN_REPORTS) && mkdir -p $(TSAN_REPORTS)
	@cd $(TSAN_BUILD) && rc=0; TSAN_OPTIONS="$(TSAN_OPTIONS):log_path=$(TSAN_REPORTS)/report" \
	  FHIRX_TIME_FACTOR=$${FHIRX_TIME_FACTOR:-3} ctest --output-on-failure -j$(JOBS) --timeout 1800 $(CTEST_ARGS) \
	  || rc=$$?; \
	if ls $(TSAN_REPORTS)/report.* >/dev/null 2>&1; then cat $(TSAN_REPORTS)/report.*; \
	  echo "ThreadSanitizer reported (above; one file per process in $(TSAN_REPORTS))" >&2; exit 1; fi; \
	exit $$rc

docs: build
	@$(BUILD)/worker/fhirx config reference > docs/configuration.md

install: build
	@cmake --install $(BUILD)

mutants: deps
	@/usr/bin/python3 tests/mutants/run.py --jobs $(JOBS) $(if $(MUTANTS),--only $(MUTANTS))

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(TSAN_BUILD) $(FUZZ_BUILD) build-mutants

bench: build
	@cmake --build $(BUILD) --target bench
