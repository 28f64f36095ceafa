#!/usr/bin/env bash
# Bounded fuzz run of fuzz/fuzz_bindings.py (atheris) over the public API and _core.
#
#   scripts/fuzz.sh [SECONDS]        default 60; exits non-zero on any finding or crash
#   FUZZ_SAVE=1 scripts/fuzz.sh      also merge new coverage into tests/fuzz_corpus/
#
# Works in build/fuzz/corpus (seeded from tests/fuzz_corpus), so the committed corpus
# only changes when asked. A crash leaves build/fuzz/crash-* : copy it into
# tests/fuzz_corpus/ so tests/test_fuzz_regressions.py replays it from then on.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_BUDGET="${1:-60}"
PY="${PYTHON:-.venv/bin/python}"
WORK=build/fuzz
mkdir -p "$WORK/corpus"
cp -n tests/fuzz_corpus/* "$WORK/corpus/" 2>/dev/null || true

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
start=$(date +%s)
set +e
"$PY" fuzz/fuzz_bindings.py -max_total_time="$SECONDS_BUDGET" -rss_limit_mb=4096 \
  -timeout=30 -max_len=512 -print_final_stats=1 -artifact_prefix="$WORK/" \
  "$WORK/corpus" 2>&1 | tee "$WORK/last.log" | grep -v -E '^#[0-9]+\s+(NEW|REDUCE|pulse)' || true
rc=${PIPESTATUS[0]}
set -e
end=$(date +%s)
execs=$(grep -E '^stat::number_of_executed_units' "$WORK/last.log" | awk '{print $2}' || true)
echo "fuzz: rc=$rc, ${execs:-?} executions in $((end - start)) s, corpus $(ls "$WORK/corpus" | wc -l) files"
if [ "$rc" -ne 0 ]; then
  echo "fuzz: FINDING (see $WORK/last.log and $WORK/crash-*)" >&2
  exit "$rc"
fi
if [ "${FUZZ_SAVE:-0}" = "1" ]; then
  mkdir -p "$WORK/merged"
  rm -f "$WORK/merged"/*
  "$PY" fuzz/fuzz_bindings.py -merge=1 "$WORK/merged" tests/fuzz_corpus "$WORK/corpus" >/dev/null 2>&1
  cp -n "$WORK/merged"/* tests/fuzz_corpus/ 2>/dev/null || true
  echo "fuzz: tests/fuzz_corpus now has $(ls tests/fuzz_corpus | wc -l) files"
fi
