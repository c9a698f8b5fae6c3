#!/usr/bin/env bash
# Runs the libFuzzer targets built by `make fuzz-build` (build-fuzz/fuzz/fuzz_*).
#   tests/fuzz/run.sh --seconds S [NAME...]   fuzz each target for S seconds over its seed corpus; prints
#                                             "fuzz NAME execs=N seconds=S crashes=C" per target
#   tests/fuzz/run.sh --replay [NAME...]      run every file of tests/fuzz/corpus/NAME/ through its target once
#                                             (the regression corpus as ordinary tests)
# Both print one PASS or FAIL line per target and exit non-zero if any failed. New inputs that libFuzzer finds
# go to build-fuzz/fuzz-corpus/NAME/ (not into the checked-in corpus); a crash leaves its input in
# build-fuzz/fuzz-crashes/NAME-crash-<sha1> and the libFuzzer log in build-fuzz/fuzz-logs/NAME.log: fix the
# reader and copy the input into tests/fuzz/corpus/NAME/ as a regression seed.
set -u
cd "$(dirname "$0")/../.."
mode=fuzz
secs=60
names=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) secs=$2; shift 2 ;;
    --replay) mode=replay; shift ;;
    *) names+=("$1"); shift ;;
  esac
done
bin=build-fuzz/fuzz
if [ ${#names[@]} -eq 0 ]; then
  for b in "$bin"/fuzz_*; do names+=("$(basename "$b" | sed 's/^fuzz_//')"); done
fi
mkdir -p build-fuzz/fuzz-logs build-fuzz/fuzz-crashes
# Leaks are errors too; the scratch files live in /dev/shm and are removed by each target at exit.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=0
for n in "${names[@]}"; do
  exe=$bin/fuzz_$n
  corpus=tests/fuzz/corpus/$n
  log=build-fuzz/fuzz-logs/$n.log
  if [ ! -x "$exe" ]; then
    echo "FAIL fuzz $n: $exe is not built (make fuzz-build)"; failed=$((failed + 1)); continue
  fi
  if [ "$mode" = replay ]; then
    files=("$corpus"/*)
    # Given files (not folders), libFuzzer runs each once and exits non-zero on the first crash.
    if "$exe" -rss_limit_mb=2048 -timeout=20 "${files[@]}" >"$log" 2>&1; then
      echo "PASS fuzz corpus $n: ${#files[@]} files replayed"
    else
      echo "FAIL fuzz corpus $n: a corpus file crashes the target; log $log:"
      grep -E 'Running:|ERROR|SUMMARY|runtime error' "$log" | tail -8 | sed 's/^/   /'
      failed=$((failed + 1))
    fi
    continue
  fi
  work=build-fuzz/fuzz-corpus/$n
  mkdir -p "$work"
  start=$SECONDS
  # -timeout: one input running 10 s is a hang; -rss_limit_mb: a header that makes a reader allocate more
  # than 2 GiB is a finding (malloc_limit_mb defaults to it).
  # FUZZ_SEED (the test suite sets it) makes the mutation sequence repeatable, so CI does not turn red on a
  # finding that a later run would not reproduce; make fuzz leaves it random to explore more.
  "$exe" ${FUZZ_SEED:+-seed=$FUZZ_SEED} -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 -timeout=10 \
    -max_len=65536 \
    -artifact_prefix="build-fuzz/fuzz-crashes/$n-" "$work" "$corpus" >"$log" 2>&1
  rc=$?
  took=$((SECONDS - start))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  crashes=0
  if [ "$rc" -ne 0 ]; then crashes=1; fi
  echo "fuzz $n execs=${execs:-0} seconds=$took crashes=$crashes"
  if [ "$crashes" -eq 0 ]; then
    echo "PASS fuzz $n: ${execs:-0} runs in $took s, no crash"
  else
    echo "FAIL fuzz $n: libFuzzer exited with status $rc; log $log:"
    grep -E 'ERROR|SUMMARY|runtime error|Test unit written|dfm: error' "$log" | tail -8 | sed 's/^/   /'
    failed=$((failed + 1))
  fi
done
[ "$failed" -eq 0 ]
