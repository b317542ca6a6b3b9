#!/usr/bin/env bash
# Runs every libFuzzer target of a fuzz tree (make fuzz) for FUZZ_SECONDS each.
# Usage: tests/fuzz/run.sh BUILD_DIR SECONDS [TARGET...]
# Each target starts from its seed corpus and its regression inputs
# (tests/fuzz/corpus/<t>, tests/fuzz/regressions/<t>; new inputs go to a
# scratch corpus in BUILD_DIR, never into the tree). A crash or violated
# property stops that target; the script goes on with the others, prints
# where each crash input is and how to keep it, and fails at the end.
set -uo pipefail
cd "$(dirname "$0")/../.."
build=$1
seconds=$2
shift 2
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  for f in "$build"/tests/fuzz/fuzz_*; do [[ -x $f ]] && targets+=("$(basename "$f" | sed 's/^fuzz_//')"); done
fi
[[ ${#targets[@]} -gt 0 ]] || { echo "fuzz: no targets in $build/tests/fuzz (build it first)" >&2; exit 1; }
failed=()
for t in "${targets[@]}"; do
  bin=$build/tests/fuzz/fuzz_$t
  work=$build/fuzz-corpus/$t
  crashes=$build/fuzz-crashes/$t
  mkdir -p "$work" "$crashes"
  echo "== fuzz $t for ${seconds} s"
  # -timeout: an input taking 10 s is a hang; -rss_limit_mb: a runaway allocation.
  if "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$crashes/" "$work" "tests/fuzz/corpus/$t" "tests/fuzz/regressions/$t" \
      >"$build/fuzz-$t.log" 2>&1; then
    grep -aE "^stat::number_of_executed_units|^stat::peak_rss_mb" "$build/fuzz-$t.log" | tr '\n' ' '
    echo
  else
    failed+=("$t")
    grep -aE "property violated|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error|SUMMARY" \
      "$build/fuzz-$t.log" | head -5
    echo "fuzz $t FAILED; its log: $build/fuzz-$t.log"
    for c in $(grep -aoE "Test unit written to [^ ]+" "$build/fuzz-$t.log" | awk '{print $5}'); do
      echo "  crash input: $c"
      echo "  replay it:   $bin $c"
      echo "  keep it:     cp $c tests/fuzz/regressions/$t/<what-it-is>  (ctest replays it)"
    done
  fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz: crashes or violated properties in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, no crash"
