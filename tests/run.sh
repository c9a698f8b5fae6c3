#!/usr/bin/env bash
# dfm test runner. Builds the tests (release with gcc; unless --fast also ASan+UBSan with gcc and a
# -Werror build with clang, and the libFuzzer targets: corpus replay plus a short run each), runs every tests/test_* binary, counts PASS/FAIL lines and ends with
# "N passed, N failed". A binary that exits non-zero without printing a FAIL counts as one failure.
set -u
cd "$(dirname "$0")/.."
FAST=0
[ "${1:-}" = "--fast" ] && FAST=1
JOBS=$(nproc)
passed=0
failed=0
log=$(mktemp -d)

run_suite() { # $1 = build dir, $2 = label
  local dir=$1 label=$2
  for t in "$dir"/tests/test_*; do
    [ -x "$t" ] || continue
    local name
    name=$(basename "$t")
    local out="$log/$label.$name.out"
    echo "== [$label] $name"
    local start=$SECONDS
    DFM_BUILD="$dir" "$t" >"$out" 2>&1
    local rc=$?
    local p f
    p=$(grep -c '^PASS ' "$out")
    f=$(grep -c '^FAIL ' "$out")
    grep -E '^(FAIL|#)' "$out" | sed 's/^/   /' | head -40
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
      echo "   FAIL $name exited with status $rc; last lines:"
      tail -15 "$out" | sed 's/^/     /'
      f=1
    fi
    echo "   $p passed, $f failed ($((SECONDS - start)) s)"
    passed=$((passed + p))
    failed=$((failed + f))
  done
}

echo "== building (release, gcc)"
if ! make --no-print-directory -j"$JOBS" all >"$log/build.log" 2>&1; then
  cat "$log/build.log"; echo "0 passed, 1 failed"; exit 1
fi
run_suite build release

if [ "$FAST" -eq 0 ]; then
  echo "== building (ASan + UBSan, gcc)"
  if make --no-print-directory -j"$JOBS" BUILD=build-asan OPT="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
      EXTRA_LDFLAGS="-fsanitize=address,undefined" all >"$log/asan.log" 2>&1; then
    ASAN_OPTIONS=detect_leaks=1 DFM_TEST_SANITIZER=1 run_suite build-asan asan
  else
    cat "$log/asan.log"; failed=$((failed + 1))
  fi
  echo "== building (clang, -Wall -Wextra -Werror)"
  if make --no-print-directory -j"$JOBS" CC=clang BUILD=build-clang build-clang/dfm >"$log/clang.log" 2>&1; then
    echo "PASS clang build"; passed=$((passed + 1))
  else
    cat "$log/clang.log"; echo "FAIL clang build"; failed=$((failed + 1))
  fi
  # Fuzzing (docs/RELIABILITY.md): every corpus file replayed through its target as a regression test, then
  # every target fuzzed briefly (FUZZ_CI_SECONDS each); one PASS/FAIL line per target and mode.
  echo "== building (libFuzzer targets, clang, ASan + UBSan)"
  if make --no-print-directory -j"$JOBS" fuzz-build >"$log/fuzz.log" 2>&1; then
    bash tests/fuzz/run.sh --replay >"$log/fuzz-replay.out" 2>&1
    FUZZ_SEED=${FUZZ_SEED:-1} bash tests/fuzz/run.sh --seconds "${FUZZ_CI_SECONDS:-8}" >"$log/fuzz-run.out" 2>&1
    cat "$log/fuzz-replay.out" "$log/fuzz-run.out" | grep -E '^(PASS|FAIL|fuzz |   )' | sed 's/^/   /'
    passed=$((passed + $(cat "$log/fuzz-replay.out" "$log/fuzz-run.out" | grep -c '^PASS ')))
    failed=$((failed + $(cat "$log/fuzz-replay.out" "$log/fuzz-run.out" | grep -c '^FAIL ')))
  else
    tail -30 "$log/fuzz.log"; echo "FAIL fuzz build"; failed=$((failed + 1))
  fi
fi

rm -rf "$log"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
