#!/usr/bin/env bash
# Build the extension with AddressSanitizer + UndefinedBehaviorSanitizer into its own
# virtual environment (.venv-sanitize, build dir build/sanitize) and run the test suite
# under it. Exits non-zero on a failing test or on any sanitizer report.
#
#   scripts/sanitize.sh [extra pytest args]       e.g. scripts/sanitize.sh tests/test_bad_input.py
#
# Tests marked slow (the 9 GB 64-bit-index tests) are skipped: ASan's shadow memory
# and redzones would push them past the machine's memory.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
VENV=.venv-sanitize
. scripts/dev_venv.sh
# Only the ISAs this CPU runs are built: instrumented, each kernel build takes minutes,
# and one the CPU lacks could not be tested here anyway.
flags=$(grep -m1 "^flags" /proc/cpuinfo 2>/dev/null || true)
has() { for f in "$@"; do [[ " $flags " == *" $f "* ]] || return 1; done; }
if has avx512f avx512bw avx512dq avx512vl avx2 fma f16c; then max_isa=""
elif has avx2 fma f16c; then max_isa=avx2
else max_isa=baseline
fi
dev_venv "$VENV" build/sanitize -Ccmake.define.FUSEDLOSS_SANITIZE=ON -Ccmake.build-type=RelWithDebInfo \
  -Ccmake.define.FUSEDLOSS_MAX_ISA="$max_isa"
built=$(date +%s)
echo "sanitize: build + install took $((built - start)) s"

ASAN_LIB="$(gcc -print-file-name=libasan.so)"
UBSAN_LIB="$(gcc -print-file-name=libubsan.so)"
[ -f "$ASAN_LIB" ] || { echo "sanitize: libasan.so not found" >&2; exit 2; }
# Python and torch are not instrumented: no leak checking (CPython keeps its arenas),
# no new/delete-mismatch checks inside torch's own libraries.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:alloc_dealloc_mismatch=0:detect_odr_violation=0:strict_init_order=1:check_initialization_order=1:detect_stack_use_after_return=0"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export PYTHONFAULTHANDLER=1
LOG=build/sanitize/pytest.log
mkdir -p build/sanitize

# Sanity: the module really is the instrumented one.
LD_PRELOAD="$ASAN_LIB:$UBSAN_LIB" "$VENV/bin/python" - <<'PY'
import fusedloss._core as c, subprocess
libs = subprocess.run(["ldd", c.__file__], capture_output=True, text=True).stdout
assert "libasan" in libs and "libubsan" in libs, f"{c.__file__} is not instrumented:\n{libs}"
print("sanitize: instrumented", c.__file__)
PY

set +e
LD_PRELOAD="$ASAN_LIB:$UBSAN_LIB" "$VENV/bin/python" -m pytest -m "not slow" -p no:cacheprovider \
  -q "$@" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e
end=$(date +%s)
if grep -q -E "ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer|SUMMARY: (Address|UndefinedBehavior)Sanitizer" "$LOG"; then
  echo "sanitize: SANITIZER REPORT (see $LOG)" >&2
  [ "$rc" -ne 0 ] || rc=1
fi
echo "sanitize: pytest rc=$rc, tests took $((end - built)) s, total $((end - start)) s"
exit "$rc"
