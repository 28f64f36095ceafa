#!/usr/bin/env bash
# Bounded fuzz run of fuzz/fuzz_bindings.py (atheris) over the public API and _core.
#
#   scripts/fuzz.sh [SECONDS]        default 60; exits non-zero on any finding or crash
#   FUZZ_SAVE=1 scripts/fuzz.sh      also merge new coverage into tests/fuzz_corpus/
#
# Works in build/fuzz/corpus (seeded from tests/fuzz_corpus), so the committed corpus
# only changes when asked. A finding stops libFuzzer; the run restarts until the time
# is spent so that one finding does not hide the next, and leaves build/fuzz/crash-*:
# copy those into tests/fuzz_corpus/ so tests/test_fuzz_regressions.py replays them.
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET="${1:-60}"
# The Python that has fusedloss and atheris: $PYTHON, else the active venv's, else .venv's.
PY="${PYTHON:-${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}}"
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || { echo "fuzz: no Python at $PY (set PYTHON=...)" >&2; exit 2; }
WORK=build/fuzz
mkdir -p "$WORK/corpus"
rm -f "$WORK"/crash-* "$WORK"/run-*.log
# finding-* files reproduce known findings: replayed by the tests, not fuzzed from
find tests/fuzz_corpus -maxdepth 1 -type f ! -name "finding-*" -exec cp -n {} "$WORK/corpus/" \; 2>/dev/null || true
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

start=$(date +%s)
runs=0 execs=0 failed=0
while :; do
  left=$((BUDGET - ($(date +%s) - start)))
  [ "$left" -ge 2 ] || break
  runs=$((runs + 1))
  log="$WORK/run-$runs.log"
  "$PY" fuzz/fuzz_bindings.py -max_total_time="$left" -rss_limit_mb=4096 -timeout=30 \
    -max_len=512 -print_final_stats=1 -artifact_prefix="$WORK/" "$WORK/corpus" >"$log" 2>&1
  rc=$?
  n=$(awk '/^stat::number_of_executed_units/ {print $2}' "$log")
  execs=$((execs + ${n:-0}))
  if [ "$rc" -ne 0 ]; then
    failed=$((failed + 1))
    echo "fuzz: run $runs: FINDING (rc=$rc):"
    grep -E "^(Finding|[A-Za-z]*Error|==[0-9]+== ERROR|SUMMARY|Test unit written)" "$log" | head -4
    grep -q "Test unit written" "$log" || break  # no artifact: do not spin
  fi
done
end=$(date +%s)
echo "fuzz: $execs executions in $((end - start)) s over $runs run(s), $failed finding(s)," \
  "corpus $(ls "$WORK/corpus" | wc -l) files; crashes: $(ls "$WORK"/crash-* 2>/dev/null | wc -l)"

if [ "${FUZZ_SAVE:-0}" = "1" ]; then
  # Keep the inputs that add coverage: libFuzzer's merge over the committed corpus and
  # this run's (it re-executes itself, hence the wrapper named by FUZZ_SELF).
  printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" "$(realpath fuzz/fuzz_bindings.py)" \
    >"$WORK/self.sh"
  chmod +x "$WORK/self.sh"
  rm -rf "$WORK/merged" && mkdir -p "$WORK/merged"
  FUZZ_SELF="$WORK/self.sh" "$PY" fuzz/fuzz_bindings.py -merge=1 -max_len=512 \
    "$WORK/merged" "$WORK/corpus" >"$WORK/merge.log" 2>&1 || true
  cp -n "$WORK/merged"/* tests/fuzz_corpus/ 2>/dev/null || true
  echo "fuzz: merge kept $(ls "$WORK/merged" | wc -l) inputs;" \
    "tests/fuzz_corpus now has $(ls tests/fuzz_corpus | wc -l) files"
fi
[ "$failed" -eq 0 ]
